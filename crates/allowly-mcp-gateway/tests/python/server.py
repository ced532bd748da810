"""A real MCP server (the official Python SDK's MCPServer) for the gateway's tests: four tools,
each of which appends its call to a file (`--log PATH`, else $TOOL_LOG), so a test can tell which
calls reached it. Over stdio, or over streamable HTTP at http://127.0.0.1:PORT/mcp (`--http PORT`);
`--crashable` adds a fifth tool, `crash`, which ends the process at once (a server dying mid-session).
`--name NAME` adds a prompt (`triage`), a resource (`NAME://catalog`), a resource template
(`NAME://items/{item}`) and completions of their arguments, whose answers name NAME, so a test can
tell which server answered; with it, `resources/subscribe` and `resources/unsubscribe` are served:
each is recorded in the log (`{"subscribe": URI}`), and a subscription is answered at once with a
`notifications/resources/updated` of its URI.
`--token T` (with `--http`): every request must carry `Authorization: Bearer T`, else 401.
`--tls CERT KEY` (with `--http`): https with that certificate and key (PEM files).
`--tasks` offers the MCP Tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) through the
SDK's extension interface: a `tools/call` whose client declared the extension runs its tool at
once (recorded in the log as any call) and is answered with a task (`resultType: "task"`,
status `working`) whose ids are this process's count, 1, 2, … (so two such servers have tasks of
the same ids); `tasks/get` of it answers `completed` with the tool's result; `tasks/cancel` and
`tasks/update` are acknowledged and recorded (`{"cancel": ID}`).
`--hangs` adds a tool `hang` and a resource template `hang://{label}` that never answer: each
records `{"hang": LABEL}` when it starts and `{"cancelled": LABEL}` when a
`notifications/cancelled` stops it (a server behind that hangs).
`--starts PATH` appends a line to PATH when the process starts (a test counts how often the
gateway started it)."""

import argparse
import json
import os
import sys

import anyio
import mcp.types as types
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, ConfigDict, Field

TASKS = "io.modelcontextprotocol/tasks"
LOG: str | None = None


class TaskParams(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    task_id: str = Field(alias="taskId")


class Tasks(Extension):
    """The server side of the tasks extension, as a server would write it with the SDK."""

    identifier = TASKS

    def __init__(self) -> None:
        self.results: dict[str, dict] = {}

    def methods(self):
        return [MethodBinding("tasks/get", TaskParams, self.get), MethodBinding("tasks/cancel", TaskParams, self.ack),
                MethodBinding("tasks/update", TaskParams, self.ack)]

    async def intercept_tool_call(self, params, ctx, call_next):
        declared = ((ctx.meta or {}).get("io.modelcontextprotocol/clientCapabilities") or {}).get("extensions") or {}
        if TASKS not in declared:
            return await call_next(ctx)
        result = await call_next(ctx)
        if isinstance(result, BaseModel):
            result = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        task_id = str(len(self.results) + 1)
        self.results[task_id] = result
        return {"resultType": "task", **self._task(task_id, "working")}

    @staticmethod
    def _task(task_id: str, status: str) -> dict:
        return {"taskId": task_id, "status": status, "createdAt": "2026-07-28T00:00:00Z",
                "lastUpdatedAt": "2026-07-28T00:00:00Z", "ttlMs": None}

    async def get(self, ctx, params: TaskParams):
        if params.task_id not in self.results:
            raise ValueError(f"no task {params.task_id}")
        return {"resultType": "complete", **self._task(params.task_id, "completed"),
                "result": self.results[params.task_id]}

    async def ack(self, ctx, params: TaskParams):
        _record_event(ctx.method.split("/")[1], params.task_id)
        return {"resultType": "complete"}


server = MCPServer("shop-tools", extensions=[Tasks()] if "--tasks" in sys.argv else None)


def _record(tool: str, **arguments) -> None:
    with open(LOG or os.environ["TOOL_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool()
def create_issue(title: str) -> str:
    """Open an issue."""
    _record("create_issue", title=title)
    return f"created issue {title!r}"


@server.tool(name="deleteRepo")
def delete_repo(name: str) -> str:
    """Delete a repository."""
    _record("deleteRepo", name=name)
    return f"deleted {name}"


@server.tool()
def send_payment(amount: int) -> str:
    """Pay."""
    _record("send_payment", amount=amount)
    return f"paid {amount}"


@server.tool()
def send_email(to: str) -> str:
    """Send an email."""
    _record("send_email", to=to)
    return f"sent to {to}"


async def hang(label: str) -> str:
    """Never answer (until cancelled)."""
    _record_event("hang", label)
    try:
        await anyio.Event().wait()
    except anyio.get_cancelled_exc_class():
        _record_event("cancelled", label)
        raise
    return "unreachable"


def crash() -> str:
    """End the server at once, as a crash would."""
    os._exit(3)


def with_prompts_and_resources(name: str) -> None:
    @server.prompt()
    def triage(issue: str) -> str:
        """Triage an issue."""
        return f"{name}: please triage {issue}"

    @server.resource(f"{name}://catalog")
    def catalog() -> str:
        """What the server sells."""
        return f"catalog of {name}"

    @server.resource(f"{name}://items/{{item}}")
    def item(item: str) -> str:
        """One item."""
        return f"item {item} of {name}"

    @server.completion()
    async def complete(ref, argument, context):
        return types.Completion(values=[f"{name}-{argument.name}-{argument.value}"])

    async def subscribe(ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        _record_event("subscribe", str(params.uri))
        await ctx.session.send_resource_updated(params.uri)
        return types.EmptyResult()

    async def unsubscribe(ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        _record_event("unsubscribe", str(params.uri))
        return types.EmptyResult()

    server._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    server._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)


def _record_event(event: str, uri: str) -> None:
    with open(LOG or os.environ["TOOL_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps({event: uri}) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--log")
    parser.add_argument("--name")
    parser.add_argument("--token")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--http", type=int, metavar="PORT")
    parser.add_argument("--crashable", action="store_true")
    parser.add_argument("--hangs", action="store_true")
    parser.add_argument("--tasks", action="store_true")
    parser.add_argument("--starts")
    options = parser.parse_args()
    LOG = options.log
    if options.starts:
        with open(options.starts, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    if options.crashable:
        server.tool()(crash)
    if options.hangs:
        server.tool()(hang)
        server.resource("hang://{label}")(hang)
    if options.name:
        with_prompts_and_resources(options.name)
    if options.http is None:
        server.run("stdio")
    elif options.token is None and options.tls is None:
        server.run("streamable-http", host="127.0.0.1", port=options.http)
    else:
        import uvicorn

        app = server.streamable_http_app()
        expected = f"Bearer {options.token}".encode()

        async def guarded(scope, receive, send):
            if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
            await app(scope, receive, send)
        cert, key = options.tls or (None, None)
        uvicorn.run(app if options.token is None else guarded, host="127.0.0.1", port=options.http,
                    log_level="warning", ssl_certfile=cert, ssl_keyfile=key)

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
`--tls CERT KEY` (with `--http`): https with that certificate and key (PEM files)."""

import argparse
import json
import os

import mcp.types as types
from mcp.server.mcpserver import MCPServer

server = MCPServer("shop-tools")
LOG: str | None = None


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
    options = parser.parse_args()
    LOG = options.log
    if options.crashable:
        server.tool()(crash)
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

"""The gateway and MCP 2026-07-28: a client of that revision (the Python SDK's `Client`, which
probes `server/discover` and sends each request with its own `_meta`, no `initialize`) through
the gateway to server.py offering the Tasks extension (`--tasks`, SEP-2663, served through the
SDK's extension interface). What must hold: a task-augmented `tools/call` (the client declared
the extension, the server answers with a task) is checked exactly like a plain one — a denied
one is a tool error naming the reason and its tool never runs, an allowed one's task carries the
receipt ids, and so does its final result; with several servers a task is reached only by the
id the gateway gave the client; a `tools/call` rmcp cannot read reaches no server.

Over the HTTP front too (`front="http"`): a 2026-07-28 client has no session there, rmcp serves
each of its requests alone, and the gateway must still keep its servers and the tasks it handed
out from one request to the next — a command server behind is started once, not per request,
and every task id is the gateway's own (a server's, often a count, is guessable by any client)."""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager, contextmanager

import pytest
from mcp import Client
from mcp.client import advertise
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from conftest import GATEWAY, gateway_env, http_server, listening, server_command
from test_gateway import calls, grant

TASKS = "io.modelcontextprotocol/tasks"


async def request(client: Client, method: str, params: dict) -> dict:
    """`method` with the client's 2026-07-28 `_meta` (its version, itself, its capabilities) and
    HTTP headers, answered as it came: the SDK has no typed call for the tasks extension's
    methods, nor reads a task as a `tools/call` answer. The SDK's headers lack one the extension
    requires: over streamable HTTP a client MUST send `tasks/get|update|cancel` with `Mcp-Name`
    set to the task id (SEP-2663, so that a load balancer can route by it), which the SDK 2.3.0
    (no tasks client) does not; rmcp's HTTP service refuses the request without it."""
    data, opts = {"method": method, "params": params}, {}
    client.session._stamp(data, opts)  # the metadata every request of this client carries
    if method in ("tasks/get", "tasks/update", "tasks/cancel"):
        opts["headers"]["mcp-name"] = params["taskId"]
    return await client.session._dispatcher.send_raw_request(method, data["params"], opts)


@contextmanager
def gateway_at(env, authorization_id: str, args: list[str]):
    """The gateway with an HTTP front (a port it chooses); yields its /mcp URL."""
    with listening(["--allowly-url", env.url, "--authorization-id", authorization_id, "--user", "dana", *args],
                   gateway_env(env, ("check", "read", "answer"))) as url:
        yield url


def client(target) -> Client:
    """A 2026-07-28 client that declares the tasks extension (`target`: stdio parameters or a URL)."""
    return Client(target, mode="auto", extensions=[advertise(TASKS)], read_timeout_seconds=60)


@asynccontextmanager
async def modern(env, authorization_id: str, args: list[str], front: str = "stdio"):
    """A 2026-07-28 client that declares the tasks extension, through the gateway (its front
    over stdio, or streamable HTTP)."""
    if front == "http":
        with gateway_at(env, authorization_id, args) as url:
            async with client(url) as c:
                assert c.protocol_version == "2026-07-28", c.protocol_version
                yield c
        return
    params = StdioServerParameters(command=GATEWAY, args=["--allowly-url", env.url, "--authorization-id",
                                                          authorization_id, "--user", "dana", *args],
                                   env=gateway_env(env, ("check", "read", "answer")))
    async with client(params) as c:
        assert c.protocol_version == "2026-07-28", c.protocol_version
        yield c


@pytest.mark.parametrize("front,back", [("stdio", "stdio"), ("stdio", "http"), ("http", "stdio"), ("http", "http")])
def test_a_task_augmented_call_is_checked_like_a_plain_one(tmp_path, env, front, back):
    log, starts = tmp_path / "log", tmp_path / "starts"
    az = grant(env, ["mcp.shop.create_issue"])

    async def main(args):
        async with modern(env, az, args, front) as c:
            offered = c.server_capabilities.extensions
            allowed = await request(c, "tools/call", {"name": "create_issue", "arguments": {"title": "VAT"}})
            done = await request(c, "tasks/get", {"taskId": allowed["taskId"]})
            denied = await request(c, "tools/call", {"name": "deleteRepo", "arguments": {"name": "shop"}})
            return offered, allowed, done, denied

    if back == "stdio":
        offered, allowed, done, denied = asyncio.run(
            main(["--server-name", "shop", "--", *server_command(log, "--tasks", "--starts", str(starts))]))
        # One server process for the client's discover, call, get and call (over HTTP each is
        # a request of its own, served alone by rmcp): a gateway per request started one each,
        # and sent the tasks/get to a process that never had the task.
        assert len(starts.read_text().split()) == 1, starts.read_text()
    else:
        with http_server(log, "--tasks") as (url, _):
            offered, allowed, done, denied = asyncio.run(main(["--server-name", "shop", "--upstream-url", url]))
    # server/discover: the extension is shown because the server behind offers it.
    assert TASKS in (offered or {}), offered
    # Allowed: the server made a task; the task names the receipt of the check, and so does its result.
    assert allowed["resultType"] == "task" and allowed["status"] == "working", allowed
    assert allowed["_meta"]["allowly/decision"] == "allow", allowed
    assert allowed["_meta"]["allowly/scope"] == "mcp.shop.create_issue", allowed
    (receipt,) = allowed["_meta"]["allowly/receipt_ids"]
    if front == "http":
        # Clients share the HTTP front's gateway: the id is its own, never the server's count.
        assert re.fullmatch(r"shop__[0-9a-f]{32}", allowed["taskId"]), allowed
    assert done["status"] == "completed" and done["taskId"] == allowed["taskId"], done
    assert done["result"]["content"][0]["text"] == "created issue 'VAT'", done
    assert done["result"]["_meta"]["allowly/receipt_ids"] == [receipt], done
    # Denied: refused before any server saw it, as a plain call is, with the reason; no task.
    assert denied.get("resultType") != "task" and denied["isError"] is True, denied
    assert "Allowly denied mcp.shop.delete_repo: scope_not_granted" in denied["content"][0]["text"], denied
    assert denied["_meta"]["allowly/decision"] == "deny" and len(denied["_meta"]["allowly/receipt_ids"]) == 1
    assert calls(log) == [{"tool": "create_issue", "arguments": {"title": "VAT"}}]


def test_a_tools_call_the_gateway_cannot_read_reaches_no_server(tmp_path, env):
    """`arguments` not an object: rmcp cannot read the request as a `tools/call`, so it would be a
    custom request to forward as it came; a server reading it more leniently would run the tool
    unchecked. The gateway refuses it instead."""
    log = tmp_path / "log"

    async def main():
        async with modern(env, grant(env, ["mcp.shop.create_issue"]), ["--server-name", "shop", "--",
                                                                       *server_command(log, "--tasks")]) as c:
            with pytest.raises(MCPError) as refused:
                await request(c, "tools/call", {"name": "deleteRepo", "arguments": ["shop"]})
            return refused.value
    refused = asyncio.run(main())
    assert refused.error.code == -32602 and "malformed tools/call" in refused.error.message, refused.error
    assert calls(log) == []


def several(tmp_path, servers: dict[str, tuple[str, ...]]) -> list[str]:
    """The gateway's options for the servers named in `servers`, server.py with those options
    each, over stdio (`--config`)."""
    config = tmp_path / "gw.toml"
    config.write_text("".join(
        f'[servers.{name}]\ncommand = [{", ".join(chr(34) + p + chr(34) for p in server_command(tmp_path / name, *options))}]\n\n'
        for name, options in servers.items()))
    return ["--config", str(config)]


@pytest.mark.parametrize("front", ["stdio", "http"])
def test_with_several_servers_a_task_is_reached_only_by_the_id_the_gateway_gave(tmp_path, env, front):
    logs = {name: tmp_path / name for name in ("shop", "crm")}
    starts = tmp_path / "starts"
    args = several(tmp_path, {name: ("--tasks", "--starts", str(starts)) for name in logs})
    az = grant(env, ["mcp.shop.create_issue", "mcp.crm.create_issue"])

    async def main():
        async with modern(env, az, args, front) as c:
            offered = c.server_capabilities.extensions
            shop = await request(c, "tools/call", {"name": "shop__create_issue", "arguments": {"title": "A"}})
            crm = await request(c, "tools/call", {"name": "crm__create_issue", "arguments": {"title": "B"}})
            got = {k: await request(c, "tasks/get", {"taskId": t["taskId"]}) for k, t in (("shop", shop), ("crm", crm))}
            refused = {}
            # The servers' own id (both have a task "1"), another server's prefix with it, an id
            # of the gateway's form it never gave: none reaches a server.
            for guess in ("1", "crm__1", "shop__" + "0" * 32, crm["taskId"].replace("crm__", "shop__")):
                with pytest.raises(MCPError) as e:
                    await request(c, "tasks/get", {"taskId": guess})
                refused[guess] = e.value.error
            with pytest.raises(MCPError):
                await request(c, "tasks/cancel", {"taskId": "1"})
            await request(c, "tasks/cancel", {"taskId": crm["taskId"]})
            return offered, shop, crm, got, refused
    offered, shop, crm, got, refused = asyncio.run(main())
    # Each server started once for the whole session (over HTTP: for the ten requests).
    assert len(starts.read_text().split()) == 2, starts.read_text()
    assert TASKS in (offered or {}), offered
    assert re.fullmatch(r"shop__[0-9a-f]{32}", shop["taskId"]) and re.fullmatch(r"crm__[0-9a-f]{32}", crm["taskId"])
    assert shop["_meta"]["allowly/scope"] == "mcp.shop.create_issue" and crm["_meta"]["allowly/scope"] == "mcp.crm.create_issue"
    assert got["shop"]["taskId"] == shop["taskId"] and got["shop"]["result"]["content"][0]["text"] == "created issue 'A'"
    assert got["crm"]["taskId"] == crm["taskId"] and got["crm"]["result"]["content"][0]["text"] == "created issue 'B'"
    assert got["crm"]["result"]["_meta"]["allowly/receipt_ids"] == crm["_meta"]["allowly/receipt_ids"]
    for guess, error in refused.items():
        assert error.code == -32602 and "was started through this gateway" in error.message, (guess, error)
    # Each server saw its own call, and only crm the cancel of its own task, under its own id.
    assert calls(logs["shop"]) == [{"tool": "create_issue", "arguments": {"title": "A"}}]
    assert calls(logs["crm"]) == [{"tool": "create_issue", "arguments": {"title": "B"}}, {"cancel": "1"}]


def test_over_http_the_tasks_of_a_client_are_not_reached_by_another_guessing(tmp_path, env):
    """The HTTP front does not tell its 2026-07-28 clients apart (one bearer token at most): a
    task handed to one is reached by its id, 128 random bits, and by nothing else. Another
    client's guesses — the server's own id (a count), the gateway's form with a guessed tail —
    are refused and reach no server; with one server behind as with several."""
    log = tmp_path / "shop"
    az = grant(env, ["mcp.shop.create_issue"])

    async def main():
        with gateway_at(env, az, ["--server-name", "shop", "--", *server_command(log, "--tasks")]) as url:
            async with client(url) as alice:
                task = await request(alice, "tools/call", {"name": "create_issue", "arguments": {"title": "A"}})
            async with client(url) as mallory:
                refused = []
                for guess in ("1", "shop__1", "shop__" + "0" * 32):
                    for method in ("tasks/get", "tasks/cancel"):
                        with pytest.raises(MCPError) as e:
                            await request(mallory, method, {"taskId": guess})
                        refused.append(e.value.error)
            async with client(url) as alice_again:
                done = await request(alice_again, "tasks/get", {"taskId": task["taskId"]})
            return task, refused, done
    task, refused, done = asyncio.run(main())
    assert re.fullmatch(r"shop__[0-9a-f]{32}", task["taskId"]), task
    for error in refused:
        assert error.code == -32602 and "was started through this gateway" in error.message, error
    assert done["status"] == "completed" and done["result"]["content"][0]["text"] == "created issue 'A'", done
    # The server saw the call, and no cancel.
    assert calls(log) == [{"tool": "create_issue", "arguments": {"title": "A"}}]


@pytest.mark.parametrize("front", ["stdio", "http"])
def test_discovery_shows_the_tasks_extension_only_when_a_server_behind_offers_it(tmp_path, env, front):
    az = grant(env, ["mcp.shop.create_issue"])

    async def offered(args):
        async with modern(env, az, args, front) as c:
            return c.server_capabilities.extensions or {}
    assert TASKS not in asyncio.run(offered(["--server-name", "shop", "--", *server_command(tmp_path / "log")]))
    assert TASKS not in asyncio.run(offered(several(tmp_path, {"shop": (), "crm": ()})))
    assert TASKS in asyncio.run(offered(several(tmp_path, {"shop": (), "crm": ("--tasks",)})))


def test_a_listen_is_relayed_and_acknowledged_to_the_clients_own_request(tmp_path, env):
    """`subscriptions/listen` (2026-07-28): the server's acknowledgment reaches the client addressed
    to the client's request (the SDK refuses one with another `subscriptionId`), and the client's
    leaving the stream ends it."""
    async def main():
        async with modern(env, grant(env, ["mcp.shop.create_issue"]),
                          ["--server-name", "shop", "--", *server_command(tmp_path / "log", "--name", "shop")]) as c:
            async with asyncio.timeout(30):
                async with c.listen(tools_list_changed=True, resource_subscriptions=["shop://catalog"]) as sub:
                    honored = sub.honored
                # The session goes on after the stream ended.
                tools = await c.list_tools()
            return honored, tools
    honored, tools = asyncio.run(main())
    assert honored.tools_list_changed is True and honored.resource_subscriptions == ["shop://catalog"], honored
    assert "create_issue" in [t.name for t in tools.tools]

"""The gateway and MCP 2026-07-28: a client of that revision (the Python SDK's `Client`, which
probes `server/discover` and sends each request with its own `_meta`, no `initialize`) through
the gateway to server.py offering the Tasks extension (`--tasks`, SEP-2663, served through the
SDK's extension interface). What must hold: a task-augmented `tools/call` (the client declared
the extension, the server answers with a task) is checked exactly like a plain one — a denied
one is a tool error naming the reason and its tool never runs, an allowed one's task carries the
receipt ids, and so does its final result; with several servers a task is reached only by the
id the gateway gave the client; a `tools/call` rmcp cannot read reaches no server."""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager

import pytest
from mcp import Client
from mcp.client import advertise
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from conftest import GATEWAY, gateway_env, http_server, server_command
from test_gateway import calls, grant

TASKS = "io.modelcontextprotocol/tasks"


async def request(client: Client, method: str, params: dict) -> dict:
    """`method` with the client's 2026-07-28 `_meta` (its version, itself, its capabilities),
    answered as it came: the SDK has no typed call for the tasks extension's methods, nor reads
    a task as a `tools/call` answer."""
    data, opts = {"method": method, "params": params}, {}
    client.session._stamp(data, opts)  # the metadata every request of this client carries
    return await client.session._dispatcher.send_raw_request(method, data["params"], opts)


@asynccontextmanager
async def modern(env, authorization_id: str, args: list[str]):
    """A 2026-07-28 client that declares the tasks extension, through the gateway (over stdio)."""
    params = StdioServerParameters(command=GATEWAY, args=["--allowly-url", env.url, "--authorization-id",
                                                          authorization_id, "--user", "dana", *args],
                                   env=gateway_env(env, ("check", "read", "answer")))
    async with Client(params, mode="auto", extensions=[advertise(TASKS)], read_timeout_seconds=60) as client:
        assert client.protocol_version == "2026-07-28", client.protocol_version
        yield client


@pytest.mark.parametrize("back", ["stdio", "http"])
def test_a_task_augmented_call_is_checked_like_a_plain_one(tmp_path, env, back):
    log = tmp_path / "log"
    az = grant(env, ["mcp.shop.create_issue"])

    async def main(args):
        async with modern(env, az, args) as c:
            offered = c.server_capabilities.extensions
            allowed = await request(c, "tools/call", {"name": "create_issue", "arguments": {"title": "VAT"}})
            done = await request(c, "tasks/get", {"taskId": allowed["taskId"]})
            denied = await request(c, "tools/call", {"name": "deleteRepo", "arguments": {"name": "shop"}})
            return offered, allowed, done, denied

    if back == "stdio":
        offered, allowed, done, denied = asyncio.run(
            main(["--server-name", "shop", "--", *server_command(log, "--tasks")]))
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


def test_with_several_servers_a_task_is_reached_only_by_the_id_the_gateway_gave(tmp_path, env):
    logs = {name: tmp_path / name for name in ("shop", "crm")}
    config = tmp_path / "gw.toml"
    config.write_text("".join(
        f'[servers.{name}]\ncommand = [{", ".join(chr(34) + p + chr(34) for p in server_command(log, "--tasks"))}]\n\n'
        for name, log in logs.items()))
    az = grant(env, ["mcp.shop.create_issue", "mcp.crm.create_issue"])

    async def main():
        async with modern(env, az, ["--config", str(config)]) as c:
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
    assert TASKS in (offered or {}), offered
    assert re.fullmatch(r"shop__[0-9a-f]{32}", shop["taskId"]) and re.fullmatch(r"crm__[0-9a-f]{32}", crm["taskId"])
    assert shop["_meta"]["allowly/scope"] == "mcp.shop.create_issue" and crm["_meta"]["allowly/scope"] == "mcp.crm.create_issue"
    assert got["shop"]["taskId"] == shop["taskId"] and got["shop"]["result"]["content"][0]["text"] == "created issue 'A'"
    assert got["crm"]["taskId"] == crm["taskId"] and got["crm"]["result"]["content"][0]["text"] == "created issue 'B'"
    assert got["crm"]["result"]["_meta"]["allowly/receipt_ids"] == crm["_meta"]["allowly/receipt_ids"]
    for guess, error in refused.items():
        assert error.code == -32602 and "was started through this gateway session" in error.message, (guess, error)
    # Each server saw its own call, and only crm the cancel of its own task, under its own id.
    assert calls(logs["shop"]) == [{"tool": "create_issue", "arguments": {"title": "A"}}]
    assert calls(logs["crm"]) == [{"tool": "create_issue", "arguments": {"title": "B"}}, {"cancel": "1"}]


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

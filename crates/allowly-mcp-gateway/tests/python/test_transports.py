"""The mixed ways through the gateway, once each (test_gateway.py runs everything all-stdio and
all-HTTP): a client over stdio to a server over streamable HTTP and the reverse, an allowed and a
denied call each; and the HTTP front's guards: the bearer token, the bound on open sessions."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import allowly
import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import (GATEWAY, Via, free_port, gateway, gateway_env, http_server, listening, server_command,
                      session, stopped_at_exit, wait_listening)
from test_gateway import GRANTED, calls, grant, meta, text


@pytest.mark.parametrize("via", [Via("stdio", "http"), Via("http", "stdio")], ids=str)
def test_allow_and_deny_behave_the_same_over_mixed_transports(tmp_path, env, via):
    log = tmp_path / "log"

    async def main():
        async with gateway(env, grant(env, GRANTED), log, via=via) as s:
            return await s.call_tool("create_issue", {"title": "VAT"}), await s.call_tool("deleteRepo", {"name": "x"})
    allowed, denied = asyncio.run(main())
    assert not allowed.is_error and "created issue 'VAT'" in text(allowed), allowed
    assert meta(allowed)["allowly/decision"] == "allow" and len(meta(allowed)["allowly/receipt_ids"]) == 1
    assert denied.is_error and "Allowly denied mcp.shop.delete_repo: scope_not_granted" in text(denied), denied
    assert calls(log) == [{"tool": "create_issue", "arguments": {"title": "VAT"}}]


def test_with_a_token_the_http_front_refuses_requests_without_it(tmp_path, env):
    port = free_port()
    variables = gateway_env(env, ("check",), ALLOWLY_GATEWAY_TOKEN="s3cret")
    args = ["--listen", f"127.0.0.1:{port}", "--authorization-id", grant(env, GRANTED), "--server-name", "shop",
            "--allowly-url", env.url, "--", *server_command(tmp_path / "log")]
    proc = subprocess.Popen([GATEWAY, *args], env=variables, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with stopped_at_exit(proc):
        wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        accept = {"Accept": "application/json, text/event-stream"}
        assert httpx.post(url, json=ping, headers=accept).status_code == 401
        wrong = httpx.post(url, json=ping, headers={**accept, "Authorization": "Bearer s3creT"})
        assert wrong.status_code == 401
        assert httpx.post(f"http://127.0.0.1:{port}/other", json=ping).status_code == 404


def test_with_a_token_an_http_client_that_sends_it_is_served(tmp_path, env):
    log = tmp_path / "log"
    args = ["--allowly-url", env.url, "--authorization-id", grant(env, GRANTED), "--server-name", "shop",
            "--", *server_command(log)]
    variables = gateway_env(env, ("check",), ALLOWLY_GATEWAY_TOKEN="s3cret")

    async def main():
        async with session(args, variables, "http", token="s3cret") as s:
            return await s.call_tool("create_issue", {"title": "T"})
    result = asyncio.run(main())
    assert not result.is_error and meta(result)["allowly/decision"] == "allow", result
    assert [c["tool"] for c in calls(log)] == ["create_issue"]


#: An `initialize` of a client of the revisions with sessions, and what rmcp requires it to accept.
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "second", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


def test_an_initialize_beyond_max_sessions_is_answered_503_and_the_open_session_goes_on(tmp_path, env):
    log = tmp_path / "log"
    port = free_port()
    args = ["--allowly-url", env.url, "--authorization-id", grant(env, GRANTED), "--server-name", "shop",
            "--max-sessions", "1", "--", *server_command(log)]
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "second", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream"}

    async def main():
        async with session(args, gateway_env(env, ("check",)), "http", port=port) as s:
            second = httpx.post(f"http://127.0.0.1:{port}/mcp", json=initialize, headers=accept)
            return second, await s.call_tool("create_issue", {"title": "still here"})
    second, result = asyncio.run(main())
    assert second.status_code == 503 and "too many MCP sessions" in second.text, second
    assert not result.is_error and "created issue 'still here'" in text(result), result


def test_with_max_sessions_open_a_2026_07_28_client_is_still_served_and_another_initialize_refused(tmp_path, env):
    """A 2026-07-28 client has no session: its requests (POSTs without `Mcp-Session-Id`) open
    none, so the cap on sessions does not apply to them. With `--max-sessions 1` and a legacy
    session open, such a client discovers and has a call checked and run (they were refused 503,
    which the SDK reports as an internal error at `server/discover`), and an `initialize` is
    still refused."""
    log = tmp_path / "log"
    port = free_port()
    args = ["--allowly-url", env.url, "--authorization-id", grant(env, GRANTED), "--server-name", "shop",
            "--max-sessions", "1", "--", *server_command(log)]

    async def main():
        async with session(args, gateway_env(env, ("check",)), "http", port=port) as legacy:
            async with Client(f"http://127.0.0.1:{port}/mcp", mode="auto", read_timeout_seconds=60) as modern:
                version = modern.protocol_version
                result = await modern.call_tool("create_issue", {"title": "sessionless"})
            async with httpx.AsyncClient(timeout=30) as http:
                second = await http.post(f"http://127.0.0.1:{port}/mcp", json=INITIALIZE, headers=ACCEPT)
            return version, result, second, await legacy.call_tool("create_issue", {"title": "still here"})
    version, result, second, still = asyncio.run(main())
    assert version == "2026-07-28", version
    assert not result.is_error and "created issue 'sessionless'" in text(result), result
    assert meta(result)["allowly/decision"] == "allow", result
    assert second.status_code == 503 and "too many MCP sessions" in second.text, second
    assert not still.is_error and "created issue 'still here'" in text(still), still
    assert [c["arguments"]["title"] for c in calls(log)] == ["sessionless", "still here"]


def test_headers_of_the_sessionless_revision_do_not_let_an_initialize_past_the_session_cap(tmp_path, env):
    """The front does not read bodies: a POST whose headers say 2026-07-28 and a method other
    than `initialize` is not counted as opening a session. An `initialize` sent with such headers
    is refused by rmcp (it holds `Mcp-Method` to the body from that version on) before any
    session exists; an `initialize` that says another method with an older version, or none, is
    counted like any other, and refused 503 while the cap is reached."""
    port = free_port()
    args = ["--allowly-url", env.url, "--authorization-id", grant(env, GRANTED), "--server-name", "shop",
            "--max-sessions", "1", "--", *server_command(tmp_path / "log")]
    modern_init = {**INITIALIZE, "params": {**INITIALIZE["params"], "protocolVersion": "2026-07-28"}}
    lies = [
        # (headers, body): each an initialize whose headers claim another method.
        ([("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/list")], modern_init),
        ([("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "tools/call"), ("Mcp-Method", "initialize")],
         modern_init),
        ([("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "Initialize")], modern_init),
    ]
    counted = [
        [("Mcp-Method", "tools/list")],
        [("MCP-Protocol-Version", "2025-06-18"), ("Mcp-Method", "tools/list")],
        [("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "initialize")],
    ]

    async def main():
        async with session(args, gateway_env(env, ("check",)), "http", port=port) as legacy:
            async with httpx.AsyncClient(timeout=30) as http:
                async def post(headers, body):
                    return await http.post(f"http://127.0.0.1:{port}/mcp", json=body,
                                           headers=httpx.Headers([*ACCEPT.items(), *headers]))
                refused = [await post(h, b) for h, b in lies]
                over = [await post(h, INITIALIZE) for h in counted]
            return refused, over, await legacy.call_tool("create_issue", {"title": "still here"})
    refused, over, still = asyncio.run(main())
    for answer in refused:
        # rmcp's refusal (the header contradicts the body), not the front's 503, and no session.
        assert answer.status_code == 400 and "Mcp-Method" in answer.text, (answer, answer.text)
        assert "mcp-session-id" not in answer.headers, answer.headers
    for answer in over:
        assert answer.status_code == 503 and "too many MCP sessions" in answer.text, (answer, answer.text)
    assert not still.is_error and "created issue 'still here'" in text(still), still


def poll(what, condition, seconds: float = 20):
    """Polls `what()` until `condition` holds of it (at most `seconds`); returns it."""
    end = time.monotonic() + seconds
    while True:
        value = what()
        if condition(value):
            return value
        assert time.monotonic() < end, f"still {value!r}"
        time.sleep(0.05)


async def sent_and_left(url: str, body: dict, headers: dict, started) -> None:
    """A request sent on a connection of its own, which is closed once `started()` says the
    gateway is handling it (retried while the previous connection's place is not free yet)."""
    end = time.monotonic() + 20
    while True:
        async with httpx.AsyncClient(timeout=30) as http:
            call = asyncio.create_task(http.post(url, json=body, headers={**headers, **ACCEPT}))
            while not call.done() and not started():
                assert time.monotonic() < end, "the request was not handled"
                await asyncio.sleep(0.05)
            if not call.done():
                call.cancel()
                return
            answer = call.result()
            assert answer.status_code == 503 and "too many connections" in answer.text, (answer, answer.text)
            assert time.monotonic() < end, "no connection place came free"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("waits_for", ["an escalation", "a server behind that hangs", "a read that hangs"])
def test_a_2026_07_28_call_whose_client_left_is_stopped_and_frees_its_place(tmp_path, env, waits_for):
    """rmcp cancels the token of a 2026-07-28 request whose client closed its connection, but
    does not stop its handler: the gateway does (the escalation is no longer waited for; a call,
    or a read, forwarded to a server that never answers is cancelled there with
    `notifications/cancelled`). So `--max-connections` such requests sent and abandoned leave
    the places of requests in flight free: the next request is served (without the fix it was
    refused, the places held for ever by a server that hangs)."""
    log = tmp_path / "log"
    az = grant(env, [*GRANTED, "mcp.shop.hang"])
    places = 3
    args = ["--allowly-url", env.url, "--authorization-id", az, "--server-name", "shop", "--escalation-wait-ms",
            "600000", "--max-connections", str(places), "--", *server_command(log, "--hangs")]

    def escalations() -> list:
        with allowly.Allowly(env.admin, base_url=env.url) as admin:
            return list(admin.list_escalations(authorization_id=az))

    def started(n: int):
        if waits_for == "an escalation":
            return lambda: len(escalations()) >= n
        return lambda: sum("hang" in c for c in calls(log)) >= n

    async def main():
        with listening(args, gateway_env(env, ("check", "read", "answer"))) as url:
            async with Client(url, mode="auto", read_timeout_seconds=60) as c:
                for n in range(1, places + 1):
                    if waits_for == "a read that hangs":
                        data = {"method": "resources/read", "params": {"uri": f"hang://{n}"}}
                    else:
                        tool, arguments = (("send_payment", {"amount": n}) if waits_for == "an escalation"
                                           else ("hang", {"label": str(n)}))
                        data = {"method": "tools/call", "params": {"name": tool, "arguments": arguments}}
                    opts = {}
                    c.session._stamp(data, opts)  # the client's 2026-07-28 `_meta` and headers
                    await sent_and_left(url, {"jsonrpc": "2.0", "id": n, **data}, opts["headers"], started(n))
                # The abandoned calls are stopped as their connections close: no place stays taken.
                end = time.monotonic() + 20
                while True:
                    try:
                        return await c.call_tool("create_issue", {"title": "served"})
                    except MCPError as e:
                        assert "in flight" in e.error.message and time.monotonic() < end, e.error
                        await asyncio.sleep(0.05)
    served = asyncio.run(main())
    assert not served.is_error and "created issue 'served'" in text(served), served
    if waits_for != "an escalation":
        # Each call the server was running was cancelled there.
        cancelled = poll(lambda: sorted(c["cancelled"] for c in calls(log) if "cancelled" in c), lambda v: len(v) == 3)
        assert cancelled == ["1", "2", "3"]
    assert {"tool": "create_issue", "arguments": {"title": "served"}} in calls(log)
    assert not any(c.get("tool") == "send_payment" for c in calls(log))


def test_session_requests_whose_client_left_count_against_the_bound_until_the_session_ends(tmp_path, env):
    """A client of an `initialize` session that sends requests with its session id and closes
    the connection: rmcp keeps each handler running (for the client to resume its stream) and
    cancels nothing until the session ends. So they count against `--max-connections` requests
    in flight: with a server behind that hangs, one more is refused, naming the bound (without
    the fix they piled up unbounded). Once the session is ended (`DELETE`), rmcp cancels them,
    the gateway cancels the calls at the server, and a new session is served."""
    log = tmp_path / "log"
    places = 3
    args = ["--allowly-url", env.url, "--authorization-id", grant(env, [*GRANTED, "mcp.shop.hang"]),
            "--server-name", "shop", "--max-connections", str(places), "--", *server_command(log, "--hangs")]
    version = {"MCP-Protocol-Version": "2025-06-18"}

    def started(n: int):
        return lambda: sum("hang" in c for c in calls(log)) >= n

    async def main():
        with listening(args, gateway_env(env, ("check",))) as url:
            async with httpx.AsyncClient(timeout=30) as http:
                opened = await http.post(url, json=INITIALIZE, headers=ACCEPT)
                assert opened.status_code == 200, (opened, opened.text)
                sid = {"Mcp-Session-Id": opened.headers["mcp-session-id"], **version}
                initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
                assert (await http.post(url, json=initialized, headers={**sid, **ACCEPT})).status_code == 202
            for n in range(1, places + 1):
                call = {"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call",
                        "params": {"name": "hang", "arguments": {"label": str(n)}}}
                await sent_and_left(url, call, sid, started(n))
            ping = {"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                    "params": {"name": "create_issue", "arguments": {"title": "refused"}}}
            async with httpx.AsyncClient(timeout=30) as http:
                refused = await http.post(url, json=ping, headers={**sid, **ACCEPT})
                ended = await http.delete(url, headers=sid)
            assert ended.status_code == 204, ended
            # rmcp cancels the ended session's requests (after draining them a moment): the
            # gateway stops the calls, and their places are free for a new session.
            end = time.monotonic() + 20
            async with httpx.AsyncClient(timeout=30) as http:
                while True:
                    opened = await http.post(url, json=INITIALIZE, headers=ACCEPT)
                    if "in flight" not in opened.text:
                        break
                    assert time.monotonic() < end, opened.text
                    await asyncio.sleep(0.05)
                assert opened.status_code == 200 and "shop-tools" in opened.text, (opened, opened.text)
                sid = {"Mcp-Session-Id": opened.headers["mcp-session-id"], **version}
                await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                headers={**sid, **ACCEPT})
                call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                        "params": {"name": "create_issue", "arguments": {"title": "served"}}}
                served = await http.post(url, json=call, headers={**sid, **ACCEPT})
            return refused.text, served.text
    refused, served = asyncio.run(main())
    assert "too many MCP requests are in flight at the gateway" in refused, refused
    assert "created issue 'served'" in served, served
    assert {"tool": "create_issue", "arguments": {"title": "refused"}} not in calls(log)


def test_initializes_arriving_together_open_no_more_sessions_than_the_bound(tmp_path, env):
    """Eight initializes at once against --max-sessions 2: at most two sessions open, every
    other one is answered 503 (each initialize takes a place before its session exists, so they
    cannot all see an empty gateway)."""
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--allowly-url", env.url, "--authorization-id", grant(env, GRANTED),
            "--server-name", "shop", "--max-sessions", "2", "--", *server_command(tmp_path / "log")]
    proc = subprocess.Popen([GATEWAY, *args], env=gateway_env(env, ("check",)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "many", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream"}

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[client.post(f"http://127.0.0.1:{port}/mcp", json=initialize, headers=accept)
                                          for _ in range(8)])
    with stopped_at_exit(proc):
        wait_listening(port, proc)
        answers = asyncio.run(main())
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) <= 2 and statuses.count(200) >= 1, statuses
    assert all(s in (200, 503) for s in statuses), statuses


def test_a_connection_beyond_max_connections_is_told_503_and_a_freed_place_serves_again(tmp_path, env):
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--allowly-url", env.url, "--authorization-id", grant(env, GRANTED),
            "--server-name", "shop", "--max-connections", "2", "--", *server_command(tmp_path / "log")]
    proc = subprocess.Popen([GATEWAY, *args], env=gateway_env(env, ("check",)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def hold():
        """A connection that was served (a 404 for /other) and stays open; polled, since a
        place is given back only once the gateway has seen the previous holder's close."""
        end = time.monotonic() + 30
        while time.monotonic() < end:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /other HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            if s.recv(4096).startswith(b"HTTP/1.1 404"):
                return s
            s.close()
            time.sleep(0.05)
        raise AssertionError("no connection was served")

    with stopped_at_exit(proc):
        wait_listening(port, proc)
        held = [hold(), hold()]
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        refused = b""
        while chunk := extra.recv(4096):
            refused += chunk
        assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused, refused
        extra.close()
        held.pop().close()
        held.append(hold())
        for s in held:
            s.close()


def test_one_server_that_goes_away_is_started_again_at_the_next_call(tmp_path, env):
    """One command behind (HTTP front): it ends mid-call, that call is a tool error naming it, and
    the next call starts it anew and reaches it; its tools are listed again."""
    log = tmp_path / "log"

    async def main():
        async with gateway(env, grant(env, [*GRANTED, "mcp.shop.crash"]), log, server_args=("--crashable",),
                           via=Via("http", "stdio")) as s:
            crashed = await s.call_tool("crash", {})
            after = await s.call_tool("create_issue", {"title": "again"})
            return crashed, after, sorted(t.name for t in (await s.list_tools()).tools)
    crashed, after, tools = asyncio.run(main())
    assert crashed.is_error and "the MCP server shop is unavailable" in text(crashed), crashed
    assert not after.is_error and "created issue 'again'" in text(after), after
    assert "crash" in tools and "create_issue" in tools, tools
    assert calls(log) == [{"tool": "create_issue", "arguments": {"title": "again"}}]


def test_one_server_over_http_restarted_at_the_same_url_is_reached_again(tmp_path, env):
    """One URL behind (stdio front): the server is killed and another started at the same URL;
    the calls reach the new one through a new MCP session."""
    log, port = tmp_path / "log", free_port()
    args = ["--allowly-url", env.url, "--authorization-id", grant(env, GRANTED), "--server-name", "shop"]

    async def main(url: str, first):
        async with session([*args, "--upstream-url", url], gateway_env(env, ("check",)), "stdio") as s:
            before = await s.call_tool("create_issue", {"title": "1"})
            first.kill()
            first.wait(timeout=10)
            with http_server(log, port=port):
                results = [await s.call_tool("create_issue", {"title": str(n)}) for n in (2, 3)]
            return before, results
    with http_server(log, port=port) as (url, first):
        before, results = asyncio.run(main(url, first))
    assert not before.is_error, before
    assert [text(r) for r in results] == ["created issue '2'", "created issue '3'"], results
    assert [c["arguments"]["title"] for c in calls(log)] == ["1", "2", "3"]


def test_a_session_deleted_over_http_is_answered_204_and_is_gone(tmp_path, env, caplog):
    """rmcp answers a session's DELETE with 202, which MCP clients read as a failed termination
    (the Python SDK logs a warning); the gateway answers 204, and the session is gone."""
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--allowly-url", env.url, "--authorization-id", grant(env, GRANTED),
            "--server-name", "shop", "--", *server_command(tmp_path / "log")]
    proc = subprocess.Popen([GATEWAY, *args], env=gateway_env(env, ("check",)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "deleting", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    with stopped_at_exit(proc):
        wait_listening(port, proc)
        opened = httpx.post(url, json=initialize, headers=accept, timeout=30)
        assert opened.status_code == 200, opened
        sid = {"mcp-session-id": opened.headers["mcp-session-id"]}
        deleted = httpx.delete(url, headers={**accept, **sid})
        ping = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers={**accept, **sid})

        async def client():
            async with session(args[2:], gateway_env(env, ("check",)), "http") as s:
                await s.list_tools()
        asyncio.run(client())
    assert deleted.status_code == 204 and deleted.content == b"", deleted
    assert ping.status_code == 404, ping
    warned = [r.getMessage() for r in caplog.records if "Session termination failed" in r.getMessage()]
    assert warned == [], warned

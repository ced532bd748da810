"""allowly-mcp-gateway between a real MCP client and a real MCP server, against a real Allowly."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import allowly
import mcp.types as types

from conftest import gateway


def grant(env, scopes: list[str]) -> str:
    with allowly.Allowly(env.admin, base_url=env.url) as admin:
        return admin.create_authorization("mcp-user", scopes).authorization.id


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def meta(result: types.CallToolResult) -> dict:
    return result.meta or {}


GRANTED = ["mcp.shop.create_issue", "mcp.shop.send_payment", "mcp.shop.send_email"]


def test_everything_but_tool_calls_passes_through(tmp_path, env):
    async def main():
        async with gateway(env, grant(env, GRANTED), tmp_path / "log") as s:
            tools = await s.list_tools()
            assert sorted(t.name for t in tools.tools) == ["create_issue", "deleteRepo", "send_email", "send_payment"]
            assert s.initialize_result.server_info.name == "shop-tools"
    asyncio.run(main())


def test_an_allowed_call_reaches_the_server_and_its_result_names_the_receipt(tmp_path, env):
    log = tmp_path / "log"

    async def main():
        async with gateway(env, grant(env, GRANTED), log) as s:
            return await s.call_tool("create_issue", {"title": "VAT"})
    result = asyncio.run(main())
    assert not result.is_error and "created issue 'VAT'" in text(result), result
    m = meta(result)
    assert m["allowly/decision"] == "allow" and m["allowly/scope"] == "mcp.shop.create_issue", m
    (receipt_id,) = m["allowly/receipt_ids"]
    assert calls(log) == [{"tool": "create_issue", "arguments": {"title": "VAT"}}]
    with allowly.Allowly(env.reader, base_url=env.url) as reader:
        body = reader.get_receipt(receipt_id).body
    assert (body["kind"], body["decision"], body["scopes"]) == ("check", "allow", ["mcp.shop.create_issue"])


def test_a_denied_call_is_a_tool_error_with_the_reason_and_never_reaches_the_server(tmp_path, env):
    log = tmp_path / "log"

    async def main():
        async with gateway(env, grant(env, GRANTED), log) as s:
            return await s.call_tool("deleteRepo", {"name": "shop"})
    result = asyncio.run(main())
    assert result.is_error and "Allowly denied mcp.shop.delete_repo: scope_not_granted" in text(result), result
    assert meta(result)["allowly/decision"] == "deny" and len(meta(result)["allowly/receipt_ids"]) == 1
    assert calls(log) == []


def test_a_confirm_is_asked_of_the_user_by_elicitation_and_the_answer_recorded(tmp_path, env):
    log = tmp_path / "log"
    asked: list[str] = []

    def answering(approve: bool):
        async def elicit(context, params: types.ElicitRequestParams):
            asked.append(params.message)
            return types.ElicitResult(action="accept", content={"approve": approve})
        return elicit

    async def main(approve: bool):
        async with gateway(env, grant(env, GRANTED), log, elicitation=answering(approve)) as s:
            return await s.call_tool("send_email", {"to": "bob@example.com"})
    yes = asyncio.run(main(True))
    assert not yes.is_error and "sent to bob@example.com" in text(yes), yes
    assert "confirm" in asked[0] and "send_email" in asked[0] and "bob@example.com" in asked[0]
    check_id, answer_id = meta(yes)["allowly/receipt_ids"]
    with allowly.Allowly(env.reader, base_url=env.url) as reader:
        approval = reader.get_receipt(answer_id).body["approval"]
    assert (approval["outcome"], approval["by"]) == ("approved", "dana")
    no = asyncio.run(main(False))
    assert no.is_error and "declined" in text(no), no
    assert [c["tool"] for c in calls(log)] == ["send_email"]


def test_a_confirm_without_elicitation_is_a_tool_error_carrying_the_nonce(tmp_path, env):
    async def main():
        async with gateway(env, grant(env, GRANTED), tmp_path / "log") as s:
            return await s.call_tool("send_email", {"to": "bob@example.com"})
    result = asyncio.run(main())
    nonce = meta(result).get("allowly/confirmation_nonce", "")
    assert result.is_error and nonce.startswith("cn_") and nonce in text(result), result


def test_an_escalation_waits_for_the_approver(tmp_path, env):
    log = tmp_path / "log"
    az = grant(env, GRANTED)

    async def approve_when_asked():
        with allowly.Allowly(env.admin, base_url=env.url) as admin:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                pending = list(admin.list_escalations(authorization_id=az))
                if pending:
                    admin.resolve_escalation(pending[0].id, allowly.APPROVED, "cfo")
                    return
                await asyncio.sleep(0.05)
        raise AssertionError("no escalation appeared")

    async def main():
        async with gateway(env, az, log) as s:
            result, _ = await asyncio.gather(s.call_tool("send_payment", {"amount": 40}), approve_when_asked())
            return result
    result = asyncio.run(main())
    assert not result.is_error and "paid 40" in text(result), result
    assert len(meta(result)["allowly/receipt_ids"]) == 2


def test_an_escalation_not_answered_in_time_is_refused(tmp_path, env):
    log = tmp_path / "log"

    async def main():
        async with gateway(env, grant(env, GRANTED), log, wait_ms=300) as s:
            return await s.call_tool("send_payment", {"amount": 41})
    result = asyncio.run(main())
    assert result.is_error and "not answered" in text(result), result
    assert calls(log) == []


def test_allowly_unreachable_refuses_the_call(tmp_path, env):
    log = tmp_path / "log"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def main():
        async with gateway(env, "au_any", log, url=dead) as s:
            return await s.call_tool("create_issue", {"title": "x"})
    result = asyncio.run(main())
    assert result.is_error and "could not decide" in text(result) and "unreachable" in text(result), result
    assert calls(log) == []


def test_a_resource_template_gives_the_check_its_resource_and_a_missing_argument_refuses(tmp_path, env):
    log = tmp_path / "log"
    with allowly.Allowly(env.admin, base_url=env.url) as admin:
        az = admin.create_authorization("mcp-user", GRANTED, resources=["issue:VAT*"]).authorization.id
    resources = ("--resource", "create_issue=issue:{title}", "--resource", "*=shop:{name}")

    async def main():
        async with gateway(env, az, log, extra_args=resources) as s:
            return (await s.call_tool("create_issue", {"title": "VAT rate"}),
                    await s.call_tool("create_issue", {"title": "other"}),
                    await s.call_tool("send_payment", {"amount": 1}))
    covered, uncovered, missing = asyncio.run(main())
    assert not covered.is_error, covered
    with allowly.Allowly(env.reader, base_url=env.url) as reader:
        body = reader.get_receipt(meta(covered)["allowly/receipt_ids"][0]).body
    assert body["resource"] == "issue:VAT rate"
    assert uncovered.is_error and "resource_not_covered" in text(uncovered), uncovered
    assert missing.is_error and 'needs the argument "name"' in text(missing), missing
    assert [c["arguments"] for c in calls(log)] == [{"title": "VAT rate"}]


def updates_into(queue: asyncio.Queue):
    """A `message_handler` putting the URI of every `notifications/resources/updated` in `queue`."""
    async def handle(message):
        if isinstance(message, types.ResourceUpdatedNotification):
            await queue.put(str(message.params.uri))
    return handle


def test_a_resource_subscription_reaches_the_server_and_its_update_reaches_the_client(tmp_path, env):
    """`resources/subscribe` and `unsubscribe` pass through (the HTTP front's too), and the
    server's `notifications/resources/updated` reaches the client."""
    log = tmp_path / "log"

    async def main():
        updates: asyncio.Queue = asyncio.Queue()
        async with gateway(env, grant(env, GRANTED), log, server_args=("--name", "shop"),
                           message_handler=updates_into(updates)) as s:
            subscribe = s.initialize_result.capabilities.resources.subscribe
            await s.subscribe_resource("shop://catalog")
            updated = await asyncio.wait_for(updates.get(), timeout=20)
            await s.unsubscribe_resource("shop://catalog")
            return subscribe, updated
    subscribe, updated = asyncio.run(main())
    assert subscribe, "the server's capability reaches the client"
    assert updated == "shop://catalog", updated
    assert calls(log) == [{"subscribe": "shop://catalog"}, {"unsubscribe": "shop://catalog"}]

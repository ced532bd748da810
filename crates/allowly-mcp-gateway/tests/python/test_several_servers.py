"""Several MCP servers behind one gateway (`--config`): two real servers (server.py, one started by
the gateway over stdio as "shop", one over streamable HTTP as "crm") and two that are down at
start ("gone", a URL nothing answers; "broken", a command that does not exist). Their tools are listed as <server>__<tool>, each call reaches its own server and is
checked under the scope of the server's own tool; a server down at start or mid-session fails its
own calls clearly and the others go on."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import allowly
import mcp.types as types

from conftest import free_port, gateway_env, http_server, server_command, session
from test_gateway import calls, grant, meta, text, updates_into

TOOLS = ["create_issue", "deleteRepo", "send_email", "send_payment"]


def config(path: Path, shop_log: Path, crm_url: str) -> Path:
    command = ", ".join(f'"{part}"' for part in server_command(shop_log, "--crashable"))
    path.write_text(f'[servers.shop]\ncommand = [{command}]\n\n[servers.crm]\nurl = "{crm_url}"\n\n'
                    f'[servers.gone]\nurl = "http://127.0.0.1:{free_port()}/mcp"\n\n'
                    f'[servers.broken]\ncommand = ["{path.parent / "no-such-server"}"]\n')
    return path


@asynccontextmanager
async def several(env, az: str, config_file: Path, front: str, elicitation=None, message_handler=None):
    args = ["--allowly-url", env.url, "--authorization-id", az, "--config", str(config_file), "--user", "dana"]
    async with session(args, gateway_env(env, ("check", "read", "answer")), front, elicitation,
                       message_handler=message_handler) as s:
        yield s


def test_tools_of_several_servers_are_listed_by_server_and_each_call_reaches_its_own(tmp_path, env):
    shop_log, crm_log = tmp_path / "shop", tmp_path / "crm"
    az = grant(env, ["mcp.shop.create_issue", "mcp.crm.create_issue", "mcp.shop.send_email"])
    asked: list[str] = []

    async def approve(context, params: types.ElicitRequestParams):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True})

    async def main(crm_url: str):
        async with several(env, az, config(tmp_path / "gw.toml", shop_log, crm_url), "stdio", approve) as s:
            listed = sorted(t.name for t in (await s.list_tools()).tools)
            results = {name: await s.call_tool(name, args) for name, args in (
                ("shop__create_issue", {"title": "A"}), ("crm__create_issue", {"title": "B"}),
                ("crm__deleteRepo", {"name": "x"}), ("shop__send_email", {"to": "bob@example.com"}),
                ("gone__create_issue", {"title": "C"}), ("broken__create_issue", {"title": "C"}),
                ("nowhere__create_issue", {"title": "D"}))}
            return s.initialize_result, listed, results
    with http_server(crm_log) as (crm_url, _):
        init, listed, r = asyncio.run(main(crm_url))
    assert listed == sorted([f"crm__{t}" for t in TOOLS] + [f"shop__{t}" for t in [*TOOLS, "crash"]])
    assert init.server_info.name == "allowly-mcp-gateway", init
    assert "gone (" in init.instructions and "broken (" in init.instructions, init.instructions
    shop, crm = r["shop__create_issue"], r["crm__create_issue"]
    assert not shop.is_error and meta(shop)["allowly/scope"] == "mcp.shop.create_issue", shop
    assert not crm.is_error and meta(crm)["allowly/scope"] == "mcp.crm.create_issue", crm
    with allowly.Allowly(env.reader, base_url=env.url) as reader:
        body = reader.get_receipt(meta(crm)["allowly/receipt_ids"][0]).body
    assert (body["decision"], body["scopes"]) == ("allow", ["mcp.crm.create_issue"])
    denied = r["crm__deleteRepo"]
    assert denied.is_error and "Allowly denied mcp.crm.delete_repo: scope_not_granted" in text(denied), denied
    confirmed = r["shop__send_email"]
    assert not confirmed.is_error and len(meta(confirmed)["allowly/receipt_ids"]) == 2, confirmed
    assert "send_email of shop (mcp.shop.send_email)" in asked[0], asked
    gone = r["gone__create_issue"]
    assert gone.is_error and "the MCP server gone is unavailable" in text(gone), gone
    assert meta(gone).get("allowly/receipt_ids") is None, "a server known to be down is not checked"
    broken = r["broken__create_issue"]
    assert broken.is_error and "the MCP server broken is unavailable: cannot start" in text(broken), broken
    nowhere = r["nowhere__create_issue"]
    assert nowhere.is_error and "no MCP server behind the gateway has the tool" in text(nowhere), nowhere
    assert calls(shop_log) == [{"tool": "create_issue", "arguments": {"title": "A"}},
                               {"tool": "send_email", "arguments": {"to": "bob@example.com"}}]
    assert calls(crm_log) == [{"tool": "create_issue", "arguments": {"title": "B"}}]


def test_a_server_that_goes_away_mid_session_fails_its_calls_the_others_go_on_and_it_is_started_again(
        tmp_path, env):
    """The HTTP server killed: its calls fail (reconnecting finds nothing), the others go on. The
    stdio server ends mid-call: that call fails, and the next call starts it anew and reaches it."""
    shop_log, crm_log = tmp_path / "shop", tmp_path / "crm"
    az = grant(env, ["mcp.shop.create_issue", "mcp.shop.crash", "mcp.crm.create_issue"])

    async def main(crm_url: str, crm_process):
        async with several(env, az, config(tmp_path / "gw.toml", shop_log, crm_url), "http") as s:
            before = await s.call_tool("crm__create_issue", {"title": "1"})
            crm_process.kill()  # gone at once, as a crash: no graceful close of its streams
            crm_process.wait(timeout=10)
            crm_after = await s.call_tool("crm__create_issue", {"title": "2"})
            shop = await s.call_tool("shop__create_issue", {"title": "3"})
            listed = sorted(t.name for t in (await s.list_tools()).tools)
            # The stdio server ends mid-call: that call fails; the next starts it again.
            crashed = await s.call_tool("shop__crash", {})
            shop_after = await s.call_tool("shop__create_issue", {"title": "4"})
            listed_after = sorted(t.name for t in (await s.list_tools()).tools)
            return before, crm_after, shop, listed, crashed, shop_after, listed_after
    with http_server(crm_log) as (crm_url, crm_process):
        before, crm_after, shop, listed, crashed, shop_after, listed_after = asyncio.run(main(crm_url, crm_process))
    assert not before.is_error, before
    assert crm_after.is_error and "the MCP server crm is unavailable" in text(crm_after), crm_after
    assert not shop.is_error and "created issue '3'" in text(shop), shop
    assert listed == sorted(f"shop__{t}" for t in [*TOOLS, "crash"])
    assert crashed.is_error and "the MCP server shop is unavailable" in text(crashed), crashed
    assert not shop_after.is_error and "created issue '4'" in text(shop_after), shop_after
    assert listed_after == listed, listed_after
    assert [c["arguments"] for c in calls(crm_log)] == [{"title": "1"}]
    assert [c["arguments"] for c in calls(shop_log)] == [{"title": "3"}, {"title": "4"}]


def test_prompts_and_resources_of_several_servers_are_merged_and_each_request_reaches_its_server(tmp_path, env):
    """Prompts are listed as <server>__<prompt> and fetched from their own server; resources and
    templates keep their URIs, and a read reaches the server that listed the URI — or, for a URI
    from a template that no list showed, the server that has it. A server without prompts or
    resources ("plain") adds none and is not asked."""
    az = grant(env, ["mcp.shop.create_issue"])
    shop = ", ".join(f'"{part}"' for part in server_command(tmp_path / "shop", "--name", "shop"))
    plain = ", ".join(f'"{part}"' for part in server_command(tmp_path / "plain"))

    async def main(crm_url: str):
        gw = tmp_path / "gw.toml"
        gw.write_text(f'[servers.shop]\ncommand = [{shop}]\n\n[servers.crm]\nurl = "{crm_url}"\n\n'
                      f'[servers.plain]\ncommand = [{plain}]\n')
        async with several(env, az, gw, "stdio") as s:
            caps = s.initialize_result.capabilities
            prompts = sorted(p.name for p in (await s.list_prompts()).prompts)
            got = await s.get_prompt("crm__triage", {"issue": "VAT"})
            resources = sorted(str(r.uri) for r in (await s.list_resources()).resources)
            templates = sorted(t.uri_template for t in (await s.list_resource_templates()).resource_templates)
            reads = {uri: (await s.read_resource(uri)).contents[0].text
                     for uri in ("crm://catalog", "shop://catalog", "shop://items/42", "crm://items/7")}
            try:
                await s.get_prompt("nowhere__triage", {"issue": "x"})
                unknown = None
            except Exception as e:  # an MCP error answer
                unknown = str(e)
            tool = await s.call_tool("shop__create_issue", {"title": "still gated"})
            return caps, prompts, got, resources, templates, reads, unknown, tool
    with http_server(tmp_path / "crm", "--name", "crm") as (crm_url, _):
        caps, prompts, got, resources, templates, reads, unknown, tool = asyncio.run(main(crm_url))
    assert caps.prompts is not None and caps.resources is not None and caps.tools is not None, caps
    assert prompts == ["crm__triage", "shop__triage"], prompts
    assert "crm: please triage VAT" in got.messages[0].content.text, got
    assert resources == ["crm://catalog", "shop://catalog"], resources
    assert templates == ["crm://items/{item}", "shop://items/{item}"], templates
    assert reads == {"crm://catalog": "catalog of crm", "shop://catalog": "catalog of shop",
                     "shop://items/42": "item 42 of shop", "crm://items/7": "item 7 of crm"}, reads
    assert unknown is not None and "nowhere__triage" in unknown, unknown
    assert not tool.is_error and meta(tool)["allowly/decision"] == "allow", tool


def test_a_server_that_wants_a_bearer_token_gets_the_one_its_variable_holds(tmp_path, env):
    """`token_env` names the variable with the server's token: sent, the server answers; a wrong
    one, and the server is unavailable while the other server goes on."""
    az = grant(env, ["mcp.crm.create_issue", "mcp.locked.create_issue"])

    async def main(url: str):
        gw = tmp_path / "gw.toml"
        gw.write_text(f'[servers.crm]\nurl = "{url}"\ntoken_env = "CRM_TOKEN"\n\n'
                      f'[servers.locked]\nurl = "{url}"\ntoken_env = "WRONG_TOKEN"\n')
        args = ["--allowly-url", env.url, "--authorization-id", az, "--config", str(gw), "--user", "dana"]
        variables = gateway_env(env, ("check", "read", "answer"), CRM_TOKEN="t0k3n", WRONG_TOKEN="nope")
        async with session(args, variables, "stdio") as s:
            return await s.call_tool("crm__create_issue", {"title": "A"}), \
                await s.call_tool("locked__create_issue", {"title": "B"}), s.initialize_result
    with http_server(tmp_path / "crm", "--token", "t0k3n") as (url, _):
        allowed, locked, init = asyncio.run(main(url))
    assert not allowed.is_error and "created issue 'A'" in text(allowed), allowed
    assert locked.is_error and "the MCP server locked is unavailable" in text(locked), locked
    assert "locked (" in init.instructions and "nope" not in init.instructions, init.instructions
    assert calls(tmp_path / "crm") == [{"tool": "create_issue", "arguments": {"title": "A"}}]


def test_subscriptions_and_completions_reach_the_server_that_owns_the_resource_or_prompt(tmp_path, env):
    """Two servers with the same resources but their own URIs ("shop" over stdio, "crm" over
    HTTP), behind the HTTP front: a subscription reaches the server that listed the URI, and its
    update reaches the client; a completion of a prompt's argument reaches the server its
    prefix names, one of a resource template's the server that listed the template."""
    shop_log, crm_log = tmp_path / "shop", tmp_path / "crm"
    shop = ", ".join(f'"{part}"' for part in server_command(shop_log, "--name", "shop"))

    async def main(crm_url: str):
        gw = tmp_path / "gw.toml"
        gw.write_text(f'[servers.shop]\ncommand = [{shop}]\n\n[servers.crm]\nurl = "{crm_url}"\n')
        updates: asyncio.Queue = asyncio.Queue()
        async with several(env, grant(env, ["mcp.shop.create_issue"]), gw, "http", message_handler=updates_into(updates)) as s:
            caps = s.initialize_result.capabilities
            await s.list_resources()
            await s.list_resource_templates()
            await s.subscribe_resource("crm://catalog")
            first = await asyncio.wait_for(updates.get(), timeout=20)
            await s.subscribe_resource("shop://catalog")
            second = await asyncio.wait_for(updates.get(), timeout=20)
            await s.unsubscribe_resource("crm://catalog")
            prompt = await s.complete(types.PromptReference(type="ref/prompt", name="crm__triage"),
                                      {"name": "issue", "value": "VA"})
            template = await s.complete(types.ResourceTemplateReference(type="ref/resource",
                                                                        uri="shop://items/{item}"),
                                        {"name": "item", "value": "4"})
            return caps, first, second, prompt.completion.values, template.completion.values
    with http_server(crm_log, "--name", "crm") as (crm_url, _):
        caps, first, second, prompt, template = asyncio.run(main(crm_url))
    assert caps.resources.subscribe and caps.completions is not None, caps
    assert (first, second) == ("crm://catalog", "shop://catalog")
    assert calls(crm_log) == [{"subscribe": "crm://catalog"}, {"unsubscribe": "crm://catalog"}]
    assert calls(shop_log) == [{"subscribe": "shop://catalog"}]
    assert prompt == ["crm-issue-VA"], prompt
    assert template == ["shop-item-4"], template


def test_past_the_uris_it_remembers_reads_still_work_and_a_subscription_says_why_it_is_refused(tmp_path, env):
    """The gateway remembers the server of at most 4096 URIs found by reads per session
    (`MAX_FOUND_OWNERS`, docs/mcp-gateway.md), so a client cannot grow its memory by reading.
    Two servers that both take subscriptions ("crm" and "shop", over stdio), whose listed
    resources are listed first (they do not count): 4096 URIs made from crm's template are read
    and remembered, the 4097th is read (the right server answers) but not remembered.
    Subscriptions to the first and the 4096th reach crm; one to the 4097th is refused with a
    message naming the limit, and reaches no server; one to a URI a server lists still reaches
    it, the limit notwithstanding."""
    limit = 4096
    crm_log, shop_log = tmp_path / "crm", tmp_path / "shop"
    crm = ", ".join(f'"{part}"' for part in server_command(crm_log, "--name", "crm"))
    shop = ", ".join(f'"{part}"' for part in server_command(shop_log, "--name", "shop"))

    async def main():
        gw = tmp_path / "gw.toml"
        gw.write_text(f'[servers.crm]\ncommand = [{crm}]\n\n[servers.shop]\ncommand = [{shop}]\n')
        async with several(env, grant(env, ["mcp.shop.create_issue"]), gw, "stdio") as s:
            await s.list_resources()
            texts = [(await s.read_resource(f"crm://items/{i}")).contents[0].text for i in range(limit + 1)]
            await s.subscribe_resource("crm://items/0")
            await s.subscribe_resource(f"crm://items/{limit - 1}")
            try:
                await s.subscribe_resource(f"crm://items/{limit}")
                refused = None
            except Exception as e:  # the MCP error answer
                refused = str(e)
            await s.subscribe_resource("shop://catalog")
            return texts, refused
    texts, refused = asyncio.run(main())
    assert texts == [f"item {i} of crm" for i in range(limit + 1)], [t for t in texts if "of crm" not in t][:3]
    assert refused is not None and f"crm://items/{limit}" in refused and f"the {limit} whose server" in refused, refused
    assert calls(crm_log) == [{"subscribe": "crm://items/0"}, {"subscribe": f"crm://items/{limit - 1}"}]
    assert calls(shop_log) == [{"subscribe": "shop://catalog"}]

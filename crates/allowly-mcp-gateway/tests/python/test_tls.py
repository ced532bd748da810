"""`https://` servers behind the gateway: a real MCP server (server.py under uvicorn) with a
certificate of a private CA the test makes, trusted through `--upstream-ca-file` (one server) or
`ca_file` (`--config`); a certificate that CA did not sign, or that no Mozilla root signed, is
refused, and the client is told why."""

from __future__ import annotations

import asyncio

import pytest

from conftest import gateway_env, http_server, make_pki, session
from test_gateway import GRANTED, calls, grant, meta, text


def test_a_server_over_https_is_reached_with_its_ca_and_refused_with_another(tmp_path, env):
    pki, log = make_pki(tmp_path), tmp_path / "log"
    az = grant(env, GRANTED)

    async def main(url: str, ca):
        args = ["--allowly-url", env.url, "--authorization-id", az, "--server-name", "shop",
                "--upstream-url", url, "--upstream-ca-file", str(ca)]
        async with session(args, gateway_env(env, ("check",)), "stdio") as s:
            return await s.call_tool("create_issue", {"title": "over TLS"})

    async def refused(url: str, ca):
        with pytest.raises(Exception) as refusal:  # the initialize's JSON-RPC error, in task groups
            await main(url, ca)
        error = refusal.value
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        return str(error)

    with http_server(log, "--tls", str(pki.cert), str(pki.key)) as (url, _):
        assert url.startswith("https://"), url
        result = asyncio.run(main(url, pki.ca))
        other = asyncio.run(refused(url, pki.other_ca))
    assert not result.is_error and "created issue 'over TLS'" in text(result), result
    assert meta(result)["allowly/decision"] == "allow", result
    assert "invalid peer certificate" in other and "UnknownIssuer" in other, other
    assert calls(log) == [{"tool": "create_issue", "arguments": {"title": "over TLS"}}]


def test_with_several_servers_each_https_server_is_checked_against_its_own_ca(tmp_path, env):
    """The same server three times: with its CA it answers; with another CA, or with the Mozilla
    roots (no ca_file), it is unavailable, the reason naming the refused certificate."""
    pki, log = make_pki(tmp_path), tmp_path / "log"
    az = grant(env, ["mcp.good.create_issue", "mcp.wrong.create_issue", "mcp.public.create_issue"])

    async def main(url: str):
        gw = tmp_path / "gw.toml"
        gw.write_text(f'[servers.good]\nurl = "{url}"\nca_file = "{pki.ca}"\n\n'
                      f'[servers.wrong]\nurl = "{url}"\nca_file = "{pki.other_ca}"\n\n'
                      f'[servers.public]\nurl = "{url}"\n')
        args = ["--allowly-url", env.url, "--authorization-id", az, "--config", str(gw)]
        async with session(args, gateway_env(env, ("check",)), "http") as s:
            return (s.initialize_result, await s.call_tool("good__create_issue", {"title": "A"}),
                    await s.call_tool("wrong__create_issue", {"title": "B"}),
                    await s.call_tool("public__create_issue", {"title": "C"}))
    with http_server(log, "--tls", str(pki.cert), str(pki.key)) as (url, _):
        init, good, wrong, public = asyncio.run(main(url))
    assert not good.is_error and "created issue 'A'" in text(good), good
    for refused in (wrong, public):
        assert refused.is_error and "invalid peer certificate: UnknownIssuer" in text(refused), refused
    assert "wrong (" in init.instructions and "public (" in init.instructions, init.instructions
    assert calls(log) == [{"tool": "create_issue", "arguments": {"title": "A"}}]

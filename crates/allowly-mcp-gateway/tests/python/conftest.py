"""The gateway's tests: a real MCP client (the official Python SDK's ClientSession) starts the
real `allowly-mcp-gateway` over stdio, which starts the real MCP server in server.py, and
Allowly is a real `allowly serve` (crates/allowly-server/tests/it/clients.rs starts it and sets
the environment: the server's URL, a workspace whose rules are mcp.shop.send_email → confirm and
mcp.shop.send_payment → escalate, one key per role, and the gateway's binary)."""

from __future__ import annotations

import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

HERE = Path(__file__).resolve().parent


sys.path.insert(0, str(HERE.parents[3] / "clients" / "python" / "tests"))
from live_server import Env, env  # noqa: E402,F401 - the suites' fixture: the server and its keys

#: The gateway binary under test, built next to `allowly`.
GATEWAY = os.environ.get("ALLOWLY_TEST_GATEWAY_BIN", "allowly-mcp-gateway")


@asynccontextmanager
async def gateway(env: Env, authorization_id: str, tool_log: Path, *, url: str | None = None,
                  keys: tuple[str, ...] = ("check", "read", "answer"), wait_ms: int = 30_000,
                  elicitation=None, extra_args: tuple[str, ...] = ()):
    """A client session through the gateway to server.py."""
    variables = {"TOOL_LOG": str(tool_log), "PATH": os.environ.get("PATH", "")}
    for role, var, secret in (("check", "ALLOWLY_CHECK_KEY", env.checker), ("read", "ALLOWLY_READ_KEY", env.reader),
                              ("answer", "ALLOWLY_ANSWER_KEY", env.admin)):
        if role in keys:
            variables[var] = secret
    params = StdioServerParameters(
        command=GATEWAY,
        args=["--allowly-url", url or env.url, "--authorization-id", authorization_id, "--server-name", "shop",
              "--escalation-wait-ms", str(wait_ms), "--user", "dana", *extra_args,
              "--", sys.executable, str(HERE / "server.py")],
        env=variables,
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, elicitation_callback=elicitation) as session:
            await session.initialize()
            yield session

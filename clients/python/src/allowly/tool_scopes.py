"""The canonical mapping from tool names to scopes (docs/tool-scopes.md), the same in both SDKs,
the Claude Code hook and the MCP gateway, so that one grant covers a tool however the agent
reaches it: Claude Code's `mcp__github__create_issue` and the gateway's tool `create_issue` of
server `github` are both `mcp.github.create_issue`; Claude Code's own `WebFetch` is
`claude_code.web_fetch`.

Scopes are dot-separated segments of `[a-z0-9_:-]` (at most 128 characters); a tool name
becomes one segment: an `_` before every ASCII capital that follows a lowercase letter or a
digit, or that follows a capital and comes before a lowercase letter (`getHTTPResponse` →
`get_HTTP_Response`); ASCII lowercased; every other character outside `[a-z0-9_:-]` (dots,
spaces, anything not ASCII) becomes `_`; runs of `_` become one, and `_` at either end goes.
A name left empty, or a scope longer than 128 characters, has no scope: `None` (refuse the
call). The vectors all implementations pass are in clients/tool-scopes.json.
"""

from __future__ import annotations

from typing import Optional

MAX_SCOPE = 128
MCP, CLAUDE_CODE = "mcp", "claude_code"


def segment(name: str) -> Optional[str]:
    """One name as one scope segment, or None when nothing is left of it."""
    out: list[str] = []
    chars = list(name)
    for i, c in enumerate(chars):
        if "A" <= c <= "Z" and i > 0:
            prev, nxt = chars[i - 1], chars[i + 1] if i + 1 < len(chars) else ""
            if ("a" <= prev <= "z" or "0" <= prev <= "9") or ("A" <= prev <= "Z" and "a" <= nxt <= "z"):
                out.append("_")
        if "A" <= c <= "Z":
            out.append(c.lower())
        elif "a" <= c <= "z" or "0" <= c <= "9" or c in ":-":
            out.append(c)
        else:
            out.append("_")
    collapsed: list[str] = []
    for c in out:
        if not (c == "_" and collapsed and collapsed[-1] == "_"):
            collapsed.append(c)
    seg = "".join(collapsed).strip("_")
    return seg or None


def _scope(*names: str) -> Optional[str]:
    segments = [segment(n) for n in names]
    if any(s is None for s in segments):
        return None
    scope = ".".join(s for s in segments if s is not None)
    return scope if len(scope) <= MAX_SCOPE else None


def mcp_scope(server: str, tool: str) -> Optional[str]:
    """`mcp.<server>.<tool>`: a tool of an MCP server (the gateway's name for the server, or
    the one in Claude Code's MCP configuration)."""
    return _scope(MCP, server, tool)


def claude_code_scope(tool_name: str) -> Optional[str]:
    """The scope of a Claude Code tool call: `mcp__<server>__<tool>` (Claude Code's name for
    an MCP tool; the server's name ends at the first `__`) is `mcp_scope(server, tool)`; any
    other tool is `claude_code.<tool>`."""
    if tool_name.startswith("mcp__"):
        server, sep, tool = tool_name[len("mcp__"):].partition("__")
        return mcp_scope(server, tool) if sep else None
    return _scope(CLAUDE_CODE, tool_name)

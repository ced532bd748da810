"""The canonical tool-name → scope mapping (docs/tool-scopes.md) against the vectors every
implementation shares (clients/tool-scopes.json)."""

import json
from pathlib import Path

from allowly.tool_scopes import claude_code_scope, mcp_scope, segment

ROOT = Path(__file__).resolve().parents[3]


def test_tool_names_map_to_scopes_as_the_shared_vectors_say():
    vectors = json.loads((ROOT / "clients/tool-scopes.json").read_text("utf-8"))
    got = {
        "segment": [[name, segment(name)] for name, _ in vectors["segment"]],
        "claude_code": [[name, claude_code_scope(name)] for name, _ in vectors["claude_code"]],
        "mcp": [[server, tool, mcp_scope(server, tool)] for server, tool, _ in vectors["mcp"]],
    }
    assert got == {k: vectors[k] for k in got}

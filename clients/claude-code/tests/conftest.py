"""The hook's tests run the hook as Claude Code does (test_hook.py: a subprocess, a recorded event
on stdin; test_real_claude_code.py: in the real Claude Code) against a real `allowly serve` that
crates/allowly-server/tests/it/clients.rs starts, with a workspace whose rules are
`claude_code.web_fetch` and `claude_code.edit` → confirm and `mcp.github.*` → escalate, and one key
per role."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOOK = HERE.parent / "allowly_hook.py"
FIXTURES = HERE.parent / "fixtures"


sys.path.insert(0, str(HERE.parents[1] / "python" / "tests"))
from live_server import env  # noqa: E402,F401 - the suites' fixture: the server and its keys


def fixture(name: str) -> dict:
    """A PreToolUse event as the real Claude Code sent it (fixtures/, recorded by
    fixtures/record.py). Each run is another tool call, as in a session: its own `tool_use_id`
    (the hook keys its check on it)."""
    event = json.loads((FIXTURES / f"pretooluse-{name}.json").read_text("utf-8"))
    event["tool_use_id"] += f"_{uuid.uuid4().hex[:12]}"
    return event


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def decision(self) -> tuple[str, str]:
        out = json.loads(self.stdout)["hookSpecificOutput"]
        assert out["hookEventName"] == "PreToolUse", out
        return out["permissionDecision"], out["permissionDecisionReason"]


def start_hook(config: Path, event: dict | str) -> subprocess.Popen:
    stdin = event if isinstance(event, str) else json.dumps(event)
    p = subprocess.Popen([sys.executable, str(HOOK), "--config", str(config)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdin is not None
    p.stdin.write(stdin)
    p.stdin.close()
    return p


def finish(p: subprocess.Popen, timeout: float = 60) -> Run:
    code = p.wait(timeout=timeout)
    assert p.stdout is not None and p.stderr is not None
    return Run(code, p.stdout.read(), p.stderr.read())


def run_hook(config: Path, event: dict | str) -> Run:
    return finish(start_hook(config, event))

"""The hook in the real Claude Code (the pinned `@anthropic-ai/claude-code`, headless), against the
real server: Claude Code runs `allowly_hook.py` as its PreToolUse hook from `~/.claude/settings.json`
and runs, or does not run, the tool by the hook's answer. The model is the one thing scripted
(`real_claude.ScriptedModel`): it makes fixed tool calls and records what Claude Code sends back.

Claude Code's own rules would let every scripted call run (`permissions.allow` names each tool):
whatever stops a call is the hook. Each test looks at the call's effect (a file, an MCP server's
log), at the `tool_result` the model got, and at Allowly's receipts."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import allowly

import real_claude
from conftest import HOOK
from live_server import eventually

CONFIG = """
url = "{url}"
authorization_id = "{az}"
check_key_env = "ALLOWLY_TEST_CHECK_KEY"
read_key_env = "ALLOWLY_TEST_READ_KEY"
timeout_seconds = 5
escalation_wait_seconds = 20

[[tools]]
match = "Bash"
resource = "shell:{{command}}"

[[tools]]
match = "Write"
scope = "files.write"
resource = "file:{{file_path}}"

[[tools]]
match = "Edit"                   # claude_code.edit: a confirm by the workspace's rules
resource = "file:{{file_path}}"

[[tools]]
match = "Read"
skip = true

[[tools]]
match = "mcp__github__*"         # mcp.github.create_issue: an escalation by the workspace's rules
resource = "github:{{owner}}/{{repo}}"
"""

#: Every tool a test's model calls: Claude Code's own rules allow each without asking.
ALLOWED_BY_CLAUDE_CODE = ["Bash", "Write", "Edit", "Read", "mcp__github__create_issue"]


@dataclass
class Session:
    """A HOME with the hook configured, a project directory, and what the model saw."""

    home: Path
    project: Path
    model: Optional[real_claude.ScriptedModel] = None
    tool_log: Optional[Path] = None

    def result(self, call: int) -> dict[str, Any]:
        """The `tool_result` Claude Code sent the model for the script's `call`-th turn."""
        assert self.model is not None
        results = self.model.tool_results()
        key = f"toolu_scripted_{call}_0"
        assert key in results, f"no tool_result for call {call}: {sorted(results)}"
        return results[key]


def session(tmp_path: Path, env, az: str, url: Optional[str] = None) -> Session:
    """HOME in `tmp_path/home`, the project in `tmp_path/project`."""
    home, project = tmp_path / "home", tmp_path / "project"
    (project / "src").mkdir(parents=True)
    home.mkdir()
    config = tmp_path / "allowly-hook.toml"
    config.write_text(CONFIG.format(url=url or env.url, az=az), "utf-8")
    real_claude.settings_with_hook(home, f"{sys.executable} {HOOK} --config {config}",
                                   permissions={"allow": ALLOWED_BY_CLAUDE_CODE})
    return Session(home, project)


def claude(s: Session, env, script: list[list[real_claude.ToolCall]], mcp: bool = False,
           while_running=None) -> real_claude.Run:
    """Runs Claude Code in `s` with the model playing `script`; `while_running(process)` is
    called once it has started. The hook's keys come from Claude Code's environment."""
    keys = {"ALLOWLY_TEST_CHECK_KEY": env.checker, "ALLOWLY_TEST_READ_KEY": env.reader}
    extra: tuple[str, ...] = ()
    if mcp:
        s.tool_log = s.home.parent / "mcp-calls.jsonl"
        extra = real_claude.mcp_args(sys.executable, s.tool_log)
        keys.update(real_claude.mcp_env())
    with real_claude.ScriptedModel(script) as model:
        s.model = model
        p = real_claude.start(model, s.home, s.project, env=keys, extra_args=extra)
        if while_running is not None:
            try:
                while_running(p)
            except BaseException:
                p.kill()
                p.wait()
                raise
        run = real_claude.finish(p)
    assert run.code == 0 and run.result is not None, run
    assert not model.unknown, f"Claude Code asked the scripted model for {model.unknown}"
    return run


def grant(env, scopes: list[str], resources: list[str]) -> str:
    with allowly.Allowly(env.admin, base_url=env.url) as admin:
        return admin.create_authorization("claude-code-user", scopes, resources=resources).authorization.id


def checks(env, az: str) -> list[dict[str, Any]]:
    """The bodies of the `check` receipts of `az`, in order."""
    with allowly.Allowly(env.reader, base_url=env.url) as reader:
        return [r.body for r in reader.trail(az) if r.body["kind"] == "check"]


def denied(run: real_claude.Run) -> set[str]:
    """The calls Claude Code reports it did not run (`permission_denials` of its result)."""
    assert run.result is not None
    return {d["tool_use_id"] for d in run.result.get("permission_denials", [])}


def test_allowed_calls_run_and_each_has_a_receipt(tmp_path, env):
    az = grant(env, ["claude_code.bash", "files.write"], ["shell:touch *", f"file:{tmp_path / 'project'}/*"])
    s = session(tmp_path, env, az)
    written = s.project / "src" / "discounts.ts"
    run = claude(s, env, [[("Bash", {"command": "touch ran-by-bash", "description": "Mark"})],
                          [("Write", {"file_path": str(written), "content": "export const SUMMER = 0.1;\n"})]])
    assert (s.project / "ran-by-bash").is_file(), run
    assert written.read_text("utf-8") == "export const SUMMER = 0.1;\n", run
    assert not s.result(0).get("is_error") and not s.result(1).get("is_error"), run
    assert denied(run) == set(), run
    assert [(b["decision"], b["scopes"], b["resource"]) for b in checks(env, az)] == [
        ("allow", ["claude_code.bash"], "shell:touch ran-by-bash"),
        ("allow", ["files.write"], f"file:{written}"),
    ]


def test_a_denied_call_does_not_run_and_the_model_gets_allowlys_reason(tmp_path, env):
    az = grant(env, ["claude_code.bash"], ["shell:ls *"])
    s = session(tmp_path, env, az)
    run = claude(s, env, [[("Bash", {"command": "touch ran-by-bash", "description": "Mark"})]])
    assert not (s.project / "ran-by-bash").exists(), run
    result = s.result(0)
    text = real_claude.result_text(result)
    assert result.get("is_error") and "Allowly denied claude_code.bash on shell:touch ran-by-bash: " \
        "resource_not_covered" in text, result
    assert [(b["decision"], b["resource"]) for b in checks(env, az)] == [("deny", "shell:touch ran-by-bash")]


def test_with_allowly_unreachable_no_call_runs(tmp_path, env):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    s = session(tmp_path, env, "au_any", url=dead)
    written = s.project / "src" / "discounts.ts"
    run = claude(s, env, [[("Bash", {"command": "touch ran-by-bash", "description": "Mark"})],
                          [("Write", {"file_path": str(written), "content": "x\n"})]])
    assert not (s.project / "ran-by-bash").exists() and not written.exists(), run
    for call in (0, 1):
        text = real_claude.result_text(s.result(call))
        assert "cannot reach Allowly" in text and "(on_unreachable = deny)" in text, text


def test_a_confirm_is_an_ask_and_headless_claude_code_does_not_run_the_call(tmp_path, env):
    """Headless, nobody answers a permission prompt: Claude Code 2.1.332 does not run a call the
    hook answers `ask`, lists it in `permission_denials`, and gives the model the hook's reason.
    The confirmation waits in Allowly's inbox for whoever answers it there."""
    az = grant(env, ["claude_code.edit"], [f"file:{tmp_path / 'project'}/*"])
    s = session(tmp_path, env, az)
    prices = s.project / "src" / "prices.ts"
    prices.write_text("export const VAT = 0.19;\n", "utf-8")
    run = claude(s, env, [[("Read", {"file_path": str(prices)})],  # Edit needs a Read first
                          [("Edit", {"file_path": str(prices), "old_string": "0.19", "new_string": "0.2"})]])
    assert prices.read_text("utf-8") == "export const VAT = 0.19;\n", run
    assert "VAT = 0.19" in real_claude.result_text(s.result(0))  # the Read ran: the Edit was possible
    assert denied(run) == {"toolu_scripted_1_0"}, run
    text = real_claude.result_text(s.result(1))
    assert s.result(1).get("is_error") and f"Allowly asks you to confirm claude_code.edit on file:{prices}" in text
    with allowly.Allowly(env.reader, base_url=env.url) as reader:
        (pending,) = list(reader.list_confirmations(authorization_id=az))
    assert f"(confirmation {pending.nonce})" in text and pending.scopes == ["claude_code.edit"], text


def test_an_escalated_mcp_call_runs_once_approved_while_claude_code_waits(tmp_path, env):
    """A real stdio MCP server's tool: Claude Code waits on the hook while the hook waits on the
    approver; the approval lets the call reach the server."""
    az = grant(env, ["mcp.github.*"], ["github:acme/*"])
    s = session(tmp_path, env, az)
    issue = {"owner": "acme", "repo": "shop", "title": "Prices are off by VAT", "body": "See src/prices.ts"}
    resolved: list[str] = []

    def approve(p) -> None:
        with allowly.Allowly(env.admin, base_url=env.url) as admin:
            def pending() -> list:
                assert p.poll() is None, "Claude Code ended before an escalation appeared"
                assert s.tool_log is not None and not s.tool_log.exists(), "the MCP tool ran before the approval"
                return list(admin.list_escalations(authorization_id=az))

            (esc,) = eventually("the hook's escalation", pending, deadline_s=30)
            assert esc.scopes == ["mcp.github.create_issue"] and esc.resource == "github:acme/shop", esc
            admin.resolve_escalation(esc.id, allowly.APPROVED, "release-manager")
            resolved.append(esc.id)

    run = claude(s, env, [[("mcp__github__create_issue", issue)]], mcp=True, while_running=approve)
    assert resolved and s.tool_log is not None and s.tool_log.is_file(), run
    assert s.tool_log.read_text("utf-8").count("Prices are off by VAT") == 1
    assert "created issue 'Prices are off by VAT' in acme/shop" in real_claude.result_text(s.result(0)), run
    assert [b["decision"] for b in checks(env, az)] == ["escalate"]

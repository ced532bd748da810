"""The PreToolUse hook fed the events the real Claude Code sent (fixtures/, recorded by
fixtures/record.py), run as Claude Code runs it, against the real server."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import allowly
import pytest

import real_claude
from conftest import FIXTURES, HERE, finish, fixture, run_hook, start_hook

CONFIG = """
url = "{url}"
authorization_id = "{az}"
check_key_env = "ALLOWLY_TEST_CHECK_KEY"
read_key_env = "ALLOWLY_TEST_READ_KEY"
escalation_wait_seconds = {wait}
{extra}

[[tools]]
match = "Bash"
resource = "shell:{{command}}"

[[tools]]
match = ["Write", "Edit"]
scope = "files.write"
resource = "file:{{file_path}}"

[[tools]]
match = "Read"
skip = true

[[tools]]
match = "mcp__github__*"
resource = "github:{{owner}}/{{repo}}"
"""


def config(tmp_path: Path, env, az: str, wait: float = 30, extra: str = "", url: str | None = None) -> Path:
    path = tmp_path / "allowly-hook.toml"
    path.write_text(CONFIG.format(url=url or env.url, az=az, wait=wait, extra=extra), "utf-8")
    return path


def grant(env, scopes: list[str], resources: list[str] | None = None) -> str:
    with allowly.Allowly(env.admin, base_url=env.url) as admin:
        return admin.create_authorization("claude-code-user", scopes, resources=resources).authorization.id


def test_a_granted_tool_call_is_allowed_and_its_receipt_records_the_call(tmp_path, env):
    az = grant(env, ["claude_code.bash"], ["shell:npm *"])
    run = run_hook(config(tmp_path, env, az), fixture("bash"))
    assert run.code == 0, run
    decision, reason = run.decision
    assert decision == "allow" and "claude_code.bash on shell:npm test" in reason, reason
    receipt_id = reason.rsplit("(receipt ", 1)[1].rstrip(")")
    with allowly.Allowly(env.reader, base_url=env.url) as reader:
        body = reader.get_receipt(receipt_id).body
    assert (body["kind"], body["decision"], body["scopes"], body["resource"]) == \
        ("check", "allow", ["claude_code.bash"], "shell:npm test")
    assert body["authorization_id"] == az and body["context_hash"]


def test_a_call_outside_the_grant_is_denied_with_allowlys_reason(tmp_path, env):
    az = grant(env, ["claude_code.bash"])
    write = fixture("write")
    decision, reason = run_hook(config(tmp_path, env, az), write).decision
    assert decision == "deny" and f"files.write on file:{write['tool_input']['file_path']}: scope_not_granted" in reason
    # A resource outside the grant's resources too.
    az = grant(env, ["claude_code.bash"], ["shell:make *"])
    decision, reason = run_hook(config(tmp_path, env, az), fixture("bash")).decision
    assert decision == "deny" and "resource_not_covered" in reason, reason


def test_a_confirm_is_asked_of_the_user_by_claude_code(tmp_path, env):
    az = grant(env, ["claude_code.web_fetch"])
    decision, reason = run_hook(config(tmp_path, env, az), fixture("webfetch")).decision
    assert decision == "ask" and "confirm claude_code.web_fetch" in reason and "confirmation cn" in reason, reason


def test_an_escalation_is_waited_for_and_the_approval_lets_the_call_run(tmp_path, env):
    az = grant(env, ["mcp.github.*"])
    hook = start_hook(config(tmp_path, env, az), fixture("mcp"))
    with allowly.Allowly(env.admin, base_url=env.url) as admin:
        deadline = time.monotonic() + 20
        pending: list = []
        while not pending:
            assert time.monotonic() < deadline and hook.poll() is None, "no escalation appeared"
            pending = list(admin.list_escalations(authorization_id=az))
        (esc,) = pending
        assert esc.scopes == ["mcp.github.create_issue"] and esc.resource == "github:acme/shop"
        admin.resolve_escalation(esc.id, allowly.APPROVED, "release-manager")
    run = finish(hook)
    decision, reason = run.decision
    assert decision == "allow" and f"approved (escalation {esc.id})" in reason, reason


def test_an_escalation_not_answered_in_time_is_denied(tmp_path, env):
    az = grant(env, ["mcp.github.*"])
    started = time.monotonic()
    decision, reason = run_hook(config(tmp_path, env, az, wait=0.5), fixture("mcp")).decision
    assert decision == "deny" and "is not answered after 0.5 s" in reason, reason
    assert time.monotonic() - started < 15


def test_a_skipped_tool_gets_no_decision(tmp_path, env):
    run = run_hook(config(tmp_path, env, "au_any"), fixture("read"))
    assert (run.code, run.stdout) == (0, ""), run


def test_unreachable_allowly_fails_closed_unless_configured(tmp_path, env):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    decision, reason = run_hook(config(tmp_path, env, "au_any", url=dead), fixture("bash")).decision
    assert decision == "deny" and "cannot reach Allowly" in reason, reason
    decision, _ = run_hook(config(tmp_path, env, "au_any", url=dead, extra='on_unreachable = "ask"'),
                           fixture("bash")).decision
    assert decision == "ask"


def test_an_unknown_authorization_is_denied(tmp_path, env):
    decision, reason = run_hook(config(tmp_path, env, "au_nope"), fixture("bash")).decision
    assert decision == "deny" and "unknown_authorization" in reason, reason


def test_a_template_field_the_tool_input_lacks_denies_the_call(tmp_path, env):
    az = grant(env, ["claude_code.bash"])
    event = fixture("bash")
    del event["tool_input"]["command"]
    decision, reason = run_hook(config(tmp_path, env, az), event).decision
    assert decision == "deny" and "needs 'command'" in reason, reason


@pytest.mark.parametrize("event", ["not json", json.dumps({"hook_event_name": "PostToolUse", "tool_name": "Bash"}),
                                   json.dumps({"hook_event_name": "PreToolUse"})])
def test_input_that_is_not_a_pretooluse_event_blocks_the_call(tmp_path, env, event):
    run = run_hook(config(tmp_path, env, "au_any"), event)
    assert run.code == 2 and run.stdout == "" and "Allowly hook" in run.stderr, run


def test_a_broken_configuration_blocks_the_call(tmp_path, env):
    path = tmp_path / "broken.toml"
    path.write_text('url = "http://x"\nauthorization_id = "au_1"\ncheck_key = "k"\non_unreachable = "maybe"\n')
    run = run_hook(path, fixture("bash"))
    assert run.code == 2 and "on_unreachable must be one of" in run.stderr, run


def test_the_same_tool_call_checked_twice_is_one_check(tmp_path, env):
    """A retried hook (same session and tool_use_id) replays Allowly's answer: one receipt."""
    az = grant(env, ["claude_code.bash"])
    event = fixture("bash")
    first = run_hook(config(tmp_path, env, az), event).decision
    second = run_hook(config(tmp_path, env, az), event).decision
    assert first == second and first[0] == "allow", (first, second)
    with allowly.Allowly(env.reader, base_url=env.url) as reader:
        assert reader.get_authorization(az).trail_length == 2  # the grant and one check


@pytest.mark.parametrize("name, scope, resource, expected", [
    ("bash", "claude_code.bash", "shell:npm *", ("allow", "claude_code.bash on shell:npm test (receipt ")),
    ("read", "claude_code.read", None, None),  # skip: no decision
    ("edit", "files.write", "file:{cwd}/*", ("allow", "files.write on file:{cwd}/src/prices.ts (receipt ")),
    ("write", "files.write", "file:{cwd}/*", ("allow", "files.write on file:{cwd}/src/discounts.ts (receipt ")),
    ("toolsearch", "claude_code.tool_search", None, ("allow", "claude_code.tool_search (receipt ")),  # unmapped
    ("webfetch", "claude_code.web_fetch", None, ("ask", "confirm claude_code.web_fetch (confirmation cn")),
    ("mcp", "mcp.github.*", "github:acme/*",
     ("deny", "mcp.github.create_issue on github:acme/shop is not answered after 0.5 s")),
])
def test_each_recorded_event_is_checked_as_its_scope(tmp_path, env, name, scope, resource, expected):
    """Every kind of tool call Claude Code sent, with the example configuration: its scope and
    resource, and the decision the workspace's rules give it."""
    event = fixture(name)
    az = grant(env, [scope], [resource.format(cwd=event["cwd"])] if resource else None)
    run = run_hook(config(tmp_path, env, az, wait=0.5), event)
    if expected is None:
        assert (run.code, run.stdout) == (0, ""), run
        return
    decision, reason = run.decision
    assert decision == expected[0] and expected[1].format(cwd=event["cwd"]) in reason, reason


def test_the_fixtures_were_recorded_by_the_pinned_claude_code():
    """Re-record (fixtures/record.py) when the pinned version changes."""
    manifest = json.loads((FIXTURES / "manifest.json").read_text("utf-8"))
    pinned = json.loads((HERE.parent / "package.json").read_text("utf-8"))["dependencies"]["@anthropic-ai/claude-code"]
    assert manifest["claude_code_version"] == pinned == real_claude.claude_version()
    assert set(manifest["fixtures"]) == {p.name for p in FIXTURES.glob("pretooluse-*.json")}
    for name, entry in manifest["fixtures"].items():
        event = json.loads((FIXTURES / name).read_text("utf-8"))
        assert event["hook_event_name"] == "PreToolUse" and event["tool_name"] == entry["tool_name"], name

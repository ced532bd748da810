#!/usr/bin/env python3
"""Allowly as a Claude Code PreToolUse hook: every tool call is asked of Allowly first.

Claude Code runs this command before each tool call it matches, with the call as JSON on stdin
(`hook_event_name`, `tool_name`, `tool_input`, `tool_use_id`, `session_id`, `cwd`, …) and reads
the decision from stdout (https://code.claude.com/docs/en/hooks, "PreToolUse"):

    {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                            "permissionDecision": "allow" | "deny" | "ask",
                            "permissionDecisionReason": "…"}}

The tool call becomes a `POST /v1/check` of the scope and resource a small TOML file maps it to
(README.md here; the scope is the canonical one of docs/tool-scopes.md unless the file names
another). Allowly's `allow` is `allow`; `deny` is `deny` with Allowly's reason (Claude sees it);
`confirm` is `ask` (Claude Code asks the user, the reason saying what Allowly wants confirmed) or,
with `on_confirm = "wait"`, a wait for the answer given through Allowly; `escalate` waits for the
approver at most `escalation_wait_seconds` and is `deny` if nobody answered by then. When Allowly
cannot be reached the call is refused (`on_unreachable = "deny"`, the default; `ask` or `allow`
if configured). Anything wrong with the input or the configuration blocks the call too (exit
status 2, the reason on stderr): a broken gate never lets a tool run.

Usage (settings.json): {"type": "command", "command": "python3 /path/to/allowly_hook.py --config
/path/to/allowly-hook.toml", "timeout": 180}
"""

from __future__ import annotations

import fnmatch
import json
import os
import string
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any, Optional

import allowly
from allowly import errors
from allowly.tool_scopes import claude_code_scope

#: Exit status Claude Code reads as "block this tool call, stderr is the reason".
BLOCK = 2
#: A string of the tool input longer than this is cut in the check's `context` (what a person
#: confirming is shown; its hash is in the receipt).
CONTEXT_STRING_MAX = 2000


class HookError(Exception):
    """The input or the configuration is wrong: the call is blocked (exit 2)."""


@dataclass
class Rule:
    patterns: list[str]
    scope: Optional[str] = None
    resource: Optional[str] = None
    skip: bool = False


@dataclass
class Config:
    url: str
    authorization_id: str
    check_key: str
    read_key: Optional[str]
    timeout_seconds: float = 5.0
    escalation_wait_seconds: float = 120.0
    on_unreachable: str = "deny"
    on_confirm: str = "ask"
    unmapped: str = "check"
    rules: list[Rule] = field(default_factory=list)


def _secret(doc: dict[str, Any], name: str, required: bool) -> Optional[str]:
    """`name` itself, or the environment variable `name_env` names (keys belong in the
    environment, not in a file next to the project)."""
    value = doc.get(name)
    env = doc.get(f"{name}_env")
    if value is None and env is not None:
        if not isinstance(env, str):
            raise HookError(f"{name}_env must be a string")
        value = os.environ.get(env)
    if value is None and required:
        raise HookError(f"{name} (or {name}_env naming a set variable) is required")
    if value is not None and not isinstance(value, str):
        raise HookError(f"{name} must be a string")
    return value


def _choice(doc: dict[str, Any], name: str, default: str, allowed: tuple[str, ...]) -> str:
    v = doc.get(name, default)
    if v not in allowed:
        raise HookError(f"{name} must be one of {', '.join(allowed)}")
    return v


def _seconds(doc: dict[str, Any], name: str, default: float) -> float:
    v = doc.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise HookError(f"{name} must be a number of seconds")
    return float(v)


KNOWN = {"url", "authorization_id", "authorization_id_env", "check_key", "check_key_env", "read_key",
         "read_key_env", "timeout_seconds", "escalation_wait_seconds", "on_unreachable", "on_confirm",
         "unmapped", "tools"}


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise HookError(f"cannot read the configuration {path}: {e}") from None
    unknown = set(doc) - KNOWN
    if unknown:
        raise HookError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
    rules = []
    for i, t in enumerate(doc.get("tools", [])):
        if not isinstance(t, dict) or set(t) - {"match", "scope", "resource", "skip"}:
            raise HookError(f"tools[{i}] takes match, scope, resource and skip")
        patterns = [t["match"]] if isinstance(t.get("match"), str) else t.get("match")
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
            raise HookError(f"tools[{i}].match must be a tool name pattern or a list of them")
        for name in ("scope", "resource"):
            if name in t and not isinstance(t[name], str):
                raise HookError(f"tools[{i}].{name} must be a string")
        rules.append(Rule(patterns, t.get("scope"), t.get("resource"), bool(t.get("skip", False))))
    url = doc.get("url", allowly.client.DEFAULT_BASE_URL)
    if not isinstance(url, str):
        raise HookError("url must be a string")
    return Config(
        url=url,
        authorization_id=str(_secret(doc, "authorization_id", True)),
        check_key=str(_secret(doc, "check_key", True)),
        read_key=_secret(doc, "read_key", False),
        timeout_seconds=_seconds(doc, "timeout_seconds", 5.0),
        escalation_wait_seconds=_seconds(doc, "escalation_wait_seconds", 120.0),
        on_unreachable=_choice(doc, "on_unreachable", "deny", ("deny", "ask", "allow")),
        on_confirm=_choice(doc, "on_confirm", "ask", ("ask", "wait")),
        unmapped=_choice(doc, "unmapped", "check", ("check", "allow", "deny")),
        rules=rules,
    )


def read_input(raw: str) -> dict[str, Any]:
    try:
        event = json.loads(raw)
    except ValueError as e:
        raise HookError(f"the hook input is not JSON: {e}") from None
    if not isinstance(event, dict) or event.get("hook_event_name") != "PreToolUse":
        raise HookError("not a PreToolUse hook input")
    if not isinstance(event.get("tool_name"), str) or not isinstance(event.get("tool_input", {}), dict):
        raise HookError("the hook input lacks tool_name or has a tool_input that is not an object")
    return event


class _Fields(string.Formatter):
    """`{name}` from the tool input, top-level members only, and only strings and numbers:
    a template naming anything else is an error (the call is denied, never checked wrongly)."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if field_name not in kwargs:
            raise KeyError(field_name)
        v = kwargs[field_name]
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise KeyError(field_name)
        return v, field_name


def resource_of(template: Optional[str], tool_input: dict[str, Any]) -> Optional[str]:
    if template is None:
        return None
    return _Fields().vformat(template, (), tool_input)


def _shown(v: Any) -> Any:
    if isinstance(v, str) and len(v) > CONTEXT_STRING_MAX:
        return v[:CONTEXT_STRING_MAX] + f"… ({len(v)} characters)"
    if isinstance(v, dict):
        return {k: _shown(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_shown(x) for x in v]
    return v


def answer(decision: str, reason: str) -> dict[str, Any]:
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": decision,
                                   "permissionDecisionReason": reason}}


def _receipt(result: Any) -> str:
    rid = getattr(result, "receipt_id", None)
    if rid is None and getattr(result, "receipt", None) is not None:
        rid = result.receipt.receipt_id
    return f" (receipt {rid})" if rid else ""


def decide(event: dict[str, Any], cfg: Config) -> Optional[dict[str, Any]]:
    """The hook's answer for one tool call; None: no decision (Claude Code's own rules apply)."""
    tool = event["tool_name"]
    tool_input = event.get("tool_input") or {}
    rule = next((r for r in cfg.rules if any(fnmatch.fnmatchcase(tool, p) for p in r.patterns)), None)
    if rule is not None and rule.skip:
        return None
    if rule is None and cfg.unmapped != "check":
        return answer(cfg.unmapped, f"Allowly: {tool} is not in the hook's configuration ({cfg.unmapped})")
    scope = (rule.scope if rule and rule.scope else None) or claude_code_scope(tool)
    if scope is None:
        return answer("deny", f"Allowly: the tool name {tool!r} maps to no scope")
    try:
        resource = resource_of(rule.resource if rule else None, tool_input)
    except (KeyError, ValueError, IndexError) as e:
        return answer("deny", f"Allowly: the resource template of {tool} needs {e} from the tool input")
    what = f"{scope}" + (f" on {resource}" if resource else "")
    context = {"tool": tool, "input": _shown(tool_input), "tool_use_id": event.get("tool_use_id")}
    key = None
    if isinstance(event.get("session_id"), str) and isinstance(event.get("tool_use_id"), str):
        # One tool call, one check: a retry of the hook replays Allowly's first answer.
        key = f"claude-code:{event['session_id']}:{event['tool_use_id']}"
    try:
        with allowly.Allowly(cfg.check_key, base_url=cfg.url, timeout=cfg.timeout_seconds, max_retries=1) as checker:
            result = checker.check(cfg.authorization_id, scope, resource=resource, context=context,
                                   idempotency_key=key)
        if result.decision == allowly.ALLOW:
            return answer("allow", f"Allowly allowed {what}{_receipt(result)}")
        if result.decision == allowly.DENY:
            return answer("deny", f"Allowly denied {what}: {result.reason}{_receipt(result)}")
        if result.decision == allowly.CONFIRM and cfg.on_confirm == "ask":
            nonce = result.confirmation.nonce if result.confirmation else "?"
            return answer("ask", f"Allowly asks you to confirm {what} (confirmation {nonce}){_receipt(result)}")
        return _wait(result, what, cfg)
    except errors.TransportError as e:
        return _unreachable(cfg, f"cannot reach Allowly at {cfg.url}: {e}")
    except errors.Unavailable as e:
        return _unreachable(cfg, f"Allowly is unavailable: {e.code}")
    except errors.ServerError as e:
        return _unreachable(cfg, f"Allowly failed: {e.code}")
    except errors.ApiError as e:
        # A wrong key, a revoked or unknown authorization id, a malformed scope: refuse.
        return answer("deny", f"Allowly refused the check of {what}: {e.code} {e.detail}")


def _wait(result: Any, what: str, cfg: Config) -> dict[str, Any]:
    """An escalation (or a confirmation with on_confirm = "wait"): the person's answer, within
    the bound; still pending then is a deny."""
    step = (f"escalation {result.escalation.id}" if result.escalation
            else f"confirmation {result.confirmation.nonce}" if result.confirmation else "the request")
    if not cfg.read_key:
        return answer("deny", f"Allowly sent {what} to a person ({step}) and the hook has no read key to wait "
                              f"for the answer{_receipt(result)}")
    with allowly.Allowly(cfg.read_key, base_url=cfg.url, timeout=cfg.timeout_seconds, max_retries=1) as reader:
        final = reader.wait_for_decision(result, timeout=cfg.escalation_wait_seconds)
    if final.pending:
        return answer("deny", f"Allowly: {step} for {what} is not answered after "
                              f"{cfg.escalation_wait_seconds:g} s; ask again once it is")
    if final.allowed:
        return answer("allow", f"Allowly: {what} approved ({step}){_receipt(final)}")
    return answer("deny", f"Allowly: {what} denied ({step}): {final.reason}{_receipt(final)}")


def _unreachable(cfg: Config, why: str) -> dict[str, Any]:
    verdict = {"deny": "refused", "ask": "left to you", "allow": "allowed unchecked"}[cfg.on_unreachable]
    return answer(cfg.on_unreachable, f"Allowly: {why}; the call is {verdict} (on_unreachable = {cfg.on_unreachable})")


def main(argv: list[str]) -> int:
    config = os.environ.get("ALLOWLY_HOOK_CONFIG")
    if len(argv) == 2 and argv[0] == "--config":
        config = argv[1]
    elif argv:
        print("usage: allowly_hook.py [--config FILE]  (or ALLOWLY_HOOK_CONFIG)", file=sys.stderr)
        return BLOCK
    try:
        if not config:
            raise HookError("no configuration: --config FILE or ALLOWLY_HOOK_CONFIG")
        cfg = load_config(config)
        out = decide(read_input(sys.stdin.read()), cfg)
    except HookError as e:
        print(f"Allowly hook: {e}", file=sys.stderr)
        return BLOCK
    except Exception as e:  # noqa: BLE001 - any other exit status lets the tool run (non-blocking error)
        print(f"Allowly hook failed, the call is blocked: {type(e).__name__}: {e}", file=sys.stderr)
        return BLOCK
    if out is not None:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One Allowly check before each tool call of an agent, whatever the agent framework.

`ToolGate.decide(tool, args)` maps the call to a scope (and a resource), asks `POST /v1/check`
and answers a `GateDecision`: run the tool or not, and, when not, the message the model gets
instead of the tool's output. The framework adapters beside it (`openai_agents/`, `langchain/`)
only translate that decision into their framework's words.

- allow: the tool runs.
- deny: it does not; the model is told Allowly's reason and the receipt id.
- confirm / escalate: `on_pending(result)` is called first (show the user the confirmation,
  page the approver), then the gate waits for the person's answer with the SDK's
  `wait_for_decision` for at most `wait_timeout` seconds (a key with the `read` role:
  `waiter`). Approved: the tool runs. Declined, expired, or still unanswered at the bound: it
  does not, and the model is told so (with the nonce or escalation id to come back with).
- Allowly unreachable or failing, a tool without a scope, a resource template whose argument is
  missing: the tool does not run (fail closed).

Every decision names its receipts: the check's, then the answer's or the resolution's.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import allowly
from allowly import errors
from allowly.tool_scopes import segment


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided about one tool call."""

    tool: str
    scope: Optional[str]
    #: The check's decision (`allow`, `deny`, `confirm`, `escalate`), or `error` when there was
    #: no usable answer from Allowly.
    decision: str
    #: Why: the check's reason, or the person's (`approved`, `declined`, `confirmation_expired`,
    #: ...), `still_pending`, `allowly_unreachable`, `no_scope`, `missing_argument`, an error code.
    reason: str
    #: True only when the tool may run.
    allowed: bool
    #: The check's receipt id, then the answer's or the resolution's.
    receipt_ids: tuple[str, ...] = ()
    #: Unanswered when the wait ended: the confirmation's nonce or the escalation's id.
    pending: bool = False
    step: Optional[str] = None
    resource: Optional[str] = None
    #: The model's id of the tool call, when the framework gives one.
    call_id: Optional[str] = None

    def message(self) -> str:
        """What the model gets instead of the tool's output (allowed calls: the output itself)."""
        receipts = f" Receipt: {', '.join(self.receipt_ids)}." if self.receipt_ids else ""
        what = f"`{self.tool}` ({self.scope or 'no scope'})"
        if self.allowed:
            return f"Allowly allowed {what}.{receipts}"
        if self.pending:
            kind = "confirmation" if self.decision == allowly.CONFIRM else "escalation"
            return (f"Allowly: {what} waits for a person's answer ({kind} {self.step}); the tool did not run. "
                    f"Do not retry it until it is answered.{receipts}")
        return f"Allowly denied {what}: {self.reason}. The tool did not run.{receipts}"


@dataclass
class ToolGate:
    """Gates tool calls on one authorization (the user's grant to this agent).

    `checker` holds a key with the `check` role; `waiter` one with `read` (None: a confirm or
    escalate is reported at once as pending). `scopes` maps a tool's name to its scope; a tool
    not in it gets `<prefix>.<tool>` by the canonical mapping (docs/tool-scopes.md).
    `resources` maps a tool's name to a template filled from its arguments
    (`"acct:{account}"`). Every decision is appended to `decisions`."""

    checker: allowly.Allowly
    authorization_id: str
    waiter: Optional[allowly.Allowly] = None
    scopes: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, str] = field(default_factory=dict)
    prefix: str = "tools"
    wait_timeout: float = 30.0
    on_pending: Optional[Callable[[allowly.CheckResult], None]] = None
    decisions: list[GateDecision] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def scope_of(self, tool: str) -> Optional[str]:
        if tool in self.scopes:
            return self.scopes[tool]
        seg = segment(tool)
        return f"{self.prefix}.{seg}" if seg else None

    def decide(self, tool: str, args: Any, *, call_id: Optional[str] = None) -> GateDecision:
        """Asks Allowly about one call of `tool` with `args` (a dict, else refused); never raises. `call_id`
        (the model's id of the call) makes the check's Idempotency-Key, so that a retried step
        of the agent gets the same decision and receipt, not a second one."""
        if isinstance(args, dict):
            d = self._decide(tool, args, call_id)
        else:
            d = GateDecision(tool, self.scope_of(tool), "error", "malformed_arguments", False)
        d = dataclasses.replace(d, call_id=call_id)
        with self._lock:
            self.decisions.append(d)
        return d

    def _decide(self, tool: str, args: dict[str, Any], call_id: Optional[str]) -> GateDecision:
        scope = self.scope_of(tool)
        if scope is None:
            return GateDecision(tool, None, "error", "no_scope", False)
        resource = None
        if tool in self.resources:
            try:
                resource = self.resources[tool].format_map(args)
            except (KeyError, IndexError, ValueError):
                return GateDecision(tool, scope, "error", "missing_argument", False)
        key = f"{self.authorization_id}:{call_id}" if call_id else None
        try:
            result = self.checker.check(self.authorization_id, scope, resource=resource,
                                        context={"tool": tool, "arguments": args}, idempotency_key=key)
        except errors.TransportError:
            return GateDecision(tool, scope, "error", "allowly_unreachable", False, resource=resource)
        except errors.ApiError as e:
            return GateDecision(tool, scope, "error", e.code, False, resource=resource)
        receipts = (result.receipt.receipt_id,) if result.receipt else ()
        if result.decision in (allowly.ALLOW, allowly.DENY):
            return GateDecision(tool, scope, result.decision, result.reason, result.allowed, receipts,
                                resource=resource)
        step = result.confirmation.nonce if result.confirmation else result.escalation.id if result.escalation else None
        if self.on_pending is not None:
            self.on_pending(result)
        if self.waiter is None:
            return GateDecision(tool, scope, result.decision, result.reason, False, receipts, True, step, resource)
        try:
            final = self.waiter.wait_for_decision(result, timeout=self.wait_timeout)
        except errors.TransportError:
            return GateDecision(tool, scope, result.decision, "allowly_unreachable", False, receipts, True, step, resource)
        except errors.ApiError as e:
            return GateDecision(tool, scope, result.decision, e.code, False, receipts, True, step, resource)
        if final.receipt_id:
            receipts += (final.receipt_id,)
        return GateDecision(tool, scope, result.decision, final.reason, final.allowed, receipts, final.pending,
                            step, resource)

"""What both examples share: the app's tools (plain functions, which each framework wraps as
its own tools), the scopes the user grants them, the calls the scripted model makes, and a gate
on the Allowly server named by the environment (`ALLOWLY_URL`, `ALLOWLY_ADMIN_KEY`,
`ALLOWLY_CHECK_KEY`, `ALLOWLY_READ_KEY`; the workspace's rules `email.send` → confirm,
`payments.*` → escalate)."""

from __future__ import annotations

import os
from typing import Callable, Optional

import allowly

from allowly_tool_gate import GateDecision, ToolGate

#: The app's tools and the scopes its users grant (the rest would get `tools.<name>`).
SCOPES = {"read_calendar": "calendar.read", "send_email": "email.send", "send_payment": "payments.send",
          "delete_file": "files.delete"}
RESOURCES = {"send_payment": "acct:{account}"}

#: What the scripted model asks for, in one turn: (tool, arguments, call id).
CALLS = [
    ("read_calendar", {"day": "2026-12-07"}, "call_cal"),
    ("delete_file", {"path": "/home/user/thesis.tex"}, "call_rm"),
    ("send_email", {"to": "bob@example.com", "subject": "Q3 numbers"}, "call_mail"),
    ("send_payment", {"account": "DE89-3704", "amount_cents": 125000}, "call_pay"),
]
FINAL = "Done what Allowly let me do."


def app_tools() -> tuple[list[Callable[..., str]], list[tuple[str, dict]]]:
    """The tools, and the list each tool body appends to when it really runs."""
    ran: list[tuple[str, dict]] = []

    def read_calendar(day: str) -> str:
        """Read the user's calendar for a day."""
        ran.append(("read_calendar", {"day": day}))
        return f"{day}: 10:00 standup, 14:00 dentist"

    def send_email(to: str, subject: str) -> str:
        """Send an email."""
        ran.append(("send_email", {"to": to, "subject": subject}))
        return f"sent '{subject}' to {to}"

    def send_payment(account: str, amount_cents: int) -> str:
        """Pay an amount to an account."""
        ran.append(("send_payment", {"account": account, "amount_cents": amount_cents}))
        return f"paid {amount_cents} cents to {account}"

    def delete_file(path: str) -> str:
        """Delete a file."""
        ran.append(("delete_file", {"path": path}))
        return f"deleted {path}"

    return [read_calendar, send_email, send_payment, delete_file], ran


def demo_gate(wait_timeout: float = 0.5) -> ToolGate:
    """Grants the user's approval of three scopes (admin key) and gates on it: the user approves
    every confirmation at once; nobody answers an escalation within `wait_timeout`."""
    url = os.environ.get("ALLOWLY_URL", "http://127.0.0.1:8080")
    admin = allowly.Allowly(os.environ["ALLOWLY_ADMIN_KEY"], base_url=url)
    checker = allowly.Allowly(os.environ["ALLOWLY_CHECK_KEY"], base_url=url)
    reader = allowly.Allowly(os.environ["ALLOWLY_READ_KEY"], base_url=url)
    grant = admin.create_authorization("example-user", ["calendar.read", "email.send", "payments.send"])
    az = grant.authorization.id
    print(f"authorization {az} (receipt {grant.receipt.receipt_id})")

    def on_pending(result: allowly.CheckResult) -> None:
        # Your UI shows the confirmation to the user and posts their answer; here they say yes.
        # An escalation goes to an approver (a webhook, the inbox); here nobody answers in time.
        if result.confirmation is not None:
            print(f"asking the user: {result.confirmation.context} -> approved")
            admin.answer_confirmation(result.confirmation.nonce, allowly.APPROVED, "example-user",
                                      shown=f"Allow {result.confirmation.context}?")
        elif result.escalation is not None:
            print(f"escalated to an approver: {result.escalation.id}")

    return ToolGate(checker, az, waiter=reader, scopes=SCOPES, resources=RESOURCES, wait_timeout=wait_timeout,
                    on_pending=on_pending)


def report(gate: ToolGate, seen: dict[str, str], ran: list[tuple[str, dict]], final: Optional[str]) -> None:
    """Prints what the model got back for each call, each decision and what ran."""
    by_call: dict[Optional[str], GateDecision] = {d.call_id: d for d in gate.decisions}
    for _, _, call_id in CALLS:
        d = by_call[call_id]
        print(f"{call_id}: {d.decision} -> {'ran' if d.allowed else 'not run'} ({d.reason}; "
              f"receipts {list(d.receipt_ids)})\n    the model got: {seen[call_id]}")
    print(f"tools that ran: {sorted(name for name, _ in ran)}")
    print(f"final output: {final}")

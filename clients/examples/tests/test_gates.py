"""The Allowly tool gate in the OpenAI Agents SDK and in LangGraph (each test runs in both, see
conftest.py), against the real server: allowed calls run, denied ones never do and the model is
told why, confirmations and escalations run only once a person approved within the bound, and
every decision's receipt is surfaced and is the server's."""

from __future__ import annotations

import allowly
import demo
import pytest
from conftest import DRIVERS, Answerer, Clients, _example, run_example

CAL, RM, MAIL, PAY = demo.CALLS


def check_receipt(c: Clients, receipt_id: str, az: str, scope: str) -> dict:
    body = c.reader.get_receipt(receipt_id).body
    assert body["kind"] == "check" and body["authorization_id"] == az and scope in body["scopes"], body
    return body


def test_an_allowed_call_runs_and_a_denied_one_never_does(framework, clients):
    az = clients.grant("calendar.read")
    gate = clients.gate(az)
    out = DRIVERS[framework](gate, [CAL, RM])
    assert out.ran == [("read_calendar", {"day": "2026-12-07"})]
    assert out.seen["call_cal"] == "2026-12-07: 10:00 standup, 14:00 dentist"
    # The model is told the reason and the receipt, instead of the tool's output.
    (rm_receipt,) = out.receipts["call_rm"]
    assert "denied" in out.seen["call_rm"] and "scope_not_granted" in out.seen["call_rm"]
    assert rm_receipt in out.seen["call_rm"] and "did not run" in out.seen["call_rm"]
    (cal_receipt,) = out.receipts["call_cal"]
    assert check_receipt(clients, cal_receipt, az, "calendar.read")["decision"] == "allow"
    assert check_receipt(clients, rm_receipt, az, "files.delete")["decision"] == "deny"
    by_tool = {d.tool: d for d in gate.decisions}
    assert by_tool["read_calendar"].allowed and by_tool["read_calendar"].call_id == "call_cal"
    assert (by_tool["delete_file"].decision, by_tool["delete_file"].reason) == ("deny", "scope_not_granted")


@pytest.mark.parametrize("outcome", [allowly.APPROVED, allowly.DECLINED])
@pytest.mark.parametrize("step", ["confirm", "escalate"])
def test_a_confirmation_or_escalation_runs_only_once_a_person_approved(framework, clients, step, outcome):
    az = clients.grant("email.send", "payments.send")
    person = Answerer(clients.admin, outcome)
    gate = clients.gate(az, on_pending=person, wait_timeout=30)
    call = MAIL if step == "confirm" else PAY
    out = DRIVERS[framework](gate, [call])
    person.join()
    assert len(person.answers) == 1
    answer = person.answers[0]
    (d,) = gate.decisions
    assert d.decision == step and not d.pending
    # Two receipts: the check's and the person's answer's, both surfaced.
    check_id, answer_id = out.receipts[call[2]]
    assert answer_id == answer.receipt.receipt_id
    check_receipt(clients, check_id, az, d.scope)
    approval = clients.reader.get_receipt(answer_id).body["approval"]
    assert approval["outcome"] == outcome
    if step == "escalate":
        assert d.resource == "acct:DE89-3704"
    if outcome == allowly.APPROVED:
        assert d.allowed and out.ran == [(call[0], call[1])]
        assert "Allowly" not in out.seen[call[2]]
    else:
        assert not d.allowed and out.ran == []
        assert "did not run" in out.seen[call[2]] and answer_id in out.seen[call[2]]
        assert d.reason == answer.reason and d.reason in out.seen[call[2]]


def test_an_escalation_unanswered_within_the_bound_is_reported_and_never_runs(framework, clients):
    az = clients.grant("payments.send")
    reported: list[allowly.CheckResult] = []
    gate = clients.gate(az, on_pending=reported.append, wait_timeout=0.2)
    out = DRIVERS[framework](gate, [PAY])
    (result,) = reported
    assert result.escalation is not None
    (d,) = gate.decisions
    assert d.pending and not d.allowed and d.step == result.escalation.id and d.reason == "still_pending"
    seen = out.seen["call_pay"]
    assert result.escalation.id in seen and "waits for a person" in seen and "did not run" in seen
    assert out.receipts["call_pay"] == (result.receipt.receipt_id,) and result.receipt.receipt_id in seen
    # Still in the approver's inbox; an approval now does not run the call after the fact.
    inbox = [e.id for e in clients.admin.list_escalations(authorization_id=az)]
    assert inbox == [result.escalation.id]
    clients.admin.resolve_escalation(result.escalation.id, allowly.APPROVED, "approver-1")
    assert out.ran == []


def test_without_a_read_key_a_confirmation_is_reported_at_once(framework, clients):
    az = clients.grant("email.send")
    gate = clients.gate(az, waiter=None)
    out = DRIVERS[framework](gate, [MAIL])
    (d,) = gate.decisions
    assert d.pending and d.decision == "confirm" and out.ran == []
    assert f"confirmation {d.step}" in out.seen["call_mail"]
    assert [c.nonce for c in clients.admin.list_confirmations(authorization_id=az)] == [d.step]


def test_allowly_unreachable_fails_closed(framework, clients):
    az = clients.grant("calendar.read")
    down = allowly.Allowly(clients.env.checker, base_url="http://127.0.0.1:9", max_retries=0)
    gate = clients.gate(az)
    gate.checker = down
    out = DRIVERS[framework](gate, [CAL])
    assert out.ran == [] and "allowly_unreachable" in out.seen["call_cal"] and out.receipts["call_cal"] == ()


def test_a_call_without_the_argument_its_resource_needs_is_refused_unchecked(framework, clients):
    az = clients.grant("payments.send")
    gate = clients.gate(az)
    out = DRIVERS[framework](gate, [("send_payment", {"amount_cents": 1}, "call_pay")])
    (d,) = gate.decisions
    assert (d.decision, d.reason, d.receipt_ids) == ("error", "missing_argument", ())
    assert out.ran == [] and "missing_argument" in out.seen["call_pay"] and "did not run" in out.seen["call_pay"]
    # Never checked under another resource: the trail has the grant only.
    assert [r.body["kind"] for r in clients.reader.trail(az)] == ["authorization.created"]
    assert gate.decide("send_payment", "not a dict").reason == "malformed_arguments"


def test_langchain_gate_tool_without_langgraph(clients):
    ex = _example("langchain")
    from allowly_langchain import gate_tool
    az = clients.grant("calendar.read")
    gate = clients.gate(az)
    tools, ran = ex.build_tools()
    gated = {t.name: gate_tool(gate, t) for t in tools}
    assert gated["read_calendar"].args == tools[0].args
    assert gated["read_calendar"].invoke({"day": "mon"}) == "mon: 10:00 standup, 14:00 dentist"
    refused = gated["delete_file"].invoke({"path": "/x"})
    assert "scope_not_granted" in refused and gate.decisions[-1].receipt_ids[0] in refused
    assert ran == [("read_calendar", {"day": "mon"})]


@pytest.mark.parametrize("directory", ["openai_agents", "langchain"])
def test_the_example_runs_as_documented(clients, directory):
    out = run_example(directory, clients.env)
    assert "tools that ran: ['read_calendar', 'send_email']" in out, out
    assert f"final output: {demo.FINAL}" in out
    for line in ("call_cal: allow -> ran (granted;", "call_rm: deny -> not run (scope_not_granted;",
                 "call_mail: confirm -> ran (approved;", "call_pay: escalate -> not run (still_pending;",
                 "the model got: Allowly denied `delete_file` (files.delete): scope_not_granted",
                 "the model got: Allowly: `send_payment` (payments.send) waits for a person's answer (escalation esc_"):
        assert line in out, out

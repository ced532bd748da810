"""The SDK against the real server (see conftest.py), and its retry rules on a mock transport."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

import allowly
from allowly import errors
from conftest import eventually

ROOT = Path(__file__).resolve().parents[3]


def clients(env):
    mk = lambda key: allowly.Allowly(key, base_url=env.url)  # noqa: E731
    return mk(env.admin), mk(env.reader), mk(env.checker)


def test_grant_check_receipt_verifies_offline(env):
    admin, reader, checker = clients(env)
    change = admin.create_authorization("user-1", ["calendar.read"], resources=["cal:*"])
    az = change.authorization.id
    assert change.receipt.status == "pending" and change.authorization.status == "active"
    result = checker.check(az, "calendar.read", resource="cal:42")
    assert result.decision == allowly.ALLOW and result.allowed and result.reason == "granted"
    denied = checker.check(az, "calendar.write")
    assert denied.decision == allowly.DENY and denied.reason == "scope_not_granted"
    # The trail, page after page (one receipt a page), until all three are signed.
    signed = eventually("a signed trail", lambda: (lambda t: t if len(t) == 3 and all(r.signed for r in t) else None)(
        list(reader.trail(az, page_size=1))))
    assert [r.body["kind"] for r in signed] == ["authorization.created", "check", "check"]
    keys = reader.keys(env.workspace)
    receipt = reader.get_receipt(result.receipt.receipt_id)
    assert receipt.signed and receipt.receipt_id == result.receipt.receipt_id == receipt.body["id"]
    report = allowly.verify_receipt(receipt, keys)
    assert report.outcome() == "valid", report.codes()
    # One changed byte of the body: an integrity failure, found offline.
    tampered = json.loads(json.dumps(receipt.raw))
    tampered["body"]["resource"] = "cal:43"
    assert allowly.verify_receipt(tampered, keys).outcome() == "integrity_failure"
    # The whole trail as an evidence bundle, pinned to the published keys.
    bundle = reader.export_authorization(az)
    assert allowly.verify_bundle(bundle, keys).outcome() == "valid"
    lines = bundle.splitlines()
    cut = b"\n".join(lines[:-1]) + b"\n"
    assert allowly.verify_bundle(cut, keys).outcome() != "valid"


def test_confirm_echoes_the_context_and_wait_for_decision_gets_the_answer(env):
    admin, reader, checker = clients(env)
    az = admin.create_authorization("user-2", ["email.send"]).authorization.id
    context = {"to": "bob@example.com", "subject": "Q3 numbers"}
    result = checker.check(az, "email.send", context=context)
    assert result.decision == allowly.CONFIRM and result.confirmation is not None
    assert result.confirmation.context == context, result.raw
    nonce = result.confirmation.nonce
    pending = list(admin.list_confirmations(authorization_id=az))
    assert [c.nonce for c in pending] == [nonce]
    answered = threading.Event()

    def answer():
        answered.wait()
        admin.answer_confirmation(nonce, "approved", "user-2", shown="Send 'Q3 numbers' to bob@example.com?")

    t = threading.Thread(target=answer)
    t.start()
    answered.set()
    # Waiting reads the confirmation: a key with `read` (the check key may only check).
    final = reader.wait_for_decision(result, timeout=30)
    t.join()
    assert final.allowed and final.reason == "approved" and final.receipt_id, final
    (seen,) = list(admin.list_confirmations(status="answered", authorization_id=az))
    assert seen.by == "user-2" and seen.answer_receipt_id == final.receipt_id
    # The answer's receipt records the answer in the receipt's words (format 1.1).
    approval = reader.get_receipt(final.receipt_id).body["approval"]
    assert approval["outcome"] == allowly.APPROVED and approval["by"] == "user-2" and approval["shown_hash"]
    assert list(admin.list_confirmations(authorization_id=az)) == []
    with pytest.raises(errors.ConfirmationUsed) as e:
        admin.answer_confirmation(nonce, "approved", "user-2")
    assert e.value.status == 409 and e.value.receipt is not None and isinstance(e.value, errors.Conflict)


def test_async_escalation_inbox_and_long_poll(env):
    async def main():
        async with allowly.AsyncAllowly(env.admin, base_url=env.url) as admin, \
                allowly.AsyncAllowly(env.checker, base_url=env.url) as checker, \
                allowly.AsyncAllowly(env.reader, base_url=env.url) as reader:
            az = (await admin.create_authorization("user-3", ["payments.send"])).authorization.id
            result = await checker.check(az, "payments.send", resource="acct:1")
            assert result.decision == allowly.ESCALATE and result.escalation is not None
            inbox = [e async for e in admin.list_escalations(scope="payments.send", authorization_id=az)]
            assert [e.id for e in inbox] == [result.escalation.id]
            waiting = asyncio.create_task(reader.wait_for_decision(result, timeout=30))
            await asyncio.sleep(0)
            resolution = await admin.resolve_escalation(result.escalation.id, allowly.DECLINED, "alice",
                                                        note="not this one")
            assert resolution.decision == allowly.DENY and resolution.reason == "declined"
            final = await waiting
            assert final.decision == allowly.DENY and final.reason == "declined" and not final.allowed
            assert [e async for e in admin.list_escalations(authorization_id=az)] == []
            done = [e async for e in admin.list_escalations(status="declined", authorization_id=az)]
            assert [e.by for e in done] == ["alice"] and done[0].resolution_receipt_id == final.receipt_id
            approval = (await reader.get_receipt(final.receipt_id)).body["approval"]
            assert approval["outcome"] == "declined" and approval["by"] == "alice" and approval["note_hash"]
    asyncio.run(main())


def test_a_check_of_an_unknown_authorization_has_a_receipt_that_verifies_offline(env):
    _, reader, checker = clients(env)
    result = checker.check("au_nope", "calendar.read", context={"tool": "probe"})
    assert (result.decision, result.reason) == (allowly.DENY, "unknown_authorization")
    assert result.receipt is not None, result.raw
    body = result.receipt.body
    assert body["kind"] == "check" and body["asked_authorization_id"] == "au_nope" and body["authorization_id"] is None
    signed = eventually("the probe's receipt signed",
                        lambda: (lambda r: r if r.signed else None)(reader.get_receipt(result.receipt.receipt_id)))
    keys = reader.keys(env.workspace)
    assert allowly.verify_receipt(signed, keys).outcome() == "valid"


def test_the_offline_verifier_gives_every_test_vector_its_expected_outcome_and_findings():
    """The spec's vectors (1.0 and 1.1, crates/allowly-receipt/tests/vectors), as allowly-verify
    reads them: outcome and finding codes, or `unusable` (exit 64)."""
    from allowly.verify import run_vector
    base = ROOT / "crates/allowly-receipt/tests/vectors"
    manifest = json.loads((base / "manifest.json").read_text("utf-8"))["vectors"]
    assert len(manifest) >= 90 and any("1.1" in v["name"] for v in manifest)
    wrong = []
    for v in manifest:
        outcome, codes = run_vector(base, v)
        if (outcome, codes) != (v["outcome"], set(v.get("codes", []))):
            wrong.append(f"{v['name']}: want {v['outcome']} {v.get('codes', [])}, got {outcome} {sorted(codes)}")
    assert not wrong, "\n".join(wrong)


def test_wait_for_decision_times_out_as_pending(env):
    admin, reader, checker = clients(env)
    az = admin.create_authorization("user-4", ["payments.send"]).authorization.id
    result = checker.check(az, "payments.send")
    final = reader.wait_for_decision(result, timeout=0.2)
    assert final.pending and not final.allowed


def test_typed_errors(env):
    admin, reader, checker = clients(env)
    with pytest.raises(errors.NotFound) as e:
        reader.get_authorization("az_nope")
    assert e.value.code == "not_found" and e.value.request_id
    with pytest.raises(errors.Forbidden):
        reader.create_authorization("u", ["a.b"])
    with pytest.raises(errors.Unauthenticated):
        allowly.Allowly("alw_" + "0" * 64, base_url=env.url).get_authorization("az_1")
    with pytest.raises(errors.InvalidRequest):
        admin.create_authorization("u", [])
    # An unknown (or another workspace's) escalation or nonce is `not_found`, like any object.
    with pytest.raises(errors.NotFound) as e:
        admin.resolve_escalation("esc_nope", allowly.APPROVED, "a")
    assert e.value.code == "not_found"
    with pytest.raises(errors.NotFound):
        reader.get_confirmation("cn_nope", wait=0.01)


def test_idempotency_key_and_pagination(env):
    admin, reader, _ = clients(env)
    first = admin.create_authorization("pager", ["x.y"], idempotency_key="sdk-test-1")
    again = admin.create_authorization("pager", ["x.y"], idempotency_key="sdk-test-1")
    assert again.authorization.id == first.authorization.id and again.receipt.receipt_id == first.receipt.receipt_id
    with pytest.raises(errors.IdempotencyKeyReused):
        admin.create_authorization("pager", ["x.z"], idempotency_key="sdk-test-1")
    ids = {admin.create_authorization("pager", ["x.y"]).authorization.id for _ in range(4)} | {first.authorization.id}
    listed = [a.id for a in reader.list_authorizations(subject="pager", page_size=2)]
    assert sorted(listed) == sorted(ids) and len(listed) == 5


def test_every_problem_code_of_the_api_has_its_error_class():
    doc = json.loads((ROOT / "docs/openapi.json").read_text())
    codes = {c for path in doc["paths"].values() for op in path.values() for c in op.get("x-problem-codes", [])}
    assert codes, "no problem codes in docs/openapi.json"
    missing = codes - set(errors.BY_CODE)
    assert not missing, f"codes without an error class in allowly.errors: {sorted(missing)}"


def test_posts_retry_429_and_503_with_one_idempotency_key_and_honour_retry_after():
    seen: list[tuple[str, float]] = []
    answers = [
        httpx.Response(503, headers={"retry-after": "0.3", "content-type": "application/problem+json"},
                       json={"code": "signer_unavailable", "status": 503, "detail": "down"}),
        httpx.Response(429, headers={"retry-after": "0.1", "content-type": "application/problem+json"},
                       json={"code": "rate_limited", "status": 429, "detail": "slow down"}),
        httpx.Response(200, json={"decision": "allow", "reason": "granted", "receipt": None,
                                  "confirmation": None, "escalation": None}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["idempotency-key"], time.monotonic()))
        return answers[len(seen) - 1]

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://allowly.test")
    client = allowly.Allowly("k", http=http, backoff=0.001)
    assert client.check("az_1", "a.b").allowed
    keys = {k for k, _ in seen}
    assert len(seen) == 3 and len(keys) == 1, seen
    assert seen[1][1] - seen[0][1] >= 0.3 and seen[2][1] - seen[1][1] >= 0.1


def test_a_503_without_retry_after_is_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, headers={"content-type": "application/problem+json"},
                              json={"code": "workspace_log_diverged", "status": 503, "detail": "resync"})

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://allowly.test")
    with pytest.raises(errors.WorkspaceLogDiverged):
        allowly.Allowly("k", http=http).check("az_1", "a.b")
    assert len(calls) == 1



def test_a_retry_after_beyond_max_backoff_is_raised_not_cut_short():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(429, headers={"retry-after": "120", "content-type": "application/problem+json"},
                              json={"code": "rate_limited", "status": 429, "detail": "slow down"})

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://allowly.test")
    with pytest.raises(errors.RateLimited) as e:
        allowly.Allowly("k", http=http, max_backoff=1.0).check("az_1", "a.b")
    assert e.value.retry_after == 120 and len(calls) == 1


def test_the_public_verify_bundle_re_derives_decisions_unless_told_not_to():
    """`allowly.verify_bundle` passes `semantics` through (spec §7.4): a log with an allow no
    grant covers is an integrity failure by default and when asked, and only a signature-level
    check (valid) with semantics=False."""
    base = ROOT / "crates/allowly-receipt/tests/vectors"
    bundle = (base / "invalid/bundle-semantics-allow-not-granted.jsonl").read_bytes()
    keys = json.loads((base / "keys-semantics.json").read_text("utf-8"))
    for semantics in (None, True):
        report = allowly.verify_bundle(bundle, keys, semantics=semantics)
        assert report.outcome() == "integrity_failure", report
        assert report.codes() == {"decision_unjustified"}, report
    report = allowly.verify_bundle(bundle, keys, semantics=False)
    assert report.outcome() == "valid", report

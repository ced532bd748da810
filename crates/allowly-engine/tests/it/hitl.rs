//! Confirmations, escalations and `Idempotency-Key`, against the real store and signer code:
//! each step leaves a receipt in one continuous trail, a nonce or an escalation resolves once
//! even under concurrent answers, and a key yields exactly one receipt.

use std::time::Duration;

use allowly_engine::model::*;
use allowly_engine::{Engine, EngineConfig, EngineError};
use allowly_receipt::types::{Decision, EventKind};
use allowly_receipt::verify::{verify_bundle_with, Outcome, Semantics};
use tempfile::TempDir;

use crate::support::*;

async fn start(root: &TempDir, cfg: EngineConfig) -> (Signer, Engine, String, String) {
    let signer = start_signer(root);
    let e = Engine::start(open_store(root), client(root), cfg).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    (signer, e, ws, auth)
}

fn kinds(e: &Engine, ws: &str, auth: &str) -> Vec<(EventKind, Option<Decision>, Option<String>)> {
    e.trail(ws, auth, None, 1000)
        .unwrap()
        .data
        .into_iter()
        .map(|r| {
            let b = body(&any(r));
            (b.kind, b.decision, b.reason)
        })
        .collect()
}

fn answer(outcome: AnswerOutcome) -> ConfirmationAnswer {
    ConfirmationAnswer {
        outcome,
        by: "user-42".into(),
        shown: Some("Send the Q3 report to bob@x".into()),
        shown_hash: None,
        note: None,
    }
}

fn not_found<T: std::fmt::Debug>(r: Result<T, EngineError>) -> bool {
    matches!(r, Err(EngineError::NotFound { .. }))
}

fn refused(r: Result<Resolution, EngineError>) -> (&'static str, Option<String>) {
    match r {
        Err(EngineError::Refused { code, receipt, .. }) => (code, receipt.map(|r| r.receipt_id)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn verify_trail(e: &Engine, ws: &str, auth: &str) {
    eventually("the trail is signed", || async { all_signed(e, ws, auth).await }).await;
    let keys = e.keys(ws).unwrap();
    let bundle = e.export(ws, ExportScope::Authorization(auth.to_owned())).unwrap();
    // With semantic verification (§7.4): every allow and every answer of a real trail —
    // answered twice, late, after revocation or expiry — follows from the trail itself.
    let report = verify_bundle_with(&bundle, Some(&keys), &[], Semantics::On).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{:?}", report.findings);
    assert!(report.decisions_checked.is_some_and(|n| n > 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_is_answered_once_and_every_attempt_is_in_the_trail() {
    let root = TempDir::new().unwrap();
    let (signer, e, ws, auth) = start(&root, config()).await;
    let out = e.check(&ws, ask(&auth, "mail.send", Some("doc:1")), None).await.unwrap();
    assert_eq!(out.decision, Decision::Confirm);
    let nonce = out.confirmation.unwrap().nonce;
    let pending = e.confirmation(&ws, &nonce).unwrap();
    assert_eq!(
        (pending.status, pending.decision, &pending.authorization_id),
        (ConfirmationStatus::Pending, None, &auth)
    );
    assert_eq!(Some(&pending.check_receipt_id), out.receipt.as_ref().map(|r| &r.receipt_id));

    let r = e.confirm(&ws, &nonce, answer(AnswerOutcome::Approved), None).await.unwrap();
    assert_eq!((r.decision, r.reason.as_str()), (Decision::Allow, "approved"));
    let answered = e.confirmation(&ws, &nonce).unwrap();
    assert_eq!(answered.status, ConfirmationStatus::Answered);
    assert_eq!((answered.decision, answered.reason.as_deref()), (Some(Decision::Allow), Some("approved")));
    assert_eq!(answered.by.as_deref(), Some("user-42"));
    assert_eq!(answered.answer_receipt_id.as_deref(), Some(r.receipt.receipt_id.as_str()));
    let b = &r.receipt.body.to_value().unwrap();
    assert_eq!(b["kind"], "confirmation");
    assert_eq!(b["approval"]["by"], "user-42");
    assert_eq!(b["approval"]["outcome"], "approved");
    assert_eq!(b["approval"]["shown_hash"].as_str().unwrap().len(), 64);

    // Used: refused with its own code, and the attempt is recorded.
    let (code, receipt) = refused(e.confirm(&ws, &nonce, answer(AnswerOutcome::Approved), None).await);
    assert_eq!(code, "confirmation_used");
    assert!(receipt.is_some());
    // Unknown, and another workspace's: not found (like any object), nothing recorded.
    let other = workspace(&e).await;
    assert!(not_found(e.confirm(&other, &nonce, answer(AnswerOutcome::Approved), None).await));
    assert!(not_found(e.confirm(&ws, "cn_nope", answer(AnswerOutcome::Approved), None).await));
    for (w, n) in [(&other, nonce.as_str()), (&ws, "cn_nope"), (&ws, "bad nonce")] {
        assert!(not_found(e.confirmation(w, n)), "{w} {n}");
    }
    // A refused attempt does not change the answer shown.
    assert_eq!(e.confirmation(&ws, &nonce).unwrap(), answered);

    let trail = kinds(&e, &ws, &auth);
    let tail: Vec<_> = trail.iter().skip(1).map(|(k, d, r)| (*k, *d, r.as_deref())).collect();
    assert_eq!(
        tail,
        [
            (EventKind::Check, Some(Decision::Confirm), Some("confirmation_required")),
            (EventKind::Confirmation, Some(Decision::Allow), Some("approved")),
            (EventKind::Confirmation, Some(Decision::Deny), Some("confirmation_used")),
        ]
    );
    verify_trail(&e, &ws, &auth).await;
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_answers_to_one_nonce_have_exactly_one_winner() {
    let root = TempDir::new().unwrap();
    let (signer, e, ws, auth) = start(&root, config()).await;
    for round in 0..5 {
        let nonce =
            e.check(&ws, ask(&auth, "mail.send", Some("doc:1")), None).await.unwrap().confirmation.unwrap().nonce;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (e, ws, nonce) = (e.clone(), ws.clone(), nonce.clone());
                let outcome = if i % 2 == 0 { AnswerOutcome::Approved } else { AnswerOutcome::Declined };
                tokio::spawn(async move { e.confirm(&ws, &nonce, answer(outcome), None).await })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => winners += 1,
                Err(EngineError::Refused { code: "confirmation_used", receipt: Some(_), .. }) => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
    verify_trail(&e, &ws, &auth).await;
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_nonce_is_refused_with_a_receipt() {
    let root = TempDir::new().unwrap();
    let cfg = EngineConfig { confirmation_ttl: Duration::from_millis(200), ..config() };
    let (signer, e, ws, auth) = start(&root, cfg).await;
    let c = e.check(&ws, ask(&auth, "mail.send", Some("doc:1")), None).await.unwrap().confirmation.unwrap();
    assert_eq!(e.confirmation(&ws, &c.nonce).unwrap().status, ConfirmationStatus::Pending);
    eventually("the nonce expires", || async { now_ms() >= c.expires_at.unix_ms() }).await;
    assert_eq!(e.confirmation(&ws, &c.nonce).unwrap().status, ConfirmationStatus::Expired);
    let (code, receipt) = refused(e.confirm(&ws, &c.nonce, answer(AnswerOutcome::Approved), None).await);
    assert_eq!(code, "confirmation_expired");
    assert!(receipt.is_some());
    verify_trail(&e, &ws, &auth).await;
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_turns_later_answers_into_denies() {
    // Default lifetimes: nothing here may expire however slow the machine is.
    let root = TempDir::new().unwrap();
    let (signer, e, ws, auth) = start(&root, config()).await;
    // Pending confirmation and escalation, then a revocation: the later answers are denies.
    let cfg_nonce =
        e.check(&ws, ask(&auth, "mail.send", Some("doc:1")), None).await.unwrap().confirmation.unwrap().nonce;
    let esc = e.check(&ws, ask(&auth, "pay.wire", Some("doc:1")), None).await.unwrap().escalation.unwrap().id;
    e.revoke_authorization(&ws, &auth, None).await.unwrap();
    let r = e.confirm(&ws, &cfg_nonce, answer(AnswerOutcome::Approved), None).await.unwrap();
    assert_eq!((r.decision, r.reason.as_str()), (Decision::Deny, "revoked"));
    let shown = e.confirmation(&ws, &cfg_nonce).unwrap();
    assert_eq!((shown.status, shown.decision), (ConfirmationStatus::Answered, Some(Decision::Deny)));
    assert_eq!(shown.reason.as_deref(), Some("revoked"));
    let approve = answer_by("boss", AnswerOutcome::Approved, None);
    let r = e.resolve_escalation(&ws, &esc, approve, None).await.unwrap();
    assert_eq!((r.decision, r.reason.as_str()), (Decision::Deny, "revoked"));
    assert_eq!(r.escalation.unwrap().status, EscalationStatus::Declined);
    verify_trail(&e, &ws, &auth).await;
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_resolves_once_and_an_overdue_one_resolves_to_deny() {
    let root = TempDir::new().unwrap();
    // Long enough for the in-time answers on a loaded machine, short enough to wait out.
    let cfg = EngineConfig { escalation_ttl: Duration::from_millis(2000), ..config() };
    let (signer, e, ws, auth) = start(&root, cfg).await;
    let esc = e.check(&ws, ask(&auth, "pay.wire", Some("doc:1")), None).await.unwrap().escalation.unwrap().id;
    let view = e.escalation(&ws, &esc).await.unwrap();
    assert_eq!((view.status, view.authorization_id.as_str()), (EscalationStatus::Pending, auth.as_str()));
    let approve = || answer_by("boss", AnswerOutcome::Approved, Some("ok for Q3"));
    // Concurrent resolutions: one wins, the others are 409s that change nothing.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (e, ws, esc, a) = (e.clone(), ws.clone(), esc.clone(), approve());
            tokio::spawn(async move { e.resolve_escalation(&ws, &esc, a, None).await })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => winners.push(r),
            Err(EngineError::Refused { code: "escalation_already_resolved", receipt: None, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let r = &winners[0];
    assert_eq!((r.decision, r.reason.as_str()), (Decision::Allow, "approved"));
    assert_eq!(r.receipt.body.to_value().unwrap()["kind"], "escalation.resolved");
    assert_eq!(r.receipt.body.to_value().unwrap()["escalation_id"], esc.as_str());
    assert_eq!(r.receipt.body.to_value().unwrap()["approval"]["by"], "boss");
    // Format 1.1: the note is hashed into `note_hash`; nothing was shown (`shown_hash` null).
    let approval = &r.receipt.body.to_value().unwrap()["approval"];
    assert!(approval["shown_hash"].is_null(), "{approval}");
    assert_eq!(approval["note_hash"].as_str().map(str::len), Some(64), "{approval}");
    let view = e.escalation(&ws, &esc).await.unwrap();
    assert_eq!(view.status, EscalationStatus::Approved);
    assert_eq!((view.by.as_deref(), view.approver.as_deref()), (Some("boss"), Some("boss")));
    assert_eq!(view.resolution_receipt_id.as_deref(), Some(r.receipt.receipt_id.as_str()));

    // Overdue: the first read records the expiry as a deny; resolving it later is refused.
    let late = e.check(&ws, ask(&auth, "pay.wire", Some("doc:2")), None).await.unwrap().escalation.unwrap();
    eventually("the escalation expires", || async { now_ms() >= late.expires_at.unix_ms() }).await;
    let view = e.escalation(&ws, &late.id).await.unwrap();
    assert_eq!(view.status, EscalationStatus::Expired);
    assert!(view.resolution_receipt_id.is_some());
    assert_eq!(
        refused(e.resolve_escalation(&ws, &late.id, approve(), None).await),
        ("escalation_already_resolved", None)
    );
    // Another workspace cannot see or resolve it.
    let other = workspace(&e).await;
    assert!(not_found(e.escalation(&other, &esc).await));
    assert!(not_found(e.resolve_escalation(&other, &esc, approve(), None).await));

    let trail = kinds(&e, &ws, &auth);
    let expired: Vec<_> = trail
        .iter()
        .filter(|(k, _, r)| *k == EventKind::EscalationResolved && r.as_deref() == Some("escalation_expired"))
        .collect();
    assert_eq!(expired.len(), 1, "{trail:?}");
    verify_trail(&e, &ws, &auth).await;
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_yields_one_receipt_even_for_concurrent_duplicates() {
    let root = TempDir::new().unwrap();
    let (signer, e, ws, auth) = start(&root, config()).await;
    let before = e.authorization(&ws, &auth).unwrap().trail_length;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (e, ws, auth) = (e.clone(), ws.clone(), auth.clone());
            tokio::spawn(async move { e.check(&ws, ask(&auth, "files.read", Some("doc:1")), Some("key-1")).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap().receipt.unwrap().receipt_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every duplicate got the first answer");
    assert_eq!(e.authorization(&ws, &auth).unwrap().trail_length, before + 1, "exactly one receipt");
    // Same key, another request: refused, nothing written.
    let r = e.check(&ws, ask(&auth, "files.read", Some("doc:2")), Some("key-1")).await;
    assert!(matches!(r, Err(EngineError::IdempotencyMismatch)), "{r:?}");
    // A key names one request, whatever the route: another route with it is refused too.
    let r = e.create_authorization(&ws, grant(None), Some("key-1")).await;
    assert!(matches!(r, Err(EngineError::IdempotencyMismatch)), "{r:?}");
    // Keys are per workspace: the same key in another workspace is another key.
    let other = workspace(&e).await;
    let a2 = e.create_authorization(&other, grant(None), None).await.unwrap().authorization.id;
    e.check(&other, ask(&a2, "files.read", Some("doc:1")), Some("key-1")).await.unwrap();
    assert_eq!(e.authorization(&ws, &auth).unwrap().trail_length, before + 1);
    e.shutdown().await;
    signer.stop();
}

#[test]
fn an_idempotency_key_answers_the_same_after_a_restart() {
    let root = TempDir::new().unwrap();
    let store = open_store(&root);
    let signer = start_signer(&root);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ws, first) = rt.block_on(async {
        let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();
        let ws = workspace(&e).await;
        let first = e.create_authorization(&ws, grant(None), Some("grant-1")).await.unwrap();
        e.shutdown().await;
        (ws, first)
    });
    drop(rt);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();
        let again = e.create_authorization(&ws, grant(None), Some("grant-1")).await.unwrap();
        assert_eq!(again, first);
        e.shutdown().await;
    });
    signer.stop();
}

/// Random sequences of checks with and without keys, some keys reused with another request:
/// the trail grows by exactly one receipt per first successful use of a key and per keyless
/// call, a repeat returns the first answer, a reuse with another request is refused.
#[test]
fn idempotency_keys_yield_exactly_one_receipt_per_key_property() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (e, ws) = rt.block_on(async {
        let e = Engine::start(open_store(&root), client(&root), config()).await.unwrap();
        let ws = workspace(&e).await;
        (e, ws)
    });
    // (key: None or one of 3, which of 2 resources)
    let op = (proptest::option::of(0u8..3), 0u8..2);
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    let case = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&proptest::collection::vec(op, 1..12), |ops| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(async {
                let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
                let start = e.authorization(&ws, &auth).unwrap().trail_length;
                let mut first: std::collections::HashMap<u8, (u8, String)> = Default::default();
                let mut expected_new = 0u64;
                for (key, res) in ops {
                    let key_text = key.map(|k| format!("case{n}-key{k}"));
                    let r =
                        e.check(&ws, ask(&auth, "files.read", Some(&format!("doc:{res}"))), key_text.as_deref()).await;
                    match (key, first.get(&key.unwrap_or(u8::MAX))) {
                        (None, _) => {
                            r.unwrap();
                            expected_new += 1;
                        }
                        (Some(k), None) => {
                            let id = r.unwrap().receipt.unwrap().receipt_id;
                            first.insert(k, (res, id));
                            expected_new += 1;
                        }
                        (Some(_), Some((first_res, first_id))) if *first_res == res => {
                            prop_assert_eq!(&r.unwrap().receipt.unwrap().receipt_id, first_id);
                        }
                        (Some(_), Some(_)) => prop_assert!(matches!(r, Err(EngineError::IdempotencyMismatch))),
                    }
                }
                prop_assert_eq!(e.authorization(&ws, &auth).unwrap().trail_length, start + expected_new);
                Ok(())
            })
        })
        .unwrap();
    rt.block_on(e.shutdown());
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_repeat_is_answered_while_the_signer_is_down_and_a_first_use_fails_closed() {
    let root = TempDir::new().unwrap();
    let (signer, e, ws, auth) = start(&root, config()).await;
    let first = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), Some("k-down")).await.unwrap();
    signer.stop();
    eventually("the engine notices the signer is gone", || async { !e.readiness().ready }).await;
    let before = e.authorization(&ws, &auth).unwrap().trail_length;
    let again = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), Some("k-down")).await.unwrap();
    assert_eq!(again, first, "a repeat gets the stored answer, signer or not");
    for key in [Some("k-new"), None] {
        let r = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), key).await;
        assert!(matches!(r, Err(EngineError::SignerUnavailable(_))), "{key:?}: {r:?}");
    }
    assert_eq!(e.authorization(&ws, &auth).unwrap().trail_length, before, "nothing was written");
    // A key refused while the signer was down is still unused.
    let signer = start_signer(&root);
    eventually("ready again", || async { e.readiness().ready }).await;
    e.check(&ws, ask(&auth, "files.read", Some("doc:1")), Some("k-new")).await.unwrap();
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_nobody_reads_expires_on_time_and_a_resolved_one_leaves_the_due_index() {
    let root = TempDir::new().unwrap();
    let cfg = EngineConfig {
        // Long enough for the in-time answer on a loaded machine, short enough to wait out.
        escalation_ttl: Duration::from_millis(1500),
        escalation_sweep_interval: Duration::from_millis(20),
        ..config()
    };
    let store = open_store(&root);
    let signer = start_signer(&root);
    let e = Engine::start(store.clone(), client(&root), cfg).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    let due =
        |s: &allowly_store_rocks::RocksStore| s.docs(allowly_store::DocKind::EscalationDue, "_due", None, 100).unwrap();
    use allowly_store::Store as _;

    // Resolved in time: its due entry goes with the resolution (same commit).
    let esc = e.check(&ws, ask(&auth, "pay.wire", Some("doc:1")), None).await.unwrap().escalation.unwrap();
    assert_eq!(due(&store).len(), 1);
    let answer = answer_by("boss", AnswerOutcome::Approved, None);
    e.resolve_escalation(&ws, &esc.id, answer, None).await.unwrap();
    assert!(due(&store).is_empty());

    // Unread: the sweep resolves it to deny, with its receipt, shortly after its expiry. The
    // trail is read only (a read of the escalation itself would record the expiry too).
    let late = e.check(&ws, ask(&auth, "pay.wire", Some("doc:2")), None).await.unwrap().escalation.unwrap();
    let expired_in_trail = || {
        kinds(&e, &ws, &auth)
            .iter()
            .filter(|(k, _, r)| *k == EventKind::EscalationResolved && r.as_deref() == Some("escalation_expired"))
            .count()
    };
    assert_eq!(expired_in_trail(), 0);
    eventually("the sweep records the expiry", || async { expired_in_trail() == 1 }).await;
    assert!(now_ms() >= late.expires_at.unix_ms(), "expired before its time");
    assert!(due(&store).is_empty());
    let view = e.escalation(&ws, &late.id).await.unwrap();
    assert_eq!(view.status, EscalationStatus::Expired);
    // Nothing is left to do, and doing it again records nothing.
    assert_eq!(e.expire_due_escalations().await.unwrap(), 0);
    assert_eq!(expired_in_trail(), 1);
    verify_trail(&e, &ws, &auth).await;
    e.shutdown().await;
    signer.stop();
}

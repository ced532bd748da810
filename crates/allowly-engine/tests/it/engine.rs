//! The engine against the real RocksDB store and the real signer code serving on a real Unix
//! socket (in this process: the black-box tests in crates/allowly-server run it as its own
//! process). Waiting is done by polling a condition with a deadline, never by sleeping.

use std::sync::Arc;
use std::time::Duration;

use allowly_engine::model::*;
use allowly_engine::{Engine, EngineConfig, EngineError};
use allowly_receipt::merkle;
use allowly_receipt::types::{Decision, EventKind, RuleKind, Timestamp};
use allowly_receipt::verify::{verify_bundle, verify_receipt, Outcome};
use allowly_store::Store;
use tempfile::TempDir;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_a_chained_signed_receipt_that_verifies_offline() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let e = Engine::start(open_store(&root), client(&root), config()).await.unwrap();
    let ws = workspace(&e).await;

    let created = e.create_authorization(&ws, grant(None), None).await.unwrap();
    let auth = created.authorization.id.clone();
    assert_eq!(created.receipt.body.to_value().unwrap()["kind"], "authorization.created");
    assert_eq!(created.receipt.body.to_value().unwrap()["seq"], 0);

    let cases = [
        ("files.read", Some("doc:1"), Decision::Allow, "granted"),
        ("admin.delete", Some("doc:1"), Decision::Deny, "scope_not_granted"),
        ("files.read", Some("other:1"), Decision::Deny, "resource_not_covered"),
        ("files.read", None, Decision::Deny, "resource_not_covered"),
        ("mail.send", Some("doc:2"), Decision::Confirm, "confirmation_required"),
        ("pay.wire", Some("doc:3"), Decision::Escalate, "escalation_required"),
    ];
    for (expected_seq, (scope, resource, decision, reason)) in (1..).zip(cases) {
        let out = e.check(&ws, ask(&auth, scope, resource), None).await.unwrap();
        assert_eq!((out.decision, out.reason.as_str()), (decision, reason), "{scope} {resource:?}");
        let r = out.receipt.expect("every known authorization's check has a receipt");
        assert_eq!(r.body.to_value().unwrap()["seq"], expected_seq);
        assert_eq!(r.body.to_value().unwrap()["decision"], serde_json::to_value(decision).unwrap());
        assert_eq!(out.confirmation.is_some(), decision == Decision::Confirm);
        assert_eq!(out.escalation.is_some(), decision == Decision::Escalate);
        // Format 1.1: what the decision opened carries its deadline in the signed body.
        let deadline =
            out.escalation.as_ref().map(|x| x.expires_at).or(out.confirmation.as_ref().map(|c| c.expires_at));
        assert_eq!(body_of(&r).expires_at, deadline, "{scope}");
        if let Some(esc) = out.escalation {
            assert_eq!(r.body.to_value().unwrap()["escalation_id"], esc.id.as_str());
        }
    }
    // Every decision has a receipt: a check of an unknown authorization is a workspace event
    // that names the id asked for (format 1.1), in no trail.
    let unknown = e.check(&ws, ask("au_0000", "files.read", Some("doc:1")), None).await.unwrap();
    assert_eq!((unknown.decision, unknown.reason.as_str()), (Decision::Deny, "unknown_authorization"));
    let unknown = unknown.receipt.expect("an unknown authorization's check has a receipt");
    let b = body_of(&unknown);
    assert_eq!(
        (b.kind, b.decision, b.reason.as_deref(), b.asked_authorization_id.as_deref()),
        (EventKind::Check, Some(Decision::Deny), Some("unknown_authorization"), Some("au_0000"))
    );
    assert_eq!((b.authorization_id, b.seq, b.prev, b.auth_state_hash), (None, None, None, None));
    assert_eq!((b.scopes, b.resource.as_deref()), (vec!["files.read".to_owned()], Some("doc:1")));
    assert!(b.context_hash.is_some());

    let revoked = e.revoke_authorization(&ws, &auth, None).await.unwrap();
    assert_eq!(revoked.authorization.status, AuthorizationStatus::Revoked);
    assert!(matches!(e.revoke_authorization(&ws, &auth, None).await, Err(EngineError::Conflict(_))));
    let after = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    assert_eq!((after.decision, after.reason.as_str()), (Decision::Deny, "revoked"));

    // Expiry: recorded in the trail the first time it matters, once.
    let soon = Timestamp::from_unix_ms(now_ms() + 300).unwrap();
    let short = e.create_authorization(&ws, grant(Some(soon)), None).await.unwrap().authorization.id;
    eventually("the authorization expires", || async {
        e.authorization(&ws, &short).unwrap().status == AuthorizationStatus::Expired
    })
    .await;
    for _ in 0..2 {
        let out = e.check(&ws, ask(&short, "files.read", Some("doc:1")), None).await.unwrap();
        assert_eq!((out.decision, out.reason.as_str()), (Decision::Deny, "expired"));
    }
    let kinds: Vec<String> = e
        .trail(&ws, &short, None, 100)
        .unwrap()
        .data
        .into_iter()
        .map(|r| body(&any(r)).kind)
        .map(|k| serde_json::to_value(k).unwrap().as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["authorization.created", "expiry", "check", "check"]);

    eventually("every receipt is signed", || async {
        all_signed(&e, &ws, &auth).await && all_signed(&e, &ws, &short).await
    })
    .await;

    // The trail: seq 0.., each prev = the previous leaf hash, paginated without loss.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = e.trail(&ws, &auth, cursor.as_deref(), 3).unwrap();
        seen.extend(page.data.into_iter().map(any));
        if !page.has_more {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen.len(), 9, "created + 6 checks + revocation + check after revocation");
    let keys = e.keys(&ws).unwrap();
    for (i, r) in seen.iter().enumerate() {
        let b = body(r);
        assert_eq!(b.seq, Some(i as u64));
        if i > 0 {
            let prev_leaf = body(&seen[i - 1]).leaf_hash().unwrap();
            assert_eq!(b.prev.map(|h| h.0), Some(prev_leaf));
        }
        let report = verify_receipt(r, &keys).unwrap();
        assert_eq!(report.outcome(), Outcome::Valid, "{:?}", report.findings);
    }
    // A receipt fetched by id is the same signed receipt.
    let first_id = body(&seen[0]).id;
    assert!(matches!(e.receipt(&ws, &first_id).unwrap(), ReceiptView::Signed(_)));
    // The unknown authorization's receipt is signed and verifies alone; the trails above
    // did not include it.
    assert!(seen.iter().all(|r| body(r).id != unknown.receipt_id));
    let signed = eventually_signed(&e, &ws, &unknown.receipt_id).await;
    let report = verify_receipt(&signed, &keys).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{:?}", report.findings);

    // The exported bundle verifies with the published keys only.
    let bundle = e.export(&ws, ExportScope::Authorization(auth.clone())).unwrap();
    let report = verify_bundle(&bundle, Some(&keys), &[]).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{:?}", report.findings);
    let size = e.latest_checkpoint(&ws).unwrap().size;
    let log = e.export(&ws, ExportScope::Log { from: 0, to: size }).unwrap();
    assert_eq!(verify_bundle(&log, Some(&keys), &[]).unwrap().outcome(), Outcome::Valid);

    // Proof endpoints agree with RFC 9162 verification.
    let cp = e.latest_checkpoint(&ws).unwrap();
    let root_of = |note: &str| {
        let signed = allowly_receipt::note::parse_signed_note(note).unwrap();
        allowly_receipt::note::Checkpoint::parse(&signed.text).unwrap().root
    };
    let p = e.inclusion_proof(&ws, 3, None).unwrap();
    let proof: Vec<_> = p.proof.iter().map(|h| h.0).collect();
    merkle::verify_inclusion(&p.leaf_hash.0, 3, cp.size, &proof, &root_of(&cp.checkpoint)).unwrap();
    // Every stored checkpoint is consistent with the newest.
    let mut checked = 0;
    for old in 1..cp.size {
        let Ok(c) = e.consistency_proof(&ws, old, None) else { continue };
        let proof: Vec<_> = c.proof.iter().map(|h| h.0).collect();
        merkle::verify_consistency(old, cp.size, &root_of(&c.old_checkpoint), &root_of(&cp.checkpoint), &proof)
            .unwrap();
        checked += 1;
    }
    assert!(checked > 0 || cp.size == 1);
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_share_commits_and_get_one_contiguous_log() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let e = Engine::start(open_store(&root), client(&root), config()).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (e, ws, auth) = (e.clone(), ws.clone(), auth.clone());
            tokio::spawn(async move { e.check(&ws, ask(&auth, "files.read", Some(&format!("doc:{i}"))), None).await })
        })
        .collect();
    let mut indices = Vec::new();
    for t in tasks {
        let out = t.await.unwrap().unwrap();
        indices.push(out.receipt.unwrap().log_index);
    }
    indices.sort_unstable();
    assert_eq!(indices, (1..=64).collect::<Vec<u64>>(), "log index 0 is the grant; checks follow without gaps");
    let m = e.metrics();
    // The grant and the 64 checks went through the actor; concurrent ones shared commits.
    assert_eq!(m.commit_batch.get_sample_sum() as u64, 65);
    assert!(m.commit_batch.get_sample_count() < 65, "no two concurrent checks shared a commit");
    eventually("all signed", || async { all_signed(&e, &ws, &auth).await }).await;
    let trail = e.trail(&ws, &auth, None, 1000).unwrap();
    assert_eq!(trail.data.len(), 65);
    // The commits handed their receipts to the signing task: it did not read them back.
    let from = |source: &str| m.sign_batch_source.with_label_values(&[source]).get();
    assert!(from("memory") >= 1, "no batch was taken from memory");
    assert_eq!(
        from("memory") + from("store"),
        m.sign_batch.get_sample_count(),
        "every signed batch counted once by its source"
    );
    e.shutdown().await;
    signer.stop();
}

/// Many workspaces signing at once share the instance's signing rate: rounds beyond it wait
/// for their slot (and carry more), every receipt still gets signed, and shutdown does not wait
/// for the slots — it signs what is committed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_rounds_keep_to_the_instance_rate_and_shutdown_signs_without_waiting_for_slots() {
    const RATE: u32 = 4;
    const WORKSPACES: usize = 12;
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let cfg = EngineConfig {
        sign_rounds_per_second: RATE,
        sign_batch_delay: Duration::from_millis(1),
        shutdown_timeout: Duration::from_millis(1500),
        ..config()
    };
    let e = Engine::start(store.clone() as Arc<dyn Store>, client(&root), cfg).await.unwrap();
    let started = std::time::Instant::now();
    let grants = signed_tenants(&e, WORKSPACES, "every grant signed").await;
    let elapsed = started.elapsed().as_secs_f64();
    let m = e.metrics();
    let rounds = m.sign_batch.get_sample_count();
    // An upper bound whatever the machine's speed: the slots are 1/RATE apart, the first at once.
    assert!(
        rounds as f64 <= f64::from(RATE) * elapsed + 1.0,
        "{rounds} signing rounds in {elapsed:.2} s at {RATE} a second"
    );
    assert!(m.sign_rounds_paced.get() > 0, "no round waited for its slot");
    // One more receipt in every workspace, then stop at once: 12 slots would take 3 s, longer
    // than the shutdown's bound; shutdown lets them go without their slots.
    for (ws, auth) in &grants {
        e.check(ws, ask(auth, "files.read", Some("doc:1")), None).await.unwrap();
    }
    e.shutdown().await;
    assert_eq!(store.workspaces_with_unsigned().unwrap(), Vec::<String>::new(), "shutdown left receipts unsigned");
    signer.stop();
}

/// A round waiting for its slot is not woken by every commit (`Slot::raise`), only when the
/// task may be idle or its unsigned leaves fill a batch: so a batch that fills is signed at
/// once, even with an hour's batching delay. Were the filling commit's wake-up lost, these
/// receipts would wait out the hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_is_signed_without_waiting_for_its_round() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    // A short shutdown: a last odd leaf would wait out the hour, and shutdown lets it go.
    let cfg = EngineConfig {
        sign_batch_delay: Duration::from_secs(3600),
        sign_batch_max: 2,
        shutdown_timeout: Duration::from_millis(200),
        ..config()
    };
    let e = Engine::start(open_store(&root), client(&root), cfg).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    let ids = read_checks(&e, &ws, &auth, 6).await;
    // Whatever the log held before the grant, the first four checks lie in full batches of two.
    for id in &ids[..4] {
        eventually_signed(&e, &ws, id).await;
    }
    assert!(e.metrics().sign_batch.get_sample_count() >= 2, "the full batches were signed in rounds of their own");
    e.shutdown().await;
    signer.stop();
}

/// More workspaces signing at once than the signing rate serves within `max_unsigned_age`:
/// pacing alone must not make the oldest unsigned receipt old enough to fail the instance
/// closed (`signing_backlog`) while the signer keeps up. At one round a second, the sixteenth
/// workspace's grant would wait 15 s for its slot, far past the 2 s bound; the pacer sends the
/// rounds that would wait more than a quarter of the bound above the rate instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_alone_never_fails_the_instance_closed() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let cfg = EngineConfig {
        sign_rounds_per_second: 1,
        max_unsigned_age: Duration::from_secs(2),
        health_interval: Duration::from_millis(50),
        ..config()
    };
    let e = Engine::start(open_store(&root), client(&root), cfg).await.unwrap();
    // A refusal while they are made (`signing_backlog`) is the failure this test is about.
    let tenants = tenants(&e, 16).await;
    let backlog = |e: &Engine| e.readiness().causes.iter().any(|c| c.code == "signing_backlog");
    for (ws, auth) in &tenants {
        eventually("every grant signed", || async {
            assert!(!backlog(&e), "failed closed by pacing: {:?}", e.readiness().detail);
            all_signed(&e, ws, auth).await
        })
        .await;
    }
    assert!(!backlog(&e), "{:?}", e.readiness().detail);
    assert!(e.metrics().sign_rounds_over_rate.get() > 0, "the rounds beyond the bound went above the rate");
    e.shutdown().await;
    signer.stop();
}

/// A cache budget of one authorization, with checks on several authorizations in flight at
/// once: entries are evicted all the time, but never one that a staged or in-flight commit
/// changed (a reread from the store would be stale: a reused `seq`, a wrong `prev`). Every trail
/// stays one contiguous, verifiable chain, and the budget is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_authorization_cache_never_forks_a_trail() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let cfg = EngineConfig { max_cached_authorizations: 1, ..config() };
    let e = Engine::start(open_store(&root), client(&root), cfg).await.unwrap();
    let ws = workspace(&e).await;
    let mut auths = Vec::new();
    for _ in 0..4 {
        auths.push(e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id);
    }
    for _round in 0..4 {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (e, ws, auth) = (e.clone(), ws.clone(), auths[i % auths.len()].clone());
                tokio::spawn(async move { e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    let keys = e.keys(&ws).unwrap();
    for auth in &auths {
        eventually("all signed", || async { all_signed(&e, &ws, auth).await }).await;
        let trail = e.trail(&ws, auth, None, 1000).unwrap();
        assert_eq!(trail.data.len(), 1 + 4 * 16, "the grant and its 64 checks");
        let bundle = e.export(&ws, ExportScope::Authorization(auth.clone())).unwrap();
        let report = verify_bundle(&bundle, Some(&keys), &[]).unwrap();
        assert_eq!(report.outcome(), Outcome::Valid, "{:?}", report.findings);
    }
    e.shutdown().await;
    assert_eq!(e.cached_authorizations(), 0, "stopped actors give their budget back");
    signer.stop();
}

/// Above the memory high-water mark, idle actors are stopped early (their cached
/// authorizations go with them) while a busy one keeps running; a stopped workspace starts
/// again on its next request with its trail intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_stops_idle_actors_and_their_trails_continue() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    // Any process is above 1 byte: the engine is under pressure for the whole test.
    let cfg = EngineConfig { memory_high_water: 1, pressure_min_idle: Duration::from_secs(1), ..config() };
    let e = Engine::start(open_store(&root), client(&root), cfg).await.unwrap();
    let mut grants = Vec::new();
    for _ in 0..8 {
        let ws = workspace(&e).await;
        let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
        e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
        grants.push((ws, auth));
    }
    let stopped = |e: &Engine| e.metrics().passivations.with_label_values(&["memory"]).get();
    assert_eq!(stopped(&e), 0);
    // One workspace stays busy (a request every ~20 ms, far under the 1 s idle bound) until
    // the assertions are done, while the other seven go idle and are stopped.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (e, done) = (e.clone(), done.clone());
        let (ws, auth) = grants[0].clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                n += 1;
            }
            n
        })
    };
    eventually("the seven idle actors stopped", || async { stopped(&e) >= 7 }).await;
    assert_eq!(e.metrics().actors_live.get(), 1, "only the busy workspace's actor runs");
    assert_eq!(stopped(&e), 7, "the busy actor was never stopped");
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(busy.await.unwrap() > 0);
    let keys_of = |ws: &str| e.keys(ws).unwrap();
    for (ws, auth) in &grants {
        e.check(ws, ask(auth, "files.read", Some("doc:2")), None).await.unwrap();
        eventually("all signed", || async { all_signed(&e, ws, auth).await }).await;
        let bundle = e.export(ws, ExportScope::Authorization(auth.clone())).unwrap();
        let report = verify_bundle(&bundle, Some(&keys_of(ws)), &[]).unwrap();
        assert_eq!(report.outcome(), Outcome::Valid, "{:?}", report.findings);
    }
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_down_fails_closed_and_writes_nothing_then_recovers() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let e = Engine::start(open_store(&root), client(&root), config()).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    assert!(e.readiness().ready);
    signer.stop();
    eventually("readiness notices the signer is gone", || async { !e.readiness().ready }).await;
    let before = e.authorization(&ws, &auth).unwrap().trail_length;
    for _ in 0..5 {
        let r = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await;
        assert!(matches!(r, Err(EngineError::SignerUnavailable(_))), "{r:?}");
    }
    assert_eq!(e.authorization(&ws, &auth).unwrap().trail_length, before, "a refused check leaves no receipt");
    let signer = start_signer(&root);
    eventually("ready again", || async { e.readiness().ready }).await;
    let out = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    assert_eq!(out.decision, Decision::Allow);
    eventually("signed after recovery", || async { all_signed(&e, &ws, &auth).await }).await;
    e.shutdown().await;
    signer.stop();
}

#[test]
fn receipts_left_pending_by_a_dead_engine_are_signed_by_the_next() {
    let root = TempDir::new().unwrap();
    let store = open_store(&root);
    let signer = start_signer(&root);
    // Engine 1: the signing delay is long, so receipts are committed and answered but not signed
    // when its runtime (every task of it) is dropped — a crash as far as the engine knows.
    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let slow = EngineConfig { sign_batch_delay: Duration::from_secs(3600), sign_batch_max: 4096, ..config() };
    let (ws, auth, ids) = rt1.block_on(async {
        let e = Engine::start(store.clone() as Arc<dyn Store>, client(&root), slow).await.unwrap();
        let ws = workspace(&e).await;
        let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
        let ids = read_checks(&e, &ws, &auth, 10).await;
        (ws, auth, ids)
    });
    drop(rt1);
    assert_eq!(
        store.workspaces_with_unsigned().unwrap(),
        std::slice::from_ref(&ws),
        "the crash left receipts unsigned"
    );
    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        let e = Engine::start(store.clone() as Arc<dyn Store>, client(&root), config()).await.unwrap();
        eventually("pending receipts signed after restart", || async { all_signed(&e, &ws, &auth).await }).await;
        for id in &ids {
            assert!(matches!(e.receipt(&ws, id).unwrap(), ReceiptView::Signed(_)));
        }
        // The chain continues where it stopped.
        let next = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap().receipt.unwrap();
        assert_eq!(next.body.to_value().unwrap()["seq"], 11, "seq 0 is the grant, 1..=10 the checks before the crash");
        e.shutdown().await;
    });
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_actors_stop_and_reload_without_breaking_the_chain() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let cfg = EngineConfig { idle_timeout: Duration::from_millis(50), ..config() };
    let e = Engine::start(open_store(&root), client(&root), cfg).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    for round in 0..3u64 {
        eventually("the idle actor stops", || async { e.metrics().actors_live.get() == 0 }).await;
        let r = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap().receipt.unwrap();
        assert_eq!(r.body.to_value().unwrap()["seq"], round + 1);
    }
    assert!(e.metrics().actor_starts.get() >= 4);
    eventually("all signed", || async { all_signed(&e, &ws, &auth).await }).await;
    let keys = e.keys(&ws).unwrap();
    let bundle = e.export(&ws, ExportScope::Authorization(auth)).unwrap();
    assert_eq!(verify_bundle(&bundle, Some(&keys), &[]).unwrap().outcome(), Outcome::Valid);
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspace_sees_nothing() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let e = Engine::start(open_store(&root), client(&root), config()).await.unwrap();
    let a = workspace(&e).await;
    let b = workspace(&e).await;
    let created = e.create_authorization(&a, grant(None), None).await.unwrap();
    let auth = created.authorization.id;
    let receipt = created.receipt.receipt_id;
    let nf = |r: Result<_, EngineError>| matches!(r, Err(EngineError::NotFound { .. }));
    assert!(nf(e.authorization(&b, &auth).map(|_| ())));
    assert!(nf(e.receipt(&b, &receipt).map(|_| ())));
    assert!(nf(e.trail(&b, &auth, None, 10).map(|_| ())));
    assert!(nf(e.revoke_authorization(&b, &auth, None).await.map(|_| ())));
    assert!(nf(e.export(&b, ExportScope::Authorization(auth.clone())).map(|_| ())));
    let key = api_key(&e, &a, vec![allowly_store::Role::Read]).await;
    assert!(nf(e.revoke_api_key(&b, &key.key.id, None).await.map(|_| ())));
    // A check in b naming a's authorization is an unknown authorization: its receipt is in
    // b's log (naming the id asked for), and a's trail and log are untouched.
    let out = e.check(&b, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    assert_eq!((out.decision, out.reason.as_str()), (Decision::Deny, "unknown_authorization"));
    let r = out.receipt.expect("a receipt in b's log");
    let rb = body_of(&r);
    assert_eq!((rb.workspace_id.as_str(), rb.asked_authorization_id.as_deref()), (b.as_str(), Some(auth.as_str())));
    assert!(nf(e.receipt(&a, &r.receipt_id).map(|_| ())));
    assert_eq!(e.authorization(&a, &auth).unwrap().trail_length, 1);
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_until_revoked() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let e = Engine::start(open_store(&root), client(&root), config()).await.unwrap();
    let ws = workspace(&e).await;
    let admin = e.create_admin_key().await.unwrap();
    assert_eq!(e.authenticate(&admin.secret).unwrap().unwrap().workspace_id, None);
    let k = api_key(&e, &ws, vec![allowly_store::Role::Check]).await;
    let p = e.authenticate(&k.secret).unwrap().unwrap();
    assert_eq!(p.workspace_id.as_deref(), Some(ws.as_str()));
    assert!(p.has(allowly_store::Role::Check) && !p.has(allowly_store::Role::Read));
    let mut wrong = k.secret.clone();
    wrong.pop();
    wrong.push(if k.secret.ends_with('0') { '1' } else { '0' });
    assert_eq!(e.authenticate(&wrong).unwrap(), None);
    assert_eq!(e.authenticate("garbage").unwrap(), None);
    e.revoke_api_key(&ws, &k.key.id, None).await.unwrap();
    assert_eq!(e.authenticate(&k.secret).unwrap(), None);
    assert!(matches!(e.revoke_api_key(&ws, &k.key.id, None).await, Err(EngineError::Conflict(_))));
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizations_are_listed_by_page_with_filters_and_only_the_workspaces_own() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let e = Engine::start(open_store(&root), client(&root), config()).await.unwrap();
    let (ws, other) = (workspace(&e).await, workspace(&e).await);
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut g = grant(None);
        g.subject = if i % 2 == 0 { "alice".into() } else { "bob".into() };
        ids.push(e.create_authorization(&ws, g, None).await.unwrap().authorization.id);
    }
    e.create_authorization(&other, grant(None), None).await.unwrap();
    e.revoke_authorization(&ws, &ids[0], None).await.unwrap();
    ids.sort();

    // Every page in id order, cursors chain, nothing of the other workspace.
    let all = AuthorizationFilter::default();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = e.authorizations(&ws, &all, cursor.as_deref(), 3).unwrap();
        assert!(page.data.len() <= 3);
        seen.extend(page.data.iter().map(|a| a.id.clone()));
        if !page.has_more {
            assert_eq!(page.next_cursor, None);
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, ids);

    let only = |subject: Option<&str>, status| AuthorizationFilter { subject: subject.map(Into::into), status };
    let alice = e.authorizations(&ws, &only(Some("alice"), None), None, 100).unwrap();
    assert_eq!(alice.data.len(), 4);
    assert!(alice.data.iter().all(|a| a.subject == "alice" && a.workspace_id == ws));
    let revoked = e.authorizations(&ws, &only(None, Some(AuthorizationStatus::Revoked)), None, 100).unwrap();
    assert_eq!(revoked.data.len(), 1);
    let bob_revoked = e.authorizations(&ws, &only(Some("bob"), Some(AuthorizationStatus::Revoked)), None, 100);
    assert!(bob_revoked.unwrap().data.is_empty());
    assert!(e.authorizations(&ws, &only(Some("carol"), None), None, 100).unwrap().data.is_empty());
    assert!(matches!(e.authorizations(&ws, &all, Some("not a cursor"), 10), Err(EngineError::Invalid { .. })));
    assert!(matches!(e.authorizations("ws_nope", &all, None, 10), Err(EngineError::NotFound { .. })));
    e.shutdown().await;
    signer.stop();
}

/// The real store, except that while `full` is set every write fails as on a full device (as
/// RocksDB does after a failed WAL write: every later write fails too, whatever the space),
/// and while `slow` is set every read of a log — its position, checkpoints, Merkle nodes,
/// leaves and receipts by index, what the signing pipeline reads — first blocks its thread for
/// [`SLOW_READ`], as a read of a stalled volume does (whatever RocksDB's block cache holds).
struct Device {
    inner: Arc<allowly_store_rocks::RocksStore>,
    full: std::sync::atomic::AtomicBool,
    slow: std::sync::atomic::AtomicBool,
    /// While set, every read of a page of a workspace's webhook outbox blocks like `slow`.
    slow_outbox: std::sync::atomic::AtomicBool,
    /// Reads blocked by `slow` or `slow_outbox` right now.
    stalled: std::sync::atomic::AtomicUsize,
}

/// How long a read of a slow [`Device`] blocks.
const SLOW_READ: Duration = Duration::from_secs(3);

impl Device {
    fn on(inner: Arc<allowly_store_rocks::RocksStore>) -> Self {
        Self { inner, full: false.into(), slow: false.into(), slow_outbox: false.into(), stalled: 0.into() }
    }

    fn refuse(&self) -> allowly_store::Result<()> {
        match self.full.load(std::sync::atomic::Ordering::Acquire) {
            true => Err(allowly_store::StoreError::NoSpace("IO error: No space left on device".into())),
            false => Ok(()),
        }
    }

    /// A read of a log: `f`, after [`SLOW_READ`] while the device is slow.
    fn read<T>(&self, f: impl FnOnce(&allowly_store_rocks::RocksStore) -> T) -> T {
        self.read_if(&self.slow, f)
    }

    /// `f`, after [`SLOW_READ`] while `slow` is set.
    fn read_if<T>(
        &self,
        slow: &std::sync::atomic::AtomicBool,
        f: impl FnOnce(&allowly_store_rocks::RocksStore) -> T,
    ) -> T {
        use std::sync::atomic::Ordering;
        if slow.load(Ordering::Acquire) {
            self.stalled.fetch_add(1, Ordering::AcqRel);
            std::thread::sleep(SLOW_READ);
            self.stalled.fetch_sub(1, Ordering::AcqRel);
        }
        f(&self.inner)
    }
}

impl Store for Device {
    fn all_doc_ids(
        &self,
        kind: allowly_store::DocKind,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> allowly_store::Result<Vec<(String, String)>> {
        self.inner.all_doc_ids(kind, after, limit)
    }
    fn engine_stats(&self) -> allowly_store::EngineStats {
        self.inner.engine_stats()
    }
    fn write(&self, batch: allowly_store::WriteBatch, d: allowly_store::Durability) -> allowly_store::Result<()> {
        self.refuse()?;
        self.inner.write(batch, d)
    }
    fn write_groups(
        &self,
        groups: Vec<(String, allowly_store::WriteBatch)>,
        d: allowly_store::Durability,
    ) -> allowly_store::Result<Vec<allowly_store::Result<()>>> {
        self.refuse()?;
        self.inner.write_groups(groups, d)
    }
    fn workspace(&self, id: &str) -> allowly_store::Result<Option<allowly_store::WorkspaceRecord>> {
        self.inner.workspace(id)
    }
    fn api_key_by_hash(&self, hash: &[u8; 32]) -> allowly_store::Result<Option<allowly_store::ApiKeyRecord>> {
        self.inner.api_key_by_hash(hash)
    }
    fn api_key_by_id(&self, ws: Option<&str>, id: &str) -> allowly_store::Result<Option<allowly_store::ApiKeyRecord>> {
        self.inner.api_key_by_id(ws, id)
    }
    fn instance_api_keys(&self, limit: usize) -> allowly_store::Result<Vec<allowly_store::ApiKeyRecord>> {
        self.inner.instance_api_keys(limit)
    }
    fn authorization(&self, ws: &str, id: &str) -> allowly_store::Result<Option<allowly_store::AuthorizationRecord>> {
        self.inner.authorization(ws, id)
    }
    fn authorizations(
        &self,
        ws: &str,
        after: Option<&str>,
        limit: usize,
    ) -> allowly_store::Result<Vec<allowly_store::AuthorizationRecord>> {
        self.inner.authorizations(ws, after, limit)
    }
    fn receipt_at(&self, ws: &str, index: u64) -> allowly_store::Result<Option<allowly_store::ReceiptRecord>> {
        self.inner.receipt_at(ws, index)
    }
    fn trail(
        &self,
        ws: &str,
        auth: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> allowly_store::Result<Vec<allowly_store::ReceiptRecord>> {
        self.inner.trail(ws, auth, after_seq, limit)
    }
    fn receipts_in_range(
        &self,
        ws: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> allowly_store::Result<Vec<allowly_store::ReceiptRecord>> {
        self.read(|s| s.receipts_in_range(ws, from, to, limit))
    }
    fn node(&self, ws: &str, level: u8, index: u64) -> allowly_store::Result<Option<[u8; 32]>> {
        self.read(|s| s.node(ws, level, index))
    }
    fn checkpoint(&self, ws: &str, size: u64) -> allowly_store::Result<Option<String>> {
        self.read(|s| s.checkpoint(ws, size))
    }
    fn latest_checkpoint(&self, ws: &str) -> allowly_store::Result<Option<(u64, String)>> {
        self.read(|s| s.latest_checkpoint(ws))
    }
    fn checkpoint_at_or_after(&self, ws: &str, size: u64) -> allowly_store::Result<Option<(u64, String)>> {
        self.read(|s| s.checkpoint_at_or_after(ws, size))
    }
    fn cosignatures(&self, ws: &str, size: u64) -> allowly_store::Result<Vec<([u8; 32], String)>> {
        self.inner.cosignatures(ws, size)
    }
    fn recent_cosignatures(
        &self,
        ws: &str,
        at_most: u64,
        limit: usize,
    ) -> allowly_store::Result<Vec<(u64, [u8; 32], String)>> {
        self.inner.recent_cosignatures(ws, at_most, limit)
    }
    fn witness_head(&self, ws: &str, witness: &[u8; 32]) -> allowly_store::Result<Option<u64>> {
        self.inner.witness_head(ws, witness)
    }
    fn leaf_hashes(&self, ws: &str, from: u64, to: u64, limit: usize) -> allowly_store::Result<Vec<(u64, [u8; 32])>> {
        self.read(|s| s.leaf_hashes(ws, from, to, limit))
    }
    fn workspaces_with_unsigned(&self) -> allowly_store::Result<Vec<String>> {
        self.inner.workspaces_with_unsigned()
    }
    fn workspaces_behind_witness(&self, witness: &[u8; 32]) -> allowly_store::Result<Vec<String>> {
        self.inner.workspaces_behind_witness(witness)
    }
    fn log_meta(&self, ws: &str) -> allowly_store::Result<Option<allowly_store::LogMeta>> {
        self.read(|s| s.log_meta(ws))
    }
    fn doc(
        &self,
        kind: allowly_store::DocKind,
        ws: &str,
        id: &str,
    ) -> allowly_store::Result<Option<serde_json::Value>> {
        self.inner.doc(kind, ws, id)
    }
    fn docs(
        &self,
        kind: allowly_store::DocKind,
        ws: &str,
        after: Option<&str>,
        limit: usize,
    ) -> allowly_store::Result<Vec<(String, serde_json::Value)>> {
        match kind {
            allowly_store::DocKind::Outbox => self.read_if(&self.slow_outbox, |s| s.docs(kind, ws, after, limit)),
            _ => self.inner.docs(kind, ws, after, limit),
        }
    }
    fn all_docs(
        &self,
        kind: allowly_store::DocKind,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> allowly_store::Result<Vec<(String, String, serde_json::Value)>> {
        self.inner.all_docs(kind, after, limit)
    }
    // Membership and leases: not the device's to fail (the engine does not use them yet).
    fn heartbeat(&self, node: &str, address: &str, ttl: Duration) -> allowly_store::Result<allowly_store::Member> {
        self.inner.heartbeat(node, address, ttl)
    }
    fn live_nodes(&self) -> allowly_store::Result<Vec<allowly_store::Member>> {
        self.inner.live_nodes()
    }
    fn acquire_lease(
        &self,
        ws: &str,
        node: &str,
        address: &str,
        ttl: Duration,
    ) -> allowly_store::Result<allowly_store::LeaseAnswer> {
        self.inner.acquire_lease(ws, node, address, ttl)
    }
    fn renew_lease(
        &self,
        ws: &str,
        node: &str,
        epoch: u64,
        ttl: Duration,
    ) -> allowly_store::Result<allowly_store::Lease> {
        self.inner.renew_lease(ws, node, epoch, ttl)
    }
    fn release_lease(&self, ws: &str, node: &str, epoch: u64) -> allowly_store::Result<allowly_store::Lease> {
        self.inner.release_lease(ws, node, epoch)
    }
    fn renew_leases(
        &self,
        node: &str,
        address: &str,
        held: &[(String, u64)],
        ttl: Duration,
    ) -> allowly_store::Result<Vec<allowly_store::Result<allowly_store::Lease>>> {
        self.inner.renew_leases(node, address, held, ttl)
    }
    fn release_leases(
        &self,
        node: &str,
        address: &str,
        held: &[(String, u64)],
    ) -> allowly_store::Result<Vec<allowly_store::Result<allowly_store::Lease>>> {
        self.inner.release_leases(node, address, held)
    }
    fn lease(&self, ws: &str) -> allowly_store::Result<Option<allowly_store::Lease>> {
        self.inner.lease(ws)
    }
}

/// A write the device refuses fails the engine closed at once (`storage_full`, before the
/// health task's next look), readiness names it, nothing is written meanwhile, and once the
/// device takes writes again the health task's probe write clears it by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_device_refuses_fails_closed_until_a_probe_write_succeeds() {
    use allowly_engine::health::Fault;
    use std::sync::atomic::Ordering;
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = Arc::new(Device::on(open_store(&root)));
    let cfg = EngineConfig { health_interval: Duration::from_millis(20), ..config() };
    let e = Engine::start(store.clone(), client(&root), cfg).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    eventually("signed", || async { all_signed(&e, &ws, &auth).await }).await;
    let before = e.authorization(&ws, &auth).unwrap().trail_length;

    store.full.store(true, Ordering::Release);
    let first = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await;
    let first = first.err().unwrap_or_else(|| panic!("a check was acknowledged on a full device"));
    assert_eq!((first.code(), first.fault()), ("storage_full", Some(Fault::StorageFull)), "{first:?}");
    // Raised by the failed commit itself: the next call is refused before it reaches an actor.
    let next = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await;
    assert!(matches!(next, Err(EngineError::Unavailable { fault: Fault::StorageFull, .. })), "{next:?}");
    let revoke = e.revoke_authorization(&ws, &auth, None).await;
    assert!(matches!(revoke, Err(EngineError::Unavailable { fault: Fault::StorageFull, .. })), "{revoke:?}");
    let r = e.readiness();
    assert!(!r.ready && r.signer, "{r:?}");
    assert_eq!(r.causes.iter().map(|c| c.code.as_str()).collect::<Vec<_>>(), ["storage_full"], "{r:?}");
    assert!(e.metrics().text().contains(r#"allowly_engine_fault{cause="storage_full"} 1"#));
    // The probe keeps failing while the device does: still closed after several rounds.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!e.readiness().ready, "cleared while every write still fails");
    assert_eq!(e.authorization(&ws, &auth).unwrap().trail_length, before, "a refused call left a receipt");

    store.full.store(false, Ordering::Release);
    eventually("the probe write clears the fault", || async { e.readiness().ready }).await;
    let out = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    assert_eq!(out.decision, Decision::Allow);
    assert_eq!(e.authorization(&ws, &auth).unwrap().trail_length, before + 1, "the trail has no gap");
    eventually("signed after recovery", || async { all_signed(&e, &ws, &auth).await }).await;
    e.shutdown().await;
    signer.stop();
}

/// The signing pipeline's own store reads (issue 11) wait for a slow volume off the async
/// workers: four resyncs at once (each reads the workspace's log position and newest
/// checkpoint) on a device whose reads of logs block their thread for [`SLOW_READ`], with two
/// async workers. Meanwhile a check of an authorization its actor has
/// cached (it reads nothing) is answered within its `commit_timeout`, and each resync is
/// answered once the volume answered its reads. Before, the resyncs read on the async workers:
/// two of them held both workers, and the check waited for their reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipelines_reads_wait_for_a_slow_volume_off_the_async_workers() {
    use std::sync::atomic::Ordering;
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = Arc::new(Device::on(open_store(&root)));
    let cfg = EngineConfig { commit_timeout: Duration::from_secs(1), ..config() };
    let e = Engine::start(store.clone(), client(&root), cfg.clone()).await.unwrap();
    let tenants = signed_tenants(&e, 4, "the grants signed").await;
    // Each authorization cached by its actor: the check below reads nothing.
    for (ws, auth) in &tenants {
        e.check(ws, ask(auth, "files.read", Some("doc:1")), None).await.unwrap();
    }

    store.slow.store(true, Ordering::Release);
    let resyncs: Vec<_> = tenants
        .iter()
        .map(|(ws, _)| {
            let (e, ws) = (e.clone(), ws.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                (e.resync_log(&ws).await, started.elapsed())
            })
        })
        .collect();
    // At least two reads stalled: before the fix, both async workers.
    eventually("the resyncs' reads stall", || async { store.stalled.load(Ordering::Acquire) >= 2 }).await;
    let (ws, auth) = &tenants[0];
    let started = std::time::Instant::now();
    let out = e.check(ws, ask(auth, "files.read", Some("doc:1")), None).await;
    let took = started.elapsed();
    let still_stalled = store.stalled.load(Ordering::Acquire);
    assert!(took <= cfg.commit_timeout, "a check that reads nothing took {took:?} while the pipeline's reads stalled");
    assert_eq!(out.unwrap().decision, Decision::Allow);
    assert!(still_stalled > 0, "the reads were no longer stalled when the check was answered: the test proves nothing");

    for r in resyncs {
        let (r, took) = r.await.unwrap();
        let r = r.unwrap();
        assert!(!r.was_diverged, "{r:?}");
        assert!(took >= SLOW_READ, "a resync did not wait for the volume ({took:?}): it read nothing slow");
    }
    store.slow.store(false, Ordering::Release);
    for (ws, auth) in &tenants {
        eventually("signed after the stall", || async { all_signed(&e, ws, auth).await }).await;
    }
    e.shutdown().await;
    signer.stop();
}

/// Deleting a webhook endpoint reads the first page of its workspace's outbox (to cancel the
/// endpoint's unfinished deliveries) off the async workers (issue 11): on a device whose outbox
/// reads block for [`SLOW_READ`], two deletions at once, in two workspaces, are answered
/// `read_timeout` within their `commit_timeout` with nothing deleted, while a check of a cached
/// authorization in a third workspace is answered within its own; once the device is fast,
/// both deletions go through. Before, each actor read the page on its async worker: the two
/// deletions held both workers of the runtime and the check waited for the volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_endpoint_reads_the_outbox_off_the_async_workers() {
    use std::sync::atomic::Ordering;
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = Arc::new(Device::on(open_store(&root)));
    let cfg = EngineConfig { commit_timeout: Duration::from_secs(1), ..config() };
    let e = Engine::start(store.clone(), client(&root), cfg.clone()).await.unwrap();
    let tenants = signed_tenants(&e, 3, "the grants signed").await;
    for (ws, auth) in &tenants {
        e.check(ws, ask(auth, "files.read", Some("doc:1")), None).await.unwrap();
    }
    let mut hooks = Vec::new();
    for (ws, _) in &tenants[..2] {
        let new: allowly_webhooks::NewWebhook = serde_json::from_value(serde_json::json!({
            "url": "https://example.com/hook", "events": ["receipt.signed"]
        }))
        .unwrap();
        hooks.push((ws.clone(), e.create_webhook(ws, new, None).await.unwrap().webhook.id));
    }

    store.slow_outbox.store(true, Ordering::Release);
    let deletions: Vec<_> = hooks
        .iter()
        .map(|(ws, id)| {
            let (e, ws, id) = (e.clone(), ws.clone(), id.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                (e.delete_webhook(&ws, &id).await, started.elapsed())
            })
        })
        .collect();
    // Watched from this thread, not with the runtime's timers: with the reads inline (the
    // bug) both workers sleep in them and no timer fires until they wake.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.stalled.load(Ordering::Acquire) < 2 {
        assert!(std::time::Instant::now() < deadline, "the deletions' outbox reads never stalled");
        std::thread::yield_now();
    }
    let (ws, auth) = &tenants[2];
    let started = std::time::Instant::now();
    let out = e.check(ws, ask(auth, "files.read", Some("doc:1")), None).await;
    let took = started.elapsed();
    let still_stalled = store.stalled.load(Ordering::Acquire);
    assert!(took <= cfg.commit_timeout, "a check that reads nothing took {took:?} while two outbox reads stalled");
    assert_eq!(out.unwrap().decision, Decision::Allow);
    assert!(still_stalled > 0, "the reads were no longer stalled when the check was answered: the test proves nothing");
    for d in deletions {
        let (r, took) = d.await.unwrap();
        assert!(matches!(r, Err(EngineError::ReadTimeout(_))), "{r:?}");
        // Answered at its deadline (a margin before `commit_timeout`), not when the volume
        // answered: the bound is the stall, so a loaded machine's scheduling does not matter.
        assert!(took < SLOW_READ, "a deletion waited for the volume: answered after {took:?}");
    }

    store.slow_outbox.store(false, Ordering::Release);
    // The stalled reads end by themselves; a deletion now reads a fast device.
    eventually("the stalled reads end", || async { store.stalled.load(Ordering::Acquire) == 0 }).await;
    for (ws, id) in &hooks {
        assert!(e.webhook(ws, id).is_ok(), "a deletion answered read_timeout deleted the endpoint");
        e.delete_webhook(ws, id).await.unwrap();
        assert!(matches!(e.webhook(ws, id), Err(EngineError::NotFound { .. })));
    }
    e.shutdown().await;
    signer.stop();
}

/// What [`proxy`] does with one request.
enum Act {
    /// Pass it to the signer (and its answer back).
    Pass,
    /// Answer `Busy` itself (what a signer says when a workspace's queue is over its cap).
    Busy,
    /// Never answer (a signer that does not answer this kind of request in time).
    Withhold,
    /// Answer `UnknownKind` itself (a signer older than this kind of request).
    Unknown,
}

/// What [`proxy`] does to each answer of the signer before passing it on.
type Tamper = Arc<dyn Fn(allowly_signer_proto::Response) -> allowly_signer_proto::Response + Send + Sync>;

/// A proxy between the engine and the real signer that decides, request by request, with
/// `policy`, whether to pass it on, answer `Busy` itself or never answer it; answers pass
/// through `tamper` when there is one.
async fn proxy(
    listen: std::path::PathBuf,
    signer: std::path::PathBuf,
    policy: Arc<dyn Fn(&allowly_signer_proto::Request) -> Act + Send + Sync>,
    tamper: Option<Tamper>,
) {
    use allowly_signer_proto::{
        decode_request, decode_response, encode_response, read_frame, ErrorCode, ErrorReply, Response,
    };
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::UnixListener::bind(&listen).unwrap();
    loop {
        let (down, _) = listener.accept().await.unwrap();
        let up = tokio::net::UnixStream::connect(&signer).await.unwrap();
        let (policy, tamper) = (policy.clone(), tamper.clone());
        tokio::spawn(async move {
            let (mut down_rd, down_wr) = down.into_split();
            let (mut up_rd, mut up_wr) = up.into_split();
            let down_wr = Arc::new(tokio::sync::Mutex::new(down_wr));
            let answers = {
                let down_wr = down_wr.clone();
                async move {
                    let mut buf = Vec::new();
                    let mut out = Vec::new();
                    while let Ok(Some(frame)) = read_frame(&mut up_rd, &mut buf).await {
                        let mut w = down_wr.lock().await;
                        if let Some(tamper) = &tamper {
                            let (id, answer) = decode_response(frame).unwrap();
                            out.clear();
                            encode_response(id, &tamper(answer), &mut out).unwrap();
                            if w.write_all(&out).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        let prefix = (frame.len() as u32).to_be_bytes();
                        if w.write_all(&prefix).await.is_err() || w.write_all(frame).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let requests = async move {
                let mut buf = Vec::new();
                while let Ok(Some(frame)) = read_frame(&mut down_rd, &mut buf).await {
                    let (id, request) = decode_request(frame).unwrap();
                    let refuse = match policy(&request) {
                        Act::Pass => None,
                        Act::Withhold => continue,
                        Act::Busy => Some((ErrorCode::Busy, "queue full")),
                        Act::Unknown => Some((ErrorCode::UnknownKind, "unknown message kind")),
                    };
                    if let Some((code, message)) = refuse {
                        let reply = ErrorReply { code, message: message.into(), current_size: None };
                        let mut out = Vec::new();
                        encode_response(id, &Response::Error(reply), &mut out).unwrap();
                        if down_wr.lock().await.write_all(&out).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let prefix = (frame.len() as u32).to_be_bytes();
                    if up_wr.write_all(&prefix).await.is_err() || up_wr.write_all(frame).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! { () = answers => {}, () = requests => {} }
        });
    }
}

/// A client of the signer of `root` through a proxy that applies `policy` (the same options as
/// `client`), once the proxy answers.
async fn through_proxy(
    root: &TempDir,
    policy: impl Fn(&allowly_signer_proto::Request) -> Act + Send + Sync + 'static,
) -> allowly_signer_proto::client::SignerClient {
    through_tampering_proxy(root, policy, None).await
}

/// [`through_proxy`], with the signer's answers passed through `tamper`.
async fn through_tampering_proxy(
    root: &TempDir,
    policy: impl Fn(&allowly_signer_proto::Request) -> Act + Send + Sync + 'static,
    tamper: Option<Tamper>,
) -> allowly_signer_proto::client::SignerClient {
    let proxied = root.path().join("run").join("proxy.sock");
    tokio::spawn(proxy(proxied.clone(), socket(root), Arc::new(policy), tamper));
    let opts = allowly_signer_proto::client::ClientOptions {
        request_timeout: Duration::from_secs(2),
        reconnect_backoff_min: Duration::from_millis(10),
        reconnect_backoff_max: Duration::from_millis(100),
        ..Default::default()
    };
    let c = allowly_signer_proto::client::SignerClient::new(proxied, opts);
    eventually("the proxy answers", || async { c.ping().await.is_ok() }).await;
    c
}

/// A signer that answers `Busy` is back pressure, not an outage (issue 17): while it refuses the
/// pipeline's appends, checks keep being decided, the engine stays ready and the signer up, no
/// signer error is counted; the refused rounds are counted as waits and retried, and every
/// receipt is signed once the signer takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_signer_is_back_pressure_and_never_fails_checks_closed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    const BUSY: usize = 12;
    // The first `busy` appends are answered `Busy`.
    let busy = Arc::new(AtomicUsize::new(usize::MAX));
    let refuse = busy.clone();
    let policy = move |r: &allowly_signer_proto::Request| match r {
        allowly_signer_proto::Request::AppendBatch { .. } | allowly_signer_proto::Request::AppendMany { .. }
            if refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() =>
        {
            Act::Busy
        }
        _ => Act::Pass,
    };
    let c = through_proxy(&root, policy).await;
    let e = Engine::start(open_store(&root), c, config()).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    // From here on the proxy answers `Busy` to every append: the creation receipt stays pending.
    eventually("the first append answered Busy", || async { e.metrics().signer_busy.get() >= 1 }).await;
    for i in 0..20 {
        let out = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await;
        assert!(out.is_ok(), "check {i} while the signer is busy: {out:?}");
        assert!(e.readiness().ready, "not ready while the signer is merely busy");
    }
    assert!(!all_signed(&e, &ws, &auth).await, "signed although every append was refused");
    // Then it takes the next `BUSY` refusals more, and then everything.
    busy.store(BUSY, Ordering::SeqCst);
    eventually("every receipt signed after the busy spell", || async { all_signed(&e, &ws, &auth).await }).await;
    let m = e.metrics();
    assert!(m.signer_busy.get() > BUSY as u64, "busy answers counted as waits: {}", m.signer_busy.get());
    assert_eq!(m.signer_up.get(), 1);
    for kind in ["unavailable", "storage", "error"] {
        assert_eq!(
            m.signer_errors.with_label_values(&[kind]).get(),
            0,
            "a Busy answer counted as signer_errors{{{kind}}}"
        );
    }
    e.shutdown().await;
    signer.stop();
}

/// Signing rounds that are ready while both signer requests are out travel together in the
/// next request (issue 17: one `AppendMany` for many workspaces). The proxy withholds the first
/// two requests after arming (the client's slots) until they time out; meanwhile every other
/// workspace's round queues in the engine, and the next request carries all of them: one
/// signature per workspace, every receipt signed, nothing lost with the two that timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_ready_while_the_signer_requests_are_out_share_the_next_request() {
    use allowly_signer_proto::Request;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const WORKSPACES: usize = 12;
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    // How many more signer requests to withhold (armed below), and how many were.
    let withhold = Arc::new(AtomicUsize::new(0));
    let withheld = Arc::new(AtomicUsize::new(0));
    let (arm, count) = (withhold.clone(), withheld.clone());
    let policy = move |r: &Request| match r {
        Request::AppendMany { .. }
            if arm.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() =>
        {
            count.fetch_add(1, Ordering::SeqCst);
            Act::Withhold
        }
        _ => Act::Pass,
    };
    let c = through_proxy(&root, policy).await;
    // The rounds' own bound is longer than the client's (2 s): the queued rounds outlive the
    // withheld requests.
    let cfg = EngineConfig { signer_timeout: Duration::from_secs(20), ..config() };
    let e = Engine::start(open_store(&root), c, cfg).await.unwrap();
    let tenants = signed_tenants(&e, WORKSPACES, "the set-up signed").await;
    let m = e.metrics();
    let requests_before = m.sign_request_workspaces.get_sample_count();

    withhold.store(2, Ordering::SeqCst);
    for (i, (ws, auth)) in tenants.iter().enumerate() {
        e.check(ws, ask(auth, "files.read", Some("doc:1")), None).await.unwrap();
        // The first two rounds each take one of the two request slots, and stay out.
        if i < 2 {
            eventually("the round's request withheld", || async { withheld.load(Ordering::SeqCst) == i + 1 }).await;
        }
    }
    let rest = (WORKSPACES - 2) as i64;
    eventually("the other rounds queued behind the two", || async { m.sign_rounds_queued.get() >= rest }).await;
    for (ws, auth) in &tenants {
        eventually("every receipt signed", || async { all_signed(&e, ws, auth).await }).await;
    }
    assert_eq!(m.sign_rounds_queued.get(), 0);
    // Requests since arming: the two withheld, then at least one carrying the ten queued rounds.
    let h = prometheus::core::Metric::metric(&m.sign_request_workspaces);
    let h = h.get_histogram();
    let at_most_8 = h.get_bucket().iter().find(|b| b.upper_bound() == 8.0).unwrap().cumulative_count();
    assert!(
        at_most_8 < h.get_sample_count(),
        "no request carried more than 8 workspaces ({} requests since arming)",
        h.get_sample_count() - requests_before
    );
    e.shutdown().await;
    signer.stop();
}

/// A checkpoint whose signature does not verify is never stored, also when it comes back in
/// one `AppendMany` answer with other workspaces' good ones (whose checkpoints the engine opens
/// together, in one batched check: issue 17). The proxy flips one bit of the signature of every
/// checkpoint of one workspace: that workspace is fenced as diverged and its receipts stay
/// unsigned, while every other workspace — in the same requests — is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badly_signed_checkpoint_among_good_ones_is_never_stored() {
    use allowly_signer_proto::{AppendResult, Request, Response};
    use base64::Engine as _;
    const WORKSPACES: usize = 8;
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let victim: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let chosen = victim.clone();
    let tamper: Tamper = Arc::new(move |answer| {
        let Response::AppendedMany { mut results } = answer else { return answer };
        let Some(victim) = chosen.lock().unwrap().clone() else { return Response::AppendedMany { results } };
        for r in &mut results {
            let AppendResult::Appended { checkpoint, .. } = r else { continue };
            if !checkpoint.starts_with(&allowly_receipt::types::log_origin(&victim)) {
                continue;
            }
            // The last line is `— <name> <base64(key id ‖ signature)>`: flip a bit of the signature.
            let b64 = base64::engine::general_purpose::STANDARD;
            let (head, line) = checkpoint.trim_end_matches('\n').rsplit_once('\n').unwrap();
            let (prefix, sig) = line.rsplit_once(' ').unwrap();
            let mut raw = b64.decode(sig).unwrap();
            raw[40] ^= 0x10;
            *checkpoint = format!("{head}\n{prefix} {}\n", b64.encode(raw));
        }
        Response::AppendedMany { results }
    });
    let c = through_tampering_proxy(&root, |_: &Request| Act::Pass, Some(tamper)).await;
    let e = Engine::start(open_store(&root), c, config()).await.unwrap();
    let tenants = signed_tenants(&e, WORKSPACES, "the set-up signed").await;
    let (bad_ws, bad_auth) = tenants[3].clone();
    *victim.lock().unwrap() = Some(bad_ws.clone());
    let m = e.metrics();
    let requests_before = m.sign_request_workspaces.get_sample_count();
    // Every workspace's check at once, several times: their rounds share requests. The
    // victim's first tampered round may fence it before a later pass: its checks are then
    // refused as diverged (what the end of the test asserts), everyone else's still answered.
    for _ in 0..3 {
        let mut checks = tokio::task::JoinSet::new();
        for (ws, auth) in tenants.clone() {
            let e = e.clone();
            checks.spawn(async move { (e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await, ws) });
        }
        while let Some(out) = checks.join_next().await {
            match out.unwrap() {
                (Err(EngineError::WorkspaceLogDiverged), ws) if ws == bad_ws => {}
                (answer, ws) => {
                    answer.unwrap_or_else(|err| panic!("check of {ws}: {err:?}"));
                }
            }
        }
    }
    for (ws, auth) in tenants.iter().filter(|(ws, _)| *ws != bad_ws) {
        eventually("every other workspace signed", || async { all_signed(&e, ws, auth).await }).await;
    }
    eventually("the workspace with the bad checkpoint is fenced", || async {
        e.readiness().diverged_workspaces.iter().any(|d| d.workspace_id == bad_ws)
    })
    .await;
    assert!(!all_signed(&e, &bad_ws, &bad_auth).await, "a checkpoint whose signature does not verify was stored");
    assert!(m.sign_request_workspaces.get_sample_count() > requests_before);
    let refused = e.check(&bad_ws, ask(&bad_auth, "files.read", Some("doc:1")), None).await;
    assert!(refused.is_err(), "the fenced workspace still takes checks: {refused:?}");
    e.shutdown().await;
    signer.stop();
}

/// A signer older than `AppendMany` (it answers `UnknownKind`, as the proxy does here for it)
/// gets one `AppendBatch` per signing round instead: every receipt is signed, the signer is
/// never taken for down, and `AppendMany` is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_that_does_not_know_append_many_gets_one_append_per_round() {
    use allowly_signer_proto::Request;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let (many, batches) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (m, b) = (many.clone(), batches.clone());
    let policy = move |r: &Request| match r {
        Request::AppendMany { .. } => {
            m.fetch_add(1, Ordering::SeqCst);
            Act::Unknown
        }
        Request::AppendBatch { .. } => {
            b.fetch_add(1, Ordering::SeqCst);
            Act::Pass
        }
        _ => Act::Pass,
    };
    let c = through_proxy(&root, policy).await;
    let e = Engine::start(open_store(&root), c, config()).await.unwrap();
    let mut tenants = Vec::new();
    for _ in 0..4 {
        let ws = workspace(&e).await;
        let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
        for _ in 0..3 {
            e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
        }
        tenants.push((ws, auth));
    }
    for (ws, auth) in &tenants {
        eventually("every receipt signed", || async { all_signed(&e, ws, auth).await }).await;
    }
    let tried = many.load(Ordering::SeqCst);
    assert!(tried >= 1, "AppendMany was never tried");
    assert!(batches.load(Ordering::SeqCst) >= tenants.len(), "the rounds were not sent as AppendBatch");
    // Asked once (or by the requests already out when the first answer came), never again.
    assert!(tried <= 2, "AppendMany sent {tried} times to a signer that does not know it");
    let m = e.metrics();
    assert_eq!(m.signer_up.get(), 1);
    assert_eq!(m.signer_errors.with_label_values(&["unavailable"]).get(), 0);
    e.shutdown().await;
    signer.stop();
}

/// A divergence marked outside the signing task ends a key rotation that waits for the log to
/// be signed (issue 12). The store is restored from a copy older than the signer's state; the
/// signer does not list its log sizes in time at start, so the start-up comparison is retried
/// in the background. Meanwhile a check is taken, its signing round is answered `Busy` again and
/// again, and a rotation waits for it. When the retried comparison finds the signer ahead of
/// the store and marks the workspace, the rotation answers `workspace_log_behind_signer` at
/// once — not after its drain bound (60 s here) as if the signer were down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergence_found_outside_the_signing_task_ends_a_waiting_rotation() {
    use allowly_signer_proto::Request;
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    eventually("the creation receipt signed", || async { all_signed(&e, &ws, &auth).await }).await;
    // The copy (a backup's store half), then three more receipts the signer signs.
    let old = root.path().join("db-old");
    store.backup_to(&old).unwrap();
    for _ in 0..3 {
        e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    }
    eventually("every receipt signed", || async { all_signed(&e, &ws, &auth).await }).await;
    e.shutdown().await;
    drop((e, store));

    let hold = Arc::new(AtomicBool::new(true));
    let held = hold.clone();
    let policy = move |r: &Request| match r {
        Request::LogSizes { .. } if held.load(Ordering::SeqCst) => Act::Withhold,
        Request::AppendBatch { .. } | Request::AppendMany { .. } => Act::Busy,
        _ => Act::Pass,
    };
    let c = through_proxy(&root, policy).await;
    let restored =
        Arc::new(allowly_store_rocks::RocksStore::open(&old, allowly_store_rocks::RocksOptions::default()).unwrap());
    let drain = Duration::from_secs(60);
    let e = Engine::start(restored, c, EngineConfig { rotation_drain_timeout: drain, ..config() }).await.unwrap();
    // Not compared yet: the check is taken (the documented window) and waits to be signed.
    e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    let busy = e.metrics().signer_busy.get();
    let rotation = tokio::spawn({
        let (e, ws) = (e.clone(), ws.clone());
        async move { e.rotate_workspace_key(&ws, None).await }
    });
    eventually("two more signing rounds while the rotation waits", || async {
        e.metrics().signer_busy.get() >= busy + 2
    })
    .await;
    assert!(!rotation.is_finished(), "the rotation did not wait: {:?}", rotation.await);
    hold.store(false, Ordering::SeqCst);
    let released = std::time::Instant::now();
    let out = rotation.await.unwrap();
    assert!(matches!(out, Err(EngineError::WorkspaceLogBehindSigner)), "{out:?}");
    assert!(released.elapsed() < drain / 2, "woken late: {:?}", released.elapsed());
    assert!(!e.readiness().ready, "a store behind its signer is not ready");
    let refused = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await;
    assert!(matches!(refused, Err(EngineError::WorkspaceLogBehindSigner)), "{refused:?}");
    e.shutdown().await;
    signer.stop();
}

/// Policy changes are receipts (issue 13 part 3): replacing the scope rules writes a
/// `scope_rules.changed` workspace event holding the whole new set, before any decision made
/// under it, and it verifies alone and in a log export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_rules_change_is_a_receipt_in_the_workspace_log() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let e = Engine::start(open_store(&root), client(&root), config()).await.unwrap();
    let ws = workspace(&e).await;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    let rules: std::collections::BTreeMap<String, allowly_store::ScopeRule> =
        [("files.read".to_owned(), allowly_store::ScopeRule::Confirm)].into();
    let changed = e.set_scope_rules(&ws, ScopeRules { scope_rules: rules.clone() }).await.unwrap();
    assert_eq!(changed.workspace.scope_rules, rules);
    let b = body_of(&changed.receipt);
    assert_eq!((b.kind, b.authorization_id, b.seq, b.decision), (EventKind::ScopeRulesChanged, None, None, None));
    assert_eq!(b.scope_rules, Some([("files.read".to_owned(), RuleKind::Confirm)].into()));
    // The next check is decided under the new rules, after the change in the log.
    let out = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    assert_eq!(out.decision, Decision::Confirm);
    assert!(out.receipt.unwrap().log_index > changed.receipt.log_index);
    // Signed, the change verifies alone and in a log export.
    let keys = e.keys(&ws).unwrap();
    let signed = eventually_signed(&e, &ws, &changed.receipt.receipt_id).await;
    let report = verify_receipt(&signed, &keys).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{:?}", report.findings);
    let size = e.latest_checkpoint(&ws).unwrap().size;
    let log = e.export(&ws, ExportScope::Log { from: 0, to: size }).unwrap();
    let report = verify_bundle(&log, Some(&keys), &[]).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{:?}", report.findings);
    // With the signer down the change is refused, and the rules stay as they were.
    signer.stop();
    eventually("readiness notices the signer is gone", || async { !e.readiness().ready }).await;
    let r = e.set_scope_rules(&ws, ScopeRules { scope_rules: Default::default() }).await;
    assert!(matches!(r, Err(EngineError::SignerUnavailable(_))), "{r:?}");
    assert_eq!(e.workspace(&ws).unwrap().scope_rules, rules);
    e.shutdown().await;
}

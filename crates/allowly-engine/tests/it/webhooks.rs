//! Webhook events in the engine, against the real store and signer code: an event is enqueued
//! for exactly the subscribed, enabled endpoints, in the write of the receipt (or signature) it
//! reports; endpoints survive a restart; and the delivery worker's terminal states (gave up,
//! endpoint disabled) show in the API; deletion cancels unfinished deliveries, escalations are
//! routed by scope, secrets rotate, finished deliveries can be sent again and are swept after
//! their retention; non-public destinations are refused by default. Delivery over HTTP is
//! tested black-box in `allowly-server/tests/it/webhooks.rs`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use allowly_engine::model::*;
use allowly_engine::{Engine, EngineConfig, EngineError};
use allowly_store::{DocKind, Store};
use allowly_webhooks::model::{schedule_new, signed_event_id, DeliveryDoc, WebhookDoc};
use allowly_webhooks::{Policy, RotateSecret, WebhookConfig, Worker};
use tempfile::TempDir;

use crate::support::*;

fn hook(url: &str, events: &[EventType]) -> NewWebhook {
    NewWebhook { url: url.into(), events: events.to_vec(), scopes: None }
}

/// These tests register receivers on the loopback (nothing listens on port 9): allowed here,
/// refused by default (see `non_public_destinations_are_refused_unless_allowed`).
fn private_ok() -> EngineConfig {
    EngineConfig { webhook_destinations: Policy::AllowPrivate, ..config() }
}

/// A fast retry schedule for a worker that may reach the loopback.
fn fast_worker() -> WebhookConfig {
    WebhookConfig {
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        give_up_after: Duration::from_millis(400),
        attempt_timeout: Duration::from_millis(500),
        destinations: Policy::AllowPrivate,
        ..WebhookConfig::default()
    }
}

fn start_worker(e: &Engine, store: &Arc<allowly_store_rocks::RocksStore>, cfg: WebhookConfig) -> Worker {
    let store_dyn: Arc<dyn Store> = store.clone();
    Worker::start(store_dyn, Arc::new(e.clone()), e.webhook_signal(), cfg, allowly_webhooks::Metrics::new()).unwrap()
}

/// A fresh store and signer, an engine with `cfg` over them, and a workspace (whose scope rules
/// escalate `pay.*`). The `TempDir` must outlive the rest.
async fn setup(cfg: EngineConfig) -> (TempDir, Signer, Arc<allowly_store_rocks::RocksStore>, Engine, String) {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let e = Engine::start(store.clone(), client(&root), cfg).await.unwrap();
    let ws = workspace(&e).await;
    (root, signer, store, e, ws)
}

/// Registers `url` for `events`; returns the endpoint id.
async fn add_hook(e: &Engine, ws: &str, url: &str, events: &[EventType]) -> String {
    e.create_webhook(ws, hook(url, events), None).await.unwrap().webhook.id
}

/// A grant, revoked: one `authorization.revoked` event. Returns the authorization id.
async fn revocation(e: &Engine, ws: &str) -> String {
    let auth = e.create_authorization(ws, grant(None), None).await.unwrap().authorization.id;
    e.revoke_authorization(ws, &auth, None).await.unwrap();
    auth
}

fn refused_code(r: Result<impl std::fmt::Debug, EngineError>) -> &'static str {
    match r {
        Err(EngineError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const ACTOR_EVENTS: [EventType; 3] =
    [EventType::EscalationRequested, EventType::EscalationResolved, EventType::AuthorizationRevoked];

fn all(e: &Engine, ws: &str, webhook: &str) -> Vec<DeliveryView> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = e.deliveries(ws, webhook, cursor.as_deref(), 1).unwrap();
        out.extend(page.data);
        if !page.has_more {
            return out;
        }
        cursor = page.next_cursor;
    }
}

fn outbox(store: &dyn Store) -> Vec<(String, String, serde_json::Value)> {
    store.all_docs(DocKind::Outbox, None, 10_000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_enqueued_with_their_receipts_for_subscribers_only() {
    let (_root, signer, store, e, ws) =
        setup(EngineConfig { escalation_ttl: Duration::from_millis(2000), ..private_ok() }).await;
    let a = e.create_webhook(&ws, hook("http://127.0.0.1:9/a", &ACTOR_EVENTS), None).await.unwrap();
    let signed = e.create_webhook(&ws, hook("https://example.com/s", &[EventType::ReceiptSigned]), None).await.unwrap();
    let off = e.create_webhook(&ws, hook("http://127.0.0.1:9/off", &ACTOR_EVENTS), None).await.unwrap();
    assert!(a.secret.starts_with("whsec_") && a.secret != signed.secret);
    assert!(e.disable_webhook(&ws, &off.webhook.id, None).await.unwrap().disabled);
    let listed: Vec<_> = e.webhooks(&ws).unwrap().data.into_iter().map(|w| w.id).collect();
    assert_eq!(listed.len(), 3);

    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    let allow = e.check(&ws, ask(&auth, "files.read", Some("doc:1")), None).await.unwrap();
    assert_eq!(allow.decision, allowly_receipt::types::Decision::Allow);
    let esc = e.check(&ws, ask(&auth, "pay.wire", Some("doc:2")), None).await.unwrap();
    let esc_id = esc.escalation.as_ref().unwrap().id.clone();
    let answer = answer_by("boss", AnswerOutcome::Declined, None);
    let resolved = e.resolve_escalation(&ws, &esc_id, answer, None).await.unwrap();
    // Expires unanswered: the read that records the expiry also enqueues its event.
    let late = e.check(&ws, ask(&auth, "pay.wire", Some("doc:3")), None).await.unwrap().escalation.unwrap();
    eventually("the escalation expires", || async { now_ms() >= late.expires_at.unix_ms() }).await;
    assert_eq!(e.escalation(&ws, &late.id).await.unwrap().status, EscalationStatus::Expired);
    let revoked = e.revoke_authorization(&ws, &auth, None).await.unwrap();

    // No worker runs: everything stays pending, newest first, one outbox entry each.
    let ds = all(&e, &ws, &a.webhook.id);
    let kinds: Vec<_> = ds.iter().map(|d| (d.event_type, d.payload["data"]["reason"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            (EventType::AuthorizationRevoked, "revoked"),
            (EventType::EscalationResolved, "escalation_expired"),
            (EventType::EscalationRequested, "escalation_required"),
            (EventType::EscalationResolved, "declined"),
            (EventType::EscalationRequested, "escalation_required"),
        ]
    );
    assert!(ds.iter().all(|d| d.status == DeliveryStatus::Pending && d.attempts == 0 && d.next_attempt_at.is_some()));
    let receipt_of = |d: &DeliveryView| d.payload["data"]["receipt"]["receipt_id"].as_str().unwrap().to_owned();
    assert_eq!(receipt_of(&ds[0]), revoked.receipt.receipt_id);
    assert_eq!(receipt_of(&ds[3]), resolved.receipt.receipt_id);
    assert_eq!(receipt_of(&ds[4]), esc.receipt.as_ref().unwrap().receipt_id);
    assert_eq!(ds[4].payload["data"]["escalation_id"], esc_id.as_str());
    assert_eq!(
        (ds[1].payload["data"]["status"].as_str(), ds[1].payload["data"]["decision"].as_str()),
        (Some("expired"), Some("deny"))
    );
    assert_eq!(ds[0].payload["type"], "authorization.revoked");
    assert_eq!(e.delivery(&ws, &ds[2].id).unwrap(), ds[2]);
    assert!(all(&e, &ws, &off.webhook.id).is_empty(), "a disabled endpoint gets nothing");

    // receipt.signed: once everything is signed, the events' ranges tile the log, under ids
    // derived from the tree size.
    eventually("the trail is signed", || async { all_signed(&e, &ws, &auth).await }).await;
    let size = e.latest_checkpoint(&ws).unwrap().size;
    let mut ranges: Vec<(u64, u64, String)> = all(&e, &ws, &signed.webhook.id)
        .iter()
        .map(|d| {
            let data = &d.payload["data"];
            (data["from_log_index"].as_u64().unwrap(), data["tree_size"].as_u64().unwrap(), d.event_id.clone())
        })
        .collect();
    ranges.sort();
    let mut at = 0;
    for (from, to, id) in &ranges {
        assert_eq!((*from, id.as_str()), (at, signed_event_id(&ws, *to).as_str()), "{ranges:?}");
        at = *to;
    }
    assert_eq!(at, size);

    // Every pending delivery has exactly its one outbox entry.
    let entries = outbox(&*store);
    assert_eq!(entries.len(), ds.len() + ranges.len());
    let scheduled: BTreeSet<_> =
        entries.iter().map(|(_, _, v)| v["delivery_id"].as_str().unwrap().to_owned()).collect();
    assert!(ds.iter().all(|d| scheduled.contains(&d.id)));

    // Another workspace sees none of it.
    let other = workspace(&e).await;
    assert!(e.webhooks(&other).unwrap().data.is_empty());
    assert!(matches!(e.webhook(&other, &a.webhook.id), Err(EngineError::NotFound { .. })));
    assert!(matches!(e.deliveries(&other, &a.webhook.id, None, 10), Err(EngineError::NotFound { .. })));
    assert!(matches!(e.delivery(&other, &ds[0].id), Err(EngineError::NotFound { .. })));
    assert!(matches!(e.disable_webhook(&other, &a.webhook.id, None).await, Err(EngineError::NotFound { .. })));
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_validated_bounded_and_survive_a_restart() {
    let (root, signer, store, e, ws) = setup(private_ok()).await;
    for (url, events) in [
        ("ftp://x/", vec![EventType::ReceiptSigned]),
        ("http://x/", vec![]),
        ("http://x/", vec![EventType::ReceiptSigned, EventType::ReceiptSigned]),
    ] {
        assert!(
            matches!(e.create_webhook(&ws, hook(url, &events), None).await, Err(EngineError::Invalid { .. })),
            "{url}"
        );
    }
    let mut ids = Vec::new();
    for i in 0..16 {
        let url = format!("http://127.0.0.1:9/{i}");
        ids.push(e.create_webhook(&ws, hook(&url, &[EventType::AuthorizationRevoked]), None).await.unwrap().webhook.id);
    }
    let r = e.create_webhook(&ws, hook("http://127.0.0.1:9/17", &[EventType::AuthorizationRevoked]), None).await;
    assert!(matches!(r, Err(EngineError::Conflict(_))), "{r:?}");
    e.disable_webhook(&ws, &ids[0], None).await.unwrap();
    e.shutdown().await;
    drop(e);

    // A new engine over the same store loads the endpoints when an event needs them.
    let e = Engine::start(store.clone(), client(&root), private_ok()).await.unwrap();
    revocation(&e, &ws).await;
    assert!(all(&e, &ws, &ids[0]).is_empty());
    for id in &ids[1..] {
        assert_eq!(all(&e, &ws, id).len(), 1, "{id}");
    }
    assert_eq!(e.webhooks(&ws).unwrap().data.iter().filter(|w| w.disabled).count(), 1);
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_gives_up_on_time_and_fails_deliveries_of_disabled_endpoints() {
    let (_root, signer, store, e, ws) = setup(private_ok()).await;
    // Nothing listens on port 9 of the loopback (discard is not run): connection refused.
    let dead = add_hook(&e, &ws, "http://127.0.0.1:9/dead", &ACTOR_EVENTS).await;
    let off = add_hook(&e, &ws, "http://127.0.0.1:9/off", &ACTOR_EVENTS).await;
    revocation(&e, &ws).await;
    // Disabled after its delivery was enqueued, before any attempt.
    e.disable_webhook(&ws, &off, None).await.unwrap();

    let cfg = fast_worker();
    let metrics = allowly_webhooks::Metrics::new();
    let store_dyn: Arc<dyn Store> = store.clone();
    let worker = Worker::start(store_dyn, Arc::new(e.clone()), e.webhook_signal(), cfg, metrics.clone()).unwrap();
    eventually("both deliveries to fail", || async {
        [&dead, &off].iter().all(|h| all(&e, &ws, h).iter().all(|d| d.status == DeliveryStatus::Failed))
    })
    .await;
    let d = &all(&e, &ws, &dead)[0];
    assert_eq!(d.failure, Some(FailureReason::GaveUp), "{d:?}");
    assert!(d.attempts >= 2 && d.attempt_log.len() == d.attempts as usize, "{d:?}");
    assert!(d.attempt_log.iter().all(|a| a.status_code.is_none() && a.error.is_some()), "{d:?}");
    assert!(d.failed_at.is_some() && d.next_attempt_at.is_none());
    let d = &all(&e, &ws, &off)[0];
    assert_eq!((d.failure, d.attempts), (Some(FailureReason::EndpointDisabled), 0), "{d:?}");
    assert!(outbox(&*store).is_empty(), "nothing left to do");
    let text = metrics.text();
    assert!(text.contains(r#"allowly_webhook_deliveries_failed_total{reason="gave_up"} 1"#), "{text}");
    assert!(text.contains(r#"allowly_webhook_deliveries_failed_total{reason="endpoint_disabled"} 1"#), "{text}");
    worker.stop().await;
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_public_destinations_are_refused_unless_allowed() {
    let (root, signer, store, e, ws) = setup(config()).await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://[::1]:9/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.5/",
        "http://[::ffff:192.168.0.1]/",
        "http://100.64.1.1/",
        "http://[fd00::1]/",
    ] {
        match e.create_webhook(&ws, hook(url, &[EventType::ReceiptSigned]), None).await {
            Err(EngineError::Refused { code: "destination_not_allowed", message, receipt: None, .. }) => {
                assert!(message.starts_with("destination_not_allowed"), "{url}: {message}")
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    assert!(e.webhooks(&ws).unwrap().data.is_empty());
    // Names and public literals pass registration (names are checked at each delivery).
    for url in ["https://example.com/x", "http://localhost:9/x", "http://8.8.8.8/x"] {
        e.create_webhook(&ws, hook(url, &[EventType::ReceiptSigned]), None).await.unwrap();
    }
    e.shutdown().await;
    let e = Engine::start(store.clone(), client(&root), private_ok()).await.unwrap();
    e.create_webhook(&ws, hook("http://127.0.0.1:9/x", &[EventType::ReceiptSigned]), None).await.unwrap();
    e.shutdown().await;
    signer.stop();
}

/// Files `n` pending deliveries of one event to `webhook` straight into the store (as a commit
/// would), so a deletion has more than one page of outbox to cancel.
fn file_pending(store: &Arc<allowly_store_rocks::RocksStore>, ws: &str, webhook: &str, n: usize) -> Vec<String> {
    let now = now_ms();
    let mut ids = Vec::new();
    let mut ops = Vec::new();
    for i in 0..n {
        let d = DeliveryDoc::pending(webhook, &format!("evt_bulk{i}"), EventType::AuthorizationRevoked, "{}", now, "");
        let (id, o) = schedule_new(ws, d, now).unwrap();
        ids.push(id);
        ops.extend(o);
    }
    store.write(allowly_store::WriteBatch::from(ops), allowly_store::Durability::Sync).unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_endpoint_cancels_its_unfinished_deliveries_and_keeps_their_history() {
    let (root, signer, store, e, ws) = setup(private_ok()).await;
    let gone = add_hook(&e, &ws, "http://127.0.0.1:9/a", &ACTOR_EVENTS).await;
    let kept = add_hook(&e, &ws, "http://127.0.0.1:9/b", &ACTOR_EVENTS).await;
    revocation(&e, &ws).await;
    // More than one cancellation page (256 outbox entries) for the endpoint to delete.
    let bulk = file_pending(&store, &ws, &gone, 600);
    let first = all(&e, &ws, &gone);
    assert_eq!(first.len(), 601);

    // Another workspace cannot delete it.
    let other = workspace(&e).await;
    assert!(matches!(e.delete_webhook(&other, &gone).await, Err(EngineError::NotFound { .. })));
    e.delete_webhook(&ws, &gone).await.unwrap();
    assert!(matches!(e.delete_webhook(&ws, &gone).await, Err(EngineError::NotFound { .. })), "deleting twice");
    assert!(matches!(e.webhook(&ws, &gone), Err(EngineError::NotFound { .. })));
    assert!(matches!(e.deliveries(&ws, &gone, None, 10), Err(EngineError::NotFound { .. })));
    assert_eq!(e.webhooks(&ws).unwrap().data.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), [kept.as_str()]);

    // Every unfinished delivery is cancelled, still readable by id; its outbox entry is gone.
    for id in bulk.iter().chain(std::iter::once(&first.last().unwrap().id)) {
        let d = e.delivery(&ws, id).unwrap();
        assert_eq!((d.status, d.attempts), (DeliveryStatus::Cancelled, 0), "{d:?}");
        assert!(d.cancelled_at.is_some() && d.next_attempt_at.is_none(), "{d:?}");
    }
    let entries = outbox(&*store);
    assert_eq!(entries.len(), 1, "only the kept endpoint's delivery is scheduled: {entries:?}");
    assert!(entries[0].2["delivery_id"].as_str().unwrap().contains(&kept));

    // No new events for it; the other endpoint still gets them.
    revocation(&e, &ws).await;
    assert_eq!(all(&e, &ws, &kept).len(), 2);
    assert_eq!(outbox(&*store).len(), 2);

    // A delivery the deletion could not see (e.g. rescheduled by an attempt in flight) is
    // cancelled by the worker when it comes due, without an attempt.
    let straggler = file_pending(&store, &ws, &gone, 1).remove(0);
    let worker = start_worker(&e, &store, fast_worker());
    eventually("the straggler to be cancelled", || async {
        e.delivery(&ws, &straggler).unwrap().status == DeliveryStatus::Cancelled
    })
    .await;
    assert_eq!(e.delivery(&ws, &straggler).unwrap().attempts, 0);
    worker.stop().await;

    // After a restart it is still gone.
    e.shutdown().await;
    let e = Engine::start(store.clone(), client(&root), private_ok()).await.unwrap();
    assert!(matches!(e.webhook(&ws, &gone), Err(EngineError::NotFound { .. })));
    assert_eq!(e.webhooks(&ws).unwrap().data.len(), 1);
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalations_are_routed_to_the_endpoints_whose_scopes_match() {
    let (_root, signer, _store, e, ws) = setup(private_ok()).await;
    let scoped = |url: &str, events: &[EventType], scopes: &[&str]| NewWebhook {
        url: url.into(),
        events: events.to_vec(),
        scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
    };
    // Patterns are validated like scope rules.
    for bad in [&[][..], &["Pay.Wire"], &["pay..wire"], &["pay.*", "pay.*"], &["pay*"]] {
        let r = e.create_webhook(&ws, scoped("http://127.0.0.1:9/x", &ACTOR_EVENTS, bad), None).await;
        assert!(matches!(r, Err(EngineError::Invalid { field: "scopes", .. })), "{bad:?}: {r:?}");
    }
    let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let too_many = NewWebhook { scopes: Some(many), ..hook("http://127.0.0.1:9/x", &ACTOR_EVENTS) };
    assert!(matches!(e.create_webhook(&ws, too_many, None).await, Err(EngineError::Invalid { field: "scopes", .. })));

    let wire = e.create_webhook(&ws, scoped("http://127.0.0.1:9/w", &ACTOR_EVENTS, &["pay.wire"]), None).await.unwrap();
    assert_eq!(wire.webhook.scopes, Some(vec!["pay.wire".to_owned()]));
    let wire = wire.webhook.id;
    let card = e
        .create_webhook(&ws, scoped("http://127.0.0.1:9/c", &ACTOR_EVENTS, &["pay.card.*"]), None)
        .await
        .unwrap()
        .webhook
        .id;
    let every = add_hook(&e, &ws, "http://127.0.0.1:9/e", &ACTOR_EVENTS).await;
    let hr =
        e.create_webhook(&ws, scoped("http://127.0.0.1:9/h", &ACTOR_EVENTS, &["hr.*"]), None).await.unwrap().webhook.id;

    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    let esc_wire = e.check(&ws, ask(&auth, "pay.wire", Some("doc:1")), None).await.unwrap().escalation.unwrap().id;
    let esc_card =
        e.check(&ws, ask(&auth, "pay.card.charge", Some("doc:2")), None).await.unwrap().escalation.unwrap().id;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let view = e.escalation(&ws, &esc_wire).await.unwrap();
    assert_eq!(sorted(view.routed_to), sorted(vec![wire.clone(), every.clone()]));
    let view = e.escalation(&ws, &esc_card).await.unwrap();
    assert_eq!(sorted(view.routed_to), sorted(vec![card.clone(), every.clone()]));
    let answer = answer_by("boss", AnswerOutcome::Approved, None);
    e.resolve_escalation(&ws, &esc_wire, answer, None).await.unwrap();
    // Revocations are not routed by scope: every subscriber gets them.
    e.revoke_authorization(&ws, &auth, None).await.unwrap();

    let events_of = |id: &str| -> Vec<(EventType, Option<String>)> {
        all(&e, &ws, id)
            .into_iter()
            .rev()
            .map(|d| (d.event_type, d.payload["data"]["escalation_id"].as_str().map(str::to_owned)))
            .collect()
    };
    let (req, res, rev) =
        (EventType::EscalationRequested, EventType::EscalationResolved, EventType::AuthorizationRevoked);
    assert_eq!(events_of(&wire), [(req, Some(esc_wire.clone())), (res, Some(esc_wire.clone())), (rev, None)]);
    assert_eq!(events_of(&card), [(req, Some(esc_card.clone())), (rev, None)]);
    assert_eq!(
        events_of(&every),
        [(req, Some(esc_wire.clone())), (req, Some(esc_card.clone())), (res, Some(esc_wire.clone())), (rev, None)]
    );
    assert_eq!(events_of(&hr), [(rev, None)]);
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_for_the_grace_period() {
    let (_root, signer, store, e, ws) = setup(private_ok()).await;
    let created = e.create_webhook(&ws, hook("http://127.0.0.1:9/r", &ACTOR_EVENTS), None).await.unwrap();
    let id = created.webhook.id.clone();
    assert_eq!(created.webhook.previous_secret_expires_at, None);
    let stored =
        || -> WebhookDoc { serde_json::from_value(store.doc(DocKind::Webhook, &ws, &id).unwrap().unwrap()).unwrap() };

    let before = now_ms();
    let rotated = e.rotate_webhook_secret(&ws, &id, RotateSecret::default(), Some("rot-1")).await.unwrap();
    assert!(rotated.secret.starts_with("whsec_") && rotated.secret != created.secret);
    let until = rotated.webhook.previous_secret_expires_at.unwrap().unix_ms();
    assert!((before + 24 * 3_600_000..=now_ms() + 24 * 3_600_000).contains(&until), "{until}");
    // A repeat gets the same secret; the key with another request is refused.
    let again = e.rotate_webhook_secret(&ws, &id, RotateSecret::default(), Some("rot-1")).await.unwrap();
    assert_eq!(again.secret, rotated.secret);
    let other = RotateSecret { grace_period_ms: Some(5) };
    assert!(matches!(
        e.rotate_webhook_secret(&ws, &id, other, Some("rot-1")).await,
        Err(EngineError::IdempotencyMismatch)
    ));
    let doc = stored();
    let text = |s: &[allowly_webhooks::Secret]| s.iter().map(|s| s.to_text()).collect::<Vec<_>>();
    assert_eq!(text(&doc.signing_secrets(now_ms()).unwrap()), [rotated.secret.clone(), created.secret.clone()]);
    assert_eq!(text(&doc.signing_secrets(until).unwrap()), [rotated.secret.as_str()], "only the new one after");

    // A shorter grace period; 0 retires the old secret at once; more than 24 h is refused.
    let too_long = RotateSecret { grace_period_ms: Some(24 * 3_600_000 + 1) };
    assert!(matches!(
        e.rotate_webhook_secret(&ws, &id, too_long, None).await,
        Err(EngineError::Invalid { field: "grace_period_ms", .. })
    ));
    let now = e.rotate_webhook_secret(&ws, &id, RotateSecret { grace_period_ms: Some(0) }, None).await.unwrap();
    assert_eq!(now.webhook.previous_secret_expires_at, None);
    assert_eq!(text(&stored().signing_secrets(now_ms()).unwrap()), [now.secret.as_str()]);
    let other_ws = workspace(&e).await;
    assert!(matches!(
        e.rotate_webhook_secret(&other_ws, &id, RotateSecret::default(), None).await,
        Err(EngineError::NotFound { .. })
    ));
    // The view never shows a secret.
    let v = serde_json::to_value(e.webhook(&ws, &id).unwrap()).unwrap();
    assert!(v.get("secret").is_none() && !v.to_string().contains("whsec_"), "{v}");
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_delivery_is_sent_again_as_a_new_delivery_of_the_same_event() {
    let (_root, signer, store, e, ws) = setup(private_ok()).await;
    let dead = add_hook(&e, &ws, "http://127.0.0.1:9/dead", &ACTOR_EVENTS).await;
    revocation(&e, &ws).await;
    let pending = all(&e, &ws, &dead).remove(0);
    assert_eq!(refused_code(e.retry_delivery(&ws, &pending.id, None).await), "delivery_in_progress");

    let worker = start_worker(&e, &store, fast_worker());
    eventually("the delivery to give up", || async {
        e.delivery(&ws, &pending.id).unwrap().status == DeliveryStatus::Failed
    })
    .await;
    worker.stop().await;
    let failed = e.delivery(&ws, &pending.id).unwrap();

    let retried = e.retry_delivery(&ws, &failed.id, Some("retry-1")).await.unwrap();
    assert_ne!(retried.id, failed.id);
    assert_eq!(
        (&retried.event_id, retried.event_type, &retried.payload, retried.status, retried.attempts),
        (&failed.event_id, failed.event_type, &failed.payload, DeliveryStatus::Pending, 0)
    );
    assert_eq!(retried.retry_of.as_deref(), Some(failed.id.as_str()));
    assert_eq!(e.retry_delivery(&ws, &failed.id, Some("retry-1")).await.unwrap().id, retried.id, "a repeat");
    // It is listed with the endpoint's deliveries (newest first) and scheduled.
    let listed = all(&e, &ws, &dead);
    assert_eq!(listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [retried.id.as_str(), failed.id.as_str()]);
    let scheduled: Vec<_> =
        outbox(&*store).iter().map(|(_, _, v)| v["delivery_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(scheduled, [retried.id.as_str()]);
    // The original stays as it was.
    assert_eq!(e.delivery(&ws, &failed.id).unwrap(), failed);

    assert_eq!(refused_code(e.retry_delivery(&ws, &retried.id, None).await), "delivery_in_progress");
    e.disable_webhook(&ws, &dead, None).await.unwrap();
    assert_eq!(refused_code(e.retry_delivery(&ws, &failed.id, None).await), "webhook_disabled");
    e.enable_webhook(&ws, &dead, None).await.unwrap();
    e.delete_webhook(&ws, &dead).await.unwrap();
    assert_eq!(e.delivery(&ws, &retried.id).unwrap().status, DeliveryStatus::Cancelled);
    assert_eq!(refused_code(e.retry_delivery(&ws, &retried.id, None).await), "webhook_not_found");
    let other = workspace(&e).await;
    assert!(matches!(e.retry_delivery(&other, &failed.id, None).await, Err(EngineError::NotFound { .. })));
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_sweep_deletes_only_old_finished_deliveries() {
    let (_root, signer, store, e, ws) = setup(private_ok()).await;
    let a = add_hook(&e, &ws, "http://127.0.0.1:9/a", &ACTOR_EVENTS).await;
    let b = add_hook(&e, &ws, "http://127.0.0.1:9/b", &ACTOR_EVENTS).await;
    revocation(&e, &ws).await;
    // a's delivery is finished (cancelled by the deletion), b's is still pending.
    let finished = all(&e, &ws, &a).remove(0).id;
    e.delete_webhook(&ws, &a).await.unwrap();
    let pending = all(&e, &ws, &b).remove(0).id;
    let cancelled_at = e.delivery(&ws, &finished).unwrap().cancelled_at.unwrap().unix_ms();

    let day = Duration::from_secs(24 * 3600);
    let m = allowly_webhooks::Metrics::new();
    let sweep = |now| allowly_webhooks::worker::sweep_finished(&*store, day, now, &m).unwrap();
    assert_eq!(sweep(cancelled_at + 86_400_000 - 1), 0, "younger than the retention: kept");
    assert!(e.delivery(&ws, &finished).is_ok());
    assert_eq!(sweep(cancelled_at + 86_400_000), 1);
    assert!(matches!(e.delivery(&ws, &finished), Err(EngineError::NotFound { .. })));
    // Pending deliveries are never swept, however old.
    assert_eq!(sweep(u64::MAX), 0);
    assert_eq!(e.delivery(&ws, &pending).unwrap().status, DeliveryStatus::Pending);
    assert!(m.text().contains("allowly_webhook_deliveries_swept_total 1"), "{}", m.text());

    // The worker sweeps on its own timer: the pending delivery gives up, then is swept.
    let cfg = WebhookConfig {
        retention: Duration::from_millis(1),
        retention_sweep_interval: Duration::from_millis(20),
        ..fast_worker()
    };
    let worker = start_worker(&e, &store, cfg);
    eventually("the given-up delivery to be swept", || async {
        matches!(e.delivery(&ws, &pending), Err(EngineError::NotFound { .. }))
    })
    .await;
    worker.stop().await;
    e.shutdown().await;
    signer.stop();
}

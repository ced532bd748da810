//! Webhook events in the engine, against the real store and signer code: an event is enqueued
//! for exactly the subscribed, enabled endpoints, in the write of the receipt (or signature) it
//! reports; endpoints survive a restart; and the delivery worker's terminal states (gave up,
//! endpoint disabled) show in the API. Delivery over HTTP is tested black-box in
//! `allowly-server/tests/webhooks.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use allowly_engine::model::*;
use allowly_engine::{Engine, EngineConfig, EngineError};
use allowly_store::{DocKind, Store};
use allowly_webhooks::model::signed_event_id;
use allowly_webhooks::{WebhookConfig, Worker};
use tempfile::TempDir;

mod support;
use support::*;

fn hook(url: &str, events: &[EventType]) -> NewWebhook {
    NewWebhook { url: url.into(), events: events.to_vec() }
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
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let cfg = EngineConfig { escalation_ttl: Duration::from_millis(300), ..config() };
    let e = Engine::start(store.clone(), client(&root), cfg).await.unwrap();
    let ws = workspace(&e).await;
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
    let answer = EscalationAnswer { outcome: EscalationOutcome::Denied, approver: "boss".into(), note: None };
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
            (EventType::EscalationResolved, "denied"),
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
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();
    let ws = workspace(&e).await;
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
    let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    e.revoke_authorization(&ws, &auth, None).await.unwrap();
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
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();
    let ws = workspace(&e).await;
    // Nothing listens on port 9 of the loopback (discard is not run): connection refused.
    let dead = e.create_webhook(&ws, hook("http://127.0.0.1:9/dead", &ACTOR_EVENTS), None).await.unwrap().webhook.id;
    let off = e.create_webhook(&ws, hook("http://127.0.0.1:9/off", &ACTOR_EVENTS), None).await.unwrap().webhook.id;
    let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
    e.revoke_authorization(&ws, &auth, None).await.unwrap();
    // Disabled after its delivery was enqueued, before any attempt.
    e.disable_webhook(&ws, &off, None).await.unwrap();

    let cfg = WebhookConfig {
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        give_up_after: Duration::from_millis(400),
        attempt_timeout: Duration::from_millis(500),
        ..WebhookConfig::default()
    };
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

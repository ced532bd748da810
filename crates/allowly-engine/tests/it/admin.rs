//! `Idempotency-Key` on the administrative writes (workspaces, API keys, webhook endpoints) and
//! the sweep of expired key records, against real RocksDB and the real signer code.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use allowly_engine::model::{NewApiKey, NewWorkspace};
use allowly_engine::{Engine, EngineConfig, EngineError};
use allowly_store::{DocKind, Role, Store};
use allowly_store_rocks::RocksStore;
use allowly_webhooks::model::EventType;
use allowly_webhooks::NewWebhook;
use tempfile::TempDir;

fn new_ws(name: &str) -> NewWorkspace {
    NewWorkspace { name: name.into(), scope_rules: rules() }
}

/// Built from JSON, as the API receives it (optional fields stay unset).
fn new_hook(url: &str, event: EventType) -> NewWebhook {
    serde_json::from_value(serde_json::json!({ "url": url, "events": [event] })).unwrap()
}

fn idem_records(store: &RocksStore, scope: &str) -> usize {
    store.docs(DocKind::Idempotency, scope, None, 10_000).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_admin_writes_answer_repeats_with_the_first_answer() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();

    // Workspaces: 8 concurrent keyed creations → one workspace, one answer.
    let creations = (0..8).map(|_| {
        let e = e.clone();
        tokio::spawn(async move { e.create_workspace(new_ws("acme"), Some("ws-1")).await.unwrap() })
    });
    let answers: Vec<_> = futures_join(creations).await;
    assert!(answers.iter().all(|a| a == &answers[0]), "concurrent duplicates got different workspaces");
    let ws = answers[0].id.clone();
    assert!(matches!(e.create_workspace(new_ws("other"), Some("ws-1")).await, Err(EngineError::IdempotencyMismatch)));
    assert_ne!(e.create_workspace(new_ws("acme"), Some("ws-2")).await.unwrap().id, ws);
    assert_ne!(e.create_workspace(new_ws("acme"), None).await.unwrap().id, ws);

    // API keys: a repeat by the same caller gets the same key *and secret*, and there is one key.
    let admin = e.create_admin_key().await.unwrap();
    let caller = e.authenticate(&admin.secret).unwrap().unwrap();
    let req = || NewApiKey { roles: vec![Role::Check] };
    let first = e.create_api_key(&ws, req(), Some("key-1"), &caller, &admin.secret).await.unwrap();
    let again = e.create_api_key(&ws, req(), Some("key-1"), &caller, &admin.secret).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(e.authenticate(&again.secret).unwrap().unwrap().key_id, first.key.id);
    // The secret is not in the database in clear (only sealed under the caller's secret).
    let raw = format!("{:?}", store.docs(DocKind::Idempotency, &ws, None, 100).unwrap());
    assert!(!raw.contains(&first.secret[4..]), "a new key's secret is stored in clear");
    let other_body = NewApiKey { roles: vec![Role::Read] };
    assert!(matches!(
        e.create_api_key(&ws, other_body, Some("key-1"), &caller, &admin.secret).await,
        Err(EngineError::IdempotencyMismatch)
    ));
    // Another caller's use of the same key is another request.
    let admin2 = e.create_admin_key().await.unwrap();
    let caller2 = e.authenticate(&admin2.secret).unwrap().unwrap();
    assert!(matches!(
        e.create_api_key(&ws, req(), Some("key-1"), &caller2, &admin2.secret).await,
        Err(EngineError::IdempotencyMismatch)
    ));
    // Revocation: the repeat gets the first answer, not "already revoked".
    let revoked = e.revoke_api_key(&ws, &first.key.id, Some("rev-1")).await.unwrap();
    assert_eq!(e.revoke_api_key(&ws, &first.key.id, Some("rev-1")).await.unwrap(), revoked);
    assert!(matches!(e.revoke_api_key(&ws, &first.key.id, None).await, Err(EngineError::Conflict(_))));
    assert_eq!(e.authenticate(&first.secret).unwrap(), None);
    // Each request's reads ended before its deadline: an actor that read the key again and
    // again (its fetch asking for what it had read already) answered only at the deadline.
    assert_eq!(e.metrics().read_timeouts.get(), 0, "a request's store reads ran into its deadline");

    // Webhooks: one endpoint per key (the secret is the same on a repeat); disable/enable too.
    let hook = || new_hook("https://example.com/hook", EventType::EscalationRequested);
    let h1 = e.create_webhook(&ws, hook(), Some("hook-1")).await.unwrap();
    assert_eq!(e.create_webhook(&ws, hook(), Some("hook-1")).await.unwrap(), h1);
    assert_eq!(e.webhooks(&ws).unwrap().data.len(), 1);
    let off = e.disable_webhook(&ws, &h1.webhook.id, Some("off-1")).await.unwrap();
    e.enable_webhook(&ws, &h1.webhook.id, None).await.unwrap();
    assert_eq!(e.disable_webhook(&ws, &h1.webhook.id, Some("off-1")).await.unwrap(), off);
    assert!(!e.webhook(&ws, &h1.webhook.id).unwrap().disabled, "a repeat changed the endpoint again");
    assert!(matches!(
        e.enable_webhook(&ws, &h1.webhook.id, Some("off-1")).await,
        Err(EngineError::IdempotencyMismatch)
    ));

    // Concurrent keyed API-key creations: one key.
    let racers = (0..8).map(|_| {
        let (e, ws, caller, secret) = (e.clone(), ws.clone(), caller.clone(), admin.secret.clone());
        tokio::spawn(async move {
            e.create_api_key(&ws, NewApiKey { roles: vec![Role::Read] }, Some("key-2"), &caller, &secret).await.unwrap()
        })
    });
    let keys: Vec<_> = futures_join(racers).await;
    assert!(keys.iter().all(|k| k == &keys[0]), "concurrent duplicates made different keys");

    // After a restart the records still answer.
    e.shutdown().await;
    drop(e);
    let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();
    assert_eq!(e.create_api_key(&ws, req(), Some("key-1"), &caller, &admin.secret).await.unwrap(), first);
    assert_eq!(e.create_workspace(new_ws("acme"), Some("ws-1")).await.unwrap().id, ws);
    e.shutdown().await;
    signer.stop();
}

/// Instance admin keys: with two live ones (an instance from before a start without
/// `admin-token` stopped minting one, which the HTTP API cannot make), one is revoked by id and
/// a keyed repeat gets the first answer; `live_admin_keys` counts what `allowly serve` looks at.
/// A keyed rotation — 8 concurrent duplicates while the caller is live — makes one key, and its
/// record keeps the new secret sealed, not in clear; the revoked caller's repeat gets it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_admin_keys_revoked_by_id_and_rotated_with_a_key() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let e = Engine::start(store.clone(), client(&root), config()).await.unwrap();
    assert_eq!(e.live_admin_keys().await.unwrap(), 0);
    let (a, b) = (e.create_admin_key().await.unwrap(), e.create_admin_key().await.unwrap());
    assert_eq!(e.live_admin_keys().await.unwrap(), 2);
    let by_b = e.authenticate(&b.secret).unwrap().unwrap();
    let revoked = e.revoke_admin_key(&by_b, &a.key.id, Some("rev-a")).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(e.revoke_admin_key(&by_b, &a.key.id, Some("rev-a")).await.unwrap(), revoked);
    assert!(matches!(e.revoke_admin_key(&by_b, &a.key.id, None).await, Err(EngineError::Conflict(_))));
    assert!(matches!(e.revoke_admin_key(&by_b, &b.key.id, None).await, Err(EngineError::Conflict(_))), "the last");
    assert_eq!((e.authenticate(&a.secret).unwrap(), e.live_admin_keys().await.unwrap()), (None, 1));

    let racers = (0..8).map(|_| {
        let (e, by_b, secret) = (e.clone(), by_b.clone(), b.secret.clone());
        tokio::spawn(async move { e.rotate_admin_key(&by_b, &secret, Some("rot-b")).await.unwrap() })
    });
    let answers: Vec<_> = futures_join(racers).await;
    assert!(answers.iter().all(|r| r == &answers[0]), "concurrent duplicates made different keys");
    let c = &answers[0];
    assert_eq!(e.live_admin_keys().await.unwrap(), 1);
    assert_eq!(e.authenticate(&c.secret).unwrap().unwrap().key_id, c.key.id);
    let raw = format!("{:?}", store.docs(DocKind::Idempotency, "_instance", None, 100).unwrap());
    assert!(!raw.contains(&c.secret[4..]), "the new secret is stored in clear");
    assert_eq!(e.replay_admin_key_rotation(&b.secret, "rot-b").await.unwrap().as_ref(), Some(c));
    // Only that secret with that key: not another key, not another secret, not a malformed one.
    assert_eq!(e.replay_admin_key_rotation(&b.secret, "rot-x").await.unwrap(), None);
    assert_eq!(e.replay_admin_key_rotation(&a.secret, "rot-b").await.unwrap(), None);
    assert_eq!(e.replay_admin_key_rotation(&b.secret, "bad key").await.unwrap(), None);
    assert_eq!(e.replay_admin_key_rotation("alw_nope", "rot-b").await.unwrap(), None);
    e.shutdown().await;
    signer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_key_records_are_swept_and_the_key_is_free_again() {
    let root = TempDir::new().unwrap();
    let signer = start_signer(&root);
    let store = open_store(&root);
    let ttl = Duration::from_millis(2000);
    let t0 = std::time::Instant::now();
    let cfg = EngineConfig { idempotency_ttl: ttl, ..config() };
    let e = Engine::start(store.clone(), client(&root), cfg).await.unwrap();
    let ws = e.create_workspace(new_ws("acme"), Some("ws-1")).await.unwrap().id;
    let az = e.create_authorization(&ws, grant(None), Some("grant-1")).await.unwrap();
    e.create_webhook(&ws, new_hook("https://example.com/h", EventType::ReceiptSigned), Some("hook-1")).await.unwrap();
    assert_eq!((idem_records(&store, "_instance"), idem_records(&store, &ws)), (1, 2));
    // Nothing is swept while the records are live (unless the machine took the whole lifetime
    // to get here, when there is nothing left to observe).
    let swept_early = e.sweep_idempotency().await.unwrap();
    if t0.elapsed() < ttl {
        assert_eq!(swept_early, 0);
    }
    let swept = Arc::new(std::sync::atomic::AtomicUsize::new(swept_early));
    eventually("the records expire and are swept", || {
        let (e, swept) = (e.clone(), swept.clone());
        async move {
            swept.fetch_add(e.sweep_idempotency().await.unwrap(), std::sync::atomic::Ordering::SeqCst);
            swept.load(std::sync::atomic::Ordering::SeqCst) == 3
        }
    })
    .await;
    assert_eq!((idem_records(&store, "_instance"), idem_records(&store, &ws)), (0, 0));
    // The key is free again: a new grant with it is a new authorization.
    let again = e.create_authorization(&ws, grant(None), Some("grant-1")).await.unwrap();
    assert_ne!(again.authorization.id, az.authorization.id);
    assert!(e.metrics().text().contains("allowly_engine_idempotency_records_swept_total 3"));
    e.shutdown().await;
    signer.stop();
}

async fn futures_join<T: Send + 'static>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.unwrap());
    }
    out
}

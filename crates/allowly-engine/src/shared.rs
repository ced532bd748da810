//! What every part of the engine shares: the store, the signer client, configuration, metrics,
//! the signer's health, and the registries of workspace actors and signing pipelines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use allowly_receipt::types::Timestamp;
use allowly_signer_proto::client::SignerClient;
use allowly_store::Store;
use dashmap::DashMap;

use crate::actor::WsHandle;
use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::metrics::Metrics;
use crate::pipeline::Pipelines;

/// Per-workspace locks. `spawn` serialises starting an actor (held briefly); `life` is held by a
/// running actor for its whole life, so a new actor for the workspace can only start once the
/// previous one is gone — two sequencers for one log would fork it.
#[derive(Debug, Default)]
pub(crate) struct WsLocks {
    pub spawn: tokio::sync::Mutex<()>,
    pub life: Arc<tokio::sync::Mutex<()>>,
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    /// Makes actor groups durable, many workspaces per synced write.
    pub committer: crate::commit::Committer,
    pub signer: SignerClient,
    pub cfg: EngineConfig,
    pub metrics: Metrics,
    pub health: Health,
    /// Faults below the process that fail the engine closed (see `health.rs`).
    pub faults: Arc<crate::health::Faults>,
    /// Workspaces whose log disagrees with the signer's (see `pipeline`).
    pub diverged: Diverged,
    pub actors: DashMap<String, WsHandle>,
    pub locks: DashMap<String, Arc<WsLocks>>,
    pub pipelines: Pipelines,
    pub shutting_down: AtomicBool,
    /// Each workspace's webhook endpoints as last committed.
    pub endpoints: crate::webhooks::Endpoints,
    /// Notified after every commit that enqueued webhook deliveries (the worker waits on it).
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// Serialises keyed workspace creations (the only keyed request outside an actor).
    pub instance_idem: tokio::sync::Mutex<()>,
    /// Valid API keys seen recently, by secret hash (see `Engine::authenticate`).
    pub api_keys: ApiKeyCache,
    /// Authorizations cached by all workspace actors together (bounded by
    /// `EngineConfig::max_cached_authorizations`).
    pub cached_authorizations: std::sync::atomic::AtomicUsize,
}

/// API keys that authenticated recently, so a request does not read the store (on an async
/// worker) to learn who is calling. Only valid keys are cached; a revocation removes its key
/// before the revoke is answered, and a lookup that raced with a revocation does not keep what
/// it read (`revocations` changed meanwhile), so a revoked key never authenticates again once
/// its revocation was acknowledged.
#[derive(Debug, Default)]
pub(crate) struct ApiKeyCache {
    keys: DashMap<[u8; 32], crate::model::Principal>,
    revocations: std::sync::atomic::AtomicU64,
}

/// Most cached keys; past this the cache starts over (keys are read again on use).
const MAX_CACHED_KEYS: usize = 100_000;

impl ApiKeyCache {
    pub fn get(&self, hash: &[u8; 32]) -> Option<crate::model::Principal> {
        self.keys.get(hash).map(|p| p.clone())
    }

    /// The revocation count to pass to [`ApiKeyCache::insert`] (read it before the store).
    pub fn generation(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Caches `p`, read from the store after `generation` was taken, unless a revocation
    /// happened since (it may be this key's).
    pub fn insert(&self, hash: [u8; 32], p: crate::model::Principal, generation: u64) {
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(hash, p);
        if self.revocations.load(Ordering::Acquire) != generation {
            self.keys.remove(&hash);
        }
    }

    /// Forgets `hash` once its revocation is durable (before the revocation is answered).
    pub fn revoked(&self, hash: &[u8; 32]) {
        self.revocations.fetch_add(1, Ordering::AcqRel);
        self.keys.remove(hash);
    }
}

/// Whether the signer answers. Updated by the probe and by every signing exchange.
#[derive(Debug, Default)]
pub(crate) struct Health {
    up: AtomicBool,
    detail: Mutex<Option<String>>,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn set_up(&self, m: &Metrics) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("signer is answering");
            if let Ok(mut d) = self.detail.lock() {
                *d = None;
            }
        }
        m.signer_up.set(1);
    }

    pub fn set_down(&self, m: &Metrics, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(reason = why, "signer unavailable: checks fail closed");
        }
        if let Ok(mut d) = self.detail.lock() {
            *d = Some(why.to_owned());
        }
        m.signer_up.set(0);
    }

    pub fn detail(&self) -> Option<String> {
        self.detail.lock().ok().and_then(|d| d.clone())
    }

    /// Fails closed while the signer is down (counted): nothing may be decided or written.
    pub fn require_up(&self, m: &Metrics) -> Result<()> {
        if self.is_up() {
            return Ok(());
        }
        m.failed_closed.inc();
        Err(EngineError::SignerUnavailable(self.detail().unwrap_or_else(|| "signer down".into())))
    }
}

/// Workspaces whose stored log and the signer's log disagree, with why and since when. Kept in
/// memory: after a restart the first signing round (which runs at start for every workspace
/// with unsigned receipts, and a diverged one always has some) finds the divergence again.
#[derive(Debug, Default)]
pub(crate) struct Diverged {
    map: DashMap<String, (String, u64)>,
}

impl Diverged {
    /// Marks `ws` diverged (logged, counted, the gauge set).
    pub fn mark(&self, ws: &str, why: &str, m: &Metrics) {
        if self.map.insert(ws.to_owned(), (why.to_owned(), now_ms())).is_none() {
            m.log_divergence.inc();
            tracing::error!(workspace = %ws, reason = %why, "signer log diverges from the stored log: the workspace refuses new receipts (503 workspace_log_diverged) until resynced");
        }
        m.workspaces_diverged.set(i64::try_from(self.map.len()).unwrap_or(i64::MAX));
    }

    /// Clears `ws` (after a successful resync); whether it was marked.
    pub fn clear(&self, ws: &str, m: &Metrics) -> bool {
        let was = self.map.remove(ws).is_some();
        m.workspaces_diverged.set(i64::try_from(self.map.len()).unwrap_or(i64::MAX));
        was
    }

    pub fn contains(&self, ws: &str) -> bool {
        self.map.contains_key(ws)
    }

    /// Fails closed for a diverged workspace (counted).
    pub fn require_not(&self, ws: &str, m: &Metrics) -> Result<()> {
        if self.contains(ws) {
            m.diverged_refusals.inc();
            return Err(EngineError::WorkspaceLogDiverged);
        }
        Ok(())
    }

    /// `(workspace, reason, since ms)` of every diverged workspace, by workspace id.
    pub fn list(&self) -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = self.map.iter().map(|e| (e.key().clone(), e.value().0.clone(), e.value().1)).collect();
        v.sort();
        v
    }
}

impl Shared {
    /// Fails closed (counted) while the signer is down or a fault is active: nothing may be
    /// decided or written. The healthy path is two atomic loads.
    pub fn require_healthy(&self) -> Result<()> {
        self.health.require_up(&self.metrics)?;
        match self.faults.first() {
            None => Ok(()),
            Some((fault, detail)) => {
                self.metrics.fault_refusals.with_label_values(&[fault.code()]).inc();
                Err(EngineError::Unavailable { fault, detail })
            }
        }
    }

    /// Whether [`Shared::require_healthy`] would pass (for housekeeping: not counted).
    pub fn is_healthy(&self) -> bool {
        self.health.is_up() && self.faults.first().is_none()
    }

    /// One bounded ping; the health follows its outcome (the probe loop and start-up).
    pub async fn probe_signer(&self) {
        match tokio::time::timeout(self.cfg.signer_timeout, self.signer.ping()).await {
            Ok(Ok(())) => self.health.set_up(&self.metrics),
            Ok(Err(e)) => self.health.set_down(&self.metrics, &e.to_string()),
            Err(_) => self.health.set_down(&self.metrics, "signer did not answer a ping in time"),
        }
    }
}

/// Runs a store call (or other blocking work) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Internal(format!("blocking task: {e}")))?
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A stored millisecond time as a receipt timestamp.
pub(crate) fn ts(ms: u64) -> Result<Timestamp> {
    Timestamp::from_unix_ms(ms).map_err(|e| EngineError::Internal(format!("time {ms}: {e}")))
}

/// This process's resident memory in bytes (`VmRSS` of `/proc/self/status`), if readable.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

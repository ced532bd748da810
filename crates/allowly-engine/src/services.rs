//! What the engine's services share: the store, the signer client, configuration, metrics,
//! the health state, caches, and the fail-closed gate every receipt-producing call passes. It
//! holds only things defined below it (state, caches, clients), never a registry of actors or
//! pipelines: those take a `Core`, so the dependency graph stays a DAG.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use allowly_signer_proto::client::SignerClient;
use allowly_store::Store;
use dashmap::DashMap;

use crate::config::EngineConfig;
use crate::endpoints::Endpoints;
use crate::error::{EngineError, Result};
use crate::health::{Diverged, Faults, Health};
use crate::metrics::Metrics;

pub(crate) struct Services {
    pub store: Arc<dyn Store>,
    /// Makes actor groups and signing rounds durable, many workspaces per synced write.
    pub committer: crate::commit::Committer,
    pub signer: SignerClient,
    /// Sends the signing rounds, many workspaces per signer request.
    pub sign_batcher: crate::sign_batcher::SignBatcher,
    pub cfg: EngineConfig,
    pub metrics: Metrics,
    /// Whether the signer answers.
    pub health: Health,
    /// Faults below the process that fail the engine closed (see `health.rs`).
    pub faults: Arc<Faults>,
    /// Workspaces whose log disagrees with the signer's (see `pipeline`).
    pub diverged: Diverged,
    pub shutting_down: AtomicBool,
    /// Each workspace's webhook endpoints as last committed.
    pub endpoints: Endpoints,
    /// Notified after every commit that enqueued webhook deliveries (the worker waits on it).
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// Valid API keys seen recently, by secret hash (see `Engine::authenticate`).
    pub api_keys: ApiKeyCache,
    /// Authorizations cached by all workspace actors together (bounded by
    /// `EngineConfig::max_cached_authorizations`).
    pub cached_authorizations: AtomicUsize,
    /// The signer's metrics as last fetched, for `/metrics`.
    pub signer_scrape: crate::health::SignerScrape,
    /// Store reads of requests running or queued off the async workers, also those whose
    /// request timed out ([`MAX_PENDING_READS`]).
    pub pending_reads: Arc<AtomicUsize>,
    /// The engine's own store reads outside requests running or queued off the async workers
    /// ([`MAX_BACKGROUND_READS`], see [`Services::read_in_background`]).
    pub background_reads: Arc<AtomicUsize>,
    /// Requests admitted and not yet through the committer (`max_pending_writes`).
    pub admissions: Arc<crate::mailbox::Admissions>,
    /// Spaces signing rounds over every workspace (`sign_rounds_per_second`).
    pub sign_pacer: crate::pace::Pacer,
    /// The witnesses stored checkpoints are submitted to, and the quorum reads apply.
    pub witnessing: Arc<crate::witnessing::Witnessing>,
    /// In a cluster: the workspace leases this node holds (`None`: one process owns the store).
    pub ownership: Option<crate::ownership::Ownership>,
}

impl Services {
    /// The fence every write of `ws` carries in a cluster (`None` outside one); `Fenced` when
    /// this node no longer holds the workspace's lease.
    pub fn fence(&self, ws: &str) -> Result<Option<allowly_store::Op>> {
        self.ownership.as_ref().map(|o| o.fence(ws)).transpose()
    }

    /// Whether this node sequences `ws`: always outside a cluster; in one, while it holds the
    /// workspace's lease.
    pub fn owns(&self, ws: &str) -> bool {
        self.ownership.as_ref().is_none_or(|o| o.epoch(ws).is_some())
    }

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

    /// Runs `f` — store reads — off the async workers, and answers by `deadline` however slow
    /// the data volume: past it `ReadTimeout` (503 `read_timeout`, nothing changed), while the
    /// read goes on until the volume answers. At most [`MAX_PENDING_READS`] such reads run or
    /// wait at once, those whose request timed out included; past that one is refused at once
    /// (each holds a thread of the blocking pool while the volume stalls).
    pub async fn read_until<T: Send + 'static>(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let timed_out = || {
            self.metrics.read_timeouts.inc();
            EngineError::ReadTimeout(format!(
                "the data volume did not answer a read within this request's {} ms (--commit-timeout-ms); nothing \
                 was changed: retry shortly",
                self.cfg.commit_timeout.as_millis()
            ))
        };
        // A request whose time is up (it waited behind others' reads) starts no read nobody
        // would wait for.
        if deadline <= tokio::time::Instant::now() {
            return Err(timed_out());
        }
        match off_workers(&self.pending_reads, MAX_PENDING_READS, deadline, f).await {
            Ok(r) => r,
            Err(NotDone::Full) => {
                self.metrics.read_timeouts.inc();
                Err(EngineError::ReadTimeout(format!(
                    "{MAX_PENDING_READS} store reads are already waiting for the data volume; nothing was changed: \
                     retry shortly"
                )))
            }
            Err(NotDone::TimedOut) => Err(timed_out()),
        }
    }

    /// The store reads of the engine's own work outside a request — a signing task loading
    /// its state or reading what it signs, a resync, a reconcile, refreshing a workspace's
    /// keys, an actor reloading its state — off the async workers: made inline, each held its
    /// worker (and every request and timer sharing it) for as long as the data volume took to
    /// answer. Bounded like a request's reads, with bounds of their own so that they never
    /// take a request's place: at most [`MAX_BACKGROUND_READS`] at once (past that refused at
    /// once), each awaited for at most [`Services::background_read_bound`]. Either way the
    /// caller gets `ReadTimeout` and tries again later, as after any store error; the read
    /// itself goes on until the volume answers.
    pub async fn read_in_background<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let bound = self.background_read_bound();
        let store = self.store.clone();
        let deadline = tokio::time::Instant::now() + bound;
        match off_workers(&self.background_reads, MAX_BACKGROUND_READS, deadline, move || f(&*store)).await {
            Ok(r) => r,
            Err(NotDone::Full) => Err(EngineError::ReadTimeout(format!(
                "{MAX_BACKGROUND_READS} background store reads are already waiting for the data volume"
            ))),
            Err(NotDone::TimedOut) => Err(EngineError::ReadTimeout(format!(
                "the data volume did not answer a background read within {} ms",
                bound.as_millis()
            ))),
        }
    }

    /// How long a background read ([`Services::read_in_background`]) is awaited: as long as
    /// an evidence export may take (`EXPORT_TIMEOUT_FACTOR` × `--commit-timeout-ms`), the
    /// longest any store read is otherwise allowed.
    pub fn background_read_bound(&self) -> std::time::Duration {
        self.cfg.commit_timeout.saturating_mul(crate::engine::EXPORT_TIMEOUT_FACTOR)
    }

    /// One bounded ping; the health follows its outcome (the probe loop and start-up). A pong
    /// after a failed signing exchange counts only if `nothing_to_sign` ([`Health::pong`]).
    ///
    /// [`Health::pong`]: crate::health::Health::pong
    pub async fn probe_signer(&self, nothing_to_sign: impl FnOnce() -> bool) {
        match tokio::time::timeout(self.cfg.signer_timeout, self.signer.ping()).await {
            Ok(Ok(())) => self.health.pong(&self.metrics, nothing_to_sign),
            Ok(Err(e)) => {
                let why = e.to_string();
                let token = matches!(EngineError::from_signer(e), EngineError::SignerTokenUnavailable(_));
                self.health.ping_failed(&self.metrics, &why, token)
            }
            Err(_) => self.health.ping_failed(&self.metrics, "signer did not answer a ping in time", false),
        }
    }
}

/// API keys that authenticated recently, so a request does not read the store (on an async
/// worker) to learn who is calling. Only valid keys are cached; a revocation removes its key
/// before the revoke is answered, and a lookup that raced with a revocation does not keep what
/// it read (`revocations` changed meanwhile), so a revoked key never authenticates again once
/// its revocation was acknowledged — on this node. In a cluster a key revoked through another
/// node is not removed here: there an entry is trusted for at most `max_age`
/// ([`CLUSTER_CACHE_MAX_AGE`]), then the store is read again.
#[derive(Debug, Default)]
pub(crate) struct ApiKeyCache {
    keys: DashMap<[u8; 32], (crate::model::Principal, std::time::Instant)>,
    revocations: std::sync::atomic::AtomicU64,
    /// `None`: entries last until revoked here (one process alone sees every revocation).
    max_age: Option<Duration>,
}

/// How long a node of a cluster trusts what it cached of settings other nodes can change — an
/// API key (the longest a key revoked through another node still authenticates here), a key's
/// rate limit (the server's) — before reading it again: one store read per key in use per node
/// per period.
pub const CLUSTER_CACHE_MAX_AGE: Duration = Duration::from_secs(1);

/// Most cached keys; past this the cache starts over (keys are read again on use).
const MAX_CACHED_KEYS: usize = 100_000;

impl ApiKeyCache {
    /// A cache whose entries are trusted for at most `max_age` (`None`: until revoked here).
    pub fn new(max_age: Option<Duration>) -> Self {
        Self { max_age, ..Self::default() }
    }

    pub fn get(&self, hash: &[u8; 32]) -> Option<crate::model::Principal> {
        let entry = self.keys.get(hash)?;
        let (p, at) = &*entry;
        match self.max_age {
            Some(max) if at.elapsed() >= max => None,
            _ => Some(p.clone()),
        }
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
        self.keys.insert(hash, (p, std::time::Instant::now()));
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

/// Most store reads of requests running or queued off the async workers at once, those whose
/// request already timed out included: on a stalled volume each holds a blocking thread until
/// the volume answers, so past this a request's read is refused at once (503 `read_timeout`)
/// instead of queueing without bound. Half of tokio's default blocking pool (512), leaving the
/// rest to the store calls that are not a request's (probes, sweeps, webhooks, exports, and
/// the background reads below).
pub const MAX_PENDING_READS: usize = 256;

/// Most background store reads ([`Services::read_in_background`]) running or queued at once,
/// those no longer awaited included: a quarter of tokio's default blocking pool, so that on a
/// stalled volume the signing tasks of many workspaces cannot take every blocking thread.
pub const MAX_BACKGROUND_READS: usize = 128;

/// Why [`off_workers`] gave no answer.
enum NotDone {
    /// `limit` reads already ran or waited.
    Full,
    /// The deadline passed first.
    TimedOut,
}

/// Runs `f` on the blocking pool while fewer than `limit` counted in `places` do, and awaits
/// it until `deadline` (the timer runs on the async worker, which is free meanwhile). The
/// place is given back when `f` ends, not when its caller stops waiting: a stalled volume's
/// reads stay counted until it answers them.
async fn off_workers<T: Send + 'static>(
    places: &Arc<AtomicUsize>,
    limit: usize,
    deadline: tokio::time::Instant,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<Result<T>, NotDone> {
    if places.fetch_add(1, Ordering::AcqRel) >= limit {
        places.fetch_sub(1, Ordering::AcqRel);
        return Err(NotDone::Full);
    }
    struct Place(Arc<AtomicUsize>);
    impl Drop for Place {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let place = Place(places.clone());
    let read = tokio::task::spawn_blocking(move || {
        let _place = place;
        f()
    });
    match tokio::time::timeout_at(deadline, read).await {
        Ok(r) => Ok(r.map_err(|e| EngineError::Internal(format!("read task: {e}"))).and_then(|r| r)),
        Err(_) => Err(NotDone::TimedOut),
    }
}

/// Runs a store call (or other blocking work) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| EngineError::Internal(format!("blocking task: {e}")))?
}

//! `allowly-signer`: the HSM-style key process of Allowly.
//!
//! It generates and holds every workspace's Ed25519 signing key (sealed at rest under a master
//! key, locked and non-dumpable in memory), keeps every workspace's Merkle log state (the
//! frontier only), and signs one C2SP checkpoint per batch of leaf hashes. It answers only the
//! operations of `allowly-signer-proto`: there is no way to export a private key or to have it
//! sign anything but a checkpoint of a workspace log that it extends itself, and it refuses any
//! append that would fork or roll a log back.
//!
//! Layout of the data directory: `keys/<ws>.json` (sealed keys), `journal` (every workspace's
//! durable log state, one append-only checksummed file, see [`journal`]), `audit.log` (one line
//! per signature), `lock` (flock held by the one signer serving the directory), optionally
//! `master.key` (dev set-ups). A `logs/` directory of per-workspace `.state` files from before
//! the journal is not read.
//!
//! # Cost per receipt
//!
//! `cargo bench -p allowly-benches --bench signer` measures [`workspace::sign_batch`] (the whole
//! CPU path of one batch: frontier append, inclusion proofs if asked, one checkpoint signature)
//! beside one raw Ed25519 signature in the same run. On the 2-core development machine
//! (2026-12-05, `--measurement-time 3`), per receipt / one raw signature:
//!
//! | batch | no proofs (protocol v2, what the service asks) | with proofs |
//! |---|---|---|
//! | 1 | 1.10× | 1.08× |
//! | 16 | 0.074× | 0.085× |
//! | 256 | 0.011× (goal ≤ 0.05×) | 0.017× |
//! | 4096 | 0.008× | 0.014× |
//!
//! Without proofs the signer extends the frontier without building any ([`workspace::extend`]).
//!
//! Durability costs one fsync (the journal, which also holds the audit lines; `audit.log` is
//! written unsynced and repaired from the journal at start) per *group* of the journal writer,
//! shared by every workspace whose records are queued at that moment (and, with the journal's
//! commit delay, by the other workspaces' next records if they come within the delay); before
//! the journal it was two per signed batch, serialized, then two per group (journal, then
//! `audit.log`). A lone
//! 16-leaf `AppendBatch` round trip waits for that one fsync (with two it took 4.9 ms, ≈ 1500×
//! a bare socket ping-pong, on that machine's disk). `cargo run --release -p allowly-signer
//! --example fsyncs -- W B L` measures fsyncs per batch from the signer's own metrics
//! (`allowly_signer_fsyncs_total`, `allowly_signer_journal_records_per_fsync`): with 1000
//! workspaces appending 16-leaf batches at once, 0.01-0.11 fsyncs per batch and ≈ 17 000
//! batches/s with two fsyncs per group, against 2 per batch and ≈ 1 700 batches/s with
//! per-workspace state files (2026-12-05, same machine, the two builds run back to back).
//!
//! # Security model (what is promised, and where it is tested)
//!
//! - Only peers whose uid is allowed (SO_PEERCRED) get an answer; others are closed and counted.
//! - Keys never leave the process and exist on disk only sealed (`keystore` unit test scans every
//!   file for the key bytes in several encodings).
//! - Memory is not readable by the same uid (non-dumpable) and not dumped (RLIMIT_CORE = 0,
//!   MADV_DONTDUMP); keys are locked in RAM. See [`hardening`] for what this cannot promise.
//! - A log never forks or rolls back (its journal record and audit line fsynced, in the journal,
//!   before the answer; a failed write is cut back out of the journal, never followed by a good record;
//!   refusals counted in `allowly_signer_fork_attempts_total` and written to the audit log).
//! - What it holds for its callers is bounded ([`Limits`]: request bytes, each workspace's
//!   queue, leaves per signature, connections), each bound answered with back pressure or a
//!   refusal a caller can tell from an outage; idle workspaces are unloaded, their keys wiped
//!   and their pages unlocked, and go on exactly when loaded again (`tests/limits`).

pub mod adopt;
pub mod audit;
pub mod check;
pub mod error;
pub mod hardening;
pub mod journal;
pub mod keystore;
pub mod metrics;
pub mod pkcs11;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod workspace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::ActorRef;

use crate::journal::{Journal, JournalOptions};
use crate::keystore::KeyStore;
use crate::metrics::Metrics;
use crate::workspace::{Queue, WsMsg};

/// A loaded workspace: its actor and what is queued for it (see [`Queue`]).
#[derive(Debug, Clone)]
pub struct WsHandle {
    pub actor: ActorRef<WsMsg>,
    pub queue: Arc<Queue>,
}

/// Locks that serialise loading, creating and unloading one workspace, sharded by workspace
/// id: a load waits for the journal (its record, then its `resumed` line), and with one global
/// lock a restart would load thousands of workspaces one journal round trip at a time. Loads of
/// workspaces in different shards proceed together and share the journal's fsyncs.
#[derive(Debug)]
pub struct LoadLocks([tokio::sync::Mutex<()>; LOAD_SHARDS]);

const LOAD_SHARDS: usize = 64;

impl Default for LoadLocks {
    fn default() -> Self {
        Self(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl LoadLocks {
    /// The lock of `ws`'s shard.
    pub async fn lock(&self, ws: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::hash::DefaultHasher::new();
        ws.hash(&mut h);
        // Reduced modulo the shard count, so the index is always in range.
        self.0[(h.finish() % LOAD_SHARDS as u64) as usize].lock().await
    }

    /// Every shard's lock, in shard order (the one order, so two callers cannot deadlock): no
    /// workspace is loaded, created or unloaded while they are held (`snapshot`).
    pub async fn lock_all(&self) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut all = Vec::with_capacity(LOAD_SHARDS);
        for m in &self.0 {
            all.push(m.lock().await);
        }
        all
    }
}

/// What the signer holds for its callers at most (the `serve` flags of the same names). Each
/// bound says what a request past it gets; see `server` and `registry` for why each is where
/// it is.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Leaves one signature covers at most (one coalesced group of one workspace: its journal
    /// record and audit line list them all). Appends past it wait in the workspace's queue for
    /// the next group; a single append larger than it is signed alone, never split.
    pub max_group_leaves: usize,
    /// Bytes of appends one workspace may have waiting (received, not yet signed). An append
    /// that finds its workspace at or over it is answered `Busy` (back pressure for that
    /// workspace only).
    pub max_workspace_queued_bytes: usize,
    /// Bytes of requests, all connections together, read and not yet answered (the answer
    /// written). At the cap the signer stops reading its sockets until answers free some
    /// (back pressure). At least [`allowly_signer_proto::MAX_FRAME`], so any frame fits.
    pub max_queued_bytes: usize,
    /// Connections served at once; one more is closed at once and counted.
    pub max_connections: usize,
    /// A workspace unused this long is unloaded (its keys wiped and their memory unlocked), and
    /// loaded again by its next request; `None`: never.
    pub idle_unload: Option<Duration>,
}

impl Limits {
    /// `--max-group-leaves`'s default: four protocol batches (4 × 4096). A group of that many
    /// costs about 1 MB of journal record, 1 MB of audit line and (with proofs) ~8 MB of proofs.
    pub const DEFAULT_MAX_GROUP_LEAVES: usize = 16_384;
    /// The most `--max-group-leaves` may be: a group's audit line must stay shorter than what
    /// the journal reads back from the end of `audit.log` at start (8 MiB; 65 536 leaves make
    /// a 4.4 MB line).
    pub const MAX_GROUP_LEAVES: usize = 65_536;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_group_leaves: Self::DEFAULT_MAX_GROUP_LEAVES,
            // Four maximal batches (8 MiB of bodies each), or sixteen 4096-receipt batches of
            // typical bodies: the service sends a workspace one batch at a time, so only a
            // caller that pipelines one workspace's appends ever meets it.
            max_workspace_queued_bytes: 32 << 20,
            // 1024 of the service's typical 1024-receipt batches would be 512 MiB; past this
            // the queue waits in the caller (and its timeout) instead of the signer's heap.
            max_queued_bytes: 128 << 20,
            max_connections: 256,
            // As the engine passivates its workspace actors.
            idle_unload: Some(Duration::from_secs(300)),
        }
    }
}

/// State shared by the listener, the connections and the workspace actors.
#[derive(Debug)]
pub struct Shared {
    pub dir: PathBuf,
    pub keystore: KeyStore,
    /// Every workspace's durable log state and the audit log, behind one writer thread.
    pub journal: Journal,
    pub metrics: Metrics,
    /// Workspace id → actor. Lock-free reads on the hot path.
    pub workspaces: DashMap<String, WsHandle>,
    /// Serialises loading/creating/unloading a workspace so it has at most one actor.
    pub load_lock: LoadLocks,
    /// Uids allowed to connect.
    pub allowed_uids: Vec<u32>,
    pub limits: Limits,
    /// Request bytes that may still be read (`limits.max_queued_bytes` in all); see
    /// `server::connection`.
    pub(crate) budget: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// The signer's state over `dir`, ready for [`server::serve`].
    pub fn new(
        dir: PathBuf,
        keystore: KeyStore,
        journal: Journal,
        metrics: Metrics,
        allowed_uids: Vec<u32>,
        limits: Limits,
    ) -> Self {
        let budget =
            limits.max_queued_bytes.clamp(allowly_signer_proto::MAX_FRAME, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            dir,
            keystore,
            journal,
            metrics,
            workspaces: DashMap::new(),
            load_lock: LoadLocks::default(),
            allowed_uids,
            budget: Arc::new(tokio::sync::Semaphore::new(budget)),
            limits,
        }
    }

    /// The state of a signer over `dir` with the master key in `dir/master.key` (created, mode
    /// 0600, if missing), accepting only this process's uid: what `allowly-signer serve` sets
    /// up, minus process hardening. For benches and in-process tests of the signer's clients;
    /// serve it with [`server::bind`] and [`server::serve`].
    pub fn open_local(dir: &std::path::Path) -> Result<Arc<Self>, Box<dyn std::error::Error + Send + Sync>> {
        Self::open_local_with(dir, Limits::default())
    }

    /// [`Shared::open_local`] with other limits.
    pub fn open_local_with(
        dir: &std::path::Path,
        limits: Limits,
    ) -> Result<Arc<Self>, Box<dyn std::error::Error + Send + Sync>> {
        std::fs::create_dir_all(dir)?;
        let key_file = dir.join("master.key");
        let master = if key_file.exists() {
            keystore::MasterKey::from_file(&key_file)?
        } else {
            keystore::MasterKey::create_file(&key_file)?
        };
        let metrics = Metrics::new();
        let mlock = keystore::MlockPolicy { failures: metrics.mlock_failures.clone(), required: false };
        let keystore = KeyStore::open(dir, Box::new(keystore::FileBackend::new(master).with_mlock_policy(mlock)))?;
        let journal = Journal::open(dir, JournalOptions::default(), metrics.clone())?;
        let uids = vec![rustix::process::geteuid().as_raw()];
        Ok(Arc::new(Self::new(dir.to_owned(), keystore, journal, metrics, uids, limits)))
    }
}

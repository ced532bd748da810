//! `allowly-signer`: the HSM-style key process of Allowly.
//!
//! It generates and holds every workspace's Ed25519 signing key (sealed at rest under a master
//! key, locked and non-dumpable in memory), keeps every workspace's Merkle log state (the
//! frontier only), and signs one C2SP checkpoint per batch of leaf hashes. It answers only the
//! operations of `allowly-signer-proto`: there is no way to export a private key or to have it
//! sign anything but a checkpoint of a workspace log that it extends itself, and it refuses any
//! append that would fork or roll a log back.
//!
//! Layout of the data directory: `keys/<ws>.json` (sealed keys), `logs/<ws>.state` (durable log
//! state), `audit.log` (one line per signature), `lock` (flock held by the one signer serving
//! the directory), optionally `master.key` (dev set-ups).
//!
//! # Cost per receipt
//!
//! `cargo bench -p allowly-benches --bench signer` measures [`workspace::sign_batch`] (the whole
//! CPU path of one batch: frontier append, every inclusion proof, one checkpoint signature)
//! beside one raw Ed25519 signature in the same run. On the 2-core development machine
//! (2026-11-30), per receipt:
//!
//! | batch | per receipt / one raw signature |
//! |---|---|
//! | 1 | 1.26× |
//! | 16 | 0.078× |
//! | 256 | 0.013× (goal ≤ 0.05×) |
//! | 4096 | 0.014× |
//!
//! A 16-leaf `AppendBatch` round trip over the socket costs ≈ 300× a bare socket ping-pong,
//! almost all of it the two fsyncs (log state, audit log) that make the signature durable before
//! it is released; concurrent callers share them because their batches are coalesced.
//!
//! # Security model (what is promised, and where it is tested)
//!
//! - Only peers whose uid is allowed (SO_PEERCRED) get an answer; others are closed and counted.
//! - Keys never leave the process and exist on disk only sealed (`keystore` unit test scans every
//!   file for the key bytes in several encodings).
//! - Memory is not readable by the same uid (non-dumpable) and not dumped (RLIMIT_CORE = 0,
//!   MADV_DONTDUMP); keys are locked in RAM. See [`hardening`] for what this cannot promise.
//! - A log never forks or rolls back (state fsynced before the answer; refusals counted in
//!   `allowly_signer_fork_attempts_total` and written to the audit log).

pub mod audit;
pub mod error;
pub mod hardening;
pub mod keystore;
pub mod metrics;
pub mod server;
pub mod state;
pub mod workspace;

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use dashmap::DashMap;
use ractor::ActorRef;

use crate::audit::AuditLog;
use crate::keystore::KeyStore;
use crate::metrics::Metrics;
use crate::workspace::WsMsg;

/// A loaded workspace: its actor and the count of requests waiting in its mailbox.
#[derive(Debug, Clone)]
pub struct WsHandle {
    pub actor: ActorRef<WsMsg>,
    pub queued: Arc<AtomicUsize>,
}

/// State shared by the listener, the connections and the workspace actors.
#[derive(Debug)]
pub struct Shared {
    pub dir: PathBuf,
    pub keystore: KeyStore,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// Workspace id → actor. Lock-free reads on the hot path.
    pub workspaces: DashMap<String, WsHandle>,
    /// Serialises loading/creating workspaces so an actor is spawned once.
    pub load_lock: tokio::sync::Mutex<()>,
    /// Uids allowed to connect.
    pub allowed_uids: Vec<u32>,
}

impl Shared {
    /// The state of a signer over `dir` with the master key in `dir/master.key` (created, mode
    /// 0600, if missing), accepting only this process's uid: what `allowly-signer serve` sets
    /// up, minus process hardening. For benches and in-process tests of the signer's clients;
    /// serve it with [`server::bind`] and [`server::serve`].
    pub fn open_local(dir: &std::path::Path) -> Result<Arc<Self>, Box<dyn std::error::Error + Send + Sync>> {
        std::fs::create_dir_all(dir)?;
        let key_file = dir.join("master.key");
        let master = if key_file.exists() {
            keystore::MasterKey::from_file(&key_file)?
        } else {
            keystore::MasterKey::create_file(&key_file)?
        };
        Ok(Arc::new(Shared {
            keystore: KeyStore::open(dir, master)?,
            audit: AuditLog::open(dir)?,
            metrics: Metrics::new(),
            workspaces: Default::default(),
            load_lock: Default::default(),
            allowed_uids: vec![rustix::process::geteuid().as_raw()],
            dir: dir.to_owned(),
        }))
    }
}

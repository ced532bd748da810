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
//! state), `audit.log` (one line per signature), optionally `master.key` (dev set-ups).
//!
//! Measured cost per receipt: see `benches/signer.rs` and the README.

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

//! Allowly's engine: workspaces, authorizations, decisions, one actor per workspace, and the
//! signing pipeline. [`Engine`] is the whole API; the server maps HTTP onto it.
//!
//! Shape: requests that add a receipt go to the workspace's actor (`actor`), which decides
//! (`decide`), sequences, and group-commits; after each commit the workspace's signing task
//! (`pipeline`) sends the new leaves to the signer and stores checkpoints, Merkle nodes and
//! proofs. Reads go straight to the store. Events for webhooks (`webhooks`) are enqueued in the
//! same writes as the receipts and signatures that cause them; `allowly-webhooks` delivers them.

mod actor;
mod admin_keys;
mod checkpoint_log;
mod clock;
mod commit;
mod config;
mod endpoints;
mod engine;
pub mod error;
pub mod fault;
pub mod health;
pub mod ids;
mod inbox;
mod mailbox;
mod metrics;
pub mod model;
mod monitor;
mod ownership;
mod pace;
mod pipeline;
mod receipts;
mod services;
mod shared;
mod sign_batcher;
mod signer_ahead;
pub mod validate;
mod views;
mod watchers;
mod webhooks;
mod witnessing;

pub use admin_keys::reset_instance_admin_keys;
/// The decision table lives in its own crate, without IO, so that the offline verifier
/// (`allowly-verify bundle --semantics`) re-derives decisions with the very function the engine
/// decides with; re-exported so that `crate::decide` reads as before.
pub use allowly_decide as decide;
pub use checkpoint_log::CheckpointSink;
pub use config::{ClusterConfig, EngineConfig, WitnessConfig};
pub use engine::{Engine, MAX_EXPORT_RECEIPTS, WITNESS_PENDING_REASON};
pub use error::{EngineError, Result};
pub use services::CLUSTER_CACHE_MAX_AGE;

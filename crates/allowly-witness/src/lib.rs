//! `allowly-witness`: a C2SP tlog-witness (<https://c2sp.org/tlog-witness>). It cosigns a log's
//! checkpoint (C2SP tlog-cosignature, `cosignature/v1`) only if it is consistent with the last
//! checkpoint it cosigned for that log, so a log that was rolled back or forked cannot gather
//! cosignatures for both histories. `docs/witness.md` describes it for operators.
//!
//! Modules, leaves first: [`error`] (the one error enum and its HTTP mapping), [`metrics`],
//! [`config`] (the known logs), [`keyfile`] (the witness's key), [`state`] (the durable heads),
//! [`witness`] (the add-checkpoint logic, no HTTP), [`http`] (the hyper edge).

pub mod config;
mod error;
pub mod http;
pub mod keyfile;
pub mod metrics;
pub mod state;
pub mod witness;

pub use error::{Error, Result};

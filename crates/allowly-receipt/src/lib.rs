//! The Allowly receipt format, and everything needed to verify receipts offline.
//!
//! - [`jcs`]: RFC 8785 canonical JSON (and a strict I-JSON parser) — the exact bytes that are hashed.
//! - [`merkle`]: RFC 6962/9162 Merkle tree hashing, inclusion and consistency proofs, and the
//!   append-only [`merkle::Frontier`] the signer keeps.
//! - [`note`]: C2SP signed notes and checkpoints with Ed25519 signatures.
//! - [`cosignature`]: C2SP `cosignature/v1` witness cosignatures and the witness-quorum check.
//! - [`types`]: receipt bodies, pending and signed envelopes, workspace key sets.
//! - [`bundle`]: evidence bundles (JSON Lines).
//! - [`verify`]: verification that reports findings (integrity failure vs coverage gap).
//!
//! Architecture invariant: this crate does no IO and knows nothing of tokio, RocksDB or HTTP, so
//! that an auditor's verifier depends on nothing else. The normative specification is
//! `docs/receipt-format.md`.

mod error;
pub use error::{Error, Result};

pub mod bundle;
pub mod cosignature;
pub mod jcs;
pub mod merkle;
pub mod note;
#[cfg(feature = "batch")]
pub mod note_batch;
#[cfg(feature = "openapi")]
mod openapi;
pub mod types;
pub mod verify;

//! The server's integration tests, one binary (each extra test binary is linked again, and the
//! server's deps with it): black-box tests of the real `allowly` and `allowly-signer` binaries.
//!
//! They share one process, so none may change process-wide state that another test sees. The
//! only one that does is the SoftHSM2 fixture of `pkcs11`, which sets `SOFTHSM2_CONF` for this
//! process at its first use: harmless here, because every reader of the environment in this
//! process goes through `std::env`/`std::process` (which lock it; the SoftHSM2 module itself is
//! only ever loaded by a signer child), and a child that inherits the variable reads it only if it
//! loads SoftHSM2, which only `pkcs11`'s servers do. Tests that start `allowly serve` as root
//! create the same system users concurrently; the server and `pkcs11` retry a locked
//! `/etc/passwd`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod abuse;
mod backup;
mod blackbox;
mod clients;
mod cluster;
mod contract;
mod disk;
mod hitl;
mod inbox;
mod isolation;
mod ops;
mod pkcs11;
mod postgres;
mod powerloss;
mod resilience;
mod rotation;
mod schemathesis;
mod support;
mod tls_listener;
mod webhooks;
mod witness;

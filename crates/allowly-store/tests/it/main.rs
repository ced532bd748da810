//! The store's integration tests, one binary (each extra test binary links RocksDB again).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
mod conformance;
mod crash;
mod equivalence;

//! The RocksDB store's integration tests, one binary (each extra test binary links RocksDB
//! again).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod crash;

use allowly_store::conformance::Fixture;
use allowly_store_rocks::{RocksOptions, RocksStore};
use tempfile::TempDir;

/// An empty store in a temporary directory (removed after the store is closed).
fn fresh() -> Fixture<RocksStore, TempDir> {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
    Fixture { store, keep: dir }
}

/// The suite every store passes (`allowly-store` runs it on `MemStore`), with the cases that
/// corrupt stored bytes: `RocksStore` is a `KvEngine`.
mod conformance {
    allowly_store::conformance_tests!(kv_engine: crate::fresh);
}

/// Random op sequences applied to `MemStore` and `RocksStore` give the same results.
#[test]
fn mem_and_rocks_agree() {
    allowly_store::conformance::agrees_with_mem_store(fresh);
}

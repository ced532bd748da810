//! The store's integration tests, one binary (each extra test binary links RocksDB again).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod crash;

use allowly_store::conformance::Fixture;
use allowly_store::{RocksOptions, RocksStore};
use tempfile::TempDir;

/// An empty store in a temporary directory (removed after the store is closed).
fn rocks() -> Fixture<RocksStore, TempDir> {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
    Fixture { store, keep: dir }
}

/// The suite every store passes, on both engines, with the cases that corrupt stored bytes
/// (both are `KvEngine`s).
mod conformance {
    mod mem {
        allowly_store::conformance_tests!(kv_engine: allowly_store::conformance::mem);
    }
    mod rocks {
        allowly_store::conformance_tests!(kv_engine: crate::rocks);
    }
}

/// Random op sequences applied to `MemStore` and `RocksStore` give the same results.
#[test]
fn mem_and_rocks_agree() {
    allowly_store::conformance::agrees_with_mem_store(rocks);
}

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

/// The engine figures come from RocksDB's properties: a fresh database is not stalled, runs no
/// compaction debt, and its memtables hold what was just written (no flush yet).
#[test]
fn engine_stats_read_rocksdb_properties() {
    use allowly_store::{DocKind, Durability, Op, Store, WriteBatch};
    let f = fresh();
    let before = f.store.engine_stats();
    let ops = (0..100)
        .map(|i| Op::PutDoc {
            kind: DocKind::Outbox,
            workspace_id: "w".into(),
            id: format!("d{i}"),
            doc: serde_json::json!({ "pad": "x".repeat(1000) }),
        })
        .collect::<Vec<_>>();
    f.store.write(WriteBatch::from(ops), Durability::Sync).unwrap();
    let after = f.store.engine_stats();
    assert_eq!(after.write_stopped, Some(false), "{after:?}");
    assert_eq!(after.delayed_write_rate, Some(0), "{after:?}");
    assert_eq!(after.running_compactions, Some(0), "{after:?}");
    assert_eq!(after.pending_compaction_bytes, Some(0), "{after:?}");
    assert_eq!(after.live_data_bytes, Some(0), "nothing flushed yet: {after:?}");
    assert!(after.live_blob_bytes.is_some(), "{after:?}");
    let grew = after.memtable_bytes.unwrap().saturating_sub(before.memtable_bytes.unwrap());
    assert!(grew >= 100_000, "100 KB written, memtables grew by {grew}: {after:?}");
}

//! The store's integration tests, one binary: the conformance suite on `MemStore`, with the
//! cases that corrupt stored bytes (`allowly-store-rocks` runs the same suite on `RocksStore`).

mod conformance {
    allowly_store::conformance_tests!(kv_engine: allowly_store::conformance::mem);
}

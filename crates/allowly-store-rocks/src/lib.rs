//! Allowly's durable store: [`RocksStore`], [`allowly_store::Store`] on an embedded RocksDB,
//! and its tuning, [`RocksOptions`].
//!
//! **This is the only crate that names RocksDB.** `allowly-store` holds the trait, the records,
//! the key encodings and every getter, written once over its ordered key-value interface
//! ([`allowly_store::kv`]); this crate only keeps the bytes: one column family per key space
//! ([`Space`](allowly_store::kv::Space), named by [`Space::name`](allowly_store::kv::Space::name)),
//! one RocksDB write batch per set of mutations. `allowly-engine` and `allowly-webhooks`
//! depend on `allowly-store` alone, and a test of `allowly-engine` fails if RocksDB ever enters
//! their normal dependency graph: only the server, which opens the store, depends on this
//! crate, so a networked store can take its place without touching anything above it.
//!
//! The on-disk format (column family names, keys, values) is `allowly-store`'s; this crate
//! adds only RocksDB's own files and options.

mod error;
mod options;
mod partitioner;
mod recovery;
mod store;

pub use options::RocksOptions;
pub use store::RocksStore;

//! Allowly's storage: the [`Store`] trait, its records and write ops, the key encodings and
//! getters every ordered key-value engine shares ([`kv`]), and [`MemStore`] (in memory, for
//! tests of other crates). The durable store, `RocksStore`, is in `allowly-store-rocks`.
//!
//! **This crate must not depend on a storage engine, not even transitively** (TiKV's
//! `engine_traits` rule): `allowly-engine` and `allowly-webhooks` depend on it alone, and a
//! test of `allowly-engine` fails if RocksDB ever enters their dependency graph, so "only the
//! store names RocksDB" is the dependency graph's to enforce, not review's. Nothing public
//! mentions an engine type, so the same trait can later be implemented over a networked engine
//! (a PostgreSQL-compatible distributed SQL database, TiKV): writes are batch-shaped
//! ([`WriteBatch`], atomic), durability is explicit per write ([`Durability`]), and every
//! per-workspace key starts with the workspace id, so one workspace's data is a contiguous key
//! range that can move between nodes with its owner. Every implementation runs the same
//! conformance suite (`conformance`, behind the feature of that name).
//!
//! # Key spaces
//!
//! One key space per kind ([`kv::Space`]; a RocksDB column family of the same name in
//! `allowly-store-rocks`). `‖` is concatenation; integers are big-endian so that byte order is
//! numeric order; ids are 1..=128 of `[A-Za-z0-9_-]` (checked on every call), so the 0x00
//! separator cannot occur inside an id and workspace `a`'s keys never interleave with `a_b`'s.
//!
//! | space            | key                                          | value                              |
//! |------------------|----------------------------------------------|------------------------------------|
//! | `workspaces`     | `ws`                                         | [`WorkspaceRecord`] (JSON)         |
//! | `api_keys`       | `key_hash` (32 bytes)                        | [`ApiKeyRecord`] (JSON)            |
//! | `authorizations` | `ws ‖ 0x00 ‖ id`                             | [`AuthorizationRecord`] (JSON, without its trail head) |
//! | `receipts`       | `ws ‖ 0x00 ‖ log index u64`                  | [`ReceiptRecord`]: JSON header ‖ `\n` ‖ body bytes |
//! | `trail`          | `ws ‖ 0x00 ‖ auth id ‖ 0x00 ‖ seq u64`       | leaf hash (32 bytes) ‖ log index u64 |
//! | `nodes`          | `ws ‖ 0x00 ‖ level u8 ‖ index u64`           | 32-byte complete-subtree hash      |
//! | `checkpoints`    | `ws ‖ 0x00 ‖ tree size u64`                  | signed note text                   |
//! | `log_meta`       | `ws`                                         | [`LogMeta`] (JSON)                 |
//! | `api_key_ids`    | `ws ‖ 0x00 ‖ key id` (`ws` empty: instance)  | `key_hash` (index into `api_keys`) |
//! | `cosignatures`   | `ws ‖ 0x00 ‖ tree size u64 ‖ witness Ed25519 key (32 bytes)` | one `cosignature/v1` signature line (text) |
//! | `witness_heads`  | `ws ‖ 0x00 ‖ witness Ed25519 key (32 bytes)` | tree size u64: the largest checkpoint that witness cosigned |
//! | `confirmations`, `escalations`, `idempotency`, `webhooks`, `deliveries`, `outbox`, `escalation_due` | `ws ‖ 0x00 ‖ id` | a [`DocKind`] document (JSON, wrapped with its ws and id) |
//! | `members`        | `node id`                                    | [`Member`] (JSON): the node's last heartbeat |
//! | `leases`         | `ws`                                         | the workspace's lease: owner, address, expiry (JSON) |
//! | `lease_epochs`   | `ws`                                         | its epoch, u64 (what a fence reads) |
//!
//! The engine also files documents under two scopes that are not workspaces (workspace ids are
//! `ws_…`): `_instance` (`idempotency` records of workspace creation) and `_due` (the
//! `escalation_due` index of every workspace).
//!
//! A receipt is signed once a checkpoint of a size above its log index is stored: nothing is
//! rewritten when a batch is signed, and the unsigned receipts of a workspace are the `receipts`
//! range `[newest checkpoint size, next index)` (one past the newest receipt) — a seek, not a queue scanned from its
//! head over the tombstones of everything already signed.
//!
//! An authorization's trail head (the next `seq` and the previous receipt's leaf hash) is not
//! in its record: a read takes it from the last `trail` entry. A check extends the trail and
//! so writes no authorization record at all.
//!
//! Receipts are keyed by log index, so a workspace's receipts are one range in log order and no
//! second index is written per receipt (the engine's receipt ids carry the index, see
//! `allowly_engine::ids`). `trail` is an index into `receipts`, written in the same batch as the
//! receipt, so an index entry never points at nothing; a reader that finds one that does reports
//! [`StoreError::Corrupt`]. Stored bytes are never trusted: a value that does not decode, or a
//! record that names another workspace or id than its key, is `Corrupt`, never a panic and never
//! another tenant's data.
//!
//! Several nodes may share one networked store; each workspace is sequenced by the one node
//! holding its lease, and every write of that node for it can carry the lease's epoch
//! ([`Op::Fence`]), which the store checks atomically with the write, so a former owner can
//! never append after a new one took over (`lease` module; `docs/scale-out.md`). Leases and
//! members are never deleted; an epoch is never granted twice.
//!
//! Key spaces and the JSON field names are an on-disk format: rename nothing; add fields with
//! `#[serde(default)]`.

mod codec;
mod error;
mod keys;
pub mod kv;
mod lease;
mod mem;
mod query;
mod store;
mod types;

pub use error::{Result, StoreError};
pub use mem::MemStore;
pub use store::{Store, StoredNodes, FIRST_STORED_LEVEL};
pub use types::{
    ApiKeyRecord, AuthorizationRecord, DocKind, Durability, EngineStats, IdempotencyRef, Lease, LeaseAnswer, LogMeta,
    Member, Op, PublicKeyRecord, RateLimit, ReceiptRecord, Role, ScopeRule, WorkspaceRecord, WriteBatch,
};

#[cfg(feature = "conformance")]
pub mod conformance;

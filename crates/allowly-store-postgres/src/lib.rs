//! Allowly's store on PostgreSQL: [`PgStore`], [`allowly_store::Store`] over a SQL database,
//! and its settings, [`PgOptions`]. `docs/postgres.md` says what this mode promises.
//!
//! **This is the only crate that names PostgreSQL.** Like `allowly-store-rocks` it only keeps
//! bytes: it implements the ordered key-value interface ([`allowly_store::kv`]) and
//! `allowly-store` does the rest (records, keys, getters, tenant checks), so both engines run
//! the same conformance suite and cannot disagree on what a record is.
//!
//! # Engines
//!
//! Meant for PostgreSQL (tested: 15, on a private throwaway cluster per test run) and written
//! for the PostgreSQL-compatible distributed engines CockroachDB and YugabyteDB (issue 16; not
//! tested against either yet). Hence only SQL all three run: no advisory locks, no
//! `LISTEN`/`NOTIFY`, no stored procedures; one table keyed by `(space, k bytea)`, multi-row
//! `INSERT … SELECT FROM unnest(…) ON CONFLICT … DO UPDATE` and `DELETE … WHERE (space, k) IN
//! (SELECT … FROM unnest(…))`; writes in `SERIALIZABLE` transactions retried on a
//! serialization failure (SQLSTATE 40001, and 40P01); reads in one `REPEATABLE READ, READ ONLY`
//! transaction (a snapshot; an engine without that level runs it as `SERIALIZABLE`, still one
//! snapshot). `bytea` compares as `memcmp` in all three, which is the byte order the key spaces
//! need (`tests/it` checks it with keys holding 0x00 and 0xff).
//!
//! # Schema (version 2)
//!
//! ```sql
//! allowly_meta (name text PRIMARY KEY, value text NOT NULL)   -- ('schema_version', '3')
//! allowly_kv   (space text, k bytea, v bytea NOT NULL, PRIMARY KEY (space, k))
//! ```
//!
//! `space` is [`Space::name`](allowly_store::kv::Space::name) (stable, never renamed, like the
//! RocksDB column families); keys and values are `allowly-store`'s bytes. Created on open if
//! absent, in the first schema of the connection's `search_path`; a database whose schema
//! version is newer than this build's is refused, never written. Version 2 added no table:
//! it marks a database that may hold leases, which a version-1 build (that ignores fences)
//! must not write; a version-1 database is migrated on open.
//!
//! # TLS
//!
//! Over TCP, always, unless the connection string says `sslmode=disable`: libpq's `sslmode`
//! and `sslrootcert`, with `verify-full` when no mode is given and no plaintext fallback in any
//! mode (`tls.rs`, on `allowly-tls`'s rustls settings).
//!
//! # Several nodes
//!
//! Membership, leases and fenced writes are `allowly-store`'s, over the `members`, `leases`
//! and `lease_epochs` key spaces; this crate gives them the database's clock
//! ([`KvEngine::now_ms`](allowly_store::kv::KvEngine::now_ms): `clock_timestamp()`, so the
//! nodes' clocks never matter) and a checked write ([`KvEngine::apply_checked`](allowly_store::kv::KvEngine::apply_checked)):
//! one `REPEATABLE READ` transaction that reads the expected rows (a workspace's epoch) `FOR
//! UPDATE` — a row lock, so a fenced write and a takeover of its workspace are ordered by
//! commit — and writes the groups whose expectations hold (why not `SERIALIZABLE`: see
//! `store.rs`, `begin_checked`). `docs/scale-out.md` has the model.
//!
//! # Threads
//!
//! The storage traits are synchronous and are called from a std thread (the committer), from
//! tokio's blocking pool and from tokio async worker threads. A database client that blocks on
//! its own runtime panics inside an async context, so no caller ever touches one: the store owns
//! a few connection threads ([`PgOptions::connections`]), each with its own current-thread
//! runtime and `tokio-postgres` client, taking work from one bounded queue; a caller puts a job
//! in and blocks on its answer, at most [`PgOptions::timeout`]. See `pool.rs`.

mod error;
mod options;
mod pool;
mod schema;
mod store;
#[cfg(feature = "test-cluster")]
pub mod test_cluster;
#[cfg(feature = "test-cluster")]
pub mod test_proxy;
mod tls;

#[cfg(feature = "test-cluster")]
pub use options::TestHook;
pub use options::{PgOptions, TxPoint};
pub use store::PgStore;

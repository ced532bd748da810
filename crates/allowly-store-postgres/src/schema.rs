//! The tables, the statements, and what every new connection checks before it is used.

use allowly_store::StoreError;
use tokio_postgres::{Client, Statement};

use crate::error::Failure;
use crate::PgOptions;

/// This build's schema version (`allowly_meta.schema_version`). A database at a newer one is
/// refused: an older build must not write rows whose meaning it does not know.
///
/// - 1: `allowly_meta` and `allowly_kv`.
/// - 2: the same tables; `allowly_kv` may hold the `members`, `leases` and `lease_epochs` key
///   spaces (issue 16: several nodes on one database). No table changes, but a version-1 build
///   ignores fences: once a node of this build has opened the database, one of an older build
///   must not write to it (it would write a workspace another node owns), so it is refused.
///   A version-1 database is migrated on open (the version row only).
/// - 3: the same tables; the `nodes` key space no longer holds the Merkle nodes below
///   `allowly_store::FIRST_STORED_LEVEL`, which this build hashes from the receipts. A
///   version-2 build would find them missing (its proofs and signing-task loads would fail), so
///   it is refused. A version-1 or -2 database is migrated on open (the version row only): the
///   nodes it holds stay valid and are read as before.
pub(crate) const VERSION: u32 = 3;
/// The oldest version this build migrates from.
const MIGRATES_FROM: u32 = 1;

const CREATE_META: &str = "CREATE TABLE IF NOT EXISTS allowly_meta (name text PRIMARY KEY, value text NOT NULL)";
// `bytea` primary keys compare as memcmp (PostgreSQL, CockroachDB, YugabyteDB): the byte order
// `allowly-store`'s key encodings rely on.
const CREATE_KV: &str = "CREATE TABLE IF NOT EXISTS allowly_kv \
     (space text NOT NULL, k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (space, k))";
const SET_VERSION: &str =
    "INSERT INTO allowly_meta (name, value) VALUES ('schema_version', $1) ON CONFLICT (name) DO NOTHING";
const GET_VERSION: &str = "SELECT value FROM allowly_meta WHERE name = 'schema_version'";
// Conditional on the version it migrates from, so two stores migrating at once both succeed
// and a newer build's version is never lowered.
const MIGRATE: &str = "UPDATE allowly_meta SET value = $1 WHERE name = 'schema_version' AND value = $2";

/// The statements of one connection, prepared once when it opens.
#[derive(Debug)]
pub(crate) struct Stmts {
    pub get: Statement,
    /// `[up, open]` × `[forward, reverse]`: a scan with or without an upper bound.
    pub scan: [[Statement; 2]; 2],
    pub upsert: Statement,
    /// The current value of each key a checked write expects, locked until its transaction ends.
    pub check: Statement,
    /// The database's clock, in ms since the Unix epoch.
    pub now: Statement,
}

const GET: &str = "SELECT v FROM allowly_kv WHERE space = $1 AND k = $2";
const SCAN: [[&str; 2]; 2] = [
    [
        "SELECT k, v FROM allowly_kv WHERE space = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4",
        "SELECT k, v FROM allowly_kv WHERE space = $1 AND k >= $2 AND k < $3 ORDER BY k DESC LIMIT $4",
    ],
    [
        "SELECT k, v FROM allowly_kv WHERE space = $1 AND k >= $2 ORDER BY k LIMIT $3",
        "SELECT k, v FROM allowly_kv WHERE space = $1 AND k >= $2 ORDER BY k DESC LIMIT $3",
    ],
];
// One statement for all the puts of a transaction, one for all its deletes, whatever their
// number: a write is four round trips (BEGIN, these two, COMMIT), not one per key.
const UPSERT: &str = "INSERT INTO allowly_kv (space, k, v) \
     SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
     ON CONFLICT (space, k) DO UPDATE SET v = excluded.v";
// Not prepared (`DELETE`'s users send it with `query_typed`: planned at each use, with the
// table's statistics of that moment). A prepared statement's generic plan is made once, after
// five uses, from the statistics of *then*: on a new, near-empty table that is a sequential
// scan with a hash semi-join, kept for the connection's life while the table grows: one
// sequential scan of the whole table per delete.
pub(crate) const DELETE: &str =
    "DELETE FROM allowly_kv WHERE (space, k) IN (SELECT * FROM unnest($1::text[], $2::bytea[]))";
// `FOR UPDATE`: a row write lock, which orders a fenced write and a takeover of its workspace
// by commit, not only by serialization: whichever locks the epoch row second waits for the
// first to commit, and one whose snapshot predates a committed change of the row fails with a
// serialization failure (run again, it reads the new epoch). Serializable isolation alone would
// let a fenced write commit *after* a takeover (serialized before it), unseen by the new
// owner's snapshot reads. CockroachDB and YugabyteDB take the same lock.
//
// One index lookup per key (`LATERAL`, the full primary key): whatever the table's statistics
// say. Written as `(space, k) IN (SELECT … unnest …)`, the generic plan made on a new, near-empty
// table was a sequential scan of the whole table per check, kept as the table grew: a fenced
// commit took 6 ms at 25,000 rows and the cluster's check knee was ~4,000/s
// (docs/scale-out.md, *Capacity*).
const CHECK: &str = "SELECT kv.space, kv.k, kv.v FROM unnest($1::text[], $2::bytea[]) AS e(space, k) \
     CROSS JOIN LATERAL (SELECT space, k, v FROM allowly_kv \
     WHERE allowly_kv.space = e.space AND allowly_kv.k = e.k FOR UPDATE) kv";
const NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// Creates the tables if absent and records the version; refuses a database at another
/// version before writing anything. Each statement commits on its own (engines differ on DDL
/// inside transactions) and each is idempotent, so two stores opening at once both succeed
/// (a lost race on a catalog row is retried by the caller: see [`Failure::is_retryable_ddl`]).
pub(crate) async fn ensure(client: &Client) -> Result<(), Failure> {
    client.batch_execute(CREATE_META).await?;
    let found = read_version(client).await?;
    if let Some(from) = found.filter(|v| (MIGRATES_FROM..VERSION).contains(v)) {
        // An older database: nothing to create (see VERSION), the version to record.
        client.execute(MIGRATE, &[&VERSION.to_string(), &from.to_string()]).await?;
    } else {
        check(found, true)?;
    }
    client.batch_execute(CREATE_KV).await?;
    client.execute(SET_VERSION, &[&VERSION.to_string()]).await?;
    check(read_version(client).await?, false)
}

/// What a connection checks and sets before its first job: the schema version (another build
/// may have migrated the database since the store opened), `synchronous_commit` (a
/// [`Durability::Sync`](allowly_store::Durability::Sync) write must be synced even on a server
/// configured not to), the idle bound of its transactions ([`PgOptions::write_idle_limit`];
/// read transactions lift it for themselves), then its statements.
pub(crate) async fn prepare(client: &Client, opts: &PgOptions) -> Result<Stmts, Failure> {
    check(read_version(client).await?, false)?;
    let idle_ms = opts.write_idle_limit.as_millis().min(i32::MAX as u128);
    client.batch_execute(&format!("SET idle_in_transaction_session_timeout TO {idle_ms}")).await?;
    if opts.async_buffered_commits {
        let row = client.query_one("SHOW synchronous_commit", &[]).await?;
        let current: String = row.try_get(0)?;
        // `local`, `remote_write`, `remote_apply` and `on` all flush the local WAL before the
        // commit returns; only `off` does not.
        if current == "off" {
            client.batch_execute("SET synchronous_commit TO on").await?;
        }
    }
    let scan = |up: usize, rev: usize| client.prepare(SCAN[up][rev]);
    Ok(Stmts {
        get: client.prepare(GET).await?,
        scan: [[scan(0, 0).await?, scan(0, 1).await?], [scan(1, 0).await?, scan(1, 1).await?]],
        upsert: client.prepare(UPSERT).await?,
        check: client.prepare(CHECK).await?,
        now: client.prepare(NOW).await?,
    })
}

async fn read_version(client: &Client) -> Result<Option<u32>, Failure> {
    let rows = client.query(GET_VERSION, &[]).await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let text: String = row.try_get(0)?;
    text.parse().map(Some).map_err(|_| {
        Failure::Store(StoreError::Corrupt {
            space: "allowly_meta",
            key: "schema_version".into(),
            reason: format!("{text:?} is not a schema version"),
        })
    })
}

fn check(found: Option<u32>, absent_ok: bool) -> Result<(), Failure> {
    let refuse = |why: String| Err(Failure::Store(StoreError::Engine(format!("postgres: {why}"))));
    match found {
        Some(VERSION) => Ok(()),
        None if absent_ok => Ok(()),
        None => refuse("allowly_meta has no schema_version: not an Allowly database, or its creation failed".into()),
        Some(v) if v > VERSION => refuse(format!(
            "the database's schema version is {v}, newer than this build's {VERSION}: refusing to use it \
             (run the Allowly version that wrote it, or a newer one)"
        )),
        Some(v) => refuse(format!("the database's schema version {v} is older than {VERSION} and no migration exists")),
    }
}

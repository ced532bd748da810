//! [`PgStore`]: the store on PostgreSQL, one table for every key space.

use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::time::Instant;

use allowly_store::kv::{Checked, KvEngine, KvRead, Mutation, Mutations, Outcome, Pair, Plan, Space};
use allowly_store::{Durability, EngineStats, Result, StoreError};
use crossbeam_channel::{Receiver, Sender};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::error::Failure;
use crate::pool::{self, Attempt, Conn, Hook, Live, Mode, Pool};
use crate::schema::Stmts;
use crate::tls::TlsSettings;
use crate::{PgOptions, TxPoint};

/// The store on a PostgreSQL(-compatible) database. It is an [`allowly_store::Store`] through
/// [`KvEngine`]; safe to call from any thread, async workers included (see `pool.rs`).
///
/// - [`KvEngine::apply`] is one `SERIALIZABLE` transaction: two multi-row statements (every
///   put, every delete) and `COMMIT`, run again after a serialization failure. After `Ok` the
///   transaction committed; after `Err` it is not acknowledged (it may or may not have
///   committed if the connection was lost during `COMMIT`), never applied in part.
/// - [`Durability::Sync`]: the commit returns after the database flushed its WAL
///   (`synchronous_commit` at least `local`; a server set to `off` is overridden per
///   connection). [`Durability::Buffered`]: `synchronous_commit TO off` for that transaction
///   (see [`PgOptions::async_buffered_commits`]).
/// - [`KvEngine::read`] runs every read of its closure in one `REPEATABLE READ, READ ONLY`
///   transaction on one connection: one snapshot.
/// - [`KvRead::get`] and [`KvRead::scan`] on the store itself are single statements (latest
///   committed state).
pub struct PgStore {
    pool: Pool,
    target: String,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).field("pool", &self.pool).finish()
    }
}

impl PgStore {
    /// Connects to the database `conninfo` names (libpq key-value form, `host=/run/pg dbname=x`,
    /// or a `postgresql://` URL), creates the schema if absent, and checks that every statement
    /// prepares. A database at a newer schema version is refused. Over TCP the connection is
    /// TLS, its certificate checked as `sslmode` says (`verify-full` when absent; `tls.rs`).
    pub fn open(conninfo: &str, opts: PgOptions) -> Result<Self> {
        let (conninfo, tls) = TlsSettings::take(conninfo)?;
        let mut config: tokio_postgres::Config =
            conninfo.parse().map_err(|e| StoreError::Engine(format!("postgres: invalid connection string: {e}")))?;
        let tls = tls.apply(&mut config)?;
        let target = format!("{} ({tls})", describe_target(&config));
        let pool = Pool::start(config, tls, &opts)?;
        pool.call(|conn, deadline| conn.ensure_schema(deadline))?;
        let store = Self { pool, target };
        // Opens one connection and prepares its statements: a database that cannot serve is
        // refused at open, not at the first request.
        store.get(Space::Workspaces, b"")?;
        Ok(store)
    }

    /// Where the store connects (hosts, port, database, TLS mode; never the password).
    pub fn target(&self) -> &str {
        &self.target
    }
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let port = if ports.is_empty() { String::new() } else { format!(" port={}", ports.join(",")) };
    format!(
        "host={}{port} dbname={} user={}",
        hosts.join(","),
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)")
    )
}

/// One read.
#[derive(Debug)]
enum Read {
    Get { space: Space, key: Vec<u8> },
    Scan { space: Space, lower: Vec<u8>, upper: Option<Vec<u8>>, limit: usize, reverse: bool },
}

/// One read's answer.
#[derive(Debug)]
enum Answer {
    Value(Option<Vec<u8>>),
    Pairs(Vec<Pair>),
}

impl Read {
    fn what(&self) -> String {
        match self {
            Read::Get { space, .. } => format!("get from {}", space.name()),
            Read::Scan { space, .. } => format!("scan of {}", space.name()),
        }
    }

    /// Runs the read on `conn` (in `mode`), before `deadline`.
    fn run(&self, conn: &mut Conn, deadline: Instant, mode: Mode) -> Result<Answer> {
        let what = self.what();
        match self {
            Read::Get { space, key } => {
                let row = conn.attempt(&what, deadline, mode, |live: Rc<Live>| -> Attempt<'_, _> {
                    Box::pin(async move {
                        let name = space.name();
                        let rows = live.client.query(&live.stmts.get, &[&name, key]).await?;
                        rows.first().map(|row| row.try_get::<_, Vec<u8>>(0)).transpose().map_err(Failure::from)
                    })
                })?;
                Ok(Answer::Value(row))
            }
            Read::Scan { space, lower, upper, limit, reverse } => {
                // An empty or inverted range, or no room: the same empty answer as RocksDB's.
                if *limit == 0 || upper.as_ref().is_some_and(|u| u <= lower) {
                    return Ok(Answer::Pairs(Vec::new()));
                }
                let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
                let pairs = conn.attempt(&what, deadline, mode, |live: Rc<Live>| -> Attempt<'_, _> {
                    Box::pin(async move {
                        let name = space.name();
                        let rows = match upper {
                            Some(upper) => {
                                let stmt = &live.stmts.scan[0][usize::from(*reverse)];
                                live.client.query(stmt, &[&name, lower, upper, &limit]).await?
                            }
                            None => {
                                let stmt = &live.stmts.scan[1][usize::from(*reverse)];
                                live.client.query(stmt, &[&name, lower, &limit]).await?
                            }
                        };
                        let mut out = Vec::with_capacity(rows.len());
                        for row in rows {
                            out.push((row.try_get::<_, Vec<u8>>(0)?, row.try_get::<_, Vec<u8>>(1)?));
                        }
                        Ok(out)
                    })
                })?;
                Ok(Answer::Pairs(pairs))
            }
        }
    }
}

fn value(a: Answer) -> Result<Option<Vec<u8>>> {
    match a {
        Answer::Value(v) => Ok(v),
        Answer::Pairs(_) => Err(StoreError::Engine("postgres: a get was answered with pairs".into())),
    }
}

fn pairs(a: Answer) -> Result<Vec<Pair>> {
    match a {
        Answer::Pairs(p) => Ok(p),
        Answer::Value(_) => Err(StoreError::Engine("postgres: a scan was answered with a value".into())),
    }
}

fn scan_read(space: Space, lower: &[u8], upper: Option<&[u8]>, limit: usize, reverse: bool) -> Read {
    Read::Scan { space, lower: lower.to_vec(), upper: upper.map(<[u8]>::to_vec), limit, reverse }
}

impl KvRead for PgStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let read = Read::Get { space, key: key.to_vec() };
        value(self.pool.call(move |conn, deadline| read.run(conn, deadline, Mode::Own))?)
    }

    fn scan(&self, space: Space, lower: &[u8], upper: Option<&[u8]>, limit: usize, reverse: bool) -> Result<Vec<Pair>> {
        let read = scan_read(space, lower, upper, limit, reverse);
        pairs(self.pool.call(move |conn, deadline| read.run(conn, deadline, Mode::Own))?)
    }
}

/// A read sent to the connection thread holding a read transaction, with its deadline and
/// where to answer.
type SessionRead = (Read, Instant, Sender<Result<Answer>>);

/// The view [`KvEngine::read`] gives its closure: every read goes to one connection thread,
/// which holds one read transaction open for them (started at the first read).
struct Session<'a> {
    pool: &'a Pool,
    reads: OnceCell<Sender<SessionRead>>,
}

impl Session<'_> {
    fn ask(&self, read: Read) -> Result<Answer> {
        let deadline = self.pool.deadline();
        let reads = match self.reads.get() {
            Some(tx) => tx,
            None => {
                let (tx, rx) = crossbeam_channel::bounded::<SessionRead>(1);
                self.pool.submit(Box::new(move |conn| serve_session(conn, &rx)), deadline)?;
                self.reads.get_or_init(|| tx)
            }
        };
        let (answer_tx, answer_rx) = crossbeam_channel::bounded(1);
        reads
            .send_timeout((read, deadline, answer_tx), deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| StoreError::Engine("postgres: the read transaction has ended (after an error)".into()))?;
        pool::answer(&answer_rx, deadline)
    }
}

impl KvRead for Session<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        value(self.ask(Read::Get { space, key: key.to_vec() })?)
    }

    fn scan(&self, space: Space, lower: &[u8], upper: Option<&[u8]>, limit: usize, reverse: bool) -> Result<Vec<Pair>> {
        pairs(self.ask(scan_read(space, lower, upper, limit, reverse))?)
    }
}

/// A read session's transaction.
const BEGIN_READ: &str =
    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL idle_in_transaction_session_timeout TO 0";

/// On a connection thread: one read transaction serving a [`Session`]'s reads until the session
/// is dropped (its sender gone), a read fails (the transaction is then aborted), or no read came
/// for a whole timeout (a caller stuck between two reads must not hold a connection forever).
fn serve_session(conn: &mut Conn, reads: &Receiver<SessionRead>) {
    let timeout = conn.timeout();
    let Ok((first, deadline, answer)) = reads.recv_timeout(timeout) else { return };
    if Instant::now() >= deadline {
        return; // the caller gave up while this waited in the queue
    }
    // Without the write idle bound (`PgOptions::write_idle_limit`): a read transaction locks
    // no rows, and its caller may pause between reads up to a whole timeout (above).
    let begun = conn.attempt("begin a read transaction", deadline, Mode::Own, |live: Rc<Live>| -> Attempt<'_, _> {
        Box::pin(async move { Ok(live.client.batch_execute(BEGIN_READ).await?) })
    });
    if let Err(e) = begun {
        let _ = answer.send(Err(e));
        return;
    }
    let mut next = Some((first, deadline, answer));
    while let Some((read, deadline, answer)) = next.take() {
        let result = read.run(conn, deadline, Mode::InTransaction);
        let failed = result.is_err();
        let _ = answer.send(result);
        if failed {
            break;
        }
        next = reads.recv_timeout(timeout).ok();
    }
    // Read only: ending it changes nothing, it only frees the snapshot. A connection that fails
    // here is dropped by `attempt`, so the next job never finds a transaction left open.
    let end = Instant::now() + timeout;
    let _ = conn.attempt("end a read transaction", end, Mode::InTransaction, |live: Rc<Live>| -> Attempt<'_, _> {
        Box::pin(async move { Ok(live.client.batch_execute("ROLLBACK").await?) })
    });
}

impl KvEngine for PgStore {
    fn read<T>(&self, f: impl FnOnce(&dyn KvRead) -> Result<T>) -> Result<T> {
        f(&Session { pool: &self.pool, reads: OnceCell::new() })
    }

    fn apply(&self, muts: Mutations, durability: Durability) -> Result<()> {
        self.pool.call(move |conn, deadline| apply(conn, deadline, &muts, durability))
    }

    fn apply_checked(&self, write: Checked, durability: Durability) -> Result<Outcome> {
        self.pool.call(move |conn, deadline| apply_checked(conn, deadline, &write, durability))
    }

    /// The database's clock (`clock_timestamp()`): every node judges expiries on the same one.
    fn now_ms(&self) -> Result<u64> {
        self.pool.call(|conn, deadline| {
            conn.attempt("read the clock", deadline, Mode::Own, |live: Rc<Live>| -> Attempt<'_, _> {
                Box::pin(async move {
                    let ms: i64 = live.client.query_one(&live.stmts.now, &[]).await?.try_get(0)?;
                    u64::try_from(ms).map_err(|_| {
                        Failure::Store(StoreError::Engine(format!("postgres: the clock reads {ms} ms, before 1970")))
                    })
                })
            })
        })
    }

    fn stats(&self) -> EngineStats {
        self.pool.stats()
    }
}

/// Mutations as the array parameters of the upsert and the delete.
#[derive(Default)]
struct Rows<'a> {
    put_space: Vec<&'static str>,
    put_key: Vec<&'a [u8]>,
    put_value: Vec<&'a [u8]>,
    del_space: Vec<&'static str>,
    del_key: Vec<&'a [u8]>,
}

impl<'a> Rows<'a> {
    fn of(muts: impl IntoIterator<Item = Mutation<'a>>) -> Self {
        let mut rows = Rows::default();
        for (space, key, value) in muts {
            match value {
                Some(v) => {
                    rows.put_space.push(space.name());
                    rows.put_key.push(key);
                    rows.put_value.push(v);
                }
                None => {
                    rows.del_space.push(space.name());
                    rows.del_key.push(key);
                }
            }
        }
        rows
    }

    fn is_empty(&self) -> bool {
        self.put_key.is_empty() && self.del_key.is_empty()
    }

    /// In the open transaction: every put in one statement, every delete in another (a write
    /// costs the same round trips whatever its number of keys).
    async fn write(&self, c: &Client, stmts: &Stmts) -> std::result::Result<(), Failure> {
        if !self.put_key.is_empty() {
            let puts: [&(dyn ToSql + Sync); 3] = [&self.put_space, &self.put_key, &self.put_value];
            c.execute(&stmts.upsert, &puts).await?;
        }
        if !self.del_key.is_empty() {
            let dels: [(&(dyn ToSql + Sync), Type); 2] =
                [(&self.del_space, Type::TEXT_ARRAY), (&self.del_key, Type::BYTEA_ARRAY)];
            c.query_typed(crate::schema::DELETE, &dels).await?;
        }
        Ok(())
    }
}

/// The `BEGIN` of a plain write transaction of `durability`.
fn begin(conn: &Conn, durability: Durability) -> &'static str {
    match durability {
        Durability::Buffered if conn.async_buffered_commits() => {
            "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL synchronous_commit TO off"
        }
        Durability::Sync | Durability::Buffered => "BEGIN ISOLATION LEVEL SERIALIZABLE",
    }
}

/// The `BEGIN` of a checked write (`apply_checked`): `REPEATABLE READ`, not `SERIALIZABLE`.
/// Its guarantee comes from the row locks of its `FOR UPDATE` check: a row changed by a
/// transaction that committed after this one's snapshot fails the lock with a serialization
/// failure (`40001`, run again), one being changed makes it wait. Under `SERIALIZABLE` the same
/// check also took predicate locks, and PostgreSQL's page-granular predicate locks made the
/// committer's writes (Merkle nodes, receipts) and the lease keeper's renewals, neighbours in
/// one index, abort each other as "pivots" continually: 271 aborts in two minutes and a check
/// knee of ~1,000/s on two nodes (docs/scale-out.md, *Capacity*). An engine that runs
/// `REPEATABLE READ` as `SERIALIZABLE` (CockroachDB by default) is only stricter.
fn begin_checked(conn: &Conn, durability: Durability) -> &'static str {
    match durability {
        Durability::Buffered if conn.async_buffered_commits() => {
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL synchronous_commit TO off"
        }
        Durability::Sync | Durability::Buffered => "BEGIN ISOLATION LEVEL REPEATABLE READ",
    }
}

/// Runs `body` in the transaction just begun: `Ok` as it left it (committed, or rolled back by
/// it), an error rolled back, leaving the connection usable (a broken one is dropped by
/// `attempt`); the transaction then had no effect.
async fn or_roll_back<T>(
    c: &Client,
    body: impl std::future::Future<Output = std::result::Result<T, Failure>>,
) -> std::result::Result<T, Failure> {
    let result = body.await;
    if result.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    result
}

/// One transaction: every put in one statement, every delete in another.
fn apply(conn: &mut Conn, deadline: Instant, muts: &Mutations, durability: Durability) -> Result<()> {
    let rows = Rows::of(muts.iter());
    if rows.is_empty() {
        return Ok(());
    }
    let (begin, rows) = (begin(conn, durability), &rows);
    conn.attempt("apply", deadline, Mode::Own, |live: Rc<Live>| -> Attempt<'_, _> {
        Box::pin(async move {
            let c = &live.client;
            c.batch_execute(begin).await?;
            or_roll_back(c, async {
                rows.write(c, &live.stmts).await?;
                Ok(c.batch_execute("COMMIT").await?)
            })
            .await
        })
    })
}

/// The current values of `write`'s expected keys, locked until the transaction ends, and the
/// plan they make.
async fn check<'w>(
    c: &Client,
    stmts: &Stmts,
    write: &'w Checked,
    expected: &(Vec<&'static str>, Vec<&[u8]>),
) -> std::result::Result<Plan<'w>, Failure> {
    let mut current = BTreeMap::new();
    for row in c.query(&stmts.check, &[&expected.0, &expected.1]).await? {
        let (space, key, value): (String, Vec<u8>, Vec<u8>) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        current.insert((space, key), value);
    }
    write.plan(|space, key| Ok(current.get(&(space.name().to_owned(), key.to_vec())).cloned())).map_err(Failure::Store)
}

/// A checked write (fenced groups, a lease change): one `REPEATABLE READ` transaction (see
/// [`begin_checked`]) that reads the expected keys `FOR UPDATE` and writes the groups whose
/// expectations hold.
///
/// Optimistic, because a fence nearly always holds: the first round writes every group's keys
/// except the expected ones, then checks (so the lock on a workspace's epoch row is held from
/// the check to the commit only, never during the big writes), then writes the expected keys
/// and commits. Only if a group's expectation failed is it rolled back, and a second round
/// checks first, under the lock, and writes exactly the groups that hold.
fn apply_checked(conn: &mut Conn, deadline: Instant, write: &Checked, durability: Durability) -> Result<Outcome> {
    let begin = begin_checked(conn, durability);
    let hook = conn.test_hook();
    let expected: (Vec<&'static str>, Vec<&[u8]>) = write.expected_keys().map(|(s, k)| (s.name(), k)).unzip();
    let unchecked = write.plan_unchecked();
    let unchecked_muts = unchecked.mutations();
    let unexpected = Rows::of(unchecked_muts.iter().copied().filter(|&(s, k, _)| !write.is_expected(s, k)));
    let (hook, expected, unchecked, unexpected) = (&hook, &expected, &unchecked, &unexpected);
    let tries = Cell::new(0u32);
    conn.attempt("apply checked", deadline, Mode::Own, |live: Rc<Live>| -> Attempt<'_, _> {
        let attempt = tries.replace(tries.get() + 1);
        Box::pin(async move {
            let (c, stmts) = (&live.client, &live.stmts);
            c.batch_execute(begin).await?;
            let optimistic = or_roll_back(c, async {
                unexpected.write(c, stmts).await?;
                at(hook, TxPoint::BeforeCheck, attempt);
                let plan = check(c, stmts, write, expected).await?;
                if !plan.same_groups(unchecked) {
                    c.batch_execute("ROLLBACK").await?;
                    return Ok(None);
                }
                let muts = plan.mutations();
                Rows::of(muts.iter().copied().filter(|&(s, k, _)| write.is_expected(s, k))).write(c, stmts).await?;
                at(hook, TxPoint::BeforeCommit, attempt);
                c.batch_execute("COMMIT").await?;
                Ok(Some(plan.into_outcome()))
            })
            .await?;
            if let Some(outcome) = optimistic {
                return Ok(outcome);
            }
            c.batch_execute(begin).await?;
            or_roll_back(c, async {
                let plan = check(c, stmts, write, expected).await?;
                let muts = plan.mutations();
                Rows::of(muts.iter().copied()).write(c, stmts).await?;
                at(hook, TxPoint::BeforeCommit, attempt);
                c.batch_execute("COMMIT").await?;
                Ok(plan.into_outcome())
            })
            .await
        })
    })
}

#[cfg(feature = "test-cluster")]
fn at(hook: &Hook, point: TxPoint, attempt: u32) {
    if let Some(hook) = hook {
        (hook.0)(point, attempt);
    }
}

#[cfg(not(feature = "test-cluster"))]
fn at(_: &Hook, _: TxPoint, _: u32) {}

//! [`PgOptions`]: how many connections, how long to wait, how often to retry.

use std::time::Duration;

/// Settings of a [`PgStore`](crate::PgStore). The defaults suit one Allowly node.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PgOptions {
    /// Connection threads, each holding one connection (opened on first use, reopened after
    /// it broke). A read transaction holds one for its duration; writes and single reads one for
    /// a statement or a transaction.
    pub connections: usize,
    /// Jobs that may wait for a free connection; a caller past it waits for room within its
    /// `timeout`, then gets an error (back pressure, never an unbounded queue).
    pub queue: usize,
    /// The longest one call may take, queueing, connecting, retrying and the database's answer
    /// included; in a read transaction, each read. Past it the caller gets
    /// [`StoreError::Engine`](allowly_store::StoreError::Engine) and the connection that was
    /// working on it is dropped (its statement's fate is the database's: a write past its
    /// deadline is "not acknowledged"). A hung database therefore gives errors, never a hang.
    pub timeout: Duration,
    /// The longest a new connection may take to be set up.
    pub connect_timeout: Duration,
    /// The longest the database lets a write transaction's session sit idle between two of
    /// its statements (`idle_in_transaction_session_timeout`); past it the database ends the
    /// session and the transaction has no effect. A node that stops mid-write (paused,
    /// partitioned, its link hung without being closed) holds that write's row locks, a
    /// lease's epoch row among them, at most this long: without the bound another node's
    /// takeover would wait for it until its TCP connection was found dead (hours, with default
    /// keepalives). Read transactions are not bounded by it (they lock no rows, and a long
    /// export may pause between pages). Zero turns it off.
    pub write_idle_limit: Duration,
    /// How often a transaction that failed with a serialization failure (SQLSTATE 40001) or a
    /// deadlock (40P01) is run again before the error is returned.
    pub serialization_retries: u32,
    /// [`Durability::Buffered`](allowly_store::Durability::Buffered) writes commit with
    /// `SET LOCAL synchronous_commit TO off` (PostgreSQL: committed and visible, but the last
    /// few hundred milliseconds of them can be lost if the *database server* crashes; never in
    /// part). Turn it off for an engine without that setting: every write is then synced.
    pub async_buffered_commits: bool,
    /// Called at each [`TxPoint`] of a checked write (a fenced write, a lease change), on the
    /// connection thread, in the middle of its transaction: a test holds the transaction there
    /// to order it deterministically against another node's.
    #[cfg(feature = "test-cluster")]
    pub test_hook: Option<TestHook>,
}

/// Where a checked write's transaction reaches the test hook (`PgOptions::test_hook`, feature
/// `test-cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPoint {
    /// Its writes of the keys it does not check are done (so its snapshot is taken); the keys
    /// it checks are not read yet.
    BeforeCheck,
    /// The checked keys are read and locked and every write is done; `COMMIT` is next.
    BeforeCommit,
}

/// A [`PgOptions::test_hook`]: told the [`TxPoint`] and the attempt (0 for the first run of
/// the transaction, one more after each serialization failure).
#[cfg(feature = "test-cluster")]
#[derive(Clone)]
pub struct TestHook(pub std::sync::Arc<dyn Fn(TxPoint, u32) + Send + Sync>);

#[cfg(feature = "test-cluster")]
impl std::fmt::Debug for TestHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestHook")
    }
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            connections: 4,
            queue: 1024,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            write_idle_limit: Duration::from_secs(5),
            serialization_retries: 8,
            async_buffered_commits: true,
            #[cfg(feature = "test-cluster")]
            test_hook: None,
        }
    }
}

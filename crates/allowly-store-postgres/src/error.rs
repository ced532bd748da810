//! The database's errors, mapped into [`StoreError`] at this crate's boundary.
//!
//! No error enum of its own, for the reason `allowly-store-rocks` gives: callers reach this
//! crate through the `Store` trait and act on the *kind* (a full device, a failing one,
//! corruption, anything else), which every engine must report alike. Every failure of a write
//! is "not acknowledged": the transaction either committed or not, never in part.

use allowly_store::StoreError;
use tokio_postgres::error::SqlState;

/// Why one attempt at a job failed, before it becomes a [`StoreError`].
#[derive(Debug)]
pub(crate) enum Failure {
    /// The database (or the connection to it) answered with an error.
    Db(tokio_postgres::Error),
    /// A connection could not be opened, whatever the reason (refused, TLS refused or not
    /// offered, a certificate that does not verify, authentication): the database is out of
    /// reach for this store, as when it is down, so `Unavailable` — readiness says why and the
    /// engine's probe retries — not a 500 per request.
    Connect(tokio_postgres::Error),
    /// No answer before the call's deadline; the connection is dropped.
    TimedOut,
    /// Something of ours, already a `StoreError` (a refused schema, a broken read transaction).
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl Failure {
    /// A transaction that lost a serialization conflict (or a deadlock) and may simply be run
    /// again: the database guarantees it had no effect.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Failure::Db(e) if e.code().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        }))
    }

    /// Two stores creating the schema at once: PostgreSQL's `CREATE TABLE IF NOT EXISTS` can
    /// lose the race on a catalog row (23505), the table (42P07) or the table's row type
    /// (42710, "type … already exists": seen in CI with four stores opening at once); running
    /// it again finds the table there.
    pub(crate) fn is_retryable_ddl(&self) -> bool {
        self.is_retryable()
            || matches!(self, Failure::Db(e) if e.code().is_some_and(|c| {
                *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_TABLE || *c == SqlState::DUPLICATE_OBJECT
            }))
    }

    /// `what` names the job ("apply", "scan receipts").
    pub(crate) fn into_store(self, what: &str) -> StoreError {
        match self {
            Failure::Db(e) => db_err(what, &e),
            Failure::Connect(e) => StoreError::Unavailable(format!("postgres: {what}: {}", describe(&e))),
            Failure::TimedOut => StoreError::Unavailable(format!("postgres: {what}: no answer before the deadline")),
            Failure::Store(e) => e,
        }
    }
}

/// A database error as a `StoreError`: a full disk is `NoSpace`, an IO error `Io`, data the
/// database found corrupt `Corrupt`, a database out of reach `Unavailable` (a closed connection
/// or a socket error: refused, reset, lost; or the server's own "connection exception" and
/// "shutting down / starting up" codes), everything else (conflicts retried too often, a
/// statement refused, a value that does not convert) `Engine`.
pub(crate) fn db_err(what: &str, e: &tokio_postgres::Error) -> StoreError {
    let text = describe(e);
    let lost = e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if lost || e.code().is_some_and(out_of_reach) {
        return StoreError::Unavailable(format!("postgres: {what}: {text}"));
    }
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => StoreError::NoSpace(format!("postgres: {what}: {text}")),
        Some(c) if *c == SqlState::IO_ERROR => StoreError::Io(format!("postgres: {what}: {text}")),
        Some(c) if *c == SqlState::DATA_CORRUPTED || *c == SqlState::INDEX_CORRUPTED => {
            StoreError::Corrupt { space: "postgres", key: String::new(), reason: format!("{what}: {text}") }
        }
        _ => StoreError::Engine(format!("postgres: {what}: {text}")),
    }
}

/// SQLSTATEs that mean the database is (for now) out of reach: class 08 (connection
/// exception) and the server shutting down, crashed or still starting (57P01–57P03).
fn out_of_reach(c: &SqlState) -> bool {
    c.code().starts_with("08")
        || *c == SqlState::ADMIN_SHUTDOWN
        || *c == SqlState::CRASH_SHUTDOWN
        || *c == SqlState::CANNOT_CONNECT_NOW
}

/// The server's message and SQLSTATE when it sent one, else the client's error and its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => allowly_tls::error_chain(e),
    }
}

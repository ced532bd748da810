//! The crate's one error type. No engine type appears in it: an engine's error is carried as
//! text, so a networked implementation can report through the same enum.

/// Everything a [`Store`](crate::Store) call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An id is not 1..=128 of `[A-Za-z0-9_-]`. Checked on every write *and* read, because the
    /// key layout relies on ids never containing the 0x00 separator (tenant isolation).
    /// `id` is truncated to 128 characters.
    #[error("invalid {field}: {id:?} is not 1..=128 of [A-Za-z0-9_-]")]
    InvalidId { field: &'static str, id: String },
    /// A write op that is not coherent on its own (a receipt with `seq` but no authorization,
    /// a body that is not UTF-8 text). Nothing of the batch was written.
    #[error("invalid op: {0}")]
    InvalidOp(String),
    /// A write op refers to stored data that does not exist. Nothing of the batch was written.
    #[error("{what} not found: {key}")]
    NotFound { what: &'static str, key: String },
    /// Stored bytes that do not decode, or that contradict their key (a receipt filed under
    /// another workspace, an index entry pointing at nothing), or corruption the engine detected
    /// itself. Never papered over: the caller decides (usually: refuse and alert).
    #[error("corrupt data in {space} at {key}: {reason}")]
    Corrupt { space: &'static str, key: String, reason: String },
    /// The storage engine failed (IO error, shutdown, busy); the message is the engine's own.
    /// A write that fails this way is *unacknowledged*, not known to be absent: e.g. a failed
    /// fsync may leave the batch applied but not durable. It is never applied in part.
    #[error("storage engine: {0}")]
    Engine(String),
    /// The device is full (ENOSPC). Unacknowledged like [`StoreError::Engine`]; an embedded
    /// engine may refuse every later write until it is reopened (RocksDB does after a failed
    /// WAL write).
    #[error("storage device full: {0}")]
    NoSpace(String),
    /// The device failed a read, write or sync (EIO and the like). Unacknowledged like
    /// [`StoreError::Engine`]; an embedded engine may refuse every later write until reopened.
    #[error("storage device error: {0}")]
    Io(String),
    /// A networked store could not be reached or did not answer in time (its server down or
    /// restarting, the connection refused or lost). Unacknowledged like [`StoreError::Engine`];
    /// the next call tries again, so the service resumes by itself once the store answers.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The write carried a fence (`Op::Fence`) whose epoch is no longer the workspace's lease
    /// epoch, or a lease was renewed or released with an epoch (or by a node) that no longer
    /// holds it: another node took the workspace over (`current_epoch` is its epoch, 0 when the
    /// workspace was never leased). Nothing of the batch (the group, in `write_groups`) was
    /// written; the caller no longer owns the workspace and must not retry with that epoch.
    #[error(
        "workspace {workspace_id} is fenced: the caller does not hold its lease at the current epoch ({current_epoch})"
    )]
    Fenced { workspace_id: String, current_epoch: u64 },
}

impl StoreError {
    pub(crate) fn corrupt(space: &'static str, key: &[u8], reason: impl std::fmt::Display) -> Self {
        Self::Corrupt { space, key: display_key(key), reason: reason.to_string() }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A key rendered for error messages (ids are printable ASCII; integers show as `\xNN`).
pub(crate) fn display_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

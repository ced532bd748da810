//! The signer's one error type. Mapped to a wire `ErrorCode` in exactly one place
//! ([`SignerError::code`]); nothing else decides what a caller is told.

use allowly_signer_proto::ErrorCode;

/// Everything that can go wrong inside the signer.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// An `ImportKeys` record this signer will not install (see `keystore::KeyStore::import`);
    /// nothing was written. The text names what is wrong (public data only).
    #[error("key record refused: {0}")]
    KeyRecordRefused(String),
    /// An `Adopt` this signer refuses (see [`crate::adopt`]): `reason` from a closed set (the
    /// metric's label), `current` the signer's log size. Nothing was written; counted as a fork
    /// attempt and audited.
    #[error("adopt refused ({reason}): {detail}")]
    AdoptRefused { reason: &'static str, detail: String, current: u64 },
    /// The workspace has no key (yet).
    #[error("unknown workspace")]
    UnknownWorkspace,
    /// `CreateKey` for a workspace that has one.
    #[error("workspace already has a key")]
    WorkspaceExists,
    /// A caller asked to append at a size that is not the log's: a fork, a rollback or a stale
    /// caller. Refused, counted and written to the audit log.
    #[error("log has {current} leaves, caller expected {expected}")]
    SizeMismatch { expected: u64, current: u64 },
    /// An appended body is not a receipt the signer may sign (see [`crate::check`]): the whole
    /// batch is refused, counted and written to the audit log.
    #[error("receipt refused at log index {index}: {reason}")]
    ReceiptRefused { index: u64, reason: String },
    /// The workspace's queue is at a cap (`limit`: `workspace_requests` or `workspace_bytes`);
    /// nothing was done. Back pressure: the caller retries after a pause.
    #[error("the workspace's queue in the signer is at its cap ({limit}); nothing was done, retry later")]
    Busy { limit: &'static str },
    /// Something about the request is wrong (e.g. a bad workspace id).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The master key is unusable (missing, wrong permissions, wrong length).
    #[error("master key: {0}")]
    MasterKey(String),
    /// The PKCS#11 PIN is unusable (missing, wrong permissions of its file, empty, too long).
    /// Never carries the PIN itself.
    #[error("PKCS#11 PIN: {0}")]
    Pin(String),
    /// The PKCS#11 module or token failed or refused an operation (`op`: what the signer was
    /// doing, `detail`: the module's return value or why the token is unfit). Nothing was
    /// signed; at start the signer refuses to run. Told to the caller as `TokenUnavailable`.
    #[error("PKCS#11 token: {op}: {detail}")]
    Token { op: &'static str, detail: String },
    /// A workspace key was made by the other key backend (a sealed file key on a PKCS#11
    /// signer, or the reverse) and this signer does not open that backend as its previous one:
    /// refused rather than guessed around. Told to the caller as `KeyStoreNotOpen`, with this
    /// text (public data only: ids and key store kinds).
    #[error("key {key_id} of {workspace} is kept by the {stored} key store, which this signer does not open (it serves {serving} keys; start it with --previous-keystore {stored})")]
    WrongKeyBackend { workspace: String, key_id: String, stored: &'static str, serving: &'static str },
    /// A stored key or log state failed its integrity check: refuse rather than guess.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    /// Filesystem failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The journal or the audit log could not be written or synced (disk full, device error):
    /// the new log state is not durable, so nothing of the request was signed out. Told to the
    /// caller as `StorageFailed`, so the service can fail closed and say why.
    #[error("storage: {0}")]
    Storage(std::io::Error),
    /// Receipt-format failure (should not happen for data the signer built itself).
    #[error("receipt format: {0}")]
    Receipt(#[from] allowly_receipt::Error),
    /// Key memory could not be locked (`mlock`) and `--require-mlock` is set; names what it was
    /// (`master key`, or a workspace key's `create`, `rotate` or `load`).
    #[error("key memory could not be locked ({0}) and --require-mlock is set")]
    MemoryLock(&'static str),
    /// The workspace actor is gone (shutting down).
    #[error("workspace actor unavailable")]
    ActorGone,
    /// An audit log line (1-based) that is not a chained line ([`crate::audit::verify_chain`]).
    #[error("line {line} is not a JSON object with a \"prev\" member of 64 lowercase hex digits: written before the audit chain existed, or edited")]
    AuditUnreadable { line: u64 },
    /// The audit log's first line does not start the chain.
    #[error("line 1 does not start the chain (its prev is not {genesis}): lines before it were deleted", genesis = hex::encode(crate::audit::GENESIS))]
    AuditBadStart,
    /// An audit log line whose `prev` is not the hash of the line before it.
    #[error("line {line}'s prev is not the hash of line {prev_line}: a line was deleted, inserted or reordered there, or line {prev_line} was edited")]
    AuditBroken { line: u64, prev_line: u64 },
    /// The audit log's last line has no newline.
    #[error("the last line ({line}) has no newline: a torn write (the signer cuts it at start) or an edit")]
    AuditTorn { line: u64 },
    /// No audit log line has the head hash recorded earlier.
    #[error("no line has the recorded head hash {head}: lines were removed from the end, or the log was rewritten")]
    AuditHeadMissing { head: String },
}

impl SignerError {
    /// The wire code a caller sees. Internal details stay in the signer's log.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownWorkspace => ErrorCode::UnknownWorkspace,
            Self::WorkspaceExists => ErrorCode::WorkspaceExists,
            Self::SizeMismatch { .. } => ErrorCode::SizeMismatch,
            Self::ReceiptRefused { .. } => ErrorCode::ReceiptRefused,
            Self::Busy { .. } => ErrorCode::Busy,
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::KeyRecordRefused(_) => ErrorCode::KeyRecordRefused,
            Self::AdoptRefused { .. } => ErrorCode::AdoptRefused,
            Self::Storage(_) => ErrorCode::StorageFailed,
            // Said apart: the operator's fix (the signer's key stores) is not a fault's.
            Self::WrongKeyBackend { .. } => ErrorCode::KeyStoreNotOpen,
            // Said apart from internal errors: the token (or a key object on it) failed, nothing
            // was signed, and the signer looks for it again by itself, so the caller can fail
            // closed and retry rather than report a bug.
            Self::Token { .. } => ErrorCode::TokenUnavailable,
            Self::MasterKey(_)
            | Self::Pin(_)
            | Self::MemoryLock(_)
            | Self::Corrupt(_)
            | Self::Io(_)
            | Self::Receipt(_)
            | Self::ActorGone
            // Only `allowly-signer audit verify` meets these; never a request's answer.
            | Self::AuditUnreadable { .. }
            | Self::AuditBadStart
            | Self::AuditBroken { .. }
            | Self::AuditTorn { .. }
            | Self::AuditHeadMissing { .. } => ErrorCode::Internal,
        }
    }

    /// An error of the same class (so the same wire code) without its details, for each of the
    /// requests a failure met together (one signature over several appends): the error is not
    /// `Clone`, and its details are logged once where it happened.
    pub fn class_again(&self) -> SignerError {
        match self {
            Self::Storage(_) => Self::Storage(std::io::Error::other("signing failed")),
            Self::Token { op, .. } => Self::Token { op, detail: "signing failed".into() },
            _ => Self::Io(std::io::Error::other("signing failed")),
        }
    }

    /// The message a caller sees: specific for caller mistakes, generic for internal failures
    /// (paths and OS errors are for the operator's log, not the network).
    pub fn public_message(&self) -> String {
        match self.code() {
            // The module's words and the key's object id are for the operator's log.
            ErrorCode::TokenUnavailable => {
                "the signer's PKCS#11 token is unavailable (see the signer's log)".to_owned()
            }
            ErrorCode::Internal => "internal signer error (see the signer's log)".to_owned(),
            ErrorCode::StorageFailed => "the signer's journal could not be written (see the signer's log)".to_owned(),
            _ => self.to_string(),
        }
    }
}

/// Shorthand.
pub type Result<T, E = SignerError> = std::result::Result<T, E>;

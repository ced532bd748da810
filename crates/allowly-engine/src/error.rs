//! The engine's one error enum. Each variant has a stable `code()` so the server can map it to
//! HTTP (status, problem `code`) in one place without looking inside messages.

use allowly_signer_proto::client::ClientError;
use allowly_store::StoreError;

/// Everything an engine call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The object does not exist *in the caller's workspace* (another workspace's object is
    /// reported exactly like a missing one).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// A request field is malformed or out of range; nothing was changed.
    #[error("invalid {field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// The request conflicts with the object's state (e.g. revoking a revoked authorization);
    /// nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A confirmation or escalation step that cannot happen (unknown, already used or resolved,
    /// expired), or a webhook delivery retry that cannot (`delivery_in_progress`,
    /// `webhook_disabled`, `webhook_not_found`). `code` is the stable problem code (`*_not_found`
    /// → 404, `*_expired` → 410, else 409); `receipt` is set when the attempt was recorded in the
    /// authorization's trail (used or expired: the trail must show it).
    #[error("{message}")]
    Refused { code: &'static str, message: String, receipt: Option<Box<allowly_receipt::types::PendingReceipt>> },
    /// An `Idempotency-Key` was used before with a different request. Nothing was changed.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// The workspace's bounded queue is full; retry after a short delay. Nothing was changed.
    #[error("workspace is overloaded; retry later")]
    Overloaded,
    /// The signer cannot be reached (or does not answer in time): decisions fail closed.
    /// Nothing was changed.
    #[error("signer unavailable: {0}")]
    SignerUnavailable(String),
    /// The workspace's stored receipt log and the signer's log disagree (a fork, a rollback, or
    /// receipts the signer refuses): the workspace refuses every call that would record a
    /// receipt until an operator resyncs it (`Engine::resync_log`). Reads still work; other
    /// workspaces are not affected. Nothing was changed.
    #[error("this workspace's receipt log disagrees with the signer's; new receipts are refused until it is resynced")]
    WorkspaceLogDiverged,
    /// The engine is shutting down and takes no new work.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// The store failed. For writes: the outcome is unknown to the caller (not acknowledged).
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The signer answered, but with an error that is not an outage (a bug or a refused fork).
    #[error("signer: {0}")]
    Signer(String),
    /// An internal invariant failed (logged with detail; never expected).
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Stable machine-readable code (the problem+json `code` the server sends).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Invalid { .. } => "invalid_request",
            Self::Conflict(_) => "conflict",
            Self::Refused { code, .. } => code,
            Self::IdempotencyMismatch => "idempotency_key_reused",
            Self::Overloaded => "overloaded",
            Self::SignerUnavailable(_) => "signer_unavailable",
            Self::WorkspaceLogDiverged => "workspace_log_diverged",
            Self::ShuttingDown => "shutting_down",
            Self::Store(_) => "storage_error",
            Self::Signer(_) => "signer_error",
            Self::Internal(_) => "internal_error",
        }
    }

    /// A refused step that left nothing in the trail.
    pub(crate) fn refused(code: &'static str, message: &str) -> Self {
        Self::Refused { code, message: message.to_owned(), receipt: None }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }

    /// Classifies a signer client error: outages (no connection, no answer in time) versus
    /// answers that are errors. A busy signer is *not* an outage: it answers, so the caller
    /// backs off and retries, and checks keep being decided (a busy signer never fails the
    /// instance closed).
    pub(crate) fn from_signer(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. }
            | ClientError::Unavailable { .. }
            | ClientError::Disconnected
            | ClientError::Timeout(_) => Self::SignerUnavailable(e.to_string()),
            other => Self::Signer(other.to_string()),
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

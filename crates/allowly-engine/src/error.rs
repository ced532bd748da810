//! The engine's one error enum. Each variant has a stable `code()` so the server can map it to
//! HTTP (status, problem `code`) in one place without looking inside messages.

use allowly_signer_proto::client::ClientError;
use allowly_signer_proto::ErrorCode;
use allowly_store::StoreError;

use crate::fault::Fault;

/// Everything an engine call can fail with.
/// What sort of refusal an [`EngineError::Refused`] is; the edge maps each to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The thing the step names does not exist for this caller (404).
    NotFound,
    /// The request names something it may not (a webhook destination outside policy: 400).
    NotAllowed,
    /// Its time is over (410).
    Expired,
    /// The thing is in a state where the step cannot happen (already used or resolved, still
    /// pending, disabled: 409).
    Conflict,
}

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
    /// `webhook_disabled`, `webhook_not_found`). `code` is the stable problem code, `kind` what
    /// sort of refusal it is (and so its HTTP status, chosen at the edge from the kind, never
    /// from the code's spelling); `receipt` is set when the attempt was recorded in the
    /// authorization's trail (used or expired: the trail must show it).
    #[error("{message}")]
    Refused {
        kind: Refusal,
        code: &'static str,
        message: String,
        receipt: Option<Box<allowly_receipt::types::PendingReceipt<allowly_receipt::types::RawBody>>>,
    },
    /// An `Idempotency-Key` was used before with a different request. Nothing was changed.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// The workspace's bounded queue is full — the engine's, or the signer's for this workspace
    /// (it answered `Busy`) —; retry after a short delay. Nothing was changed. Back pressure:
    /// never a sign that the signer is down, so it never fails anything closed.
    #[error("workspace is overloaded; retry later")]
    Overloaded,
    /// In a cluster: another node owns the workspace (holds its lease) and sequences it; the
    /// request belongs there (the server forwards it to `address`). Nothing was changed.
    #[error("workspace is owned by node {node_id}")]
    NotOwner { node_id: String, address: String },
    /// The signer cannot be reached (or does not answer in time): decisions fail closed.
    /// Nothing was changed.
    #[error("signer unavailable: {0}")]
    SignerUnavailable(String),
    /// The signer answers (pings) but did not answer a signing exchange within
    /// `--signer-timeout-ms`: there, but too slow to sign (its journal's volume is slow or
    /// stalled, or its host overloaded). Decisions fail closed as for `SignerUnavailable`;
    /// nothing was changed. Known once a ping answered after the exchange failed (the probe
    /// pings every half second): before that the outage is `SignerUnavailable`.
    #[error("signer too slow: {0}")]
    SignerSlow(String),
    /// A fault below the process (a full or failing data volume, a signer that cannot write
    /// its journal, signing too far behind) fails the engine closed. Nothing was changed;
    /// retry once it clears (it clears by itself when its cause does). `detail` is for the log.
    #[error("{}: {detail}", fault.code())]
    Unavailable { fault: Fault, detail: String },
    /// The workspace's stored receipt log and the signer's log disagree (a fork, a rollback, or
    /// receipts the signer refuses): the workspace refuses every call that would record a
    /// receipt until an operator resyncs it (`Engine::resync_log`). Reads still work; other
    /// workspaces are not affected. Nothing was changed.
    #[error("this workspace's receipt log disagrees with the signer's; new receipts are refused until it is resynced")]
    WorkspaceLogDiverged,
    /// The signer has signed more of this workspace's log than the store holds: receipts that
    /// were handed out are missing (a store restored from a backup older than the signer's
    /// state). Nothing new is recorded; the store must be restored from a newer backup. Found
    /// at start-up (`/readyz` not ready).
    #[error("this workspace's signer has signed receipts this store does not hold (restored from an older backup?); new receipts are refused")]
    WorkspaceLogBehindSigner,
    /// The signer's log of this workspace is being caught up with the stored one after a
    /// restore (found at start); new receipts wait until it is. Passes by itself.
    #[error("this workspace's signer is being caught up with the stored log (after a restore); retry shortly")]
    WorkspaceLogCatchingUp,
    /// The signer keeps this workspace's active key in a key store it does not open (sealed
    /// files while it serves a token without the files as its previous store, or the reverse):
    /// nothing can be signed for it until an operator changes the signer's key stores. Does not
    /// pass by itself. The signer's own words (ids and key store kinds) are for the log.
    #[error("this workspace's signing key is in a key store the signer does not open; nothing was changed. An operator must start the signer with that key store as its previous one (--signer-previous-keystore)")]
    WorkspaceKeyStoreNotOpen(String),
    /// The signer's PKCS#11 token failed the operation (it is gone, a session or `C_Sign`
    /// failed, or the workspace's key object is missing from it): nothing was signed, the
    /// signer fails closed and looks for the token again by itself. Passes when it does, so the
    /// caller retries after a pause. The signer's words are for the log.
    #[error("the signer's key token is unavailable; nothing was signed or changed, retry later")]
    SignerTokenUnavailable(String),
    /// The request was not answered within `--commit-timeout-ms`: it waited that long for its
    /// workspace's queue and for the synced write holding its effects (a slow or stalled data
    /// volume). Its outcome is *unknown*: a request still queued is dropped undecided, but one
    /// already decided may still become durable. A retry with the same `Idempotency-Key` gets
    /// the outcome (the first answer if it became durable, else a new decision), never a
    /// second effect.
    #[error("not confirmed durable within the commit timeout ({waited_ms} ms); the outcome is unknown: retry with the same Idempotency-Key")]
    CommitTimeout { waited_ms: u64 },
    /// A store read was not done within `--commit-timeout-ms` (a slow or stalled data volume),
    /// or too many reads are already waiting for the volume. Nothing was changed; retry
    /// shortly. The detail says which.
    #[error("{0}")]
    ReadTimeout(String),
    /// As many long-polls wait already as the engine keeps (`watchers::MAX_WAITERS`); retry
    /// shortly. Nothing was changed.
    #[error("too many long-polls are waiting; retry shortly")]
    TooManyWaiters,
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
            Self::NotOwner { .. } => "workspace_owned_elsewhere",
            Self::TooManyWaiters => "too_many_long_polls",
            Self::SignerUnavailable(_) => "signer_unavailable",
            Self::SignerSlow(_) => "signer_slow",
            Self::WorkspaceLogDiverged => "workspace_log_diverged",
            Self::WorkspaceLogBehindSigner => "workspace_log_behind_signer",
            Self::WorkspaceLogCatchingUp => "workspace_log_catching_up",
            Self::WorkspaceKeyStoreNotOpen(_) => "workspace_key_store_not_open",
            Self::SignerTokenUnavailable(_) => "signer_token_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::CommitTimeout { .. } => "commit_timeout",
            Self::ReadTimeout(_) => "read_timeout",
            Self::Unavailable { fault, .. } => fault.code(),
            Self::Store(StoreError::Fenced { .. }) => "workspace_owned_elsewhere",
            Self::Store(e) => Fault::of_store_error(e).map_or("storage_error", Fault::code),
            Self::Signer(_) => "signer_error",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The fault this error stands for: an [`EngineError::Unavailable`], or a store write that
    /// failed because the device is full or failing (the health task raises the fault too).
    pub fn fault(&self) -> Option<Fault> {
        match self {
            Self::Unavailable { fault, .. } => Some(*fault),
            Self::Store(e) => Fault::of_store_error(e),
            _ => None,
        }
    }

    /// A refused step that left nothing in the trail.
    pub(crate) fn refused(kind: Refusal, code: &'static str, message: &str) -> Self {
        Self::Refused { kind, code, message: message.to_owned(), receipt: None }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }

    /// Classifies a signer client error: outages (no connection, no answer in time) versus
    /// answers that are errors. A busy signer (`Busy`: its queue for the workspace is over its
    /// cap) is *not* an outage but back pressure, [`EngineError::Overloaded`]: it answers, so
    /// the caller backs off and retries, and checks keep being decided (a busy signer never
    /// fails the instance closed). A signer that answers that it cannot make its journal durable
    /// (`StorageFailed`) is [`Fault::SignerStorageFailed`]: nothing was signed, retry later. A
    /// token that failed (`TokenUnavailable`) is [`EngineError::SignerTokenUnavailable`], not an
    /// outage of the whole signer: it answers, and one workspace's key may be all that is gone.
    pub(crate) fn from_signer(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. }
            | ClientError::Unavailable { .. }
            | ClientError::Disconnected
            | ClientError::Timeout(_) => Self::SignerUnavailable(e.to_string()),
            ClientError::Busy => Self::Overloaded,
            ClientError::Remote(ref reply) if reply.code == ErrorCode::StorageFailed => {
                Self::Unavailable { fault: Fault::SignerStorageFailed, detail: e.to_string() }
            }
            ClientError::Remote(ref reply) if reply.code == ErrorCode::KeyStoreNotOpen => {
                Self::WorkspaceKeyStoreNotOpen(reply.message.clone())
            }
            ClientError::Remote(ref reply) if reply.code == ErrorCode::TokenUnavailable => {
                Self::SignerTokenUnavailable(reply.message.clone())
            }
            other => Self::Signer(other.to_string()),
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use allowly_signer_proto::ErrorReply;

    fn remote(code: ErrorCode) -> ClientError {
        ClientError::Remote(ErrorReply { code, message: "m".into(), current_size: None })
    }

    #[test]
    fn signer_errors_are_classified_by_kind_not_text() {
        let check = |e: ClientError, code: &str, fault: Option<Fault>| {
            let e = EngineError::from_signer(e);
            assert_eq!((e.code(), e.fault()), (code, fault), "{e:?}");
        };
        check(remote(ErrorCode::StorageFailed), "signer_storage_failed", Some(Fault::SignerStorageFailed));
        check(remote(ErrorCode::Internal), "signer_error", None);
        check(remote(ErrorCode::KeyStoreNotOpen), "workspace_key_store_not_open", None);
        check(remote(ErrorCode::TokenUnavailable), "signer_token_unavailable", None);
        check(ClientError::Disconnected, "signer_unavailable", None);
        check(ClientError::Timeout(std::time::Duration::from_secs(2)), "signer_unavailable", None);
        check(ClientError::Busy, "overloaded", None);
    }

    #[test]
    fn device_failures_of_the_store_are_faults() {
        let check = |e: StoreError, code: &str, fault: Option<Fault>| {
            let e = EngineError::Store(e);
            assert_eq!((e.code(), e.fault()), (code, fault), "{e:?}");
        };
        check(StoreError::NoSpace("ENOSPC".into()), "storage_full", Some(Fault::StorageFull));
        check(StoreError::Io("EIO".into()), "storage_failed", Some(Fault::StorageFailed));
        check(StoreError::Engine("busy".into()), "storage_error", None);
        let e = EngineError::Unavailable { fault: Fault::SigningBacklog, detail: "d".into() };
        assert_eq!((e.code(), e.fault()), ("signing_backlog", Some(Fault::SigningBacklog)));
    }
}

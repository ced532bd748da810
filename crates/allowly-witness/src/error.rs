//! The one error type of the witness. Request errors map to the HTTP status the C2SP
//! tlog-witness spec (<https://c2sp.org/tlog-witness>, "add-checkpoint") prescribes, and to a
//! closed metric label, here and nowhere else ([`Error::status`], [`Error::label`]).

use http::StatusCode;

/// What went wrong, at start-up or with one request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request body is not `old <size>\n`, ≤ 63 base64 hash lines, a blank line and a
    /// signed checkpoint; or the old size is above the checkpoint's size (spec: 400).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The body is larger than the witness reads.
    #[error("request body exceeds {max} bytes")]
    TooLarge { max: usize },
    /// The checkpoint's origin is not a log of the config (spec: 404).
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    /// No signature by a key of the log verifies, or one by a key of the log does not (spec: 403).
    #[error("checkpoint signature: {0}")]
    Forbidden(allowly_receipt::Error),
    /// `old` is not the size the witness last cosigned (spec: 409, the body is that size).
    #[error("old size {old} is not the last cosigned size {size}")]
    OldSizeMismatch { old: u64, size: u64 },
    /// Same size as the last cosigned checkpoint, another root: a fork (spec: 409).
    #[error("fork: tree size {size} was cosigned with another root")]
    Fork { size: u64 },
    /// The consistency proof from the last cosigned checkpoint does not verify (spec: 422).
    #[error("consistency proof: {0}")]
    BadProof(allowly_receipt::Error),
    /// A route or method the witness does not serve.
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The state could not be written: nothing was cosigned (500).
    #[error("state: {0}")]
    Io(#[from] std::io::Error),
    /// A broken invariant (a poisoned lock after a panic): refuse rather than guess (500).
    #[error("internal: {0}")]
    Internal(&'static str),
    /// Start-up: the config, key or state files are unusable.
    #[error("{0}")]
    Setup(String),
}

impl Error {
    /// The HTTP status of a request that failed with this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownLog(_) | Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::OldSizeMismatch { .. } | Self::Fork { .. } => StatusCode::CONFLICT,
            Self::BadProof(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Io(_) | Self::Internal(_) | Self::Setup(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `outcome` label of `allowly_witness_requests_total` (a closed set, see metrics.rs).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::UnknownLog(_) => "unknown_log",
            Self::Forbidden(_) => "bad_signature",
            Self::OldSizeMismatch { .. } => "old_size_mismatch",
            Self::Fork { .. } => "fork",
            Self::BadProof(_) => "bad_proof",
            Self::NotFound | Self::MethodNotAllowed => "not_found",
            Self::Io(_) | Self::Internal(_) | Self::Setup(_) => "internal",
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

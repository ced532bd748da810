//! Error codes carried on the wire and the crate's one error type.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::MAX_FRAME;

/// Error code of an [`ErrorReply`](crate::ErrorReply), a `u16` on the wire.
///
/// Unknown values decode to [`ErrorCode::Unknown`] instead of failing, so a
/// newer signer can add codes without breaking older clients.
/// [`ErrorCode::from_u16`] is the only canonical constructor: `Unknown(n)`
/// with a known `n` (e.g. `Unknown(1)`) encodes as `n` and decodes as the
/// named variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the frame could not be parsed (truncated, trailing bytes, bad UTF-8, bad tag, ...).
    BadFrame,
    /// 2: the header's version byte is not [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    UnsupportedVersion,
    /// 3: the header's kind byte names no known request.
    UnknownKind,
    /// 4: the workspace has no signing key yet.
    UnknownWorkspace,
    /// 5: `CreateKey` for a workspace that already has a key.
    WorkspaceExists,
    /// 6: `AppendBatch.expected_size` differs from the log's size (fork, rollback
    /// or stale caller); `current_size` is set.
    SizeMismatch,
    /// 7: more than [`MAX_BATCH_LEAVES`](crate::MAX_BATCH_LEAVES) leaves.
    BatchTooLarge,
    /// 8: the workspace's queue in the signer is over its cap (requests or bytes); nothing
    /// was done. Back pressure, not an outage: retry after a pause.
    Busy,
    /// 9: internal signer failure.
    Internal,
    /// 10: a well-formed but invalid argument (bad workspace id, empty batch).
    InvalidArgument,
    /// 11: the caller may not perform this operation.
    PermissionDenied,
    /// 12: the signer could not make the new log state durable (its journal or audit log
    /// failed to write or sync: disk full, device error). Nothing was signed out; the request
    /// may be retried once the signer's storage works again.
    StorageFailed,
    /// 13 (version 3): an `AppendBatch` body is not a well-formed receipt body of that
    /// workspace at its index with a time that does not go backwards; the whole batch is
    /// refused and nothing is signed. Never retried by a correct caller: its log is wrong.
    ReceiptRefused,
    /// 14: the workspace's active key is kept by a key store this signer does not open (a
    /// sealed-file key on a signer serving a PKCS#11 token without the files as its previous
    /// store, or the reverse). Nothing was done; the signer's configuration must change, so a
    /// retry alone does not help. An older client sees `Unknown(14)`.
    KeyStoreNotOpen,
    /// 15: the signer's PKCS#11 token failed the operation (a `C_Sign` or session failure, the
    /// token gone, a recorded key object missing from it). Nothing was signed: the signer fails
    /// closed, and it looks for the token (or the key) again by itself, so the request may be
    /// retried after a pause. An older client sees `Unknown(15)`.
    TokenUnavailable,
    /// 16: an `ImportKeys` record was refused: it does not parse, names another workspace, a
    /// sealed seed does not open under this signer's master key for this workspace and key id
    /// (or a token object is missing), a public key does not match its private half, the
    /// validity windows are inconsistent, or it would drop or change a key the signer already
    /// has. Nothing was written. An older client sees `Unknown(16)`.
    KeyRecordRefused,
    /// 17: an `Adopt` was refused: the note is not signed by a key of the workspace this
    /// signer holds (valid at its time), the peaks do not hash to its root, or it does not
    /// extend what the signer itself signed (same size, other root; or a consistency proof
    /// that does not prove it). `current_size` is the signer's log size. Nothing was written;
    /// counted as a fork attempt and audited. An older client sees `Unknown(17)`.
    AdoptRefused,
    /// Any other value, kept verbatim.
    Unknown(u16),
}

impl ErrorCode {
    /// Decodes a wire value; never fails.
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::BadFrame,
            2 => Self::UnsupportedVersion,
            3 => Self::UnknownKind,
            4 => Self::UnknownWorkspace,
            5 => Self::WorkspaceExists,
            6 => Self::SizeMismatch,
            7 => Self::BatchTooLarge,
            8 => Self::Busy,
            9 => Self::Internal,
            10 => Self::InvalidArgument,
            11 => Self::PermissionDenied,
            12 => Self::StorageFailed,
            13 => Self::ReceiptRefused,
            14 => Self::KeyStoreNotOpen,
            15 => Self::TokenUnavailable,
            16 => Self::KeyRecordRefused,
            17 => Self::AdoptRefused,
            other => Self::Unknown(other),
        }
    }

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        match self {
            Self::BadFrame => 1,
            Self::UnsupportedVersion => 2,
            Self::UnknownKind => 3,
            Self::UnknownWorkspace => 4,
            Self::WorkspaceExists => 5,
            Self::SizeMismatch => 6,
            Self::BatchTooLarge => 7,
            Self::Busy => 8,
            Self::Internal => 9,
            Self::InvalidArgument => 10,
            Self::PermissionDenied => 11,
            Self::StorageFailed => 12,
            Self::ReceiptRefused => 13,
            Self::KeyStoreNotOpen => 14,
            Self::TokenUnavailable => 15,
            Self::KeyRecordRefused => 16,
            Self::AdoptRefused => 17,
            Self::Unknown(v) => v,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(v) => write!(f, "Unknown({v})"),
            named => write!(f, "{named:?}({})", named.as_u16()),
        }
    }
}

/// Everything that can go wrong while encoding, decoding, reading or writing
/// frames, and in a [`SignerClient`](crate::client::SignerClient) call (the
/// variants from `Connect` on; the client calls it
/// [`ClientError`](crate::client::ClientError)). The crate's one error type.
///
/// A signer that fails to decode a request answers with
/// `ErrorReply { code: err.code(), message: err.to_string(), .. }` to
/// `err.request_id()` when that is `Some`. When it is `None` the header was
/// unreadable (or the stream itself failed) and no reply can be addressed;
/// the signer should close the connection.
///
/// Encoding enforces the same constraints as decoding (with the same
/// variants), so any message that encodes successfully decodes back to
/// itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The underlying stream failed, or ended inside a frame
    /// (`UnexpectedEof`).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A length prefix (or a whole frame) outside `1..=MAX_FRAME`.
    #[error("frame length {len} is outside 1..={MAX_FRAME}")]
    FrameLength {
        /// The offending length in bytes (excluding the 4-byte prefix).
        len: u64,
    },
    /// The frame is shorter than the 10-byte header, so not even the request
    /// id can be read.
    #[error("frame of {len} bytes is shorter than the 10-byte header")]
    ShortHeader {
        /// The frame's length.
        len: usize,
    },
    /// The version byte is not [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    #[error("request {request_id}: unsupported protocol version {version}")]
    UnsupportedVersion {
        /// Request id from the header.
        request_id: u64,
        /// The version byte received.
        version: u8,
    },
    /// The kind byte names no message of the expected direction.
    #[error("request {request_id}: unknown message kind {kind:#04x}")]
    UnknownKind {
        /// Request id from the header.
        request_id: u64,
        /// The kind byte received.
        kind: u8,
    },
    /// The body ended before `field` was complete.
    #[error("request {request_id}: frame truncated in `{field}`")]
    Truncated {
        /// Request id from the header.
        request_id: u64,
        /// The field being read.
        field: &'static str,
    },
    /// Bytes remained after the body was fully decoded.
    #[error("request {request_id}: {count} trailing bytes after the body")]
    TrailingBytes {
        /// Request id from the header.
        request_id: u64,
        /// How many bytes remained.
        count: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("request {request_id}: `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Request id from the header.
        request_id: u64,
        /// The field.
        field: &'static str,
    },
    /// A length or count exceeds that field's fixed maximum.
    #[error("request {request_id}: `{field}` has length {len}, above the maximum {max}")]
    TooLong {
        /// Request id from the header.
        request_id: u64,
        /// The field.
        field: &'static str,
        /// The declared (or actual, when encoding) length.
        len: u64,
        /// The field's maximum.
        max: u64,
    },
    /// A declared item count needs more bytes than remain in the frame.
    /// Checked before allocating, so a forged count cannot make the decoder
    /// reserve memory out of proportion to the bytes actually received.
    #[error("request {request_id}: `{field}` declares {count} items but only {remaining} bytes remain")]
    CountTooLarge {
        /// Request id from the header.
        request_id: u64,
        /// The field.
        field: &'static str,
        /// The declared count.
        count: u32,
        /// Bytes left in the frame when the count was read.
        remaining: usize,
    },
    /// An `opt` tag or `bool` byte other than 0 or 1.
    #[error("request {request_id}: `{field}` has invalid tag {tag}")]
    InvalidTag {
        /// Request id from the header.
        request_id: u64,
        /// The field.
        field: &'static str,
        /// The byte received.
        tag: u8,
    },
    /// A workspace id not matching `^[A-Za-z0-9_-]{1,128}$`.
    #[error("request {request_id}: workspace id must match ^[A-Za-z0-9_-]{{1,128}}$")]
    InvalidWorkspaceId {
        /// Request id from the header.
        request_id: u64,
    },
    /// `AppendBatch` with zero leaves.
    #[error("request {request_id}: empty batch")]
    EmptyBatch {
        /// Request id from the header.
        request_id: u64,
    },
    /// `AppendBatch` with more than [`MAX_BATCH_LEAVES`](crate::MAX_BATCH_LEAVES) leaves.
    #[error("request {request_id}: batch of {count} leaves exceeds the maximum {max}")]
    BatchTooLarge {
        /// Request id from the header.
        request_id: u64,
        /// The declared number of leaves.
        count: u64,
        /// The maximum.
        max: u64,
    },
    /// `AppendBatch` whose bodies together exceed
    /// [`MAX_BATCH_BODY_BYTES`](crate::MAX_BATCH_BODY_BYTES).
    #[error("request {request_id}: batch bodies of {bytes} bytes exceed the maximum {max}")]
    BatchBytesTooLarge {
        /// Request id from the header.
        request_id: u64,
        /// Bytes counted so far (decoding stops at the first body past the limit).
        bytes: u64,
        /// The maximum.
        max: u64,
    },
    /// `AppendMany` with two appends of one workspace.
    #[error("request {request_id}: two appends of one workspace in one AppendMany")]
    DuplicateWorkspace {
        /// Request id from the header.
        request_id: u64,
    },
    /// `AppendBatch` with a zero-length body.
    #[error("request {request_id}: empty receipt body")]
    EmptyBody {
        /// Request id from the header.
        request_id: u64,
    },
    /// A call's connect failed or timed out (`source.kind() == TimedOut`).
    #[error("cannot connect to signer at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A recent connect failed; no new attempt before `retry_after`.
    #[error("signer unavailable after a failed connect; retry in {retry_after:?}")]
    Unavailable {
        /// Time left in the backoff window.
        retry_after: Duration,
    },
    /// The connection broke before the answer arrived. The request may or
    /// may not have been executed.
    #[error("connection to signer lost")]
    Disconnected,
    /// No answer within `request_timeout` (including the wait for an
    /// in-flight slot). The request may or may not have been executed.
    #[error("no answer from signer within {0:?}")]
    Timeout(Duration),
    /// The signer answered [`ErrorCode::Busy`]: its queue for the workspace
    /// is over its cap. Nothing was executed; retry later. Back pressure from
    /// a signer that answers, never a sign that it is down. (A full client is
    /// not an error: calls wait for a slot.)
    #[error("signer is busy")]
    Busy,
    /// The signer answered with an `Error` response.
    #[error("signer error: {0}")]
    Remote(crate::ErrorReply),
    /// The request violates a protocol limit (the codec's error); nothing was
    /// sent.
    #[error("invalid request: {0}")]
    InvalidRequest(Box<ProtoError>),
    /// The answer to this call could not be decoded (the codec's error).
    #[error("malformed response: {0}")]
    BadResponse(Box<ProtoError>),
    /// The answer decoded but does not fit the request.
    #[error("unexpected response to {request}: {detail}")]
    UnexpectedResponse {
        /// The request's name.
        request: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl ProtoError {
    /// The request id, when the header could be read.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            Self::Io(_) | Self::FrameLength { .. } | Self::ShortHeader { .. } => None,
            // The client's own: no frame of the caller's to answer.
            Self::Connect { .. }
            | Self::Unavailable { .. }
            | Self::Disconnected
            | Self::Timeout(_)
            | Self::Busy
            | Self::Remote(_)
            | Self::InvalidRequest(_)
            | Self::BadResponse(_)
            | Self::UnexpectedResponse { .. } => None,
            Self::UnsupportedVersion { request_id, .. }
            | Self::UnknownKind { request_id, .. }
            | Self::Truncated { request_id, .. }
            | Self::TrailingBytes { request_id, .. }
            | Self::InvalidUtf8 { request_id, .. }
            | Self::TooLong { request_id, .. }
            | Self::CountTooLarge { request_id, .. }
            | Self::InvalidTag { request_id, .. }
            | Self::InvalidWorkspaceId { request_id }
            | Self::EmptyBatch { request_id }
            | Self::EmptyBody { request_id }
            | Self::DuplicateWorkspace { request_id }
            | Self::BatchBytesTooLarge { request_id, .. }
            | Self::BatchTooLarge { request_id, .. } => Some(*request_id),
        }
    }

    /// The [`ErrorCode`] a signer should answer this error with. For the
    /// client's own errors (never a signer's answer): the code the signer
    /// answered (`Remote`, `Busy`), the codec's (`InvalidRequest`), else
    /// `Internal`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Remote(reply) => reply.code,
            Self::Busy => ErrorCode::Busy,
            Self::InvalidRequest(e) => e.code(),
            Self::Connect { .. }
            | Self::Unavailable { .. }
            | Self::Disconnected
            | Self::Timeout(_)
            | Self::BadResponse(_)
            | Self::UnexpectedResponse { .. } => ErrorCode::Internal,
            Self::Io(_)
            | Self::FrameLength { .. }
            | Self::ShortHeader { .. }
            | Self::Truncated { .. }
            | Self::TrailingBytes { .. }
            | Self::InvalidUtf8 { .. }
            | Self::TooLong { .. }
            | Self::CountTooLarge { .. }
            | Self::InvalidTag { .. } => ErrorCode::BadFrame,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::UnknownKind { .. } => ErrorCode::UnknownKind,
            Self::InvalidWorkspaceId { .. }
            | Self::EmptyBatch { .. }
            | Self::EmptyBody { .. }
            | Self::DuplicateWorkspace { .. } => ErrorCode::InvalidArgument,
            Self::BatchTooLarge { .. } | Self::BatchBytesTooLarge { .. } => ErrorCode::BatchTooLarge,
        }
    }

    /// The same error again, for each of the calls one failed request answered (an
    /// `AppendMany` that timed out fails every append in it). I/O errors keep their kind and
    /// message; the codec's errors (not `Clone`: they may hold one) become
    /// `UnexpectedResponse` with their message.
    pub fn duplicate(&self) -> ProtoError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            Self::Connect { path, source } => Self::Connect { path: path.clone(), source: io(source) },
            Self::Unavailable { retry_after } => Self::Unavailable { retry_after: *retry_after },
            Self::Disconnected => Self::Disconnected,
            Self::Timeout(d) => Self::Timeout(*d),
            Self::Busy => Self::Busy,
            Self::Remote(e) => Self::Remote(e.clone()),
            Self::UnexpectedResponse { request, detail } => {
                Self::UnexpectedResponse { request, detail: detail.clone() }
            }
            other => Self::UnexpectedResponse { request: "AppendMany", detail: other.to_string() },
        }
    }
}

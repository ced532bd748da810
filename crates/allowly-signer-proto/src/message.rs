//! Message types. Field order in each struct is the order on the wire.

use std::fmt;

use crate::ErrorCode;

/// A 32-byte hash (Merkle leaf or node), sent as 32 raw bytes.
pub type Hash = [u8; 32];

/// A request from the service to the signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `0x01`: liveness check; answered by [`Response::Pong`].
    Ping,
    /// `0x02`: create the workspace's first signing key; answered by [`Response::Keys`].
    CreateKey {
        /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
        workspace_id: String,
    },
    /// `0x03`: list the workspace's keys; answered by [`Response::Keys`].
    ListKeys {
        /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
        workspace_id: String,
    },
    /// `0x04`: rotate the workspace's key; answered by [`Response::Rotated`].
    RotateKey {
        /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
        workspace_id: String,
        /// The log's current size: the rotation is itself a leaf, appended at this index, so
        /// the service (which sequences the log) reserves the index like any other receipt's.
        /// A repeat at the same size after a lost answer (the log's last group is exactly that
        /// rotation's leaf) is answered with the same `Rotated` again.
        expected_size: u64,
    },
    /// `0x05`: append receipts at indices `expected_size..`; answered by
    /// [`Response::Appended`]. The signer hashes each body itself (RFC 9162 leaf hash) and
    /// refuses the whole batch ([`ErrorCode::ReceiptRefused`]) unless every body is a
    /// well-formed receipt body of `workspace_id` whose `log_index` is its position.
    AppendBatch {
        /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
        workspace_id: String,
        /// Must equal the log's current size, otherwise the signer answers
        /// [`ErrorCode::SizeMismatch`]. This makes appends compare-and-swap:
        /// a stale or forking caller cannot overwrite or skip indices.
        expected_size: u64,
        /// `1..=MAX_BATCH_LEAVES` canonical receipt bodies (RFC 8785 JSON), each
        /// `1..=MAX_BODY_LEN` bytes, together at most `MAX_BATCH_BODY_BYTES`.
        bodies: Vec<Vec<u8>>,
        /// Whether the answer should carry one inclusion proof per leaf. The
        /// service stores the Merkle nodes itself and serves proofs from them,
        /// so it normally asks for none: building, encoding and sending a
        /// proof per leaf is most of an answer's size.
        want_proofs: bool,
    },
    /// `0x08`: the appends of several workspaces in one request; answered by
    /// [`Response::AppendedMany`], one result per append, in request order. Each append is
    /// checked and signed exactly as an [`Request::AppendBatch`] of its own without proofs
    /// (one checkpoint per workspace); one append's refusal never affects another's. What it
    /// saves is the per-request cost (a frame, a read, a dispatch, an answer) when thousands
    /// of workspaces each sign a few receipts a round.
    AppendMany {
        /// `1..=MAX_MANY_APPENDS` appends, each of a different workspace; together at most
        /// `MAX_BATCH_LEAVES` bodies and `MAX_BATCH_BODY_BYTES` body bytes.
        appends: Vec<Append>,
    },
    /// `0x06`: latest checkpoint of the workspace's log; answered by
    /// [`Response::Checkpoint`].
    LatestCheckpoint {
        /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
        workspace_id: String,
    },
    /// `0x07`: Prometheus text exposition of the signer's own metrics;
    /// answered by [`Response::MetricsText`].
    Metrics,
    /// `0x10`: write a consistent copy of the signer's state (journal, audit log, public key
    /// records and sealed keys — never the master key) into `snapshots/<name>/` of its own
    /// directory, for a backup; answered by [`Response::Snapshotted`].
    Snapshot {
        /// The snapshot's directory name, validated like a workspace id
        /// (`^[A-Za-z0-9_-]{1,128}$`), so it cannot name a path outside `snapshots/`.
        name: String,
    },
    /// `0x11`: the durable log size of every workspace the signer knows, in workspace id order,
    /// from after `after` on, at most [`crate::MAX_LOG_SIZES`] per answer; answered by
    /// [`Response::LogSizes`]. Read from the journal's index: no workspace is loaded.
    LogSizes {
        /// The last workspace id of the previous page (`None`: from the start).
        after: Option<String>,
    },
    /// `0x12`: the workspace's key record exactly as the signer stores it (public keys,
    /// validity windows, key ids, and per key either its seed sealed under the signer's master
    /// key or a PKCS#11 object id: never a private key in the clear), for another signer
    /// sharing that master key or token to install ([`Request::ImportKeys`]); answered by
    /// [`Response::KeyRecord`].
    ExportKeys {
        /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
        workspace_id: String,
    },
    /// `0x13`: installs a key record another signer exported; answered by [`Response::Keys`]
    /// (the workspace's keys after it). Refused ([`ErrorCode::KeyRecordRefused`], nothing
    /// written) unless it parses, names this workspace, every sealed seed opens under this
    /// signer's master key for this workspace and key id (or every token object is there) and
    /// matches its public key, and it keeps every key the signer already has for the workspace
    /// (the same record again, or the same keys plus newer ones: a rotation).
    ImportKeys {
        /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
        workspace_id: String,
        /// `1..=MAX_KEY_RECORD_LEN` bytes, as [`Response::KeyRecord`] gave them.
        record: Vec<u8>,
    },
    /// `0x14`: makes the signer continue the workspace's log from `checkpoint`, a note another
    /// signer signed (ownership of the workspace moved here); answered by
    /// [`Response::Adopted`]. Refused ([`ErrorCode::AdoptRefused`], or
    /// [`ErrorCode::SizeMismatch`] for a smaller size) unless the note is signed by a key of the
    /// workspace this signer holds, valid at the note's time; the peaks hash to its root at its
    /// size; and it extends what this signer itself last signed for the workspace (same size:
    /// same root; larger: `proof` proves it).
    Adopt {
        /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
        workspace_id: String,
        /// The signed checkpoint note to continue from (at most `MAX_CHECKPOINT_LEN` bytes).
        checkpoint: String,
        /// The Merkle frontier of the note's tree (its perfect subtrees' roots, largest first,
        /// as `allowly_receipt::merkle::Frontier` keeps them), at most `MAX_PROOF_HASHES`.
        peaks: Vec<Hash>,
        /// RFC 9162 consistency proof from the signer's own log size (as
        /// [`Request::LatestCheckpoint`] or [`Request::LogSizes`] says it) to the note's size;
        /// empty when the signer has no log for the workspace or the same size. At most
        /// `MAX_CONSISTENCY_HASHES`.
        proof: Vec<Hash>,
        /// Unix ms of the `time` of the receipt at index `size - 1` (0 for an empty log): the
        /// floor for the next appended receipt's time (see `AppendBatch`). The signer keeps the
        /// larger of it and its own.
        last_leaf_ms: u64,
    },
}

impl Request {
    /// Every [`Request::name`] (the signer's request metric exports each at zero).
    pub const NAMES: [&'static str; 13] = [
        "Ping",
        "CreateKey",
        "ListKeys",
        "RotateKey",
        "AppendBatch",
        "AppendMany",
        "LatestCheckpoint",
        "Metrics",
        "Snapshot",
        "LogSizes",
        "ExportKeys",
        "ImportKeys",
        "Adopt",
    ];

    /// The message's name, for diagnostics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping => "Ping",
            Self::CreateKey { .. } => "CreateKey",
            Self::ListKeys { .. } => "ListKeys",
            Self::RotateKey { .. } => "RotateKey",
            Self::AppendBatch { .. } => "AppendBatch",
            Self::AppendMany { .. } => "AppendMany",
            Self::LatestCheckpoint { .. } => "LatestCheckpoint",
            Self::Metrics => "Metrics",
            Self::Snapshot { .. } => "Snapshot",
            Self::LogSizes { .. } => "LogSizes",
            Self::ExportKeys { .. } => "ExportKeys",
            Self::ImportKeys { .. } => "ImportKeys",
            Self::Adopt { .. } => "Adopt",
        }
    }
}

/// A response from the signer to the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `0x81`: answer to `Ping`.
    Pong,
    /// `0x82`: answer to `CreateKey` and `ListKeys`.
    Keys {
        /// All of the workspace's keys.
        keys: Vec<KeyInfo>,
    },
    /// `0x84`: answer to `RotateKey`.
    Rotated {
        /// All of the workspace's keys after the rotation.
        keys: Vec<KeyInfo>,
        /// The `key.rotated` receipt logged for this rotation.
        rotation: SignedLeaf,
    },
    /// `0x85`: answer to `AppendBatch`.
    Appended {
        /// Log size before the batch (= the request's `expected_size`).
        old_size: u64,
        /// Log size after the batch (= `old_size + leaves.len()`).
        new_size: u64,
        /// Signed note for the tree of `new_size` leaves.
        checkpoint: String,
        /// With `want_proofs`: one inclusion proof per appended leaf, in leaf
        /// order, each against `checkpoint`, at most `MAX_PROOF_HASHES` hashes
        /// each. Without: empty.
        proofs: Vec<Vec<Hash>>,
    },
    /// `0x88`: answer to `AppendMany`.
    AppendedMany {
        /// One per append of the request, in its order.
        results: Vec<AppendResult>,
    },
    /// `0x86`: answer to `LatestCheckpoint`.
    Checkpoint {
        /// Current log size.
        size: u64,
        /// Signed note for that size; `None` when nothing was signed yet.
        checkpoint: Option<String>,
    },
    /// `0x87`: answer to `Metrics`.
    MetricsText {
        /// Prometheus text exposition format.
        text: String,
    },
    /// `0x90`: answer to `Snapshot`: the snapshot is complete and durable.
    Snapshotted {
        /// Workspaces whose log state it holds.
        workspaces: u64,
        /// Bytes of its journal.
        journal_bytes: u64,
        /// Bytes of its audit log.
        audit_bytes: u64,
    },
    /// `0x91`: answer to `LogSizes`.
    LogSizes {
        /// `(workspace id, durable log size)`, in workspace id order.
        sizes: Vec<(String, u64)>,
        /// Whether more follow (ask again with `after` = the last id).
        more: bool,
    },
    /// `0x92`: answer to `ExportKeys`.
    KeyRecord {
        /// The key record's bytes (`1..=MAX_KEY_RECORD_LEN`).
        record: Vec<u8>,
    },
    /// `0x94`: answer to `Adopt`: the signer's log of the workspace is now at `size` with
    /// `root`, and its next append is at `size`.
    Adopted {
        /// The note's tree size.
        size: u64,
        /// The note's root.
        root: Hash,
        /// `true`: the signer's state moved to the note; `false`: it was there already (the
        /// same size and root), nothing was written.
        changed: bool,
    },
    /// `0xFF`: the request failed; may answer any request.
    Error(ErrorReply),
}

impl Response {
    /// The message's name, for diagnostics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pong => "Pong",
            Self::Keys { .. } => "Keys",
            Self::Rotated { .. } => "Rotated",
            Self::Appended { .. } => "Appended",
            Self::AppendedMany { .. } => "AppendedMany",
            Self::Checkpoint { .. } => "Checkpoint",
            Self::MetricsText { .. } => "MetricsText",
            Self::Snapshotted { .. } => "Snapshotted",
            Self::LogSizes { .. } => "LogSizes",
            Self::KeyRecord { .. } => "KeyRecord",
            Self::Adopted { .. } => "Adopted",
            Self::Error(_) => "Error",
        }
    }
}

/// One workspace's part of a [`Request::AppendMany`]: the fields of an
/// [`Request::AppendBatch`] without proofs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    /// Validated against `^[A-Za-z0-9_-]{1,128}$`.
    pub workspace_id: String,
    /// Must equal the workspace's log size (compare-and-swap, as in `AppendBatch`).
    pub expected_size: u64,
    /// `1..=MAX_BATCH_LEAVES` canonical receipt bodies, each `1..=MAX_BODY_LEN` bytes.
    pub bodies: Vec<Vec<u8>>,
}

/// One append's outcome in a [`Response::AppendedMany`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// Tag 0: the fields of [`Response::Appended`], without proofs.
    Appended {
        /// Log size before the append (= its `expected_size`).
        old_size: u64,
        /// Log size after it.
        new_size: u64,
        /// Signed note for the tree of `new_size` leaves.
        checkpoint: String,
    },
    /// Tag 1: what an `AppendBatch` of its own would have been answered with
    /// ([`Response::Error`]'s body).
    Error(ErrorReply),
}

/// One signing key of a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// Short key identifier (4 raw bytes).
    pub key_id: [u8; 4],
    /// Ed25519 public key (32 raw bytes).
    pub public_key: [u8; 32],
    /// Start of validity, Unix milliseconds.
    pub not_before_ms: u64,
    /// End of validity, Unix milliseconds; `None` while open-ended.
    pub not_after_ms: Option<u64>,
    /// Whether this key signs new checkpoints. Sent as one byte, 0 or 1
    /// (any other value is rejected, keeping the encoding canonical).
    pub active: bool,
}

/// A log entry together with the evidence that it is in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedLeaf {
    /// Canonical JSON of the receipt body (bytes, not validated as UTF-8 by
    /// this layer: the receipt verifier owns its syntax).
    pub body: Vec<u8>,
    /// Index of the leaf in the log.
    pub log_index: u64,
    /// Inclusion proof against `checkpoint`; at most `MAX_PROOF_HASHES` hashes.
    pub proof: Vec<Hash>,
    /// Signed note the proof is relative to.
    pub checkpoint: String,
}

/// The body of [`Response::Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The log's size; set with [`ErrorCode::SizeMismatch`].
    pub current_size: Option<u64>,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(size) = self.current_size {
            write!(f, " (current size {size})")?;
        }
        Ok(())
    }
}

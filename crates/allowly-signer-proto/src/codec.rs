//! Encoding and decoding of frames. See the crate docs for the layout.
//!
//! The decoder never trusts a length or count: each is compared with its
//! fixed maximum and with the bytes actually remaining *before* anything is
//! allocated, so memory use is bounded by the frame's real size. The encoder
//! enforces the same limits, so `encode` succeeding implies `decode` accepts
//! the result, and any accepted frame re-encodes to the same bytes.

use crate::message::{Append, AppendResult, ErrorReply, Hash, KeyInfo, Request, Response, SignedLeaf};
use crate::{
    ErrorCode, ProtoError, MAX_BATCH_BODY_BYTES, MAX_BATCH_LEAVES, MAX_BODY_LEN, MAX_CHECKPOINT_LEN,
    MAX_CONSISTENCY_HASHES, MAX_FRAME, MAX_ID_LEN, MAX_KEY_RECORD_LEN, MAX_LOG_SIZES, MAX_MANY_APPENDS,
    MAX_PROOF_HASHES, MAX_WORKSPACE_ID_LEN, PROTOCOL_VERSION,
};

/// `version: u8`, `kind: u8`, `request_id: u64`.
pub(crate) const HEADER_LEN: usize = 10;

mod kind {
    pub const PING: u8 = 0x01;
    pub const CREATE_KEY: u8 = 0x02;
    pub const LIST_KEYS: u8 = 0x03;
    pub const ROTATE_KEY: u8 = 0x04;
    pub const APPEND_BATCH: u8 = 0x05;
    pub const LATEST_CHECKPOINT: u8 = 0x06;
    pub const METRICS: u8 = 0x07;
    pub const APPEND_MANY: u8 = 0x08;
    pub const SNAPSHOT: u8 = 0x10;
    pub const LOG_SIZES: u8 = 0x11;
    pub const EXPORT_KEYS: u8 = 0x12;
    pub const IMPORT_KEYS: u8 = 0x13;
    pub const ADOPT: u8 = 0x14;

    pub const PONG: u8 = 0x81;
    pub const KEYS: u8 = 0x82;
    pub const ROTATED: u8 = 0x84;
    pub const APPENDED: u8 = 0x85;
    pub const CHECKPOINT: u8 = 0x86;
    pub const METRICS_TEXT: u8 = 0x87;
    pub const APPENDED_MANY: u8 = 0x88;
    pub const SNAPSHOTTED: u8 = 0x90;
    pub const LOG_SIZES_ANSWER: u8 = 0x91;
    pub const KEY_RECORD: u8 = 0x92;
    pub const ADOPTED: u8 = 0x94;
    pub const ERROR: u8 = 0xFF;
}

/// Smallest encoding of one `KeyInfo`: id 4 + key 32 + not_before 8 +
/// opt tag 1 + active 1.
const KEY_INFO_MIN_LEN: usize = 46;
/// Smallest encoding of one proof in `Appended.proofs`: its u32 count.
const PROOF_MIN_LEN: usize = 4;
const HASH_LEN: usize = 32;
/// Smallest encoding of one `LogSizes` entry: a 1-byte workspace id with its length, and a size.
const LOG_SIZE_MIN_LEN: usize = 4 + 1 + 8;
/// Smallest encoding of one `AppendBatch` body: its u32 length and one byte.
const BODY_MIN_LEN: usize = 5;
/// Smallest encoding of one `AppendMany` append: a 1-byte workspace id with its length, the
/// size, the body count and one smallest body.
const APPEND_MIN_LEN: usize = 4 + 1 + 8 + 4 + BODY_MIN_LEN;
/// Smallest encoding of one `AppendedMany` result: tag 1, code, empty message, absent size.
const APPEND_RESULT_MIN_LEN: usize = 1 + 2 + 4 + 1;

/// Running totals over the bodies of one request (an `AppendMany` adds up all its appends').
#[derive(Default)]
struct BodyTotals {
    leaves: usize,
    bytes: usize,
}

/// Appends one complete request frame (length prefix included) to `out`.
///
/// Fails, leaving `out` unchanged, when the request violates a protocol limit
/// (invalid workspace id, empty or oversized batch, frame over
/// [`MAX_FRAME`]): such a frame would only be rejected by the signer, and an
/// oversized one could not be framed at all.
pub fn encode_request(id: u64, req: &Request, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let kind = match req {
        Request::Ping => kind::PING,
        Request::CreateKey { .. } => kind::CREATE_KEY,
        Request::ListKeys { .. } => kind::LIST_KEYS,
        Request::RotateKey { .. } => kind::ROTATE_KEY,
        Request::AppendBatch { .. } => kind::APPEND_BATCH,
        Request::AppendMany { .. } => kind::APPEND_MANY,
        Request::LatestCheckpoint { .. } => kind::LATEST_CHECKPOINT,
        Request::Metrics => kind::METRICS,
        Request::Snapshot { .. } => kind::SNAPSHOT,
        Request::LogSizes { .. } => kind::LOG_SIZES,
        Request::ExportKeys { .. } => kind::EXPORT_KEYS,
        Request::ImportKeys { .. } => kind::IMPORT_KEYS,
        Request::Adopt { .. } => kind::ADOPT,
    };
    encode_frame(id, kind, out, |e| match req {
        Request::Ping | Request::Metrics => Ok(()),
        Request::Snapshot { name } => e.workspace_id(name),
        Request::LogSizes { after: None } => {
            e.u8(0);
            Ok(())
        }
        Request::LogSizes { after: Some(after) } => {
            e.u8(1);
            e.workspace_id(after)
        }
        Request::CreateKey { workspace_id }
        | Request::ListKeys { workspace_id }
        | Request::LatestCheckpoint { workspace_id }
        | Request::ExportKeys { workspace_id } => e.workspace_id(workspace_id),
        Request::ImportKeys { workspace_id, record } => {
            e.workspace_id(workspace_id)?;
            e.key_record(record)
        }
        Request::Adopt { workspace_id, checkpoint, peaks, proof, last_leaf_ms } => {
            e.workspace_id(workspace_id)?;
            e.bounded_text("checkpoint", checkpoint, MAX_CHECKPOINT_LEN)?;
            e.hashes("peaks", peaks, MAX_PROOF_HASHES)?;
            e.hashes("proof", proof, MAX_CONSISTENCY_HASHES)?;
            e.u64(*last_leaf_ms);
            Ok(())
        }
        Request::RotateKey { workspace_id, expected_size } => {
            e.workspace_id(workspace_id)?;
            e.u64(*expected_size);
            Ok(())
        }
        Request::AppendBatch { workspace_id, expected_size, bodies, want_proofs } => {
            e.workspace_id(workspace_id)?;
            e.u64(*expected_size);
            e.bodies(bodies, &mut BodyTotals::default())?;
            e.u8(u8::from(*want_proofs));
            Ok(())
        }
        Request::AppendMany { appends } => {
            if appends.is_empty() {
                return Err(ProtoError::EmptyBatch { request_id: e.id });
            }
            e.count("appends", appends.len(), MAX_MANY_APPENDS)?;
            if has_duplicate(appends.iter().map(|a| a.workspace_id.as_str())) {
                return Err(ProtoError::DuplicateWorkspace { request_id: e.id });
            }
            let mut totals = BodyTotals::default();
            for a in appends {
                e.workspace_id(&a.workspace_id)?;
                e.u64(a.expected_size);
                e.bodies(&a.bodies, &mut totals)?;
            }
            Ok(())
        }
    })
}

/// Appends one complete response frame (length prefix included) to `out`.
///
/// Fails, leaving `out` unchanged, when the response violates a protocol
/// limit; in particular when it would exceed [`MAX_FRAME`]. The signer should
/// then answer with an `Internal` error instead.
pub fn encode_response(id: u64, resp: &Response, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let kind = match resp {
        Response::Pong => kind::PONG,
        Response::Keys { .. } => kind::KEYS,
        Response::Rotated { .. } => kind::ROTATED,
        Response::Appended { .. } => kind::APPENDED,
        Response::AppendedMany { .. } => kind::APPENDED_MANY,
        Response::Checkpoint { .. } => kind::CHECKPOINT,
        Response::MetricsText { .. } => kind::METRICS_TEXT,
        Response::Snapshotted { .. } => kind::SNAPSHOTTED,
        Response::LogSizes { .. } => kind::LOG_SIZES_ANSWER,
        Response::KeyRecord { .. } => kind::KEY_RECORD,
        Response::Adopted { .. } => kind::ADOPTED,
        Response::Error(_) => kind::ERROR,
    };
    encode_frame(id, kind, out, |e| match resp {
        Response::Pong => Ok(()),
        Response::Keys { keys } => e.keys(keys),
        Response::Rotated { keys, rotation } => {
            e.keys(keys)?;
            e.count("rotation.body", rotation.body.len(), MAX_FRAME)?;
            e.bytes(&rotation.body);
            e.u64(rotation.log_index);
            e.proof("rotation.proof", &rotation.proof)?;
            e.text("rotation.checkpoint", &rotation.checkpoint)
        }
        Response::Appended { old_size, new_size, checkpoint, proofs } => {
            e.u64(*old_size);
            e.u64(*new_size);
            e.text("checkpoint", checkpoint)?;
            e.count("proofs", proofs.len(), MAX_BATCH_LEAVES)?;
            for proof in proofs {
                e.proof("proofs[]", proof)?;
            }
            Ok(())
        }
        Response::AppendedMany { results } => {
            e.count("results", results.len(), MAX_MANY_APPENDS)?;
            for r in results {
                match r {
                    AppendResult::Appended { old_size, new_size, checkpoint } => {
                        e.u8(0);
                        e.u64(*old_size);
                        e.u64(*new_size);
                        e.text("results[].checkpoint", checkpoint)?;
                    }
                    AppendResult::Error(reply) => {
                        e.u8(1);
                        e.error_reply(reply)?;
                    }
                }
            }
            Ok(())
        }
        Response::Checkpoint { size, checkpoint } => {
            e.u64(*size);
            match checkpoint {
                None => e.u8(0),
                Some(c) => {
                    e.u8(1);
                    e.text("checkpoint", c)?;
                }
            }
            Ok(())
        }
        Response::MetricsText { text } => e.text("text", text),
        Response::Snapshotted { workspaces, journal_bytes, audit_bytes } => {
            e.u64(*workspaces);
            e.u64(*journal_bytes);
            e.u64(*audit_bytes);
            Ok(())
        }
        Response::LogSizes { sizes, more } => {
            e.count("sizes", sizes.len(), MAX_LOG_SIZES)?;
            for (ws, size) in sizes {
                e.workspace_id(ws)?;
                e.u64(*size);
            }
            e.u8(u8::from(*more));
            Ok(())
        }
        Response::KeyRecord { record } => e.key_record(record),
        Response::Adopted { size, root, changed } => {
            e.u64(*size);
            e.bytes(root);
            e.u8(u8::from(*changed));
            Ok(())
        }
        Response::Error(reply) => e.error_reply(reply),
    })
}

/// Decodes one request frame: the bytes after the length prefix.
///
/// Errors carry the request id whenever the 10-byte header was readable (even
/// for an unsupported version: the header layout is frozen across versions
/// precisely so a peer can address its `UnsupportedVersion` reply).
pub fn decode_request(frame: &[u8]) -> Result<(u64, Request), ProtoError> {
    let (kind, mut d) = Dec::header(frame)?;
    let req = match kind {
        kind::PING => Request::Ping,
        kind::CREATE_KEY => Request::CreateKey { workspace_id: d.workspace_id()? },
        kind::LIST_KEYS => Request::ListKeys { workspace_id: d.workspace_id()? },
        kind::ROTATE_KEY => {
            Request::RotateKey { workspace_id: d.workspace_id()?, expected_size: d.u64("expected_size")? }
        }
        kind::APPEND_BATCH => {
            let workspace_id = d.workspace_id()?;
            let expected_size = d.u64("expected_size")?;
            let bodies = d.bodies(&mut BodyTotals::default())?;
            let want_proofs = d.tag("want_proofs")?;
            Request::AppendBatch { workspace_id, expected_size, bodies, want_proofs }
        }
        kind::APPEND_MANY => {
            let n = d.count("appends", APPEND_MIN_LEN, MAX_MANY_APPENDS)?;
            if n == 0 {
                return Err(ProtoError::EmptyBatch { request_id: d.id });
            }
            let mut totals = BodyTotals::default();
            let appends = d.items(n, |d| {
                Ok(Append {
                    workspace_id: d.workspace_id()?,
                    expected_size: d.u64("expected_size")?,
                    bodies: d.bodies(&mut totals)?,
                })
            })?;
            if has_duplicate(appends.iter().map(|a| a.workspace_id.as_str())) {
                return Err(ProtoError::DuplicateWorkspace { request_id: d.id });
            }
            Request::AppendMany { appends }
        }
        kind::LATEST_CHECKPOINT => Request::LatestCheckpoint { workspace_id: d.workspace_id()? },
        kind::METRICS => Request::Metrics,
        kind::SNAPSHOT => Request::Snapshot { name: d.workspace_id()? },
        kind::LOG_SIZES => Request::LogSizes { after: if d.tag("after")? { Some(d.workspace_id()?) } else { None } },
        kind::EXPORT_KEYS => Request::ExportKeys { workspace_id: d.workspace_id()? },
        kind::IMPORT_KEYS => Request::ImportKeys { workspace_id: d.workspace_id()?, record: d.key_record()? },
        kind::ADOPT => Request::Adopt {
            workspace_id: d.workspace_id()?,
            checkpoint: d.bounded_text("checkpoint", MAX_CHECKPOINT_LEN)?,
            peaks: d.hashes("peaks", MAX_PROOF_HASHES)?,
            proof: d.hashes("proof", MAX_CONSISTENCY_HASHES)?,
            last_leaf_ms: d.u64("last_leaf_ms")?,
        },
        other => return Err(ProtoError::UnknownKind { request_id: d.id, kind: other }),
    };
    d.finish()?;
    Ok((d.id, req))
}

/// Decodes one response frame: the bytes after the length prefix.
pub fn decode_response(frame: &[u8]) -> Result<(u64, Response), ProtoError> {
    let (kind, mut d) = Dec::header(frame)?;
    let resp = match kind {
        kind::PONG => Response::Pong,
        kind::KEYS => Response::Keys { keys: d.keys()? },
        kind::ROTATED => {
            let keys = d.keys()?;
            let n = d.count("rotation.body", 1, MAX_FRAME)?;
            let body = d.take(n, "rotation.body")?.to_vec();
            let log_index = d.u64("rotation.log_index")?;
            let proof = d.proof("rotation.proof")?;
            let checkpoint = d.text("rotation.checkpoint")?;
            Response::Rotated { keys, rotation: SignedLeaf { body, log_index, proof, checkpoint } }
        }
        kind::APPENDED => {
            let old_size = d.u64("old_size")?;
            let new_size = d.u64("new_size")?;
            let checkpoint = d.text("checkpoint")?;
            // Bounded by MAX_BATCH_LEAVES (one proof per leaf) as well as by
            // the bytes left: an empty proof costs 4 wire bytes but 24 bytes
            // of `Vec` header, so the frame size alone would allow a 6x
            // memory amplification.
            let n = d.count("proofs", PROOF_MIN_LEN, MAX_BATCH_LEAVES)?;
            let proofs = d.items(n, |d| d.proof("proofs[]"))?;
            Response::Appended { old_size, new_size, checkpoint, proofs }
        }
        kind::APPENDED_MANY => {
            let n = d.count("results", APPEND_RESULT_MIN_LEN, MAX_MANY_APPENDS)?;
            let results = d.items(n, |d| {
                Ok(match d.tag("results[]")? {
                    false => AppendResult::Appended {
                        old_size: d.u64("results[].old_size")?,
                        new_size: d.u64("results[].new_size")?,
                        checkpoint: d.text("results[].checkpoint")?,
                    },
                    true => AppendResult::Error(d.error_reply()?),
                })
            })?;
            Response::AppendedMany { results }
        }
        kind::CHECKPOINT => {
            let size = d.u64("size")?;
            let checkpoint = match d.tag("checkpoint")? {
                false => None,
                true => Some(d.text("checkpoint")?),
            };
            Response::Checkpoint { size, checkpoint }
        }
        kind::METRICS_TEXT => Response::MetricsText { text: d.text("text")? },
        kind::SNAPSHOTTED => Response::Snapshotted {
            workspaces: d.u64("workspaces")?,
            journal_bytes: d.u64("journal_bytes")?,
            audit_bytes: d.u64("audit_bytes")?,
        },
        kind::LOG_SIZES_ANSWER => {
            let n = d.count("sizes", LOG_SIZE_MIN_LEN, MAX_LOG_SIZES)?;
            let sizes = d.items(n, |d| Ok((d.workspace_id()?, d.u64("sizes[].size")?)))?;
            Response::LogSizes { sizes, more: d.tag("more")? }
        }
        kind::KEY_RECORD => Response::KeyRecord { record: d.key_record()? },
        kind::ADOPTED => Response::Adopted { size: d.u64("size")?, root: d.array("root")?, changed: d.tag("changed")? },
        kind::ERROR => Response::Error(d.error_reply()?),
        other => return Err(ProtoError::UnknownKind { request_id: d.id, kind: other }),
    };
    d.finish()?;
    Ok((d.id, resp))
}

/// `u32` → `usize`, saturating (lossless on every platform with
/// `usize` ≥ 32 bits; saturation still fails every limit check).
fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Whether two of `ids` are equal (at most [`MAX_MANY_APPENDS`] of them).
fn has_duplicate<'a>(ids: impl Iterator<Item = &'a str>) -> bool {
    let mut seen: Vec<&str> = ids.collect();
    seen.sort_unstable();
    seen.windows(2).any(|w| w[0] == w[1])
}

/// `^[A-Za-z0-9_-]{1,128}$`. Implies ASCII, hence valid UTF-8.
pub(crate) fn is_valid_workspace_id(id: &[u8]) -> bool {
    (1..=MAX_WORKSPACE_ID_LEN).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

fn encode_frame(
    id: u64,
    kind: u8,
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Enc<'_>) -> Result<(), ProtoError>,
) -> Result<(), ProtoError> {
    let start = out.len();
    let result = (|| {
        out.extend_from_slice(&[0; 4]);
        out.push(PROTOCOL_VERSION);
        out.push(kind);
        out.extend_from_slice(&id.to_be_bytes());
        body(&mut Enc { out: &mut *out, id })?;
        let len = out.len() - start - 4;
        let len32 = match u32::try_from(len) {
            Ok(l) if len <= MAX_FRAME => l,
            _ => return Err(ProtoError::FrameLength { len: len as u64 }),
        };
        if let Some(prefix) = out.get_mut(start..start + 4) {
            prefix.copy_from_slice(&len32.to_be_bytes());
        }
        Ok(())
    })();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

impl BodyTotals {
    /// One append of `n` bodies: 1..=MAX_BATCH_LEAVES of them, and the request's total too.
    fn add_leaves(&mut self, request_id: u64, n: usize) -> Result<(), ProtoError> {
        if n == 0 {
            return Err(ProtoError::EmptyBatch { request_id });
        }
        self.leaves = self.leaves.saturating_add(n);
        if self.leaves > MAX_BATCH_LEAVES {
            return Err(ProtoError::BatchTooLarge {
                request_id,
                count: self.leaves as u64,
                max: MAX_BATCH_LEAVES as u64,
            });
        }
        Ok(())
    }

    /// One body of `len` bytes: not empty, and the request's bodies within their byte limit.
    fn add_body(&mut self, request_id: u64, len: usize) -> Result<(), ProtoError> {
        if len == 0 {
            return Err(ProtoError::EmptyBody { request_id });
        }
        self.bytes = self.bytes.saturating_add(len);
        if self.bytes > MAX_BATCH_BODY_BYTES {
            return Err(ProtoError::BatchBytesTooLarge {
                request_id,
                bytes: self.bytes as u64,
                max: MAX_BATCH_BODY_BYTES as u64,
            });
        }
        Ok(())
    }
}

struct Enc<'a> {
    out: &'a mut Vec<u8>,
    id: u64,
}

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    /// Writes a `u32` count after checking it against `max` (every `max` is
    /// ≤ `MAX_FRAME` < 2^32, so the count always fits).
    fn count(&mut self, field: &'static str, n: usize, max: usize) -> Result<(), ProtoError> {
        match u32::try_from(n) {
            Ok(n32) if n <= max => {
                self.out.extend_from_slice(&n32.to_be_bytes());
                Ok(())
            }
            _ => Err(ProtoError::TooLong { request_id: self.id, field, len: n as u64, max: max as u64 }),
        }
    }
    /// One append's `bodies: vec<body>`, within the limits of one append and, added to
    /// `totals`, of the whole request.
    fn bodies(&mut self, bodies: &[Vec<u8>], totals: &mut BodyTotals) -> Result<(), ProtoError> {
        let id = self.id;
        totals.add_leaves(id, bodies.len())?;
        self.count("bodies", bodies.len(), MAX_BATCH_LEAVES)?;
        for body in bodies {
            totals.add_body(id, body.len())?;
            self.count("bodies[]", body.len(), MAX_BODY_LEN)?;
            self.bytes(body);
        }
        Ok(())
    }
    fn error_reply(&mut self, ErrorReply { code, message, current_size }: &ErrorReply) -> Result<(), ProtoError> {
        self.u16(code.as_u16());
        self.text("message", message)?;
        self.opt_u64(*current_size);
        Ok(())
    }
    fn text(&mut self, field: &'static str, s: &str) -> Result<(), ProtoError> {
        self.bounded_text(field, s, MAX_FRAME)
    }
    /// `text` of at most `max` bytes.
    fn bounded_text(&mut self, field: &'static str, s: &str, max: usize) -> Result<(), ProtoError> {
        self.count(field, s.len(), max)?;
        self.bytes(s.as_bytes());
        Ok(())
    }
    /// A key record: `bytes` of `1..=MAX_KEY_RECORD_LEN`.
    fn key_record(&mut self, record: &[u8]) -> Result<(), ProtoError> {
        if record.is_empty() {
            return Err(ProtoError::EmptyBody { request_id: self.id });
        }
        self.count("record", record.len(), MAX_KEY_RECORD_LEN)?;
        self.bytes(record);
        Ok(())
    }
    /// `vec<hash>` of at most `max`.
    fn hashes(&mut self, field: &'static str, hashes: &[Hash], max: usize) -> Result<(), ProtoError> {
        self.count(field, hashes.len(), max)?;
        for h in hashes {
            self.bytes(h);
        }
        Ok(())
    }
    fn workspace_id(&mut self, s: &str) -> Result<(), ProtoError> {
        if !is_valid_workspace_id(s.as_bytes()) {
            return Err(ProtoError::InvalidWorkspaceId { request_id: self.id });
        }
        self.count("workspace_id", s.len(), MAX_ID_LEN)?;
        self.bytes(s.as_bytes());
        Ok(())
    }
    fn proof(&mut self, field: &'static str, proof: &[Hash]) -> Result<(), ProtoError> {
        self.hashes(field, proof, MAX_PROOF_HASHES)
    }
    fn keys(&mut self, keys: &[KeyInfo]) -> Result<(), ProtoError> {
        self.count("keys", keys.len(), MAX_FRAME)?;
        for k in keys {
            self.bytes(&k.key_id);
            self.bytes(&k.public_key);
            self.u64(k.not_before_ms);
            self.opt_u64(k.not_after_ms);
            self.u8(u8::from(k.active));
        }
        Ok(())
    }
}

/// Cursor over a frame's body. Every read is bounds-checked and returns
/// `Truncated` rather than panicking.
struct Dec<'a> {
    rest: &'a [u8],
    id: u64,
}

impl<'a> Dec<'a> {
    fn header(frame: &'a [u8]) -> Result<(u8, Self), ProtoError> {
        if frame.len() > MAX_FRAME {
            return Err(ProtoError::FrameLength { len: frame.len() as u64 });
        }
        let Some((&[version, kind, i0, i1, i2, i3, i4, i5, i6, i7], rest)) = frame.split_first_chunk::<HEADER_LEN>()
        else {
            return Err(ProtoError::ShortHeader { len: frame.len() });
        };
        let id = u64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
        if version != PROTOCOL_VERSION {
            return Err(ProtoError::UnsupportedVersion { request_id: id, version });
        }
        Ok((kind, Dec { rest, id }))
    }

    fn finish(&self) -> Result<(), ProtoError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes { request_id: self.id, count: self.rest.len() })
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtoError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(ProtoError::Truncated { request_id: self.id, field }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtoError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(ProtoError::Truncated { request_id: self.id, field }),
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        self.array::<1>(field).map(|[b]| b)
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, ProtoError> {
        self.array(field).map(u16::from_be_bytes)
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        self.array(field).map(u32::from_be_bytes)
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// An `opt` tag or a `bool`: exactly 0 or 1, so the encoding stays
    /// canonical (one value, one byte string).
    fn tag(&mut self, field: &'static str) -> Result<bool, ProtoError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(ProtoError::InvalidTag { request_id: self.id, field, tag }),
        }
    }

    /// Checks that `count` items of at least `min_item_len` bytes each can
    /// still fit in the frame. Done before any allocation, so a forged count
    /// (say 2^32-1 in a 20-byte frame) fails at once instead of reserving
    /// gigabytes.
    fn check_room(&self, field: &'static str, count: u32, min_item_len: usize) -> Result<usize, ProtoError> {
        let n = to_usize(count);
        match n.checked_mul(min_item_len) {
            Some(need) if need <= self.rest.len() => Ok(n),
            _ => Err(ProtoError::CountTooLarge { request_id: self.id, field, count, remaining: self.rest.len() }),
        }
    }

    /// Reads a `u32` count, checks it against the field's `max`, then against
    /// the remaining bytes.
    fn count(&mut self, field: &'static str, min_item_len: usize, max: usize) -> Result<usize, ProtoError> {
        let count = self.u32(field)?;
        if to_usize(count) > max {
            return Err(ProtoError::TooLong { request_id: self.id, field, len: u64::from(count), max: max as u64 });
        }
        self.check_room(field, count, min_item_len)
    }

    /// Decodes `n` items. `n` must come from [`Self::check_room`], which is
    /// what makes the up-front `with_capacity` safe.
    fn items<T>(
        &mut self,
        n: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, ProtoError>,
    ) -> Result<Vec<T>, ProtoError> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(item(self)?);
        }
        Ok(v)
    }

    fn text(&mut self, field: &'static str) -> Result<String, ProtoError> {
        self.bounded_text(field, MAX_FRAME)
    }

    fn workspace_id(&mut self) -> Result<String, ProtoError> {
        let n = self.count("workspace_id", 1, MAX_ID_LEN)?;
        let bytes = self.take(n, "workspace_id")?;
        if !is_valid_workspace_id(bytes) {
            return Err(ProtoError::InvalidWorkspaceId { request_id: self.id });
        }
        // The pattern admits only ASCII, so this cannot fail; map rather
        // than unwrap all the same.
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtoError::InvalidWorkspaceId { request_id: self.id })
    }

    /// One append's `bodies: vec<body>` (see [`Enc::bodies`]).
    fn bodies(&mut self, totals: &mut BodyTotals) -> Result<Vec<Vec<u8>>, ProtoError> {
        let count = self.u32("leaves")?;
        totals.add_leaves(self.id, to_usize(count))?;
        // Each body is at least its 4-byte length and 1 byte.
        let n = self.check_room("bodies", count, BODY_MIN_LEN)?;
        self.items(n, |d| {
            let len = d.count("bodies[]", 1, MAX_BODY_LEN)?;
            totals.add_body(d.id, len)?;
            Ok(d.take(len, "bodies[]")?.to_vec())
        })
    }

    fn error_reply(&mut self) -> Result<ErrorReply, ProtoError> {
        let code = ErrorCode::from_u16(self.u16("code")?);
        let message = self.text("message")?;
        let current_size = match self.tag("current_size")? {
            false => None,
            true => Some(self.u64("current_size")?),
        };
        Ok(ErrorReply { code, message, current_size })
    }

    fn proof(&mut self, field: &'static str) -> Result<Vec<Hash>, ProtoError> {
        self.hashes(field, MAX_PROOF_HASHES)
    }

    /// `vec<hash>` of at most `max`.
    fn hashes(&mut self, field: &'static str, max: usize) -> Result<Vec<Hash>, ProtoError> {
        let n = self.count(field, HASH_LEN, max)?;
        self.items(n, |d| d.array::<32>(field))
    }

    /// `text` of at most `max` bytes.
    fn bounded_text(&mut self, field: &'static str, max: usize) -> Result<String, ProtoError> {
        let n = self.count(field, 1, max)?;
        let bytes = self.take(n, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(ProtoError::InvalidUtf8 { request_id: self.id, field }),
        }
    }

    /// A key record: `bytes` of `1..=MAX_KEY_RECORD_LEN` (0 → `EmptyBody`, as an empty body).
    fn key_record(&mut self) -> Result<Vec<u8>, ProtoError> {
        let n = self.count("record", 1, MAX_KEY_RECORD_LEN)?;
        if n == 0 {
            return Err(ProtoError::EmptyBody { request_id: self.id });
        }
        Ok(self.take(n, "record")?.to_vec())
    }

    fn keys(&mut self) -> Result<Vec<KeyInfo>, ProtoError> {
        let n = self.count("keys", KEY_INFO_MIN_LEN, MAX_FRAME)?;
        self.items(n, |d| {
            Ok(KeyInfo {
                key_id: d.array("keys[].key_id")?,
                public_key: d.array("keys[].public_key")?,
                not_before_ms: d.u64("keys[].not_before_ms")?,
                not_after_ms: match d.tag("keys[].not_after_ms")? {
                    false => None,
                    true => Some(d.u64("keys[].not_after_ms")?),
                },
                active: d.tag("keys[].active")?,
            })
        })
    }
}

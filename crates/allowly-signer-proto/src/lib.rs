//! Wire protocol between the Allowly service and `allowly-signer`, the
//! HSM-style key process reached over a Unix stream socket, plus an async
//! multiplexing client ([`client::SignerClient`]).
//!
//! # Frame
//!
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 4 | `length` L | `u32` BE, length of everything after it; `1 ≤ L ≤` [`MAX_FRAME`] (16 MiB), checked before the body is read |
//! | 4 | 1 | `version` | = [`PROTOCOL_VERSION`] (3) |
//! | 5 | 1 | `kind` | message kind, tables below |
//! | 6 | 8 | `request_id` | `u64` BE; echoed in the response, which is how answers are matched to requests |
//! | 14 | L − 10 | body | per kind; no bytes may remain after it |
//!
//! The 10-byte header layout is frozen across versions, so a peer can read
//! the request id even of a frame whose version it rejects, and address its
//! `UnsupportedVersion` reply.
//!
//! # Primitives
//!
//! All integers are big-endian.
//!
//! | type | encoding | limits, checked when decoding (and when encoding) |
//! |---|---|---|
//! | `u8`/`u16`/`u64` | fixed width | — |
//! | `bool` | `u8` | 0 or 1; other values rejected |
//! | `hash` | 32 raw bytes | — |
//! | `opt<T>` | `u8` tag 0 (absent) / 1 (then `T`) | other tags rejected |
//! | `vec<T>` | `u32` count, then the items | count ≤ the field's max, and count × (smallest item size) ≤ bytes remaining — checked **before** allocating |
//! | `bytes` | `vec<u8>` | ≤ [`MAX_FRAME`] |
//! | `text` | `u32` byte length + UTF-8 | ≤ [`MAX_FRAME`]; UTF-8 validated |
//! | `wsid` (workspace id) | `u32` byte length + bytes | ≤ [`MAX_ID_LEN`], then `^[A-Za-z0-9_-]{1,128}$` (else `InvalidArgument`) |
//! | `proof` | `vec<hash>` | ≤ [`MAX_PROOF_HASHES`] |
//! | `body` | `u32` byte length + bytes (a canonical receipt body, RFC 8785 JSON) | `1 ≤` length `≤` [`MAX_BODY_LEN`] (0 → `InvalidArgument`); the bodies of one batch together ≤ [`MAX_BATCH_BODY_BYTES`] (more → `BatchTooLarge`) |
//!
//! # Requests (service → signer)
//!
//! | kind | message | body |
//! |---|---|---|
//! | `0x01` | `Ping` | — |
//! | `0x02` | `CreateKey` | `workspace_id: wsid` |
//! | `0x03` | `ListKeys` | `workspace_id: wsid` |
//! | `0x04` | `RotateKey` | `workspace_id: wsid`, `expected_size: u64` (the index the `key.rotated` leaf takes; a repeat whose answer was lost — the log's last group is exactly that rotation's leaf — gets the same `Rotated` again) |
//! | `0x05` | `AppendBatch` | `workspace_id: wsid`, `expected_size: u64`, `bodies: vec<body>` (1 ≤ count ≤ [`MAX_BATCH_LEAVES`]; 0 → `InvalidArgument`, more → `BatchTooLarge`), `want_proofs: bool` |
//! | `0x06` | `LatestCheckpoint` | `workspace_id: wsid` |
//! | `0x08` | `AppendMany` | `appends: vec<append>` (1 ≤ count ≤ [`MAX_MANY_APPENDS`]; each `append` is `workspace_id: wsid`, `expected_size: u64`, `bodies: vec<body>` with the limits of `AppendBatch`; no two of one workspace (→ `InvalidArgument`); all bodies together ≤ [`MAX_BATCH_LEAVES`] and ≤ [`MAX_BATCH_BODY_BYTES`] (more → `BatchTooLarge`)) |
//! | `0x07` | `Metrics` | — |
//! | `0x10` | `Snapshot` | `name: wsid` (the syntax of a workspace id: a directory name under the signer's `snapshots/`) |
//! | `0x11` | `LogSizes` | `after: opt<wsid>` |
//! | `0x12` | `ExportKeys` | `workspace_id: wsid` |
//! | `0x13` | `ImportKeys` | `workspace_id: wsid`, `record: vec<u8>` (1 ≤ length ≤ [`MAX_KEY_RECORD_LEN`]; 0 → `InvalidArgument`) |
//! | `0x14` | `Adopt` | `workspace_id: wsid`, `checkpoint: text` (≤ [`MAX_CHECKPOINT_LEN`]), `peaks: vec<hash>` (≤ [`MAX_PROOF_HASHES`]), `proof: vec<hash>` (≤ [`MAX_CONSISTENCY_HASHES`]), `last_leaf_ms: u64` |
//!
//! # Responses (signer → service)
//!
//! | kind | message | answers | body |
//! |---|---|---|---|
//! | `0x81` | `Pong` | `Ping` | — |
//! | `0x82` | `Keys` | `CreateKey`, `ListKeys` | `keys: vec<KeyInfo>` |
//! | `0x84` | `Rotated` | `RotateKey` | `keys: vec<KeyInfo>`, `rotation: SignedLeaf` |
//! | `0x85` | `Appended` | `AppendBatch` | `old_size: u64`, `new_size: u64`, `checkpoint: text`, `proofs: vec<proof>` (count ≤ [`MAX_BATCH_LEAVES`]; one per leaf if `want_proofs`, else 0) |
//! | `0x86` | `Checkpoint` | `LatestCheckpoint` | `size: u64`, `checkpoint: opt<text>` |
//! | `0x88` | `AppendedMany` | `AppendMany` | `results: vec<result>` (count ≤ [`MAX_MANY_APPENDS`]; one per append, in request order): `u8` tag 0 then `old_size: u64`, `new_size: u64`, `checkpoint: text` (as `Appended`, no proofs), or tag 1 then the body of `Error` (`code: u16`, `message: text`, `current_size: opt<u64>`) |
//! | `0x87` | `MetricsText` | `Metrics` | `text: text` |
//! | `0x90` | `Snapshotted` | `Snapshot` | `workspaces: u64`, `journal_bytes: u64`, `audit_bytes: u64` |
//! | `0x91` | `LogSizes` | `LogSizes` | `sizes: vec<(wsid, u64)>` (count ≤ [`MAX_LOG_SIZES`], in workspace id order), `more: bool` |
//! | `0x92` | `KeyRecord` | `ExportKeys` | `record: vec<u8>` (1 ≤ length ≤ [`MAX_KEY_RECORD_LEN`]) |
//! | `0x82` | `Keys` | `ImportKeys` | as above: the workspace's keys after the import |
//! | `0x94` | `Adopted` | `Adopt` | `size: u64`, `root: hash`, `changed: bool` (`false`: the signer was at that size and root already, nothing written) |
//! | `0xFF` | `Error` | any | `code: u16`, `message: text`, `current_size: opt<u64>` |
//!
//! (`0x83` is unassigned: `ListKeys` shares `Keys` with `CreateKey`.) `Snapshot` and
//! `LogSizes` (backup and restore, issue 14) and `AppendMany` (many workspaces per request,
//! issue 17) were added without a version change: a signer that does not know them answers
//! `UnknownKind`, and nothing else changed (the service then sends `AppendBatch`es). So were
//! `ExportKeys`, `ImportKeys` and `Adopt` (signing across nodes, issue 16 part 3, below) and
//! their error codes 16 and 17: new kinds and codes, no changed one; an older signer answers
//! `UnknownKind`, an older client reads the codes as `Unknown(n)`.
//!
//! # Moving a workspace between signers (`ExportKeys`, `ImportKeys`, `Adopt`)
//!
//! Several service nodes share one database; each runs its own signer; a workspace is owned by
//! one node at a time. The owner's signer exports the workspace's key record (the bytes of its
//! key file: public keys, windows, key ids, and per key its seed sealed with
//! XChaCha20-Poly1305 under the master key with the workspace and key id as associated data,
//! or a PKCS#11 object id: ciphertext and public data only), which the service stores. A node
//! taking the workspace over imports it into its own signer (same master key, or the same
//! token), then adopts the workspace's newest stored checkpoint with its frontier, and appends
//! at the note's size. What each refuses, with nothing written:
//!
//! * `ImportKeys` → `KeyRecordRefused`: a record that does not parse, names another
//!   workspace, has a key id that is not the C2SP id of its public key under the workspace's
//!   origin, a sealed seed that does not open under this signer's master key with this
//!   workspace and key id (another workspace's sealed seed swapped in), a private half that
//!   does not match its public key (or a token object that is not there), windows that overlap
//!   or leave no one active key, or that changes or drops a key the signer already has. The
//!   same record again is accepted (nothing written); so is a record that keeps every key the
//!   signer has and adds newer ones (a rotation: the active key retired at the new key's
//!   start). A key the signer has only as `pending` (a rotation that never reached the log)
//!   may be dropped or made active. Written atomically and synced before the answer.
//! * `Adopt` → `AdoptRefused` (`current_size` set): a note not signed by a key of the
//!   workspace this signer holds and valid at the note's `time` (as a verifier checks it),
//!   of another log's origin, peaks that do not hash to its root at its size, the same size as
//!   the signer's log with another root, or a larger size whose `proof` does not prove the
//!   signer's own last root is a prefix of it (a fork). → `SizeMismatch` (`current_size`
//!   set): a smaller size than the signer's (a rollback). Every refusal is counted in
//!   `allowly_signer_fork_attempts_total` and `allowly_signer_adopt_refusals_total{reason}` and
//!   written to the audit log. An accepted note is journaled (synced, with an `adopted` audit
//!   line) before the answer; appends then go on at its size exactly as if this signer had
//!   signed it. An `Adopt` is handled by the workspace's actor, in order with its appends.
//!
//! # Versions
//!
//! * 3: `AppendBatch` carries the receipt bodies (`bodies: vec<body>`) instead of
//!   leaf hashes, and error code 12 `ReceiptRefused` exists. Nothing else changed.
//! * 2: `AppendBatch` ends with `want_proofs: bool`, and `Appended.proofs`
//!   is empty unless it was set (the service serves proofs from its own
//!   store and discarded the signer's). Nothing else changed.
//! * 1: first version; every `Appended` carried one proof per leaf.
//!
//! The service and the signer ship together, so a peer speaks exactly one
//! version and refuses the other with `UnsupportedVersion`.
//!
//! | struct | fields in wire order |
//! |---|---|
//! | `KeyInfo` | `key_id: [u8; 4]`, `public_key: [u8; 32]`, `not_before_ms: u64`, `not_after_ms: opt<u64>`, `active: bool` |
//! | `SignedLeaf` | `body: bytes` (canonical JSON of the `key.rotated` receipt body), `log_index: u64`, `proof: proof`, `checkpoint: text` (signed note) |
//!
//! # Error codes
//!
//! | code | name | meaning |
//! |---|---|---|
//! | 1 | `BadFrame` | unparseable frame |
//! | 2 | `UnsupportedVersion` | version byte ≠ 3 |
//! | 3 | `UnknownKind` | unknown kind byte |
//! | 4 | `UnknownWorkspace` | no key for that workspace |
//! | 5 | `WorkspaceExists` | `CreateKey` on an existing workspace |
//! | 6 | `SizeMismatch` | `expected_size` ≠ log size (fork, rollback or stale caller); `current_size` set |
//! | 7 | `BatchTooLarge` | more than [`MAX_BATCH_LEAVES`] leaves |
//! | 8 | `Busy` | the workspace's queue in the signer is over its cap (requests or bytes, see *Limits*); nothing was done; retry after a pause |
//! | 9 | `Internal` | signer failure |
//! | 10 | `InvalidArgument` | bad workspace id, empty batch |
//! | 11 | `PermissionDenied` | operation not allowed |
//! | 12 | `StorageFailed` | the signer's journal or audit log failed to write or sync (disk full, device error); nothing signed out, retry later |
//! | 13 | `ReceiptRefused` | (v3) an `AppendBatch` body is not a receipt the signer may sign (below); the whole batch is refused, nothing is signed, an audit line records it |
//! | 14 | `KeyStoreNotOpen` | the workspace's active key is kept by a key store this signer does not open (sealed files on a token signer without `--previous-keystore file`, or the reverse); nothing was done, and only the signer's configuration can change that (older clients see `Unknown(14)`) |
//! | 15 | `TokenUnavailable` | the signer's PKCS#11 token failed the operation (`C_Sign` or a session failed, the token is gone, a recorded key object is missing from it); nothing was signed, the signer looks for the token or key again by itself: retry after a pause (older clients see `Unknown(15)`) |
//! | 16 | `KeyRecordRefused` | an `ImportKeys` record refused (above); nothing written (older clients see `Unknown(16)`) |
//! | 17 | `AdoptRefused` | an `Adopt` refused (above); nothing written, `current_size` set (older clients see `Unknown(17)`) |
//! | other | `Unknown(n)` | kept verbatim, never a decode failure |
//!
//! # Limits (back pressure and `Busy`)
//!
//! The signer bounds what it holds for callers; none of this changed the wire format or the
//! version (`Busy` is code 8 since version 1, and a client that knows only it already treats it
//! as "retry later", never as an outage):
//!
//! * **Bytes of requests in flight** (all connections together, `--max-queued-bytes`): a
//!   frame is read only once the signer can hold it; at the cap it stops reading its sockets
//!   until answers are written (back pressure: the caller's writes wait, within its timeout).
//! * **A workspace's queue**: a request for a workspace that has 16 384 requests waiting, or
//!   an `AppendBatch` for one that holds `--max-workspace-queued-bytes` of appends not yet
//!   signed, is answered `Busy` at once, so one busy workspace cannot stall the connection it
//!   shares with every other. A caller that pipelines appends of one
//!   workspace and gets `Busy` for the one at `n` gets `SizeMismatch` (`current_size`) for the
//!   ones it pipelined behind it; it resends from `n`. Those are not counted as fork attempts.
//! * **Leaves per signature** (`--max-group-leaves`): appends queued for one workspace are
//!   signed together, at most that many leaves per checkpoint; the rest wait for the next one.
//!   One `AppendBatch` is never split: a larger one is signed alone.
//! * **Connections** (`--max-connections`): one more is closed at once, before any frame.
//!
//! # What the signer checks in an `AppendBatch` (version 3)
//!
//! The signer computes every leaf hash itself, `SHA-256(0x00 ‖ body)` (RFC 9162), so it only
//! ever signs a tree of receipt bodies it has read. It answers `ReceiptRefused` unless every
//! body of the batch
//!
//! * is a receipt body with the types, encodings and rules of `docs/receipt-format.md` §4
//!   (`allowly_receipt::types::ReceiptBodyView`; canonical form is not re-checked: a verifier
//!   hashes the canonical form of what it is given, so a leaf over non-canonical bytes can
//!   never be proven for any body);
//! * names the request's `workspace_id`;
//! * has `log_index` = `expected_size` + its position in the batch;
//! * is not a `key.rotated` receipt (those are the signer's own, made by `RotateKey`);
//! * has a `time` not earlier than the previous appended body's in that workspace's log (the
//!   signer keeps that time in its journal across restarts) and not more than
//!   10 minutes ahead of the signer's clock.
//!
//! # Properties relied on by the tests
//!
//! * Decoding never panics and allocates at most in proportion to the frame.
//! * The encoding is canonical: if `decode(f)` succeeds, re-encoding the
//!   result gives back exactly `f`; and whatever encodes, decodes to itself.
//! * Any proper prefix of a valid frame fails to decode.
//!
//! # Example: the signer's side of a connection
//!
//! A decode error that carries a request id is answered with an `Error`
//! reply to that id; one without (unreadable header, bad length prefix,
//! I/O failure) cannot be addressed, so the connection is closed.
//!
//! ```no_run
//! use allowly_signer_proto::{
//!     decode_request, encode_response, read_frame, write_frame, ErrorReply, ProtoError,
//!     Request, Response,
//! };
//! use tokio::net::UnixStream;
//!
//! async fn serve(mut stream: UnixStream) -> Result<(), ProtoError> {
//!     let (mut rd, mut wr) = stream.split();
//!     let (mut buf, mut out) = (Vec::new(), Vec::new());
//!     while let Some(frame) = read_frame(&mut rd, &mut buf).await? {
//!         out.clear();
//!         let (id, resp) = match decode_request(frame) {
//!             Ok((id, Request::Ping)) => (id, Response::Pong),
//!             Ok((id, _other)) => (id, Response::Pong), // real handlers here
//!             Err(e) => match e.request_id() {
//!                 Some(id) => (id, Response::Error(ErrorReply {
//!                     code: e.code(),
//!                     message: e.to_string(),
//!                     current_size: None,
//!                 })),
//!                 None => return Err(e),
//!             },
//!         };
//!         encode_response(id, &resp, &mut out)?;
//!         write_frame(&mut wr, &out).await?;
//!     }
//!     Ok(()) // clean EOF
//! }
//! ```
//!
//! # Size budget
//!
//! [`MAX_BATCH_LEAVES`] is chosen so that the answer to the largest batch
//! always fits in a frame even when it asks for proofs (`want_proofs`):
//! 4096 proofs of at most 64 hashes take 4096 × (4 + 64 × 32) = 8 404 992
//! bytes, leaving over 8 MiB of [`MAX_FRAME`] for the rest (checked at
//! compile time). Without proofs an `Appended` is the header, two sizes and
//! the checkpoint note: a few hundred bytes whatever the batch size.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
mod codec;
mod error;
mod frame;
mod message;

pub use codec::{decode_request, decode_response, encode_request, encode_response};
pub use error::{ErrorCode, ProtoError};
pub use frame::{read_frame, read_frame_body, read_frame_len, write_frame};
pub use message::{Append, AppendResult, ErrorReply, Hash, KeyInfo, Request, Response, SignedLeaf};

/// The only protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 3;

/// Largest frame (bytes after the length prefix): 16 MiB. Bounds the memory
/// one frame can make either side allocate.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Most leaves in one `AppendBatch`.
///
/// 4096 rather than the 65 536 first specified: an `Appended` answer that
/// was asked for proofs carries one per leaf, and 65 536 proofs of even 16 hashes
/// (the minimum once the tree holds 65 536 leaves) take 33.8 MB, more than
/// [`MAX_FRAME`], so a maximal batch could never be answered.
pub const MAX_BATCH_LEAVES: usize = 4096;

/// Longest receipt body in an `AppendBatch`: 64 KiB. The engine's bodies are about 0.5 KiB;
/// its request limits (64 scopes, 1 KiB resources, hashes instead of metadata) keep even a
/// maximal `authorization.created` body far below this.
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// Most body bytes in one `AppendBatch`: 8 MiB, half of [`MAX_FRAME`] (checked at compile
/// time to leave room for the framing of [`MAX_BATCH_LEAVES`] bodies). A full batch of
/// [`MAX_BATCH_LEAVES`] typical 0.5 KiB bodies is 2 MiB; a sender splits a batch at whichever
/// limit it reaches first. The signer keeps only the 32-byte leaf hashes once a batch is
/// checked, so its coalesced groups (up to 65 536 leaves) cost 2 MiB of hashes, not bodies.
pub const MAX_BATCH_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Most appends (workspaces) in one `AppendMany`. Its answer is then at most 256 results of
/// a few hundred bytes each (a checkpoint note, or an error message the signer keeps short).
pub const MAX_MANY_APPENDS: usize = 256;

/// Most hashes in one inclusion proof: an audit path in a tree of fewer than
/// 2^64 leaves has at most 64 nodes.
pub const MAX_PROOF_HASHES: usize = 64;

/// Most entries in one `LogSizes` answer (4096 × at most 140 bytes: well under a frame).
pub const MAX_LOG_SIZES: usize = 4096;

/// Longest key record in `ImportKeys` / `KeyRecord`: 256 KiB. A key file takes about 400 bytes
/// per key (pretty JSON with a sealed seed), so this holds some 600 rotations; a signer refuses
/// (`KeyRecordRefused`) to export or import a larger one rather than send a partial record.
pub const MAX_KEY_RECORD_LEN: usize = 256 * 1024;

/// Longest checkpoint note in an `Adopt`: 64 KiB. A signer's note is about 200 bytes; this
/// leaves room for the witnesses' cosignature lines a stored checkpoint may carry.
pub const MAX_CHECKPOINT_LEN: usize = 64 * 1024;

/// Most hashes in one consistency proof (`Adopt.proof`): RFC 9162 proofs between trees of fewer
/// than 2^64 leaves have at most 2 × 64.
pub const MAX_CONSISTENCY_HASHES: usize = 128;

/// Byte limit of `str` fields that hold ids or names.
pub const MAX_ID_LEN: usize = 4096;

/// Longest workspace id (`^[A-Za-z0-9_-]{1,128}$`).
pub const MAX_WORKSPACE_ID_LEN: usize = 128;

/// Worst case `Appended` without its checkpoint text: header, sizes,
/// checkpoint length, proof count, and MAX_BATCH_LEAVES maximal proofs.
const WORST_APPENDED_WITHOUT_CHECKPOINT: usize = 10 + 8 + 8 + 4 + 4 + MAX_BATCH_LEAVES * (4 + MAX_PROOF_HASHES * 32);

// The largest AppendBatch must fit in a frame, with room for its header and workspace id.
const _: () = assert!(10 + 4 + MAX_ID_LEN + 8 + 4 + MAX_BATCH_LEAVES * 4 + MAX_BATCH_BODY_BYTES < MAX_FRAME);

// The largest AppendMany must fit in a frame: MAX_MANY_APPENDS headers and, over all of them,
// MAX_BATCH_LEAVES body lengths and MAX_BATCH_BODY_BYTES of bodies.
const _: () = assert!(
    10 + 4 + MAX_MANY_APPENDS * (4 + MAX_WORKSPACE_ID_LEN + 8 + 4) + MAX_BATCH_LEAVES * 4 + MAX_BATCH_BODY_BYTES
        < MAX_FRAME
);

// The answer to any valid AppendBatch must be encodable, with at least
// 1 MiB left for the checkpoint note.
const _: () = assert!(WORST_APPENDED_WITHOUT_CHECKPOINT + (1 << 20) <= MAX_FRAME);

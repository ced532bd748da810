//! The signer's own audit log: `<dir>/audit.log`, append-only JSON lines, one per signed
//! checkpoint (and per refused fork/rollback attempt, key creation, rotation and workspace
//! load), so the security team can reconcile what the signer signed with what the service
//! stored. This module only shapes the lines; the journal writer thread (`journal`) writes them.
//!
//! # Durability (what survives a crash)
//!
//! The journal writer handles a whole group of submissions (from any number of workspaces) at
//! once: it chains the group's audit lines and writes them, as one *audit record*, into the
//! journal beside the group's state records, fdatasyncs the journal once, appends the same lines
//! to `audit.log` (not fsynced), and only then completes the submitters. So a signature leaves
//! the process only once its journal record and its audit line are durable — both in the
//! journal —, at a cost of one fsync per *group*, not per batch, and every line is in
//! `audit.log` (at least in the page cache) before the answer.
//!
//! `audit.log` is therefore a copy that can lag the journal after a crash: lines missing (a
//! crash between the journal's fsync and the audit write, or a machine crash that lost the
//! unsynced pages), a partial or garbled last part. Opening the journal repairs it from the
//! journal's audit records (rewriting what differs, cutting what no surviving journal record
//! vouches for) and fdatasyncs it before the signer serves anything; the journal keeps its
//! audit records until an fsync of `audit.log` has succeeded after them (before a compaction).
//! If a write fails, the writer truncates both files back to where the group began and fails
//! the whole group: no checkpoint is released without its line. Every workspace load also
//! writes a `resumed` line naming the checkpoint it continues from (a record of the restart;
//! before the audit records it also covered a crash between two fsyncs).
//!
//! # What a line records
//!
//! Every line names the workspace, the log size it speaks of, the checkpoint root (when there
//! is one), the active key id and the peer uid that asked. A `checkpoint` or `rotation` line
//! also lists the group's **leaf hashes** (`leaves`, in log order, indices
//! `size - leaves.len() .. size`). Not a hash over them: the checkpoint root already commits to
//! the count and every leaf, but an auditor holding a suspicious receipt needs to find *which*
//! group appended its leaf, when and at whose request, and to diff the signer's leaves against
//! the service's store; a digest would only say that a group differs, not where. The cost is
//! 64 bytes of hex per receipt (about an eighth of a receipt body), chained by the journal
//! thread, not by the signing path.
//!
//! # The hash chain
//!
//! Each line starts with `"prev"`: the SHA-256 (hex) of the previous line's bytes (newline
//! excluded), 64 zeros on the first line. The journal writer adds it, in file order, so a
//! deleted, inserted, reordered or edited line breaks the chain at the next line
//! ([`verify_chain`], `allowly-signer audit verify`). The chain alone cannot show that lines
//! were cut from the *end*: record the head (the last line's hash, printed by the verifier)
//! and pass it later with `--head`; the verifier then requires a line with that hash. A log
//! written before the chain existed has no `prev` and does not verify: keep it aside and let
//! the signer start a new file.

use allowly_receipt::merkle::Hash;
use allowly_receipt::types::{HexHash, Timestamp};
use serde::Serialize;

use crate::error::{Result, SignerError};

/// What happened.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Created,
    Checkpoint,
    Rotation,
    Resumed,
    /// An append or rotation refused as a fork, rollback or skipped index.
    Refused,
    /// An append refused because a body is not a receipt the signer may sign.
    ReceiptRefused,
    /// An append at signed indices whose leaves agree with the log (a lost answer retried),
    /// answered with the current size.
    Stale,
    /// The log continued from a checkpoint another signer signed (`Adopt`, ownership moved
    /// here); `size` and `root` are the note's. A refused `Adopt` is a `Refused` line.
    Adopted,
    /// A key record another signer exported was installed (`ImportKeys`); `key_id` is the
    /// record's active key, `size` 0 (the line is about keys, not the log). A refused one is
    /// logged and counted, not audited: nothing changed.
    KeysImported,
}

/// One line. Every member but `leaves` is written by serde_json; `leaves`, by [`Entry::line`].
#[derive(Debug, Clone, Serialize)]
pub struct Entry<'a> {
    pub time: Timestamp,
    pub event: Event,
    pub workspace_id: &'a str,
    pub size: u64,
    /// Base64 root of the checkpoint (as in the note), when there is one.
    pub root: Option<String>,
    pub key_id: Option<String>,
    /// Uid of the peer that asked (from SO_PEERCRED); `None` for the signer's own actions.
    pub peer_uid: Option<u32>,
    pub detail: Option<String>,
    /// `checkpoint` and `rotation` lines: the leaf hashes the group appended, in log order
    /// (indices `size - leaves.len() .. size`), as 64 lowercase hex digits each; the last member
    /// of the line, absent when `None`.
    #[serde(skip)]
    pub leaves: Option<&'a [Hash]>,
}

impl Entry<'_> {
    /// The entry as one audit-log line, newline included.
    pub fn line(&self) -> Result<Vec<u8>> {
        let mut line = Vec::with_capacity(256 + self.leaves.map_or(0, |l| l.len() * 67));
        serde_json::to_writer(&mut line, self).map_err(|e| SignerError::Corrupt(format!("audit line: {e}")))?;
        if let Some(leaves) = self.leaves {
            // `{…}` → `{…,"leaves":[…]}`: a receipt's one hash per line, written without serde
            // checking each hex digit for something to escape (there is nothing).
            line.pop();
            line.extend_from_slice(b",\"leaves\":");
            write_hex_array(&mut line, leaves);
            line.push(b'}');
        }
        line.push(b'\n');
        Ok(line)
    }
}

/// Appends `["<hex>",…]`, each hash as 64 lowercase hex digits: exactly what serde_json writes
/// for them as `HexHash`es, at a fraction of the cost.
pub fn write_hex_array<'h>(out: &mut Vec<u8>, hashes: impl IntoIterator<Item = &'h Hash>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(b'[');
    for (i, h) in hashes.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut quoted = [b'"'; 66];
        for (pair, byte) in quoted[1..65].chunks_exact_mut(2).zip(h) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        out.extend_from_slice(&quoted);
    }
    out.push(b']');
}

// ---------------------------------------------------------------------------------------------
// The hash chain.

/// `prev` of the first line of an audit log.
pub const GENESIS: [u8; 32] = [0; 32];

/// The hash a line is chained by: SHA-256 of its bytes, newline excluded.
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(line.strip_suffix(b"\n").unwrap_or(line)).into()
}

/// Appends `lines` (whole JSON-object lines, each ending in `\n`, as [`Entry::line`] makes
/// them) to `out`, each with `"prev":"<hex of the previous line's hash>"` as its first member,
/// and advances `head` to the hash of the last one. Only the journal writer calls this, in
/// file order, so the chain follows the file.
pub fn chain_lines(head: &mut [u8; 32], lines: &[u8], out: &mut Vec<u8>) {
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let start = out.len();
        let inner = line.strip_prefix(b"{").unwrap_or(line);
        out.extend_from_slice(b"{\"prev\":\"");
        out.extend_from_slice(hex::encode(*head).as_bytes());
        out.push(b'"');
        if !inner.starts_with(b"}") {
            out.push(b',');
        }
        out.extend_from_slice(inner);
        *head = line_hash(&out[start..]);
    }
}

/// What [`verify_chain`] found in an intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub lines: u64,
    /// Hash of the last line ([`GENESIS`] for an empty log): record it to detect a later
    /// truncation (`--head`).
    pub head: [u8; 32],
    /// The line whose hash is the expected head, when one was given.
    pub head_line: Option<u64>,
}

/// Checks an audit log's hash chain; with `expected_head`, also that a line with that hash
/// exists (so the log was not cut back or rewritten since the head was recorded). The error is
/// the first problem met (one of the `SignerError::Audit*` variants), with its 1-based line.
pub fn verify_chain(text: &[u8], expected_head: Option<[u8; 32]>) -> Result<ChainSummary> {
    #[derive(serde::Deserialize)]
    struct Prev<'a> {
        prev: &'a str,
    }
    let mut head = GENESIS;
    let mut lines = 0u64;
    let mut head_line = None;
    for line in text.split_inclusive(|&b| b == b'\n') {
        lines += 1;
        if !line.ends_with(b"\n") {
            return Err(SignerError::AuditTorn { line: lines });
        }
        let prev = serde_json::from_slice::<Prev<'_>>(line)
            .ok()
            .and_then(|p| HexHash::parse(p.prev).ok())
            .ok_or(SignerError::AuditUnreadable { line: lines })?;
        if prev.0 != head {
            return Err(if lines == 1 {
                SignerError::AuditBadStart
            } else {
                SignerError::AuditBroken { line: lines, prev_line: lines - 1 }
            });
        }
        head = line_hash(line);
        if expected_head == Some(head) {
            head_line = Some(lines);
        }
    }
    match expected_head {
        Some(GENESIS) => head_line = Some(0),
        Some(h) if head_line.is_none() => return Err(SignerError::AuditHeadMissing { head: hex::encode(h) }),
        _ => {}
    }
    Ok(ChainSummary { lines, head, head_line })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn chained(lines: &[String]) -> (Vec<u8>, [u8; 32]) {
        let mut head = GENESIS;
        let mut out = Vec::new();
        for l in lines {
            chain_lines(&mut head, format!("{l}\n").as_bytes(), &mut out);
        }
        (out, head)
    }

    fn entries() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            ("[a-z]{1,8}", 0u64..1000).prop_map(|(w, n)| format!(r#"{{"ws":"{w}","size":{n}}}"#)),
            1..12,
        )
    }

    #[test]
    fn an_empty_object_and_several_lines_at_once_chain_too() {
        let mut head = GENESIS;
        let mut out = Vec::new();
        chain_lines(&mut head, b"{}\n{\"a\":1}\n", &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with(&format!("{{\"prev\":\"{}\"}}\n{{\"prev\":\"", hex::encode(GENESIS))), "{text}");
        assert_eq!(verify_chain(&out, Some(head)).unwrap().head_line, Some(2));
        assert_eq!(verify_chain(b"", None).unwrap().lines, 0);
    }

    /// What `Entry::line` wrote before the leaves were written by hand: serde_json throughout.
    #[derive(Serialize)]
    struct SerdeEntry<'a> {
        #[serde(flatten)]
        entry: &'a Entry<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        leaves: Option<Vec<HexHash>>,
    }

    fn hash() -> impl Strategy<Value = Hash> {
        any::<[u8; 32]>()
    }

    proptest! {
        /// The hand-written leaves give the bytes serde_json gives.
        #[test]
        fn lines_are_what_serde_json_writes(
            leaves in prop::option::of(prop::collection::vec(hash(), 0..5)),
            root in prop::option::of(".{0,6}"),
            detail in prop::option::of(".{0,6}"),
            size in any::<u64>(),
        ) {
            let e = Entry {
                time: Timestamp::from_unix_ms(1_767_225_600_123).unwrap(),
                event: Event::Checkpoint,
                workspace_id: "ws\"1",
                size,
                root,
                key_id: Some("0a1b2c3d".into()),
                peer_uid: Some(7),
                detail,
                leaves: leaves.as_deref(),
            };
            let mut want = serde_json::to_vec(&SerdeEntry {
                entry: &e,
                leaves: leaves.as_ref().map(|l| l.iter().copied().map(HexHash).collect()),
            })
            .unwrap();
            want.push(b'\n');
            prop_assert_eq!(String::from_utf8(e.line().unwrap()).unwrap(), String::from_utf8(want).unwrap());
        }

        #[test]
        fn verify_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = verify_chain(&bytes, None);
        }

        /// A chained log verifies, every line is valid JSON, and the head is its last line's.
        #[test]
        fn chained_lines_verify(lines in entries()) {
            let (text, head) = chained(&lines);
            for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(l).is_ok());
            }
            let s = verify_chain(&text, Some(head)).unwrap();
            prop_assert_eq!((s.lines, s.head, s.head_line), (lines.len() as u64, head, Some(lines.len() as u64)));
        }

        /// Any change of one byte is detected given the head (without it, only the last line's
        /// own bytes escape the chain).
        #[test]
        fn any_changed_byte_is_detected(lines in entries(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
            let (mut text, head) = chained(&lines);
            let i = at.index(text.len());
            text[i] ^= x;
            prop_assert!(verify_chain(&text, Some(head)).is_err());
            let last_line_start = text[..text.len() - 1].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            if i < last_line_start {
                prop_assert!(verify_chain(&text, None).is_err());
            }
        }

        /// Deleting, duplicating or swapping lines is detected.
        #[test]
        fn line_edits_are_detected(lines in entries(), at in any::<prop::sample::Index>(), op in 0..3u8) {
            let (text, head) = chained(&lines);
            let mut split: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
            let i = at.index(split.len());
            match op {
                0 => { split.remove(i); }
                1 => { let l = split[i]; split.insert(i, l); }
                _ if split.len() > 1 => { let j = (i + 1) % split.len(); split.swap(i, j); }
                _ => { split.clear(); }
            }
            prop_assert!(verify_chain(&split.concat(), Some(head)).is_err());
        }
    }
}

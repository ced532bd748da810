//! Evidence bundles: keys, checkpoints, consistency proofs and receipts in one JSON Lines file,
//! so that a whole trail or log range can be checked offline as a unit.
//!
//! Line 1 is the header; every other line is one record tagged by `type`. Every line is a JSON
//! object parsed with the strict RFC 8785 rules.

use serde::{Deserialize, Serialize};

use crate::types::{AnyReceipt, HexHash, KeySet, PendingReceipt, SignedReceipt, Timestamp};
use crate::{jcs, Error, Result};

/// Bundle format version.
pub const BUNDLE_VERSION: u64 = 1;

/// Largest bundle line accepted (a receipt with a 64-hash proof and its checkpoint is ~6 KiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What the bundle claims to contain. It is unsigned: a claim the signed parts must bear out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Scope {
    /// The whole trail of one authorization, seq 0 ..= `last_seq`.
    Authorization { authorization_id: String, last_seq: u64 },
    /// Every leaf of the workspace log with index in `from .. to`.
    Log { from: u64, to: u64 },
}

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub v: u64,
    pub workspace_id: String,
    pub scope: Scope,
    /// When the export was made (informational).
    pub created_at: Timestamp,
}

/// A consistency proof between two checkpoints the bundle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    pub old_size: u64,
    pub new_size: u64,
    pub proof: Vec<HexHash>,
}

/// One line of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Record {
    Bundle { header: Header },
    Keys { keys: KeySet },
    Checkpoint { checkpoint: String },
    Consistency { consistency: Consistency },
    Receipt { receipt: serde_json::Value },
}

/// A bundle in memory. `to_jsonl` writes it; `parse` reads it back record by record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bundle {
    pub header: Option<Header>,
    pub keys: Vec<KeySet>,
    pub checkpoints: Vec<String>,
    pub consistency: Vec<Consistency>,
    pub receipts: Vec<AnyReceipt>,
}

/// One line that could not be read, with its 1-based line number: evidence of damage, reported
/// by the verifier as an integrity finding rather than aborting the whole check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub error: Error,
    /// The line is a well-formed receipt record whose *body* breaks the §3 input rules
    /// (`body_not_canonical`, not `record_malformed`: the envelope around it could be read).
    pub body_not_canonical: bool,
}

impl Bundle {
    /// Writes JSON Lines: header, keys, checkpoints, consistency proofs, receipts.
    pub fn to_jsonl(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut line = |rec: &Record| -> Result<()> {
            out.extend_from_slice(&jcs::to_canonical_vec(rec)?);
            out.push(b'\n');
            Ok(())
        };
        if let Some(h) = &self.header {
            line(&Record::Bundle { header: h.clone() })?;
        }
        for k in &self.keys {
            line(&Record::Keys { keys: k.clone() })?;
        }
        for c in &self.checkpoints {
            line(&Record::Checkpoint { checkpoint: c.clone() })?;
        }
        for c in &self.consistency {
            line(&Record::Consistency { consistency: c.clone() })?;
        }
        for r in &self.receipts {
            let receipt = match r {
                AnyReceipt::Pending(p) => serde_json::to_value(p),
                AnyReceipt::Signed(s) => serde_json::to_value(s),
            }
            .map_err(|e| Error::Canonicalize(e.to_string()))?;
            line(&Record::Receipt { receipt })?;
        }
        Ok(out)
    }

    /// Reads a bundle. Fails only when the input is not a bundle at all (not UTF-8 JSON Lines
    /// starting with a valid header); damaged later lines are returned in the second list.
    pub fn parse(bytes: &[u8]) -> Result<(Self, Vec<BadLine>)> {
        let mut lines = bytes.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.trim_ascii().is_empty());
        let header = match lines.next() {
            Some((_, first)) => match parse_line(first, &mut None)? {
                Record::Bundle { header } if header.v == BUNDLE_VERSION => header,
                Record::Bundle { .. } => {
                    return Err(Error::Field { field: "bundle", msg: "unsupported version".into() })
                }
                _ => return Err(Error::Field { field: "bundle", msg: "first line must be the bundle header".into() }),
            },
            None => return Err(Error::Field { field: "bundle", msg: "empty file".into() }),
        };
        let mut b = Self { header: Some(header), ..Self::default() };
        let mut bad = Vec::new();
        for (i, raw) in lines {
            let mut body_error = None;
            let rec = parse_line(raw, &mut body_error).and_then(|rec| match rec {
                Record::Receipt { receipt } => AnyReceipt::from_value(receipt).map(|r| {
                    // A body that breaks §3 has no trustworthy canonical form: the receipt is
                    // reported, not verified (the values standing in for the violations are not
                    // the signed ones).
                    if body_error.is_none() {
                        b.receipts.push(r);
                    }
                }),
                Record::Keys { keys } => {
                    b.keys.push(keys);
                    Ok(())
                }
                Record::Checkpoint { checkpoint } => {
                    b.checkpoints.push(checkpoint);
                    Ok(())
                }
                Record::Consistency { consistency } => {
                    b.consistency.push(consistency);
                    Ok(())
                }
                Record::Bundle { .. } => Err(Error::Field { field: "bundle", msg: "second header".into() }),
            });
            match (rec, body_error) {
                (Err(error), _) => bad.push(BadLine { line: i + 1, error, body_not_canonical: false }),
                (Ok(()), Some(error)) => bad.push(BadLine { line: i + 1, error, body_not_canonical: true }),
                (Ok(()), None) => {}
            }
        }
        Ok((b, bad))
    }
}

/// Reads one line. An I-JSON violation inside a receipt record's `body` is not a failure of the
/// line: it is put in `body_error` (§3, §7.1 step 3: `body_not_canonical`, as for a single
/// receipt); anywhere else it makes the line unreadable.
fn parse_line(raw: &[u8], body_error: &mut Option<Error>) -> Result<Record> {
    if raw.len() > MAX_LINE_BYTES {
        return Err(Error::Field { field: "bundle", msg: format!("line longer than {MAX_LINE_BYTES} bytes") });
    }
    let (value, violations) = jcs::parse_lenient(raw)?;
    let is_receipt = value.get("type").and_then(serde_json::Value::as_str) == Some("receipt");
    for v in violations {
        if is_receipt && v.is_under(&["receipt", "body"]) {
            body_error.get_or_insert(v.error);
        } else {
            return Err(v.error);
        }
    }
    serde_json::from_value(value).map_err(|e| Error::Field { field: "bundle", msg: e.to_string() })
}

impl From<PendingReceipt> for AnyReceipt {
    fn from(p: PendingReceipt) -> Self {
        Self::Pending(p)
    }
}

impl From<SignedReceipt> for AnyReceipt {
    fn from(s: SignedReceipt) -> Self {
        Self::Signed(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            v: BUNDLE_VERSION,
            workspace_id: "ws_1".into(),
            scope: Scope::Log { from: 0, to: 2 },
            created_at: Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(),
        }
    }

    #[test]
    fn header_must_come_first_and_once() {
        assert!(Bundle::parse(b"").is_err());
        assert!(Bundle::parse(b"{\"type\":\"checkpoint\",\"checkpoint\":\"x\"}\n").is_err());
        let b = Bundle { header: Some(header()), ..Bundle::default() };
        let mut bytes = b.to_jsonl().unwrap();
        bytes.extend_from_slice(&b.to_jsonl().unwrap());
        let (_, bad) = Bundle::parse(&bytes).unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 2);
    }

    #[test]
    fn unknown_members_and_types_are_damage() {
        let b = Bundle { header: Some(header()), ..Bundle::default() };
        let mut bytes = b.to_jsonl().unwrap();
        bytes.extend_from_slice(b"{\"type\":\"checkpoint\",\"checkpoint\":\"x\",\"extra\":1}\n{\"type\":\"nope\"}\n");
        let (parsed, bad) = Bundle::parse(&bytes).unwrap();
        assert!(parsed.checkpoints.is_empty());
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2, 3]);
    }

    proptest! {
        #[test]
        fn round_trips(checkpoints in proptest::collection::vec("[a-z\\n]{1,20}", 0..4), from in 0u64..100, len in 0u64..100) {
            let b = Bundle {
                header: Some(Header { scope: Scope::Log { from, to: from + len }, ..header() }),
                checkpoints,
                consistency: vec![Consistency { old_size: from, new_size: from + len, proof: vec![HexHash([7; 32])] }],
                ..Bundle::default()
            };
            let (back, bad) = Bundle::parse(&b.to_jsonl().unwrap()).unwrap();
            prop_assert!(bad.is_empty());
            prop_assert_eq!(back, b);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Bundle::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_damaged_bundles(cut in 0usize..2000, flip in 0usize..2000, bit in 0u8..8) {
            let b = Bundle { header: Some(header()), checkpoints: vec!["a\nb\n".into()], ..Bundle::default() };
            let mut bytes = b.to_jsonl().unwrap();
            let n = bytes.len();
            bytes[flip % n] ^= 1 << bit;
            bytes.truncate(cut % (n + 1));
            let _ = Bundle::parse(&bytes);
        }
    }
}

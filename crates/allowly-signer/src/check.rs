//! What the signer checks before it signs an appended batch: it reads every body, hashes it
//! itself (RFC 9162 leaf hash, `allowly_receipt::merkle::leaf_hash`) and refuses the whole
//! batch unless each body is a well-formed receipt body (`allowly_receipt::types::
//! ReceiptBodyView`: §4 types, encodings and rules of `docs/receipt-format.md`) of the
//! workspace it is appended to, at the index it claims, not a `key.rotated` receipt (those are
//! the signer's own), with a time that never goes backwards within the batch and is not more
//! than [`MAX_FUTURE_SKEW_MS`] ahead of the signer's clock.
//!
//! Stateless: the one check that needs the log (a batch's first time is not before the log's
//! last appended time) is the workspace actor's, which knows the log's running state.
//!
//! Cost: one pass of `ReceiptBodyView::parse_canonical` over the body (RFC 8785 canonical
//! bytes, which is what the service sends: no allocation, no intermediate value, each member
//! checked as it is met) and one SHA-256 of it. A body that reader leaves alone (not canonical,
//! or not a receipt body) is read again by `ReceiptBodyView::parse`, which decides and says why,
//! so what is accepted and refused is exactly what `parse` accepts and refuses; those bodies
//! are counted (`Checked::slow_reads`).

use allowly_receipt::merkle::{leaf_hash, Hash};
use allowly_receipt::types::{EventKind, ReceiptBodyView};

use crate::error::SignerError;

/// How far ahead of the signer's clock a receipt's `time` may be. A body far in the future
/// would make every later honest receipt "go backwards" and lock the log; receipts are
/// decided before they are signed, so an honest time is in the past, up to clock skew.
pub const MAX_FUTURE_SKEW_MS: u64 = 10 * 60 * 1000;

/// Why a batch was refused: a closed set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not a well-formed receipt body.
    Malformed,
    /// A receipt of another workspace.
    Workspace,
    /// `log_index` is not the body's position in the log.
    LogIndex,
    /// A kind the caller may not append (`key.rotated`).
    Kind,
    /// Earlier than the previous leaf's time.
    TimeBackwards,
    /// Too far ahead of the signer's clock.
    TimeFuture,
}

impl Reason {
    /// Every reason (the metric's label set, exported at zero from the start).
    pub const ALL: [Reason; 6] =
        [Self::Malformed, Self::Workspace, Self::LogIndex, Self::Kind, Self::TimeBackwards, Self::TimeFuture];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Workspace => "workspace",
            Self::LogIndex => "log_index",
            Self::Kind => "kind",
            Self::TimeBackwards => "time_backwards",
            Self::TimeFuture => "time_future",
        }
    }
}

/// A refused batch: the first offending body's log position and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The log index the offending body would have taken.
    pub index: u64,
    pub reason: Reason,
    pub detail: String,
}

impl From<Refusal> for SignerError {
    fn from(r: Refusal) -> Self {
        SignerError::ReceiptRefused { index: r.index, reason: format!("{} ({})", r.detail, r.reason.label()) }
    }
}

/// A batch that passed: its leaf hashes and the times of its first and last body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub leaves: Vec<Hash>,
    /// Unix ms of the first body's `time`.
    pub first_ms: u64,
    /// Unix ms of the last body's `time` (≥ `first_ms`).
    pub last_ms: u64,
    /// Bodies the one-pass canonical reader left to the general parser.
    pub slow_reads: usize,
}

/// Checks `bodies` appended to workspace `ws` at `expected_size..` (see the module docs).
pub fn check_batch(ws: &str, expected_size: u64, bodies: &[Vec<u8>], now_ms: u64) -> Result<Checked, Refusal> {
    let mut leaves = Vec::with_capacity(bodies.len());
    let (mut first_ms, mut last_ms, mut slow_reads) = (0, 0, 0);
    for (i, body) in bodies.iter().enumerate() {
        let index = expected_size.saturating_add(i as u64);
        let refuse = |reason, detail: String| Refusal { index, reason, detail };
        let view = match ReceiptBodyView::parse_canonical(body) {
            Some(view) => view,
            None => {
                slow_reads += 1;
                ReceiptBodyView::parse(body).map_err(|e| refuse(Reason::Malformed, e.to_string()))?
            }
        };
        if view.workspace_id != ws {
            return Err(refuse(Reason::Workspace, format!("a receipt of workspace {:?}", view.workspace_id)));
        }
        if view.log_index != index {
            return Err(refuse(Reason::LogIndex, format!("body claims log_index {}", view.log_index)));
        }
        if view.kind == EventKind::KeyRotated {
            return Err(refuse(Reason::Kind, "key.rotated receipts are made by the signer alone".into()));
        }
        let ms = view.time.unix_ms();
        if i > 0 && ms < last_ms {
            return Err(refuse(Reason::TimeBackwards, format!("time {} is before the previous leaf's", view.time)));
        }
        if ms > now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
            return Err(refuse(Reason::TimeFuture, format!("time {} is ahead of the signer's clock", view.time)));
        }
        if i == 0 {
            first_ms = ms;
        }
        last_ms = ms;
        leaves.push(leaf_hash(body));
    }
    Ok(Checked { leaves, first_ms, last_ms, slow_reads })
}

/// A well-formed `check` receipt body (canonical bytes) of workspace `ws` at log `index`,
/// decided at `time_ms`; `tag` goes into its resource, so different tags give different
/// leaves at one index. For tests, benchmarks and examples: the service builds real bodies.
#[doc(hidden)]
pub fn sample_body(ws: &str, tag: &str, index: u64, time_ms: u64) -> allowly_receipt::Result<Vec<u8>> {
    use allowly_receipt::types::{Decision, HexHash, ReceiptBody, Timestamp, FORMAT_VERSION};
    ReceiptBody {
        v: FORMAT_VERSION,
        id: format!("rcpt_{index}"),
        workspace_id: ws.to_owned(),
        authorization_id: Some("auth_sample".into()),
        seq: Some(index + 1),
        prev: Some(HexHash(leaf_hash(&index.to_be_bytes()))),
        log_index: index,
        kind: EventKind::Check,
        decision: Some(Decision::Allow),
        reason: Some("granted".into()),
        scopes: vec!["files.read".into(), "files.list".into()],
        resource: Some(format!("drive:file/{tag}/report-{index}.pdf")),
        time: Timestamp::from_unix_ms(time_ms)?,
        auth_state_hash: Some(HexHash(leaf_hash(ws.as_bytes()))),
        grant: None,
        approval: None,
        escalation_id: None,
        context_hash: Some(HexHash(leaf_hash(tag.as_bytes()))),
        key: None,
        asked_authorization_id: None,
        expires_at: None,
        scope_rules: None,
    }
    .canonical_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T0: u64 = 1_767_225_600_000;

    /// A body in another JSON form than the canonical one is still what `parse` accepts: read
    /// by the general parser (counted), and hashed as given, like a canonical one.
    #[test]
    fn a_non_canonical_body_takes_the_general_parser_and_is_hashed_as_given() {
        let canonical = sample_body("ws", "t", 5, T0).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&sample_body("ws", "t", 6, T0).unwrap()).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        let c = check_batch("ws", 5, &[canonical.clone(), pretty.clone()], T0).unwrap();
        assert_eq!(c.slow_reads, 1);
        assert_eq!(c.leaves, [leaf_hash(&canonical), leaf_hash(&pretty)]);
        assert_eq!(check_batch("ws", 5, &[canonical], T0).unwrap().slow_reads, 0);
    }

    #[test]
    fn refusals_name_the_first_offending_index_and_reason() {
        let body = |i| sample_body("ws", "t", i, T0 + i).unwrap();
        let check = |bodies: &[Vec<u8>]| check_batch("ws", 5, bodies, T0).map_err(|r| (r.index, r.reason));
        assert_eq!(check(&[body(5), body(7)]), Err((6, Reason::LogIndex)));
        assert_eq!(check(&[body(5), b"{\"v\":1}".to_vec()]), Err((6, Reason::Malformed)));
        let other = sample_body("ws_other", "t", 5, T0).unwrap();
        assert_eq!(check(&[other]), Err((5, Reason::Workspace)));
        let future = sample_body("ws", "t", 5, T0 + MAX_FUTURE_SKEW_MS + 1).unwrap();
        assert_eq!(check(&[future]), Err((5, Reason::TimeFuture)));
        let (early, late) = (sample_body("ws", "t", 5, T0).unwrap(), sample_body("ws", "t", 6, T0 - 1).unwrap());
        assert_eq!(check(&[early, late]), Err((6, Reason::TimeBackwards)));
    }
}

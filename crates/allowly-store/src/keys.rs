//! Key spaces and binary key encodings (the table is in the crate docs).
//!
//! Every per-workspace key starts with `ws ‖ 0x00`. Ids never contain 0x00 (checked on every
//! call), so the keys of workspace `a` are exactly the range `[a ‖ 0x00, a ‖ 0x01)`: no other
//! workspace's key (not even `a_b`'s) sorts inside it, and a workspace's data is one contiguous
//! range that can be moved between nodes. Integers are big-endian so byte order is numeric order.

use crate::error::{Result, StoreError};

/// Separator after an id inside a key.
pub(crate) const SEP: u8 = 0x00;
/// The byte after [`SEP`]: `id ‖ END` is the exclusive end of everything under `id ‖ SEP`.
const END: u8 = 0x01;

/// One key space (a RocksDB column family, a table elsewhere). Public for the engines that
/// implement [`KvEngine`](crate::kv::KvEngine): each keeps one ordered map per space, and
/// [`Space::name`] is the name it is kept under on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Space {
    Workspaces,
    ApiKeys,
    Authorizations,
    Receipts,
    Trail,
    Nodes,
    Checkpoints,
    LogMeta,
    ApiKeyIds,
    Confirmations,
    Escalations,
    Idempotency,
    Webhooks,
    Deliveries,
    Outbox,
    EscalationDue,
    Cosignatures,
    WitnessHeads,
    Members,
    Leases,
    LeaseEpochs,
    SignerKeys,
}

impl Space {
    /// Every key space, in a fixed order (an engine opens them all).
    pub const ALL: [Space; 22] = [
        Space::Workspaces,
        Space::ApiKeys,
        Space::Authorizations,
        Space::Receipts,
        Space::Trail,
        Space::Nodes,
        Space::Checkpoints,
        Space::LogMeta,
        Space::ApiKeyIds,
        Space::Confirmations,
        Space::Escalations,
        Space::Idempotency,
        Space::Webhooks,
        Space::Deliveries,
        Space::Outbox,
        Space::EscalationDue,
        Space::Cosignatures,
        Space::WitnessHeads,
        Space::Members,
        Space::Leases,
        Space::LeaseEpochs,
        Space::SignerKeys,
    ];

    /// Stable name: the column family's name on disk. Never rename one.
    pub fn name(self) -> &'static str {
        match self {
            Space::Workspaces => "workspaces",
            Space::ApiKeys => "api_keys",
            Space::Authorizations => "authorizations",
            Space::Receipts => "receipts",
            Space::Trail => "trail",
            Space::Nodes => "nodes",
            Space::Checkpoints => "checkpoints",
            Space::LogMeta => "log_meta",
            Space::ApiKeyIds => "api_key_ids",
            Space::Confirmations => "confirmations",
            Space::Escalations => "escalations",
            Space::Idempotency => "idempotency",
            Space::Webhooks => "webhooks",
            Space::Deliveries => "deliveries",
            Space::Outbox => "outbox",
            Space::EscalationDue => "escalation_due",
            Space::Cosignatures => "cosignatures",
            Space::WitnessHeads => "witness_heads",
            Space::Members => "members",
            Space::Leases => "leases",
            Space::LeaseEpochs => "lease_epochs",
            Space::SignerKeys => "signer_keys",
        }
    }

    /// The key space of a document kind.
    pub(crate) fn of_doc(kind: crate::types::DocKind) -> Space {
        use crate::types::DocKind;
        match kind {
            DocKind::Confirmation => Space::Confirmations,
            DocKind::Escalation => Space::Escalations,
            DocKind::Idempotency => Space::Idempotency,
            DocKind::Webhook => Space::Webhooks,
            DocKind::Delivery => Space::Deliveries,
            DocKind::Outbox => Space::Outbox,
            DocKind::EscalationDue => Space::EscalationDue,
            DocKind::SignerKeys => Space::SignerKeys,
        }
    }

    /// Position in [`Space::ALL`].
    pub(crate) fn idx(self) -> usize {
        self as usize
    }
}

/// Checks an id (the alphabet is `allowly_receipt`'s, so a stored id is always a valid receipt id).
pub(crate) fn check_id(field: &'static str, id: &str) -> Result<()> {
    allowly_receipt::types::validate_id(field, id)
        .map_err(|_| StoreError::InvalidId { field, id: id.chars().take(128).collect() })
}

fn with_capacity(extra: usize, ws: &str) -> Vec<u8> {
    Vec::with_capacity(ws.len() + 1 + extra)
}

/// `ws ‖ 0x00`: the start of a workspace's range in a per-workspace space.
pub(crate) fn ws_start(ws: &str) -> Vec<u8> {
    let mut k = with_capacity(0, ws);
    k.extend_from_slice(ws.as_bytes());
    k.push(SEP);
    k
}

/// `ws ‖ 0x01`: the exclusive end of a workspace's range.
pub(crate) fn ws_end(ws: &str) -> Vec<u8> {
    let mut k = with_capacity(0, ws);
    k.extend_from_slice(ws.as_bytes());
    k.push(END);
    k
}

/// `api_key_ids`: `ws ‖ 0x00 ‖ key id`, with an empty `ws` for instance keys (a workspace id is
/// never empty, so the two cannot collide).
pub(crate) fn api_key_id(ws: Option<&str>, id: &str) -> Vec<u8> {
    let ws = ws.unwrap_or("");
    let mut k = with_capacity(id.len(), ws);
    k.extend_from_slice(ws.as_bytes());
    k.push(SEP);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `workspaces` and `log_meta`: the bare workspace id.
pub(crate) fn workspace(ws: &str) -> Vec<u8> {
    ws.as_bytes().to_vec()
}

/// `authorizations` and `receipts`: `ws ‖ 0x00 ‖ id`.
pub(crate) fn ws_id(ws: &str, id: &str) -> Vec<u8> {
    let mut k = with_capacity(id.len(), ws);
    k.extend_from_slice(ws.as_bytes());
    k.push(SEP);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The workspace and id of a [`ws_id`] key, if it is one (both valid ids).
pub(crate) fn split_ws_id(key: &[u8]) -> Option<(&str, &str)> {
    let at = key.iter().position(|&b| b == SEP)?;
    let ws = std::str::from_utf8(&key[..at]).ok()?;
    let id = std::str::from_utf8(&key[at + 1..]).ok()?;
    (check_id("workspace_id", ws).is_ok() && check_id("doc_id", id).is_ok()).then_some((ws, id))
}

/// `leaves` and `checkpoints`: `ws ‖ 0x00 ‖ n (u64 BE)`.
pub(crate) fn ws_u64(ws: &str, n: u64) -> Vec<u8> {
    let mut k = ws_start(ws);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// `nodes`: `ws ‖ 0x00 ‖ level (u8) ‖ index (u64 BE)`.
pub(crate) fn node(ws: &str, level: u8, index: u64) -> Vec<u8> {
    let mut k = ws_start(ws);
    k.push(level);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// `cosignatures`: `ws ‖ 0x00 ‖ tree size (u64 BE) ‖ witness public key (32 bytes)`, so the
/// cosignatures of one checkpoint are one range and the newest checkpoints come first in a
/// reverse scan.
pub(crate) fn cosignature(ws: &str, size: u64, witness: &[u8; 32]) -> Vec<u8> {
    let mut k = ws_u64(ws, size);
    k.extend_from_slice(witness);
    k
}

/// `witness_heads`: `ws ‖ 0x00 ‖ witness public key (32 bytes)`.
pub(crate) fn witness_head(ws: &str, witness: &[u8; 32]) -> Vec<u8> {
    let mut k = ws_start(ws);
    k.extend_from_slice(witness);
    k
}

/// `trail` prefix of one authorization: `ws ‖ 0x00 ‖ auth ‖ 0x00`.
pub(crate) fn trail_start(ws: &str, auth: &str) -> Vec<u8> {
    let mut k = ws_id(ws, auth);
    k.push(SEP);
    k
}

/// Exclusive end of one authorization's trail: `ws ‖ 0x00 ‖ auth ‖ 0x01`.
pub(crate) fn trail_end(ws: &str, auth: &str) -> Vec<u8> {
    let mut k = ws_id(ws, auth);
    k.push(END);
    k
}

/// `trail`: `ws ‖ 0x00 ‖ auth ‖ 0x00 ‖ seq (u64 BE)`.
pub(crate) fn trail(ws: &str, auth: &str, seq: u64) -> Vec<u8> {
    let mut k = trail_start(ws, auth);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The u64 that ends a key of `prefix_len + 8` bytes, or `None` if the length is wrong.
pub(crate) fn u64_suffix(key: &[u8], prefix_len: usize) -> Option<u64> {
    let tail: [u8; 8] = key.get(prefix_len..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id() -> impl Strategy<Value = String> {
        // Short ids over a tiny alphabet make prefix-sharing pairs ("a", "a_b", "a-") common.
        "[ab_-]{1,4}"
    }

    proptest! {
        #[test]
        fn u64_keys_round_trip_and_sort_numerically(ws in id(), a: u64, b: u64) {
            let (ka, kb) = (ws_u64(&ws, a), ws_u64(&ws, b));
            prop_assert_eq!(u64_suffix(&ka, ws.len() + 1), Some(a));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            let (ta, tb) = (trail(&ws, "auth", a), trail(&ws, "auth", b));
            prop_assert_eq!(u64_suffix(&ta, ws.len() + 6), Some(a));
            prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
        }

        #[test]
        fn node_keys_sort_by_level_then_index(ws in id(), l1: u8, i1: u64, l2: u8, i2: u64) {
            let (k1, k2) = (node(&ws, l1, i1), node(&ws, l2, i2));
            prop_assert_eq!(k1.cmp(&k2), (l1, i1).cmp(&(l2, i2)));
        }

        #[test]
        fn workspace_ranges_never_overlap(a in id(), b in id(), n: u64, other in id()) {
            prop_assume!(a != b);
            let (start, end) = (ws_start(&a), ws_end(&a));
            for k in [ws_u64(&b, n), ws_id(&b, &other), trail(&b, &other, n), node(&b, 0, n), ws_start(&b)] {
                prop_assert!(!(start <= k && k < end), "{:?} of {b:?} lies in {a:?}'s range", crate::error::display_key(&k));
            }
            for k in [ws_u64(&a, n), ws_id(&a, &other), trail(&a, &other, n), node(&a, 7, n)] {
                prop_assert!(start <= k && k < end);
                prop_assert!(k.starts_with(&start));
            }
        }

        #[test]
        fn trails_of_prefix_sharing_authorizations_are_disjoint(ws in id(), a in id(), b in id(), n: u64) {
            prop_assume!(a != b);
            let k = trail(&ws, &b, n);
            prop_assert!(!(trail_start(&ws, &a) <= k && k < trail_end(&ws, &a)));
        }
    }

    #[test]
    fn big_endian_beats_little_endian_mistakes() {
        // 255 < 256 but their little-endian encodings sort the other way.
        assert!(ws_u64("w", 255) < ws_u64("w", 256));
        assert_eq!(u64_suffix(&ws_u64("w", 256), 2), Some(256));
        assert_eq!(u64_suffix(b"w\0short", 2), None);
    }

    #[test]
    fn invalid_ids_are_rejected() {
        for bad in ["", "a\0b", "a/b", "é", &"x".repeat(129)] {
            assert!(matches!(check_id("id", bad), Err(StoreError::InvalidId { .. })), "{bad:?}");
        }
        check_id("id", &"x".repeat(128)).expect("128 chars is the maximum");
    }
}

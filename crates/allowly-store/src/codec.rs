//! Value encodings: serde_json for records, with two field helpers that keep stored values
//! compact and readable. Decoding never panics: bad bytes become [`StoreError::Corrupt`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::keys::Space;

/// Encodes a record for storage.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::InvalidOp(format!("cannot encode record: {e}")))
}

/// Decodes a stored record; any failure means the stored bytes are corrupt.
pub(crate) fn decode<T: DeserializeOwned>(space: Space, key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(space.name(), key, e))
}

/// A document as stored: wrapped with the workspace and id it was filed under, so a read can
/// check the key it was found at (the document itself is opaque to the store).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredDoc {
    pub workspace_id: String,
    pub id: String,
    pub doc: serde_json::Value,
}

/// A lease as stored in `leases`, under its workspace id. Its epoch is kept apart, in
/// `lease_epochs` (see [`decode_epoch`]), because that is the one value a fence reads: a
/// renewal rewrites this record and leaves the epoch, so it never disturbs a fenced write.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredLease {
    pub workspace_id: String,
    pub node_id: String,
    pub address: String,
    pub expires_at_ms: u64,
}

/// A workspace's lease epoch as stored in `lease_epochs` (a u64, big-endian); 0 when there is
/// none (epochs start at 1).
pub(crate) fn decode_epoch(space: Space, key: &[u8], bytes: Option<&[u8]>) -> Result<u64> {
    let Some(bytes) = bytes else { return Ok(0) };
    let epoch: [u8; 8] = bytes.try_into().map_err(|_| StoreError::corrupt(space.name(), key, "not a u64"))?;
    match u64::from_be_bytes(epoch) {
        0 => Err(StoreError::corrupt(space.name(), key, "epoch 0 is never granted")),
        epoch => Ok(epoch),
    }
}

/// A stored 32-byte hash.
pub(crate) fn hash(space: Space, key: &[u8], bytes: &[u8]) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| StoreError::corrupt(space.name(), key, format!("{} bytes, not 32", bytes.len())))
}

/// The JSON header of a stored receipt: every field but the body.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReceiptHeader<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    workspace_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    authorization_id: Option<std::borrow::Cow<'a, str>>,
    seq: Option<u64>,
    log_index: u64,
    #[serde(with = "crate::types::hex32")]
    leaf: [u8; 32],
}

/// A receipt as stored: its JSON header, `\n`, then the body's bytes as they are (the header's
/// JSON never contains a raw newline, so the first one ends it). The body must be UTF-8 (it is
/// canonical JSON); anything else is refused before it is written.
pub(crate) fn encode_receipt(r: &crate::types::ReceiptRecord) -> Result<Vec<u8>> {
    if std::str::from_utf8(&r.body).is_err() {
        return Err(StoreError::InvalidOp(format!("receipt {}: body is not UTF-8", r.id)));
    }
    // Written member by member, in `ReceiptHeader`'s order (serde_json's generic serializer took
    // ~1.5 % of the server's CPU per check on this path; it stays the oracle of a unit test).
    let mut out = Vec::with_capacity(160 + r.body.len());
    out.extend_from_slice(b"{\"id\":");
    allowly_receipt::jcs::write_str(&r.id, &mut out);
    out.extend_from_slice(b",\"workspace_id\":");
    allowly_receipt::jcs::write_str(&r.workspace_id, &mut out);
    out.extend_from_slice(b",\"authorization_id\":");
    match &r.authorization_id {
        Some(a) => allowly_receipt::jcs::write_str(a, &mut out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"seq\":");
    match r.seq {
        Some(seq) => allowly_receipt::jcs::write_u64(seq, &mut out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"log_index\":");
    allowly_receipt::jcs::write_u64(r.log_index, &mut out);
    out.extend_from_slice(b",\"leaf\":\"");
    let mut hex = [0u8; 64];
    // Cannot fail: the buffer is exactly twice the input.
    let _ = hex::encode_to_slice(r.leaf, &mut hex);
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\"}\n");
    out.extend_from_slice(&r.body);
    Ok(out)
}

/// Decodes [`encode_receipt`]'s bytes; anything else is corrupt.
pub(crate) fn decode_receipt(space: Space, key: &[u8], bytes: &[u8]) -> Result<crate::types::ReceiptRecord> {
    let corrupt = |why: &str| StoreError::corrupt(space.name(), key, why);
    let nl = bytes.iter().position(|&b| b == b'\n').ok_or_else(|| corrupt("receipt record has no header"))?;
    let (head, body) = (&bytes[..nl], &bytes[nl + 1..]);
    let h: ReceiptHeader<'_> = serde_json::from_slice(head).map_err(|e| StoreError::corrupt(space.name(), key, e))?;
    if std::str::from_utf8(body).is_err() {
        return Err(corrupt("receipt body is not UTF-8"));
    }
    // The body is raw bytes, so a damaged one would still "decode": its leaf hash is what
    // proves it is the body that was written (and the one the log commits to).
    if allowly_receipt::merkle::leaf_hash(body) != h.leaf {
        return Err(corrupt("receipt body does not match its leaf hash"));
    }
    Ok(crate::types::ReceiptRecord {
        id: h.id.into_owned(),
        workspace_id: h.workspace_id.into_owned(),
        authorization_id: h.authorization_id.map(std::borrow::Cow::into_owned),
        seq: h.seq,
        log_index: h.log_index,
        body: body.to_vec(),
        leaf: h.leaf,
    })
}

/// A `trail` entry: the leaf hash, then the receipt's log index (u64 BE), its key in `receipts`.
pub(crate) fn encode_leaf(leaf: &[u8; 32], log_index: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + 8);
    v.extend_from_slice(leaf);
    v.extend_from_slice(&log_index.to_be_bytes());
    v
}

/// Decodes a `trail` entry into its leaf hash and the receipt's log index.
pub(crate) fn decode_leaf(space: Space, key: &[u8], bytes: &[u8]) -> Result<([u8; 32], u64)> {
    if bytes.len() != 32 + 8 {
        return Err(StoreError::corrupt(space.name(), key, "trail entry is not 40 bytes"));
    }
    let (leaf, index) = bytes.split_at(32);
    let index = u64::from_be_bytes(index.try_into().map_err(|_| StoreError::corrupt(space.name(), key, "bad index"))?);
    Ok((hash(space, key, leaf)?, index))
}

/// A stored cosignature is one whole signature line: text ending in its only newline. What is
/// served is the note followed by such lines, so a line without its newline (or with two)
/// would corrupt every note it joins. Checked on write and on read.
pub(crate) fn is_one_line(line: &str) -> bool {
    line.strip_suffix('\n').is_some_and(|rest| !rest.contains('\n'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// What `encode_receipt` wrote before it was written by hand: serde_json's serializer.
    fn oracle(r: &crate::types::ReceiptRecord) -> Vec<u8> {
        let header = ReceiptHeader {
            id: r.id.as_str().into(),
            workspace_id: r.workspace_id.as_str().into(),
            authorization_id: r.authorization_id.as_deref().map(Into::into),
            seq: r.seq,
            log_index: r.log_index,
            leaf: r.leaf,
        };
        let mut out = serde_json::to_vec(&header).unwrap();
        out.push(b'\n');
        out.extend_from_slice(&r.body);
        out
    }

    /// Valid ids most of the time, and strings that need escaping (quotes, backslashes, control
    /// characters, non-ASCII) the rest: the writer must never write those raw.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[A-Za-z0-9_-]{1,24}", any::<String>(), r#"[\x00-\x1f"\\a\u{e9}\u{2028}]{1,6}"#]
    }

    proptest! {
        #[test]
        fn the_hand_written_header_is_serde_jsons(
            id in text(),
            ws in text(),
            auth in proptest::option::of(text()),
            seq in proptest::option::of(any::<u64>()),
            log_index in any::<u64>(),
            leaf in any::<[u8; 32]>(),
            body in r"\PC{0,40}",
        ) {
            let r = crate::types::ReceiptRecord { id, workspace_id: ws, authorization_id: auth, seq, log_index, leaf, body: body.into_bytes() };
            let ours = encode_receipt(&r).unwrap();
            let expected = oracle(&r);
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&expected));
            // Random leaves fail the decoder's leaf-hash check; the header itself must parse.
            match decode_receipt(Space::Receipts, b"k", &ours) {
                Ok(back) => prop_assert_eq!(back, r),
                Err(StoreError::Corrupt { reason, .. }) => prop_assert!(reason.contains("leaf hash"), "{}", reason),
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}

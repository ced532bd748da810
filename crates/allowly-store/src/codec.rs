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

/// A stored 32-byte hash.
pub(crate) fn hash(space: Space, key: &[u8], bytes: &[u8]) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| StoreError::corrupt(space.name(), key, format!("{} bytes, not 32", bytes.len())))
}

/// A stored id (an index entry's target), checked against the id alphabet.
pub(crate) fn id(space: Space, key: &[u8], bytes: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(bytes).map_err(|_| StoreError::corrupt(space.name(), key, "id is not UTF-8"))?;
    crate::keys::check_id("id", s).map_err(|_| StoreError::corrupt(space.name(), key, "invalid id"))?;
    Ok(s.to_owned())
}

/// `[u8; 32]` as 64 lowercase hex digits (a JSON array of numbers would be three times larger).
pub(crate) mod hex32 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(de::Error::custom)?;
        Ok(out)
    }
}

/// A receipt body (canonical JSON, hence UTF-8) as a JSON string: its bytes round-trip exactly,
/// at a fraction of the size of an array of numbers. A non-UTF-8 body fails to encode.
pub(crate) mod body_text {
    use serde::{ser, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(v).map_err(|_| ser::Error::custom("receipt body is not UTF-8"))?;
        s.serialize_str(text)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

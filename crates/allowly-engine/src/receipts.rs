//! Receipt bodies as the engine writes them, and the envelopes it serves.
//!
//! A body is built as a typed [`ReceiptBody`], canonicalised once (RFC 8785), and from then on
//! only its canonical bytes exist: they are stored, hashed into the leaf, and served verbatim.

use allowly_receipt::jcs;
use allowly_receipt::merkle::{self, Hash};
use allowly_receipt::note::NoteVerifier;
use allowly_receipt::types::{
    log_origin, HexHash, KeySet, KeyStatus, PendingReceipt, PublicKeyInfo, RawBody, ReceiptBody, SignedReceipt,
    Timestamp, STATUS_PENDING, STATUS_SIGNED,
};
use allowly_store::{AuthorizationRecord, PublicKeyRecord, ReceiptRecord};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

/// SHA-256 of the JCS form of any JSON value (metadata, context, shown prompts).
pub fn json_hash(v: &serde_json::Value) -> Result<HexHash> {
    let bytes = jcs::to_canonical_vec(v).map_err(|e| EngineError::invalid("json", e.to_string()))?;
    Ok(HexHash(Sha256::digest(&bytes).into()))
}

/// The parts of an authorization a decision depends on. Its JCS hash is the receipt's
/// `auth_state_hash`: an auditor holding the authorization record can recompute it.
#[derive(Serialize)]
struct AuthState<'a> {
    id: &'a str,
    subject: &'a str,
    scopes: &'a [String],
    resources: &'a [String],
    expires_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
    metadata_hash: Option<HexHash>,
}

/// `auth_state_hash` of an authorization as it is now.
pub fn auth_state_hash(a: &AuthorizationRecord) -> Result<HexHash> {
    let ts = |ms: Option<u64>| ms.map(Timestamp::from_unix_ms).transpose();
    let metadata_hash = match &a.metadata {
        serde_json::Value::Null => None,
        m => Some(json_hash(m)?),
    };
    let state = AuthState {
        id: &a.id,
        subject: &a.subject,
        scopes: &a.scopes,
        resources: &a.resources,
        expires_at: ts(a.expires_at_ms).map_err(internal)?,
        revoked_at: ts(a.revoked_at_ms).map_err(internal)?,
        metadata_hash,
    };
    let bytes = jcs::to_canonical_vec(&state).map_err(internal)?;
    Ok(HexHash(Sha256::digest(&bytes).into()))
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

/// Turns a body into the record to store: canonical bytes and leaf hash, pending.
pub fn seal(body: &ReceiptBody) -> Result<ReceiptRecord> {
    body.validate().map_err(internal)?;
    let bytes = body.canonical_bytes().map_err(internal)?;
    Ok(ReceiptRecord {
        id: body.id.clone(),
        workspace_id: body.workspace_id.clone(),
        authorization_id: body.authorization_id.clone(),
        seq: body.seq,
        log_index: body.log_index,
        leaf: merkle::leaf_hash(&bytes),
        body: bytes,
    })
}

/// The stored body as the answer carries it: its bytes, not a parse-and-reprint.
fn raw_body(r: &ReceiptRecord) -> Result<RawBody> {
    RawBody::from_json(&r.body).map_err(|e| EngineError::Internal(format!("stored body of {}: {e}", r.id)))
}

/// The pending envelope of a stored receipt.
pub fn pending_envelope(r: &ReceiptRecord) -> Result<PendingReceipt<RawBody>> {
    Ok(PendingReceipt {
        status: STATUS_PENDING.into(),
        receipt_id: r.id.clone(),
        log_index: r.log_index,
        leaf_hash: HexHash(r.leaf),
        body: raw_body(r)?,
    })
}

/// The signed envelope of a stored receipt, given its proof against `checkpoint`.
pub fn signed_envelope(r: &ReceiptRecord, proof: Vec<Hash>, checkpoint: String) -> Result<SignedReceipt<RawBody>> {
    Ok(SignedReceipt {
        status: STATUS_SIGNED.into(),
        body: raw_body(r)?,
        log_index: r.log_index,
        inclusion_proof: proof.into_iter().map(HexHash).collect(),
        checkpoint,
    })
}

/// The C2SP verifier of one stored public key.
pub fn verifier(ws: &str, k: &PublicKeyRecord) -> Result<NoteVerifier> {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&k.public_key)
        .map_err(|e| EngineError::Internal(format!("stored public key {}: {e}", k.key_id)))?;
    NoteVerifier::new(&log_origin(ws), vk).map_err(internal)
}

/// The public key set of a workspace, as published.
pub fn key_set(ws: &str, keys: &[PublicKeyRecord]) -> Result<KeySet> {
    let origin = log_origin(ws);
    let keys = keys
        .iter()
        .map(|k| {
            Ok(PublicKeyInfo {
                key_id: k.key_id.clone(),
                name: origin.clone(),
                algorithm: "ed25519".into(),
                public_key: B64.encode(k.public_key),
                vkey: verifier(ws, k)?.to_vkey(),
                not_before: Timestamp::from_unix_ms(k.not_before_ms).map_err(internal)?,
                not_after: k.not_after_ms.map(Timestamp::from_unix_ms).transpose().map_err(internal)?,
                status: if k.active { KeyStatus::Active } else { KeyStatus::Retired },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(KeySet { workspace_id: ws.to_owned(), origin, keys })
}

/// Stored form of the signer's key list.
pub fn key_records(keys: &[allowly_signer_proto::KeyInfo]) -> Vec<PublicKeyRecord> {
    keys.iter()
        .map(|k| PublicKeyRecord {
            key_id: hex::encode(k.key_id),
            public_key: k.public_key,
            not_before_ms: k.not_before_ms,
            not_after_ms: k.not_after_ms,
            active: k.active,
        })
        .collect()
}

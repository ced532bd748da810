//! Identifiers and API key secrets. Every id is a type prefix and 128 random bits in hex, which
//! is inside the receipt format's id alphabet (`[A-Za-z0-9_-]{1,128}`), unguessable (another
//! tenant cannot probe for objects), and carries no ordering or timing information — except a
//! receipt id, which starts with its log index (16 hex digits, see [`receipt_id`]): the store
//! keys receipts by index alone, and the index is in the receipt's body anyway.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{EngineError, Result};

/// Prefix of every API key secret.
pub const SECRET_PREFIX: &str = "alw_";

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| EngineError::Internal(format!("OS random source: {e}")))?;
    Ok(b)
}

/// 128 bits for an id, from the OS random source read 512 bytes at a time per thread. One
/// `getrandom` call per receipt id was ~1 % of the server's CPU at 14,000 checks/s (a system
/// call, from a VM); ids are not secrets once issued, so the bytes may wait in memory.
/// Secrets ([`new_secret`], sealing nonces) still come straight from the OS.
fn id_bits() -> Result<[u8; 16]> {
    use std::cell::RefCell;
    const POOL: usize = 512;
    thread_local! {
        static BITS: RefCell<([u8; POOL], usize)> = const { RefCell::new(([0; POOL], POOL)) };
    }
    BITS.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (pool, used) = &mut *guard;
        if *used + 16 > POOL {
            getrandom::getrandom(pool).map_err(|e| EngineError::Internal(format!("OS random source: {e}")))?;
            *used = 0;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&pool[*used..*used + 16]);
        // Never hand the same bytes out twice.
        pool[*used..*used + 16].fill(0);
        *used += 16;
        Ok(out)
    })
}

/// `prefix` + 32 hex digits of fresh randomness (e.g. `rc_…`).
pub fn new_id(prefix: &str) -> Result<String> {
    Ok(format!("{prefix}{}", hex::encode(id_bits()?)))
}

/// The id of the receipt at log index `index`: `rc_` + the index as 16 hex digits + 32 hex
/// digits of fresh randomness (so it is still unguessable).
pub fn receipt_id(index: u64) -> Result<String> {
    let mut id = String::with_capacity(3 + 16 + 32);
    let mut hex = [0u8; 32];
    // Infallible: the buffer is exactly twice the input length.
    let _ = hex::encode_to_slice(id_bits()?, &mut hex);
    use std::fmt::Write as _;
    let _ = write!(id, "rc_{index:016x}");
    id.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    Ok(id)
}

/// The log index a receipt id names (`None`: not an id [`receipt_id`] makes). The caller still
/// compares the stored receipt's id with the one asked for.
pub fn receipt_index(id: &str) -> Option<u64> {
    let rest = id.strip_prefix("rc_")?;
    if rest.len() != 16 + 32 || !rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u64::from_str_radix(rest.get(..16)?, 16).ok()
}

/// A new API key secret: `alw_` + 64 hex digits (256 random bits).
pub fn new_secret() -> Result<String> {
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(random::<32>()?)))
}

/// What is stored for a secret: SHA-256 of its text. A secret has 256 bits of entropy, so a
/// fast hash is enough (no password stretching needed), and lookups by hash stay O(1).
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `s` has the shape of a secret (checked before hashing anything the network sent).
pub fn is_secret_shaped(s: &str) -> bool {
    s.len() == SECRET_PREFIX.len() + 64
        && s.starts_with(SECRET_PREFIX)
        && s[SECRET_PREFIX.len()..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The key that seals a new API key's secret in its `Idempotency-Key` record: derived from the
/// *caller's* secret, which the store holds only as a hash. So the record lets the caller who
/// created the key read its secret again on a repeat (same bearer, same key), and nobody who
/// only has the database.
fn seal_key(caller_secret: &str, record_id: &str) -> Result<Zeroizing<[u8; 32]>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(caller_secret.as_bytes())
        .map_err(|e| EngineError::Internal(format!("seal key: {e}")))?;
    mac.update(b"allowly/idempotent-secret/v1\0");
    mac.update(record_id.as_bytes());
    Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
}

/// Seals `secret` for the `Idempotency-Key` record `record_id` (XChaCha20-Poly1305, the record
/// id as associated data): hex of nonce ‖ ciphertext.
pub fn seal_secret(secret: &str, caller_secret: &str, record_id: &str) -> Result<String> {
    let key = seal_key(caller_secret, record_id)?;
    let nonce = random::<24>()?;
    let ct = XChaCha20Poly1305::new(key.as_ref().into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret.as_bytes(), aad: record_id.as_bytes() })
        .map_err(|_| EngineError::Internal("sealing a secret failed".into()))?;
    Ok(hex::encode([nonce.as_slice(), &ct].concat()))
}

/// Opens what [`seal_secret`] sealed (with the same caller secret and record id).
pub fn open_secret(sealed: &str, caller_secret: &str, record_id: &str) -> Result<String> {
    let bad = || EngineError::Internal("the stored secret of this Idempotency-Key cannot be opened".into());
    let bytes = hex::decode(sealed).map_err(|_| bad())?;
    if bytes.len() < 24 {
        return Err(bad());
    }
    let (nonce, ct) = bytes.split_at(24);
    let key = seal_key(caller_secret, record_id)?;
    let pt = XChaCha20Poly1305::new(key.as_ref().into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: record_id.as_bytes() })
        .map_err(|_| bad())?;
    String::from_utf8(pt).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_receipt_id_names_its_log_index_and_nothing_else_does() {
        for index in [0, 1, 255, u64::MAX] {
            let id = receipt_id(index).unwrap();
            assert_eq!(id.len(), 51);
            assert!(allowly_receipt::types::validate_id("id", &id).is_ok());
            assert_eq!(receipt_index(&id), Some(index), "{id}");
            assert_ne!(receipt_id(index).unwrap(), id, "random part");
        }
        let id = receipt_id(7).unwrap();
        for bad in [
            "rc_".to_owned(),
            "rc_0000000000000007".to_owned(),
            id.replace("rc_", "ak_"),
            id.to_uppercase().replace("RC_", "rc_"),
            format!("{id}0"),
            id[..50].to_owned(),
            "rc_+000000000000007".to_owned() + &"0".repeat(32),
        ] {
            assert_eq!(receipt_index(&bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_and_secrets_have_their_documented_shape() {
        let id = new_id("rc_").unwrap();
        assert!(allowly_receipt::types::validate_id("id", &id).is_ok());
        assert_eq!(id.len(), 35);
        assert_ne!(new_id("rc_").unwrap(), id);
        let s = new_secret().unwrap();
        assert!(is_secret_shaped(&s));
        assert!(!is_secret_shaped(&s[..s.len() - 1]));
        assert!(!is_secret_shaped(&s.to_uppercase()));
        assert!(!is_secret_shaped(&format!("{s}0")));
        assert!(!is_secret_shaped("alw_é"));
    }

    /// Across several refills of the per-thread pool, and on several threads at once, no two
    /// ids share their random part (a pool handed out twice would repeat 32 of them).
    #[test]
    fn pooled_id_bits_never_repeat() {
        let per_thread = 4 * 512 / 16 + 3;
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..per_thread).map(|_| id_bits().unwrap()).collect::<Vec<_>>()))
            .collect();
        let all: Vec<[u8; 16]> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        assert!(all.iter().all(|b| b != &[0; 16]));
    }

    #[test]
    fn a_sealed_secret_opens_only_with_the_same_caller_and_record() {
        let (secret, caller) = (new_secret().unwrap(), new_secret().unwrap());
        let sealed = seal_secret(&secret, &caller, "ik_1").unwrap();
        assert!(!sealed.contains(&secret[4..]));
        assert_eq!(open_secret(&sealed, &caller, "ik_1").unwrap(), secret);
        assert!(open_secret(&sealed, &new_secret().unwrap(), "ik_1").is_err());
        assert!(open_secret(&sealed, &caller, "ik_2").is_err());
        let mut flipped = hex::decode(&sealed).unwrap();
        flipped[30] ^= 1;
        assert!(open_secret(&hex::encode(flipped), &caller, "ik_1").is_err());
        assert!(open_secret("zz", &caller, "ik_1").is_err());
    }
}

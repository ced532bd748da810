//! Identifiers and API key secrets. Every id is a type prefix and 128 random bits in hex, which
//! is inside the receipt format's id alphabet (`[A-Za-z0-9_-]{1,128}`), unguessable (another
//! tenant cannot probe for objects), and carries no ordering or timing information.

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

/// Prefix of every API key secret.
pub const SECRET_PREFIX: &str = "alw_";

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| EngineError::Internal(format!("OS random source: {e}")))?;
    Ok(b)
}

/// `prefix` + 32 hex digits of fresh randomness (e.g. `rc_…`).
pub fn new_id(prefix: &str) -> Result<String> {
    Ok(format!("{prefix}{}", hex::encode(random::<16>()?)))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
}

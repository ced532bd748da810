//! Standard Webhooks symmetric signatures (spec 1.0.0, "Signature scheme"): HMAC-SHA256 with
//! a per-endpoint secret over `{msg_id}.{timestamp}.{payload}`, sent as
//! `webhook-signature: v1,<base64>` beside `webhook-id` and `webhook-timestamp` (integer Unix
//! seconds of the *attempt*, so every retry is signed afresh and passes the receiver's replay
//! window; the id stays the same across retries).
//!
//! Secrets are `whsec_` + standard base64 of 32 random bytes (the spec asks for 24..=64; parsing
//! accepts that whole range, padded or not, like the reference libraries). A webhook secret is
//! not the workspace's receipt key and has nothing to do with it: it only authenticates
//! deliveries to one endpoint.
//!
//! Rotation: while the previous secret is still in its grace period an attempt carries one
//! signature per secret, space-delimited, newest first (`v1,<new> v1,<old>`), as the spec allows;
//! receivers accept the request if any signature verifies with the secret they hold.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Result, WebhookError};

/// Prefix of a serialised secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a secret this crate generates.
pub const SECRET_LEN: usize = 32;
/// Accepted secret sizes, in bytes (the spec's 192..=512 bits).
pub const SECRET_LEN_RANGE: std::ops::RangeInclusive<usize> = 24..=64;

/// Header names (lowercase, as the spec writes them).
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// A per-endpoint signing secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A fresh secret from the OS random source.
    pub fn generate() -> Result<Self> {
        let mut b = vec![0u8; SECRET_LEN];
        getrandom::getrandom(&mut b).map_err(|e| WebhookError::Random(e.to_string()))?;
        Ok(Self(b))
    }

    /// Parses `whsec_<base64>` (the prefix is optional, padding too).
    pub fn parse(text: &str) -> Result<Self> {
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let bytes = STANDARD
            .decode(b64)
            .or_else(|_| STANDARD_NO_PAD.decode(b64))
            .map_err(|_| WebhookError::Secret("not base64"))?;
        if !SECRET_LEN_RANGE.contains(&bytes.len()) {
            return Err(WebhookError::Secret("must be 24..=64 bytes"));
        }
        Ok(Self(bytes))
    }

    /// The serialised form shown to the user once and stored: `whsec_<base64>`.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// The `webhook-signature` value for one attempt: `v1,<base64 HMAC-SHA256>`.
    pub fn sign(&self, msg_id: &str, timestamp: u64, payload: &[u8]) -> String {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// The three Standard Webhooks headers of one attempt.
    pub fn headers(&self, msg_id: &str, timestamp: u64, payload: &[u8]) -> [(&'static str, String); 3] {
        headers(std::slice::from_ref(self), msg_id, timestamp, payload)
    }
}

/// The three Standard Webhooks headers of one attempt signed with every secret in `secrets`
/// (newest first): `webhook-signature` lists one `v1,` signature per secret, space-delimited.
pub fn headers(secrets: &[Secret], msg_id: &str, timestamp: u64, payload: &[u8]) -> [(&'static str, String); 3] {
    let sigs: Vec<String> = secrets.iter().map(|s| s.sign(msg_id, timestamp, payload)).collect();
    [(HEADER_ID, msg_id.to_owned()), (HEADER_TIMESTAMP, timestamp.to_string()), (HEADER_SIGNATURE, sigs.join(" "))]
}

#[cold]
fn unreachable_hmac() -> ! {
    // `Hmac<Sha256>` implements `KeyInit` for every key length (longer keys are hashed).
    panic!("HMAC-SHA256 rejected a key: impossible by construction")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The vector of the reference libraries' "sign function works" test
    /// (standard-webhooks `libraries/javascript/src/webhook.test.ts`, also in the Python and Go
    /// suites).
    #[test]
    fn matches_the_reference_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // The prefix is optional on input, as in the reference libraries.
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(), secret);
    }

    #[test]
    fn generated_secrets_round_trip_and_differ() {
        let a = Secret::generate().unwrap();
        let text = a.to_text();
        assert!(text.starts_with("whsec_"), "{text}");
        assert_eq!(Secret::parse(&text).unwrap(), a);
        assert_ne!(Secret::generate().unwrap(), a);
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[test]
    fn bad_secrets_are_refused() {
        for bad in ["", "whsec_", "whsec_!!!!", &format!("whsec_{}", STANDARD.encode([0u8; 23]))] {
            assert!(Secret::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 65]))).is_err());
        assert!(Secret::parse(&format!("whsec_{}", STANDARD_NO_PAD.encode([7u8; 25]))).is_ok());
    }

    #[test]
    fn headers_carry_the_id_the_timestamp_and_the_signature() {
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let h = s.headers("msg_1", 42, b"{}");
        assert_eq!(h[0], ("webhook-id", "msg_1".to_owned()));
        assert_eq!(h[1], ("webhook-timestamp", "42".to_owned()));
        assert_eq!(h[2], ("webhook-signature", s.sign("msg_1", 42, b"{}")));
        assert_ne!(s.sign("msg_1", 43, b"{}"), h[2].1, "the timestamp is signed");
    }

    #[test]
    fn a_rotation_signs_with_both_secrets_newest_first() {
        let (new, old) = (Secret::generate().unwrap(), Secret::generate().unwrap());
        let h = headers(&[new.clone(), old.clone()], "msg_1", 42, b"{}");
        assert_eq!(h[2].1, format!("{} {}", new.sign("msg_1", 42, b"{}"), old.sign("msg_1", 42, b"{}")));
        assert_eq!(h[..2], new.headers("msg_1", 42, b"{}")[..2]);
    }
}

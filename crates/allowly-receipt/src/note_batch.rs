//! Opening many checkpoint notes at once, with one batched Ed25519 check of all their
//! signatures (feature `batch`).
//!
//! For a service checking what its own signer just returned — the engine checks every
//! checkpoint before it stores it, and with thousands of workspaces signing, those checks were
//! 7–12 % of the server's CPU (one `verify_strict` per checkpoint, ~37–55 µs here).
//! `ed25519_dalek::verify_batch` costs about half of that per signature from 8 signatures on.
//! Not for auditors: `allowly-verify` and the SDKs' verifiers stay strict, note by note.
//!
//! What a batch accepts, against [`open_checkpoint`] note by note:
//! * every check that is not the signature equation is the same (it runs the same parser and
//!   checks, and a note that fails any of them goes through [`open_checkpoint`] itself);
//! * the equations: `verify_strict` checks `R == [s]B - [k]A` for each signature; the batch
//!   checks one random linear combination of them (cofactorless, coefficients derived from
//!   all inputs). A batch in which any signature is wrong in the way a fault makes it wrong (a
//!   bit flip, the wrong key, the wrong text) fails except with probability ~2⁻¹²⁸; every note
//!   is then opened one by one, so the failure is reported exactly as [`open_checkpoint`]
//!   reports it.
//! * `verify_strict` also refuses a small-order or non-canonical `R`, and a small-order key.
//!   Here `R` is checked against the same rules before the batch (by its encoding: its y
//!   coordinate below p and not one of the eight small-order points'), and a
//!   [`NoteVerifier`] never holds a small-order key.
//! * What is left: an `R` with a small-order *component* (a "mixed-order" point). A single
//!   strict check refuses it; a batch accepts it with probability 1/2 to 1/8, more if the
//!   signer grinds its signatures against the deterministic coefficients. Only a signer that
//!   means to can make such a signature — and that signer holds the key and could sign
//!   anything. Independent verifiers would then refuse the checkpoint the service stored.
//!   This is why it serves a producer checking its own signer for faults, not an auditor.

use std::sync::OnceLock;

use curve25519_dalek::constants::EIGHT_TORSION;
use ed25519_dalek::Signature;

use crate::note::{ambiguous, open_checkpoint, parse_signed_note, Checkpoint, NoteVerifier, SignedNote};
use crate::{Error, Result};

/// Fewest notes worth a batch: from two on a batch costs less per signature than
/// `verify_strict` on this project's machine (50 vs 54 µs for 2, 40 vs 58 for 4, 25–30 from 8).
const MIN_BATCH: usize = 2;

/// One note to open: the signed note, its log's origin, the keys it must be signed by.
pub type NoteToOpen<'a> = (&'a str, &'a str, &'a [NoteVerifier]);

/// [`open_checkpoint`] for each of `notes`, with every signature of every note checked in one
/// batch (see the module docs for how that differs). The results are in the order of `notes`.
pub fn open_checkpoints(notes: &[NoteToOpen<'_>]) -> Vec<Result<Checkpoint>> {
    let mut results: Vec<Option<Result<Checkpoint>>> = (0..notes.len()).map(|_| None).collect();
    let mut batched: Vec<(usize, SignedNote)> = Vec::new();
    let mut one_by_one: Vec<usize> = Vec::new();
    for (i, (msg, _, verifiers)) in notes.iter().enumerate() {
        match parse_signed_note(msg) {
            Ok(note) if batchable(&note, verifiers) => batched.push((i, note)),
            // Malformed, no known signature, a line that cannot be Ed25519, a non-strict `R`:
            // let the strict path say which.
            _ => one_by_one.push(i),
        }
    }
    // One signature alone costs more batched (75 µs here) than strict (51–66 µs).
    if batched.len() < MIN_BATCH || !batch_verifies(notes, &batched) {
        one_by_one.extend(batched.drain(..).map(|(i, _)| i));
    }
    for (i, note) in batched {
        let origin = notes[i].1;
        results[i] = Some(Checkpoint::parse(&note.text).and_then(|cp| {
            if cp.origin == origin {
                Ok(cp)
            } else {
                Err(Error::Checkpoint("origin does not match the expected origin"))
            }
        }));
    }
    for i in one_by_one {
        let (msg, origin, verifiers) = notes[i];
        results[i] = Some(open_checkpoint(msg, origin, verifiers).map(|(cp, _)| cp));
    }
    // Every index was given a result above; the fallback only keeps this free of a panic.
    results.into_iter().map(|r| r.unwrap_or(Err(Error::NoKnownSignature))).collect()
}

/// Whether `note` may join the batch: the verifiers are unambiguous, at least one line is by a
/// known key, and every line by a known key is 64 bytes with an `R` that `verify_strict` would
/// not refuse for its encoding.
fn batchable(note: &SignedNote, verifiers: &[NoteVerifier]) -> bool {
    if ambiguous(verifiers) {
        return false;
    }
    let mut known = 0;
    for s in &note.signatures {
        if s.claimed_by(verifiers).is_none() {
            continue;
        }
        if s.sig.len() != 64 {
            return false;
        }
        let Ok(r) = <[u8; 32]>::try_from(&s.sig[..32]) else { return false };
        if !strict_r(&r) {
            return false;
        }
        known += 1;
    }
    known > 0
}

/// One `verify_batch` over every known-key signature line of the `batched` notes.
fn batch_verifies(notes: &[NoteToOpen<'_>], batched: &[(usize, SignedNote)]) -> bool {
    let (mut messages, mut signatures, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for (i, note) in batched {
        for s in &note.signatures {
            let Some(v) = s.claimed_by(notes[*i].2) else { continue };
            let Ok(sig) = Signature::from_slice(&s.sig) else { return false };
            messages.push(note.text.as_bytes());
            signatures.push(sig);
            keys.push(*v.key());
        }
    }
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

/// `R`'s encoding passes `verify_strict`'s checks on `R`: its y coordinate is below
/// p = 2²⁵⁵ − 19 (canonical), and it is not one of the eight small-order points (compared
/// without the sign bit, which also catches their non-canonical "negative zero" encodings).
fn strict_r(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    let at_least_p = y[31] == 0x7f && y[1..31].iter().all(|&b| b == 0xff) && y[0] >= 0xed;
    !at_least_p && !small_order_ys().contains(&y)
}

/// The y coordinates (sign bit cleared) of the eight points of small order.
fn small_order_ys() -> &'static [[u8; 32]; 8] {
    static YS: OnceLock<[[u8; 32]; 8]> = OnceLock::new();
    YS.get_or_init(|| {
        EIGHT_TORSION.map(|p| {
            let mut y = p.compress().to_bytes();
            y[31] &= 0x7f;
            y
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::note::sign_note;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn key(seed: u8) -> (SigningKey, NoteVerifier) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let v = NoteVerifier::new("log.example/k", sk.verifying_key()).unwrap();
        (sk, v)
    }

    fn checkpoint(origin: &str, size: u64, sk: &SigningKey) -> String {
        let text =
            Checkpoint { origin: origin.into(), size, root: [size as u8; 32], extensions: vec![] }.to_text().unwrap();
        sign_note(&text, "log.example/k", sk).unwrap()
    }

    /// The reference: each note opened on its own, strictly.
    fn one_by_one(notes: &[NoteToOpen<'_>]) -> Vec<std::result::Result<Checkpoint, String>> {
        notes.iter().map(|(m, o, v)| open_checkpoint(m, o, v).map(|(cp, _)| cp).map_err(|e| e.to_string())).collect()
    }

    fn batch(notes: &[NoteToOpen<'_>]) -> Vec<std::result::Result<Checkpoint, String>> {
        open_checkpoints(notes).into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
    }

    /// Flips one bit of the signature proper (not the key id) in the last signature line.
    fn corrupt(note: &str, bit: usize) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (head, line) = note.trim_end_matches('\n').rsplit_once('\n').unwrap();
        let (prefix, sig) = line.rsplit_once(' ').unwrap();
        let mut raw = b64.decode(sig).unwrap();
        let at = 4 + (bit / 8) % 64;
        raw[at] ^= 1 << (bit % 8);
        format!("{head}\n{prefix} {}\n", b64.encode(raw))
    }

    #[test]
    fn good_notes_open_as_one_by_one_does() {
        let keys: Vec<_> = (1..=9).map(key).collect();
        let notes: Vec<String> =
            keys.iter().enumerate().map(|(i, (sk, _))| checkpoint(&format!("o{i}"), i as u64 + 1, sk)).collect();
        let origins: Vec<String> = (0..9).map(|i| format!("o{i}")).collect();
        let items: Vec<NoteToOpen<'_>> =
            (0..9).map(|i| (notes[i].as_str(), origins[i].as_str(), std::slice::from_ref(&keys[i].1))).collect();
        let got = batch(&items);
        assert!(got.iter().all(Result::is_ok), "{got:?}");
        assert_eq!(got, one_by_one(&items));
    }

    #[test]
    fn one_bad_signature_fails_only_its_own_note_with_the_strict_error() {
        let keys: Vec<_> = (1..=8).map(key).collect();
        let mut notes: Vec<String> = keys.iter().map(|(sk, _)| checkpoint("o", 5, sk)).collect();
        notes[3] = corrupt(&notes[3], 77);
        let items: Vec<NoteToOpen<'_>> =
            (0..8).map(|i| (notes[i].as_str(), "o", std::slice::from_ref(&keys[i].1))).collect();
        let got = batch(&items);
        assert_eq!(got, one_by_one(&items));
        assert!(got[3].as_ref().is_err_and(|e| e.contains("signature")), "{:?}", got[3]);
        assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 7);
    }

    #[test]
    fn wrong_origin_unknown_key_and_garbage_are_refused_as_one_by_one_does() {
        let (sk, v) = key(1);
        let (_, other) = key(2);
        let good = checkpoint("o", 1, &sk);
        let items: Vec<NoteToOpen<'_>> = vec![
            (good.as_str(), "not-o", std::slice::from_ref(&v)),
            (good.as_str(), "o", std::slice::from_ref(&other)),
            ("no note here", "o", std::slice::from_ref(&v)),
            (good.as_str(), "o", std::slice::from_ref(&v)),
        ];
        let got = batch(&items);
        assert_eq!(got, one_by_one(&items));
        assert!(got[..3].iter().all(Result::is_err) && got[3].is_ok(), "{got:?}");
    }

    #[test]
    fn a_small_order_or_non_canonical_r_never_reaches_the_batch() {
        for p in EIGHT_TORSION {
            let enc = p.compress().to_bytes();
            assert!(!strict_r(&enc), "small-order R {enc:?} passed");
            let mut flipped = enc;
            flipped[31] ^= 0x80;
            assert!(!strict_r(&flipped), "small-order R with the other sign {flipped:?} passed");
        }
        // y = p, p + 1, ... 2^255 - 1: not canonical.
        for low in 0xedu8..=0xff {
            let mut y = [0xffu8; 32];
            y[0] = low;
            y[31] = 0x7f;
            assert!(!strict_r(&y), "y >= p passed: {low:#x}");
        }
        // A real signature's R passes.
        let (sk, _) = key(3);
        let note = checkpoint("o", 1, &sk);
        let parsed = parse_signed_note(&note).unwrap();
        assert!(strict_r(&parsed.signatures[0].sig[..32].try_into().unwrap()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any mix of good notes, notes with one flipped signature bit and notes checked with
        /// the wrong key opens exactly as note-by-note strict opening does.
        #[test]
        fn batch_agrees_with_one_by_one(kinds in proptest::collection::vec((0u8..3, 0usize..512), 1..12)) {
            let keys: Vec<_> = (1..=kinds.len() as u8).map(key).collect();
            let (_, stranger) = key(200);
            let notes: Vec<String> = kinds.iter().zip(&keys).enumerate().map(|(i, ((kind, bit), (sk, _)))| {
                let n = checkpoint("o", i as u64, sk);
                if *kind == 1 { corrupt(&n, *bit) } else { n }
            }).collect();
            let items: Vec<NoteToOpen<'_>> = kinds.iter().enumerate().map(|(i, (kind, _))| {
                let v = if *kind == 2 { std::slice::from_ref(&stranger) } else { std::slice::from_ref(&keys[i].1) };
                (notes[i].as_str(), "o", v)
            }).collect();
            prop_assert_eq!(batch(&items), one_by_one(&items));
        }
    }
}

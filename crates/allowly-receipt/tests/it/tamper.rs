//! Tamper properties over committed valid bundles: any single-bit change to a signed line
//! (a receipt or a checkpoint) is never reported valid, deleting any receipt line is never
//! reported valid, and no damage ever panics the verifier.

use allowly_receipt::types::KeySet;
use allowly_receipt::verify::{verify_bundle, Outcome};
use proptest::prelude::*;

use crate::vectors_dir;

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(vectors_dir().join(name)).unwrap()
}

fn keys() -> KeySet {
    KeySet::parse(&vector("keys.json")).unwrap()
}

/// Byte ranges of the lines whose content is signed (receipts and checkpoints).
fn signed_lines(bundle: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for line in bundle.split(|&b| b == b'\n') {
        let end = start + line.len();
        if line.starts_with(b"{\"receipt\"") || line.starts_with(b"{\"checkpoint\"") {
            out.push((start, end));
        }
        start = end + 1;
    }
    out
}

fn outcome(bytes: &[u8], keys: &KeySet) -> Option<Outcome> {
    verify_bundle(bytes, Some(keys), &[]).ok().map(|r| r.outcome())
}

#[test]
fn the_untouched_bundles_are_valid() {
    for name in ["valid/bundle-authorization.jsonl", "valid/bundle-log.jsonl"] {
        assert_eq!(outcome(&vector(name), &keys()), Some(Outcome::Valid), "{name}");
    }
}

#[test]
fn deleting_any_receipt_line_is_detected() {
    let keys = keys();
    for name in ["valid/bundle-authorization.jsonl", "valid/bundle-log.jsonl"] {
        let b = vector(name);
        let lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with(b"{\"receipt\"") {
                continue;
            }
            let kept: Vec<&[u8]> = lines.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| *l).collect();
            let damaged = kept.join(&b'\n');
            assert_ne!(
                outcome(&damaged, &keys),
                Some(Outcome::Valid),
                "{name}: deleting line {} went unnoticed",
                i + 1
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bit_flip_in_a_signed_line_is_detected(which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), bit in 0u8..8, log in any::<bool>()) {
        let name = if log { "valid/bundle-log.jsonl" } else { "valid/bundle-authorization.jsonl" };
        let mut b = vector(name);
        let lines = signed_lines(&b);
        let (s, e) = lines[which.index(lines.len())];
        let pos = s + at.index(e - s);
        b[pos] ^= 1 << bit;
        prop_assert_ne!(outcome(&b, &keys()), Some(Outcome::Valid), "flip of bit {} at byte {} of {}", bit, pos, name);
    }

    #[test]
    fn random_damage_never_panics(cut in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)) {
        let mut b = vector("valid/bundle-log.jsonl");
        for (at, x) in flips {
            let i = at.index(b.len());
            b[i] ^= x;
        }
        let n = cut.index(b.len() + 1);
        b.truncate(n);
        let _ = verify_bundle(&b, Some(&keys()), &[]);
        let _ = verify_bundle(&b, None, &[]);
    }
}

//! C2SP cosignatures, Ed25519 type `cosignature/v1` (<https://c2sp.org/tlog-cosignature>), and
//! the witness-quorum check a verifier runs on a checkpoint.
//!
//! A cosignature is an ordinary signed-note signature line (<https://c2sp.org/signed-note>)
//! added to a checkpoint by a *witness*: it states that, at its timestamp, this checkpoint is the
//! largest tree the witness has seen for the origin, consistent with everything it saw before
//! (the witness side is `crates/allowly-witness`, protocol <https://c2sp.org/tlog-witness>).
//!
//! Wire format (tlog-cosignature, "Format" and "Ed25519 signed message"):
//!
//! * key id = SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4];
//! * the signature line's payload after the key id is `timestamp` (u64, big-endian, at most
//!   2^63 - 1) || 64-byte Ed25519 signature;
//! * the signed message is `cosignature/v1\n` + `time <timestamp, decimal>\n` + the checkpoint
//!   note text (with its final newline, without signature lines).
//!
//! The Ed25519 message does not commit to the witness's name, so one key under two names is one
//! witness: quorums count distinct public keys.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::note::{self, Checkpoint, NoteSignature, NoteVerifier, SignedNote};
use crate::{Error, Result};

/// Signature type byte of Ed25519 `cosignature/v1` key ids and verifier keys.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// Largest timestamp a cosignature may carry (the spec's "MUST NOT exceed 2^63 - 1").
pub const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// Length of a `cosignature/v1` payload: 8-byte timestamp + 64-byte Ed25519 signature.
const PAYLOAD_LEN: usize = 8 + 64;

/// The key id of a `cosignature/v1` key: the note key id with type byte 0x04.
pub fn cosigner_key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    note::key_id_for(name, ALG_COSIGNATURE_V1, key)
}

/// A trusted witness: name + Ed25519 public key, key id derived (so it cannot disagree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key_id: [u8; 4],
    key: VerifyingKey,
}

impl CosignerKey {
    /// Builds a witness key, with the same checks as [`NoteVerifier::new`] (valid name,
    /// canonical non-weak key).
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self> {
        note::validate_key_name(name)?;
        note::check_ed25519_key(&key)?;
        Ok(Self { name: name.to_owned(), key_id: cosigner_key_id(name, &key), key })
    }

    /// Parses a verifier key of type 0x04 (`<name>+<key id hex>+<base64(0x04 || key)>`), as the
    /// spec allows cosigner keys to be written (signed-note "Verifier keys").
    pub fn parse_vkey(s: &str) -> Result<Self> {
        let (name, _, key) = note::parse_ed25519_vkey(s, ALG_COSIGNATURE_V1)?;
        Self::new(&name, key)
    }

    /// The verifier key string of type 0x04.
    pub fn to_vkey(&self) -> String {
        note::format_ed25519_vkey(&self.name, self.key_id, ALG_COSIGNATURE_V1, &self.key)
    }

    /// The witness's name, as in its signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id (type 0x04).
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// True if the signature line names this key (name and key id); only then is it checked.
    pub fn claims(&self, sig: &NoteSignature) -> bool {
        sig.name == self.name && sig.key_id == self.key_id
    }

    /// Verifies a signature line that [`CosignerKey::claims`] this key, on the note text `text`;
    /// returns the cosignature's timestamp. Wrong length, a timestamp above [`MAX_TIMESTAMP`] or a
    /// signature that fails `verify_strict` are `Err(BadSignature)`.
    pub fn verify(&self, text: &str, sig: &NoteSignature) -> Result<u64> {
        let bad = || Error::BadSignature { name: sig.name.clone(), key_id: hex::encode(sig.key_id) };
        let (timestamp, signature) = parse_payload(&sig.sig).ok_or_else(bad)?;
        let signature = Signature::from_bytes(&signature);
        self.key.verify_strict(&signed_message(text, timestamp), &signature).map_err(|_| bad())?;
        Ok(timestamp)
    }
}

/// Splits a `cosignature/v1` payload (after the key id) into timestamp and signature; `None` if
/// it is not exactly 72 bytes or the timestamp exceeds [`MAX_TIMESTAMP`].
pub fn parse_payload(payload: &[u8]) -> Option<(u64, [u8; 64])> {
    if payload.len() != PAYLOAD_LEN {
        return None;
    }
    let (ts, sig) = payload.split_at(8);
    let timestamp = u64::from_be_bytes(ts.try_into().ok()?);
    if timestamp > MAX_TIMESTAMP {
        return None;
    }
    Some((timestamp, sig.try_into().ok()?))
}

/// The message a `cosignature/v1` signs: `cosignature/v1\ntime <timestamp>\n` + the note text.
/// Rust's decimal formatting of a `u64` has no leading zeros, as the spec requires.
pub fn signed_message(text: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// Cosigns the checkpoint note text `text` (what a witness does once it has checked it): returns
/// one signature line, `— <name> <base64(key id || timestamp || signature)>\n`.
pub fn cosign(text: &str, name: &str, key: &SigningKey, timestamp: u64) -> Result<String> {
    note::validate_note_text(text)?;
    note::validate_key_name(name)?;
    if timestamp > MAX_TIMESTAMP {
        return Err(Error::Note("cosignature timestamp exceeds 2^63 - 1"));
    }
    let sig = key.sign(&signed_message(text, timestamp));
    let mut payload = Vec::with_capacity(PAYLOAD_LEN);
    payload.extend_from_slice(&timestamp.to_be_bytes());
    payload.extend_from_slice(&sig.to_bytes());
    Ok(note::signature_line(name, cosigner_key_id(name, &key.verifying_key()), &payload))
}

/// One valid cosignature by a trusted witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cosigned<'a> {
    pub witness: &'a CosignerKey,
    /// The cosignature's time, POSIX seconds.
    pub timestamp: u64,
}

/// Verifies every cosignature in `note` by one of `witnesses`, and returns one entry per distinct
/// witness *public key* that cosigned (in note order, first valid line).
///
/// As [`SignedNote::verify`] does for signatures: lines whose (name, key id) matches no witness
/// are ignored (the log's own signature, unknown witnesses); a line that matches a witness but
/// does not verify is `Err(BadSignature)` even if others are good — a trusted witness's bad
/// cosignature means tampering, which an auditor must see; two witnesses with one (name, key id)
/// and different keys are `Err(Key)`. No cosignature at all is `Ok(vec![])`: whether that is
/// enough is the caller's quorum.
pub fn verify_cosignatures<'a>(note: &SignedNote, witnesses: &'a [CosignerKey]) -> Result<Vec<Cosigned<'a>>> {
    for (i, a) in witnesses.iter().enumerate() {
        if witnesses[i + 1..].iter().any(|b| a.name == b.name && a.key_id == b.key_id && a.key != b.key) {
            return Err(Error::Key("two witness keys share a name and key id"));
        }
    }
    let mut out: Vec<Cosigned<'a>> = Vec::new();
    for s in &note.signatures {
        let Some(w) = witnesses.iter().find(|w| w.claims(s)) else { continue };
        let timestamp = w.verify(&note.text, s)?;
        if !out.iter().any(|c| c.witness.key == w.key) {
            out.push(Cosigned { witness: w, timestamp });
        }
    }
    Ok(out)
}

/// A checkpoint opened under the log's keys, with the witnesses that cosigned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumVerdict<'a> {
    pub checkpoint: Checkpoint,
    /// Distinct witnesses (by public key) with a valid cosignature.
    pub cosigned: Vec<Cosigned<'a>>,
    /// The quorum asked for.
    pub quorum: usize,
}

impl QuorumVerdict<'_> {
    /// At least `quorum` distinct witnesses cosigned.
    pub fn met(&self) -> bool {
        self.cosigned.len() >= self.quorum
    }
}

/// Opens the signed checkpoint `msg` as [`note::open_checkpoint`] does (log signature by
/// `log_verifiers`, then origin), then verifies its cosignatures by `witnesses`
/// ([`verify_cosignatures`]) and says whether at least `quorum` distinct witnesses cosigned it.
/// Errors are those of the two steps; a missing quorum is not an error but `!met()`.
pub fn check_witness_quorum<'a>(
    msg: &str,
    expected_origin: &str,
    log_verifiers: &[NoteVerifier],
    witnesses: &'a [CosignerKey],
    quorum: usize,
) -> Result<QuorumVerdict<'a>> {
    let (checkpoint, _) = note::open_checkpoint(msg, expected_origin, log_verifiers)?;
    let signed = note::parse_signed_note(msg)?;
    let cosigned = verify_cosignatures(&signed, witnesses)?;
    Ok(QuorumVerdict { checkpoint, cosigned, quorum })
}

/// Adds signature lines (e.g. a witness's `add-checkpoint` answer, C2SP tlog-witness: "the
/// client MAY concatenate it to the checkpoint") to the signed note `signed_note`; a line the
/// note already carries is not repeated. `lines` must be one or more whole signature lines. The
/// result is parsed again, so it is always a well-formed note within the size and
/// signature-count limits, with the same text. Nothing is verified: a caller that got the lines
/// from the network verifies them first ([`verify_cosignatures`]).
pub fn add_cosignatures(signed_note: &str, lines: &str) -> Result<String> {
    let before = note::parse_signed_note(signed_note)?;
    // Parse the lines as the signature block of a dummy note: the one parser of signature lines.
    let added = note::parse_signed_note(&format!("x\n\n{lines}"))?;
    if added.text != "x\n" {
        return Err(Error::Note("signature lines contain a blank line"));
    }
    let mut out = signed_note.to_owned();
    for (line, sig) in lines.split_inclusive('\n').zip(&added.signatures) {
        if !before.signatures.contains(sig) && !out.ends_with(line) {
            out.push_str(line);
        }
    }
    let after = note::parse_signed_note(&out)?;
    if after.text != before.text {
        return Err(Error::Note("adding signature lines changed the note text"));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;
    use crate::note::{parse_signed_note, sign_note};

    // The example of c2sp.org/tlog-cosignature, verbatim (its witness key is not published, so
    // only its structure can be checked: key id, timestamp = the `time` line of the spec's own
    // signed-message example, 1679315147).
    const SPEC_COSIGNED: &str = "example.com/behind-the-sofa\n\
        20852163\n\
        CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\
        \n\
        — example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\
        — witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";

    // Known answer generated here and cross-checked byte for byte by an independent
    // implementation (Python `cryptography`, crates/allowly-receipt/tests/python/cosignature_kat.py):
    // witness "witness.example/w1" with Ed25519 seed 32 x 0x42, cosigning KAT_TEXT at KAT_TIME.
    const KAT_NAME: &str = "witness.example/w1";
    const KAT_SEED: [u8; 32] = [0x42; 32];
    const KAT_TIME: u64 = 1_767_225_600;
    const KAT_TEXT: &str =
        "allowly/ws_kat\n5\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\ntime 2026-01-01T00:00:00.000Z\n";
    const KAT_VKEY: &str = "witness.example/w1+f1ed8c47+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS";
    const KAT_LINE: &str = "— witness.example/w1 8e2MRwAAAABpVbkA/hEtUTfrBmCq/Nw5aBzX4KBkv4cKlQRT+v+NBvzW6NUjepk7Cv5hwSJ064UXViVCYjKxZwRBaUj/oXqCGfYBAg==\n";

    fn witness(seed: u8, name: &str) -> (SigningKey, CosignerKey) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let k = CosignerKey::new(name, sk.verifying_key()).unwrap();
        (sk, k)
    }

    fn log_note(text: &str) -> (String, NoteVerifier) {
        let sk = SigningKey::from_bytes(&[1; 32]);
        let v = NoteVerifier::new("allowly/ws_kat", sk.verifying_key()).unwrap();
        (sign_note(text, "allowly/ws_kat", &sk).unwrap(), v)
    }

    #[test]
    fn kat_spec_example_structure() {
        let n = parse_signed_note(SPEC_COSIGNED).unwrap();
        let w = &n.signatures[1];
        assert_eq!(w.name, "witness.example.com/w1");
        assert_eq!(hex::encode(w.key_id), "8d66cf3f");
        let (ts, _) = parse_payload(&w.sig).unwrap();
        assert_eq!(ts, 1_679_315_147);
        assert_eq!(
            signed_message(&n.text, ts),
            b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
        // The log's own signature (type 0x01 key id, 64-byte payload) is not a cosignature.
        assert_eq!(parse_payload(&n.signatures[0].sig), None);
    }

    #[test]
    fn kat_cross_checked_with_python() {
        let sk = SigningKey::from_bytes(&KAT_SEED);
        let k = CosignerKey::new(KAT_NAME, sk.verifying_key()).unwrap();
        assert_eq!(k.to_vkey(), KAT_VKEY);
        assert_eq!(CosignerKey::parse_vkey(KAT_VKEY).unwrap(), k);
        let line = cosign(KAT_TEXT, KAT_NAME, &sk, KAT_TIME).unwrap();
        assert_eq!(line, KAT_LINE);
        let n = parse_signed_note(&format!("{KAT_TEXT}\n{KAT_LINE}")).unwrap();
        let ks = [k];
        let got = verify_cosignatures(&n, &ks).unwrap();
        assert_eq!(got, vec![Cosigned { witness: &ks[0], timestamp: KAT_TIME }]);
    }

    #[test]
    fn vkey_types_do_not_mix() {
        let (_, k) = witness(3, "w.example");
        // A cosigner vkey is not a note verifier key and vice versa (type byte 0x04 vs 0x01).
        assert!(matches!(NoteVerifier::parse_vkey(&k.to_vkey()), Err(Error::Key(_))));
        let v = NoteVerifier::new("w.example", *k.key()).unwrap();
        assert!(matches!(CosignerKey::parse_vkey(&v.to_vkey()), Err(Error::Key(_))));
        assert_ne!(v.key_id(), k.key_id());
    }

    #[test]
    fn quorum_counts_distinct_valid_witnesses() {
        let (note, log) = log_note(KAT_TEXT);
        let (sk_a, a) = witness(10, "a.example");
        let (sk_b, b) = witness(11, "b.example");
        let (sk_c, c) = witness(12, "c.example");
        let ws = [a, b, c];
        let la = cosign(KAT_TEXT, "a.example", &sk_a, 100).unwrap();
        let lb = cosign(KAT_TEXT, "b.example", &sk_b, 200).unwrap();
        let la2 = cosign(KAT_TEXT, "a.example", &sk_a, 300).unwrap();
        let stranger = cosign(KAT_TEXT, "z.example", &SigningKey::from_bytes(&[99; 32]), 1).unwrap();
        let full = add_cosignatures(&note, &format!("{la}{stranger}{lb}{la2}")).unwrap();
        let logs = [log];
        let v = check_witness_quorum(&full, "allowly/ws_kat", &logs, &ws, 2).unwrap();
        assert_eq!(v.cosigned.len(), 2, "a twice counts once, the stranger not at all");
        assert_eq!((v.cosigned[0].timestamp, v.cosigned[1].timestamp), (100, 200));
        assert!(v.met());
        assert!(!check_witness_quorum(&full, "allowly/ws_kat", &logs, &ws, 3).unwrap().met());
        // c's cosignature makes 3.
        let lc = cosign(KAT_TEXT, "c.example", &sk_c, 5).unwrap();
        let fuller = add_cosignatures(&full, &lc).unwrap();
        assert!(check_witness_quorum(&fuller, "allowly/ws_kat", &logs, &ws, 3).unwrap().met());
        // Without any cosignature: no quorum, not an error.
        let none = check_witness_quorum(&note, "allowly/ws_kat", &logs, &ws, 1).unwrap();
        assert!(none.cosigned.is_empty() && !none.met());
        // The log's signature is still required, and the origin.
        assert_eq!(check_witness_quorum(&fuller, "allowly/ws_kat", &[], &ws, 1), Err(Error::NoKnownSignature));
        assert!(matches!(check_witness_quorum(&fuller, "allowly/other", &logs, &ws, 1), Err(Error::Checkpoint(_))));
    }

    #[test]
    fn one_key_under_two_names_is_one_witness() {
        let sk = SigningKey::from_bytes(&[20; 32]);
        let ws = [
            CosignerKey::new("one", sk.verifying_key()).unwrap(),
            CosignerKey::new("two", sk.verifying_key()).unwrap(),
        ];
        let lines = format!("{}{}", cosign(KAT_TEXT, "one", &sk, 1).unwrap(), cosign(KAT_TEXT, "two", &sk, 1).unwrap());
        let n = parse_signed_note(&add_cosignatures(&log_note(KAT_TEXT).0, &lines).unwrap()).unwrap();
        assert_eq!(verify_cosignatures(&n, &ws).unwrap().len(), 1);
    }

    #[test]
    fn bad_cosignature_by_a_trusted_witness_is_an_error() {
        let (sk_a, a) = witness(30, "a.example");
        let (sk_b, b) = witness(31, "b.example");
        let ws = [a.clone(), b.clone()];
        let (note, _) = log_note(KAT_TEXT);
        let good_a = cosign(KAT_TEXT, "a.example", &sk_a, 7).unwrap();
        // b signed another text; a timestamp changed after signing; a signature of the plain
        // text (no cosignature/v1 header); a 64-byte payload.
        let other = KAT_TEXT.replace("\n5\n", "\n6\n");
        let wrong_text = cosign(&other, "b.example", &sk_b, 7).unwrap();
        let good_b = cosign(KAT_TEXT, "b.example", &sk_b, 7).unwrap();
        let mut raw = B64.decode(good_b.trim_end().rsplit(' ').next().unwrap()).unwrap();
        raw[11] ^= 1;
        let wrong_time = format!("— b.example {}\n", B64.encode(&raw));
        let plain = sign_note(KAT_TEXT, "x", &sk_b).unwrap();
        let plain_sig = B64.decode(plain.trim_end().rsplit(' ').next().unwrap()).unwrap();
        let mut as_cosig = b.key_id().to_vec();
        as_cosig.extend_from_slice(&7u64.to_be_bytes());
        as_cosig.extend_from_slice(&plain_sig[4..]);
        let header_missing = format!("— b.example {}\n", B64.encode(&as_cosig));
        let mut short = b.key_id().to_vec();
        short.extend_from_slice(&plain_sig[4..]);
        let short = format!("— b.example {}\n", B64.encode(&short));
        for bad in [wrong_text, wrong_time, header_missing, short] {
            let n = parse_signed_note(&add_cosignatures(&note, &format!("{good_a}{bad}")).unwrap()).unwrap();
            assert!(matches!(verify_cosignatures(&n, &ws), Err(Error::BadSignature { .. })), "{bad}");
            // Untrusted, the same line is ignored.
            assert_eq!(verify_cosignatures(&n, &ws[..1]).unwrap().len(), 1);
        }
    }

    #[test]
    fn timestamp_limit() {
        let (sk, k) = witness(40, "w");
        assert!(cosign(KAT_TEXT, "w", &sk, MAX_TIMESTAMP).is_ok());
        assert!(matches!(cosign(KAT_TEXT, "w", &sk, MAX_TIMESTAMP + 1), Err(Error::Note(_))));
        // A line with a timestamp above 2^63 - 1 is refused even if the signature is right.
        let sig = sk.sign(&signed_message(KAT_TEXT, u64::MAX));
        let mut raw = k.key_id().to_vec();
        raw.extend_from_slice(&u64::MAX.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        let n = parse_signed_note(&format!("{KAT_TEXT}\n— w {}\n", B64.encode(raw))).unwrap();
        assert!(matches!(verify_cosignatures(&n, &[k]), Err(Error::BadSignature { .. })));
    }

    #[test]
    fn ambiguous_witness_keys_are_refused() {
        let (_, a) = witness(50, "a");
        let clash = CosignerKey { key: *witness(51, "a").1.key(), ..a.clone() };
        let n = parse_signed_note(&log_note(KAT_TEXT).0).unwrap();
        assert!(matches!(verify_cosignatures(&n, &[a.clone(), clash]), Err(Error::Key(_))));
        assert!(verify_cosignatures(&n, &[a.clone(), a]).is_ok());
    }

    #[test]
    fn add_cosignatures_rules() {
        let (note, _) = log_note(KAT_TEXT);
        let (sk, _) = witness(60, "w");
        let l = cosign(KAT_TEXT, "w", &sk, 1).unwrap();
        let once = add_cosignatures(&note, &l).unwrap();
        assert_eq!(once, format!("{note}{l}"));
        assert_eq!(add_cosignatures(&once, &l).unwrap(), once, "not repeated");
        for bad in ["", "\n", "— w\n", "not a line\n", &l[..l.len() - 1], "— w AAAA\n\n— w AAAA\n"] {
            assert!(add_cosignatures(&note, bad).is_err(), "{bad:?}");
        }
        assert!(add_cosignatures("garbage", &l).is_err());
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[^\\s+\\x00-\\x1f]{1,24}".prop_filter("valid key name", |n| note::validate_key_name(n).is_ok())
    }

    proptest! {
        #[test]
        fn prop_cosign_verify_roundtrip(
            seed in any::<[u8; 32]>(),
            name in name_strategy(),
            ts in 0..=MAX_TIMESTAMP,
            size in any::<u64>(),
            root in any::<[u8; 32]>(),
        ) {
            let text = Checkpoint { origin: "o".into(), size, root, extensions: vec![] }.to_text().unwrap();
            let sk = SigningKey::from_bytes(&seed);
            let k = CosignerKey::new(&name, sk.verifying_key()).unwrap();
            prop_assert_eq!(CosignerKey::parse_vkey(&k.to_vkey()).unwrap(), k.clone());
            let line = cosign(&text, &name, &sk, ts).unwrap();
            let n = parse_signed_note(&format!("{text}\n{line}")).unwrap();
            prop_assert_eq!(verify_cosignatures(&n, std::slice::from_ref(&k)).unwrap()[0].timestamp, ts);
        }

        #[test]
        fn prop_parsers_never_panic(s in "\\PC*|(?s).*", b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = CosignerKey::parse_vkey(&s);
            let _ = parse_payload(&b);
            let (_, k) = witness(70, "w");
            if let Ok(n) = parse_signed_note(&s) {
                let _ = verify_cosignatures(&n, std::slice::from_ref(&k));
            }
            let _ = add_cosignatures(&s, &s);
        }

        #[test]
        fn prop_flipped_cosignature_never_verifies(idx in any::<prop::sample::Index>(), mask in 1u8..=255) {
            let (sk, k) = witness(80, "w");
            let line = cosign(KAT_TEXT, "w", &sk, 12345).unwrap();
            let mut bytes = format!("{KAT_TEXT}\n{line}").into_bytes();
            let i = idx.index(bytes.len());
            bytes[i] ^= mask;
            if let Ok(n) = note::parse_signed_note_bytes(&bytes) {
                let got = verify_cosignatures(&n, std::slice::from_ref(&k));
                prop_assert!(!matches!(got.as_deref(), Ok([_])), "flipped cosignature verified: {:?}", n);
            }
        }
    }
}

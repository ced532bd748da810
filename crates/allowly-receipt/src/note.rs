//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 signatures, and C2SP
//! checkpoints (<https://c2sp.org/tlog-checkpoint>).
//!
//! The wire format is byte-compatible with `golang.org/x/mod/sumdb/note` (tested against its
//! known-answer vectors and against signatures made by `sum.golang.org`). Parsing is stricter than
//! Go's where the spec leaves room, because an audit log must have exactly one encoding per
//! meaning:
//!
//! * base64 (signatures, root hashes, verifier keys) must be canonical: padded, no trailing bits
//!   set, no embedded newlines — otherwise the same signature could be written several ways;
//! * every signature by a known key is verified, including repeats (Go verifies only the first
//!   repeat), and any failure rejects the whole note (the spec's SHOULD, Go's behaviour);
//! * verifier keys must be canonical, non-weak Ed25519 points with a lowercase key id.
//!
//! Verification uses `verify_strict` (rejects non-canonical `S`, non-canonical and small-order
//! `R`, and small-order public keys), so a signature cannot be malleated into a second valid one.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Ed25519 signature type byte in C2SP key ids and verifier keys.
pub const ALG_ED25519: u8 = 0x01;

/// Largest signed note (in bytes) that [`parse_signed_note`] accepts; bounds the work an
/// untrusted input can cause. The spec asks verifiers to bound size or signature count.
pub const MAX_NOTE_SIZE: usize = 1 << 20;

/// Most signature lines [`parse_signed_note`] accepts (known or not). The spec requires at least
/// 16; Go's implementation uses 100.
pub const MAX_SIGNATURES: usize = 100;

/// Length of an Ed25519 signature in bytes.
const ED25519_SIG_LEN: usize = 64;

/// Em dash (U+2014) and space: the start of every signature line.
const SIG_PREFIX: &str = "\u{2014} ";

/// key id = first 4 bytes of SHA-256(name || 0x0A || 0x01 || 32-byte public key)
///
/// The id only *names* a key (it is not a commitment): it lets a verifier pick the right key
/// without trying all of them. The key itself is always configured out of band.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    key_id_for(name, ALG_ED25519, key)
}

/// key id = first 4 bytes of SHA-256(name || 0x0A || alg || 32-byte public key): the one
/// derivation of every Ed25519-based signature type (0x01 notes, 0x04 cosignatures).
pub(crate) fn key_id_for(name: &str, alg: u8, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', alg]);
    h.update(key.as_bytes());
    let sum = h.finalize();
    [sum[0], sum[1], sum[2], sum[3]]
}

/// Checks what every Ed25519 verifier key must be: not of small order (it could never verify
/// under `verify_strict`) and canonically encoded (no second encoding of one key).
pub(crate) fn check_ed25519_key(key: &VerifyingKey) -> Result<()> {
    if key.is_weak() {
        return Err(Error::Key("public key has small order"));
    }
    if key.to_edwards().compress().to_bytes() != key.to_bytes() {
        return Err(Error::Key("public key is not canonically encoded"));
    }
    Ok(())
}

/// Parses a C2SP verifier key `<name>+<8 lowercase hex digits key id>+<base64(alg || 32-byte
/// key)>` whose type byte must be `alg`, checking the name and the key
/// ([`check_ed25519_key`]) and that the key id is the one derived from them (it is redundant,
/// so a mismatch means a corrupted or tampered string).
pub(crate) fn parse_ed25519_vkey(s: &str, alg: u8) -> Result<(String, [u8; 4], VerifyingKey)> {
    // The name cannot contain '+', the id is hex, so the first two '+' are the separators;
    // the base64 part may itself contain '+'.
    let (name, rest) = s.split_once('+').ok_or(Error::Key("verifier key: missing '+'"))?;
    let (id_hex, key_b64) = rest.split_once('+').ok_or(Error::Key("verifier key: missing second '+'"))?;
    validate_key_name(name)?;
    if id_hex.len() != 8 || !id_hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::Key("verifier key: key id is not 8 lowercase hex digits"));
    }
    let id = parse_hex4(id_hex).ok_or(Error::Key("verifier key: bad key id"))?;
    let raw = decode_b64_canonical(key_b64).ok_or(Error::Key("verifier key: key is not canonical base64"))?;
    let (&got_alg, key_bytes) = raw.split_first().ok_or(Error::Key("verifier key: empty key"))?;
    if got_alg != alg {
        return Err(Error::Key("verifier key: unsupported algorithm"));
    }
    let key_bytes: &[u8; 32] = key_bytes.try_into().map_err(|_| Error::Key("verifier key: key is not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(key_bytes).map_err(|_| Error::Key("verifier key: not an Ed25519 point"))?;
    check_ed25519_key(&key)?;
    if key_id_for(name, alg, &key) != id {
        return Err(Error::Key("verifier key: key id does not match name and key"));
    }
    Ok((name.to_owned(), id, key))
}

/// Formats the verifier key string of an Ed25519-based key of type `alg`.
pub(crate) fn format_ed25519_vkey(name: &str, id: [u8; 4], alg: u8, key: &VerifyingKey) -> String {
    let mut raw = Vec::with_capacity(33);
    raw.push(alg);
    raw.extend_from_slice(key.as_bytes());
    format!("{name}+{}+{}", hex::encode(id), B64.encode(raw))
}

/// A verifier: key name + Ed25519 public key (key id derived).
///
/// Fields are private so the key id can never disagree with the name and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Builds a verifier, rejecting invalid names and keys that could never verify a signature
    /// under `verify_strict` (small-order) or that have a second encoding (non-canonical).
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self> {
        validate_key_name(name)?;
        check_ed25519_key(&key)?;
        Ok(Self { name: name.to_owned(), key_id: key_id(name, &key), key })
    }

    /// The key name, as it appears in signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id (big-endian), derived from name and key.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Parses `<name>+<8 lowercase hex digits key id>+<base64(0x01 || 32-byte key)>`.
    ///
    /// The key id in the string must equal the one derived from name and key: it is redundant,
    /// so a mismatch means a corrupted or tampered string.
    pub fn parse_vkey(s: &str) -> Result<Self> {
        let (name, _, key) = parse_ed25519_vkey(s, ALG_ED25519)?;
        Self::new(&name, key)
    }

    /// Formats the verifier key string understood by `golang.org/x/mod/sumdb/note`.
    pub fn to_vkey(&self) -> String {
        format_ed25519_vkey(&self.name, self.key_id, ALG_ED25519, &self.key)
    }
}

/// Valid key name per spec: non-empty, valid UTF-8, no Unicode whitespace, no '+'.
///
/// Also rejects ASCII control characters below U+0020: a signed note may not contain them, so
/// such a name could never appear in a signature line. Nothing else is rejected, because a note
/// with any invalid name in it (even an unknown cosigner's) is rejected as a whole.
pub fn validate_key_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Key("key name is empty"));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(Error::Key("key name contains whitespace"));
    }
    if name.contains('+') {
        return Err(Error::Key("key name contains '+'"));
    }
    if name.bytes().any(|b| b < 0x20) {
        return Err(Error::Key("key name contains a control character"));
    }
    Ok(())
}

/// Checks that `text` can be the text of a signed note: it ends with a newline and contains no
/// ASCII control character other than newline. Empty lines are allowed (the spec says so); the
/// note parser splits text from signatures at the *last* blank line, so any such text round-trips.
pub fn validate_note_text(text: &str) -> Result<()> {
    if !text.ends_with('\n') {
        return Err(Error::Note("text does not end with a newline"));
    }
    if has_forbidden_control(text) {
        return Err(Error::Note("text contains a control character other than newline"));
    }
    Ok(())
}

/// Sign: returns the full signed note = text + "\n" + "— <name> <base64(keyid||sig)>\n".
///
/// The signature covers `text` exactly as given, final newline included. Fails if the text or
/// name is invalid or the result would exceed [`MAX_NOTE_SIZE`] (we never emit what we would
/// refuse to read).
pub fn sign_note(text: &str, name: &str, key: &SigningKey) -> Result<String> {
    validate_note_text(text)?;
    validate_key_name(name)?;
    let id = key_id(name, &key.verifying_key());
    let sig = key.sign(text.as_bytes());
    note_with_signature(text, name, id, &sig.to_bytes())
}

/// The signed note of `text` with a signature made elsewhere (a hardware token signs the
/// text's bytes; this only assembles the note): `text` + "\n" + "— <name> <base64(keyid||sig)>\n".
///
/// Checks the text and name as [`sign_note`] does, not the signature: a caller that did not
/// make the signature itself must verify it (the signer does, before releasing a checkpoint).
pub fn note_with_signature(text: &str, name: &str, key_id: [u8; 4], sig: &[u8; ED25519_SIG_LEN]) -> Result<String> {
    validate_note_text(text)?;
    validate_key_name(name)?;
    let out = format!("{text}\n{}", signature_line(name, key_id, sig));
    if out.len() > MAX_NOTE_SIZE {
        return Err(Error::Note("signed note would exceed the size limit"));
    }
    Ok(out)
}

/// One signature line, newline included: `— <name> <base64(key id || payload)>\n`. The
/// caller has checked the name.
pub(crate) fn signature_line(name: &str, key_id: [u8; 4], payload: &[u8]) -> String {
    let mut blob = Vec::with_capacity(4 + payload.len());
    blob.extend_from_slice(&key_id);
    blob.extend_from_slice(payload);
    format!("{SIG_PREFIX}{name} {}\n", B64.encode(blob))
}

/// One signature line of a note, decoded but not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name from the signature line.
    pub name: String,
    /// The first 4 bytes of the decoded signature (big-endian key id).
    pub key_id: [u8; 4],
    /// The remaining bytes: the signature proper (64 bytes for Ed25519; other algorithms differ,
    /// so the length is only checked when a known key claims the signature).
    pub sig: Vec<u8>,
}

/// A parsed signed note. Its `text` must not be trusted until [`SignedNote::verify`] succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// The signed text, including its final newline but not the blank separator line.
    pub text: String,
    /// All signature lines, in note order, including those by unknown keys.
    pub signatures: Vec<NoteSignature>,
}

/// Strict parse of a signed note held in raw bytes: rejects non-UTF-8 input, then as
/// [`parse_signed_note`]. The size limit is applied before anything else.
pub fn parse_signed_note_bytes(msg: &[u8]) -> Result<SignedNote> {
    if msg.len() > MAX_NOTE_SIZE {
        return Err(Error::Note("note exceeds the size limit"));
    }
    let s = std::str::from_utf8(msg).map_err(|_| Error::Note("note is not valid UTF-8"))?;
    parse_signed_note(s)
}

/// Strict parse of a signed note (structure only; no signature is checked here).
///
/// Rules: at most [`MAX_NOTE_SIZE`] bytes; no ASCII control characters except newline; the
/// text is everything up to and including the newline before the last blank line; after it a
/// non-empty block of 1..=[`MAX_SIGNATURES`] lines, each `— <name> <base64>\n` with a valid key
/// name and canonical base64 of a 4-byte key id plus at least one signature byte. Lines from
/// unknown keys count toward the limit, since they cost the same to parse.
pub fn parse_signed_note(msg: &str) -> Result<SignedNote> {
    if msg.len() > MAX_NOTE_SIZE {
        return Err(Error::Note("note exceeds the size limit"));
    }
    if has_forbidden_control(msg) {
        return Err(Error::Note("note contains a control character other than newline"));
    }
    let split = msg.rfind("\n\n").ok_or(Error::Note("no blank line before the signatures"))?;
    // Both indices are just past ASCII '\n' bytes, hence char boundaries.
    let (text, sigs) = (&msg[..split + 1], &msg[split + 2..]);
    if sigs.is_empty() {
        return Err(Error::Note("no signature lines"));
    }
    let body = sigs.strip_suffix('\n').ok_or(Error::Note("last signature line is not ended"))?;
    // `split` is the last "\n\n", so `body` has no empty line; still, count before decoding.
    if body.split('\n').count() > MAX_SIGNATURES {
        return Err(Error::Note("too many signatures"));
    }
    let signatures = body.split('\n').map(parse_signature_line).collect::<Result<Vec<_>>>()?;
    Ok(SignedNote { text: text.to_owned(), signatures })
}

/// Parses one signature line (without its newline).
fn parse_signature_line(line: &str) -> Result<NoteSignature> {
    let rest =
        line.strip_prefix(SIG_PREFIX).ok_or(Error::Note("signature line does not start with em dash and space"))?;
    let (name, b64) = rest.split_once(' ').ok_or(Error::Note("signature line has no space after the name"))?;
    validate_key_name(name).map_err(|_| Error::Note("invalid key name in signature line"))?;
    let raw = decode_b64_canonical(b64).ok_or(Error::Note("signature is not canonical base64"))?;
    if raw.len() < 5 {
        return Err(Error::Note("signature is shorter than key id plus one byte"));
    }
    let (id, sig) = raw.split_at(4);
    let key_id = [id[0], id[1], id[2], id[3]];
    Ok(NoteSignature { name: name.to_owned(), key_id, sig: sig.to_vec() })
}

impl SignedNote {
    /// Verifies the note against the trusted `verifiers`.
    ///
    /// * A signature whose (name, key id) matches no verifier is ignored (spec: MUST), so
    ///   unknown cosigners and rotated-out keys do not break verification.
    /// * A signature whose (name, key id) matches a verifier must be 64 bytes and pass
    ///   `verify_strict`, else `Err(BadSignature)` — even if another signature is good. The spec
    ///   says clients SHOULD reject the whole note and Go's `note.Open` does; a bad signature
    ///   under a trusted key means tampering or a broken signer, which an auditor must see.
    ///   Repeated signatures by one key are all verified.
    /// * No verified signature → `Err(NoKnownSignature)`.
    /// * Two verifiers with the same (name, key id) but different keys → `Err(Key)`: the
    ///   signature's key would be ambiguous. Identical duplicates are harmless.
    ///
    /// Returns each verifier that signed once, in order of its first signature, so callers
    /// counting a quorum cannot be fooled by a repeated line.
    pub fn verify<'a>(&self, verifiers: &'a [NoteVerifier]) -> Result<Vec<&'a NoteVerifier>> {
        if ambiguous(verifiers) {
            return Err(Error::Key("two verifiers share a name and key id"));
        }
        let mut signed: Vec<&'a NoteVerifier> = Vec::new();
        for s in &self.signatures {
            let Some(v) = s.claimed_by(verifiers) else {
                continue;
            };
            let bad = || Error::BadSignature { name: s.name.clone(), key_id: hex::encode(s.key_id) };
            let sig = Signature::from_slice(&s.sig).map_err(|_| bad())?;
            v.key.verify_strict(self.text.as_bytes(), &sig).map_err(|_| bad())?;
            if !signed.iter().any(|w| w.name == v.name && w.key_id == v.key_id) {
                signed.push(v);
            }
        }
        if signed.is_empty() {
            return Err(Error::NoKnownSignature);
        }
        Ok(signed)
    }
}

impl NoteSignature {
    /// The verifier this line names (same name and key id), if any.
    pub(crate) fn claimed_by<'a>(&self, verifiers: &'a [NoteVerifier]) -> Option<&'a NoteVerifier> {
        verifiers.iter().find(|v| v.name == self.name && v.key_id == self.key_id)
    }
}

/// Two verifiers with the same name and key id but different keys: a signature line naming
/// them could belong to either.
pub(crate) fn ambiguous(verifiers: &[NoteVerifier]) -> bool {
    verifiers
        .iter()
        .enumerate()
        .any(|(i, a)| verifiers[i + 1..].iter().any(|b| a.name == b.name && a.key_id == b.key_id && a.key != b.key))
}

/// C2SP checkpoint body: origin line, decimal tree size (no leading zeros except "0", ≤ u64),
/// base64 32-byte root hash, then zero or more non-empty extension lines.
/// `to_text` renders "origin\nsize\nroot\n[ext\n]*".
///
/// The origin is only required to be non-empty: the spec says it SHOULD be a URL without
/// spaces or '+', but clients MUST NOT assume so (e.g. sum.golang.org's is
/// `go.sum database tree`). Like all note text, no line may contain control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log identity; compare it with the expected origin before trusting anything else.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 Merkle tree root hash.
    pub root: [u8; 32],
    /// Opaque extension lines (without newlines). NOT RECOMMENDED by the spec.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// Renders the note text. Fails if the origin or an extension line is empty or contains a
    /// newline or control character, i.e. exactly when [`Checkpoint::parse`] would not return
    /// `self` from the output.
    pub fn to_text(&self) -> Result<String> {
        check_line(&self.origin, "origin is empty", "origin contains a control character")?;
        for ext in &self.extensions {
            check_line(ext, "extension line is empty", "extension line contains a control character")?;
        }
        let mut out = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for ext in &self.extensions {
            out.push_str(ext);
            out.push('\n');
        }
        Ok(out)
    }

    /// Parses a checkpoint note text (the `text` of a *verified* [`SignedNote`]).
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_NOTE_SIZE {
            return Err(Error::Checkpoint("text exceeds the size limit"));
        }
        if has_forbidden_control(text) {
            return Err(Error::Checkpoint("text contains a control character other than newline"));
        }
        let body = text.strip_suffix('\n').ok_or(Error::Checkpoint("text does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        let size = lines.next().ok_or(Error::Checkpoint("missing tree size line"))?;
        let root = lines.next().ok_or(Error::Checkpoint("missing root hash line"))?;
        if origin.is_empty() {
            return Err(Error::Checkpoint("origin is empty"));
        }
        let size = parse_tree_size(size)?;
        let root = decode_b64_canonical(root)
            .ok_or(Error::Checkpoint("root hash is not canonical base64"))?
            .try_into()
            .map_err(|_| Error::Checkpoint("root hash is not 32 bytes"))?;
        let extensions = lines
            .map(|l| if l.is_empty() { Err(Error::Checkpoint("extension line is empty")) } else { Ok(l.to_owned()) })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { origin: origin.to_owned(), size, root, extensions })
    }
}

/// Parse + verify in one step: parse the signed note, verify it with `verifiers`, only then parse
/// its text as a checkpoint (spec: the text MUST be ignored until verified), and check the origin
/// equals `expected_origin` byte for byte (a valid signature by a log key on another log's
/// checkpoint must not be accepted).
pub fn open_checkpoint<'a>(
    msg: &str,
    expected_origin: &str,
    verifiers: &'a [NoteVerifier],
) -> Result<(Checkpoint, Vec<&'a NoteVerifier>)> {
    let note = parse_signed_note(msg)?;
    let signers = note.verify(verifiers)?;
    let cp = Checkpoint::parse(&note.text)?;
    if cp.origin != expected_origin {
        return Err(Error::Checkpoint("origin does not match the expected origin"));
    }
    Ok((cp, signers))
}

/// Canonical decimal: ASCII digits only, no sign, no leading zero unless exactly "0", fits u64.
/// (Also the `old <size>` line of a C2SP tlog-witness request, which has the same rule.)
pub fn parse_tree_size(s: &str) -> Result<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Checkpoint("tree size is not a decimal number"));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(Error::Checkpoint("tree size has a leading zero"));
    }
    s.parse::<u64>().map_err(|_| Error::Checkpoint("tree size exceeds u64"))
}

/// A single checkpoint line: non-empty, no newline, no other control character.
fn check_line(s: &str, empty: &'static str, control: &'static str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::Checkpoint(empty));
    }
    if s.bytes().any(|b| b < 0x20) {
        return Err(Error::Checkpoint(control));
    }
    Ok(())
}

/// True if `s` contains an ASCII control character (below U+0020) other than newline. Checking
/// bytes is exact: in UTF-8, bytes below 0x20 only ever encode those characters.
fn has_forbidden_control(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 && b != b'\n')
}

/// Standard base64 with padding, accepted only if it is the unique encoding of its bytes: the
/// engine already rejects bad padding and set trailing bits; re-encoding makes that explicit.
pub fn decode_b64_canonical(s: &str) -> Option<Vec<u8>> {
    let raw = B64.decode(s).ok()?;
    (B64.encode(&raw) == s).then_some(raw)
}

/// Decodes 8 hex digits (already checked to be lowercase hex) into 4 bytes.
fn parse_hex4(s: &str) -> Option<[u8; 4]> {
    hex::decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- Known-answer vectors -------------------------------------------------------------
    // From golang.org/x/mod/sumdb/note/note_test.go (TestNewVerifier, TestNewSigner, TestSign,
    // TestOpen) and the package doc.
    const PETER_SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str =
        "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str =
        "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    // sum.golang.org's published verifier key (Go's cmd/go knownGOSUMDB).
    const SUMDB_VKEY: &str = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";

    // The example in c2sp.org/tlog-checkpoint, verbatim.
    const SPEC_CHECKPOINT: &str = "example.com/behind-the-sofa\n\
        20852163\n\
        CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\
        \n\
        — example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";

    // The example in c2sp.org/signed-note, verbatim (its key is not published).
    const SPEC_NOTE: &str = "Ognuno sta solo sul cuor della terra\n\
        trafitto da un raggio di sole:\n\
        \n\
        ed è subito sera.\n\
        \n\
        — quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";

    // A checkpoint served by sum.golang.org (tree size 65664258), as pinned by a third-party
    // test suite; authentic because it verifies under SUMDB_VKEY.
    const SUMDB_CHECKPOINT: &str = "go.sum database tree\n\
        65664258\n\
        WVVNVD2qx+fTq31zkj6UAqxT5X6HvGphGM+o8Thnbsg=\n\
        \n\
        — sum.golang.org Az3grligJmgX7KGyGPKybykNTh3VgsbLvUuvOwrM5zLVlulmFp2wdvbxOw74/gcNxURShXEpb7RXcs3+BYflYN+w0gQ=\n";

    /// Test-only decoder for Go's "PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)" signer keys.
    fn parse_go_skey(s: &str) -> (String, SigningKey) {
        let parts: Vec<&str> = s.splitn(5, '+').collect();
        assert_eq!(&parts[..2], ["PRIVATE", "KEY"]);
        let raw = B64.decode(parts[4]).unwrap();
        assert_eq!(raw[0], ALG_ED25519);
        let sk = SigningKey::from_bytes(&raw[1..].try_into().unwrap());
        assert_eq!(hex::encode(key_id(parts[2], &sk.verifying_key())), parts[3]);
        (parts[2].to_owned(), sk)
    }

    fn vk(s: &str) -> NoteVerifier {
        NoteVerifier::parse_vkey(s).unwrap()
    }

    fn key_from_seed(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn verifier_for(name: &str, sk: &SigningKey) -> NoteVerifier {
        NoteVerifier::new(name, sk.verifying_key()).unwrap()
    }

    fn is_note_err<T: std::fmt::Debug>(r: Result<T>) -> bool {
        matches!(r, Err(Error::Note(_)))
    }

    /// Re-encodes a signature line for `name` with raw bytes `id || sig`.
    fn sig_line(name: &str, id: [u8; 4], sig: &[u8]) -> String {
        let mut raw = id.to_vec();
        raw.extend_from_slice(sig);
        format!("— {name} {}\n", B64.encode(raw))
    }

    fn checkpoint_text(origin: &str) -> String {
        Checkpoint { origin: origin.into(), size: 7, root: [9; 32], extensions: vec![] }.to_text().unwrap()
    }

    // ---- KATs -------------------------------------------------------------------------------

    #[test]
    fn kat_go_verifier_keys_parse_and_reformat() {
        for (s, name, id) in [
            (PETER_VKEY, "PeterNeumann", [0xc7, 0x4f, 0x20, 0xa3]),
            (ENOCH_VKEY, "EnochRoot", [0xaf, 0x0c, 0xfe, 0x78]),
            (SUMDB_VKEY, "sum.golang.org", [0x03, 0x3d, 0xe0, 0xae]),
        ] {
            let v = vk(s);
            assert_eq!(v.name(), name);
            assert_eq!(v.key_id(), id);
            assert_eq!(key_id(name, v.key()), id);
            assert_eq!(v.to_vkey(), s);
        }
    }

    #[test]
    fn kat_go_sign_reproduces_signature_byte_for_byte() {
        let (name, sk) = parse_go_skey(PETER_SKEY);
        assert_eq!(NoteVerifier::new(&name, sk.verifying_key()).unwrap(), vk(PETER_VKEY));
        let msg = sign_note(TEXT, &name, &sk).unwrap();
        assert_eq!(msg, format!("{TEXT}\n{PETER_SIG}"));
    }

    #[test]
    fn kat_go_open() {
        let (peter, enoch) = (vk(PETER_VKEY), vk(ENOCH_VKEY));
        let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        let n = parse_signed_note(&msg).unwrap();
        assert_eq!(n.text, TEXT);
        assert_eq!(n.signatures.len(), 2);
        assert_eq!(n.signatures[0].name, "PeterNeumann");
        assert_eq!(n.signatures[0].key_id, peter.key_id());
        assert_eq!(n.signatures[0].sig.len(), 64);
        assert_eq!(n.signatures[1].key_id, enoch.key_id());

        // One known (Enoch's signature is ignored as unknown), both known, reversed list.
        let one = [peter.clone()];
        assert_eq!(n.verify(&one).unwrap(), vec![&one[0]]);
        let both = [enoch.clone(), peter.clone()];
        assert_eq!(n.verify(&both).unwrap(), vec![&both[1], &both[0]], "note order");
        assert_eq!(n.verify(&[]), Err(Error::NoKnownSignature));
    }

    #[test]
    fn kat_go_mangled_verifier_keys_rejected() {
        // Port of Go's TestNewVerifier: every proper substring and every single-byte increment.
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    let s = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(matches!(NoteVerifier::parse_vkey(s), Err(Error::Key(_))), "{s}");
                }
            }
        }
        let mut m = b.to_vec();
        for i in 0..m.len() {
            m[i] += 1;
            let s = std::str::from_utf8(&m).unwrap();
            assert!(matches!(NoteVerifier::parse_vkey(s), Err(Error::Key(_))), "{s}");
            m[i] -= 1;
        }
        // Wrong key length and unknown algorithm, each with an adjusted key id (from Go).
        for s in [
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(matches!(NoteVerifier::parse_vkey(s), Err(Error::Key(_))), "{s}");
        }
    }

    #[test]
    fn kat_go_open_too_many_signatures() {
        let peter = [vk(PETER_VKEY)];
        let over = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
        assert!(is_note_err(parse_signed_note(&over)));
        let at = format!("{TEXT}\n{}", PETER_SIG.repeat(100));
        let n = parse_signed_note(&at).unwrap();
        assert_eq!(n.verify(&peter).unwrap().len(), 1, "repeats are reported once");
    }

    #[test]
    fn kat_go_open_invalid_signature() {
        let bad = format!("{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        let n = parse_signed_note(&format!("{TEXT}\n{bad}")).unwrap();
        assert_eq!(
            n.verify(&[vk(PETER_VKEY)]),
            Err(Error::BadSignature { name: "PeterNeumann".into(), key_id: "c74f20a3".into() })
        );
    }

    #[test]
    fn kat_go_open_duplicated_and_unknown_signatures() {
        let enoch_bad = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
        let msg = format!("{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{enoch_bad}");
        let n = parse_signed_note(&msg).unwrap();
        assert_eq!(n.signatures.len(), 5);
        let peter = [vk(PETER_VKEY)];
        assert_eq!(n.verify(&peter).unwrap(), vec![&peter[0]]);
        // Unlike Go (which skips repeats unverified), a bad repeat by a known key is caught.
        let both = [vk(PETER_VKEY), vk(ENOCH_VKEY)];
        assert!(matches!(n.verify(&both), Err(Error::BadSignature { .. })));
    }

    #[test]
    fn kat_go_malformed_messages() {
        let peter_no_nl = &PETER_SIG[..PETER_SIG.len() - 1];
        let bad: Vec<Vec<u8>> = vec![
            TEXT.into(),
            format!("{TEXT}\n").into(),
            format!("{TEXT}\n{peter_no_nl}").into(),
            format!("\x01{TEXT}\n{PETER_SIG}").into(),
            [b"\xff".as_slice(), format!("{TEXT}\n{PETER_SIG}").as_bytes()].concat(),
            format!("{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=").into(),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n").into(),
        ];
        for m in bad {
            assert!(is_note_err(parse_signed_note_bytes(&m)), "{:?}", String::from_utf8_lossy(&m));
        }
    }

    #[test]
    fn kat_spec_signed_note_example_parses() {
        // Text may contain blank lines; the last blank line separates the signatures.
        let n = parse_signed_note(SPEC_NOTE).unwrap();
        assert_eq!(
            n.text,
            "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n"
        );
        assert_eq!(n.signatures.len(), 1);
        assert_eq!(n.signatures[0].name, "quasimodo.example/salvatore");
        assert_eq!(n.signatures[0].sig.len(), 64);
        // Its key is unpublished: a verifier with that name (other key id) ignores it.
        let v = [verifier_for("quasimodo.example/salvatore", &key_from_seed(1))];
        assert_eq!(n.verify(&v), Err(Error::NoKnownSignature));
    }

    #[test]
    fn kat_spec_checkpoint_example() {
        let n = parse_signed_note(SPEC_CHECKPOINT).unwrap();
        let cp = Checkpoint::parse(&n.text).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20_852_163);
        assert_eq!(B64.encode(cp.root), "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=");
        assert!(cp.extensions.is_empty());
        assert_eq!(cp.to_text().unwrap(), n.text);
        assert_eq!(n.signatures[0].name, "example.com/behind-the-sofa");
        // The id 033de0ae is sum.golang.org's, not derivable from this name: unknown key.
        assert_eq!(n.signatures[0].key_id, [0x03, 0x3d, 0xe0, 0xae]);
        let v = [verifier_for("example.com/behind-the-sofa", &key_from_seed(2))];
        assert_eq!(
            open_checkpoint(SPEC_CHECKPOINT, "example.com/behind-the-sofa", &v).map(|_| ()),
            Err(Error::NoKnownSignature)
        );
    }

    #[test]
    fn kat_spec_checkpoint_signature_is_sum_golang_org() {
        // The spec's example signature is sum.golang.org's over the same tree head with its real
        // origin; restoring origin and key name makes it verify under Go's published key.
        let msg = SPEC_CHECKPOINT.replacen("example.com/behind-the-sofa", "go.sum database tree", 1).replacen(
            "— example.com/behind-the-sofa ",
            "— sum.golang.org ",
            1,
        );
        let sumdb = [vk(SUMDB_VKEY)];
        let (cp, by) = open_checkpoint(&msg, "go.sum database tree", &sumdb).unwrap();
        assert_eq!(cp.size, 20_852_163);
        assert_eq!(by, vec![&sumdb[0]]);
    }

    #[test]
    fn kat_sum_golang_org_checkpoint() {
        let sumdb = [vk(SUMDB_VKEY)];
        let (cp, _) = open_checkpoint(SUMDB_CHECKPOINT, "go.sum database tree", &sumdb).unwrap();
        assert_eq!(cp.size, 65_664_258);
        assert_eq!(hex::encode(cp.root), "59554d543daac7e7d3ab7d73923e9402ac53e57e87bc6a6118cfa8f138676ec8");
        assert!(matches!(open_checkpoint(SUMDB_CHECKPOINT, "sum.golang.org", &sumdb), Err(Error::Checkpoint(_))));
        let bent = SUMDB_CHECKPOINT.replacen("65664258", "65664259", 1);
        assert!(matches!(open_checkpoint(&bent, "go.sum database tree", &sumdb), Err(Error::BadSignature { .. })));
    }

    // ---- Key names and verifier keys ----------------------------------------------------------

    #[test]
    fn key_name_rules() {
        for ok in ["example.com/log", "PeterNeumann", "日本/ログ", "a—b", "a\u{7f}b"] {
            assert_eq!(validate_key_name(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "a b", "a+b", "+", "a\tb", "a\nb", "a\u{a0}b", "a\u{3000}b", "a\u{2028}b", "a\u{1}b"] {
            assert!(matches!(validate_key_name(bad), Err(Error::Key(_))), "{bad:?}");
            assert!(matches!(NoteVerifier::new(bad, key_from_seed(3).verifying_key()), Err(Error::Key(_))));
            assert!(matches!(sign_note("x\n", bad, &key_from_seed(3)), Err(Error::Key(_))));
        }
    }

    #[test]
    fn vkey_rejections() {
        let v = vk(PETER_VKEY);
        let b64 = |alg: u8, key: &[u8]| B64.encode([&[alg], key].concat());
        let id = hex::encode(v.key_id());
        let key = v.key().as_bytes();
        let rejects = [
            PETER_VKEY.to_uppercase(),
            PETER_VKEY.replace("c74f20a3", "C74F20A3"),
            PETER_VKEY.replace("c74f20a3", "c74f20a4"),
            PETER_VKEY.replace("c74f20a3", "c74f20a"),
            PETER_VKEY.replace("c74f20a3", "0xc74f20a"),
            "PeterNeumann".into(),
            "PeterNeumann+c74f20a3".into(),
            format!("+{id}+{}", b64(1, key)),
            format!("PeterNeumann+{id}+{}", b64(2, key)),
            format!("PeterNeumann+{id}+{}", b64(1, &key[..31])),
            format!("PeterNeumann+{id}+{}", b64(1, &[key.as_slice(), &[0]].concat())),
            format!("PeterNeumann+{id}+{}=", b64(1, key)), // 33 bytes: no padding allowed
            format!("PeterNeumann+{id}+{}", b64(1, key).replace('/', "_")), // URL-safe alphabet
            format!("PeterNeumann+{id}+{}\n", b64(1, key)),
            format!("PeterNeumann+{id}+ {}", b64(1, key)),
            format!("PeterNeumann+{id}+"),
        ];
        for s in rejects {
            assert!(matches!(NoteVerifier::parse_vkey(&s), Err(Error::Key(_))), "{s:?}");
        }
    }

    #[test]
    fn weak_and_noncanonical_keys_rejected() {
        // Identity point: small order, would make verify_strict fail for every signature.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        let weak = VerifyingKey::from_bytes(&ident).unwrap();
        assert!(matches!(NoteVerifier::new("w", weak), Err(Error::Key(_))));
        let s = format!("w+{}+{}", hex::encode(key_id("w", &weak)), B64.encode([&[1], &ident[..]].concat()));
        assert!(matches!(NoteVerifier::parse_vkey(&s), Err(Error::Key(_))));

        // y = p + k (k < 19) is a second encoding of y = k; find one that decodes to a
        // non-weak point and check it is refused.
        let mut found = 0;
        for k in 2u8..19 {
            let mut y = [0xffu8; 32];
            y[31] = 0x7f;
            y[0] = 0xed + k; // p = 2^255 - 19 has low byte 0xed; 0xed + 18 < 0x100
            if let Ok(key) = VerifyingKey::from_bytes(&y) {
                if !key.is_weak() {
                    found += 1;
                    assert!(matches!(NoteVerifier::new("n", key), Err(Error::Key(_))));
                }
            }
        }
        assert!(found > 0, "no non-canonical test point found");
    }

    // ---- Note parse rejections ----------------------------------------------------------------

    #[test]
    fn note_rejects_structure() {
        let good = format!("{TEXT}\n{PETER_SIG}");
        assert!(parse_signed_note(&good).is_ok());
        let sig_b64 = PETER_SIG.trim_start_matches("— PeterNeumann ").trim_end();
        let cases = [
            format!("{TEXT}{PETER_SIG}"),                           // no blank line
            format!("{TEXT}\n"),                                    // empty signature block
            format!("{TEXT}\n{}", PETER_SIG.trim_end()),            // unterminated line
            format!("{TEXT}\n- PeterNeumann {sig_b64}\n"),          // hyphen, not em dash
            format!("{TEXT}\n—PeterNeumann {sig_b64}\n"),           // no space after dash
            format!("{TEXT}\n–  PeterNeumann {sig_b64}\n"),         // en dash
            format!("{TEXT}\n—  PeterNeumann {sig_b64}\n"),         // empty name
            format!("{TEXT}\n— PeterNeumann\n"),                    // no space after name
            format!("{TEXT}\n— PeterNeumann \n"),                   // empty signature
            format!("{TEXT}\n— PeterNeumann  {sig_b64}\n"),         // two spaces
            format!("{TEXT}\n— PeterNeumann {sig_b64} \n"),         // trailing space
            format!("{TEXT}\n— Peter+Neumann {sig_b64}\n"),         // '+' in name
            format!("{TEXT}\n— Peter\u{a0}Neumann {sig_b64}\n"),    // Unicode space in name
            format!("{TEXT}\n{PETER_SIG}\n"),                       // blank line after signatures
            format!("{TEXT}\n{PETER_SIG}not a signature\n"),        // junk line
            format!("{TEXT}\n{PETER_SIG}\r\n"),                     // CR
            format!("{TEXT}\n{}\r\n", PETER_SIG.trim_end()),        // CRLF line ending
            format!("{}\n{PETER_SIG}", TEXT.replace('\n', "\r\n")), // CRLF in text
            format!("a\tb\n\n{PETER_SIG}"),                         // tab in text
            format!("a\0b\n\n{PETER_SIG}"),                         // NUL in text
            format!("a\u{1b}b\n\n{PETER_SIG}"),                     // ESC in text
            String::new(),
            "\n".into(),
            "\n\n".into(),
        ];
        for c in cases {
            assert!(is_note_err(parse_signed_note(&c)), "{c:?}");
        }
    }

    #[test]
    fn note_rejects_bad_base64() {
        let raw = B64.decode(PETER_SIG.trim_start_matches("— PeterNeumann ").trim_end()).unwrap();
        let b64 = B64.encode(&raw); // 68 bytes -> 92 chars ending in one '='
        let cases = [
            b64.trim_end_matches('=').to_owned(),     // missing padding
            format!("{b64}="),                        // extra padding
            b64.replace('/', "_"),                    // URL-safe alphabet
            format!("{}!", &b64[..b64.len() - 1]),    // invalid character
            format!("{} {}", &b64[..40], &b64[40..]), // embedded space
            B64.encode([1u8, 2, 3, 4]),               // key id only, no signature
            B64.encode([1u8, 2, 3]),                  // short
            "AAAB".into(),                            // 3 bytes
            "AAAAAB==".into(),                        // 4 bytes, non-canonical bits
            "AAAAAAF=".into(),                        // non-canonical trailing bits
        ];
        for c in cases {
            let msg = format!("{TEXT}\n— PeterNeumann {c}\n");
            assert!(is_note_err(parse_signed_note(&msg)), "{c:?}");
        }
        // 5 bytes is the minimum a signature line may decode to (parse ok; verify decides).
        let five = format!("{TEXT}\n— x {}\n", B64.encode([1u8, 2, 3, 4, 5]));
        assert_eq!(parse_signed_note(&five).unwrap().signatures[0].sig, vec![5]);
    }

    #[test]
    fn note_rejects_non_utf8_and_oversize() {
        assert!(is_note_err(parse_signed_note_bytes(b"a\xc3\n\n\xe2\x80\x94 x AAAAAAA=\n")));
        // Overlong encoding of '\n' and a lone surrogate must not sneak through.
        assert!(is_note_err(parse_signed_note_bytes(b"a\xc0\x8a\n\n")));
        assert!(is_note_err(parse_signed_note_bytes(b"a\xed\xa0\x80\n\n")));

        let sk = key_from_seed(4);
        let v = [verifier_for("big", &sk)];
        let line = "x".repeat(1000) + "\n";
        // Largest text whose signed note fits exactly in MAX_NOTE_SIZE.
        let overhead = sign_note("x\n", "big", &sk).unwrap().len() - 2;
        let fill = MAX_NOTE_SIZE - overhead;
        let text = line.repeat(fill / line.len()) + &"y".repeat(fill % line.len() - 1) + "\n";
        let msg = sign_note(&text, "big", &sk).unwrap();
        assert_eq!(msg.len(), MAX_NOTE_SIZE);
        assert_eq!(parse_signed_note(&msg).unwrap().verify(&v).unwrap().len(), 1);
        let text2 = format!("z{text}");
        assert!(is_note_err(sign_note(&text2, "big", &sk)));
        let over = format!("z{msg}");
        assert!(is_note_err(parse_signed_note(&over)));
        assert!(is_note_err(parse_signed_note_bytes(over.as_bytes())));
    }

    #[test]
    fn unknown_signatures_count_toward_the_limit() {
        let sk = key_from_seed(5);
        let v = [verifier_for("me", &sk)];
        let signed = sign_note(TEXT, "me", &sk).unwrap();
        let mine = &signed[TEXT.len() + 1..];
        let stranger = sig_line("stranger", [0; 4], &[7; 64]);
        let ok = format!("{TEXT}\n{}{mine}", stranger.repeat(MAX_SIGNATURES - 1));
        assert_eq!(parse_signed_note(&ok).unwrap().verify(&v).unwrap(), vec![&v[0]]);
        let over = format!("{TEXT}\n{}{mine}", stranger.repeat(MAX_SIGNATURES));
        assert!(is_note_err(parse_signed_note(&over)));
    }

    #[test]
    fn sign_note_rejects_bad_text() {
        let sk = key_from_seed(6);
        for t in ["", "no newline", "a\r\n", "a\tb\n", "\u{0}\n", "a\nb"] {
            assert!(is_note_err(sign_note(t, "k", &sk)), "{t:?}");
        }
        // Valid per spec: any text ending in newline, including blank lines and a lone newline.
        let v = [verifier_for("k", &sk)];
        for t in ["\n", "a\n\n", "a\n\nb\n", "\n\n\n", "— k AAAA\n\n— x y\n", "a\u{7f}\u{85}\n"] {
            let n = parse_signed_note(&sign_note(t, "k", &sk).unwrap()).unwrap();
            assert_eq!(n.text, t);
            assert_eq!(n.verify(&v).unwrap(), vec![&v[0]]);
        }
    }

    // ---- Verification ------------------------------------------------------------------------

    #[test]
    fn verify_ignores_signatures_that_share_only_name_or_only_id() {
        let (sk_a, sk_b) = (key_from_seed(7), key_from_seed(8));
        let a = verifier_for("a.example", &sk_a);
        let signed = sign_note(TEXT, "a.example", &sk_a).unwrap();
        let good = &signed[TEXT.len() + 1..];
        let mut other_id = a.key_id();
        other_id[3] ^= 1;
        let same_name = sig_line("a.example", other_id, &[0; 64]); // junk, but unknown key
        let same_id = sig_line("b.example", a.key_id(), &[0; 64]);
        let by_b = &sign_note(TEXT, "b.example", &sk_b).unwrap()[TEXT.len() + 1..];
        let msg = format!("{TEXT}\n{same_name}{same_id}{by_b}{good}");
        let vs = [a.clone()];
        assert_eq!(parse_signed_note(&msg).unwrap().verify(&vs).unwrap(), vec![&vs[0]]);
        // Only unknown signatures: NoKnownSignature.
        let msg = format!("{TEXT}\n{same_name}{same_id}{by_b}");
        assert_eq!(parse_signed_note(&msg).unwrap().verify(&vs), Err(Error::NoKnownSignature));
    }

    #[test]
    fn verify_rejects_bad_known_signature_even_with_a_good_one() {
        let (sk_a, sk_b) = (key_from_seed(9), key_from_seed(10));
        let (a, b) = (verifier_for("a", &sk_a), verifier_for("b", &sk_b));
        let good_a = sign_note(TEXT, "a", &sk_a).unwrap()[TEXT.len() + 1..].to_owned();
        let wrong_text_b = sign_note("other\n", "b", &sk_b).unwrap()["other\n".len() + 1..].to_owned();
        let vs = [a.clone(), b.clone()];
        let expect = Err(Error::BadSignature { name: "b".into(), key_id: hex::encode(b.key_id()) });
        for msg in [format!("{TEXT}\n{good_a}{wrong_text_b}"), format!("{TEXT}\n{wrong_text_b}{good_a}")] {
            let n = parse_signed_note(&msg).unwrap();
            assert_eq!(n.verify(&vs), expect);
            // Without b trusted, its signature is just an unknown one.
            assert_eq!(n.verify(&vs[..1]).unwrap(), vec![&vs[0]]);
        }
    }

    #[test]
    fn verify_rejects_wrong_length_and_malleated_signatures() {
        let sk = key_from_seed(11);
        let v = [verifier_for("k", &sk)];
        let sig = sk.sign(TEXT.as_bytes()).to_bytes();
        let id = v[0].key_id();
        let bad = |s: &[u8]| {
            let n = parse_signed_note(&format!("{TEXT}\n{}", sig_line("k", id, s))).unwrap();
            n.verify(&v)
        };
        assert_eq!(bad(&sig).unwrap().len(), 1);
        assert!(matches!(bad(&sig[..63]), Err(Error::BadSignature { .. })));
        assert!(matches!(bad(&[&sig[..], &[0]].concat()), Err(Error::BadSignature { .. })));
        assert!(matches!(bad(&[0u8; 64]), Err(Error::BadSignature { .. })));
        // S + L: same signature modulo the group order, rejected by verify_strict's S < L check.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut m = sig;
        let mut carry = 0u16;
        for i in 0..32 {
            let t = u16::from(m[32 + i]) + u16::from(L[i]) + carry;
            m[32 + i] = t as u8;
            carry = t >> 8;
        }
        assert_eq!(carry, 0);
        assert!(matches!(bad(&m), Err(Error::BadSignature { .. })));
    }

    #[test]
    fn verify_detects_tampered_text() {
        let sk = key_from_seed(12);
        let v = [verifier_for("k", &sk)];
        let msg = sign_note("hello\nworld\n", "k", &sk).unwrap();
        for t in [msg.replacen("world", "World", 1), msg.replacen("hello\n", "hello\n\n", 1), format!("x\n{msg}")] {
            assert!(matches!(parse_signed_note(&t).unwrap().verify(&v), Err(Error::BadSignature { .. })), "{t:?}");
        }
    }

    #[test]
    fn verify_verifier_list_rules() {
        let sk = key_from_seed(13);
        let v = verifier_for("k", &sk);
        let n = parse_signed_note(&sign_note(TEXT, "k", &sk).unwrap()).unwrap();
        // Identical duplicates are harmless and reported once.
        let dup = [v.clone(), v.clone()];
        assert_eq!(n.verify(&dup).unwrap().len(), 1);
        // Same name and id with a different key (a 32-bit collision, forged here) is ambiguous.
        let clash = NoteVerifier { key: key_from_seed(14).verifying_key(), ..v.clone() };
        assert!(matches!(n.verify(&[v, clash]), Err(Error::Key(_))));
    }

    // ---- Checkpoints --------------------------------------------------------------------------

    #[test]
    fn checkpoint_parse_and_render() {
        let cp = Checkpoint {
            origin: "go.sum database tree".into(),
            size: u64::MAX,
            root: [0xab; 32],
            extensions: vec!["ext one".into(), "— 2".into()],
        };
        let t = cp.to_text().unwrap();
        assert_eq!(
            t,
            format!("go.sum database tree\n18446744073709551615\n{}\next one\n— 2\n", B64.encode([0xab; 32]))
        );
        assert_eq!(Checkpoint::parse(&t).unwrap(), cp);
        let zero = Checkpoint { origin: "o".into(), size: 0, root: [0; 32], extensions: vec![] };
        assert_eq!(Checkpoint::parse(&zero.to_text().unwrap()).unwrap(), zero);
    }

    #[test]
    fn checkpoint_parse_rejections() {
        let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        let cases = [
            format!("o\n1\n{root}"),           // no final newline
            format!("o\n1\n{root}\n\n"),       // empty extension line at end
            format!("o\n1\n{root}\na\n\nb\n"), // empty extension line in middle
            "o\n1\n".into(),                   // missing root
            "o\n".into(),                      // missing size
            "\n".into(),
            String::new(),
            format!("\n1\n{root}\n"),   // empty origin
            format!("o\n\n{root}\n"),   // empty size
            format!("o\n01\n{root}\n"), // leading zero
            format!("o\n00\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 1\n{root}\n"),
            format!("o\n1 \n{root}\n"),
            format!("o\n1_000\n{root}\n"),
            format!("o\n0x10\n{root}\n"),
            format!("o\n١\n{root}\n"),                    // Arabic-Indic digit
            format!("o\n18446744073709551616\n{root}\n"), // u64::MAX + 1
            format!("o\n99999999999999999999999\n{root}\n"),
            "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n".into(), // trailing bits
            "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n".into(),  // no padding
            "o\n1\nCsUYapGGPo4dkMgIAUqom_Xajj7h2fB2MPA3j2jxq2I=\n".into(), // URL-safe
            format!("o\n1\n {root}\n"),
            format!("o\n1\n{}\n", B64.encode([0u8; 31])),
            format!("o\n1\n{}\n", B64.encode([0u8; 33])),
            format!("o\n1\n{}\n", hex::encode([0u8; 32])),
            format!("o\r\n1\n{root}\n"),     // CR
            format!("o\n1\n{root}\nx\ty\n"), // tab in extension
        ];
        for c in cases {
            assert!(matches!(Checkpoint::parse(&c), Err(Error::Checkpoint(_))), "{c:?}");
        }
        // Origins are opaque: spaces and '+' are allowed (SHOULD-not, not MUST-not).
        assert_eq!(Checkpoint::parse(&format!("a b+c\n1\n{root}\n")).unwrap().origin, "a b+c");
    }

    #[test]
    fn checkpoint_to_text_rejections() {
        let base = Checkpoint { origin: "o".into(), size: 1, root: [0; 32], extensions: vec![] };
        let bad = [
            Checkpoint { origin: String::new(), ..base.clone() },
            Checkpoint { origin: "a\nb".into(), ..base.clone() },
            Checkpoint { origin: "a\rb".into(), ..base.clone() },
            Checkpoint { extensions: vec![String::new()], ..base.clone() },
            Checkpoint { extensions: vec!["ok".into(), "a\nb".into()], ..base.clone() },
            Checkpoint { extensions: vec!["\u{0}".into()], ..base.clone() },
        ];
        for cp in bad {
            assert!(matches!(cp.to_text(), Err(Error::Checkpoint(_))), "{cp:?}");
        }
    }

    #[test]
    fn open_checkpoint_order_of_checks() {
        let sk = key_from_seed(15);
        let v = [verifier_for("log.example", &sk)];
        let msg = sign_note(&checkpoint_text("log.example/a"), "log.example", &sk).unwrap();
        let (cp, by) = open_checkpoint(&msg, "log.example/a", &v).unwrap();
        assert_eq!((cp.size, by), (7, vec![&v[0]]));
        // A valid signature on another log's checkpoint is not this log's checkpoint.
        assert!(matches!(open_checkpoint(&msg, "log.example/b", &v), Err(Error::Checkpoint(_))));
        // Signature is checked before the text is interpreted.
        let not_cp = sign_note("hello\n", "log.example", &sk).unwrap();
        assert!(matches!(open_checkpoint(&not_cp, "hello", &v), Err(Error::Checkpoint(_))));
        let stranger = [verifier_for("log.example", &key_from_seed(16))];
        assert_eq!(open_checkpoint(&not_cp, "hello", &stranger).map(|_| ()), Err(Error::NoKnownSignature));
        assert!(is_note_err(open_checkpoint("garbage", "x", &v)));
    }

    // ---- Property tests ------------------------------------------------------------------------

    fn line_strategy() -> impl Strategy<Value = String> {
        // Any non-control-below-U+0020 character, biased toward ASCII, spaces and non-ASCII.
        prop_oneof!["[^\\x00-\\x1f]{1,32}", "[a-z0-9./: +—é日]{1,32}",]
    }

    fn checkpoint_strategy() -> impl Strategy<Value = Checkpoint> {
        (
            line_strategy(),
            prop_oneof![any::<u64>(), 0u64..1000, Just(u64::MAX)],
            any::<[u8; 32]>(),
            proptest::collection::vec(line_strategy(), 0..4),
        )
            .prop_map(|(origin, size, root, extensions)| Checkpoint { origin, size, root, extensions })
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[^\\s+\\x00-\\x1f]{1,24}".prop_filter("valid key name", |n| validate_key_name(n).is_ok())
    }

    proptest! {
        #[test]
        fn prop_checkpoint_roundtrip(cp in checkpoint_strategy()) {
            let t = cp.to_text().unwrap();
            prop_assert_eq!(Checkpoint::parse(&t).unwrap(), cp);
        }

        #[test]
        fn prop_sign_parse_verify(cp in checkpoint_strategy(), seed in any::<[u8; 32]>(), name in name_strategy()) {
            let sk = SigningKey::from_bytes(&seed);
            let v = [NoteVerifier::new(&name, sk.verifying_key()).unwrap()];
            prop_assert_eq!(NoteVerifier::parse_vkey(&v[0].to_vkey()).unwrap(), v[0].clone());
            let text = cp.to_text().unwrap();
            let msg = sign_note(&text, &name, &sk).unwrap();
            let n = parse_signed_note(&msg).unwrap();
            prop_assert_eq!(&n.text, &text);
            prop_assert_eq!(n.verify(&v).unwrap(), vec![&v[0]]);
            let (got, by) = open_checkpoint(&msg, &cp.origin, &v).unwrap();
            prop_assert_eq!(got, cp);
            prop_assert_eq!(by, vec![&v[0]]);
        }

        #[test]
        fn prop_single_byte_flip_never_verifies(
            cp in checkpoint_strategy(),
            seed in any::<[u8; 32]>(),
            idx in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let sk = SigningKey::from_bytes(&seed);
            let v = [NoteVerifier::new("log.example", sk.verifying_key()).unwrap()];
            let msg = sign_note(&cp.to_text().unwrap(), "log.example", &sk).unwrap();
            let mut bytes = msg.into_bytes();
            let i = idx.index(bytes.len());
            bytes[i] ^= mask;
            if let Ok(n) = parse_signed_note_bytes(&bytes) {
                prop_assert!(n.verify(&v).is_err(), "flipped note verified: {:?}", n);
            }
            if let Ok(s) = std::str::from_utf8(&bytes) {
                prop_assert!(open_checkpoint(s, &cp.origin, &v).is_err());
            }
        }

        #[test]
        fn prop_parse_never_panics_on_strings(s in "\\PC*|(?s).*") {
            exercise(&s);
        }

        #[test]
        fn prop_parse_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_signed_note_bytes(&b);
            exercise(&String::from_utf8_lossy(&b));
        }

        #[test]
        fn prop_parse_never_panics_on_near_notes(parts in proptest::collection::vec(prop_oneof![
            Just("\n"), Just("\n\n"), Just("— "), Just("—"), Just(" "), Just("+"), Just("="),
            Just("a"), Just("0"), Just("01"), Just("AAAA"), Just("x08go/ZJ"), Just("\r"), Just("é"),
            Just("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="), Just("PeterNeumann"),
            Just(PETER_SIG), Just(TEXT), Just("18446744073709551616"),
        ], 0..24)) {
            exercise(&parts.concat());
        }
    }

    /// Runs every parser on `s`; the only requirement is that none panics.
    fn exercise(s: &str) {
        let vs = [vk(PETER_VKEY), vk(ENOCH_VKEY)];
        if let Ok(n) = parse_signed_note(s) {
            let _ = n.verify(&vs);
            let _ = Checkpoint::parse(&n.text);
        }
        let _ = Checkpoint::parse(s);
        let _ = open_checkpoint(s, "o", &vs);
        let _ = NoteVerifier::parse_vkey(s);
        let _ = validate_key_name(s);
    }
}

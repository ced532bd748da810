//! `Adopt`: the check that lets a signer continue a workspace's log from a checkpoint another
//! signer signed (ownership of the workspace moved to this signer's node), and the log state it
//! continues from. Pure: the caller (`workspace` for a loaded workspace, `registry` under the
//! workspace's load lock otherwise) makes the result durable.
//!
//! The signer never signs a checkpoint that does not extend one it verified: its own (it signed
//! them) or an adopted one, which must
//!
//! * be signed by a key of the workspace that this signer holds (its key record), and that key
//!   must be valid at the note's `time` (`not_before ≤ time < not_after`, the verifier's rule);
//!   the note's origin must be the workspace's log's;
//! * come with peaks (the Merkle frontier) that hash to the note's root at the note's size:
//!   the signer extends those peaks, so they must be the note's tree;
//! * extend what this signer itself last signed for the workspace: a smaller size is a rollback
//!   (refused), the same size must have the same root (else a fork), a larger one needs a
//!   consistency proof from the signer's own size and root to the note's.
//!
//! What the caller sends besides is `last_leaf_ms`, the time of the note's last receipt: the
//! floor below which the next appended receipt's `time` is refused. The signer cannot check it
//! (it never saw the leaf; checking it would take the leaf's body and an inclusion proof), and
//! it matters for no signature: receipt times only have to be monotone for readers, the Merkle
//! log's order is what is signed. So it is taken as a floor, raised to the signer's own when it
//! has one (a caller can never lower the floor of a log this signer signed), and documented as
//! the caller's word. The checkpoint time floor is the note's own time (and the signer's, if
//! later), so the next checkpoint is never dated before the adopted one.

use allowly_receipt::merkle::{verify_consistency, Frontier, Hash};
use allowly_receipt::note::{parse_signed_note, Checkpoint, NoteVerifier};
use allowly_receipt::types::{checkpoint_time, log_origin, HexHash};
use allowly_signer_proto::KeyInfo;

use crate::state::LogState;

/// Every refusal reason (the `allowly_signer_adopt_refusals_total` label values).
pub const REASONS: [&str; 7] = ["note", "signature", "key_window", "peaks", "rollback", "fork", "consistency"];

/// What the signer continues from once the note is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// The new state to journal; `None`: the signer is at the note already (same size, same
    /// root), nothing to write.
    pub state: Option<LogState>,
    pub size: u64,
    pub root: Hash,
}

/// Why an adopt was refused: `reason` one of [`REASONS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
    /// The note's size, once known (0 before).
    pub note_size: u64,
}

fn refuse(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal { reason, detail: detail.into(), note_size: 0 }
}

/// Checks `note` (with its tree's `peaks` and a consistency `proof` from `own`'s size) against
/// the workspace's `keys` and the signer's own state `own` (`None`: it has no log for the
/// workspace), and returns the state to continue from. See the module docs.
pub fn check(
    ws: &str,
    keys: &[KeyInfo],
    own: Option<&LogState>,
    note: &str,
    peaks: &[Hash],
    proof: &[Hash],
    last_leaf_ms: u64,
) -> Result<Adoption, Refusal> {
    if note.is_empty() {
        return empty_log(own, peaks, proof);
    }
    let origin = log_origin(ws);
    let signed = parse_signed_note(note).map_err(|e| refuse("note", format!("not a signed note: {e}")))?;
    // Every key the signer holds for the workspace (retired ones too: a checkpoint signed
    // before a rotation is still that log's); the window is checked below.
    let mut verifiers = Vec::with_capacity(keys.len());
    for k in keys {
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&k.public_key)
            .map_err(|e| refuse("signature", format!("a key of the workspace is not a point: {e}")))?;
        verifiers.push(NoteVerifier::new(&origin, vk).map_err(|e| refuse("signature", e.to_string()))?);
    }
    let signers = signed
        .verify(&verifiers)
        .map_err(|e| refuse("signature", format!("not signed by a key of the workspace this signer holds: {e}")))?;
    let cp = Checkpoint::parse(&signed.text).map_err(|e| refuse("note", format!("not a checkpoint: {e}")))?;
    if cp.origin != origin {
        return Err(refuse("note", "the checkpoint is of another log"));
    }
    let time = checkpoint_time(&cp.extensions).map_err(|e| refuse("note", e.to_string()))?.unix_ms();
    let valid = signers.iter().any(|v| {
        keys.iter()
            .zip(&verifiers)
            .any(|(k, kv)| kv == *v && k.not_before_ms <= time && k.not_after_ms.is_none_or(|end| time < end))
    });
    if !valid {
        return Err(refuse("key_window", format!("no key that signed it was valid at its time ({time} ms)")));
    }
    let frontier = Frontier::from_parts(cp.size, peaks.to_vec())
        .map_err(|e| refuse("peaks", format!("not the frontier of a tree of {} leaves: {e}", cp.size)))?;
    if frontier.root() != cp.root {
        return Err(refuse("peaks", format!("the peaks do not hash to the note's root at size {}", cp.size)));
    }
    let (own_size, own_root) = match own {
        Some(s) => {
            let f = s.frontier().map_err(|e| refuse("fork", format!("the signer's own state: {e}")))?;
            (f.size(), f.root())
        }
        None => (0, Frontier::new().root()),
    };
    if cp.size < own_size {
        let r = refuse("rollback", format!("size {} is below the signer's log size {own_size}", cp.size));
        return Err(Refusal { note_size: cp.size, ..r });
    }
    if cp.size == own_size && own.is_some() {
        if cp.root != own_root {
            return Err(refuse("fork", format!("size {own_size} with another root than the signer's")));
        }
        if !proof.is_empty() {
            return Err(refuse("consistency", "a consistency proof between equal sizes must be empty"));
        }
        return Ok(Adoption { state: None, size: cp.size, root: cp.root });
    }
    // Also for a signer with no log (size 0, the empty root): the proof must then be empty.
    verify_consistency(own_size, cp.size, &own_root, &cp.root, proof).map_err(|e| {
        refuse("consistency", format!("no proof that size {} extends the signer's log at {own_size}: {e}", cp.size))
    })?;
    let peaks: Vec<HexHash> = frontier.peaks().iter().copied().map(HexHash).collect();
    let state = LogState {
        size: cp.size,
        peaks: peaks.clone(),
        checkpoint: Some(note.to_owned()),
        checkpoint_ms: own.map_or(0, |s| s.checkpoint_ms).max(time),
        // No group to replay: a lost answer of the other signer is not this one's to repeat.
        prev_size: cp.size,
        prev_peaks: peaks,
        last_group: Vec::new(),
        last_leaf_ms: own.map_or(0, |s| s.last_leaf_ms).max(last_leaf_ms),
    };
    Ok(Adoption { state: Some(state), size: cp.size, root: cp.root })
}

/// An adopt of the empty log (an empty `note`): the workspace has no signed checkpoint yet
/// (its former owner's signer signed nothing that was stored), so there is nothing to verify
/// and the signer starts the log at size 0, as `CreateKey` does. Only for a signer with no
/// log of the workspace (or an empty one: nothing changes); a signer with a non-empty log
/// refuses it as a rollback. This gives a caller nothing an adopt of an old but genuinely
/// signed checkpoint does not already give it (a fresh signer continuing from an older state
/// than another signer's: the case witnesses guard, docs/scale-out.md).
fn empty_log(own: Option<&LogState>, peaks: &[Hash], proof: &[Hash]) -> Result<Adoption, Refusal> {
    if !peaks.is_empty() || !proof.is_empty() {
        return Err(refuse("peaks", "the empty log has no peaks and no consistency proof"));
    }
    let root = Frontier::new().root();
    match own {
        None => Ok(Adoption { state: Some(LogState::empty()), size: 0, root }),
        Some(s) if s.size == 0 => Ok(Adoption { state: None, size: 0, root }),
        Some(s) => Err(refuse("rollback", format!("the empty log is below the signer's log size {}", s.size))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use allowly_receipt::merkle::{consistency_proof, leaf_hash, LeafList};
    use allowly_receipt::note::sign_note;
    use allowly_receipt::types::{Timestamp, TIME_EXTENSION_PREFIX};
    use base64::Engine as _;

    const WS: &str = "ws_a";
    const T: u64 = 1_767_225_600_000;

    fn key(b: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[b; 32])
    }

    fn info(k: &ed25519_dalek::SigningKey, from: u64, to: Option<u64>) -> KeyInfo {
        let v = NoteVerifier::new(&log_origin(WS), k.verifying_key()).unwrap();
        KeyInfo {
            key_id: v.key_id(),
            public_key: k.verifying_key().to_bytes(),
            not_before_ms: from,
            not_after_ms: to,
            active: to.is_none(),
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn frontier(n: u64) -> Frontier {
        let mut f = Frontier::new();
        f.append_nodes(&leaves(n)).unwrap();
        f
    }

    fn note(n: u64, k: &ed25519_dalek::SigningKey, time: u64) -> String {
        let origin = log_origin(WS);
        let cp = Checkpoint {
            origin: origin.clone(),
            size: n,
            root: frontier(n).root(),
            extensions: vec![format!("{TIME_EXTENSION_PREFIX}{}", Timestamp::from_unix_ms(time).unwrap())],
        };
        sign_note(&cp.to_text().unwrap(), &origin, k).unwrap()
    }

    fn own(n: u64) -> LogState {
        let f = frontier(n);
        LogState {
            size: n,
            peaks: f.peaks().iter().copied().map(HexHash).collect(),
            checkpoint: Some(note(n, &key(1), T)),
            checkpoint_ms: T,
            prev_size: n,
            prev_peaks: vec![],
            last_group: vec![],
            last_leaf_ms: T - 5,
        }
    }

    fn proof(from: u64, to: u64) -> Vec<Hash> {
        consistency_proof(&LeafList(leaves(to)), from, to).unwrap()
    }

    #[test]
    fn a_note_that_extends_the_signers_log_is_adopted_and_every_other_is_refused() {
        let keys = [info(&key(1), T - 1000, None)];
        let peaks = |n: u64| frontier(n).peaks().to_vec();
        let reason = |r: Result<Adoption, Refusal>| r.unwrap_err().reason;

        // No state: adopted as it is, with an empty proof only.
        let got = check(WS, &keys, None, &note(7, &key(1), T + 1), &peaks(7), &[], 3).unwrap();
        let state = got.state.unwrap();
        assert_eq!((state.size, state.last_leaf_ms, state.checkpoint_ms, got.root), (7, 3, T + 1, frontier(7).root()));
        assert_eq!(reason(check(WS, &keys, None, &note(7, &key(1), T), &peaks(7), &proof(3, 7), 0)), "consistency");

        // From the signer's own size 5: a proof from 5 to 9, and the floors never go down.
        let mine = own(5);
        let got = check(WS, &keys, Some(&mine), &note(9, &key(1), T + 2), &peaks(9), &proof(5, 9), 0).unwrap();
        let state = got.state.unwrap();
        assert_eq!((state.size, state.last_leaf_ms, state.checkpoint_ms), (9, T - 5, T + 2));
        assert_eq!(Frontier::from_parts(9, state.peaks.iter().map(|h| h.0).collect()).unwrap().root(), got.root);
        // The same size and root: nothing to do.
        let same = check(WS, &keys, Some(&mine), &note(5, &key(1), T + 3), &peaks(5), &[], 0).unwrap();
        assert_eq!((same.state, same.size), (None, 5));

        // Refusals, one per check.
        let other = [info(&key(2), T - 1000, None)];
        assert_eq!(
            reason(check(WS, &other, Some(&mine), &note(9, &key(1), T), &peaks(9), &proof(5, 9), 0)),
            "signature"
        );
        let retired = [info(&key(1), T - 1000, Some(T))];
        assert_eq!(
            reason(check(WS, &retired, Some(&mine), &note(9, &key(1), T), &peaks(9), &proof(5, 9), 0)),
            "key_window"
        );
        assert_eq!(reason(check(WS, &keys, Some(&mine), &note(9, &key(1), T), &peaks(8), &proof(5, 9), 0)), "peaks");
        let mut bad = peaks(9);
        bad[0][0] ^= 1;
        assert_eq!(reason(check(WS, &keys, Some(&mine), &note(9, &key(1), T), &bad, &proof(5, 9), 0)), "peaks");
        assert_eq!(reason(check(WS, &keys, Some(&mine), &note(4, &key(1), T), &peaks(4), &[], 0)), "rollback");
        assert_eq!(
            reason(check(WS, &keys, Some(&mine), &note(9, &key(1), T), &peaks(9), &proof(4, 9), 0)),
            "consistency"
        );
        assert_eq!(reason(check(WS, &keys, Some(&mine), &note(9, &key(1), T), &peaks(9), &[], 0)), "consistency");
        // The signer's own log of 5 other leaves: a note of 9 from these leaves forks it.
        let mut forked = own(5);
        forked.peaks[0].0[0] ^= 1;
        assert_eq!(
            reason(check(WS, &keys, Some(&forked), &note(9, &key(1), T), &peaks(9), &proof(5, 9), 0)),
            "consistency"
        );
        assert_eq!(reason(check(WS, &keys, Some(&forked), &note(5, &key(1), T), &peaks(5), &[], 0)), "fork");
        // An altered note: its signature no longer verifies.
        let n = note(9, &key(1), T);
        let altered = n.replacen("\n9\n", "\n8\n", 1);
        assert_eq!(reason(check(WS, &keys, Some(&mine), &altered, &peaks(8), &proof(5, 8), 0)), "signature");
        // Another log's note, signed by this workspace's key under its name.
        let origin = log_origin("ws_b");
        let text = format!(
            "{origin}\n9\n{}\ntime {}\n",
            base64::engine::general_purpose::STANDARD.encode(frontier(9).root()),
            Timestamp::from_unix_ms(T).unwrap()
        );
        let foreign = sign_note(&text, &log_origin(WS), &key(1)).unwrap();
        assert_eq!(reason(check(WS, &keys, Some(&mine), &foreign, &peaks(9), &proof(5, 9), 0)), "note");
        assert_eq!(reason(check(WS, &keys, Some(&mine), "garbage", &peaks(9), &proof(5, 9), 0)), "note");
    }

    #[test]
    fn the_empty_log_is_adopted_only_by_a_signer_without_a_longer_one() {
        let keys = [info(&key(1), T - 1000, None)];
        let reason = |r: Result<Adoption, Refusal>| r.unwrap_err().reason;
        let got = check(WS, &keys, None, "", &[], &[], 0).unwrap();
        assert_eq!((got.state, got.size, got.root), (Some(LogState::empty()), 0, Frontier::new().root()));
        // Already empty: nothing to write.
        assert_eq!(check(WS, &keys, Some(&LogState::empty()), "", &[], &[], 0).unwrap().state, None);
        // A signer that signed leaves never goes back to none.
        assert_eq!(reason(check(WS, &keys, Some(&own(5)), "", &[], &[], 0)), "rollback");
        assert_eq!(reason(check(WS, &keys, None, "", frontier(1).peaks(), &[], 0)), "peaks");
    }
}

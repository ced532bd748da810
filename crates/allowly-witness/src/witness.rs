//! The `add-checkpoint` logic of C2SP tlog-witness (<https://c2sp.org/tlog-witness>), without
//! HTTP: parse the request, check it against the log's keys and the recorded head, record the
//! new head durably, cosign (C2SP tlog-cosignature, `cosignature/v1`).
//!
//! The promise: for each log, every checkpoint this witness cosigns is consistent with every
//! earlier one it cosigned — never two roots for one size, never a smaller tree after a larger.
//! Checking `old` against the recorded head and recording the new head happen under one lock
//! per log (the spec's race, where a slower request rolls the head back, cannot happen), and the
//! head is durable before the cosignature leaves the process.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use allowly_receipt::cosignature;
use allowly_receipt::merkle::{self, Hash};
use allowly_receipt::note::{self, Checkpoint, NoteVerifier};

use crate::config::Logs;
use crate::keyfile::WitnessKey;
use crate::metrics::Metrics;
use crate::state::{Head, StateDir};
use crate::{Error, Result};

/// At most this many consistency proof lines (spec: "The client MUST NOT send more than 63").
pub const MAX_PROOF_LINES: usize = 63;

/// A parsed `add-checkpoint` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub old: u64,
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, as sent.
    pub checkpoint: String,
}

/// Parses `old <size>\n`, 0..=63 lines of base64 hashes, `\n`, then the signed checkpoint.
pub fn parse_request(body: &[u8]) -> Result<Request> {
    let bad = |m: &str| Error::Malformed(m.to_owned());
    let body = std::str::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?;
    let (head, checkpoint) = body.split_once("\n\n").ok_or_else(|| bad("no blank line before the checkpoint"))?;
    let mut lines = head.split('\n');
    let old_line = lines.next().unwrap_or_default();
    let old = old_line.strip_prefix("old ").ok_or_else(|| bad("first line is not `old <size>`"))?;
    let old = note::parse_tree_size(old).map_err(|_| bad("old size is not a canonical decimal"))?;
    let proof = lines
        .map(|l| {
            note::decode_b64_canonical(l)
                .and_then(|h| Hash::try_from(h).ok())
                .ok_or_else(|| bad("a proof line is not a canonical base64 hash"))
        })
        .collect::<Result<Vec<_>>>()?;
    if proof.len() > MAX_PROOF_LINES {
        return Err(bad("more than 63 consistency proof lines"));
    }
    Ok(Request { old, proof, checkpoint: checkpoint.to_owned() })
}

/// One known log: its keys and, behind its own lock, its recorded head.
#[derive(Debug)]
struct Log {
    verifiers: Vec<NoteVerifier>,
    head: Mutex<Option<Head>>,
}

/// A witness: its key, the logs it knows and their heads.
#[derive(Debug)]
pub struct Witness {
    key: WitnessKey,
    logs: BTreeMap<String, Log>,
    state: StateDir,
    metrics: Metrics,
}

impl Witness {
    /// Loads every known log's recorded head from `state` (any unreadable one fails the start).
    pub fn new(key: WitnessKey, logs: Logs, state: StateDir, metrics: Metrics) -> Result<Self> {
        let logs = logs
            .into_iter()
            .map(|(origin, verifiers)| {
                let head = state.load(&origin)?;
                Ok((origin, Log { verifiers, head: Mutex::new(head) }))
            })
            .collect::<Result<_>>()?;
        Ok(Self { key, logs, state, metrics })
    }

    /// The witness's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Handles one `add-checkpoint` body; returns the cosignature line(s). Blocking (it fsyncs):
    /// the HTTP layer runs it on the blocking pool, where a client going away cannot interrupt it
    /// between recording a head and updating the in-memory copy.
    pub fn add_checkpoint(&self, body: &[u8]) -> Result<String> {
        let req = parse_request(body)?;
        let signed = note::parse_signed_note(&req.checkpoint).map_err(|e| Error::Malformed(e.to_string()))?;
        // The text is read before its signature is checked only to find whose keys check it
        // (spec: unknown origin is 404, a bad signature 403); nothing else in it is trusted yet.
        let origin = signed.text.split('\n').next().unwrap_or_default();
        let log = self.logs.get(origin).ok_or_else(|| Error::UnknownLog(origin.to_owned()))?;
        signed.verify(&log.verifiers).map_err(Error::Forbidden)?;
        let cp = Checkpoint::parse(&signed.text).map_err(|e| Error::Malformed(e.to_string()))?;
        if req.old > cp.size {
            return Err(Error::Malformed(format!("old size {} is above the checkpoint's size {}", req.old, cp.size)));
        }

        let mut head = log.head.lock().map_err(|_| Error::Internal("a log's lock was poisoned"))?;
        let recorded = head.map_or(0, |h| h.size);
        if req.old != recorded {
            return Err(Error::OldSizeMismatch { old: req.old, size: recorded });
        }
        // The root of the old tree: the recorded one, or the empty tree's if nothing was cosigned.
        let old_root = head.map_or(merkle::EMPTY_ROOT, |h| h.root);
        if req.old == cp.size {
            if cp.root != old_root {
                eprintln!("allowly-witness: refused a fork of {origin:?} at size {}", cp.size);
                return Err(Error::Fork { size: cp.size });
            }
            if !req.proof.is_empty() {
                return Err(Error::BadProof(allowly_receipt::Error::Proof("proof between equal sizes must be empty")));
            }
        } else {
            merkle::verify_consistency(req.old, cp.size, &old_root, &cp.root, &req.proof).map_err(Error::BadProof)?;
        }
        let new = Head { size: cp.size, root: cp.root };
        if *head != Some(new) {
            let started = Instant::now();
            self.state.store(origin, new)?;
            self.metrics.persist_seconds.observe(started.elapsed().as_secs_f64());
            *head = Some(new);
        }
        // Still under the lock: a cosignature says this is the largest tree the witness has
        // seen "as of" its timestamp (tlog-cosignature), which a later head recorded between
        // unlocking and signing would make false.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let line = cosignature::cosign(&signed.text, self.key.public.name(), &self.key.signing, now)
            .map_err(|_| Error::Internal("cannot cosign a verified checkpoint"));
        drop(head);
        line
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const H: &str = "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=";

    #[test]
    fn parse_request_shapes() {
        let r = parse_request(format!("old 3\n{H}\n{H}\n\ncp\n\n— x y\n").as_bytes()).unwrap();
        assert_eq!((r.old, r.proof.len(), r.checkpoint.as_str()), (3, 2, "cp\n\n— x y\n"));
        assert!(parse_request(b"old 0\n\nc").unwrap().proof.is_empty());
        let many = format!("old 1\n{}\nc", format!("{H}\n").repeat(64));
        for bad in [
            &b"old 01\n\nc"[..],
            b"old -1\n\nc",
            b"old 1",
            b"new 1\n\nc",
            b"old 1\nnot base64\n\nc",
            b"old 1\nAAAA\n\nc",
            b"\xff\n\n",
            many.as_bytes(),
        ] {
            assert!(matches!(parse_request(bad), Err(Error::Malformed(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

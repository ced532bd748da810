//! Offline verification that returns findings, not a bool.
//!
//! Every problem is reported as a [`Finding`] with a stable code and a class: an *integrity
//! failure* means something that was signed has been altered, forged or contradicted; a *coverage
//! gap* means something is missing (a receipt, a leaf, a proof) but nothing present was altered.
//! The algorithm is specified step by step in `docs/receipt-format.md` §7.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::bundle::{Bundle, Scope};
use crate::cosignature::{self, CosignerKey};
use crate::merkle::{self, Hash};
use crate::note::{self, Checkpoint};
use crate::types::{checkpoint_time, AnyReceipt, KeySet, ReceiptBody, TrustedKeys};
use crate::{jcs, Error, Result};

mod semantics;

/// Whether a finding means "altered" or "missing".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Something present was altered, forged, or contradicts other signed evidence.
    Integrity,
    /// Something is missing; nothing present was shown to be altered.
    Coverage,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal, $class:ident;)*) => {
        /// Stable finding codes (their text is part of the CLI's `--json` contract).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Code { $($(#[$doc])* $variant,)* }
        impl Code {
            /// The code as written in reports and test vectors.
            pub fn as_str(self) -> &'static str { match self { $(Self::$variant => $text,)* } }
            /// The class the code belongs to.
            pub fn class(self) -> Class { match self { $(Self::$variant => Class::$class,)* } }
            /// Every code, for documentation and tests.
            pub const ALL: &'static [Code] = &[$(Self::$variant,)*];
        }
    };
}

codes! {
    /// The body is not I-JSON (duplicate keys, unsafe integers, …) so it has no canonical form.
    BodyNotCanonical = "body_not_canonical", Integrity;
    /// The body lacks a field, has a wrong type, or breaks a format rule.
    BodyInvalid = "body_invalid", Integrity;
    /// The receipt names another workspace than the keys / bundle.
    WorkspaceMismatch = "workspace_mismatch", Integrity;
    /// The envelope's log index differs from the body's.
    LogIndexMismatch = "log_index_mismatch", Integrity;
    /// A pending envelope's leaf hash or receipt id does not match its body.
    EnvelopeMismatch = "envelope_mismatch", Integrity;
    /// The checkpoint is not a well-formed signed note / checkpoint.
    CheckpointMalformed = "checkpoint_malformed", Integrity;
    /// A workspace key's signature on the checkpoint does not verify.
    CheckpointSignatureInvalid = "checkpoint_signature_invalid", Integrity;
    /// The checkpoint carries no signature by any workspace key.
    CheckpointUnknownKey = "checkpoint_unknown_key", Integrity;
    /// The checkpoint is for another log.
    CheckpointOriginMismatch = "checkpoint_origin_mismatch", Integrity;
    /// The signing key was outside its validity window at the checkpoint's time.
    KeyNotValidAtTime = "key_not_valid_at_time", Integrity;
    /// The inclusion proof does not lead from the leaf to the checkpoint's root.
    InclusionProofInvalid = "inclusion_proof_invalid", Integrity;
    /// A bundle line cannot be read.
    RecordMalformed = "record_malformed", Integrity;
    /// The bundle's keys are not the pinned keys.
    KeysMismatch = "keys_mismatch", Integrity;
    /// Two different leaves claim one log index.
    LogIndexConflict = "log_index_conflict", Integrity;
    /// Two different receipts claim one place in a trail.
    SeqConflict = "seq_conflict", Integrity;
    /// A receipt's `prev` is not the leaf hash of the trail's previous receipt.
    ChainBroken = "chain_broken", Integrity;
    /// A later receipt of a trail sits earlier in the log.
    TrailOrder = "trail_order", Integrity;
    /// Two checkpoints of one size with different roots: the log forked.
    CheckpointFork = "checkpoint_fork", Integrity;
    /// A consistency proof between two checkpoints does not verify.
    ConsistencyProofInvalid = "consistency_proof_invalid", Integrity;
    /// The leaves in the bundle do not hash to a checkpoint's root.
    CheckpointRootMismatch = "checkpoint_root_mismatch", Integrity;
    /// A receipt outside the scope the bundle claims.
    OutOfScope = "out_of_scope", Integrity;
    /// An allow, confirm or escalate that the grants, revocations, expiries and scope rules
    /// before it in the log do not give (semantic verification, §7.4).
    DecisionUnjustified = "decision_unjustified", Integrity;
    /// A cosignature by one of the caller's witness keys does not verify (§7.5; only with a
    /// witness policy).
    WitnessCosignatureInvalid = "witness_cosignature_invalid", Integrity;
    /// A trail has a hole: a receipt between two present ones is missing.
    ReceiptMissing = "receipt_missing", Coverage;
    /// A log index inside the bundle's scope has no receipt.
    LogLeafMissing = "log_leaf_missing", Coverage;
    /// A receipt is still pending: not yet covered by a signed checkpoint.
    NotSigned = "not_signed", Coverage;
    /// Two checkpoints with no proof that the later one extends the earlier.
    ConsistencyUnproven = "consistency_unproven", Coverage;
    /// The bundle stops short of what its header or its newest checkpoint commits to.
    Truncated = "truncated", Coverage;
    /// A checkpoint carries fewer valid cosignatures by the caller's witness keys than the
    /// quorum asks (§7.5; only with a witness policy): nothing is shown altered, but nothing
    /// shows the log did not show others another history either.
    WitnessQuorumNotMet = "witness_quorum_not_met", Coverage;
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: Code,
    pub class: Class,
    /// What it is about, e.g. `receipt rcpt_1 (log index 4)` or `bundle line 7`.
    pub subject: String,
    /// Human explanation.
    pub detail: String,
}

impl Finding {
    fn new(code: Code, subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { code, class: code.class(), subject: subject.into(), detail: detail.into() }
    }
}

/// The verdict of a whole report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Valid,
    /// No finding, but the keys came from the bundle itself (§7.2 step 2): whoever made the
    /// bundle could have made its keys, so this is not `Valid` (§10).
    ValidUnpinned,
    CoverageGap,
    IntegrityFailure,
}

/// Everything a verification found, plus counts for the human summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub receipts: usize,
    pub signed: usize,
    pub checkpoints: usize,
    pub findings: Vec<Finding>,
    /// Remarks that are not findings (e.g. "keys were taken from the bundle itself").
    pub notes: Vec<String>,
    /// The keys used were the bundle's own, not pinned by the caller: a report without findings
    /// is then [`Outcome::ValidUnpinned`], never [`Outcome::Valid`].
    pub unpinned: bool,
    /// How many decisions semantic verification (§7.4) judged; `None` when it did not run
    /// (turned off, or skipped because the bundle already has findings).
    pub decisions_checked: Option<usize>,
}

impl Report {
    /// Integrity failure beats coverage gap beats valid; valid without pinned keys is
    /// valid (unpinned).
    pub fn outcome(&self) -> Outcome {
        match self.findings.iter().map(|f| f.class).min() {
            Some(Class::Integrity) => Outcome::IntegrityFailure,
            Some(Class::Coverage) => Outcome::CoverageGap,
            None if self.unpinned => Outcome::ValidUnpinned,
            None => Outcome::Valid,
        }
    }

    fn push(&mut self, code: Code, subject: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding::new(code, subject, detail));
    }
}

/// A verified checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenedCheckpoint {
    size: u64,
    root: Hash,
}

/// A verifier's witness policy (§7.5): every checkpoint must carry valid `cosignature/v1`
/// cosignatures by at least `quorum` distinct keys of `witnesses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessPolicy {
    witnesses: Vec<CosignerKey>,
    quorum: usize,
}

impl WitnessPolicy {
    /// A policy that can be met: `quorum` is at least 1 and at most the number of distinct
    /// public keys (one key under two names is one witness, see [`cosignature`]).
    pub fn new(witnesses: Vec<CosignerKey>, quorum: usize) -> Result<Self> {
        let mut keys: Vec<&[u8; 32]> = witnesses.iter().map(|w| w.key().as_bytes()).collect();
        keys.sort_unstable();
        keys.dedup();
        if quorum == 0 || quorum > keys.len() {
            return Err(Error::Field {
                field: "witness quorum",
                msg: format!("must be between 1 and the number of distinct witness keys ({})", keys.len()),
            });
        }
        Ok(Self { witnesses, quorum })
    }
}

/// Applies the witness policy, if any, once per distinct checkpoint text.
#[derive(Debug, Default)]
struct Witnessing<'p> {
    policy: Option<&'p WitnessPolicy>,
    judged: HashSet<String>,
}

impl Witnessing<'_> {
    /// Judges a checkpoint that already opened under the workspace keys.
    fn check(&mut self, text: &str, subject: &str, report: &mut Report) {
        let Some(p) = self.policy else { return };
        if !self.judged.insert(text.to_owned()) {
            return;
        }
        // It opened, so it parses; a failure here is reported by the opening, not twice.
        let Ok(signed) = note::parse_signed_note(text) else { return };
        match cosignature::verify_cosignatures(&signed, &p.witnesses) {
            Err(e) => report.push(Code::WitnessCosignatureInvalid, subject, e.to_string()),
            Ok(c) if c.len() < p.quorum => report.push(
                Code::WitnessQuorumNotMet,
                subject,
                format!("{} of the {} required witnesses cosigned this checkpoint", c.len(), p.quorum),
            ),
            Ok(_) => {}
        }
    }
}

/// Opens a checkpoint note against the workspace keys: signature, origin, time, key window.
fn open_checkpoint(
    note_text: &str,
    keys: &TrustedKeys,
) -> std::result::Result<(OpenedCheckpoint, Checkpoint), (Code, String)> {
    let malformed = |e: Error| (Code::CheckpointMalformed, e.to_string());
    let signed = note::parse_signed_note(note_text).map_err(malformed)?;
    let signers = signed.verify(&keys.verifiers).map_err(|e| match e {
        Error::BadSignature { .. } => (Code::CheckpointSignatureInvalid, e.to_string()),
        Error::NoKnownSignature => (Code::CheckpointUnknownKey, "no signature by a key of this workspace".to_owned()),
        other => malformed(other),
    })?;
    let cp = Checkpoint::parse(&signed.text).map_err(malformed)?;
    if cp.origin != keys.origin {
        return Err((Code::CheckpointOriginMismatch, format!("origin {:?}, expected {:?}", cp.origin, keys.origin)));
    }
    let time = checkpoint_time(&cp.extensions).map_err(malformed)?;
    if !signers.iter().any(|v| keys.valid_at(v, time)) {
        return Err((Code::KeyNotValidAtTime, format!("no signing key was valid at {time}")));
    }
    Ok((OpenedCheckpoint { size: cp.size, root: cp.root }, cp))
}

/// What one receipt contributes to bundle-level checks.
#[derive(Debug, Clone)]
struct ReceiptFacts {
    body: ReceiptBody,
    leaf: Hash,
    signed: bool,
}

/// Checks one receipt alone. Pushes findings into `report`; returns the facts when the body
/// could be read (even if a signature check failed, so trail checks can still run).
fn check_one(
    r: &AnyReceipt,
    keys: &TrustedKeys,
    cps: &mut HashMap<String, std::result::Result<OpenedCheckpoint, (Code, String)>>,
    seen_cps: &mut Vec<OpenedCheckpoint>,
    witnessing: &mut Witnessing<'_>,
    report: &mut Report,
) -> Option<ReceiptFacts> {
    report.receipts += 1;
    let raw = r.body();
    let id_hint = raw.get("id").and_then(|v| v.as_str()).unwrap_or("?");
    let subject = format!("receipt {id_hint} (log index {})", r.log_index());
    let canonical = match jcs::canonicalize(raw) {
        Ok(c) => c,
        Err(e) => {
            report.push(Code::BodyNotCanonical, subject, e.to_string());
            return None;
        }
    };
    let body = match ReceiptBody::from_json(raw) {
        Ok(b) => b,
        Err(e) => {
            report.push(Code::BodyInvalid, subject, e.to_string());
            return None;
        }
    };
    if let Err(e) = body.validate() {
        report.push(Code::BodyInvalid, subject.clone(), e.to_string());
    }
    if body.workspace_id != keys.workspace_id {
        report.push(
            Code::WorkspaceMismatch,
            subject.clone(),
            format!("receipt of {}, keys of {}", body.workspace_id, keys.workspace_id),
        );
    }
    if body.log_index != r.log_index() {
        report.push(
            Code::LogIndexMismatch,
            subject.clone(),
            format!("envelope says {}, body says {}", r.log_index(), body.log_index),
        );
    }
    let leaf = merkle::leaf_hash(&canonical);
    let signed = match r {
        AnyReceipt::Pending(p) => {
            if p.leaf_hash.0 != leaf || p.receipt_id != body.id {
                report.push(Code::EnvelopeMismatch, subject.clone(), "leaf_hash or receipt_id does not match the body");
            }
            report.push(Code::NotSigned, subject, "pending: no signed checkpoint covers it yet");
            false
        }
        AnyReceipt::Signed(s) => {
            let opened =
                cps.entry(s.checkpoint.clone()).or_insert_with(|| open_checkpoint(&s.checkpoint, keys).map(|(o, _)| o));
            match opened {
                Err((code, detail)) => report.push(*code, subject, detail.clone()),
                Ok(cp) => {
                    if !seen_cps.contains(cp) {
                        seen_cps.push(*cp);
                    }
                    witnessing.check(&s.checkpoint, &subject, report);
                    let proof: Vec<Hash> = s.inclusion_proof.iter().map(|h| h.0).collect();
                    if let Err(e) = merkle::verify_inclusion(&leaf, s.log_index, cp.size, &proof, &cp.root) {
                        report.push(Code::InclusionProofInvalid, subject, e.to_string());
                    } else {
                        report.signed += 1;
                    }
                }
            }
            true
        }
    };
    Some(ReceiptFacts { body, leaf, signed })
}

/// Verifies a receipt document as read from a file or the API. A body that is JSON but breaks
/// the canonical-JSON input rules (duplicate members, lone surrogates, unsafe integers, …) can
/// only have been altered, so it is the finding `body_not_canonical` (§3, §7.1 step 3); the same
/// breach in the envelope around it, or bytes that are not JSON at all, are an error (unusable
/// input, §6.1).
pub fn verify_receipt_bytes(bytes: &[u8], keys: &KeySet) -> Result<Report> {
    verify_receipt_bytes_witnessed(bytes, keys, None)
}

/// [`verify_receipt_bytes`] with a witness policy (§7.5): a checkpoint without the quorum of
/// cosignatures is `witness_quorum_not_met`, a bad cosignature `witness_cosignature_invalid`.
pub fn verify_receipt_bytes_witnessed(bytes: &[u8], keys: &KeySet, witness: Option<&WitnessPolicy>) -> Result<Report> {
    let (value, violations) = jcs::parse_lenient(bytes)?;
    let (in_body, around): (Vec<_>, Vec<_>) = violations.into_iter().partition(|v| v.is_under(&["body"]));
    if let Some(v) = around.into_iter().next() {
        return Err(v.error);
    }
    let receipt = AnyReceipt::from_value(value)?;
    match in_body.into_iter().next() {
        Some(v) => {
            keys.trusted()?;
            let mut report = Report { receipts: 1, ..Report::default() };
            report.push(
                Code::BodyNotCanonical,
                format!("receipt (log index {})", receipt.log_index()),
                v.error.to_string(),
            );
            Ok(report)
        }
        None => verify_receipt_witnessed(&receipt, keys, witness),
    }
}

/// Verifies one receipt (signed or pending) alone against a workspace's keys.
pub fn verify_receipt(r: &AnyReceipt, keys: &KeySet) -> Result<Report> {
    verify_receipt_witnessed(r, keys, None)
}

/// [`verify_receipt`] with a witness policy (§7.5).
pub fn verify_receipt_witnessed(r: &AnyReceipt, keys: &KeySet, witness: Option<&WitnessPolicy>) -> Result<Report> {
    let trusted = keys.trusted()?;
    let mut report = Report::default();
    let mut seen = Vec::new();
    let mut witnessing = Witnessing { policy: witness, ..Witnessing::default() };
    check_one(r, &trusted, &mut HashMap::new(), &mut seen, &mut witnessing, &mut report);
    report.checkpoints = seen.len();
    Ok(report)
}

/// Verifies an evidence bundle as a whole.
///
/// `pinned` are keys the auditor obtained independently (e.g. from `GET /v1/workspaces/{id}/keys`
/// at an earlier time); without them the bundle's own key set is used and the report says so.
/// `extra_checkpoints` are signed checkpoints obtained independently: they let a verifier notice
/// a bundle that was cut short together with its newest checkpoints. They are bytes as obtained:
/// one that is not UTF-8 breaks the signed-note encoding rule and is `checkpoint_malformed`
/// (§7.2 step 8.1), a finding about the evidence, not unusable input.
///
/// Errors only when the input is not a bundle or no keys are available at all.
pub fn verify_bundle(bytes: &[u8], pinned: Option<&KeySet>, extra_checkpoints: &[Vec<u8>]) -> Result<Report> {
    verify_bundle_with(bytes, pinned, extra_checkpoints, Semantics::Default)
}

/// Whether a bundle's decisions are re-derived from the log (§7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantics {
    /// For log exports, which hold the rules and every receipt of a trail; not for authorization
    /// exports, which hold no scope rules.
    Default,
    On,
    Off,
}

/// [`verify_bundle`], choosing whether decisions are re-derived (semantic verification, §7.4).
pub fn verify_bundle_with(
    bytes: &[u8],
    pinned: Option<&KeySet>,
    extra_checkpoints: &[Vec<u8>],
    semantics: Semantics,
) -> Result<Report> {
    verify_bundle_witnessed(bytes, pinned, extra_checkpoints, semantics, None)
}

/// [`verify_bundle_with`] with a witness policy (§7.5), applied to every checkpoint of the
/// bundle, of its receipts and of `extra_checkpoints`.
pub fn verify_bundle_witnessed(
    bytes: &[u8],
    pinned: Option<&KeySet>,
    extra_checkpoints: &[Vec<u8>],
    semantics: Semantics,
    witness: Option<&WitnessPolicy>,
) -> Result<Report> {
    let (bundle, bad_lines) = Bundle::parse(bytes)?;
    let header = bundle.header.clone().ok_or(Error::Field { field: "bundle", msg: "no header".into() })?;
    let mut report = Report::default();
    for b in &bad_lines {
        if b.body_not_canonical {
            report.receipts += 1;
            report.push(Code::BodyNotCanonical, format!("bundle line {}", b.line), b.error.to_string());
        } else {
            report.push(Code::RecordMalformed, format!("bundle line {}", b.line), b.error.to_string());
        }
    }

    // Every key set the bundle carries must be well formed (§6.2), pinned keys or not: a broken
    // one is unusable input, not a finding, so that the same file gets the same answer either way.
    for k in &bundle.keys {
        k.trusted()?;
    }
    // Keys: pinned keys win; a bundle key set that is not a subset of them is an integrity failure.
    let keys = match (pinned, bundle.keys.first()) {
        (Some(p), _) => {
            for k in &bundle.keys {
                let unknown = k.workspace_id != p.workspace_id
                    || k.keys
                        .iter()
                        .any(|e| !p.keys.iter().any(|q| q.key_id == e.key_id && q.public_key == e.public_key));
                if unknown {
                    report.push(
                        Code::KeysMismatch,
                        "bundle keys",
                        "the bundle carries a key that is not among the pinned keys",
                    );
                }
            }
            p.clone()
        }
        (None, Some(k)) => {
            if bundle.keys.iter().any(|o| o != k) {
                report.push(Code::KeysMismatch, "bundle keys", "the bundle carries two different key sets");
            }
            report.unpinned = true;
            report.notes.push(
                "keys were taken from the bundle itself; pass --keys to pin the workspace's published keys".into(),
            );
            k.clone()
        }
        (None, None) => {
            return Err(Error::Field { field: "keys", msg: "the bundle carries no keys and none were given".into() })
        }
    };
    let trusted = keys.trusted()?;
    if header.workspace_id != trusted.workspace_id {
        report.push(
            Code::WorkspaceMismatch,
            "bundle header",
            format!("bundle of {}, keys of {}", header.workspace_id, trusted.workspace_id),
        );
    }

    // Checkpoints: every one the bundle (or the caller) names, plus those the receipts carry.
    let mut cps: HashMap<String, std::result::Result<OpenedCheckpoint, (Code, String)>> = HashMap::new();
    let mut seen: Vec<OpenedCheckpoint> = Vec::new();
    let mut witnessing = Witnessing { policy: witness, ..Witnessing::default() };
    let mut extra = Vec::with_capacity(extra_checkpoints.len());
    for (i, bytes) in extra_checkpoints.iter().enumerate() {
        match std::str::from_utf8(bytes) {
            Ok(text) => extra.push(text.to_owned()),
            Err(e) => report.push(
                Code::CheckpointMalformed,
                format!("checkpoint #{}", bundle.checkpoints.len() + i + 1),
                format!("not UTF-8: {e}"),
            ),
        }
    }
    for (i, text) in bundle.checkpoints.iter().chain(&extra).enumerate() {
        let opened = open_checkpoint(text, &trusted).map(|(o, _)| o);
        let subject = format!("checkpoint #{}", i + 1);
        match &opened {
            Ok(o) => {
                if !seen.contains(o) {
                    seen.push(*o);
                }
                witnessing.check(text, &subject, &mut report);
            }
            Err((code, detail)) => report.push(*code, subject, detail.clone()),
        }
        cps.insert(text.clone(), opened);
    }

    let mut facts = Vec::with_capacity(bundle.receipts.len());
    for r in &bundle.receipts {
        if let Some(f) = check_one(r, &trusted, &mut cps, &mut seen, &mut witnessing, &mut report) {
            facts.push(f);
        }
    }
    report.checkpoints = seen.len();

    let leaves = check_log(&facts, &mut report);
    check_trails(&facts, &header.scope, &mut report);
    check_scope(&header.scope, &leaves, &facts, &seen, &mut report);
    check_checkpoints(&seen, &bundle.consistency, &leaves, &mut report);
    let semantic = match semantics {
        Semantics::Default => matches!(header.scope, Scope::Log { .. }),
        Semantics::On => true,
        Semantics::Off => false,
    };
    if semantic {
        if report.findings.is_empty() {
            report.decisions_checked = Some(semantics::check(&facts, &mut report));
        } else {
            // Judged against a history with holes or alterations, an honest decision could
            // look unjustified (§7.4).
            report.notes.push("decisions not re-derived: the bundle already has findings".into());
        }
    }
    Ok(report)
}

/// Log-level: one leaf per index. Returns index → leaf hash; an index with conflicting leaves is
/// left out (it has no trustworthy leaf), so the verdict never depends on line order.
fn check_log(facts: &[ReceiptFacts], report: &mut Report) -> BTreeMap<u64, Hash> {
    let mut leaves = BTreeMap::new();
    let mut conflicted = Vec::new();
    for f in facts {
        if let Some(prev) = leaves.insert(f.body.log_index, f.leaf) {
            if prev != f.leaf {
                conflicted.push(f.body.log_index);
                report.push(
                    Code::LogIndexConflict,
                    format!("log index {}", f.body.log_index),
                    "two different receipts claim this log index",
                );
            }
        }
    }
    for i in conflicted {
        leaves.remove(&i);
    }
    leaves
}

/// Per-authorization trails: seq continuity, `prev` chain, log order. When several different
/// receipts claim one seq (already a `seq_conflict`), a receipt at the next seq links if its
/// `prev` is the leaf hash of any of them, so the verdict never depends on line order.
fn check_trails(facts: &[ReceiptFacts], scope: &Scope, report: &mut Report) {
    let mut trails: BTreeMap<&str, BTreeMap<u64, Vec<&ReceiptFacts>>> = BTreeMap::new();
    for f in facts {
        let (Some(auth), Some(seq)) = (f.body.authorization_id.as_deref(), f.body.seq) else { continue };
        let at = trails.entry(auth).or_default().entry(seq).or_default();
        if at.iter().all(|o| o.leaf != f.leaf) {
            if !at.is_empty() {
                report.push(
                    Code::SeqConflict,
                    format!("authorization {auth} seq {seq}"),
                    "two different receipts claim this place in the trail",
                );
            }
            at.push(f);
        }
    }
    let from_start = matches!(scope, Scope::Authorization { .. } | Scope::Log { from: 0, .. });
    for (auth, trail) in &trails {
        let mut expected_next: Option<u64> = from_start.then_some(0);
        let mut prev: Option<(u64, &Vec<&ReceiptFacts>)> = None;
        for (&seq, here) in trail {
            let subject = format!("authorization {auth} seq {seq}");
            if let Some(want) = expected_next.filter(|w| seq > *w) {
                report.push(Code::ReceiptMissing, subject.clone(), format!("seq {want}..{} missing", seq - 1));
            }
            if let Some((_, before)) = prev.filter(|(s, _)| s + 1 == seq) {
                for f in here {
                    let linked: Vec<_> = before.iter().filter(|p| f.body.prev.map(|h| h.0) == Some(p.leaf)).collect();
                    if linked.is_empty() {
                        report.push(Code::ChainBroken, subject.clone(), "prev is not the leaf hash of seq - 1");
                    }
                    // Order is judged against the receipt it links to, or every candidate if none.
                    let against: Vec<_> = if linked.is_empty() { before.iter().collect() } else { linked };
                    if against.iter().any(|p| f.body.log_index <= p.body.log_index) {
                        report.push(Code::TrailOrder, subject.clone(), "log index not after the previous receipt's");
                    }
                }
            }
            prev = Some((seq, here));
            expected_next = Some(seq + 1);
        }
    }
}

/// The bundle's claimed scope against what it holds.
fn check_scope(
    scope: &Scope,
    leaves: &BTreeMap<u64, Hash>,
    facts: &[ReceiptFacts],
    cps: &[OpenedCheckpoint],
    report: &mut Report,
) {
    match scope {
        Scope::Authorization { authorization_id, last_seq } => {
            let mut max_seq = None;
            for f in facts {
                if f.body.authorization_id.as_deref() != Some(authorization_id) || f.body.seq > Some(*last_seq) {
                    report.push(
                        Code::OutOfScope,
                        format!("receipt {}", f.body.id),
                        format!("not part of the trail of {authorization_id} up to seq {last_seq}"),
                    );
                } else {
                    max_seq = max_seq.max(f.body.seq);
                }
            }
            match max_seq {
                Some(m) if m >= *last_seq => {}
                _ => report.push(
                    Code::Truncated,
                    format!("authorization {authorization_id}"),
                    format!("header claims seq 0..={last_seq}, bundle ends at {max_seq:?}"),
                ),
            }
        }
        Scope::Log { from, to } => {
            for f in facts {
                if !(from..to).contains(&&f.body.log_index) {
                    report.push(
                        Code::OutOfScope,
                        format!("receipt {}", f.body.id),
                        format!("log index {} outside {from}..{to}", f.body.log_index),
                    );
                }
            }
            let missing = (*from..*to).filter(|i| !leaves.contains_key(i)).count();
            if missing > 0 {
                let first = (*from..*to).find(|i| !leaves.contains_key(i)).unwrap_or(*from);
                report.push(
                    Code::LogLeafMissing,
                    format!("log {from}..{to}"),
                    format!("{missing} leaves missing, first at index {first}"),
                );
            }
            if let Some(max) = cps.iter().map(|c| c.size).max() {
                if max > *to {
                    report.push(
                        Code::Truncated,
                        format!("log {from}..{to}"),
                        format!("a signed checkpoint commits to {max} leaves"),
                    );
                }
            }
        }
    }
    let unsigned = facts.iter().filter(|f| !f.signed).count();
    if unsigned > 0 {
        report.notes.push(format!("{unsigned} receipts are pending"));
    }
}

/// Checkpoints must all be views of one append-only log.
fn check_checkpoints(
    cps: &[OpenedCheckpoint],
    proofs: &[crate::bundle::Consistency],
    leaves: &BTreeMap<u64, Hash>,
    report: &mut Report,
) {
    let mut by_size: BTreeMap<u64, Hash> = BTreeMap::new();
    for c in cps {
        if let Some(r) = by_size.insert(c.size, c.root) {
            if r != c.root {
                report.push(
                    Code::CheckpointFork,
                    format!("checkpoint size {}", c.size),
                    "two signed checkpoints of one size with different roots",
                );
            }
        }
    }
    // Leaves 0..prefix are all present: roots of every checkpoint within it can be recomputed.
    let prefix = leaves.keys().enumerate().take_while(|(i, k)| *i as u64 == **k).count() as u64;
    let prefix_leaves: Vec<Hash> = leaves.values().take(prefix as usize).copied().collect();
    let list = merkle::LeafList(prefix_leaves);
    for c in cps.iter().filter(|c| c.size <= prefix) {
        match merkle::root_from(&list, c.size) {
            Ok(r) if r == c.root => {}
            _ => report.push(
                Code::CheckpointRootMismatch,
                format!("checkpoint size {}", c.size),
                "the bundle's leaves do not hash to this root",
            ),
        }
    }
    // Every consistency record between two opened checkpoints must verify, against each root a
    // size has, so that a fork cannot hide behind its other root.
    for p in proofs {
        let proof: Vec<Hash> = p.proof.iter().map(|h| h.0).collect();
        for a in cps.iter().filter(|c| c.size == p.old_size) {
            for b in cps.iter().filter(|c| c.size == p.new_size) {
                if let Err(e) = merkle::verify_consistency(a.size, b.size, &a.root, &b.root, &proof) {
                    report.push(
                        Code::ConsistencyProofInvalid,
                        format!("checkpoints {} → {}", a.size, b.size),
                        e.to_string(),
                    );
                }
            }
        }
    }
    // Each step between consecutive sizes is proven by recomputed roots or by a record.
    let sizes: Vec<u64> = by_size.into_keys().collect();
    for pair in sizes.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b > prefix && !proofs.iter().any(|p| p.old_size == a && p.new_size == b) {
            report.push(
                Code::ConsistencyUnproven,
                format!("checkpoints {a} → {b}"),
                "no consistency proof and not all leaves present",
            );
        }
    }
}

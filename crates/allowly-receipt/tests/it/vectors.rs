//! Generates the committed test vectors (valid and labelled invalid receipts, key sets and
//! bundles) from a fixed seed, checks that this crate's verifier reports exactly each vector's
//! labelled findings, and fails when the committed files differ from what the code generates.
//!
//! After a deliberate format change: `UPDATE_VECTORS=1 cargo test -p allowly-receipt --test it vectors::`
//! and review the diff. The Python and Node verifiers (tests/crosslang) read the same files.

use std::collections::BTreeMap;

use allowly_receipt::bundle::{Bundle, Consistency, Header, Scope};
use allowly_receipt::jcs;
use allowly_receipt::merkle::{self, Frontier, Hash, LeafList};
use allowly_receipt::note::{self, Checkpoint, NoteVerifier};
use allowly_receipt::types::*;
use allowly_receipt::verify::{self, Outcome, Report};
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::vectors_dir;

const WS: &str = "ws_vectors";

fn seed_key(label: &str) -> SigningKey {
    let seed: [u8; 32] = Sha256::digest(format!("allowly test vectors: {label}")).into();
    SigningKey::from_bytes(&seed)
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).expect("fixed timestamp")
}

fn sha(s: &str) -> HexHash {
    HexHash(Sha256::digest(s).into())
}

fn key_info(key: &SigningKey, from: &str, to: Option<&str>) -> PublicKeyInfo {
    key_info_of(WS, key, from, to)
}

fn key_info_of(ws: &str, key: &SigningKey, from: &str, to: Option<&str>) -> PublicKeyInfo {
    let origin = log_origin(ws);
    let v = NoteVerifier::new(&origin, key.verifying_key()).expect("valid name");
    PublicKeyInfo {
        key_id: hex::encode(v.key_id()),
        name: origin,
        algorithm: "ed25519".into(),
        public_key: base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes()),
        vkey: v.to_vkey(),
        not_before: ts(from),
        not_after: to.map(ts),
        status: if to.is_some() { KeyStatus::Retired } else { KeyStatus::Active },
    }
}

fn checkpoint_note(origin: &str, size: u64, root: Hash, time: &str, key_name: &str, key: &SigningKey) -> String {
    let cp =
        Checkpoint { origin: origin.into(), size, root, extensions: vec![format!("{TIME_EXTENSION_PREFIX}{time}")] };
    note::sign_note(&cp.to_text().expect("valid checkpoint"), key_name, key).expect("sign")
}

/// The fixed log every vector is cut from.
struct Log {
    key1: SigningKey,
    key2: SigningKey,
    keys: KeySet,
    bodies: Vec<Value>,
    leaves: Vec<Hash>,
    /// (size, signed note) of each batch checkpoint, in order.
    checkpoints: Vec<(u64, String)>,
    /// Each leaf's proof against its own batch checkpoint, and that checkpoint.
    batch_receipts: Vec<SignedReceipt>,
}

struct Trail {
    auth: &'static str,
    next_seq: u64,
    prev: Option<HexHash>,
}

impl Trail {
    fn new(auth: &'static str) -> Self {
        Self { auth, next_seq: 0, prev: None }
    }
}

/// The bodies of a log being built and their leaf hashes; appending a trail's receipt moves
/// the trail on.
#[derive(Default)]
struct Appended {
    bodies: Vec<Value>,
    leaves: Vec<Hash>,
}

impl Appended {
    fn push(&mut self, trail: Option<&mut Trail>, v: Value) {
        let leaf = merkle::leaf_hash(&jcs::canonicalize(&v).expect("canonical"));
        if let Some(t) = trail {
            t.next_seq += 1;
            t.prev = Some(HexHash(leaf));
        }
        self.bodies.push(v);
        self.leaves.push(leaf);
    }
}

#[allow(clippy::too_many_arguments)] // a test helper that reads like a table row
fn body(
    trail: Option<&mut Trail>,
    log_index: u64,
    kind: EventKind,
    decision: Option<Decision>,
    reason: Option<&str>,
    scopes: &[&str],
    resource: Option<&str>,
    time: &str,
) -> ReceiptBody {
    let (authorization_id, seq, prev) = match &trail {
        Some(t) => (Some(t.auth.to_string()), Some(t.next_seq), t.prev),
        None => (None, None, None),
    };
    ReceiptBody {
        v: FORMAT_VERSION,
        id: format!("rcpt_{log_index:04}"),
        workspace_id: WS.into(),
        authorization_id,
        seq,
        prev,
        log_index,
        kind,
        decision,
        reason: reason.map(str::to_owned),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        resource: resource.map(str::to_owned),
        time: ts(time),
        auth_state_hash: trail.as_ref().map(|t| sha(&format!("state of {} at {log_index}", t.auth))),
        grant: None,
        approval: None,
        escalation_id: None,
        context_hash: None,
        key: None,
        asked_authorization_id: None,
        expires_at: None,
        scope_rules: None,
    }
}

fn build_log() -> Log {
    let key1 = seed_key("key 1");
    let key2 = seed_key("key 2");
    let rotation = "2026-01-01T00:01:00.000Z";
    let keys = KeySet {
        workspace_id: WS.into(),
        origin: log_origin(WS),
        keys: vec![key_info(&key1, "2026-01-01T00:00:00.000Z", Some(rotation)), key_info(&key2, rotation, None)],
    };
    let mut a1 = Trail::new("auth_01");
    let mut a2 = Trail::new("auth_02");
    let mut log = Appended::default();
    let mut push = |trail: Option<&mut Trail>, b: ReceiptBody, extra: Option<(&str, Value)>| {
        let mut v = serde_json::to_value(&b).expect("body to value");
        if let Some((k, x)) = extra {
            v.as_object_mut().expect("object").insert(k.into(), x);
        }
        log.push(trail, v);
    };

    // Batch 1 (leaves 0..3), key 1.
    let mut b = body(
        Some(&mut a1),
        0,
        EventKind::AuthorizationCreated,
        None,
        None,
        &["files.read", "mail.*"],
        None,
        "2026-01-01T00:00:01.000Z",
    );
    b.grant = Some(Grant {
        subject: "user_42".into(),
        scopes: vec!["files.read".into(), "mail.*".into()],
        resources: vec!["drive:file/*".into()],
        expires_at: Some(ts("2027-01-01T00:00:00.000Z")),
        metadata_hash: Some(sha("{\"app\":\"demo\"}")),
    });
    push(Some(&mut a1), b, None);
    let b = body(
        Some(&mut a1),
        1,
        EventKind::Check,
        Some(Decision::Allow),
        Some("granted"),
        &["files.read"],
        Some("drive:file/report.pdf"),
        "2026-01-01T00:00:02.000Z",
    );
    push(Some(&mut a1), b, None);
    // Non-ASCII, escapes and characters whose UTF-8 and UTF-16 orders differ, in values and in
    // an extension member's keys: cross-language canonicalization must agree on all of them.
    let mut b = body(
        Some(&mut a1),
        2,
        EventKind::Check,
        Some(Decision::Deny),
        Some("resource_not_covered"),
        &["files.read"],
        Some("drive:file/Résumé \u{1F600} \"q\"\\\n\t\u{7f}\u{2028}\u{e000}"),
        "2026-01-01T00:00:03.000Z",
    );
    b.context_hash = Some(sha("context"));
    push(
        Some(&mut a1),
        b,
        Some((
            "x_ext",
            json!({"\u{e000}": 1, "\u{1F600}": 2, "a": "\u{1}", "\u{80}": [true, false, null], "1": -9007199254740991i64}),
        )),
    );

    // Batch 2 (leaves 3..5), key 1.
    let mut b = body(
        Some(&mut a2),
        3,
        EventKind::AuthorizationCreated,
        None,
        None,
        &["payments.send"],
        None,
        "2026-01-01T00:00:20.000Z",
    );
    b.grant = Some(Grant {
        subject: "ユーザー 7".into(),
        scopes: vec!["payments.send".into()],
        resources: vec![],
        expires_at: None,
        metadata_hash: None,
    });
    push(Some(&mut a2), b, None);
    let b = body(
        Some(&mut a2),
        4,
        EventKind::Check,
        Some(Decision::Confirm),
        Some("confirmation_required"),
        &["payments.send"],
        Some("acct:9"),
        "2026-01-01T00:00:21.000Z",
    );
    push(Some(&mut a2), b, None);

    // Batch 3 (leaves 5..8), key 2: the rotation itself, then two more receipts.
    let mut b = body(None, 5, EventKind::KeyRotated, None, None, &[], None, rotation);
    let v2 = NoteVerifier::new(&log_origin(WS), key2.verifying_key()).expect("name");
    let v1 = NoteVerifier::new(&log_origin(WS), key1.verifying_key()).expect("name");
    b.key =
        Some(RotatedKey { key_id: hex::encode(v2.key_id()), vkey: v2.to_vkey(), replaces: hex::encode(v1.key_id()) });
    push(None, b, None);
    let b = body(
        Some(&mut a1),
        6,
        EventKind::Revocation,
        None,
        Some("revoked_by_user"),
        &[],
        None,
        "2026-01-01T00:01:05.000Z",
    );
    push(Some(&mut a1), b, None);
    let mut b = body(
        Some(&mut a2),
        7,
        EventKind::EscalationCreated,
        Some(Decision::Escalate),
        Some("escalation_required"),
        &["payments.send"],
        Some("acct:9"),
        "2026-01-01T00:01:06.000Z",
    );
    b.escalation_id = Some("esc_01".into());
    push(Some(&mut a2), b, None);

    let Appended { bodies, leaves } = log;
    let batches: [(usize, usize, &SigningKey, &str); 3] = [
        (0, 3, &key1, "2026-01-01T00:00:10.000Z"),
        (3, 5, &key1, "2026-01-01T00:00:50.000Z"),
        (5, 8, &key2, "2026-01-01T00:01:10.000Z"),
    ];
    let mut frontier = Frontier::new();
    let mut checkpoints = Vec::new();
    let mut batch_receipts = Vec::new();
    for (from, to, key, time) in batches {
        let appended = frontier.append(&leaves[from..to]).expect("append");
        let note = checkpoint_note(&log_origin(WS), appended.new_size, appended.root, time, &log_origin(WS), key);
        for (i, proof) in (from..to).zip(appended.proofs) {
            batch_receipts.push(SignedReceipt {
                status: STATUS_SIGNED.into(),
                body: bodies[i].clone(),
                log_index: i as u64,
                inclusion_proof: proof.into_iter().map(HexHash).collect(),
                checkpoint: note.clone(),
            });
        }
        checkpoints.push((appended.new_size, note));
    }
    Log { key1, key2, keys, bodies, leaves, checkpoints, batch_receipts }
}

impl Log {
    /// A receipt whose proof leads to the newest checkpoint (what an export carries).
    fn latest_receipt(&self, i: usize) -> SignedReceipt {
        let (size, note) = self.checkpoints.last().expect("checkpoint").clone();
        let proof = merkle::inclusion_proof(&LeafList(self.leaves.clone()), i as u64, size).expect("proof");
        SignedReceipt {
            status: STATUS_SIGNED.into(),
            body: self.bodies[i].clone(),
            log_index: i as u64,
            inclusion_proof: proof.into_iter().map(HexHash).collect(),
            checkpoint: note,
        }
    }

    fn header(&self, scope: Scope) -> Header {
        Header { v: 1, workspace_id: WS.into(), scope, created_at: ts("2026-01-01T00:02:00.000Z") }
    }

    fn auth01_bundle(&self) -> Bundle {
        Bundle {
            header: Some(self.header(Scope::Authorization { authorization_id: "auth_01".into(), last_seq: 3 })),
            keys: vec![self.keys.clone()],
            checkpoints: vec![self.checkpoints[2].1.clone()],
            consistency: vec![],
            receipts: [0, 1, 2, 6].iter().map(|&i| self.latest_receipt(i).into()).collect(),
        }
    }

    fn log_bundle(&self) -> Bundle {
        Bundle {
            header: Some(self.header(Scope::Log { from: 0, to: 8 })),
            keys: vec![self.keys.clone()],
            checkpoints: self.checkpoints.iter().map(|c| c.1.clone()).collect(),
            consistency: vec![],
            receipts: self.batch_receipts.iter().cloned().map(Into::into).collect(),
        }
    }

    fn partial_log_bundle(&self) -> Bundle {
        let proof = merkle::consistency_proof(&LeafList(self.leaves.clone()), 5, 8).expect("consistency");
        Bundle {
            header: Some(self.header(Scope::Log { from: 3, to: 8 })),
            keys: vec![self.keys.clone()],
            checkpoints: vec![self.checkpoints[1].1.clone(), self.checkpoints[2].1.clone()],
            consistency: vec![Consistency {
                old_size: 5,
                new_size: 8,
                proof: proof.into_iter().map(HexHash).collect(),
            }],
            receipts: self.batch_receipts[3..8].iter().cloned().map(Into::into).collect(),
        }
    }
}

/// The workspace of the format 1.1 log: receipts only format 1.1 defines, apart from the
/// 1.0 log above, so that every 1.0 vector stays exactly as it was.
const WS11: &str = "ws_vectors_1_1";

/// Its key set file, beside `keys.json`.
const KEYS11: &str = "keys-1.1.json";

/// A log of format 1.1 receipts, signed in one batch: a grant, an allowed check, a check of
/// an unknown authorization (a workspace event), an escalating check with its deadline, the
/// approver's answer with the hash of their note, a change of the workspace's scope rules.
struct Log11 {
    keys: KeySet,
    bodies: Vec<Value>,
    receipts: Vec<SignedReceipt>,
    checkpoint: String,
}

fn build_log_11() -> Log11 {
    let key = seed_key("format 1.1");
    let keys = KeySet {
        workspace_id: WS11.into(),
        origin: log_origin(WS11),
        keys: vec![key_info_of(WS11, &key, "2026-02-01T00:00:00.000Z", None)],
    };
    let mut t = Trail::new("au_11");
    let mut log = Appended::default();
    let mut push = |trail: Option<&mut Trail>, mut b: ReceiptBody| {
        b.workspace_id = WS11.into();
        b.id = format!("rc_{:016x}", b.log_index);
        log.push(trail, serde_json::to_value(&b).expect("body to value"));
    };
    let mut b = body(
        Some(&mut t),
        0,
        EventKind::AuthorizationCreated,
        None,
        None,
        &["files.read", "payments.*"],
        None,
        "2026-02-01T00:00:01.000Z",
    );
    b.grant = Some(Grant {
        subject: "user_11".into(),
        scopes: vec!["files.read".into(), "payments.*".into()],
        resources: vec![],
        expires_at: None,
        metadata_hash: None,
    });
    push(Some(&mut t), b);
    let b = body(
        Some(&mut t),
        1,
        EventKind::Check,
        Some(Decision::Allow),
        Some("granted"),
        &["files.read"],
        None,
        "2026-02-01T00:00:02.000Z",
    );
    push(Some(&mut t), b);
    // §4: a check naming no authorization of the workspace is a workspace event: no trail,
    // no state, and the id it asked for.
    let mut b = body(
        None,
        2,
        EventKind::Check,
        Some(Decision::Deny),
        Some("unknown_authorization"),
        &["files.read"],
        Some("drive:file/a.pdf"),
        "2026-02-01T00:00:03.000Z",
    );
    b.asked_authorization_id = Some("au_guessed".into());
    b.context_hash = Some(sha("probe"));
    push(None, b);
    let mut b = body(
        Some(&mut t),
        3,
        EventKind::Check,
        Some(Decision::Escalate),
        Some("escalation_required"),
        &["payments.send"],
        Some("acct:9"),
        "2026-02-01T00:00:04.000Z",
    );
    b.escalation_id = Some("esc_11".into());
    b.expires_at = Some(ts("2026-02-02T00:00:04.000Z"));
    push(Some(&mut t), b);
    // §4.2: the approver's answer in the one vocabulary, with the hash of their note.
    let mut b = body(
        Some(&mut t),
        4,
        EventKind::EscalationResolved,
        Some(Decision::Allow),
        Some("approved"),
        &["payments.send"],
        Some("acct:9"),
        "2026-02-01T00:00:05.000Z",
    );
    b.escalation_id = Some("esc_11".into());
    b.approval = Some(Approval {
        outcome: ApprovalOutcome::Approved,
        by: "cfo".into(),
        shown_hash: Some(sha("wire 5,000 EUR to acct:9")),
        note_hash: Some(sha("ok for Q3")),
    });
    push(Some(&mut t), b);
    // §4.3: the workspace's scope rules replaced, the whole new set in the body.
    let mut b = body(None, 5, EventKind::ScopeRulesChanged, None, None, &[], None, "2026-02-01T00:00:06.000Z");
    b.scope_rules = Some([("payments.*".into(), RuleKind::Escalate), ("mail.send".into(), RuleKind::Confirm)].into());
    push(None, b);

    let Appended { bodies, leaves } = log;
    let mut frontier = Frontier::new();
    let appended = frontier.append(&leaves).expect("append");
    let checkpoint = checkpoint_note(
        &log_origin(WS11),
        appended.new_size,
        appended.root,
        "2026-02-01T00:00:10.000Z",
        &log_origin(WS11),
        &key,
    );
    let receipts = bodies
        .iter()
        .zip(appended.proofs)
        .enumerate()
        .map(|(i, (b, proof))| SignedReceipt {
            status: STATUS_SIGNED.into(),
            body: b.clone(),
            log_index: i as u64,
            inclusion_proof: proof.into_iter().map(HexHash).collect(),
            checkpoint: checkpoint.clone(),
        })
        .collect();
    Log11 { keys, bodies, receipts, checkpoint }
}

impl Log11 {
    fn bundle(&self, scope: Scope, receipts: &[usize]) -> Bundle {
        Bundle {
            header: Some(Header { v: 1, workspace_id: WS11.into(), scope, created_at: ts("2026-02-01T00:01:00.000Z") }),
            keys: vec![self.keys.clone()],
            checkpoints: vec![self.checkpoint.clone()],
            consistency: vec![],
            receipts: receipts.iter().map(|&i| self.receipts[i].clone().into()).collect(),
        }
    }

    /// `v`, verified against this log's key set instead of `keys.json`.
    fn pin(&self, mut v: Vector) -> Vector {
        v.keys = Some(KEYS11.into());
        v.extra.push((KEYS11.into(), pretty(&self.keys)));
        v
    }
}

/// The format 1.1 vectors (§4: workspace-event checks, deadlines of opened requests).
fn vectors_11(v: &mut Vec<Vector>) {
    use Outcome::{IntegrityFailure as Bad, Valid};
    let log = build_log_11();
    let r = |i: usize| log.receipts[i].clone();
    let _ = &log.bodies;
    v.push(log.pin(receipt_vector("receipt-1.1-check-unknown-authorization", pretty(&r(2)), Valid, &[])));
    v.push(log.pin(receipt_vector("receipt-1.1-check-escalate-expires-at", pretty(&r(3)), Valid, &[])));
    v.push(log.pin(receipt_vector("receipt-1.1-escalation-resolved-note-hash", pretty(&r(4)), Valid, &[])));
    v.push(log.pin(receipt_vector("receipt-1.1-scope-rules-changed", pretty(&r(5)), Valid, &[])));
    v.push(log.pin(bundle_vector(
        "bundle-1.1-log",
        &log.bundle(Scope::Log { from: 0, to: 6 }, &[0, 1, 2, 3, 4, 5]),
        Valid,
        &[],
    )));
    // The workspace event is in no trail: an authorization export holding it is out of scope,
    // and the trail around it is whole without it.
    let scope = Scope::Authorization { authorization_id: "au_11".into(), last_seq: 3 };
    v.push(log.pin(bundle_vector("bundle-1.1-authorization", &log.bundle(scope.clone(), &[0, 1, 3, 4]), Valid, &[])));
    v.push(log.pin(bundle_vector(
        "bundle-1.1-authorization-with-workspace-check",
        &log.bundle(scope, &[0, 1, 2, 3, 4]),
        Bad,
        &["out_of_scope"],
    )));
    // The §4 rules of an unknown-authorization check, each broken once (the edit also breaks
    // the proof, since the body is signed).
    v.push(log.pin(receipt_vector(
        "receipt-1.1-unknown-authorization-in-a-trail",
        pretty(&with_body(&r(2), |b| {
            b.insert("authorization_id".into(), json!("au_11"));
            b.insert("seq".into(), json!(2));
            b.insert("prev".into(), json!(HexHash([1; 32])));
        })),
        Bad,
        &["body_invalid", "inclusion_proof_invalid"],
    )));
    v.push(log.pin(receipt_vector(
        "receipt-1.1-unknown-authorization-without-asked-id",
        pretty(&with_body(&r(2), |b| {
            b.remove("asked_authorization_id");
        })),
        Bad,
        &["body_invalid", "inclusion_proof_invalid"],
    )));
    v.push(log.pin(receipt_vector(
        "receipt-1.1-asked-id-on-an-allow",
        pretty(&with_body(&r(1), |b| {
            b.insert("asked_authorization_id".into(), json!("au_11"));
        })),
        Bad,
        &["body_invalid", "inclusion_proof_invalid"],
    )));
    // §4.1: every member listed for `approval` is present (`null` or not), but the 1.1
    // `note_hash`; the same for `grant` (below, on the 1.0 log).
    v.push(log.pin(receipt_vector(
        "receipt-1.1-approval-without-shown-hash",
        pretty(&with_body(&r(4), |b| {
            b["approval"].as_object_mut().expect("approval").remove("shown_hash");
        })),
        Bad,
        &["body_invalid"],
    )));
    v.push(log.pin(receipt_vector(
        "receipt-1.1-note-hash-uppercase",
        pretty(&with_body(&r(4), |b| {
            let upper = b["approval"]["note_hash"].as_str().expect("note_hash").to_uppercase();
            b["approval"]["note_hash"] = json!(upper);
        })),
        Bad,
        &["body_invalid"],
    )));
    v.push(log.pin(receipt_vector(
        "receipt-1.1-scope-rules-on-a-check",
        pretty(&with_body(&r(1), |b| {
            b.insert("scope_rules".into(), json!({"files.read": "confirm"}));
        })),
        Bad,
        &["body_invalid", "inclusion_proof_invalid"],
    )));
    v.push(log.pin(receipt_vector(
        "receipt-1.1-scope-rules-changed-without-rules",
        pretty(&with_body(&r(5), |b| {
            b.remove("scope_rules");
        })),
        Bad,
        &["body_invalid", "inclusion_proof_invalid"],
    )));
    v.push(log.pin(receipt_vector(
        "receipt-1.1-scope-rule-unknown-word",
        pretty(&with_body(&r(5), |b| {
            b.insert("scope_rules".into(), json!({"payments.*": "allow"}));
        })),
        Bad,
        &["body_invalid"],
    )));
    v.push(log.pin(receipt_vector(
        "receipt-1.1-expires-at-not-a-time",
        pretty(&with_body(&r(3), |b| {
            b.insert("expires_at".into(), json!("tomorrow"));
        })),
        Bad,
        &["body_invalid"],
    )));
}

/// The workspace of the semantic-verification vectors (§7.4): logs a dishonest or broken server
/// could sign, each a few receipts long, signed with a test key of their own.
const WS_SEM: &str = "ws_semantics";

/// Its key set file, beside `keys.json`.
const KEYS_SEM: &str = "keys-semantics.json";

/// A log being written for a §7.4 vector: one authorization, `au_s1`, and workspace events.
struct SemLog {
    trail: Trail,
    bodies: Vec<ReceiptBody>,
    /// An extension member of the last body (nothing links to the last receipt, so its leaf
    /// hash may change after it was appended).
    last_extension: Option<(&'static str, Value)>,
}

impl SemLog {
    fn new() -> Self {
        Self { trail: Trail::new("au_s1"), bodies: Vec::new(), last_extension: None }
    }

    /// The bodies as signed.
    fn values(&self) -> Vec<Value> {
        let mut values: Vec<Value> =
            self.bodies.iter().map(|b| serde_json::to_value(b).expect("body to value")).collect();
        if let (Some((name, x)), Some(last)) = (&self.last_extension, values.last_mut()) {
            last.as_object_mut().expect("object").insert((*name).into(), x.clone());
        }
        values
    }

    /// Appends a receipt at the next index, second `sec` of 2026-03-01 (00:00:sec; `sec` ≥ 60
    /// spills into the minutes), in the trail unless it is a workspace event.
    #[allow(clippy::too_many_arguments)] // a test helper that reads like a table row
    fn add(
        &mut self,
        kind: EventKind,
        decision: Option<Decision>,
        reason: Option<&str>,
        scopes: &[&str],
        sec: u64,
        f: impl FnOnce(&mut ReceiptBody),
    ) -> &mut Self {
        let i = self.bodies.len() as u64;
        let time = format!("2026-03-01T{:02}:{:02}:{:02}.000Z", sec / 3600, sec / 60 % 60, sec % 60);
        let workspace_event = matches!(kind, EventKind::ScopeRulesChanged | EventKind::KeyRotated);
        let trail = (!workspace_event).then_some(&mut self.trail);
        let mut b = body(trail, i, kind, decision, reason, scopes, None, &time);
        b.workspace_id = WS_SEM.into();
        b.id = format!("rc_{i:016x}");
        f(&mut b);
        let leaf = b.leaf_hash().expect("leaf");
        if !workspace_event {
            self.trail.next_seq += 1;
            self.trail.prev = Some(HexHash(leaf));
        }
        self.bodies.push(b);
        self
    }

    fn check(&mut self, decision: Decision, reason: &str, scope: &str, sec: u64) -> &mut Self {
        self.add(EventKind::Check, Some(decision), Some(reason), &[scope], sec, |_| {})
    }

    /// The grant every §7.4 log starts its trail with (after its rules, if it has any).
    fn grant(&mut self, sec: u64) -> &mut Self {
        self.add(EventKind::AuthorizationCreated, None, None, &["files.read", "mail.*", "pay.*"], sec, |b| {
            b.grant = Some(Grant {
                subject: "user_s".into(),
                scopes: vec!["files.read".into(), "mail.*".into(), "pay.*".into()],
                resources: vec![],
                expires_at: Some(ts("2026-03-01T01:00:00.000Z")),
                metadata_hash: None,
            });
        })
    }

    fn rules(&mut self, sec: u64) -> &mut Self {
        self.add(EventKind::ScopeRulesChanged, None, None, &[], sec, |b| {
            b.scope_rules =
                Some([("pay.*".into(), RuleKind::Escalate), ("mail.send".into(), RuleKind::Confirm)].into());
        })
    }

    /// A `confirm` (or `escalate`, with `escalation`) check with its 1.1 deadline, 5 minutes on.
    fn opens(&mut self, scope: &str, escalation: Option<&str>, sec: u64) -> &mut Self {
        let (decision, reason) = match escalation {
            Some(_) => (Decision::Escalate, "escalation_required"),
            None => (Decision::Confirm, "confirmation_required"),
        };
        let deadline = sec + 300;
        self.add(EventKind::Check, Some(decision), Some(reason), &[scope], sec, |b| {
            b.escalation_id = escalation.map(str::to_owned);
            b.expires_at = Some(ts(&format!(
                "2026-03-01T{:02}:{:02}:{:02}.000Z",
                deadline / 3600,
                deadline / 60 % 60,
                deadline % 60
            )));
        })
    }

    /// A person's answer: a `confirmation`, or the `escalation.resolved` of `escalation`.
    fn answer(&mut self, approved: bool, scope: &str, escalation: Option<&str>, sec: u64) -> &mut Self {
        let kind = if escalation.is_some() { EventKind::EscalationResolved } else { EventKind::Confirmation };
        let (decision, reason, outcome) = if approved {
            (Decision::Allow, "approved", ApprovalOutcome::Approved)
        } else {
            (Decision::Deny, "declined", ApprovalOutcome::Declined)
        };
        self.add(kind, Some(decision), Some(reason), &[scope], sec, |b| {
            b.escalation_id = escalation.map(str::to_owned);
            b.approval = Some(Approval { outcome, by: "lee".into(), shown_hash: None, note_hash: None });
        })
    }

    /// The honest log every invalid §7.4 vector departs from: rules, the grant, an allow, a
    /// confirmation asked and approved, an escalation asked and declined, a deny, the
    /// revocation and a deny after it.
    fn justified() -> Self {
        let mut l = Self::new();
        l.rules(1)
            .grant(2)
            .check(Decision::Allow, "granted", "files.read", 3)
            .opens("mail.send", None, 4)
            .answer(true, "mail.send", None, 5)
            .opens("pay.send", Some("esc_s1"), 6)
            .answer(false, "pay.send", Some("esc_s1"), 7)
            .check(Decision::Deny, "scope_not_granted", "admin.all", 8);
        l
    }

    fn revoked(mut self, sec: u64) -> Self {
        self.add(EventKind::Revocation, None, Some("revoked"), &[], sec, |_| {});
        self
    }

    /// Every receipt, signed in one batch, and the checkpoint.
    fn signed(&self) -> (Vec<SignedReceipt>, String) {
        let key = seed_key("semantics");
        let values = self.values();
        let leaves: Vec<Hash> =
            values.iter().map(|v| merkle::leaf_hash(&jcs::canonicalize(v).expect("canonical"))).collect();
        let appended = Frontier::new().append(&leaves).expect("append");
        let origin = log_origin(WS_SEM);
        let checkpoint =
            checkpoint_note(&origin, appended.new_size, appended.root, "2026-03-01T02:00:00.000Z", &origin, &key);
        let receipts = values
            .into_iter()
            .zip(appended.proofs)
            .enumerate()
            .map(|(i, (body, proof))| SignedReceipt {
                status: STATUS_SIGNED.into(),
                body,
                log_index: i as u64,
                inclusion_proof: proof.into_iter().map(HexHash).collect(),
                checkpoint: checkpoint.clone(),
            })
            .collect();
        (receipts, checkpoint)
    }

    /// The bundle `scope` (every receipt for a log scope, the trail for an authorization
    /// scope), leaving out the log indexes in `drop`.
    fn bundle(&self, scope: Option<Scope>, drop: &[u64]) -> Bundle {
        let (receipts, checkpoint) = self.signed();
        let scope = scope.unwrap_or(Scope::Log { from: 0, to: self.bodies.len() as u64 });
        let receipts = receipts
            .into_iter()
            .zip(&self.bodies)
            .filter(|(_, b)| !drop.contains(&b.log_index))
            .filter(|(_, b)| match &scope {
                Scope::Authorization { authorization_id, .. } => b.authorization_id.as_ref() == Some(authorization_id),
                Scope::Log { .. } => true,
            })
            .map(|(r, _)| r.into())
            .collect();
        Bundle {
            header: Some(Header {
                v: 1,
                workspace_id: WS_SEM.into(),
                scope,
                created_at: ts("2026-03-01T03:00:00.000Z"),
            }),
            keys: vec![Self::keys()],
            checkpoints: vec![checkpoint],
            consistency: vec![],
            receipts,
        }
    }

    /// The last receipt, signed, as a document.
    fn last_receipt(&self) -> Vec<u8> {
        pretty(self.signed().0.last().expect("a receipt"))
    }

    fn keys() -> KeySet {
        let key = seed_key("semantics");
        KeySet {
            workspace_id: WS_SEM.into(),
            origin: log_origin(WS_SEM),
            keys: vec![key_info_of(WS_SEM, &key, "2026-03-01T00:00:00.000Z", None)],
        }
    }

    fn keys_file() -> Vec<u8> {
        pretty(&Self::keys())
    }
}

/// Semantic verification (§7.4): each way a signed log can give away what its grants and rules
/// do not, once, and the honest log it departs from.
fn vectors_semantics(v: &mut Vec<Vector>) {
    use Outcome::{CoverageGap as Gap, IntegrityFailure as Bad, Valid};
    let pin = |mut x: Vector| {
        x.keys = Some(KEYS_SEM.into());
        x.extra.push((KEYS_SEM.into(), SemLog::keys_file()));
        x
    };
    let unjustified = &["decision_unjustified"][..];
    let log = SemLog::justified().revoked(9);
    let mut log = log;
    log.check(Decision::Deny, "revoked", "files.read", 10);
    v.push(pin(bundle_vector("bundle-semantics-justified", &log.bundle(None, &[]), Valid, &[])));

    let mut l = SemLog::justified();
    l.check(Decision::Allow, "granted", "admin.all", 9);
    v.push(pin(bundle_vector("bundle-semantics-allow-not-granted", &l.bundle(None, &[]), Bad, unjustified)));
    // The same log with a leaf missing: judged against a history with a hole, an honest
    // decision could look unjustified, so decisions are not judged at all (§7.4).
    v.push(pin(bundle_vector(
        "bundle-semantics-not-judged-with-a-gap",
        &l.bundle(None, &[4]),
        Gap,
        &["log_leaf_missing", "receipt_missing"],
    )));

    let mut l = SemLog::justified().revoked(9);
    l.check(Decision::Allow, "granted", "files.read", 10);
    v.push(pin(bundle_vector("bundle-semantics-allow-after-revocation", &l.bundle(None, &[]), Bad, unjustified)));
    // An authorization export holds no scope rules, but what the grant and its revocation
    // allow is judged when asked for (--semantics).
    let scope = Scope::Authorization { authorization_id: "au_s1".into(), last_seq: 8 };
    let mut x = bundle_vector("bundle-semantics-authorization-export", &l.bundle(Some(scope), &[]), Bad, unjustified);
    x.semantics = Some(true);
    v.push(pin(x));

    let mut l = SemLog::justified();
    l.check(Decision::Allow, "granted", "files.read", 3600);
    v.push(pin(bundle_vector("bundle-semantics-allow-after-expiry", &l.bundle(None, &[]), Bad, unjustified)));

    let mut l = SemLog::justified();
    l.check(Decision::Allow, "granted", "mail.send", 9);
    v.push(pin(bundle_vector("bundle-semantics-allow-despite-rule", &l.bundle(None, &[]), Bad, unjustified)));

    let mut l = SemLog::justified();
    l.opens("files.read", Some("esc_s2"), 9);
    v.push(pin(bundle_vector("bundle-semantics-escalate-without-rule", &l.bundle(None, &[]), Bad, unjustified)));

    // Before any scope_rules.changed the rules in force are unknown: an allow the grant covers
    // is not judged against rules (§7.4), and no rule of a later change applies backwards.
    let mut l = SemLog::new();
    l.grant(1).check(Decision::Allow, "granted", "mail.send", 2).rules(3);
    v.push(pin(bundle_vector("bundle-semantics-rules-unknown", &l.bundle(None, &[]), Valid, &[])));

    let mut l = SemLog::justified();
    l.answer(true, "mail.send", None, 9);
    v.push(pin(bundle_vector("bundle-semantics-confirmation-answered-twice", &l.bundle(None, &[]), Bad, unjustified)));

    let mut l = SemLog::justified();
    l.opens("pay.send", Some("esc_s2"), 9).answer(true, "pay.send", Some("esc_s2"), 9 + 300);
    v.push(pin(bundle_vector("bundle-semantics-escalation-approved-late", &l.bundle(None, &[]), Bad, unjustified)));

    // §3 / §7.3: nesting is counted over the whole text parsed. A body whose extension member
    // nests 126 arrays reaches level 128 in a receipt document (envelope 1, body 2) and is
    // fine there; the same receipt on a bundle line (record 1, envelope 2, body 3) reaches 129:
    // body_not_canonical, and the receipt takes no further part (so its trail has a hole).
    let mut l = SemLog::justified();
    l.check(Decision::Deny, "scope_not_granted", "admin.all", 9);
    let mut deep = json!([]);
    for _ in 1..126 {
        deep = json!([deep]);
    }
    l.last_extension = Some(("x_deep", deep));
    v.push(pin(receipt_vector("receipt-nesting-128-levels", l.last_receipt(), Valid, &[])));
    // The bundle writer refuses to write such a line, so it is written here by hand.
    let last = l.bodies.len() as u64 - 1;
    let mut bytes = l.bundle(None, &[last]).to_jsonl().expect("jsonl");
    let envelope = serde_json::to_value(l.signed().0.pop().expect("receipt")).expect("envelope");
    let envelope = String::from_utf8(jcs::canonicalize(&envelope).expect("128 levels")).expect("utf8");
    bytes.extend(format!("{{\"receipt\":{envelope},\"type\":\"receipt\"}}\n").into_bytes());
    v.push(pin(bundle_bytes_vector(
        "bundle-nesting-129-levels",
        bytes,
        Bad,
        &["body_not_canonical", "log_leaf_missing"],
    )));

    // §4.1, second table: which kinds require which members. Signed as they are, so the only
    // finding is the broken rule.
    let mut l = SemLog::justified();
    l.opens("pay.send", Some("esc_s2"), 9).add(
        EventKind::EscalationResolved,
        Some(Decision::Deny),
        Some("escalation_expired"),
        &["pay.send"],
        9 + 300,
        |b| b.escalation_id = Some("esc_s2".into()),
    );
    v.push(pin(receipt_vector("receipt-1.1-escalation-expired-without-approval", l.last_receipt(), Valid, &[])));
    let mut l = SemLog::justified();
    l.opens("mail.send", None, 9).add(
        EventKind::Confirmation,
        Some(Decision::Deny),
        Some("declined"),
        &["mail.send"],
        10,
        |_| {},
    );
    v.push(pin(receipt_vector("receipt-confirmation-without-approval", l.last_receipt(), Bad, &["body_invalid"])));
    let mut l = SemLog::justified();
    l.check(Decision::Escalate, "escalation_required", "pay.send", 9);
    v.push(pin(receipt_vector(
        "receipt-check-escalate-without-escalation-id",
        l.last_receipt(),
        Bad,
        &["body_invalid"],
    )));
    let mut l = SemLog::justified();
    l.add(EventKind::KeyRotated, None, None, &[], 9, |_| {});
    v.push(pin(receipt_vector("receipt-key-rotated-without-key", l.last_receipt(), Bad, &["body_invalid"])));
}

/// One vector: a file, how to verify it, and what the verifier must say.
struct Vector {
    name: String,
    kind: &'static str,
    file: String,
    contents: Vec<u8>,
    /// The key set file to pin (relative to the manifest), if any.
    keys: Option<String>,
    /// `None`: the input is unusable (exit 64) and no report is made.
    outcome: Option<Outcome>,
    codes: Vec<&'static str>,
    /// Other files the vector needs (e.g. a damaged key set), written beside it.
    extra: Vec<(String, Vec<u8>)>,
    /// `Some(true)`: verify with semantic verification on (§7.4) where it is not by default;
    /// `None`: the default (on for log exports). In the manifest only when set.
    semantics: Option<bool>,
}

fn pretty(v: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("json");
    out.push(b'\n');
    out
}

fn receipt_vector(name: &str, doc: Vec<u8>, outcome: Outcome, codes: &[&'static str]) -> Vector {
    let dir = if matches!(outcome, Outcome::Valid | Outcome::ValidUnpinned) { "valid" } else { "invalid" };
    Vector {
        name: name.into(),
        kind: "receipt",
        file: format!("{dir}/{name}.json"),
        contents: doc,
        keys: Some("keys.json".into()),
        outcome: Some(outcome),
        codes: codes.to_vec(),
        extra: vec![],
        semantics: None,
    }
}

fn bundle_vector(name: &str, b: &Bundle, outcome: Outcome, codes: &[&'static str]) -> Vector {
    bundle_bytes_vector(name, b.to_jsonl().expect("jsonl"), outcome, codes)
}

fn bundle_bytes_vector(name: &str, bytes: Vec<u8>, outcome: Outcome, codes: &[&'static str]) -> Vector {
    let dir = if matches!(outcome, Outcome::Valid | Outcome::ValidUnpinned) { "valid" } else { "invalid" };
    Vector {
        name: name.into(),
        kind: "bundle",
        file: format!("{dir}/{name}.jsonl"),
        contents: bytes,
        keys: Some("keys.json".into()),
        outcome: Some(outcome),
        codes: codes.to_vec(),
        extra: vec![],
        semantics: None,
    }
}

/// A vector no verifier can judge: it must stop with "unusable input" (exit 64).
fn unusable_vector(name: &str, kind: &'static str, contents: Vec<u8>, keys: Option<(&str, Vec<u8>)>) -> Vector {
    let ext = if kind == "bundle" { "jsonl" } else { "json" };
    let (keys, extra) = match keys {
        Some((k, bytes)) if k != "keys.json" => (Some(k.to_owned()), vec![(k.to_owned(), bytes)]),
        Some((k, _)) => (Some(k.to_owned()), vec![]),
        None => (None, vec![]),
    };
    Vector {
        name: name.into(),
        kind,
        file: format!("unusable/{name}.{ext}"),
        contents,
        keys,
        outcome: None,
        codes: vec![],
        extra,
        semantics: None,
    }
}

fn with_body(r: &SignedReceipt, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> SignedReceipt {
    let mut r = r.clone();
    f(r.body.as_object_mut().expect("object"));
    r
}

#[allow(clippy::vec_init_then_push)] // one push per vector reads as a list of cases
fn vectors() -> (Log, Vec<Vector>) {
    use Outcome::{CoverageGap as Gap, IntegrityFailure as Bad, Valid};
    let log = build_log();
    let r = |i: usize| log.batch_receipts[i].clone();
    let mut v = Vec::new();

    // --- valid receipts
    v.push(receipt_vector("receipt-authorization-created", pretty(&r(0)), Valid, &[]));
    v.push(receipt_vector("receipt-check-allow", pretty(&r(1)), Valid, &[]));
    v.push(receipt_vector("receipt-check-deny-unicode-extension", pretty(&r(2)), Valid, &[]));
    v.push(receipt_vector("receipt-check-confirm-second-batch", pretty(&r(4)), Valid, &[]));
    v.push(receipt_vector("receipt-key-rotated", pretty(&r(5)), Valid, &[]));
    v.push(receipt_vector("receipt-revocation-after-rotation", pretty(&r(6)), Valid, &[]));
    v.push(receipt_vector("receipt-escalation-latest-checkpoint", pretty(&log.latest_receipt(7)), Valid, &[]));
    let leaf7 = log.leaves[7];
    let pending = PendingReceipt {
        status: STATUS_PENDING.into(),
        receipt_id: "rcpt_0007".into(),
        log_index: 7,
        leaf_hash: HexHash(leaf7),
        body: log.bodies[7].clone(),
    };
    v.push(receipt_vector("receipt-pending", pretty(&pending), Gap, &["not_signed"]));

    // --- invalid receipts
    v.push(receipt_vector(
        "receipt-edited-decision",
        pretty(&with_body(&r(1), |b| {
            b.insert("decision".into(), json!("deny"));
        })),
        Bad,
        &["inclusion_proof_invalid"],
    ));
    v.push(receipt_vector(
        "receipt-edited-resource",
        pretty(&with_body(&r(2), |b| {
            b.insert("resource".into(), json!("drive:file/other.pdf"));
        })),
        Bad,
        &["inclusion_proof_invalid"],
    ));
    v.push(receipt_vector(
        "receipt-edited-extension-member",
        pretty(&with_body(&r(2), |b| {
            b.insert("x_ext".into(), json!({}));
        })),
        Bad,
        &["inclusion_proof_invalid"],
    ));
    v.push(receipt_vector(
        "receipt-other-workspace",
        pretty(&with_body(&r(1), |b| {
            b.insert("workspace_id".into(), json!("ws_other"));
        })),
        Bad,
        &["workspace_mismatch", "inclusion_proof_invalid"],
    ));
    v.push(receipt_vector(
        "receipt-seq-rule-broken",
        pretty(&with_body(&r(1), |b| {
            b.insert("seq".into(), json!(0));
        })),
        Bad,
        &["body_invalid", "inclusion_proof_invalid"],
    ));
    v.push(receipt_vector(
        "receipt-uppercase-hash",
        pretty(&with_body(&r(1), |b| {
            let prev = b["prev"].as_str().expect("prev").to_uppercase();
            b.insert("prev".into(), json!(prev));
        })),
        Bad,
        &["body_invalid"],
    ));
    v.push(receipt_vector(
        "receipt-missing-member",
        pretty(&with_body(&r(1), |b| {
            b.remove("reason");
        })),
        Bad,
        &["body_invalid"],
    ));
    v.push(receipt_vector(
        "receipt-grant-without-expires-at",
        pretty(&with_body(&r(0), |b| {
            b["grant"].as_object_mut().expect("grant").remove("expires_at");
        })),
        Bad,
        &["body_invalid"],
    ));
    v.push(receipt_vector(
        "receipt-kind-member-wrong-type",
        pretty(&with_body(&r(1), |b| {
            b.insert("approval".into(), json!("yes"));
        })),
        Bad,
        &["body_invalid"],
    ));
    // §2: a time is a real calendar instant; no leap second (one spelling per instant).
    for (name, time) in [
        ("receipt-time-leap-second", "2026-06-30T23:59:60.000Z"),
        ("receipt-time-february-30", "2026-02-30T00:00:00.000Z"),
    ] {
        v.push(receipt_vector(
            name,
            pretty(&with_body(&r(1), |b| {
                b.insert("time".into(), json!(time));
            })),
            Bad,
            &["body_invalid"],
        ));
    }
    v.push(receipt_vector(
        "receipt-negative-seq",
        pretty(&with_body(&r(1), |b| {
            b.insert("seq".into(), json!(-1));
        })),
        Bad,
        &["body_invalid"],
    ));
    let mut x = r(1);
    x.log_index = 2;
    v.push(receipt_vector(
        "receipt-envelope-log-index",
        pretty(&x),
        Bad,
        &["log_index_mismatch", "inclusion_proof_invalid"],
    ));
    let mut x = r(1);
    x.inclusion_proof[0].0[0] ^= 1;
    v.push(receipt_vector("receipt-proof-flipped-bit", pretty(&x), Bad, &["inclusion_proof_invalid"]));
    let mut x = r(1);
    x.inclusion_proof.pop();
    v.push(receipt_vector("receipt-proof-truncated", pretty(&x), Bad, &["inclusion_proof_invalid"]));
    let mut x = r(1);
    let dup = String::from_utf8(pretty(&x)).expect("utf8").replacen(
        "\"decision\": \"allow\",",
        "\"decision\": \"allow\",\n    \"decision\": \"deny\",",
        1,
    );
    v.push(receipt_vector("receipt-duplicate-member", dup.into_bytes(), Bad, &["body_not_canonical"]));
    // §3: a lone surrogate in a body is body_not_canonical, in a single receipt and in a bundle
    // alike (issue 13: it was unusable input alone and record_malformed in a bundle).
    let lone = String::from_utf8(pretty(&x)).expect("utf8").replacen("drive:file/report.pdf", "drive:file/\\ud800x", 1);
    v.push(receipt_vector("receipt-body-lone-surrogate", lone.into_bytes(), Bad, &["body_not_canonical"]));
    let big = String::from_utf8(pretty(&x)).expect("utf8").replacen(
        "\"log_index\": 1,",
        "\"log_index\": 9007199254740993,",
        1,
    );
    v.push(receipt_vector("receipt-unsafe-integer", big.into_bytes(), Bad, &["body_not_canonical"]));
    // Signature bytes altered: base64 of (key id ‖ signature); flip a character inside the signature part.
    let sig_line = x.checkpoint.rfind(' ').expect("sig");
    let mut bytes = x.checkpoint.clone().into_bytes();
    let at = sig_line + 20;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    x.checkpoint = String::from_utf8(bytes).expect("utf8");
    v.push(receipt_vector("receipt-checkpoint-signature-altered", pretty(&x), Bad, &["checkpoint_signature_invalid"]));
    let mut x = r(1);
    x.checkpoint = x.checkpoint.replacen("\n3\n", "\n4\n", 1);
    v.push(receipt_vector("receipt-checkpoint-size-altered", pretty(&x), Bad, &["checkpoint_signature_invalid"]));
    let mut x = r(1);
    let (size, root) = (3, merkle::root_from(&LeafList(log.leaves[..3].to_vec()), 3).expect("root"));
    let stranger = seed_key("stranger");
    x.checkpoint = checkpoint_note(&log_origin(WS), size, root, "2026-01-01T00:00:10.000Z", &log_origin(WS), &stranger);
    v.push(receipt_vector("receipt-checkpoint-unknown-key", pretty(&x), Bad, &["checkpoint_unknown_key"]));
    let mut x = r(1);
    x.checkpoint =
        checkpoint_note("allowly/ws_other", size, root, "2026-01-01T00:00:10.000Z", &log_origin(WS), &log.key1);
    v.push(receipt_vector("receipt-checkpoint-other-origin", pretty(&x), Bad, &["checkpoint_origin_mismatch"]));
    let mut x = r(1);
    x.checkpoint = checkpoint_note(&log_origin(WS), size, root, "2026-01-01T00:05:00.000Z", &log_origin(WS), &log.key1);
    v.push(receipt_vector("receipt-checkpoint-retired-key", pretty(&x), Bad, &["key_not_valid_at_time"]));
    // `not_after` is exclusive: the old key signing at the very instant of the rotation is refused.
    let mut x = r(1);
    x.checkpoint = checkpoint_note(&log_origin(WS), size, root, "2026-01-01T00:01:00.000Z", &log_origin(WS), &log.key1);
    v.push(receipt_vector("receipt-checkpoint-at-key-not-after", pretty(&x), Bad, &["key_not_valid_at_time"]));
    let mut x = r(1);
    let cp = Checkpoint { origin: log_origin(WS), size, root, extensions: vec![] };
    x.checkpoint = note::sign_note(&cp.to_text().expect("text"), &log_origin(WS), &log.key1).expect("sign");
    v.push(receipt_vector("receipt-checkpoint-no-time", pretty(&x), Bad, &["checkpoint_malformed"]));
    // §7.1 step 8 fixes the order of the checkpoint checks: signatures before the checkpoint
    // text is read (C2SP), so a text with a non-canonical size is malformed when a workspace key
    // signed it and an unknown key when only a stranger did (the verifiers used to disagree).
    let bad_size = format!(
        "{}\n0{size}\n{}\ntime 2026-01-01T00:00:10.000Z\n",
        log_origin(WS),
        base64::engine::general_purpose::STANDARD.encode(root)
    );
    let mut x = r(1);
    x.checkpoint = note::sign_note(&bad_size, &log_origin(WS), &log.key1).expect("sign");
    v.push(receipt_vector("receipt-checkpoint-noncanonical-size", pretty(&x), Bad, &["checkpoint_malformed"]));
    x.checkpoint = note::sign_note(&bad_size, &log_origin(WS), &stranger).expect("sign");
    v.push(receipt_vector(
        "receipt-checkpoint-noncanonical-size-unknown-key",
        pretty(&x),
        Bad,
        &["checkpoint_unknown_key"],
    ));
    // An extra extension line on another log's checkpoint: origin is checked before the
    // extension lines, so it is checkpoint_origin_mismatch, not checkpoint_malformed.
    let cp = Checkpoint {
        origin: "allowly/ws_other".into(),
        size,
        root,
        extensions: vec!["time 2026-01-01T00:00:10.000Z".into(), "extra unsigned-looking line".into()],
    };
    x.checkpoint = note::sign_note(&cp.to_text().expect("text"), &log_origin(WS), &log.key1).expect("sign");
    v.push(receipt_vector(
        "receipt-checkpoint-other-origin-extra-extension",
        pretty(&x),
        Bad,
        &["checkpoint_origin_mismatch"],
    ));
    let mut p = pending.clone();
    p.leaf_hash = HexHash(log.leaves[6]);
    v.push(receipt_vector("receipt-pending-wrong-leaf-hash", pretty(&p), Bad, &["envelope_mismatch", "not_signed"]));

    // --- bundles
    v.push(bundle_vector("bundle-authorization", &log.auth01_bundle(), Valid, &[]));
    v.push(bundle_vector("bundle-log", &log.log_bundle(), Valid, &[]));
    v.push(bundle_vector("bundle-log-partial-consistency", &log.partial_log_bundle(), Valid, &[]));
    let mut b = log.auth01_bundle();
    b.receipts.reverse();
    v.push(bundle_vector("bundle-authorization-lines-reordered", &b, Valid, &[]));

    let mut b = log.auth01_bundle();
    b.receipts.remove(1);
    v.push(bundle_vector("bundle-deleted-receipt", &b, Gap, &["receipt_missing"]));
    let mut b = log.auth01_bundle();
    b.receipts.pop();
    v.push(bundle_vector("bundle-truncated-trail", &b, Gap, &["truncated"]));
    // §10: the same trail cut short *and* its header's last_seq lowered still verifies, though
    // its checkpoint (size 8) covers the revocation left out: a checkpoint commits to the log,
    // not to the length of one trail, and an authorization export proves no more. (A log
    // export cut short is caught: bundle-log-cut-short.)
    let mut b = log.auth01_bundle();
    b.receipts.pop();
    b.header = Some(log.header(Scope::Authorization { authorization_id: "auth_01".into(), last_seq: 2 }));
    v.push(bundle_vector("bundle-authorization-cut-short-valid", &b, Valid, &[]));
    let mut b = log.auth01_bundle();
    b.receipts.push(log.latest_receipt(3).into());
    v.push(bundle_vector("bundle-inserted-foreign-receipt", &b, Bad, &["out_of_scope"]));
    let mut b = log.auth01_bundle();
    let AnyReceipt::Signed(s) = &b.receipts[1] else { unreachable!() };
    b.receipts[1] = with_body(s, |m| {
        m.insert("decision".into(), json!("deny"));
    })
    .into();
    v.push(bundle_vector("bundle-edited-receipt", &b, Bad, &["inclusion_proof_invalid", "chain_broken"]));
    let mut b = log.auth01_bundle();
    let AnyReceipt::Signed(s1) = b.receipts[1].clone() else { unreachable!() };
    let AnyReceipt::Signed(s2) = b.receipts[2].clone() else { unreachable!() };
    b.receipts[1] = with_body(&s1, |m| {
        m.insert("seq".into(), json!(2));
    })
    .into();
    b.receipts[2] = with_body(&s2, |m| {
        m.insert("seq".into(), json!(1));
    })
    .into();
    v.push(bundle_vector(
        "bundle-reordered-trail",
        &b,
        Bad,
        &["inclusion_proof_invalid", "chain_broken", "trail_order"],
    ));
    let mut b = log.auth01_bundle();
    b.receipts.push(
        with_body(&s1, |m| {
            m.insert("resource".into(), json!("drive:file/forged.pdf"));
        })
        .into(),
    );
    v.push(bundle_vector(
        "bundle-inserted-forged-receipt",
        &b,
        Bad,
        &["inclusion_proof_invalid", "seq_conflict", "log_index_conflict"],
    ));
    // An attacker re-signs the whole trail with its own key and ships its own key set.
    let mut b = log.auth01_bundle();
    let evil = seed_key("attacker");
    let mut evil_keys = log.keys.clone();
    evil_keys.keys = vec![key_info(&evil, "2026-01-01T00:00:00.000Z", None)];
    let evil_note = checkpoint_note(
        &log_origin(WS),
        8,
        merkle::root_from(&LeafList(log.leaves.clone()), 8).expect("root"),
        "2026-01-01T00:01:10.000Z",
        &log_origin(WS),
        &evil,
    );
    b.keys = vec![evil_keys.clone()];
    b.checkpoints = vec![evil_note.clone()];
    for r in &mut b.receipts {
        if let AnyReceipt::Signed(s) = r {
            s.checkpoint = evil_note.clone();
        }
    }
    v.push(bundle_vector("bundle-attacker-keys", &b, Bad, &["keys_mismatch", "checkpoint_unknown_key"]));
    let mut b = log.log_bundle();
    b.receipts.pop();
    v.push(bundle_vector("bundle-log-missing-leaf", &b, Gap, &["log_leaf_missing", "consistency_unproven"]));
    let mut b = log.log_bundle();
    b.receipts.pop();
    b.header = Some(log.header(Scope::Log { from: 0, to: 7 }));
    v.push(bundle_vector("bundle-log-cut-short", &b, Gap, &["truncated", "consistency_unproven"]));
    let mut b = log.log_bundle();
    b.checkpoints.push(checkpoint_note(
        &log_origin(WS),
        8,
        log.leaves[0],
        "2026-01-01T00:01:20.000Z",
        &log_origin(WS),
        &log.key2,
    ));
    v.push(bundle_vector("bundle-log-fork", &b, Bad, &["checkpoint_fork", "checkpoint_root_mismatch"]));
    let mut b = log.partial_log_bundle();
    b.consistency[0].proof[0].0[31] ^= 0x80;
    v.push(bundle_vector("bundle-bad-consistency-proof", &b, Bad, &["consistency_proof_invalid"]));
    let mut b = log.partial_log_bundle();
    b.consistency.clear();
    v.push(bundle_vector("bundle-no-consistency-proof", &b, Gap, &["consistency_unproven"]));
    let mut bytes = log.auth01_bundle().to_jsonl().expect("jsonl");
    bytes.extend_from_slice(b"{\"type\":\"receipt\",\"receipt\":\n");
    v.push(bundle_bytes_vector("bundle-malformed-line", bytes, Bad, &["record_malformed"]));
    let mut b = log.log_bundle();
    b.keys.clear();
    b.header = Some(Header { workspace_id: "ws_other".into(), ..log.header(Scope::Log { from: 0, to: 8 }) });
    v.push(bundle_vector("bundle-other-workspace-header", &b, Bad, &["workspace_mismatch"]));
    // §7.2: blank lines are ignored anywhere, also before the header.
    let mut bytes = b"\n \t\r\n".to_vec();
    bytes.extend(log.auth01_bundle().to_jsonl().expect("jsonl"));
    v.push(bundle_bytes_vector("bundle-blank-lines-before-header", bytes, Valid, &[]));
    // §7.2 step 8: a consistency record from a larger to a smaller size cannot verify.
    let mut b = log.partial_log_bundle();
    let backwards = Consistency { old_size: 8, new_size: 5, proof: b.consistency[0].proof.clone() };
    b.consistency.push(backwards);
    v.push(bundle_vector("bundle-consistency-old-larger", &b, Bad, &["consistency_proof_invalid"]));
    // §7.2 step 2: two key sets and none pinned: the first one in the file is used (here the real
    // one, so the checkpoints open) and the second is keys_mismatch.
    let mut b = log.auth01_bundle();
    b.keys.push(evil_keys.clone());
    let mut two = bundle_vector("bundle-two-key-sets-unpinned", &b, Bad, &["keys_mismatch"]);
    two.keys = None;
    v.push(two);
    // §7.2 steps 5-7 use the body's log_index (it is signed); only the inclusion proof uses the
    // envelope's. Were the envelope's used, seq 1 at index 5 would also be trail_order.
    let mut b = log.auth01_bundle();
    if let AnyReceipt::Signed(s) = &mut b.receipts[1] {
        s.log_index = 5;
    }
    v.push(bundle_vector("bundle-envelope-log-index", &b, Bad, &["log_index_mismatch", "inclusion_proof_invalid"]));
    // §7.3: trail checks apply to out-of-scope receipts too: auth_02's seq 1 alone is both
    // out_of_scope and a trail without its seq 0.
    let mut b = log.auth01_bundle();
    b.receipts.push(log.latest_receipt(4).into());
    v.push(bundle_vector("bundle-foreign-receipt-trail-checked", &b, Bad, &["out_of_scope", "receipt_missing"]));
    // The lone surrogate in a bundle: the receipt is reported and cannot be used, so its trail
    // has a hole.
    let bytes = String::from_utf8(log.auth01_bundle().to_jsonl().expect("jsonl")).expect("utf8").replacen(
        "drive:file/report.pdf",
        "drive:file/\\ud800x",
        1,
    );
    v.push(bundle_bytes_vector(
        "bundle-body-lone-surrogate",
        bytes.into_bytes(),
        Bad,
        &["body_not_canonical", "receipt_missing"],
    ));
    // Same trail checked with keys taken from the bundle itself (no pinning): never plain valid,
    // since whoever made the bundle could have made its keys (§10).
    let mut unpinned = bundle_vector("bundle-unpinned-keys", &log.auth01_bundle(), Outcome::ValidUnpinned, &[]);
    unpinned.keys = None;
    v.push(unpinned);

    // --- unusable input: every verifier must refuse to judge (exit 64)
    let keys_json = || pretty(&log.keys);
    let good = pretty(&r(1));
    v.push(unusable_vector(
        "receipt-not-json",
        "receipt",
        good[..good.len() / 2].to_vec(),
        Some(("keys.json", keys_json())),
    ));
    let mut doc: Value = serde_json::to_value(r(1)).expect("value");
    doc["status"] = json!("final");
    v.push(unusable_vector("receipt-unknown-status", "receipt", pretty(&doc), Some(("keys.json", keys_json()))));
    let mut doc: Value = serde_json::to_value(r(1)).expect("value");
    doc["note"] = json!("an envelope has exactly its members");
    v.push(unusable_vector(
        "receipt-envelope-unknown-member",
        "receipt",
        pretty(&doc),
        Some(("keys.json", keys_json())),
    ));
    let mut ks = log.keys.clone();
    ks.keys[0].key_id = "00000000".into();
    v.push(unusable_vector(
        "keys-key-id-mismatch",
        "receipt",
        good.clone(),
        Some(("unusable/keys-key-id-mismatch.keyset.json", pretty(&ks))),
    ));
    let mut ks = log.keys.clone();
    ks.origin = "allowly/ws_other".into();
    v.push(unusable_vector(
        "keys-wrong-origin",
        "receipt",
        good.clone(),
        Some(("unusable/keys-wrong-origin.keyset.json", pretty(&ks))),
    ));
    let mut ks = log.keys.clone();
    ks.keys[1].status = KeyStatus::Retired;
    v.push(unusable_vector(
        "keys-status-window-disagree",
        "receipt",
        good.clone(),
        Some(("unusable/keys-status-window-disagree.keyset.json", pretty(&ks))),
    ));
    let mut ks: Value = serde_json::to_value(&log.keys).expect("value");
    ks["comment"] = json!("a key set has exactly its members");
    v.push(unusable_vector(
        "keys-unknown-member",
        "receipt",
        good,
        Some(("unusable/keys-unknown-member.keyset.json", pretty(&ks))),
    ));
    let whole = log.auth01_bundle().to_jsonl().expect("jsonl");
    let first_nl = whole.iter().position(|&b| b == b'\n').expect("lines");
    v.push(unusable_vector(
        "bundle-no-header",
        "bundle",
        whole[first_nl + 1..].to_vec(),
        Some(("keys.json", keys_json())),
    ));
    let mut b = log.auth01_bundle();
    b.keys.clear();
    v.push(unusable_vector("bundle-no-keys-unpinned", "bundle", b.to_jsonl().expect("jsonl"), None));
    // §6.2: a key set inside a bundle must be well formed whether or not keys are pinned (issue 13:
    // with --keys it used to be skipped, and a wrong key id became keys_mismatch, exit 1).
    let mut b = log.auth01_bundle();
    b.keys[0].keys[1].status = KeyStatus::Retired;
    let retired_open = b.to_jsonl().expect("jsonl");
    v.push(unusable_vector(
        "bundle-keys-retired-without-end-pinned",
        "bundle",
        retired_open.clone(),
        Some(("keys.json", keys_json())),
    ));
    v.push(unusable_vector("bundle-keys-retired-without-end-unpinned", "bundle", retired_open, None));
    let mut b = log.auth01_bundle();
    b.keys[0].keys[0].key_id = "00000000".into();
    v.push(unusable_vector(
        "bundle-keys-wrong-key-id-pinned",
        "bundle",
        b.to_jsonl().expect("jsonl"),
        Some(("keys.json", keys_json())),
    ));
    // §6.1: an envelope whose body is not an object is unusable input (issue 13: it was body_invalid).
    let mut x = r(1);
    x.body = json!([log.bodies[1].clone()]);
    v.push(unusable_vector("receipt-body-array", "receipt", pretty(&x), Some(("keys.json", keys_json()))));
    let mut b = log.auth01_bundle();
    b.receipts.push(x.into());
    v.push(bundle_vector("bundle-receipt-body-array", &b, Bad, &["record_malformed"]));
    // §6.2: an empty key list and a key listed twice are broken key sets.
    let mut ks = log.keys.clone();
    ks.keys.clear();
    v.push(unusable_vector(
        "keys-empty",
        "receipt",
        pretty(&r(1)),
        Some(("unusable/keys-empty.keyset.json", pretty(&ks))),
    ));
    let mut ks = log.keys.clone();
    let mut wider = ks.keys[0].clone();
    wider.not_after = Some(ts("2026-01-01T00:10:00.000Z"));
    ks.keys.push(wider);
    v.push(unusable_vector(
        "keys-duplicate-key-id",
        "receipt",
        pretty(&r(1)),
        Some(("unusable/keys-duplicate-key-id.keyset.json", pretty(&ks))),
    ));
    // §6.2: a public key must be a canonical point of large order; a small-order key (here the
    // identity) or bytes that are no point make the key set unusable, whatever signed what.
    let raw_key = |pk: [u8; 32]| {
        let origin = log_origin(WS);
        let mut h = Sha256::new();
        h.update(origin.as_bytes());
        h.update([0x0a, 0x01]);
        h.update(pk);
        let key_id = hex::encode(&h.finalize()[..4]);
        let b64 = base64::engine::general_purpose::STANDARD;
        let vkey = format!("{origin}+{key_id}+{}", b64.encode([&[1u8][..], &pk[..]].concat()));
        PublicKeyInfo {
            key_id,
            public_key: b64.encode(pk),
            vkey,
            ..key_info(&log.key2, "2026-01-02T00:00:00.000Z", None)
        }
    };
    let mut identity = [0u8; 32];
    identity[0] = 1;
    // y = 2 is not the y of any curve point (x² would be a non-square), checked below.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert!(ed25519_dalek::VerifyingKey::from_bytes(&not_a_point).is_err(), "y = 2 must not decode");
    for (name, pk) in [("keys-small-order-public-key", identity), ("keys-public-key-not-a-point", not_a_point)] {
        let mut ks = log.keys.clone();
        ks.keys.push(raw_key(pk));
        v.push(unusable_vector(
            name,
            "receipt",
            pretty(&r(1)),
            Some((&format!("unusable/{name}.keyset.json"), pretty(&ks))),
        ));
    }
    // §4: a negative integer where the spec wants a count is the wrong encoding in the body
    // (body_invalid, stop) and an unusable envelope.
    let neg_env =
        String::from_utf8(pretty(&r(1))).expect("utf8").replacen("\n  \"log_index\": 1,", "\n  \"log_index\": -1,", 1);
    v.push(unusable_vector(
        "receipt-envelope-negative-log-index",
        "receipt",
        neg_env.into_bytes(),
        Some(("keys.json", keys_json())),
    ));
    // §3: a byte-order mark is not JSON whitespace: the document (or the header line) is unusable.
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend(pretty(&r(1)));
    v.push(unusable_vector("receipt-byte-order-mark", "receipt", bytes, Some(("keys.json", keys_json()))));
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend(log.auth01_bundle().to_jsonl().expect("jsonl"));
    v.push(unusable_vector("bundle-byte-order-mark", "bundle", bytes, Some(("keys.json", keys_json()))));
    // §3 / §7.1 step 3: an envelope that breaks the I-JSON rules is unusable input, like any
    // other broken envelope (§6.1); a body that does is body_not_canonical (below).
    let dup_env = String::from_utf8(pretty(&r(1))).expect("utf8").replacen(
        "\n  \"status\": \"signed\",",
        "\n  \"status\": \"signed\",\n  \"status\": \"signed\",",
        1,
    );
    v.push(unusable_vector(
        "receipt-envelope-duplicate-member",
        "receipt",
        dup_env.into_bytes(),
        Some(("keys.json", keys_json())),
    ));
    let _ = &log.key2;
    vectors_11(&mut v);
    vectors_semantics(&mut v);
    (log, v)
}

fn outcome_str(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Valid) => "valid",
        Some(Outcome::ValidUnpinned) => "valid_unpinned",
        Some(Outcome::CoverageGap) => "coverage_gap",
        Some(Outcome::IntegrityFailure) => "integrity_failure",
        None => "unusable",
    }
}

/// Verifies a vector as the CLI would: `Err` is unusable input.
fn verify_vector(v: &Vector, log: &Log) -> allowly_receipt::Result<Report> {
    let keys = match v.keys.as_deref() {
        None => None,
        Some("keys.json") => Some(log.keys.clone()),
        Some(other) => {
            let bytes = &v.extra.iter().find(|(n, _)| n == other).expect("extra keys file").1;
            Some(KeySet::parse(bytes)?)
        }
    };
    match (v.kind, keys) {
        ("receipt", Some(k)) => verify::verify_receipt_bytes(&v.contents, &k),
        ("receipt", None) => panic!("a receipt vector needs keys"),
        (_, k) => {
            let semantics = match v.semantics {
                None => verify::Semantics::Default,
                Some(true) => verify::Semantics::On,
                Some(false) => verify::Semantics::Off,
            };
            verify::verify_bundle_with(&v.contents, k.as_ref(), &[], semantics)
        }
    }
}

#[test]
fn every_vector_yields_exactly_its_labelled_findings() {
    let (log, vs) = vectors();
    let mut failures = Vec::new();
    for v in &vs {
        let report = match (verify_vector(v, &log), v.outcome) {
            (Err(_), None) => continue,
            (Err(e), Some(_)) => {
                failures.push(format!("{}: unusable: {e}", v.name));
                continue;
            }
            (Ok(r), None) => {
                failures.push(format!("{}: want unusable input, got {:?} {:?}", v.name, r.outcome(), r.findings));
                continue;
            }
            (Ok(r), Some(_)) => r,
        };
        let mut got: Vec<&str> = report.findings.iter().map(|f| f.code.as_str()).collect();
        got.sort_unstable();
        got.dedup();
        let mut want = v.codes.clone();
        want.sort_unstable();
        if got != want || Some(report.outcome()) != v.outcome {
            failures.push(format!(
                "{}: want {:?} {want:?}, got {:?} {got:?}\n  {:#?}",
                v.name,
                v.outcome,
                report.outcome(),
                report.findings
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn committed_vectors_match_the_generator() {
    let (log, vs) = vectors();
    let dir = vectors_dir();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("keys.json".into(), pretty(&log.keys));
    let manifest: Vec<Value> = vs
        .iter()
        .map(|v| {
            let mut m = json!({"name": v.name, "kind": v.kind, "file": v.file, "keys": v.keys, "outcome": outcome_str(v.outcome), "codes": v.codes});
            if let Some(on) = v.semantics {
                m["semantics"] = json!(on);
            }
            m
        })
        .collect();
    files.insert("manifest.json".into(), pretty(&json!({ "vectors": manifest })));
    for v in &vs {
        files.insert(v.file.clone(), v.contents.clone());
        files.extend(v.extra.iter().cloned());
    }
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        for (name, bytes) in &files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, bytes).expect("write vector");
        }
    }
    let mut stale = Vec::new();
    for (name, bytes) in &files {
        match std::fs::read(dir.join(name)) {
            Ok(on_disk) if &on_disk == bytes => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(_) => stale.push(format!("{name} missing")),
        }
    }
    assert!(
        stale.is_empty(),
        "committed vectors disagree with the generator (UPDATE_VECTORS=1 to regenerate, then review): {stale:?}"
    );
}

#[test]
fn every_finding_code_has_a_vector() {
    let (_, vs) = vectors();
    // The witness-policy codes (§7.5) need the verifier's own witness keys, which the manifest
    // shared with the Python and Node verifiers does not carry: the unit tests of
    // `verify::tests` and allowly-verify's tests/cli.rs (the real binary) produce them.
    let policy = [verify::Code::WitnessCosignatureInvalid, verify::Code::WitnessQuorumNotMet];
    for code in verify::Code::ALL.iter().filter(|c| !policy.contains(c)) {
        let s = code.as_str();
        assert!(vs.iter().any(|v| v.codes.contains(&s)), "no vector for finding {s}");
    }
}

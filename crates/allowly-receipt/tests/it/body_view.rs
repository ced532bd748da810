//! `ReceiptBodyView::parse` (the signer's reading of a body) accepts exactly the canonical
//! bodies that the typed view and `ReceiptBody::validate` accept — on every body in the test
//! vectors, and on those bodies with one member removed or replaced by another JSON value.
//!
//! `ReceiptBodyView::parse_canonical` (the one-pass reader the signer tries first) is checked
//! against `parse` as the oracle: whenever it answers, `parse` accepts with the same view and
//! the bytes are canonical (`jcs::canonicalize ∘ jcs::parse_strict` gives them back), so that
//! `parse_canonical` then `parse` accepts and refuses exactly what `parse` does; and it does
//! answer for every canonical body `parse` accepts outside the forms it leaves to `parse` —
//! on the vectors, on generated bodies (random members, unknown members) and on mutated bytes.

use allowly_receipt::jcs::{canonicalize, parse_strict};
use allowly_receipt::types::{
    Approval, ApprovalOutcome, Decision, EventKind, Grant, HexHash, ReceiptBody, ReceiptBodyView, RotatedKey, RuleKind,
    Timestamp, REQUIRED_MEMBERS,
};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::vectors_dir;

/// Whether `parse_canonical` promises to read `v` (in canonical form): no number with a
/// fraction or exponent, object keys ASCII with nothing to escape, unknown members not nested
/// deeper than it reads.
fn fast_path_covers(v: &Value, depth: usize) -> bool {
    match v {
        Value::Number(n) => n.is_i64() || n.is_u64(),
        Value::Array(a) => depth <= 32 && a.iter().all(|x| fast_path_covers(x, depth + 1)),
        Value::Object(o) => {
            depth <= 32
                && o.iter().all(|(k, x)| {
                    k.bytes().all(|b| b.is_ascii() && b >= 0x20 && b != b'"' && b != b'\\')
                        && fast_path_covers(x, depth + 1)
                })
        }
        _ => true,
    }
}

/// The oracle: `parse_canonical(bytes)` answers only as `parse` does, only for canonical bytes.
fn check_fast_against_parse(bytes: &[u8]) -> Result<Option<ReceiptBodyView<'_>>, TestCaseError> {
    let fast = ReceiptBodyView::parse_canonical(bytes);
    if let Some(f) = &fast {
        let slow = ReceiptBodyView::parse(bytes);
        prop_assert_eq!(
            slow.as_ref().ok(),
            Some(f),
            "parse_canonical read what parse refuses: {:?}",
            String::from_utf8_lossy(bytes)
        );
        let again = parse_strict(bytes).and_then(|v| canonicalize(&v)).ok();
        prop_assert_eq!(again.as_deref(), Some(bytes), "parse_canonical read non-canonical bytes");
    }
    Ok(fast)
}

fn vector_bodies() -> Vec<Value> {
    let dir = vectors_dir();
    let mut out = Vec::new();
    for sub in ["valid", "invalid"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
                let receipt = v.get("receipt").unwrap_or(&v);
                if let Some(body) = receipt.get("body").filter(|b| b.is_object()) {
                    out.push(body.clone());
                }
            }
        }
    }
    assert!(out.len() > 10, "found only {} bodies", out.len());
    out
}

/// Both readings of `body`; `None` when it has no canonical form at all.
fn both(body: &Value) -> Option<(bool, bool)> {
    let bytes = canonicalize(body).ok()?;
    let typed = ReceiptBody::from_json(body).and_then(|b| b.validate()).is_ok();
    let view = ReceiptBodyView::parse(&bytes);
    if let (Ok(v), Ok(t)) = (&view, ReceiptBody::from_json(body)) {
        assert_eq!(
            (v.id, v.workspace_id, v.log_index, v.kind, v.time),
            (&*t.id, &*t.workspace_id, t.log_index, t.kind, t.time)
        );
    }
    let fast = check_fast_against_parse(&bytes).unwrap();
    if view.is_ok() && fast_path_covers(body, 0) {
        assert!(fast.is_some(), "a canonical body parse accepts was left to parse: {body}");
    }
    Some((typed, view.is_ok()))
}

#[test]
fn every_vector_body_reads_the_same_both_ways() {
    let mut valid = 0;
    for body in vector_bodies() {
        let (typed, view) = both(&body).unwrap();
        assert_eq!(typed, view, "typed {typed}, view {view}: {body}");
        valid += usize::from(view);
    }
    assert!(valid > 5, "too few valid bodies: {valid}");
}

/// Every member §4 names, and one it does not.
fn members() -> Vec<&'static str> {
    let optional = ["grant", "approval", "escalation_id", "context_hash", "key", "unknown_member"];
    REQUIRED_MEMBERS.iter().copied().chain(optional).collect()
}

fn replacement() -> impl Strategy<Value = Option<Value>> {
    let hash = "5b4d".repeat(16);
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!(true))),
        Just(Some(json!(0))),
        Just(Some(json!(1))),
        Just(Some(json!(7))),
        Just(Some(json!(-1))),
        Just(Some(json!(1.5))),
        Just(Some(json!(9_007_199_254_740_991u64))),
        Just(Some(json!(""))),
        Just(Some(json!("x"))),
        Just(Some(json!("a\"b\\c"))),
        Just(Some(json!("ws_other"))),
        Just(Some(json!(hash.clone()))),
        Just(Some(json!(hash.to_uppercase()))),
        Just(Some(json!("2026-01-01T00:00:02.000Z"))),
        Just(Some(json!("2026-01-01T00:00:02Z"))),
        Just(Some(json!("check"))),
        Just(Some(json!("key.rotated"))),
        Just(Some(json!("authorization.created"))),
        Just(Some(json!("allow"))),
        Just(Some(json!([]))),
        Just(Some(json!(["files.read"]))),
        Just(Some(json!([1]))),
        Just(Some(json!({}))),
        Just(Some(json!({"outcome": "approved", "by": "ann", "shown_hash": null}))),
        Just(Some(json!({"subject": "s", "scopes": [], "resources": [], "expires_at": null, "metadata_hash": null}))),
    ]
}

proptest! {
    #[test]
    fn a_changed_member_reads_the_same_both_ways(
        which in any::<prop::sample::Index>(),
        member in prop::sample::select(members()),
        with in replacement(),
    ) {
        let bodies = vector_bodies();
        let mut body = bodies[which.index(bodies.len())].clone();
        let obj = body.as_object_mut().unwrap();
        match with {
            None => { obj.remove(member); }
            Some(v) => { obj.insert(member.to_owned(), v); }
        }
        if let Some((typed, view)) = both(&body) {
            prop_assert_eq!(typed, view, "{}", body);
        }
    }

    #[test]
    fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = ReceiptBodyView::parse(&bytes);
        let _ = ReceiptBodyView::parse_canonical(&bytes);
    }

}

proptest! {
    // Many cases: most mutated bodies are no longer JSON, and the interesting ones are those that still are.
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Generated bodies (valid ones and ones that break a §4 rule, with unknown members):
    /// `parse_canonical` answers as `parse` does, and for every canonical body `parse` accepts.
    #[test]
    fn generated_bodies_read_the_same_fast_and_slow(body in body(), extra in extra_members()) {
        let mut value = serde_json::to_value(&body).unwrap();
        let obj = value.as_object_mut().unwrap();
        for (k, v) in extra {
            obj.entry(k).or_insert(v);
        }
        let Ok(bytes) = canonicalize(&value) else { return Ok(()) };
        let fast = check_fast_against_parse(&bytes)?;
        let slow = ReceiptBodyView::parse(&bytes);
        if slow.is_ok() && fast_path_covers(&value, 0) {
            prop_assert!(fast.is_some(), "left to parse: {}", String::from_utf8_lossy(&bytes));
        }
    }

    /// `ReceiptBody::canonical_bytes` (written member by member) is the generic RFC 8785
    /// serializer's output, and fails exactly when it fails (an integer above 2^53 - 1).
    #[test]
    fn the_hand_written_body_writer_is_the_generic_serializer(body in body()) {
        let generic = allowly_receipt::jcs::to_canonical_vec(&body);
        let value = canonicalize(&serde_json::to_value(&body).unwrap());
        match (body.canonical_bytes(), generic) {
            (Ok(fast), Ok(slow)) => {
                prop_assert_eq!(&fast, &slow, "{}", String::from_utf8_lossy(&slow));
                prop_assert_eq!(&fast, &value.unwrap());
            }
            (Err(_), Err(_)) => prop_assert!(value.is_err()),
            (fast, slow) => prop_assert!(false, "hand-written {:?} vs generic {:?}", fast.map(String::from_utf8), slow.map(String::from_utf8)),
        }
    }

    /// Canonical bodies with bytes flipped, inserted, deleted or repeated: whatever
    /// `parse_canonical` accepts, `parse` accepts the same way, and it is canonical.
    #[test]
    fn mutated_bodies_never_read_differently(body in body(), edits in prop::collection::vec(edit(), 1..3)) {
        let Ok(mut bytes) = canonicalize(&serde_json::to_value(&body).unwrap()) else { return Ok(()) };
        for e in edits {
            e.apply(&mut bytes);
        }
        check_fast_against_parse(&bytes)?;
    }
}

// ---- generated bodies ---------------------------------------------------------------------------

/// Text that stresses escaping: quotes, backslashes, controls, non-ASCII, astral.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z./:_-]{0,12}",
        1 => any::<String>(),
        1 => prop::collection::vec(prop::sample::select(vec!['a', '"', '\\', '\u{0}', '\u{8}', '\u{9}', '\u{a}',
            '\u{c}', '\u{d}', '\u{1f}', '\u{7f}', 'é', '\u{2028}', '\u{e000}', '\u{ffff}', '\u{1f600}', '/']), 0..8)
            .prop_map(|c| c.into_iter().collect()),
    ]
}

/// Mostly valid ids, sometimes not.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => "[A-Za-z0-9_-]{1,20}",
        1 => Just(String::new()),
        1 => "[a-z ]{1,5}",
        1 => Just("x".repeat(129)),
        1 => text(),
    ]
}

fn hash() -> impl Strategy<Value = HexHash> {
    any::<[u8; 32]>().prop_map(HexHash)
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..100,
        1 => 0u64..=allowly_receipt::jcs::MAX_SAFE_INTEGER,
        1 => Just(allowly_receipt::jcs::MAX_SAFE_INTEGER),
        1 => Just(allowly_receipt::jcs::MAX_SAFE_INTEGER + 1),
    ]
}

fn kind() -> impl Strategy<Value = EventKind> {
    prop::sample::select(vec![
        EventKind::AuthorizationCreated,
        EventKind::Check,
        EventKind::Confirmation,
        EventKind::EscalationCreated,
        EventKind::EscalationResolved,
        EventKind::Revocation,
        EventKind::Expiry,
        EventKind::KeyRotated,
        EventKind::ScopeRulesChanged,
    ])
}

fn time() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        3 => 1_700_000_000_000u64..1_900_000_000_000,
        1 => 0..=Timestamp::MAX_MS,
    ]
    .prop_map(|ms| Timestamp::from_unix_ms(ms).unwrap())
}

fn grant() -> impl Strategy<Value = Grant> {
    (
        text(),
        prop::collection::vec(text(), 0..3),
        prop::collection::vec(text(), 0..3),
        prop::option::of(time()),
        prop::option::of(hash()),
    )
        .prop_map(|(subject, scopes, resources, expires_at, metadata_hash)| Grant {
            subject,
            scopes,
            resources,
            expires_at,
            metadata_hash,
        })
}

fn approval() -> impl Strategy<Value = Approval> {
    (any::<bool>(), text(), prop::option::of(hash()), prop::option::of(hash())).prop_map(
        |(ok, by, shown_hash, note_hash)| Approval {
            outcome: if ok { ApprovalOutcome::Approved } else { ApprovalOutcome::Declined },
            by,
            shown_hash,
            note_hash,
        },
    )
}

fn rotated_key() -> impl Strategy<Value = RotatedKey> {
    (text(), text(), text()).prop_map(|(key_id, vkey, replaces)| RotatedKey { key_id, vkey, replaces })
}

/// A receipt body: mostly consistent with its kind (so valid), sometimes not.
fn body() -> impl Strategy<Value = ReceiptBody> {
    let decision = prop::option::of(prop::sample::select(vec![
        Decision::Allow,
        Decision::Deny,
        Decision::Confirm,
        Decision::Escalate,
    ]));
    (
        (prop_oneof![8 => Just(1u64), 1 => Just(0u64), 1 => Just(2u64)], id(), id(), prop::option::of(id()), kind()),
        (prop::option::of(number()), prop::option::of(hash()), number(), decision, prop::option::of(text())),
        (prop::collection::vec(text(), 0..4), prop::option::of(text()), time(), prop::option::of(hash())),
        (
            prop::option::of(grant()),
            prop::option::of(approval()),
            prop::option::of(id()),
            prop::option::of(hash()),
            prop::option::of(rotated_key()),
            prop::option::weighted(0.2, id()),
            prop::option::of(time()),
            prop::option::weighted(
                0.2,
                prop::collection::btree_map(
                    text(),
                    prop::sample::select(vec![RuleKind::Confirm, RuleKind::Escalate]),
                    0..4,
                ),
            ),
        ),
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |(
                (v, id, workspace_id, authorization_id, kind),
                (seq, prev, log_index, decision, reason),
                (scopes, resource, time, auth_state_hash),
                (grant, approval, escalation_id, context_hash, key, asked_authorization_id, expires_at, scope_rules),
                consistent,
            )| {
                let mut b = ReceiptBody {
                    v,
                    id,
                    workspace_id,
                    authorization_id,
                    seq,
                    prev,
                    log_index,
                    kind,
                    decision,
                    reason,
                    scopes,
                    resource,
                    time,
                    auth_state_hash,
                    grant,
                    approval,
                    escalation_id,
                    context_hash,
                    key,
                    asked_authorization_id,
                    expires_at,
                    scope_rules,
                };
                if consistent {
                    // Make the trail fields agree with the kind, as the service writes them.
                    if kind != EventKind::Check {
                        b.asked_authorization_id = None;
                    }
                    if kind != EventKind::ScopeRulesChanged {
                        b.scope_rules = None;
                    }
                    match kind {
                        // Format 1.1: a replaced rule set, a workspace event.
                        EventKind::ScopeRulesChanged => {
                            (b.authorization_id, b.seq, b.prev) = (None, None, None);
                            b.scope_rules.get_or_insert_with(Default::default);
                        }
                        // Format 1.1: a check of an unknown authorization, a workspace event.
                        EventKind::Check if b.asked_authorization_id.is_some() => {
                            (b.authorization_id, b.seq, b.prev) = (None, None, None);
                            b.decision = Some(Decision::Deny);
                            b.reason = Some("unknown_authorization".into());
                        }
                        EventKind::KeyRotated => (b.authorization_id, b.seq, b.prev) = (None, None, None),
                        EventKind::AuthorizationCreated => {
                            b.authorization_id.get_or_insert_with(|| "auth_1".into());
                            (b.seq, b.prev) = (Some(0), None);
                            b.grant.get_or_insert_with(|| Grant {
                                subject: "s".into(),
                                scopes: vec![],
                                resources: vec![],
                                expires_at: None,
                                metadata_hash: None,
                            });
                        }
                        _ => {
                            b.authorization_id.get_or_insert_with(|| "auth_1".into());
                            b.seq = Some(b.seq.unwrap_or(1).max(1));
                            b.prev.get_or_insert(HexHash([7; 32]));
                        }
                    }
                }
                b
            },
        )
}

/// Members a future format version might add, or anyone might send.
fn extra_members() -> impl Strategy<Value = Vec<(String, Value)>> {
    let max = allowly_receipt::jcs::MAX_SAFE_INTEGER as i64;
    let leaf = prop_oneof![
        2 => Just(Value::Null),
        2 => any::<bool>().prop_map(Value::Bool),
        2 => (-max..=max).prop_map(Value::from),
        2 => (-100i64..100).prop_map(Value::from),
        1 => (-1e6f64..1e6).prop_map(|x| json!(x)),
        3 => text().prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop_oneof![4 => "[a-z]{1,3}", 1 => ".{1,3}"], inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let key = prop_oneof![4 => "[a-z_]{1,10}", 1 => ".{1,4}"];
    prop::collection::vec((key, value), 0..3)
}

/// One edit of a body's bytes.
#[derive(Debug, Clone)]
enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Repeat(prop::sample::Index, usize),
}

impl Edit {
    fn apply(self, b: &mut Vec<u8>) {
        if b.is_empty() {
            return;
        }
        match self {
            Edit::Set(i, x) => {
                let i = i.index(b.len());
                b[i] = x;
            }
            Edit::Insert(i, x) => b.insert(i.index(b.len() + 1), x),
            Edit::Delete(i) => {
                b.remove(i.index(b.len()));
            }
            Edit::Repeat(i, n) => {
                let i = i.index(b.len());
                let piece = b[i..(i + n).min(b.len())].to_vec();
                b.splice(i..i, piece);
            }
        }
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to JSON and to the reader's shortcuts.
    let byte = prop_oneof![
        3 => proptest::char::range('a', 'z').prop_map(|c| c as u8),
        3 => prop::sample::select(b" \t\n\"\\,:{}[]0123456789-.eEnulltrfase/u\x00\x1f\x7f\x80\xc3\xa9\xff".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, x)| Edit::Set(i, x)),
        (any::<prop::sample::Index>(), byte).prop_map(|(i, x)| Edit::Insert(i, x)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
        (any::<prop::sample::Index>(), 1usize..40).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

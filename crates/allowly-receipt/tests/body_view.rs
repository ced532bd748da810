//! `ReceiptBodyView::parse` (the signer's fast reading of a body) accepts exactly the canonical
//! bodies that the typed view and `ReceiptBody::validate` accept — on every body in the test
//! vectors, and on those bodies with one member removed or replaced by another JSON value.
#![allow(clippy::unwrap_used)]

use allowly_receipt::jcs::canonicalize;
use allowly_receipt::types::{ReceiptBody, ReceiptBodyView, REQUIRED_MEMBERS};
use proptest::prelude::*;
use serde_json::{json, Value};

fn vector_bodies() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
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
    }
}

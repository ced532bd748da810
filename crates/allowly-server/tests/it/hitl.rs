//! Human in the loop and `Idempotency-Key`, black-box against the real `allowly` binary (real
//! signer child, real RocksDB, raw HTTP): one continuous trail through confirmations,
//! escalations and a revocation that the real `allowly-verify` accepts offline; what can be
//! observed of expiry; and idempotent POSTs, also across `kill -9`. Each test can fail if a
//! promise of the README ("Human in the loop", "Idempotency-Key") breaks.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use crate::support::*;
use allowly_receipt::types::Timestamp;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers.

fn start(data_dir: &Path) -> Server {
    let s = Server::start(data_dir);
    s.wait_ready();
    s
}

/// One workspace and its keys (one per role).
#[derive(Debug, Clone)]
struct Ws {
    id: String,
    admin: String,
    reader: String,
    checker: String,
}

fn workspace(s: &Server, name: &str, rules: Value) -> Ws {
    let c = s.client();
    let root = s.admin_token();
    let v = c.post("/v1/workspaces", &root, json!({ "name": name, "scope_rules": rules })).created("workspace");
    let id = v["id"].as_str().unwrap().to_owned();
    let key = |roles: &[&str]| {
        let v = c.post(&format!("/v1/workspaces/{id}/api-keys"), &root, json!({ "roles": roles })).created("key");
        v["secret"].as_str().unwrap().to_owned()
    };
    let (admin, reader, checker) = (key(&["admin"]), key(&["read"]), key(&["check"]));
    Ws { id, admin, reader, checker }
}

/// An authorization; returns its id and the creation answer.
fn grant(s: &Server, ws: &Ws, body: Value) -> (String, Value) {
    let v = s.client().post("/v1/authorizations", &ws.admin, body).created("authorization");
    (v["authorization"]["id"].as_str().unwrap().to_owned(), v)
}

/// `POST /v1/check` for one scope; must be a 200.
fn check(s: &Server, ws: &Ws, az: &str, scope: &str) -> Value {
    let r = s.client().post("/v1/check", &ws.checker, json!({ "authorization_id": az, "scopes": [scope] }));
    assert_eq!(r.status, 200, "check {scope}: {r}\n{}", s.diagnostics());
    r.json()
}

/// `receipt.receipt_id` of an answer (or a problem's `receipt` member).
fn rid(v: &Value) -> String {
    v["receipt"]["receipt_id"].as_str().unwrap_or_else(|| panic!("no receipt id in {v}")).to_owned()
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("no string {field} in {v}"))
}

fn ms_of(v: &Value) -> u64 {
    Timestamp::parse(v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"))).unwrap().unix_ms()
}

/// SHA-256 of `text`, lower-case hex (coreutils' `sha256sum`: the test has no hash crate).
fn sha256_hex(text: &str) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// `GET /v1/authorizations/{az}` → `trail_length`.
fn trail_length(s: &Server, ws: &Ws, az: &str) -> u64 {
    let r = s.client().get(&format!("/v1/authorizations/{az}"), Some(&ws.reader));
    assert_eq!(r.status, 200, "{r}");
    r.json()["trail_length"].as_u64().unwrap()
}

/// The whole trail of `az` (one page).
fn trail(s: &Server, ws: &Ws, az: &str) -> Vec<Value> {
    let r = s.client().get(&format!("/v1/receipts?authorization_id={az}&limit=1000"), Some(&ws.reader));
    assert_eq!(r.status, 200, "{r}");
    let page = r.json();
    assert_eq!(page["has_more"], false, "{page}");
    page["data"].as_array().unwrap().clone()
}

/// Polls until the trail of `az` holds exactly `n` receipts, all signed (never more than `n`).
fn signed_trail(s: &Server, ws: &Ws, az: &str, n: usize) -> Vec<Value> {
    let last = std::sync::Mutex::new(String::new());
    eventually(
        &format!("the {n} receipts of {az} to be signed"),
        || format!("last trail read: {}\n{}", last.lock().unwrap(), s.diagnostics()),
        || {
            let data = trail(s, ws, az);
            assert!(data.len() <= n, "the trail holds {} receipts, expected {n}: {data:#?}", data.len());
            let done = data.len() == n && data.iter().all(|r| r["status"] == "signed");
            *last.lock().unwrap() = serde_json::to_string(&data).unwrap();
            done.then_some(data)
        },
    )
}

/// One expected trail entry: receipt id, kind, decision, reason.
type Step = (String, &'static str, Option<&'static str>, Option<&'static str>);

/// The signed trail is exactly `expected`, in `seq` order.
fn assert_trail(data: &[Value], expected: &[Step]) {
    let got: Vec<(String, String, Option<String>, Option<String>)> = data
        .iter()
        .map(|r| {
            let b = &r["body"];
            let opt = |f: &str| b[f].as_str().map(str::to_owned);
            (str_of(b, "id").to_owned(), str_of(b, "kind").to_owned(), opt("decision"), opt("reason"))
        })
        .collect();
    let want: Vec<(String, String, Option<String>, Option<String>)> = expected
        .iter()
        .map(|(id, k, d, r)| (id.clone(), (*k).to_owned(), d.map(str::to_owned), r.map(str::to_owned)))
        .collect();
    assert_eq!(got, want, "the trail differs from the steps taken");
    for (i, r) in data.iter().enumerate() {
        assert_eq!(r["body"]["seq"], i as u64, "seq of {}", r["body"]["id"]);
    }
}

/// Exports the trail of `az` and the workspace's keys into `dir`; the real verifier accepts the
/// trail (exit 0) and refuses it with one receipt left out (so exit 0 means something). Returns
/// the receipt ids of the export, in order.
fn export_and_verify(s: &Server, ws: &Ws, az: &str, dir: &Path) -> Vec<String> {
    let c = s.client();
    let export = c.get(&format!("/v1/authorizations/{az}/export"), Some(&ws.reader));
    assert_eq!(export.status, 200, "{export}");
    let keys = c.get(&format!("/v1/workspaces/{}/keys", ws.id), None);
    assert_eq!(keys.status, 200, "{keys}");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let (bundle, keys) = (write("trail.jsonl", &export.body), write("keys.json", &keys.body));
    let (code, shown) = run_verifier(&bundle, &keys, &[]);
    assert_eq!(code, Some(0), "{shown}");

    let text = export.text();
    let mut ids = Vec::new();
    let mut receipt_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "receipt" {
            assert_eq!(v["receipt"]["status"], "signed", "exported unsigned: {line}");
            ids.push(str_of(&v["receipt"]["body"], "id").to_owned());
            receipt_lines.push(i);
        }
    }
    let dropped = receipt_lines[receipt_lines.len() / 2];
    let cut: String = text.lines().enumerate().filter(|(i, _)| *i != dropped).map(|(_, l)| format!("{l}\n")).collect();
    let (code, shown) = run_verifier(&write("trail-without-one.jsonl", cut.as_bytes()), &keys, &[]);
    assert!(matches!(code, Some(1 | 2)), "a trail with a receipt removed was not refused: {shown}");
    ids
}

/// A POST with a JSON body, a bearer key and extra headers.
fn post_with(c: &Client, path: &str, key: &str, extra: &[(&str, &str)], body: Option<&Value>) -> Resp {
    let mut headers = vec![("Authorization".to_owned(), format!("Bearer {key}"))];
    if body.is_some() {
        headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
    }
    headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let bytes = body.map(|b| b.to_string().into_bytes());
    c.request("POST", path, &headers, bytes.as_deref())
}

fn idem(key: &str) -> [(&'static str, &str); 1] {
    [("Idempotency-Key", key)]
}

// ---------------------------------------------------------------------------------------------
// 1. One continuous trail through the API.

#[test]
fn one_trail_through_confirmations_escalations_and_a_revocation_verifies_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("data"));
    let c = s.client();
    let ws = workspace(&s, "hitl", json!({ "mail.send": "confirm", "payments.*": "escalate" }));
    let other = workspace(&s, "other", json!({}));
    let (az, grant_answer) =
        grant(&s, &ws, json!({ "subject": "user-42", "scopes": ["files.read", "mail.*", "payments.*"] }));
    let mut steps: Vec<Step> = vec![(rid(&grant_answer), "authorization.created", None, None)];
    let confirm_path = |nonce: &str| format!("/v1/confirmations/{nonce}");
    let answer = json!({ "outcome": "approved", "by": "user-42", "shown": "Send Q3 report" });

    // An allowed check.
    let v = check(&s, &ws, &az, "files.read");
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("allow", "granted"), "{v}");
    steps.push((rid(&v), "check", Some("allow"), Some("granted")));

    // A confirmation: only an admin key answers it; approved once, then refused with a receipt.
    let v = check(&s, &ws, &az, "mail.send");
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("confirm", "confirmation_required"), "{v}");
    assert!(v["escalation"].is_null(), "{v}");
    let nonce1 = str_of(&v["confirmation"], "nonce").to_owned();
    assert!(nonce1.starts_with("cn_"), "{v}");
    assert_eq!(v["confirmation"]["scopes"], json!(["mail.send"]), "{v}");
    steps.push((rid(&v), "check", Some("confirm"), Some("confirmation_required")));
    c.post(&confirm_path(&nonce1), &ws.checker, answer.clone()).problem(403, "forbidden");
    c.post(&confirm_path(&nonce1), &ws.reader, answer.clone()).problem(403, "forbidden");
    let r = c.post(&confirm_path(&nonce1), &ws.admin, answer.clone());
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("allow", "approved"), "{v}");
    assert!(v.get("escalation").is_none(), "a confirmation answer carries no escalation: {v}");
    let body = &v["receipt"]["body"];
    assert_eq!((body["kind"].as_str(), body["authorization_id"].as_str()), (Some("confirmation"), Some(az.as_str())));
    assert_eq!(
        body["approval"],
        json!({ "outcome": "approved", "by": "user-42", "shown_hash": sha256_hex("Send Q3 report") }),
        "the receipt must record who answered and the hash of what they were shown: {v}"
    );
    steps.push((rid(&v), "confirmation", Some("allow"), Some("approved")));
    let p = c.post(&confirm_path(&nonce1), &ws.admin, answer.clone()).problem(409, "confirmation_used");
    let body = &p["receipt"]["body"];
    assert_eq!(p["receipt"]["status"], "pending", "{p}");
    assert_eq!(
        (body["kind"].as_str(), body["decision"].as_str(), body["reason"].as_str()),
        (Some("confirmation"), Some("deny"), Some("confirmation_used")),
        "{p}"
    );
    steps.push((rid(&p), "confirmation", Some("deny"), Some("confirmation_used")));

    // A declined confirmation; another workspace's admin cannot answer it (404, no receipt).
    let v = check(&s, &ws, &az, "mail.send");
    assert_eq!(str_of(&v, "decision"), "confirm", "{v}");
    let nonce2 = str_of(&v["confirmation"], "nonce").to_owned();
    assert_ne!(nonce1, nonce2);
    steps.push((rid(&v), "check", Some("confirm"), Some("confirmation_required")));
    let p = c.post(&confirm_path(&nonce2), &other.admin, answer.clone()).problem(404, "not_found");
    assert!(p.get("receipt").is_none(), "{p}");
    let declined = json!({ "outcome": "declined", "by": "user-42", "shown": "Send Q3 report" });
    let r = c.post(&confirm_path(&nonce2), &ws.admin, declined);
    assert_eq!(r.status, 200, "the nonce must still be answerable after a foreign attempt: {r}");
    let v = r.json();
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("deny", "declined"), "{v}");
    assert_eq!(v["receipt"]["body"]["approval"]["outcome"], "declined", "{v}");
    steps.push((rid(&v), "confirmation", Some("deny"), Some("declined")));

    // An escalation: read with a read key, resolved once by an admin key, unchanged afterwards.
    let v = check(&s, &ws, &az, "payments.wire");
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("escalate", "escalation_required"), "{v}");
    assert!(v["confirmation"].is_null(), "{v}");
    let esc1 = str_of(&v["escalation"], "id").to_owned();
    assert!(esc1.starts_with("esc_"), "{v}");
    assert_eq!(v["receipt"]["body"]["escalation_id"], esc1.as_str(), "{v}");
    let check_rid = rid(&v);
    steps.push((check_rid.clone(), "check", Some("escalate"), Some("escalation_required")));
    let esc_path = format!("/v1/escalations/{esc1}");
    let r = c.get(&esc_path, Some(&ws.reader));
    assert_eq!(r.status, 200, "{r}");
    let g = r.json();
    assert_eq!(
        (str_of(&g, "status"), str_of(&g, "authorization_id"), str_of(&g, "check_receipt_id")),
        ("pending", az.as_str(), check_rid.as_str()),
        "{g}"
    );
    assert_eq!(g["scopes"], json!(["payments.wire"]), "{g}");
    assert!(g["resolved_at"].is_null() && g["by"].is_null() && g["resolution_receipt_id"].is_null(), "{g}");
    assert_eq!(g["expires_at"], v["escalation"]["expires_at"], "{g}");
    // The check's receipt carries the deadline it opened (format 1.1).
    assert_eq!(v["receipt"]["body"]["expires_at"], v["escalation"]["expires_at"], "{v}");
    // The same answer object as a confirmation's (one vocabulary).
    let approve = json!({ "outcome": "approved", "by": "cfo", "shown": "wire 5,000 EUR", "note": "ok" });
    c.post(&format!("{esc_path}/resolve"), &ws.checker, approve.clone()).problem(403, "forbidden");
    c.post(&format!("{esc_path}/resolve"), &ws.reader, approve.clone()).problem(403, "forbidden");
    let r = c.post(&format!("{esc_path}/resolve"), &ws.admin, approve.clone());
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("allow", "approved"), "{v}");
    let resolution_rid = rid(&v);
    let body = &v["receipt"]["body"];
    assert_eq!((body["kind"].as_str(), body["escalation_id"].as_str()), (Some("escalation.resolved"), Some(&*esc1)));
    assert_eq!(
        body["approval"],
        json!({ "outcome": "approved", "by": "cfo", "shown_hash": sha256_hex("wire 5,000 EUR"), "note_hash": sha256_hex("ok") })
    );
    let e = &v["escalation"];
    assert_eq!(
        (str_of(e, "status"), str_of(e, "by"), str_of(e, "approver"), str_of(e, "resolution_receipt_id")),
        ("approved", "cfo", "cfo", resolution_rid.as_str()),
        "{v}"
    );
    steps.push((resolution_rid, "escalation.resolved", Some("allow"), Some("approved")));
    let after = c.get(&esc_path, Some(&ws.reader)).json();
    assert_eq!(&after, e, "GET must show the escalation as the resolution answered it");
    let deny = json!({ "outcome": "denied", "approver": "cfo", "note": "changed my mind" });
    c.post(&format!("{esc_path}/resolve"), &ws.admin, deny).problem(409, "escalation_already_resolved");
    c.post(&format!("{esc_path}/resolve"), &ws.admin, approve.clone()).problem(409, "escalation_already_resolved");
    assert_eq!(c.get(&esc_path, Some(&ws.reader)).json(), after, "a refused resolve changed the escalation");

    // The escalation answer's deprecated spellings (`approver`, `denied`) still work, and are
    // recorded in the one vocabulary.
    let v = check(&s, &ws, &az, "payments.wire");
    let esc3 = str_of(&v["escalation"], "id").to_owned();
    steps.push((rid(&v), "check", Some("escalate"), Some("escalation_required")));
    let old = json!({ "outcome": "denied", "approver": "cfo", "note": "not this quarter" });
    let r = c.post(&format!("/v1/escalations/{esc3}/resolve"), &ws.admin, old);
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("deny", "declined"), "{v}");
    assert_eq!(
        v["receipt"]["body"]["approval"],
        json!({ "outcome": "declined", "by": "cfo", "shown_hash": null, "note_hash": sha256_hex("not this quarter") })
    );
    assert_eq!((str_of(&v["escalation"], "status"), str_of(&v["escalation"], "by")), ("declined", "cfo"), "{v}");
    steps.push((rid(&v), "escalation.resolved", Some("deny"), Some("declined")));
    let both = json!({ "outcome": "approved", "by": "cfo", "approver": "cfo" });
    c.post(&format!("/v1/escalations/{esc3}/resolve"), &ws.admin, both).problem(400, "invalid_request");

    // Another escalation, then the authorization is revoked: a later approval is a deny.
    let v = check(&s, &ws, &az, "payments.wire");
    assert_eq!(str_of(&v, "decision"), "escalate", "{v}");
    let esc2 = str_of(&v["escalation"], "id").to_owned();
    steps.push((rid(&v), "check", Some("escalate"), Some("escalation_required")));
    for esc in [&esc1, &esc2] {
        c.get(&format!("/v1/escalations/{esc}"), Some(&other.admin)).problem(404, "not_found");
        c.post(&format!("/v1/escalations/{esc}/resolve"), &other.admin, approve.clone()).problem(404, "not_found");
    }
    let r = c.call("POST", &format!("/v1/authorizations/{az}/revoke"), Some(&ws.admin), None);
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!(v["authorization"]["status"], "revoked", "{v}");
    steps.push((rid(&v), "revocation", None, Some("revoked")));
    let r = c.post(&format!("/v1/escalations/{esc2}/resolve"), &ws.admin, approve.clone());
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("deny", "revoked"), "{v}");
    assert_eq!(v["escalation"]["status"], "declined", "{v}");
    assert_eq!(v["receipt"]["body"]["approval"]["outcome"], "approved", "the approver's answer is recorded: {v}");
    steps.push((rid(&v), "escalation.resolved", Some("deny"), Some("revoked")));

    // Unknown and foreign nonces and escalations: 404 `not_found` like any object, nothing
    // recorded.
    for nonce in ["cn_doesnotexist", "nonce-of-nobody"] {
        let p = c.post(&confirm_path(nonce), &ws.admin, answer.clone()).problem(404, "not_found");
        assert!(p.get("receipt").is_none(), "{p}");
    }
    c.get("/v1/escalations/esc_doesnotexist", Some(&ws.reader)).problem(404, "not_found");
    c.post("/v1/escalations/esc_doesnotexist/resolve", &ws.admin, approve).problem(404, "not_found");
    for nonce in [&nonce1, &nonce2] {
        let p = c.post(&confirm_path(nonce), &other.admin, answer.clone()).problem(404, "not_found");
        assert!(p.get("receipt").is_none(), "a foreign answer left a receipt: {p}");
    }

    // The trail is exactly the steps above, signed, and verifies offline.
    assert_eq!(trail_length(&s, &ws, &az), steps.len() as u64);
    let data = signed_trail(&s, &ws, &az, steps.len());
    assert_trail(&data, &steps);
    let exported = export_and_verify(&s, &ws, &az, tmp.path());
    assert_eq!(exported, steps.iter().map(|s| s.0.clone()).collect::<Vec<_>>(), "the export is not the trail");
}

// ---------------------------------------------------------------------------------------------
// 2. Expiry. `allowly serve` has no flag, variable or config key for the confirmation or
// escalation TTLs (EngineConfig::default() is hard-wired in serve.rs), so an expired nonce or
// escalation cannot be produced in a test of bounded runtime. What can be checked: the TTLs
// the answers announce are the documented defaults, and an authorization that expires while a
// confirmation or an escalation waits turns a later approval into a recorded deny.

#[test]
fn ttls_are_the_documented_defaults_and_an_authorization_expiring_meanwhile_turns_approvals_into_denies() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("data"));
    let c = s.client();
    let ws = workspace(&s, "expiry", json!({ "mail.send": "confirm", "payments.*": "escalate" }));
    // Long enough for the two checks below to happen before it, even on a loaded machine.
    let expires_ms = now_ms() + 3_000;
    let expires_at = Timestamp::from_unix_ms(expires_ms).unwrap().to_string();
    let (az, v) =
        grant(&s, &ws, json!({ "subject": "user-7", "scopes": ["mail.*", "payments.*"], "expires_at": expires_at }));
    let mut steps: Vec<Step> = vec![(rid(&v), "authorization.created", None, None)];

    // Nonce: 5 minutes; escalation: 24 h (bounded by this machine's clock around the request).
    let before = now_ms();
    let v = check(&s, &ws, &az, "mail.send");
    let after = now_ms();
    assert_eq!(str_of(&v, "decision"), "confirm", "{v}");
    let exp = ms_of(&v["confirmation"]["expires_at"]);
    assert!((before + 300_000..=after + 300_000).contains(&exp), "a nonce must live 5 minutes: {v}");
    let nonce = str_of(&v["confirmation"], "nonce").to_owned();
    steps.push((rid(&v), "check", Some("confirm"), Some("confirmation_required")));
    let before = now_ms();
    let v = check(&s, &ws, &az, "payments.wire");
    let after = now_ms();
    assert_eq!(str_of(&v, "decision"), "escalate", "{v}");
    let exp = ms_of(&v["escalation"]["expires_at"]);
    assert!((before + 86_400_000..=after + 86_400_000).contains(&exp), "an escalation must live 24 h: {v}");
    let esc = str_of(&v["escalation"], "id").to_owned();
    steps.push((rid(&v), "check", Some("escalate"), Some("escalation_required")));
    assert!(now_ms() < expires_ms, "too slow: the authorization expired before the test could check with it");
    let g = c.get(&format!("/v1/escalations/{esc}"), Some(&ws.reader)).json();
    assert_eq!((g["status"].as_str(), &g["expires_at"]), (Some("pending"), &v["escalation"]["expires_at"]), "{g}");

    // The authorization expires while both wait.
    eventually(
        "the authorization to read as expired",
        || s.diagnostics(),
        || {
            let r = c.get(&format!("/v1/authorizations/{az}"), Some(&ws.reader));
            (r.json()["status"] == "expired").then_some(())
        },
    );
    assert!(now_ms() >= expires_ms);
    assert_eq!(trail_length(&s, &ws, &az), 3, "reading an authorization must not write to its trail");

    // The user's approval now is a deny `expired`, after the expiry's own receipt.
    let answer = json!({ "outcome": "approved", "by": "user-7", "shown": "Send it" });
    let r = c.post(&format!("/v1/confirmations/{nonce}"), &ws.admin, answer.clone());
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("deny", "expired"), "{v}");
    let trail_now = trail(&s, &ws, &az);
    let expiry = trail_now.get(3).unwrap_or_else(|| panic!("no expiry receipt: {trail_now:#?}"));
    steps.push((str_of(&expiry["body"], "id").to_owned(), "expiry", None, Some("expired")));
    steps.push((rid(&v), "confirmation", Some("deny"), Some("expired")));
    // The nonce is used now: a second answer is refused with a receipt (no second expiry receipt).
    let p = c.post(&format!("/v1/confirmations/{nonce}"), &ws.admin, answer).problem(409, "confirmation_used");
    steps.push((rid(&p), "confirmation", Some("deny"), Some("confirmation_used")));

    // The approver's answer too; the escalation shows declined, not pending.
    let approve = json!({ "outcome": "approved", "by": "cfo" });
    let r = c.post(&format!("/v1/escalations/{esc}/resolve"), &ws.admin, approve.clone());
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("deny", "expired"), "{v}");
    assert_eq!(v["escalation"]["status"], "declined", "{v}");
    steps.push((rid(&v), "escalation.resolved", Some("deny"), Some("expired")));
    let g = c.get(&format!("/v1/escalations/{esc}"), Some(&ws.reader)).json();
    assert_eq!((g["status"].as_str(), g["resolution_receipt_id"].as_str()), (Some("declined"), Some(&*rid(&v))));
    c.post(&format!("/v1/escalations/{esc}/resolve"), &ws.admin, approve).problem(409, "escalation_already_resolved");

    // A check after that is a deny `expired`, without another expiry receipt.
    let v = check(&s, &ws, &az, "mail.send");
    assert_eq!((str_of(&v, "decision"), str_of(&v, "reason")), ("deny", "expired"), "{v}");
    steps.push((rid(&v), "check", Some("deny"), Some("expired")));

    let data = signed_trail(&s, &ws, &az, steps.len());
    assert_trail(&data, &steps);
    export_and_verify(&s, &ws, &az, tmp.path());
}

// ---------------------------------------------------------------------------------------------
// 3. Idempotency-Key over HTTP.

#[test]
fn idempotency_keys_answer_repeats_once_concurrently_and_across_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut s = start(&data_dir);
    let c = s.client();
    let ws = workspace(&s, "idem", json!({ "files.send": "confirm", "files.delete": "escalate" }));
    let (az, _) = grant(&s, &ws, json!({ "subject": "user-1", "scopes": ["files.*"] }));
    let check_body = json!({ "authorization_id": az, "scopes": ["files.read"], "resource": "drive:/a" });

    // A repeat gets the first answer, byte for byte, and there is one receipt.
    let t0 = trail_length(&s, &ws, &az);
    let first = post_with(&c, "/v1/check", &ws.checker, &idem("k1"), Some(&check_body));
    assert_eq!(first.status, 200, "{first}");
    let repeat = post_with(&c, "/v1/check", &ws.checker, &idem("k1"), Some(&check_body));
    assert_eq!((repeat.status, repeat.text()), (first.status, first.text()), "a repeat must get the first answer");
    assert_eq!(trail_length(&s, &ws, &az), t0 + 1, "a repeated key recorded a second receipt");
    let first_check = first.json();

    // The same key with another request: 422, nothing recorded or changed.
    let other_body = json!({ "authorization_id": az, "scopes": ["files.write"], "resource": "drive:/a" });
    post_with(&c, "/v1/check", &ws.checker, &idem("k1"), Some(&other_body)).problem(422, "idempotency_key_reused");
    post_with(&c, &format!("/v1/authorizations/{az}/revoke"), &ws.admin, &idem("k1"), None)
        .problem(422, "idempotency_key_reused");
    assert_eq!(trail_length(&s, &ws, &az), t0 + 1, "a refused reuse recorded something");
    let r = c.get(&format!("/v1/authorizations/{az}"), Some(&ws.reader));
    assert_eq!(r.json()["status"], "active", "a refused reuse revoked the authorization: {r}");

    // Keys are per workspace: another workspace's `k1` is its own request.
    let ws2 = workspace(&s, "idem-2", json!({}));
    let (az2, _) = grant(&s, &ws2, json!({ "subject": "user-1", "scopes": ["files.*"] }));
    let body2 = json!({ "authorization_id": az2, "scopes": ["files.read"], "resource": "drive:/a" });
    let r = post_with(&c, "/v1/check", &ws2.checker, &idem("k1"), Some(&body2));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["receipt"]["body"]["authorization_id"], az2.as_str(), "{r}");

    // 16 concurrent duplicates of a grant: one authorization, one answer.
    let grant_body =
        json!({ "subject": "user-2", "scopes": ["files.read"], "metadata": { "b": 1, "a": [true, null] } });
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (barrier, body, key) = (barrier.clone(), grant_body.clone(), ws.admin.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post_with(&c, "/v1/authorizations", &key, &idem("grant-once"), Some(&body))
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for a in &answers {
        assert_eq!((a.status, a.text()), (201, answers[0].text()), "concurrent duplicates must share one answer");
    }
    let granted = answers[0].json();
    let new_az = str_of(&granted["authorization"], "id").to_owned();
    assert_eq!(answers[0].header("location"), Some(format!("/v1/authorizations/{new_az}").as_str()));
    // Exactly one receipt (hence one authorization) entered the log between the check and the next.
    let grant_index = granted["receipt"]["log_index"].as_u64().unwrap();
    assert_eq!(grant_index, first_check["receipt"]["log_index"].as_u64().unwrap() + 1, "{granted}");
    let next = check(&s, &ws, &az, "files.list");
    let size = next["receipt"]["log_index"].as_u64().unwrap() + 1;
    assert_eq!(size, grant_index + 2, "the duplicates appended more than one receipt to the log");
    let log = c.get(&format!("/v1/workspaces/{}/log/export?from=0&to={size}", ws.id), Some(&ws.reader));
    assert_eq!(log.status, 200, "{log}");
    let created: Vec<String> = log
        .text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "receipt" && v["receipt"]["body"]["kind"] == "authorization.created")
        .map(|v| str_of(&v["receipt"]["body"], "authorization_id").to_owned())
        .collect();
    assert_eq!(created, vec![az.clone(), new_az.clone()], "authorizations created in the log");
    assert_eq!(trail_length(&s, &ws, &new_az), 1);

    // The answers to a confirmation and an escalation and a revocation, repeated with their
    // keys: the first answer again (not `confirmation_used`, `escalation_already_resolved` or
    // `conflict`), and one receipt each.
    let nonce = str_of(&check(&s, &ws, &az, "files.send")["confirmation"], "nonce").to_owned();
    let esc = str_of(&check(&s, &ws, &az, "files.delete")["escalation"], "id").to_owned();
    let t1 = trail_length(&s, &ws, &az);
    let confirm_path = format!("/v1/confirmations/{nonce}");
    let confirm_body = json!({ "outcome": "approved", "by": "user-1", "shown": "Send a.txt" });
    let resolve_path = format!("/v1/escalations/{esc}/resolve");
    let resolve_body = json!({ "outcome": "approved", "by": "boss" });
    let revoke_path = format!("/v1/authorizations/{new_az}/revoke");
    let mut firsts = Vec::new();
    for (path, key, body) in [
        (&confirm_path, "c1", Some(&confirm_body)),
        (&resolve_path, "r1", Some(&resolve_body)),
        (&revoke_path, "v1", None),
    ] {
        let admin = &ws.admin;
        let first = post_with(&c, path, admin, &idem(key), body);
        assert_eq!(first.status, 200, "{path}: {first}");
        let repeat = post_with(&c, path, admin, &idem(key), body);
        assert_eq!((repeat.status, repeat.text()), (200, first.text()), "{path}: a repeat must get the first answer");
        firsts.push((path.clone(), key, body.cloned(), first.text()));
    }
    assert_eq!(trail_length(&s, &ws, &az), t1 + 2, "repeated answers recorded more than one receipt each");
    assert_eq!(trail_length(&s, &ws, &new_az), 2, "a repeated revocation recorded more than one receipt");
    let t2 = trail_length(&s, &ws, &az);

    // After kill -9 and a restart on the same data, repeats still get the first answers.
    s.kill9();
    let s = start(&data_dir);
    let c = s.client();
    let again = post_with(&c, "/v1/check", &ws.checker, &idem("k1"), Some(&check_body));
    assert_eq!((again.status, again.text()), (first.status, first.text()), "the first answer did not survive");
    let again = post_with(&c, "/v1/authorizations", &ws.admin, &idem("grant-once"), Some(&grant_body));
    assert_eq!((again.status, again.text()), (201, answers[0].text()), "the grant's answer did not survive");
    for (path, key, body, answer) in &firsts {
        let again = post_with(&c, path, &ws.admin, &idem(key), body.as_ref());
        assert_eq!((again.status, again.text()), (200, answer.clone()), "{path}: the first answer did not survive");
    }
    assert_eq!(trail_length(&s, &ws, &az), t2, "a repeat after the restart recorded a receipt");
    assert_eq!(trail_length(&s, &ws, &new_az), 2);
    post_with(&c, "/v1/check", &ws.checker, &idem("k1"), Some(&other_body)).problem(422, "idempotency_key_reused");

    // Keys must be 1..=255 printable characters.
    let long = "k".repeat(256);
    post_with(&c, "/v1/check", &ws.checker, &idem(&long), Some(&check_body)).problem(400, "invalid_request");
    post_with(&c, "/v1/check", &ws.checker, &idem(""), Some(&check_body)).problem(400, "invalid_request");
    assert_eq!(trail_length(&s, &ws, &az), t2, "a refused key recorded a receipt");
    let longest = "k".repeat(255);
    let r = post_with(&c, "/v1/check", &ws.checker, &idem(&longest), Some(&check_body));
    assert_eq!(r.status, 200, "a 255-character key must be accepted: {r}");
    assert_eq!(trail_length(&s, &ws, &az), t2 + 1);
}

/// A repeat gets the first answer even when the same request would now be refused: here a grant
/// whose `expires_at` has passed since it was first made (a client retrying after a timeout
/// must learn that its grant exists, not get a 400 and believe nothing happened).
#[test]
fn a_repeated_grant_gets_its_first_answer_after_its_expires_at_has_passed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("data"));
    let c = s.client();
    let ws = workspace(&s, "idem-expiry", json!({}));
    let expires_ms = now_ms() + 2_000;
    let body = json!({
        "subject": "user-1",
        "scopes": ["files.read"],
        "expires_at": Timestamp::from_unix_ms(expires_ms).unwrap().to_string(),
    });
    let first = post_with(&c, "/v1/authorizations", &ws.admin, &idem("g1"), Some(&body));
    assert_eq!(first.status, 201, "{first}");
    let az = str_of(&first.json()["authorization"], "id").to_owned();
    eventually(
        "the authorization to read as expired",
        || s.diagnostics(),
        || (c.get(&format!("/v1/authorizations/{az}"), Some(&ws.reader)).json()["status"] == "expired").then_some(()),
    );
    let repeat = post_with(&c, "/v1/authorizations", &ws.admin, &idem("g1"), Some(&body));
    assert_eq!(
        (repeat.status, repeat.text()),
        (201, first.text()),
        "a repeat within the key's 24 h must get the first answer"
    );
    assert_eq!(trail_length(&s, &ws, &az), 1);
}

/// Concurrent answers to one nonce and to one escalation: exactly one succeeds; every other
/// answer to the nonce is refused with its own receipt; the escalation's losers record nothing.
#[test]
fn concurrent_answers_to_one_nonce_and_one_escalation_succeed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("data"));
    let c = s.client();
    let ws = workspace(&s, "race", json!({ "mail.send": "confirm", "payments.*": "escalate" }));
    let (az, _) = grant(&s, &ws, json!({ "subject": "user-1", "scopes": ["mail.*", "payments.*"] }));
    let nonce = str_of(&check(&s, &ws, &az, "mail.send")["confirmation"], "nonce").to_owned();
    let esc = str_of(&check(&s, &ws, &az, "payments.wire")["escalation"], "id").to_owned();
    let t0 = trail_length(&s, &ws, &az);
    const N: usize = 8;
    let race = |path: String, body: fn(usize) -> Value| -> Vec<Resp> {
        let barrier = Arc::new(Barrier::new(N));
        let threads: Vec<_> = (0..N)
            .map(|i| {
                let (barrier, path, key) = (barrier.clone(), path.clone(), ws.admin.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    c.post(&path, &key, body(i))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };

    let answers = race(
        format!("/v1/confirmations/{nonce}"),
        |i| json!({ "outcome": if i % 2 == 0 { "approved" } else { "declined" }, "by": format!("user-{i}") }),
    );
    let wins: Vec<&Resp> = answers.iter().filter(|r| r.status == 200).collect();
    assert_eq!(wins.len(), 1, "exactly one answer must win: {answers:#?}");
    let mut refused_receipts = std::collections::HashSet::new();
    for r in answers.iter().filter(|r| r.status != 200) {
        let p = r.problem(409, "confirmation_used");
        assert!(refused_receipts.insert(rid(&p)), "two refused attempts share a receipt: {p}");
    }
    assert_eq!(trail_length(&s, &ws, &az), t0 + N as u64, "one receipt per answer");

    let answers = race(
        format!("/v1/escalations/{esc}/resolve"),
        |i| json!({ "outcome": if i % 2 == 0 { "approved" } else { "declined" }, "by": format!("a-{i}") }),
    );
    let wins: Vec<&Resp> = answers.iter().filter(|r| r.status == 200).collect();
    assert_eq!(wins.len(), 1, "exactly one resolution must win: {answers:#?}");
    for r in answers.iter().filter(|r| r.status != 200) {
        r.problem(409, "escalation_already_resolved");
    }
    let winner = wins[0].json();
    let g = c.get(&format!("/v1/escalations/{esc}"), Some(&ws.reader)).json();
    assert_eq!(&g, &winner["escalation"], "the escalation must show the winning answer");
    assert_eq!(trail_length(&s, &ws, &az), t0 + N as u64 + 1, "only the winning resolution is recorded");
    signed_trail(&s, &ws, &az, (t0 + N as u64 + 1) as usize);
    export_and_verify(&s, &ws, &az, tmp.path());
}

// ---------------------------------------------------------------------------------------------
// Expiry of nonces and escalations, with short lifetimes set on the command line.

#[test]
fn expired_nonces_and_escalations_are_recorded_as_denies() {
    let tmp = tempfile::tempdir().unwrap();
    let s =
        Server::start_with(&tmp.path().join("data"), &["--confirmation-ttl-ms", "1000", "--escalation-ttl-ms", "1000"]);
    s.wait_ready();
    let c = s.client();
    let ws = workspace(&s, "expiry", json!({ "mail.send": "confirm", "payments.*": "escalate" }));
    let (az, _) = grant(&s, &ws, json!({ "subject": "u", "scopes": ["mail.*", "payments.*"] }));
    let confirm = check(&s, &ws, &az, "mail.send");
    let nonce = str_of(&confirm["confirmation"], "nonce").to_owned();
    let escalate = check(&s, &ws, &az, "payments.wire");
    let esc = str_of(&escalate["escalation"], "id").to_owned();
    let due = ms_of(&escalate["escalation"]["expires_at"]).max(ms_of(&confirm["confirmation"]["expires_at"]));
    eventually("both lifetimes to pass", String::new, || (now_ms() > due).then_some(()));
    // Nobody reads the escalation: the server's sweep records its expiry (a deny) on its own.
    let t = trail_length(&s, &ws, &az);
    eventually("the escalation's expiry to be recorded unread", String::new, || {
        (trail_length(&s, &ws, &az) == t + 1).then_some(())
    });
    assert_eq!(t, 3, "grant, confirm, escalate");

    // A late answer: 410 with the receipt of the refused attempt.
    let answer = json!({ "outcome": "approved", "by": "user-1" });
    let late = c.post(&format!("/v1/confirmations/{nonce}"), &ws.admin, answer.clone());
    let p = late.problem(410, "confirmation_expired");
    let attempt = rid(&p);
    // The escalation shows the recorded expiry.
    let view = c.get(&format!("/v1/escalations/{esc}"), Some(&ws.reader));
    assert_eq!(view.status, 200, "{view}");
    let view = view.json();
    assert_eq!(view["status"], "expired");
    let resolution = str_of(&view, "resolution_receipt_id").to_owned();
    let resolve = json!({ "outcome": "approved", "by": "cfo" });
    c.post(&format!("/v1/escalations/{esc}/resolve"), &ws.admin, resolve).problem(409, "escalation_already_resolved");

    let data = signed_trail(&s, &ws, &az, 5);
    let last: Vec<(String, String, String)> = data
        .iter()
        .skip(3)
        .map(|r| {
            let b = &r["body"];
            (str_of(b, "id").to_owned(), str_of(b, "kind").to_owned(), str_of(b, "reason").to_owned())
        })
        .collect();
    assert_eq!(
        last,
        [
            (resolution, "escalation.resolved".to_owned(), "escalation_expired".to_owned()),
            (attempt, "confirmation".to_owned(), "confirmation_expired".to_owned()),
        ]
    );
    export_and_verify(&s, &ws, &az, tmp.path());
}

// ---------------------------------------------------------------------------------------------
// Idempotency-Key on the administrative POSTs; listing authorizations; a confirmation's state.

/// Every byte under `dir` (RocksDB's WAL and tables included).
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(bytes_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

#[test]
fn admin_posts_honour_idempotency_keys_and_a_repeated_key_creation_returns_its_secret_which_is_never_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut s = start(&data_dir);
    let c = s.client();
    let root = s.admin_token();

    // Workspaces: a repeat gets the first answer; another body with the key is a 422.
    let body = json!({ "name": "idem-admin", "scope_rules": { "mail.send": "confirm" } });
    let first_ws = post_with(&c, "/v1/workspaces", &root, &idem("ws-1"), Some(&body));
    assert_eq!(first_ws.status, 201, "{first_ws}");
    let again = post_with(&c, "/v1/workspaces", &root, &idem("ws-1"), Some(&body));
    assert_eq!((again.status, again.text()), (201, first_ws.text()));
    post_with(&c, "/v1/workspaces", &root, &idem("ws-1"), Some(&json!({ "name": "other" })))
        .problem(422, "idempotency_key_reused");
    let ws_id = str_of(&first_ws.json(), "id").to_owned();

    // API keys: 8 concurrent duplicates → one key; the repeat carries the same secret, and it works.
    let keys_path = format!("/v1/workspaces/{ws_id}/api-keys");
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (barrier, root, path) = (barrier.clone(), root.clone(), keys_path.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post_with(&c, &path, &root, &idem("key-1"), Some(&json!({ "roles": ["admin"] })))
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let first_key = answers[0].text();
    for r in &answers {
        assert_eq!((r.status, r.text()), (201, first_key.clone()), "concurrent duplicates differ");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let key = answers[0].json();
    let admin = str_of(&key, "secret").to_owned();
    assert_eq!(c.get(&format!("/v1/workspaces/{ws_id}"), Some(&admin)).status, 200);
    post_with(&c, &keys_path, &root, &idem("key-1"), Some(&json!({ "roles": ["read"] })))
        .problem(422, "idempotency_key_reused");
    // The workspace's own admin key using the same Idempotency-Key is another caller: 422, not
    // the root's answer.
    post_with(&c, &keys_path, &admin, &idem("key-1"), Some(&json!({ "roles": ["admin"] })))
        .problem(422, "idempotency_key_reused");

    // Revoking a key and webhook endpoints: repeats get the first answer.
    let reader = post_with(&c, &keys_path, &admin, &[], Some(&json!({ "roles": ["read"] }))).created("key");
    let revoke = format!("{keys_path}/{}/revoke", str_of(&reader, "id"));
    let revoked = post_with(&c, &revoke, &admin, &idem("rev-1"), None);
    assert_eq!(revoked.status, 200, "{revoked}");
    let again = post_with(&c, &revoke, &admin, &idem("rev-1"), None);
    assert_eq!((again.status, again.text()), (200, revoked.text()));
    c.call("POST", &revoke, Some(&admin), None).problem(409, "conflict");
    let hook_body = json!({ "url": "https://example.com/hook", "events": ["escalation.requested"] });
    let hook = post_with(&c, "/v1/webhooks", &admin, &idem("hook-1"), Some(&hook_body));
    assert_eq!(hook.status, 201, "{hook}");
    let again = post_with(&c, "/v1/webhooks", &admin, &idem("hook-1"), Some(&hook_body));
    assert_eq!((again.status, again.text()), (201, hook.text()));
    let hooks = c.get("/v1/webhooks", Some(&admin)).json();
    assert_eq!(hooks["data"].as_array().unwrap().len(), 1, "a repeat made a second endpoint: {hooks}");

    // No secret made here is in the data directory in clear (API keys are stored hashed; the
    // repeat's copy is sealed under the caller's secret).
    let stored = bytes_under(&data_dir);
    for secret in [&admin, str_of(&reader, "secret")] {
        let hex = &secret[4..];
        assert!(
            !stored.windows(hex.len()).any(|w| w == hex.as_bytes()),
            "an API key secret is stored in clear under {}",
            data_dir.display()
        );
    }

    // After kill -9 and a restart, every repeat still gets its first answer.
    s.kill9();
    let s = start(&data_dir);
    let c = s.client();
    let again = post_with(&c, "/v1/workspaces", &root, &idem("ws-1"), Some(&body));
    assert_eq!((again.status, again.text()), (201, first_ws.text()));
    let again = post_with(&c, &keys_path, &root, &idem("key-1"), Some(&json!({ "roles": ["admin"] })));
    assert_eq!((again.status, again.text()), (201, first_key));
    let again = post_with(&c, &revoke, &admin, &idem("rev-1"), None);
    assert_eq!((again.status, again.text()), (200, revoked.text()));
}

#[test]
fn authorizations_are_listed_and_a_confirmations_state_can_be_read_only_by_its_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("data"));
    let c = s.client();
    let a = workspace(&s, "list-a", json!({ "mail.send": "confirm" }));
    let b = workspace(&s, "list-b", json!({}));
    let mut ids: Vec<String> = (0..5)
        .map(|i| grant(&s, &a, json!({ "subject": format!("user-{}", i % 2), "scopes": ["mail.*"] })).0)
        .collect();
    grant(&s, &b, json!({ "subject": "user-0", "scopes": ["mail.*"] }));
    let revoked = ids[1].clone();
    let r = c.call("POST", &format!("/v1/authorizations/{revoked}/revoke"), Some(&a.admin), None);
    assert_eq!(r.status, 200, "{r}");
    ids.sort();

    // Pages of 2 chain to every authorization of A, in id order.
    let mut seen = Vec::new();
    let mut path = "/v1/authorizations?limit=2".to_owned();
    loop {
        let r = c.get(&path, Some(&a.reader));
        assert_eq!(r.status, 200, "{r}");
        let page = r.json();
        seen.extend(page["data"].as_array().unwrap().iter().map(|v| str_of(v, "id").to_owned()));
        match page["next_cursor"].as_str() {
            Some(cur) => path = format!("/v1/authorizations?limit=2&starting_after={cur}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let count = |q: &str, key: &str| {
        c.get(&format!("/v1/authorizations?{q}"), Some(key)).json()["data"].as_array().unwrap().len()
    };
    assert_eq!(count("subject=user-0", &a.reader), 3);
    assert_eq!(count("status=revoked", &a.reader), 1);
    assert_eq!(count("subject=user-1&status=active", &a.reader), 1);
    assert_eq!(count("", &b.reader), 1, "B sees only its own");
    c.get("/v1/authorizations?status=gone", Some(&a.reader)).problem(400, "invalid_request");
    c.get("/v1/authorizations?limit=0", Some(&a.reader)).problem(400, "invalid_request");
    c.get("/v1/authorizations?starting_after=a.b", Some(&a.reader)).problem(400, "invalid_request");
    c.get("/v1/authorizations?colour=red", Some(&a.reader)).problem(400, "invalid_request");
    c.get("/v1/authorizations", Some(&a.checker)).problem(403, "forbidden");

    // A confirmation's state: pending, then answered with its decision and receipt.
    let az = ids.iter().find(|id| **id != revoked).unwrap();
    let out = check(&s, &a, az, "mail.send");
    let nonce = str_of(&out["confirmation"], "nonce").to_owned();
    let path = format!("/v1/confirmations/{nonce}");
    let pending = c.get(&path, Some(&a.reader)).json();
    assert_eq!(
        (pending["status"].as_str(), pending["authorization_id"].as_str()),
        (Some("pending"), Some(az.as_str()))
    );
    assert_eq!(pending["check_receipt_id"], out["receipt"]["receipt_id"]);
    let answer = json!({ "outcome": "declined", "by": "user-0" });
    let r = c.post(&path, &a.admin, answer);
    assert_eq!(r.status, 200, "{r}");
    let shown = c.get(&path, Some(&a.reader)).json();
    assert_eq!((shown["status"].as_str(), shown["decision"].as_str()), (Some("answered"), Some("deny")), "{shown}");
    assert_eq!(shown["answer_receipt_id"], r.json()["receipt"]["receipt_id"]);
    // Another workspace's nonce answers like one that exists nowhere.
    c.get(&path, Some(&b.reader)).problem(404, "not_found");
    c.get("/v1/confirmations/cn_00000000000000000000000000000000", Some(&a.reader)).problem(404, "not_found");
    c.get(&path, Some(&a.checker)).problem(403, "forbidden");
}

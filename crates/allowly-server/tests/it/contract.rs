//! The receipt contract (format 1.1, `docs/receipt-format.md`) end to end, black-box: what the
//! real `allowly` writes, checked by all three verifiers — the real `allowly-verify` and the
//! independent Python and Node verifiers of `tests/crosslang`, which know only the spec.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;
use serde_json::{json, Value};

fn start(data_dir: &Path) -> Server {
    let s = Server::start(data_dir);
    s.wait_ready();
    s
}

pub(crate) fn crosslang(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/crosslang").join(script)
}

pub(crate) fn python() -> PathBuf {
    std::env::var_os("ALLOWLY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/allowly/venv"))
        .join("bin/python")
}

/// `<verifier> receipt|bundle FILE --keys KEYS` with each of the three verifiers; every one
/// must exit 0 (valid).
fn all_three_accept(what: &str, file: &Path, keys: &Path) {
    let mut runs = vec![Command::new(verifier_bin())];
    runs.push(Command::new(python()));
    runs.last_mut().unwrap().arg(crosslang("verify.py"));
    runs.push(Command::new("node"));
    runs.last_mut().unwrap().arg(crosslang("verify.mjs"));
    for mut cmd in runs {
        cmd.arg(what).arg(file).arg("--keys").arg(keys);
        let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e} (run scripts/setup.sh)"));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{cmd:?} refused it\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// How many decisions each of the three verifiers re-derived from the log export `file`
/// (semantic verification, §7.4, on by default for a log export); each must find it valid.
fn decisions_judged_by_all_three(file: &Path, keys: &Path) -> [u64; 3] {
    let out = Command::new(verifier_bin()).args(["bundle", "--json", "--keys"]).arg(keys).arg(file).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!((out.status.code(), &report["outcome"]), (Some(0), &json!("valid")), "{report:#}");
    let rust = report["decisions_checked"].as_u64().unwrap_or_else(|| panic!("not judged: {report:#}"));
    let judged = |mut cmd: Command, script: &str| {
        let out = cmd.arg(crosslang(script)).arg("bundle").arg(file).arg("--keys").arg(keys).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{script}: {stdout}");
        let line = stdout.lines().find_map(|l| l.strip_prefix("note: decisions re-derived from the log: "));
        line.and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("{script} did not judge: {stdout}"))
    };
    [rust, judged(Command::new(python()), "verify.py"), judged(Command::new("node"), "verify.mjs")]
}

/// The receipt `id`, once signed.
fn signed_receipt(s: &Server, key: &str, id: &str) -> Value {
    let c = s.client();
    eventually(
        &format!("receipt {id} to be signed"),
        || s.diagnostics(),
        || {
            let r = c.get(&format!("/v1/receipts/{id}"), Some(key));
            assert_eq!(r.status, 200, "{r}");
            let v = r.json();
            (v["status"] == "signed").then_some(v)
        },
    )
}

/// Every decision has a receipt (issue 13 part 2): a check naming an authorization the
/// workspace does not have — a typo, or another workspace's id — is denied and recorded as a
/// workspace event that names the id asked for. It is in the workspace's log (a log export
/// verifies with all three verifiers), in no trail, and never in the other workspace's log.
#[test]
fn a_check_of_an_unknown_authorization_leaves_a_receipt_that_all_three_verifiers_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("data"));
    let c = s.client();
    let a = tenant(&s, "A", &["files.read"]);
    let b = tenant(&s, "B", &["files.read"]);

    let mut probes = Vec::new();
    for (asked, resource) in [(b.az.as_str(), Some("doc:1")), ("au_typo", None)] {
        let mut req = json!({ "authorization_id": asked, "scopes": ["files.read"], "context": {"tool": "probe"} });
        if let Some(r) = resource {
            req["resource"] = json!(r);
        }
        let r = c.post("/v1/check", &a.checker, req);
        assert_eq!(r.status, 200, "{r}");
        let v = r.json();
        assert_eq!((v["decision"].as_str(), v["reason"].as_str()), (Some("deny"), Some("unknown_authorization")));
        let body = &v["receipt"]["body"];
        assert_eq!(v["receipt"]["status"], "pending", "{v}");
        assert_eq!(body["kind"], "check", "{v}");
        assert_eq!(body["workspace_id"], a.ws.as_str(), "{v}");
        assert_eq!(body["asked_authorization_id"], asked, "{v}");
        assert_eq!(body["scopes"], json!(["files.read"]), "{v}");
        assert_eq!(body["resource"], json!(resource), "{v}");
        for null in ["authorization_id", "seq", "prev", "auth_state_hash"] {
            assert!(body[null].is_null(), "{null} is set: {v}");
        }
        assert!(body["context_hash"].is_string(), "{v}");
        probes.push(v["receipt"]["receipt_id"].as_str().unwrap().to_owned());
    }

    // B's authorization was not touched: its trail is its grant alone, and B's log does not
    // hold the probe.
    let trail = c.get(&format!("/v1/authorizations/{}", b.az), Some(&b.reader)).json();
    assert_eq!(trail["trail_length"], 1, "{trail}");
    c.get(&format!("/v1/receipts/{}", probes[0]), Some(&b.reader)).problem(404, "not_found");

    // Signed, the receipts verify alone and in a log export, with all three verifiers.
    let keys = c.get(&format!("/v1/workspaces/{}/keys", a.ws), None);
    assert_eq!(keys.status, 200, "{keys}");
    let keys_file = tmp.path().join("keys.json");
    std::fs::write(&keys_file, &keys.body).unwrap();
    for id in &probes {
        let signed = signed_receipt(&s, &a.reader, id);
        let file = tmp.path().join(format!("{id}.json"));
        std::fs::write(&file, serde_json::to_vec(&signed).unwrap()).unwrap();
        all_three_accept("receipt", &file, &keys_file);
    }
    let size =
        c.get(&format!("/v1/workspaces/{}/log/checkpoint", a.ws), Some(&a.reader)).json()["size"].as_u64().unwrap();
    let log = c.get(&format!("/v1/workspaces/{}/log/export?from=0&to={size}", a.ws), Some(&a.reader));
    assert_eq!(log.status, 200, "{log}");
    let text = log.text();
    for id in &probes {
        assert!(text.contains(id.as_str()), "the log export lacks {id}");
    }
    let log_file = tmp.path().join("log.jsonl");
    std::fs::write(&log_file, &log.body).unwrap();
    all_three_accept("bundle", &log_file, &keys_file);
    // A's own trail export holds its trail only, and verifies too.
    let trail = c.get(&format!("/v1/authorizations/{}/export", a.az), Some(&a.reader));
    assert_eq!(trail.status, 200, "{trail}");
    assert!(probes.iter().all(|id| !trail.text().contains(id.as_str())));
    let trail_file = tmp.path().join("trail.jsonl");
    std::fs::write(&trail_file, &trail.body).unwrap();
    all_three_accept("bundle", &trail_file, &keys_file);
}

/// One shape (issue 13 part 1): the receipt in an answer (`/v1/check`, a confirmation's or an
/// escalation's answer) is the §6.1 pending envelope, exactly what `GET /v1/receipts/{id}`
/// serves for that receipt until it is signed; signed, the same body, byte for byte, in the
/// signed envelope.
#[test]
fn answers_and_get_receipt_carry_the_receipt_in_one_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("data"));
    let c = s.client();
    let t = tenant(&s, "A", &["files.read"]);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }));
        assert_eq!(r.status, 200, "{r}");
        answers.push(r.json()["receipt"].clone());
    }
    let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": "au_unknown", "scopes": ["files.read"] }));
    answers.push(r.json()["receipt"].clone());
    for receipt in &answers {
        let members: Vec<&str> = receipt.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(members, ["body", "leaf_hash", "log_index", "receipt_id", "status"], "{receipt}");
        let id = receipt["receipt_id"].as_str().unwrap();
        let got = c.get(&format!("/v1/receipts/{id}"), Some(&t.reader));
        assert_eq!(got.status, 200, "{got}");
        let got = got.json();
        if got["status"] == "pending" {
            assert_eq!(&got, receipt, "GET serves another shape than the answer");
        }
        let signed = signed_receipt(&s, &t.reader, id);
        assert_eq!(signed["body"], receipt["body"], "{signed}");
        assert_eq!(signed["log_index"], receipt["log_index"], "{signed}");
    }
}

/// Policy changes are receipts (issue 13 part 3): `PUT …/scope-rules` answers with the
/// workspace and the receipt of the change — a `scope_rules.changed` workspace event holding
/// the whole new rule set — which all three verifiers accept, alone and in the log export,
/// where it precedes the decisions made under it.
#[test]
fn a_scope_rules_change_is_a_receipt_that_all_three_verifiers_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("data"));
    let c = s.client();
    let t = tenant(&s, "A", &["mail.*"]);
    let rules = json!({ "mail.send": "confirm", "payments.*": "escalate" });
    let r = c.call(
        "PUT",
        &format!("/v1/workspaces/{}/scope-rules", t.ws),
        Some(&t.admin),
        Some(&json!({ "scope_rules": rules })),
    );
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!(v["scope_rules"], rules, "{v}");
    let body = &v["receipt"]["body"];
    assert_eq!((body["kind"].as_str(), &body["scope_rules"]), (Some("scope_rules.changed"), &rules), "{v}");
    for null in ["authorization_id", "seq", "prev", "decision"] {
        assert!(body[null].is_null(), "{null} is set: {v}");
    }
    let change = v["receipt"]["receipt_id"].as_str().unwrap().to_owned();
    let change_index = v["receipt"]["log_index"].as_u64().unwrap();
    let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["mail.send"] }));
    let v = r.json();
    assert_eq!(v["decision"], "confirm", "{r}");
    assert!(v["receipt"]["log_index"].as_u64().unwrap() > change_index, "{v}");
    // Decisions of every kind the log can justify (§7.4): the confirmation approved, an allow
    // no rule concerns, a deny the grant gives, and after the revocation a deny.
    let nonce = v["confirmation"]["nonce"].as_str().unwrap().to_owned();
    let answer = json!({ "outcome": "approved", "by": "user-1", "shown": "Send the mail?" });
    let r = c.post(&format!("/v1/confirmations/{nonce}"), &t.admin, answer);
    assert_eq!((r.status, &r.json()["decision"]), (200, &json!("allow")), "{r}");
    for (scope, decision) in [("mail.read", "allow"), ("payments.send", "deny")] {
        let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": [scope] }));
        assert_eq!(r.json()["decision"], decision, "{r}");
    }
    let r = c.call("POST", &format!("/v1/authorizations/{}/revoke", t.az), Some(&t.admin), None);
    assert_eq!(r.status, 200, "{r}");
    let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["mail.read"] }));
    assert_eq!((r.json()["decision"].as_str(), r.json()["reason"].as_str()), (Some("deny"), Some("revoked")), "{r}");
    let last = r.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned();

    let keys_file = tmp.path().join("keys.json");
    std::fs::write(&keys_file, c.get(&format!("/v1/workspaces/{}/keys", t.ws), None).body).unwrap();
    let signed = signed_receipt(&s, &t.reader, &change);
    let file = tmp.path().join("change.json");
    std::fs::write(&file, serde_json::to_vec(&signed).unwrap()).unwrap();
    all_three_accept("receipt", &file, &keys_file);
    // The log up to the last decision, signed.
    let size = signed_receipt(&s, &t.reader, &last)["body"]["log_index"].as_u64().unwrap() + 1;
    let log = c.get(&format!("/v1/workspaces/{}/log/export?from=0&to={size}", t.ws), Some(&t.reader));
    assert_eq!(log.status, 200, "{log}");
    assert!(log.text().contains(&change) && log.text().contains(&last), "the log export lacks the change");
    let log_file = tmp.path().join("log.jsonl");
    std::fs::write(&log_file, &log.body).unwrap();
    all_three_accept("bundle", &log_file, &keys_file);
    // What the real server decided follows from its log, for all three verifiers: the four
    // checks and the answer, each re-derived.
    assert_eq!(decisions_judged_by_all_three(&log_file, &keys_file), [5, 5, 5]);
}

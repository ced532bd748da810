//! The approver inbox and its long-polls, black-box against the real `allowly` binary: pending
//! escalations and confirmations listed (paged, filtered, per tenant, by role), a long-poll
//! that answers within 100 ms of the resolution that ends its wait (measured from the
//! resolution's own answer, never a sleep), the bound on waiters (503 at once, freed when they
//! answer), and the `confirm` answer echoing the check's `context`.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

/// One workspace: an admin, a read and a check key.
struct Ws {
    admin: String,
    reader: String,
    checker: String,
}

fn workspace(s: &Server, name: &str) -> Ws {
    let (c, root) = (s.client(), s.admin_token());
    let rules = json!({ "email.send": "confirm", "payments.*": "escalate" });
    let v = c.post("/v1/workspaces", &root, json!({ "name": name, "scope_rules": rules })).created("workspace");
    let id = v["id"].as_str().unwrap().to_owned();
    let key = |role: &str| {
        let v = c.post(&format!("/v1/workspaces/{id}/api-keys"), &root, json!({ "roles": [role] })).created("key");
        v["secret"].as_str().unwrap().to_owned()
    };
    let (admin, reader, checker) = (key("admin"), key("read"), key("check"));
    Ws { admin, reader, checker }
}

fn grant(s: &Server, ws: &Ws, scopes: &[&str]) -> String {
    let v = s.client().post("/v1/authorizations", &ws.admin, json!({ "subject": "u", "scopes": scopes }));
    v.created("authorization")["authorization"]["id"].as_str().unwrap().to_owned()
}

fn check(s: &Server, ws: &Ws, az: &str, scope: &str, context: Option<Value>) -> Value {
    let mut body = json!({ "authorization_id": az, "scopes": [scope] });
    if let Some(c) = context {
        body["context"] = c;
    }
    let r = s.client().post("/v1/check", &ws.checker, body);
    assert_eq!(r.status, 200, "{r}");
    r.json()
}

/// The ids of a list answer.
fn ids(v: &Value, field: &str) -> Vec<String> {
    v["data"].as_array().unwrap().iter().map(|e| e[field].as_str().unwrap().to_owned()).collect()
}

fn list(s: &Server, key: &str, path: &str) -> Value {
    let r = s.client().get(path, Some(key));
    assert_eq!(r.status, 200, "{path}: {r}");
    r.json()
}

#[test]
fn pending_escalations_and_confirmations_are_listed_paged_filtered_and_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.wait_ready();
    let (a, b) = (workspace(&s, "a"), workspace(&s, "b"));
    let (az1, az2) = (grant(&s, &a, &["payments.*", "email.send"]), grant(&s, &a, &["payments.*"]));
    let e1 = check(&s, &a, &az1, "payments.send", None)["escalation"]["id"].as_str().unwrap().to_owned();
    let e2 = check(&s, &a, &az1, "payments.refund", None)["escalation"]["id"].as_str().unwrap().to_owned();
    let e3 = check(&s, &a, &az2, "payments.send", None)["escalation"]["id"].as_str().unwrap().to_owned();
    let n1 = check(&s, &a, &az1, "email.send", None)["confirmation"]["nonce"].as_str().unwrap().to_owned();

    let mut all = vec![e1.clone(), e2.clone(), e3.clone()];
    all.sort();
    assert_eq!(ids(&list(&s, &a.reader, "/v1/escalations?status=pending"), "id"), all);
    assert_eq!(ids(&list(&s, &a.reader, &format!("/v1/escalations?status=pending&authorization_id={az1}")), "id"), {
        let mut v = vec![e1.clone(), e2.clone()];
        v.sort();
        v
    });
    let by_scope = list(&s, &a.reader, "/v1/escalations?status=pending&scope=payments.refund");
    assert_eq!(ids(&by_scope, "id"), vec![e2.clone()]);
    // Paged like the other lists.
    let first = list(&s, &a.reader, "/v1/escalations?status=pending&limit=2");
    assert_eq!((first["has_more"].as_bool(), ids(&first, "id")), (Some(true), all[..2].to_vec()));
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = list(&s, &a.reader, &format!("/v1/escalations?status=pending&limit=2&starting_after={cursor}"));
    assert_eq!((second["has_more"].as_bool(), ids(&second, "id")), (Some(false), all[2..].to_vec()));
    assert_eq!(ids(&list(&s, &a.reader, "/v1/confirmations?status=pending"), "nonce"), vec![n1.clone()]);

    // Resolved: out of the pending list, in the resolved one.
    let r = s.client().post(
        &format!("/v1/escalations/{e1}/resolve"),
        &a.admin,
        json!({ "outcome": "approved", "by": "x" }),
    );
    assert_eq!(r.status, 200, "{r}");
    assert!(!ids(&list(&s, &a.reader, "/v1/escalations?status=pending"), "id").contains(&e1));
    assert_eq!(ids(&list(&s, &a.reader, "/v1/escalations?status=approved"), "id"), vec![e1.clone()]);

    // Another tenant sees none of it, and its ids are 404s there.
    assert_eq!(ids(&list(&s, &b.reader, "/v1/escalations?status=pending"), "id"), Vec::<String>::new());
    assert_eq!(ids(&list(&s, &b.reader, "/v1/confirmations"), "nonce"), Vec::<String>::new());
    s.client().get(&format!("/v1/escalations/{e2}?wait=1ms"), Some(&b.reader)).problem(404, "not_found");
    s.client().get(&format!("/v1/confirmations/{n1}?wait=1ms"), Some(&b.reader)).problem(404, "not_found");
    // The role of the neighbouring reads (read); an agent's check key may not list.
    s.client().get("/v1/escalations", Some(&a.checker)).problem(403, "forbidden");
    s.client().get("/v1/escalations?status=maybe", Some(&a.reader)).problem(400, "invalid_request");
    s.client().get(&format!("/v1/escalations/{e2}?wait=soon"), Some(&a.reader)).problem(400, "invalid_request");
}

#[test]
fn a_long_poll_answers_within_100_ms_of_the_resolution_and_waiters_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &["--max-long-polls", "2"]);
    s.wait_ready();
    let a = workspace(&s, "a");
    let az = grant(&s, &a, &["payments.*", "email.send"]);
    let esc = check(&s, &a, &az, "payments.send", None)["escalation"]["id"].as_str().unwrap().to_owned();
    let context = json!({ "to": "bob@example.com", "subject": "Q3" });
    let confirm = check(&s, &a, &az, "email.send", Some(context.clone()));
    // The `confirm` answer echoes what to show the user.
    assert_eq!(confirm["confirmation"]["context"], context, "{confirm}");
    let nonce = confirm["confirmation"]["nonce"].as_str().unwrap().to_owned();

    std::thread::scope(|scope| {
        let poll = |path: String| {
            let (c, key) = (s.client(), a.reader.clone());
            scope.spawn(move || {
                // A probe below may hold the last slot for a moment: a refused long-poll asks
                // again (each refusal is immediate), until it waits.
                let start = Instant::now();
                loop {
                    let r = c.get(&path, Some(&key));
                    if r.status != 503 || start.elapsed() > DEADLINE {
                        return (Instant::now(), r);
                    }
                }
            })
        };
        let on_escalation = poll(format!("/v1/escalations/{esc}?wait=30s"));
        let on_confirmation = poll(format!("/v1/confirmations/{nonce}?wait=30s"));
        // Both wait once a third long-poll is refused (the bound is 2): refused at once, 503
        // with Retry-After, not queued. Until then a probe (1 ms) answers and is sent again.
        let refused = eventually(
            "both long-polls to be waiting",
            || s.diagnostics(),
            || {
                let r = s.client().get(&format!("/v1/escalations/{esc}?wait=1ms"), Some(&a.reader));
                (r.status == 503).then_some(r)
            },
        );
        refused.problem(503, "too_many_long_polls");
        assert_eq!(refused.header("retry-after"), Some("1"), "{refused}");

        let r = s.client().post(
            &format!("/v1/escalations/{esc}/resolve"),
            &a.admin,
            json!({ "outcome": "declined", "by": "alice" }),
        );
        let resolved = Instant::now();
        assert_eq!(r.status, 200, "{r}");
        let (answered, r) = on_escalation.join().unwrap();
        assert_eq!(r.status, 200, "{r}");
        assert_eq!((r.json()["status"].as_str(), r.json()["by"].as_str()), (Some("declined"), Some("alice")));
        let late = answered.saturating_duration_since(resolved);
        assert!(late < Duration::from_millis(100), "the long-poll answered {late:?} after the resolution");

        let body = json!({ "outcome": "approved", "by": "bob", "shown": "Send Q3 to bob@example.com?" });
        let r = s.client().post(&format!("/v1/confirmations/{nonce}"), &a.admin, body);
        let confirmed = Instant::now();
        assert_eq!(r.status, 200, "{r}");
        let (answered, r) = on_confirmation.join().unwrap();
        assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("answered")), "{r}");
        assert_eq!(r.json()["decision"], "allow");
        let late = answered.saturating_duration_since(confirmed);
        assert!(late < Duration::from_millis(100), "the long-poll answered {late:?} after the answer");
    });
    // The waiters are gone: a long-poll of something still pending is taken again, and ends
    // with its wait.
    let other = check(&s, &a, &az, "payments.send", None)["escalation"]["id"].as_str().unwrap().to_owned();
    let r = s.client().get(&format!("/v1/escalations/{other}?wait=50ms"), Some(&a.reader));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("pending")), "{r}");
}

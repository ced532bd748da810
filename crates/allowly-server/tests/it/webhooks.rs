//! Outgoing webhooks, black-box: the real `allowly` (short retry schedule) delivers to a real
//! HTTP receiver started by the test — `tests/crosslang/webhook_receiver.py`, which verifies
//! every request with the reference `standardwebhooks` package and logs it — including one that
//! fails, hangs and recovers, one that is down across a `kill -9` of the server, and one that
//! answers 410; endpoint deletion, secret rotation (the receiver verifies with the old and the
//! new secret), manual retries, scope routing of escalations, and the refusal of non-public
//! destinations by default. A failing test prints the server's output and the receiver's log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::*;
use serde_json::{json, Value};

/// A retry schedule short enough for tests: 50 ms doubling to 200 ms, 1 s per attempt; and the
/// receivers run on the loopback, which only this switch allows.
const FAST: &[&str] = &[
    "--webhook-base-backoff-ms",
    "50",
    "--webhook-max-backoff-ms",
    "200",
    "--webhook-attempt-timeout-ms",
    "1000",
    "--webhook-allow-private-networks",
];

const ALL_BUT_SIGNED: [&str; 3] = ["escalation.requested", "escalation.resolved", "authorization.revoked"];

// ---------------------------------------------------------------------------------------------
// The receiver.

fn python() -> PathBuf {
    venv_bin("python")
}

fn receiver_script() -> PathBuf {
    manifest_dir().join("../../tests/crosslang/webhook_receiver.py")
}

/// A running `webhook_receiver.py`; killed on drop (its log is printed if the test fails).
pub(crate) struct Receiver {
    child: Option<Child>,
    log: PathBuf,
}

impl Receiver {
    /// Starts it on `port` with `secret` and the behaviour flags `extra` (`--fail N`, ...).
    pub(crate) fn start(dir: &Path, name: &str, secret: &str, port: u16, extra: &[&str]) -> Self {
        Self::start_with_secrets(dir, name, &[secret], port, extra)
    }

    /// Starts it verifying with each of `secrets` (its log's `verified_by`, in this order).
    fn start_with_secrets(dir: &Path, name: &str, secrets: &[&str], port: u16, extra: &[&str]) -> Self {
        let log = dir.join(format!("{name}.jsonl"));
        let mut cmd = Command::new(python());
        cmd.arg(receiver_script());
        for s in secrets {
            cmd.args(["--secret", s]);
        }
        cmd.arg("--log")
            .arg(&log)
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("listening on http://127.0.0.1:{port}"), "receiver did not start");
        Self { child: Some(child), log }
    }

    /// Every request so far, in arrival order.
    pub(crate) fn records(&self) -> Vec<Value> {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => text.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub(crate) fn dump(&self) -> String {
        format!(
            "--- receiver log {} ---\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The service side.

struct Tenant {
    ws: String,
    admin: String,
    reader: String,
}

/// A server with the short schedule, ready (signer answering).
fn start(dir: &Path) -> Server {
    let s = Server::start_with(&dir.join("data"), FAST);
    s.wait_ready();
    s
}

/// A workspace where `payments.*` escalates, with an admin and a read key.
fn tenant(s: &Server, name: &str) -> Tenant {
    let c = s.client();
    let root = s.admin_token();
    let body = json!({ "name": name, "scope_rules": { "payments.*": "escalate" } });
    let ws = c.post("/v1/workspaces", &root, body).created("workspace")["id"].as_str().unwrap().to_owned();
    let key = |roles: &[&str]| {
        let v = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": roles })).created("key");
        v["secret"].as_str().unwrap().to_owned()
    };
    Tenant { admin: key(&["admin"]), reader: key(&["read"]), ws }
}

/// An authorization for `payments.*` and `mail.read`; returns its id.
fn grant(s: &Server, t: &Tenant) -> String {
    let body = json!({ "subject": "user-1", "scopes": ["payments.*", "mail.read"] });
    s.client().post("/v1/authorizations", &t.admin, body).created("grant")["authorization"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Registers `http://127.0.0.1:{port}/hook` for `events`; returns (id, secret).
fn webhook(s: &Server, t: &Tenant, port: u16, events: &[&str]) -> (String, String) {
    let r = s.client().post(
        "/v1/webhooks",
        &t.admin,
        json!({ "url": format!("http://127.0.0.1:{port}/hook"), "events": events }),
    );
    let v = r.created("webhook");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(format!("/v1/webhooks/{id}").as_str()), "{r}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r}");
    assert_eq!(v["disabled"], false, "{v}");
    assert_eq!(v["events"], json!(events), "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (id, secret)
}

fn revoke(s: &Server, t: &Tenant, az: &str) -> String {
    let r = s.client().call("POST", &format!("/v1/authorizations/{az}/revoke"), Some(&t.admin), None);
    assert_eq!(r.status, 200, "{r}");
    r.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned()
}

/// All deliveries of an endpoint (following the cursor).
fn deliveries(s: &Server, t: &Tenant, webhook: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor.as_ref().map(|c| format!("&starting_after={c}")).unwrap_or_default();
        let r = s.client().get(&format!("/v1/webhooks/{webhook}/deliveries?limit=2{q}"), Some(&t.reader));
        assert_eq!(r.status, 200, "{r}");
        let page = r.json();
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        if page["has_more"] != true {
            return out;
        }
        cursor = Some(page["next_cursor"].as_str().unwrap().to_owned());
    }
}

/// Waits until every delivery of `webhook` is `delivered` (and there are `n`); returns them.
fn all_delivered(s: &Server, t: &Tenant, webhook: &str, n: usize, rx: &Receiver) -> Vec<Value> {
    eventually(
        &format!("{n} deliveries of {webhook} to be delivered"),
        || format!("{}\n{}\ndeliveries: {:#}", s.diagnostics(), rx.dump(), json!(deliveries(s, t, webhook))),
        || {
            let d = deliveries(s, t, webhook);
            (d.len() == n && d.iter().all(|d| d["status"] == "delivered")).then_some(d)
        },
    )
}

/// Checks that every request the receiver got verified; returns the payloads by `webhook-id`.
fn verified_once(rx: &Receiver) -> BTreeMap<String, Value> {
    let mut by_id = BTreeMap::new();
    for r in rx.records().into_iter().filter(|r| r["response"] == 204) {
        assert_eq!(r["verified"], true, "{r}\n{}", rx.dump());
        let id = r["webhook_id"].as_str().unwrap().to_owned();
        assert!(
            by_id.insert(id.clone(), r["payload"].clone()).is_none(),
            "event {id} was delivered twice\n{}",
            rx.dump()
        );
    }
    for r in rx.records() {
        assert_eq!(r["verified"], true, "every request must verify: {r}");
    }
    by_id
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// Escalation requested → resolved, a revocation, and `receipt.signed` to a second endpoint:
/// each event arrives once, verified by `standardwebhooks`, naming the API's receipts.
#[test]
fn events_arrive_once_verified_and_name_the_apis_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let t = tenant(&s, "hooks");
    let c = s.client();
    let (port, signed_port) = (free_port(), free_port());
    let (hook, secret) = webhook(&s, &t, port, &ALL_BUT_SIGNED);
    let (signed_hook, signed_secret) = webhook(&s, &t, signed_port, &["receipt.signed"]);
    let rx = Receiver::start(tmp.path(), "events", &secret, port, &[]);
    let signed_rx = Receiver::start(tmp.path(), "signed", &signed_secret, signed_port, &[]);

    let az = grant(&s, &t);
    // An allow makes no event; an escalate makes one.
    let allow = c.post("/v1/check", &t.admin, json!({ "authorization_id": az, "scopes": ["mail.read"] }));
    assert_eq!(allow.json()["decision"], "allow", "{allow}");
    let esc = c.post(
        "/v1/check",
        &t.admin,
        json!({ "authorization_id": az, "scopes": ["payments.send"], "resource": "inv:7" }),
    );
    let esc = esc.json();
    assert_eq!(esc["decision"], "escalate", "{esc}");
    let (esc_id, esc_receipt) = (esc["escalation"]["id"].as_str().unwrap(), esc["receipt"]["receipt_id"].clone());
    let answer = json!({ "outcome": "approved", "by": "boss" });
    let resolved = c.post(&format!("/v1/escalations/{esc_id}/resolve"), &t.admin, answer);
    assert_eq!(resolved.status, 200, "{resolved}");
    let resolved_receipt = resolved.json()["receipt"]["receipt_id"].clone();
    let revoked_receipt = revoke(&s, &t, &az);

    let ds = all_delivered(&s, &t, &hook, 3, &rx);
    let got = verified_once(&rx);
    assert_eq!(got.len(), 3, "{}", rx.dump());
    // Every delivery's event arrived, under its event id, exactly as the API shows it.
    for d in &ds {
        let id = d["event_id"].as_str().unwrap();
        assert_eq!(got.get(id), Some(&d["payload"]), "{d:#}");
        assert_eq!((d["attempts"].as_u64(), d["last_status_code"].as_u64()), (Some(1), Some(204)), "{d:#}");
    }
    // Newest first.
    let types: Vec<_> = ds.iter().map(|d| d["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["authorization.revoked", "escalation.resolved", "escalation.requested"]);
    let by_type: BTreeMap<&str, &Value> = got.values().map(|p| (p["type"].as_str().unwrap(), p)).collect();
    let requested = &by_type["escalation.requested"]["data"];
    assert_eq!(
        (requested["escalation_id"].as_str(), &requested["receipt"]["receipt_id"]),
        (Some(esc_id), &esc_receipt)
    );
    assert_eq!(
        (requested["workspace_id"].as_str(), requested["authorization_id"].as_str()),
        (Some(t.ws.as_str()), Some(az.as_str()))
    );
    assert_eq!(requested["receipt"]["body"]["kind"], "check", "{requested}");
    let res = &by_type["escalation.resolved"]["data"];
    assert_eq!((res["status"].as_str(), res["decision"].as_str()), (Some("approved"), Some("allow")), "{res}");
    assert_eq!(res["receipt"]["receipt_id"], resolved_receipt);
    let rev = &by_type["authorization.revoked"]["data"];
    assert_eq!(rev["receipt"]["receipt_id"], revoked_receipt.as_str());
    // A delivery by id, with its attempt.
    let one = c.get(&format!("/v1/deliveries/{}", ds[0]["id"].as_str().unwrap()), Some(&t.reader));
    assert_eq!(one.json(), ds[0], "{one}");

    // receipt.signed: the signed ranges tile the whole log (each announced once: no overlap),
    // and each checkpoint is one the API serves.
    let log_size = 5; // grant, allow, escalate, resolution, revocation
    let events = eventually(
        "receipt.signed events to tile the log",
        || format!("{}\n{}", s.diagnostics(), signed_rx.dump()),
        || {
            let got = verified_once(&signed_rx);
            let mut ranges: Vec<(u64, u64)> = got
                .values()
                .map(|p| (p["data"]["from_log_index"].as_u64().unwrap(), p["data"]["tree_size"].as_u64().unwrap()))
                .collect();
            ranges.sort();
            let mut at = 0;
            for (from, to) in &ranges {
                assert!(*from >= at && to > from, "overlapping or empty ranges: {ranges:?}");
                if *from != at {
                    return None; // a range still on its way
                }
                at = *to;
            }
            (at == log_size).then_some(got)
        },
    );
    for p in events.values() {
        assert_eq!(p["type"], "receipt.signed");
        let size = p["data"]["tree_size"].as_u64().unwrap();
        let r = c.get(&format!("/v1/workspaces/{}/log/inclusion?log_index=0&tree_size={size}", t.ws), Some(&t.reader));
        assert_eq!(r.json()["checkpoint"], p["data"]["checkpoint"], "{r}");
    }
    all_delivered(&s, &t, &signed_hook, events.len(), &signed_rx);
    // Nothing else arrived at the first endpoint meanwhile.
    assert_eq!(rx.records().len(), 3, "{}", rx.dump());
}

/// A receiver that fails twice (500), then hangs past the attempt timeout, then recovers: the
/// API shows every failed attempt and the event is finally delivered, once.
#[test]
fn a_failing_then_hanging_receiver_gets_the_event_once_it_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let t = tenant(&s, "flaky");
    let port = free_port();
    let (hook, secret) = webhook(&s, &t, port, &["authorization.revoked"]);
    let rx = Receiver::start(tmp.path(), "flaky", &secret, port, &["--fail", "2", "--hang", "1", "--hang-secs", "3"]);
    let az = grant(&s, &t);
    let receipt = revoke(&s, &t, &az);

    let ds = all_delivered(&s, &t, &hook, 1, &rx);
    let d = &ds[0];
    assert_eq!(d["attempts"], 4, "{d:#}");
    let log = d["attempt_log"].as_array().unwrap();
    let codes: Vec<_> = log.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), Value::Null, json!(204)], "{d:#}");
    assert!(log[0]["error"].as_str().unwrap().starts_with("HTTP 500"), "{d:#}");
    assert!(log[2]["error"].as_str().unwrap().contains("no answer within 1000 ms"), "{d:#}");
    assert_eq!(log[3]["error"], Value::Null, "{d:#}");
    assert!(d["delivered_at"].is_string() && d["next_attempt_at"].is_null(), "{d:#}");

    // The receiver saw the same event four times (same webhook-id, each signature valid for its
    // own timestamp) and accepted it once.
    let records = rx.records();
    let responses: Vec<_> = records.iter().map(|r| r["response"].clone()).collect();
    assert_eq!(responses, [json!(500), json!(500), json!("hang"), json!(204)], "{}", rx.dump());
    assert!(records.iter().all(|r| r["webhook_id"] == d["event_id"]), "{}", rx.dump());
    let got = verified_once(&rx);
    assert_eq!(got[d["event_id"].as_str().unwrap()]["data"]["receipt"]["receipt_id"], receipt.as_str());
}

/// Events enqueued while the receiver is down survive a `kill -9` of the server: after a
/// restart every one is delivered, once.
#[test]
fn pending_deliveries_survive_kill_9_of_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = start(tmp.path());
    let t = tenant(&s, "durable");
    let port = free_port();
    let (hook, secret) = webhook(&s, &t, port, &ALL_BUT_SIGNED);
    let c = s.client();
    // Three revocations and an escalation, with nobody listening.
    for _ in 0..3 {
        let az = grant(&s, &t);
        revoke(&s, &t, &az);
    }
    let az = grant(&s, &t);
    let esc = c.post("/v1/check", &t.admin, json!({ "authorization_id": az, "scopes": ["payments.send"] }));
    assert_eq!(esc.json()["decision"], "escalate", "{esc}");
    // Wait until every delivery has failed at least once (connection refused), then kill.
    let before = eventually(
        "every delivery to have failed at least once",
        || s.diagnostics(),
        || {
            let d = deliveries(&s, &t, &hook);
            (d.len() == 4 && d.iter().all(|d| d["status"] == "pending" && d["attempts"].as_u64() >= Some(1)))
                .then_some(d)
        },
    );
    assert!(before[0]["last_error"].as_str().is_some(), "{:#}", before[0]);
    s.kill9();

    let s = Server::start_with(&tmp.path().join("data"), FAST);
    s.wait_ready();
    let rx = Receiver::start(tmp.path(), "durable", &secret, port, &[]);
    let after = all_delivered(&s, &t, &hook, 4, &rx);
    let got = verified_once(&rx);
    let expected: BTreeSet<_> = before.iter().map(|d| d["event_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected, "{}", rx.dump());
    assert_eq!(rx.records().len(), 4, "each event exactly once\n{}", rx.dump());
    for d in &after {
        assert!(d["attempts"].as_u64() >= Some(2), "failed before the kill, delivered after: {d:#}");
    }
}

/// A 410 disables the endpoint: its delivery fails as `gone`, the endpoint shows disabled, and
/// later events make no delivery to it.
#[test]
fn a_410_disables_the_endpoint_and_nothing_more_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let t = tenant(&s, "gone");
    let c = s.client();
    let port = free_port();
    let (hook, secret) = webhook(&s, &t, port, &["authorization.revoked"]);
    let rx = Receiver::start(tmp.path(), "gone", &secret, port, &["--gone"]);
    let first = grant(&s, &t);
    revoke(&s, &t, &first);

    let d = eventually(
        "the delivery to fail as gone",
        || format!("{}\n{}", s.diagnostics(), rx.dump()),
        || {
            let d = deliveries(&s, &t, &hook);
            (d.len() == 1 && d[0]["status"] == "failed").then(|| d[0].clone())
        },
    );
    assert_eq!(
        (d["failure"].as_str(), d["attempts"].as_u64(), d["last_status_code"].as_u64()),
        (Some("gone"), Some(1), Some(410)),
        "{d:#}"
    );
    let list = c.get("/v1/webhooks", Some(&t.reader)).json();
    let view = &list["data"][0];
    assert_eq!(
        (view["id"].as_str(), &view["disabled"], &view["disabled_reason"]),
        (Some(hook.as_str()), &json!(true), &json!("gone")),
        "{list}"
    );
    assert!(view["disabled_at"].is_string() && view.get("secret").is_none(), "{list}");

    // The endpoint was disabled before the delivery was marked failed, so a later event sees it.
    let second = grant(&s, &t);
    revoke(&s, &t, &second);
    assert_eq!(deliveries(&s, &t, &hook).len(), 1);
    assert_eq!(rx.records().len(), 1, "{}", rx.dump());
    assert_eq!(rx.records()[0]["response"], 410);

    // It can be enabled again by an admin.
    let r = c.call("POST", &format!("/v1/webhooks/{hook}/enable"), Some(&t.admin), None);
    assert_eq!(
        (r.status, r.json()["disabled"].clone(), r.json()["disabled_reason"].clone()),
        (200, json!(false), Value::Null),
        "{r}"
    );
}

/// Registration is validated, needs `admin`, and endpoints and deliveries are invisible to
/// other workspaces.
#[test]
fn webhook_requests_are_validated_authorized_and_isolated() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let (a, b) = (tenant(&s, "a"), tenant(&s, "b"));
    let c = s.client();
    let port = free_port();
    let (hook, secret) = webhook(&s, &a, port, &["authorization.revoked"]);
    let rx = Receiver::start(tmp.path(), "iso", &secret, port, &[]);
    let az = grant(&s, &a);
    revoke(&s, &a, &az);
    let delivery = all_delivered(&s, &a, &hook, 1, &rx)[0]["id"].as_str().unwrap().to_owned();

    let bad = [
        json!({ "url": "ftp://example.com/x", "events": ["receipt.signed"] }),
        json!({ "url": "http://user:pw@example.com/x", "events": ["receipt.signed"] }),
        json!({ "url": format!("https://example.com/{}", "a".repeat(2048)), "events": ["receipt.signed"] }),
        json!({ "url": "not a url", "events": ["receipt.signed"] }),
        json!({ "url": "https://example.com/x", "events": [] }),
        json!({ "url": "https://example.com/x", "events": ["user.created"] }),
        json!({ "url": "https://example.com/x", "events": ["receipt.signed", "receipt.signed"] }),
        json!({ "events": ["receipt.signed"] }),
    ];
    for body in bad {
        c.post("/v1/webhooks", &a.admin, body.clone()).problem(400, "invalid_request");
    }
    let own_secret = json!({ "url": "https://example.com/x", "events": ["receipt.signed"], "secret": "mine" });
    c.post("/v1/webhooks", &a.admin, own_secret).problem(400, "unknown_field");
    let ok = json!({ "url": "https://example.com/x", "events": ["receipt.signed"] });
    c.post("/v1/webhooks", &a.reader, ok.clone()).problem(403, "forbidden");

    // Another workspace sees none of it, and cannot change it.
    for path in [
        format!("/v1/webhooks/{hook}"),
        format!("/v1/webhooks/{hook}/deliveries"),
        format!("/v1/deliveries/{delivery}"),
    ] {
        c.get(&path, Some(&b.reader)).problem(404, "not_found");
        assert_eq!(c.get(&path, Some(&a.reader)).status, 200, "{path}");
    }
    c.call("POST", &format!("/v1/webhooks/{hook}/disable"), Some(&b.admin), None).problem(404, "not_found");
    assert_eq!(c.get("/v1/webhooks", Some(&b.reader)).json()["data"], json!([]));
    c.get(&format!("/v1/webhooks/{hook}/deliveries?starting_after=dl_other"), Some(&a.reader))
        .problem(400, "invalid_request");

    // Disabling is an admin's, idempotent, and shown.
    c.call("POST", &format!("/v1/webhooks/{hook}/disable"), Some(&a.reader), None).problem(403, "forbidden");
    for _ in 0..2 {
        let r = c.call("POST", &format!("/v1/webhooks/{hook}/disable"), Some(&a.admin), None);
        assert_eq!(
            (r.status, r.json()["disabled"].clone(), r.json()["disabled_reason"].clone()),
            (200, json!(true), json!("api")),
            "{r}"
        );
    }
    let az = grant(&s, &a);
    revoke(&s, &a, &az);
    assert_eq!(deliveries(&s, &a, &hook).len(), 1, "a disabled endpoint gets no new delivery");

    // The worker's metrics are on /metrics.
    let m = c.get("/metrics", None).text();
    assert!(m.lines().any(|l| l == r#"allowly_webhook_attempts_total{result="delivered"} 1"#), "{m}");
}

/// A POST with a JSON body and an `Idempotency-Key`.
fn keyed_post(c: &Client, path: &str, key: &str, idem: &str, body: &Value) -> Resp {
    let headers = [
        ("Authorization".to_owned(), format!("Bearer {key}")),
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Idempotency-Key".to_owned(), idem.to_owned()),
    ];
    c.request("POST", path, &headers, Some(body.to_string().as_bytes()))
}

/// Waits until `webhook`'s only delivery has failed at least once and is still pending.
fn failing(s: &Server, t: &Tenant, webhook: &str) -> Value {
    eventually(
        "a delivery that failed at least once",
        || format!("{}\ndeliveries: {:#}", s.diagnostics(), json!(deliveries(s, t, webhook))),
        || {
            let d = deliveries(s, t, webhook);
            (d.len() == 1 && d[0]["status"] == "pending" && d[0]["attempts"].as_u64() >= Some(1)).then(|| d[0].clone())
        },
    )
}

/// `DELETE /v1/webhooks/{id}`: 204, its pending delivery becomes `cancelled` (still readable),
/// it gets nothing more — not even at its old address once a receiver listens there — and a
/// second delete, or another workspace's, is a 404.
#[test]
fn deleting_an_endpoint_cancels_its_pending_deliveries_and_nothing_more_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let (t, other) = (tenant(&s, "del"), tenant(&s, "other"));
    let c = s.client();
    let (port, witness_port) = (free_port(), free_port());
    let (hook, secret) = webhook(&s, &t, port, &["authorization.revoked"]);
    let (witness, witness_secret) = webhook(&s, &t, witness_port, &["authorization.revoked"]);
    // Nobody listens yet: the delivery keeps failing and stays pending.
    let az = grant(&s, &t);
    revoke(&s, &t, &az);
    let pending = failing(&s, &t, &hook);
    let path = format!("/v1/webhooks/{hook}");

    let r = c.call("PUT", &path, Some(&t.admin), None);
    r.problem(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, DELETE"), "{r}");
    c.call("DELETE", &path, Some(&t.reader), None).problem(403, "forbidden");
    c.call("DELETE", &path, Some(&other.admin), None).problem(404, "not_found");
    let r = c.call("DELETE", &path, Some(&t.admin), None);
    assert_eq!((r.status, r.body.len()), (204, 0), "{r}");
    c.call("DELETE", &path, Some(&t.admin), None).problem(404, "not_found");
    c.get(&path, Some(&t.reader)).problem(404, "not_found");
    c.get(&format!("{path}/deliveries"), Some(&t.reader)).problem(404, "not_found");
    let list = c.get("/v1/webhooks", Some(&t.reader)).json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["id"], witness.as_str());

    let by_id = format!("/v1/deliveries/{}", pending["id"].as_str().unwrap());
    // Cancelled by the deletion, or — when an attempt was in flight meanwhile — by the worker
    // as that attempt ends.
    let d = eventually(
        "the pending delivery to be cancelled",
        || s.diagnostics(),
        || Some(c.get(&by_id, Some(&t.reader)).json()).filter(|d| d["status"] == "cancelled"),
    );
    assert_eq!(d["next_attempt_at"], Value::Null, "{d:#}");
    assert!(d["cancelled_at"].is_string() && d["attempts"].as_u64() >= Some(1), "history stays: {d:#}");

    // A receiver at the old address and a new event: only the other endpoint gets anything.
    let rx = Receiver::start(tmp.path(), "deleted", &secret, port, &[]);
    let wrx = Receiver::start(tmp.path(), "witness", &witness_secret, witness_port, &[]);
    let az = grant(&s, &t);
    revoke(&s, &t, &az);
    all_delivered(&s, &t, &witness, 2, &wrx);
    assert!(rx.records().is_empty(), "the deleted endpoint got a request\n{}", rx.dump());
    assert_eq!(c.get(&by_id, Some(&t.reader)).json()["status"], "cancelled");
}

/// Without `--webhook-allow-private-networks`: IP literals in non-public ranges are refused at
/// registration, and a name that resolves to the loopback fails every attempt with
/// `destination_not_allowed` — retried like any failure — while the receiver listening there
/// gets nothing.
#[test]
fn non_public_destinations_are_refused_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let without_switch: Vec<&str> = FAST.iter().copied().filter(|a| *a != "--webhook-allow-private-networks").collect();
    let s = Server::start_with(&tmp.path().join("data"), &without_switch);
    s.wait_ready();
    let t = tenant(&s, "ssrf");
    let c = s.client();
    let port = free_port();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.1.2.3/hook".to_owned(),
        "http://192.168.0.10/hook".to_owned(),
        "http://100.64.0.1/hook".to_owned(),
        "http://[fd00::1]/hook".to_owned(),
        "http://[fe80::1]/hook".to_owned(),
    ] {
        let p = c.post("/v1/webhooks", &t.admin, json!({ "url": url, "events": ["authorization.revoked"] }));
        let p = p.problem(400, "destination_not_allowed");
        assert!(p["detail"].as_str().unwrap().contains("not a public address"), "{url}: {p}");
    }
    assert_eq!(c.get("/v1/webhooks", Some(&t.reader)).json()["data"], json!([]));

    let body = json!({ "url": format!("http://localhost:{port}/hook"), "events": ["authorization.revoked"] });
    let v = c.post("/v1/webhooks", &t.admin, body).created("webhook by name");
    let (hook, secret) = (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned());
    let rx = Receiver::start(tmp.path(), "ssrf", &secret, port, &[]);
    let az = grant(&s, &t);
    revoke(&s, &t, &az);
    let d = eventually(
        "two refused attempts",
        || format!("{}\ndeliveries: {:#}", s.diagnostics(), json!(deliveries(&s, &t, &hook))),
        || {
            let d = deliveries(&s, &t, &hook);
            (d.len() == 1 && d[0]["attempts"].as_u64() >= Some(2)).then(|| d[0].clone())
        },
    );
    assert_eq!(d["status"], "pending", "retried like any failure: {d:#}");
    for a in d["attempt_log"].as_array().unwrap() {
        let error = a["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("destination_not_allowed") && error.contains("localhost"), "{d:#}");
        assert_eq!(a["status_code"], Value::Null, "{d:#}");
    }
    assert!(rx.records().is_empty(), "nothing may reach the loopback\n{}", rx.dump());
    let m = c.get("/metrics", None).text();
    // The series exists at zero from the start: count the refused attempts, not the line.
    let refused = m
        .lines()
        .find_map(|l| l.strip_prefix(r#"allowly_webhook_attempts_total{result="destination_not_allowed"} "#))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(refused >= Some(2.0), "{m}");
}

/// `POST /v1/webhooks/{id}/rotate-secret`: the new secret is shown once; during the grace
/// period every delivery verifies (with the reference `standardwebhooks` package) with the old
/// secret and with the new one, after it only with the new one.
#[test]
fn a_rotated_secret_verifies_with_either_secret_during_the_grace_period_and_only_the_new_one_after() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let (t, other) = (tenant(&s, "rotate"), tenant(&s, "other"));
    let c = s.client();
    let port = free_port();
    let (hook, first) = webhook(&s, &t, port, &["authorization.revoked"]);
    let path = format!("/v1/webhooks/{hook}/rotate-secret");
    c.call("POST", &path, Some(&t.reader), None).problem(403, "forbidden");
    c.call("POST", &path, Some(&other.admin), None).problem(404, "not_found");
    c.post(&path, &t.admin, json!({ "grace_period_ms": 86_400_001 })).problem(400, "invalid_request");
    c.post(&path, &t.admin, json!({ "grace": 1 })).problem(400, "unknown_field");

    // No body: the default grace period (24 h).
    let r = c.call("POST", &path, Some(&t.admin), None);
    assert_eq!((r.status, r.header("cache-control")), (200, Some("no-store")), "{r}");
    let second = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(second.starts_with("whsec_") && second != first, "{r}");
    assert!(r.json()["previous_secret_expires_at"].is_string(), "{r}");

    // Again with a 10 s grace period (room for a loaded machine to start the receiver and
    // deliver): `second` is now the previous secret, `first` is retired.
    const GRACE_MS: u64 = 10_000;
    let grace = json!({ "grace_period_ms": GRACE_MS });
    let before = now_ms();
    let r = keyed_post(&c, &path, &t.admin, "rotate-3", &grace);
    let rotated_by = now_ms();
    assert_eq!(r.status, 200, "{r}");
    let third = r.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(keyed_post(&c, &path, &t.admin, "rotate-3", &grace).json()["secret"], third.as_str(), "a repeat");
    keyed_post(&c, &path, &t.admin, "rotate-3", &json!({ "grace_period_ms": 1 }))
        .problem(422, "idempotency_key_reused");
    let view = c.get(&format!("/v1/webhooks/{hook}"), Some(&t.reader)).json();
    assert!(view["previous_secret_expires_at"].is_string() && view.get("secret").is_none(), "{view}");

    let rx = Receiver::start_with_secrets(tmp.path(), "rotate", &[&first, &second, &third], port, &[]);
    let az = grant(&s, &t);
    revoke(&s, &t, &az);
    all_delivered(&s, &t, &hook, 1, &rx);
    let during = rx.records();
    assert!(
        during[0]["timestamp"].as_str().unwrap().parse::<u64>().unwrap() * 1000 < before + GRACE_MS,
        "the first delivery must fall in the grace period\n{}",
        rx.dump()
    );
    assert_eq!(during[0]["verified_by"], json!([false, true, true]), "old and new verify\n{}", rx.dump());

    // Past the grace period (polling the clock, not sleeping a guess).
    eventually("the grace period to end", || rx.dump(), || (now_ms() > rotated_by + GRACE_MS + 1000).then_some(()));
    let az = grant(&s, &t);
    revoke(&s, &t, &az);
    all_delivered(&s, &t, &hook, 2, &rx);
    let after = rx.records();
    assert_eq!(after.len(), 2, "{}", rx.dump());
    assert_eq!(after[1]["verified_by"], json!([false, false, true]), "only the new one\n{}", rx.dump());
}

/// `POST /v1/deliveries/{id}/retry`: a delivered event is sent again as a new delivery under
/// the same `webhook-id`, listed with the endpoint; a pending delivery, a disabled endpoint and
/// a deleted one are refused with their own codes.
#[test]
fn a_finished_delivery_can_be_sent_again_under_the_same_webhook_id() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let (t, other) = (tenant(&s, "retry"), tenant(&s, "other"));
    let c = s.client();
    let (port, dead_port) = (free_port(), free_port());
    let (hook, secret) = webhook(&s, &t, port, &["authorization.revoked"]);
    let (dead, _) = webhook(&s, &t, dead_port, &["authorization.revoked"]);
    let rx = Receiver::start(tmp.path(), "retry", &secret, port, &[]);
    let az = grant(&s, &t);
    revoke(&s, &t, &az);
    let first = all_delivered(&s, &t, &hook, 1, &rx).remove(0);
    let path = format!("/v1/deliveries/{}/retry", first["id"].as_str().unwrap());
    c.call("POST", &path, Some(&t.reader), None).problem(403, "forbidden");
    c.call("POST", &path, Some(&other.admin), None).problem(404, "not_found");

    let r = keyed_post(&c, &path, &t.admin, "retry-1", &json!({}));
    let again = r.created("retry");
    let id = again["id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(format!("/v1/deliveries/{id}").as_str()), "{r}");
    assert_eq!((&again["event_id"], &again["retry_of"]), (&first["event_id"], &first["id"]), "{again:#}");
    let repeat = keyed_post(&c, &path, &t.admin, "retry-1", &json!({}));
    assert_eq!(repeat.created("repeat")["id"], id.as_str());

    let ds = all_delivered(&s, &t, &hook, 2, &rx);
    assert_eq!(ds[0]["id"], id.as_str(), "newest first");
    let records = rx.records();
    assert_eq!(records.len(), 2, "{}", rx.dump());
    assert!(records.iter().all(|r| r["verified"] == true && r["webhook_id"] == first["event_id"]), "{}", rx.dump());
    assert_eq!(records[0]["payload"], records[1]["payload"]);

    // Refusals: still pending (nobody listens on dead_port), endpoint disabled, endpoint deleted.
    let pending = failing(&s, &t, &dead);
    let dead_path = format!("/v1/deliveries/{}/retry", pending["id"].as_str().unwrap());
    c.call("POST", &dead_path, Some(&t.admin), None).problem(409, "delivery_in_progress");
    let r = c.call("POST", &format!("/v1/webhooks/{dead}/disable"), Some(&t.admin), None);
    assert_eq!(r.status, 200, "{r}");
    eventually(
        "the delivery to fail as its endpoint is disabled",
        || s.diagnostics(),
        || (deliveries(&s, &t, &dead)[0]["status"] == "failed").then_some(()),
    );
    c.call("POST", &dead_path, Some(&t.admin), None).problem(409, "webhook_disabled");
    assert_eq!(c.call("DELETE", &format!("/v1/webhooks/{dead}"), Some(&t.admin), None).status, 204);
    c.call("POST", &dead_path, Some(&t.admin), None).problem(404, "webhook_not_found");
}

/// Escalation events go only to the endpoints whose `scopes` filter matches the escalation's
/// scopes, and the escalation shows where its request went (`routed_to`).
#[test]
fn escalations_reach_only_the_endpoints_whose_scopes_match() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path());
    let t = tenant(&s, "route");
    let c = s.client();
    let events = ["escalation.requested", "escalation.resolved"];
    for bad in [json!([]), json!(["Payments.Send"]), json!(["payments.*", "payments.*"]), json!("payments.*")] {
        let body = json!({ "url": "https://example.com/x", "events": events, "scopes": bad });
        c.post("/v1/webhooks", &t.admin, body).problem(400, "invalid_request");
    }
    let scoped = |port: u16, scopes: Value| {
        let url = format!("http://127.0.0.1:{port}/hook");
        let v =
            c.post("/v1/webhooks", &t.admin, json!({ "url": url, "events": events, "scopes": scopes })).created("hook");
        assert_eq!(v["scopes"], scopes, "{v}");
        (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
    };
    let (send_port, refund_port) = (free_port(), free_port());
    let (send, send_secret) = scoped(send_port, json!(["payments.send"]));
    let (refund, refund_secret) = scoped(refund_port, json!(["payments.refund.*"]));
    let send_rx = Receiver::start(tmp.path(), "send", &send_secret, send_port, &[]);
    let refund_rx = Receiver::start(tmp.path(), "refund", &refund_secret, refund_port, &[]);

    let az = grant(&s, &t);
    let escalate = |scope: &str| {
        let r = c.post("/v1/check", &t.admin, json!({ "authorization_id": az, "scopes": [scope] })).json();
        assert_eq!(r["decision"], "escalate", "{r}");
        r["escalation"]["id"].as_str().unwrap().to_owned()
    };
    let esc = escalate("payments.send");
    let view = c.get(&format!("/v1/escalations/{esc}"), Some(&t.reader)).json();
    assert_eq!(view["routed_to"], json!([send]), "{view}");
    let answer = json!({ "outcome": "declined", "by": "boss" });
    assert_eq!(c.post(&format!("/v1/escalations/{esc}/resolve"), &t.admin, answer).status, 200);
    let got = all_delivered(&s, &t, &send, 2, &send_rx);
    assert!(got.iter().all(|d| d["payload"]["data"]["escalation_id"] == esc.as_str()), "{:#}", json!(got));

    let esc = escalate("payments.refund.full");
    let view = c.get(&format!("/v1/escalations/{esc}"), Some(&t.reader)).json();
    assert_eq!(view["routed_to"], json!([refund]), "{view}");
    all_delivered(&s, &t, &refund, 1, &refund_rx);
    assert_eq!(deliveries(&s, &t, &send).len(), 2, "the send approver never hears of the refund");
    assert_eq!(send_rx.records().len(), 2, "{}", send_rx.dump());
}

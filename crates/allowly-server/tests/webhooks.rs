//! Outgoing webhooks, black-box: the real `allowly` (short retry schedule) delivers to a real
//! HTTP receiver started by the test — `tests/crosslang/webhook_receiver.py`, which verifies
//! every request with the reference `standardwebhooks` package and logs it — including one that
//! fails, hangs and recovers, one that is down across a `kill -9` of the server, and one that
//! answers 410. A failing test prints the server's output and the receiver's log.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use support::*;

/// A retry schedule short enough for tests: 50 ms doubling to 200 ms, 1 s per attempt.
const FAST: &[&str] =
    &["--webhook-base-backoff-ms", "50", "--webhook-max-backoff-ms", "200", "--webhook-attempt-timeout-ms", "1000"];

const ALL_BUT_SIGNED: [&str; 3] = ["escalation.requested", "escalation.resolved", "authorization.revoked"];

// ---------------------------------------------------------------------------------------------
// The receiver.

fn python() -> PathBuf {
    let venv = std::env::var_os("ALLOWLY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/allowly/venv"));
    let py = venv.join("bin/python");
    assert!(py.is_file(), "{} is missing: run scripts/setup.sh", py.display());
    py
}

fn receiver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/crosslang/webhook_receiver.py")
}

/// A free loopback port (for a receiver that must not be listening yet, or must come back on
/// the same port).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `webhook_receiver.py`; killed on drop (its log is printed if the test fails).
struct Receiver {
    child: Option<Child>,
    log: PathBuf,
}

impl Receiver {
    /// Starts it on `port` with `secret` and the behaviour flags `extra` (`--fail N`, ...).
    fn start(dir: &Path, name: &str, secret: &str, port: u16, extra: &[&str]) -> Self {
        let log = dir.join(format!("{name}.jsonl"));
        let mut cmd = Command::new(python());
        cmd.arg(receiver_script())
            .args(["--secret", secret, "--log"])
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
    fn records(&self) -> Vec<Value> {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => text.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn dump(&self) -> String {
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

fn created(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 201, "{what}: {r}");
    r.json()
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
    let ws = created(&c.post("/v1/workspaces", &root, body), "workspace")["id"].as_str().unwrap().to_owned();
    let key = |roles: &[&str]| {
        let v = created(&c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": roles })), "key");
        v["secret"].as_str().unwrap().to_owned()
    };
    Tenant { admin: key(&["admin"]), reader: key(&["read"]), ws }
}

/// An authorization for `payments.*` and `mail.read`; returns its id.
fn grant(s: &Server, t: &Tenant) -> String {
    let body = json!({ "subject": "user-1", "scopes": ["payments.*", "mail.read"] });
    created(&s.client().post("/v1/authorizations", &t.admin, body), "grant")["authorization"]["id"]
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
    let v = created(&r, "webhook");
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
    let answer = json!({ "outcome": "approved", "approver": "boss" });
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

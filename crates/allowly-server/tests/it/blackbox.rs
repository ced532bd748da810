//! Black-box tests of the real `allowly` binary: real signer child, real RocksDB in a temp dir,
//! raw HTTP over TCP. A failing test prints the server's stdout and stderr.

use crate::support::*;
use allowly_receipt::types::KeySet;
use allowly_receipt::verify::{verify_bundle, Outcome};
use rustix::process::Signal;
use serde_json::{json, Value};

fn start() -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    (tmp, server)
}

/// Creates a workspace as the instance admin; returns its id.
fn workspace(s: &Server, name: &str) -> String {
    let r = s.client().post("/v1/workspaces", &s.admin_token(), json!({ "name": name }));
    assert_eq!(r.status, 201, "{r}\n{}", s.diagnostics());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(format!("/v1/workspaces/{id}").as_str()));
    id
}

/// Creates an API key of `ws` with `roles` using `by`; returns its secret.
fn api_key(s: &Server, by: &str, ws: &str, roles: &[&str]) -> String {
    let r = s.client().post(&format!("/v1/workspaces/{ws}/api-keys"), by, json!({ "roles": roles }));
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.json()["secret"].as_str().unwrap().to_owned()
}

/// Creates an authorization for `scopes`; returns its id.
fn authorization(s: &Server, admin: &str, scopes: &[&str]) -> (String, Value) {
    let r = s.client().post("/v1/authorizations", admin, json!({ "subject": "user-1", "scopes": scopes }));
    assert_eq!(r.status, 201, "{r}");
    let v = r.json();
    let id = v["authorization"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(format!("/v1/authorizations/{id}").as_str()));
    (id, v)
}

fn metric_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

// ---------------------------------------------------------------------------------------------
// 1. Conventions that hold on every endpoint.

#[test]
fn health_readiness_and_metrics_need_no_key() {
    let (_tmp, s) = start();
    let c = s.client();
    let r = c.get("/healthz", None);
    assert_eq!((r.status, r.json()), (200, json!({ "status": "ok" })), "{r}");
    let ready = eventually(
        "/readyz to answer 200",
        || s.diagnostics(),
        || {
            let r = c.get("/readyz", None);
            (r.status == 200).then_some(r)
        },
    );
    assert_eq!(ready.json()["ready"], true, "{ready}");
    assert_eq!(ready.json()["signer"], true, "{ready}");

    c.get("/nope", None);
    let m = c.get("/metrics", None);
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = m.text();
    for want in [
        r#"allowly_http_requests_total{route="healthz",status="200"} 1"#,
        r#"allowly_http_requests_total{route="unmatched",status="404"} 1"#,
        r#"allowly_http_request_duration_seconds_bucket{route="readyz",le="0.001"}"#,
        "allowly_http_in_flight_requests 1", // the /metrics request itself
    ] {
        assert!(metric_line(&text, want).is_some(), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("/nope"), "a raw path became a label:\n{text}");
}

#[test]
fn request_ids_are_echoed_when_valid_and_generated_otherwise() {
    let (_tmp, s) = start();
    let c = s.client();
    let with = |id: &str| {
        c.request("GET", "/healthz", &[("Request-Id".into(), id.into())], None).header("request-id").unwrap().to_owned()
    };
    assert_eq!(with("abc-123.X_y"), "abc-123.X_y");
    let long = "a".repeat(128);
    assert_eq!(with(&long), long);
    let mut seen = std::collections::HashSet::new();
    for bad in ["has space", "slash/no", &"a".repeat(129), "ünïcode", ""] {
        let got = with(bad);
        assert_ne!(got, bad);
        assert!(
            (1..=128).contains(&got.len()) && got.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "generated id {got:?}"
        );
        assert!(seen.insert(got), "generated ids repeat");
    }
    // Error answers carry the same id in the header and the problem document.
    let r = c.request("GET", "/v1/nothing", &[("Request-Id".into(), "trace-42".into())], None);
    assert_eq!(r.problem(404, "not_found")["request_id"], "trace-42");
}

#[test]
fn missing_or_bad_keys_get_401_with_a_bearer_challenge() {
    let (_tmp, s) = start();
    let c = s.client();
    let fake = format!("alw_{}", "0".repeat(64));
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        ("no header", vec![]),
        ("unknown key", vec![("Authorization".into(), format!("Bearer {fake}"))]),
        ("not a key", vec![("Authorization".into(), "Bearer x".into())]),
        ("basic scheme", vec![("Authorization".into(), format!("Basic {}", s.admin_token()))]),
        ("empty bearer", vec![("Authorization".into(), "Bearer ".into())]),
    ];
    for (what, headers) in cases {
        for (method, path) in
            [("GET", "/v1/workspaces/ws_x"), ("GET", "/v1/receipts?authorization_id=a"), ("POST", "/v1/check")]
        {
            let r = c.request(method, path, &headers, None);
            r.problem(401, "unauthenticated");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}: {r}");
        }
    }
    // Control: the admin key gets past authentication (to a 404 for a workspace that is not there).
    c.get("/v1/workspaces/ws_x", Some(&s.admin_token())).problem(404, "not_found");
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let (_tmp, s) = start();
    let c = s.client();
    for path in [
        "/",
        "/v1",
        "/v1/",
        "/v1/check/",
        "/v1//check",
        "/v2/check",
        "/v1/receipts/a.b",
        "/v1/receipts/a%2Fb",
        "/v1/workspaces/ws_1/unknown",
        &format!("/v1/receipts/{}", "r".repeat(129)),
    ] {
        c.get(path, None).problem(404, "not_found");
    }
    for (method, path, allow) in [
        ("GET", "/v1/check", "POST"),
        ("DELETE", "/v1/workspaces/ws_1", "GET"),
        ("POST", "/healthz", "GET"),
        ("PATCH", "/v1/workspaces/ws_1/scope-rules", "PUT"),
        ("DELETE", "/v1/authorizations", "POST, GET"),
        ("PUT", "/v1/confirmations/cn_1", "POST, GET"),
    ] {
        let r = c.call(method, path, None, None);
        r.problem(405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}: {r}");
    }
}

#[test]
fn bodies_are_checked_for_media_type_size_json_and_fields() {
    let (_tmp, s) = start();
    let c = s.client();
    let auth = ("Authorization".to_owned(), format!("Bearer {}", s.admin_token()));
    let json_ct = ("Content-Type".to_owned(), "application/json".to_owned());
    let post = |headers: &[(String, String)], body: &[u8]| c.request("POST", "/v1/workspaces", headers, Some(body));

    post(std::slice::from_ref(&auth), br#"{"name":"x"}"#).problem(415, "unsupported_media_type");
    post(&[auth.clone(), ("Content-Type".into(), "text/plain".into())], br#"{"name":"x"}"#)
        .problem(415, "unsupported_media_type");
    post(&[auth.clone(), json_ct.clone()], br#"{"name": "x""#).problem(400, "malformed_json");
    post(&[auth.clone(), json_ct.clone()], b"").problem(400, "malformed_json");
    let p = post(&[auth.clone(), json_ct.clone()], br#"{"name": "x", "nmae": 1}"#).problem(400, "unknown_field");
    assert!(p["detail"].as_str().unwrap().contains("nmae"), "{p}");
    post(&[auth.clone(), json_ct.clone()], br#"{"name": 5}"#).problem(400, "invalid_request");
    post(&[auth.clone(), json_ct.clone()], br#"{}"#).problem(400, "invalid_request");
    post(&[auth.clone(), json_ct.clone()], br#"["x"]"#).problem(400, "invalid_request");

    // Over the 64 KiB limit by Content-Length: refused before the body is sent.
    let head = format!(
        "POST /v1/workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 70000\r\nConnection: close\r\n\r\n",
        s.admin_token()
    );
    c.raw(head.as_bytes()).problem(413, "body_too_large");

    // Chunked, no length announced: refused once the chunks cross the limit.
    let chunked = |total: usize| {
        let mut req = format!(
            "POST /v1/workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            s.admin_token()
        )
        .into_bytes();
        let body = format!(r#"{{"name": "{}"}}"#, "n".repeat(total - 12));
        assert_eq!(body.len(), total);
        for piece in body.as_bytes().chunks(8192) {
            req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            req.extend_from_slice(piece);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        c.raw(&req)
    };
    chunked(64 * 1024 + 1).problem(413, "body_too_large");
    // Control: a chunked body within the limit is read whole (and then judged by the engine).
    let r = chunked(150);
    assert_eq!(r.status, 201, "{r}");
}

#[test]
fn a_config_file_sets_the_body_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("allowly.toml");
    std::fs::write(&cfg, "body_limit = 2048\n").unwrap();
    let s = Server::start_with(&tmp.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let name = "n".repeat(3000);
    let p = s.client().post("/v1/workspaces", &s.admin_token(), json!({ "name": name })).problem(413, "body_too_large");
    assert!(p["detail"].as_str().unwrap().contains("2048"), "{p}");
}

// ---------------------------------------------------------------------------------------------
// 2. Process life: admin token, signals, the signer child.

#[test]
fn the_admin_token_is_private_and_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    let path = data.join("admin-token");
    assert_eq!(mode(&path), 0o600);
    // Started as root (CI), the signer's group reaches them; else they are private (0700).
    let dirs = if rustix::process::geteuid().is_root() { 0o710 } else { 0o700 };
    assert_eq!(mode(&data), dirs);
    assert_eq!(mode(&data.join("run")), dirs);
    let token = s.admin_token();
    assert!(token.starts_with("alw_"), "{token}");
    // stderr is read by another thread: the announcement may lag the `listening on` line.
    let announced = path.display().to_string();
    eventually("the token path to be announced", || s.diagnostics(), || s.stderr().contains(&announced).then_some(()));
    s.stop();
    assert!(
        !s.stderr().contains(&token) && !s.stdout().contains(&token),
        "the secret was printed\n{}",
        s.diagnostics()
    );

    let s = Server::start(&data);
    assert_eq!(s.admin_token(), token, "the admin token was replaced on restart");
    // Still the instance admin: past authentication, to a 404.
    s.client().get("/v1/workspaces/ws_x", Some(&token)).problem(404, "not_found");
}

/// Rotating the instance admin key: the old key is refused from the next request on, the new
/// one works, `admin-token` holds it (whole, 0600), and so does a restart. Only the instance
/// admin may rotate, and a revoked key cannot rotate again.
#[test]
fn the_instance_admin_key_rotates_and_the_old_one_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    let (c, old) = (s.client(), s.admin_token());
    let ws = workspace(&s, "rotating");
    let ws_admin = api_key(&s, &old, &ws, &["admin"]);
    c.call("POST", "/v1/admin-key/rotate", Some(&ws_admin), None).problem(403, "forbidden");

    let r = c.call("POST", "/v1/admin-key/rotate", Some(&old), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let new = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("alw_") && new != old);
    assert_eq!(s.admin_token(), new, "the file holds the new key");
    assert_eq!(mode(&data.join("admin-token")), 0o600);
    assert!(!data.join("admin-token.tmp").exists());

    c.get(&format!("/v1/workspaces/{ws}"), Some(&old)).problem(401, "unauthenticated");
    c.call("POST", "/v1/admin-key/rotate", Some(&old), None).problem(401, "unauthenticated");
    assert_eq!(c.get(&format!("/v1/workspaces/{ws}"), Some(&new)).status, 200);
    assert_eq!(c.get(&format!("/v1/workspaces/{ws}"), Some(&ws_admin)).status, 200, "other keys are untouched");
    s.stop();
    assert!(!s.stderr().contains(&new), "the secret was logged\n{}", s.diagnostics());

    let s = Server::start(&data);
    let c = s.client();
    assert_eq!(s.admin_token(), new);
    assert_eq!(c.get(&format!("/v1/workspaces/{ws}"), Some(&new)).status, 200);
    c.get(&format!("/v1/workspaces/{ws}"), Some(&old)).problem(401, "unauthenticated");
}

#[test]
fn sigterm_exits_0_and_takes_the_signer_with_it() {
    let (_tmp, mut s) = start();
    let signer = s.signer_pid();
    assert!(alive(signer));
    s.stop();
    eventually("the signer child to be gone", || s.diagnostics(), || (!alive(signer)).then_some(()));
    assert!(!s.data_dir.join("run").join("signer.sock").exists(), "the signer did not shut down cleanly");
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_and_refuses_new_connections() {
    use std::io::{Read as _, Write as _};
    let (_tmp, mut s) = start();
    let c = s.client();
    // A request whose body is only half sent: its handler is waiting for the rest.
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    let head = format!(
        "POST /v1/workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.admin_token()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(b"b\r\n{\"name\": \"d\r\n").unwrap();
    eventually(
        "the half-sent request to be in flight",
        || s.diagnostics(),
        // Two: that request and the /metrics request asking.
        || metric_line(&c.get("/metrics", None).text(), "allowly_http_in_flight_requests 2").map(|_| ()),
    );

    s.signal(Signal::TERM);
    eventually("the listener to close", || s.diagnostics(), || s.stderr().contains("stopped accepting").then_some(()));
    assert!(std::net::TcpStream::connect(s.addr).is_err(), "a new connection was accepted during shutdown");

    conn.write_all(b"6\r\nrain\"}\r\n0\r\n\r\n").unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "the request in flight was not finished: {answer:?}\n{}",
        s.diagnostics()
    );
    assert!(answer.contains(r#""name":"drain""#), "{answer}");
    let status = s.wait_exit();
    assert!(status.success(), "exit {status}\n{}", s.diagnostics());
}

/// A signer run as its own service (not our child): killed on drop.
struct ExternalSigner(std::process::Child);

impl Drop for ExternalSigner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn with_signer_socket_the_running_signer_is_used_and_outlives_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = (tmp.path().join("signer"), tmp.path().join("run").join("signer.sock"));
    let init = std::process::Command::new(signer_bin()).arg("init").arg("--dir").arg(&dir).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let mut signer = ExternalSigner(
        std::process::Command::new(signer_bin())
            .arg("serve")
            .arg("--dir")
            .arg(&dir)
            .arg("--socket")
            .arg(&sock)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );

    let data = tmp.path().join("data");
    let mut s = Server::start_with(&data, &["--signer-socket", sock.to_str().unwrap()]);
    let c = s.client();
    eventually("ready", || s.diagnostics(), || (c.get("/readyz", None).status == 200).then_some(()));
    workspace(&s, "external");
    assert!(children_named(s.pid(), "allowly-signer").is_empty(), "a signer child was started anyway");
    assert!(!data.join("signer").exists(), "embedded signer state was created");
    s.stop();
    assert!(signer.0.try_wait().unwrap().is_none(), "the external signer was stopped with the server");
}

#[test]
fn a_killed_server_takes_its_signer_down() {
    let (_tmp, mut s) = start();
    let signer = s.signer_pid();
    s.kill9();
    eventually("the orphaned signer to die", String::new, || (!alive(signer)).then_some(()));
}

#[test]
fn a_signer_that_dies_is_restarted_and_readiness_follows() {
    let (_tmp, s) = start();
    let c = s.client();
    let first = s.signer_pid();
    eventually("ready", || s.diagnostics(), || (c.get("/readyz", None).status == 200).then_some(()));
    rustix::process::kill_process(rustix::process::Pid::from_raw(first as i32).unwrap(), Signal::KILL).unwrap();
    let second = eventually(
        "a new signer child",
        || s.diagnostics(),
        || descendants_named(s.pid(), "allowly-signer").into_iter().find(|p| *p != first),
    );
    assert_ne!(first, second);
    eventually("ready again", || s.diagnostics(), || (c.get("/readyz", None).status == 200).then_some(()));
    assert!(s.stderr().contains("restarting"), "the restart is not logged\n{}", s.diagnostics());
}

// ---------------------------------------------------------------------------------------------
// 3. Through the engine: keys, roles, tenants, the grant → check → receipt flow.

#[test]
fn roles_and_tenants_are_enforced() {
    let (_tmp, s) = start();
    let c = s.client();
    let root = s.admin_token();
    let (a, b) = (workspace(&s, "A"), workspace(&s, "B"));
    let a_admin = api_key(&s, &root, &a, &["admin"]);
    let a_read = api_key(&s, &a_admin, &a, &["read"]);
    let a_check = api_key(&s, &root, &a, &["check"]);
    let b_admin = api_key(&s, &root, &b, &["admin"]);
    let (az, _) = authorization(&s, &a_admin, &["mail.read"]);

    // Another workspace's objects are 404, whatever the key's roles.
    for key in [&a_admin, &a_read, &a_check] {
        c.get(&format!("/v1/workspaces/{b}"), Some(key)).problem(404, "not_found");
        c.get(&format!("/v1/workspaces/{b}/log/checkpoint"), Some(key)).problem(404, "not_found");
    }
    c.post(&format!("/v1/workspaces/{b}/api-keys"), &a_admin, json!({"roles": ["admin"]})).problem(404, "not_found");
    c.get(&format!("/v1/authorizations/{az}"), Some(&b_admin)).problem(404, "not_found");
    let r = c.post("/v1/check", &b_admin, json!({"authorization_id": az, "scopes": ["mail.read"]}));
    let v = r.json();
    assert_eq!((v["decision"].as_str(), v["reason"].as_str()), (Some("deny"), Some("unknown_authorization")), "{r}");
    // Recorded in B's log as a workspace event, never chained into A's trail.
    let body = &v["receipt"]["body"];
    assert_eq!((body["workspace_id"].as_str(), body["authorization_id"].as_str()), (Some(b.as_str()), None), "{r}");
    // Roles within the own workspace.
    c.get(&format!("/v1/workspaces/{a}"), Some(&a_check)).problem(403, "forbidden");
    c.post("/v1/check", &a_read, json!({"authorization_id": az, "scopes": ["mail.read"]})).problem(403, "forbidden");
    c.post("/v1/authorizations", &a_read, json!({"subject": "u", "scopes": ["x"]})).problem(403, "forbidden");
    c.post("/v1/workspaces", &a_admin, json!({"name": "C"})).problem(403, "forbidden");
    assert_eq!(c.get(&format!("/v1/workspaces/{a}"), Some(&a_read)).status, 200);
    assert_eq!(c.get(&format!("/v1/authorizations/{az}"), Some(&a_read)).status, 200);
    // The instance admin manages workspaces but makes no decisions and reads no receipts.
    assert_eq!(c.get(&format!("/v1/workspaces/{b}"), Some(&root)).status, 200);
    c.post("/v1/check", &root, json!({"authorization_id": az, "scopes": ["mail.read"]})).problem(403, "forbidden");
    c.get(&format!("/v1/authorizations/{az}"), Some(&root)).problem(403, "forbidden");
    // Public keys need no key at all; an unknown workspace is still a 404.
    let keys = c.get(&format!("/v1/workspaces/{a}/keys"), None);
    assert_eq!(keys.status, 200, "{keys}");
    c.get("/v1/workspaces/ws_nope/keys", None).problem(404, "not_found");

    // A revoked key stops working at once.
    let a_read_id = {
        let r = c.post(&format!("/v1/workspaces/{a}/api-keys"), &a_admin, json!({"roles": ["read"]}));
        let v = r.json();
        (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
    };
    let revoke = format!("/v1/workspaces/{a}/api-keys/{}/revoke", a_read_id.0);
    assert_eq!(c.call("POST", &revoke, Some(&a_admin), None).status, 200);
    c.get(&format!("/v1/workspaces/{a}"), Some(&a_read_id.1)).problem(401, "unauthenticated");
    c.call("POST", &revoke, Some(&a_admin), None).problem(409, "conflict");
    // Another workspace's key id through one's own workspace path: 404.
    c.call("POST", &format!("/v1/workspaces/{b}/api-keys/{}/revoke", a_read_id.0), Some(&b_admin), None)
        .problem(404, "not_found");
}

#[test]
fn grant_check_receipts_proofs_and_a_verifiable_export() {
    let (_tmp, s) = start();
    let c = s.client();
    let ws = workspace(&s, "flow");
    let admin = api_key(&s, &s.admin_token(), &ws, &["admin"]);
    let checker = api_key(&s, &admin, &ws, &["check"]);
    let reader = api_key(&s, &admin, &ws, &["read"]);
    let (az, created) = authorization(&s, &admin, &["mail.read", "calendar.*"]);
    assert_eq!(created["receipt"]["status"], "pending", "{created}");

    let check = |scopes: &[&str]| {
        let r = c.post("/v1/check", &checker, json!({ "authorization_id": az, "scopes": scopes }));
        assert_eq!(r.status, 200, "{r}");
        r.json()
    };
    let allowed = check(&["calendar.write"]);
    assert_eq!((allowed["decision"].as_str(), allowed["reason"].as_str()), (Some("allow"), Some("granted")));
    let denied = check(&["mail.send"]);
    assert_eq!(denied["decision"], "deny", "{denied}");
    let rid = allowed["receipt"]["receipt_id"].as_str().unwrap().to_owned();

    let r = c.get(&format!("/v1/receipts/{rid}"), Some(&reader));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["body"]["id"], rid.as_str());
    c.get("/v1/receipts/rc_nope", Some(&reader)).problem(404, "not_found");

    // Trail pages (creation, allow, deny), strict query parameters.
    let page = c.get(&format!("/v1/receipts?authorization_id={az}&limit=2"), Some(&reader));
    assert_eq!(page.status, 200, "{page}");
    let p = page.json();
    assert_eq!((p["data"].as_array().unwrap().len(), &p["has_more"]), (2, &json!(true)), "{p}");
    let cursor = p["next_cursor"].as_str().unwrap();
    let rest = c.get(&format!("/v1/receipts?authorization_id={az}&starting_after={cursor}"), Some(&reader)).json();
    assert_eq!((rest["data"].as_array().unwrap().len(), &rest["has_more"]), (1, &json!(false)), "{rest}");
    for q in ["limit=0", "limit=1001", "limit=ten", "limit=-1", "bogus=1", "limit=1&limit=2"] {
        c.get(&format!("/v1/receipts?authorization_id={az}&{q}"), Some(&reader)).problem(400, "invalid_request");
    }
    c.get("/v1/receipts", Some(&reader)).problem(400, "invalid_request");

    // Revocation: once, then a conflict; checks are denied afterwards.
    let r = c.call("POST", &format!("/v1/authorizations/{az}/revoke"), Some(&admin), None);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["authorization"]["status"], "revoked");
    c.call("POST", &format!("/v1/authorizations/{az}/revoke"), Some(&admin), None).problem(409, "conflict");
    let last = check(&["mail.read"]);
    assert_eq!(last["decision"], "deny", "{last}");
    let last_id = last["receipt"]["receipt_id"].as_str().unwrap().to_owned();

    // Everything gets signed; the log serves proofs for it.
    eventually(
        "the last receipt to be signed",
        || s.diagnostics(),
        || (c.get(&format!("/v1/receipts/{last_id}"), Some(&reader)).json()["status"] == "signed").then_some(()),
    );
    let cp = c.get(&format!("/v1/workspaces/{ws}/log/checkpoint"), Some(&reader)).json();
    assert!(cp["size"].as_u64().unwrap() >= 5, "{cp}");
    let size = cp["size"].as_u64().unwrap();
    let r = c.get(&format!("/v1/workspaces/{ws}/log/inclusion?log_index=1&tree_size={size}"), Some(&reader));
    assert_eq!(r.status, 200, "{r}");
    let r = c.get(&format!("/v1/workspaces/{ws}/log/consistency?old_size={size}"), Some(&reader));
    assert_eq!(r.status, 200, "{r}");
    for q in ["", "?log_index=x", "?log_index=1&tree_size=-1"] {
        c.get(&format!("/v1/workspaces/{ws}/log/inclusion{q}"), Some(&reader)).problem(400, "invalid_request");
    }

    // The exported trail verifies offline against the public keys.
    let keys: KeySet = serde_json::from_slice(&c.get(&format!("/v1/workspaces/{ws}/keys"), None).body).unwrap();
    let export = c.get(&format!("/v1/authorizations/{az}/export"), Some(&reader));
    assert_eq!((export.status, export.header("content-type")), (200, Some("application/x-ndjson")), "{export}");
    let report = verify_bundle(&export.body, Some(&keys), &[]).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{report:?}\n{}", export.text());
    let log = c.get(&format!("/v1/workspaces/{ws}/log/export?from=0&to={size}"), Some(&reader));
    assert_eq!(log.status, 200, "{log}");
    assert_eq!(verify_bundle(&log.body, Some(&keys), &[]).unwrap().outcome(), Outcome::Valid);

    // Metrics name routes, never ids.
    let text = c.get("/metrics", None).text();
    assert!(metric_line(&text, r#"allowly_http_requests_total{route="check",status="200"} 3"#).is_some(), "{text}");
    assert!(!text.contains(&ws) && !text.contains(&az) && !text.contains(&rid), "an id became a label:\n{text}");
}

#[test]
fn scope_rules_and_workspace_reads() {
    let (_tmp, s) = start();
    let c = s.client();
    let ws = workspace(&s, "rules");
    let admin = api_key(&s, &s.admin_token(), &ws, &["admin"]);
    let put = |key: &str, body: &[u8]| {
        let headers = [
            ("Authorization".to_owned(), format!("Bearer {key}")),
            ("Content-Type".to_owned(), "application/json".to_owned()),
        ];
        c.request("PUT", &format!("/v1/workspaces/{ws}/scope-rules"), &headers, Some(body))
    };
    let r = put(&admin, br#"{"scope_rules": {"mail.send": "confirm", "payments.*": "escalate"}}"#);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["scope_rules"]["mail.send"], "confirm");
    put(&admin, br#"{"scope_rules": {"x": "sometimes"}}"#).problem(400, "invalid_request");
    put(&admin, br#"{"rules": {}}"#).problem(400, "unknown_field");
    assert_eq!(put(&s.admin_token(), br#"{"scope_rules": {}}"#).status, 200);
    let got = c.get(&format!("/v1/workspaces/{ws}"), Some(&admin));
    assert_eq!((got.status, &got.json()["scope_rules"]), (200, &json!({})), "{got}");

    // A confirm rule turns an allowed scope into a confirmation.
    put(&admin, br#"{"scope_rules": {"mail.send": "confirm"}}"#);
    let (az, _) = authorization(&s, &admin, &["mail.*"]);
    let r = c.post("/v1/check", &admin, json!({"authorization_id": az, "scopes": ["mail.send"]}));
    assert_eq!(r.json()["decision"], "confirm", "{r}");
}

/// The logs, as an SRE reads them: with `ALLOWLY_LOG_FORMAT=json` every line the service writes
/// is one JSON object; the access log (asked for) has a line per answered request naming the
/// client's `Request-Id`, route template and status; and even at `trace` no API key, admin
/// token, webhook secret or master key reaches them.
#[test]
fn logs_are_json_name_the_request_and_never_a_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut cmd = std::process::Command::new(allowly_bin());
    cmd.arg("serve").arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0", "--webhook-allow-private-networks"]);
    cmd.env("ALLOWLY_LOG", "trace,allowly::access=info").env("ALLOWLY_LOG_FORMAT", "json");
    let mut s = Server::start_command(cmd, &data);
    let c = s.client();
    let admin = s.admin_token();
    let ws = workspace(&s, "logged");
    let key = api_key(&s, &admin, &ws, &["admin", "check"]);
    let hook = c.post(
        "/v1/webhooks",
        &key,
        serde_json::json!({ "url": "http://127.0.0.1:9/hook", "events": ["receipt.signed"] }),
    );
    let hook_secret = hook.created("webhook")["secret"].as_str().unwrap().to_owned();
    let (az, _) = authorization(&s, &key, &["files.read"]);
    let traced = "trace-me-42";
    let headers = [
        ("authorization".to_owned(), format!("Bearer {key}")),
        ("content-type".to_owned(), "application/json".to_owned()),
        ("request-id".to_owned(), traced.to_owned()),
    ];
    let body = serde_json::json!({ "authorization_id": az, "scopes": ["files.read"] }).to_string();
    let r = c.request("POST", "/v1/check", &headers, Some(body.as_bytes()));
    assert_eq!((r.status, r.header("request-id")), (200, Some(traced)), "{}", r.text());
    c.get(&format!("/v1/workspaces/{ws}"), Some("alw_0000")).problem(401, "unauthenticated");
    // Wait for the access line of the check (stderr is read by another thread).
    eventually(
        "the check's access log line",
        || s.diagnostics(),
        || s.stderr().lines().any(|l| l.contains(traced) && l.contains("allowly::access")).then_some(()),
    );
    s.stop();

    let master = std::fs::read(data.join("signer/master.key")).map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let log = s.stderr();
    for secret in [Some(admin.as_str()), Some(key.as_str()), Some(hook_secret.as_str()), master.as_deref().ok()]
        .into_iter()
        .flatten()
    {
        assert!(secret.len() >= 16 && !log.contains(secret), "a secret reached the logs: {}...", &secret[..8]);
    }
    let mut access = None;
    for line in log.lines().filter(|l| !l.starts_with("allowly: ") && !l.starts_with("  ")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')) && v["level"].is_string(), "{line}");
        if v["target"] == "allowly::access" && v["request_id"] == traced {
            access = Some(v);
        }
    }
    let access = access.unwrap_or_else(|| panic!("no access line for {traced}\n{log}"));
    assert_eq!(
        (&access["route"], &access["status"], &access["method"]),
        (&serde_json::json!("check"), &serde_json::json!(200), &serde_json::json!("POST"))
    );
    assert!(access["duration_us"].as_u64().is_some(), "{access}");
}

/// RocksDB keeps at most half the open-file limit open, and the server first raises its soft
/// limit to the hard one: started with the soft limit at 256 (systemd's default is 1024), a
/// growing database would otherwise meet EMFILE on a WAL write and fail every check closed.
#[test]
fn the_server_raises_its_open_file_limit_to_the_hard_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // prlimit execs the server, so the pid is the server's.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=256:4096").arg(allowly_bin());
    cmd.arg("serve").arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"]);
    let s = Server::start_command(cmd, &data);
    s.wait_ready();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3..5], ["4096", "4096"], "{line}\n{}", s.diagnostics());
}

/// `GET /v1/openapi.json` (public) serves exactly the committed `docs/openapi.json`: the
/// document clients generate code from is the one the running server keeps to.
#[test]
fn the_served_openapi_document_is_the_committed_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.wait_ready();
    let r = s.client().get("/v1/openapi.json", None);
    assert_eq!(r.status, 200, "{r}");
    let committed = std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap();
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert!(
        r.json() == committed,
        "GET /v1/openapi.json differs from docs/openapi.json (regenerate the file: docs/clients.md)"
    );
    assert_eq!(r.json()["openapi"], "3.1.0");
}

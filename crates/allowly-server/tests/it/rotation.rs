//! Key rotation, black-box: a workspace's signing key rotated through the API (and through
//! `allowly workspace-key rotate`) while clients keep checking — every acknowledged receipt
//! signed, the `key.rotated` receipt in the log at the index the server reserved, the whole log
//! verified by the real `allowly-verify` against the published key set, before and after a
//! restart; a rotation whose answer was lost (the signer stopped under it) finished later with
//! nothing lost and no fork; and the instance admin key revoked, rotated (`Idempotency-Key`
//! honoured) and reset offline, the old one refused at once; a start without `admin-token`
//! mints no second key.

use std::path::Path;
use std::process::Command;

use allowly_receipt::types::KeySet;
use allowly_receipt::verify::{verify_receipt_bytes, Outcome};
use rustix::process::Signal;
use serde_json::Value;

use crate::resilience::{
    checkpoint_note, export_and_verify, signal_pid, signers_under, wait_all_signed, Acked, Continue, Load, Reaper,
};
use crate::support::*;

/// A server whose signer calls time out after 1 s (so a stopped signer is noticed quickly), in
/// a temp dir whose signers are killed when the test ends.
fn start_with_a_short_signer_timeout() -> (tempfile::TempDir, Reaper, std::path::PathBuf, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    let s = Server::start_with(&data, &["--signer-timeout-ms", "1000"]);
    (tmp, reaper, data, s)
}

/// One check of `t`'s authorization (allowed).
fn check(c: &Client, t: &Tenant) -> Resp {
    c.post("/v1/check", &t.checker, serde_json::json!({ "authorization_id": t.az, "scopes": ["files.read"] }))
}

/// `POST /v1/workspaces/{ws}/keys/rotate` as `key`, with an `Idempotency-Key` if given.
fn rotate(c: &Client, ws: &str, key: &str, idem: Option<&str>) -> Resp {
    let mut headers = vec![("Authorization".to_owned(), format!("Bearer {key}"))];
    if let Some(k) = idem {
        headers.push(("Idempotency-Key".to_owned(), k.to_owned()));
    }
    c.request("POST", &format!("/v1/workspaces/{ws}/keys/rotate"), &headers, None)
}

/// Checks a rotation's answer: `before` + 1 keys, every old one retired with its window closed
/// where the next one's opens, the new one active; the signed `key.rotated` receipt names them
/// and verifies on its own against that key set. Returns the receipt.
fn check_rotation(answer: &Value, before: usize) -> Value {
    let keys = answer["keys"]["keys"].as_array().unwrap_or_else(|| panic!("no key set: {answer}"));
    assert_eq!(keys.len(), before + 1, "{answer}");
    for pair in keys.windows(2) {
        assert_eq!(pair[0]["status"], "retired", "{answer}");
        assert_eq!(pair[0]["not_after"], pair[1]["not_before"], "windows meet: {answer}");
    }
    let (old, new) = (&keys[before - 1], &keys[before]);
    assert_eq!((&new["status"], &new["not_after"]), (&Value::from("active"), &Value::Null), "{answer}");
    let receipt = &answer["receipt"];
    assert_eq!(receipt["status"], "signed", "{answer}");
    let body = &receipt["body"];
    assert_eq!(body["kind"], "key.rotated");
    assert_eq!((&body["key"]["key_id"], &body["key"]["replaces"]), (&new["key_id"], &old["key_id"]));
    assert_eq!(body["time"], new["not_before"], "the rotation is dated when the new key starts");
    let ks: KeySet = serde_json::from_value(answer["keys"].clone()).unwrap();
    let report = verify_receipt_bytes(receipt.to_string().as_bytes(), &ks).unwrap();
    assert_eq!(report.outcome(), Outcome::Valid, "{report:?}");
    receipt.clone()
}

/// The active key's id in the published key set.
fn active_key(c: &Client, ws: &str) -> String {
    let keys = c.get(&format!("/v1/workspaces/{ws}/keys"), None).json();
    let active: Vec<&Value> = keys["keys"].as_array().unwrap().iter().filter(|k| k["status"] == "active").collect();
    assert_eq!(active.len(), 1, "{keys}");
    active[0]["key_id"].as_str().unwrap().to_owned()
}

/// The key id that signed `note` (its one signature line: `— <name> <base64(key id ‖ sig)>`).
pub(crate) fn signing_key_id(note: &str) -> String {
    use base64::Engine as _;
    let line = note.lines().rev().find(|l| l.starts_with('\u{2014}')).unwrap_or_else(|| panic!("unsigned: {note}"));
    let sig = base64::engine::general_purpose::STANDARD.decode(line.rsplit(' ').next().unwrap()).unwrap();
    hex::encode(&sig[..4])
}

/// Eight clients check without pause while the workspace key is rotated twice (by the
/// workspace's admin key with an `Idempotency-Key`, repeated; then by the instance admin key).
/// Nothing answers anything but 200 meanwhile (requests wait for the rotation), every
/// acknowledged receipt is signed, each rotation receipt sits in the log at the index it was
/// given with every receipt before it signed by the old key and every one after by the new key,
/// and the whole log, the trail and every checkpoint seen (before, at and after the rotations)
/// verify with `allowly-verify` against the final key set. After a restart the same holds and
/// the newest key still signs.
#[test]
fn a_workspace_key_rotates_under_concurrent_checks_and_the_whole_log_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    let t = tenant(&s, "rotating", &["files.read"]);
    let c = s.client();
    let first_key = active_key(&c, &t.ws);
    let mut seen = Vec::new();

    let load = Load::start(c.addr, &t, 8, &[]);
    load.wait_ok(100, &s);
    seen.extend(checkpoint_note(&c, &t));
    let r = rotate(&c, &t.ws, &t.admin, Some("rotate-1"));
    assert_eq!(r.status, 200, "{r}\n{}", s.diagnostics());
    let first = r.json();
    let receipt = check_rotation(&first, 1);
    seen.push(receipt["checkpoint"].as_str().unwrap().to_owned());
    assert_eq!(signing_key_id(receipt["checkpoint"].as_str().unwrap()), receipt["body"]["key"]["key_id"]);
    // A repeat is the first answer again (no second rotation); the same key for another request is 422.
    assert_eq!(rotate(&c, &t.ws, &t.admin, Some("rotate-1")).json(), first, "a keyed repeat");
    // The rotation receipt is found by id like any receipt, and is public in the key set.
    let id = receipt["body"]["id"].as_str().unwrap();
    let got = c.get(&format!("/v1/receipts/{id}"), Some(&t.reader));
    assert_eq!((got.status, &got.json()["body"]), (200, &receipt["body"]), "{got}");
    let second_key = active_key(&c, &t.ws);
    assert_ne!(second_key, first_key);

    load.wait_ok(300, &s);
    let r = rotate(&c, &t.ws, &s.admin_token(), None);
    assert_eq!(r.status, 200, "{r}\n{}", s.diagnostics());
    let second = check_rotation(&r.json(), 2);
    seen.push(second["checkpoint"].as_str().unwrap().to_owned());
    // One check known to come after the second rotation (the clients' may all have come before).
    let after = check(&c, &t);
    assert_eq!(after.status, 200, "{after}");
    load.wait_ok(500, &s);
    let (mut acked, unexpected, _, lost) = load.finish();
    assert!(unexpected.is_empty() && lost == 0, "unexpected answers: {unexpected:?}, lost: {lost}");
    acked.push(Acked::of(&after.json()).unwrap());

    // No receipt took a rotation's index; checkpoints from before each rotation are the old
    // key's (`allowly-verify` checks every one against its key's window below), the newest the
    // newest key's.
    wait_all_signed(&s, &t.reader, &acked);
    let (at1, at2) = (receipt["log_index"].as_u64().unwrap(), second["log_index"].as_u64().unwrap());
    assert!(at1 < at2, "{at1} {at2}");
    assert!(acked.iter().all(|a| a.log_index != at1 && a.log_index != at2), "a receipt took a rotation's index");
    assert!(acked.iter().any(|a| a.log_index < at1) && acked.iter().any(|a| a.log_index > at2), "checks on both sides");
    let third_key = active_key(&c, &t.ws);
    assert_eq!(signing_key_id(&seen[0]), first_key, "the checkpoint before the rotations");
    assert_eq!(signing_key_id(seen[1].as_str()), second_key);
    assert_eq!(signing_key_id(seen[2].as_str()), third_key);
    assert_eq!(signing_key_id(&checkpoint_note(&c, &t).unwrap()), third_key, "the newest checkpoint");
    export_and_verify(&s, &t, "files.read", &acked, &seen, tmp.path());
    let keys_before_restart = c.get(&format!("/v1/workspaces/{}/keys", t.ws), None).json();
    s.stop();

    let s = Server::start(&data);
    let c = s.client();
    assert_eq!(c.get(&format!("/v1/workspaces/{}/keys", t.ws), None).json(), keys_before_restart);
    assert_eq!(active_key(&c, &t.ws), third_key, "the newest key is still the active one");
    let after = check(&c, &t);
    assert_eq!(after.status, 200, "{after}");
    let after = Acked::of(&after.json()).unwrap();
    let signed = wait_all_signed(&s, &t.reader, std::slice::from_ref(&after));
    assert_eq!(signing_key_id(signed[&after.id]["checkpoint"].as_str().unwrap()), third_key);
    let all: Vec<Acked> = acked.into_iter().chain([after]).collect();
    export_and_verify(&s, &t, "files.read", &all, &seen, tmp.path());
}

/// A rotation whose answer is lost: the signer is stopped (SIGSTOP) with the request in its
/// socket, so the server times out not knowing whether it rotated (503). The index stays
/// reserved — checks are refused, none takes it — until the signer answers again; then the
/// next request finishes the rotation (the signer answers the repeat with the rotation it made),
/// the client's repeat with its `Idempotency-Key` gets that rotation, and after a `kill -9` of the server in the middle of it all the log still verifies whole
/// with exactly one `key.rotated` receipt.
#[test]
fn a_rotation_whose_answer_was_lost_is_finished_later_without_a_fork() {
    let (tmp, _reaper, data, mut s) = start_with_a_short_signer_timeout();
    let t = tenant(&s, "lost-answer", &["files.read"]);
    let c = s.client();
    let check = || check(&c, &t);
    let mut acked = Vec::new();
    for _ in 0..5 {
        let r = check();
        assert_eq!(r.status, 200, "{r}");
        acked.push(Acked::of(&r.json()).unwrap());
    }
    wait_all_signed(&s, &t.reader, &acked);
    let signer = s.signer_pid();
    let resume = Continue(signer);
    signal_pid(signer, Signal::STOP).unwrap();
    let r = rotate(&c, &t.ws, &t.admin, Some("lost-1"));
    r.problem(503, "signer_unavailable");
    drop(resume);
    // The signer rotated meanwhile, unknown to the server: the reserved index is not given away.
    let reserved = acked.last().unwrap().log_index + 1;
    eventually(
        "a check to be answered again (the rotation finished first)",
        || s.diagnostics(),
        || {
            let r = check();
            match r.status {
                200 => {
                    acked.push(Acked::of(&r.json()).unwrap());
                    Some(())
                }
                503 => None,
                _ => panic!("unexpected: {r}"),
            }
        },
    );
    assert_eq!(acked.last().unwrap().log_index, reserved + 1, "the check after the rotation's index");
    // The signer rotated once, and answered the repeat with that rotation.
    let metrics = c.get("/metrics", None).text();
    assert!(
        metrics.lines().any(|l| l == r#"allowly_signer_append_replays_total{answer="rotation"} 1"#),
        "the rotation was not finished by a repeat:\n{metrics}\n{}",
        s.diagnostics()
    );
    assert!(s.stderr().contains("an interrupted key rotation is finished"), "{}", s.diagnostics());
    // The client that got the 503 repeats its request: it gets the rotation that was made, not a
    // second one.
    let again = rotate(&c, &t.ws, &t.admin, Some("lost-1"));
    assert_eq!(again.status, 200, "{again}");
    assert_eq!(check_rotation(&again.json(), 1)["log_index"], reserved, "the rotation at the reserved index");
    let rotation = c.get(&format!("/v1/workspaces/{}/log/inclusion?log_index={reserved}", t.ws), Some(&t.reader));
    assert_eq!(rotation.status, 200, "{rotation}");
    s.kill9();

    let s = Server::start_with(&data, &["--signer-timeout-ms", "1000"]);
    let keys = s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "one rotation, not two: {keys}");
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());
}

/// The value of the metric line that starts with `series ` (`None` if there is none).
fn metric(s: &Server, series: &str) -> Option<f64> {
    let text = s.client().get("/metrics", None).text();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A rotation waits for the workspace's receipts to be signed up to its index for at most
/// `--rotation-drain-timeout-ms`: with the signer stopped under an acknowledged check it
/// answers 503 `signer_unavailable` with `Retry-After`, having reserved and changed nothing (the
/// same active key; checks answered meanwhile; once the signer is back, a repeat with the same
/// `Idempotency-Key` rotates, at the next index). `allowly_engine_key_rotations_total` counts
/// each outcome, every one exported from 0, and the last rotation's duration is exported.
#[test]
fn a_rotation_whose_receipts_are_not_signed_in_time_answers_503_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    // The signer counts as down only after 10 s: the drain bound, not the health check, refuses.
    let s = Server::start_with(&data, &["--rotation-drain-timeout-ms", "300", "--signer-timeout-ms", "10000"]);
    let t = tenant(&s, "drain", &["files.read"]);
    let c = s.client();
    let first_key = active_key(&c, &t.ws);
    let rotations = |outcome: &str| metric(&s, &format!("allowly_engine_key_rotations_total{{outcome=\"{outcome}\"}}"));
    for outcome in ["rotated", "drain_timeout", "refused", "unfinished", "failed"] {
        assert_eq!(rotations(outcome), Some(0.0), "{outcome} exported from the start");
    }
    assert_eq!(metric(&s, "allowly_engine_key_rotation_last_seconds"), Some(0.0));

    let signer = s.signer_pid();
    let resume = Continue(signer);
    signal_pid(signer, Signal::STOP).unwrap();
    let r = check(&c, &t);
    assert_eq!(r.status, 200, "acknowledged, pending: {r}");
    let pending = Acked::of(&r.json()).unwrap();
    let r = rotate(&c, &t.ws, &t.admin, Some("drain-1"));
    r.problem(503, "signer_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"), "{r}");
    assert_eq!(active_key(&c, &t.ws), first_key, "nothing rotated");
    let r = check(&c, &t);
    assert_eq!(r.status, 200, "nothing reserved: the next check takes the next index: {r}");
    let next = Acked::of(&r.json()).unwrap();
    assert_eq!(next.log_index, pending.log_index + 1);
    // Read after the signer is back: `/metrics` also asks the signer (and waits for it).
    drop(resume);
    assert_eq!(rotations("drain_timeout"), Some(1.0), "{}", s.diagnostics());
    // Signed first, so the short bound cannot cut the repeat on a slow machine.
    let at = next.log_index + 1;
    wait_all_signed(&s, &t.reader, &[pending, next]);

    let r = rotate(&c, &t.ws, &t.admin, Some("drain-1"));
    assert_eq!(r.status, 200, "{r}\n{}", s.diagnostics());
    let receipt = check_rotation(&r.json(), 1);
    assert_eq!(receipt["log_index"], at);
    assert_eq!((rotations("rotated"), rotations("drain_timeout")), (Some(1.0), Some(1.0)));
    assert!(metric(&s, "allowly_engine_key_rotation_last_seconds").is_some_and(|d| d > 0.0));
}

/// `allowly workspace-key rotate` asks the running server, with the admin token file: the same
/// answer as the API's, the rotation in the log.
#[test]
fn the_workspace_key_rotate_command_rotates_through_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data);
    let t = tenant(&s, "cli", &["files.read"]);
    let (ok, out) = operator(&s, &data, &["workspace-key", "rotate", "--workspace", &t.ws]);
    assert!(ok, "{out}\n{}", s.diagnostics());
    let answer = answer_of(&out);
    check_rotation(&answer, 1);
    assert_eq!(s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).json(), answer["keys"]);
    // Bad input is a problem document, and changes nothing.
    let root = s.admin_token();
    let path = format!("/v1/workspaces/{}/keys/rotate", t.ws);
    s.client()
        .call("POST", &path, Some(&root), Some(&serde_json::json!({ "key": "mine" })))
        .problem(400, "unknown_field");
    s.client().call("POST", &path, Some(&t.checker), None).problem(403, "forbidden");
    assert_eq!(s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).json(), answer["keys"]);
    // The server's refusal is the command's: an unknown workspace is a 404.
    let (ok, out) = operator(&s, &data, &["workspace-key", "rotate", "--workspace", "ws_nope"]);
    assert!(!ok && out.contains("404"), "{out}");
}

/// Runs `allowly ARGS --url <s> --token-file <data>/admin-token`; whether it succeeded and its
/// output.
fn operator(s: &Server, data: &Path, args: &[&str]) -> (bool, String) {
    operator_at(&format!("http://{}", s.client().addr), data, args)
}

/// The server's answer an operator command printed (its one JSON line on stdout; what it says
/// on stderr follows it in `out`).
fn answer_of(out: &str) -> Value {
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no answer printed: {out}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs `allowly ARGS --url URL --token-file <data>/admin-token`.
fn operator_at(url: &str, data: &Path, args: &[&str]) -> (bool, String) {
    let token = data.join("admin-token");
    let out =
        Command::new(allowly_bin()).args(args).arg("--url").arg(url).arg("--token-file").arg(&token).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Reads the head of a bodyless request from `client`, sends it to `upstream` and returns the
/// whole answer; `None` if the client did not send a whole head.
fn pass_on(client: &mut impl std::io::Read, upstream: std::net::SocketAddr) -> Option<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => return None,
        }
    }
    let mut up = std::net::TcpStream::connect(upstream).unwrap();
    up.write_all(&request).unwrap();
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).unwrap();
    Some(answer)
}

/// A TLS terminator in front of `upstream` on a loopback port, with the test certificate
/// (`fixtures/tls-server.pem`, for 127.0.0.1 and localhost, issued by `fixtures/tls-ca.pem`):
/// each connection's request (no body) is passed on and the answer sent back, then
/// `close_notify`. Serves until the test process ends.
fn tls_terminator(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::Write as _;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures");
    let chain = CertificateDer::pem_file_iter(dir.join("tls-server.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("tls-server.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // A client that refuses the certificate ends the handshake: the read fails.
            let Some(answer) = pass_on(&mut tls, upstream) else { continue };
            tls.write_all(&answer).unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    addr
}

/// The operator commands speak `https://` to a server behind a TLS terminator: with the
/// terminator's CA given by `--ca-file` they work (by IP and by host name); without it the
/// certificate is refused against Mozilla's roots, and nothing reaches the server; an
/// `http://` URL with `--ca-file`, and a URL of another scheme, are refused with a clear message.
#[test]
fn the_operator_commands_speak_https_with_a_ca_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data);
    let tls = tls_terminator(s.client().addr);
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/tls-ca.pem");
    let ca = ca.to_str().unwrap();
    let id = admin_key_ids(&s, &s.admin_token(), false);
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}", tls.port());
        let (ok, out) = operator_at(&url, &data, &["admin-key", "list", "--ca-file", ca]);
        assert!(ok, "{url}: {out}\n{}", s.diagnostics());
        let ids: Vec<Value> = serde_json::from_str::<Value>(&out).unwrap()["data"].as_array().unwrap().to_vec();
        assert_eq!(ids.iter().map(|k| k["id"].as_str().unwrap()).collect::<Vec<_>>(), id);
    }
    let url = format!("https://127.0.0.1:{}", tls.port());
    let (ok, out) = operator_at(&url, &data, &["admin-key", "rotate"]);
    assert!(!ok && out.contains("UnknownIssuer"), "Mozilla's roots do not know the test CA: {out}");
    assert_eq!(admin_key_ids(&s, &s.admin_token(), false), id, "nothing reached the server");
    let (ok, out) = operator(&s, &data, &["admin-key", "list", "--ca-file", ca]);
    assert!(!ok && out.contains("--ca-file is for https://"), "{out}");
    let (ok, out) = operator_at("ftp://127.0.0.1:1", &data, &["admin-key", "list"]);
    assert!(!ok && out.contains("--url must be http://HOST[:PORT] or https://HOST[:PORT]"), "{out}");
    // `allowly backup` takes the same --ca-file: refused against Mozilla's roots (nothing is
    // staged or written), then made through the terminator with the test CA.
    let backup = |dest: &Path, extra: &[&str]| {
        let out = Command::new(allowly_bin())
            .arg("backup")
            .arg(dest)
            .arg("--data-dir")
            .arg(&data)
            .args(["--url", &url])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let refused = tmp.path().join("backup-refused");
    let (ok, out) = backup(&refused, &[]);
    assert!(!ok && out.contains("UnknownIssuer"), "{out}");
    assert!(!refused.join("manifest.json").exists(), "{out}");
    let dest = tmp.path().join("backup-over-https");
    let (ok, out) = backup(&dest, &["--ca-file", ca]);
    assert!(ok, "{out}\n{}", s.diagnostics());
    assert!(dest.join("manifest.json").is_file() && dest.join("db").is_dir() && dest.join("signer").is_dir(), "{out}");
}

/// A loopback proxy in front of `upstream` that passes each connection's request (no body) on
/// and, for as long as `lose` is above zero (counting it down), drops the server's answer
/// instead of sending it back: the request was acted on, and the client never hears of it.
/// Counts the requests it passed in `seen`. Serves until the test process ends.
fn answer_losing_proxy(
    upstream: std::net::SocketAddr,
    lose: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::net::SocketAddr {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let Some(answer) = pass_on(&mut tcp, upstream) else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            if lose.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                continue; // dropped: the connection closes without an answer
            }
            let _ = tcp.write_all(&answer);
        }
    });
    addr
}

/// The operator commands that change something send an `Idempotency-Key` (issue 12): when the
/// answer is lost after the server acted, the command sends the request again with the same
/// key by itself and prints the first answer — one workspace key rotation, one new instance
/// admin key, never two; and the key it prints on stderr, given back with --idempotency-key,
/// repeats a command by hand with the same effect.
#[test]
fn operator_commands_resent_after_a_lost_answer_act_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start(&data);
    let t = tenant(&s, "lossy", &["files.read"]);
    let (lose, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = format!("http://{}", answer_losing_proxy(s.client().addr, lose.clone(), seen.clone()));
    let keys =
        |ws: &str| s.client().get(&format!("/v1/workspaces/{ws}/keys"), None).json()["keys"].as_array().unwrap().len();

    // A workspace key rotation whose first answer is lost.
    lose.store(1, Ordering::SeqCst);
    let (ok, out) = operator_at(&url, &data, &["workspace-key", "rotate", "--workspace", &t.ws]);
    assert!(ok, "{out}\n{}", s.diagnostics());
    assert!(out.contains("sending the request again with the same Idempotency-Key"), "{out}");
    assert_eq!(seen.swap(0, Ordering::SeqCst), 2, "sent twice");
    let answer = answer_of(&out);
    check_rotation(&answer, 1);
    assert_eq!(keys(&t.ws), 2, "one rotation, not two");

    // The key it printed repeats it by hand: the same answer, still one rotation.
    let key = out.split("Idempotency-Key ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_owned();
    let (ok, again) =
        operator_at(&url, &data, &["workspace-key", "rotate", "--workspace", &t.ws, "--idempotency-key", &key]);
    assert!(ok, "{again}");
    let again = answer_of(&again);
    assert_eq!(again, answer, "the first answer again");
    assert_eq!(keys(&t.ws), 2);

    // The instance admin key rotated with its first answer lost: one new key, the old one
    // revoked, and the answer the command prints is the key the server wrote to admin-token.
    let first = s.admin_token();
    assert_eq!(seen.swap(0, Ordering::SeqCst), 1, "the repeat by hand was sent once");
    lose.store(1, Ordering::SeqCst);
    let (ok, out) = operator_at(&url, &data, &["admin-key", "rotate"]);
    assert!(ok, "{out}\n{}", s.diagnostics());
    assert_eq!(seen.swap(0, Ordering::SeqCst), 2, "sent twice");
    let rotated = answer_of(&out);
    let second = s.admin_token();
    assert_eq!(rotated["secret"], second.as_str(), "{out}");
    assert_eq!(admin_key_ids(&s, &second, false).len(), 1, "one live key: no second one minted");
    assert_eq!(admin_key_ids(&s, &second, true).len(), 1, "the first one revoked");
    s.client().get(&format!("/v1/workspaces/{}", t.ws), Some(&first)).problem(401, "unauthenticated");

    // An answer lost three times: the command gives up, saying so and how to repeat it.
    lose.store(3, Ordering::SeqCst);
    let (ok, out) = operator_at(&url, &data, &["workspace-key", "rotate", "--workspace", &t.ws]);
    assert!(!ok && out.contains("--idempotency-key"), "{out}");
    assert_eq!(keys(&t.ws), 3, "acted on once");
    // A key the server would refuse is refused before anything is sent.
    let (ok, out) =
        operator_at(&url, &data, &["workspace-key", "rotate", "--workspace", &t.ws, "--idempotency-key", "a b"]);
    assert!(!ok && out.contains("printable ASCII"), "{out}");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

/// Instance admin keys: the last live one cannot be revoked (409) but is rotated, with an
/// `Idempotency-Key` honoured — a repeat of the rotation bearing the key it revoked gets the
/// first answer and no second key is minted, another caller's use of the same key is 422 —
/// and `allowly admin-key rotate` rotates again; `allowly admin-key reset` with the server
/// stopped revokes every one of them and writes a new token: after the restart the old tokens
/// are refused (401) and the new one works.
#[test]
fn instance_admin_keys_are_revoked_rotated_and_reset_offline_the_old_ones_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    let c = s.client();
    let first = s.admin_token();
    let ws = c.post("/v1/workspaces", &first, serde_json::json!({ "name": "keys" })).created("ws")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first_id = admin_key_ids(&s, &first, false)[0].clone();
    let get = |key: &str| c.get(&format!("/v1/workspaces/{ws}"), Some(key));
    let revoke = |by: &str, id: &str| c.call("POST", &format!("/v1/admin-keys/{id}/revoke"), Some(by), None);
    revoke(&first, &first_id).problem(409, "conflict");
    revoke(&first, &first_id.replace("ak_", "ak_0")).problem(404, "not_found");
    let t = tenant(&s, "scoped", &["files.read"]);
    revoke(&t.admin, &first_id).problem(403, "forbidden");

    let rotate = |by: &str, key: Option<&str>, body: Option<&[u8]>| {
        let mut headers = vec![("Authorization".to_owned(), format!("Bearer {by}"))];
        headers.extend(key.map(|k| ("Idempotency-Key".to_owned(), k.to_owned())));
        if body.is_some() {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        }
        c.request("POST", "/v1/admin-key/rotate", &headers, body)
    };
    let r = rotate(&first, Some("rot-1"), None);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let second = r.json()["secret"].as_str().unwrap().to_owned();
    let second_id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(s.admin_token(), second, "the server wrote the new key to admin-token");
    get(&first).problem(401, "unauthenticated");
    // The answer was lost: the client repeats with the key it had, which is revoked by now.
    let again = rotate(&first, Some("rot-1"), None);
    assert_eq!((again.status, again.json()), (200, r.json()), "the repeat gets the first answer: {again}");
    assert_eq!(again.header("cache-control"), Some("no-store"));
    assert_eq!(admin_key_ids(&s, &second, false), std::slice::from_ref(&second_id), "no key minted by the repeat");
    assert_eq!(admin_key_ids(&s, &second, true), std::slice::from_ref(&first_id));
    // Nothing else accepts the revoked key: unkeyed, another key, a body, another route.
    rotate(&first, None, None).problem(401, "unauthenticated");
    rotate(&first, Some("rot-2"), None).problem(401, "unauthenticated");
    rotate(&first, Some("rot-1"), Some(br#"{"x":1}"#)).problem(400, "unknown_field");
    c.request(
        "POST",
        &format!("/v1/admin-keys/{second_id}/revoke"),
        &[("Authorization".to_owned(), format!("Bearer {first}")), ("Idempotency-Key".to_owned(), "rot-1".to_owned())],
        None,
    )
    .problem(401, "unauthenticated");
    // The same key from another caller is another request; it changes nothing.
    rotate(&second, Some("rot-1"), None).problem(422, "idempotency_key_reused");
    assert_eq!(get(&second).status, 200);
    assert_eq!(admin_key_ids(&s, &second, false), std::slice::from_ref(&second_id));
    revoke(&second, &first_id).problem(409, "conflict");

    let (ok, out) = operator(&s, &data, &["admin-key", "rotate"]);
    assert!(ok, "{out}");
    let third = answer_of(&out)["secret"].as_str().unwrap().to_owned();
    let (ok, out) = operator(&s, &data, &["admin-key", "revoke", "--key-id", &second_id]);
    assert!(!ok && out.contains("409"), "already revoked by the rotation: {out}");
    assert_eq!(s.admin_token(), third, "the server wrote the new key to admin-token");
    get(&second).problem(401, "unauthenticated");
    assert_eq!(get(&third).status, 200);
    // The first rotation's repeat still answers what it answered, and writes no file.
    assert_eq!(rotate(&first, Some("rot-1"), None).json(), r.json());
    assert_eq!(s.admin_token(), third);

    // Break glass: refused while the server runs (the store is locked), then done offline.
    let reset = || Command::new(allowly_bin()).args(["admin-key", "reset", "--data-dir"]).arg(&data).output().unwrap();
    let out = reset();
    assert!(!out.status.success(), "reset while the server runs: {out:?}");
    s.stop();
    let out = reset();
    assert!(out.status.success(), "{out:?}");
    let s = Server::start(&data);
    let c = s.client();
    let fourth = s.admin_token();
    assert!(fourth != third && fourth.starts_with("alw_"));
    for old in [&first, &second, &third] {
        c.get(&format!("/v1/workspaces/{ws}"), Some(old)).problem(401, "unauthenticated");
    }
    assert_eq!(c.get(&format!("/v1/workspaces/{ws}"), Some(&fourth)).status, 200);
    assert_eq!(c.get(&format!("/v1/workspaces/{}", t.ws), Some(&t.reader)).status, 200, "workspace keys untouched");
}

/// A start without `admin-token` while an instance admin key is live mints none (the issue
/// found a second live key minted each time): the server starts, says the file is missing and
/// how to replace a lost key, writes no file, and the key that is live still works and stays
/// the only one. A rotation writes the file again; `allowly admin-key reset` replaces a key
/// that is lost.
#[test]
fn a_start_without_admin_token_mints_no_second_key_while_one_is_live() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    let first = s.admin_token();
    let first_id = admin_key_ids(&s, &first, false);
    assert_eq!(first_id.len(), 1);
    s.stop();
    std::fs::remove_file(data.join("admin-token")).unwrap();

    let mut s = Server::start(&data);
    assert!(!data.join("admin-token").exists(), "a token file written: {}", s.diagnostics());
    // The stderr reader runs beside the start-up: wait for the line, do not race it.
    eventually(
        "the missing-token warning on stderr",
        || s.diagnostics(),
        || s.stderr().contains("admin-key reset").then_some(()),
    );
    assert_eq!(admin_key_ids(&s, &first, false), first_id, "the same single live key");
    assert!(admin_key_ids(&s, &first, true).is_empty(), "nothing revoked either");
    let r = s.client().call("POST", "/v1/admin-key/rotate", Some(&first), None);
    assert_eq!(r.status, 200, "{r}");
    let second = r.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(s.admin_token(), second, "the rotation wrote the file");
    s.stop();

    // The key lost with its file: reset, offline, gives a new one.
    std::fs::remove_file(data.join("admin-token")).unwrap();
    let out = Command::new(allowly_bin()).args(["admin-key", "reset", "--data-dir"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let s = Server::start(&data);
    let third = s.admin_token();
    assert_eq!(admin_key_ids(&s, &third, false).len(), 1);
    s.client().get("/v1/admin-keys", Some(&second)).problem(401, "unauthenticated");
}

/// The ids of the instance admin keys (`revoked` ones, or the others), listed by `GET
/// /v1/admin-keys` as `secret`.
fn admin_key_ids(s: &Server, secret: &str, revoked: bool) -> Vec<String> {
    let list = s.client().get("/v1/admin-keys", Some(secret));
    assert_eq!(list.status, 200, "{list}");
    let v = list.json();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked_at"].is_null() != revoked)
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A rotation interrupted by a crash: the signer stopped with the request unread, the server
/// answers 503 (the index is reserved in the store by then); the signer goes on and rotates,
/// its answer lost; then `kill -9` takes the server and its signer down before anything else
/// happens. At the next start the signer's log is one leaf ahead of the store — the rotation's,
/// which the start-up comparison must not take for a store older than the signer — and the
/// rotation is finished by itself, before any request; the log verifies whole: the reserved
/// index holds the rotation, the next check the one after.
#[test]
fn a_rotation_interrupted_by_a_crash_is_finished_at_the_next_start() {
    let (tmp, _reaper, data, mut s) = start_with_a_short_signer_timeout();
    let t = tenant(&s, "crash", &["files.read"]);
    let c = s.client();
    let check = |c: &Client| check(c, &t);
    let first = check(&c);
    assert_eq!(first.status, 200, "{first}");
    let mut acked = vec![Acked::of(&first.json()).unwrap()];
    wait_all_signed(&s, &t.reader, &acked);
    let signer = s.signer_pid();
    let _resume = Continue(signer);
    signal_pid(signer, Signal::STOP).unwrap();
    rotate(&c, &t.ws, &t.admin, None).problem(503, "signer_unavailable");
    signal_pid(signer, Signal::CONT).unwrap();
    let key_file = data.join("signer").join("keys").join(format!("{}.json", t.ws));
    eventually(
        "the signer to rotate, unknown to the server",
        || s.diagnostics(),
        || {
            let keys: Value = serde_json::from_slice(&std::fs::read(&key_file).ok()?).ok()?;
            (keys["keys"].as_array()?.len() == 2).then_some(())
        },
    );
    s.kill9();
    eventually(
        "the signer to die with the server",
        || s.diagnostics(),
        || signers_under(tmp.path()).is_empty().then_some(()),
    );

    let s = Server::start_with(&data, &["--signer-timeout-ms", "1000"]);
    let c = s.client();
    let keys = eventually(
        "the rotation to be finished at start",
        || s.diagnostics(),
        || {
            let keys = c.get(&format!("/v1/workspaces/{}/keys", t.ws), None).json();
            (keys["keys"].as_array().unwrap().len() == 2).then_some(keys)
        },
    );
    assert_eq!(keys["keys"][1]["status"], "active", "{keys}");
    assert!(s.stderr().contains("finishing a key rotation left unfinished"), "{}", s.diagnostics());
    assert_eq!(c.get("/readyz", None).status, 200, "not flagged as a store older than the signer");
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "the signer's rotation, not a second one: {keys}");
    let reserved = acked[0].log_index + 1;
    let r = c.get(&format!("/v1/workspaces/{}/log/inclusion?log_index={reserved}", t.ws), Some(&t.reader));
    assert_eq!(r.status, 200, "{r}");
    let next = check(&c);
    assert_eq!(next.status, 200, "{next}");
    acked.push(Acked::of(&next.json()).unwrap());
    assert_eq!(acked[1].log_index, reserved + 1);
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());
}

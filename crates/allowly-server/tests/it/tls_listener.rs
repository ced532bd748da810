//! The server's own TLS listener (`--tls-cert-file`, `--tls-key-file`), black box: HTTPS with
//! the configured certificate, nothing in plaintext, a renewed certificate taken on SIGHUP, a
//! broken one refused on SIGHUP with the one in use kept, wrong settings refused at start, and
//! SIGHUP harmless without a TLS listener.
//! The client is the real `curl`; certificates are the test CA's fixtures and one made here
//! with the real `openssl` (another issuer, so the switch between them shows).

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/it/fixtures").join(name)
}

/// A self-signed certificate and key for 127.0.0.1, made with `openssl`, in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("self-signed.pem"), dir.join("self-signed.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", describe_output("openssl req", &out));
    (cert, key)
}

/// `curl` of `path` on `s` over HTTPS, trusting `ca` (or, with `None`, checking nothing), with
/// `args`: its exit code and what it printed.
fn curl_with(s: &Server, path: &str, ca: Option<&Path>, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    match ca {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("--insecure"),
    };
    let out = cmd.arg(format!("https://{}{path}", s.addr)).output().expect("run curl (scripts/setup.sh installs it)");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`curl_with`], printing only the HTTP status.
fn curl(s: &Server, path: &str, ca: Option<&Path>) -> (Option<i32>, String) {
    curl_with(s, path, ca, &["-o", "/dev/null", "-w", "%{http_code}"])
}

fn start_tls(data: &Path, cert: &Path, key: &Path) -> Server {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let s = Server::start_with(data, &["--tls-cert-file", cert, "--tls-key-file", key]);
    eventually("/readyz over HTTPS", || s.diagnostics(), || (curl(&s, "/readyz", None).1 == "200").then_some(()));
    s
}

#[test]
fn the_listener_speaks_https_with_its_certificate_and_takes_a_renewed_one_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let (other_cert, other_key) = self_signed(tmp.path());
    // The files the server reads, replaced in place as a certificate renewal would. Readable
    // by every user: started as root, the server reads them again on SIGHUP as its own user.
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::copy(&other_cert, &cert).unwrap();
    std::fs::copy(&other_key, &key).unwrap();
    for path in [tmp.path(), &cert, &key] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let s = start_tls(&tmp.path().join("data"), &cert, &key);
    let ca = fixture("tls-ca.pem");

    // Served over TLS with the configured certificate: its own issuer, not the test CA.
    assert_eq!(curl(&s, "/healthz", None), (Some(0), "200".into()));
    assert_eq!(curl(&s, "/healthz", Some(&ca)).0, Some(60), "verified against a CA that did not issue it");
    assert_eq!(curl(&s, "/healthz", Some(&other_cert)), (Some(0), "200".into()));
    // Plaintext gets no HTTP answer: the bytes are not a TLS hello, the handshake fails.
    let plain = try_request(s.addr, "GET", "/healthz", "", b"");
    assert!(plain.is_none(), "plaintext answered: {plain:?}");
    let closed = || {
        let (_, text) = curl_with(&s, "/metrics", None, &[]);
        metric_in(&text, "allowly_http_connections_closed_total{reason=\"tls_handshake\"}").unwrap_or(0.0)
    };
    eventually("the failed handshake to be counted", || s.diagnostics(), || (closed() >= 1.0).then_some(()));

    // Renewed: the test CA's certificate and key in place of the files, then SIGHUP.
    std::fs::copy(fixture("tls-server.pem"), &cert).unwrap();
    std::fs::copy(fixture("tls-server.key"), &key).unwrap();
    s.signal(rustix::process::Signal::HUP);
    eventually(
        "the renewed certificate to be presented",
        || s.diagnostics(),
        || (curl(&s, "/healthz", Some(&ca)) == (Some(0), "200".into())).then_some(()),
    );
    assert_eq!(curl(&s, "/healthz", Some(&other_cert)).0, Some(60), "the old certificate is still presented");

    // A broken renewal (a half-written file) is refused and the pair in use stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    s.signal(rustix::process::Signal::HUP);
    eventually(
        "the broken certificate to be refused",
        || s.diagnostics(),
        || s.stderr().contains("the TLS certificate was not reloaded").then_some(()),
    );
    assert_eq!(curl(&s, "/healthz", Some(&ca)), (Some(0), "200".into()), "a broken renewal broke the listener");
}

/// `allowly serve` with `args` exits by itself, non-zero, saying `expect`.
fn refuses_to_start(data: &Path, args: &[&str], expect: &str) {
    let mut child = Command::new(allowly_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("ALLOWLY_TLS_CERT_FILE")
        .env_remove("ALLOWLY_TLS_KEY_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("allowly to exit", String::new, || child.try_wait().unwrap());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success() && stderr.contains(expect), "{status}: {stderr}");
}

#[test]
fn wrong_tls_settings_stop_the_start_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (other_cert, other_key) = self_signed(tmp.path());
    let (cert, key) = (fixture("tls-server.pem"), fixture("tls-server.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let data = tmp.path().join("data");
    refuses_to_start(&data, &["--tls-cert-file", cert], "tls_cert_file and tls_key_file go together");
    let missing = tmp.path().join("missing.pem");
    refuses_to_start(&data, &["--tls-cert-file", missing.to_str().unwrap(), "--tls-key-file", key], "missing.pem");
    // A key that is not the certificate's.
    refuses_to_start(
        &data,
        &["--tls-cert-file", cert, "--tls-key-file", other_key.to_str().unwrap()],
        "cannot be used together",
    );
    // A certificate file in the key's place: no key in it.
    refuses_to_start(
        &data,
        &["--tls-cert-file", cert, "--tls-key-file", other_cert.to_str().unwrap()],
        "no PEM private key in it",
    );
}

/// SIGHUP to a server without a TLS listener is logged and changes nothing: an operator's
/// `reload`, or a closed terminal, never stops the service (SIGHUP's default action would).
#[test]
fn sighup_without_a_tls_listener_does_not_stop_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path());
    s.wait_ready();
    s.signal(rustix::process::Signal::HUP);
    eventually(
        "SIGHUP to be logged",
        || s.diagnostics(),
        || s.stderr().contains("SIGHUP: nothing to reload").then_some(()),
    );
    assert_eq!(s.client().get("/healthz", None).status, 200);
    s.stop();
}

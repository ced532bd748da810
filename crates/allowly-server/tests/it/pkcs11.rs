//! `allowly serve --signer-keystore pkcs11` black-box, against a real SoftHSM2 token: receipts
//! signed through the whole service path by keys that live on the token, accepted by the real
//! `allowly-verify`, across a key rotation (the new key made on the token) and a restart; and a token that refuses (wrong PIN, missing label or
//! module) fails the service closed — it does not start, or, once running, its checks answer
//! 503 until the token works again, and nothing unsigned is ever left behind.
// The signer's SoftHSM2 fixture (a token directory of this process's own).
#[path = "../../../allowly-signer/tests/support/softhsm.rs"]
mod softhsm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::support::*;
use serde_json::{json, Value};
use softhsm::{softhsm_owned_by, SoftHsm, USER_PIN};

const TOKENS: &[&str] = &["srv-sign", "srv-refuse"];

fn hsm() -> &'static SoftHsm {
    softhsm_owned_by(TOKENS, signer_uid())
}

/// Started as root (as CI runs), `allowly serve` runs its signer as the user `allowly-signer`
/// (see `isolation`), which must own the token files and the PIN file: that user's uid, created
/// here as `allowly serve` would if missing. `None` otherwise (the signer runs as us).
fn signer_uid() -> Option<u32> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let lookup = || {
        let out = Command::new("id").args(["-u", "allowly-signer"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())?
    };
    // useradd exits 9 if the user was created meanwhile and 10 if /etc/passwd is locked by
    // another useradd: an `allowly serve` started as root by another test of this binary creates
    // the same user. Either way: look again.
    Some(eventually("the allowly-signer user", String::new, || {
        lookup().or_else(|| {
            let _ = Command::new("useradd")
                .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
                .args(["--user-group", "--comment", "Allowly (created by allowly serve)", "allowly-signer"])
                .stderr(Stdio::null())
                .status();
            lookup()
        })
    }))
}

/// A temp dir the signer's user can traverse (to its PIN file).
fn tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new().prefix("allowly-hsm-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(t.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    t
}

/// A PIN file (mode 0600) owned by the user the signer runs as.
fn pin_file(dir: &Path, name: &str, pin: &str) -> PathBuf {
    let p = hsm().pin_file(dir, name, pin);
    if let Some(uid) = signer_uid() {
        std::os::unix::fs::chown(&p, Some(uid), None).unwrap();
    }
    p
}

/// `--signer-keystore pkcs11` and the token options.
fn keystore_args(label: &str, pin_file: &Path) -> Vec<String> {
    let mut args = hsm().signer_args(label, pin_file);
    args[0] = "--signer-keystore".into();
    args
}

fn start(data: &Path, label: &str, pin_file: &Path) -> Server {
    let args = keystore_args(label, pin_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(data, &args)
}

fn check(s: &Server, checker: &str, az: &str) -> Resp {
    s.client().post("/v1/check", checker, json!({ "authorization_id": az, "scopes": ["files.read"] }))
}

/// Waits until every receipt of the trail is signed, exports it with the workspace's keys and
/// has `allowly-verify` check it; returns the number of receipts.
fn verified_export(s: &Server, ws: &str, reader: &str, az: &str, dir: &Path) -> usize {
    let c = s.client();
    let export = || {
        let r = c.get(&format!("/v1/authorizations/{az}/export"), Some(reader));
        assert_eq!(r.status, 200, "{r}");
        r.text()
    };
    let text = eventually(
        "every receipt to be signed",
        || s.diagnostics(),
        || {
            let t = export();
            let receipts: Vec<Value> = t
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|v| v["type"] == "receipt")
                .collect();
            receipts.iter().all(|v| v["receipt"]["status"] == "signed").then_some(t)
        },
    );
    let keys = c.get(&format!("/v1/workspaces/{ws}/keys"), None);
    assert_eq!(keys.status, 200, "{keys}");
    let (bundle, keys_path) = (dir.join("trail.jsonl"), dir.join("keys.json"));
    std::fs::write(&bundle, &text).unwrap();
    std::fs::write(&keys_path, &keys.body).unwrap();
    let (code, shown) = run_verifier(&bundle, &keys_path, &[]);
    assert_eq!(code, Some(0), "allowly-verify does not accept the HSM-signed trail:\n{shown}");
    text.lines().filter(|l| l.contains("\"type\":\"receipt\"")).count()
}

/// The whole log of `ws` (up to its newest checkpoint, every receipt signed) verified by
/// `allowly-verify` against the published keys; returns how many receipts it holds.
fn verified_log(s: &Server, ws: &str, reader: &str, dir: &Path) -> u64 {
    let c = s.client();
    let cp = c.get(&format!("/v1/workspaces/{ws}/log/checkpoint"), Some(reader)).json();
    let size = cp["size"].as_u64().unwrap();
    let log = c.get(&format!("/v1/workspaces/{ws}/log/export?from=0&to={size}"), Some(reader));
    assert_eq!(log.status, 200, "{log}");
    let (bundle, keys_path) = (dir.join("log.jsonl"), dir.join("keys.json"));
    std::fs::write(&bundle, &log.body).unwrap();
    std::fs::write(&keys_path, &c.get(&format!("/v1/workspaces/{ws}/keys"), None).body).unwrap();
    let (code, shown) = run_verifier(&bundle, &keys_path, &[]);
    assert_eq!(code, Some(0), "allowly-verify does not accept the HSM-signed log:\n{shown}");
    size
}

/// Receipts signed by token keys, a key rotation on the token in between (the new key generated
/// on the token, the rotation receipt signed by it), and a restart: every receipt and the whole
/// log pass `allowly-verify`, and the new token key is the one that signs after the restart.
#[test]
fn receipts_signed_by_token_keys_pass_allowly_verify_across_a_rotation_and_a_restart() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let pin = pin_file(tmp.path(), "pin", USER_PIN);
    let mut s = start(&data, "srv-sign", &pin);
    let Tenant { ws, checker, reader, az, admin, .. } = tenant(&s, "hsm", &["files.*"]);
    for _ in 0..5 {
        let r = check(&s, &checker, &az);
        assert_eq!((r.status, r.json()["decision"].as_str()), (200, Some("allow")), "{r}");
    }
    let before = verified_export(&s, &ws, &reader, &az, tmp.path());
    assert_eq!(before, 6, "the creation receipt and five checks");
    // The keys are the token's: no master key, and the key file names a token object.
    assert!(!data.join("signer").join("master.key").exists(), "a master key was made");
    let key_file = std::fs::read_to_string(data.join("signer").join("keys").join(format!("{ws}.json"))).unwrap();
    assert!(key_file.contains("token_object") && !key_file.contains("sealed_seed"), "{key_file}");

    let r = s.client().call("POST", &format!("/v1/workspaces/{ws}/keys/rotate"), Some(&admin), None);
    assert_eq!(r.status, 200, "{r}\n{}", s.diagnostics());
    let rotation = r.json();
    let new_key = rotation["receipt"]["body"]["key"]["key_id"].as_str().unwrap().to_owned();
    let key_file = std::fs::read_to_string(data.join("signer").join("keys").join(format!("{ws}.json"))).unwrap();
    assert_eq!(key_file.matches("token_object").count(), 2, "the new key is on the token too: {key_file}");
    assert_eq!(verified_log(&s, &ws, &reader, tmp.path()), 7, "six receipts and the rotation");

    s.stop();
    let s = start(&data, "srv-sign", &pin);
    s.wait_ready();
    for _ in 0..3 {
        assert_eq!(check(&s, &checker, &az).status, 200);
    }
    assert_eq!(verified_export(&s, &ws, &reader, &az, tmp.path()), 9, "the log goes on after the restart");
    assert_eq!(verified_log(&s, &ws, &reader, tmp.path()), 10);
    let keys = s.client().get(&format!("/v1/workspaces/{ws}/keys"), None).json();
    let active: Vec<&Value> = keys["keys"].as_array().unwrap().iter().filter(|k| k["status"] == "active").collect();
    assert_eq!((active.len(), active[0]["key_id"].as_str()), (1, Some(new_key.as_str())), "{keys}");
}

/// Runs `allowly serve` with `args` and expects it to exit non-zero by itself (the embedded
/// signer refused to start), saying `expect`; the PIN never appears.
fn refuses_to_start(data: &Path, args: &[String], expect: &str) {
    let mut cmd = Command::new(allowly_bin());
    cmd.arg("serve").arg("--data-dir").arg(data).args(["--listen", "127.0.0.1:0"]).args(args);
    cmd.env_remove("ALLOWLY_SIGNER_KEYSTORE").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("allowly serve {args:?} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(POLL);
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!status.success(), "allowly served with {args:?}:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("listening on"), "it listened:\n{stdout}");
    assert!(stderr.contains(expect), "stderr does not say {expect:?}:\n{stderr}");
    assert!(!stderr.contains(USER_PIN), "the PIN was printed:\n{stderr}");
}

/// Replaces the PIN file's content (keeping its mode).
fn write_pin(path: &PathBuf, pin: &str) {
    std::fs::write(path, format!("{pin}\n")).unwrap();
}

#[test]
fn a_token_that_refuses_fails_the_service_closed_and_it_recovers_when_the_token_works() {
    let tmp = tempdir();
    let pin = pin_file(tmp.path(), "pin", USER_PIN);
    let wrong = pin_file(tmp.path(), "wrong-pin", "0000-wrong");
    refuses_to_start(&tmp.path().join("d1"), &keystore_args("srv-refuse", &wrong), "CKR_PIN_INCORRECT");
    refuses_to_start(&tmp.path().join("d2"), &keystore_args("no-such-token", &pin), "no token labelled");
    let mut args = keystore_args("srv-refuse", &pin);
    args[3] = "/nonexistent/libpkcs11.so".into();
    refuses_to_start(&tmp.path().join("d3"), &args, "/nonexistent/libpkcs11.so");

    // A running service whose signer restarts into a token that refuses its PIN.
    let data = tmp.path().join("data");
    let s = start(&data, "srv-refuse", &pin);
    let Tenant { ws, checker, reader, az, .. } = tenant(&s, "hsm", &["files.*"]);
    assert_eq!(check(&s, &checker, &az).status, 200);
    write_pin(&pin, "0000-wrong");
    let signer = s.signer_pid();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(signer as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    // Until the engine notices the signer is gone, a check may still be acknowledged with a
    // durable pending receipt (the fail-closed window); then every check is refused.
    eventually(
        "checks to fail closed with 503 signer_unavailable",
        || s.diagnostics(),
        || {
            let r = check(&s, &checker, &az);
            match r.status {
                200 => None,
                _ => {
                    r.problem(503, "signer_unavailable");
                    Some(())
                }
            }
        },
    );
    // It stays closed: the restarted signer cannot log in (its stderr says why).
    eventually(
        "the restarted signer to be refused by the token",
        || s.diagnostics(),
        || s.stderr().contains("CKR_PIN_INCORRECT").then_some(()),
    );
    for _ in 0..5 {
        check(&s, &checker, &az).problem(503, "signer_unavailable");
    }
    let ready = s.client().get("/readyz", None);
    assert_eq!(ready.status, 503, "{ready}");

    // The PIN is right again: the supervisor's next restart logs in, checks are answered, and
    // every receipt, including those acknowledged in the window, ends up signed and verifies.
    write_pin(&pin, USER_PIN);
    s.wait_ready();
    assert_eq!(check(&s, &checker, &az).status, 200);
    let n = verified_export(&s, &ws, &reader, &az, tmp.path());
    assert!(n >= 3, "{n} receipts");
}

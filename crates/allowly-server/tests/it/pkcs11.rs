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

use crate::resilience::{checkpoint_note, export_and_verify, Load};
use crate::rotation::signing_key_id;
use crate::support::*;
use serde_json::{json, Value};
use softhsm::{softhsm_owned_by, SoftHsm, USER_PIN};

const TOKENS: &[&str] = &["srv-sign", "srv-refuse", "srv-loss", "srv-move", "srv-notopen", "srv-miss"];

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
    start_with(data, label, pin_file, &[])
}

fn start_with(data: &Path, label: &str, pin_file: &Path, extra: &[&str]) -> Server {
    let mut args = keystore_args(label, pin_file);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(data, &args)
}

/// [`start`] with a signer timeout of 10 s (the most allowed) instead of the default 2 s, for a
/// test of the token's keys rather than of how soon a slow signer counts as down. A rotation
/// generates a key on the token and waits for the signer within that timeout (plus the drain
/// and commits); once, on a CPU-starved machine, it did not answer 200 with the default.
fn start_patient(data: &Path, label: &str, pin_file: &Path) -> Server {
    start_with(data, label, pin_file, &["--signer-timeout-ms", "10000"])
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
    let mut s = start_patient(&data, "srv-sign", &pin);
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
    let s = start_patient(&data, "srv-sign", &pin);
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

/// The token goes away under `allowly serve` while clients check (its SoftHSM2 directory moved
/// off: a token pulled out, an HSM restarting) and comes back. Every check is answered 200 (a
/// receipt) or `503 signer_token_unavailable` with `Retry-After` — never a 500, nor the generic
/// `signer_unavailable`: the signer answers its health check that its token is unavailable, and
/// that is what the service says. Meanwhile `/readyz` is not ready with a cause of that code
/// naming the token, and the signer's `allowly_signer_token_lost` is 1; then, with nobody
/// restarting anything, the signer finds the token again, checks are answered, every
/// acknowledged receipt is signed, and the whole log verifies with `allowly-verify` against the
/// published keys and every checkpoint seen before the loss.
#[test]
fn a_token_lost_while_serving_fails_checks_closed_and_signing_resumes_when_it_is_back() {
    let (tmp, s, t, load, seen) = checked_on("srv-loss", "hsm-loss");

    let (home, away) = (hsm().token_dir("srv-loss"), hsm().root.join("srv-loss-away"));
    std::fs::rename(&home, &away).unwrap();
    eventually(
        "checks to fail closed with 503 signer_token_unavailable",
        || s.diagnostics(),
        || {
            let r = check(&s, &t.checker, &t.az);
            (r.status == 503).then(|| token_unavailable(&r))
        },
    );
    for _ in 0..5 {
        token_unavailable(&check(&s, &t.checker, &t.az));
    }
    // A signing round may meet the lost token (and its workspace refuse checks with the same
    // code) before the signer's health check does; the instance is unready once it has.
    let ready = eventually(
        "/readyz to be 503",
        || s.diagnostics(),
        || {
            let r = s.client().get("/readyz", None);
            (r.status == 503).then_some(r)
        },
    );
    let causes = ready.json()["causes"].clone();
    assert!(
        causes.as_array().unwrap().iter().any(|c| c["code"] == "signer_token_unavailable"
            && c["detail"].as_str().is_some_and(|d| d.contains("PKCS#11 token is unavailable"))),
        "{ready}"
    );
    token_unavailable(&check(&s, &t.checker, &t.az));
    let metrics = |admin: &str| s.client().get("/metrics", Some(admin)).text();
    let root = s.admin_token();
    eventually(
        "allowly_signer_token_lost 1 on /metrics",
        || metrics(&root),
        || metrics(&root).lines().any(|l| l == "allowly_signer_token_lost 1").then_some(()),
    );
    let during = load.ok();

    std::fs::rename(&away, &home).unwrap();
    s.wait_ready();
    load.wait_ok(during + 20, &s);
    let (acked, unexpected, unavailable, _) = load.finish();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(unavailable > 0, "the clients never saw the outage");
    export_and_verify(&s, &t, "files.read", &acked, &seen, tmp.path());
    assert!(s.stderr().contains("PKCS#11 token found again"), "{}", s.diagnostics());
}

/// `allowly serve` on token `label` with a tenant `name` whose checks four clients keep
/// making (accepting `503 signer_token_unavailable` besides 200), once 20 were answered; and
/// the tenant's checkpoint then.
fn checked_on(label: &str, name: &str) -> (tempfile::TempDir, Server, Tenant, Load, Vec<String>) {
    let tmp = tempdir();
    let pin = pin_file(tmp.path(), "pin", USER_PIN);
    let s = start(&tmp.path().join("data"), label, &pin);
    let t = tenant(&s, name, &["files.*"]);
    let load = Load::start(s.client().addr, &t, 4, &["signer_token_unavailable"]);
    load.wait_ok(20, &s);
    let seen = vec![eventually("a checkpoint", || s.diagnostics(), || checkpoint_note(&s.client(), &t))];
    (tmp, s, t, load, seen)
}

/// `r` is `503 signer_token_unavailable` with `Retry-After` (it passes by itself).
fn token_unavailable(r: &Resp) {
    r.problem(503, "signer_token_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"), "{r}");
}

/// The value of the sample `name` (with its labels) on a metrics page, 0 if absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// A workspace's key objects vanish from a token that still answers (an HSM restored from an
/// older backup, objects removed by hand) while clients check, and come back. The token's health
/// check passes, so this reaches the checks themselves: once a signing round met the missing key,
/// that workspace's checks are refused with `503 signer_token_unavailable` and `Retry-After` (every
/// answer is 200 or that: never a 500, never a decision whose receipt cannot be signed after the
/// round knew), `/readyz` stays ready and lists the workspace under that code, and another tenant
/// created meanwhile (its key made on the same token) signs on. The rounds back off (1 s, 2 s,
/// 4 s, …: four of them span at least 7 s, counted by the engine as `token_unavailable`, which
/// the generic backoff would do in well under a second). Put back, the key is found by the
/// signer and the workspace takes checks again by itself; every acknowledged receipt is signed
/// and the whole log verifies.
#[test]
fn a_key_missing_from_a_working_token_refuses_that_workspaces_checks_until_it_is_back() {
    let (tmp, s, t, load, seen) = checked_on("srv-miss", "hsm-miss");
    let root = s.admin_token();
    let metrics = || s.client().get("/metrics", Some(&root)).text();
    let rounds = |m: &str| sample(m, r#"allowly_engine_signer_errors_total{kind="token_unavailable"}"#);
    assert_eq!(rounds(&metrics()), 0.0);

    let away = tmp.path().join("objects-away");
    let moved = hsm().move_key_objects("srv-miss", &away);
    assert_eq!(moved.len(), 2, "the workspace's key pair: {moved:?}");
    let refused = eventually(
        "the workspace's checks refused once a signing round met the missing key",
        || s.diagnostics(),
        || {
            let r = check(&s, &t.checker, &t.az);
            (r.status != 200).then_some(r)
        },
    );
    token_unavailable(&refused);
    // The rounds back off: timed on the engine's own count of them.
    let mut at = Vec::new();
    let first = rounds(&metrics());
    assert!(first >= 1.0);
    let start = Instant::now();
    for n in 1..=3 {
        eventually(&format!("signing round {n} after the first to meet the token"), metrics, || {
            (rounds(&metrics()) >= first + f64::from(n)).then_some(())
        });
        at.push(start.elapsed());
    }
    // 1 + 2 + 4 s after the round counted first (less the moments it took to see it, under a
    // second); the generic backoff (20 ms doubling) would have made them in a fraction of one.
    assert!(at[2] >= std::time::Duration::from_secs(5), "3 more rounds in {at:?}");
    assert!(rounds(&metrics()) <= first + 3.0, "more rounds than the backoff allows: {at:?}");
    let ready = s.client().get("/readyz", None);
    assert_eq!(ready.status, 200, "the other workspaces work: {ready}");
    let listed = ready.json()["diverged_workspaces"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["workspace_id"] == t.ws.as_str() && w["code"] == "signer_token_unavailable"),
        "{ready}"
    );
    assert_eq!(sample(&metrics(), "allowly_signer_token_keys_missing"), 1.0);
    // Another tenant: its key is made on the same token, and it signs.
    let other = tenant(&s, "hsm-miss-other", &["files.*"]);
    signing_key_now(&s, &other);
    let during = load.ok();

    for n in &moved {
        std::fs::rename(away.join(n), hsm().token_dir("srv-miss").join(n)).unwrap();
    }
    // Found at the signer's next look (its own backoff: 5 s, 10 s, …), then at the workspace's
    // next round (at most 10 s later).
    let start = Instant::now();
    while check(&s, &t.checker, &t.az).status != 200 {
        assert!(start.elapsed() < std::time::Duration::from_secs(90), "never signed again\n{}", s.diagnostics());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    load.wait_ok(during + 20, &s);
    let (acked, unexpected, unavailable, _) = load.finish();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(unavailable > 0, "the clients never saw the refusal");
    export_and_verify(&s, &t, "files.read", &acked, &seen, tmp.path());
    let ready = s.client().get("/readyz", None).json();
    assert_eq!(ready["diverged_workspaces"], json!([]), "{ready}");
    assert!(s.stderr().contains("signs for this workspace again"), "{}", s.diagnostics());
}

/// `allowly workspace-key migrate --to KIND` with the signer's key files as the command reads
/// them (`allowly-signer keys`): the active key's id and key store of `ws`.
fn active_key(data: &Path, ws: &str) -> (String, String) {
    let out = Command::new(signer_bin())
        .args(["keys", "--workspace", ws, "--dir"])
        .arg(data.join("signer"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let active: Vec<&Value> = v["keys"].as_array().unwrap().iter().filter(|k| k["status"] == "active").collect();
    assert_eq!(active.len(), 1, "{v}");
    (active[0]["key_id"].as_str().unwrap().to_owned(), active[0]["keystore"].as_str().unwrap().to_owned())
}

/// Runs `allowly workspace-key migrate --workspace WS --to KIND` against `s`; its answer.
fn migrate(s: &Server, data: &Path, ws: &str, to: &str) -> Value {
    let out = Command::new(allowly_bin())
        .args(["workspace-key", "migrate", "--workspace", ws, "--to", to, "--signer-dir"])
        .arg(data.join("signer"))
        .arg("--url")
        .arg(format!("http://{}", s.client().addr))
        .arg("--token-file")
        .arg(data.join("admin-token"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", s.diagnostics());
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Checks until one is signed, and returns the key id that signed the newest checkpoint.
fn signing_key_now(s: &Server, t: &Tenant) -> String {
    for _ in 0..3 {
        assert_eq!(check(s, &t.checker, &t.az).status, 200, "{}", s.diagnostics());
    }
    let last = check(s, &t.checker, &t.az);
    assert_eq!(last.status, 200, "{last}");
    let index = last.json()["receipt"]["log_index"].as_u64().unwrap();
    let c = s.client();
    let cp = eventually(
        "the last check signed",
        || s.diagnostics(),
        || {
            let cp = c.get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader)).json();
            (cp["size"].as_u64().unwrap_or(0) > index).then_some(cp)
        },
    );
    signing_key_id(cp["checkpoint"].as_str().unwrap())
}

/// `allowly serve` with `--signer-keystore KIND` on token `label` (and the signer's previous key
/// store, if given).
fn start_with_keystore(data: &Path, label: &str, pin: &Path, kind: &str, previous: Option<&str>) -> Server {
    let mut args = keystore_args(label, pin);
    args[1] = kind.to_owned();
    if let Some(p) = previous {
        args.extend(["--signer-previous-keystore".to_owned(), p.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(data, &args)
}

/// A workspace whose active key is in a key store the signer does not open (sealed files, the
/// signer restarted on a token without `--signer-previous-keystore file`): its key rotation is
/// refused with its own problem, `503 workspace_key_store_not_open` (no `Retry-After`: it does
/// not pass by itself; which store holds which key is not told), and nothing changes; its checks
/// are refused with the same problem once a signing round met the store (never acknowledged with
/// a receipt that cannot be signed), while another tenant signs on and the instance stays ready.
/// Once the signer opens the files again as its previous store, the same rotation goes through,
/// onto the token, and everything acknowledged is signed.
#[test]
fn a_workspace_whose_keys_are_in_a_key_store_the_signer_does_not_open_gets_its_own_problem() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let pin = pin_file(tmp.path(), "pin", USER_PIN);
    let mut s = Server::start(&data);
    let t = tenant(&s, "notopen", &["files.*"]);
    let file_key = signing_key_now(&s, &t);
    s.stop();

    let mut s = start_with_keystore(&data, "srv-notopen", &pin, "pkcs11", None);
    let rotate =
        |s: &Server| s.client().call("POST", &format!("/v1/workspaces/{}/keys/rotate", t.ws), Some(&t.admin), None);
    let r = rotate(&s);
    let p = r.problem(503, "workspace_key_store_not_open");
    assert_eq!(r.header("retry-after"), None, "{r}");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("--signer-previous-keystore") && !detail.contains(&file_key), "{r}");
    let keys = s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None).json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "a refused rotation changed the key set: {keys}");
    // Its checks: acknowledged until a signing round meets the unopened store, then refused
    // with the same code — the workspace alone, not a decision whose receipt can never be signed.
    let refused = eventually(
        "the workspace's checks refused once a signing round met the unopened store",
        || s.diagnostics(),
        || {
            let r = check(&s, &t.checker, &t.az);
            (r.status != 200).then_some(r)
        },
    );
    refused.problem(503, "workspace_key_store_not_open");
    assert!(!refused.text().contains(&file_key), "which key is where is for the log: {refused}");
    // Another tenant, its key on the token, signs on and the instance stays ready.
    let other = tenant(&s, "notopen-other", &["files.*"]);
    signing_key_now(&s, &other);
    let ready = s.client().get("/readyz", None);
    assert_eq!(ready.status, 200, "{ready}");
    assert!(ready.text().contains("workspace_key_store_not_open"), "the workspace is listed: {ready}");
    s.stop();

    let mut s = start_with_keystore(&data, "srv-notopen", &pin, "pkcs11", Some("file"));
    let r = rotate(&s);
    assert_eq!(r.status, 200, "{r}\n{}", s.diagnostics());
    assert_eq!(active_key(&data, &t.ws).1, "pkcs11");
    // Everything it acknowledged is signed now, and it decides again.
    signing_key_now(&s, &t);
    s.stop();
}

/// Moving a workspace's keys from sealed files onto a token, and back, is a key rotation, never
/// a copy of a private key (issue 12; ARCHITECTURE, "Moving keys between key stores"). With the
/// token as the signer's key store and the files as its previous one, workspaces go on signing
/// with their file keys; `allowly workspace-key migrate --to pkcs11` rotates one onto the token
/// (the new key made there, never extractable; the old one retired, still published); running it
/// again does nothing. Once every workspace moved, the signer runs on the token alone and the
/// master key is deleted (the retired sealed keys can never be opened again). Moving back is the
/// same rotation the other way. Every receipt of the whole log, signed before, between and after,
/// verifies with `allowly-verify` against the workspace's published keys.
#[test]
fn workspace_keys_move_onto_a_token_and_back_by_rotation_and_every_receipt_verifies() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let pin = pin_file(tmp.path(), "pin", USER_PIN);
    let mut s = Server::start(&data);
    let (t, u) = (tenant(&s, "moving", &["files.*"]), tenant(&s, "staying", &["files.*"]));
    let file_key = signing_key_now(&s, &t);
    assert_eq!(active_key(&data, &t.ws), (file_key.clone(), "file".into()));
    let u_file_key = signing_key_now(&s, &u);
    s.stop();

    let with = |kind: &str, previous: Option<&str>| start_with_keystore(&data, "srv-move", &pin, kind, previous);
    // The token makes new keys; workspaces not moved yet sign with their file keys.
    let mut s = with("pkcs11", Some("file"));
    assert_eq!(signing_key_now(&s, &t), file_key);
    let moved = migrate(&s, &data, &t.ws, "pkcs11");
    let keys = moved["keys"]["keys"].as_array().unwrap();
    assert_eq!(
        (keys.len(), keys[0]["key_id"].as_str(), keys[0]["status"].as_str()),
        (2, Some(file_key.as_str()), Some("retired"))
    );
    assert_eq!(moved["receipt"]["body"]["kind"], "key.rotated", "{moved}");
    let (token_key, store) = active_key(&data, &t.ws);
    assert_eq!(store, "pkcs11");
    assert_eq!(keys[1]["key_id"].as_str(), Some(token_key.as_str()));
    let again = migrate(&s, &data, &t.ws, "pkcs11");
    assert_eq!((again["rotated"].as_bool(), again["active_key_id"].as_str()), (Some(false), Some(token_key.as_str())));
    assert_eq!(signing_key_now(&s, &t), token_key, "signed on the token now");
    assert_eq!(signing_key_now(&s, &u), u_file_key, "the other workspace still signs with its file key");
    verified_log(&s, &t.ws, &t.reader, tmp.path());
    let u_token_key = migrate(&s, &data, &u.ws, "pkcs11")["keys"]["keys"][1]["key_id"].as_str().unwrap().to_owned();
    s.stop();

    // Every workspace moved: the token alone, and the master key deleted.
    std::fs::remove_file(data.join("signer").join("master.key")).unwrap();
    let mut s = with("pkcs11", None);
    assert_eq!(signing_key_now(&s, &t), token_key);
    assert_eq!(signing_key_now(&s, &u), u_token_key);
    verified_log(&s, &u.ws, &u.reader, tmp.path());
    s.stop();

    // And back: sealed files make new keys (under a new master key), the token is the previous
    // key store.
    let mut s = with("file", Some("pkcs11"));
    assert_eq!(signing_key_now(&s, &t), token_key);
    let back = migrate(&s, &data, &t.ws, "file");
    let (file_again, store) = active_key(&data, &t.ws);
    assert_eq!((store.as_str(), back["keys"]["keys"].as_array().unwrap().len()), ("file", 3));
    assert_eq!(signing_key_now(&s, &t), file_again);
    let size = verified_log(&s, &t.ws, &t.reader, tmp.path());
    assert!(size >= 20, "{size} receipts");
    s.stop();
}

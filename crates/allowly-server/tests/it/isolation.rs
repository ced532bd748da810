//! Black-box tests of key isolation (`allowly serve` started as root vs. as another user), with
//! the real binaries. The attacker side always runs as an unprivileged uid through `setpriv`:
//! the front end's uid (what a file-read or code-execution bug in the server gets), or, for the
//! development mode, the uid the whole instance runs as.
//!
//! These tests need root (CI runs as root): without it they fail, saying so, rather than pass
//! without having checked anything.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{json, Value};

const NOBODY: u32 = 65534;

fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test must run as root (CI does): it checks {what}, which only a root start sets up"
    );
}

/// uid and primary gid of `name` (through NSS, like the server).
fn account(name: &str) -> (u32, u32) {
    let out = Command::new("getent").args(["passwd", name]).output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = line.trim().split(':').collect();
    assert!(f.len() >= 4, "getent passwd {name}: {line:?}");
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// A temp dir under /tmp that every uid can traverse (0711), so that in the tests below the
/// only barriers are the ones the server sets up, not the test's own directory.
fn traversable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("allowly-iso-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// `setpriv` to `uid`/`gid` with no supplementary groups, running `args`.
fn as_uid(uid: u32, gid: u32, args: &[&str]) -> Command {
    assert!(Path::new("/usr/bin/setpriv").is_file(), "setpriv (util-linux) is needed to act as another uid");
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into(), "--".into()]).args(args);
    cmd
}

/// Runs `args` as `uid`: `Ok(stdout)` or `Err(stderr)`.
fn run_as(uid: u32, gid: u32, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = as_uid(uid, gid, args).output().unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status))
    }
}

fn read_as(uid: u32, gid: u32, path: &Path) -> Result<Vec<u8>, String> {
    run_as(uid, gid, &["/bin/cat", path.to_str().unwrap()])
}

fn assert_eacces(r: Result<Vec<u8>, String>, what: &str) {
    match r {
        Ok(bytes) => panic!("{what}: succeeded ({} bytes)", bytes.len()),
        Err(e) => assert!(e.contains("Permission denied"), "{what}: expected EACCES, got: {e}"),
    }
}

/// One field of `/proc/<pid>/status` (the text after `Name:`).
fn status_field(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let prefix = format!("{name}:");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {name} for {pid}")).trim().into()
}

fn uids(pid: u32) -> Vec<u32> {
    status_field(pid, "Uid").split_whitespace().map(|v| v.parse().unwrap()).collect()
}

/// Copies `allowly` and `allowly-signer` into `dir/bin` (0755): the cargo target directory is
/// under /root, which an unprivileged uid cannot traverse.
fn copy_bins(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for src in [PathBuf::from(allowly_bin()), signer_bin()] {
        let to = bin.join(src.file_name().unwrap());
        std::fs::copy(&src, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin.join("allowly")
}

/// Starts the server as `uid` (setpriv), on a data dir it owns.
fn start_as(uid: u32, tmp: &Path, data: &Path) -> Server {
    let allowly = copy_bins(tmp);
    std::fs::create_dir_all(data).unwrap();
    std::os::unix::fs::chown(data, Some(uid), Some(uid)).unwrap();
    let mut cmd = as_uid(uid, uid, &[allowly.to_str().unwrap(), "serve"]);
    cmd.arg("--data-dir").arg(data).args(["--listen", "127.0.0.1:0"]);
    Server::start_command(cmd, data)
}

/// A workspace with a signing key; returns its id.
fn workspace(s: &Server) -> String {
    let r = s.client().post("/v1/workspaces", &s.admin_token(), json!({ "name": "iso" }));
    assert_eq!(r.status, 201, "{r}\n{}", s.diagnostics());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// What a short attacker script does with the signer's files: unseal the active key of `ws` from
/// `master.key` and `keys/<ws>.json` (XChaCha20-Poly1305, AAD per the keystore) and return the
/// public key of the recovered private key, base64.
fn unseal(master_hex: &[u8], key_file: &[u8], ws: &str) -> String {
    let mut master = [0u8; 32];
    hex::decode_to_slice(std::str::from_utf8(master_hex).unwrap().trim(), &mut master).unwrap();
    let file: Value = serde_json::from_slice(key_file).unwrap();
    let k = file["keys"].as_array().unwrap().iter().find(|k| k["not_after_ms"].is_null()).unwrap();
    let key_id = k["key_id"].as_str().unwrap();
    let nonce = B64.decode(k["nonce"].as_str().unwrap()).unwrap();
    let sealed = B64.decode(k["sealed_seed"].as_str().unwrap()).unwrap();
    let aad = format!("allowly-signer/key/v1\0{ws}\0{key_id}");
    let seed = XChaCha20Poly1305::new((&master).into())
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed, aad: aad.as_bytes() })
        .expect("unsealing with the stolen master key");
    let seed: [u8; 32] = seed.try_into().unwrap();
    B64.encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes())
}

/// The workspace's published active public key (base64), from the public keys route.
fn published_key(s: &Server, ws: &str) -> String {
    let r = s.client().get(&format!("/v1/workspaces/{ws}/keys"), None);
    assert_eq!(r.status, 200, "{r}");
    r.json()["keys"][0]["public_key"].as_str().unwrap().to_owned()
}

/// A check through the whole pipeline, signed: the signer works with the keys it holds.
fn signed_check(s: &Server, ws: &str) {
    let c = s.client();
    let admin = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &s.admin_token(), json!({"roles": ["admin"]}));
    assert_eq!(admin.status, 201, "{admin}");
    let key = admin.json()["secret"].as_str().unwrap().to_owned();
    let az = c.post("/v1/authorizations", &key, json!({"subject": "u", "scopes": ["files.read"]}));
    assert_eq!(az.status, 201, "{az}\n{}", s.diagnostics());
    let az = az.json()["authorization"]["id"].as_str().unwrap().to_owned();
    let r = c.post("/v1/check", &key, json!({"authorization_id": az, "scopes": ["files.read"]}));
    assert_eq!(r.status, 200, "{r}\n{}", s.diagnostics());
    let rid = r.json()["receipt"]["receipt_id"].as_str().unwrap().to_owned();
    eventually(
        "the receipt to be signed",
        || s.diagnostics(),
        || (c.get(&format!("/v1/receipts/{rid}"), Some(&key)).json()["status"] == "signed").then_some(()),
    );
}

fn metrics(s: &Server) -> String {
    s.client().get("/metrics", None).text()
}

fn isolation_gauge(s: &Server, mode: &str) -> Option<String> {
    let text = metrics(s);
    let line = format!("allowly_server_key_isolation{{mode=\"{mode}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&line)).map(str::to_owned)
}

/// PTRACE_ATTACH to `pid` as `uid` (python3's ctypes; errno on failure, 0 on success).
fn ptrace_attach_as(uid: u32, gid: u32, pid: u32) -> String {
    let py = "/usr/bin/python3";
    assert!(Path::new(py).is_file(), "{py} is needed for the ptrace check (apt-get install python3)");
    let script = format!(
        "import ctypes,sys; l=ctypes.CDLL(None, use_errno=True); r=l.ptrace(16, {pid}, None, None); \
         print(0 if r == 0 else ctypes.get_errno())"
    );
    match run_as(uid, gid, &[py, "-c", &script]) {
        Ok(out) => String::from_utf8(out).unwrap().trim().to_owned(),
        Err(e) => panic!("ptrace helper failed to run: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn started_as_root_the_front_end_cannot_read_trace_or_dump_the_signer_or_its_keys() {
    require_root("that the front end and the signer run as two users");
    let tmp = traversable_tempdir();
    let data = tmp.path().join("data");
    let s = Server::start(&data);
    s.wait_ready();
    let ws = workspace(&s);
    signed_check(&s, &ws);

    let (front_uid, front_gid) = account("allowly");
    let (signer_uid, _) = account("allowly-signer");
    let (front, signer) = (s.pid(), s.signer_pid());
    assert_eq!(uids(front), vec![front_uid; 4], "front end: real, effective, saved, fs uid\n{}", s.diagnostics());
    assert_eq!(uids(signer), vec![signer_uid; 4], "signer: real, effective, saved, fs uid");
    assert_ne!(front_uid, signer_uid);
    assert_eq!(status_field(front, "CapEff"), "0000000000000000", "the front end kept capabilities");
    for (field, want) in
        [("CapEff", "0000000000000000"), ("CapPrm", "0000000000000000"), ("CapBnd", "0000000000000000")]
    {
        assert_eq!(status_field(signer, field), want, "signer {field}");
    }
    assert_eq!(status_field(signer, "NoNewPrivs"), "1");
    assert_eq!(status_field(signer, "Groups"), "", "the signer has supplementary groups");
    let r = s.client().get("/readyz", None).json();
    assert_eq!(r["key_isolation"], "separate_users", "{r}");
    assert_eq!(isolation_gauge(&s, "separate_users").as_deref(), Some("1"));
    assert_eq!(isolation_gauge(&s, "same_uid").as_deref(), Some("0"));

    let signer_dir = data.join("signer");
    let key_file = signer_dir.join("keys").join(format!("{ws}.json"));
    // Control: this is the front end's uid, and it reaches the data directory.
    let token = read_as(front_uid, front_gid, &data.join("admin-token")).expect("the front end reads its token");
    assert_eq!(String::from_utf8(token).unwrap().trim(), s.admin_token());
    // Its own files, and nothing of the signer's.
    assert_eacces(read_as(front_uid, front_gid, &signer_dir.join("master.key")), "reading master.key as the front end");
    assert_eacces(read_as(front_uid, front_gid, &key_file), "reading the sealed key as the front end");
    assert_eacces(
        run_as(front_uid, front_gid, &["/bin/ls", signer_dir.to_str().unwrap()]),
        "listing the signer's directory as the front end",
    );
    for f in [&signer_dir.join("master.key"), &key_file] {
        let m = std::fs::metadata(f).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (signer_uid, 0o600), "{}", f.display());
    }
    // Its memory and environment.
    for file in ["mem", "environ"] {
        let path = format!("/proc/{signer}/{file}");
        assert_eacces(
            run_as(front_uid, front_gid, &["/bin/sh", "-c", &format!("exec 3<{path} && echo opened")]),
            &format!("opening {path} as the front end"),
        );
    }
    assert_eq!(ptrace_attach_as(front_uid, front_gid, signer), "1", "PTRACE_ATTACH of the signer: expected EPERM");
    // Signals: the front end cannot stop or kill the signer (nor its root keeper).
    let kill = run_as(front_uid, front_gid, &["/bin/sh", "-c", &format!("kill -STOP {signer}")]);
    assert!(kill.is_err(), "the front end's uid could signal the signer");
    assert!(alive(signer));
}

#[test]
fn not_root_it_starts_warns_and_says_the_keys_are_not_isolated_and_they_can_be_unsealed() {
    require_root("the development mode as uid 65534 (the test starts it through setpriv)");
    let tmp = traversable_tempdir();
    let data = tmp.path().join("data");
    let s = start_as(NOBODY, tmp.path(), &data);
    s.wait_ready();
    assert_eq!(uids(s.pid()), vec![NOBODY; 4]);
    assert_eq!(uids(s.signer_pid()), vec![NOBODY; 4], "the development signer runs under the same uid");
    let warn: Vec<_> = s.stderr().lines().filter(|l| l.contains("keys are NOT isolated")).map(str::to_owned).collect();
    assert_eq!(warn.len(), 1, "one start-up warning\n{}", s.diagnostics());
    assert!(warn[0].contains("WARN"), "{}", warn[0]);
    let r = s.client().get("/readyz", None);
    assert_eq!(r.status, 200, "readiness must not fail in development: {r}");
    assert_eq!(r.json()["key_isolation"], "same_uid", "{r}");
    assert_eq!(isolation_gauge(&s, "same_uid").as_deref(), Some("1"));
    assert_eq!(isolation_gauge(&s, "separate_users").as_deref(), Some("0"));

    // The point of the warning: the server's uid reads the master key and unseals every key.
    let ws = workspace(&s);
    let master = read_as(NOBODY, NOBODY, &data.join("signer").join("master.key")).unwrap();
    let sealed = read_as(NOBODY, NOBODY, &data.join("signer").join("keys").join(format!("{ws}.json"))).unwrap();
    assert_eq!(unseal(&master, &sealed, &ws), published_key(&s, &ws), "the unsealed key is the workspace's");
}

#[test]
fn a_one_uid_data_dir_is_taken_over_at_a_root_start_and_its_keys_no_longer_unseal_for_the_front_end() {
    require_root("the take-over of a data directory at a root start");
    let tmp = traversable_tempdir();
    let data = tmp.path().join("data");
    let mut s = start_as(NOBODY, tmp.path(), &data);
    s.wait_ready();
    let ws = workspace(&s);
    let published = published_key(&s, &ws);
    let token = s.admin_token();
    s.stop();
    // Before: the whole directory is one uid's, and that uid unseals the key.
    let master_path = data.join("signer").join("master.key");
    let key_path = data.join("signer").join("keys").join(format!("{ws}.json"));
    let stolen = (read_as(NOBODY, NOBODY, &master_path).unwrap(), read_as(NOBODY, NOBODY, &key_path).unwrap());
    assert_eq!(unseal(&stolen.0, &stolen.1, &ws), published);

    // The same directory, started by root (the server binary is the same copy).
    let allowly = tmp.path().join("bin").join("allowly");
    let mut cmd = Command::new(&allowly);
    cmd.arg("serve").arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"]);
    let s = Server::start_command(cmd, &data);
    s.wait_ready();
    assert_eq!(s.admin_token(), token, "the admin token was kept");
    assert_eq!(published_key(&s, &ws), published, "the workspace key was kept");
    signed_check(&s, &ws);

    let (front_uid, front_gid) = account("allowly");
    let (signer_uid, _) = account("allowly-signer");
    assert_eacces(read_as(front_uid, front_gid, &master_path), "master.key after the take-over");
    assert_eacces(read_as(front_uid, front_gid, &key_path), "the sealed key after the take-over");
    assert_eacces(read_as(NOBODY, NOBODY, &master_path), "master.key for the previous owner");
    let owned = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.mode() & 0o7777)
    };
    assert_eq!(owned(&data), (front_uid, 0o710));
    assert_eq!(owned(&data.join("admin-token")), (front_uid, 0o600));
    assert_eq!(owned(&data.join("db")), (front_uid, 0o700));
    assert_eq!(owned(&data.join("run")), (signer_uid, 0o710));
    for e in walk(&data.join("signer")).into_iter().chain(walk(&data.join("db"))) {
        let (uid, mode) = owned(&e);
        let want = if e.starts_with(data.join("signer")) { signer_uid } else { front_uid };
        assert_eq!(uid, want, "{} not taken over", e.display());
        if e.starts_with(data.join("signer")) {
            assert_eq!(mode & 0o077, 0, "{} is reachable by group or others ({mode:o})", e.display());
        }
    }
}

#[test]
fn a_root_owned_data_dir_with_loose_modes_is_taken_over() {
    require_root("the take-over of a data directory at a root start");
    let tmp = traversable_tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    s.wait_ready();
    let ws = workspace(&s);
    s.stop();
    // As a version before isolation left it: everything root's; and a careless chmod.
    assert!(Command::new("chown").args(["-R", "root:root"]).arg(&data).status().unwrap().success());
    let audit = data.join("signer").join("audit.log");
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(data.join("signer"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let s = Server::start(&data);
    s.wait_ready();
    signed_check(&s, &ws);
    let (signer_uid, _) = account("allowly-signer");
    let m = std::fs::metadata(&audit).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (signer_uid, 0o600));
    let m = std::fs::metadata(data.join("signer")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (signer_uid, 0o700));
}

/// Every path under `dir` (not following symlinks).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A step of the start that fails says which step it was, then why (the crate's one error enum
/// carries the step as context): one user for both processes is refused by the isolation step.
#[test]
fn a_root_start_with_one_user_for_both_processes_is_refused_naming_the_isolation_step() {
    require_root("the users of an isolated start");
    let dir = traversable_tempdir();
    let out = Command::new(allowly_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--user", "allowly", "--signer-user", "allowly", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let (uid, _) = account("allowly");
    let expected = format!(
        "allowly: error: isolating the signer's keys (started as root): --user and --signer-user must be two \
         different users (both are uid {uid})"
    );
    assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
}

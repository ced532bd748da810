//! Master-key hygiene and memory locking of the real binary: the master key given in the
//! environment is gone from `/proc/<pid>/environ` and held exactly once, in locked memory; every
//! mlock failure is counted and logged where it happens (master key, creation, rotation, load),
//! and `--require-mlock` refuses instead of going on.
//!
//! These need root (CI runs as root): reading a non-dumpable process's memory, and running the
//! signer as uid 65534 under a small `RLIMIT_MEMLOCK` (root's CAP_IPC_LOCK ignores the limit).

use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;

use allowly_signer_proto::ErrorCode;

use crate::support::*;

const NOBODY: &str = "65534";

fn require_root(what: &str) {
    assert!(rustix::process::geteuid().is_root(), "this test must run as root (CI does): {what}");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every address in `pid`'s readable memory where `needle` starts.
fn find_in_memory(pid: u32, needle: &[u8]) -> Vec<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut hits = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vvar_vclock]") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let Ok(len) = usize::try_from(b - a) else { continue };
        if len > 1 << 30 {
            continue; // reserved, not resident: nothing of ours
        }
        let mut buf = vec![0u8; len];
        if mem.read_exact_at(&mut buf, a).is_err() {
            continue; // e.g. [vsyscall]
        }
        hits.extend(buf.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| a + i as u64));
    }
    hits
}

/// The `/proc/<pid>/maps` line of the mapping that contains `addr`.
fn mapping_of(pid: u32, addr: u64) -> String {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .find(|l| {
            let (a, b) = l.split_whitespace().next().unwrap().split_once('-').unwrap();
            (u64::from_str_radix(a, 16).unwrap()..u64::from_str_radix(b, 16).unwrap()).contains(&addr)
        })
        .unwrap_or("?")
        .to_owned()
}

/// Locked kB of the mapping of `pid` that contains `addr` (from `/proc/<pid>/smaps`).
fn locked_kb_at(pid: u32, addr: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((a, rest)) = line.split_once('-') {
            if let (Ok(a), Some(b)) = (u64::from_str_radix(a, 16), rest.split_whitespace().next()) {
                if let Ok(b) = u64::from_str_radix(b, 16) {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("Locked:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    panic!("no mapping of {pid} contains {addr:#x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_from_the_environment_is_scrubbed_from_environ_and_held_once_in_locked_memory() {
    require_root("it reads the memory of the (non-dumpable) signer");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = tmp.path().join("run").join("signer.sock");
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).unwrap();
    let hex_key = hex::encode(key);
    let mut cmd = Command::new(signer_bin());
    cmd.arg("serve").arg("--dir").arg(&dir).arg("--socket").arg(&sock).env("ALLOWLY_SIGNER_MASTER_KEY", &hex_key);
    let mut s = Signer::spawn(cmd, &dir, &sock);
    let c = s.ready().await;
    assert!(!dir.join("master.key").exists(), "the key must come from the environment here");
    // Every path that touches the master key: seal (create, rotate), unseal (create, load).
    for i in 0..3 {
        let ws = format!("ws_env{i}");
        c.create_key(&ws).await.unwrap();
        c.append_batch(&ws, 0, bodies(&ws, 0, 2)).await.unwrap();
    }
    c.rotate_key("ws_env0", 2).await.unwrap();

    let pid = s.pid();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(contains(&environ, b"ALLOWLY_SIGNER_LOG=debug"), "control: the rest of the environment is intact");
    for needle in [hex_key.as_bytes(), hex_key.to_uppercase().as_bytes(), b"ALLOWLY_SIGNER_MASTER_KEY"] {
        assert!(!contains(&environ, needle), "/proc/{pid}/environ still holds {:?}", String::from_utf8_lossy(needle));
    }

    assert_eq!(find_in_memory(pid, hex_key.as_bytes()), Vec::<u64>::new(), "a hex copy of the master key");
    let raw = find_in_memory(pid, &key);
    let where_ = raw.iter().map(|a| format!("{a:#x} in {}", mapping_of(pid, *a))).collect::<Vec<_>>();
    assert_eq!(raw.len(), 1, "copies of the master key in the signer's memory: {where_:#?}\n{}", s.diagnostics());
    assert!(locked_kb_at(pid, raw[0]) > 0, "the master key's mapping has no locked pages");
    assert_eq!(metric(&c.metrics().await.unwrap(), "allowly_signer_mlock_failures_total"), 0.0);
}

/// `prlimit --memlock=N:N setpriv … <bin> serve --dir … --socket … --allow-uid 0 [extra]`.
fn serve_as_nobody_with_memlock(bin: &Path, dir: &Path, sock: &Path, memlock: u64, extra: &[&str]) -> Command {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--memlock={memlock}:{memlock}"))
        .args(["--", "setpriv", &format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups"])
        .arg(bin)
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--socket")
        .arg(sock)
        .args(["--allow-uid", "0"])
        .args(extra);
    cmd
}

/// A data dir and a socket dir owned by uid 65534, initialised by it; the binary copied where
/// it can run it.
fn nobody_signer_dirs(root: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let bin = copy_bin_to(root);
    let (dir, run) = (root.join("data"), root.join("run"));
    for d in [&dir, &run] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut init = Command::new("setpriv");
    init.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()]);
    init.arg(&bin).arg("init").arg("--dir").arg(&dir);
    let (status, _, err) = run_with_deadline(&mut init);
    assert!(status.success(), "init as {NOBODY}: {err}");
    (bin, dir, run.join("signer.sock"))
}

fn warnings(s: &Signer, what: &str) -> usize {
    s.stderr()
        .lines()
        .filter(|l| l.contains("key memory could not be locked") && l.contains(&format!("what=\"{what}\"")))
        .count()
}

/// Waits until the signer's stderr has a lock warning for `what`: the signer writes it before
/// it answers, but the harness reads its stderr pipe on a thread of its own, which may not have
/// read the line yet.
async fn warned(s: &Signer, what: &str) {
    eventually(
        &format!("a key-memory warning for {what:?}"),
        || s.diagnostics(),
        || async { (warnings(s, what) >= 1).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mlock_failure_is_counted_and_logged_where_it_happens_and_require_mlock_refuses() {
    require_root("it runs the signer as uid 65534 under RLIMIT_MEMLOCK (root ignores the limit)");
    for tool in ["prlimit", "setpriv"] {
        assert!(Command::new(tool).arg("--version").output().is_ok(), "{tool} (util-linux) is needed");
    }
    let tmp = traversable_tempdir();
    let (bin, dir, sock) = nobody_signer_dirs(tmp.path());

    // Nothing can be locked: --require-mlock refuses to start, saying why.
    let (status, _, err) =
        run_with_deadline(&mut serve_as_nobody_with_memlock(&bin, &dir, &sock, 0, &["--require-mlock"]));
    assert!(!status.success(), "started with --require-mlock and no lockable memory");
    assert!(err.contains("could not be locked") && err.contains("--require-mlock"), "{err}");

    // Without it the signer runs, and counts and logs each failure where it happens.
    let mut s = Signer::spawn(serve_as_nobody_with_memlock(&bin, &dir, &sock, 0, &[]), &dir, &sock);
    let c = s.ready().await;
    let count = |text: String| metric(&text, "allowly_signer_mlock_failures_total");
    let at_start = count(c.metrics().await.unwrap());
    assert!(at_start >= 1.0, "the master key's failure is not counted");
    warned(&s, "master key").await;
    assert_eq!(warnings(&s, "master key"), 1, "{}", s.diagnostics());
    c.create_key("ws_a").await.unwrap();
    let created = count(c.metrics().await.unwrap());
    assert!(created > at_start, "creation's failure is not counted ({at_start} → {created})");
    warned(&s, "create").await;
    c.rotate_key("ws_a", 0).await.unwrap();
    let rotated = count(c.metrics().await.unwrap());
    assert!(rotated > created, "rotation's failure is not counted ({created} → {rotated})");
    warned(&s, "rotate").await;
    s.kill9();
    let mut s = Signer::spawn(serve_as_nobody_with_memlock(&bin, &dir, &sock, 0, &[]), &dir, &sock);
    let c = s.ready().await;
    let before = count(c.metrics().await.unwrap());
    c.list_keys("ws_a").await.unwrap();
    let loaded = count(c.metrics().await.unwrap());
    assert!(loaded > before, "a load's failure is not counted ({before} → {loaded})");
    warned(&s, "load").await;
    s.kill9();

    // A limit that is used up while serving: with --require-mlock, creation fails (an error
    // answer, counted and logged), never silently.
    let limit = 4 * rustix::param::page_size() as u64;
    let mut s =
        Signer::spawn(serve_as_nobody_with_memlock(&bin, &dir, &sock, limit, &["--require-mlock"]), &dir, &sock);
    let c = s.ready().await;
    let mut refused = None;
    for i in 0..2000 {
        match c.create_key(format!("ws_fill{i}")).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = refused.unwrap_or_else(|| panic!("2000 keys were locked within {limit} bytes\n{}", s.diagnostics()));
    match e {
        allowly_signer_proto::client::ClientError::Remote(r) => assert_eq!(r.code, ErrorCode::Internal, "{r}"),
        other => panic!("creation {i}: expected an error answer, got {other:?}"),
    }
    assert!(count(c.metrics().await.unwrap()) >= 1.0);
    warned(&s, "create").await;
    assert!(s.try_wait().is_none(), "the signer died instead of refusing one request");
}

//! `allowly backup` and `allowly restore` (issue 14 part 1), black-box: the real server under
//! load, the real commands, a restore into a fresh directory, and a stale backup next to a
//! newer signer state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use crate::support::*;

/// A receipt some client was given: id, log index, body.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    log_index: u64,
    body: Value,
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(allowly_bin()).args(args).output().unwrap();
    eprintln!(
        "allowly {:?} -> {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn backup(s: &Server, dir: &Path, extra: &[&str]) -> Output {
    let url = format!("http://{}", s.addr);
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["backup".as_ref(), dir.as_os_str(), "--data-dir".as_ref(), s.data_dir.as_os_str()];
    args.extend(["--url".as_ref(), url.as_ref() as &std::ffi::OsStr]);
    args.extend(extra.iter().map(|a| a.as_ref() as &std::ffi::OsStr));
    run(&args)
}

fn restore(from: &Path, data_dir: &Path, extra: &[&std::ffi::OsStr]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["restore".as_ref(), "--from".as_ref(), from.as_os_str(), "--data-dir".as_ref(), data_dir.as_os_str()];
    args.extend_from_slice(extra);
    run(&args)
}

fn check(s: &Server, t: &Tenant) -> Option<Acked> {
    let r = try_request(
        s.addr,
        "POST",
        "/v1/check",
        &t.checker,
        json!({ "authorization_id": t.az, "scopes": ["files.read"] }).to_string().as_bytes(),
    )?;
    (r.status == 200).then(|| {
        let v = r.json();
        let rc = &v["receipt"];
        Acked {
            id: rc["receipt_id"].as_str().unwrap().to_owned(),
            log_index: rc["log_index"].as_u64().unwrap(),
            body: rc["body"].clone(),
        }
    })
}

fn latest_checkpoint(s: &Server, t: &Tenant) -> Option<(u64, String)> {
    let r = s.client().get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader));
    let j = (r.status == 200).then(|| r.json())?;
    Some((j["size"].as_u64()?, j["checkpoint"].as_str()?.to_owned()))
}

/// The master key of the instance in `data_dir` (embedded signer).
fn master_key(data_dir: &Path) -> PathBuf {
    data_dir.join("signer/master.key")
}

#[test]
fn backup_under_load_then_restore_keeps_every_acknowledged_receipt_signed_and_the_log_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    s.wait_ready();
    let t = tenant(&s, "backup under load", &["files.read"]);
    let b = tmp.path().join("backup");

    // 8 check clients and a checkpoint reader, each recording when what it saw was answered.
    let stop = AtomicBool::new(false);
    let acked: Mutex<Vec<(Instant, Acked)>> = Mutex::default();
    let seen: Mutex<Vec<(Instant, u64, String)>> = Mutex::default();
    let (before, cps) = std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(a) = check(&s, &t) {
                        acked.lock().unwrap().push((Instant::now(), a));
                    }
                }
            });
        }
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some((size, note)) = latest_checkpoint(&s, &t) {
                    seen.lock().unwrap().push((Instant::now(), size, note));
                }
                std::thread::sleep(POLL);
            }
        });
        eventually("300 checks under load", || s.diagnostics(), || (acked.lock().unwrap().len() >= 300).then_some(()));
        // Everything answered before this instant must be in the backup.
        let began = Instant::now();
        let out = backup(&s, &b, &[]);
        assert!(out.status.success(), "allowly backup failed\n{}", s.diagnostics());
        let after =
            |acked: &Mutex<Vec<(Instant, Acked)>>| acked.lock().unwrap().iter().filter(|(at, _)| *at > began).count();
        let during = after(&acked);
        eventually("more checks after the backup", || s.diagnostics(), || (after(&acked) > during).then_some(()));
        stop.store(true, Ordering::Relaxed);
        let before: Vec<Acked> =
            acked.lock().unwrap().iter().filter(|(at, _)| *at < began).map(|(_, a)| a.clone()).collect();
        let cps: Vec<(u64, String)> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, size, _)| *at < began && *size > 0)
            .map(|(_, size, note)| (*size, note.clone()))
            .collect();
        (before, cps)
    });
    let key = master_key(&data);
    s.stop();

    assert!(b.join("db").is_dir() && b.join("signer/journal").is_file() && b.join("signer/keys").is_dir());
    assert!(!b.join("signer/master.key").exists(), "the master key is in the backup by default");
    assert_eq!(mode(&b) & 0o077, 0, "the backup is private to its owner");
    assert!(!data.join("backups").read_dir().unwrap().any(|_| true), "staging left behind");
    // The checkpoint shared inodes with the live database: none of them may have changed hands.
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(data.join("db")).unwrap().uid();
    for f in std::fs::read_dir(data.join("db")).unwrap() {
        let m = f.unwrap().metadata().unwrap();
        assert_eq!(m.uid(), owner, "a live database file changed owner");
    }

    // A fresh directory; the master key comes from where the operator keeps it.
    let fresh = tmp.path().join("restored");
    let out = restore(&b, &fresh, &["--master-key-file".as_ref(), key.as_os_str()]);
    assert!(out.status.success());
    let mut r = Server::start(&fresh);
    r.wait_ready();
    assert!(!before.is_empty() && !cps.is_empty(), "{} receipts, {} checkpoints before", before.len(), cps.len());
    verify_restored(&r, &t, &before, &cps, tmp.path());
    // The restored instance takes new receipts and signs them.
    let a = eventually("a check on the restored instance", || r.diagnostics(), || check(&r, &t));
    eventually(
        "its receipt signed",
        || r.diagnostics(),
        || latest_checkpoint(&r, &t).filter(|(size, _)| *size > a.log_index),
    );
    r.stop();
}

/// Every receipt in `before` is in the restored log with its body and signed; the log
/// verifies against every checkpoint in `cps`.
fn verify_restored(s: &Server, t: &Tenant, before: &[Acked], cps: &[(u64, String)], dir: &Path) {
    let need =
        before.iter().map(|a| a.log_index + 1).max().unwrap_or(0).max(cps.iter().map(|c| c.0).max().unwrap_or(0));
    let (size, newest) = eventually(
        "the restored log signed past every receipt seen",
        || s.diagnostics(),
        || latest_checkpoint(s, t).filter(|(size, _)| *size >= need),
    );
    let log = s.client().get(&format!("/v1/workspaces/{}/log/export?from=0&to={size}", t.ws), Some(&t.reader));
    assert_eq!(log.status, 200, "{log}");
    let mut in_log: BTreeMap<String, (u64, Value, Value)> = BTreeMap::new();
    for line in log.text().lines() {
        let l: Value = serde_json::from_str(line).unwrap();
        if l["type"] == "receipt" {
            let r = &l["receipt"];
            in_log.insert(
                r["body"]["id"].as_str().unwrap().to_owned(),
                (r["log_index"].as_u64().unwrap(), r["body"].clone(), r["status"].clone()),
            );
        }
    }
    for a in before {
        let Some((i, body, status)) = in_log.get(&a.id) else { panic!("lost: acknowledged receipt {a:?}") };
        assert_eq!((*i, body), (a.log_index, &a.body), "receipt {} changed", a.id);
        assert_eq!(status, "signed", "receipt {}", a.id);
        let r = s.client().get(&format!("/v1/receipts/{}", a.id), Some(&t.reader));
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.json()["body"], a.body);
    }
    let keys = s.client().get(&format!("/v1/workspaces/{}/keys", t.ws), None);
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let (log_file, keys_file) = (write("log.jsonl", &log.body), write("keys.json", &keys.body));
    let mut files = vec![write("checkpoint-newest.txt", newest.as_bytes())];
    for (i, (_, note)) in cps.iter().enumerate() {
        files.push(write(&format!("checkpoint-{i}.txt"), note.as_bytes()));
    }
    let (code, shown) = run_verifier(&log_file, &keys_file, &files);
    assert_eq!(code, Some(0), "allowly-verify against {} checkpoints seen before the backup: {shown}", files.len());
}

#[test]
fn a_backup_older_than_the_signer_state_or_a_checkpoint_is_refused_and_never_served_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    s.wait_ready();
    let t = tenant(&s, "stale backup", &["files.read"]);
    for _ in 0..3 {
        eventually("a check", || s.diagnostics(), || check(&s, &t));
    }
    let old = tmp.path().join("old");
    assert!(backup(&s, &old, &["--include-master-key"]).status.success());
    assert!(old.join("signer/master.key").is_file(), "--include-master-key");
    // Receipts handed out after the backup, signed.
    let mut last = 0;
    for _ in 0..3 {
        last = eventually("a check", || s.diagnostics(), || check(&s, &t)).log_index;
    }
    let (size, note) = eventually(
        "a checkpoint past the backup",
        || s.diagnostics(),
        || latest_checkpoint(&s, &t).filter(|c| c.0 > last),
    );
    let cp = tmp.path().join("cp.json");
    std::fs::write(&cp, json!({ "size": size, "checkpoint": note }).to_string()).unwrap();
    let new = tmp.path().join("new");
    assert!(backup(&s, &new, &[]).status.success());
    // Not under a running server.
    let out = restore(&new, &data, &["--force".as_ref()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is in use"));
    s.stop();

    // The newer store with the older signer state is a consistent pair (store >= signer): it
    // restores, and the server catches the signer up from the stored receipts by itself.
    let mixed = tmp.path().join("mixed");
    copy_tree(&new, &mixed);
    std::fs::remove_dir_all(mixed.join("signer")).unwrap();
    copy_tree(&old.join("signer"), &mixed.join("signer"));
    let caught = tmp.path().join("caught-up");
    assert!(restore(&mixed, &caught, &[]).status.success());
    let mut c = Server::start(&caught);
    c.wait_ready();
    let a = eventually("a check once the signer caught up", || c.diagnostics(), || check(&c, &t));
    assert_eq!(a.log_index, last + 1, "no receipt was lost or made twice");
    eventually("it signed", || c.diagnostics(), || latest_checkpoint(&c, &t).filter(|cp| cp.0 > a.log_index));
    assert!(c.stderr().contains("re-feeding it the stored receipts"), "{}", c.diagnostics());
    c.stop();

    // Against a checkpoint handed out: refused, and it says what to do.
    let fresh = tmp.path().join("fresh");
    let out = restore(&old, &fresh, &["--checkpoint".as_ref(), cp.as_os_str()]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("OLDER") && said.contains("restore a newer backup"), "{said}");
    assert!(!fresh.join("db").exists(), "a refused restore wrote nothing");
    // Over the data directory whose signer state is newer: refused too.
    let out = restore(&old, &data, &["--force".as_ref()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OLDER"));
    // A non-empty directory without --force: refused.
    assert!(!restore(&old, &data, &[]).status.success());

    // What the issue reported, by hand: the old db/ under the newer signer state. The server
    // fails closed, visibly, instead of leaving new receipts pending while ready.
    std::fs::remove_dir_all(data.join("db")).unwrap();
    copy_tree(&old.join("db"), &data.join("db"));
    let s = Server::start(&data);
    let ready = eventually(
        "/readyz names the store behind the signer",
        || s.diagnostics(),
        || {
            let r = s.client().get("/readyz", None);
            (r.status == 503 && r.text().contains("workspace_log_behind_signer")).then_some(r)
        },
    );
    assert_eq!(ready.json()["diverged_workspaces"][0]["workspace_id"], t.ws.as_str(), "{ready}");
    let r = s.client().post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }));
    r.problem(503, "workspace_log_behind_signer");
    let mut s = s;
    s.stop();

    // The way out: the newest backup over it (--force). The old db/ and signer/ are kept aside,
    // the restored ones belong to the same users, the master key stays, and it serves again.
    use std::os::unix::fs::MetadataExt as _;
    let owners =
        |d: &Path| (std::fs::metadata(d.join("db")).unwrap().uid(), std::fs::metadata(d.join("signer")).unwrap().uid());
    let before = owners(&data);
    assert!(restore(&new, &data, &["--force".as_ref()]).status.success());
    assert_eq!(owners(&data), before);
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.starts_with("pre-restore-").then_some(name)
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(data.join(&aside[0]).join("db").is_dir() && data.join(&aside[0]).join("signer/journal").is_file());
    let mut s = Server::start(&data);
    s.wait_ready();
    let a = eventually("a check after restoring the newest backup", || s.diagnostics(), || check(&s, &t));
    assert!(a.log_index > last, "{} after {last}", a.log_index);
    eventually("it signed", || s.diagnostics(), || latest_checkpoint(&s, &t).filter(|cp| cp.0 > a.log_index));
    s.stop();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

//! Resilience black-box tests of the real `allowly` binary (with its real signer child and real
//! RocksDB): `kill -9` of the server or of the signer under concurrent checks, a stopped signer
//! (fail closed), tenant isolation on every endpoint, and bad input on every endpoint. Each test
//! can fail if its promise (DESIGN.md §5, §6, §8) breaks.
//!
//! Random choices (when to kill) come from a seeded generator; the seed is printed, and
//! `ALLOWLY_TEST_SEED=<n>` replays a run.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// splitmix64: a tiny seeded generator, so a failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("ALLOWLY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (now.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
        });
        eprintln!("{test}: seed {seed} (replay with ALLOWLY_TEST_SEED={seed})");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// One workspace with an admin, a read and a check key and one authorization.
#[derive(Debug, Clone)]
struct Tenant {
    ws: String,
    admin: String,
    reader: String,
    reader_id: String,
    checker: String,
    az: String,
}

/// A workspace (as the instance admin), its keys, and an authorization for `scopes`.
fn tenant(s: &Server, name: &str, scopes: &[&str]) -> Tenant {
    let c = s.client();
    let root = s.admin_token();
    let ws = c.post("/v1/workspaces", &root, json!({ "name": name })).created("workspace")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = |roles: &[&str]| {
        let v = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": roles })).created("key");
        (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
    };
    let (_, admin) = key(&["admin"]);
    let (reader_id, reader) = key(&["read"]);
    let (_, checker) = key(&["check"]);
    let v = c.post("/v1/authorizations", &admin, json!({ "subject": "user-1", "scopes": scopes })).created("grant");
    let az = v["authorization"]["id"].as_str().unwrap().to_owned();
    Tenant { ws, admin, reader, reader_id, checker, az }
}

/// A receipt a client was given in a 200 answer.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    log_index: u64,
    leaf_hash: String,
    body: Value,
}

impl Acked {
    /// The pending receipt of a check or grant answer, if it has one.
    fn of(answer: &Value) -> Option<Self> {
        let r = answer.get("receipt").filter(|r| !r.is_null())?;
        Some(Self {
            id: r["receipt_id"].as_str()?.to_owned(),
            log_index: r["log_index"].as_u64()?,
            leaf_hash: r["leaf_hash"].as_str()?.to_owned(),
            body: r["body"].clone(),
        })
    }
}

/// Checks `r` is an RFC 9457 problem with `status` and `code` and a request id matching the
/// `Request-Id` header; describes the mismatch otherwise.
fn problem_mismatch(r: &Resp, status: u16, code: &str) -> Option<String> {
    let fail = |why: &str| Some(format!("{why}: {r}"));
    if r.status != status {
        return fail(&format!("expected status {status}"));
    }
    if r.header("content-type") != Some("application/problem+json") {
        return fail("not application/problem+json");
    }
    let Ok(p) = serde_json::from_slice::<Value>(&r.body) else { return fail("problem body is not JSON") };
    if p["code"] != code {
        return fail(&format!("expected code {code}"));
    }
    if p["status"] != status || p["type"] != format!("urn:allowly:problem:{code}") {
        return fail("problem status/type do not match");
    }
    match r.header("request-id") {
        Some(rid) if !rid.is_empty() && p["request_id"] == rid => None,
        _ => fail("request_id missing or not the Request-Id header"),
    }
}

/// Any 4xx problem document with a code and the request id.
fn any_4xx_mismatch(r: &Resp) -> Option<String> {
    if !(400..500).contains(&r.status) {
        return Some(format!("expected a 4xx: {r}"));
    }
    let code = serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|p| p["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    if code.is_empty() {
        return Some(format!("4xx without a problem code: {r}"));
    }
    problem_mismatch(r, r.status, &code)
}

/// Polls until every receipt in `acked` reads back signed, with the body and log index the
/// client was given; returns the signed envelopes by id.
fn wait_all_signed(s: &Server, reader: &str, acked: &[Acked]) -> HashMap<String, Value> {
    let c = s.client();
    let mut left: BTreeMap<String, &Acked> = acked.iter().map(|a| (a.id.clone(), a)).collect();
    let mut signed = HashMap::new();
    let last_seen = Mutex::new(String::new());
    eventually(
        "every acknowledged receipt to be signed",
        || format!("{}\n{}", last_seen.lock().unwrap(), s.diagnostics()),
        || {
            let ids: Vec<String> = left.keys().cloned().collect();
            for id in ids {
                let r = c.get(&format!("/v1/receipts/{id}"), Some(reader));
                assert_eq!(r.status, 200, "acknowledged receipt {id} is gone: {r}\n{}", s.diagnostics());
                let v = r.json();
                let a = left[&id];
                assert_eq!(v["body"], a.body, "receipt {id}: the stored body is not the acknowledged one");
                assert_eq!(v["log_index"], a.log_index, "receipt {id}: log index changed");
                if v["status"] == "signed" {
                    left.remove(&id);
                    signed.insert(id, v);
                } else {
                    assert_eq!(v["status"], "pending", "{v}");
                    *last_seen.lock().unwrap() = format!("{} receipts unsigned, e.g. {id}", left.len());
                    return None;
                }
            }
            Some(())
        },
    );
    signed
}

/// Every acknowledged receipt exists now (GET 200, same body and log index), signed or not.
fn assert_all_exist(s: &Server, reader: &str, acked: &[Acked]) {
    let c = s.client();
    for a in acked {
        let r = c.get(&format!("/v1/receipts/{}", a.id), Some(reader));
        assert_eq!(r.status, 200, "acknowledged receipt {} does not exist: {r}\n{}", a.id, s.diagnostics());
        let v = r.json();
        assert_eq!(v["body"], a.body, "receipt {}: body differs from the acknowledged one", a.id);
        assert_eq!(v["log_index"], a.log_index, "receipt {}: log index differs", a.id);
        if v["status"] == "pending" {
            assert_eq!(v["leaf_hash"], a.leaf_hash.as_str(), "receipt {}: leaf hash differs", a.id);
        }
    }
}

fn assert_distinct(acked: &[Acked]) {
    let mut ids = HashSet::new();
    let mut indices: HashMap<u64, &str> = HashMap::new();
    for a in acked {
        assert!(ids.insert(a.id.as_str()), "receipt id {} was given to two answers", a.id);
        if let Some(other) = indices.insert(a.log_index, &a.id) {
            panic!("receipts {other} and {} were both given log index {}", a.id, a.log_index);
        }
    }
}

/// The verifier accepts the bundle (exit status 0).
fn verify_with_cli(bundle: &Path, keys: &Path, checkpoints: &[PathBuf]) {
    let (code, shown) = run_verifier(bundle, keys, checkpoints);
    assert_eq!(code, Some(0), "{shown}");
}

/// After every acknowledged receipt is signed: one more check (the log's last leaf), then the
/// whole log, the authorization's trail and the keys saved to `dir` and checked by the real
/// verifier, with every checkpoint seen during the test as an independently obtained one (so a
/// fork or a rollback against any of them fails verification).
fn export_and_verify(s: &Server, t: &Tenant, scope: &str, acked: &[Acked], seen_checkpoints: &[String], dir: &Path) {
    let c = s.client();
    let last = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": [scope] }));
    assert_eq!(last.status, 200, "{last}\n{}", s.diagnostics());
    let last = Acked::of(&last.json()).unwrap();
    wait_all_signed(s, &t.reader, std::slice::from_ref(&last));
    let cp = c.get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader));
    assert_eq!(cp.status, 200, "{cp}");
    let cp = cp.json();
    let size = cp["size"].as_u64().unwrap();
    assert_eq!(size, last.log_index + 1, "the newest checkpoint does not end at the last receipt: {cp}");

    let log = c.get(&format!("/v1/workspaces/{}/log/export?from=0&to={size}", t.ws), Some(&t.reader));
    assert_eq!(log.status, 200, "{log}");
    let trail = c.get(&format!("/v1/authorizations/{}/export", t.az), Some(&t.reader));
    assert_eq!(trail.status, 200, "{trail}");
    let keys = c.get(&format!("/v1/workspaces/{}/keys", t.ws), None);
    assert_eq!(keys.status, 200, "{keys}");

    // Every acknowledged receipt is in the exported log, signed, at the index it was given.
    let mut in_log: HashMap<String, (u64, Value)> = HashMap::new();
    for line in log.text().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "receipt" {
            let r = &v["receipt"];
            assert_eq!(r["status"], "signed", "an exported receipt is not signed: {line}");
            let id = r["body"]["id"].as_str().unwrap().to_owned();
            in_log.insert(id, (r["log_index"].as_u64().unwrap(), r["body"].clone()));
        }
    }
    assert_eq!(in_log.len() as u64, size, "the log export does not hold {size} receipts");
    for a in acked.iter().chain([&last]) {
        let (index, body) = in_log.get(&a.id).unwrap_or_else(|| panic!("receipt {} is not in the log export", a.id));
        assert_eq!((*index, body), (a.log_index, &a.body), "receipt {} differs in the log export", a.id);
    }

    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let (log_file, trail_file, keys_file) =
        (write("log.jsonl", &log.body), write("trail.jsonl", &trail.body), write("keys.json", &keys.body));
    let mut cps = vec![write("checkpoint-final.txt", cp["checkpoint"].as_str().unwrap().as_bytes())];
    for (i, note) in seen_checkpoints.iter().enumerate() {
        cps.push(write(&format!("checkpoint-{i}.txt"), note.as_bytes()));
    }
    verify_with_cli(&log_file, &keys_file, &cps);
    verify_with_cli(&trail_file, &keys_file, &cps[..1]);

    // Control: the same log with one receipt left out is refused (so exit 0 above means something).
    let text = log.text();
    let receipt_lines: Vec<usize> =
        text.lines().enumerate().filter(|(_, l)| l.contains(r#""type":"receipt""#)).map(|(i, _)| i).collect();
    let dropped = receipt_lines[receipt_lines.len() / 2];
    let cut: String = text.lines().enumerate().filter(|(i, _)| *i != dropped).map(|(_, l)| format!("{l}\n")).collect();
    let cut_file = write("log-without-one-receipt.jsonl", cut.as_bytes());
    let (code, shown) = run_verifier(&cut_file, &keys_file, &cps);
    assert!(matches!(code, Some(1 | 2)), "a log with a receipt removed was not refused: {shown}");
    eprintln!("verified a log of {size} receipts against {} checkpoints", cps.len());
}

/// The newest checkpoint note of `t`'s log, if one is signed yet.
fn checkpoint_note(c: &Client, t: &Tenant) -> Option<String> {
    let r = c.get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader));
    (r.status == 200).then(|| r.json()["checkpoint"].as_str().unwrap().to_owned())
}

/// A request that tolerates the server dying under it: `None` unless a complete answer arrived.
fn try_post(addr: SocketAddr, path: &str, key: &str, body: &[u8]) -> Option<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length")?.1.parse().ok()?;
    let body = raw[split + 4..].to_vec();
    (body.len() == len).then_some(Resp { status, headers, body })
}

/// Concurrent check clients: each loops `POST /v1/check` until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    acked: Arc<Mutex<Vec<Acked>>>,
    unexpected: Arc<Mutex<Vec<String>>>,
    unavailable: Arc<AtomicUsize>,
    /// Requests without a complete answer (the server went away under them).
    lost: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `threads` clients of `addr`; `signer_gaps` accepts 503 `signer_unavailable` answers
    /// (counted), anything but 200 is unexpected otherwise. Requests whose answer did not arrive
    /// whole (the server died) are ignored.
    fn start(addr: SocketAddr, t: &Tenant, threads: usize, signer_gaps: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let unexpected = Arc::new(Mutex::new(Vec::new()));
        let unavailable = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|i| {
                let (stop, ok, acked, unexpected, unavailable, lost) =
                    (stop.clone(), ok.clone(), acked.clone(), unexpected.clone(), unavailable.clone(), lost.clone());
                // Most clients are allowed, one is denied: both kinds of decision leave receipts.
                let scope = if i % 4 == 3 { "mail.send" } else { "files.read" };
                let body = json!({ "authorization_id": t.az, "scopes": [scope], "resource": format!("f-{i}") });
                let (body, key) = (body.to_string().into_bytes(), t.checker.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let Some(r) = try_post(addr, "/v1/check", &key, &body) else {
                            lost.fetch_add(1, Ordering::AcqRel);
                            continue;
                        };
                        if r.status == 200 {
                            let v = r.json();
                            match Acked::of(&v) {
                                Some(a) if v["decision"] == "allow" || v["decision"] == "deny" => {
                                    acked.lock().unwrap().push(a);
                                    ok.fetch_add(1, Ordering::AcqRel);
                                }
                                _ => unexpected.lock().unwrap().push(format!("200 without a receipt: {r}")),
                            }
                        } else if signer_gaps && problem_mismatch(&r, 503, "signer_unavailable").is_none() {
                            unavailable.fetch_add(1, Ordering::AcqRel);
                        } else {
                            unexpected.lock().unwrap().push(r.to_string());
                        }
                    }
                })
            })
            .collect();
        Self { stop, ok, acked, unexpected, unavailable, lost, threads }
    }

    /// Waits (bounded) until `n` checks in total were answered 200.
    fn wait_ok(&self, n: usize, s: &Server) {
        let ok = &self.ok;
        let unexpected = &self.unexpected;
        eventually(
            &format!("{n} successful checks"),
            || {
                format!(
                    "{} so far; unexpected: {:?}\n{}",
                    ok.load(Ordering::Acquire),
                    unexpected.lock().unwrap(),
                    s.diagnostics()
                )
            },
            || (ok.load(Ordering::Acquire) >= n).then_some(()),
        );
    }

    /// Stops the clients; returns what they were acknowledged, what was unexpected, and the
    /// counts of 503 `signer_unavailable` answers and of requests without a whole answer.
    fn finish(self) -> (Vec<Acked>, Vec<String>, usize, usize) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().expect("a client thread panicked");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let unexpected = std::mem::take(&mut *self.unexpected.lock().unwrap());
        (acked, unexpected, self.unavailable.load(Ordering::Acquire), self.lost.load(Ordering::Acquire))
    }
}

fn signal_pid(pid: u32, sig: Signal) -> rustix::io::Result<()> {
    kill_process(Pid::from_raw(pid as i32).expect("pid"), sig)
}

/// Live `allowly-signer` processes serving state under `dir` (started by this test's servers).
fn signers_under(dir: &Path) -> Vec<u32> {
    let marker = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // Isolated (started as root), the signer works relative to its directory: `--dir .`.
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            alive(*pid)
                && cmdline.split(|b| *b == 0).next().is_some_and(|exe| exe.ends_with(b"/allowly-signer"))
                && (cmdline.windows(marker.len()).any(|w| w == marker) || cwd.starts_with(dir))
        })
        .collect()
}

/// On drop, SIGKILLs every signer still serving state under its directory, so a test never
/// leaves one behind (the server's drop kills only the server; its signer should die with it).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in signers_under(&self.0) {
            let _ = signal_pid(pid, Signal::KILL);
        }
    }
}

/// Polls until `pid` is gone (or a zombie), for at most `within`.
fn gone_within(pid: u32, within: Duration) -> bool {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(POLL);
    }
    true
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 of the server under concurrent checks.

#[test]
fn kill9_of_the_server_loses_no_acknowledged_receipt() {
    let mut rng = Rng::seeded("kill9_of_the_server");
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    let mut s = Server::start(&data);
    s.wait_ready();
    let t = tenant(&s, "crash", &["files.*"]);
    let mut all: Vec<Acked> = Vec::new();
    let mut seen_checkpoints = Vec::new();
    let mut survivors = Vec::new();

    for round in 0..3 {
        let signer = s.signer_pid();
        let load = Load::start(s.addr, &t, 4, false);
        let target = rng.range(10, 150) as usize;
        load.wait_ok(target / 2, &s);
        // A checkpoint signed before the crash: the log after it must extend it.
        if let Some(note) = checkpoint_note(&s.client(), &t) {
            seen_checkpoints.push(note);
        }
        load.wait_ok(target, &s);
        // A random moment, not a synchronisation.
        std::thread::sleep(Duration::from_millis(rng.range(0, 20)));
        s.kill9();
        let (acked, unexpected, _, _) = load.finish();
        assert!(unexpected.is_empty(), "round {round}: unexpected answers: {unexpected:#?}");
        assert!(acked.len() >= target, "round {round}: {} acknowledged, wanted {target}", acked.len());
        // The signer must die with its parent (PDEATHSIG). If it does not, that is recorded, and
        // it is killed here so the rounds can go on and check durability as well.
        if !gone_within(signer, Duration::from_secs(5)) {
            survivors.push(format!("round {round}: signer {signer} outlived the killed server"));
            signal_pid(signer, Signal::KILL).unwrap();
            eventually("the orphaned signer to be killed", String::new, || (!alive(signer)).then_some(()));
        }

        s = Server::start(&data);
        s.wait_ready();
        assert_all_exist(&s, &t.reader, &acked);
        eprintln!("round {round}: killed after {} acknowledged checks (target {target})", acked.len());
        all.extend(acked);
        assert_distinct(&all);
    }

    wait_all_signed(&s, &t.reader, &all);
    export_and_verify(&s, &t, "files.read", &all, &seen_checkpoints, tmp.path());
    assert!(survivors.is_empty(), "the signer child did not die with the server:\n{}", survivors.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 of the signer only, under concurrent checks.

#[test]
fn kill9_of_the_signer_fails_closed_and_loses_nothing() {
    let mut rng = Rng::seeded("kill9_of_the_signer");
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let s = Server::start(&tmp.path().join("data"));
    s.wait_ready();
    let t = tenant(&s, "signer-crash", &["files.*"]);
    let mut seen_checkpoints = Vec::new();

    // The clients run through all rounds: the server never goes away.
    let load = Load::start(s.addr, &t, 4, true);
    let mut ok_before = 0;
    for round in 0..3 {
        ok_before += rng.range(10, 80) as usize;
        load.wait_ok(ok_before, &s);
        if let Some(note) = checkpoint_note(&s.client(), &t) {
            seen_checkpoints.push(note);
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 20)));
        let old = s.signer_pid();
        signal_pid(old, Signal::KILL).unwrap();
        let new = eventually(
            "the server to start a new signer",
            || s.diagnostics(),
            || descendants_named(s.pid(), "allowly-signer").into_iter().find(|p| *p != old),
        );
        s.wait_ready();
        // Decisions continue after recovery.
        ok_before = load.ok.load(Ordering::Acquire) + 5;
        load.wait_ok(ok_before, &s);
        eprintln!("round {round}: signer {old} killed, {new} took over");
    }
    let (acked, unexpected, unavailable, lost) = load.finish();
    assert!(unexpected.is_empty(), "answers other than 200 or 503 signer_unavailable: {unexpected:#?}");
    assert_eq!(lost, 0, "the server dropped connections without answering while the signer was down");
    eprintln!("{} checks acknowledged, {unavailable} refused with 503 while the signer was down", acked.len());
    assert_distinct(&acked);
    assert_all_exist(&s, &t.reader, &acked);
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &seen_checkpoints, tmp.path());
}

// ---------------------------------------------------------------------------------------------
// 3. A stopped (SIGSTOP) signer: fail closed, write nothing, recover on SIGCONT.

/// Sends SIGCONT on drop, so a failing test never leaves a stopped process behind.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = signal_pid(self.0, Signal::CONT);
    }
}

#[test]
fn a_stopped_signer_fails_closed_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let s = Server::start(&tmp.path().join("data"));
    s.wait_ready();
    let t = tenant(&s, "stopped", &["files.*"]);
    let c = s.client();
    let check = || c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }));
    let first = check();
    assert_eq!(first.status, 200, "{first}");
    let mut acked = vec![Acked::of(&first.json()).unwrap()];

    let signer = s.signer_pid();
    signal_pid(signer, Signal::STOP).unwrap();
    let guard = Continue(signer);

    // Until the server notices, checks may still be answered: each such answer must carry a
    // receipt that exists.
    let mut answered_meanwhile = Vec::new();
    eventually(
        "checks to fail closed with 503 signer_unavailable",
        || s.diagnostics(),
        || {
            let r = check();
            if r.status == 200 {
                let v = r.json();
                let a = Acked::of(&v).unwrap_or_else(|| panic!("a 200 without a receipt: {r}"));
                answered_meanwhile.push(a);
                return None;
            }
            if let Some(why) = problem_mismatch(&r, 503, "signer_unavailable") {
                panic!("while the signer is stopped: {why}");
            }
            assert_eq!(r.header("retry-after"), Some("1"), "{r}");
            Some(())
        },
    );
    let ready = c.get("/readyz", None);
    assert_eq!(ready.status, 503, "/readyz while the signer is stopped: {ready}");
    assert_eq!((&ready.json()["ready"], &ready.json()["signer"]), (&json!(false), &json!(false)), "{ready}");
    assert_all_exist(&s, &t.reader, &answered_meanwhile);
    acked.extend(answered_meanwhile);

    // A burst of refused writes changes nothing.
    let view = |id: &str| {
        let r = c.get(&format!("/v1/authorizations/{id}"), Some(&t.reader));
        assert_eq!(r.status, 200, "{r}");
        r.json()
    };
    let trail = |id: &str| c.get(&format!("/v1/receipts?authorization_id={id}&limit=1000"), Some(&t.reader)).json();
    let (before, trail_before) = (view(&t.az), trail(&t.az));
    for i in 0..20 {
        let scope = if i % 2 == 0 { "files.read" } else { "mail.send" };
        let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": [scope] }));
        if let Some(why) = problem_mismatch(&r, 503, "signer_unavailable") {
            panic!("check {i} during the outage: {why}");
        }
    }
    let grant = c.post("/v1/authorizations", &t.admin, json!({ "subject": "u2", "scopes": ["x"] }));
    assert!(problem_mismatch(&grant, 503, "signer_unavailable").is_none(), "grant during the outage: {grant}");
    let revoke = c.call("POST", &format!("/v1/authorizations/{}/revoke", t.az), Some(&t.admin), None);
    assert!(problem_mismatch(&revoke, 503, "signer_unavailable").is_none(), "revoke during the outage: {revoke}");
    let after = view(&t.az);
    assert_eq!(after["trail_length"], before["trail_length"], "a refused check wrote to the trail");
    assert_eq!(after["status"], "active", "a refused revoke revoked: {after}");
    assert_eq!(trail(&t.az), trail_before, "the trail changed during the outage");

    // SIGCONT: readiness returns, checks succeed and everything gets signed.
    drop(guard);
    s.wait_ready();
    let back = eventually(
        "checks to be answered 200 again",
        || s.diagnostics(),
        || {
            let r = check();
            (r.status == 200).then(|| r.json())
        },
    );
    assert_eq!(back["decision"], "allow", "{back}");
    let back = Acked::of(&back).unwrap();
    assert_eq!(back.body["seq"], before["trail_length"], "the refused checks left gaps in the trail: {:?}", back.body);
    acked.push(back);
    wait_all_signed(&s, &t.reader, &acked);
}

// ---------------------------------------------------------------------------------------------
// 4. Tenant isolation across every endpoint.

#[test]
fn another_tenants_objects_are_404_everywhere_and_stay_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let s = Server::start(&tmp.path().join("data"));
    s.wait_ready();
    let c = s.client();
    let a = tenant(&s, "A", &["mail.*"]);
    let b = tenant(&s, "B", &["mail.*"]);
    let r = c.post("/v1/check", &a.checker, json!({ "authorization_id": a.az, "scopes": ["mail.read"] }));
    assert_eq!(r.status, 200, "{r}");
    let a_receipt = Acked::of(&r.json()).unwrap();
    wait_all_signed(&s, &a.reader, std::slice::from_ref(&a_receipt));

    // A's state as A sees it.
    let snapshot = || {
        let get = |path: &str, key: &str| {
            let r = c.get(path, Some(key));
            assert_eq!(r.status, 200, "{path}: {r}");
            r.json()
        };
        vec![
            get(&format!("/v1/workspaces/{}", a.ws), &a.reader),
            get(&format!("/v1/authorizations/{}", a.az), &a.reader),
            get(&format!("/v1/receipts/{}", a_receipt.id), &a.reader),
            get(&format!("/v1/receipts?authorization_id={}", a.az), &a.reader),
            get(&format!("/v1/workspaces/{}/log/checkpoint", a.ws), &a.reader),
        ]
    };
    let before = snapshot();

    let mut failures = Vec::new();
    let mut expect_404 = |what: String, r: Resp| {
        if let Some(why) = problem_mismatch(&r, 404, "not_found") {
            failures.push(format!("{what}: {why}"));
        }
    };
    let (aw, az, rc, key) = (&a.ws, &a.az, &a_receipt.id, &a.reader_id);
    let empty = json!({});
    // Endpoints naming A's workspace in the path: any B key, whatever its roles.
    let ws_paths: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/workspaces/{aw}"), None),
        ("GET", format!("/v1/workspaces/{aw}/log/checkpoint"), None),
        ("GET", format!("/v1/workspaces/{aw}/log/inclusion?log_index=0"), None),
        ("GET", format!("/v1/workspaces/{aw}/log/consistency?old_size=1"), None),
        ("GET", format!("/v1/workspaces/{aw}/log/export?from=0&to=1"), None),
        ("PUT", format!("/v1/workspaces/{aw}/scope-rules"), Some(json!({ "scope_rules": { "mail.*": "escalate" } }))),
        ("POST", format!("/v1/workspaces/{aw}/api-keys"), Some(json!({ "roles": ["admin"] }))),
        ("POST", format!("/v1/workspaces/{aw}/api-keys/{key}/revoke"), None),
        ("POST", format!("/v1/workspaces/{aw}/api-keys/{key}/revoke"), Some(empty.clone())),
    ];
    for (method, path, body) in &ws_paths {
        for (role, k) in [("admin", &b.admin), ("read", &b.reader), ("check", &b.checker)] {
            expect_404(format!("{method} {path} with B's {role} key"), c.call(method, path, Some(k), body.as_ref()));
        }
    }
    // A's objects through endpoints that act on the caller's workspace: B keys holding the role.
    let own_paths: Vec<(&str, String, &str)> = vec![
        ("GET", format!("/v1/authorizations/{az}"), &b.reader),
        ("GET", format!("/v1/authorizations/{az}"), &b.admin),
        ("GET", format!("/v1/authorizations/{az}/export"), &b.reader),
        ("POST", format!("/v1/authorizations/{az}/revoke"), &b.admin),
        ("GET", format!("/v1/receipts/{rc}"), &b.reader),
        ("GET", format!("/v1/receipts/{rc}"), &b.admin),
        ("GET", format!("/v1/receipts?authorization_id={az}"), &b.reader),
        ("GET", format!("/v1/receipts?authorization_id={az}&limit=1&starting_after=0"), &b.reader),
        // A's API key id through B's own workspace path.
        ("POST", format!("/v1/workspaces/{}/api-keys/{key}/revoke", b.ws), &b.admin),
    ];
    for (method, path, k) in &own_paths {
        expect_404(format!("{method} {path} with a B key"), c.call(method, path, Some(k), None));
    }
    // An A id answers exactly like an id that exists nowhere (only the request id differs).
    let strip = |r: Resp| {
        let mut v = r.json();
        v.as_object_mut().unwrap().remove("request_id");
        (r.status, v)
    };
    for (foreign, missing) in [
        (format!("/v1/authorizations/{az}"), "/v1/authorizations/az_00000000000000000000000000000000".to_owned()),
        (format!("/v1/receipts/{rc}"), "/v1/receipts/rc_00000000000000000000000000000000".to_owned()),
        (format!("/v1/workspaces/{aw}"), "/v1/workspaces/ws_00000000000000000000000000000000".to_owned()),
    ] {
        let (f, m) = (strip(c.get(&foreign, Some(&b.reader))), strip(c.get(&missing, Some(&b.reader))));
        if f != m {
            failures.push(format!("{foreign} answers {f:?}, a missing id answers {m:?}"));
        }
    }
    // A check naming A's authorization with B's check key: decided like an unknown id, no receipt.
    let foreign = c.post("/v1/check", &b.checker, json!({ "authorization_id": az, "scopes": ["mail.read"] }));
    let unknown = c.post(
        "/v1/check",
        &b.checker,
        json!({ "authorization_id": "az_00000000000000000000000000000000", "scopes": ["mail.read"] }),
    );
    assert_eq!(foreign.status, 200, "{foreign}");
    assert_eq!(foreign.json(), unknown.json(), "a foreign authorization is told apart from an unknown one");
    assert_eq!(foreign.json()["reason"], "unknown_authorization", "{foreign}");
    assert!(failures.is_empty(), "tenant isolation failures:\n{}", failures.join("\n"));

    // Nothing of A changed, and A's keys still work.
    assert_eq!(snapshot(), before, "B's requests changed A's state");
    let r = c.post("/v1/check", &a.checker, json!({ "authorization_id": a.az, "scopes": ["mail.read"] }));
    assert_eq!((r.status, &r.json()["decision"]), (200, &json!("allow")), "{r}");
    assert_eq!(Acked::of(&r.json()).unwrap().log_index, a_receipt.log_index + 1, "A's log grew meanwhile");
}

// ---------------------------------------------------------------------------------------------
// 5. Bad input on every endpoint.

/// What a bad request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status and problem code.
    Is(u16, &'static str),
    /// Some 4xx problem (the exact class is the server's choice).
    Any4xx,
}

/// A request body.
#[derive(Debug, Clone)]
enum Body {
    None,
    /// JSON text as given (possibly malformed), as `application/json`.
    Json(Vec<u8>),
    /// Bytes with another media type.
    Typed(&'static str, Vec<u8>),
}

fn raw_json(s: &str) -> Body {
    Body::Json(s.as_bytes().to_vec())
}

fn value(v: Value) -> Body {
    Body::Json(v.to_string().into_bytes())
}

/// Sends one request and describes how its answer differs from `expect` (or `None`).
fn check(c: &Client, method: &str, path: &str, key: &str, body: &Body, expect: Expect) -> Option<String> {
    let mut headers = vec![("Authorization".to_owned(), format!("Bearer {key}"))];
    let bytes = match body {
        Body::None => None,
        Body::Json(b) => {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
            Some(b.as_slice())
        }
        Body::Typed(ct, b) => {
            headers.push(("Content-Type".to_owned(), (*ct).to_owned()));
            Some(b.as_slice())
        }
    };
    let r = c.request(method, path, &headers, bytes);
    let shown = |b: &Body| match b {
        Body::None => "<none>".to_owned(),
        Body::Json(b) | Body::Typed(_, b) => String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned(),
    };
    let why = match expect {
        Expect::Is(status, code) => problem_mismatch(&r, status, code),
        Expect::Any4xx => any_4xx_mismatch(&r),
    }?;
    Some(format!("{method} {path} body {}: {why}", shown(body)))
}

/// Bad bodies every JSON endpoint must refuse the same way.
fn generic_bad_bodies() -> Vec<(Body, Expect)> {
    let huge = format!(r#"{{"x": "{}"}}"#, "a".repeat(70 * 1024));
    vec![
        // Broken before any field name is read.
        (raw_json("{"), Expect::Is(400, "malformed_json")),
        (raw_json("{,}"), Expect::Is(400, "malformed_json")),
        (raw_json("{]"), Expect::Is(400, "malformed_json")),
        (raw_json(r#"{"unterminated"#), Expect::Is(400, "malformed_json")),
        (raw_json("{'a': 1}"), Expect::Is(400, "malformed_json")),
        (raw_json("{1: 2}"), Expect::Is(400, "malformed_json")),
        (raw_json(r#"{"\ud800": 1}"#), Expect::Is(400, "malformed_json")),
        (Body::Json(b"{\0}".to_vec()), Expect::Is(400, "malformed_json")),
        // Broken after an unknown field name: either class is a fair answer.
        (raw_json(r#"{"a": 1,}"#), Expect::Any4xx),
        (raw_json(r#"{"a": 1e400}"#), Expect::Any4xx),
        (raw_json(r#"{"a": "\ud800"}"#), Expect::Any4xx),
        (Body::Json(vec![0xff, 0xfe, b'{']), Expect::Is(400, "malformed_json")),
        (raw_json(&"[".repeat(5000)), Expect::Is(400, "malformed_json")),
        (raw_json(&format!("{}1{}", "[".repeat(100), "]".repeat(100))), Expect::Is(400, "invalid_request")),
        (raw_json("[]"), Expect::Is(400, "invalid_request")),
        (raw_json("null"), Expect::Is(400, "invalid_request")),
        (raw_json("7"), Expect::Is(400, "invalid_request")),
        (raw_json(r#""x""#), Expect::Is(400, "invalid_request")),
        (raw_json(r#"{"zzz_unknown": 1}"#), Expect::Is(400, "unknown_field")),
        (Body::Json(huge.clone().into_bytes()), Expect::Is(413, "body_too_large")),
        (Body::Typed("text/plain", b"{}".to_vec()), Expect::Is(415, "unsupported_media_type")),
        (Body::Typed("application/x-www-form-urlencoded", b"a=1".to_vec()), Expect::Is(415, "unsupported_media_type")),
    ]
}

#[test]
fn bad_input_on_every_endpoint_is_a_4xx_problem_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let s = Server::start(&tmp.path().join("data"));
    s.wait_ready();
    let c = s.client();
    let root = s.admin_token();
    let t = tenant(&s, "bad-input", &["mail.*"]);
    let other = tenant(&s, "other", &["mail.*"]);
    let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["mail.read"] }));
    let last = Acked::of(&r.json()).unwrap();
    wait_all_signed(&s, &t.reader, std::slice::from_ref(&last));

    let snapshot = || {
        let get = |path: String| {
            let r = c.get(&path, Some(&t.reader));
            assert_eq!(r.status, 200, "{path}: {r}");
            r.json()
        };
        vec![
            get(format!("/v1/workspaces/{}", t.ws)),
            get(format!("/v1/authorizations/{}", t.az)),
            get(format!("/v1/receipts?authorization_id={}", t.az)),
            get(format!("/v1/workspaces/{}/log/checkpoint", t.ws)),
        ]
    };
    let before = snapshot();
    let (ws, az, key_id) = (&t.ws, &t.az, &t.reader_id);
    let (long_ok, long_bad) = ("i".repeat(128), "i".repeat(129));
    let big = "m".repeat(17 * 1024);
    let scopes_65: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let rules_257: serde_json::Map<String, Value> = (0..257).map(|i| (format!("r{i}"), json!("confirm"))).collect();
    let ts_future = "2999-01-01T00:00:00Z";
    use Expect::*;
    let invalid = Is(400, "invalid_request");
    let unknown = Is(400, "unknown_field");
    let missing = Is(404, "not_found");

    // (method, path, key, bodies): every body gets the generic bad bodies too.
    let mut cases: Vec<(&str, String, String, Body, Expect)> = Vec::new();
    let mut with_generic = |method: &'static str, path: String, key: &str, specific: Vec<(Body, Expect)>| {
        for (body, expect) in generic_bad_bodies().into_iter().chain(specific) {
            cases.push((method, path.clone(), key.to_owned(), body, expect));
        }
    };
    with_generic(
        "POST",
        "/v1/workspaces".into(),
        &root,
        vec![
            (raw_json(""), Is(400, "malformed_json")),
            (value(json!({})), invalid),
            (value(json!({ "name": 5 })), invalid),
            (value(json!({ "name": null })), invalid),
            (value(json!({ "name": ["x"] })), invalid),
            (value(json!({ "name": "" })), invalid),
            (value(json!({ "name": "n".repeat(201) })), invalid),
            (value(json!({ "name": "a\u{7}b" })), invalid),
            (value(json!({ "name": "x", "scope_rules": [] })), invalid),
            (value(json!({ "name": "x", "scope_rules": { "mail.send": "sometimes" } })), invalid),
            (value(json!({ "name": "x", "scope_rules": { "mail.send": 1 } })), invalid),
            (value(json!({ "name": "x", "scope_rules": { "NOT A SCOPE": "confirm" } })), invalid),
            (value(json!({ "name": "x", "scope_rules": rules_257 })), invalid),
            (value(json!({ "name": "x", "nmae": "y" })), unknown),
            (raw_json(r#"{"name": "a", "name": "b"}"#), invalid),
        ],
    );
    with_generic(
        "PUT",
        format!("/v1/workspaces/{ws}/scope-rules"),
        &t.admin,
        vec![
            (raw_json(""), Is(400, "malformed_json")),
            (value(json!({})), invalid),
            (value(json!({ "scope_rules": null })), invalid),
            (value(json!({ "scope_rules": [] })), invalid),
            (value(json!({ "scope_rules": "confirm" })), invalid),
            (value(json!({ "scope_rules": { "mail.send": "sometimes" } })), invalid),
            (value(json!({ "scope_rules": { "mail.send": true } })), invalid),
            (value(json!({ "scope_rules": { "": "confirm" } })), invalid),
            (value(json!({ "scope_rules": { "a..b": "confirm" } })), invalid),
            (value(json!({ "scope_rules": rules_257 })), invalid),
            (value(json!({ "rules": {} })), unknown),
        ],
    );
    with_generic(
        "POST",
        format!("/v1/workspaces/{ws}/api-keys"),
        &t.admin,
        vec![
            (raw_json(""), Is(400, "malformed_json")),
            (value(json!({})), invalid),
            (value(json!({ "roles": null })), invalid),
            (value(json!({ "roles": "read" })), invalid),
            (value(json!({ "roles": [] })), invalid),
            (value(json!({ "roles": ["root"] })), invalid),
            (value(json!({ "roles": [1] })), invalid),
            (value(json!({ "roles": [["read"]] })), invalid),
            (value(json!({ "roles": ["read"], "name": "x" })), unknown),
        ],
    );
    for path in [format!("/v1/workspaces/{ws}/api-keys/{key_id}/revoke"), format!("/v1/authorizations/{az}/revoke")] {
        let k = t.admin.clone();
        with_generic(
            "POST",
            path,
            &k,
            vec![(value(json!({ "reason": "x" })), unknown), (raw_json("{"), Is(400, "malformed_json"))],
        );
    }
    with_generic(
        "POST",
        "/v1/authorizations".into(),
        &t.admin,
        vec![
            (raw_json(""), Is(400, "malformed_json")),
            (value(json!({})), invalid),
            (value(json!({ "subject": "u" })), invalid),
            (value(json!({ "scopes": ["mail.read"] })), invalid),
            (value(json!({ "subject": 5, "scopes": ["mail.read"] })), invalid),
            (value(json!({ "subject": null, "scopes": ["mail.read"] })), invalid),
            (value(json!({ "subject": "u", "scopes": "mail.read" })), invalid),
            (value(json!({ "subject": "u", "scopes": [1] })), invalid),
            (value(json!({ "subject": "u", "scopes": [] })), invalid),
            (value(json!({ "subject": "u", "scopes": scopes_65 })), invalid),
            (value(json!({ "subject": "u", "scopes": ["Mail.Read"] })), invalid),
            (value(json!({ "subject": "u", "scopes": ["mail..read"] })), invalid),
            (value(json!({ "subject": "u", "scopes": [""] })), invalid),
            (value(json!({ "subject": "", "scopes": ["x"] })), invalid),
            (value(json!({ "subject": "s".repeat(257), "scopes": ["x"] })), invalid),
            (value(json!({ "subject": "a\nb", "scopes": ["x"] })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "resources": "r" })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "resources": [1] })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "resources": [""] })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "resources": ["r".repeat(1025)] })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "resources": scopes_65 })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "expires_at": 5 })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "expires_at": "tomorrow" })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "expires_at": "2000-01-01T00:00:00Z" })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "expires_at": "10000-01-01T00:00:00Z" })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "expires_at": ts_future, "metadata": big })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "metadata": { "n": 1u64 << 60 } })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "metadata": { "n": -(1i64 << 60) } })), invalid),
            (value(json!({ "subject": "u", "scopes": ["x"], "scope": ["y"] })), unknown),
        ],
    );
    with_generic(
        "POST",
        "/v1/check".into(),
        &t.checker,
        vec![
            (raw_json(""), Is(400, "malformed_json")),
            (value(json!({})), invalid),
            (value(json!({ "authorization_id": az })), invalid),
            (value(json!({ "scopes": ["mail.read"] })), invalid),
            (value(json!({ "authorization_id": 5, "scopes": ["mail.read"] })), invalid),
            (value(json!({ "authorization_id": null, "scopes": ["mail.read"] })), invalid),
            (value(json!({ "authorization_id": "", "scopes": ["mail.read"] })), invalid),
            (value(json!({ "authorization_id": "az 1", "scopes": ["mail.read"] })), invalid),
            (value(json!({ "authorization_id": long_bad, "scopes": ["mail.read"] })), invalid),
            (value(json!({ "authorization_id": az, "scopes": "mail.read" })), invalid),
            (value(json!({ "authorization_id": az, "scopes": [1] })), invalid),
            (value(json!({ "authorization_id": az, "scopes": [] })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["mail.*"] })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["*"] })), invalid),
            (value(json!({ "authorization_id": az, "scopes": scopes_65 })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["x"], "resource": 5 })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["x"], "resource": "" })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["x"], "resource": "r".repeat(1025) })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["x"], "resource": "a\u{0}b" })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["x"], "context": big })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["x"], "context": [1u64 << 60] })), invalid),
            (value(json!({ "authorization_id": az, "scopes": ["x"], "scope": "y" })), unknown),
        ],
    );

    // Bad ids in paths: too long, bad characters, another tenant's, well-formed but unknown.
    let id_variants = [
        long_bad.clone(),
        "a.b".to_owned(),
        "a%2Fb".to_owned(),
        "a%00b".to_owned(),
        "%C3%A9".to_owned(),
        "..".to_owned(),
        long_ok.clone(),
        "az_00000000000000000000000000000000".to_owned(),
    ];
    let get = |path: String, k: &str| ("GET", path, k.to_owned(), Body::None, missing);
    let post = |path: String, k: &str| ("POST", path, k.to_owned(), Body::None, missing);
    for bad in id_variants.iter().chain([&other.az, &other.ws, &other.reader_id]) {
        cases.push(get(format!("/v1/authorizations/{bad}"), &t.reader));
        cases.push(get(format!("/v1/authorizations/{bad}/export"), &t.reader));
        cases.push(post(format!("/v1/authorizations/{bad}/revoke"), &t.admin));
        cases.push(get(format!("/v1/receipts/{bad}"), &t.reader));
        // An id the router cannot match is a plain 404; a well-formed unknown one is the
        // confirmation's own code.
        let well_formed = bad.len() <= 128 && bad.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        let no_nonce = if well_formed { Is(404, "confirmation_not_found") } else { missing };
        cases.push(("GET", format!("/v1/confirmations/{bad}"), t.reader.clone(), Body::None, no_nonce));
        cases.push(get(format!("/v1/workspaces/{bad}"), &t.reader));
        if *bad != other.ws {
            // Public keys are public: only a workspace that does not exist is a 404.
            cases.push(get(format!("/v1/workspaces/{bad}/keys"), &t.reader));
        }
        cases.push(get(format!("/v1/workspaces/{bad}/log/checkpoint"), &t.reader));
        cases.push(get(format!("/v1/workspaces/{bad}/log/inclusion?log_index=0"), &t.reader));
        cases.push(get(format!("/v1/workspaces/{bad}/log/consistency?old_size=1"), &t.reader));
        cases.push(get(format!("/v1/workspaces/{bad}/log/export?from=0&to=1"), &t.reader));
        cases.push(post(format!("/v1/workspaces/{ws}/api-keys/{bad}/revoke"), &t.admin));
        cases.push(post(format!("/v1/workspaces/{bad}/api-keys/{key_id}/revoke"), &t.admin));
        let rules = value(json!({ "scope_rules": {} }));
        cases.push(("PUT", format!("/v1/workspaces/{bad}/scope-rules"), t.admin.clone(), rules, missing));
        let roles = value(json!({ "roles": ["read"] }));
        cases.push(("POST", format!("/v1/workspaces/{bad}/api-keys"), t.admin.clone(), roles, missing));
    }
    // Bad query parameters on GET routes.
    let huge = "99999999999999999999";
    let max = u64::MAX.to_string();
    let queries: Vec<(String, Expect)> = [
        ("log/checkpoint?x=1", invalid),
        ("log/inclusion", invalid),
        ("log/inclusion?log_index=x", invalid),
        ("log/inclusion?log_index=-1", invalid),
        ("log/inclusion?log_index=1.0", invalid),
        ("log/inclusion?log_index=%2B1", invalid),
        ("log/inclusion?log_index=", invalid),
        ("log/inclusion?log_index=%FF", invalid),
        (&format!("log/inclusion?log_index={huge}"), invalid),
        (&format!("log/inclusion?log_index={max}"), invalid),
        (&format!("log/inclusion?log_index=0&tree_size={max}"), Any4xx),
        ("log/inclusion?log_index=0&tree_size=0", Any4xx),
        ("log/inclusion?log_index=0&tree_size=-1", invalid),
        ("log/inclusion?log_index=0&log_index=0", invalid),
        ("log/inclusion?log_index=0&bogus=1", invalid),
        ("log/consistency", invalid),
        ("log/consistency?old_size=0", invalid),
        ("log/consistency?old_size=x", invalid),
        ("log/consistency?old_size=-1", invalid),
        (&format!("log/consistency?old_size={huge}"), invalid),
        (&format!("log/consistency?old_size={max}"), Any4xx),
        (&format!("log/consistency?old_size=1&new_size={max}"), Any4xx),
        ("log/consistency?old_size=1&new_size=0", Any4xx),
        ("log/export", invalid),
        ("log/export?from=0", invalid),
        ("log/export?to=1", invalid),
        ("log/export?from=x&to=1", invalid),
        ("log/export?from=-1&to=1", invalid),
        ("log/export?from=0&to=0", invalid),
        ("log/export?from=2&to=1", invalid),
        (&format!("log/export?from=0&to={huge}"), invalid),
        (&format!("log/export?from=0&to={max}"), invalid),
        (&format!("log/export?from={max}&to={max}"), invalid),
    ]
    .into_iter()
    .map(|(q, e)| (format!("/v1/workspaces/{ws}/{q}"), e))
    .chain(
        [
            ("", invalid),
            ("limit=1", invalid),
            (&format!("authorization_id={az}&limit=0"), invalid),
            (&format!("authorization_id={az}&limit=-1"), invalid),
            (&format!("authorization_id={az}&limit=x"), invalid),
            (&format!("authorization_id={az}&limit=1001"), invalid),
            (&format!("authorization_id={az}&limit={huge}"), invalid),
            (&format!("authorization_id={az}&limit={max}"), invalid),
            (&format!("authorization_id={az}&starting_after=x"), invalid),
            (&format!("authorization_id={az}&starting_after=-1"), invalid),
            (&format!("authorization_id={az}&starting_after={huge}"), invalid),
            (&format!("authorization_id={az}&authorization_id={az}"), invalid),
            (&format!("authorization_id={az}&bogus=1"), invalid),
            ("authorization_id=", Any4xx),
            ("authorization_id=a.b", Any4xx),
            ("authorization_id=%00", Any4xx),
            (&format!("authorization_id={long_bad}"), Any4xx),
            (&format!("authorization_id={}", other.az), missing),
        ]
        .into_iter()
        .map(|(q, e)| (format!("/v1/receipts?{q}"), e)),
    )
    .chain(
        [
            ("limit=0", invalid),
            ("limit=x", invalid),
            ("limit=1001", invalid),
            (&format!("limit={huge}"), invalid),
            ("status=", invalid),
            ("status=ACTIVE", invalid),
            ("status=active&status=revoked", invalid),
            ("starting_after=a.b", invalid),
            ("starting_after=%00", invalid),
            (&format!("starting_after={long_bad}"), invalid),
            ("subject=a&subject=b", invalid),
            ("bogus=1", invalid),
        ]
        .into_iter()
        .map(|(q, e)| (format!("/v1/authorizations?{q}"), e)),
    )
    .collect();
    for (path, expect) in queries {
        cases.push(("GET", path, t.reader.clone(), Body::None, expect));
    }

    let total = cases.len();
    let failures: Vec<String> = cases.iter().filter_map(|(m, p, k, b, e)| check(&c, m, p, k, b, *e)).collect();
    assert!(
        failures.is_empty(),
        "{} of {total} bad requests were not answered as expected:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        s.diagnostics()
    );

    // Nothing changed: same workspace, authorization, trail and checkpoint; the keys and the
    // authorization the bad revokes named still work; the next receipt directly follows.
    assert_eq!(snapshot(), before, "bad requests changed the workspace's state");
    assert_eq!(c.get(&format!("/v1/workspaces/{ws}"), Some(&t.reader)).status, 200, "the read key was revoked");
    let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": az, "scopes": ["mail.read"] }));
    assert_eq!((r.status, &r.json()["decision"]), (200, &json!("allow")), "{r}");
    let next = Acked::of(&r.json()).unwrap();
    assert_eq!(next.log_index, last.log_index + 1, "bad requests wrote to the log");
    assert_eq!(next.body["seq"], before[1]["trail_length"], "bad requests wrote to the trail");
}

/// Arbitrary JSON, with the request types' field names over-represented so that some values
/// get past parsing into validation and the engine.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        "[a-z.*_:-]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(json!("2999-01-01T00:00:00Z")),
    ];
    let key = prop_oneof![
        Just("authorization_id".to_owned()),
        Just("scopes".to_owned()),
        Just("resource".to_owned()),
        Just("resources".to_owned()),
        Just("context".to_owned()),
        Just("metadata".to_owned()),
        Just("subject".to_owned()),
        Just("expires_at".to_owned()),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(3, 40, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request shaped like a check (`false`) or a grant (`true`) for the endpoint it goes to,
/// with random field values: mostly valid, so that many reach the engine and commit receipts.
fn shaped(az: String) -> impl Strategy<Value = (bool, Value)> {
    let name = "[a-z]{1,5}(\\.[a-z_:-]{1,4}){0,2}";
    let scope = prop_oneof![3 => name.prop_map(|s| s), 1 => "[a-z*.]{0,10}".prop_map(|s| s)];
    let pattern = prop_oneof![3 => name.prop_map(|s| format!("{s}.*")), 1 => Just("*".to_owned()), 2 => scope.clone()];
    let text = prop_oneof![4 => "[ -~]{1,20}", 1 => ".{0,20}"];
    (
        prop_oneof![3 => Just(az), 1 => "[a-z0-9_]{0,40}"],
        proptest::collection::vec(prop_oneof![scope, pattern], 0..4),
        proptest::option::of(arb_json()),
        proptest::option::of(text.clone()),
        proptest::collection::vec(text, 0..3),
        any::<bool>(),
    )
        .prop_map(|(az, scopes, extra, text, resources, grant)| {
            let mut v = if grant {
                json!({ "subject": text.clone().unwrap_or_else(|| "u".into()), "scopes": scopes, "resources": resources })
            } else {
                json!({ "authorization_id": az, "scopes": scopes })
            };
            if let Some(extra) = extra {
                v[if grant { "metadata" } else { "context" }] = extra;
            }
            if let (Some(r), false) = (text, grant) {
                v["resource"] = json!(r);
            }
            (grant, v)
        })
}

#[test]
fn random_bodies_to_check_and_grant_never_get_a_5xx() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let s = Server::start(&tmp.path().join("data"));
    s.wait_ready();
    let c = s.client();
    let t = tenant(&s, "fuzz", &["*"]);
    let started = Instant::now();

    let accepted = AtomicUsize::new(0);
    let send = |path: &str, key: &str, body: &[u8]| -> Result<(), TestCaseError> {
        let headers = [
            ("Authorization".to_owned(), format!("Bearer {key}")),
            ("Content-Type".to_owned(), "application/json".to_owned()),
        ];
        let r = c.request("POST", path, &headers, Some(body));
        let success = if path == "/v1/check" { 200 } else { 201 };
        if r.status == success {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        let verdict = if r.status == success { None } else { any_4xx_mismatch(&r) };
        match verdict {
            None => Ok(()),
            Some(why) => Err(TestCaseError::fail(format!("POST {path} {}: {why}", String::from_utf8_lossy(body)))),
        }
    };
    let config = || PropConfig { cases: 64, failure_persistence: None, ..PropConfig::default() };
    let paths = [("/v1/check", t.checker.clone()), ("/v1/authorizations", t.admin.clone())];

    let mut runner = TestRunner::new(config());
    runner
        .run(&(arb_json(), any::<bool>()), |(v, which)| {
            let (path, key) = &paths[usize::from(which)];
            send(path, key, v.to_string().as_bytes())
        })
        .unwrap_or_else(|e| panic!("random JSON: {e}\n{}", s.diagnostics()));
    let mut runner = TestRunner::new(config());
    runner
        .run(&shaped(t.az.clone()), |(grant, v)| {
            let (path, key) = &paths[usize::from(grant)];
            send(path, key, v.to_string().as_bytes())
        })
        .unwrap_or_else(|e| panic!("shaped requests: {e}\n{}", s.diagnostics()));
    let mut runner = TestRunner::new(config());
    runner
        .run(&(proptest::collection::vec(any::<u8>(), 0..256), any::<bool>()), |(bytes, which)| {
            let (path, key) = &paths[usize::from(which)];
            send(path, key, &bytes)
        })
        .unwrap_or_else(|e| panic!("random bytes: {e}\n{}", s.diagnostics()));
    // The server is still healthy afterwards.
    assert_eq!(c.get("/readyz", None).status, 200);
    eprintln!("fuzzing took {:?}; {} requests were accepted", started.elapsed(), accepted.load(Ordering::Relaxed));
}

// ---------------------------------------------------------------------------------------------
// A busy signer is back pressure, not an outage.

/// Many workspaces signing at once, with the signer client allowed only one request in flight:
/// every workspace's pipeline has to wait for the others. Waiting is back pressure; it must never
/// be mistaken for "signer down" (which fails every check closed with 503). Every answer is a
/// success (or a 429 with `Retry-After`), nothing fails closed, and everything gets signed.
#[test]
fn a_busy_signer_is_back_pressure_not_an_outage() {
    const TENANTS: usize = 24;
    const THREADS: usize = 24;
    const PER_THREAD: usize = 25;
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let mut s = Server::start_with(&tmp.path().join("data"), &["--signer-max-in-flight", "1"]);
    s.wait_ready();
    let tenants: Vec<Tenant> = (0..TENANTS).map(|i| tenant(&s, &format!("busy{i}"), &["files.*"])).collect();
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (tenants, outcomes, addr) = (&tenants, &outcomes, s.addr);
            scope.spawn(move || {
                let c = Client { addr };
                for i in 0..PER_THREAD {
                    // Spread over every workspace; grants and checks both sign.
                    let w = &tenants[(t * PER_THREAD + i) % TENANTS];
                    let r = if i % 5 == 0 {
                        c.post("/v1/authorizations", &w.admin, json!({ "subject": "u", "scopes": ["files.read"] }))
                    } else {
                        c.post("/v1/check", &w.checker, json!({ "authorization_id": w.az, "scopes": ["files.read"] }))
                    };
                    outcomes.lock().unwrap().push((w.reader.clone(), r));
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    let mut by_reader: HashMap<String, Vec<Acked>> = HashMap::new();
    for (reader, r) in &outcomes {
        match r.status {
            200 | 201 => by_reader.entry(reader.clone()).or_default().extend(Acked::of(&r.json())),
            429 => assert!(r.header("retry-after").is_some(), "429 without Retry-After: {r}"),
            _ => panic!("a busy signer made a request fail: {r}\n{}", s.diagnostics()),
        }
    }
    assert!(by_reader.values().map(Vec::len).sum::<usize>() > THREADS * PER_THREAD / 2, "most requests succeed");
    for (reader, acked) in &by_reader {
        wait_all_signed(&s, reader, acked);
    }
    let metrics = s.client().get("/metrics", None).text();
    let failed_closed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("allowly_engine_failed_closed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(failed_closed, Some(0.0), "nothing failed closed:\n{metrics}");
    s.stop();
}

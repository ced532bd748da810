//! Resilience black-box tests of the real `allowly` binary (with its real signer child and real
//! RocksDB): `kill -9` of the server or of the signer under concurrent checks, a stopped signer
//! (fail closed), tenant isolation on every endpoint, and bad input on every endpoint. Each test
//! can fail if its promise (DESIGN.md §5, §6, §8) breaks.
//!
//! Random choices (when to kill) come from a seeded generator; the seed is printed, and
//! `ALLOWLY_TEST_SEED=<n>` replays a run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
// Not proptest's `Rng` (the prelude's glob import has one too).
use crate::support::Rng;
#[path = "../../../allowly-signer/tests/support/tmpfs.rs"]
mod tmpfs;
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};
use tmpfs::Mount;

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// A receipt a client was given in a 200 answer.
#[derive(Debug, Clone)]
pub(crate) struct Acked {
    pub id: String,
    pub log_index: u64,
    pub leaf_hash: String,
    pub body: Value,
}

impl Acked {
    /// The pending receipt of a check or grant answer, if it has one.
    pub(crate) fn of(answer: &Value) -> Option<Self> {
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
pub(crate) fn problem_mismatch(r: &Resp, status: u16, code: &str) -> Option<String> {
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
pub(crate) fn wait_all_signed(s: &Server, reader: &str, acked: &[Acked]) -> HashMap<String, Value> {
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
pub(crate) fn assert_all_exist(s: &Server, reader: &str, acked: &[Acked]) {
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

pub(crate) fn assert_distinct(acked: &[Acked]) {
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
pub(crate) fn export_and_verify(
    s: &Server,
    t: &Tenant,
    scope: &str,
    acked: &[Acked],
    seen_checkpoints: &[String],
    dir: &Path,
) {
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
pub(crate) fn checkpoint_note(c: &Client, t: &Tenant) -> Option<String> {
    let r = c.get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader));
    (r.status == 200).then(|| r.json()["checkpoint"].as_str().unwrap().to_owned())
}

/// Concurrent check clients: each loops `POST /v1/check` until told to stop.
pub(crate) struct Load {
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
    /// `threads` clients of `addr`; 503 answers with one of the `gaps` codes (e.g.
    /// `signer_unavailable`) are accepted and counted, anything but 200 is unexpected otherwise.
    /// Requests whose answer did not arrive whole (the server died) are ignored.
    pub(crate) fn start(addr: SocketAddr, t: &Tenant, threads: usize, gaps: &'static [&'static str]) -> Self {
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
                        let Some(r) = try_request(addr, "POST", "/v1/check", &key, &body) else {
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
                        } else if gaps.iter().any(|code| problem_mismatch(&r, 503, code).is_none()) {
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

    /// Checks answered 200 so far.
    pub(crate) fn ok(&self) -> usize {
        self.ok.load(Ordering::Acquire)
    }

    /// Waits (bounded) until `n` checks in total were answered 200.
    pub(crate) fn wait_ok(&self, n: usize, s: &Server) {
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
    /// counts of accepted 503 answers and of requests without a whole answer.
    pub(crate) fn finish(self) -> (Vec<Acked>, Vec<String>, usize, usize) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().expect("a client thread panicked");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let unexpected = std::mem::take(&mut *self.unexpected.lock().unwrap());
        (acked, unexpected, self.unavailable.load(Ordering::Acquire), self.lost.load(Ordering::Acquire))
    }
}

pub(crate) fn signal_pid(pid: u32, sig: Signal) -> rustix::io::Result<()> {
    kill_process(Pid::from_raw(pid as i32).expect("pid"), sig)
}

/// Live `allowly-signer` processes serving state under `dir` (started by this test's servers).
pub(crate) fn signers_under(dir: &Path) -> Vec<u32> {
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
pub(crate) struct Reaper(pub PathBuf);

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
        let load = Load::start(s.addr, &t, 4, &[]);
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
    let load = Load::start(s.addr, &t, 4, &["signer_unavailable"]);
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
pub(crate) struct Continue(pub u32);

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
// 3b. A workspace whose log diverged from the signer's fails closed alone.

/// A fresh server (embedded signer) with two tenants. Fields drop in order: the server, then
/// any signer left, then the directory.
struct TwoTenants {
    s: Server,
    a: Tenant,
    b: Tenant,
    data: PathBuf,
    _reaper: Reaper,
    _tmp: tempfile::TempDir,
}

fn two_tenants(a: &str, b: &str) -> TwoTenants {
    let tmp = tempfile::tempdir().unwrap();
    let reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    let s = Server::start(&data);
    s.wait_ready();
    let (a, b) = (tenant(&s, a, &["files.*"]), tenant(&s, b, &["files.*"]));
    TwoTenants { s, a, b, data, _reaper: reaper, _tmp: tmp }
}

/// A check of `t` that must be answered 200; its pending receipt.
fn check_ok(s: &Server, t: &Tenant) -> Acked {
    let r = s.client().post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }));
    assert_eq!(r.status, 200, "{r}\n{}", s.diagnostics());
    Acked::of(&r.json()).unwrap()
}

/// One request on the signer's socket, made with the front end's credentials (the server
/// process's uid and gid, as a compromised front end would have them — also when the test runs
/// as root and the server dropped to its own user): encodes, writes, reads one answer.
fn signer_call(s: &Server, socket: &Path, req: &allowly_signer_proto::Request) -> allowly_signer_proto::Response {
    let id = |field: &str| -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (uid, gid) = (id("Uid:"), id("Gid:"));
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // Per thread (the raw syscalls, not libc's process-wide wrappers): only this
                // thread takes the front end's identity; it ends with the call.
                use rustix::process::{Gid, Uid};
                use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
                let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
                if !rustix::process::getuid().is_root() || u.is_root() {
                    return signer_exchange(socket, req);
                }
                set_thread_groups(&[]).unwrap();
                set_thread_res_gid(g, g, g).unwrap();
                set_thread_res_uid(u, u, u).unwrap();
                signer_exchange(socket, req)
            })
            .join()
            .unwrap()
    })
}

fn signer_exchange(socket: &Path, req: &allowly_signer_proto::Request) -> allowly_signer_proto::Response {
    let mut frame = Vec::new();
    allowly_signer_proto::encode_request(7, req, &mut frame).unwrap();
    let mut st = std::os::unix::net::UnixStream::connect(socket).unwrap();
    st.set_read_timeout(Some(DEADLINE)).unwrap();
    st.write_all(&frame).unwrap();
    let mut len = [0u8; 4];
    st.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    st.read_exact(&mut body).unwrap();
    allowly_signer_proto::decode_response(&body).unwrap().1
}

/// Polls `/readyz` until it lists `ws` among the diverged workspaces (or until it no longer
/// does, with `listed` false); returns the body.
fn wait_diverged(s: &Server, ws: &str, listed: bool) -> Value {
    let c = s.client();
    eventually(
        &format!("/readyz to list {ws} as diverged: {listed}"),
        || format!("{}\n{}", c.get("/readyz", None), s.diagnostics()),
        || {
            let r = c.get("/readyz", None);
            let v = r.json();
            if r.status != 200 {
                // Only a signer outage (the signer was just restarted) may make it unready, never
                // a diverged workspace.
                assert_eq!(v["signer"], false, "one diverged workspace made the instance unready: {r}");
                return None;
            }
            let found = v["diverged_workspaces"].as_array().unwrap().iter().any(|d| d["workspace_id"] == ws);
            (found == listed).then_some(v)
        },
    )
}

fn metric_value(c: &Client, name: &str) -> f64 {
    let text = c.get("/metrics", None).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Every call of `t` that would record a receipt is refused with 503 `workspace_log_diverged`
/// (no `Retry-After`: it does not pass by itself), and nothing is recorded.
fn assert_fenced(s: &Server, t: &Tenant) {
    let c = s.client();
    let trail = || c.get(&format!("/v1/receipts?authorization_id={}&limit=1000", t.az), Some(&t.reader)).json();
    let before = trail();
    let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }));
    assert!(problem_mismatch(&r, 503, "workspace_log_diverged").is_none(), "check: {r}");
    assert_eq!(r.header("retry-after"), None, "{r}");
    let grant = c.post("/v1/authorizations", &t.admin, json!({ "subject": "u2", "scopes": ["x"] }));
    assert!(problem_mismatch(&grant, 503, "workspace_log_diverged").is_none(), "grant: {grant}");
    let revoke = c.call("POST", &format!("/v1/authorizations/{}/revoke", t.az), Some(&t.admin), None);
    assert!(problem_mismatch(&revoke, 503, "workspace_log_diverged").is_none(), "revoke: {revoke}");
    assert_eq!(trail(), before, "a refused call recorded something");
    // Reads still work.
    assert_eq!(c.get(&format!("/v1/authorizations/{}", t.az), Some(&t.reader)).status, 200);
}

/// The signer restarted from an old backup of its state (a rollback): the workspace that had
/// moved on since diverges, refuses new receipts with 503 `workspace_log_diverged` alone
/// (another workspace keeps working, `/readyz` stays 200 and lists it, the gauge shows it), and
/// the resync route brings the signer forward again from the stored receipts, after which
/// everything acknowledged is signed.
#[test]
fn a_rolled_back_signer_fences_only_its_workspace_until_the_resync_repairs_it() {
    let t = two_tenants("rolled", "bystander");
    let (s, data, a, b) = (&t.s, &t.data, &t.a, &t.b);
    let c = s.client();
    let check = |t: &Tenant| check_ok(s, t);
    let mut acked_a = vec![check(a)];
    let acked_b = vec![check(b)];
    wait_all_signed(s, &a.reader, &acked_a);
    wait_all_signed(s, &b.reader, &acked_b);

    // Back up the signer's state, let A move on, then restart the signer from the backup.
    let journal = data.join("signer/journal");
    let backup = std::fs::read(&journal).unwrap();
    for _ in 0..3 {
        acked_a.push(check(a));
    }
    wait_all_signed(s, &a.reader, &acked_a);
    let old = s.signer_pid();
    signal_pid(old, Signal::STOP).unwrap();
    std::fs::write(data.join("signer/journal.old"), &backup).unwrap();
    // Restored as the signer's files are (its own user when the server isolates it).
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&journal).unwrap();
    std::os::unix::fs::chown(data.join("signer/journal.old"), Some(meta.uid()), Some(meta.gid())).unwrap();
    std::fs::set_permissions(data.join("signer/journal.old"), meta.permissions()).unwrap();
    std::fs::rename(data.join("signer/journal.old"), &journal).unwrap();
    signal_pid(old, Signal::KILL).unwrap();
    eventually("a new signer child", || s.diagnostics(), || (s.signer_pid() != old).then_some(()));
    s.wait_ready();
    let root = s.admin_token();
    let diverged0 = metric_value(&c, "allowly_engine_log_divergence_total");

    // A's next check is durable and answered (once the engine has reconnected to the new
    // signer: until then it fails closed), but the signer is behind: A diverges.
    let answered = eventually(
        "a check of A to be answered after the signer restart",
        || s.diagnostics(),
        || {
            let r = c.post("/v1/check", &a.checker, json!({ "authorization_id": a.az, "scopes": ["files.read"] }));
            if r.status == 200 {
                return Acked::of(&r.json());
            }
            assert!(problem_mismatch(&r, 503, "signer_unavailable").is_none(), "{r}");
            None
        },
    );
    acked_a.push(answered);
    let ready = wait_diverged(s, &a.ws, true);
    assert!(ready["detail"].as_str().unwrap().contains("diverged"), "{ready}");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(metric_value(&c, "allowly_engine_workspaces_diverged"), 1.0);
    assert_eq!(metric_value(&c, "allowly_engine_log_divergence_total") - diverged0, 1.0);
    assert!(s.stderr().contains("refuses new receipts"), "no log line:\n{}", s.stderr());
    assert_fenced(s, a);
    // The bystander is untouched: answered and signed.
    let more_b = vec![check(b)];
    wait_all_signed(s, &b.reader, &more_b);

    // Only the instance admin may resync.
    let denied = c.call("POST", &format!("/v1/workspaces/{}/log/resync", a.ws), Some(&a.admin), None);
    assert_eq!(denied.status, 403, "{denied}");
    let r = c.call("POST", &format!("/v1/workspaces/{}/log/resync", a.ws), Some(&root), None);
    assert_eq!(r.status, 200, "{r}\n{}", s.diagnostics());
    let v = r.json();
    let stored = acked_a.last().unwrap().log_index + 1;
    assert_eq!((v["was_diverged"].clone(), v["stored_size"].clone()), (json!(true), json!(stored)), "{v}");
    assert_eq!(v["signed_size"], stored - 1, "{v}");
    wait_diverged(s, &a.ws, false);
    assert_eq!(metric_value(&c, "allowly_engine_workspaces_diverged"), 0.0);
    acked_a.push(check(a));
    wait_all_signed(s, &a.reader, &acked_a);
    // A second resync of a healthy workspace changes nothing.
    let r = c.call("POST", &format!("/v1/workspaces/{}/log/resync", a.ws), Some(&root), None);
    assert_eq!((r.status, r.json()["was_diverged"].clone()), (200, json!(false)), "{r}");
}

/// A client on the signer's socket appends a well-formed lie (an `allow` for a resource never
/// asked) at a workspace's next index: the signer cannot tell, signs it and records its leaf in
/// the audit log. The service's own receipt for that index can then never be signed: the
/// workspace diverges and stays fenced, and the resync refuses (a fork is not repaired in
/// place) — while the forged leaf stands in the signer's audit log for an auditor to find.
#[test]
fn a_forged_append_fences_the_workspace_and_the_resync_refuses_the_fork() {
    let t = two_tenants("forged", "other");
    let (s, data, a, b) = (&t.s, &t.data, &t.a, &t.b);
    let c = s.client();
    let check = |t: &Tenant| check_ok(s, t);
    let first = check(a);
    wait_all_signed(s, &a.reader, std::slice::from_ref(&first));

    let next = first.log_index + 1;
    let mut lie = first.body.clone();
    lie["log_index"] = json!(next);
    lie["id"] = json!("rcpt_forged");
    lie["resource"] = json!("drive:file/payroll.xlsx");
    lie["seq"] = json!(first.body["seq"].as_u64().unwrap() + 1);
    let lie = allowly_receipt::jcs::canonicalize(&lie).unwrap();
    let forged_leaf = hex_of(&allowly_receipt::merkle::leaf_hash(&lie));
    let req = allowly_signer_proto::Request::AppendBatch {
        workspace_id: a.ws.clone(),
        expected_size: next,
        bodies: vec![lie],
        want_proofs: false,
    };
    let answer = signer_call(s, &data.join("run/signer.sock"), &req);
    assert!(matches!(answer, allowly_signer_proto::Response::Appended { .. }), "{answer:?}");

    let after = check(a); // durable and answered before anyone knows
    assert_eq!(after.log_index, next);
    wait_diverged(s, &a.ws, true);
    assert_fenced(s, a);
    wait_all_signed(s, &b.reader, &[check(b)]);
    let root = s.admin_token();
    let r = c.call("POST", &format!("/v1/workspaces/{}/log/resync", a.ws), Some(&root), None);
    assert!(problem_mismatch(&r, 409, "conflict").is_none(), "{r}");
    assert_fenced(s, a);
    let audit = std::fs::read_to_string(data.join("signer/audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"checkpoint\"") && l.contains(&a.ws) && l.contains(&forged_leaf)),
        "the forged leaf is not in the signer's audit log:\n{audit}"
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    // A check naming A's authorization with B's check key: decided like an unknown id, and, like
    // every decision since format 1.1, recorded in B's log as a check of an unknown
    // authorization. The two answers differ only in what differs between any two receipts (id,
    // log index, time, leaf hash) and in the id asked for.
    let unknown_id = "az_00000000000000000000000000000000";
    let foreign = c.post("/v1/check", &b.checker, json!({ "authorization_id": az, "scopes": ["mail.read"] }));
    let unknown = c.post("/v1/check", &b.checker, json!({ "authorization_id": unknown_id, "scopes": ["mail.read"] }));
    assert_eq!(foreign.status, 200, "{foreign}");
    let shape = |r: &Resp, asked: &str| {
        let mut v = r.json();
        assert_eq!(v["receipt"]["body"]["asked_authorization_id"], asked, "{v}");
        assert_eq!(v["receipt"]["body"]["workspace_id"], b.ws.as_str(), "{v}");
        for m in ["receipt_id", "leaf_hash", "log_index"] {
            v["receipt"].as_object_mut().unwrap().remove(m);
        }
        for m in ["id", "log_index", "time", "asked_authorization_id"] {
            v["receipt"]["body"].as_object_mut().unwrap().remove(m);
        }
        v
    };
    assert_eq!(
        shape(&foreign, az),
        shape(&unknown, unknown_id),
        "a foreign authorization is told apart from an unknown one"
    );
    assert_eq!(foreign.json()["reason"], "unknown_authorization", "{foreign}");
    assert_eq!(foreign.json()["receipt"]["body"]["asked_authorization_id"], az.as_str(), "{foreign}");
    assert_eq!(foreign.json()["receipt"]["body"]["workspace_id"], b.ws.as_str(), "{foreign}");
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
        // A malformed or unknown nonce is a 404 like any other object.
        cases.push(get(format!("/v1/confirmations/{bad}"), &t.reader));
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

// ---------------------------------------------------------------------------------------------
// 8. Faults below the process (issue 11): a data volume below its free-space floor, a signer
// that cannot write its journal, a signing backlog past its bound, and the fail-closed window.
// Each makes receipt-producing calls answer 503 with its own code and `/readyz` name it, and
// each clears by itself; nothing acknowledged is lost.

/// Free bytes of the file system holding `dir` (as an unprivileged writer sees them).
fn free_bytes(dir: &Path) -> u64 {
    let s = rustix::fs::statvfs(dir).unwrap();
    s.f_bavail * s.f_frsize
}

/// Appends to `dir/filler` until the file system has less than `below` bytes free, or until a
/// write fails with ENOSPC (`below = u64::MAX`: fill it completely).
fn fill_until(dir: &Path, below: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let chunk = vec![0x55u8; 1 << 16];
    while free_bytes(dir) >= below || below == u64::MAX {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    path
}

/// The value of the sample `name` (with its labels, as exposed) in `/metrics`.
pub(crate) fn metric(c: &Client, name: &str) -> Option<f64> {
    let text = c.get("/metrics", None).text();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `/readyz` is 503 and lists `code` among its causes; returns the answer.
pub(crate) fn not_ready_because(c: &Client, code: &str) -> Value {
    let r = c.get("/readyz", None);
    assert_eq!(r.status, 503, "/readyz: {r}");
    let v = r.json();
    assert_eq!(v["ready"], false, "{v}");
    let causes = v["causes"].as_array().unwrap_or_else(|| panic!("no causes: {v}"));
    assert!(causes.iter().any(|c| c["code"] == code), "/readyz does not name {code}: {v}");
    v
}

/// One check of `files.read` on `t`'s authorization.
pub(crate) fn check_once(c: &Client, t: &Tenant) -> Resp {
    c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }))
}

/// `n` checks that must each be answered 200; their receipts are added to `acked`.
pub(crate) fn checks_acknowledged(c: &Client, t: &Tenant, n: usize, acked: &mut Vec<Acked>) {
    for _ in 0..n {
        let r = check_once(c, t);
        assert_eq!(r.status, 200, "{r}");
        acked.push(Acked::of(&r.json()).unwrap());
    }
}

/// Checks until one is refused; each 200 before it is kept in `acked`. The refusal must be a
/// 503 `code` problem with `Retry-After`; returns when it came (test clock).
fn checks_until_refused(s: &Server, t: &Tenant, code: &str, acked: &mut Vec<Acked>) -> Instant {
    let c = s.client();
    eventually(
        &format!("checks to fail closed with 503 {code}"),
        || s.diagnostics(),
        || {
            let r = check_once(&c, t);
            let now = Instant::now();
            if r.status == 200 {
                acked.push(Acked::of(&r.json()).unwrap_or_else(|| panic!("a 200 without a receipt: {r}")));
                return None;
            }
            if let Some(why) = problem_mismatch(&r, 503, code) {
                panic!("expected {code}: {why}");
            }
            assert_eq!(r.header("retry-after"), Some("1"), "{r}");
            Some(now)
        },
    )
}

/// Grants and revocations are refused with `code` too, and change nothing.
fn writes_refused_with(s: &Server, t: &Tenant, code: &str) {
    let c = s.client();
    let grant = c.post("/v1/authorizations", &t.admin, json!({ "subject": "u2", "scopes": ["x"] }));
    assert!(problem_mismatch(&grant, 503, code).is_none(), "grant: {grant}");
    let revoke = c.call("POST", &format!("/v1/authorizations/{}/revoke", t.az), Some(&t.admin), None);
    assert!(problem_mismatch(&revoke, 503, code).is_none(), "revoke: {revoke}");
    let az = c.get(&format!("/v1/authorizations/{}", t.az), Some(&t.reader)).json();
    assert_eq!(az["status"], "active", "a refused revoke revoked: {az}");
}

/// Checks are answered 200 again (and `/readyz` is 200) once the cause is gone; the answer's
/// receipt is added to `acked`.
pub(crate) fn serves_again(s: &Server, t: &Tenant, acked: &mut Vec<Acked>) {
    let c = s.client();
    let back = eventually(
        "checks to be answered 200 again",
        || s.diagnostics(),
        || {
            let r = check_once(&c, t);
            (r.status == 200).then(|| r.json())
        },
    );
    acked.push(Acked::of(&back).unwrap());
    s.wait_ready();
}

/// The data volume (RocksDB's directory) on a small tmpfs, filled below `--min-free-disk`:
/// within a second checks, grants and revocations answer 503 `storage_full` and `/readyz` names
/// the cause; freeing the space brings both back by themselves, and every receipt acknowledged
/// before, during and after is stored and signed, and the log verifies.
#[test]
fn a_data_volume_below_its_free_space_floor_fails_closed_and_recovers_by_itself() {
    const FLOOR: u64 = 96 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let vol = tmp.path().join("vol");
    let _mount = Mount::tmpfs(&vol, "256m");
    let s = Server::start_with(&vol.join("data"), &["--min-free-disk", "96MiB"]);
    s.wait_ready();
    let t = tenant(&s, "floor", &["files.*"]);
    let c = s.client();
    let mut acked = Vec::new();
    checks_acknowledged(&c, &t, 20, &mut acked);
    assert_eq!(metric(&c, "allowly_engine_data_volume_min_free_bytes"), Some(FLOOR as f64));
    assert_eq!(metric(&c, r#"allowly_engine_fault{cause="storage_full"}"#), Some(0.0));

    // Just above the floor: still serving. Then one more step crosses it.
    let filler = fill_until(&vol, FLOOR + (8 << 20));
    let r = check_once(&c, &t);
    assert_eq!(r.status, 200, "above the floor: {r}");
    acked.push(Acked::of(&r.json()).unwrap());
    fill_until(&vol, FLOOR - (32 << 20));
    let crossed = Instant::now();
    let refused = checks_until_refused(&s, &t, "storage_full", &mut acked);
    let took = refused - crossed;
    eprintln!("storage_full {took:?} after the volume went below the floor");
    assert!(took < Duration::from_secs(1), "took {took:?} to fail closed");
    let ready = not_ready_because(&c, "storage_full");
    assert!(ready["detail"].as_str().unwrap().contains("floor"), "{ready}");
    assert_eq!(metric(&c, r#"allowly_engine_fault{cause="storage_full"}"#), Some(1.0));
    writes_refused_with(&s, &t, "storage_full");
    // Reads still work, and what was acknowledged gets signed meanwhile.
    assert_all_exist(&s, &t.reader, &acked);

    std::fs::remove_file(&filler).unwrap();
    serves_again(&s, &t, &mut acked);
    assert_eq!(metric(&c, r#"allowly_engine_fault{cause="storage_full"}"#), Some(0.0));
    assert_distinct(&acked);
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());
}

/// The embedded signer's state directory on its own small tmpfs, filled under concurrent
/// checks: its journal writes fail, checks turn into 503 `signer_storage_failed` and `/readyz`
/// names it; freeing the space brings both back while the clients keep going, and every
/// acknowledged receipt (also those acknowledged while the signer could not write) is signed,
/// and the log verifies after a restart.
#[test]
fn a_signer_that_cannot_write_its_journal_fails_closed_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    let signer_dir = data.join("signer");
    let _mount = Mount::tmpfs(&signer_dir, "4m");
    let mut s = Server::start(&data);
    s.wait_ready();
    let t = tenant(&s, "journal", &["files.*"]);
    let c = s.client();
    let load = Load::start(s.addr, &t, 3, &["signer_storage_failed"]);
    load.wait_ok(20, &s);

    let filler = fill_until(&signer_dir, u64::MAX);
    // Checks are durable without the signer, so the first ones are acknowledged (pending);
    // their signing fails, and after a few failures in a row the engine fails closed.
    eventually(
        "checks to fail closed with signer_storage_failed",
        || s.diagnostics(),
        || (load.unavailable.load(Ordering::Acquire) > 0).then_some(()),
    );
    not_ready_because(&c, "signer_storage_failed");
    assert_eq!(metric(&c, r#"allowly_engine_fault{cause="signer_storage_failed"}"#), Some(1.0));
    assert!(metric(&c, r#"allowly_engine_signer_errors_total{kind="storage"}"#).unwrap_or(0.0) >= 3.0);
    writes_refused_with(&s, &t, "signer_storage_failed");

    std::fs::remove_file(&filler).unwrap();
    let ok = load.ok.load(Ordering::Acquire);
    load.wait_ok(ok + 20, &s);
    s.wait_ready();
    let (mut acked, unexpected, refused, lost) = load.finish();
    assert!(unexpected.is_empty(), "answers other than 200 or 503 signer_storage_failed: {unexpected:#?}");
    assert_eq!(lost, 0, "the server dropped connections without answering");
    eprintln!("{} checks acknowledged, {refused} refused with 503 signer_storage_failed", acked.len());
    serves_again(&s, &t, &mut acked);
    assert_distinct(&acked);
    wait_all_signed(&s, &t.reader, &acked);
    assert_eq!(metric(&c, r#"allowly_engine_fault{cause="signer_storage_failed"}"#), Some(0.0));

    // The signer's state survived the episode: a restart continues the same log.
    s.stop();
    let s = Server::start(&data);
    s.wait_ready();
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());
}

/// A frozen signer with a long signer timeout: checks are acknowledged (pending) until the
/// oldest unsigned receipt is older than `--max-unsigned-age-ms`, then 503 `signing_backlog`;
/// the backlog gauges show it; SIGCONT clears it and everything gets signed.
#[test]
fn a_signing_backlog_older_than_its_bound_fails_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let args = ["--max-unsigned-age-ms", "1000", "--signer-timeout-ms", "10000"];
    let s = Server::start_with(&tmp.path().join("data"), &args);
    s.wait_ready();
    let t = tenant(&s, "backlog", &["files.*"]);
    let c = s.client();
    assert_eq!(metric(&c, "allowly_engine_unsigned_receipts"), Some(0.0));
    let signer = s.signer_pid();
    signal_pid(signer, Signal::STOP).unwrap();
    let guard = Continue(signer);
    let frozen = Instant::now();

    let mut acked = Vec::new();
    let refused = checks_until_refused(&s, &t, "signing_backlog", &mut acked);
    let took = refused - frozen;
    eprintln!("signing_backlog {took:?} after the signer froze, {} checks acknowledged meanwhile", acked.len());
    assert!(took >= Duration::from_secs(1), "refused after {took:?}, before the bound");
    assert!(!acked.is_empty(), "nothing was acknowledged before the bound");
    not_ready_because(&c, "signing_backlog");
    assert!(metric(&c, "allowly_engine_unsigned_receipts").unwrap() >= acked.len() as f64);
    assert!(metric(&c, "allowly_engine_oldest_unsigned_age_seconds").unwrap() >= 1.0);
    assert_all_exist(&s, &t.reader, &acked);

    drop(guard);
    serves_again(&s, &t, &mut acked);
    wait_all_signed(&s, &t.reader, &acked);
    eventually(
        "the backlog gauges to drop",
        || s.diagnostics(),
        || (metric(&c, "allowly_engine_unsigned_receipts") == Some(0.0)).then_some(()),
    );
    assert_eq!(metric(&c, "allowly_engine_oldest_unsigned_age_seconds"), Some(0.0));
}

/// The fail-closed window: after the signer freezes, checks are still acknowledged (durable,
/// pending receipts) until the signer call times out (`--signer-timeout-ms`), then 503
/// `signer_unavailable`. Measured with the test's clock: the window is the configured timeout
/// plus at most the probe interval (0.5 s) and some slack, and every receipt acknowledged in
/// it gets signed after SIGCONT.
#[test]
fn checks_fail_closed_within_the_configured_signer_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let s = Server::start_with(&tmp.path().join("data"), &["--signer-timeout-ms", "1000"]);
    s.wait_ready();
    let t = tenant(&s, "window", &["files.*"]);
    let c = s.client();
    let mut acked = Vec::new();
    checks_acknowledged(&c, &t, 10, &mut acked);
    let signer = s.signer_pid();
    signal_pid(signer, Signal::STOP).unwrap();
    let guard = Continue(signer);
    let frozen = Instant::now();
    let before = acked.len();
    let refused = checks_until_refused(&s, &t, "signer_unavailable", &mut acked);
    let window = refused - frozen;
    eprintln!(
        "fail-closed window {window:?} with --signer-timeout-ms 1000: {} checks acknowledged (pending) in it by one sequential client",
        acked.len() - before
    );
    assert!(window >= TIMEOUT / 2, "failed closed after {window:?}: the window is not the configured timeout");
    assert!(window <= TIMEOUT + Duration::from_millis(1000), "took {window:?} to fail closed");
    assert!(acked.len() > before, "nothing was acknowledged in the window");
    not_ready_because(&c, "signer_unavailable");
    assert_all_exist(&s, &t.reader, &acked);
    drop(guard);
    serves_again(&s, &t, &mut acked);
    wait_all_signed(&s, &t.reader, &acked);
}

/// With the floor off (`--min-free-disk 0`), RocksDB's own directory on a tmpfs that fills up
/// completely: the store write that hits ENOSPC fails closed at once (503 `storage_full`, never
/// a 500, `/readyz` names it), nothing acknowledged is lost, and once space returns the store
/// takes writes again without a restart (the health probe resumes RocksDB, which refuses every
/// write after a failed WAL write until then: README, "Failing closed"); after a restart too,
/// every acknowledged receipt is there, signed, and the log verifies.
#[test]
fn a_store_write_that_hits_a_full_volume_fails_closed_at_once_and_recovers_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    let db = data.join("db");
    let _mount = Mount::tmpfs(&db, "64m");
    let mut s = Server::start_with(&data, &["--min-free-disk", "0"]);
    s.wait_ready();
    let t = tenant(&s, "enospc", &["files.*"]);
    let c = s.client();
    let mut acked = Vec::new();
    checks_acknowledged(&c, &t, 5, &mut acked);

    let filler = fill_until(&db, u64::MAX);
    // A few more may still fit in the WAL's last page; then a synced write fails.
    checks_until_refused(&s, &t, "storage_full", &mut acked);
    let ready = not_ready_because(&c, "storage_full");
    assert!(ready["detail"].as_str().unwrap().contains("store write"), "{ready}");
    writes_refused_with(&s, &t, "storage_full");
    assert_all_exist(&s, &t.reader, &acked);

    std::fs::remove_file(&filler).unwrap();
    serves_again(&s, &t, &mut acked);
    checks_acknowledged(&c, &t, 5, &mut acked);
    assert_distinct(&acked);
    wait_all_signed(&s, &t.reader, &acked);
    s.kill9();
    let s = Server::start_with(&data, &["--min-free-disk", "0"]);
    s.wait_ready();
    assert_all_exist(&s, &t.reader, &acked);
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());
}

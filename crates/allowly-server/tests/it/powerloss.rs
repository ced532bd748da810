//! Power loss, not just `kill -9` (issue 11 part 3). The real `allowly serve` — front end, keeper
//! and signer — runs with its whole data directory (RocksDB's `db/`, the signer's journal, audit
//! log and keys, the admin token, the signer's socket) on `allowly-lazyfs`, a FUSE file system
//! that at a simulated power cut keeps only what was fsynced (file data on fsync of the file,
//! names on fsync of their directory; see that crate's docs for what it models and what not).
//! Under concurrent checks from several clients, at a random moment: the power cut, SIGKILL of
//! every process, a fresh mount of what survived, a restart. Then, each round:
//!
//! - every receipt a client was answered 200 for is in the log, at its index, with the body it
//!   was given, and gets signed;
//! - the log reaches every checkpoint a client saw before a crash (the signer is never behind a
//!   checkpoint it released), and `allowly-verify` finds the whole log VALID and consistent with
//!   each of those checkpoints (no fork, no rollback).
//!
//! Torn tails are on: a cut may also keep part of what was written since a file's last fsync —
//! a prefix of its unsynced pages in file order, the last one torn at a 512-byte sector — as a
//! disk that wrote back some of its page cache before the power went. So the WAL's and the
//! journal's readers also meet half-written records after a cut, not only clean ends.
//!
//! It is an integration test (a module of the server's test binary) rather than a separate
//! program so that it runs in `.ci/run` with the rest, shares the black-box harness (`support/`),
//! and needs no second build. The short form
//! (8 crashes, a few seconds) is the default; the long form is the same test with more:
//!
//! ```sh
//! ALLOWLY_POWERLOSS_CRASHES=200 ALLOWLY_POWERLOSS_FULL_CHECK_EVERY=20 \
//!   cargo test -p allowly-server --test it powerloss::power_loss -- --nocapture
//! ```
//!
//! Knobs: `ALLOWLY_POWERLOSS_CRASHES` (default 8), `ALLOWLY_POWERLOSS_CLIENTS` (default 4),
//! `ALLOWLY_POWERLOSS_MAX_ACKS` (most acknowledged checks before a crash, default 150),
//! `ALLOWLY_POWERLOSS_FULL_CHECK_EVERY` (rounds between whole-history checks, default 1: every
//! round; the last round always does one),
//! `ALLOWLY_TEST_SEED` (replays the random crash points of a printed seed).
//!
//! The tier can fail, and two tests show it: `allowly-lazyfs`'s own tests (unsynced data is
//! really gone after a crash), and the negative control here, where the disk lies about
//! RocksDB's WAL fsyncs and the checker must report acknowledged receipts lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::ffi::OsStr;

use crate::support::*;
use allowly_lazyfs::{CrashReport, LazyFs, Mount, Point};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};

/// How long acknowledged receipts may take to be signed after a restart, and the load to reach
/// its crash point: generous, because the debug build through FUSE on a shared 2-core machine
/// is slow; a real loss never ends by waiting.
const SIGNING_DEADLINE: Duration = Duration::from_secs(60);
/// Checkpoints kept per round for the final verification: the newest ones seen before the
/// crash (those a lost journal record would contradict) and the round's first.
const CHECKPOINTS_PER_ROUND: usize = 6;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The machine: a LazyFs mount with the server's data directory on it.

/// Every process below `root` (the keeper and the signer under the front end).
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for (child, _) in parents.iter().filter(|(_, pp)| *pp == p) {
            out.push(*child);
            todo.push(*child);
        }
    }
    out
}

/// Every process working inside `dir` (the isolated front end and signer `chdir` into the data
/// directory): catches one the tree walk missed, e.g. a signer reparented after its keeper died.
fn working_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .filter(|pid| alive(*pid))
        .collect()
}

struct Machine {
    fs: LazyFs,
    // Field order is drop order: the server (and its children) before the mount.
    server: Option<Server>,
    mount: Option<Mount>,
    at: PathBuf,
    data: PathBuf,
    reports: Vec<CrashReport>,
}

impl Machine {
    fn boot(tmp: &Path) -> Self {
        let at = tmp.join("mnt");
        std::fs::create_dir(&at).unwrap();
        let fs = LazyFs::new();
        let mount =
            fs.mount(&at).unwrap_or_else(|e| panic!("mounting allowly-lazyfs (root and /dev/fuse needed): {e}"));
        let mut m = Self { fs, server: None, mount: Some(mount), data: at.join("data"), at, reports: Vec::new() };
        assert_eq!(m.start(), None, "a fresh data directory");
        m
    }

    /// Starts the server and waits until it is ready — or until it says at start that its
    /// store lost receipts the signer had signed (`workspace_log_behind_signer`, which only a
    /// disk that lies about fsyncs can cause here): that is returned, for the checker to report.
    fn start(&mut self) -> Option<String> {
        let s = Server::start(&self.data);
        let behind = eventually(
            "/readyz to answer 200 (or name a store behind its signer)",
            || s.diagnostics(),
            || {
                let r = s.client().get("/readyz", None);
                match r.status {
                    200 => Some(None),
                    _ if r.text().contains("workspace_log_behind_signer") => Some(Some(r.text())),
                    _ => None,
                }
            },
        );
        self.server = Some(s);
        behind
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("a running server")
    }

    /// The power cut — now, or armed for a moment in the middle of a commit — then SIGKILL of
    /// the front end, the keeper and the signer. Returns when the cut happened.
    fn crash(&mut self, cut: Cut) -> Instant {
        let front = self.server().pid();
        let before = self.fs.crashes().len();
        match cut {
            Cut::Now => {
                self.fs.crash();
            }
            Cut::At(point, files, skip) => {
                self.fs.crash_at(point, files.matcher(), skip);
                let fs = &self.fs;
                let start = Instant::now();
                // Checks keep the WAL and the journal busy, so the moment comes; if it does not,
                // cut anyway (and say so) rather than hang.
                while fs.crashes().len() == before {
                    if start.elapsed() > SIGNING_DEADLINE {
                        eprintln!("the armed cut {point:?} did not come within {SIGNING_DEADLINE:?}: cutting now");
                        fs.crash();
                        break;
                    }
                    std::thread::yield_now();
                }
            }
        }
        // The tree may change after the cut (a keeper restarting a signer that died of EIO):
        // kill until no process of the machine is left.
        let known = Mutex::new(vec![front]);
        eventually(
            "every process of the crashed machine to be gone",
            || format!("still alive: {:?}", known.lock().unwrap().iter().filter(|p| alive(**p)).collect::<Vec<_>>()),
            || {
                let mut known = known.lock().unwrap();
                for pid in descendants(front).into_iter().chain(working_under(&self.at)) {
                    if !known.contains(&pid) {
                        known.push(pid);
                    }
                }
                for pid in known.iter() {
                    let _ = kill_process(Pid::from_raw(*pid as i32).expect("pid"), Signal::KILL);
                }
                (!known.iter().any(|p| alive(*p))).then_some(())
            },
        );
        self.server.take().expect("server").kill9();
        let (at, report) = self.fs.crashes().pop().expect("the cut happened");
        self.reports.push(report);
        at
    }

    /// A fresh mount of what survived, and the server started on it.
    /// Mounts what survived the cut and starts the server on it (see [`Machine::start`]).
    fn reboot(&mut self) -> Option<String> {
        if let Some(m) = self.mount.take() {
            m.unmount().unwrap_or_else(|e| panic!("unmounting the crashed file system: {e}"));
        }
        self.mount = Some(self.fs.mount(&self.at).unwrap());
        self.start()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The server's own drop kills only the front end; its signer must not outlive the mount.
        let tree = self.server.as_ref().map(|s| descendants(s.pid())).unwrap_or_default();
        for pid in tree.into_iter().chain(working_under(&self.at)) {
            let _ = kill_process(Pid::from_raw(pid as i32).expect("pid"), Signal::KILL);
        }
    }
}

/// When the power goes.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// At a random moment (after the round's target of acknowledged checks and a random pause).
    Now,
    /// Right after the `n + 1`-th write to, or fsync of, one of `Files`: in the middle of a
    /// commit, which a timer rarely hits.
    At(Point, Files, u32),
}

#[derive(Debug, Clone, Copy)]
enum Files {
    /// RocksDB's write-ahead logs.
    Wal,
    /// The signer's journal and audit log.
    Signer,
    Either,
}

/// An fsync to fail once before a round's cut: of which files, and whether the failure drops
/// the file's unsynced data (`LazyFs::fail_fsync_dropping_unsynced`) or leaves it unsynced.
#[derive(Clone, Copy, Debug)]
struct Fail {
    files: Files,
    drops: bool,
}

/// RocksDB's write-ahead logs, `NNNNNN.log` (not its info `LOG`, not the signer's `audit.log`).
fn rocksdb_wal(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.strip_suffix(".log").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn signer_log(name: &OsStr) -> bool {
    name == "journal" || name == "audit.log"
}

impl Files {
    fn matcher(self) -> fn(&OsStr) -> bool {
        match self {
            Files::Wal => rocksdb_wal,
            Files::Signer => signer_log,
            Files::Either => |n| rocksdb_wal(n) || signer_log(n),
        }
    }
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = |files: &Files| match files {
            Files::Wal => "RocksDB's WAL",
            Files::Signer => "the signer's journal or audit log",
            Files::Either => "the WAL or the signer's journal or audit log",
        };
        match self {
            Cut::Now => write!(f, "at a random moment"),
            Cut::At(Point::Write, files, skip) => write!(f, "after write #{} to {}", skip + 1, what(files)),
            Cut::At(Point::Sync, files, skip) => write!(f, "after fsync #{} of {}", skip + 1, what(files)),
        }
    }
}

impl Cut {
    fn random(rng: &mut Rng) -> Self {
        let skip = rng.range(0, 4) as u32;
        match rng.range(0, 4) {
            0 => Cut::Now,
            1 => Cut::At(Point::Write, Files::Wal, skip),
            2 => Cut::At(Point::Write, Files::Signer, skip),
            _ => Cut::At(Point::Sync, Files::Either, skip),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload.

/// A receipt a client was answered 200 for.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    log_index: u64,
    body: Value,
}

/// A workspace created during a round: its id once `201`, its public keys as first read, and
/// a read key's secret once that was `201` too.
#[derive(Debug, Clone, Default)]
struct Made {
    ws: String,
    keys: Option<Value>,
    reader: Option<String>,
}

/// What the clients of one round saw.
#[derive(Debug, Default)]
struct Seen {
    acked: Vec<Acked>,
    made: Vec<Made>,
    /// Checkpoint notes read by a client, oldest first, distinct.
    checkpoints: Vec<(u64, String)>,
    /// Answers other than 200 before the power cut.
    unexpected: Vec<String>,
    /// 503 answers after an injected fsync failure (the instance failing closed).
    failed_closed: usize,
}

/// `clients` threads checking as fast as they can, plus one reading the newest checkpoint,
/// until the power cut (`crash` returns the machine's report); the cut comes once `target`
/// checks were acknowledged, after a random pause. With `fail`, the next fsync of those files
/// after the target fails once with EIO before the pause: from then on a 503 (failing closed)
/// is an expected answer.
fn round(
    m: &mut Machine,
    t: &Tenant,
    clients: usize,
    target: usize,
    pause: Duration,
    cut: Cut,
    fail: Option<Fail>,
) -> Seen {
    let addr = m.server().addr;
    let stop = Arc::new(AtomicBool::new(false));
    let refused: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let ok = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut threads = Vec::new();
    for i in 0..clients {
        let (stop, refused, ok, seen, t) = (stop.clone(), refused.clone(), ok.clone(), seen.clone(), t.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                // Allowed and denied checks both leave receipts.
                let scope = if i % 4 == 3 { "mail.send" } else { "files.read" };
                let body = json!({ "authorization_id": t.az, "scopes": [scope], "resource": format!("c{i}-{n}") });
                let Some(r) = try_request(addr, "POST", "/v1/check", &t.checker, body.to_string().as_bytes()) else {
                    continue;
                };
                if r.status != 200 {
                    // Judged after the cut: only a refusal received before it is unexpected.
                    refused.lock().unwrap().push((Instant::now(), r.status, r.to_string()));
                    continue;
                }
                let v: Value = match serde_json::from_slice(&r.body) {
                    Ok(v) => v,
                    Err(e) => {
                        seen.lock().unwrap().unexpected.push(format!("a 200 that is not JSON ({e}): {r}"));
                        continue;
                    }
                };
                let rec = &v["receipt"];
                match (rec["receipt_id"].as_str(), rec["log_index"].as_u64()) {
                    (Some(id), Some(log_index)) => {
                        let a = Acked { id: id.to_owned(), log_index, body: rec["body"].clone() };
                        seen.lock().unwrap().acked.push(a);
                        ok.fetch_add(1, Ordering::AcqRel);
                    }
                    _ => seen.lock().unwrap().unexpected.push(format!("a 200 without a receipt: {r}")),
                }
            }
        }));
    }
    {
        // Workspaces (each a key created, sealed and journaled by the signer) and API keys keep
        // being created beside the checks, so cuts also land in the middle of those.
        let (stop, refused, seen, root) = (stop.clone(), refused.clone(), seen.clone(), m.server().admin_token());
        threads.push(std::thread::spawn(move || {
            let post = |path: &str, body: Value| try_request(addr, "POST", path, &root, body.to_string().as_bytes());
            while !stop.load(Ordering::Acquire) {
                let Some(r) = post("/v1/workspaces", json!({ "name": "made" })) else { continue };
                let ws = match (r.status, serde_json::from_slice::<Value>(&r.body)) {
                    (201, Ok(v)) if v["id"].is_string() => v["id"].as_str().unwrap_or_default().to_owned(),
                    _ => {
                        refused.lock().unwrap().push((Instant::now(), r.status, r.to_string()));
                        continue;
                    }
                };
                let at = {
                    let mut s = seen.lock().unwrap();
                    s.made.push(Made { ws: ws.clone(), ..Made::default() });
                    s.made.len() - 1
                };
                let keys = try_request(addr, "GET", &format!("/v1/workspaces/{ws}/keys"), "", b"");
                if let Some(k) = keys.filter(|k| k.status == 200) {
                    seen.lock().unwrap().made[at].keys = serde_json::from_slice(&k.body).ok();
                }
                let Some(r) = post(&format!("/v1/workspaces/{ws}/api-keys"), json!({ "roles": ["read"] })) else {
                    continue;
                };
                match (r.status, serde_json::from_slice::<Value>(&r.body)) {
                    (201, Ok(v)) => seen.lock().unwrap().made[at].reader = v["secret"].as_str().map(str::to_owned),
                    _ => refused.lock().unwrap().push((Instant::now(), r.status, r.to_string())),
                }
            }
        }));
    }
    {
        let (stop, seen, t) = (stop.clone(), seen.clone(), t.clone());
        threads.push(std::thread::spawn(move || {
            let path = format!("/v1/workspaces/{}/log/checkpoint", t.ws);
            while !stop.load(Ordering::Acquire) {
                let Some(r) = try_request(addr, "GET", &path, &t.reader, b"") else { continue };
                let Ok(v) = serde_json::from_slice::<Value>(&r.body) else { continue };
                if let (200, Some(size), Some(note)) = (r.status, v["size"].as_u64(), v["checkpoint"].as_str()) {
                    let mut s = seen.lock().unwrap();
                    if s.checkpoints.last().is_none_or(|(_, last)| last != note) {
                        s.checkpoints.push((size, note.to_owned()));
                    }
                }
                // Polling pace of a reader, not a synchronisation.
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    let start = Instant::now();
    while ok.load(Ordering::Acquire) < target && start.elapsed() < SIGNING_DEADLINE {
        std::thread::sleep(POLL);
    }
    let mut failing_since = None;
    if let Some(Fail { files, drops }) = fail {
        let before = m.fs.failures();
        failing_since = Some(Instant::now());
        if drops {
            m.fs.fail_fsync_dropping_unsynced(files.matcher());
        } else {
            m.fs.fail_once(Point::Sync, files.matcher(), rustix::io::Errno::IO.raw_os_error());
        }
        let start = Instant::now();
        // Checks keep the WAL and the journal syncing, so the failure comes at once.
        while m.fs.failures() == before && start.elapsed() < SIGNING_DEADLINE {
            std::thread::sleep(POLL);
        }
        if m.fs.failures() == before {
            m.fs.fail(None);
            seen.lock().unwrap().unexpected.push(format!("no fsync of {files:?} to fail within {SIGNING_DEADLINE:?}"));
        }
    }
    // A random moment after the target, not a synchronisation.
    std::thread::sleep(pause);
    let at = m.crash(cut);
    stop.store(true, Ordering::Release);
    for th in threads {
        th.join().expect("a client thread panicked");
    }
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    let refused = std::mem::take(&mut *refused.lock().unwrap());
    // After a failed fsync the instance fails closed (`storage_failed`, `signer_storage_failed`
    // and the like, all 503): expected; anything else still is not.
    let expected = |when: Instant, status: u16| status == 503 && failing_since.is_some_and(|f| when >= f);
    seen.failed_closed = refused.iter().filter(|(when, status, _)| *when < at && expected(*when, *status)).count();
    seen.unexpected.extend(
        refused.into_iter().filter(|(when, status, _)| *when < at && !expected(*when, *status)).map(|(_, _, r)| r),
    );
    if seen.acked.len() < target {
        seen.unexpected.push(format!("only {} checks acknowledged in {SIGNING_DEADLINE:?}", seen.acked.len()));
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// The checker: returns violations instead of panicking, so the negative control can show it
// reports a real loss.

/// Everything acknowledged so far, and the checkpoints clients saw.
#[derive(Debug, Default)]
struct History {
    acked: Vec<Acked>,
    checkpoints: Vec<(u64, String)>,
    made: Vec<Made>,
}

impl History {
    fn add(&mut self, seen: &Seen) {
        self.acked.extend(seen.acked.iter().cloned());
        self.made.extend(seen.made.iter().cloned());
        let n = seen.checkpoints.len();
        for (i, cp) in seen.checkpoints.iter().enumerate() {
            if i == 0 || i + CHECKPOINTS_PER_ROUND > n {
                self.checkpoints.push(cp.clone());
            }
        }
    }
}

fn get(s: &Server, path: &str, key: &str) -> Resp {
    s.client().get(path, Some(key))
}

/// After a restart: first reads back each receipt acknowledged in the last round (`fresh`):
/// present, same index, same body, signed or not — a loss is reported at once. Then waits
/// (bounded) for the log to be signed past every acknowledged receipt and every checkpoint
/// seen. With `full`, it then exports the whole log, checks every receipt acknowledged in any
/// round against it, and runs `allowly-verify` on it (keys pinned, every kept checkpoint
/// given). Returns the violations.
fn check(s: &Server, t: &Tenant, h: &History, fresh: &[Acked], dir: &Path, full: bool) -> Vec<String> {
    let mut v = Vec::new();
    for a in fresh {
        let r = get(s, &format!("/v1/receipts/{}", a.id), &t.reader);
        let got = (r.status == 200).then(|| r.json());
        match got {
            None => v.push(format!("lost: acknowledged receipt {} (log index {}) reads back {r}", a.id, a.log_index)),
            Some(g) if (g["log_index"].as_u64(), &g["body"]) != (Some(a.log_index), &a.body) => v.push(format!(
                "changed: acknowledged receipt {} was at {} with {}, reads back {g}",
                a.id, a.log_index, a.body
            )),
            Some(_) => {}
        }
    }
    if !v.is_empty() {
        return v;
    }
    let mut ids = HashSet::new();
    let mut indices = HashMap::new();
    for a in &h.acked {
        if !ids.insert(a.id.as_str()) {
            v.push(format!("receipt id {} was acknowledged twice", a.id));
        }
        if let Some(other) = indices.insert(a.log_index, a.id.as_str()) {
            v.push(format!("receipts {other} and {} were both acknowledged at log index {}", a.id, a.log_index));
        }
    }
    let need =
        h.acked.iter().map(|a| a.log_index + 1).chain(h.checkpoints.iter().map(|(size, _)| *size)).max().unwrap_or(0);
    let cp_path = format!("/v1/workspaces/{}/log/checkpoint", t.ws);
    let start = Instant::now();
    let (size, note) = loop {
        let r = get(s, &cp_path, &t.reader);
        let cp = (r.status == 200)
            .then(|| r.json())
            .and_then(|j| Some((j["size"].as_u64()?, j["checkpoint"].as_str()?.to_owned())));
        match cp {
            Some((size, note)) if size >= need => break (size, note),
            _ if start.elapsed() > SIGNING_DEADLINE => {
                let ready = s.client().get("/readyz", None);
                v.push(format!(
                    "the log did not reach size {need} (every acknowledged receipt signed, every seen checkpoint \
                     held) within {SIGNING_DEADLINE:?}: newest checkpoint {r}; /readyz {ready}"
                ));
                return v;
            }
            _ => std::thread::sleep(POLL),
        }
    };

    if !full {
        return v;
    }
    let log = get(s, &format!("/v1/workspaces/{}/log/export?from=0&to={size}", t.ws), &t.reader);
    if log.status != 200 {
        v.push(format!("exporting the log [0, {size}): {log}"));
        return v;
    }
    let mut in_log: BTreeMap<String, (u64, Value, Value)> = BTreeMap::new();
    for line in log.text().lines() {
        let Ok(l) = serde_json::from_str::<Value>(line) else {
            v.push(format!("an export line is not JSON: {line}"));
            continue;
        };
        if l["type"] == "receipt" {
            let r = &l["receipt"];
            if let (Some(id), Some(i)) = (r["body"]["id"].as_str(), r["log_index"].as_u64()) {
                in_log.insert(id.to_owned(), (i, r["body"].clone(), r["status"].clone()));
            }
        }
    }
    if in_log.len() as u64 != size {
        v.push(format!("the export of a log of {size} holds {} receipts", in_log.len()));
    }
    for a in &h.acked {
        match in_log.get(&a.id) {
            None => {
                v.push(format!("lost: acknowledged receipt {} (log index {}) is not in the log", a.id, a.log_index))
            }
            Some((i, body, _)) if (*i, body) != (a.log_index, &a.body) => v.push(format!(
                "changed: acknowledged receipt {} was at {} with {}, the log has it at {i} with {body}",
                a.id, a.log_index, a.body
            )),
            Some((_, _, status)) if status != "signed" => {
                v.push(format!("unsigned: acknowledged receipt {} is {status} below checkpoint {size}", a.id))
            }
            Some(_) => {}
        }
    }

    let keys = get(s, &format!("/v1/workspaces/{}/keys", t.ws), &t.reader);
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let (log_file, keys_file) = (write("log.jsonl", &log.body), write("keys.json", &keys.body));
    let mut cps = vec![write("checkpoint-newest.txt", note.as_bytes())];
    for (i, (_, cp)) in h.checkpoints.iter().enumerate() {
        cps.push(write(&format!("checkpoint-{i}.txt"), cp.as_bytes()));
    }
    let (code, shown) = run_verifier(&log_file, &keys_file, &cps);
    if code != Some(0) {
        v.push(format!("allowly-verify refused the log against {} checkpoints seen: {shown}", cps.len()));
    }
    v
}

/// Every workspace created with a `201` still exists with the public keys first read, and
/// every read key answered `201` still authenticates.
fn made_survive(s: &Server, made: &[Made]) -> Vec<String> {
    let c = s.client();
    let mut v = Vec::new();
    for m in made {
        let keys = c.get(&format!("/v1/workspaces/{}/keys", m.ws), None);
        if keys.status != 200 {
            v.push(format!("lost: workspace {} was created (201), its keys read back {keys}", m.ws));
            continue;
        }
        if let Some(k) = &m.keys {
            if keys.json() != *k {
                v.push(format!("changed: workspace {}'s public keys were {k}, now {}", m.ws, keys.text()));
            }
        }
        if let Some(secret) = &m.reader {
            let r = c.get(&format!("/v1/workspaces/{}/log/checkpoint", m.ws), Some(secret));
            if r.status == 401 || r.status == 403 {
                v.push(format!("lost: a read key of workspace {} was created (201), now {r}", m.ws));
            }
        }
    }
    v
}

/// The signer's audit log (read as root, beside the running signer: only whole lines count)
/// names every checkpoint a client saw, with its root: "every checkpoint that can be released
/// appears in audit.log" (ARCHITECTURE), across power cuts.
fn audit_covers(data: &Path, t: &Tenant, h: &History) -> Vec<String> {
    let path = data.join("signer").join("audit.log");
    let text = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return vec![format!("audit: reading {}: {e}", path.display())],
    };
    let whole = match text.iter().rposition(|b| *b == b'\n') {
        Some(i) => &text[..=i],
        None => &text[..0],
    };
    let mut logged = HashSet::new();
    let mut events = Vec::new();
    for line in whole.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(l) = serde_json::from_slice::<Value>(line) else {
            return vec![format!("audit: a line of {} is not JSON: {}", path.display(), String::from_utf8_lossy(line))];
        };
        events.push(format!("{}@{}", l["event"].as_str().unwrap_or("?"), l["size"]));
        if l["workspace_id"] == t.ws.as_str() {
            if let (Some(size), Some(root)) = (l["size"].as_u64(), l["root"].as_str()) {
                logged.insert((size, root.to_owned()));
            }
        }
    }
    let mut v = Vec::new();
    for (size, note) in &h.checkpoints {
        // A C2SP checkpoint: origin, size, base64 root, then the signatures.
        let root = note.lines().nth(2).unwrap_or_default().to_owned();
        if !logged.contains(&(*size, root.clone())) {
            v.push(format!(
                "audit: checkpoint {size} {root} seen by a client is not in {} (its lines: {})",
                path.display(),
                events.join(" ")
            ));
        }
    }
    v
}

/// Boots a machine, creates the tenant, then `crashes` rounds of load → power cut → restart →
/// check. Returns the history and every violation found.
fn campaign(
    test: &str,
    tmp: &Path,
    crashes: usize,
    lie: Option<fn(&OsStr) -> bool>,
    torn: bool,
) -> (Machine, History, Vec<String>) {
    let mut rng = Rng::seeded(test);
    let clients = env_usize("ALLOWLY_POWERLOSS_CLIENTS", 4);
    let max_acks = env_usize("ALLOWLY_POWERLOSS_MAX_ACKS", 150).max(2) as u64;
    let every = env_usize("ALLOWLY_POWERLOSS_FULL_CHECK_EVERY", 1).max(1);
    let mut m = Machine::boot(tmp);
    let t = tenant(m.server(), "power", &["files.*"]);
    // The tenant itself must survive the first crash: sync points of the setup are honest.
    m.fs.lie_about_fsync_of(lie);
    // Torn tails: a cut may also keep a sector-aligned prefix of each file's unsynced writes
    // (drawn from the test's seed, so a printed seed replays them too).
    if torn {
        m.fs.set_torn_tails(Some(rng.next()));
    }
    let mut h = History::default();
    let mut violations = Vec::new();
    let started = Instant::now();
    for r in 0..crashes {
        let target = rng.range(1, max_acks) as usize;
        let pause = Duration::from_millis(rng.range(0, 30));
        // The first cut always lands right after a WAL write, so every run loses an unsynced
        // write in flight at least once; the others are drawn.
        let mut cut = if r == 0 { Cut::At(Point::Write, Files::Wal, 0) } else { Cut::random(&mut rng) };
        // Rounds 1 and 2 (then one in four, drawn) fail an fsync once before the cut: RocksDB's
        // WAL, then the signer's journal (or audit log). The cut then comes at a random moment:
        // an instance failing closed may not write the file an armed cut waits for. Rounds 1
        // and 2 fail it as Linux may ("fsyncgate"): the file's unsynced data is dropped, so a
        // process that kept using it as if written reads and leaves zeros there; the drawn
        // ones do that or leave the data unsynced (a later fsync writes it), half and half.
        let fail = match r {
            1 => Some(Fail { files: Files::Wal, drops: true }),
            2 => Some(Fail { files: Files::Signer, drops: true }),
            _ if r > 2 && rng.range(0, 4) == 0 => Some(Fail {
                files: if rng.range(0, 2) == 0 { Files::Wal } else { Files::Signer },
                drops: rng.range(0, 2) == 0,
            }),
            _ => None,
        };
        if fail.is_some() {
            cut = Cut::Now;
        }
        let seen = round(&mut m, &t, clients, target, pause, cut, fail);
        let report = m.reports.last().unwrap().clone();
        violations.extend(seen.unexpected.iter().map(|u| format!("round {r}: unexpected answer before the cut: {u}")));
        h.add(&seen);
        if let Some(readyz) = m.reboot() {
            violations.push(format!(
                "round {r}: lost: the restarted server found receipts its signer signed missing from the store: {readyz}"
            ));
            break;
        }
        // The whole history is checked after every `every`-th round and after the last; the
        // rounds between check what they added (the long form's history grows large).
        let full = (r + 1) % every == 0 || r + 1 == crashes;
        let mut found = check(m.server(), &t, &h, &seen.acked, tmp, full);
        if found.is_empty() {
            found.extend(made_survive(m.server(), if full { &h.made } else { &seen.made }));
            found.extend(audit_covers(&m.data, &t, &h));
        }
        let failed = fail
            .map(|f| {
                let dropped = if f.drops { ", its unsynced data dropped" } else { "" };
                format!(
                    " after a failed fsync of {:?}{dropped} ({} answered 503 meanwhile)",
                    f.files, seen.failed_closed
                )
            })
            .unwrap_or_default();
        eprintln!(
            "{test} round {r}: cut {cut}{failed} ({} acknowledged, {} workspaces created, target {target} +{pause:?}, {} checkpoints seen); it \
             dropped {} unsynced pages of {:?} and the new entries of {:?}, kept torn tails ({} bytes) of {:?}; \
             {} acknowledged in all, {} violations",
            seen.acked.len(),
            seen.made.len(),
            seen.checkpoints.len(),
            report.unsynced_pages,
            report.unsynced_files,
            report.unsynced_dirs,
            report.torn_bytes_kept,
            report.torn_files,
            h.acked.len(),
            found.len()
        );
        violations.extend(found.into_iter().map(|f| format!("round {r}: {f}")));
        if !violations.is_empty() {
            break;
        }
    }
    eprintln!(
        "{test}: {} crashes, {} acknowledged receipts, {} checkpoints kept, {} violations, {:?}",
        m.reports.len(),
        h.acked.len(),
        h.checkpoints.len(),
        violations.len(),
        started.elapsed()
    );
    (m, h, violations)
}

/// The tier: no acknowledged receipt lost or changed, all signed, the signer never behind a
/// checkpoint it released, no fork — after every power cut. Ends with a clean stop and the
/// signer's audit chain checked by `allowly-signer audit verify`.
#[test]
fn power_loss_under_load_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let crashes = env_usize("ALLOWLY_POWERLOSS_CRASHES", 8);
    let (mut m, h, violations) = campaign("power_loss", tmp.path(), crashes, None, true);
    assert!(
        violations.is_empty(),
        "{} violations:\n{}\n{}",
        violations.len(),
        violations.join("\n"),
        m.server().diagnostics()
    );
    assert!(h.acked.len() >= crashes, "too little load to mean anything: {} acknowledged", h.acked.len());
    // Some cut dropped unsynced writes of a file that matters (not RocksDB's info `LOG`, which
    // is never synced): otherwise the crashes only ever hit quiet moments and tested little.
    let mattered = m.reports.iter().filter(|r| r.unsynced_files.iter().any(|f| f != "LOG")).count();
    let torn = m.reports.iter().filter(|r| r.torn_files.iter().any(|f| f != "LOG")).count();
    eprintln!(
        "{mattered} of {} cuts dropped unsynced writes of a file other than RocksDB's LOG, {torn} kept a torn tail of one",
        m.reports.len()
    );
    assert!(mattered > 0, "no cut caught an unsynced write in flight: {:#?}", m.reports);

    let mut s = m.server.take().unwrap();
    s.stop();
    let audit = m.data.join("signer").join("audit.log");
    let out = std::process::Command::new(signer_bin()).args(["audit", "verify"]).arg(&audit).output().unwrap();
    assert!(
        out.status.success(),
        "allowly-signer audit verify {}: {}\n{}",
        audit.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The negative control: the same campaign on a disk that acknowledges RocksDB's WAL fsyncs
/// without keeping the data. The checker must report acknowledged receipts lost or changed —
/// if it did not, a pass of the test above would mean nothing.
#[test]
fn the_checker_reports_receipts_a_lying_disk_lost() {
    let tmp = tempfile::tempdir().unwrap();
    // All or nothing: a torn tail could keep what the lie dropped and hide the loss.
    let (_m, h, violations) = campaign("lying_disk", tmp.path(), 1, Some(rocksdb_wal), false);
    assert!(!h.acked.is_empty(), "nothing was acknowledged, so nothing could be lost");
    assert!(
        violations.iter().any(|v| v.contains("lost:") || v.contains("changed:")),
        "the checker missed the receipts the lying disk lost; it reported: {violations:#?}"
    );
    eprintln!("the negative control reported {} violations, e.g. {}", violations.len(), violations[0]);
}

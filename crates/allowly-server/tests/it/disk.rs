//! The data volume misbehaving under a running server (issue 11): slow (part 4) and failing its
//! write-ahead-log writes (part 2). RocksDB's directory (`db/`) is an `allowly-lazyfs` mount
//! the test makes slow, stalled or failing at will; this machine has no device-mapper
//! (`dm-delay`, `dm-flakey`), see that crate's `throttle` module. Clients send checks, each with
//! its own `Idempotency-Key`, and every answer is timed and kept. Each test can fail if its
//! promise breaks:
//!
//! - slow: every answer is a 200 or a 503/429 with its code, within `--commit-timeout-ms` (plus
//!   slack for a loaded debug build); `/readyz` says `storage_slow`; once the volume is fast
//!   again, service resumes by itself; a request answered `commit_timeout` and retried with its
//!   key gets one outcome, never two receipts; every acknowledged receipt is signed and the log
//!   verifies.
//! - failing: a failed WAL append (ENOSPC) or sync (EIO) fails closed at once with its code;
//!   once the device heals the store takes writes again without a restart (`DB::Resume`); every
//!   acknowledged receipt survives, also a power cut of the volume right after.
//! - the signer's volume slow (its directory on the mount instead): checks are answered at once,
//!   200 until the signing call under way times out, then 503 `signer_unavailable` (`signer_slow`
//!   once a ping answered meanwhile: the signer is there, too slow to sign) for as long
//!   as signing calls keep timing out, although the signer still answers pings; once fast again
//!   the same processes sign everything and serve.
//! - reads slow (reads and metadata requests of `db/`, not its writes, after a restart): every
//!   `GET` answered within `--commit-timeout-ms` (200 or 503 `read_timeout`), `/healthz` at once.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allowly_lazyfs::{LazyFs, Mount, Point, SlowOps, Slowness};
use serde_json::{json, Value};

use crate::resilience::{
    assert_all_exist, assert_distinct, export_and_verify, metric, not_ready_because, problem_mismatch, signal_pid,
    signers_under, wait_all_signed, Acked, Reaper,
};
use crate::support::*;

/// What a slow answer may take beyond `--commit-timeout-ms` here: the HTTP round trip of a
/// debug build on a shared 2-core machine, far below the injected latency it must not wait for.
const SLACK: Duration = Duration::from_millis(1500);

fn is_wal(name: &OsStr) -> bool {
    name.to_string_lossy().ends_with(".log")
}

/// `dir` (RocksDB's `data/db`, or the signer's `data/signer`) on a fresh `allowly-lazyfs` mount
/// served by `threads` FUSE threads (with a slow write path, the other threads keep serving
/// reads and `statfs`).
fn on_lazyfs(dir: &Path, threads: usize) -> (LazyFs, Mount) {
    std::fs::create_dir_all(dir).unwrap();
    let fs = LazyFs::new();
    let mount = fs
        .mount_with_threads(dir, threads)
        .unwrap_or_else(|e| panic!("mounting allowly-lazyfs at {} (root and /dev/fuse needed): {e}", dir.display()));
    (fs, mount)
}

/// One answer a client got.
#[derive(Debug)]
struct Answer {
    key: String,
    body: Vec<u8>,
    sent: Instant,
    took: Duration,
    resp: Resp,
}

impl Answer {
    fn code(&self) -> String {
        if self.resp.status == 200 {
            return "200".into();
        }
        serde_json::from_slice::<Value>(&self.resp.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(|c| format!("{} {c}", self.resp.status)))
            .unwrap_or_else(|| format!("{} (no problem code)", self.resp.status))
    }
}

/// A check with an `Idempotency-Key`, timed.
fn keyed_check(c: &Client, t: &Tenant, key: &str, body: &[u8]) -> (Resp, Duration) {
    let headers = [
        ("Authorization".to_owned(), format!("Bearer {}", t.checker)),
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Idempotency-Key".to_owned(), key.to_owned()),
    ];
    let start = Instant::now();
    let r = c.request("POST", "/v1/check", &headers, Some(body));
    (r, start.elapsed())
}

/// Clients sending keyed checks until stopped; every answer is kept.
struct KeyedLoad {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl KeyedLoad {
    fn start(c: Client, t: &Tenant, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|i| {
                let (stop, answers, t) = (stop.clone(), answers.clone(), t.clone());
                std::thread::spawn(move || {
                    let body =
                        json!({ "authorization_id": t.az, "scopes": ["files.read"], "resource": format!("f-{i}") });
                    let body = body.to_string().into_bytes();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let key = format!("load-{i}-{n}");
                        n += 1;
                        let sent = Instant::now();
                        let (resp, took) = keyed_check(&c, &t, &key, &body);
                        let refused = resp.status != 200;
                        answers.lock().unwrap().push(Answer { key, body: body.clone(), sent, took, resp });
                        if refused {
                            // A client backing off as `Retry-After` asks (if not as long): a
                            // refusal comes at once, and a tight loop would only burn the CPU
                            // the server needs.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Self { stop, answers, threads }
    }

    fn count(&self, since: usize, code: &str) -> usize {
        self.answers.lock().unwrap().iter().skip(since).filter(|a| a.code() == code).count()
    }

    /// Whether an answer with `code` came to a request sent at or after `at`.
    fn answered_after(&self, at: Instant, code: &str) -> bool {
        self.answers.lock().unwrap().iter().any(|a| a.sent >= at && a.code() == code)
    }

    fn len(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Waits until `n` more answers than `since` were 200.
    fn wait_ok(&self, since: usize, n: usize, s: &Server) {
        eventually(
            &format!("{n} more successful checks"),
            || format!("answers so far: {:?}\n{}", self.tally(0), s.diagnostics()),
            || (self.count(since, "200") >= n).then_some(()),
        );
    }

    /// Answers by code.
    fn tally(&self, since: usize) -> std::collections::BTreeMap<String, usize> {
        tally(&self.answers.lock().unwrap().iter().skip(since).collect::<Vec<_>>())
    }

    fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().expect("a client thread panicked");
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// Every answer is a 200 with a receipt or a problem with one of `codes` (with `Retry-After`);
/// returns the receipts.
fn acked_or_refused(answers: &[Answer], codes: &[(u16, &str)]) -> Vec<Acked> {
    let mut acked = Vec::new();
    for a in answers {
        if a.resp.status == 200 {
            acked.push(Acked::of(&a.resp.json()).unwrap_or_else(|| panic!("a 200 without a receipt: {}", a.resp)));
            continue;
        }
        let ok = codes.iter().any(|(status, code)| problem_mismatch(&a.resp, *status, code).is_none());
        assert!(ok, "answer to {} is none of {codes:?}: {}", a.key, a.resp);
        assert_eq!(a.resp.header("retry-after"), Some("1"), "{}", a.resp);
    }
    acked
}

/// p50, p99 and the maximum of the answers' latencies.
fn latencies(answers: &[&Answer]) -> (Duration, Duration, Duration) {
    let mut took: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    took.sort();
    let q = |q: f64| took.get(((took.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or_default();
    (q(0.5), q(0.99), q(1.0))
}

/// The size of `t`'s log as its newest checkpoint says.
fn log_size(c: &Client, t: &Tenant) -> u64 {
    let cp = c.get(&format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(&t.reader));
    assert_eq!(cp.status, 200, "{cp}");
    cp.json()["size"].as_u64().unwrap()
}

/// RocksDB's directory on a volume that turns slow under concurrent checks: first a little
/// (20 ms per write and per sync: served, all 200), then far beyond the bound (4 s per write
/// and per sync, `--commit-timeout-ms 1000`): every answer within the timeout plus slack —
/// those waiting for the stalled write get 503 `commit_timeout`, and once a write has run for
/// half the timeout new ones get 503 `storage_slow` at once, `/readyz` names it and the metrics
/// show it —; then fast again: served again by itself. Requests answered `commit_timeout`,
/// retried with their key, each end with exactly one receipt: the log holds exactly the
/// grant, one receipt per key answered 200, and the final check.
#[test]
fn a_slow_data_volume_sheds_load_within_the_commit_timeout_and_recovers_by_itself() {
    const TIMEOUT: Duration = Duration::from_millis(1000);
    const LATENCY: Duration = Duration::from_secs(4);
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    let (fs, _mount) = on_lazyfs(&data.join("db"), 16);
    let s = Server::start_with(&data, &["--commit-timeout-ms", "1000"]);
    s.wait_ready();
    let t = tenant(&s, "slow", &["files.*"]);
    let c = s.client();
    let load = KeyedLoad::start(c, &t, 4);
    load.wait_ok(0, 30, &s);

    // A little slow: still well within the bound, so served.
    let little = load.len();
    let little_at = Instant::now();
    fs.set_slowness(Slowness::Latency(Duration::from_millis(20)));
    load.wait_ok(little, 30, &s);

    // Far beyond the bound.
    let slow = load.len();
    let slow_at = Instant::now();
    fs.set_slowness(Slowness::Latency(LATENCY));
    let unready = eventually(
        "/readyz to name storage_slow",
        || format!("answers: {:?}\n{}", load.tally(slow), s.diagnostics()),
        || {
            let r = c.get("/readyz", None);
            (r.status == 503 && r.text().contains("storage_slow")).then(Instant::now)
        },
    );
    not_ready_because(&c, "storage_slow");
    // Shed for as long as the volume stays slow: refusals still come to requests sent twice the
    // timeout into it (the stalled write has not ended; no quick write cleared the cause).
    let later = slow_at + 2 * TIMEOUT;
    eventually(
        "checks to be refused with storage_slow all along, and one to time out",
        || format!("answers: {:?}\n{}", load.tally(slow), s.diagnostics()),
        || {
            (load.answered_after(later, "503 storage_slow") && load.count(slow, "503 commit_timeout") >= 1)
                .then_some(())
        },
    );
    assert_eq!(metric(&c, r#"allowly_engine_fault{cause="storage_slow"}"#), Some(1.0));
    assert!(metric(&c, "allowly_engine_commit_timeouts_total").unwrap_or(0.0) >= 1.0);
    let running = metric(&c, "allowly_engine_commit_running_seconds").unwrap_or(0.0);

    // Fast again: nothing but the volume changes.
    let healed_at = Instant::now();
    let healed = load.len();
    fs.set_slowness(Slowness::Fast);
    s.wait_ready();
    let ready_after = healed_at.elapsed();
    load.wait_ok(healed, 30, &s);
    let answers = load.finish();

    // Every answer: 200, or a refusal with its code; those sent while the volume was slow came
    // within the bound.
    let codes = [(503, "storage_slow"), (503, "commit_timeout"), (429, "overloaded")];
    let mut acked = acked_or_refused(&answers, &codes);
    // Answers to requests that waited while the volume was slow: sent during it, or sent before
    // and still waiting when it began.
    let in_slow: Vec<&Answer> = answers.iter().filter(|a| a.sent + a.took >= slow_at && a.sent < healed_at).collect();
    let (p50, p99, max) = latencies(&in_slow);
    let tally = tally(&in_slow);
    let in_little: Vec<&Answer> = answers.iter().filter(|a| a.sent >= little_at && a.sent + a.took < slow_at).collect();
    let (little_p50, little_p99, little_max) = latencies(&in_little);
    eprintln!(
        "a little slow (20 ms per write and sync): {} answers, all 200, p50 {little_p50:?} p99 {little_p99:?} \
         max {little_max:?}",
        in_little.len()
    );
    eprintln!(
        "slow volume ({LATENCY:?} per write and sync, --commit-timeout-ms 1000): {} answers {tally:?}, \
         p50 {p50:?} p99 {p99:?} max {max:?}; /readyz unready {:?} after the latency began, a write \
         running {running:.1} s; ready again {ready_after:?} after it ended",
        in_slow.len(),
        unready - slow_at,
    );
    assert!(max <= TIMEOUT + SLACK, "an answer took {max:?} on the slow volume: not bounded by the commit timeout");
    assert!(
        in_little.iter().all(|a| a.resp.status == 200),
        "a volume only a little slow refused checks: {:?}",
        in_little.iter().filter(|a| a.resp.status != 200).map(|a| &a.resp).collect::<Vec<_>>()
    );

    // Each request whose outcome was unknown, retried with its key: one outcome, the same again.
    let c = s.client();
    let timed_out: Vec<&Answer> = answers.iter().filter(|a| a.code() == "503 commit_timeout").collect();
    for a in &timed_out {
        let (first, _) = keyed_check(&c, &t, &a.key, &a.body);
        assert_eq!(first.status, 200, "retry of {}: {first}", a.key);
        let (again, _) = keyed_check(&c, &t, &a.key, &a.body);
        assert_eq!(again.body, first.body, "a second retry of {} got another answer", a.key);
        acked.push(Acked::of(&first.json()).unwrap());
    }
    assert_distinct(&acked);
    assert_all_exist(&s, &t.reader, &acked);
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());
    // Nothing refused left a receipt, nothing timed out left two: the grant, one per key that
    // ended in a 200, and export_and_verify's own check.
    assert_eq!(log_size(&c, &t), acked.len() as u64 + 2, "the log holds receipts no answer accounts for");
    eprintln!("{} checks acknowledged, {} timed out and retried with their key", acked.len(), timed_out.len());
}

/// Stops the server and every process it started, then a power cut of the db volume: what was
/// not fsynced is gone. Returns the fresh mount of what survived.
fn power_cut(s: &mut Server, fs: &LazyFs, mount: Mount, data: &Path) -> Mount {
    fs.crash();
    s.kill9();
    eventually(
        "the signer of the stopped server to be gone",
        || format!("{:?}", signers_under(data)),
        || {
            let left = signers_under(data);
            for pid in &left {
                let _ = signal_pid(*pid, rustix::process::Signal::KILL);
            }
            left.is_empty().then_some(())
        },
    );
    mount.unmount().unwrap_or_else(|e| panic!("unmounting the crashed db volume: {e}"));
    fs.mount_with_threads(&data.join("db"), 4).unwrap()
}

/// RocksDB's write-ahead log fails under concurrent checks — an append with ENOSPC, then a
/// sync with EIO —: each fails closed at once (503 with the device's code, `/readyz` names it,
/// nothing acknowledged), and once the device works again the store takes writes again without
/// a restart (`DB::Resume`, after the failed log was cut back to its synced length). Every
/// acknowledged receipt is stored and signed, the log verifies, and all of it survives a power
/// cut of the volume right after.
#[test]
fn a_failed_wal_write_or_sync_fails_closed_and_the_store_recovers_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    let (fs, mount) = on_lazyfs(&data.join("db"), 4);
    let mut s = Server::start(&data);
    s.wait_ready();
    let t = tenant(&s, "walfail", &["files.*"]);
    let c = s.client();
    let load = KeyedLoad::start(c, &t, 3);
    load.wait_ok(0, 30, &s);

    let (enospc, eio) = (rustix::io::Errno::NOSPC.raw_os_error(), rustix::io::Errno::IO.raw_os_error());
    for (point, errno, code) in [(Point::Write, enospc, "storage_full"), (Point::Sync, eio, "storage_failed")] {
        let since = load.len();
        fs.fail(Some((point, is_wal, errno)));
        let refused = format!("503 {code}");
        eventually(
            &format!("checks to fail closed with {code}"),
            || format!("answers: {:?}\n{}", load.tally(since), s.diagnostics()),
            || (load.count(since, &refused) >= 3).then_some(()),
        );
        let ready = not_ready_because(&c, code);
        assert!(ready["detail"].as_str().unwrap().contains("store write"), "{ready}");
        // Still failing, still closed: the probe's recovery attempts do not pretend.
        let still = load.len();
        eventually(
            "more refusals while the device fails",
            || format!("answers: {:?}", load.tally(still)),
            || (load.count(still, &refused) >= 3).then_some(()),
        );
        assert_eq!(load.count(still, "200"), 0, "a check was acknowledged while the WAL failed");

        let healed = load.len();
        fs.fail(None);
        load.wait_ok(healed, 30, &s);
        s.wait_ready();
        eprintln!("{code}: {:?} while failing; served again without a restart", load.tally(since));
    }
    let answers = load.finish();
    let codes = [(503, "storage_full"), (503, "storage_failed")];
    let acked = acked_or_refused(&answers, &codes);
    assert_distinct(&acked);
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());

    // What the recovery made durable is durable: cut the power of the volume, start again.
    let _mount = power_cut(&mut s, &fs, mount, &data);
    let s = Server::start(&data);
    s.wait_ready();
    assert_all_exist(&s, &t.reader, &acked);
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());
    eprintln!("{} checks acknowledged around two WAL failures, all there after a power cut", acked.len());
}

/// The embedded signer's directory (journal, audit log, keys) on a volume whose writes and
/// fsyncs turn far slower (4 s each) than `--signer-timeout-ms 1000`, under concurrent keyed
/// checks. Checks do not wait for the signer, so every answer comes at once: a 200 (a pending
/// receipt, signed later) or 503 `signer_unavailable` — `signer_slow` once a ping answered
/// after a signing round timed out: the signer is there, but too slow to sign. The engine
/// fails closed within the signer timeout (plus the probe interval and slack) of the latency's
/// start and *stays* closed — no check acknowledged, `/readyz` 503 naming the signer at every
/// look, `signer_slow` among them — for as long as signing rounds keep timing out (observed
/// over three of them, with checks refused `signer_slow`), although the signer still answers
/// pings (they touch no disk). Once the volume is fast again service
/// resumes by itself, with the same signer process: every acknowledged receipt is signed and
/// the log verifies.
#[test]
fn a_slow_signer_volume_fails_closed_and_stays_closed_until_signing_works_again() {
    const SIGNER_TIMEOUT: Duration = Duration::from_millis(1000);
    const LATENCY: Duration = Duration::from_secs(4);
    /// How long after the latency began checks may still be acknowledged: the signing round
    /// under way times out after the signer timeout; plus the probe interval and slack.
    const WINDOW: Duration = Duration::from_millis(1000 + 500 + 1500);
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_owned());
    let data = tmp.path().join("data");
    let (fs, _mount) = on_lazyfs(&data.join("signer"), 4);
    let s = Server::start_with(&data, &["--signer-timeout-ms", "1000"]);
    s.wait_ready();
    let signer = s.signer_pid();
    let t = tenant(&s, "slowsigner", &["files.*"]);
    let c = s.client();
    let load = KeyedLoad::start(c, &t, 3);
    load.wait_ok(0, 30, &s);

    let slow = load.len();
    let slow_at = Instant::now();
    let timeouts_before = metric(&c, r#"allowly_engine_signer_errors_total{kind="unavailable"}"#).unwrap_or(0.0);
    fs.set_slowness(Slowness::Latency(LATENCY));
    let closed_at = eventually(
        "checks to fail closed with signer_unavailable or signer_slow",
        || format!("answers: {:?}\n{}", load.tally(slow), s.diagnostics()),
        || (load.count(slow, "503 signer_unavailable") + load.count(slow, "503 signer_slow") >= 1).then(Instant::now),
    );
    // Closed, and staying closed while signing rounds keep timing out: each look at `/readyz`
    // is 503 naming the signer, and no check sent from now on is acknowledged.
    let (mut looks, mut pings_named, mut slow_named) = (0, false, false);
    eventually(
        "three more signing rounds to time out, with the engine closed all along",
        || format!("answers: {:?}\n{}", load.tally(slow), s.diagnostics()),
        || {
            let r = c.get("/readyz", None);
            assert!(
                r.status == 503 && (r.text().contains("signer_unavailable") || r.text().contains("signer_slow")),
                "/readyz after {:?} of a signer volume that never finishes a write in time: {r}",
                slow_at.elapsed()
            );
            looks += 1;
            // The detail tells a stopped process from a slow disk (once a pong came meanwhile),
            // and so does the code: `signer_slow`, not `signer_unavailable`.
            pings_named |= r.text().contains("answers pings but not signing requests");
            slow_named |= r.text().contains("\"signer_slow\"");
            let timeouts = metric(&c, r#"allowly_engine_signer_errors_total{kind="unavailable"}"#).unwrap_or(0.0);
            (timeouts >= timeouts_before + 3.0 && load.count(slow, "503 signer_slow") >= 1).then_some(())
        },
    );
    assert!(
        !load.answered_after(closed_at, "200"),
        "a check was acknowledged after failing closed: {:?}",
        load.tally(slow)
    );
    assert_eq!(metric(&c, "allowly_engine_signer_up"), Some(0.0));
    assert!(pings_named, "/readyz never said that the signer answers pings but not signing requests");
    assert!(slow_named, "/readyz never named signer_slow although the signer answered pings");
    let held = closed_at.elapsed();

    // Fast again: the same processes sign everything and serve again.
    let healed = load.len();
    let healed_at = Instant::now();
    fs.set_slowness(Slowness::Fast);
    s.wait_ready();
    let ready_after = healed_at.elapsed();
    load.wait_ok(healed, 30, &s);
    let answers = load.finish();
    assert_eq!(s.signer_pid(), signer, "the signer was restarted");

    let mut acked = acked_or_refused(&answers, &[(503, "signer_unavailable"), (503, "signer_slow")]);
    let in_slow: Vec<&Answer> = answers.iter().filter(|a| a.sent + a.took >= slow_at && a.sent < healed_at).collect();
    let (p50, p99, max) = latencies(&in_slow);
    let late_acks: Vec<&Answer> =
        in_slow.iter().copied().filter(|a| a.resp.status == 200 && a.sent >= slow_at + WINDOW).collect();
    let window_acks = in_slow.iter().filter(|a| a.resp.status == 200).count();
    eprintln!(
        "slow signer volume ({LATENCY:?} per write and sync, --signer-timeout-ms 1000): closed {:?} after the \
         latency began, {window_acks} checks acknowledged (pending) before that; closed for {held:?} over {looks} \
         looks at /readyz; answers {:?}, p50 {p50:?} p99 {p99:?} max {max:?}; ready again {ready_after:?} after it ended",
        closed_at - slow_at,
        tally(&in_slow),
    );
    assert!(
        closed_at - slow_at <= WINDOW,
        "failed closed only {:?} after the signer volume turned slow",
        closed_at - slow_at
    );
    assert!(late_acks.is_empty(), "checks acknowledged later than {WINDOW:?} into the slow spell: {late_acks:?}");
    assert!(max <= SIGNER_TIMEOUT + SLACK, "an answer took {max:?}: checks must not wait for the signer");

    let c = s.client();
    let mut more = Vec::new();
    for _ in 0..5 {
        let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }));
        assert_eq!(r.status, 200, "{r}");
        more.push(Acked::of(&r.json()).unwrap());
    }
    acked.extend(more);
    assert_distinct(&acked);
    assert_all_exist(&s, &t.reader, &acked);
    wait_all_signed(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], tmp.path());
    eprintln!("{} checks acknowledged around the slow spell, all signed", acked.len());
}

/// Answers by code.
fn tally(answers: &[&Answer]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for a in answers {
        *m.entry(a.code()).or_default() += 1;
    }
    m
}

/// RocksDB's directory on a volume whose reads and metadata requests (not its writes) turn 5 s
/// slow, after a restart (so nothing the requests need is cached: not the API keys, not the
/// store's blocks). Several clients read at once — receipts, an authorization, the public keys,
/// the log's checkpoint —, each with its API key not yet cached. Every answer comes within
/// `--commit-timeout-ms` plus slack: a 200, or 503 `read_timeout` (problem+json,
/// `Retry-After: 1`); `/healthz` answers at once all along (no async worker is held by a read).
/// Once the volume is fast again every read answers 200 with what was stored.
#[test]
fn slow_reads_are_answered_within_the_commit_timeout_and_never_hold_the_server() {
    let (v, mut s) = ReadsVolume::start();
    let t = tenant(&s, "slowreads", &["files.*"]);
    let c = s.client();
    let mut acked = Vec::new();
    for _ in 0..20 {
        let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.read"] }));
        assert_eq!(r.status, 200, "{r}");
        acked.push(Acked::of(&r.json()).unwrap());
    }
    wait_all_signed(&s, &t.reader, &acked);
    // A restart: nothing cached, every read below goes to the volume.
    let s = v.restart(&mut s);
    let c = s.client();

    v.slow_reads();
    let paths: Vec<(String, Option<String>)> = acked
        .iter()
        .take(6)
        .map(|a| (format!("/v1/receipts/{}", a.id), Some(t.reader.clone())))
        .chain([
            (format!("/v1/authorizations/{}", t.az), Some(t.reader.clone())),
            (format!("/v1/workspaces/{}/keys", t.ws), None),
            (format!("/v1/workspaces/{}/log/checkpoint", t.ws), Some(t.reader.clone())),
        ])
        .collect();
    let calls = paths
        .into_iter()
        .map(|(path, key)| -> Call { (format!("GET {path}"), Box::new(move || c.get(&path, key.as_deref()))) })
        .collect();
    let timed_out =
        timed_out(&answered_within(c, calls, READ_BOUND, &format!("reads and metadata {READ_LATENCY:?} slow")));
    assert!(timed_out > 0, "no read waited for the volume: the test did not slow what the requests read");
    assert!(metric(&c, "allowly_engine_read_timeouts_total").unwrap_or(0.0) >= timed_out as f64);

    // Fast again: every read is answered with what was stored.
    v.fs.set_slowness(Slowness::Fast);
    assert_all_exist(&s, &t.reader, &acked);
    let keys = c.get(&format!("/v1/workspaces/{}/keys", t.ws), None);
    assert_eq!(keys.status, 200, "{keys}");
}

/// The bound the slow-read tests hold answers to (`--commit-timeout-ms`), and the latency
/// they give the volume's reads: far longer, so a request that waits for it is seen.
const READ_BOUND: Duration = Duration::from_millis(1000);
const READ_LATENCY: Duration = Duration::from_secs(5);

/// A data directory whose RocksDB directory (`db/`) is a fresh `allowly-lazyfs` mount with no
/// page cache, for servers run with `--commit-timeout-ms` [`READ_BOUND`]. Fields drop in order:
/// the mount before the signers are reaped and the directory removed.
struct ReadsVolume {
    _mount: Mount,
    fs: LazyFs,
    _reaper: Reaper,
    data: std::path::PathBuf,
    tmp: tempfile::TempDir,
}

impl ReadsVolume {
    const ARGS: [&'static str; 2] = ["--commit-timeout-ms", "1000"];

    /// The volume and a ready server on it.
    fn start() -> (Self, Server) {
        let tmp = tempfile::tempdir().unwrap();
        let _reaper = Reaper(tmp.path().to_owned());
        let data = tmp.path().join("data");
        // No page cache: a table file RocksDB writes after the reads turn slow (the
        // compactions it starts at every open rewrite each key space's recovered file) would
        // otherwise be read from the kernel's copy, and the test would not slow what it reads.
        let db = data.join("db");
        std::fs::create_dir_all(&db).unwrap();
        let fs = LazyFs::new();
        let _mount = fs.mount_uncached(&db, 16).expect("mounting allowly-lazyfs (root and /dev/fuse needed)");
        let s = Server::start_with(&data, &Self::ARGS);
        s.wait_ready();
        (Self { _mount, fs, _reaper, data, tmp }, s)
    }

    /// Stops `s` and starts a new server on the same directory: nothing cached.
    fn restart(&self, s: &mut Server) -> Server {
        self.restart_with(s, &Self::ARGS)
    }

    /// [`Self::restart`] with these arguments instead.
    fn restart_with(&self, s: &mut Server, args: &[&str]) -> Server {
        s.stop();
        let s = Server::start_with(&self.data, args);
        s.wait_ready();
        s
    }

    /// From now on every read and metadata request of the mount takes [`READ_LATENCY`] (not its
    /// writes). The mount keeps no page cache, so each read RocksDB makes waits for it.
    fn slow_reads(&self) {
        self.fs.set_slow_ops(SlowOps { writes: false, syncs: false, reads: true, metadata: true });
        self.fs.set_slowness(Slowness::Latency(READ_LATENCY));
    }
}

/// A request to send, named for the messages.
type Call = (String, Box<dyn FnOnce() -> Resp + Send>);

/// Sends `calls` at once, each on its own thread, looking at `/healthz` every `POLL` until all
/// are answered, and asserts what a slow volume's reads must never break: every answer within
/// `bound` (`--commit-timeout-ms`) plus slack, a 200 or 503 `read_timeout` (`Retry-After: 1`),
/// and `/healthz` 200 at once each time (no async worker is held by a read). Returns the
/// answers, in the order of `calls`.
fn answered_within(c: Client, calls: Vec<Call>, bound: Duration, what: &str) -> Vec<Resp> {
    let started = Instant::now();
    let threads: Vec<_> = calls
        .into_iter()
        .map(|(name, call)| {
            std::thread::spawn(move || {
                let start = Instant::now();
                let r = call();
                (name, r, start.elapsed())
            })
        })
        .collect();
    let mut health = Vec::new();
    while threads.iter().any(|h| !h.is_finished()) && started.elapsed() < bound + SLACK + SLACK {
        let start = Instant::now();
        let r = c.get("/healthz", None);
        health.push((r.status, start.elapsed()));
        std::thread::sleep(POLL);
    }
    let answers: Vec<(String, Resp, Duration)> =
        threads.into_iter().map(|h| h.join().expect("a request thread panicked")).collect();
    let healthz_max = health.iter().map(|h| h.1).max().unwrap_or_default();
    let timed_out = answers.iter().filter(|a| a.1.status == 503).count();
    eprintln!(
        "{what}, bound {} ms: {} requests, {timed_out} answered 503 read_timeout, slowest {:?}; \
         /healthz {} times meanwhile, slowest {healthz_max:?}",
        bound.as_millis(),
        answers.len(),
        answers.iter().map(|a| a.2).max().unwrap_or_default(),
        health.len()
    );
    for (name, r, took) in &answers {
        assert!(*took <= bound + SLACK, "{name} took {took:?} on a volume whose reads are slow: {r}");
        if r.status != 200 {
            assert!(problem_mismatch(r, 503, "read_timeout").is_none(), "{name}: {r}");
            assert_eq!(r.header("retry-after"), Some("1"), "{name}: {r}");
        }
    }
    assert!(health.iter().all(|h| h.0 == 200), "/healthz: {health:?}");
    assert!(healthz_max <= SLACK, "/healthz took {healthz_max:?} while reads were slow: a read held the server");
    answers.into_iter().map(|a| a.1).collect()
}

/// How many of `answers` are 503s (`read_timeout`, as [`answered_within`] asserts).
fn timed_out(answers: &[Resp]) -> usize {
    answers.iter().filter(|r| r.status == 503).count()
}

/// The reads a workspace actor makes on a cache miss (issue 11): RocksDB's directory turns 5 s
/// slow for reads after a restart, in four workspaces whose actors run and whose checker keys
/// are cached, but whose authorizations were never read since the restart (each actor was
/// started by a repeat of a keyed check, answered from its stored record alone). A check in
/// each — two without an `Idempotency-Key`, two with a new one — makes its actor read the
/// authorization: every answer comes within `--commit-timeout-ms` plus slack (503
/// `read_timeout`, nothing decided) and `/healthz` answers at once all along. Before, each
/// actor made the read on its async worker: four of them held both workers of this 2-core
/// machine and nothing was answered. Once the volume is fast again the same requests are
/// allowed, their receipts continue each trail where it was (the actor kept nothing of the
/// reads that timed out), and each log verifies.
#[test]
fn an_actors_cache_miss_reads_are_answered_within_the_commit_timeout_and_never_hold_the_server() {
    let (v, mut s) = ReadsVolume::start();
    let tenants: Vec<Tenant> = (0..4).map(|i| tenant(&s, &format!("actorreads{i}"), &["files.*"])).collect();
    let body = |t: &Tenant| serde_json::to_vec(&json!({ "authorization_id": t.az, "scopes": ["files.read"] })).unwrap();
    let c = s.client();
    let mut acked: Vec<Vec<Acked>> = Vec::new();
    for t in &tenants {
        let (r, _) = keyed_check(&c, t, "before-restart", &body(t));
        assert_eq!(r.status, 200, "{r}");
        acked.push(vec![Acked::of(&r.json()).unwrap()]);
    }
    for (t, a) in tenants.iter().zip(&acked) {
        wait_all_signed(&s, &t.reader, a);
    }
    let s = v.restart(&mut s);
    let c = s.client();
    for (t, a) in tenants.iter().zip(&acked) {
        let (r, _) = keyed_check(&c, t, "before-restart", &body(t));
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(Acked::of(&r.json()).unwrap().id, a[0].id, "a repeat gets the first answer");
    }

    v.slow_reads();
    // Two unkeyed checks, two with a key of their own; sent again, the same, once it is fast.
    let send = |i: usize, t: &Tenant| {
        let (body, t) = (body(t), t.clone());
        move || -> Resp {
            if i < 2 {
                let headers = [
                    ("Authorization".to_owned(), format!("Bearer {}", t.checker)),
                    ("Content-Type".to_owned(), "application/json".to_owned()),
                ];
                c.request("POST", "/v1/check", &headers, Some(&body))
            } else {
                keyed_check(&c, &t, &format!("stalled-{i}"), &body).0
            }
        }
    };
    let calls = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| -> Call { (format!("check in {}", t.ws), Box::new(send(i, t))) })
        .collect();
    let answers = answered_within(c, calls, READ_BOUND, &format!("reads {READ_LATENCY:?} slow, actors' caches cold"));
    assert!(timed_out(&answers) > 0, "no actor read waited for the volume: the test did not slow what the checks read");
    // One answered in time (its read was not slow after all) is acknowledged like any other.
    for (r, a) in answers.iter().zip(&mut acked) {
        if r.status == 200 {
            a.push(Acked::of(&r.json()).unwrap());
        }
    }

    // Fast again: the same requests are decided, on what is stored.
    v.fs.set_slowness(Slowness::Fast);
    for (i, (t, a)) in tenants.iter().zip(&mut acked).enumerate() {
        let r = send(i, t)();
        assert_eq!(r.status, 200, "{r}");
        let v = r.json();
        assert_eq!(v["decision"], "allow", "{v}");
        let receipt = Acked::of(&v).unwrap();
        if a.iter().all(|b| b.id != receipt.id) {
            let last = a.last().map(|b| b.body["seq"].as_u64().unwrap()).unwrap();
            assert_eq!(receipt.body["seq"], last + 1, "the trail goes on where it was: {v}");
            a.push(receipt);
        }
    }
    for (t, a) in tenants.iter().zip(&acked) {
        assert_all_exist(&s, &t.reader, a);
        wait_all_signed(&s, &t.reader, a);
        export_and_verify(&s, t, "files.read", a, &[], v.tmp.path());
    }
}

/// The other reads issue 11 left unbounded: the non-waiting `GET /v1/escalations/{id}` and
/// the admin key list, on a volume whose reads turn 5 s slow after a restart (the keys they
/// are sent with cached, nothing of what they read). Every answer comes within
/// `--commit-timeout-ms` plus slack (200 or 503 `read_timeout`) and `/healthz` answers at once
/// all along; once fast again every one is a 200 with what is stored.
#[test]
fn escalation_and_admin_key_reads_are_answered_within_the_commit_timeout() {
    let (v, mut s) = ReadsVolume::start();
    let t = tenant(&s, "slowhitl", &["files.*"]);
    let c = s.client();
    let rules = json!({ "scope_rules": { "files.delete": "escalate" } });
    let r = c.call("PUT", &format!("/v1/workspaces/{}/scope-rules", t.ws), Some(&t.admin), Some(&rules));
    assert_eq!(r.status, 200, "{r}");
    // Enough escalations that their documents span several blocks of the store.
    let escalations: Vec<String> = (0..40)
        .map(|_| {
            let r = c.post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["files.delete"] }));
            assert_eq!(r.status, 200, "{r}");
            r.json()["escalation"]["id"].as_str().expect("an escalation").to_owned()
        })
        .collect();
    let s = v.restart(&mut s);
    let c = s.client();
    let root = s.admin_token();
    // The keys cached: their own reads are not what is tested here.
    assert_eq!(c.get(&format!("/v1/authorizations/{}", t.az), Some(&t.reader)).status, 200);
    assert_eq!(c.get(&format!("/v1/workspaces/{}", t.ws), Some(&root)).status, 200);

    v.slow_reads();
    let paths: Vec<(String, String)> = escalations
        .iter()
        .step_by(8)
        .map(|id| (format!("/v1/escalations/{id}"), t.reader.clone()))
        .chain([("/v1/admin-keys".to_owned(), root.clone())])
        .collect();
    let calls = paths
        .iter()
        .cloned()
        .map(|(path, key)| -> Call { (format!("GET {path}"), Box::new(move || c.get(&path, Some(&key)))) })
        .collect();
    let answers = answered_within(c, calls, READ_BOUND, &format!("reads {READ_LATENCY:?} slow"));
    // Both kinds waited for the volume (or the test did not slow what they read).
    let (list, gets) = answers.split_last().unwrap();
    assert!(timed_out(gets) > 0, "no escalation read waited for the volume");
    assert_eq!(list.status, 503, "the admin key list did not wait for the volume: {list}");

    v.fs.set_slowness(Slowness::Fast);
    for (path, key) in &paths {
        let r = c.get(path, Some(key));
        assert_eq!(r.status, 200, "GET {path}: {r}");
    }
}

/// The checks some writes make before they reach their workspace's actor (issue 11): revoking
/// an authorization (is it this workspace's?) and revoking an API key (the same), after a
/// restart, on a volume whose reads turn 5 s slow (the admin key cached, nothing of what the
/// checks read). Each is answered within `--commit-timeout-ms` plus slack (200, or 503
/// `read_timeout` with nothing changed) and `/healthz` answers at once; once fast again each
/// is done (or, if it was done in time, refused as done already).
#[test]
fn checks_before_a_write_reaches_its_actor_are_answered_within_the_commit_timeout() {
    let (v, mut s) = ReadsVolume::start();
    let t = tenant(&s, "slowrevokes", &["files.*"]);
    let s = v.restart(&mut s);
    let c = s.client();
    // The admin key cached: its own read is not what is tested here.
    assert_eq!(c.get(&format!("/v1/workspaces/{}", t.ws), Some(&t.admin)).status, 200);

    v.slow_reads();
    let paths = [
        format!("/v1/authorizations/{}/revoke", t.az),
        format!("/v1/workspaces/{}/api-keys/{}/revoke", t.ws, t.reader_id),
    ];
    let calls = paths
        .iter()
        .cloned()
        .map(|path| -> Call {
            let admin = t.admin.clone();
            (format!("POST {path}"), Box::new(move || c.call("POST", &path, Some(&admin), None)))
        })
        .collect();
    let answers = answered_within(c, calls, READ_BOUND, &format!("reads {READ_LATENCY:?} slow"));
    assert!(timed_out(&answers) > 0, "no check waited for the volume: the test did not slow what they read");

    v.fs.set_slowness(Slowness::Fast);
    for (path, first) in paths.iter().zip(&answers) {
        let r = c.call("POST", path, Some(&t.admin), None);
        match first.status {
            200 => assert!(problem_mismatch(&r, 409, "conflict").is_none(), "POST {path} again: {r}"),
            _ => assert_eq!(r.status, 200, "POST {path}: {r}"),
        }
    }
}

/// The bound of an evidence export (issue 11): 30 × `--commit-timeout-ms` (`EXPORT_TIMEOUT_FACTOR`,
/// docs/operations.md), here 30 × 250 ms. RocksDB's directory turns 5 s slow for reads after a
/// restart (the reader's key and its workspace's rate limit cached, nothing of the log). A
/// log export and a trail export, each of which reads several files of the volume, are both
/// answered `503 read_timeout` (problem+json, `Retry-After: 1`) at their bound — not before,
/// not much after, never a 500 — while `/healthz` answers at once. Nothing changed: the log
/// has the same size once the volume is fast again, and (after a restart with the usual
/// bound, so that a loaded machine does not time the checks out) both exports are 200 and
/// verify.
#[test]
fn an_export_on_a_stalled_volume_is_answered_read_timeout_at_its_own_bound() {
    const COMMIT_TIMEOUT_MS: u64 = 250;
    const EXPORT_BOUND: Duration = Duration::from_millis(30 * COMMIT_TIMEOUT_MS);
    let (v, mut s) = ReadsVolume::start();
    let t = tenant(&s, "slowexport", &["files.*"]);
    let c = s.client();
    let mut acked = Vec::new();
    for i in 0..30 {
        let r = c.post(
            "/v1/check",
            &t.checker,
            json!({ "authorization_id": t.az, "scopes": ["files.read"], "resource": format!("f-{i}") }),
        );
        assert_eq!(r.status, 200, "{r}");
        acked.push(Acked::of(&r.json()).unwrap());
    }
    wait_all_signed(&s, &t.reader, &acked);
    let ms = COMMIT_TIMEOUT_MS.to_string();
    let s = v.restart_with(&mut s, &["--commit-timeout-ms", &ms]);
    let c = s.client();
    // The reader's key and its workspace's rate limit cached: their reads are not what is tested.
    let size = log_size(&c, &t);

    v.slow_reads();
    let paths =
        [format!("/v1/workspaces/{}/log/export?from=0&to={size}", t.ws), format!("/v1/authorizations/{}/export", t.az)];
    let took = Arc::new(Mutex::new(Vec::new()));
    let calls = paths
        .iter()
        .cloned()
        .map(|path| -> Call {
            let (name, reader, took) = (format!("GET {path}"), t.reader.clone(), took.clone());
            let call = move || {
                let started = Instant::now();
                let r = c.get(&path, Some(&reader));
                took.lock().unwrap().push((path, started.elapsed()));
                r
            };
            (name, Box::new(call))
        })
        .collect();
    let answers = answered_within(c, calls, EXPORT_BOUND, &format!("reads {READ_LATENCY:?} slow, exports"));
    for r in &answers {
        assert!(problem_mismatch(r, 503, "read_timeout").is_none(), "an export on a stalled volume: {r}");
    }
    for (path, took) in took.lock().unwrap().iter() {
        assert!(*took >= EXPORT_BOUND, "GET {path} was answered after {took:?}, before its bound {EXPORT_BOUND:?}");
    }

    v.fs.set_slowness(Slowness::Fast);
    assert_eq!(log_size(&c, &t), size, "a refused export changed the log");
    let mut s = s;
    let s = v.restart(&mut s);
    assert_all_exist(&s, &t.reader, &acked);
    export_and_verify(&s, &t, "files.read", &acked, &[], v.tmp.path());
}

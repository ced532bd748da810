//! The signer's limits, each pushed past its bound against the real binary: leaves per signed
//! group, bytes queued per workspace, connections, and the unloading of idle workspaces. Each
//! test checks that the bound held (from the audit log, the metrics, `/proc`), that what it
//! answered over the bound is what the protocol says, and that the signer then signs the rest
//! exactly (checkpoints verified with the published keys against leaves the test appended).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use allowly_receipt::merkle::{consistency_proof, verify_consistency, Hash, LeafList};
use allowly_receipt::note::NoteVerifier;
use allowly_signer_proto::client::{AppendOutcome, ClientError};
use allowly_signer_proto::{ErrorCode, Request, Response};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;

use crate::support::*;

/// Sends `reqs` on one new connection, written in one go before any answer is read, and
/// returns the answers in request order.
async fn pipelined(sock: &Path, reqs: &[Request]) -> Vec<Response> {
    let mut wire = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        wire.extend(frame(i as u64 + 1, r));
    }
    let mut stream = UnixStream::connect(sock).await.unwrap();
    stream.write_all(&wire).await.unwrap();
    let mut answers = HashMap::new();
    for _ in 0..reqs.len() {
        let (id, resp) = read_response(&mut stream).await.expect("connection closed early");
        assert!(answers.insert(id, resp).is_none(), "two answers to request {id}");
    }
    (1..=reqs.len() as u64).map(|id| answers.remove(&id).expect("every request answered")).collect()
}

fn append(ws: &str, at: usize, n: usize) -> Request {
    Request::AppendBatch {
        workspace_id: ws.into(),
        expected_size: at as u64,
        bodies: bodies(ws, at, n),
        want_proofs: false,
    }
}

/// The `checkpoint` lines of `ws` in the audit log: (size after, leaves in the group).
fn signed_groups(s: &Signer, ws: &str) -> Vec<(u64, usize)> {
    s.audit()
        .iter()
        .filter(|l| l["workspace_id"] == ws && l["event"] == "checkpoint")
        .map(|l| (l["size"].as_u64().unwrap(), l["leaves"].as_array().map_or(0, Vec::len)))
        .collect()
}

/// Checks an `Appended` answer against the leaves appended so far.
fn check(ws: &str, all: &[Hash], batch_len: usize, out: &AppendOutcome, v: &[NoteVerifier]) {
    assert_eq!(out.new_size, out.old_size + batch_len as u64, "sizes in the answer");
    let (cp, _) = open_checkpoint(ws, &out.checkpoint, v);
    assert!(cp.size >= out.new_size, "checkpoint {} does not cover {}", cp.size, out.new_size);
    assert_eq!(cp.root, model_root(all, cp.size), "checkpoint root is not the root of the leaves appended");
}

fn appended(r: Response) -> Option<AppendOutcome> {
    match r {
        Response::Appended { old_size, new_size, checkpoint, proofs } => {
            Some(AppendOutcome { old_size, new_size, checkpoint, proofs })
        }
        _ => None,
    }
}

fn audit_verify(dir: &Path) {
    let (status, out, err) =
        run_with_deadline(Command::new(signer_bin()).args(["audit", "verify"]).arg(dir.join("audit.log")));
    assert_eq!(status.code(), Some(0), "audit verify: {out}{err}");
}

/// `VmLck` of a process, in kB: the memory it holds locked, as the kernel counts it.
fn vm_lck_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).expect("VmLck in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Leaves per group.

/// The same burst of 60 small appends pipelined on one connection, then one of 20 leaves, to a
/// signer with `extra` arguments: every answer is checked, and the leaves of each signed group
/// (from the audit log) are returned.
async fn burst(root: &Path, extra: &[&str]) -> Vec<usize> {
    let (dir, sock) = fresh(root);
    let mut s = Signer::serve_with(&dir, &sock, extra);
    let c = s.ready().await;
    let ws = "ws_groups";
    let v = vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])];
    let mut reqs = Vec::new();
    let mut all: Vec<Hash> = Vec::new();
    let mut lens = Vec::new();
    for i in 0..61 {
        let n = if i == 60 { 20 } else { 1 + i % 3 };
        reqs.push(append(ws, all.len(), n));
        all.extend(hashes(&bodies(ws, all.len(), n)));
        lens.push(n);
    }
    for (i, r) in pipelined(&sock, &reqs).await.into_iter().enumerate() {
        let out = appended(r.clone()).unwrap_or_else(|| panic!("append {i} not signed: {r:?}\n{}", s.diagnostics()));
        check(ws, &all, lens[i], &out, &v);
    }
    // The signer stays up and goes on.
    let more = bodies(ws, all.len(), 2);
    let out = c.append_batch(ws, all.len() as u64, more.clone()).await.unwrap();
    all.extend(hashes(&more));
    check(ws, &all, 2, &out, &v);
    let groups = signed_groups(&s, ws);
    assert_eq!(groups.iter().map(|g| g.1).sum::<usize>(), all.len(), "every leaf signed once: {groups:?}");
    audit_verify(&dir);
    groups.into_iter().map(|g| g.1).collect()
}

/// Pipelined appends of one workspace are signed together, but never more than
/// `--max-group-leaves` leaves under one signature: the rest waits for the next one (no error).
/// One append larger than the cap is signed alone, whole. Control: the same burst with the
/// default cap puts more than 8 leaves under one signature, so the first run does test the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signature_covers_more_than_max_group_leaves_and_the_rest_waits_for_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let capped = burst(&tmp.path().join("capped"), &["--max-group-leaves", "8"]).await;
    assert!(capped.iter().any(|&n| n > 3), "no two appends shared a signature: {capped:?}");
    let over: Vec<_> = capped.iter().filter(|&&n| n > 8).collect();
    assert_eq!(over, [&20], "only the 20-leaf append, alone, may pass the cap of 8: {capped:?}");
    let uncapped = burst(&tmp.path().join("default"), &[]).await;
    assert!(uncapped.iter().any(|&n| n > 8 && n != 20), "control: the burst never merged past 8 leaves: {uncapped:?}");
}

// ---------------------------------------------------------------------------------------------
// Bytes queued per workspace.

/// With `--max-workspace-queued-bytes 1`, one append may wait per workspace: a burst pipelined
/// for one workspace gets `Busy` past it (at once, nothing done), the appends pipelined behind a
/// `Busy` one get `SizeMismatch` with the log's size — and none of that counts as a fork
/// attempt. Another workspace is served meanwhile, and everything resent is signed exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_over_its_queued_bytes_is_answered_busy_and_signs_all_that_is_resent() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve_with(&dir, &sock, &["--max-workspace-queued-bytes", "1"]);
    let c = s.ready().await;
    let (ws, other) = ("ws_busy", "ws_calm");
    let v = vec![verifier(ws, &c.create_key(ws).await.unwrap()[0])];
    let vo = vec![verifier(other, &c.create_key(other).await.unwrap()[0])];

    const N: usize = 60;
    let mut reqs = Vec::new();
    let mut planned: Vec<Vec<u8>> = Vec::new();
    for _ in 0..N {
        reqs.push(append(ws, planned.len(), 2));
        planned.extend(bodies(ws, planned.len(), 2));
    }
    let calm = {
        let sock = sock.clone();
        tokio::spawn(async move {
            let c = client(&sock);
            let mut all = Vec::new();
            for _ in 0..10 {
                let b = bodies(other, all.len(), 3);
                let out = c.append_batch(other, all.len() as u64, b.clone()).await.expect("the other workspace");
                all.extend(hashes(&b));
                check(other, &all, 3, &out, &vo);
            }
        })
    };
    let answers = pipelined(&sock, &reqs).await;
    calm.await.unwrap();

    // A prefix is signed; from the first `Busy` on, every append is refused (each skips the
    // index of one refused before it), with `Busy` or with the log's size.
    let signed = answers.iter().take_while(|r| matches!(r, Response::Appended { .. })).count();
    let size = 2 * signed as u64;
    let mut busy = 0;
    for (i, r) in answers.iter().enumerate().skip(signed) {
        match r {
            Response::Error(e) if e.code == ErrorCode::Busy => busy += 1,
            Response::Error(e) if e.code == ErrorCode::SizeMismatch && e.current_size == Some(size) => {}
            other => panic!("append {i} (after {signed} signed): {other:?}\n{}", s.diagnostics()),
        }
    }
    assert!(busy >= 1, "no append was answered Busy (signed {signed} of {N})\n{}", s.diagnostics());
    let mut all: Vec<Hash> = hashes(&planned[..2 * signed]);
    for r in answers.into_iter().take(signed) {
        check(ws, &all, 2, &appended(r).unwrap(), &v);
    }
    let m = c.metrics().await.unwrap();
    assert_eq!(metric0(&m, r#"allowly_signer_busy_total{limit="workspace_bytes"}"#), busy as f64, "{m}");
    assert_eq!(metric(&m, "allowly_signer_fork_attempts_total"), 0.0, "back pressure counted as forks\n{m}");
    assert_eq!(metric0(&m, r#"allowly_signer_requests_total{op="AppendBatch",outcome="internal"}"#), 0.0);

    // The caller resends from the refused one, one at a time: all signed, the log exact.
    while all.len() < planned.len() {
        let at = all.len();
        let b = bodies(ws, at, 2);
        match c.append_batch(ws, at as u64, b.clone()).await {
            Ok(out) => {
                all.extend(hashes(&b));
                check(ws, &all, 2, &out, &v);
            }
            Err(e) => panic!("resending {at}: {e}\n{}", s.diagnostics()),
        }
    }
    let latest = c.latest_checkpoint(ws).await.unwrap();
    assert_eq!(latest.size, planned.len() as u64);
    assert_eq!(open_checkpoint(ws, latest.checkpoint.as_deref().unwrap(), &v).0.root, model_root(&all, latest.size));
    audit_verify(&dir);
}

// ---------------------------------------------------------------------------------------------
// Connections.

/// With `--max-connections 2`, the third and later connections are closed before anything is
/// read (counted, and logged once per 10 s), the first two keep being served, and a slot freed
/// by a closed connection is taken by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_refused_counted_logged_once_and_the_rest_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve_with(&dir, &sock, &["--max-connections", "2"]);
    let c1 = s.ready().await;
    let c2 = client(&sock);
    c2.ping().await.unwrap();
    let m = c1.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_connections_open"), 2.0, "{m}");

    for i in 0..3 {
        let extra = client(&sock);
        match extra.ping().await {
            Err(ClientError::Disconnected) => {}
            other => panic!("connection {} past the cap: {other:?}\n{}", i + 3, s.diagnostics()),
        }
    }
    let m = c1.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_connections_refused_total"), 3.0, "{m}");
    assert_eq!(metric(&m, "allowly_signer_connections_open"), 2.0, "{m}");
    // The two served connections still work, for everything.
    let ws = "ws_conns";
    let v = vec![verifier(ws, &c1.create_key(ws).await.unwrap()[0])];
    let b = bodies(ws, 0, 3);
    let out = c2.append_batch(ws, 0, b.clone()).await.unwrap();
    check(ws, &hashes(&b), 3, &out, &v);
    c2.ping().await.unwrap();

    const LINE: &str = "refused a connection: the signer serves --max-connections already";
    let lines = eventually(
        "the refusal's log line",
        || s.diagnostics(),
        || {
            let n = s.stderr().matches(LINE).count();
            async move { (n > 0).then_some(n) }
        },
    )
    .await;
    assert_eq!(lines, 1, "three refusals within 10 s, one log line\n{}", s.stderr());
    assert!(s.stderr().contains("refused_since_last_line=1"), "{}", s.stderr());

    // A freed slot is taken by the next connection (once the signer has seen the close).
    drop(c2);
    let c3 = eventually(
        "a connection after one was closed",
        || s.diagnostics(),
        || {
            let c = client(&sock);
            async move { c.ping().await.ok().map(|()| c) }
        },
    )
    .await;
    c3.list_keys(ws).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Idle workspaces.

/// A workspace idle for `--idle-unload-secs` is unloaded (gauge and counter move; its key's
/// locked memory goes back to the system, as the kernel's `VmLck` shows), and its next append
/// continues the log exactly: the new checkpoint verifies under the same key and is consistent
/// with the one signed before the unload, and the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_workspace_is_unloaded_its_key_memory_unlocked_and_its_log_goes_on_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve_with(&dir, &sock, &["--idle-unload-secs", "0.5"]);
    let c = s.ready().await;
    let pid = s.pid();
    let baseline = (metric(&c.metrics().await.unwrap(), "allowly_signer_secret_locked_bytes"), vm_lck_kb(pid));

    let names = ["ws_idle_a", "ws_idle_b"];
    let mut logs: HashMap<&str, (Vec<NoteVerifier>, Vec<Hash>, String)> = HashMap::new();
    for ws in names {
        let keys = c.create_key(ws).await.unwrap();
        let v = vec![verifier(ws, &keys[0])];
        let mut all = Vec::new();
        let mut last = String::new();
        for n in [3, 5] {
            let b = bodies(ws, all.len(), n);
            let out = c.append_batch(ws, all.len() as u64, b.clone()).await.unwrap();
            all.extend(hashes(&b));
            check(ws, &all, n, &out, &v);
            last = out.checkpoint;
        }
        logs.insert(ws, (v, all, last));
    }
    let keys_before = c.list_keys(names[0]).await.unwrap();
    // More keys than one page holds (16), so their pages cannot hide in one already locked.
    for i in 0..18 {
        c.create_key(format!("ws_idle_fill{i}")).await.unwrap();
    }
    let loaded = metric(&c.metrics().await.unwrap(), "allowly_signer_secret_locked_bytes");
    assert!(loaded > baseline.0 && vm_lck_kb(pid) > baseline.1, "20 keys locked no more memory than none");

    let m = all_unloaded(&s, &c, 20.0).await;
    assert_eq!(metric(&m, "allowly_signer_secret_locked_bytes"), baseline.0, "key pages still locked\n{m}");
    // The kernel's own count: unlocking is not just bookkeeping.
    assert_eq!(vm_lck_kb(pid), baseline.1, "VmLck is not back to what it was before any workspace");

    for ws in names {
        let (v, all, before) = logs.get_mut(ws).unwrap();
        let (old, _) = open_checkpoint(ws, before, v);
        let b = bodies(ws, all.len(), 4);
        let out = c.append_batch(ws, all.len() as u64, b.clone()).await.unwrap();
        all.extend(hashes(&b));
        check(ws, all, 4, &out, v);
        let (new, _) = open_checkpoint(ws, &out.checkpoint, v);
        assert_eq!((old.size, new.size), (8, 12), "{ws}: the log went on from where it was");
        let proof = consistency_proof(&LeafList(all.clone()), old.size, new.size).unwrap();
        verify_consistency(old.size, new.size, &old.root, &new.root, &proof)
            .unwrap_or_else(|e| panic!("{ws}: checkpoint after the reload is not consistent with the one before: {e}"));
    }
    assert_eq!(c.list_keys(names[0]).await.unwrap(), keys_before, "same keys after the reload");
    let m = c.metrics().await.unwrap();
    assert_eq!(metric(&m, "allowly_signer_fork_attempts_total"), 0.0, "{m}");
    for ws in names {
        let events: Vec<String> = s
            .audit()
            .iter()
            .filter(|l| l["workspace_id"] == ws)
            .map(|l| l["event"].as_str().unwrap().to_owned())
            .collect();
        // (A slow machine may have unloaded it earlier too: then more `resumed` lines.)
        let signed: Vec<&String> = events.iter().filter(|e| *e != "resumed").collect();
        assert_eq!(signed, ["created", "checkpoint", "checkpoint", "checkpoint"], "{ws}");
        assert_eq!(events[events.len() - 2], "resumed", "{ws}: the append after the unload loaded it: {events:?}");
    }
    audit_verify(&dir);
}

/// Appends racing unloads (an idle bound of 20 ms and appends paced across it, so that unloads
/// land between, and next to, appends): every append lands at exactly the size its caller
/// expects — no rollback, no fork — no two actors of one workspace ever run (the loaded gauge
/// never passes the number of workspaces), and each workspace's audit log is one unbroken
/// line of groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_racing_idle_unloads_never_fork_roll_back_or_load_a_workspace_twice() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("unload race seed: {seed}");
    let tmp = tempfile::tempdir().unwrap();
    let (dir, sock) = fresh(tmp.path());
    let mut s = Signer::serve_with(&dir, &sock, &["--idle-unload-secs", "0.02"]);
    let c = s.ready().await;
    const WS: usize = 4;
    let names: Vec<String> = (0..WS).map(|i| format!("ws_race_{i}")).collect();
    for ws in &names {
        c.create_key(ws.as_str()).await.unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut most = 0.0f64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(m) = c.metrics().await {
                    most = most.max(metric(&m, "allowly_signer_workspaces_loaded"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ws) in names.iter().enumerate() {
        let (sock, ws) = (sock.clone(), ws.clone());
        tasks.spawn(async move {
            let c = client(&sock);
            let v: Vec<_> = c.list_keys(ws.as_str()).await.unwrap().iter().map(|k| verifier(&ws, k)).collect();
            let mut rng = Rng(seed.wrapping_add(i as u64) | 1);
            let mut all = Vec::new();
            for round in 0..25 {
                // Pacing, not synchronisation: pauses around the idle bound, so unloads race.
                tokio::time::sleep(Duration::from_millis(rng.range(0, 45))).await;
                let n = rng.range(1, 4) as usize;
                let b = bodies(&ws, all.len(), n);
                match c.append_batch(ws.as_str(), all.len() as u64, b.clone()).await {
                    Ok(out) => {
                        all.extend(hashes(&b));
                        check(&ws, &all, n, &out, &v);
                    }
                    Err(e) => panic!("{ws} round {round} at {}: {e}", all.len()),
                }
            }
            (ws, all)
        });
    }
    let mut done = Vec::new();
    while let Some(r) = tasks.join_next().await {
        done.push(r.unwrap_or_else(|e| panic!("{e}\n{}", s.diagnostics())));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.unwrap();
    let m = c.metrics().await.unwrap();
    let unloads = metric(&m, "allowly_signer_workspace_unloads_total");
    assert!(unloads >= 10.0, "too few unloads ({unloads}) to race anything (seed {seed})\n{m}");
    assert!(most <= WS as f64, "{most} workspaces loaded at once: one was loaded twice (seed {seed})");
    assert_eq!(metric(&m, "allowly_signer_fork_attempts_total"), 0.0, "{m}");
    for (ws, all) in &done {
        let latest = c.latest_checkpoint(ws.as_str()).await.unwrap();
        assert_eq!(latest.size, all.len() as u64, "{ws}");
        let mut at = 0;
        for (size, leaves) in signed_groups(&s, ws) {
            assert_eq!(size, at + leaves as u64, "{ws}: a group that does not start where the last ended");
            at = size;
        }
        assert_eq!(at, all.len() as u64, "{ws}");
    }
    audit_verify(&dir);
    eprintln!("unload race: {unloads} unloads, at most {most} workspaces loaded");
}

//! Acknowledged ⇒ durable, across `kill -9`: this test re-runs its own binary as a writer child
//! that prints each batch number after its `Durability::Sync` write returned, kills it with
//! SIGKILL after some acknowledgements (reading its stdout, no sleeps), reopens the store and
//! checks that every acknowledged batch is there, complete, and that no batch is half-applied.
//!
//! SIGKILL tests the process-crash half of the promise (the WAL reached the kernel before the
//! acknowledgement). Surviving power loss additionally relies on the fsync that `Sync` adds,
//! which no test on a live kernel can observe.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use allowly_store::conformance::records::receipt;
use allowly_store::{Durability, LogMeta, Op, Store, WriteBatch};
use allowly_store_rocks::{RocksOptions, RocksStore};

const CHILD_ENV: &str = "ALLOWLY_STORE_CRASH_CHILD";
const TEST_NAME: &str = "crash::acknowledged_batches_survive_sigkill";
const WS: &str = "crash";
/// What the child prints before the number of a batch whose synced write returned.
const ACK: &str = "acknowledged batch ";
const RECEIPTS_PER_BATCH: u64 = 3;
/// The child stops by itself after this many batches if nobody kills it (bounds a broken run).
const CHILD_MAX_BATCHES: u64 = 5_000;
/// How long the parent waits for any one line from the child before failing.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Batch `n`: three receipts (one authorization trail), a Merkle node and the log position.
fn batch(n: u64) -> Vec<Op> {
    let mut ops: Vec<Op> = (0..RECEIPTS_PER_BATCH)
        .map(|k| {
            let index = n * RECEIPTS_PER_BATCH + k;
            Op::PutReceipt(receipt(WS, &format!("b{n}-{k}"), index, Some(("auth", index))))
        })
        .collect();
    ops.push(Op::PutNodes { workspace_id: WS.into(), nodes: vec![(1, n, [(n % 251) as u8; 32])] });
    ops.push(Op::PutLogMeta {
        workspace_id: WS.into(),
        meta: LogMeta { next_index: (n + 1) * RECEIPTS_PER_BATCH, ..LogMeta::default() },
    });
    ops
}

/// How many of batch `n`'s parts are stored (0 or all of them, if batches are atomic).
fn parts_present(s: &RocksStore, n: u64) -> usize {
    let mut present = 0;
    for k in 0..RECEIPTS_PER_BATCH {
        let index = n * RECEIPTS_PER_BATCH + k;
        let expected = receipt(WS, &format!("b{n}-{k}"), index, Some(("auth", index)));
        if let Some(r) = s.receipt_at(WS, index).unwrap() {
            assert_eq!(r, expected);
            assert_eq!(s.trail(WS, "auth", index.checked_sub(1), 1).unwrap(), [expected]);
            present += 1;
        }
    }
    present + usize::from(s.node(WS, 1, n).unwrap().is_some())
}

fn child(dir: &Path) {
    let store = RocksStore::open(dir, RocksOptions::default()).unwrap();
    let first = store.log_meta(WS).unwrap().map_or(0, |m| m.next_index / RECEIPTS_PER_BATCH);
    let mut stdout = std::io::stdout();
    for n in first..first + CHILD_MAX_BATCHES {
        store.write(WriteBatch::from(batch(n)), Durability::Sync).unwrap();
        writeln!(stdout, "{ACK}{n}").unwrap();
        stdout.flush().unwrap();
    }
}

/// Runs one writer child until it has acknowledged `kill_after` batches, SIGKILLs it, and
/// returns every batch number it acknowledged (including any printed before the kill landed).
fn run_child_and_kill(dir: &Path, kill_after: usize) -> Vec<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print "test <name> ... " on the same line before the child's output.
            if let Some((_, n)) = line.split_once(ACK) {
                if tx.send(n.parse::<u64>().unwrap()).is_err() {
                    break;
                }
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < kill_after {
        match rx.recv_timeout(LINE_TIMEOUT) {
            Ok(n) => acked.push(n),
            Err(e) => {
                let _ = child.kill();
                panic!("child stopped acknowledging after {} batches: {e}", acked.len());
            }
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "child must die by SIGKILL, not finish: {status:?}");
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    acked
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<u64> = Vec::new();
    // Several kill points; each round reopens what the previous crash left and continues.
    for kill_after in [25, 61, 110] {
        let round = run_child_and_kill(dir.path(), kill_after);
        assert!(round.windows(2).all(|w| w[1] == w[0] + 1), "acks are consecutive");
        acked.extend(round);

        let store = RocksStore::open(dir.path(), RocksOptions::default()).unwrap();
        let max_acked = *acked.last().unwrap();
        let full = RECEIPTS_PER_BATCH as usize + 1;
        for &n in &acked {
            assert_eq!(parts_present(&store, n), full, "acknowledged batch {n} lost or torn");
        }
        // The batch in flight at the kill (and only it) may be there or not, but never in part.
        let in_flight = parts_present(&store, max_acked + 1);
        assert!(in_flight == 0 || in_flight == full, "batch {} is half applied ({in_flight} parts)", max_acked + 1);
        assert_eq!(parts_present(&store, max_acked + 2), 0, "nothing after the in-flight batch");
        let meta = store.log_meta(WS).unwrap().unwrap();
        let batches = meta.next_index / RECEIPTS_PER_BATCH;
        assert!(batches == max_acked + 1 || (batches == max_acked + 2 && in_flight == full), "log meta {meta:?}");
        let leaves = store.leaf_hashes(WS, 0, meta.next_index, usize::MAX).unwrap();
        assert_eq!(leaves.len() as u64, meta.next_index, "every stored receipt has its leaf, in order");
        assert!(leaves.iter().enumerate().all(|(i, (index, _))| *index == i as u64));
        assert_eq!(store.workspaces_with_unsigned().unwrap(), [WS], "nothing was signed: all of it is unsigned");
    }
    assert_eq!(acked.first(), Some(&0));
    assert!(acked.windows(2).all(|w| w[1] > w[0]));
}

/// `backup_to` while another thread writes: the copy opens, holds every batch acknowledged
/// before the call, and each batch in it whole or not at all.
#[test]
fn an_online_backup_holds_every_acknowledged_batch_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(RocksStore::open(&dir.path().join("db"), RocksOptions::default()).unwrap());
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < CHILD_MAX_BATCHES {
                store.write(WriteBatch::from(batch(n)), Durability::Sync).unwrap();
                n += 1;
                acked.store(n, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        std::thread::yield_now();
    }
    let before = acked.load(std::sync::atomic::Ordering::SeqCst);
    store.backup_to(&dir.path().join("copy")).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let copy = RocksStore::open(&dir.path().join("copy"), RocksOptions::default()).unwrap();
    let held = copy.log_meta(WS).unwrap().map_or(0, |m| m.next_index / RECEIPTS_PER_BATCH);
    assert!(held >= before, "the copy holds {held} batches, {before} were acknowledged before it");
    for n in 0..held + 2 {
        let parts = parts_present(&copy, n);
        let whole = if n < held { RECEIPTS_PER_BATCH as usize + 1 } else { parts };
        assert_eq!(parts, whole, "batch {n} is torn in the copy");
        assert!(n < held || parts == 0, "batch {n} is in the copy past its log position");
    }
}

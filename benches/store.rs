//! What a group commit's write costs per receipt when its receipts belong to many workspaces
//! instead of a few: the same `write_groups` of 64 one-receipt groups (as the committer writes
//! them, each receipt with its trail entry), against a fresh RocksDB each, with the receipts'
//! workspaces drawn at random from 8 or from 10,000.
//!
//! With 8 workspaces each insert lands next to the previous insert of its key space, which
//! RocksDB's skip list finds cheaply; spread over 10,000 they land anywhere and each insert
//! searches the memtable from its top (a cache miss per level on a real machine). The writes
//! are `Buffered` (no fsync), so the figure is the write path's CPU, not the disk.

use std::time::{Duration, Instant};

use allowly_benches::{print_ratios, Ratio};
use allowly_store::{Durability, Op, ReceiptRecord, Store, WriteBatch};
use allowly_store_rocks::{RocksOptions, RocksStore};
use criterion::Criterion;

/// Receipts per write (one group each): a committer's group at a few thousand checks a second.
const GROUPS: usize = 64;

/// A typical check receipt's canonical body is about 500 bytes.
const BODY: &str = r#"{"action":{"resource":"crm://contacts/123","scope":"crm.contacts.read"},"authorization_id":"au_0123456789abcdef0123456789abcdef","context":{"agent":"assistant","session":"s_0123456789"},"decision":"allow","issued_at":"2026-12-07T06:00:00.000000Z","kind":"check","padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","reason":"granted","state_hash":"0123456789abcdef0123456789abcdef","workspace_id":"ws_0123456789abcdef"}"#;

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("store_write");
    g.measurement_time(Duration::from_secs(6));
    for (name, workspaces) in [("8_workspaces", 8), ("10000_workspaces", 10_000)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), RocksOptions::default()).expect("open");
        let mut logs = Logs::new(workspaces);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let groups = logs.next_groups();
                    let t = Instant::now();
                    let results = store.write_groups(groups, Durability::Buffered).expect("write");
                    spent += t.elapsed();
                    assert!(results.iter().all(Result::is_ok));
                }
                spent
            })
        });
    }
    g.finish();
    c.final_summary();
    print_ratios(
        "store",
        &[Ratio {
            label: "write of 64 receipts, 10,000 workspaces / 8",
            measured: "store_write/10000_workspaces",
            per: 1.0,
            baseline: "store_write/8_workspaces",
        }],
    );
}

/// The next log index of each workspace, and a xorshift to pick workspaces at random (a
/// round-robin would insert in key order, which is the cheap case).
struct Logs {
    next: Vec<u64>,
    x: u64,
}

impl Logs {
    fn new(workspaces: usize) -> Self {
        Self { next: vec![0; workspaces], x: 0x9E37_79B9_7F4A_7C15 }
    }

    fn next_groups(&mut self) -> Vec<(String, WriteBatch)> {
        (0..GROUPS)
            .map(|_| {
                self.x ^= self.x << 13;
                self.x ^= self.x >> 7;
                self.x ^= self.x << 17;
                let w = (self.x % self.next.len() as u64) as usize;
                let index = self.next[w];
                self.next[w] += 1;
                // Ids of equal length, as the engine makes them.
                let ws = format!("ws_{w:016x}");
                let receipt = ReceiptRecord {
                    id: format!("rc_{w:016x}{index:016x}"),
                    workspace_id: ws.clone(),
                    authorization_id: Some(format!("au_{w:016x}")),
                    seq: Some(index),
                    log_index: index,
                    body: BODY.as_bytes().to_vec(),
                    leaf: [7; 32],
                };
                (ws, WriteBatch { ops: vec![Op::PutReceipt(receipt)] })
            })
            .collect()
    }
}

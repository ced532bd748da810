//! Property test: random op sequences applied to `MemStore` and another store give the same
//! write results (including which batches fail, and why) and the same answer from every getter.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::records;
use super::Fixture;
use crate::{Durability, LogMeta, MemStore, Op, Store, WriteBatch};

/// Prefix-sharing workspaces, plus one invalid id (every batch holding it must fail alike).
const WS: [&str; 4] = ["a", "a_b", "b", "a\0b"];
const RECEIPTS: [&str; 4] = ["r0", "r1", "r1_x", "r2"];
const AUTHS: [&str; 2] = ["x", "x_y"];
const INDICES: [u64; 6] = [0, 1, 255, 256, 257, 65_536];
const SIZES: [u64; 5] = [1, 256, 257, 300, 65_537];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> + Clone {
    proptest::sample::select(items)
}

fn op() -> impl Strategy<Value = Op> {
    let ws = pick(&WS);
    prop_oneof![
        3 => (ws.clone(), pick(&RECEIPTS), pick(&INDICES), proptest::option::of((pick(&AUTHS), 0u64..3)), any::<bool>()).prop_map(
            |(ws, id, index, trail, text)| {
                let mut r = records::receipt(ws, id, index, trail.map(|(a, s)| (a, s + 254)));
                // Now and then a body that is not UTF-8: refused the same way by both.
                if !text {
                    r.body.push(0xff);
                }
                Op::PutReceipt(r)
            }
        ),
        1 => (ws.clone(), proptest::collection::vec((0u8..3, pick(&INDICES), any::<u8>()), 0..4)).prop_map(|(ws, nodes)| {
            Op::PutNodes { workspace_id: ws.into(), nodes: nodes.into_iter().map(|(l, i, b)| (l, i, [b; 32])).collect() }
        }),
        1 => (ws.clone(), pick(&SIZES), any::<u8>()).prop_map(|(ws, size, n)| Op::PutCheckpoint {
            workspace_id: ws.into(), size, note: format!("{ws} {size} {n}")
        }),
        1 => (ws.clone(), pick(&SIZES)).prop_map(|(ws, size)| Op::PutWitnessHead {
            workspace_id: ws.into(), witness: [1; 32], size
        }),
        1 => (ws.clone(), any::<u64>()).prop_map(|(ws, next_index)| Op::PutLogMeta {
            workspace_id: ws.into(), meta: LogMeta { next_index, ..LogMeta::default() }
        }),
        1 => ws.clone().prop_map(|ws| Op::PutWorkspace(records::workspace(ws))),
        1 => (ws.clone(), pick(&AUTHS)).prop_map(|(ws, a)| Op::PutAuthorization(records::authorization(ws, a))),
        1 => (proptest::option::of(ws.clone()), 0u8..3).prop_map(|(ws, h)| Op::PutApiKey(records::api_key("k", ws, [h; 32]))),
        // Against the leases `leased` sets up: current, stale, future and missing epochs.
        1 => (ws, 0u64..4).prop_map(|(ws, epoch)| Op::Fence { workspace_id: ws.into(), epoch }),
    ]
}

/// The leases the fences of a sequence are checked against: `a` at epoch 1, `a_b` at 2 (taken
/// over once), `b` never leased.
fn leased<S: Store>(s: &S) {
    let ttl = std::time::Duration::from_secs(3600);
    s.acquire_lease("a", "n1", "n1:1", ttl).unwrap();
    s.acquire_lease("a_b", "n1", "n1:1", ttl).unwrap();
    s.release_lease("a_b", "n1", 1).unwrap();
    s.acquire_lease("a_b", "n2", "n2:1", ttl).unwrap();
}

/// Every getter over the whole universe of ids, rendered (results and errors alike).
fn observe<S: Store>(s: &S) -> Vec<String> {
    let mut out =
        vec![format!("{:?}", s.workspaces_with_unsigned()), format!("{:?}", s.workspaces_behind_witness(&[1; 32]))];
    for h in 0..3 {
        out.push(format!("{:?}", s.api_key_by_hash(&[h; 32])));
    }
    for ws in WS {
        // Owner and epoch; the expiry is each store's own clock's.
        out.push(format!("{:?}", s.lease(ws).map(|l| l.map(|l| (l.node_id, l.epoch)))));
        out.push(format!("{:?}", s.workspace(ws)));
        out.push(format!("{:?}", s.log_meta(ws)));
        out.push(format!("{:?}", s.latest_checkpoint(ws)));
        out.push(format!("{:?}", s.leaf_hashes(ws, 0, u64::MAX, 100)));
        out.push(format!("{:?}", s.leaf_hashes(ws, 255, 300, 2)));
        out.push(format!("{:?}", s.receipts_in_range(ws, 0, u64::MAX, 100)));
        out.push(format!("{:?}", s.receipts_in_range(ws, 255, 257, 1)));
        out.push(format!("{:?}", s.authorizations(ws, None, 100)));
        out.push(format!("{:?}", s.authorizations(ws, Some(AUTHS[0]), 1)));
        for a in AUTHS {
            out.push(format!("{:?}", s.authorization(ws, a)));
            out.push(format!("{:?}", s.trail(ws, a, None, 100)));
            out.push(format!("{:?}", s.trail(ws, a, Some(254), 1)));
        }
        for i in INDICES {
            out.push(format!("{:?}", s.receipt_at(ws, i)));
            for level in 0..3 {
                out.push(format!("{:?}", s.node(ws, level, i)));
            }
        }
        for size in [0, 2, 256, 258, 300, 65_537, u64::MAX] {
            out.push(format!("{:?}", s.checkpoint(ws, size)));
            out.push(format!("{:?}", s.checkpoint_at_or_after(ws, size)));
        }
    }
    out
}

/// Runs 48 random sequences of batches (prefix-sharing ids, indices across byte boundaries,
/// invalid ids and bodies, fences at current and stale epochs) on `MemStore` and on a fresh
/// store from `fresh`, and panics with
/// the smallest sequence on which they disagree.
pub fn agrees_with_mem_store<S: Store, K>(fresh: impl Fn() -> Fixture<S, K>) {
    let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
    let batches = proptest::collection::vec(proptest::collection::vec(op(), 1..5), 1..10);
    let result = TestRunner::new(config).run(&batches, |batches| {
        let mem = MemStore::new();
        let other = fresh();
        leased(&mem);
        leased(&other.store);
        for batch in batches {
            let durability = if batch.len() % 2 == 0 { Durability::Sync } else { Durability::Buffered };
            let a = mem.write(WriteBatch::from(batch.clone()), durability);
            let b = other.store.write(WriteBatch::from(batch.clone()), durability);
            prop_assert_eq!(&a, &b, "batch {:?}", batch);
        }
        let (a, b) = (observe(&mem), observe(&other.store));
        for (x, y) in a.iter().zip(&b) {
            prop_assert_eq!(x, y);
        }
        prop_assert_eq!(a.len(), b.len());
        Ok(())
    });
    if let Err(e) = result {
        panic!("the store disagrees with MemStore: {e}");
    }
}

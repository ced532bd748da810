//! Node membership, workspace leases and fenced writes: the same rules on every store. Expiry
//! is made with TTLs of zero (expired at once) and of an hour (live for the whole case), so no
//! case waits for a clock; `allowly-store-postgres` adds the cases that need several nodes on
//! one database and real expiry.

use std::time::Duration;

use super::records::receipt;
use crate::{Durability, Lease, LeaseAnswer, Op, Store, StoreError, WriteBatch};

/// Live for the whole case.
const LONG: Duration = Duration::from_secs(3600);
const A: &str = "node-a";
const B: &str = "node-b";
const ADDR_A: &str = "http://10.0.0.1:8080";
const ADDR_B: &str = "[fd00::2]:8080";

/// The lease of a [`LeaseAnswer::Granted`]; panics on anything else.
#[track_caller]
pub fn granted(answer: Result<LeaseAnswer, StoreError>) -> Lease {
    match answer {
        Ok(LeaseAnswer::Granted(l)) => l,
        other => panic!("expected the lease to be granted, got {other:?}"),
    }
}

/// Asserts `r` is `Fenced` for workspace `ws` at `current_epoch`.
#[track_caller]
pub fn assert_fenced<T: std::fmt::Debug>(r: Result<T, StoreError>, ws: &str, current_epoch: u64) {
    match r {
        Err(StoreError::Fenced { workspace_id, current_epoch: e }) if workspace_id == ws && e == current_epoch => {}
        other => panic!("expected Fenced {{ {ws}, {current_epoch} }}, got {other:?}"),
    }
}

/// A receipt of `ws` at `index`, fenced at `epoch` (the fence last: its place does not matter).
pub fn fenced_receipt(ws: &str, index: u64, epoch: u64) -> WriteBatch {
    WriteBatch::from(vec![
        Op::PutReceipt(receipt(ws, &format!("f{index}"), index, None)),
        Op::Fence { workspace_id: ws.into(), epoch },
    ])
}

/// Heartbeats: listed while live, in node id order, with their latest address; a TTL of zero
/// leaves; the TTL is counted on the store's clock; bad ids and addresses are refused.
pub fn membership<S: Store>(s: &S) {
    assert!(s.live_nodes().unwrap().is_empty());
    let b = s.heartbeat(B, ADDR_B, LONG).unwrap();
    let a = s.heartbeat(A, "http://old:1", LONG).unwrap();
    assert_eq!((a.node_id.as_str(), a.address.as_str()), (A, "http://old:1"));
    assert_eq!(s.live_nodes().unwrap(), vec![a.clone(), b.clone()], "node id order");
    let a2 = s.heartbeat(A, ADDR_A, LONG).unwrap();
    assert!(a2.expires_at_ms >= a.expires_at_ms);
    assert_eq!(s.live_nodes().unwrap(), vec![a2.clone(), b], "the latest heartbeat counts");

    // A TTL of zero is leaving; the next heartbeat is back.
    let gone = s.heartbeat(B, ADDR_B, Duration::ZERO).unwrap();
    assert_eq!(s.live_nodes().unwrap(), vec![a2.clone()]);
    let year = Duration::from_secs(365 * 24 * 3600);
    let back = s.heartbeat(B, ADDR_B, year).unwrap();
    // Both expiries are on the store's clock: a year apart, plus the time between the calls.
    let apart = back.expires_at_ms - gone.expires_at_ms;
    let year_ms = 365 * 24 * 3600 * 1000;
    assert!((year_ms..year_ms + 600_000).contains(&apart), "{apart}");
    assert_eq!(s.live_nodes().unwrap(), vec![a2, back]);
    assert_eq!(s.heartbeat("forever", ADDR_A, Duration::MAX).unwrap().expires_at_ms, u64::MAX, "saturates");

    assert!(matches!(s.heartbeat("bad id", ADDR_A, LONG), Err(StoreError::InvalidId { .. })));
    for bad in ["", "two words", "line\n", &"x".repeat(513), "caf\u{e9}"] {
        assert!(matches!(s.heartbeat("n", bad, LONG), Err(StoreError::InvalidOp(_))), "{bad:?}");
    }
    assert_eq!(s.live_nodes().unwrap().len(), 3, "a refused heartbeat records nothing");
}

/// Acquire, find held, renew, release, take over: epochs, owners and the errors of a node that
/// lost its lease.
pub fn lease_lifecycle<S: Store>(s: &S) {
    assert_eq!(s.lease("w").unwrap(), None);
    let a = granted(s.acquire_lease("w", A, ADDR_A, LONG));
    assert_eq!((a.workspace_id.as_str(), a.node_id.as_str(), a.address.as_str(), a.epoch), ("w", A, ADDR_A, 1));
    assert_eq!(s.lease("w").unwrap(), Some(a.clone()));
    // Another node finds it held, and by whom (where to forward).
    assert_eq!(s.acquire_lease("w", B, ADDR_B, LONG).unwrap(), LeaseAnswer::Held(a.clone()));
    // The holder asking again renews it, at the same epoch.
    let again = granted(s.acquire_lease("w", A, ADDR_A, LONG));
    assert_eq!(again.epoch, 1);
    assert!(again.expires_at_ms >= a.expires_at_ms);
    assert_eq!(s.renew_lease("w", A, 1, LONG).unwrap().epoch, 1);

    // Renewals and releases by anyone but the holder at its epoch are fenced.
    assert_fenced(s.renew_lease("w", A, 2, LONG), "w", 1);
    assert_fenced(s.renew_lease("w", B, 1, LONG), "w", 1);
    assert_fenced(s.release_lease("w", B, 1), "w", 1);
    assert_fenced(s.renew_lease("never", A, 1, LONG), "never", 0);
    assert_fenced(s.release_lease("never", A, 1), "never", 0);
    assert_eq!(s.lease("never").unwrap(), None, "a refused renewal creates nothing");

    // Expired but not taken over: still the holder's, renewable.
    let lapsed = s.renew_lease("w", A, 1, Duration::ZERO).unwrap();
    let renewed = s.renew_lease("w", A, 1, LONG).unwrap();
    assert!(renewed.expires_at_ms > lapsed.expires_at_ms);
    assert_eq!(s.acquire_lease("w", B, ADDR_B, LONG).unwrap(), LeaseAnswer::Held(renewed));

    // A release lets another node in at once, at the next epoch.
    let released = s.release_lease("w", A, 1).unwrap();
    assert_eq!(released.epoch, 1);
    assert_eq!(s.lease("w").unwrap(), Some(released.clone()), "a released lease is kept, expired");
    let b = granted(s.acquire_lease("w", B, ADDR_B, LONG));
    assert_eq!((b.node_id.as_str(), b.address.as_str(), b.epoch), (B, ADDR_B, 2));
    assert_fenced(s.renew_lease("w", A, 1, LONG), "w", 2);
    assert_fenced(s.release_lease("w", A, 1), "w", 2);
    assert_eq!(s.acquire_lease("w", A, ADDR_A, LONG).unwrap(), LeaseAnswer::Held(b.clone()));

    // A lease that expired is taken over without a release.
    s.renew_lease("w", B, 2, Duration::ZERO).unwrap();
    assert_eq!(granted(s.acquire_lease("w", A, ADDR_A, LONG)).epoch, 3);

    // Other workspaces (prefix-sharing ids too) have leases of their own.
    assert_eq!(granted(s.acquire_lease("w_", B, ADDR_B, LONG)).epoch, 1);
    assert_eq!(s.lease("w").unwrap().map(|l| (l.node_id, l.epoch)), Some((A.to_owned(), 3)));

    assert!(matches!(s.acquire_lease("w\0", A, ADDR_A, LONG), Err(StoreError::InvalidId { .. })));
    assert!(matches!(s.acquire_lease("w", "a/b", ADDR_A, LONG), Err(StoreError::InvalidId { .. })));
    assert!(matches!(s.acquire_lease("w", A, "", LONG), Err(StoreError::InvalidOp(_))));
    assert!(matches!(s.lease(""), Err(StoreError::InvalidId { .. })));
}

/// Many leases renewed and released in one call: each answered alone and in order — the
/// held ones renewed, one taken over fenced at the new owner's epoch, one never leased fenced
/// at 0, a bad id refused — and none of them held back by another's refusal.
pub fn bulk_renewal_and_release<S: Store>(s: &S) {
    for ws in ["w1", "w2", "w3"] {
        assert_eq!(granted(s.acquire_lease(ws, A, ADDR_A, Duration::ZERO)).epoch, 1, "{ws}");
    }
    assert_eq!(granted(s.acquire_lease("w3", B, ADDR_B, LONG)).epoch, 2, "w3 taken over");
    let held: Vec<(String, u64)> =
        [("w1", 1), ("w3", 1), ("never", 1), ("bad id", 1), ("w2", 1)].map(|(w, e)| (w.to_owned(), e)).to_vec();
    let answers = s.renew_leases(A, ADDR_A, &held, LONG).unwrap();
    assert_eq!(answers.len(), held.len());
    let mut answers = answers.into_iter();
    let w1 = answers.next().unwrap().unwrap();
    assert_fenced(answers.next().unwrap(), "w3", 2);
    assert_fenced(answers.next().unwrap(), "never", 0);
    assert!(matches!(answers.next().unwrap(), Err(StoreError::InvalidId { .. })));
    let w2 = answers.next().unwrap().unwrap();
    for (l, ws) in [(&w1, "w1"), (&w2, "w2")] {
        assert_eq!((l.workspace_id.as_str(), l.node_id.as_str(), l.address.as_str(), l.epoch), (ws, A, ADDR_A, 1));
        assert_eq!(s.lease(ws).unwrap().as_ref(), Some(l), "renewed as answered");
        assert_eq!(s.acquire_lease(ws, B, ADDR_B, LONG).unwrap(), LeaseAnswer::Held(l.clone()), "live again");
    }
    assert_eq!(s.lease("never").unwrap(), None, "a refused renewal creates nothing");
    assert_eq!(s.lease("w3").unwrap().map(|l| (l.node_id, l.epoch)), Some((B.to_owned(), 2)), "w3 left alone");
    assert!(s.renew_leases(A, ADDR_A, &[], LONG).unwrap().is_empty());
    assert!(matches!(s.renew_leases("a/b", ADDR_A, &held, LONG), Err(StoreError::InvalidId { .. })));
    // Only the holder renews: another node naming the holder's epoch, or the holder naming
    // another address, is fenced and changes nothing.
    let w1_now = s.lease("w1").unwrap();
    assert_fenced(s.renew_leases(B, ADDR_B, &held[..1], LONG).unwrap().remove(0), "w1", 1);
    assert_fenced(s.renew_leases(A, ADDR_B, &held[..1], LONG).unwrap().remove(0), "w1", 1);
    assert_eq!(s.lease("w1").unwrap(), w1_now);

    // Released together: both free for another node at once, at the next epoch; the taken-over
    // one is fenced and stays its owner's.
    let answers = s.release_leases(A, ADDR_A, &held[..2]).unwrap();
    assert_eq!(answers[0].as_ref().map(|l| l.epoch), Ok(1));
    assert_fenced(answers[1].clone(), "w3", 2);
    assert!(s.release_leases(A, ADDR_A, &[("w2".to_owned(), 1)]).unwrap()[0].is_ok());
    for ws in ["w1", "w2"] {
        assert_eq!(granted(s.acquire_lease(ws, B, ADDR_B, LONG)).epoch, 2, "{ws}");
    }
    assert_eq!(granted(s.acquire_lease("w3", B, ADDR_B, LONG)).epoch, 2);
}

/// The epoch grows by one at every change of owner and never comes back: a node that takes
/// a workspace back after another held it gets a new epoch, one that re-acquires its own
/// (released, not taken over) lease keeps its epoch.
pub fn epochs_only_grow<S: Store>(s: &S) {
    let nodes = ["n0", "n1", "n2"];
    let mut last = 0;
    for round in 0..12 {
        let node = nodes[round % nodes.len()];
        let l = granted(s.acquire_lease("w", node, ADDR_A, LONG));
        assert_eq!(l.epoch, last + 1, "round {round}");
        s.release_lease("w", node, l.epoch).unwrap();
        last = l.epoch;
    }
    assert_eq!(granted(s.acquire_lease("w", "n2", ADDR_A, LONG)).epoch, last, "its own lease back");
    s.release_lease("w", "n2", last).unwrap();
    assert_eq!(granted(s.acquire_lease("w", "n0", ADDR_A, LONG)).epoch, last + 1);
}

/// A fenced batch is written only at the current epoch — expired or not, only the epoch
/// counts —, and refused whole, with the current epoch, after a takeover.
pub fn fenced_writes<S: Store>(s: &S) {
    let write = |b: WriteBatch| s.write(b, Durability::Sync);
    assert_fenced(write(fenced_receipt("w", 256, 1)), "w", 0);
    assert_eq!(s.receipt_at("w", 256).unwrap(), None, "never leased: nothing written");

    let a = granted(s.acquire_lease("w", A, ADDR_A, LONG));
    write(fenced_receipt("w", 256, a.epoch)).unwrap();
    assert!(s.receipt_at("w", 256).unwrap().is_some());
    // The fence first works the same.
    let mut first = fenced_receipt("w", 257, a.epoch);
    first.ops.reverse();
    write(first).unwrap();
    assert_fenced(write(fenced_receipt("w", 258, a.epoch + 1)), "w", 1);
    // Expired, not taken over: still written.
    s.renew_lease("w", A, a.epoch, Duration::ZERO).unwrap();
    write(fenced_receipt("w", 258, a.epoch)).unwrap();

    let b = granted(s.acquire_lease("w", B, ADDR_B, LONG));
    assert_eq!(b.epoch, 2);
    assert_fenced(write(fenced_receipt("w", 259, a.epoch)), "w", 2);
    assert_eq!(s.receipt_at("w", 259).unwrap(), None, "the old owner's write is not there");
    write(fenced_receipt("w", 259, b.epoch)).unwrap();
    assert!(s.receipt_at("w", 259).unwrap().is_some());

    // A batch with two fences needs both.
    granted(s.acquire_lease("v", A, ADDR_A, LONG));
    let mut two = fenced_receipt("v", 1, 1);
    two.push(Op::Fence { workspace_id: "w".into(), epoch: 1 });
    assert_fenced(write(two), "w", 2);
    assert_eq!(s.receipt_at("v", 1).unwrap(), None);
    let mut two = fenced_receipt("v", 1, 1);
    two.push(Op::Fence { workspace_id: "w".into(), epoch: 2 });
    write(two).unwrap();

    assert!(matches!(write(fenced_receipt("w/x", 1, 1)), Err(StoreError::InvalidId { .. })));
}

/// In one `write_groups`, a group with a stale fence is left out (with its chain's later
/// groups) and the others are written: other workspaces, unfenced groups, current fences.
pub fn fenced_groups<S: Store>(s: &S) {
    granted(s.acquire_lease("a", A, ADDR_A, LONG));
    s.release_lease("a", A, 1).unwrap();
    assert_eq!(granted(s.acquire_lease("a", B, ADDR_B, LONG)).epoch, 2);
    granted(s.acquire_lease("b", A, ADDR_A, LONG));
    let plain = |ws: &str, index: u64| WriteBatch::from(vec![Op::PutReceipt(receipt(ws, "p", index, None))]);
    let groups = vec![
        ("a".to_owned(), fenced_receipt("a", 10, 1)),
        ("b".to_owned(), fenced_receipt("b", 10, 1)),
        ("a".to_owned(), plain("a", 11)),
        ("c".to_owned(), plain("c", 10)),
        ("d".to_owned(), plain("d/", 10)),
        ("b".to_owned(), fenced_receipt("b", 11, 1)),
        ("x".to_owned(), fenced_receipt("a", 12, 2)),
    ];
    let res = s.write_groups(groups, Durability::Sync).unwrap();
    assert_eq!(res.len(), 7);
    assert_fenced(res[0].clone(), "a", 2);
    assert_fenced(res[2].clone(), "a", 2);
    assert!(matches!(res[4], Err(StoreError::InvalidId { .. })), "{res:?}");
    for i in [1, 3, 5, 6] {
        assert!(res[i].is_ok(), "group {i}: {res:?}");
    }
    for (ws, index, there) in [("a", 10, false), ("a", 11, false), ("a", 12, true), ("b", 10, true), ("b", 11, true)] {
        assert_eq!(s.receipt_at(ws, index).unwrap().is_some(), there, "{ws} {index}");
    }
    assert!(s.receipt_at("c", 10).unwrap().is_some());

    // Every group stale: nothing written, each told why.
    let res = s.write_groups(vec![("a".into(), fenced_receipt("a", 20, 1))], Durability::Sync).unwrap();
    assert_fenced(res[0].clone(), "a", 2);
    assert_eq!(s.receipt_at("a", 20).unwrap(), None);
}

/// Threads racing to acquire one lease: exactly one is granted each round, the others are told
/// who holds it; after the winner releases, the next round's epoch is one more (or the same if
/// the same node wins again).
pub fn one_owner_per_epoch<S: Store>(s: &S) {
    one_owner_per_epoch_among(&[s as &dyn Store; 4]);
}

/// [`one_owner_per_epoch`] with node `n{i}` acquiring through `nodes[i]`: the same store, or
/// one store instance per node on one database.
pub fn one_owner_per_epoch_among(nodes: &[&dyn Store]) {
    let mut last: Option<Lease> = None;
    for round in 0..6 {
        let answers: Vec<LeaseAnswer> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..nodes.len())
                .map(|n| scope.spawn(move || nodes[n].acquire_lease("w", &format!("n{n}"), ADDR_A, LONG).unwrap()))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let winners: Vec<&Lease> =
            answers.iter().filter_map(|a| if let LeaseAnswer::Granted(l) = a { Some(l) } else { None }).collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        let winner = winners[0];
        for a in &answers {
            if let LeaseAnswer::Held(l) = a {
                assert_eq!((&l.node_id, l.epoch), (&winner.node_id, winner.epoch), "round {round}: {answers:?}");
            }
        }
        let expected = match &last {
            None => 1,
            Some(l) if l.node_id == winner.node_id => l.epoch,
            Some(l) => l.epoch + 1,
        };
        assert_eq!(winner.epoch, expected, "round {round}");
        assert_eq!(nodes[0].lease("w").unwrap().as_ref(), Some(winner), "round {round}: what is stored");
        nodes[0].release_lease("w", &winner.node_id, winner.epoch).unwrap();
        last = Some(winner.clone());
    }
}

//! The cases every [`Store`] must pass, each on a fresh, empty store. Indices >= 256 throughout
//! catch little-endian key mistakes.

use allowly_receipt::merkle::{self, Frontier, LeafList, NodeSource};

use super::records::*;
use crate::{
    DocKind, Durability, LogMeta, Op, ReceiptRecord, Store, StoreError, StoredNodes, WriteBatch, FIRST_STORED_LEVEL,
};

/// Indices straddling byte boundaries: a little-endian key would sort 256 before 255.
const INDICES: [u64; 8] = [0, 1, 255, 256, 257, 65_535, 65_536, 1 << 40];

fn ids(rs: &[ReceiptRecord]) -> Vec<&str> {
    rs.iter().map(|r| r.id.as_str()).collect()
}

/// Workspaces and API keys: puts overwrite; a key is found by hash, and by id only under its owner.
pub fn workspaces_and_api_keys<S: Store>(s: &S) {
    assert_eq!(s.workspace("w").unwrap(), None);
    let mut w = workspace("w");
    write(s, vec![Op::PutWorkspace(w.clone())]);
    assert_eq!(s.workspace("w").unwrap(), Some(w.clone()));
    w.fail_open = true;
    write(s, vec![Op::PutWorkspace(w.clone())]);
    assert_eq!(s.workspace("w").unwrap(), Some(w), "a put overwrites");

    let admin = api_key("admin", None, [1; 32]);
    let mut scoped = api_key("k1", Some("w"), [2; 32]);
    write(s, vec![Op::PutApiKey(admin.clone()), Op::PutApiKey(scoped.clone())]);
    assert_eq!(s.api_key_by_hash(&[1; 32]).unwrap(), Some(admin));
    assert_eq!(s.api_key_by_hash(&[2; 32]).unwrap(), Some(scoped.clone()));
    assert_eq!(s.api_key_by_hash(&[3; 32]).unwrap(), None);
    // By id: only under the owner it was created for.
    assert_eq!(s.api_key_by_id(None, "admin").unwrap().map(|k| k.key_hash), Some([1; 32]));
    assert_eq!(s.api_key_by_id(Some("w"), "k1").unwrap().map(|k| k.key_hash), Some([2; 32]));
    assert_eq!(s.api_key_by_id(None, "k1").unwrap(), None);
    assert_eq!(s.api_key_by_id(Some("w2"), "k1").unwrap(), None);
    assert_eq!(s.api_key_by_id(Some("w"), "admin").unwrap(), None);
    scoped.revoked_at_ms = Some(99);
    write(s, vec![Op::PutApiKey(scoped.clone())]);
    assert_eq!(s.api_key_by_hash(&[2; 32]).unwrap(), Some(scoped));
    // The instance's own keys: only those of no workspace, revoked ones too, in id order.
    let mut second = api_key("admin2", None, [4; 32]);
    second.revoked_at_ms = Some(7);
    write(s, vec![Op::PutApiKey(second.clone())]);
    let key_ids = |keys: Vec<crate::ApiKeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(key_ids(s.instance_api_keys(10).unwrap()), ["admin", "admin2"]);
    assert_eq!(key_ids(s.instance_api_keys(1).unwrap()), ["admin"], "limit");
}

/// Authorizations: point reads and id-ordered pages, never another workspace's.
pub fn authorizations<S: Store>(s: &S) {
    let a = authorization("w", "auth-1");
    write(s, vec![Op::PutAuthorization(a.clone())]);
    assert_eq!(s.authorization("w", "auth-1").unwrap(), Some(a));
    assert_eq!(s.authorization("w", "auth-2").unwrap(), None);
    assert_eq!(s.authorization("x", "auth-1").unwrap(), None);
    // Listing: id order, pages after a cursor, nothing of a workspace whose id extends this one.
    write(
        s,
        vec![Op::PutAuthorization(authorization("w", "auth-0")), Op::PutAuthorization(authorization("w", "auth-2"))],
    );
    write(s, vec![Op::PutAuthorization(authorization("w_", "auth-1")), Op::PutAuthorization(authorization("v", "a"))]);
    let ids = |after, limit| s.authorizations("w", after, limit).unwrap().into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(ids(None, 10), ["auth-0", "auth-1", "auth-2"]);
    assert_eq!(ids(None, 2), ["auth-0", "auth-1"]);
    assert_eq!(ids(Some("auth-1"), 2), ["auth-2"]);
    assert_eq!(ids(Some("auth-0a"), 10), ["auth-1", "auth-2"]);
    assert!(ids(Some("auth-2"), 10).is_empty());
    assert!(s.authorizations("nobody", None, 10).unwrap().is_empty());
    assert!(s.authorizations("w", Some("bad id"), 10).is_err());
}

/// Receipts by log index and by range, in log order, bodies byte for byte.
pub fn receipts_by_id_index_and_range<S: Store>(s: &S) {
    // Written out of order and across batches.
    for &i in INDICES.iter().rev() {
        write(s, vec![Op::PutReceipt(receipt("w", &format!("r{i}"), i, None))]);
    }
    for &i in &INDICES {
        let r = receipt("w", &format!("r{i}"), i, None);
        assert_eq!(s.receipt_at("w", i).unwrap(), Some(r), "receipt_at({i})");
    }
    assert_eq!(s.receipt_at("w", 2).unwrap(), None);
    assert_eq!(s.receipt_at("w2", 0).unwrap(), None, "another workspace's index");

    let all: Vec<String> = INDICES.iter().map(|i| format!("r{i}")).collect();
    assert_eq!(ids(&s.receipts_in_range("w", 0, u64::MAX, 100).unwrap()), all, "log order");
    assert_eq!(ids(&s.receipts_in_range("w", 0, u64::MAX, 3).unwrap()), all[..3], "limit");
    assert_eq!(
        ids(&s.receipts_in_range("w", 255, 65_536, 100).unwrap()),
        ["r255", "r256", "r257", "r65535"],
        "[from, to)"
    );
    assert_eq!(ids(&s.receipts_in_range("w", 256, 257, 100).unwrap()), ["r256"]);
    assert!(s.receipts_in_range("w", 257, 257, 100).unwrap().is_empty(), "empty range");
    assert!(s.receipts_in_range("w", 300, 2, 100).unwrap().is_empty(), "inverted range");
    assert!(s.receipts_in_range("w", 0, u64::MAX, 0).unwrap().is_empty(), "limit 0");
    // The body comes back byte for byte (escapes, non-ASCII).
    assert_eq!(s.receipt_at("w", 256).unwrap().unwrap().body, receipt("w", "r256", 256, None).body);
}

/// An authorization's trail, page by page in `seq` order, apart from prefix-sharing ones.
pub fn trail_pagination<S: Store>(s: &S) {
    // 600 receipts of one trail (seq 0..600, log index 1000+seq), one batch per 50, written in
    // reverse; plus prefix-sharing authorizations "au" and "auth_x", and a receipt with none.
    for chunk in (0..600u64).collect::<Vec<_>>().chunks(50).rev() {
        let ops = chunk
            .iter()
            .map(|&q| Op::PutReceipt(receipt("w", &format!("t{q}"), 1000 + q, Some(("auth", q)))))
            .collect();
        write(s, ops);
    }
    write(
        s,
        vec![
            Op::PutReceipt(receipt("w", "other1", 5000, Some(("au", 0)))),
            Op::PutReceipt(receipt("w", "other2", 5001, Some(("auth_x", 1)))),
            Op::PutReceipt(receipt("w", "loose", 5002, None)),
        ],
    );
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.trail("w", "auth", after, 64).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 64);
        after = page.last().and_then(|r| r.seq);
        seen.extend(page.into_iter().map(|r| r.seq.unwrap()));
    }
    assert_eq!(seen, (0..600).collect::<Vec<_>>(), "every seq once, in seq order");
    assert_eq!(ids(&s.trail("w", "auth", Some(254), 3).unwrap()), ["t255", "t256", "t257"]);
    assert_eq!(ids(&s.trail("w", "au", None, 10).unwrap()), ["other1"]);
    assert_eq!(ids(&s.trail("w", "auth_x", None, 10).unwrap()), ["other2"]);
    assert!(s.trail("w", "auth", Some(599), 10).unwrap().is_empty());
    assert!(s.trail("w", "auth", Some(u64::MAX), 10).unwrap().is_empty());
    assert!(s.trail("w", "auth", None, 0).unwrap().is_empty());
    assert!(s.trail("w", "nobody", None, 10).unwrap().is_empty());
}

/// Leaf hashes and the workspaces with unsigned leaves: signed = covered by a checkpoint.
pub fn unsigned_leaves<S: Store>(s: &S) {
    assert!(s.workspaces_with_unsigned().unwrap().is_empty());
    let recs: Vec<ReceiptRecord> = (0..300u64).map(|i| receipt("w", &format!("p{i}"), i, None)).collect();
    write(s, recs.iter().rev().cloned().map(Op::PutReceipt).collect());
    // A workspace is listed by its log_meta record, which the sequencer writes with its first
    // receipts; the log's size is one past the newest receipt, whatever the record's
    // `next_index` (not rewritten by every commit, so usually behind).
    assert!(s.workspaces_with_unsigned().unwrap().is_empty(), "no log_meta: no log");
    assert_eq!(s.log_meta("w").unwrap().map(|m| m.next_index), Some(300), "size from the receipts");
    write(s, vec![Op::PutLogMeta { workspace_id: "w".into(), meta: LogMeta { next_index: 1, ..LogMeta::default() } }]);
    assert_eq!(s.workspaces_with_unsigned().unwrap(), ["w"]);
    assert_eq!(s.log_meta("w").unwrap().map(|m| m.next_index), Some(300), "a stale record");

    let pairs = |rs: &[ReceiptRecord]| rs.iter().map(|r| (r.log_index, r.leaf)).collect::<Vec<_>>();
    assert_eq!(s.leaf_hashes("w", 0, 300, 260).unwrap(), pairs(&recs[..260]), "log order, limit");
    assert_eq!(s.leaf_hashes("w", 256, 300, 1000).unwrap(), pairs(&recs[256..]));
    assert_eq!(s.leaf_hashes("w", 256, u64::MAX, 1000).unwrap(), pairs(&recs[256..]));
    assert!(s.leaf_hashes("w", 0, 300, 0).unwrap().is_empty(), "limit 0");
    assert!(s.leaf_hashes("w", 300, 300, 10).unwrap().is_empty(), "empty range");
    assert!(s.leaf_hashes("w", 10, 5, 10).unwrap().is_empty(), "inverted range");

    // Signed = covered by a stored checkpoint: nothing else changes.
    write(s, vec![Op::PutCheckpoint { workspace_id: "w".into(), size: 256, note: "n256".into() }]);
    assert_eq!(s.workspaces_with_unsigned().unwrap(), ["w"]);
    write(s, vec![Op::PutCheckpoint { workspace_id: "w".into(), size: 300, note: "n300".into() }]);
    assert!(s.workspaces_with_unsigned().unwrap().is_empty());
    assert_eq!(s.receipt_at("w", 299).unwrap().as_ref(), recs.last(), "receipts are not rewritten");
    // A key rotation not yet stored is unfinished work too, until its leaf is.
    let rotating = LogMeta { next_index: 300, rotation_at: Some(300), ..LogMeta::default() };
    write(s, vec![Op::PutLogMeta { workspace_id: "w".into(), meta: rotating }]);
    assert_eq!(s.workspaces_with_unsigned().unwrap(), ["w"]);
    write(s, vec![Op::PutLogMeta { workspace_id: "w".into(), meta: LogMeta { next_index: 1, ..LogMeta::default() } }]);
    assert!(s.workspaces_with_unsigned().unwrap().is_empty());
    // A receipt past the newest checkpoint is unsigned, however stale the record.
    write(s, vec![Op::PutReceipt(receipt("w", "p300", 300, None))]);
    assert_eq!(s.workspaces_with_unsigned().unwrap(), ["w"]);
    assert_eq!(s.log_meta("w").unwrap().map(|m| m.next_index), Some(301));
    write(s, vec![Op::PutCheckpoint { workspace_id: "w".into(), size: 301, note: "n301".into() }]);
    assert!(s.workspaces_with_unsigned().unwrap().is_empty());

    // Body bytes come back exactly as written: newlines, escapes, non-ASCII.
    let body = "{\"a\":\"x\\ny\"}\n{\"\u{e9}\":\"\\u0000\"}".as_bytes().to_vec();
    let r = with_body(receipt("w", "raw", 300, None), body);
    write(s, vec![Op::PutReceipt(r.clone())]);
    assert_eq!(s.receipt_at("w", 300).unwrap(), Some(r));
}

/// Many groups, one write: each validates alone; a bad one drops itself and its chain's later
/// groups; the rest land together.
pub fn write_groups<S: Store>(s: &S) {
    let group = |r: ReceiptRecord| WriteBatch::from(vec![Op::PutReceipt(r)]);
    let mut bad = receipt("w", "g1", 11, None);
    bad.body = vec![0xff];
    let groups = vec![
        ("a".to_owned(), group(receipt("w", "g0", 10, None))),
        ("b".to_owned(), group(bad)),
        ("b".to_owned(), group(receipt("w", "g2", 12, None))),
        ("c".to_owned(), group(receipt("w", "g3", 13, None))),
        ("a".to_owned(), group(receipt("w", "g4", 14, None))),
    ];
    let res = s.write_groups(groups, Durability::Sync).unwrap();
    assert!(res[0].is_ok() && res[3].is_ok() && res[4].is_ok(), "{res:?}");
    assert!(matches!(res[1], Err(StoreError::InvalidOp(_))), "{res:?}");
    assert!(matches!(res[2], Err(StoreError::InvalidOp(_))), "a later group of a failed chain: {res:?}");
    for (index, there) in [(10, true), (11, false), (12, false), (13, true), (14, true)] {
        assert_eq!(s.receipt_at("w", index).unwrap().is_some(), there, "{index}");
    }
    // A later group wins on the same key, as if applied after.
    let again = with_body(receipt("w", "g0", 10, None), b"{\"second\":true}".to_vec());
    let res = s
        .write_groups(
            vec![("a".into(), group(receipt("w", "g0", 10, None))), ("a".into(), group(again.clone()))],
            Durability::Sync,
        )
        .unwrap();
    assert!(res.iter().all(Result::is_ok));
    assert_eq!(s.receipt_at("w", 10).unwrap(), Some(again));
    assert!(s.write_groups(Vec::new(), Durability::Sync).unwrap().is_empty());
}

/// Roots and inclusion proofs (first, middle and last leaf) at each of `sizes`, and the
/// consistency proof between `old` and `new`, are the same from `stored` as from `list`.
#[track_caller]
fn assert_same_proofs(stored: &impl NodeSource, list: &LeafList, sizes: &[u64], (old, new): (u64, u64)) {
    for &size in sizes {
        assert_eq!(merkle::root_from(stored, size).unwrap(), merkle::root_from(list, size).unwrap());
        for index in [0, size / 2, size - 1] {
            assert_eq!(
                merkle::inclusion_proof(stored, index, size).unwrap(),
                merkle::inclusion_proof(list, index, size).unwrap()
            );
        }
    }
    assert_eq!(
        merkle::consistency_proof(stored, old, new).unwrap(),
        merkle::consistency_proof(list, old, new).unwrap()
    );
}

/// Merkle nodes (proofs from the store match the leaf list), checkpoints and log positions.
pub fn nodes_checkpoints_and_log_meta<S: Store>(s: &S) {
    // Nodes as the signer's frontier produces them; proofs from the store match the leaf list.
    let leaves: Vec<[u8; 32]> = (0..300u32).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect();
    let mut frontier = Frontier::new();
    for chunk in leaves.chunks(97) {
        let appended = frontier.append(chunk).unwrap();
        write(s, vec![Op::PutNodes { workspace_id: "w".into(), nodes: appended.new_nodes }]);
    }
    let list = LeafList(leaves.clone());
    let stored = StoredNodes::new(s, "w");
    assert_same_proofs(&stored, &list, &[1, 255, 256, 257, 300], (256, 300));
    assert_eq!(s.node("w", 0, 299).unwrap(), Some(leaves[299]));
    assert_eq!(s.node("w", 0, 300).unwrap(), None);
    assert_eq!(s.node("w", 8, 0).unwrap(), Some(merkle::root_from(&list, 256).unwrap()));
    assert!(matches!(stored.node(0, 300), Err(allowly_receipt::Error::MissingNode { level: 0, index: 300 })));
    assert!(stored.take_error().is_none(), "missing is not a store error");
    assert!(matches!(StoredNodes::new(s, "bad id").node(0, 0), Err(allowly_receipt::Error::MissingNode { .. })));

    assert_eq!(s.latest_checkpoint("w").unwrap(), None);
    assert_eq!(s.checkpoint_at_or_after("w", 0).unwrap(), None);
    let sizes = [1u64, 256, 300, 1 << 33];
    let ops = sizes.iter().rev().map(|&n| Op::PutCheckpoint {
        workspace_id: "w".into(),
        size: n,
        note: format!("note {n}\n"),
    });
    write(s, ops.collect());
    let cp = |n: u64| Some((n, format!("note {n}\n")));
    assert_eq!(s.checkpoint("w", 256).unwrap(), Some("note 256\n".into()));
    assert_eq!(s.checkpoint("w", 257).unwrap(), None);
    assert_eq!(s.latest_checkpoint("w").unwrap(), cp(1 << 33));
    for (ask, got) in [(0, 1), (1, 1), (2, 256), (255, 256), (256, 256), (257, 300), (301, 1 << 33), (1 << 33, 1 << 33)]
    {
        assert_eq!(s.checkpoint_at_or_after("w", ask).unwrap(), cp(got), "at or after {ask}");
    }
    assert_eq!(s.checkpoint_at_or_after("w", (1 << 33) + 1).unwrap(), None);
    assert_eq!(s.checkpoint_at_or_after("w", u64::MAX).unwrap(), None);

    assert_eq!(s.log_meta("w").unwrap(), None);
    let meta = LogMeta {
        next_index: 301,
        rotation_at: Some(301),
        rotation_idempotency: Some(crate::IdempotencyRef { doc_id: "k".into(), request_hash: [7; 32] }),
    };
    write(s, vec![Op::PutLogMeta { workspace_id: "w".into(), meta: meta.clone() }]);
    assert_eq!(s.log_meta("w").unwrap(), Some(meta));
    write(
        s,
        vec![Op::PutLogMeta { workspace_id: "w".into(), meta: LogMeta { next_index: 302, ..LogMeta::default() } }],
    );
    assert_eq!(s.log_meta("w").unwrap().unwrap().next_index, 302);
}

/// Nodes below [`FIRST_STORED_LEVEL`] left out by the writer (the engine does: level 0 is the
/// receipts' leaf hashes, levels 1 and 2 are hashed from them) are recomputed from the
/// receipts: every root, inclusion and consistency proof of every size is the leaf list's, over
/// whatever chunks the frontier was appended in. A gap in the receipts is "missing", not a
/// store error, and a receipt that does not decode is a store error.
pub fn low_nodes_come_from_receipts<S: Store>(s: &S) {
    let recs: Vec<ReceiptRecord> = (0..70u64).map(|i| receipt("w", &format!("l{i}"), i, None)).collect();
    let leaves: Vec<[u8; 32]> = recs.iter().map(|r| r.leaf).collect();
    write(s, recs.into_iter().map(Op::PutReceipt).collect());
    let mut frontier = Frontier::new();
    let (one_by_one, rest) = leaves.split_at(13);
    for chunk in one_by_one.chunks(1).chain(rest.chunks(7)) {
        let appended = frontier.append(chunk).unwrap();
        let nodes = appended.new_nodes.into_iter().filter(|&(level, _, _)| level >= FIRST_STORED_LEVEL).collect();
        write(s, vec![Op::PutNodes { workspace_id: "w".into(), nodes }]);
    }
    assert_eq!(s.node("w", 0, 5).unwrap(), None, "not stored as a node");
    assert_eq!(s.node("w", FIRST_STORED_LEVEL - 1, 0).unwrap(), None, "not stored as a node");
    let list = LeafList(leaves);
    for size in 1..=70u64 {
        // A fresh source per size, so the block kept from one proof cannot hide a bad read
        // in the next; and one source for all the proofs of a size, so the kept block is used.
        let stored = StoredNodes::new(s, "w");
        assert_eq!(merkle::root_from(&stored, size).unwrap(), merkle::root_from(&list, size).unwrap(), "{size}");
        for index in 0..size {
            let proof = merkle::inclusion_proof(&stored, index, size).unwrap();
            assert_eq!(proof, merkle::inclusion_proof(&list, index, size).unwrap(), "{index} in {size}");
        }
        for old in 1..=size {
            let proof = merkle::consistency_proof(&stored, old, size).unwrap();
            assert_eq!(proof, merkle::consistency_proof(&list, old, size).unwrap(), "{old}..{size}");
        }
        assert!(stored.take_error().is_none());
    }
    let stored = StoredNodes::new(s, "w");
    assert!(matches!(stored.node(0, 70), Err(allowly_receipt::Error::MissingNode { level: 0, index: 70 })));
    assert!(matches!(stored.node(1, 35), Err(allowly_receipt::Error::MissingNode { level: 1, index: 35 })));
    assert!(matches!(stored.node(2, u64::MAX), Err(allowly_receipt::Error::MissingNode { .. })));
    assert!(stored.take_error().is_none(), "missing is not a store error");

    // A block with a gap: the nodes over the gap are missing, the others are not.
    let recs = [0u64, 1, 2, 4, 5, 6, 7].map(|i| receipt("g", &format!("g{i}"), i, None));
    let gap: Vec<[u8; 32]> = recs.iter().map(|r| r.leaf).collect();
    write(s, recs.into_iter().map(Op::PutReceipt).collect());
    let stored = StoredNodes::new(s, "g");
    assert_eq!(stored.node(1, 0).unwrap(), merkle::node_hash(&gap[0], &gap[1]));
    assert!(matches!(stored.node(1, 1), Err(allowly_receipt::Error::MissingNode { level: 1, index: 1 })));
    assert!(matches!(stored.node(2, 0), Err(allowly_receipt::Error::MissingNode { level: 2, index: 0 })));
    assert_eq!(stored.node(2, 1).unwrap(), merkle::complete_subtree_hash(&gap[3..]));
    assert!(stored.take_error().is_none());
}

/// Fills workspaces whose ids share prefixes with the same ids, indices and sizes: none sees
/// another's data.
pub fn tenant_isolation<S: Store>(s: &S) {
    let tenants = ["a", "a_b", "a-", "ab", "b"];
    for (n, ws) in tenants.iter().enumerate() {
        let n = n as u64;
        let mut ops = vec![
            Op::PutWorkspace(workspace(ws)),
            Op::PutAuthorization(authorization(ws, "auth")),
            Op::PutNodes { workspace_id: ws.to_string(), nodes: vec![(0, 256, [n as u8; 32])] },
            Op::PutLogMeta { workspace_id: ws.to_string(), meta: LogMeta { next_index: n, ..LogMeta::default() } },
        ];
        // "a" has the fewest receipts and the smallest checkpoints: a leak from a longer id
        // sorting after it would show up as extra results.
        for i in 0..=n {
            ops.push(Op::PutReceipt(receipt(ws, &format!("r{i}"), 256 + i, Some(("auth", i)))));
            ops.push(Op::PutCheckpoint { workspace_id: ws.to_string(), size: 256 + i, note: format!("{ws} {i}") });
        }
        write(s, ops);
    }
    for (n, ws) in tenants.iter().enumerate() {
        let n = n as u64;
        let own = |rs: Vec<ReceiptRecord>| {
            assert!(rs.iter().all(|r| r.workspace_id == *ws), "{ws} saw {:?}", rs);
            rs.len() as u64
        };
        assert_eq!(own(s.receipts_in_range(ws, 0, u64::MAX, 100).unwrap()), n + 1);
        assert_eq!(own(s.trail(ws, "auth", None, 100).unwrap()), n + 1);
        assert_eq!(s.leaf_hashes(ws, 0, u64::MAX, 100).unwrap().len() as u64, n + 1);
        assert_eq!(s.receipt_at(ws, 256 + n + 1).unwrap(), None);
        assert_eq!(s.latest_checkpoint(ws).unwrap(), Some((256 + n, format!("{ws} {n}"))));
        assert_eq!(s.checkpoint_at_or_after(ws, 256 + n + 1).unwrap(), None);
        assert_eq!(s.node(ws, 0, 256).unwrap(), Some([n as u8; 32]));
        // One past its own newest receipt (the record says `n`): another's would be further.
        assert_eq!(s.log_meta(ws).unwrap().unwrap().next_index, 256 + n + 1);
        assert_eq!(s.authorization(ws, "auth").unwrap().unwrap().workspace_id, *ws);
        assert_eq!(s.receipt_at(ws, 256).unwrap().unwrap().workspace_id, *ws);
    }
    assert_eq!(s.receipt_at("a", 257).unwrap(), None, "a_b's leaf 257 is not a's");
    for ws in tenants {
        write(
            s,
            vec![Op::PutLogMeta {
                workspace_id: ws.to_string(),
                meta: LogMeta { next_index: 1000, ..LogMeta::default() },
            }],
        );
    }
    assert_eq!(s.workspaces_with_unsigned().unwrap(), ["a", "a-", "a_b", "ab", "b"], "byte order, each once");
}

/// Invalid ids and incoherent receipts fail the whole batch, on writes and reads alike.
pub fn invalid_ids_write_nothing<S: Store>(s: &S) {
    let long = "x".repeat(129);
    let bad_ops = vec![
        Op::PutWorkspace(workspace("bad id")),
        Op::PutWorkspace(workspace("")),
        Op::PutWorkspace(workspace(&long)),
        Op::PutApiKey(api_key("k\0", None, [4; 32])),
        Op::PutApiKey(api_key("k", Some("w/x"), [4; 32])),
        Op::PutAuthorization(authorization("w", "a\u{e9}")),
        Op::PutAuthorization(authorization("w\0a", "auth")),
        Op::PutReceipt(receipt("w", "r.1", 256, None)),
        Op::PutReceipt(receipt("w", "r1", 256, Some(("a b", 0)))),
        Op::PutNodes { workspace_id: "".into(), nodes: vec![] },
        Op::PutCheckpoint { workspace_id: "w\n".into(), size: 1, note: "n".into() },
        Op::PutLogMeta { workspace_id: long.clone(), meta: LogMeta::default() },
    ];
    for bad in bad_ops {
        let batch = vec![
            Op::PutWorkspace(workspace("w")),
            Op::PutReceipt(receipt("w", "ok", 256, Some(("auth", 0)))),
            Op::PutCheckpoint { workspace_id: "w".into(), size: 256, note: "n".into() },
            bad.clone(),
        ];
        let err = s.write(WriteBatch::from(batch), Durability::Sync);
        assert!(matches!(err, Err(StoreError::InvalidId { .. })), "{bad:?}: {err:?}");
    }
    // Incoherent receipts are refused as well.
    let mut half_trail = receipt("w", "ok", 256, None);
    half_trail.seq = Some(1);
    let mut not_text = receipt("w", "ok", 256, None);
    not_text.body = vec![0xff, 0xfe];
    for bad in [half_trail, not_text] {
        let batch = vec![Op::PutWorkspace(workspace("w")), Op::PutReceipt(bad)];
        assert!(matches!(s.write(WriteBatch::from(batch), Durability::Sync), Err(StoreError::InvalidOp(_))));
    }
    assert_eq!(s.workspace("w").unwrap(), None, "no op of a failed batch was written");
    assert_eq!(s.receipt_at("w", 256).unwrap(), None);
    assert_eq!(s.latest_checkpoint("w").unwrap(), None);
    assert!(s.workspaces_with_unsigned().unwrap().is_empty());

    // Reads validate ids too: an id with a separator must not reach a key.
    let invalid = |r: Result<(), StoreError>| assert!(matches!(r, Err(StoreError::InvalidId { .. })), "{r:?}");
    invalid(s.workspace("a\0").map(drop));
    invalid(s.authorization("w", "").map(drop));
    invalid(s.receipt_at("w\0x", 0).map(drop));
    invalid(s.receipt_at("", 0).map(drop));
    invalid(s.trail("w", "a\0", None, 1).map(drop));
    invalid(s.receipts_in_range("w!", 0, 1, 1).map(drop));
    invalid(s.node("w\0", 0, 0).map(drop));
    invalid(s.checkpoint("w\0", 0).map(drop));
    invalid(s.latest_checkpoint("w\0").map(drop));
    invalid(s.checkpoint_at_or_after("w\0", 0).map(drop));
    invalid(s.leaf_hashes("w\0", 0, 1, 1).map(drop));
    invalid(s.log_meta(&long).map(drop));
}

/// An empty batch is fine; a buffered write is visible at once.
pub fn empty_batch_and_buffered_writes<S: Store>(s: &S) {
    s.write(WriteBatch::new(), Durability::Sync).unwrap();
    let mut batch = WriteBatch::new();
    batch.push(Op::PutWorkspace(workspace("w"))).push(Op::PutReceipt(receipt("w", "r", 256, None)));
    s.write(batch, Durability::Buffered).unwrap();
    assert!(s.workspace("w").unwrap().is_some());
    assert!(s.receipt_at("w", 256).unwrap().is_some());
}

/// Many threads writing synced batches at once (RocksDB groups them into shared fsyncs).
pub fn concurrent_writers<S: Store>(s: &S) {
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            scope.spawn(move || {
                for i in 0..50u64 {
                    let index = t * 1000 + i;
                    write(
                        s,
                        vec![Op::PutReceipt(receipt("w", &format!("c{index}"), index, Some((&format!("t{t}"), i))))],
                    );
                }
            });
        }
    });
    for t in 0..4u64 {
        assert_eq!(s.trail("w", &format!("t{t}"), None, 100).unwrap().len(), 50);
    }
    assert_eq!(s.receipts_in_range("w", 0, u64::MAX, 1000).unwrap().len(), 200);
}

/// Documents: per kind, per workspace, in id order; deleted ones are gone.
pub fn documents<S: Store>(s: &S) {
    let put = |ws: &str, id: &str, n: u64| Op::PutDoc {
        kind: DocKind::Escalation,
        workspace_id: ws.into(),
        id: id.into(),
        doc: serde_json::json!({ "n": n }),
    };
    // Prefix-sharing workspaces and ids, and another kind under the same ids.
    write(s, vec![put("w", "b", 1), put("w", "a", 2), put("w_x", "a", 3), put("w", "a_", 4)]);
    write(
        s,
        vec![Op::PutDoc {
            kind: DocKind::Confirmation,
            workspace_id: "w".into(),
            id: "a".into(),
            doc: serde_json::json!("other kind"),
        }],
    );
    assert_eq!(s.doc(DocKind::Escalation, "w", "a").unwrap(), Some(serde_json::json!({"n": 2})));
    assert_eq!(s.doc(DocKind::Confirmation, "w", "a").unwrap(), Some(serde_json::json!("other kind")));
    assert_eq!(s.doc(DocKind::Escalation, "w", "c").unwrap(), None);
    assert_eq!(s.doc(DocKind::Escalation, "w_x", "b").unwrap(), None, "another workspace's id space");
    let ids = |after, limit| -> Vec<String> {
        s.docs(DocKind::Escalation, "w", after, limit).unwrap().into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(ids(None, 10), ["a", "a_", "b"]);
    assert_eq!(ids(Some("a"), 1), ["a_"]);
    assert_eq!(ids(Some("a_"), 10), ["b"]);
    assert_eq!(ids(Some("b"), 10), Vec::<String>::new());
    let all: Vec<(String, String)> =
        s.all_docs(DocKind::Escalation, None, 10).unwrap().into_iter().map(|(w, id, _)| (w, id)).collect();
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(all, pairs(&[("w", "a"), ("w", "a_"), ("w", "b"), ("w_x", "a")]));
    let rest: Vec<_> = s.all_docs(DocKind::Escalation, Some(("w", "b")), 10).unwrap();
    assert_eq!(rest.len(), 1);
    // The same pairs without the documents, paged the same way.
    assert_eq!(s.all_doc_ids(DocKind::Escalation, None, 10).unwrap(), all);
    assert_eq!(s.all_doc_ids(DocKind::Escalation, Some(("w", "a")), 2).unwrap(), pairs(&[("w", "a_"), ("w", "b")]));
    assert_eq!(s.all_doc_ids(DocKind::Escalation, Some(("w_x", "a")), 10).unwrap(), pairs(&[]));
    assert_eq!(s.all_doc_ids(DocKind::Confirmation, None, 10).unwrap(), pairs(&[("w", "a")]));
    write(s, vec![Op::DeleteDoc { kind: DocKind::Escalation, workspace_id: "w".into(), id: "a".into() }]);
    assert_eq!(s.doc(DocKind::Escalation, "w", "a").unwrap(), None);
    assert_eq!(ids(None, 10), ["a_", "b"]);
    assert!(matches!(s.doc(DocKind::Escalation, "w", "a/b"), Err(StoreError::InvalidId { .. })));
}

/// An authorization's trail head comes from its trail, never from its stored record.
pub fn trail_head_is_derived_from_the_trail<S: Store>(s: &S) {
    // The record is written once; receipts alone move the head, and prefix-sharing
    // authorizations ("au", "auth_x") never lend theirs.
    let (a, au, ax) = (authorization("w", "auth"), authorization("w", "au"), authorization("w", "auth_x"));
    write(s, vec![Op::PutAuthorization(a), Op::PutAuthorization(au), Op::PutAuthorization(ax)]);
    let head = |id: &str| {
        let r = s.authorization("w", id).unwrap().unwrap();
        assert_eq!(s.authorizations("w", None, 10).unwrap().into_iter().find(|x| x.id == id).as_ref(), Some(&r));
        (r.next_seq, r.last_leaf)
    };
    assert_eq!(head("auth"), (0, [0; 32]), "an empty trail");
    let mut last = [0; 32];
    for q in 0..3u64 {
        let r = receipt("w", &format!("h{q}"), 10 + q, Some(("auth", q)));
        last = r.leaf;
        write(s, vec![Op::PutReceipt(r)]);
        assert_eq!(head("auth"), (q + 1, last));
    }
    write(s, vec![Op::PutReceipt(receipt("w", "x0", 20, Some(("auth_x", 0))))]);
    assert_eq!(head("auth"), (3, last));
    assert_eq!(head("au"), (0, [0; 32]));
    assert_eq!(head("auth_x").0, 1);
    // A stored record's own head fields are never what a read returns.
    let mut stale = authorization("w", "auth");
    (stale.next_seq, stale.last_leaf) = (99, [9; 32]);
    write(s, vec![Op::PutAuthorization(stale)]);
    assert_eq!(head("auth"), (3, last));
}

/// The store works as a trait object (`Store` is object safe, so the engine can be chosen at
/// run time), and proofs work through it.
pub fn works_as_a_trait_object<S: Store>(s: &S) {
    let s: &dyn Store = s;
    let leaves = vec![[1u8; 32], [2; 32], [3; 32]];
    let appended = Frontier::new().append(&leaves).unwrap();
    write(s, vec![Op::PutNodes { workspace_id: "w".into(), nodes: appended.new_nodes }]);
    let nodes = StoredNodes::new(s, "w");
    assert_eq!(merkle::root_from(&nodes, 3).unwrap(), appended.root);
}

/// Witness cosignatures per (workspace, checkpoint size, witness) and each witness's last
/// cosigned size: puts replace, a checkpoint's cosignatures are exactly its own (never a
/// neighbouring size's nor another workspace's), the newest come first, a line that is not one
/// signature line is refused with nothing of its batch written.
pub fn cosignatures_and_witness_heads<S: Store>(s: &S) {
    let (a, b) = ([0xa1; 32], [0xb2; 32]);
    let cosig = |ws: &str, size: u64, w: [u8; 32], line: &str| Op::PutCosignature {
        workspace_id: ws.into(),
        size,
        witness: w,
        line: line.into(),
    };
    assert_eq!(s.cosignatures("w", 256).unwrap(), vec![]);
    assert_eq!(s.witness_head("w", &a).unwrap(), None);
    write(
        s,
        vec![
            cosig("w", 255, a, "— a 255\n"),
            cosig("w", 256, b, "— b 256\n"),
            cosig("w", 256, a, "— a old\n"),
            cosig("w", 256, a, "— a 256\n"),
            cosig("w", 257, a, "— a 257\n"),
            cosig("w_b", 256, a, "— other workspace\n"),
            cosig("v", 1 << 40, a, "— v\n"),
            Op::PutWitnessHead { workspace_id: "w".into(), witness: a, size: 257 },
            Op::PutWitnessHead { workspace_id: "w".into(), witness: b, size: 1 },
            Op::PutWitnessHead { workspace_id: "w".into(), witness: b, size: 256 },
        ],
    );
    assert_eq!(s.cosignatures("w", 256).unwrap(), vec![(a, "— a 256\n".to_owned()), (b, "— b 256\n".to_owned())]);
    assert_eq!(s.cosignatures("w", 258).unwrap(), vec![]);
    assert_eq!(s.cosignatures("w_b", 256).unwrap(), vec![(a, "— other workspace\n".to_owned())]);
    assert_eq!(s.witness_head("w", &a).unwrap(), Some(257));
    assert_eq!(s.witness_head("w", &b).unwrap(), Some(256));
    assert_eq!(s.witness_head("w_b", &a).unwrap(), None);
    let sizes = |at_most, limit| {
        s.recent_cosignatures("w", at_most, limit).unwrap().into_iter().map(|(n, w, _)| (n, w)).collect::<Vec<_>>()
    };
    assert_eq!(sizes(u64::MAX, 10), vec![(257, a), (256, b), (256, a), (255, a)]);
    assert_eq!(sizes(256, 2), vec![(256, b), (256, a)]);
    assert_eq!(sizes(254, 10), vec![]);
    assert_eq!(s.recent_cosignatures("v", u64::MAX, 10).unwrap(), vec![(1 << 40, a, "— v\n".to_owned())]);
    for bad in ["", "— no newline", "— two\n— lines\n"] {
        let e = s
            .write(
                WriteBatch::from(vec![
                    Op::PutWitnessHead { workspace_id: "w".into(), witness: a, size: 999 },
                    cosig("w", 999, a, bad),
                ]),
                Durability::Sync,
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::InvalidOp(_)), "{bad:?}: {e:?}");
    }
    assert_eq!(s.witness_head("w", &a).unwrap(), Some(257), "a refused batch writes nothing");
    assert!(matches!(s.cosignatures("bad id", 1), Err(StoreError::InvalidId { .. })));
}

/// The workspaces a restart must submit to a witness: those whose newest stored checkpoint is
/// larger than the witness's recorded head (no head: 0), each once, in byte order; a workspace
/// with a log but no checkpoint, or one the witness is level with or ahead of, is not listed,
/// and another witness's head counts for nothing.
pub fn workspaces_behind_a_witness<S: Store>(s: &S) {
    let (a, b) = ([0xa1; 32], [0xb2; 32]);
    let logged = |ws: &str| Op::PutLogMeta { workspace_id: ws.into(), meta: LogMeta::default() };
    let checkpoint =
        |ws: &str, size: u64| Op::PutCheckpoint { workspace_id: ws.into(), size, note: format!("n{size}") };
    let head = |ws: &str, w: [u8; 32], size: u64| Op::PutWitnessHead { workspace_id: ws.into(), witness: w, size };
    assert!(s.workspaces_behind_witness(&a).unwrap().is_empty());
    write(
        s,
        vec![
            logged("fresh"),
            logged("never"),
            checkpoint("never", 1),
            logged("level"),
            checkpoint("level", 3),
            head("level", a, 3),
            logged("behind"),
            checkpoint("behind", 2),
            checkpoint("behind", 9),
            head("behind", a, 2),
            head("behind", b, 9),
            logged("ahead"),
            checkpoint("ahead", 4),
            head("ahead", a, 5),
            // A checkpoint with no log record is no log (as for `workspaces_with_unsigned`).
            checkpoint("orphan", 7),
        ],
    );
    assert_eq!(s.workspaces_behind_witness(&a).unwrap(), ["behind", "never"]);
    assert_eq!(s.workspaces_behind_witness(&b).unwrap(), ["ahead", "level", "never"]);
    write(s, vec![head("behind", a, 9), head("never", a, 1)]);
    assert!(s.workspaces_behind_witness(&a).unwrap().is_empty());
    write(s, vec![checkpoint("level", 4)]);
    assert_eq!(s.workspaces_behind_witness(&a).unwrap(), ["level"]);
}

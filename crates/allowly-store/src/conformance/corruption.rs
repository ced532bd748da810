//! Corrupt stored bytes become `StoreError::Corrupt` from every getter, never a panic. The
//! cases write bytes no op would produce, through the engine's own [`KvEngine::apply`], so
//! they run on every [`KvEngine`] (a store that is not one keeps no such bytes to corrupt).

use allowly_receipt::merkle::NodeSource;

use crate::keys;
use crate::kv::{KvEngine, Mutations, Space};
use crate::{ApiKeyRecord, Durability, Op, ReceiptRecord, Store, StoreError, StoredNodes, WriteBatch};

/// Writes bytes no op would produce, through the engine's own write path.
trait Raw: KvEngine {
    fn raw(&self, space: Space, key: &[u8], value: &[u8]) {
        let mut muts = Mutations::default();
        muts.put(space, key.to_vec(), value.to_vec());
        self.apply(muts, Durability::Sync).expect("raw put");
    }
}

impl<E: KvEngine> Raw for E {}

fn receipt(ws: &str, id: &str, index: u64) -> ReceiptRecord {
    ReceiptRecord {
        id: id.into(),
        workspace_id: ws.into(),
        authorization_id: Some("auth".into()),
        seq: Some(index),
        log_index: index,
        body: br#"{"id":"r"}"#.to_vec(),
        leaf: allowly_receipt::merkle::leaf_hash(br#"{"id":"r"}"#),
    }
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Undecodable values, records filed under another key, dangling index entries and keys of the
/// wrong length are `Corrupt` from every getter that reads them.
pub fn every_getter_reports_corruption<S: KvEngine>(s: &S) {
    s.raw(Space::Workspaces, b"w", b"{not json");
    assert_corrupt(s.workspace("w"));
    s.raw(Space::Workspaces, b"v", br#"{"id":"other","name":"","created_at_ms":0,"scope_rules":{},"fail_open":false}"#);
    assert_corrupt(s.workspace("v"));

    s.raw(Space::LogMeta, b"w", b"[]");
    assert_corrupt(s.log_meta("w"));

    let hash = [9u8; 32];
    let other = ApiKeyRecord {
        id: "k".into(),
        workspace_id: None,
        key_hash: [8; 32],
        roles: vec![],
        created_at_ms: 0,
        revoked_at_ms: None,
    };
    s.raw(Space::ApiKeys, &hash, &serde_json::to_vec(&other).expect("encode"));
    assert_corrupt(s.api_key_by_hash(&hash));
    s.raw(Space::ApiKeys, &[1; 32], br#"{"id":"k","workspace_id":null,"key_hash":"zz"}"#);
    assert_corrupt(s.api_key_by_hash(&[1; 32]));

    s.raw(Space::Authorizations, &keys::ws_id("w", "a"), b"\xff\xfe");
    assert_corrupt(s.authorization("w", "a"));

    // A receipt filed under workspace "w" that says it belongs to "x": never served as w's.
    let foreign = receipt("x", "r1", 0);
    s.raw(Space::Receipts, &keys::ws_u64("w", 0), &crate::codec::encode_receipt(&foreign).expect("encode"));
    assert_corrupt(s.receipt_at("w", 0));
    // One filed under another log index than its own (a wrong leaf in the log).
    let moved = receipt("w", "r5", 5);
    s.raw(Space::Receipts, &keys::ws_u64("w", 6), &crate::codec::encode_receipt(&moved).expect("encode"));
    assert_corrupt(s.receipt_at("w", 6));
    // A body that is not the one its leaf hash names (bit rot, a hand edit).
    let mut edited = crate::codec::encode_receipt(&receipt("w", "r3", 3)).expect("encode");
    if let Some(last) = edited.last_mut() {
        *last = b']';
    }
    s.raw(Space::Receipts, &keys::ws_u64("w", 3), &edited);
    assert_corrupt(s.receipt_at("w", 3));
    assert_corrupt(s.receipts_in_range("w", 0, 1000, 10));
    assert_corrupt(s.leaf_hashes("w", 3, 4, 10));

    // Trail entries pointing at nothing or of the wrong length, keys of the wrong length.
    s.raw(Space::Trail, &keys::trail("w", "auth", 0), &crate::codec::encode_leaf(&[7; 32], 300));
    assert_corrupt(s.trail("w", "auth", None, 10));
    s.raw(Space::Trail, &keys::trail("w", "auth2", 0), b"short");
    assert_corrupt(s.trail("w", "auth2", None, 10));
    s.raw(Space::Receipts, &[keys::ws_start("v"), vec![1, 2]].concat(), b"r1");
    assert_corrupt(s.receipts_in_range("v", 0, u64::MAX, 10));
    assert_corrupt(s.leaf_hashes("v", 0, u64::MAX, 10));
    s.raw(Space::Trail, &[keys::trail_start("w", "auth3"), vec![1, 2]].concat(), b"r1");
    assert_corrupt(s.trail("w", "auth3", None, 10));
    s.raw(Space::LogMeta, b"not/a/ws", br#"{"next_index":1}"#);
    assert_corrupt(s.workspaces_with_unsigned());
    assert_corrupt(s.workspaces_behind_witness(&[1; 32]));

    s.raw(Space::Nodes, &keys::node("w", 0, 5), &[0; 31]);
    assert_corrupt(s.node("w", 0, 5));
    let nodes = StoredNodes::new(s, "w");
    assert!(matches!(nodes.node(0, 5), Err(allowly_receipt::Error::MissingNode { level: 0, index: 5 })));
    assert!(matches!(nodes.take_error(), Some(StoreError::Corrupt { .. })));
    assert!(nodes.take_error().is_none());
    // An unstored low node is hashed from receipts: one that does not decode is a store error.
    s.raw(Space::Receipts, &keys::ws_u64("x", 2), b"not a receipt");
    let nodes = StoredNodes::new(s, "x");
    assert!(matches!(nodes.node(1, 1), Err(allowly_receipt::Error::MissingNode { level: 1, index: 1 })));
    assert!(matches!(nodes.take_error(), Some(StoreError::Corrupt { .. })));

    s.raw(Space::Checkpoints, &keys::ws_u64("w", 7), b"\xc3\x28");
    assert_corrupt(s.checkpoint("w", 7));
    assert_corrupt(s.latest_checkpoint("w"));
    assert_corrupt(s.checkpoint_at_or_after("w", 1));
    s.raw(Space::Checkpoints, &[keys::ws_start("c"), vec![1]].concat(), b"note");
    assert_corrupt(s.latest_checkpoint("c"));
}

/// Every truncation and a bit flip at every position of a valid receipt: Ok or Err, no panic.
pub fn mangled_receipts_never_panic<S: KvEngine>(s: &S) {
    let r = receipt("w", "r2", 1);
    s.write(WriteBatch::from(vec![Op::PutReceipt(r.clone())]), Durability::Sync).expect("write");
    let good = crate::codec::encode_receipt(&r).expect("encode");
    let key = keys::ws_u64("w", 1);
    for i in 0..good.len() {
        s.raw(Space::Receipts, &key, &good[..i]);
        assert_corrupt(s.receipt_at("w", 1));
        let mut flipped = good.clone();
        flipped[i] ^= 0x80;
        s.raw(Space::Receipts, &key, &flipped);
        let _ = s.receipt_at("w", 1);
        let _ = s.leaf_hashes("w", 0, 10, 10);
        let _ = s.trail("w", "auth", None, 10);
    }
}

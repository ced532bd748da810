//! Record builders and engine fixtures shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;

use allowly_store::{
    ApiKeyRecord, AuthorizationRecord, Durability, MemStore, Op, ReceiptRecord, RocksOptions, RocksStore, Role,
    ScopeRule, Store, WorkspaceRecord, WriteBatch,
};
use tempfile::TempDir;

/// A store and the directory it lives in (dropped after the store).
pub struct Fixture<S> {
    pub store: S,
    pub dir: Option<TempDir>,
}

pub fn mem() -> Fixture<MemStore> {
    Fixture { store: MemStore::new(), dir: None }
}

pub fn rocks() -> Fixture<RocksStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path(), RocksOptions::default()).expect("open RocksStore");
    Fixture { store, dir: Some(dir) }
}

pub fn workspace(id: &str) -> WorkspaceRecord {
    WorkspaceRecord {
        id: id.into(),
        name: format!("workspace {id}"),
        created_at_ms: 1_700_000_000_000,
        scope_rules: BTreeMap::from([
            ("mail.send".to_string(), ScopeRule::Confirm),
            ("pay".into(), ScopeRule::Escalate),
        ]),
        fail_open: false,
        signing_keys: Vec::new(),
    }
}

pub fn api_key(id: &str, ws: Option<&str>, hash: [u8; 32]) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        workspace_id: ws.map(Into::into),
        key_hash: hash,
        roles: vec![Role::Check, Role::Read],
        created_at_ms: 5,
        revoked_at_ms: None,
    }
}

pub fn authorization(ws: &str, id: &str) -> AuthorizationRecord {
    AuthorizationRecord {
        id: id.into(),
        workspace_id: ws.into(),
        subject: format!("user-of-{ws}"),
        scopes: vec!["mail.read".into(), "mail.send".into()],
        resources: vec!["inbox/*".into()],
        expires_at_ms: Some(1_800_000_000_000),
        metadata: serde_json::json!({"ws": ws, "n": [1, 2.5, "x"], "ü": null}),
        created_at_ms: 1,
        revoked_at_ms: None,
        expiry_recorded: false,
        // The trail head is derived from the trail on read: a fresh record has an empty one.
        next_seq: 0,
        last_leaf: [0; 32],
    }
}

/// A receipt; the body names the workspace and id so a mix-up shows, and the leaf is the
/// body's leaf hash (the store checks it on every read).
pub fn receipt(ws: &str, id: &str, index: u64, trail: Option<(&str, u64)>) -> ReceiptRecord {
    let body = format!(r#"{{"id":"{id}","note":"\"ünïcode\" \\ \n","ws":"{ws}"}}"#).into_bytes();
    with_body(
        ReceiptRecord {
            id: id.into(),
            workspace_id: ws.into(),
            authorization_id: trail.map(|(a, _)| a.into()),
            seq: trail.map(|(_, s)| s),
            log_index: index,
            body: Vec::new(),
            leaf: [0; 32],
        },
        body,
    )
}

/// `r` with another body (and that body's leaf hash).
pub fn with_body(mut r: ReceiptRecord, body: Vec<u8>) -> ReceiptRecord {
    r.leaf = allowly_receipt::merkle::leaf_hash(&body);
    r.body = body;
    r
}

pub fn write<S: Store + ?Sized>(s: &S, ops: Vec<Op>) {
    s.write(WriteBatch::from(ops), Durability::Sync).expect("write");
}

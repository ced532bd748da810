//! Record builders shared by the cases (and by implementations' own tests).

use std::collections::BTreeMap;

use crate::{
    ApiKeyRecord, AuthorizationRecord, Durability, Op, ReceiptRecord, Role, ScopeRule, Store, WorkspaceRecord,
    WriteBatch,
};

/// A workspace with two scope rules.
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
        rate_limit: Some(crate::RateLimit::PerKey { requests_per_second: 50, burst: 100 }),
    }
}

/// A `check` + `read` key of workspace `ws` (an instance key when `None`).
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

/// An authorization with non-ASCII metadata and an empty trail.
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

/// Writes `ops` as one synced batch, which must succeed.
pub fn write<S: Store + ?Sized>(s: &S, ops: Vec<Op>) {
    s.write(WriteBatch::from(ops), Durability::Sync).expect("write");
}

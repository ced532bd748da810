//! The engine tests' harness: real RocksDB, the real signer code on a real Unix socket (on a
//! runtime of its own, so stopping it ends every connection as a dying process would), and
//! polling with a deadline instead of sleeping.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use allowly_engine::model::*;
use allowly_engine::{Engine, EngineConfig};
use allowly_receipt::types::{AnyReceipt, PendingReceipt, RawBody, ReceiptBody, Timestamp};
use allowly_signer_proto::client::{ClientOptions, SignerClient};
use allowly_store::ScopeRule;
use allowly_store_rocks::{RocksOptions, RocksStore};
use tempfile::TempDir;

/// The signer on a runtime of its own, so that stopping it (dropping the runtime) ends every
/// connection at once, as a dying process would.
pub struct Signer {
    rt: tokio::runtime::Runtime,
}

pub fn signer_dir(root: &TempDir) -> PathBuf {
    root.path().join("signer")
}

pub fn socket(root: &TempDir) -> PathBuf {
    root.path().join("run").join("signer.sock")
}

pub fn start_signer(root: &TempDir) -> Signer {
    use allowly_signer::{server, Shared};
    let shared = Shared::open_local(&signer_dir(root)).unwrap();
    let sock = socket(root);
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(sock.parent().unwrap(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = {
        let _in_rt = rt.enter();
        server::bind(&sock).unwrap()
    };
    rt.spawn(server::serve(listener, shared, std::future::pending::<()>()));
    Signer { rt }
}

impl Signer {
    pub fn stop(self) {
        self.rt.shutdown_background();
    }
}

pub fn client(root: &TempDir) -> SignerClient {
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(2),
        reconnect_backoff_min: Duration::from_millis(10),
        reconnect_backoff_max: Duration::from_millis(100),
        ..ClientOptions::default()
    };
    SignerClient::new(socket(root), opts)
}

pub fn open_store(root: &TempDir) -> Arc<RocksStore> {
    Arc::new(RocksStore::open(&root.path().join("db"), RocksOptions::default()).unwrap())
}

pub fn config() -> EngineConfig {
    EngineConfig { signer_timeout: Duration::from_millis(500), ..EngineConfig::default() }
}

/// Polls `cond` until it holds or 30 s pass (then fails with `what`).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut wait = Duration::from_millis(1);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}

pub fn rules() -> std::collections::BTreeMap<String, ScopeRule> {
    [("mail.send".to_string(), ScopeRule::Confirm), ("pay.*".to_string(), ScopeRule::Escalate)].into()
}

/// A new API key of `ws`, created by a fresh instance admin key.
pub async fn api_key(e: &Engine, ws: &str, roles: Vec<allowly_store::Role>) -> allowly_engine::model::CreatedApiKey {
    let admin = e.create_admin_key().await.unwrap();
    let caller = e.authenticate(&admin.secret).unwrap().unwrap();
    e.create_api_key(ws, allowly_engine::model::NewApiKey { roles }, None, &caller, &admin.secret).await.unwrap()
}

pub async fn workspace(e: &Engine) -> String {
    e.create_workspace(NewWorkspace { name: "acme".into(), scope_rules: rules() }, None).await.unwrap().id
}

/// `n` workspaces with one grant each, `(workspace, authorization)`, as soon as they are made.
pub async fn tenants(e: &Engine, n: usize) -> Vec<(String, String)> {
    let mut tenants = Vec::with_capacity(n);
    for _ in 0..n {
        let ws = workspace(e).await;
        let auth = e.create_authorization(&ws, grant(None), None).await.unwrap().authorization.id;
        tenants.push((ws, auth));
    }
    tenants
}

/// `n` workspaces with one grant each, `(workspace, authorization)`, once every grant's receipt
/// is signed (`what` names the wait if it times out).
pub async fn signed_tenants(e: &Engine, n: usize, what: &str) -> Vec<(String, String)> {
    let tenants = tenants(e, n).await;
    for (ws, auth) in &tenants {
        eventually(what, || async { all_signed(e, ws, auth).await }).await;
    }
    tenants
}

pub fn grant(expires_at: Option<Timestamp>) -> NewAuthorization {
    NewAuthorization {
        subject: "user-42".into(),
        scopes: vec!["files.read".into(), "mail.*".into(), "pay.*".into()],
        resources: vec!["doc:*".into()],
        expires_at,
        metadata: Some(serde_json::json!({"app": "demo"})),
    }
}

/// A person's answer with no `shown` (an approver's, say), and `note` if given.
pub fn answer_by(by: &str, outcome: AnswerOutcome, note: Option<&str>) -> Answer {
    Answer { outcome, by: by.into(), shown: None, shown_hash: None, note: note.map(Into::into) }
}

pub fn ask(auth: &str, scope: &str, resource: Option<&str>) -> CheckRequest {
    CheckRequest {
        authorization_id: auth.into(),
        scopes: vec![scope.into()],
        resource: resource.map(Into::into),
        context: Some(serde_json::json!({"tool": "x"})),
    }
}

pub fn body(r: &AnyReceipt) -> ReceiptBody {
    ReceiptBody::from_json(r.body()).unwrap()
}

/// The typed body of an answer's pending receipt.
pub fn body_of(r: &PendingReceipt<RawBody>) -> ReceiptBody {
    ReceiptBody::from_json(&r.body.to_value().unwrap()).unwrap()
}

/// `n` allowed `files.read` checks of `doc:1` under `auth`, one after the other: their receipt ids.
pub async fn read_checks(e: &Engine, ws: &str, auth: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(e.check(ws, ask(auth, "files.read", Some("doc:1")), None).await.unwrap().receipt.unwrap().receipt_id);
    }
    ids
}

/// Receipt `id` of `ws`, once it is signed.
pub async fn eventually_signed(e: &Engine, ws: &str, id: &str) -> AnyReceipt {
    eventually("the receipt is signed", || async { matches!(e.receipt(ws, id), Ok(ReceiptView::Signed(_))) }).await;
    any(e.receipt(ws, id).unwrap())
}

pub async fn all_signed(e: &Engine, ws: &str, auth: &str) -> bool {
    let page = e.trail(ws, auth, None, 1000).unwrap();
    page.data.iter().all(|r| matches!(r, ReceiptView::Signed(_)))
}

pub fn any(v: ReceiptView) -> AnyReceipt {
    v.into_any().unwrap()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

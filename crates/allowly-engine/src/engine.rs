//! [`Engine`]: the engine's public face. Every method is what one API endpoint needs; the
//! server maps requests onto them and errors back to HTTP, and does nothing else.

use std::sync::Arc;

use allowly_signer_proto::client::SignerClient;
use allowly_store::Store;

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::model::*;

/// The engine. Cheap to clone (clones share everything).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    #[allow(dead_code)]
    store: Arc<dyn Store>,
    #[allow(dead_code)]
    signer: SignerClient,
    #[allow(dead_code)]
    cfg: EngineConfig,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn wip() -> EngineError {
    EngineError::Internal("not yet wired".into())
}

impl Engine {
    /// Starts the engine over `store`, talking to the signer through `signer`: starts the
    /// signing pipeline and the signer health probe, and schedules signing of every receipt a
    /// previous run left pending. Must be called inside a tokio runtime.
    pub async fn start(store: Arc<dyn Store>, signer: SignerClient, cfg: EngineConfig) -> Result<Self> {
        Ok(Self { inner: Arc::new(Inner { store, signer, cfg }) })
    }

    /// Stops taking work, finishes every decision in flight, signs what is pending (bounded by
    /// `EngineConfig::shutdown_timeout`), and stops the actors.
    pub async fn shutdown(&self) {}

    /// Readiness (`/readyz`): store usable and signer answering.
    pub fn readiness(&self) -> Readiness {
        Readiness { ready: false, signer: false, detail: Some("not yet wired".into()) }
    }

    /// Prometheus text exposition of the engine's metrics followed by the signer's own
    /// (re-exported; the signer has no port of its own). Signer metrics are omitted when the
    /// signer does not answer.
    pub async fn metrics_text(&self) -> String {
        String::new()
    }

    // ---- API keys -------------------------------------------------------------------------

    /// The caller behind a secret, or `None` when the secret is unknown, malformed or revoked.
    /// Looked up by SHA-256 of the secret (the secret itself is never stored).
    pub fn authenticate(&self, _secret: &str) -> Result<Option<Principal>> {
        Err(wip())
    }

    /// Creates the instance admin key (no workspace, role `admin`). The server calls this once
    /// at first start and writes the secret to a 0600 file.
    pub async fn create_admin_key(&self) -> Result<CreatedApiKey> {
        Err(wip())
    }

    /// Creates an API key for workspace `ws`.
    pub async fn create_api_key(&self, _ws: &str, _req: NewApiKey) -> Result<CreatedApiKey> {
        Err(wip())
    }

    /// Revokes API key `key_id` of workspace `ws` (NotFound if it is another workspace's).
    /// Revoking a revoked key is a Conflict.
    pub async fn revoke_api_key(&self, _ws: &str, _key_id: &str) -> Result<ApiKeyView> {
        Err(wip())
    }

    // ---- Workspaces -----------------------------------------------------------------------

    /// Creates a workspace and its signing key (in the signer).
    pub async fn create_workspace(&self, _req: NewWorkspace) -> Result<WorkspaceView> {
        Err(wip())
    }

    /// A workspace.
    pub fn workspace(&self, _ws: &str) -> Result<WorkspaceView> {
        Err(wip())
    }

    /// Replaces a workspace's scope rules.
    pub async fn set_scope_rules(&self, _ws: &str, _req: ScopeRules) -> Result<WorkspaceView> {
        Err(wip())
    }

    /// The workspace's public keys (every key it ever signed with, with validity windows).
    /// Public: needs no authentication. NotFound for an unknown workspace.
    pub fn keys(&self, _ws: &str) -> Result<allowly_receipt::types::KeySet> {
        Err(wip())
    }

    // ---- Authorizations and checks --------------------------------------------------------

    /// Records a user's grant; answers once its `authorization.created` receipt is durable.
    pub async fn create_authorization(&self, _ws: &str, _req: NewAuthorization) -> Result<AuthorizationChange> {
        Err(wip())
    }

    /// An authorization.
    pub fn authorization(&self, _ws: &str, _id: &str) -> Result<AuthorizationView> {
        Err(wip())
    }

    /// Revokes an authorization; answers once its revocation receipt is durable. Revoking a
    /// revoked authorization is a Conflict.
    pub async fn revoke_authorization(&self, _ws: &str, _id: &str) -> Result<AuthorizationChange> {
        Err(wip())
    }

    /// Decides a check; answers once its receipt is durable. Fails closed with
    /// `SignerUnavailable` while the signer does not answer.
    pub async fn check(&self, _ws: &str, _req: CheckRequest) -> Result<CheckOutcome> {
        Err(wip())
    }

    // ---- Receipts and the log -------------------------------------------------------------

    /// A receipt: signed (with a proof against the newest checkpoint) or still pending.
    pub fn receipt(&self, _ws: &str, _id: &str) -> Result<ReceiptView> {
        Err(wip())
    }

    /// An authorization's trail in `seq` order. `starting_after` is a cursor from a previous
    /// page; `limit` is clamped to 1..=1000.
    pub fn trail(
        &self,
        _ws: &str,
        _authorization_id: &str,
        _starting_after: Option<&str>,
        _limit: usize,
    ) -> Result<Page<ReceiptView>> {
        Err(wip())
    }

    /// The newest signed checkpoint (NotFound while nothing is signed).
    pub fn latest_checkpoint(&self, _ws: &str) -> Result<CheckpointView> {
        Err(wip())
    }

    /// Inclusion proof of leaf `log_index` in the tree of `tree_size` leaves (default: the
    /// newest checkpoint); `tree_size` must be the size of a stored checkpoint.
    pub fn inclusion_proof(&self, _ws: &str, _log_index: u64, _tree_size: Option<u64>) -> Result<InclusionProofView> {
        Err(wip())
    }

    /// Consistency proof from `old_size` to `new_size` (default: the newest checkpoint); both
    /// must be sizes of stored checkpoints.
    pub fn consistency_proof(&self, _ws: &str, _old_size: u64, _new_size: Option<u64>) -> Result<ConsistencyProofView> {
        Err(wip())
    }

    /// An evidence bundle (JSON Lines, `allowly-verify bundle` format): the workspace's keys,
    /// the newest checkpoint, and every receipt in scope with a proof against it (receipts not
    /// yet signed are included as pending).
    pub fn export(&self, _ws: &str, _scope: ExportScope) -> Result<Vec<u8>> {
        Err(wip())
    }
}

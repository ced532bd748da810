//! Workspace administration in the actor: API keys and the `Idempotency-Key` sweep. They go
//! through the actor so an `Idempotency-Key` on them is filed like any other (one record per
//! key and workspace, written with its effects) and concurrent changes of one key are
//! sequenced.

use allowly_store::{ApiKeyRecord, DocKind, Op, Role};

use super::{IdemDoc, StagedApiKey, WsState};
use crate::clock::now_ms;
use crate::error::{EngineError, Result};
use crate::ids::new_id;
use crate::model::ApiKeyView;
use crate::views;

impl WsState {
    /// The API key `id` of this workspace as of the staged state.
    fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        if let Some((k, _)) = self.staged_keys.get(id) {
            return Ok(Some(k.clone()));
        }
        let stored = match self.fetched_api_key(id) {
            Some(r) => r,
            None => self.shared.store.api_key_by_id(Some(&self.ws.id), id).map_err(EngineError::from),
        };
        match stored {
            Err(EngineError::Store(allowly_store::StoreError::InvalidId { .. })) => Ok(None),
            other => other,
        }
    }

    fn stage_key(&mut self, ops: &mut Vec<Op>, k: ApiKeyRecord) {
        self.staged_keys.insert(k.id.clone(), (k.clone(), self.group));
        ops.push(Op::PutApiKey(k));
    }

    pub(super) fn create_api_key(
        &mut self,
        roles: Vec<Role>,
        key_hash: [u8; 32],
        sealed_secret: Option<String>,
    ) -> Result<(Vec<Op>, Result<StagedApiKey>)> {
        let record = ApiKeyRecord {
            id: new_id("ak_")?,
            workspace_id: Some(self.ws.id.clone()),
            key_hash,
            roles,
            created_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        let key = views::api_key(&record)?;
        let mut ops = Vec::new();
        self.stage_key(&mut ops, record);
        Ok((ops, Ok(StagedApiKey { key, sealed_secret })))
    }

    /// Revokes an API key of this workspace; revoking a revoked key is a Conflict.
    pub(super) fn revoke_api_key(&mut self, id: &str) -> Result<(Vec<Op>, Result<ApiKeyView>)> {
        let Some(mut k) = self.api_key(id)? else { return Err(EngineError::NotFound { what: "API key" }) };
        if k.revoked_at_ms.is_some() {
            return Err(EngineError::Conflict("API key is already revoked".into()));
        }
        k.revoked_at_ms = Some(now_ms());
        let view = views::api_key(&k)?;
        let mut ops = Vec::new();
        self.stage_key(&mut ops, k);
        Ok((ops, Ok(view)))
    }

    /// Deletes those of `ids` that are still past their lifetime (one may have been filed
    /// again since the sweeper looked). Answers how many it deleted.
    pub(super) fn sweep_idempotency(&mut self, ids: Vec<String>) -> Result<(Vec<Op>, Result<usize>)> {
        let (now, ttl_ms) = (now_ms(), self.shared.cfg.idempotency_ttl_ms());
        let mut ops = Vec::new();
        for id in ids {
            match self.doc::<IdemDoc>(DocKind::Idempotency, &id)? {
                Some((d, false)) if !d.is_live(now, ttl_ms) => {
                    ops.push(Op::DeleteDoc { kind: DocKind::Idempotency, workspace_id: self.ws.id.clone(), id });
                }
                _ => {}
            }
        }
        let n = ops.len();
        Ok((ops, Ok(n)))
    }
}

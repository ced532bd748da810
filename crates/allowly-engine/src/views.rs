//! Stored records as the API shows them.

use allowly_store::{ApiKeyRecord, AuthorizationRecord, WorkspaceRecord};

use crate::clock::ts;
use crate::error::Result;
use crate::model::{ApiKeyView, AuthorizationStatus, AuthorizationView, WorkspaceView};

pub(crate) fn workspace(w: &WorkspaceRecord) -> Result<WorkspaceView> {
    Ok(WorkspaceView {
        id: w.id.clone(),
        name: w.name.clone(),
        created_at: ts(w.created_at_ms)?,
        scope_rules: w.scope_rules.clone(),
        rate_limit: w.rate_limit,
    })
}

pub(crate) fn api_key(k: &ApiKeyRecord) -> Result<ApiKeyView> {
    Ok(ApiKeyView {
        id: k.id.clone(),
        workspace_id: k.workspace_id.clone(),
        roles: k.roles.clone(),
        created_at: ts(k.created_at_ms)?,
        revoked_at: k.revoked_at_ms.map(ts).transpose()?,
    })
}

/// The authorization as of `now_ms` (its status depends on the clock).
pub(crate) fn authorization(a: &AuthorizationRecord, now_ms: u64) -> Result<AuthorizationView> {
    let status = if a.revoked_at_ms.is_some() {
        AuthorizationStatus::Revoked
    } else if a.expires_at_ms.is_some_and(|t| now_ms >= t) {
        AuthorizationStatus::Expired
    } else {
        AuthorizationStatus::Active
    };
    Ok(AuthorizationView {
        id: a.id.clone(),
        workspace_id: a.workspace_id.clone(),
        subject: a.subject.clone(),
        scopes: a.scopes.clone(),
        resources: a.resources.clone(),
        expires_at: a.expires_at_ms.map(ts).transpose()?,
        metadata: (!a.metadata.is_null()).then(|| a.metadata.clone()),
        created_at: ts(a.created_at_ms)?,
        revoked_at: a.revoked_at_ms.map(ts).transpose()?,
        status,
        trail_length: a.next_seq,
    })
}

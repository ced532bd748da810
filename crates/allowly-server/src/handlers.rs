//! One handler per route: each reads its request, makes one [`Engine`](allowly_engine::Engine)
//! call and writes the answer. The routing table that picks them is in [`crate::routes`]; the
//! authentication, access and rate-limit checks that run before every handler are there too, so
//! a handler receives a [`Cx`] whose caller is already allowed to make the call.

use allowly_engine::model::{
    AuthorizationFilter, AuthorizationStatus, CheckRequest, ConfirmationAnswer, ConfirmationStatus, CreatedApiKey,
    EscalationAnswer, EscalationStatus, ExportScope, HitlFilter, NewApiKey, NewAuthorization, NewWebhook, NewWorkspace,
    Principal, RateLimitSetting, ScopeRules,
};
use allowly_engine::{Engine, EngineError};
use allowly_receipt::types::Decision;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;

// The answer types the `#[utoipa::path]` annotations name.
use allowly_engine::model::{
    ApiKeyView, AuthorizationChange, AuthorizationView, CheckOutcome, CheckpointView, ConfirmationView,
    ConsistencyProofView, CreatedWebhook, DeliveryView, EscalationView, InclusionProofView, KeyRotation, Page,
    ReceiptView, Resolution, Resynced, ScopeRulesChange, WebhookView, WorkspaceView,
};
use allowly_receipt::types::KeySet;

use crate::app::App;
use crate::extract::{self, BodyLimits, Query};
use crate::problem::Problem;

pub type Resp = Response<Full<Bytes>>;

/// A request's body as a handler reads it.
pub(crate) enum RequestBody {
    /// As it arrives (checked for media type and size as it is read).
    Stream(Incoming),
    /// Read once already, and checked then (`routes::dispatch` runs a request again here
    /// after its owner could not be reached).
    Replay(Bytes),
}

/// What a handler gets: the request (its body not yet read), and what the routing and the
/// access check found out about it.
pub(crate) struct Cx<'r> {
    pub app: &'r App,
    pub parts: &'r Parts,
    /// Taken by the first read of the body.
    body: Option<RequestBody>,
    /// The body's bytes once read, in a cluster: kept for forwarding the request to the node
    /// that owns its workspace (`routes::dispatch`).
    read: &'r std::sync::OnceLock<Bytes>,
    pub limit: BodyLimits,
    /// The route's metric name (for the internal errors below).
    pub route: &'static str,
    /// The workspace the request acts on (the caller's, or `{ws}` for public routes).
    pub ws: Option<String>,
    /// `{id}` of the path.
    pub id: Option<&'r str>,
    /// The authenticated caller and the secret it presented (`None` on public routes).
    pub caller: Option<(Principal, &'r str)>,
    pub idem: Option<&'r str>,
}

impl<'r> Cx<'r> {
    pub(crate) fn new(
        app: &'r App,
        parts: &'r Parts,
        body: RequestBody,
        read: &'r std::sync::OnceLock<Bytes>,
        limit: BodyLimits,
        route: &'static str,
    ) -> Self {
        Self { app, parts, body: Some(body), read, limit, route, ws: None, id: None, caller: None, idem: None }
    }

    pub(crate) fn ws(&self) -> Result<&str, Problem> {
        self.ws.as_deref().ok_or_else(|| Problem::internal(format!("route {} has no workspace", self.route)))
    }

    pub(crate) fn id(&self) -> Result<&'r str, Problem> {
        self.id.ok_or_else(|| Problem::internal(format!("route {} has no id", self.route)))
    }

    pub(crate) fn caller(&self) -> Result<(&Principal, &'r str), Problem> {
        self.caller
            .as_ref()
            .map(|(p, s)| (p, *s))
            .ok_or_else(|| Problem::internal(format!("route {} is public", self.route)))
    }

    pub(crate) fn headers(&self) -> &'r HeaderMap {
        &self.parts.headers
    }

    pub(crate) fn query(&self, known: &[&str]) -> Result<Query, Problem> {
        Query::parse(self.parts.uri.query(), known)
    }

    /// Runs `f` — the request's store reads — with its workspace and `{id}` (empty where the
    /// route has none) off the async workers, answered within the engine's bound
    /// ([`Engine::read`]: 503 `read_timeout` past `--commit-timeout-ms`).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine, &str, &str) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, Problem> {
        let (ws, id) = (self.ws()?.to_owned(), self.id.unwrap_or_default().to_owned());
        Ok(self.app.engine.read(move |e| f(e, &ws, &id)).await?)
    }

    fn take_body(&mut self) -> Result<RequestBody, Problem> {
        self.body.take().ok_or_else(|| Problem::internal(format!("route {} read its body twice", self.route)))
    }

    pub(crate) async fn json_body<T: DeserializeOwned>(&mut self) -> Result<T, Problem> {
        let bytes = match self.take_body()? {
            RequestBody::Stream(body) => extract::json_bytes(self.headers(), body, self.limit).await?,
            RequestBody::Replay(bytes) => bytes,
        };
        self.keep_for_forwarding(&bytes);
        extract::parse_json(&bytes)
    }

    pub(crate) async fn optional_json_body<T: DeserializeOwned + Default>(&mut self) -> Result<T, Problem> {
        let bytes = match self.take_body()? {
            RequestBody::Stream(body) => extract::optional_json_bytes(self.headers(), body, self.limit).await?,
            RequestBody::Replay(bytes) => Some(bytes),
        };
        self.keep_for_forwarding(bytes.as_ref().unwrap_or(&Bytes::new()));
        match bytes {
            Some(bytes) if !bytes.is_empty() => extract::parse_json(&bytes),
            _ => Ok(T::default()),
        }
    }

    /// In a cluster, keeps the body's bytes for `routes::dispatch` to forward the request with
    /// (outside one nothing is forwarded: nothing kept).
    fn keep_for_forwarding(&self, bytes: &Bytes) {
        if self.app.forwarder.is_some() {
            let _ = self.read.set(bytes.clone());
        }
    }

    pub(crate) async fn empty_body(&mut self) -> Result<(), Problem> {
        self.optional_json_body::<extract::NoFields>().await.map(|_| ())
    }
}

/// `/readyz`: the engine's readiness, plus what the instance promises about its keys
/// (`separate_users`, `same_uid`: not isolated, development only, or `external`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Readyz {
    #[serde(flatten)]
    readiness: allowly_engine::model::Readiness,
    key_isolation: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process answers", body = Health)))]
pub(crate) async fn healthz(_cx: Cx<'_>) -> Result<Resp, Problem> {
    json(StatusCode::OK, &Health { status: "ok" })
}

/// `/healthz`: the process answers (nothing else is looked at).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    status: &'static str,
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "Ready", body = Readyz), (status = 503, description = "Not ready (the causes are listed)", body = Readyz)))]
pub(crate) async fn readyz(cx: Cx<'_>) -> Result<Resp, Problem> {
    let r = cx.app.engine.readiness();
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    // Informational: never changes readiness (a development instance is still ready).
    json(status, &Readyz { readiness: r, key_isolation: cx.app.key_isolation.label() })
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub(crate) async fn metrics(cx: Cx<'_>) -> Result<Resp, Problem> {
    if let Some(token) = &cx.app.metrics_token {
        token.check(cx.headers())?;
    }
    let text = cx.app.metrics.render(&cx.app.engine).await;
    Ok(with_type(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text.into_bytes()))
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops", responses((status = 200, description = "This document", body = Object)))]
pub(crate) async fn openapi(cx: Cx<'_>) -> Result<Resp, Problem> {
    json(StatusCode::OK, cx.app.openapi)
}

#[utoipa::path(post, path = "/v1/admin-key/rotate", tag = "admin", responses((status = 200, description = "The caller's key, replaced: the new secret is shown once", body = CreatedApiKey)))]
pub(crate) async fn admin_key_rotate(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    let (principal, secret) = cx.caller()?;
    let created = cx.app.engine.rotate_admin_key(principal, secret, cx.idem).await?;
    // The old key is already refused. The file follows; if it cannot be written the new
    // secret is still in this answer (and the error in the log). A keyed repeat from a
    // caller still live gets here too and writes the same secret again: harmless.
    if let Err(e) = crate::admin_token::replace(&cx.app.admin_token, &created.secret) {
        tracing::error!(path = %cx.app.admin_token.display(), error = %e, "the rotated instance admin key could not be written to its file: it is only in the answer to this request");
    }
    secret_answer(&created)
}

#[utoipa::path(post, path = "/v1/admin/backup", tag = "admin", responses((status = 201, description = "The staged backup", body = crate::backup::Staged)))]
pub(crate) async fn admin_backup(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    json(StatusCode::CREATED, &cx.app.backups.take().await.map_err(|e| Problem::from_backup(&e))?)
}

#[utoipa::path(get, path = "/v1/admin-keys", tag = "admin", responses((status = 200, description = "Every instance admin key (no secrets)", body = Page<ApiKeyView>)))]
pub(crate) async fn admin_key_list(cx: Cx<'_>) -> Result<Resp, Problem> {
    json(StatusCode::OK, &cx.app.engine.admin_keys().await?)
}

#[utoipa::path(post, path = "/v1/admin-keys/{id}/revoke", tag = "admin", params(("id" = String, Path, description = "Instance admin key id")), responses((status = 200, description = "The revoked key", body = ApiKeyView)))]
pub(crate) async fn admin_key_revoke(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    json(StatusCode::OK, &cx.app.engine.revoke_admin_key(cx.caller()?.0, cx.id()?, cx.idem).await?)
}

#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces", request_body = NewWorkspace, responses((status = 201, description = "The new workspace", body = WorkspaceView)))]
pub(crate) async fn workspace_create(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: NewWorkspace = cx.json_body().await?;
    let created = cx.app.engine.create_workspace(req, cx.idem).await?;
    let mut r = json(StatusCode::CREATED, &created)?;
    location(&mut r, &format!("/v1/workspaces/{}", created.id));
    Ok(r)
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}", tag = "workspaces", params(("ws" = String, Path, description = "Workspace id")), responses((status = 200, description = "The workspace", body = WorkspaceView)))]
pub(crate) async fn workspace_get(cx: Cx<'_>) -> Result<Resp, Problem> {
    json(StatusCode::OK, &cx.read(|e, ws, _| e.workspace(ws)).await?)
}

#[utoipa::path(put, path = "/v1/workspaces/{ws}/scope-rules", tag = "workspaces", request_body = ScopeRules, params(("ws" = String, Path, description = "Workspace id")), responses((status = 200, description = "The workspace with its new rules, and the receipt of the change (`scope_rules.changed`)", body = ScopeRulesChange)))]
pub(crate) async fn scope_rules_put(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: ScopeRules = cx.json_body().await?;
    json(StatusCode::OK, &cx.app.engine.set_scope_rules(cx.ws()?, req).await?)
}

#[utoipa::path(put, path = "/v1/workspaces/{ws}/rate-limit", tag = "workspaces", request_body = RateLimitSetting, params(("ws" = String, Path, description = "Workspace id")), responses((status = 200, description = "The workspace with its new rate limit", body = WorkspaceView)))]
pub(crate) async fn rate_limit_put(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: RateLimitSetting = cx.json_body().await?;
    let view = cx.app.engine.set_rate_limit(cx.ws()?, req).await;
    // Also after an error: the change may have been stored before it failed.
    cx.app.rate_limits.settings_changed();
    json(StatusCode::OK, &view?)
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/api-keys", tag = "workspaces", request_body = NewApiKey, params(("ws" = String, Path, description = "Workspace id")), responses((status = 201, description = "The new key: the only answer with its secret", body = CreatedApiKey)))]
pub(crate) async fn api_key_create(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: NewApiKey = cx.json_body().await?;
    let mut r = json(StatusCode::CREATED, &{
        let (principal, secret) = cx.caller()?;
        cx.app.engine.create_api_key(cx.ws()?, req, cx.idem, principal, secret).await?
    })?;
    // The only response that carries a secret: never cached.
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/api-keys/{key_id}/revoke", tag = "workspaces", params(("ws" = String, Path, description = "Workspace id"), ("key_id" = String, Path, description = "API key id")), responses((status = 200, description = "The revoked key", body = ApiKeyView)))]
pub(crate) async fn api_key_revoke(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    json(StatusCode::OK, &cx.app.engine.revoke_api_key(cx.ws()?, cx.id()?, cx.idem).await?)
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/keys", tag = "log", params(("ws" = String, Path, description = "Workspace id")), responses((status = 200, description = "Every public key the workspace ever signed with: all a verifier needs", body = KeySet)))]
pub(crate) async fn keys(cx: Cx<'_>) -> Result<Resp, Problem> {
    json(StatusCode::OK, &cx.read(|e, ws, _| e.keys(ws)).await?)
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/keys/rotate", tag = "log", params(("ws" = String, Path, description = "Workspace id")), responses((status = 200, description = "The new key set and the signed `key.rotated` receipt", body = KeyRotation)))]
pub(crate) async fn keys_rotate(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    json(StatusCode::OK, &cx.app.engine.rotate_workspace_key(cx.ws()?, cx.idem).await?)
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/log/checkpoint", tag = "log", params(("ws" = String, Path, description = "Workspace id")), responses((status = 200, description = "The newest signed checkpoint", body = CheckpointView)))]
pub(crate) async fn log_checkpoint(cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.query(&[])?;
    json(StatusCode::OK, &cx.read(|e, ws, _| e.latest_checkpoint(ws)).await?)
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/log/inclusion", tag = "log", params(("ws" = String, Path, description = "Workspace id"), ("log_index" = u64, Query, description = "Leaf index"), ("tree_size" = Option<u64>, Query, description = "Tree size (default: the newest signed)")), responses((status = 200, description = "RFC 9162 inclusion proof", body = InclusionProofView)))]
pub(crate) async fn log_inclusion(cx: Cx<'_>) -> Result<Resp, Problem> {
    let q = cx.query(&["log_index", "tree_size"])?;
    let (index, size) = (q.required_u64("log_index")?, q.u64("tree_size")?);
    json(StatusCode::OK, &cx.read(move |e, ws, _| e.inclusion_proof(ws, index, size)).await?)
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/log/consistency", tag = "log", params(("ws" = String, Path, description = "Workspace id"), ("old_size" = u64, Query, description = "The older tree size"), ("new_size" = Option<u64>, Query, description = "The newer tree size (default: the newest signed)")), responses((status = 200, description = "RFC 9162 consistency proof", body = ConsistencyProofView)))]
pub(crate) async fn log_consistency(cx: Cx<'_>) -> Result<Resp, Problem> {
    let q = cx.query(&["old_size", "new_size"])?;
    let (old, new) = (q.required_u64("old_size")?, q.u64("new_size")?);
    json(StatusCode::OK, &cx.read(move |e, ws, _| e.consistency_proof(ws, old, new)).await?)
}

#[utoipa::path(get, path = "/v1/workspaces/{ws}/log/export", tag = "log", params(("ws" = String, Path, description = "Workspace id"), ("from" = u64, Query, description = "First leaf"), ("to" = u64, Query, description = "One past the last leaf")), responses((status = 200, description = "Evidence bundle of log leaves [from, to), JSON Lines (docs/receipt-format.md)", body = String, content_type = "application/x-ndjson")))]
pub(crate) async fn log_export(cx: Cx<'_>) -> Result<Resp, Problem> {
    let q = cx.query(&["from", "to"])?;
    let scope = ExportScope::Log { from: q.required_u64("from")?, to: q.required_u64("to")? };
    export(&cx.app.engine, cx.ws()?, scope).await
}

#[utoipa::path(post, path = "/v1/workspaces/{ws}/log/resync", tag = "log", params(("ws" = String, Path, description = "Workspace id")), responses((status = 200, description = "What the resync found", body = Resynced)))]
pub(crate) async fn log_resync(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    json(StatusCode::OK, &cx.app.engine.resync_log(cx.ws()?).await?)
}

#[utoipa::path(post, path = "/v1/authorizations", tag = "authorizations", request_body = NewAuthorization, responses((status = 201, description = "The authorization and its durable `authorization.created` receipt", body = AuthorizationChange)))]
pub(crate) async fn authorization_create(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: NewAuthorization = cx.json_body().await?;
    let change = cx.app.engine.create_authorization(cx.ws()?, req, cx.idem).await?;
    let mut r = json(StatusCode::CREATED, &change)?;
    location(&mut r, &format!("/v1/authorizations/{}", change.authorization.id));
    Ok(r)
}

#[utoipa::path(get, path = "/v1/authorizations/{id}", tag = "authorizations", params(("id" = String, Path, description = "Authorization id")), responses((status = 200, description = "The authorization", body = AuthorizationView)))]
pub(crate) async fn authorization_get(cx: Cx<'_>) -> Result<Resp, Problem> {
    json(StatusCode::OK, &cx.read(|e, ws, id| e.authorization(ws, id)).await?)
}

#[utoipa::path(get, path = "/v1/authorizations", tag = "authorizations", params(("subject" = Option<String>, Query, description = "Only this subject's"), ("status" = Option<AuthorizationStatus>, Query, description = "Only those in this state"), ("limit" = Option<u64>, Query, description = "Page size, 1..=1000 (default 100)"), ("starting_after" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, description = "A page of authorizations, in id order", body = Page<AuthorizationView>)))]
pub(crate) async fn authorization_list(cx: Cx<'_>) -> Result<Resp, Problem> {
    let q = cx.query(&["subject", "status", "limit", "starting_after"])?;
    let status = match q.str("status") {
        None => None,
        Some("active") => Some(AuthorizationStatus::Active),
        Some("revoked") => Some(AuthorizationStatus::Revoked),
        Some("expired") => Some(AuthorizationStatus::Expired),
        Some(_) => return Err(Problem::invalid("query parameter `status` must be active, revoked or expired")),
    };
    let filter = AuthorizationFilter { subject: q.str("subject").map(str::to_owned), status };
    let limit = page_limit(q.u64("limit")?)?;
    let after = q.str("starting_after").map(str::to_owned);
    json(StatusCode::OK, &cx.read(move |e, ws, _| e.authorizations(ws, &filter, after.as_deref(), limit)).await?)
}

#[utoipa::path(post, path = "/v1/authorizations/{id}/revoke", tag = "authorizations", params(("id" = String, Path, description = "Authorization id")), responses((status = 200, description = "The revoked authorization and its revocation receipt", body = AuthorizationChange)))]
pub(crate) async fn authorization_revoke(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    json(StatusCode::OK, &cx.app.engine.revoke_authorization(cx.ws()?, cx.id()?, cx.idem).await?)
}

#[utoipa::path(get, path = "/v1/authorizations/{id}/export", tag = "authorizations", params(("id" = String, Path, description = "Authorization id")), responses((status = 200, description = "Evidence bundle of the authorization's trail, JSON Lines (docs/receipt-format.md)", body = String, content_type = "application/x-ndjson")))]
pub(crate) async fn authorization_export(cx: Cx<'_>) -> Result<Resp, Problem> {
    export(&cx.app.engine, cx.ws()?, ExportScope::Authorization(cx.id()?.to_owned())).await
}

#[utoipa::path(post, path = "/v1/check", tag = "decisions", request_body = CheckRequest, responses((status = 200, description = "The decision and its durable (not yet signed) receipt; a `confirm` answer's `confirmation.context` echoes the request's `context`: what to show the user", body = CheckOutcome)))]
pub(crate) async fn check(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: CheckRequest = cx.json_body().await?;
    // Kept for a `confirm` answer, which shows it to the user; a check without one clones
    // nothing (the engine keeps only its hash, in the receipt).
    let context = req.context.clone();
    let outcome = cx.app.engine.check(cx.ws()?, req, cx.idem).await?;
    match context {
        Some(context) if outcome.decision == Decision::Confirm => {
            let mut v = serde_json::to_value(&outcome)
                .map_err(|e| Problem::internal(format!("serializing the answer: {e}")))?;
            if let Some(c) = v.get_mut("confirmation").and_then(serde_json::Value::as_object_mut) {
                c.insert("context".to_owned(), context);
            }
            json(StatusCode::OK, &v)
        }
        _ => json(StatusCode::OK, &outcome),
    }
}

#[utoipa::path(post, path = "/v1/confirmations/{nonce}", tag = "decisions", request_body = ConfirmationAnswer, params(("nonce" = String, Path, description = "Confirmation nonce")), responses((status = 200, description = "The final decision and its receipt", body = Resolution)))]
pub(crate) async fn confirmation_answer(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: ConfirmationAnswer = cx.json_body().await?;
    json(StatusCode::OK, &cx.app.engine.confirm(cx.ws()?, cx.id()?, req, cx.idem).await?)
}

#[utoipa::path(get, path = "/v1/confirmations/{nonce}", tag = "decisions", params(("nonce" = String, Path, description = "Confirmation nonce"), ("wait" = Option<String>, Query, description = "Long-poll: answer as soon as the state changes, or after this long (`30s`, `500ms`; at most `--long-poll-max-ms`, 60 s by default)", pattern = "^[0-9]{1,9}(s|ms)$")), responses((status = 200, description = "The confirmation (with `wait`: as soon as it is no longer pending, or when the wait is over)", body = ConfirmationView)))]
pub(crate) async fn confirmation_get(cx: Cx<'_>) -> Result<Resp, Problem> {
    match long_poll(&cx)? {
        Some(wait) => json(StatusCode::OK, &cx.app.engine.wait_confirmation(cx.ws()?, cx.id()?, wait).await?),
        None => json(StatusCode::OK, &cx.read(|e, ws, nonce| e.confirmation(ws, nonce)).await?),
    }
}

#[utoipa::path(get, path = "/v1/confirmations", tag = "decisions", params(("status" = Option<ConfirmationStatus>, Query, description = "Only those in this state (`pending`: the approver inbox)"), ("authorization_id" = Option<String>, Query, description = "Only those opened by checks of this authorization"), ("scope" = Option<String>, Query, description = "Only those whose check asked for this scope"), ("limit" = Option<u64>, Query, description = "Page size, 1..=1000 (default 100)"), ("starting_after" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, description = "A page of confirmations, in nonce order", body = Page<ConfirmationView>)))]
pub(crate) async fn confirmation_list(cx: Cx<'_>) -> Result<Resp, Problem> {
    let q = cx.query(&["status", "authorization_id", "scope", "limit", "starting_after"])?;
    let status = match q.str("status") {
        None => None,
        Some("pending") => Some(ConfirmationStatus::Pending),
        Some("answered") => Some(ConfirmationStatus::Answered),
        Some("expired") => Some(ConfirmationStatus::Expired),
        Some(_) => return Err(Problem::invalid("query parameter `status` must be pending, answered or expired")),
    };
    let filter = hitl_filter(&q, status);
    let limit = page_limit(q.u64("limit")?)?;
    let after = q.str("starting_after").map(str::to_owned);
    json(StatusCode::OK, &cx.read(move |e, ws, _| e.confirmations(ws, &filter, after.as_deref(), limit)).await?)
}

#[utoipa::path(get, path = "/v1/escalations/{id}", tag = "decisions", params(("id" = String, Path, description = "Escalation id"), ("wait" = Option<String>, Query, description = "Long-poll: answer as soon as the state changes, or after this long (`30s`, `500ms`; at most `--long-poll-max-ms`, 60 s by default)", pattern = "^[0-9]{1,9}(s|ms)$")), responses((status = 200, description = "The escalation (with `wait`: as soon as it is resolved or expired, or when the wait is over)", body = EscalationView)))]
pub(crate) async fn escalation_get(cx: Cx<'_>) -> Result<Resp, Problem> {
    let (engine, ws, id) = (&cx.app.engine, cx.ws()?, cx.id()?);
    match long_poll(&cx)? {
        Some(wait) => json(StatusCode::OK, &engine.wait_escalation(ws, id, wait).await?),
        None => json(StatusCode::OK, &engine.escalation(ws, id).await?),
    }
}

#[utoipa::path(get, path = "/v1/escalations", tag = "decisions", params(("status" = Option<EscalationStatus>, Query, description = "Only those in this state (`pending`: the approver inbox; one past its expiry is not pending)"), ("authorization_id" = Option<String>, Query, description = "Only those opened by checks of this authorization"), ("scope" = Option<String>, Query, description = "Only those whose check asked for this scope"), ("limit" = Option<u64>, Query, description = "Page size, 1..=1000 (default 100)"), ("starting_after" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, description = "A page of escalations, in id order", body = Page<EscalationView>)))]
pub(crate) async fn escalation_list(cx: Cx<'_>) -> Result<Resp, Problem> {
    let q = cx.query(&["status", "authorization_id", "scope", "limit", "starting_after"])?;
    let status = match q.str("status") {
        None => None,
        Some("pending") => Some(EscalationStatus::Pending),
        Some("approved") => Some(EscalationStatus::Approved),
        // `denied`: the status's name before format 1.1, accepted like the answer's.
        Some("declined" | "denied") => Some(EscalationStatus::Declined),
        Some("expired") => Some(EscalationStatus::Expired),
        Some(_) => {
            return Err(Problem::invalid("query parameter `status` must be pending, approved, declined or expired"))
        }
    };
    let filter = hitl_filter(&q, status);
    let limit = page_limit(q.u64("limit")?)?;
    let after = q.str("starting_after").map(str::to_owned);
    json(StatusCode::OK, &cx.read(move |e, ws, _| e.escalations(ws, &filter, after.as_deref(), limit)).await?)
}

#[utoipa::path(post, path = "/v1/escalations/{id}/resolve", tag = "decisions", request_body = EscalationAnswer, params(("id" = String, Path, description = "Escalation id")), responses((status = 200, description = "The final decision and its receipt", body = Resolution)))]
pub(crate) async fn escalation_resolve(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: EscalationAnswer = cx.json_body().await?;
    json(StatusCode::OK, &cx.app.engine.resolve_escalation(cx.ws()?, cx.id()?, req, cx.idem).await?)
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewWebhook, responses((status = 201, description = "The endpoint: the only answer with its signing secret", body = CreatedWebhook)))]
pub(crate) async fn webhook_create(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: NewWebhook = cx.json_body().await?;
    let created = cx.app.engine.create_webhook(cx.ws()?, req, cx.idem).await?;
    let mut r = json(StatusCode::CREATED, &created)?;
    location(&mut r, &format!("/v1/webhooks/{}", created.webhook.id));
    // Carries the signing secret: never cached.
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", responses((status = 200, description = "Every webhook endpoint of the workspace", body = Page<WebhookView>)))]
pub(crate) async fn webhook_list(cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.query(&[])?;
    json(StatusCode::OK, &cx.read(|e, ws, _| e.webhooks(ws)).await?)
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")), responses((status = 200, description = "The endpoint", body = WebhookView)))]
pub(crate) async fn webhook_get(cx: Cx<'_>) -> Result<Resp, Problem> {
    json(StatusCode::OK, &cx.read(|e, ws, id| e.webhook(ws, id)).await?)
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/disable", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")), responses((status = 200, description = "The endpoint", body = WebhookView)))]
pub(crate) async fn webhook_disable(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    json(StatusCode::OK, &cx.app.engine.disable_webhook(cx.ws()?, cx.id()?, cx.idem).await?)
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")), responses((status = 200, description = "The endpoint", body = WebhookView)))]
pub(crate) async fn webhook_enable(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    json(StatusCode::OK, &cx.app.engine.enable_webhook(cx.ws()?, cx.id()?, cx.idem).await?)
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", request_body = Option<allowly_webhooks::RotateSecret>, params(("id" = String, Path, description = "Webhook id")), responses((status = 200, description = "The endpoint with its new secret (shown once)", body = CreatedWebhook)))]
pub(crate) async fn webhook_rotate_secret(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    let req: allowly_webhooks::RotateSecret = cx.optional_json_body().await?;
    let mut r = json(StatusCode::OK, &cx.app.engine.rotate_webhook_secret(cx.ws()?, cx.id()?, req, cx.idem).await?)?;
    // Carries the new signing secret: never cached.
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")), responses((status = 204, description = "Deleted; unfinished deliveries are cancelled")))]
pub(crate) async fn webhook_delete(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    cx.app.engine.delete_webhook(cx.ws()?, cx.id()?).await?;
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path, description = "Webhook id"), ("limit" = Option<u64>, Query, description = "Page size, 1..=1000 (default 100)"), ("starting_after" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, description = "A page of deliveries, newest first", body = Page<DeliveryView>)))]
pub(crate) async fn delivery_list(cx: Cx<'_>) -> Result<Resp, Problem> {
    let q = cx.query(&["limit", "starting_after"])?;
    let limit = page_limit(q.u64("limit")?)?;
    let after = q.str("starting_after").map(str::to_owned);
    json(StatusCode::OK, &cx.read(move |e, ws, id| e.deliveries(ws, id, after.as_deref(), limit)).await?)
}

#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "webhooks", params(("id" = String, Path, description = "Delivery id")), responses((status = 200, description = "The delivery", body = DeliveryView)))]
pub(crate) async fn delivery_get(cx: Cx<'_>) -> Result<Resp, Problem> {
    json(StatusCode::OK, &cx.read(|e, ws, id| e.delivery(ws, id)).await?)
}

#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", tag = "webhooks", params(("id" = String, Path, description = "Delivery id")), responses((status = 201, description = "A new delivery of the same event", body = DeliveryView)))]
pub(crate) async fn delivery_retry(mut cx: Cx<'_>) -> Result<Resp, Problem> {
    cx.empty_body().await?;
    let retried = cx.app.engine.retry_delivery(cx.ws()?, cx.id()?, cx.idem).await?;
    let mut r = json(StatusCode::CREATED, &retried)?;
    location(&mut r, &format!("/v1/deliveries/{}", retried.id));
    Ok(r)
}

#[utoipa::path(get, path = "/v1/receipts/{id}", tag = "receipts", params(("id" = String, Path, description = "Receipt id")), responses((status = 200, description = "The receipt, signed (with its inclusion proof and checkpoint) or still pending; a receipt whose checkpoint is signed but not yet cosigned by the server's witness quorum is pending with the header `Allowly-Pending-Reason: witness_quorum` (docs/witness.md)", body = ReceiptView)))]
pub(crate) async fn receipt_get(cx: Cx<'_>) -> Result<Resp, Problem> {
    let (view, reason) = cx.read(|e, ws, id| e.receipt_with_reason(ws, id)).await?;
    let mut r = json(StatusCode::OK, &view)?;
    if let Some(reason) = reason {
        r.headers_mut().insert(PENDING_REASON, HeaderValue::from_static(reason));
    }
    Ok(r)
}

/// Why a receipt is still pending, when the server knows more than "not signed yet".
const PENDING_REASON: http::HeaderName = http::HeaderName::from_static("allowly-pending-reason");

#[utoipa::path(get, path = "/v1/receipts", tag = "receipts", params(("authorization_id" = String, Query, description = "Whose trail"), ("limit" = Option<u64>, Query, description = "Page size, 1..=1000 (default 100)"), ("starting_after" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, description = "A page of an authorization's trail, in `seq` order", body = Page<ReceiptView>)))]
pub(crate) async fn receipt_list(cx: Cx<'_>) -> Result<Resp, Problem> {
    let q = cx.query(&["authorization_id", "limit", "starting_after"])?;
    let limit = page_limit(q.u64("limit")?)?;
    let (az, after) = (q.required_str("authorization_id")?.to_owned(), q.str("starting_after").map(str::to_owned));
    let page = cx.read(move |e, ws, _| e.trail(ws, &az, after.as_deref(), limit)).await?;
    json(StatusCode::OK, &page)
}

/// An answer that shows a secret: never cached.
pub(crate) fn secret_answer(created: &CreatedApiKey) -> Result<Resp, Problem> {
    let mut r = json(StatusCode::OK, created)?;
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The inbox filters of a list's query.
fn hitl_filter<S>(q: &Query, status: Option<S>) -> HitlFilter<S> {
    HitlFilter {
        status,
        authorization_id: q.str("authorization_id").map(str::to_owned),
        scope: q.str("scope").map(str::to_owned),
    }
}

/// `?wait=` of a long-poll: `<n>s` or `<n>ms` (the engine caps it at `--long-poll-max-ms`); `None` when
/// absent (a plain read).
fn long_poll(cx: &Cx<'_>) -> Result<Option<std::time::Duration>, Problem> {
    let q = cx.query(&["wait"])?;
    let Some(raw) = q.str("wait") else { return Ok(None) };
    let bad = || Problem::invalid("query parameter `wait` must be a duration like `30s` or `500ms`");
    let (digits, unit_ms) = match raw.strip_suffix("ms") {
        Some(d) => (d, 1),
        None => (raw.strip_suffix('s').ok_or_else(bad)?, 1000),
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ms = digits.parse::<u64>().map_err(|_| bad())?.saturating_mul(unit_ms);
    Ok(Some(std::time::Duration::from_millis(ms)))
}

/// A list's `limit` (default 100, 1..=1000).
fn page_limit(limit: Option<u64>) -> Result<usize, Problem> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid("query parameter `limit` must be within 1..=1000"));
    }
    Ok(limit as usize)
}

/// An evidence bundle as JSON Lines. Built off the async workers (it reads a whole trail or
/// log range from the store), answered 503 `read_timeout` past the export's own bound
/// ([`Engine::export_timeout`]: an export is long by nature).
async fn export(engine: &Engine, ws: &str, scope: ExportScope) -> Result<Resp, Problem> {
    let ws = ws.to_owned();
    let bytes = engine.read_within(engine.export_timeout(), move |e| e.export(&ws, scope)).await?;
    Ok(with_type(StatusCode::OK, "application/x-ndjson", bytes))
}

fn json(status: StatusCode, value: &impl Serialize) -> Result<Resp, Problem> {
    let bytes = serde_json::to_vec(value).map_err(|e| Problem::internal(format!("serializing the answer: {e}")))?;
    Ok(with_type(status, "application/json", bytes))
}

fn with_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn location(r: &mut Resp, path: &str) {
    if let Ok(v) = HeaderValue::from_str(path) {
        r.headers_mut().insert(LOCATION, v);
    }
}

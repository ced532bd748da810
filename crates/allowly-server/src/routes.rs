//! The routing table and the handlers: each maps one endpoint onto one [`Engine`] call and back.
//! No business logic lives here.
//!
//! | method | path | access | engine call |
//! |---|---|---|---|
//! | GET | `/healthz`, `/readyz`, `/metrics` | public (`/metrics`: the bearer token of `--metrics-token-file` if set) | `readiness`, `metrics_text` |
//! | POST | `/v1/workspaces` | instance admin | `create_workspace` → 201 |
//! | POST | `/v1/admin-key/rotate` | instance admin | `rotate_admin_key` (the caller's key replaced; the new secret shown once and written to `admin-token`; a keyed repeat bearing the revoked key gets the first answer: `replay_admin_key_rotation`) |
//! | GET | `/v1/admin-keys` | instance admin | `admin_keys` (every instance admin key, revoked ones too; no secrets) |
//! | POST | `/v1/admin-keys/{id}/revoke` | instance admin | `revoke_admin_key` (409 for the last one not revoked) |
//! | GET | `/v1/workspaces/{ws}` | instance admin or read | `workspace` |
//! | PUT | `/v1/workspaces/{ws}/scope-rules` | instance admin or admin | `set_scope_rules` |
//! | PUT | `/v1/workspaces/{ws}/rate-limit` | instance admin | `set_rate_limit` (each API key's request rate; a tenant must not raise its own) |
//! | POST | `/v1/workspaces/{ws}/api-keys` | instance admin or admin | `create_api_key` → 201 |
//! | POST | `/v1/workspaces/{ws}/api-keys/{key_id}/revoke` | instance admin or admin | `revoke_api_key` |
//! | GET | `/v1/workspaces/{ws}/keys` | public | `keys` |
//! | POST | `/v1/workspaces/{ws}/keys/rotate` | instance admin or admin | `rotate_workspace_key` (new key set + the signed `key.rotated` receipt) |
//! | GET | `/v1/workspaces/{ws}/log/checkpoint` | read | `latest_checkpoint` |
//! | GET | `/v1/workspaces/{ws}/log/inclusion?log_index=N[&tree_size=M]` | read | `inclusion_proof` |
//! | GET | `/v1/workspaces/{ws}/log/consistency?old_size=N[&new_size=M]` | read | `consistency_proof` |
//! | GET | `/v1/workspaces/{ws}/log/export?from=N&to=M` | read | `export` (ndjson) |
//! | POST | `/v1/admin/backup` | instance admin | `backup::Backups::take` (201: the staged backup, for `allowly backup`) |
//! | POST | `/v1/workspaces/{ws}/log/resync` | instance admin | `resync_log` (recovery of a `workspace_log_diverged` workspace; 409 while the logs still disagree) |
//! | POST | `/v1/authorizations` | admin | `create_authorization` → 201 |
//! | GET | `/v1/authorizations[?subject=…][&status=active\|revoked\|expired][&limit=…][&starting_after=…]` | read | `authorizations` (id order) |
//! | GET | `/v1/authorizations/{id}` | read | `authorization` |
//! | POST | `/v1/authorizations/{id}/revoke` | admin | `revoke_authorization` |
//! | GET | `/v1/authorizations/{id}/export` | read | `export` (ndjson) |
//! | POST | `/v1/check` | check | `check` |
//! | GET | `/v1/receipts?authorization_id=…[&limit=…][&starting_after=…]` | read | `trail` |
//! | GET | `/v1/receipts/{id}` | read | `receipt` |
//! | GET | `/v1/confirmations/{nonce}` | read | `confirmation` |
//! | POST | `/v1/confirmations/{nonce}` | admin | `confirm` |
//! | GET | `/v1/escalations/{id}` | read | `escalation` |
//! | POST | `/v1/escalations/{id}/resolve` | admin | `resolve_escalation` |
//! | POST | `/v1/webhooks` | admin | `create_webhook` → 201 (the only answer with the secret) |
//! | GET | `/v1/webhooks` | read | `webhooks` |
//! | GET | `/v1/webhooks/{id}` | read | `webhook` |
//! | POST | `/v1/webhooks/{id}/disable` | admin | `disable_webhook` |
//! | POST | `/v1/webhooks/{id}/enable` | admin | `enable_webhook` |
//! | POST | `/v1/webhooks/{id}/rotate-secret` | admin | `rotate_webhook_secret` (new secret shown once; optional body `{"grace_period_ms"}`) |
//! | DELETE | `/v1/webhooks/{id}` | admin | `delete_webhook` → 204 (unfinished deliveries become `cancelled`) |
//! | GET | `/v1/webhooks/{id}/deliveries[?limit=…][&starting_after=…]` | read | `deliveries` (newest first) |
//! | GET | `/v1/deliveries/{id}` | read | `delivery` |
//! | POST | `/v1/deliveries/{id}/retry` | admin | `retry_delivery` → 201 (a new delivery of the same event) |
//!
//! Every request made with a workspace API key is first counted against that key's rate limit
//! (`ratelimit`): over it, `429 rate_limited` with `Retry-After`, before anything else is done.
//!
//! `Idempotency-Key` is honoured on every POST: a repeat with the same request gets the first
//! answer (24 h), with another request 422 (see `Engine` for how each is filed). Answering a confirmation or an escalation needs `admin` — the app's
//! backend — never `check`: an agent must not approve its own actions.
//!
//! Endpoints without `{ws}` act on the API key's workspace. Path ids outside
//! `[A-Za-z0-9_-]{1,128}` match nothing (404).

use allowly_engine::model::{
    AuthorizationFilter, AuthorizationStatus, CheckRequest, ConfirmationAnswer, CreatedApiKey, EscalationAnswer,
    ExportScope, NewApiKey, NewAuthorization, NewWebhook, NewWorkspace, RateLimitSetting, ScopeRules,
};
use allowly_engine::{Engine, EngineError};
use allowly_store::Role;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use crate::app::App;
use crate::auth::{self, Access};
use crate::extract::{self, valid_path_id, Query};
use crate::problem::Problem;

/// `/readyz`: the engine's readiness, plus what the instance promises about its keys
/// (`separate_users`, `same_uid`: not isolated, development only, or `external`).
#[derive(serde::Serialize)]
struct Readyz {
    #[serde(flatten)]
    readiness: allowly_engine::model::Readiness,
    key_isolation: &'static str,
}

/// Every endpoint, by template. The name is the `route` label of the HTTP metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    AdminKeyRotate,
    AdminBackup,
    AdminKeyRevoke,
    AdminKeyList,
    WorkspaceCreate,
    WorkspaceGet,
    ScopeRulesPut,
    RateLimitPut,
    ApiKeyCreate,
    ApiKeyRevoke,
    Keys,
    KeysRotate,
    LogCheckpoint,
    LogInclusion,
    LogConsistency,
    LogExport,
    LogResync,
    AuthorizationCreate,
    AuthorizationList,
    AuthorizationGet,
    AuthorizationRevoke,
    AuthorizationExport,
    Check,
    ReceiptGet,
    ReceiptList,
    ConfirmationAnswer,
    ConfirmationGet,
    EscalationGet,
    EscalationResolve,
    WebhookCreate,
    WebhookList,
    WebhookGet,
    WebhookDisable,
    WebhookEnable,
    WebhookRotateSecret,
    WebhookDelete,
    DeliveryList,
    DeliveryGet,
    DeliveryRetry,
    /// No route matched (404) or the method did not (405).
    Unmatched,
}

impl Route {
    /// The metric label: a closed set.
    pub fn name(self) -> &'static str {
        match self {
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::AdminKeyRotate => "admin_key_rotate",
            Self::AdminBackup => "admin_backup",
            Self::AdminKeyRevoke => "admin_key_revoke",
            Self::AdminKeyList => "admin_key_list",
            Self::WorkspaceCreate => "workspace_create",
            Self::WorkspaceGet => "workspace_get",
            Self::ScopeRulesPut => "scope_rules_put",
            Self::RateLimitPut => "rate_limit_put",
            Self::ApiKeyCreate => "api_key_create",
            Self::ApiKeyRevoke => "api_key_revoke",
            Self::Keys => "keys",
            Self::KeysRotate => "keys_rotate",
            Self::LogCheckpoint => "log_checkpoint",
            Self::LogInclusion => "log_inclusion",
            Self::LogConsistency => "log_consistency",
            Self::LogExport => "log_export",
            Self::LogResync => "log_resync",
            Self::AuthorizationCreate => "authorization_create",
            Self::AuthorizationList => "authorization_list",
            Self::AuthorizationGet => "authorization_get",
            Self::AuthorizationRevoke => "authorization_revoke",
            Self::AuthorizationExport => "authorization_export",
            Self::Check => "check",
            Self::ReceiptGet => "receipt_get",
            Self::ReceiptList => "receipt_list",
            Self::ConfirmationAnswer => "confirmation_answer",
            Self::ConfirmationGet => "confirmation_get",
            Self::EscalationGet => "escalation_get",
            Self::EscalationResolve => "escalation_resolve",
            Self::WebhookCreate => "webhook_create",
            Self::WebhookList => "webhook_list",
            Self::WebhookGet => "webhook_get",
            Self::WebhookDisable => "webhook_disable",
            Self::WebhookEnable => "webhook_enable",
            Self::WebhookRotateSecret => "webhook_rotate_secret",
            Self::WebhookDelete => "webhook_delete",
            Self::DeliveryList => "delivery_list",
            Self::DeliveryGet => "delivery_get",
            Self::DeliveryRetry => "delivery_retry",
            Self::Unmatched => "unmatched",
        }
    }

    /// Who may call it.
    pub fn access(self) -> Access {
        match self {
            Self::Healthz | Self::Readyz | Self::Metrics | Self::Keys | Self::Unmatched => Access::Public,
            Self::AdminKeyRotate
            | Self::AdminKeyRevoke
            | Self::AdminKeyList
            | Self::AdminBackup
            | Self::WorkspaceCreate
            | Self::RateLimitPut
            | Self::LogResync => Access::InstanceAdmin,
            Self::WorkspaceGet => Access::InstanceAdminOr(Role::Read),
            Self::ScopeRulesPut | Self::ApiKeyCreate | Self::ApiKeyRevoke | Self::KeysRotate => {
                Access::InstanceAdminOr(Role::Admin)
            }
            Self::LogCheckpoint
            | Self::LogInclusion
            | Self::LogConsistency
            | Self::LogExport
            | Self::AuthorizationGet
            | Self::AuthorizationList
            | Self::AuthorizationExport
            | Self::ReceiptGet
            | Self::ReceiptList
            | Self::EscalationGet
            | Self::ConfirmationGet
            | Self::WebhookList
            | Self::WebhookGet
            | Self::DeliveryList
            | Self::DeliveryGet => Access::Workspace(Role::Read),
            Self::AuthorizationCreate
            | Self::AuthorizationRevoke
            | Self::ConfirmationAnswer
            | Self::EscalationResolve
            | Self::WebhookCreate
            | Self::WebhookDisable
            | Self::WebhookEnable
            | Self::WebhookRotateSecret
            | Self::WebhookDelete
            | Self::DeliveryRetry => Access::Workspace(Role::Admin),
            Self::Check => Access::Workspace(Role::Check),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    Get,
    Post,
    Put,
    Delete,
}

impl M {
    fn of(m: &Method) -> Option<Self> {
        if m == Method::GET {
            Some(Self::Get)
        } else if m == Method::POST {
            Some(Self::Post)
        } else if m == Method::PUT {
            Some(Self::Put)
        } else if m == Method::DELETE {
            Some(Self::Delete)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }
}

/// A matched request: its route and the ids in its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub route: Route,
    /// `{ws}`.
    pub ws: Option<&'a str>,
    /// `{key_id}`, or the authorization or receipt `{id}`.
    pub id: Option<&'a str>,
}

/// Outcome of routing.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<'a> {
    Found(Target<'a>),
    /// The path exists; these are its methods (the `Allow` header).
    MethodNotAllowed(String),
    NotFound,
}

/// The routing table: path shape → the methods it answers.
pub fn match_route<'a>(method: &Method, path: &'a str) -> Matched<'a> {
    use M::*;
    let Some(rest) = path.strip_prefix('/') else { return Matched::NotFound };
    let segs: Vec<&str> = rest.split('/').collect();
    let (methods, ws, id): (&[(M, Route)], _, _) = match segs.as_slice() {
        ["healthz"] => (&[(Get, Route::Healthz)], None, None),
        ["readyz"] => (&[(Get, Route::Readyz)], None, None),
        ["metrics"] => (&[(Get, Route::Metrics)], None, None),
        ["v1", "admin-key", "rotate"] => (&[(Post, Route::AdminKeyRotate)], None, None),
        ["v1", "admin", "backup"] => (&[(Post, Route::AdminBackup)], None, None),
        ["v1", "admin-keys"] => (&[(Get, Route::AdminKeyList)], None, None),
        ["v1", "admin-keys", id, "revoke"] => (&[(Post, Route::AdminKeyRevoke)], None, Some(*id)),
        ["v1", "workspaces"] => (&[(Post, Route::WorkspaceCreate)], None, None),
        ["v1", "workspaces", ws] => (&[(Get, Route::WorkspaceGet)], Some(*ws), None),
        ["v1", "workspaces", ws, "scope-rules"] => (&[(Put, Route::ScopeRulesPut)], Some(*ws), None),
        ["v1", "workspaces", ws, "rate-limit"] => (&[(Put, Route::RateLimitPut)], Some(*ws), None),
        ["v1", "workspaces", ws, "api-keys"] => (&[(Post, Route::ApiKeyCreate)], Some(*ws), None),
        ["v1", "workspaces", ws, "api-keys", key, "revoke"] => (&[(Post, Route::ApiKeyRevoke)], Some(*ws), Some(*key)),
        ["v1", "workspaces", ws, "keys"] => (&[(Get, Route::Keys)], Some(*ws), None),
        ["v1", "workspaces", ws, "keys", "rotate"] => (&[(Post, Route::KeysRotate)], Some(*ws), None),
        ["v1", "workspaces", ws, "log", "checkpoint"] => (&[(Get, Route::LogCheckpoint)], Some(*ws), None),
        ["v1", "workspaces", ws, "log", "inclusion"] => (&[(Get, Route::LogInclusion)], Some(*ws), None),
        ["v1", "workspaces", ws, "log", "consistency"] => (&[(Get, Route::LogConsistency)], Some(*ws), None),
        ["v1", "workspaces", ws, "log", "export"] => (&[(Get, Route::LogExport)], Some(*ws), None),
        ["v1", "workspaces", ws, "log", "resync"] => (&[(Post, Route::LogResync)], Some(*ws), None),
        ["v1", "authorizations"] => {
            (&[(Post, Route::AuthorizationCreate), (Get, Route::AuthorizationList)], None, None)
        }
        ["v1", "authorizations", id] => (&[(Get, Route::AuthorizationGet)], None, Some(*id)),
        ["v1", "authorizations", id, "revoke"] => (&[(Post, Route::AuthorizationRevoke)], None, Some(*id)),
        ["v1", "authorizations", id, "export"] => (&[(Get, Route::AuthorizationExport)], None, Some(*id)),
        ["v1", "check"] => (&[(Post, Route::Check)], None, None),
        ["v1", "receipts"] => (&[(Get, Route::ReceiptList)], None, None),
        ["v1", "receipts", id] => (&[(Get, Route::ReceiptGet)], None, Some(*id)),
        ["v1", "confirmations", nonce] => {
            (&[(Post, Route::ConfirmationAnswer), (Get, Route::ConfirmationGet)], None, Some(*nonce))
        }
        ["v1", "escalations", id] => (&[(Get, Route::EscalationGet)], None, Some(*id)),
        ["v1", "escalations", id, "resolve"] => (&[(Post, Route::EscalationResolve)], None, Some(*id)),
        ["v1", "webhooks"] => (&[(Post, Route::WebhookCreate), (Get, Route::WebhookList)], None, None),
        ["v1", "webhooks", id] => (&[(Get, Route::WebhookGet), (Delete, Route::WebhookDelete)], None, Some(*id)),
        ["v1", "webhooks", id, "disable"] => (&[(Post, Route::WebhookDisable)], None, Some(*id)),
        ["v1", "webhooks", id, "enable"] => (&[(Post, Route::WebhookEnable)], None, Some(*id)),
        ["v1", "webhooks", id, "rotate-secret"] => (&[(Post, Route::WebhookRotateSecret)], None, Some(*id)),
        ["v1", "webhooks", id, "deliveries"] => (&[(Get, Route::DeliveryList)], None, Some(*id)),
        ["v1", "deliveries", id] => (&[(Get, Route::DeliveryGet)], None, Some(*id)),
        ["v1", "deliveries", id, "retry"] => (&[(Post, Route::DeliveryRetry)], None, Some(*id)),
        _ => return Matched::NotFound,
    };
    if ws.is_some_and(|s| !valid_path_id(s)) || id.is_some_and(|s| !valid_path_id(s)) {
        return Matched::NotFound;
    }
    match M::of(method).and_then(|m| methods.iter().find(|(mm, _)| *mm == m)) {
        Some(&(_, route)) => Matched::Found(Target { route, ws, id }),
        None => Matched::MethodNotAllowed(methods.iter().map(|(m, _)| m.name()).collect::<Vec<_>>().join(", ")),
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        Problem::from_engine(&e)
    }
}

type Resp = Response<Full<Bytes>>;

/// An answer that shows a secret: never cached.
fn secret_answer(created: &CreatedApiKey) -> Result<Resp, Problem> {
    let mut r = json(StatusCode::OK, created)?;
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `POST /v1/admin-key/rotate` from a key the server does not accept: the repeat of a keyed
/// rotation whose answer was lost bears the key that rotation revoked, and gets the first
/// answer (`Engine::replay_admin_key_rotation`); anything else is the usual 401. The token
/// file is not written again: it may hold a newer key by now.
async fn replay_admin_key_rotation(
    app: &App,
    parts: &Parts,
    body: Incoming,
    limit: extract::BodyLimits,
    secret: &str,
) -> Result<Resp, Problem> {
    let unauthenticated = || Problem::unauthenticated("unknown or revoked API key");
    let Some(key) = extract::idempotency_key(&parts.headers)? else { return Err(unauthenticated()) };
    let first = app.engine.replay_admin_key_rotation(secret, key).await?.ok_or_else(unauthenticated)?;
    // The same request has no body, as the first one had.
    extract::empty_body(&parts.headers, body, limit).await?;
    secret_answer(&first)
}

/// Routes and answers one request; returns the route (for metrics) and the response.
/// `read_deadline`: when the request (head and body) must have arrived.
pub async fn dispatch(
    app: &App,
    req: hyper::Request<Incoming>,
    request_id: &str,
    read_deadline: tokio::time::Instant,
) -> (Route, Resp) {
    let (parts, body) = req.into_parts();
    let target = match match_route(&parts.method, parts.uri.path()) {
        Matched::Found(t) => t,
        Matched::MethodNotAllowed(allow) => {
            return (Route::Unmatched, Problem::method_not_allowed(allow).into_response(request_id))
        }
        Matched::NotFound => return (Route::Unmatched, Problem::not_found().into_response(request_id)),
    };
    let resp = match handle(app, target, &parts, body, read_deadline).await {
        Ok(r) => r,
        Err(p) => p.into_response(request_id),
    };
    (target.route, resp)
}

async fn handle(
    app: &App,
    t: Target<'_>,
    parts: &Parts,
    body: Incoming,
    read_deadline: tokio::time::Instant,
) -> Result<Resp, Problem> {
    let engine = &app.engine;
    let access = t.route.access();
    let limit = extract::BodyLimits {
        size: app.body_limit,
        deadline: read_deadline,
        timeout: app.connections.limits().read_timeout,
    };
    let mut caller = None;
    let ws = if access == Access::Public {
        t.ws.map(str::to_owned)
    } else {
        let secret = auth::bearer(&parts.headers)?;
        let Some(principal) = engine.authenticate(secret)? else {
            if t.route == Route::AdminKeyRotate {
                return replay_admin_key_rotation(app, parts, body, limit, secret).await;
            }
            return Err(Problem::unauthenticated("unknown or revoked API key"));
        };
        rate_limit(app, &principal)?;
        let ws = auth::authorize(&principal, access, t.ws)?;
        caller = Some((principal, secret));
        ws
    };
    let caller = || caller.as_ref().ok_or_else(|| Problem::internal(format!("route {} is public", t.route.name())));
    let ws = || ws.as_deref().ok_or_else(|| Problem::internal(format!("route {} has no workspace", t.route.name())));
    let id = || t.id.ok_or_else(|| Problem::internal(format!("route {} has no id", t.route.name())));
    let h = &parts.headers;
    let query = |known: &[&str]| Query::parse(parts.uri.query(), known);
    let idem = extract::idempotency_key(h)?;

    match t.route {
        Route::Healthz => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        Route::Readyz => {
            let r = engine.readiness();
            let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            // Informational: never changes readiness (a development instance is still ready).
            json(status, &Readyz { readiness: r, key_isolation: app.key_isolation.label() })
        }
        Route::Metrics => {
            if let Some(token) = &app.metrics_token {
                token.check(h)?;
            }
            let text = app.metrics.render(engine).await;
            Ok(with_type(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text.into_bytes()))
        }
        Route::AdminKeyRotate => {
            extract::empty_body(h, body, limit).await?;
            let (principal, secret) = caller()?;
            let created = engine.rotate_admin_key(principal, secret, idem).await?;
            // The old key is already refused. The file follows; if it cannot be written the new
            // secret is still in this answer (and the error in the log). A keyed repeat from a
            // caller still live gets here too and writes the same secret again: harmless.
            if let Err(e) = crate::admin_token::replace(&app.admin_token, &created.secret) {
                tracing::error!(path = %app.admin_token.display(), error = %e, "the rotated instance admin key could not be written to its file: it is only in the answer to this request");
            }
            secret_answer(&created)
        }
        Route::AdminBackup => {
            extract::empty_body(h, body, limit).await?;
            json(StatusCode::CREATED, &app.backups.take().await.map_err(|e| Problem::from_backup(&e))?)
        }
        Route::AdminKeyList => json(StatusCode::OK, &engine.admin_keys().await?),
        Route::AdminKeyRevoke => {
            extract::empty_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.revoke_admin_key(&caller()?.0, id()?, idem).await?)
        }
        Route::WorkspaceCreate => {
            let req: NewWorkspace = extract::json_body(h, body, limit).await?;
            let created = engine.create_workspace(req, idem).await?;
            let mut r = json(StatusCode::CREATED, &created)?;
            location(&mut r, &format!("/v1/workspaces/{}", created.id));
            Ok(r)
        }
        Route::WorkspaceGet => json(StatusCode::OK, &engine.workspace(ws()?)?),
        Route::ScopeRulesPut => {
            let req: ScopeRules = extract::json_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.set_scope_rules(ws()?, req).await?)
        }
        Route::RateLimitPut => {
            let req: RateLimitSetting = extract::json_body(h, body, limit).await?;
            let view = engine.set_rate_limit(ws()?, req).await;
            // Also after an error: the change may have been stored before it failed.
            app.rate_limits.settings_changed();
            json(StatusCode::OK, &view?)
        }
        Route::ApiKeyCreate => {
            let req: NewApiKey = extract::json_body(h, body, limit).await?;
            let mut r = json(StatusCode::CREATED, &{
                let (principal, secret) = caller()?;
                engine.create_api_key(ws()?, req, idem, principal, secret).await?
            })?;
            // The only response that carries a secret: never cached.
            r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(r)
        }
        Route::ApiKeyRevoke => {
            extract::empty_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.revoke_api_key(ws()?, id()?, idem).await?)
        }
        Route::Keys => json(StatusCode::OK, &engine.keys(ws()?)?),
        Route::KeysRotate => {
            extract::empty_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.rotate_workspace_key(ws()?, idem).await?)
        }
        Route::LogCheckpoint => {
            query(&[])?;
            json(StatusCode::OK, &engine.latest_checkpoint(ws()?)?)
        }
        Route::LogInclusion => {
            let q = query(&["log_index", "tree_size"])?;
            json(StatusCode::OK, &engine.inclusion_proof(ws()?, q.required_u64("log_index")?, q.u64("tree_size")?)?)
        }
        Route::LogConsistency => {
            let q = query(&["old_size", "new_size"])?;
            json(StatusCode::OK, &engine.consistency_proof(ws()?, q.required_u64("old_size")?, q.u64("new_size")?)?)
        }
        Route::LogExport => {
            let q = query(&["from", "to"])?;
            let scope = ExportScope::Log { from: q.required_u64("from")?, to: q.required_u64("to")? };
            export(engine, ws()?, scope).await
        }
        Route::LogResync => {
            extract::empty_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.resync_log(ws()?).await?)
        }
        Route::AuthorizationCreate => {
            let req: NewAuthorization = extract::json_body(h, body, limit).await?;
            let change = engine.create_authorization(ws()?, req, idem).await?;
            let mut r = json(StatusCode::CREATED, &change)?;
            location(&mut r, &format!("/v1/authorizations/{}", change.authorization.id));
            Ok(r)
        }
        Route::AuthorizationGet => json(StatusCode::OK, &engine.authorization(ws()?, id()?)?),
        Route::AuthorizationList => {
            let q = query(&["subject", "status", "limit", "starting_after"])?;
            let status = match q.str("status") {
                None => None,
                Some("active") => Some(AuthorizationStatus::Active),
                Some("revoked") => Some(AuthorizationStatus::Revoked),
                Some("expired") => Some(AuthorizationStatus::Expired),
                Some(_) => return Err(Problem::invalid("query parameter `status` must be active, revoked or expired")),
            };
            let filter = AuthorizationFilter { subject: q.str("subject").map(str::to_owned), status };
            let limit = page_limit(q.u64("limit")?)?;
            json(StatusCode::OK, &engine.authorizations(ws()?, &filter, q.str("starting_after"), limit)?)
        }
        Route::AuthorizationRevoke => {
            extract::empty_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.revoke_authorization(ws()?, id()?, idem).await?)
        }
        Route::AuthorizationExport => export(engine, ws()?, ExportScope::Authorization(id()?.to_owned())).await,
        Route::Check => {
            let req: CheckRequest = extract::json_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.check(ws()?, req, idem).await?)
        }
        Route::ConfirmationAnswer => {
            let req: ConfirmationAnswer = extract::json_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.confirm(ws()?, id()?, req, idem).await?)
        }
        Route::ConfirmationGet => json(StatusCode::OK, &engine.confirmation(ws()?, id()?)?),
        Route::EscalationGet => json(StatusCode::OK, &engine.escalation(ws()?, id()?).await?),
        Route::EscalationResolve => {
            let req: EscalationAnswer = extract::json_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.resolve_escalation(ws()?, id()?, req, idem).await?)
        }
        Route::WebhookCreate => {
            let req: NewWebhook = extract::json_body(h, body, limit).await?;
            let created = engine.create_webhook(ws()?, req, idem).await?;
            let mut r = json(StatusCode::CREATED, &created)?;
            location(&mut r, &format!("/v1/webhooks/{}", created.webhook.id));
            // Carries the signing secret: never cached.
            r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(r)
        }
        Route::WebhookList => {
            query(&[])?;
            json(StatusCode::OK, &engine.webhooks(ws()?)?)
        }
        Route::WebhookGet => json(StatusCode::OK, &engine.webhook(ws()?, id()?)?),
        Route::WebhookDisable => {
            extract::empty_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.disable_webhook(ws()?, id()?, idem).await?)
        }
        Route::WebhookEnable => {
            extract::empty_body(h, body, limit).await?;
            json(StatusCode::OK, &engine.enable_webhook(ws()?, id()?, idem).await?)
        }
        Route::WebhookRotateSecret => {
            let req: allowly_webhooks::RotateSecret = extract::optional_json_body(h, body, limit).await?;
            let mut r = json(StatusCode::OK, &engine.rotate_webhook_secret(ws()?, id()?, req, idem).await?)?;
            // Carries the new signing secret: never cached.
            r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(r)
        }
        Route::WebhookDelete => {
            extract::empty_body(h, body, limit).await?;
            engine.delete_webhook(ws()?, id()?).await?;
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        Route::DeliveryList => {
            let q = query(&["limit", "starting_after"])?;
            let limit = page_limit(q.u64("limit")?)?;
            json(StatusCode::OK, &engine.deliveries(ws()?, id()?, q.str("starting_after"), limit)?)
        }
        Route::DeliveryGet => json(StatusCode::OK, &engine.delivery(ws()?, id()?)?),
        Route::DeliveryRetry => {
            extract::empty_body(h, body, limit).await?;
            let retried = engine.retry_delivery(ws()?, id()?, idem).await?;
            let mut r = json(StatusCode::CREATED, &retried)?;
            location(&mut r, &format!("/v1/deliveries/{}", retried.id));
            Ok(r)
        }
        Route::ReceiptGet => json(StatusCode::OK, &engine.receipt(ws()?, id()?)?),
        Route::ReceiptList => {
            let q = query(&["authorization_id", "limit", "starting_after"])?;
            let limit = page_limit(q.u64("limit")?)?;
            let page = engine.trail(ws()?, q.required_str("authorization_id")?, q.str("starting_after"), limit)?;
            json(StatusCode::OK, &page)
        }
        Route::Unmatched => Err(Problem::not_found()),
    }
}

/// Counts a request of a workspace API key against its rate limit (the instance admin key is
/// not limited: it is the operator's).
fn rate_limit(app: &App, principal: &allowly_engine::model::Principal) -> Result<(), Problem> {
    let Some(ws) = principal.workspace_id.as_deref() else { return Ok(()) };
    let setting = || match app.engine.workspace(ws) {
        Ok(view) => Ok(view.rate_limit),
        // A key whose workspace is gone: the default (its requests fail further on anyway).
        Err(EngineError::NotFound { .. }) => Ok(None),
        Err(e) => Err(Problem::from_engine(&e)),
    };
    match app.rate_limits.check(&principal.key_id, setting)? {
        Ok(()) => Ok(()),
        Err(limited) => {
            app.metrics.front.rate_limited.inc();
            Err(Problem::rate_limited(limited.retry_after))
        }
    }
}

/// A list's `limit` (default 100, 1..=1000).
fn page_limit(limit: Option<u64>) -> Result<usize, Problem> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid("query parameter `limit` must be within 1..=1000"));
    }
    Ok(limit as usize)
}

/// An evidence bundle as JSON Lines. Built off the async workers: it reads a whole trail or log
/// range from the store.
async fn export(engine: &Engine, ws: &str, scope: ExportScope) -> Result<Resp, Problem> {
    let (engine, ws) = (engine.clone(), ws.to_owned());
    let bytes = tokio::task::spawn_blocking(move || engine.export(&ws, scope))
        .await
        .map_err(|e| Problem::internal(format!("export task: {e}")))??;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, path: &str, expect: Matched<'_>) {
        assert_eq!(match_route(&method, path), expect, "{method} {path}");
    }

    fn found(route: Route, ws: Option<&'static str>, id: Option<&'static str>) -> Matched<'static> {
        Matched::Found(Target { route, ws, id })
    }

    #[test]
    fn the_table() {
        check(Method::GET, "/healthz", found(Route::Healthz, None, None));
        check(Method::POST, "/v1/workspaces", found(Route::WorkspaceCreate, None, None));
        check(Method::POST, "/v1/admin-key/rotate", found(Route::AdminKeyRotate, None, None));
        check(Method::POST, "/v1/admin-keys/ak_1/revoke", found(Route::AdminKeyRevoke, None, Some("ak_1")));
        check(Method::GET, "/v1/admin-keys", found(Route::AdminKeyList, None, None));
        check(Method::POST, "/v1/workspaces/ws_1/keys/rotate", found(Route::KeysRotate, Some("ws_1"), None));
        check(Method::GET, "/v1/workspaces/ws_1/keys/rotate", Matched::MethodNotAllowed("POST".into()));
        check(Method::GET, "/v1/workspaces/ws_1", found(Route::WorkspaceGet, Some("ws_1"), None));
        check(Method::PUT, "/v1/workspaces/ws_1/rate-limit", found(Route::RateLimitPut, Some("ws_1"), None));
        check(Method::GET, "/v1/workspaces/ws_1/rate-limit", Matched::MethodNotAllowed("PUT".into()));
        check(
            Method::POST,
            "/v1/workspaces/ws_1/api-keys/key_2/revoke",
            found(Route::ApiKeyRevoke, Some("ws_1"), Some("key_2")),
        );
        check(Method::GET, "/v1/workspaces/ws_1/log/export", found(Route::LogExport, Some("ws_1"), None));
        check(Method::POST, "/v1/workspaces/ws_1/log/resync", found(Route::LogResync, Some("ws_1"), None));
        check(Method::GET, "/v1/authorizations/az_1/export", found(Route::AuthorizationExport, None, Some("az_1")));
        check(Method::POST, "/v1/check", found(Route::Check, None, None));
        check(Method::GET, "/v1/authorizations", found(Route::AuthorizationList, None, None));
        check(Method::GET, "/v1/confirmations/cn_1", found(Route::ConfirmationGet, None, Some("cn_1")));
        check(Method::GET, "/v1/receipts", found(Route::ReceiptList, None, None));
        check(Method::GET, "/v1/receipts/rc_1", found(Route::ReceiptGet, None, Some("rc_1")));
        check(Method::POST, "/v1/webhooks", found(Route::WebhookCreate, None, None));
        check(Method::GET, "/v1/webhooks", found(Route::WebhookList, None, None));
        check(Method::GET, "/v1/webhooks/wh_1", found(Route::WebhookGet, None, Some("wh_1")));
        check(Method::POST, "/v1/webhooks/wh_1/disable", found(Route::WebhookDisable, None, Some("wh_1")));
        check(Method::POST, "/v1/webhooks/wh_1/enable", found(Route::WebhookEnable, None, Some("wh_1")));
        check(Method::GET, "/v1/webhooks/wh_1/deliveries", found(Route::DeliveryList, None, Some("wh_1")));
        check(Method::GET, "/v1/deliveries/dl_1", found(Route::DeliveryGet, None, Some("dl_1")));
        check(Method::DELETE, "/v1/webhooks", Matched::MethodNotAllowed("POST, GET".into()));
        check(Method::DELETE, "/v1/webhooks/wh_1", found(Route::WebhookDelete, None, Some("wh_1")));
        check(Method::PUT, "/v1/webhooks/wh_1", Matched::MethodNotAllowed("GET, DELETE".into()));
        check(Method::POST, "/v1/webhooks/wh_1/rotate-secret", found(Route::WebhookRotateSecret, None, Some("wh_1")));
        check(Method::GET, "/v1/webhooks/wh_1/rotate-secret", Matched::MethodNotAllowed("POST".into()));
        check(Method::POST, "/v1/deliveries/dl_1/retry", found(Route::DeliveryRetry, None, Some("dl_1")));
        check(Method::DELETE, "/v1/deliveries/dl_1", Matched::MethodNotAllowed("GET".into()));
    }

    #[test]
    fn misses() {
        check(Method::GET, "/v1/check", Matched::MethodNotAllowed("POST".into()));
        check(Method::DELETE, "/v1/workspaces/ws_1", Matched::MethodNotAllowed("GET".into()));
        check(Method::GET, "/v1/check/", Matched::NotFound);
        check(Method::GET, "/v1//check", Matched::NotFound);
        check(Method::GET, "/", Matched::NotFound);
        check(Method::GET, "", Matched::NotFound);
        check(Method::GET, "/v1/receipts/a.b", Matched::NotFound);
        check(Method::GET, "/v1/receipts/a%2Fb", Matched::NotFound);
        check(Method::GET, &format!("/v1/receipts/{}", "r".repeat(129)), Matched::NotFound);
        let long = "r".repeat(128);
        let target = Target { route: Route::ReceiptGet, ws: None, id: Some(long.as_str()) };
        check(Method::GET, &format!("/v1/receipts/{long}"), Matched::Found(target));
        // An invalid id is a 404 even with the wrong method.
        check(Method::DELETE, "/v1/workspaces/a.b", Matched::NotFound);
    }

    #[test]
    fn route_names_are_unique() {
        use Route::*;
        let all = [
            Healthz,
            Readyz,
            Metrics,
            AdminKeyRotate,
            AdminBackup,
            AdminKeyRevoke,
            AdminKeyList,
            WorkspaceCreate,
            WorkspaceGet,
            ScopeRulesPut,
            RateLimitPut,
            ApiKeyCreate,
            ApiKeyRevoke,
            Keys,
            KeysRotate,
            LogCheckpoint,
            LogInclusion,
            LogConsistency,
            LogExport,
            LogResync,
            AuthorizationCreate,
            AuthorizationList,
            AuthorizationGet,
            AuthorizationRevoke,
            AuthorizationExport,
            Check,
            ReceiptGet,
            ReceiptList,
            ConfirmationAnswer,
            ConfirmationGet,
            EscalationGet,
            EscalationResolve,
            WebhookCreate,
            WebhookList,
            WebhookGet,
            WebhookDisable,
            WebhookEnable,
            WebhookRotateSecret,
            WebhookDelete,
            DeliveryList,
            DeliveryGet,
            DeliveryRetry,
            Unmatched,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), all.len());
    }
}

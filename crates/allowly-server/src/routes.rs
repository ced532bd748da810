//! The routing table: each endpoint's route, who may call it, and the dispatch table that hands
//! it to its handler (one function per route, in [`crate::handlers`]). No business logic lives
//! here.
//!
//! | method | path | access | engine call |
//! |---|---|---|---|
//! | GET | `/healthz`, `/readyz`, `/metrics` | public (`/metrics`: the bearer token of `--metrics-token-file` if set) | `readiness`, `metrics_text` |
//! | GET | `/v1/openapi.json` | public | none: the OpenAPI document ([`crate::openapi`]) |
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
//! | GET | `/v1/confirmations[?status=pending\|answered\|expired][&authorization_id=…][&scope=…][&limit=…][&starting_after=…]` | read | `confirmations` (the approver inbox; nonce order) |
//! | GET | `/v1/confirmations/{nonce}[?wait=30s]` | read | `confirmation`, or with `wait` (`Ns` or `Nms`, at most `--long-poll-max-ms`) `wait_confirmation`: answers as soon as it is no longer pending |
//! | POST | `/v1/confirmations/{nonce}` | admin | `confirm` |
//! | GET | `/v1/escalations[?status=pending\|approved\|declined\|expired][&authorization_id=…][&scope=…][&limit=…][&starting_after=…]` | read | `escalations` (the approver inbox; id order) |
//! | GET | `/v1/escalations/{id}[?wait=30s]` | read | `escalation`, or with `wait` `wait_escalation` (as confirmations) |
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

use allowly_engine::error::Refusal;
use allowly_engine::EngineError;
use allowly_store::Role;
use http::request::Parts;
use http::Method;
use hyper::body::Incoming;

use crate::app::App;
use crate::auth::{self, Access};
use crate::extract::{self, valid_path_id};
use crate::forward::NotForwarded;
use crate::handlers::{self, Cx, RequestBody, Resp};
use crate::problem::{Exposure, Problem};

/// Declares [`Route`] and [`Route::ALL`] from one list, so a route cannot be left out of the
/// list the OpenAPI document is checked against.
macro_rules! routes {
    ($($route:ident),* $(,)?) => {
        /// Every endpoint, by template. The name is the `route` label of the HTTP metrics.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Route {
            $($route,)*
            /// No route matched (404) or the method did not (405).
            Unmatched,
        }

        impl Route {
            /// Every route that a request can match (not `Unmatched`).
            pub const ALL: &'static [Route] = &[$(Route::$route),*];
        }
    };
}

routes! {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
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
    ConfirmationList,
    EscalationGet,
    EscalationList,
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
}

impl Route {
    /// The metric label: a closed set.
    pub fn name(self) -> &'static str {
        match self {
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::OpenApi => "openapi",
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
            Self::ConfirmationList => "confirmation_list",
            Self::EscalationList => "escalation_list",
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
            Self::Healthz | Self::Readyz | Self::Metrics | Self::OpenApi | Self::Keys | Self::Unmatched => {
                Access::Public
            }
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
            | Self::ConfirmationList
            | Self::EscalationList
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

/// One route in the API description: its method and path template (parameters named as in
/// the table above), and the problem groups it meets beyond those its access and method imply
/// (see [`Route::problems`]).
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Lower case, as OpenAPI writes it.
    pub method: &'static str,
    pub path: &'static str,
    pub exposure: &'static [Exposure],
}

impl Route {
    /// Its entry in the API description (`None` for `Unmatched`). `match_route` must route
    /// `path` (any valid ids in it) with `method` here: a unit test checks every route.
    pub fn spec(self) -> Option<Spec> {
        use Exposure::*;
        const NONE: &[Exposure] = &[];
        const RECORDS: &[Exposure] = &[Records];
        const CHANGES: &[Exposure] = &[Records, Conflict];
        let (method, path, exposure): (_, _, &'static [Exposure]) = match self {
            Self::Healthz => ("get", "/healthz", NONE),
            Self::Readyz => ("get", "/readyz", NONE),
            Self::Metrics => ("get", "/metrics", &[MetricsToken]),
            Self::OpenApi => ("get", "/v1/openapi.json", NONE),
            Self::AdminKeyRotate => ("post", "/v1/admin-key/rotate", RECORDS),
            Self::AdminBackup => ("post", "/v1/admin/backup", &[Backup]),
            Self::AdminKeyRevoke => ("post", "/v1/admin-keys/{id}/revoke", CHANGES),
            Self::AdminKeyList => ("get", "/v1/admin-keys", NONE),
            Self::WorkspaceCreate => ("post", "/v1/workspaces", RECORDS),
            Self::WorkspaceGet => ("get", "/v1/workspaces/{ws}", NONE),
            Self::ScopeRulesPut => ("put", "/v1/workspaces/{ws}/scope-rules", RECORDS),
            Self::RateLimitPut => ("put", "/v1/workspaces/{ws}/rate-limit", RECORDS),
            Self::ApiKeyCreate => ("post", "/v1/workspaces/{ws}/api-keys", RECORDS),
            Self::ApiKeyRevoke => ("post", "/v1/workspaces/{ws}/api-keys/{key_id}/revoke", CHANGES),
            Self::Keys => ("get", "/v1/workspaces/{ws}/keys", NONE),
            Self::KeysRotate => ("post", "/v1/workspaces/{ws}/keys/rotate", CHANGES),
            Self::LogCheckpoint => ("get", "/v1/workspaces/{ws}/log/checkpoint", NONE),
            Self::LogInclusion => ("get", "/v1/workspaces/{ws}/log/inclusion", NONE),
            Self::LogConsistency => ("get", "/v1/workspaces/{ws}/log/consistency", NONE),
            Self::LogExport => ("get", "/v1/workspaces/{ws}/log/export", NONE),
            Self::LogResync => ("post", "/v1/workspaces/{ws}/log/resync", CHANGES),
            Self::AuthorizationCreate => ("post", "/v1/authorizations", RECORDS),
            Self::AuthorizationList => ("get", "/v1/authorizations", NONE),
            Self::AuthorizationGet => ("get", "/v1/authorizations/{id}", NONE),
            Self::AuthorizationRevoke => ("post", "/v1/authorizations/{id}/revoke", CHANGES),
            Self::AuthorizationExport => ("get", "/v1/authorizations/{id}/export", NONE),
            Self::Check => ("post", "/v1/check", RECORDS),
            Self::ReceiptGet => ("get", "/v1/receipts/{id}", NONE),
            Self::ReceiptList => ("get", "/v1/receipts", NONE),
            Self::ConfirmationAnswer => (
                "post",
                "/v1/confirmations/{nonce}",
                &[
                    Records,
                    Refused(Refusal::Conflict, "confirmation_used"),
                    Refused(Refusal::Expired, "confirmation_expired"),
                ],
            ),
            Self::ConfirmationGet => ("get", "/v1/confirmations/{nonce}", &[LongPoll]),
            Self::ConfirmationList => ("get", "/v1/confirmations", NONE),
            // A read that finds the escalation overdue records its expiry.
            Self::EscalationGet => ("get", "/v1/escalations/{id}", &[Records, LongPoll]),
            Self::EscalationList => ("get", "/v1/escalations", NONE),
            Self::EscalationResolve => (
                "post",
                "/v1/escalations/{id}/resolve",
                &[
                    Records,
                    Refused(Refusal::Conflict, "escalation_already_resolved"),
                    Refused(Refusal::Expired, "escalation_expired"),
                ],
            ),
            Self::WebhookCreate => {
                ("post", "/v1/webhooks", &[Records, Refused(Refusal::NotAllowed, "destination_not_allowed")])
            }
            Self::WebhookList => ("get", "/v1/webhooks", NONE),
            Self::WebhookGet => ("get", "/v1/webhooks/{id}", NONE),
            Self::WebhookDisable => ("post", "/v1/webhooks/{id}/disable", CHANGES),
            Self::WebhookEnable => ("post", "/v1/webhooks/{id}/enable", CHANGES),
            Self::WebhookRotateSecret => ("post", "/v1/webhooks/{id}/rotate-secret", CHANGES),
            Self::WebhookDelete => ("delete", "/v1/webhooks/{id}", RECORDS),
            Self::DeliveryList => ("get", "/v1/webhooks/{id}/deliveries", NONE),
            Self::DeliveryGet => ("get", "/v1/deliveries/{id}", NONE),
            Self::DeliveryRetry => (
                "post",
                "/v1/deliveries/{id}/retry",
                &[
                    Records,
                    Refused(Refusal::NotFound, "webhook_not_found"),
                    Refused(Refusal::Conflict, "webhook_disabled"),
                    Refused(Refusal::Conflict, "delivery_in_progress"),
                ],
            ),
            Self::Unmatched => return None,
        };
        Some(Spec { method, path, exposure })
    }

    /// Every problem a request of this route can be answered with: the groups its access and
    /// method imply, then those of its [`Spec`].
    pub fn problems(self) -> Vec<Problem> {
        let Some(spec) = self.spec() else { return Exposure::Any.problems() };
        let mut groups = vec![Exposure::Any, Exposure::Lookup];
        if self.access() != Access::Public {
            groups.push(Exposure::Authenticated);
        }
        if matches!(spec.method, "post" | "put") {
            groups.push(Exposure::Body);
        }
        if spec.method == "post" {
            groups.push(Exposure::Keyed);
        }
        groups.extend_from_slice(spec.exposure);
        groups.into_iter().flat_map(Exposure::problems).collect()
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
        ["v1", "openapi.json"] => (&[(Get, Route::OpenApi)], None, None),
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
        ["v1", "confirmations"] => (&[(Get, Route::ConfirmationList)], None, None),
        ["v1", "escalations"] => (&[(Get, Route::EscalationList)], None, None),
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

/// `POST /v1/admin-key/rotate` from a key the server does not accept: the repeat of a keyed
/// rotation whose answer was lost bears the key that rotation revoked, and gets the first
/// answer (`Engine::replay_admin_key_rotation`); anything else is the usual 401. The token
/// file is not written again: it may hold a newer key by now.
async fn replay_admin_key_rotation(mut cx: Cx<'_>, secret: &str) -> Result<Resp, Problem> {
    let unauthenticated = || Problem::unauthenticated("unknown or revoked API key");
    let Some(key) = extract::idempotency_key(cx.headers())? else { return Err(unauthenticated()) };
    let first = cx.app.engine.replay_admin_key_rotation(secret, key).await?.ok_or_else(unauthenticated)?;
    // The same request has no body, as the first one had.
    cx.empty_body().await?;
    handlers::secret_answer(&first)
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
    let read = std::sync::OnceLock::new();
    let resp = match handle(app, target, &parts, RequestBody::Stream(body), &read, read_deadline).await {
        Ok(r) => r,
        Err(mut p) => match p.take_forward() {
            Some(owner) => match forward(app, &parts, &read, &owner, request_id).await {
                Some(Ok(r)) => r,
                Some(Err(NotForwarded::Lost(lost))) => lost.into_response(request_id),
                Some(Err(NotForwarded::Unsent(unsent))) => {
                    again(app, target, &parts, &read, read_deadline, &owner, unsent, request_id).await
                }
                None => p.into_response(request_id),
            },
            None => p.into_response(request_id),
        },
    };
    (target.route, resp)
}

/// The owner this node knew of for the request's workspace is gone, and nothing reached it:
/// decided again here, once — the workspace's lease may be free (this node then takes it
/// over) — or sent to the owner the database names now. `unsent` is the answer if neither.
#[allow(clippy::too_many_arguments)] // one call site, the request's pieces
async fn again(
    app: &App,
    target: Target<'_>,
    parts: &Parts,
    read: &std::sync::OnceLock<bytes::Bytes>,
    read_deadline: tokio::time::Instant,
    gone: &str,
    unsent: Problem,
    request_id: &str,
) -> Resp {
    app.engine.forget_owner(gone);
    let body = read.get().cloned().unwrap_or_default();
    let read = std::sync::OnceLock::new();
    let mut p = match handle(app, target, parts, RequestBody::Replay(body), &read, read_deadline).await {
        Ok(r) => return r,
        Err(p) => p,
    };
    match p.take_forward() {
        Some(owner) if owner == gone => unsent.into_response(request_id),
        Some(owner) => match forward(app, parts, &read, &owner, request_id).await {
            Some(Ok(r)) => r,
            Some(Err(NotForwarded::Lost(p) | NotForwarded::Unsent(p))) => p.into_response(request_id),
            None => p.into_response(request_id),
        },
        None => p.into_response(request_id),
    }
}

/// In a cluster: sends a request the engine refused as another node's (`NotOwner`) to that
/// node, `owner` (see `forward.rs`). `None`: not forwarded — not in a cluster, forwarded here
/// already, or its body was not read before the refusal (never guessed) — and the refusal is
/// the answer.
async fn forward(
    app: &App,
    parts: &Parts,
    read: &std::sync::OnceLock<bytes::Bytes>,
    owner: &str,
    request_id: &str,
) -> Option<Result<Resp, NotForwarded>> {
    let forwarder = app.forwarder.as_ref()?;
    if crate::forward::Forwarder::was_forwarded(parts) {
        app.metrics.forwarded("already_forwarded");
        return None;
    }
    let body = match read.get() {
        Some(b) => b.clone(),
        None if extract::declares_body(&parts.headers) => return None,
        None => bytes::Bytes::new(),
    };
    Some(forwarder.forward(parts, body, owner, request_id).await)
}

/// What runs before every handler: authentication, the rate limit, the access rule; then the
/// route's handler.
async fn handle(
    app: &App,
    t: Target<'_>,
    parts: &Parts,
    body: RequestBody,
    read: &std::sync::OnceLock<bytes::Bytes>,
    read_deadline: tokio::time::Instant,
) -> Result<Resp, Problem> {
    let limit = extract::BodyLimits {
        size: app.body_limit,
        deadline: read_deadline,
        timeout: app.connections.limits().read_timeout,
    };
    let mut cx = Cx::new(app, parts, body, read, limit, t.route.name());
    let access = t.route.access();
    if access == Access::Public {
        cx.ws = t.ws.map(str::to_owned);
    } else {
        let secret = auth::bearer(&parts.headers)?;
        let known = match app.engine.cached_principal(secret) {
            Some(known) => known,
            // A key not cached yet: the store read runs off the async workers, within its bound.
            None => {
                let secret = secret.to_owned();
                app.engine.read(move |e| e.authenticate(&secret)).await?
            }
        };
        let Some(principal) = known else {
            if t.route == Route::AdminKeyRotate {
                return replay_admin_key_rotation(cx, secret).await;
            }
            return Err(Problem::unauthenticated("unknown or revoked API key"));
        };
        rate_limit(app, &principal).await?;
        cx.ws = auth::authorize(&principal, access, t.ws)?;
        cx.caller = Some((principal, secret));
    }
    cx.id = t.id;
    cx.idem = extract::idempotency_key(&parts.headers)?;
    run(t.route, cx).await
}

/// The dispatch table: each route to its handler (one function each, in [`handlers`]).
async fn run(route: Route, cx: Cx<'_>) -> Result<Resp, Problem> {
    use handlers as h;
    match route {
        Route::Healthz => h::healthz(cx).await,
        Route::Readyz => h::readyz(cx).await,
        Route::Metrics => h::metrics(cx).await,
        Route::OpenApi => h::openapi(cx).await,
        Route::AdminKeyRotate => h::admin_key_rotate(cx).await,
        Route::AdminBackup => h::admin_backup(cx).await,
        Route::AdminKeyList => h::admin_key_list(cx).await,
        Route::AdminKeyRevoke => h::admin_key_revoke(cx).await,
        Route::WorkspaceCreate => h::workspace_create(cx).await,
        Route::WorkspaceGet => h::workspace_get(cx).await,
        Route::ScopeRulesPut => h::scope_rules_put(cx).await,
        Route::RateLimitPut => h::rate_limit_put(cx).await,
        Route::ApiKeyCreate => h::api_key_create(cx).await,
        Route::ApiKeyRevoke => h::api_key_revoke(cx).await,
        Route::Keys => h::keys(cx).await,
        Route::KeysRotate => h::keys_rotate(cx).await,
        Route::LogCheckpoint => h::log_checkpoint(cx).await,
        Route::LogInclusion => h::log_inclusion(cx).await,
        Route::LogConsistency => h::log_consistency(cx).await,
        Route::LogExport => h::log_export(cx).await,
        Route::LogResync => h::log_resync(cx).await,
        Route::AuthorizationCreate => h::authorization_create(cx).await,
        Route::AuthorizationGet => h::authorization_get(cx).await,
        Route::AuthorizationList => h::authorization_list(cx).await,
        Route::AuthorizationRevoke => h::authorization_revoke(cx).await,
        Route::AuthorizationExport => h::authorization_export(cx).await,
        Route::Check => h::check(cx).await,
        Route::ConfirmationAnswer => h::confirmation_answer(cx).await,
        Route::ConfirmationGet => h::confirmation_get(cx).await,
        Route::ConfirmationList => h::confirmation_list(cx).await,
        Route::EscalationList => h::escalation_list(cx).await,
        Route::EscalationGet => h::escalation_get(cx).await,
        Route::EscalationResolve => h::escalation_resolve(cx).await,
        Route::WebhookCreate => h::webhook_create(cx).await,
        Route::WebhookList => h::webhook_list(cx).await,
        Route::WebhookGet => h::webhook_get(cx).await,
        Route::WebhookDisable => h::webhook_disable(cx).await,
        Route::WebhookEnable => h::webhook_enable(cx).await,
        Route::WebhookRotateSecret => h::webhook_rotate_secret(cx).await,
        Route::WebhookDelete => h::webhook_delete(cx).await,
        Route::DeliveryList => h::delivery_list(cx).await,
        Route::DeliveryGet => h::delivery_get(cx).await,
        Route::DeliveryRetry => h::delivery_retry(cx).await,
        Route::ReceiptGet => h::receipt_get(cx).await,
        Route::ReceiptList => h::receipt_list(cx).await,
        Route::Unmatched => Err(Problem::not_found()),
    }
}

/// Counts a request of a workspace API key against its rate limit (the instance admin key is
/// not limited: it is the operator's). The key's workspace's setting is read only when the key
/// is not tracked yet or a setting changed since — after a restart, on each key's first
/// request —, off the async workers and within the request's bound (`Engine::read`): read on
/// an async worker, it held every request sharing the worker while the data volume stalled.
async fn rate_limit(app: &App, principal: &allowly_engine::model::Principal) -> Result<(), Problem> {
    let Some(ws) = principal.workspace_id.as_deref() else { return Ok(()) };
    /// The check needs the setting, and it has not been read (or was used by a check a
    /// settings change made stale meanwhile: read again).
    struct Unread;
    let mut setting = None;
    loop {
        match app.rate_limits.check(&principal.key_id, || setting.take().ok_or(Unread)) {
            Err(Unread) => {
                let ws = ws.to_owned();
                let read = app.engine.read(move |e| match e.workspace(&ws) {
                    Ok(view) => Ok(view.rate_limit),
                    // A key whose workspace is gone: the default (its requests fail further on anyway).
                    Err(EngineError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                });
                setting = Some(read.await?);
            }
            Ok(Ok(())) => return Ok(()),
            Ok(Err(limited)) => {
                app.metrics.front.rate_limited.inc();
                return Err(Problem::rate_limited(limited.retry_after));
            }
        }
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
        check(Method::GET, "/v1/escalations", found(Route::EscalationList, None, None));
        check(Method::GET, "/v1/confirmations", found(Route::ConfirmationList, None, None));
        check(Method::POST, "/v1/escalations", Matched::MethodNotAllowed("GET".into()));
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
        let mut all = Route::ALL.to_vec();
        all.push(Route::Unmatched);
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), all.len());
    }
}

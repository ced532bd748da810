//! The one place errors become HTTP: RFC 9457 `application/problem+json` bodies with a stable
//! `code` and the request id, and the mapping of [`EngineError`] to a status.
//!
//! | code | status | when |
//! |---|---|---|
//! | `not_found` | 404 | no such route or object (another workspace's object included) |
//! | `method_not_allowed` | 405 | known path, other method (`Allow` lists the methods) |
//! | `unauthenticated` | 401 | missing, unknown or revoked API key (`WWW-Authenticate: Bearer`); on `/metrics` with `--metrics-token-file`, a missing or wrong token |
//! | `forbidden` | 403 | the key lacks the role the endpoint needs |
//! | `unsupported_media_type` | 415 | a body that is not `application/json` |
//! | `body_too_large` | 413 | a body over the configured limit |
//! | `malformed_json` | 400 | the body is not JSON |
//! | `unknown_field` | 400 | the body has a field the endpoint does not know |
//! | `invalid_request` | 400 | a field or query parameter has the wrong type, is missing, or is out of range |
//! | `destination_not_allowed` | 400 | a webhook URL whose host is a non-public IP literal (loopback, private, link-local, …) while the server does not allow private networks |
//! | `conflict` | 409 | the object's state forbids the change |
//! | `webhook_not_found` | 404 | retrying a delivery whose webhook endpoint was deleted |
//! | `webhook_disabled` | 409 | retrying a delivery whose webhook endpoint is disabled |
//! | `delivery_in_progress` | 409 | retrying a delivery that is still pending |
//! | `confirmation_used`, `escalation_already_resolved` | 409 | answered once already (a used nonce's attempt gets a `receipt`) |
//! | `confirmation_expired`, `escalation_expired` | 410 | too late; recorded as deny (`receipt` member) |
//! | `request_timeout` | 408 | the request's head and body did not arrive within `--request-read-timeout-ms` of its first byte; the connection is closed |
//! | `idempotency_key_reused` | 422 | the `Idempotency-Key` was used with a different request |
//! | `rate_limited` | 429 | the API key is over its rate limit (the workspace's, else the instance default); `Retry-After`: seconds until the next request would be accepted |
//! | `overloaded` | 429 | the workspace's queue is full, or `--max-pending-writes` requests are waiting for the committer while the volume is not slow (`Retry-After`) |
//! | `too_many_long_polls` | 503 | a long-poll (`GET /v1/escalations/{id}?wait=…`, the same for confirmations) while `--max-long-polls` already wait (`Retry-After`) |
//! | `too_many_connections` | 503 | a new connection from a client address that already has `--max-connections-per-address` open: written without reading the request, then the connection is closed; also written on a connection closed at the `--max-connections` cap before it sent a request (`Retry-After`) |
//! | `signer_unavailable` | 503 | the signer does not answer: decisions fail closed (`Retry-After`) |
//! | `shutting_down` | 503 | the server is stopping (`Retry-After`) |
//! | `storage_full` | 503 | the data volume is below `--min-free-disk`, or a store write found the device full: receipt-producing calls fail closed (`Retry-After`) |
//! | `storage_failed` | 503 | a store write failed with a device error; until a probe write succeeds, receipt-producing calls fail closed (`Retry-After`) |
//! | `storage_unavailable` | 503 | the database (PostgreSQL mode) could not be reached or did not answer in time; until a probe write succeeds, receipt-producing calls fail closed (`Retry-After`); a read answered so is safe to retry |
//! | `storage_slow` | 503 | synced store writes take longer than half of `--commit-timeout-ms` (one is running that long, or the last took that long): receipt-producing calls fail closed at once, nothing written, until a write is quick again; also a request refused because `--max-pending-writes` are waiting while the volume is slow (`Retry-After`) |
//! | `commit_timeout` | 503 | the request was not answered within `--commit-timeout-ms` (its workspace's queue and the synced write of its effects). Its outcome is **unknown**: it may still become durable. Retry with the same `Idempotency-Key` to get the first answer if it did, or a new decision if it did not — never two effects (`Retry-After`) |
//! | `read_timeout` | 503 | a store read the request needs (its API key on a cache miss, the object or page it asks for) was not done within `--commit-timeout-ms` (a slow or stalled data volume), or 256 reads already wait for the volume; nothing was changed (`Retry-After`) |
//! | `signer_token_unavailable` | 503 | the signer's PKCS#11 token failed the operation (the token is gone, a session or a signature failed, or the workspace's key object is missing from it): nothing was signed or changed, and the signer looks for the token again by itself (`Retry-After`) |
//! | `signer_storage_failed` | 503 | the signer answered several times in a row that it cannot write its journal (`Retry-After`) |
//! | `signing_backlog` | 503 | the oldest unsigned receipt is older than `--max-unsigned-age-ms` (`Retry-After`) |
//! | `workspace_log_diverged` | 503 | this workspace's receipt log disagrees with the signer's (fork, rollback, or receipts the signer refuses): it records nothing new until an operator resyncs it (`POST /v1/workspaces/{ws}/log/resync`); other workspaces are unaffected. No `Retry-After`: it does not pass by itself |
//! | `workspace_log_behind_signer` | 503 | found at start: the signer has signed more of this workspace's log than the store holds — receipts that were handed out are missing (a store restored from a backup older than the signer's state). Nothing new is recorded and `/readyz` is not ready; restore a newer backup (`docs/operations.md`, *Backup and restore*). No `Retry-After` |
//! | `workspace_log_catching_up` | 503 | found at start: the signer's log is behind the stored checkpoints (a restored backup) and is being re-fed the stored receipts; passes by itself (`Retry-After`) |
//! | `workspace_key_store_not_open` | 503 | the signer keeps this workspace's active key in a key store it does not open (sealed files while it serves a PKCS#11 token without `--signer-previous-keystore file`, or the reverse): a key rotation (`POST /v1/workspaces/{ws}/keys/rotate`, `allowly workspace-key migrate`) is refused and nothing is changed, and so is every request that would record a receipt in it once a signing round has met that store (the workspace alone; the first round that succeeds again lifts it); an operator restarts the signer with that key store as its previous one (`docs/operations.md`, *Moving keys*). No `Retry-After`: it does not pass by itself |
//! | `workspace_owned_elsewhere` | 503 | in a cluster (`--node-name`, docs/scale-out.md): another node owns the workspace and the request could not be forwarded to it (it did not answer, or the request was forwarded already), or this node's write was fenced because another node took the workspace over just now. Nothing was changed (`Retry-After`) |
//! | `backup_failed` | 500 | `POST /v1/admin/backup`: the snapshot could not be made (details logged); nothing of it is left |
//! | `backup_not_supported` | 501 | `POST /v1/admin/backup` on a server whose data is in PostgreSQL: the database is backed up with its own tools, the signer's directory first (`docs/postgres.md`) |
//! | `storage_error`, `signer_error`, `internal_error` | 500 | a fault; details are logged with the request id, never sent |

use allowly_engine::error::Refusal;
use allowly_engine::EngineError;
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// Prefix of every problem `type` (a URN: stable, and not a URL that would have to resolve).
pub const TYPE_PREFIX: &str = "urn:allowly:problem:";

/// An error answer, before the request id is attached.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after: Option<u32>,
    /// Boxed, as `forward_to`: rare.
    allow: Option<Box<str>>,
    /// Logged (with the request id) when the response is built; never sent.
    internal: Option<String>,
    /// Extension member `receipt`: the receipt a refused step left in the trail.
    receipt: Option<Box<serde_json::Value>>,
    /// In a cluster: the address of the node that owns the request's workspace, where the
    /// request is forwarded instead of answered with this problem (`routes::handle`). Never sent.
    /// Boxed: a rare member, kept out of the size of every `Result<_, Problem>`.
    forward_to: Option<Box<str>>,
}

/// The problem document (RFC 9457) every error answer carries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc<'a> {
    /// `urn:allowly:problem:<code>`.
    #[serde(rename = "type")]
    type_: String,
    title: &'static str,
    /// The HTTP status.
    status: u16,
    /// What went wrong, for people (never the cause of a fault of ours: that is logged).
    detail: &'a str,
    /// Stable, for programs: what went wrong.
    code: &'static str,
    /// The answer's `Request-Id`.
    request_id: &'a str,
    /// The receipt a refused step left in the trail (a used or expired confirmation, an
    /// expired escalation).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    receipt: Option<&'a serde_json::Value>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            allow: None,
            internal: None,
            receipt: None,
            forward_to: None,
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn method_not_allowed(allow: String) -> Self {
        let detail = format!("this resource supports {allow}");
        Self { allow: Some(allow.into()), ..Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", detail) }
    }

    pub fn unauthenticated(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "the body must be application/json")
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body exceeds {limit} bytes"))
    }

    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", detail)
    }

    pub fn unknown_field(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unknown_field", detail)
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    /// The request's head and body took longer than the read deadline.
    pub fn request_timeout(deadline: std::time::Duration) -> Self {
        let detail = format!("the request did not arrive within {} ms of its first byte", deadline.as_millis());
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", detail)
    }

    /// The API key is over its rate; the next request is accepted after `retry_after`.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        // Whole seconds, rounded up (a client waiting what it is told is then accepted), at least 1.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let secs = u32::try_from(secs).unwrap_or(u32::MAX).max(1);
        Self {
            retry_after: Some(secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "this API key is over its request rate")
        }
    }

    /// A connection over the per-address cap.
    pub fn too_many_connections() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "this client address has too many connections open",
            )
        }
    }

    /// A connection closed at the overall cap before it sent anything (`conn`: it was the
    /// oldest idle one): the same code, so that a client retries as for the per-address cap.
    pub fn evicted_before_request() -> Self {
        Self {
            detail: "the server is at its connection cap and this connection had sent no request; retry".into(),
            ..Self::too_many_connections()
        }
    }

    /// A fault of ours: a generic detail is sent, `what` is logged.
    pub fn internal(what: impl Into<String>) -> Self {
        Self {
            internal: Some(what.into()),
            ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error; see the server log")
        }
    }

    /// A backup that could not be made: a fault of ours, logged, never detailed to the caller
    /// (it names paths).
    pub fn from_backup(e: &crate::error::Error) -> Self {
        match e {
            crate::error::Error::BackupNotSupported(why) => Self::backup_not_supported(why),
            e => Self::backup_failed(e.to_string()),
        }
    }

    /// The store has no backup of ours (PostgreSQL): not a fault, and the detail says what to
    /// use instead.
    fn backup_not_supported(why: &str) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "backup_not_supported", why)
    }

    fn backup_failed(internal: String) -> Self {
        Self {
            internal: Some(internal),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backup_failed",
                "the backup could not be made; see the server log",
            )
        }
    }

    /// THE mapping of engine errors to HTTP.
    pub fn from_engine(e: &EngineError) -> Self {
        let code = e.code();
        match e {
            EngineError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, code, e.to_string()),
            EngineError::Invalid { .. } => Self::new(StatusCode::BAD_REQUEST, code, e.to_string()),
            EngineError::Conflict(_) => Self::new(StatusCode::CONFLICT, code, e.to_string()),
            EngineError::Refused { kind, receipt, .. } => {
                let status = match kind {
                    Refusal::NotFound => StatusCode::NOT_FOUND,
                    Refusal::NotAllowed => StatusCode::BAD_REQUEST,
                    Refusal::Expired => StatusCode::GONE,
                    Refusal::Conflict => StatusCode::CONFLICT,
                };
                let receipt = receipt.as_ref().and_then(|r| serde_json::to_value(r).ok()).map(Box::new);
                Self { receipt, ..Self::new(status, code, e.to_string()) }
            }
            EngineError::IdempotencyMismatch => Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string()),
            // Forwarded to the owner when it can be (`routes::handle`); answered only when it
            // cannot (already forwarded once, or the owner does not answer): the next request
            // finds the owner, or takes the workspace over once its lease lapsed.
            EngineError::NotOwner { node_id, address } => Self {
                retry_after: Some(1),
                forward_to: Some(address.as_str().into()),
                internal: Some(format!("workspace owned by node {node_id} at {address}")),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "another node of this cluster owns the workspace and could not be reached; nothing was changed here",
                )
            },
            // A write of this node was fenced: another node took the workspace over just now.
            EngineError::Store(allowly_store::StoreError::Fenced { .. }) => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the workspace moved to another node of this cluster; nothing was changed: retry",
                )
            },
            EngineError::Overloaded => {
                Self { retry_after: Some(1), ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, e.to_string()) }
            }
            // The cause names socket paths and timeouts: logged, not sent.
            EngineError::SignerUnavailable(_) => Self {
                retry_after: Some(1),
                internal: Some(e.to_string()),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the signer is unavailable; nothing was decided or changed",
                )
            },
            // Retry-After: the signer fails closed and finds the token (or the key object) again
            // by itself, so the same request can succeed later; the module's words are logged.
            EngineError::SignerTokenUnavailable(why) => Self {
                retry_after: Some(1),
                internal: Some(why.clone()),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
            },
            EngineError::SignerSlow(_) => Self {
                retry_after: Some(1),
                internal: Some(e.to_string()),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the signer answers but too slowly to sign (is its journal's volume slow?); nothing was decided \
                     or changed",
                )
            },
            EngineError::WorkspaceLogCatchingUp | EngineError::TooManyWaiters => {
                Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string()) }
            }
            EngineError::ShuttingDown | EngineError::CommitTimeout { .. } | EngineError::ReadTimeout(_) => {
                Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string()) }
            }
            EngineError::WorkspaceLogDiverged | EngineError::WorkspaceLogBehindSigner => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
            }
            // No `Retry-After`: only an operator changes it. Which key store holds which key is
            // for the log, not the caller.
            EngineError::WorkspaceKeyStoreNotOpen(why) => {
                Self { internal: Some(why.clone()), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string()) }
            }
            // A fault below the process (also a store write that hit it first): the cause is
            // in the code; sizes and paths are logged and shown by /readyz, not sent here.
            _ if e.fault().is_some() => {
                let public = e.fault().map_or("unavailable", |f| f.public_message());
                Self {
                    retry_after: Some(1),
                    internal: Some(e.to_string()),
                    ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, public)
                }
            }
            // Store, Signer, Internal, and any variant added later.
            _ => Self {
                internal: Some(e.to_string()),
                ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, "internal error; see the server log")
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Where the request belongs instead (see the field), taken out: the problem is then
    /// answered as is if the request cannot be forwarded.
    pub fn take_forward(&mut self) -> Option<String> {
        self.forward_to.take().map(String::from)
    }

    /// The owner of the workspace did not answer a forwarded request (or the request was
    /// forwarded already): the client retries.
    pub fn owner_unreachable(detail: impl Into<String>) -> Self {
        Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "workspace_owned_elsewhere", detail) }
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The problem document's `title`.
    pub fn title(&self) -> &'static str {
        title(self.code)
    }

    /// The response; logs the internal detail of a fault under `request_id`.
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let bytes = self.body(request_id);
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            h.insert(ALLOW, allow);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }

    /// The problem document; logs the internal detail of a fault under `request_id`.
    fn body(&self, request_id: &str) -> Vec<u8> {
        if let Some(internal) = &self.internal {
            if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
                tracing::error!(request_id, code = self.code, "{internal}");
            } else {
                tracing::warn!(request_id, code = self.code, "{internal}");
            }
        }
        let body = ProblemDoc {
            type_: format!("{TYPE_PREFIX}{}", self.code),
            title: title(self.code),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            request_id,
            receipt: self.receipt.as_deref(),
        };
        // Serializing this struct of strings cannot fail; fall back to an empty object anyway.
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// The whole HTTP/1.1 answer as bytes, ending with `Connection: close`: for the answers the
    /// connection layer writes itself, below hyper (a request head that never completed, a
    /// connection refused at accept), where there is no request to answer through hyper.
    pub fn into_http1_close(self, request_id: &str) -> Vec<u8> {
        let body = self.body(request_id);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\nrequest-id: {request_id}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len(),
        );
        if let Some(secs) = self.retry_after {
            out.push_str(&format!("retry-after: {secs}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

/// Which problems a request can meet, by what the request does: the OpenAPI document lists,
/// per operation, the problems of every group that applies to it (`routes::Route::spec` names
/// the groups). Each group's problems are built with the constructors above and
/// [`Problem::from_engine`], so the status documented is the status sent, and a code added to
/// the mapping shows up in the document without a second list to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Every request: a fault of ours, a store that fails a read, and what the connection
    /// layer answers before a request is routed (a read deadline passed, too many connections).
    Any,
    /// A request that must bear an API key: who it is, what it may do, its rate.
    Authenticated,
    /// A request with a (JSON) body.
    Body,
    /// A request that names an object (path id) or takes query parameters.
    Lookup,
    /// A POST: an `Idempotency-Key` reused with another request.
    Keyed,
    /// A call that records something through the workspace's queue (a receipt, a stored
    /// change): back pressure, the commit deadline, the signer, the data volume, the log.
    Records,
    /// A change that the object's state can forbid (409 `conflict`).
    Conflict,
    /// The engine's refusal `code`, of sort `Refusal`.
    Refused(Refusal, &'static str),
    /// `POST /v1/admin/backup`.
    Backup,
    /// `/metrics` with `--metrics-token-file`: a missing or wrong token.
    MetricsToken,
    /// A long-poll (`?wait=`): too many already waiting.
    LongPoll,
}

impl Exposure {
    /// The problems of this group.
    pub fn problems(self) -> Vec<Problem> {
        use std::time::Duration;
        let engine = |e: EngineError| Problem::from_engine(&e);
        match self {
            Self::Any => vec![
                Problem::internal(""),
                engine(EngineError::Store(allowly_store::StoreError::Engine(String::new()))),
                Problem::request_timeout(Duration::ZERO),
                Problem::too_many_connections(),
                engine(EngineError::ReadTimeout(String::new())),
            ],
            Self::Authenticated => {
                vec![Problem::unauthenticated(""), Problem::forbidden(""), Problem::rate_limited(Duration::ZERO)]
            }
            Self::Body => vec![
                Problem::unsupported_media_type(),
                Problem::body_too_large(0),
                Problem::malformed_json(""),
                Problem::unknown_field(""),
                Problem::invalid(""),
            ],
            Self::Lookup => vec![Problem::not_found(), Problem::invalid("")],
            Self::Keyed => vec![engine(EngineError::IdempotencyMismatch)],
            Self::Records => {
                let mut v = vec![
                    engine(EngineError::Overloaded),
                    engine(EngineError::ShuttingDown),
                    engine(EngineError::CommitTimeout { waited_ms: 0 }),
                    engine(EngineError::SignerUnavailable(String::new())),
                    engine(EngineError::SignerSlow(String::new())),
                    engine(EngineError::Signer(String::new())),
                    engine(EngineError::WorkspaceLogDiverged),
                    engine(EngineError::WorkspaceLogBehindSigner),
                    engine(EngineError::WorkspaceLogCatchingUp),
                    engine(EngineError::WorkspaceKeyStoreNotOpen(String::new())),
                    engine(EngineError::SignerTokenUnavailable(String::new())),
                    engine(EngineError::NotOwner { node_id: String::new(), address: String::new() }),
                ];
                let faults = allowly_engine::fault::Fault::ALL;
                v.extend(faults.map(|fault| engine(EngineError::Unavailable { fault, detail: String::new() })));
                v
            }
            Self::Conflict => vec![engine(EngineError::Conflict(String::new()))],
            Self::Refused(kind, code) => {
                vec![engine(EngineError::Refused { kind, code, message: String::new(), receipt: None })]
            }
            Self::Backup => vec![Problem::backup_failed(String::new()), Problem::backup_not_supported("")],
            Self::MetricsToken => vec![Problem::unauthenticated("")],
            Self::LongPoll => vec![engine(EngineError::TooManyWaiters)],
        }
    }
}

fn title(code: &str) -> &'static str {
    match code {
        "not_found" => "Not found",
        "method_not_allowed" => "Method not allowed",
        "unauthenticated" => "Unauthenticated",
        "forbidden" => "Forbidden",
        "unsupported_media_type" => "Unsupported media type",
        "body_too_large" => "Body too large",
        "malformed_json" => "Malformed JSON",
        "unknown_field" => "Unknown field",
        "invalid_request" => "Invalid request",
        "conflict" => "Conflict",
        "overloaded" => "Overloaded",
        "signer_unavailable" => "Signer unavailable",
        "shutting_down" => "Shutting down",
        "storage_full" => "Storage full",
        "storage_failed" => "Storage failed",
        "storage_unavailable" => "Storage unavailable",
        "storage_slow" => "Storage slow",
        "commit_timeout" => "Commit timeout",
        "read_timeout" => "Read timeout",
        "signer_storage_failed" => "Signer storage failed",
        "signer_token_unavailable" => "Signer token unavailable",
        "signing_backlog" => "Signing backlog",
        "webhook_not_found" => "Not found",
        "destination_not_allowed" => "Destination not allowed",
        "webhook_disabled" => "Webhook disabled",
        "delivery_in_progress" => "Delivery in progress",
        "confirmation_used" => "Confirmation already used",
        "escalation_already_resolved" => "Escalation already resolved",
        "confirmation_expired" | "escalation_expired" => "Expired",
        "idempotency_key_reused" => "Idempotency key reused",
        "request_timeout" => "Request timeout",
        "rate_limited" => "Rate limited",
        "too_many_connections" => "Too many connections",
        "too_many_long_polls" => "Too many long-polls",
        "workspace_key_store_not_open" => "Workspace key store not open",
        "backup_not_supported" => "Backup not supported",
        "workspace_owned_elsewhere" => "Workspace owned by another node",
        _ => "Internal error",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use allowly_engine::health::Fault;
    use allowly_store::StoreError;
    use http_body_util::BodyExt as _;

    fn check(e: EngineError, status: u16, code: &str, leaks: Option<&str>) {
        let resp = Problem::from_engine(&e).into_response("rid-1");
        assert_eq!(resp.status().as_u16(), status, "{e:?}");
        let h = resp.headers().clone();
        assert_eq!(h[CONTENT_TYPE], "application/problem+json");
        let body = futures_lite_block(resp.into_body());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], code);
        assert_eq!(v["status"], status);
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["type"], format!("{TYPE_PREFIX}{code}"));
        if let Some(secret) = leaks {
            assert!(!v["detail"].as_str().unwrap().contains(secret), "detail leaks {secret}: {v}");
        }
        if matches!(code, "workspace_log_diverged" | "workspace_log_behind_signer" | "workspace_key_store_not_open") {
            assert!(h.get(RETRY_AFTER).is_none(), "a divergence does not pass by itself");
        } else if matches!(status, 429 | 503) {
            assert_eq!(h[RETRY_AFTER], "1", "{code}");
        }
    }

    fn futures_lite_block(body: Full<Bytes>) -> Bytes {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async { body.collect().await.unwrap().to_bytes() })
    }

    #[test]
    fn engine_errors_map_to_their_status_and_code_without_leaking_internals() {
        check(EngineError::NotFound { what: "authorization" }, 404, "not_found", None);
        check(EngineError::Invalid { field: "scopes", message: "empty".into() }, 400, "invalid_request", None);
        check(EngineError::Conflict("already revoked".into()), 409, "conflict", None);
        check(EngineError::Overloaded, 429, "overloaded", None);
        check(EngineError::SignerUnavailable("/secret/path.sock".into()), 503, "signer_unavailable", Some("/secret"));
        check(EngineError::SignerSlow("/secret/path.sock".into()), 503, "signer_slow", Some("/secret"));
        check(EngineError::ShuttingDown, 503, "shutting_down", None);
        check(EngineError::CommitTimeout { waited_ms: 2000 }, 503, "commit_timeout", None);
        check(EngineError::ReadTimeout("slow".into()), 503, "read_timeout", None);
        for fault in Fault::ALL {
            let e = EngineError::Unavailable { fault, detail: "/data/db has 3 MiB free".into() };
            check(e, 503, fault.code(), Some("/data"));
        }
        check(
            EngineError::Store(StoreError::NoSpace("/data/db/000004.log".into())),
            503,
            "storage_full",
            Some("/data"),
        );
        check(EngineError::Store(StoreError::Io("/data/db: EIO".into())), 503, "storage_failed", Some("/data"));
        let gone = StoreError::Unavailable("postgres: apply: connection closed".into());
        check(EngineError::Store(gone), 503, "storage_unavailable", None);
        check(EngineError::Store(StoreError::Engine("/data busy".into())), 500, "storage_error", Some("/data"));
        check(EngineError::WorkspaceLogDiverged, 503, "workspace_log_diverged", None);
        check(EngineError::WorkspaceLogBehindSigner, 503, "workspace_log_behind_signer", None);
        check(EngineError::WorkspaceLogCatchingUp, 503, "workspace_log_catching_up", None);
        check(
            EngineError::WorkspaceKeyStoreNotOpen("key 1a2b3c4d of ws_a is kept by the file key store".into()),
            503,
            "workspace_key_store_not_open",
            Some("1a2b3c4d"),
        );
        check(
            EngineError::SignerTokenUnavailable("finding a key: 0 private key objects with CKA_ID 00ff".into()),
            503,
            "signer_token_unavailable",
            Some("CKA_ID"),
        );
        check(EngineError::TooManyWaiters, 503, "too_many_long_polls", None);
        check(EngineError::Signer("key sk_123".into()), 500, "signer_error", Some("sk_123"));
        check(EngineError::Internal("invariant x".into()), 500, "internal_error", Some("invariant x"));
        let refused = |kind, code| EngineError::Refused { kind, code, message: "m".into(), receipt: None };
        check(refused(Refusal::NotFound, "webhook_not_found"), 404, "webhook_not_found", None);
        check(refused(Refusal::Conflict, "webhook_disabled"), 409, "webhook_disabled", None);
        check(refused(Refusal::Conflict, "delivery_in_progress"), 409, "delivery_in_progress", None);
        check(refused(Refusal::NotAllowed, "destination_not_allowed"), 400, "destination_not_allowed", None);
        check(refused(Refusal::Expired, "escalation_expired"), 410, "escalation_expired", None);
    }

    #[test]
    fn front_end_problems_carry_their_status_code_and_retry_after() {
        let p = Problem::rate_limited(std::time::Duration::from_millis(1500));
        assert_eq!((p.status(), p.code(), p.retry_after), (StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some(2)));
        assert_eq!(Problem::rate_limited(std::time::Duration::ZERO).retry_after, Some(1));
        let raw = Problem::request_timeout(std::time::Duration::from_secs(10)).into_http1_close("rid-2");
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{head}");
        let rid = format!("\r\n{}: rid-2", crate::extract::REQUEST_ID);
        assert!(head.contains("\r\nconnection: close") && head.contains(&rid), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!((v["code"].as_str(), v["status"].as_u64()), (Some("request_timeout"), Some(408)));
        let raw = String::from_utf8(Problem::too_many_connections().into_http1_close("rid-3")).unwrap();
        assert!(raw.starts_with("HTTP/1.1 503 ") && raw.contains("\r\nretry-after: 1\r\n"), "{raw}");
    }

    #[test]
    fn invalid_names_the_field() {
        let p = Problem::from_engine(&EngineError::Invalid { field: "expires_at", message: "in the past".into() });
        assert!(p.detail.contains("expires_at"), "{}", p.detail);
    }
}

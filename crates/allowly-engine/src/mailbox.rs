//! How the engine talks to a workspace actor: the messages it handles, where answers go, and
//! the handle the registry keeps. Below the actor and the registry, so both can name them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use allowly_store::{Role, ScopeRule};
use allowly_webhooks::model::DisabledReason;
use allowly_webhooks::{CreatedWebhook, NewWebhook, WebhookView};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::Result;
use crate::model::{
    ApiKeyView, AuthorizationChange, CheckOutcome, CheckRequest, ConfirmationAnswer, EscalationAnswer, EscalationView,
    KeyRotation, NewAuthorization, Resolution, WorkspaceView,
};

/// Where an answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// Requests a workspace actor handles (validated by the engine before they are sent).
pub(crate) enum WsMsg {
    CreateAuthorization {
        req: NewAuthorization,
        idem: Option<Idem>,
        reply: Reply<AuthorizationChange>,
    },
    Revoke {
        id: String,
        idem: Option<Idem>,
        reply: Reply<AuthorizationChange>,
    },
    Check {
        req: CheckRequest,
        idem: Option<Idem>,
        reply: Reply<CheckOutcome>,
    },
    Confirm {
        nonce: String,
        answer: ConfirmationAnswer,
        idem: Option<Idem>,
        reply: Reply<Resolution>,
    },
    Resolve {
        id: String,
        answer: EscalationAnswer,
        idem: Option<Idem>,
        reply: Reply<Resolution>,
    },
    /// Resolve a pending escalation past its expiry to deny (on first read after it).
    ExpireEscalation {
        id: String,
        reply: Reply<EscalationView>,
    },
    SetScopeRules {
        rules: BTreeMap<String, ScopeRule>,
        reply: Reply<WorkspaceView>,
    },
    SetRateLimit {
        rate_limit: Option<allowly_store::RateLimit>,
        reply: Reply<WorkspaceView>,
    },
    CreateWebhook {
        req: NewWebhook,
        idem: Option<Idem>,
        reply: Reply<CreatedWebhook>,
    },
    SetWebhookDisabled {
        id: String,
        disabled: bool,
        reason: DisabledReason,
        idem: Option<Idem>,
        reply: Reply<WebhookView>,
    },
    /// Delete an endpoint and cancel a first page of its unfinished deliveries; answers where
    /// to continue cancelling (`CancelDeliveries`), if anything is left to look at.
    DeleteWebhook {
        id: String,
        reply: Reply<Option<String>>,
    },
    /// Cancel the next page of a deleted endpoint's unfinished deliveries (outbox ids after
    /// `after`); answers where to continue, if anywhere.
    CancelDeliveries {
        webhook_id: String,
        after: String,
        reply: Reply<Option<String>>,
    },
    RotateWebhookSecret {
        id: String,
        grace_ms: u64,
        idem: Option<Idem>,
        reply: Reply<CreatedWebhook>,
    },
    /// Send a finished delivery's event again, as a new delivery.
    RetryDelivery {
        id: String,
        idem: Option<Idem>,
        reply: Reply<allowly_webhooks::DeliveryView>,
    },
    /// The engine made the secret; the actor files its hash (and, keyed, the sealed secret
    /// for repeats: see `engine::seal_secret`).
    CreateApiKey {
        roles: Vec<Role>,
        key_hash: [u8; 32],
        sealed_secret: Option<String>,
        idem: Option<Idem>,
        reply: Reply<StagedApiKey>,
    },
    RevokeApiKey {
        id: String,
        idem: Option<Idem>,
        reply: Reply<ApiKeyView>,
    },
    /// Rotate the workspace's signing key: the `key.rotated` leaf takes the next log index.
    RotateKey {
        idem: Option<Idem>,
        reply: Reply<KeyRotation>,
    },
    /// Finish a key rotation left unfinished (sent by the actor to itself at start).
    ResumeRotation,
    /// Delete these `Idempotency-Key` records if they are still past their lifetime.
    SweepIdempotency {
        ids: Vec<String>,
        reply: Reply<usize>,
    },
    /// Commit everything staged (sent by the actor to itself).
    Flush,
    /// Group `group`, decided in state generation `epoch`, is durable (`ok`) or failed (sent by
    /// the committer after the group's answers went out).
    Committed {
        epoch: u64,
        group: u64,
        ok: bool,
    },
    /// Stop if idle (sent by the actor to itself).
    IdleCheck,
    /// Stop if idle for `min_idle` (sent under memory pressure).
    Passivate {
        min_idle: Duration,
    },
}

/// An `Idempotency-Key`, as the actor files it: `doc_id` derives from the key, `request_hash`
/// from the route and the parsed request (same key + same request → the same answer).
pub(crate) struct Idem {
    pub doc_id: String,
    pub request_hash: [u8; 32],
}

/// A new API key as the actor answers it: the secret is the engine's (a repeat gets it back
/// from `sealed_secret`, never from the store in clear).
#[derive(Serialize, Deserialize)]
pub(crate) struct StagedApiKey {
    pub key: ApiKeyView,
    pub sealed_secret: Option<String>,
}

/// A running actor as the registry holds it.
#[derive(Clone)]
pub(crate) struct WsHandle {
    pub actor: ActorRef<WsMsg>,
    /// Requests sent and not yet taken up: the mailbox bound.
    pub queued: Arc<AtomicUsize>,
    /// When a request was last sent (ms, `now_ms`): picks whom memory pressure stops first.
    pub last_used: Arc<AtomicU64>,
}

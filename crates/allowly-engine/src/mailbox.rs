//! How the engine talks to a workspace actor: the messages it handles, where answers go, and
//! the handle the registry keeps. Below the actor and the registry, so both can name them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use allowly_store::{Role, ScopeRule};
use allowly_webhooks::model::DisabledReason;
use allowly_webhooks::{CreatedWebhook, NewWebhook, WebhookView};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::Result;
use crate::model::{
    ApiKeyView, AuthorizationChange, CheckOutcome, CheckRequest, ConfirmationAnswer, EscalationAnswer, EscalationView,
    KeyRotation, NewAuthorization, Resolution, ScopeRulesChange, WorkspaceView,
};

/// Where an answer goes, with the request's place in the admission bound
/// ([`Admissions`]): held until the answer is sent — for a request that writes, after the
/// synced write holding its effects returned — or until the request is dropped unanswered.
#[derive(Debug)]
pub(crate) struct Reply<T> {
    tx: oneshot::Sender<Result<T>>,
    _admitted: Admission,
    /// When the asker stops waiting: a store read the actor makes for the request ends before
    /// it (`WsState::fetch`), so the request is answered `read_timeout` rather than timing out
    /// with an unknown outcome.
    deadline: Instant,
}

impl<T> Reply<T> {
    pub fn new(tx: oneshot::Sender<Result<T>>, admitted: Admission, deadline: Instant) -> Self {
        Self { tx, _admitted: admitted, deadline }
    }

    /// Sends the answer; gives it back if the asker stopped waiting.
    pub fn send(self, answer: Result<T>) -> std::result::Result<(), Result<T>> {
        self.tx.send(answer)
    }

    /// Whether the asker stopped waiting (its deadline passed): a request not decided yet is
    /// then dropped undecided.
    pub fn is_abandoned(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What the actor asks of a request's reply whatever the type of its answer.
pub(crate) trait Asker {
    /// See [`Reply::is_abandoned`].
    fn is_abandoned(&self) -> bool;
    /// When the asker stops waiting.
    fn deadline(&self) -> Instant;
}

impl<T> Asker for Reply<T> {
    fn is_abandoned(&self) -> bool {
        Reply::is_abandoned(self)
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// The requests admitted and not yet through the committer, over every workspace: the bounded
/// queue in front of it (`EngineConfig::max_pending_writes`). A request is counted from the
/// moment it is sent to its actor until its answer is sent (after its write) or it is dropped;
/// one that timed out (`CommitTimeout`) while its write is still queued or running stays
/// counted, so a slow volume cannot make the engine hold more than the bound however fast
/// clients retry.
#[derive(Debug, Default)]
pub(crate) struct Admissions {
    pending: AtomicUsize,
}

impl Admissions {
    /// A place for one more request, or `None` when `max` are pending.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<Admission> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admission(self.clone()))
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// One admitted request's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct Admission(Arc<Admissions>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

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
        reply: Reply<ScopeRulesChange>,
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
    /// Group `group`, decided in state generation `epoch`, is durable (`failed: None`) or
    /// failed with this store error (sent by the committer after the group's answers went out).
    Committed {
        epoch: u64,
        group: u64,
        failed: Option<allowly_store::StoreError>,
    },
    /// Stop if idle (sent by the actor to itself).
    IdleCheck,
    /// Stop if idle for `min_idle` (sent under memory pressure).
    Passivate {
        min_idle: Duration,
    },
}

impl WsMsg {
    /// Whether this is a request whose asker stopped waiting (see [`Reply::is_abandoned`]);
    /// the actor's own messages never are.
    pub fn is_abandoned(&self) -> bool {
        self.asker().is_some_and(|a| a.is_abandoned())
    }

    /// The reply of a request; `None` for the actor's own messages.
    pub fn asker(&self) -> Option<&dyn Asker> {
        Some(match self {
            Self::CreateAuthorization { reply, .. } | Self::Revoke { reply, .. } => reply,
            Self::Check { reply, .. } => reply,
            Self::Confirm { reply, .. } | Self::Resolve { reply, .. } => reply,
            Self::ExpireEscalation { reply, .. } => reply,
            Self::SetScopeRules { reply, .. } => reply,
            Self::SetRateLimit { reply, .. } => reply,
            Self::CreateWebhook { reply, .. } | Self::RotateWebhookSecret { reply, .. } => reply,
            Self::SetWebhookDisabled { reply, .. } => reply,
            Self::DeleteWebhook { reply, .. } | Self::CancelDeliveries { reply, .. } => reply,
            Self::RetryDelivery { reply, .. } => reply,
            Self::CreateApiKey { reply, .. } => reply,
            Self::RevokeApiKey { reply, .. } => reply,
            Self::RotateKey { reply, .. } => reply,
            Self::SweepIdempotency { reply, .. } => reply,
            Self::ResumeRotation | Self::Flush | Self::Committed { .. } | Self::IdleCheck | Self::Passivate { .. } => {
                return None
            }
        })
    }

    /// The request's `Idempotency-Key`, if it has one.
    pub fn idem(&self) -> Option<&Idem> {
        match self {
            Self::CreateAuthorization { idem, .. }
            | Self::Revoke { idem, .. }
            | Self::Check { idem, .. }
            | Self::Confirm { idem, .. }
            | Self::Resolve { idem, .. }
            | Self::CreateWebhook { idem, .. }
            | Self::SetWebhookDisabled { idem, .. }
            | Self::RotateWebhookSecret { idem, .. }
            | Self::RetryDelivery { idem, .. }
            | Self::CreateApiKey { idem, .. }
            | Self::RevokeApiKey { idem, .. }
            | Self::RotateKey { idem, .. } => idem.as_ref(),
            _ => None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound counts a request until its answer is sent or it is dropped — also after its
    /// asker stopped waiting — and a request whose asker stopped waiting says so.
    #[test]
    fn admissions_are_held_until_the_answer_and_a_deadline_abandons_the_request() {
        let a = Arc::new(Admissions::default());
        let first = a.admit(2).expect("room");
        let (tx, rx) = oneshot::channel::<Result<u8>>();
        let reply = Reply::new(tx, a.admit(2).expect("room"), Instant::now());
        assert!(a.admit(2).is_none(), "a third past a bound of two");
        assert_eq!(a.pending(), 2);

        assert!(!reply.is_abandoned());
        drop(rx); // the asker's deadline passed
        assert!(reply.is_abandoned());
        assert_eq!(a.pending(), 2, "still held: its write may be queued or running");
        assert!(reply.send(Ok(1)).is_err(), "nobody waits for it");
        assert_eq!(a.pending(), 1, "given back with the answer");
        drop(first);
        assert_eq!(a.pending(), 0);
        assert!(a.admit(2).is_some());
    }
}

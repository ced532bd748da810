//! One ractor actor per workspace: it owns the workspace's authorization cache and its
//! sequencing (receipt id, log index, per-authorization `seq` and `prev`), decides, and
//! group-commits.
//!
//! Group commit: a request is decided and *staged* (its write ops and its answer kept aside);
//! the first staged request schedules a `Flush` behind everything already in the mailbox, so
//! one synced write covers every request that arrived meanwhile. The answers leave only after
//! that write returns. The actor keeps no other copy of the truth: if a write fails, every
//! request in it gets an error and the actor reloads its state from the store.
//!
//! Webhook events (`escalation.requested`, `escalation.resolved`, `authorization.revoked`) are
//! staged with the receipt they report, and endpoint changes go through the actor too
//! (`actor/webhooks.rs`); the delivery worker is woken after a commit that enqueued deliveries.
//!
//! Passivation: an actor idle for `idle_timeout` removes itself from the registry and drains.
//! A per-workspace lock held for the actor's whole life makes its successor wait until it is
//! gone, so there is never more than one sequencer per workspace log.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use allowly_receipt::types::{
    Decision, EventKind, Grant as ReceiptGrant, HexHash, ReceiptBody, RuleKind, Timestamp, FORMAT_VERSION,
};
use allowly_store::{
    ApiKeyRecord, AuthorizationRecord, DocKind, Op, ReceiptRecord, ScopeRule, StoreError, WorkspaceRecord, WriteBatch,
};
use allowly_webhooks::model::{Endpoint, EventType};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, OwnedMutexGuard};

use crate::clock::{now_ms, ts};
use crate::decide::{self, Reason, Rule, Verdict};
use crate::error::{EngineError, Result};
use crate::ids::new_id;
use crate::mailbox::{Idem, Reply, StagedApiKey, WsMsg};
use crate::model::{
    AuthorizationChange, CheckOutcome, CheckRequest, ConfirmationInfo, EscalationInfo, NewAuthorization,
    ScopeRulesChange,
};
use crate::receipts::{auth_state_hash, json_hash, pending_envelope, seal};
use crate::shared::Shared;
use crate::views;

/// The stored answer to an `Idempotency-Key`.
#[derive(Serialize, Deserialize)]
pub(crate) struct IdemDoc {
    pub request_hash: HexHash,
    pub created_at_ms: u64,
    pub answer: serde_json::Value,
}

impl IdemDoc {
    /// The record of `answer`, the first answer to `idem`, made at `now`.
    pub fn new<T: Serialize>(idem: &Idem, now: u64, answer: &T) -> Result<Self> {
        let answer = serde_json::to_value(answer).map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(Self { request_hash: HexHash(idem.request_hash), created_at_ms: now, answer })
    }

    /// Whether the record still answers repeats at `now` (after that the key is free again).
    pub fn is_live(&self, now: u64, ttl_ms: u64) -> bool {
        now < self.created_at_ms.saturating_add(ttl_ms)
    }

    /// The stored answer for a repeat of the same request; `IdempotencyMismatch` for another.
    pub fn replay<T: DeserializeOwned>(self, idem: &Idem) -> Result<T> {
        if self.request_hash.0 != idem.request_hash {
            return Err(EngineError::IdempotencyMismatch);
        }
        serde_json::from_value(self.answer).map_err(|e| EngineError::Internal(format!("stored idempotent answer: {e}")))
    }
}

/// Whether a request records a receipt (and so must fail closed while the signer is down).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signs {
    Yes,
    No,
}

/// A staged request's completion: called with the commit's outcome.
type Done = Box<dyn FnOnce(Result<()>) + Send>;

pub(crate) struct WsArgs {
    pub shared: Arc<Shared>,
    pub ws: WorkspaceRecord,
    pub next_index: u64,
    /// A key rotation reserved at this index and not finished (`LogMeta::rotation_at`), and
    /// the `Idempotency-Key` record its answer goes to.
    pub rotation_at: Option<u64>,
    pub rotation_idem: Option<allowly_store::IdempotencyRef>,
    /// See [`last_receipt_ms`].
    pub last_receipt_ms: u64,
    pub queued: Arc<AtomicUsize>,
    /// The handle's `last_used`: when the last request was sent (the actor's idleness).
    pub last_used: Arc<AtomicU64>,
    pub life: OwnedMutexGuard<()>,
    /// In a cluster: the epoch of this node's lease of the workspace, taken before the state
    /// above was read; every group carries it as a fence (`ownership.rs`).
    pub lease_epoch: Option<u64>,
}

pub(crate) struct WsState {
    shared: Arc<Shared>,
    ws: WorkspaceRecord,
    rules: BTreeMap<String, Rule>,
    myself: ActorRef<WsMsg>,
    /// Authorizations as of the last staged request (ahead of the store until the commit),
    /// each with the group that last changed it (`None`: as read from the store).
    auths: HashMap<String, (AuthorizationRecord, Option<u64>)>,
    /// The newest group of this epoch known durable: entries changed at or before it may be
    /// evicted (the store has them); newer ones may not (a reread would be stale).
    durable_group: Option<u64>,
    /// `auth_state_hash` per authorization with the `revoked_at_ms` it was computed for: the
    /// only input of the hash that changes during an authorization's life (a canonical JSON
    /// serialisation and two SHA-256s per check otherwise).
    state_hashes: std::cell::RefCell<HashMap<String, (Option<u64>, HexHash)>>,
    next_index: u64,
    /// A key rotation whose `key.rotated` leaf takes this index (= `next_index`) and is not
    /// stored yet: no receipt is recorded until it is (see `actor/rotation.rs`).
    rotation_at: Option<u64>,
    /// The `Idempotency-Key` record the reserved rotation's answer is to be filed under.
    rotation_idem: Option<allowly_store::IdempotencyRef>,
    /// The rotation state this actor last wrote to the workspace's `LogMeta` record (`None`:
    /// not written since it started or reloaded). The record is written only when that state
    /// changes, not with every group: the log position is derived from the receipts (see
    /// `Store::log_meta`), so the record is needed only for the rotation state and to list
    /// the workspace among those with a log.
    meta_written: Option<(Option<u64>, Option<allowly_store::IdempotencyRef>)>,
    /// Unix ms of the newest receipt time this actor gave out (or found in the store): receipt
    /// times never go backwards along the log, even if the wall clock steps back, because the
    /// signer refuses a receipt older than the previous one (see [`Self::receipt_now`]).
    last_receipt_ms: u64,
    ops: Vec<Op>,
    done: Vec<Done>,
    /// The state generation: a new one after every reload (see `commit.rs`).
    epoch: u64,
    /// The number of the group being staged; groups before it are with the committer or done.
    group: u64,
    /// Completes when the last submitted group has been answered (awaited before stopping, so
    /// a successor reads everything this actor acknowledged), with whether it is durable.
    last_commit: Option<oneshot::Receiver<bool>>,
    /// Documents written by staged or in-flight groups (ahead of the store until their commit),
    /// with the group that wrote them.
    overlay: HashMap<(DocKind, String), (serde_json::Value, u64)>,
    /// API keys written by staged or in-flight groups, by id, with the group that wrote them.
    staged_keys: HashMap<String, (ApiKeyRecord, u64)>,
    /// The webhook endpoints as this actor last changed them (`None`: as committed, see
    /// `Shared::endpoints`). The actor is their only writer, so its own list stays right.
    endpoints: Option<Vec<Endpoint>>,
    /// Whether the staged group changes the endpoints (published once it is durable).
    endpoints_changed: bool,
    /// Whether the staged ops enqueue webhook deliveries (the worker is woken after the commit).
    wake_webhooks: bool,
    flush_scheduled: bool,
    /// What was read from the store for the request being decided (see `actor/fetch.rs`).
    fetched: fetch::Fetched,
    /// When the last request was sent to this actor (ms, `now_ms`; set by `Engine::ask`).
    last_used: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    _life: OwnedMutexGuard<()>,
    /// See [`WsArgs::lease_epoch`].
    lease_epoch: Option<u64>,
}

/// Most authorizations one actor caches; past this the cache is emptied (they reload on use).
const MAX_CACHED_AUTHORIZATIONS: usize = 65_536;

pub(crate) struct WorkspaceActor;

mod admin;
mod fetch;
mod hitl;
mod rotation;
mod webhooks;
pub(crate) use hitl::{ConfirmationDoc, DueEntry, EscalationDoc, CONFIRMATION_DUE_SCOPE, DUE_SCOPE};

/// The `time` of the newest stored receipt of `ws` (0 for an empty log, or if it cannot be
/// read: the clock is then the only floor, as before the first receipt). A store read: called
/// off the async workers as the actor is started (`Engine::actor_for`).
pub(crate) fn last_receipt_ms(shared: &Shared, ws: &str, next_index: u64) -> u64 {
    let Some(last) = next_index.checked_sub(1) else { return 0 };
    match shared.store.receipt_at(ws, last) {
        Ok(Some(r)) => allowly_receipt::types::ReceiptBodyView::parse(&r.body).map_or(0, |b| b.time.unix_ms()),
        Ok(None) => 0,
        Err(e) => {
            tracing::warn!(workspace = %ws, error = %e, "cannot read the newest receipt's time");
            0
        }
    }
}

fn rules_of(ws: &WorkspaceRecord) -> BTreeMap<String, Rule> {
    ws.scope_rules
        .iter()
        .map(|(k, v)| {
            let rule = match v {
                ScopeRule::Confirm => Rule::Confirm,
                ScopeRule::Escalate => Rule::Escalate,
            };
            (k.clone(), rule)
        })
        .collect()
}

impl Actor for WorkspaceActor {
    type Msg = WsMsg;
    type State = WsState;
    type Arguments = WsArgs;

    async fn pre_start(&self, myself: ActorRef<WsMsg>, a: WsArgs) -> Result<WsState, ActorProcessingErr> {
        a.shared.metrics.actors_live.inc();
        a.shared.metrics.actor_starts.inc();
        myself.send_after(a.shared.cfg.idle_timeout, || WsMsg::IdleCheck);
        if a.rotation_at.is_some() {
            // A rotation a crash (or a signer that did not answer) left unfinished: finished
            // before anything else is recorded.
            myself.send_message(WsMsg::ResumeRotation)?;
        }
        Ok(WsState {
            rules: rules_of(&a.ws),
            shared: a.shared,
            ws: a.ws,
            myself,
            auths: HashMap::new(),
            durable_group: None,
            state_hashes: Default::default(),
            last_receipt_ms: a.last_receipt_ms,
            next_index: a.next_index,
            rotation_at: a.rotation_at,
            rotation_idem: a.rotation_idem,
            meta_written: None,
            ops: Vec::new(),
            done: Vec::new(),
            epoch: crate::commit::new_epoch(),
            group: 0,
            last_commit: None,
            overlay: HashMap::new(),
            staged_keys: HashMap::new(),
            endpoints: None,
            endpoints_changed: false,
            wake_webhooks: false,
            flush_scheduled: false,
            fetched: Default::default(),
            last_used: a.last_used,
            queued: a.queued,
            _life: a.life,
            lease_epoch: a.lease_epoch,
        })
    }

    async fn post_stop(&self, myself: ActorRef<WsMsg>, s: &mut WsState) -> Result<(), ActorProcessingErr> {
        // Nothing staged may be lost silently (a drain can leave a Flush undeliverable), and a
        // successor must find every acknowledged write in the store.
        s.flush().await;
        if let Some(last) = s.last_commit.take() {
            let _ = last.await;
        }
        s.forget_authorizations(true);
        s.shared.actors.remove_if(&s.ws.id, |_, h| h.actor.get_id() == myself.get_id());
        s.shared.metrics.actors_live.dec();
        Ok(())
    }

    // The future of `handle` is moved (copied) twice per message by ractor, into the actor
    // task's state, which with thousands of workspaces is cold: so the rare branches whose
    // futures are large (a key rotation's, ~3 KB) are boxed, and the future is the size of the
    // common path's (a check's fetch), not of the largest branch.
    async fn handle(&self, myself: ActorRef<WsMsg>, msg: WsMsg, s: &mut WsState) -> Result<(), ActorProcessingErr> {
        match msg {
            WsMsg::Flush => {
                s.flush_scheduled = false;
                s.flush().await;
                return Ok(());
            }
            WsMsg::Committed { epoch, group, failed } => {
                if epoch == s.epoch {
                    if failed.is_none() {
                        // The store has what these groups wrote now.
                        s.overlay.retain(|_, (_, g)| *g > group);
                        s.staged_keys.retain(|_, (_, g)| *g > group);
                        s.durable_group = Some(group);
                    } else {
                        // What is staged now was decided on top of the failed group: it fails
                        // too, before anything is decided on the reloaded state.
                        s.ops.clear();
                        for d in std::mem::take(&mut s.done) {
                            d(Err(crate::commit::after_failed_commit(failed.as_ref())));
                        }
                        if let (Some(StoreError::Fenced { .. }), Some(lease)) = (&failed, s.lease_epoch) {
                            // Another node took the workspace over: this actor's state is no
                            // longer the workspace's. It stops without deciding anything more;
                            // the requests queued behind lose their answer channel, and
                            // `Engine::ask` sends each to the new owner.
                            if let Some(o) = &s.shared.ownership {
                                o.lost(&s.ws.id, lease);
                            }
                            s.shared.actors.remove_if(&s.ws.id, |_, h| h.actor.get_id() == myself.get_id());
                            myself.stop(Some("the workspace moved to another node".into()));
                            return Ok(());
                        }
                        tracing::warn!(workspace = %s.ws.id, "a commit failed; reloading workspace state");
                        s.reload().await;
                    }
                }
                return Ok(());
            }
            WsMsg::IdleCheck => {
                if s.passivate_if_idle(&myself, s.shared.cfg.idle_timeout, "idle")? {
                    return Ok(());
                }
                myself.send_after(s.shared.cfg.idle_timeout, || WsMsg::IdleCheck);
                return Ok(());
            }
            WsMsg::Passivate { min_idle } => {
                s.passivate_if_idle(&myself, min_idle, "memory")?;
                return Ok(());
            }
            WsMsg::ResumeRotation => {
                Box::pin(s.resume_rotation()).await;
                return Ok(());
            }
            _ => {}
        }
        s.queued.fetch_sub(1, Ordering::AcqRel);
        if msg.is_abandoned() {
            // Its asker's deadline passed while it waited here (it was answered 503
            // `commit_timeout`): dropped undecided, so nothing of it is ever written.
            s.shared.metrics.abandoned.inc();
            return Ok(());
        }
        if s.next_index == u64::MAX {
            // A reload failed (see `WsState::reload`): tried again before this request is
            // decided, here where it can be awaited off the async workers.
            s.reload().await;
        }
        if s.rotation_at.is_some() && s.shared.health.is_up() {
            Box::pin(s.resume_rotation()).await;
        }
        // What the request reads that this actor does not hold is read now, off the async
        // workers and within the request's deadline (`actor/fetch.rs`); a check of a cached
        // authorization reads nothing.
        let fetched = s.fetch_for(&msg).await;
        match msg {
            WsMsg::RotateKey { idem, reply } => {
                let r = Box::pin(s.rotate_key(idem)).await;
                let _ = reply.send(r);
            }
            WsMsg::CreateAuthorization { req, idem, reply } => {
                s.idempotent(idem, Signs::Yes, reply, |s| s.create_authorization(req).map(|(ops, a)| (ops, Ok(a))));
            }
            WsMsg::Revoke { id, idem, reply } => {
                s.idempotent(idem, Signs::Yes, reply, |s| s.revoke(&id).map(|(ops, a)| (ops, Ok(a))));
            }
            WsMsg::Check { req, idem, reply } => {
                s.idempotent(idem, Signs::Yes, reply, |s| s.check(req).map(|(ops, a)| (ops, Ok(a))));
            }
            WsMsg::Confirm { nonce, answer, idem, reply } => {
                s.idempotent(idem, Signs::Yes, reply, |s| s.confirm(&nonce, answer));
            }
            WsMsg::Resolve { id, answer, idem, reply } => {
                s.idempotent(idem, Signs::Yes, reply, |s| s.resolve(&id, Some(answer)));
            }
            WsMsg::ExpireEscalation { id, reply } => {
                let r = s.not_diverged().and_then(|()| s.expire_escalation(&id));
                s.stage(r, reply);
            }
            WsMsg::SetScopeRules { rules, reply } => {
                // A receipt like any other: refused while the signer is down or the log is
                // fenced, so no rule is ever in force that the log does not show.
                let r =
                    s.shared.require_healthy().and_then(|()| s.not_diverged()).and_then(|()| s.set_scope_rules(rules));
                s.stage(r, reply);
            }
            // Through the actor like every change of the record: it writes the record whole.
            WsMsg::SetRateLimit { rate_limit, reply } => {
                let mut ws = s.ws.clone();
                ws.rate_limit = rate_limit;
                let view = views::workspace(&ws);
                s.ws = ws.clone();
                s.stage(view.map(|v| (vec![Op::PutWorkspace(ws)], Ok(v))), reply);
            }
            WsMsg::CreateWebhook { req, idem, reply } => {
                s.idempotent(idem, Signs::No, reply, |s| s.create_webhook(req));
            }
            WsMsg::SetWebhookDisabled { id, disabled, reason, idem, reply } => {
                s.idempotent(idem, Signs::No, reply, |s| s.set_webhook_disabled(&id, disabled, reason));
            }
            WsMsg::DeleteWebhook { id, reply } => {
                let r = s.delete_webhook(&id);
                s.stage(r, reply);
            }
            WsMsg::CancelDeliveries { webhook_id, after, reply } => {
                let r = s.cancel_deliveries(&webhook_id, Some(&after)).map(|(ops, next)| (ops, Ok(next)));
                s.stage(r, reply);
            }
            WsMsg::RotateWebhookSecret { id, grace_ms, idem, reply } => {
                s.idempotent(idem, Signs::No, reply, |s| s.rotate_webhook_secret(&id, grace_ms));
            }
            WsMsg::RetryDelivery { id, idem, reply } => {
                s.idempotent(idem, Signs::No, reply, |s| s.retry_delivery(&id));
            }
            WsMsg::CreateApiKey { roles, key_hash, sealed_secret, idem, reply } => {
                s.idempotent(idem, Signs::No, reply, |s| s.create_api_key(roles, key_hash, sealed_secret));
            }
            WsMsg::RevokeApiKey { id, idem, reply } => {
                s.idempotent(idem, Signs::No, reply, |s| s.revoke_api_key(&id));
            }
            WsMsg::SweepIdempotency { ids, reply } => {
                let r = s.sweep_idempotency(ids);
                s.stage(r, reply);
            }
            WsMsg::Flush
            | WsMsg::IdleCheck
            | WsMsg::Passivate { .. }
            | WsMsg::Committed { .. }
            | WsMsg::ResumeRotation => {}
        }
        if fetched {
            s.forget_fetched();
        }
        if !s.done.is_empty() && !s.flush_scheduled {
            s.flush_scheduled = true;
            // Lands behind every message already queued: they all share this commit. During a
            // drain self-messages are refused: commit now instead.
            if myself.send_message(WsMsg::Flush).is_err() {
                s.flush_scheduled = false;
                s.flush().await;
            }
        }
        Ok(())
    }
}

/// A receipt being built for one authorization: the trail fields come from the authorization.
struct Event<'a> {
    kind: EventKind,
    decision: Option<Decision>,
    reason: Option<&'a str>,
    scopes: Vec<String>,
    resource: Option<String>,
    time: Timestamp,
}

impl WsState {
    /// Stops this actor if it has had no request for `min_idle` and has nothing staged or
    /// queued; returns whether it is stopping. It unregisters first, so a new request starts a
    /// successor (which waits for this actor's life lock), then processes whatever is already
    /// queued and stops.
    fn passivate_if_idle(
        &self,
        myself: &ActorRef<WsMsg>,
        min_idle: Duration,
        cause: &str,
    ) -> Result<bool, ActorProcessingErr> {
        let since = now_ms().saturating_sub(self.last_used.load(Ordering::Relaxed));
        let idle = u128::from(since) >= min_idle.as_millis();
        if !(idle && self.done.is_empty() && self.queued.load(Ordering::Acquire) == 0) {
            return Ok(false);
        }
        self.shared.actors.remove_if(&self.ws.id, |_, h| h.actor.get_id() == myself.get_id());
        self.shared.metrics.passivations.with_label_values(&[cause]).inc();
        myself.drain()?;
        Ok(true)
    }

    /// Stages `ops` with an answer that is sent once they are durable (the answer may itself be
    /// an error that must leave a receipt, e.g. a used nonce). An outer error is answered now:
    /// nothing was staged.
    fn stage<T: Send + 'static>(&mut self, r: Result<(Vec<Op>, Result<T>)>, reply: Reply<T>) {
        match r {
            // Nothing to write (e.g. a replayed answer or a view): answer at once.
            Ok((ops, answer)) if ops.is_empty() => {
                let _ = reply.send(answer);
            }
            Ok((ops, answer)) => {
                self.ops.extend(ops);
                self.done.push(Box::new(move |res: Result<()>| {
                    let _ = reply.send(res.and(answer));
                }));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Runs `f` at most once per `Idempotency-Key`: a repeat with the same request gets the
    /// first answer again (after the first's commit, if that is still staged), a repeat with
    /// another request gets `IdempotencyMismatch`. The key's record is written in the same
    /// batch as the effects, so a crash cannot separate them. Only successful answers are
    /// recorded (a failed request may be retried with the same key).
    fn idempotent<T>(
        &mut self,
        idem: Option<Idem>,
        signs: Signs,
        reply: Reply<T>,
        f: impl FnOnce(&mut Self) -> Result<(Vec<Op>, Result<T>)>,
    ) where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let Some(idem) = idem else {
            // Every receipt-producing message passes here: a diverged workspace records none.
            let r = match signs {
                Signs::Yes => self.not_diverged().and_then(|()| f(self)),
                Signs::No => f(self),
            };
            return self.stage(r, reply);
        };
        let now = now_ms();
        match self.doc::<IdemDoc>(DocKind::Idempotency, &idem.doc_id) {
            Err(e) => return self.stage(Err(e), reply),
            Ok(Some((doc, staged))) if doc.is_live(now, self.shared.cfg.idempotency_ttl_ms()) => {
                let answer = doc.replay::<T>(&idem);
                if let Err(EngineError::IdempotencyMismatch) = answer {
                    return self.stage(Err(EngineError::IdempotencyMismatch), reply);
                }
                if staged {
                    // The first request's commit is still pending: answer with it, after it.
                    self.done.push(Box::new(move |res: Result<()>| {
                        let _ = reply.send(res.and(answer));
                    }));
                } else {
                    let _ = reply.send(answer);
                }
                return;
            }
            Ok(_) => {}
        }
        // A first use that records a receipt fails closed while the signer is down (a repeat
        // was answered above).
        if signs == Signs::Yes {
            if let Err(e) = self.shared.require_healthy().and_then(|()| self.not_diverged()) {
                return self.stage(Err(e), reply);
            }
        }
        let r = f(self).and_then(|(mut ops, answer)| {
            if let Ok(a) = &answer {
                self.put_doc(&mut ops, DocKind::Idempotency, &idem.doc_id, &IdemDoc::new(&idem, now, a)?)?;
            }
            Ok((ops, answer))
        });
        self.stage(r, reply);
    }

    /// A document: staged (`true`) or stored (`false`). A staged deletion is `null` in the
    /// overlay.
    fn doc<D: DeserializeOwned>(&self, kind: DocKind, id: &str) -> Result<Option<(D, bool)>> {
        let (v, staged) = match self.overlay.get(&(kind, id.to_owned())) {
            Some((serde_json::Value::Null, _)) => return Ok(None),
            Some((v, _)) => (v.clone(), true),
            None => {
                let stored = match self.fetched_doc(kind, id) {
                    Some(r) => r?,
                    None => self.shared.store.doc(kind, &self.ws.id, id)?,
                };
                match stored {
                    Some(v) => (v, false),
                    None => return Ok(None),
                }
            }
        };
        let d = serde_json::from_value(v).map_err(|e| EngineError::Internal(format!("stored {kind:?} {id}: {e}")))?;
        Ok(Some((d, staged)))
    }

    fn put_doc<D: Serialize>(&mut self, ops: &mut Vec<Op>, kind: DocKind, id: &str, d: &D) -> Result<()> {
        let v = serde_json::to_value(d).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.overlay.insert((kind, id.to_owned()), (v.clone(), self.group));
        ops.push(Op::PutDoc { kind, workspace_id: self.ws.id.clone(), id: id.to_owned(), doc: v });
        Ok(())
    }

    /// Hands everything staged to the committer as one group and goes on: the group's answers
    /// leave once its synced write returned (see `commit.rs`), while this actor decides the
    /// next group. Waits only if the committer's queue is full.
    async fn flush(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let done = std::mem::take(&mut self.done);
        let mut ops = std::mem::take(&mut self.ops);
        let rotation = (self.rotation_at, self.rotation_idem.clone());
        if self.meta_written.as_ref() != Some(&rotation) {
            ops.push(Op::PutLogMeta {
                workspace_id: self.ws.id.clone(),
                meta: allowly_store::LogMeta {
                    next_index: self.next_index,
                    rotation_at: rotation.0,
                    rotation_idempotency: rotation.1.clone(),
                },
            });
            // If this group fails, `reload` forgets it and the next group writes it again.
            self.meta_written = Some(rotation);
        }
        let (group, epoch, next_index) = (self.group, self.epoch, self.next_index);
        self.group += 1;
        let publish = if std::mem::take(&mut self.endpoints_changed) { self.endpoints.clone() } else { None };
        let wake = std::mem::take(&mut self.wake_webhooks);
        let (shared, ws, me) = (self.shared.clone(), self.ws.id.clone(), self.myself.clone());
        let (finished, last) = oneshot::channel();
        self.last_commit = Some(last);
        let requests = done.len();
        // Handed to the signing task once durable, so it need not read them back (a copy of
        // each body: the store consumes the ops).
        let receipts: Vec<crate::pipeline::Committed> = ops
            .iter()
            .filter_map(|op| match op {
                Op::PutReceipt(r) => Some((r.log_index, r.leaf, r.body.clone())),
                _ => None,
            })
            .collect();
        // Runs on the committer thread, in commit order.
        let completion: crate::commit::Completion = Box::new(move |res: Result<()>| {
            // Every request of the group gets the store's own error (its kind tells a full or
            // failing device from other failures).
            let failure = res.err().map(|e| match e {
                EngineError::Store(se) => se,
                other => allowly_store::StoreError::Engine(other.to_string()),
            });
            if failure.is_none() {
                if let Some(list) = publish {
                    shared.endpoints.publish(&ws, list);
                }
                if wake {
                    shared.webhook_wake.notify_one();
                }
            }
            for d in done {
                d(match &failure {
                    None => Ok(()),
                    Some(e) => Err(EngineError::Store(e.clone())),
                });
            }
            if failure.is_none() {
                shared.pipelines.committed(&shared.services, &ws, next_index, receipts);
            }
            // Refused only while the actor drains; it then waits for `finished` instead.
            let ok = failure.is_none();
            let _ = me.send_message(WsMsg::Committed { epoch, group, failed: failure });
            let _ = finished.send(ok);
        });
        if let Some(epoch) = self.lease_epoch {
            ops.push(Op::Fence { workspace_id: self.ws.id.clone(), epoch });
        }
        let batch = WriteBatch { ops };
        let sub =
            crate::commit::Submission { ws: self.ws.id.clone(), epoch: Some(epoch), batch, requests, done: completion };
        self.shared.committer.submit(sub).await;
    }

    /// Refuses to record a receipt in a workspace whose log disagrees with the signer's, or
    /// whose next index is reserved for a key rotation not finished yet.
    fn not_diverged(&self) -> Result<()> {
        self.shared.diverged.require_not(&self.ws.id, &self.shared.metrics)?;
        match self.rotation_at {
            None => Ok(()),
            Some(at) => Err(EngineError::SignerUnavailable(format!(
                "a key rotation at log index {at} is not finished; it is retried when the signer answers"
            ))),
        }
    }

    /// The time of a receipt decided now: the wall clock, but never before the previous
    /// receipt's (a clock stepped back holds receipt times until it catches up).
    fn receipt_now(&mut self) -> u64 {
        self.last_receipt_ms = now_ms().max(self.last_receipt_ms);
        self.last_receipt_ms
    }

    /// Forgets everything not known to be durable. If even the reload fails, the next request
    /// reloads again first, and fails if that fails too (the state stays "unknown", never
    /// guessed). The reads run off the async workers ([`Services::read_in_background`]): made
    /// inline, after a failed commit on a stalled volume they held the actor's worker, and
    /// every request and timer sharing it, until the volume answered.
    ///
    /// [`Services::read_in_background`]: crate::services::Services::read_in_background
    async fn reload(&mut self) {
        // Groups already handed over on top of the failed one are refused by the committer
        // (their epoch failed); everything from here on is decided on the reloaded state.
        self.epoch = crate::commit::new_epoch();
        self.forget_authorizations(true);
        self.durable_group = None;
        self.overlay.clear();
        self.staged_keys.clear();
        self.endpoints = None;
        self.endpoints_changed = false;
        self.wake_webhooks = false;
        self.meta_written = None;
        let id = self.ws.id.clone();
        let read = self.shared.read_in_background(move |store| Ok((store.workspace(&id)?, store.log_meta(&id)?)));
        match read.await {
            Ok((Some(ws), meta)) => {
                self.rules = rules_of(&ws);
                self.ws = ws;
                let meta = meta.unwrap_or_default();
                self.next_index = meta.next_index;
                self.rotation_at = meta.rotation_at;
                self.rotation_idem = meta.rotation_idempotency;
            }
            other => {
                tracing::error!(workspace = %self.ws.id, ?other, "cannot reload workspace state");
                self.next_index = u64::MAX;
            }
        }
    }

    fn authorization(&mut self, id: &str) -> Result<Option<AuthorizationRecord>> {
        if self.next_index == u64::MAX {
            // `handle` reloaded before this request, and that failed.
            return Err(EngineError::Internal("workspace state could not be reloaded".into()));
        }
        if let Some((a, _)) = self.auths.get(id) {
            return Ok(Some(a.clone()));
        }
        let a = match self.fetched_authorization(id) {
            Some(r) => r?,
            None => self.shared.store.authorization(&self.ws.id, id)?,
        };
        if let Some(a) = &a {
            self.cache_authorization(a.clone(), None);
        }
        Ok(a)
    }

    /// Caches `a` (changed by group `changed_in`, or as read from the store), first making room
    /// when this actor or the whole engine is over its budget.
    fn cache_authorization(&mut self, a: AuthorizationRecord, changed_in: Option<u64>) {
        if !self.auths.contains_key(&a.id) {
            let total = self.shared.cached_authorizations.load(Ordering::Relaxed);
            if self.auths.len() >= MAX_CACHED_AUTHORIZATIONS || total >= self.shared.cfg.max_cached_authorizations {
                self.forget_authorizations(false);
            }
            self.shared.cached_authorizations.fetch_add(1, Ordering::Relaxed);
        }
        self.auths.insert(a.id.clone(), (a, changed_in));
    }

    /// Drops cached authorizations: all of them (`all`, when the store is the truth again), or
    /// only those the store already has — never one a staged or in-flight group changed, which
    /// a reread would get stale (a reused `seq`, a wrong `prev`: a forked trail).
    fn forget_authorizations(&mut self, all: bool) {
        let before = self.auths.len();
        if all {
            self.auths.clear();
        } else {
            let durable = self.durable_group;
            self.auths.retain(|_, (_, changed)| match (changed, durable) {
                (None, _) => false,
                (Some(g), Some(d)) => *g > d,
                (Some(_), None) => true,
            });
        }
        self.shared.cached_authorizations.fetch_sub(before - self.auths.len(), Ordering::Relaxed);
        let kept = &self.auths;
        self.state_hashes.get_mut().retain(|id, _| kept.contains_key(id));
    }

    /// `auth_state_hash(a)`, computed once per authorization and revocation state.
    fn state_hash(&self, a: &AuthorizationRecord) -> Result<HexHash> {
        let mut cache = self.state_hashes.borrow_mut();
        if let Some((revoked, h)) = cache.get(&a.id) {
            if *revoked == a.revoked_at_ms {
                return Ok(*h);
            }
        }
        let h = auth_state_hash(a)?;
        if cache.len() >= MAX_CACHED_AUTHORIZATIONS {
            cache.clear();
        }
        cache.insert(a.id.clone(), (a.revoked_at_ms, h));
        Ok(h)
    }

    /// Builds the next receipt of `a`'s trail at the next log index, advancing `a` and `index`
    /// (the caller's copies: they become the actor's state only if everything succeeds).
    fn receipt(
        &self,
        a: &mut AuthorizationRecord,
        index: &mut u64,
        ev: Event<'_>,
        fill: impl FnOnce(&mut ReceiptBody),
    ) -> Result<ReceiptRecord> {
        let seq = a.next_seq;
        let mut body = self.body_at(*index, ev)?;
        body.authorization_id = Some(a.id.clone());
        body.seq = Some(seq);
        body.prev = (seq > 0).then_some(HexHash(a.last_leaf));
        body.auth_state_hash = Some(self.state_hash(a)?);
        fill(&mut body);
        let rec = seal(&body)?;
        *index += 1;
        a.next_seq += 1;
        a.last_leaf = rec.leaf;
        Ok(rec)
    }

    /// The body of `ev` at log index `index`, as a workspace event (no trail: no
    /// authorization, `seq`, `prev` or state); [`Self::receipt`] adds the trail.
    fn body_at(&self, index: u64, ev: Event<'_>) -> Result<ReceiptBody> {
        Ok(ReceiptBody {
            v: FORMAT_VERSION,
            id: crate::ids::receipt_id(index)?,
            workspace_id: self.ws.id.clone(),
            authorization_id: None,
            seq: None,
            prev: None,
            log_index: index,
            kind: ev.kind,
            decision: ev.decision,
            reason: ev.reason.map(str::to_owned),
            scopes: ev.scopes,
            resource: ev.resource,
            time: ev.time,
            auth_state_hash: None,
            grant: None,
            approval: None,
            escalation_id: None,
            context_hash: None,
            key: None,
            asked_authorization_id: None,
            expires_at: None,
            scope_rules: None,
        })
    }

    /// Replaces the workspace's scope rules and records the whole new set as a
    /// `scope_rules.changed` workspace event (format 1.1) in the same commit, so the log holds
    /// the rules every later decision was made under.
    fn set_scope_rules(&mut self, rules: BTreeMap<String, ScopeRule>) -> Result<(Vec<Op>, Result<ScopeRulesChange>)> {
        let now = self.receipt_now();
        let mut ws = self.ws.clone();
        ws.scope_rules = rules;
        let workspace = views::workspace(&ws)?;
        let index = self.next_index;
        let ev = Event {
            kind: EventKind::ScopeRulesChanged,
            decision: None,
            reason: None,
            scopes: Vec::new(),
            resource: None,
            time: ts(now)?,
        };
        let mut body = self.body_at(index, ev)?;
        let kind = |r: &ScopeRule| match r {
            ScopeRule::Confirm => RuleKind::Confirm,
            ScopeRule::Escalate => RuleKind::Escalate,
        };
        body.scope_rules = Some(ws.scope_rules.iter().map(|(p, r)| (p.clone(), kind(r))).collect());
        let rec = seal(&body)?;
        let receipt = pending_envelope(&rec)?;
        self.next_index = index + 1;
        self.rules = rules_of(&ws);
        self.ws = ws.clone();
        Ok((vec![Op::PutReceipt(rec), Op::PutWorkspace(ws)], Ok(ScopeRulesChange { workspace, receipt })))
    }

    /// A check naming no authorization of this workspace (a typo, a stale id, another
    /// workspace's id, a probing agent): denied, and recorded like every decision. There is
    /// no trail to chain it into, so its receipt is a workspace event (format 1.1) that says
    /// which id was asked for; an auditor finds it in the workspace log.
    fn check_unknown(&mut self, req: CheckRequest, now: u64) -> Result<(Vec<Op>, CheckOutcome)> {
        let reason = Reason::UnknownAuthorization;
        let index = self.next_index;
        let ev = Event {
            kind: EventKind::Check,
            decision: Some(Decision::Deny),
            reason: Some(reason.as_str()),
            scopes: req.scopes,
            resource: req.resource,
            time: ts(now)?,
        };
        let mut body = self.body_at(index, ev)?;
        body.context_hash = req.context.as_ref().map(json_hash).transpose()?;
        body.asked_authorization_id = Some(req.authorization_id);
        let rec = seal(&body)?;
        self.next_index = index + 1;
        self.shared.metrics.decided(reason);
        let outcome = CheckOutcome {
            decision: Decision::Deny,
            reason: reason.as_str().into(),
            receipt: Some(pending_envelope(&rec)?),
            confirmation: None,
            escalation: None,
        };
        Ok((vec![Op::PutReceipt(rec)], outcome))
    }

    /// The first time an authorization's expiry matters, records it in the trail (before the
    /// receipt of whatever it mattered to); later times record nothing.
    fn record_expiry(
        &self,
        a: &mut AuthorizationRecord,
        index: &mut u64,
        time: Timestamp,
        receipts: &mut Vec<ReceiptRecord>,
    ) -> Result<()> {
        if a.expiry_recorded {
            return Ok(());
        }
        let ev = Event {
            kind: EventKind::Expiry,
            decision: None,
            reason: Some("expired"),
            scopes: a.scopes.clone(),
            resource: None,
            time,
        };
        receipts.push(self.receipt(a, index, ev, |_| {})?);
        a.expiry_recorded = true;
        Ok(())
    }

    /// Makes `a` and `index` the actor's state and returns the ops that persist them.
    fn advance(&mut self, a: AuthorizationRecord, index: u64, receipts: Vec<ReceiptRecord>) -> Vec<Op> {
        self.next_index = index;
        let mut ops: Vec<Op> = receipts.into_iter().map(Op::PutReceipt).collect();
        // The trail head (`next_seq`, `last_leaf`) is stored by the receipts' trail entries, so
        // the record is written only when something else changed (created, revoked, expiry
        // recorded): a plain check writes no authorization record.
        let group = self.group;
        if let Some((cached, changed_in)) = self.auths.get_mut(&a.id) {
            // Updated in place: a check is the common case, and its record is already cached.
            if !cached.same_stored(&a) {
                ops.push(Op::PutAuthorization(a.clone()));
            }
            *cached = a;
            *changed_in = Some(group);
        } else {
            ops.push(Op::PutAuthorization(a.clone()));
            self.cache_authorization(a, Some(group));
        }
        ops
    }

    fn create_authorization(&mut self, req: NewAuthorization) -> Result<(Vec<Op>, AuthorizationChange)> {
        let now = self.receipt_now();
        crate::validate::expires_in_future(&req, now)?;
        let metadata_hash = req.metadata.as_ref().map(json_hash).transpose()?;
        let mut a = AuthorizationRecord {
            id: new_id("au_")?,
            workspace_id: self.ws.id.clone(),
            subject: req.subject,
            scopes: req.scopes,
            resources: req.resources,
            expires_at_ms: req.expires_at.map(Timestamp::unix_ms),
            metadata: req.metadata.unwrap_or(serde_json::Value::Null),
            created_at_ms: now,
            revoked_at_ms: None,
            expiry_recorded: false,
            next_seq: 0,
            last_leaf: [0; 32],
        };
        let grant = ReceiptGrant {
            subject: a.subject.clone(),
            scopes: a.scopes.clone(),
            resources: a.resources.clone(),
            expires_at: req.expires_at,
            metadata_hash,
        };
        let mut index = self.next_index;
        let ev = Event {
            kind: EventKind::AuthorizationCreated,
            decision: None,
            reason: None,
            scopes: a.scopes.clone(),
            resource: None,
            time: ts(now)?,
        };
        let rec = self.receipt(&mut a, &mut index, ev, |b| b.grant = Some(grant))?;
        let answer =
            AuthorizationChange { authorization: views::authorization(&a, now)?, receipt: pending_envelope(&rec)? };
        Ok((self.advance(a, index, vec![rec]), answer))
    }

    fn revoke(&mut self, id: &str) -> Result<(Vec<Op>, AuthorizationChange)> {
        let now = self.receipt_now();
        let Some(mut a) = self.authorization(id)? else { return Err(EngineError::NotFound { what: "authorization" }) };
        if a.revoked_at_ms.is_some() {
            return Err(EngineError::Conflict("authorization is already revoked".into()));
        }
        // Read before anything changes, so a store error leaves the actor's state as it was.
        let endpoints = self.endpoint_list()?;
        a.revoked_at_ms = Some(now);
        let mut index = self.next_index;
        let ev = Event {
            kind: EventKind::Revocation,
            decision: None,
            reason: Some("revoked"),
            scopes: a.scopes.clone(),
            resource: None,
            time: ts(now)?,
        };
        let rec = self.receipt(&mut a, &mut index, ev, |_| {})?;
        let answer =
            AuthorizationChange { authorization: views::authorization(&a, now)?, receipt: pending_envelope(&rec)? };
        let data = serde_json::json!({
            "workspace_id": self.ws.id,
            "authorization_id": a.id,
            "reason": "revoked",
            "receipt": answer.receipt,
        });
        let events = self.event_ops(&endpoints, EventType::AuthorizationRevoked, now, data)?;
        let mut ops = self.advance(a, index, vec![rec]);
        ops.extend(events);
        Ok((ops, answer))
    }

    fn check(&mut self, req: CheckRequest) -> Result<(Vec<Op>, CheckOutcome)> {
        let now = self.receipt_now();
        let Some(mut a) = self.authorization(&req.authorization_id)? else {
            return self.check_unknown(req, now);
        };
        let grant = decide::Grant {
            scopes: &a.scopes,
            resources: &a.resources,
            expires_at_ms: a.expires_at_ms,
            revoked: a.revoked_at_ms.is_some(),
        };
        let ask = decide::Ask { scopes: &req.scopes, resource: req.resource.as_deref(), now_ms: now };
        let (verdict, reason) = decide::decide(grant, ask, &self.rules);
        // Read before anything changes, so a store error leaves the actor's state as it was.
        let endpoints = if verdict == Verdict::Escalate { self.endpoint_list()? } else { Vec::new() };
        let time = ts(now)?;
        let mut index = self.next_index;
        let mut receipts = Vec::with_capacity(2);
        if reason == Reason::Expired {
            self.record_expiry(&mut a, &mut index, time, &mut receipts)?;
        }
        let decision = match verdict {
            Verdict::Allow => Decision::Allow,
            Verdict::Deny => Decision::Deny,
            Verdict::Confirm => Decision::Confirm,
            Verdict::Escalate => Decision::Escalate,
        };
        let context_hash = req.context.as_ref().map(json_hash).transpose()?;
        let escalation = match verdict {
            Verdict::Escalate => Some(EscalationInfo {
                id: new_id("esc_")?,
                expires_at: ts(now.saturating_add(self.shared.cfg.escalation_ttl.as_millis() as u64))?,
            }),
            _ => None,
        };
        let confirmation = match verdict {
            Verdict::Confirm => Some(ConfirmationInfo {
                nonce: new_id("cn_")?,
                expires_at: ts(now.saturating_add(self.shared.cfg.confirmation_ttl.as_millis() as u64))?,
                scopes: req.scopes.clone(),
                resource: req.resource.clone(),
            }),
            _ => None,
        };
        let ev = Event {
            kind: EventKind::Check,
            decision: Some(decision),
            reason: Some(reason.as_str()),
            scopes: req.scopes,
            resource: req.resource,
            time,
        };
        let escalation_id = escalation.as_ref().map(|e| e.id.clone());
        // Format 1.1: the deadline of what the decision opened is signed with it, so the
        // trail alone tells an answer in time from a late one.
        let expires_at = escalation.as_ref().map(|e| e.expires_at).or(confirmation.as_ref().map(|c| c.expires_at));
        let (scopes, resource) = (ev.scopes.clone(), ev.resource.clone());
        let rec = self.receipt(&mut a, &mut index, ev, |b| {
            b.context_hash = context_hash;
            b.escalation_id = escalation_id;
            b.expires_at = expires_at;
        })?;
        let mut docs = Vec::new();
        if let Some(c) = &confirmation {
            let opened = hitl::Opened::new(&a.id, &rec.id, scopes.clone(), resource.clone(), now, c.expires_at);
            let doc = hitl::ConfirmationDoc::new(opened);
            self.put_doc(&mut docs, DocKind::Confirmation, &c.nonce, &doc)?;
            // Counted by `allowly_engine_confirmations_pending` until answered or expired.
            docs.push(doc.due_put_op(&self.ws.id, &c.nonce));
        }
        if let Some(e) = &escalation {
            let data = serde_json::json!({
                "workspace_id": self.ws.id,
                "authorization_id": a.id,
                "escalation_id": e.id,
                "decision": decision,
                "reason": reason.as_str(),
                "scopes": scopes,
                "resource": resource,
                "expires_at": e.expires_at,
                "receipt": pending_envelope(&rec)?,
            });
            let (events, routed_to) =
                self.escalation_event_ops(&endpoints, EventType::EscalationRequested, &scopes, now, data)?;
            docs.extend(events);
            let mut doc =
                hitl::EscalationDoc::new(hitl::Opened::new(&a.id, &rec.id, scopes, resource, now, e.expires_at));
            doc.routed_to = routed_to;
            self.put_doc(&mut docs, DocKind::Escalation, &e.id, &doc)?;
            // Indexed by due time, so it expires (receipt, `escalation.resolved`) on time even
            // if nobody looks at it.
            let due = doc.due(&self.ws.id, &e.id);
            let entry = serde_json::to_value(&due).map_err(|e| EngineError::Internal(e.to_string()))?;
            docs.push(Op::PutDoc {
                kind: DocKind::EscalationDue,
                workspace_id: hitl::DUE_SCOPE.into(),
                id: due.id(),
                doc: entry,
            });
        }
        self.shared.metrics.decided(reason);
        let outcome = CheckOutcome {
            decision,
            reason: reason.as_str().into(),
            receipt: Some(pending_envelope(&rec)?),
            confirmation,
            escalation,
        };
        receipts.push(rec);
        let mut ops = self.advance(a, index, receipts);
        ops.extend(docs);
        Ok((ops, outcome))
    }
}

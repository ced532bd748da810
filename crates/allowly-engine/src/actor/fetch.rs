//! The store reads a request needs that its workspace actor does not hold — an authorization,
//! an `Idempotency-Key` record, a confirmation, escalation, webhook or delivery, an API key, the
//! webhook endpoints, a page of the outbox a deleted endpoint's deliveries are cancelled from
//! (and those deliveries) — done before the request is decided, off the async workers and within
//! the request's deadline.
//!
//! Made inline, such a read held the actor's async worker for as long as the data volume took
//! to answer: on a volume whose reads stall, two of them held both workers of a 2-core machine
//! and nothing was answered any more, `/healthz` included. Now the actor awaits the reads on
//! the blocking pool (bounded: [`Services::read_until`]). Past the request's deadline, less a
//! margin so that the answer reaches the asker before it gives up, the request is answered
//! `read_timeout`: nothing of it was decided, the outcome is known. The actor itself waits for
//! the reads (it decides one request at a time, in order) but holds no thread meanwhile; the
//! requests queued behind it wait within their own deadlines, as behind a slow commit.
//!
//! What was read is kept for this one request ([`Fetched`]) and consulted by the actor's read
//! functions after its own state (authorization cache, overlay, staged keys) and before the
//! store: the actor's state stays the truth for what it changed, and nothing read here outlives
//! the request. A read that timed out leaves its error there instead, returned by any read the
//! request then makes that the actor's state does not answer. A request whose data the actor
//! holds — a check of a cached authorization without an `Idempotency-Key` — reads nothing:
//! no allocation, no hop.
//!
//! [`Services::read_until`]: crate::services::Services::read_until

use std::collections::HashMap;

use allowly_store::{ApiKeyRecord, AuthorizationRecord, DocKind, StoreError};
use allowly_webhooks::model::{delivery_prefix, DeliveryDoc, OutboxDoc};
use tokio::time::Instant;

use super::{ConfirmationDoc, EscalationDoc, WsState};
use crate::decide::Rule;
use crate::error::{EngineError, Result};
use crate::mailbox::WsMsg;

/// What one request needs from the store beyond the actor's state.
#[derive(Default)]
pub(super) struct Wanted {
    docs: Vec<(DocKind, String)>,
    authorizations: Vec<String>,
    api_keys: Vec<String>,
    /// Also read what a fetched document points to: the authorization of a confirmation or an
    /// escalation, the webhook of a delivery.
    follow: bool,
    /// Load the workspace's webhook endpoints into the shared cache.
    endpoints: bool,
    /// The outbox page after this entry (from the start: `None`) whose entries of this
    /// endpoint's deliveries are to be cancelled, and those deliveries.
    outbox: Option<OutboxPage>,
}

/// Which outbox page: the endpoint whose deliveries are cancelled, and the entry it follows.
type OutboxPage = (String, Option<String>);
/// A stored document and its id.
type Doc = (String, serde_json::Value);

impl Wanted {
    fn is_empty(&self) -> bool {
        self.docs.is_empty()
            && self.authorizations.is_empty()
            && self.api_keys.is_empty()
            && !self.endpoints
            && self.outbox.is_none()
    }
}

/// What was read for the request being decided (empty, allocating nothing, otherwise). Each
/// entry keeps the store's own answer, errors included, so the request meets exactly what an
/// inline read would have given it.
#[derive(Default)]
pub(super) struct Fetched {
    docs: HashMap<(DocKind, String), std::result::Result<Option<serde_json::Value>, StoreError>>,
    authorizations: HashMap<String, std::result::Result<Option<AuthorizationRecord>, StoreError>>,
    api_keys: HashMap<String, std::result::Result<Option<ApiKeyRecord>, StoreError>>,
    /// The webhook endpoints were loaded (into the shared cache), or tried.
    endpoints: bool,
    /// The outbox page read, and which.
    outbox: Option<(OutboxPage, std::result::Result<Vec<Doc>, StoreError>)>,
    /// The reads did not finish in time (`ReadTimeout`), or could not be run.
    failed: Option<EngineError>,
}

impl Fetched {
    fn is_empty(&self) -> bool {
        self.failed.is_none()
            && self.docs.is_empty()
            && self.authorizations.is_empty()
            && self.api_keys.is_empty()
            && self.outbox.is_none()
    }

    /// The answer kept for `key` in `map`, or the failure of the reads; `None`: read the store.
    fn answer<K, V>(
        &self,
        map: &HashMap<K, std::result::Result<Option<V>, StoreError>>,
        key: impl FnOnce() -> K,
    ) -> Option<Result<Option<V>>>
    where
        K: std::hash::Hash + Eq,
        V: Clone,
    {
        if self.is_empty() {
            return None;
        }
        if let Some(r) = map.get(&key()) {
            return Some(r.clone().map_err(EngineError::from));
        }
        self.failed.as_ref().map(|e| Err(again(e)))
    }
}

/// The same error once more (each read that meets a failed fetch returns it).
fn again(e: &EngineError) -> EngineError {
    match e {
        EngineError::ReadTimeout(m) => EngineError::ReadTimeout(m.clone()),
        EngineError::Store(s) => EngineError::Store(s.clone()),
        other => EngineError::Internal(other.to_string()),
    }
}

impl WsState {
    /// What `msg` will read that this actor does not hold and was not read for it yet; `None`
    /// when nothing (the common case: a check of a cached authorization, no
    /// `Idempotency-Key`). A keyed request's record comes first, alone: a repeat is answered
    /// from it and reads nothing else (after a restart, a client's retries do not load the
    /// authorizations they do not need).
    pub(super) fn wanted(&self, msg: &WsMsg) -> Option<Wanted> {
        let mut w = Wanted::default();
        if let Some(idem) = msg.idem() {
            self.want_doc(&mut w, DocKind::Idempotency, &idem.doc_id);
            if !w.is_empty() {
                return Some(w);
            }
            if self.fetched_replay(&idem.doc_id) {
                return None;
            }
        }
        match msg {
            WsMsg::Check { req, .. } => {
                self.want_authorization(&mut w, &req.authorization_id);
                // Only an escalation reads the endpoints (its event is routed by them).
                if self.rules.values().any(|r| *r == Rule::Escalate) {
                    self.want_endpoints(&mut w);
                }
            }
            WsMsg::Revoke { id, .. } => {
                self.want_authorization(&mut w, id);
                self.want_endpoints(&mut w);
            }
            WsMsg::Confirm { nonce, .. } => {
                self.want_doc(&mut w, DocKind::Confirmation, nonce);
                w.follow = true;
            }
            WsMsg::Resolve { id, .. } | WsMsg::ExpireEscalation { id, .. } => {
                self.want_doc(&mut w, DocKind::Escalation, id);
                w.follow = true;
                self.want_endpoints(&mut w);
            }
            WsMsg::CreateWebhook { .. } => self.want_endpoints(&mut w),
            WsMsg::SetWebhookDisabled { id, .. } | WsMsg::RotateWebhookSecret { id, .. } => {
                self.want_doc(&mut w, DocKind::Webhook, id);
                self.want_endpoints(&mut w);
            }
            WsMsg::DeleteWebhook { id, .. } => {
                self.want_doc(&mut w, DocKind::Webhook, id);
                self.want_endpoints(&mut w);
                self.want_outbox(&mut w, id, None);
            }
            WsMsg::CancelDeliveries { webhook_id, after, .. } => self.want_outbox(&mut w, webhook_id, Some(after)),
            WsMsg::RetryDelivery { id, .. } => {
                self.want_doc(&mut w, DocKind::Delivery, id);
                w.follow = true;
            }
            WsMsg::RevokeApiKey { id, .. }
                if !self.staged_keys.contains_key(id) && !self.fetched.api_keys.contains_key(id) =>
            {
                w.api_keys.push(id.clone())
            }
            WsMsg::SweepIdempotency { ids, .. } => {
                for id in ids {
                    self.want_doc(&mut w, DocKind::Idempotency, id);
                }
            }
            _ => {}
        }
        (!w.is_empty()).then_some(w)
    }

    fn want_doc(&self, w: &mut Wanted, kind: DocKind, id: &str) {
        let key = (kind, id.to_owned());
        if !self.overlay.contains_key(&key) && !self.fetched.docs.contains_key(&key) {
            w.docs.push(key);
        }
    }

    fn want_authorization(&self, w: &mut Wanted, id: &str) {
        if !self.auths.contains_key(id) && !self.fetched.authorizations.contains_key(id) {
            w.authorizations.push(id.to_owned());
        }
    }

    /// Whether the `Idempotency-Key` record `doc_id` was read for this request and answers it
    /// (a live record: the request is a repeat).
    fn fetched_replay(&self, doc_id: &str) -> bool {
        let Some(Ok(Some(v))) = self.fetched.docs.get(&(DocKind::Idempotency, doc_id.to_owned())) else {
            return false;
        };
        serde_json::from_value::<super::IdemDoc>(v.clone())
            .is_ok_and(|d| d.is_live(crate::clock::now_ms(), self.shared.cfg.idempotency_ttl_ms()))
    }

    fn want_outbox(&self, w: &mut Wanted, webhook_id: &str, after: Option<&str>) {
        if self.fetched.outbox.is_none() {
            w.outbox = Some((webhook_id.to_owned(), after.map(str::to_owned)));
        }
    }

    fn want_endpoints(&self, w: &mut Wanted) {
        w.endpoints =
            self.endpoints.is_none() && !self.fetched.endpoints && !self.shared.endpoints.is_loaded(&self.ws.id);
    }

    /// Reads what the request `msg` needs ([`WsState::wanted`]: its `Idempotency-Key` record
    /// first, then the rest unless it is a repeat) off the async workers, answered a margin
    /// before `deadline` (the asker's): what was read, or the failure, is kept for the request
    /// about to be decided. Whether anything was read.
    pub(super) async fn fetch_for(&mut self, msg: &WsMsg) -> bool {
        let Some(deadline) = msg.asker().map(|a| a.deadline()) else { return false };
        let mut fetched = false;
        // Two rounds at most (the keyed record, then the rest): each reads only what was not
        // read before, and a failure ends it.
        for _ in 0..2 {
            let Some(w) = self.wanted(msg) else { break };
            fetched = true;
            // Boxed: most requests read nothing, and this future would otherwise make every
            // message's (`WorkspaceActor::handle`) ~900 bytes larger.
            Box::pin(self.fetch(w, deadline)).await;
            if self.fetched.failed.is_some() {
                break;
            }
        }
        fetched
    }

    /// One round of [`WsState::fetch_for`].
    async fn fetch(&mut self, w: Wanted, deadline: Instant) {
        // A twentieth of the request's bound (50 ms of the default second): the `read_timeout`
        // answer must reach the asker before its own timer answers `commit_timeout`.
        let margin = self.shared.cfg.commit_timeout / 20;
        let until = deadline.checked_sub(margin).unwrap_or(deadline);
        let (shared, ws, endpoints) = (self.shared.clone(), self.ws.id.clone(), w.endpoints);
        let read = move || {
            let store = &*shared.store;
            let mut f = Fetched::default();
            let mut then = Vec::new();
            for (kind, id) in w.docs {
                let r = store.doc(kind, &ws, &id);
                if let (true, Ok(Some(v))) = (w.follow, &r) {
                    then.extend(follow(kind, v));
                }
                f.docs.insert((kind, id), r);
            }
            for id in w.authorizations {
                let r = store.authorization(&ws, &id);
                f.authorizations.insert(id, r);
            }
            for next in then {
                match next {
                    Then::Webhook(id) => {
                        let r = store.doc(DocKind::Webhook, &ws, &id);
                        f.docs.insert((DocKind::Webhook, id), r);
                    }
                    Then::Authorization(id) => {
                        let r = store.authorization(&ws, &id);
                        f.authorizations.insert(id, r);
                    }
                }
            }
            for id in w.api_keys {
                let r = store.api_key_by_id(Some(&ws), &id);
                f.api_keys.insert(id, r);
            }
            if w.endpoints {
                // Into the shared cache; an error is met again by the request's own read.
                let _ = shared.endpoints.get(store, &ws);
            }
            if let Some((webhook_id, after)) = w.outbox {
                let page = store.docs(DocKind::Outbox, &ws, after.as_deref(), super::webhooks::CANCEL_PAGE);
                // The deliveries the cancelling decides on: this endpoint's, by their id.
                let prefix = delivery_prefix(&webhook_id);
                for (_, v) in page.iter().flatten() {
                    let Ok(entry) = serde_json::from_value::<OutboxDoc>(v.clone()) else { continue };
                    if entry.delivery_id.starts_with(&prefix) {
                        let r = store.doc(DocKind::Delivery, &ws, &entry.delivery_id);
                        f.docs.insert((DocKind::Delivery, entry.delivery_id), r);
                    }
                }
                f.outbox = Some(((webhook_id, after), page));
            }
            Ok(f)
        };
        match self.shared.services.read_until(until, read).await {
            Ok(f) => {
                self.fetched.docs.extend(f.docs);
                self.fetched.authorizations.extend(f.authorizations);
                self.fetched.api_keys.extend(f.api_keys);
                self.fetched.endpoints |= endpoints;
                if f.outbox.is_some() {
                    self.fetched.outbox = f.outbox;
                }
            }
            Err(e) => self.fetched.failed = Some(e),
        }
    }

    /// Forgets what was read for the request just decided.
    pub(super) fn forget_fetched(&mut self) {
        self.fetched = Fetched::default();
    }

    /// A document as read for the request being decided; `None`: read the store.
    pub(super) fn fetched_doc(&self, kind: DocKind, id: &str) -> Option<Result<Option<serde_json::Value>>> {
        self.fetched.answer(&self.fetched.docs, || (kind, id.to_owned()))
    }

    /// The outbox page after `after` as read for the request being decided (cancelling
    /// `webhook_id`'s deliveries); `None`: read the store.
    pub(super) fn fetched_outbox(&self, webhook_id: &str, after: Option<&str>) -> Option<Result<Vec<Doc>>> {
        if let Some(((w, a), page)) = &self.fetched.outbox {
            if w == webhook_id && a.as_deref() == after {
                return Some(page.clone().map_err(EngineError::from));
            }
        }
        self.fetched.failed.as_ref().map(|e| Err(again(e)))
    }

    /// An authorization as read for the request being decided; `None`: read the store.
    pub(super) fn fetched_authorization(&self, id: &str) -> Option<Result<Option<AuthorizationRecord>>> {
        self.fetched.answer(&self.fetched.authorizations, || id.to_owned())
    }

    /// An API key as read for the request being decided; `None`: read the store.
    pub(super) fn fetched_api_key(&self, id: &str) -> Option<Result<Option<ApiKeyRecord>>> {
        self.fetched.answer(&self.fetched.api_keys, || id.to_owned())
    }

    /// The failure of the reads for the request being decided, if they failed: a read that
    /// nothing was fetched for (the endpoints) does not go to the stalled volume either.
    pub(super) fn fetch_failed(&self) -> Result<()> {
        self.fetched.failed.as_ref().map_or(Ok(()), |e| Err(again(e)))
    }
}

/// What a fetched document points to.
enum Then {
    Authorization(String),
    Webhook(String),
}

/// What a stored document points to that deciding on it reads too. A document that does not
/// parse is left to the request's own read, which reports it.
fn follow(kind: DocKind, v: &serde_json::Value) -> Option<Then> {
    let v = v.clone();
    match kind {
        DocKind::Confirmation => serde_json::from_value::<ConfirmationDoc>(v)
            .ok()
            .map(|d| Then::Authorization(d.authorization_id().to_owned())),
        DocKind::Escalation => serde_json::from_value::<EscalationDoc>(v)
            .ok()
            .map(|d| Then::Authorization(d.authorization_id().to_owned())),
        DocKind::Delivery => serde_json::from_value::<DeliveryDoc>(v).ok().map(|d| Then::Webhook(d.webhook_id)),
        _ => None,
    }
}

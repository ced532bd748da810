//! Webhooks on the engine's side: which endpoints want which events, the events themselves, and
//! the endpoint API. Sending is `allowly-webhooks`' worker's job; the engine only makes events
//! durable.
//!
//! - Endpoint writes (create, disable, enable, and "disable: 410 Gone" from the worker through
//!   [`allowly_webhooks::Control`]) go through the workspace actor, so they are sequenced with
//!   each other and with the events they affect: an event staged after a staged endpoint change
//!   in the same group commit already sees it.
//! - Events are enqueued (a delivery + an outbox entry per subscribed, enabled endpoint) in the
//!   same write as the receipt that causes them — the actor's group commit for
//!   `escalation.requested`, `escalation.resolved` and `authorization.revoked`, the pipeline's
//!   signature write for `receipt.signed` — so an event exists iff its receipt (or signature)
//!   does. After such a write the worker is woken.
//! - [`Endpoints`] caches each workspace's endpoint list as last committed (ids, events,
//!   disabled: no URL, no secret) for the pipeline and the actors; the actor replaces an entry
//!   after committing a change.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use allowly_store::{DocKind, Store, StoreError};
use allowly_webhooks::model::{
    decode, delivery_prefix, DeliveryDoc, DisabledReason, Endpoint, WebhookDoc, MAX_WEBHOOKS_PER_WORKSPACE,
};
use allowly_webhooks::{DeliveryView, WebhookError, WebhookView};
use dashmap::DashMap;

use crate::engine::{idempotency, Engine};
use crate::error::{EngineError, Result};
use crate::model::Page;

impl From<WebhookError> for EngineError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Store(s) => EngineError::Store(s),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

/// Each workspace's endpoints as last committed, loaded from the store on first use.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    map: DashMap<String, Arc<[Endpoint]>>,
}

impl Endpoints {
    /// Workspace `ws`'s endpoints. A load happens under the map's entry lock, so it cannot
    /// overwrite a newer list [`Endpoints::publish`]ed meanwhile.
    pub fn get(&self, store: &dyn Store, ws: &str) -> Result<Arc<[Endpoint]>> {
        if let Some(e) = self.map.get(ws) {
            return Ok(e.clone());
        }
        match self.map.entry(ws.to_owned()) {
            dashmap::Entry::Occupied(e) => Ok(e.get().clone()),
            dashmap::Entry::Vacant(v) => {
                let list: Arc<[Endpoint]> = load(store, ws)?.into();
                Ok(v.insert(list).clone())
            }
        }
    }

    /// Replaces `ws`'s list after a committed change.
    pub fn publish(&self, ws: &str, list: Vec<Endpoint>) {
        self.map.insert(ws.to_owned(), list.into());
    }
}

/// Every endpoint of `ws` from the store.
pub(crate) fn load(store: &dyn Store, ws: &str) -> Result<Vec<Endpoint>> {
    docs(store, ws)?.into_iter().map(|(id, d)| Ok(d.endpoint(&id))).collect()
}

fn docs(store: &dyn Store, ws: &str) -> Result<Vec<(String, WebhookDoc)>> {
    store
        .docs(DocKind::Webhook, ws, None, MAX_WEBHOOKS_PER_WORKSPACE + 1)?
        .into_iter()
        .map(|(id, v)| Ok((id.clone(), decode("webhook", &id, v)?)))
        .collect()
}

fn not_found(what: &'static str) -> impl Fn(StoreError) -> EngineError {
    move |e| match e {
        StoreError::InvalidId { .. } => EngineError::NotFound { what },
        other => EngineError::Store(other),
    }
}

impl Engine {
    pub(crate) fn webhook_doc(&self, ws: &str, id: &str) -> Result<WebhookDoc> {
        let store = &self.shared().store;
        let v = store.doc(DocKind::Webhook, ws, id).map_err(not_found("webhook"))?;
        let v = v.ok_or(EngineError::NotFound { what: "webhook" })?;
        Ok(decode("webhook", id, v)?)
    }

    /// Creates a webhook endpoint (at most 16 per workspace). The answer is the only time its
    /// signing secret is shown.
    pub async fn create_webhook(
        &self,
        ws: &str,
        req: allowly_webhooks::NewWebhook,
        idem: Option<&str>,
    ) -> Result<allowly_webhooks::CreatedWebhook> {
        allowly_webhooks::model::validate_url(&req.url).map_err(|m| EngineError::invalid("url", m))?;
        allowly_webhooks::model::validate_events(&req.events).map_err(|m| EngineError::invalid("events", m))?;
        self.workspace_record(ws)?;
        let idem = idempotency(idem, "webhook_create", &req)?;
        self.ask(ws, |reply| crate::actor::WsMsg::CreateWebhook { req, idem, reply }).await
    }

    /// Every endpoint of the workspace (one page: there are at most 16).
    pub fn webhooks(&self, ws: &str) -> Result<Page<WebhookView>> {
        self.workspace_record(ws)?;
        let data = docs(&*self.shared().store, ws)?.iter().map(|(id, d)| Ok(d.view(id)?)).collect::<Result<_>>()?;
        Ok(Page { data, has_more: false, next_cursor: None })
    }

    /// One endpoint (no secret).
    pub fn webhook(&self, ws: &str, id: &str) -> Result<WebhookView> {
        Ok(self.webhook_doc(ws, id)?.view(id)?)
    }

    /// Stops new deliveries to an endpoint; deliveries still pending fail when they come due.
    /// Disabling a disabled endpoint changes nothing.
    pub async fn disable_webhook(&self, ws: &str, id: &str, idem: Option<&str>) -> Result<WebhookView> {
        self.set_webhook_disabled(ws, id, true, DisabledReason::Api, idem).await
    }

    /// Delivers to an endpoint again (new events, and pending deliveries that have not failed).
    pub async fn enable_webhook(&self, ws: &str, id: &str, idem: Option<&str>) -> Result<WebhookView> {
        self.set_webhook_disabled(ws, id, false, DisabledReason::Api, idem).await
    }

    pub(crate) async fn set_webhook_disabled(
        &self,
        ws: &str,
        id: &str,
        disabled: bool,
        reason: DisabledReason,
        idem: Option<&str>,
    ) -> Result<WebhookView> {
        // Checked here so a malformed or foreign id never reaches (or starts) an actor.
        self.webhook_doc(ws, id)?;
        let route = if disabled { "webhook_disable" } else { "webhook_enable" };
        let idem = idempotency(idem, route, &id)?;
        let id = id.to_owned();
        self.ask(ws, |reply| crate::actor::WsMsg::SetWebhookDisabled { id, disabled, reason, idem, reply }).await
    }

    /// An endpoint's deliveries, newest first. `starting_after` is a cursor from a previous
    /// page; `limit` is clamped to 1..=1000.
    pub fn deliveries(
        &self,
        ws: &str,
        webhook_id: &str,
        starting_after: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliveryView>> {
        self.webhook_doc(ws, webhook_id)?;
        let prefix = delivery_prefix(webhook_id);
        let bad_cursor = || EngineError::invalid("starting_after", "not a cursor from this list");
        let after = match starting_after {
            Some(c) if c.starts_with(&prefix) && allowly_receipt::types::validate_id("cursor", c).is_ok() => c,
            Some(_) => return Err(bad_cursor()),
            None => prefix.as_str(),
        };
        let limit = limit.clamp(1, 1000);
        let docs = self.shared().store.docs(DocKind::Delivery, ws, Some(after), limit + 1)?;
        let mut data = Vec::new();
        let mut has_more = false;
        for (id, v) in docs {
            if !id.starts_with(&prefix) {
                break;
            }
            let d: DeliveryDoc = decode("delivery", &id, v)?;
            if d.webhook_id != webhook_id {
                // Another endpoint whose id extends this one's (not a shape `new_id` makes).
                break;
            }
            if data.len() == limit {
                has_more = true;
                break;
            }
            data.push(d.view(&id)?);
        }
        let next_cursor = if has_more { data.last().map(|d: &DeliveryView| d.id.clone()) } else { None };
        Ok(Page { data, has_more, next_cursor })
    }

    /// One delivery, with its attempts.
    pub fn delivery(&self, ws: &str, id: &str) -> Result<DeliveryView> {
        let v = self.shared().store.doc(DocKind::Delivery, ws, id).map_err(not_found("delivery"))?;
        let v = v.ok_or(EngineError::NotFound { what: "delivery" })?;
        let d: DeliveryDoc = decode("delivery", id, v)?;
        Ok(d.view(id)?)
    }

    /// Notified after every commit that enqueued deliveries: hand it to the delivery worker.
    pub fn webhook_signal(&self) -> Arc<tokio::sync::Notify> {
        self.shared().webhook_wake.clone()
    }
}

impl allowly_webhooks::Control for Engine {
    fn endpoint_gone(
        &self,
        ws: &str,
        webhook_id: &str,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>> {
        let (engine, ws, id) = (self.clone(), ws.to_owned(), webhook_id.to_owned());
        Box::pin(async move {
            engine
                .set_webhook_disabled(&ws, &id, true, DisabledReason::Gone, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

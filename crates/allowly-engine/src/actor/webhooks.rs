//! Webhook endpoints and events in the workspace actor. Endpoint changes are staged like any
//! other write (the actor's list runs ahead of the store until the commit, then replaces the
//! shared cache); events are staged with the receipt that causes them.
//!
//! Deleting an endpoint stages the deletion (a `null` in the overlay) with the cancellation of
//! a first page of its unfinished deliveries; the engine asks for the following pages
//! (`CancelDeliveries`), so no commit grows with the outbox. A delivery this misses (staged in
//! the same commit, or rescheduled by an attempt in flight) is cancelled by the worker when it
//! comes due and finds no endpoint.

use allowly_store::{DocKind, Op};
use allowly_webhooks::model::{
    decode, delivery_prefix, enqueue, schedule_new, DeliveryDoc, DisabledReason, Endpoint, Event, EventType, OutboxDoc,
    MAX_WEBHOOKS_PER_WORKSPACE,
};
use allowly_webhooks::{CreatedWebhook, DeliveryStatus, DeliveryView, NewWebhook, Secret, WebhookDoc, WebhookView};

use super::WsState;
use crate::clock::now_ms;
use crate::error::{EngineError, Refusal, Result};
use crate::ids::new_id;

/// Outbox entries one cancellation step looks at (one commit).
pub(super) const CANCEL_PAGE: usize = 256;

impl WsState {
    /// The endpoints as of the staged state.
    pub(super) fn endpoint_list(&self) -> Result<Vec<Endpoint>> {
        match &self.endpoints {
            Some(list) => Ok(list.clone()),
            None => {
                if !self.shared.endpoints.is_loaded(&self.ws.id) {
                    self.fetch_failed()?;
                }
                Ok(self.shared.endpoints.get(&*self.shared.store, &self.ws.id)?.to_vec())
            }
        }
    }

    /// The ops that enqueue an event of `ty` for every endpoint in `endpoints` that wants it
    /// (none if nobody does). Staged with the receipt the event reports.
    pub(super) fn event_ops(
        &mut self,
        endpoints: &[Endpoint],
        ty: EventType,
        now: u64,
        data: serde_json::Value,
    ) -> Result<Vec<Op>> {
        if !endpoints.iter().any(|e| e.wants(ty)) {
            return Ok(Vec::new());
        }
        let event = Event::new(new_id("evt_")?, ty, now, data)?;
        let ops = enqueue(&self.ws.id, endpoints, &event, now)?;
        self.wake_webhooks |= !ops.is_empty();
        Ok(ops)
    }

    /// [`Self::event_ops`] for an escalation event about `scopes`, routed by the endpoints'
    /// scope filters (`crate::endpoints::routed`); also returns the endpoint ids it goes to.
    pub(super) fn escalation_event_ops(
        &mut self,
        endpoints: &[Endpoint],
        ty: EventType,
        scopes: &[String],
        now: u64,
        data: serde_json::Value,
    ) -> Result<(Vec<Op>, Vec<String>)> {
        let targets = crate::endpoints::routed(endpoints, ty, scopes);
        let ids = targets.iter().map(|e| e.id.clone()).collect();
        Ok((self.event_ops(&targets, ty, now, data)?, ids))
    }

    pub(super) fn create_webhook(&mut self, req: NewWebhook) -> Result<(Vec<Op>, Result<CreatedWebhook>)> {
        let mut list = self.endpoint_list()?;
        if list.len() >= MAX_WEBHOOKS_PER_WORKSPACE {
            return Err(EngineError::Conflict(format!(
                "a workspace has at most {MAX_WEBHOOKS_PER_WORKSPACE} webhook endpoints"
            )));
        }
        let id = new_id("wh_")?;
        let secret = Secret::generate()?.to_text();
        let doc = WebhookDoc {
            url: req.url,
            events: req.events,
            secret: secret.clone(),
            created_at_ms: now_ms(),
            disabled: false,
            disabled_reason: None,
            disabled_at_ms: None,
            scopes: req.scopes,
            previous_secret: None,
            previous_secret_expires_at_ms: None,
        };
        let answer = CreatedWebhook { webhook: doc.view(&id)?, secret };
        let mut ops = Vec::new();
        self.put_doc(&mut ops, DocKind::Webhook, &id, &doc)?;
        list.push(doc.endpoint(&id));
        self.endpoints = Some(list);
        self.endpoints_changed = true;
        Ok((ops, Ok(answer)))
    }

    /// Disables or enables an endpoint; no change (and no write) if it already is.
    pub(super) fn set_webhook_disabled(
        &mut self,
        id: &str,
        disabled: bool,
        reason: DisabledReason,
    ) -> Result<(Vec<Op>, Result<WebhookView>)> {
        let Some((mut doc, _)) = self.doc::<WebhookDoc>(DocKind::Webhook, id)? else {
            return Err(EngineError::NotFound { what: "webhook" });
        };
        if doc.disabled == disabled {
            return Ok((Vec::new(), Ok(doc.view(id)?)));
        }
        let mut list = self.endpoint_list()?;
        doc.disabled = disabled;
        (doc.disabled_reason, doc.disabled_at_ms) =
            if disabled { (Some(reason), Some(now_ms())) } else { (None, None) };
        let view = doc.view(id)?;
        let mut ops = Vec::new();
        self.put_doc(&mut ops, DocKind::Webhook, id, &doc)?;
        match list.iter_mut().find(|e| e.id == id) {
            Some(e) => e.disabled = disabled,
            None => list.push(doc.endpoint(id)),
        }
        self.endpoints = Some(list);
        self.endpoints_changed = true;
        Ok((ops, Ok(view)))
    }
}

impl WsState {
    /// Deletes an endpoint (no new events from this commit on) and cancels the unfinished
    /// deliveries found in the first page of the outbox; answers where to continue.
    pub(super) fn delete_webhook(&mut self, id: &str) -> Result<(Vec<Op>, Result<Option<String>>)> {
        if self.doc::<WebhookDoc>(DocKind::Webhook, id)?.is_none() {
            return Err(EngineError::NotFound { what: "webhook" });
        }
        // Everything that can fail first, so an error leaves the actor's state as it was.
        let mut list = self.endpoint_list()?;
        let (mut ops, next) = self.cancel_deliveries(id, None)?;
        list.retain(|e| e.id != id);
        ops.insert(0, Op::DeleteDoc { kind: DocKind::Webhook, workspace_id: self.ws.id.clone(), id: id.to_owned() });
        self.overlay.insert((DocKind::Webhook, id.to_owned()), (serde_json::Value::Null, self.group));
        self.endpoints = Some(list);
        self.endpoints_changed = true;
        Ok((ops, Ok(next)))
    }

    /// Cancels `webhook_id`'s pending deliveries among the next [`CANCEL_PAGE`] outbox entries
    /// after `after`: each is marked `cancelled` and its entry removed. Returns the ops and the
    /// last entry looked at, if there may be more.
    pub(super) fn cancel_deliveries(&self, webhook_id: &str, after: Option<&str>) -> Result<(Vec<Op>, Option<String>)> {
        let ws = self.ws.id.as_str();
        let store = &self.shared.store;
        let prefix = delivery_prefix(webhook_id);
        // Read off the async workers for this request (`fetch.rs`), the store only if not.
        let page = match self.fetched_outbox(webhook_id, after) {
            Some(page) => page?,
            None => store.docs(DocKind::Outbox, ws, after, CANCEL_PAGE)?,
        };
        let next = if page.len() == CANCEL_PAGE { page.last().map(|(id, _)| id.clone()) } else { None };
        let now = now_ms();
        let mut ops = Vec::new();
        for (outbox_id, v) in page {
            let Ok(entry) = decode::<OutboxDoc>("outbox entry", &outbox_id, v) else { continue };
            if !entry.delivery_id.starts_with(&prefix) {
                continue;
            }
            if let Some((mut d, _)) = self.doc::<DeliveryDoc>(DocKind::Delivery, &entry.delivery_id)? {
                if d.webhook_id != webhook_id {
                    continue;
                }
                if d.status == DeliveryStatus::Pending && d.outbox_id.as_deref() == Some(outbox_id.as_str()) {
                    d.cancel(now);
                    ops.push(allowly_webhooks::model::put(DocKind::Delivery, ws, &entry.delivery_id, &d)?);
                }
            }
            ops.push(Op::DeleteDoc { kind: DocKind::Outbox, workspace_id: ws.to_owned(), id: outbox_id });
        }
        Ok((ops, next))
    }

    /// A new secret; the current one keeps signing for `grace_ms`.
    pub(super) fn rotate_webhook_secret(
        &mut self,
        id: &str,
        grace_ms: u64,
    ) -> Result<(Vec<Op>, Result<CreatedWebhook>)> {
        let Some((mut doc, _)) = self.doc::<WebhookDoc>(DocKind::Webhook, id)? else {
            return Err(EngineError::NotFound { what: "webhook" });
        };
        let secret = Secret::generate()?.to_text();
        doc.rotate(secret.clone(), now_ms(), grace_ms);
        let answer = CreatedWebhook { webhook: doc.view(id)?, secret };
        let mut ops = Vec::new();
        self.put_doc(&mut ops, DocKind::Webhook, id, &doc)?;
        Ok((ops, Ok(answer)))
    }

    /// A new pending delivery of a finished delivery's event (same event id and payload) to the
    /// same endpoint, which must exist and be enabled.
    pub(super) fn retry_delivery(&mut self, id: &str) -> Result<(Vec<Op>, Result<DeliveryView>)> {
        let Some((d, _)) = self.doc::<DeliveryDoc>(DocKind::Delivery, id)? else {
            return Err(EngineError::NotFound { what: "delivery" });
        };
        if d.status == DeliveryStatus::Pending {
            return Err(EngineError::refused(
                Refusal::Conflict,
                "delivery_in_progress",
                "this delivery is still pending; it can be sent again once it is delivered, failed or cancelled",
            ));
        }
        match self.doc::<WebhookDoc>(DocKind::Webhook, &d.webhook_id)? {
            None => {
                return Err(EngineError::refused(
                    Refusal::NotFound,
                    "webhook_not_found",
                    "the delivery's webhook endpoint was deleted",
                ))
            }
            Some((h, _)) if h.disabled => {
                return Err(EngineError::refused(
                    Refusal::Conflict,
                    "webhook_disabled",
                    "the delivery's webhook endpoint is disabled; enable it first",
                ))
            }
            Some(_) => {}
        }
        let now = now_ms();
        let mut new = DeliveryDoc::pending(&d.webhook_id, &d.event_id, d.event_type, &d.payload, now, "");
        new.retry_of = Some(id.to_owned());
        let (new_id, ops) = schedule_new(&self.ws.id, new.clone(), now)?;
        self.wake_webhooks = true;
        Ok((ops, Ok(new.view(&new_id)?)))
    }
}

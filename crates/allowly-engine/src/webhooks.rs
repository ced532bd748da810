//! Webhooks on the engine's side: which endpoints want which events, the events themselves, and
//! the endpoint API. Sending is `allowly-webhooks`' worker's job; the engine only makes events
//! durable.
//!
//! - Endpoint writes (create, disable, enable, rotate the secret, delete, and "disable: 410
//!   Gone" from the worker through [`allowly_webhooks::Control`]) and manual retries go through
//!   the workspace actor, so they are sequenced with each other and with the events they affect:
//!   an event staged after a staged endpoint change in the same group commit already sees it.
//! - Registration refuses URLs whose host is a non-public IP literal unless
//!   `EngineConfig::webhook_destinations` allows private networks (the worker checks resolved
//!   addresses at each delivery).
//! - Escalation events are routed by scope: an endpoint with a `scopes` filter gets
//!   `escalation.*` events only when one of the escalation's scopes matches one of its patterns
//!   ([`routed`]); the escalation records whom its request went to (`routed_to`).
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

use allowly_store::DocKind;
use allowly_webhooks::model::{
    decode, delivery_prefix, DeliveryDoc, DisabledReason, WebhookDoc, MAX_ROTATION_GRACE_MS, MAX_SCOPE_FILTER,
};
use allowly_webhooks::worker::Claim;
use allowly_webhooks::{CreatedWebhook, DeliveryView, RotateSecret, WebhookView};

use crate::decide::validate_scope;
use crate::endpoints::docs;
use crate::engine::{idempotency, not_found_if_invalid, Engine};
use crate::error::{EngineError, Result};
use crate::model::Page;

/// An endpoint's `scopes` filter: 1..=64 valid scope patterns (as in scope rules), no repeats.
fn validate_scope_filter(scopes: &Option<Vec<String>>) -> Result<()> {
    let Some(list) = scopes else { return Ok(()) };
    if list.is_empty() || list.len() > MAX_SCOPE_FILTER {
        return Err(EngineError::invalid(
            "scopes",
            format!("must hold 1..={MAX_SCOPE_FILTER} patterns (omit it to receive every escalation)"),
        ));
    }
    if let Some(bad) = list.iter().find(|p| !validate_scope(p, true)) {
        return Err(EngineError::invalid(
            "scopes",
            format!("{bad:?} is not a valid scope or pattern (`*`, `a.b.*`): dot-separated [a-z0-9_:-] segments"),
        ));
    }
    let mut seen = list.clone();
    seen.sort();
    seen.dedup();
    if seen.len() != list.len() {
        return Err(EngineError::invalid("scopes", "must not repeat a pattern"));
    }
    Ok(())
}

impl Engine {
    /// `NotFound` unless `ws` has the endpoint `id`: the check a write makes before it reaches
    /// the workspace's actor, read off the async workers within the request's bound
    /// ([`Engine::read`]).
    async fn webhook_exists(&self, ws: &str, id: &str) -> Result<()> {
        let (ws, id) = (ws.to_owned(), id.to_owned());
        self.read(move |e| e.webhook_doc(&ws, &id).map(|_| ())).await
    }

    pub(crate) fn webhook_doc(&self, ws: &str, id: &str) -> Result<WebhookDoc> {
        let store = &self.shared().store;
        let v = store.doc(DocKind::Webhook, ws, id).map_err(not_found_if_invalid("webhook"))?;
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
        allowly_webhooks::destination::check_url(&req.url, self.shared().cfg.webhook_destinations).map_err(
            |message| EngineError::Refused {
                kind: crate::error::Refusal::NotAllowed,
                code: allowly_webhooks::NOT_ALLOWED,
                message,
                receipt: None,
            },
        )?;
        validate_scope_filter(&req.scopes)?;
        self.require_workspace(ws).await?;
        let idem = idempotency(idem, "webhook_create", &req)?;
        self.ask(ws, |reply| crate::mailbox::WsMsg::CreateWebhook { req, idem, reply }).await
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
        self.webhook_exists(ws, id).await?;
        let route = if disabled { "webhook_disable" } else { "webhook_enable" };
        let idem = idempotency(idem, route, &id)?;
        let id = id.to_owned();
        self.ask(ws, |reply| crate::mailbox::WsMsg::SetWebhookDisabled { id, disabled, reason, idem, reply }).await
    }

    /// Deletes an endpoint: it gets no new events, and its unfinished deliveries are cancelled
    /// (kept, `cancelled`, readable by id until the retention sweep). Deleting it again is
    /// `NotFound`. The cancellation runs in bounded steps through the actor; if this call is
    /// cut short, the worker cancels what is left when it comes due.
    pub async fn delete_webhook(&self, ws: &str, id: &str) -> Result<()> {
        self.webhook_exists(ws, id).await?;
        let owned = id.to_owned();
        let mut next = self.ask(ws, |reply| crate::mailbox::WsMsg::DeleteWebhook { id: owned, reply }).await?;
        while let Some(after) = next {
            let webhook_id = id.to_owned();
            next = self.ask(ws, |reply| crate::mailbox::WsMsg::CancelDeliveries { webhook_id, after, reply }).await?;
        }
        Ok(())
    }

    /// A new signing secret, shown once. The old one keeps signing for `grace_period_ms`
    /// (default and most 24 h; 0 = retire it now): deliveries carry both signatures meanwhile.
    pub async fn rotate_webhook_secret(
        &self,
        ws: &str,
        id: &str,
        req: RotateSecret,
        idem: Option<&str>,
    ) -> Result<CreatedWebhook> {
        let grace_ms = req.grace_period_ms.unwrap_or(MAX_ROTATION_GRACE_MS);
        if grace_ms > MAX_ROTATION_GRACE_MS {
            return Err(EngineError::invalid(
                "grace_period_ms",
                format!("must be within 0..={MAX_ROTATION_GRACE_MS} (24 h)"),
            ));
        }
        self.webhook_exists(ws, id).await?;
        let idem = idempotency(idem, "webhook_rotate_secret", &(id, &req))?;
        let id = id.to_owned();
        self.ask(ws, |reply| crate::mailbox::WsMsg::RotateWebhookSecret { id, grace_ms, idem, reply }).await
    }

    /// Sends a finished delivery's event again as a new delivery (same `webhook-id`, `retry_of`
    /// naming this one). Refused while it is pending (`delivery_in_progress`), or when its
    /// endpoint is disabled (`webhook_disabled`) or deleted (`webhook_not_found`).
    pub async fn retry_delivery(&self, ws: &str, id: &str, idem: Option<&str>) -> Result<DeliveryView> {
        self.delivery(ws, id)?;
        let idem = idempotency(idem, "delivery_retry", &id)?;
        let id = id.to_owned();
        self.ask(ws, |reply| crate::mailbox::WsMsg::RetryDelivery { id, idem, reply }).await
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
        let v = self.shared().store.doc(DocKind::Delivery, ws, id).map_err(not_found_if_invalid("delivery"))?;
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

    /// One process alone makes every delivery, unfenced. In a cluster, a node makes a
    /// workspace's deliveries only while it holds the workspace's lease — taking it if it is
    /// free, as a request would — and fences their writes with its epoch; the lease is kept
    /// renewed while the attempt lasts. Two nodes therefore never both work on one workspace's
    /// deliveries, and one that lost the workspace mid-attempt records nothing.
    fn claim(&self, ws: &str) -> Pin<Box<dyn Future<Output = Claim> + Send>> {
        let (engine, ws) = (self.clone(), ws.to_owned());
        Box::pin(async move {
            let Some(o) = &engine.shared().ownership else { return Claim::Here { epoch: None, hold: None } };
            let retry_in = o.period();
            let pin = match engine.hold_here(&ws).await {
                Ok(pin) => pin,
                Err(EngineError::NotOwner { .. }) => return Claim::NotHere { retry_in },
                Err(e) => {
                    tracing::warn!(workspace = %ws, error = %e, "cannot learn who delivers the workspace's webhooks; trying again later");
                    return Claim::NotHere { retry_in };
                }
            };
            match o.epoch(&ws) {
                Some(epoch) => Claim::Here { epoch: Some(epoch), hold: pin.map(|p| Box::new(p) as Box<dyn Send>) },
                // Lost again since (another node fenced it meanwhile).
                None => Claim::NotHere { retry_in },
            }
        })
    }
}

//! Webhook endpoints and events in the workspace actor. Endpoint changes are staged like any
//! other write (the actor's list runs ahead of the store until the commit, then replaces the
//! shared cache); events are staged with the receipt that causes them.

use allowly_store::{DocKind, Op};
use allowly_webhooks::model::{enqueue, DisabledReason, Endpoint, Event, EventType, MAX_WEBHOOKS_PER_WORKSPACE};
use allowly_webhooks::{CreatedWebhook, NewWebhook, Secret, WebhookDoc, WebhookView};

use super::WsState;
use crate::error::{EngineError, Result};
use crate::ids::new_id;
use crate::shared::now_ms;

impl WsState {
    /// The endpoints as of the staged state.
    pub(super) fn endpoint_list(&self) -> Result<Vec<Endpoint>> {
        match &self.endpoints {
            Some(list) => Ok(list.clone()),
            None => Ok(self.shared.endpoints.get(&*self.shared.store, &self.ws.id)?.to_vec()),
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
        };
        let answer = CreatedWebhook { webhook: doc.view(&id)?, secret };
        let mut ops = Vec::new();
        self.put_doc(&mut ops, DocKind::Webhook, &id, &doc)?;
        list.push(doc.endpoint(&id));
        self.endpoints = Some(list);
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
        Ok((ops, Ok(view)))
    }
}

//! Each workspace's webhook endpoints as last committed (ids, events, disabled: no URL, no
//! secret), for the pipeline and the actors, and which of them an event is routed to. The
//! endpoint API and the events themselves are in `webhooks.rs`.

use std::sync::Arc;

use allowly_store::{DocKind, Store};
use allowly_webhooks::model::{decode, Endpoint, EventType, WebhookDoc, MAX_WEBHOOKS_PER_WORKSPACE};
use allowly_webhooks::WebhookError;
use dashmap::DashMap;

use crate::decide::scope_matches;
use crate::error::{EngineError, Result};

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
    /// Workspace `ws`'s endpoints. The load runs outside the map's locks — on a stalled
    /// volume it would hold a shard's lock, and every lookup of the shard's workspaces (on
    /// async workers too), for as long — and is kept only if the entry is still vacant: a list
    /// [`Endpoints::publish`]ed meanwhile is newer than what was loaded, and wins.
    pub fn get(&self, store: &dyn Store, ws: &str) -> Result<Arc<[Endpoint]>> {
        if let Some(e) = self.map.get(ws) {
            return Ok(e.clone());
        }
        Ok(self.loaded(ws, load(store, ws)?))
    }

    /// Keeps `list`, loaded from the store, as `ws`'s endpoints unless a list is there already
    /// (one [`Endpoints::publish`]ed meanwhile is newer); returns the list kept.
    pub fn loaded(&self, ws: &str, list: Vec<Endpoint>) -> Arc<[Endpoint]> {
        self.map.entry(ws.to_owned()).or_insert(list.into()).clone()
    }

    /// Whether `ws`'s endpoints are loaded (a [`Endpoints::get`] would not read the store).
    pub fn is_loaded(&self, ws: &str) -> bool {
        self.map.contains_key(ws)
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

pub(crate) fn docs(store: &dyn Store, ws: &str) -> Result<Vec<(String, WebhookDoc)>> {
    store
        .docs(DocKind::Webhook, ws, None, MAX_WEBHOOKS_PER_WORKSPACE + 1)?
        .into_iter()
        .map(|(id, v)| Ok((id.clone(), decode("webhook", &id, v)?)))
        .collect()
}

/// The endpoints an event of `ty` about `scopes` goes to: those that want `ty` and, for
/// escalation events, whose `scopes` filter (if any) matches one of `scopes`.
pub(crate) fn routed(endpoints: &[Endpoint], ty: EventType, scopes: &[String]) -> Vec<Endpoint> {
    let escalation = matches!(ty, EventType::EscalationRequested | EventType::EscalationResolved);
    endpoints
        .iter()
        .filter(|e| e.wants(ty))
        .filter(|e| match (&e.scopes, escalation) {
            (Some(patterns), true) => patterns.iter().any(|p| scopes.iter().any(|s| scope_matches(p, s))),
            _ => true,
        })
        .cloned()
        .collect()
}

//! The approver inbox: the workspace's confirmations and escalations listed (pending ones
//! first of all: what an approver has to answer), and long-polls that answer as soon as one
//! changes state.
//!
//! A long-poll registers with [`Watchers`](crate::watchers::Watchers) *before* it reads the state, so a change that lands
//! between the read and the wait still wakes it. Every step that changes a confirmation or an
//! escalation goes through the [`Engine`] facade (`confirm`, `resolve_escalation`, the expiry
//! on read and the expiry sweep), which wakes the watchers of that id after the actor answers:
//! the waiter then reads the new state from the store (the actor acknowledges nothing before
//! it is durable). Nothing polls: a waiter sleeps until it is woken, until its `wait` is over,
//! or until the object's own expiry (a confirmation expires by the clock alone; an overdue
//! escalation is resolved by the read that finds it overdue).
//!
//! Waiters are bounded ([`MAX_WAITERS`](crate::watchers::MAX_WAITERS), instance-wide): one more is refused at once
//! (`TooManyWaiters`, 503 with `Retry-After`), never queued.

use std::time::Duration;

use allowly_store::DocKind;

use crate::actor::{ConfirmationDoc, EscalationDoc};
use crate::clock::now_ms;
use crate::engine::{not_found_if_invalid, MAX_LIST_SCAN};
use crate::error::{EngineError, Result};
use crate::model::{ConfirmationStatus, ConfirmationView, EscalationStatus, EscalationView, HitlFilter, Page};
use crate::watchers::wait_for;
use crate::Engine;

impl Engine {
    /// The workspace's escalations in id order, filtered (`status: pending` leaves out those
    /// past their expiry: they are resolved to deny by the next sweep). A page scans at most
    /// `MAX_LIST_SCAN` records, as [`Engine::authorizations`].
    pub fn escalations(
        &self,
        ws: &str,
        filter: &HitlFilter<EscalationStatus>,
        starting_after: Option<&str>,
        limit: usize,
    ) -> Result<Page<EscalationView>> {
        let now = now_ms();
        self.hitl_page(DocKind::Escalation, ws, starting_after, limit, |id, v| {
            let doc: EscalationDoc = parse(DocKind::Escalation, id, v)?;
            let view = doc.view(id)?;
            let status_ok = match filter.status {
                None => true,
                Some(EscalationStatus::Pending) => view.status == EscalationStatus::Pending && !doc.is_overdue(now),
                Some(s) => view.status == s,
            };
            Ok((status_ok && filter.matches(&view.authorization_id, &view.scopes)).then_some(view))
        })
    }

    /// The workspace's confirmations in nonce order, filtered (status as of now: a pending
    /// nonce past its expiry is `expired`). Paged as [`Engine::escalations`].
    pub fn confirmations(
        &self,
        ws: &str,
        filter: &HitlFilter<ConfirmationStatus>,
        starting_after: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConfirmationView>> {
        let now = now_ms();
        self.hitl_page(DocKind::Confirmation, ws, starting_after, limit, |id, v| {
            let doc: ConfirmationDoc = parse(DocKind::Confirmation, id, v)?;
            let view = doc.view(id, now)?;
            let status_ok = filter.status.is_none_or(|s| s == view.status);
            Ok((status_ok && filter.matches(&view.authorization_id, &view.scopes)).then_some(view))
        })
    }

    /// One page of documents of `kind`, each turned into a view (or left out) by `keep`.
    fn hitl_page<V>(
        &self,
        kind: DocKind,
        ws: &str,
        starting_after: Option<&str>,
        limit: usize,
        keep: impl Fn(&str, serde_json::Value) -> Result<Option<V>>,
    ) -> Result<Page<V>> {
        self.workspace_record(ws)?;
        let limit = limit.clamp(1, 1000);
        let bad_cursor = || EngineError::invalid("starting_after", "not a cursor from this list");
        if starting_after.is_some_and(|c| allowly_receipt::types::validate_id("cursor", c).is_err()) {
            return Err(bad_cursor());
        }
        let mut after = starting_after.map(str::to_owned);
        let (mut data, mut scanned) = (Vec::new(), 0usize);
        loop {
            let chunk = (limit + 1).max(256);
            let docs = self
                .shared()
                .store
                .docs(kind, ws, after.as_deref(), chunk)
                .map_err(not_found_if_invalid("workspace"))?;
            let end = docs.len() < chunk;
            for (id, v) in docs {
                scanned += 1;
                after = Some(id.clone());
                let Some(view) = keep(&id, v)? else { continue };
                data.push((id, view));
                if data.len() > limit {
                    data.truncate(limit);
                    let next_cursor = data.last().map(|(id, _)| id.clone());
                    return Ok(Page { data: views(data), has_more: true, next_cursor });
                }
            }
            if end {
                return Ok(Page { data: views(data), has_more: false, next_cursor: None });
            }
            if scanned >= MAX_LIST_SCAN {
                return Ok(Page { data: views(data), has_more: true, next_cursor: after });
            }
        }
    }

    /// An escalation, answered once it is no longer pending or after `wait` (then still
    /// pending). An escalation past its expiry is resolved to deny when read, as
    /// [`Engine::escalation`] does.
    pub async fn wait_escalation(&self, ws: &str, id: &str, wait: Duration) -> Result<EscalationView> {
        let deadline = tokio::time::Instant::now() + wait.min(self.shared().cfg.long_poll_max);
        // In a cluster only the owner's commits wake a waiter: it waits there (`NotOwner`
        // forwards it), and the workspace stays this node's while it waits.
        let _held = self.hold_here(ws).await?;
        let watchers = &self.shared().watchers;
        let watch = watchers.watch(ws, id)?;
        loop {
            let changed = watch.changed();
            let view = self.escalation(ws, id).await?;
            if view.status != EscalationStatus::Pending || watchers.is_closed() {
                return Ok(view);
            }
            // Past its expiry by a millisecond, the next read resolves it.
            let expiry = view.expires_at.unix_ms().saturating_add(1);
            if wait_for(changed, expiry, deadline).await {
                return self.escalation(ws, id).await;
            }
        }
    }

    /// A confirmation, answered once it is no longer pending (answered, or expired by the
    /// clock) or after `wait`.
    pub async fn wait_confirmation(&self, ws: &str, nonce: &str, wait: Duration) -> Result<ConfirmationView> {
        let deadline = tokio::time::Instant::now() + wait.min(self.shared().cfg.long_poll_max);
        let _held = self.hold_here(ws).await?; // as for escalations
        let watchers = &self.shared().watchers;
        let watch = watchers.watch(ws, nonce)?;
        // Each look off the async workers, within the request's bound (`Engine::read`).
        let look = || {
            let (ws, nonce) = (ws.to_owned(), nonce.to_owned());
            self.read(move |e| e.confirmation(&ws, &nonce))
        };
        loop {
            let changed = watch.changed();
            let view = look().await?;
            if view.status != ConfirmationStatus::Pending || watchers.is_closed() {
                return Ok(view);
            }
            let expiry = view.expires_at.unix_ms();
            if wait_for(changed, expiry, deadline).await {
                return look().await;
            }
        }
    }
}

fn views<V>(data: Vec<(String, V)>) -> Vec<V> {
    data.into_iter().map(|(_, v)| v).collect()
}

fn parse<D: serde::de::DeserializeOwned>(kind: DocKind, id: &str, v: serde_json::Value) -> Result<D> {
    serde_json::from_value(v).map_err(|e| EngineError::Internal(format!("stored {kind:?} {id}: {e}")))
}

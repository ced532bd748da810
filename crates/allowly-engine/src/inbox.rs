//! The approver inbox: the workspace's confirmations and escalations listed (pending ones
//! first of all: what an approver has to answer), and long-polls that answer as soon as one
//! changes state.
//!
//! A long-poll registers with [`Watchers`] *before* it reads the state, so a change that lands
//! between the read and the wait still wakes it. Every step that changes a confirmation or an
//! escalation goes through the [`Engine`] facade (`confirm`, `resolve_escalation`, the expiry
//! on read and the expiry sweep), which wakes the watchers of that id after the actor answers:
//! the waiter then reads the new state from the store (the actor acknowledges nothing before
//! it is durable). Nothing polls: a waiter sleeps until it is woken, until its `wait` is over,
//! or until the object's own expiry (a confirmation expires by the clock alone; an overdue
//! escalation is resolved by the read that finds it overdue).
//!
//! Waiters are bounded ([`MAX_WAITERS`], instance-wide): one more is refused at once
//! (`TooManyWaiters`, 503 with `Retry-After`), never queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allowly_store::DocKind;
use tokio::sync::Notify;

use crate::actor::{ConfirmationDoc, EscalationDoc};
use crate::clock::now_ms;
use crate::engine::{not_found_if_invalid, MAX_LIST_SCAN};
use crate::error::{EngineError, Result};
use crate::model::{ConfirmationStatus, ConfirmationView, EscalationStatus, EscalationView, HitlFilter, Page};
use crate::Engine;

/// Default of `EngineConfig::max_long_polls`: each waiter holds a connection and a small entry
/// here; past this a client is told to come back (`TooManyWaiters`).
pub const MAX_WAITERS: usize = 4096;

/// Default of `EngineConfig::long_poll_max` (a client wanting longer asks again).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Who waits for which confirmation or escalation.
#[derive(Debug)]
pub(crate) struct Watchers {
    inner: Mutex<Slots>,
    max: usize,
}

#[derive(Debug, Default)]
struct Slots {
    /// By `<workspace>/<id>`.
    by_key: HashMap<String, Slot>,
    total: usize,
    /// Set at shutdown: every waiter returns what it has.
    closed: bool,
}

#[derive(Debug)]
struct Slot {
    notify: Arc<Notify>,
    waiters: usize,
}

impl Default for Watchers {
    fn default() -> Self {
        Self::with_capacity(MAX_WAITERS)
    }
}

impl Watchers {
    pub(crate) fn with_capacity(max: usize) -> Self {
        Self { inner: Mutex::new(Slots::default()), max }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while holding this lock leaves counts that are still consistent enough to
        // go on with (at worst a slot is kept a little longer).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers one waiter of `id`; refused when `max` wait already.
    pub(crate) fn watch(&self, ws: &str, id: &str) -> Result<Watch<'_>> {
        let key = format!("{ws}/{id}");
        let mut s = self.slots();
        if s.closed {
            return Err(EngineError::ShuttingDown);
        }
        if s.total >= self.max {
            return Err(EngineError::TooManyWaiters);
        }
        s.total += 1;
        let slot = s.by_key.entry(key.clone()).or_insert_with(|| Slot { notify: Arc::new(Notify::new()), waiters: 0 });
        slot.waiters += 1;
        let notify = slot.notify.clone();
        Ok(Watch { watchers: self, key, notify })
    }

    /// Wakes every waiter of `id` (they read the state again).
    pub(crate) fn wake(&self, ws: &str, id: &str) {
        let s = self.slots();
        if s.by_key.is_empty() {
            return;
        }
        if let Some(slot) = s.by_key.get(&format!("{ws}/{id}")) {
            slot.notify.notify_waiters();
        }
    }

    /// Wakes every waiter and refuses new ones (shutdown).
    pub(crate) fn close(&self) {
        let mut s = self.slots();
        s.closed = true;
        for slot in s.by_key.values() {
            slot.notify.notify_waiters();
        }
    }

    fn is_closed(&self) -> bool {
        self.slots().closed
    }

    #[cfg(test)]
    fn waiting(&self) -> (usize, usize) {
        let s = self.slots();
        (s.total, s.by_key.len())
    }
}

/// One registered waiter; unregisters when dropped.
#[derive(Debug)]
pub(crate) struct Watch<'a> {
    watchers: &'a Watchers,
    key: String,
    notify: Arc<Notify>,
}

impl Watch<'_> {
    /// Waits for the next wake-up after this call, or for `until`. The wake-up is registered
    /// before the caller reads the state: `changed` must be created (and enabled) before it.
    fn changed(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut n = Box::pin(self.notify.notified());
        n.as_mut().enable();
        n
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut s = self.watchers.slots();
        s.total = s.total.saturating_sub(1);
        if let Some(slot) = s.by_key.get_mut(&self.key) {
            slot.waiters -= 1;
            if slot.waiters == 0 {
                s.by_key.remove(&self.key);
            }
        }
    }
}

/// Waits for `changed` or until `until_ms` (Unix ms, the object's expiry) or `deadline`,
/// whichever comes first; answers whether the deadline passed.
async fn wait_for(
    changed: std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>>,
    until_ms: u64,
    deadline: tokio::time::Instant,
) -> bool {
    let to_expiry = Duration::from_millis(until_ms.saturating_sub(now_ms()));
    let wake_at = deadline.min(tokio::time::Instant::now() + to_expiry);
    tokio::select! {
        () = changed => false,
        () = tokio::time::sleep_until(wake_at) => wake_at >= deadline,
    }
}

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
        let watchers = &self.shared().watchers;
        let watch = watchers.watch(ws, nonce)?;
        loop {
            let changed = watch.changed();
            let view = self.confirmation(ws, nonce)?;
            if view.status != ConfirmationStatus::Pending || watchers.is_closed() {
                return Ok(view);
            }
            let expiry = view.expires_at.unix_ms();
            if wait_for(changed, expiry, deadline).await {
                return self.confirmation(ws, nonce);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn waiters_are_bounded_and_unregister_when_dropped() {
        let w = Watchers::with_capacity(2);
        let a = w.watch("ws_1", "esc_1").unwrap();
        let b = w.watch("ws_1", "esc_1").unwrap();
        assert!(matches!(w.watch("ws_1", "esc_2"), Err(EngineError::TooManyWaiters)));
        assert_eq!(w.waiting(), (2, 1));
        drop(a);
        let c = w.watch("ws_1", "esc_2").unwrap();
        assert_eq!(w.waiting(), (2, 2));
        drop((b, c));
        assert_eq!(w.waiting(), (0, 0));
    }

    #[tokio::test]
    async fn a_wake_between_the_read_and_the_wait_is_not_lost() {
        let w = Watchers::with_capacity(8);
        let watch = w.watch("ws_1", "esc_1").unwrap();
        // The order of a long-poll: register, (read the state), then the change lands...
        let changed = watch.changed();
        w.wake("ws_1", "esc_1");
        // ...and the wait that starts afterwards still returns at once, long before its end.
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert!(!wait_for(changed, u64::MAX, far).await);
        // Another id's wake does not wake it; the deadline does.
        let changed = watch.changed();
        w.wake("ws_1", "esc_2");
        assert!(wait_for(changed, u64::MAX, tokio::time::Instant::now() + Duration::from_millis(20)).await);
    }

    #[tokio::test]
    async fn closing_wakes_every_waiter_and_refuses_new_ones() {
        let w = Watchers::with_capacity(8);
        let watch = w.watch("ws_1", "cn_1").unwrap();
        let changed = watch.changed();
        w.close();
        assert!(!wait_for(changed, u64::MAX, tokio::time::Instant::now() + Duration::from_secs(3600)).await);
        assert!(matches!(w.watch("ws_1", "cn_2"), Err(EngineError::ShuttingDown)));
    }
}

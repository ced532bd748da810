//! Who waits for which confirmation or escalation: the long-polls of the approver inbox
//! (`inbox`), registered before they read the state and woken by the engine after every change
//! of that id. Its own module, below the engine and its shared state that hold it, and the
//! inbox that waits on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::error::{EngineError, Result};

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

    pub(crate) fn is_closed(&self) -> bool {
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
    pub(crate) fn changed(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
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
pub(crate) async fn wait_for(
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

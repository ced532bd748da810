//! The delivery worker's tuning and the retry schedule.
//!
//! After the `n`th failed attempt the next one waits `cap(n) = min(base · 2^(n−1), max)` with
//! "equal jitter": uniformly within `[cap/2, cap]`. Full jitter (`[0, cap]`) was considered and
//! not taken: it can retry a receiver that just failed almost at once, and it makes the span of
//! the schedule vary by a factor of two from one delivery to the next; half-fixed waits still
//! spread the retries of many deliveries that failed together. A `Retry-After` (seconds) from
//! the receiver lengthens the wait, never beyond `max`.
//!
//! A delivery is given up (`failed`, reason `gave_up`) at the first failure after which the
//! next attempt would fall later than `give_up_after` since the event, or after `max_attempts`
//! attempts. With the defaults (5 s doubling, 1 h cap, 24 h) the waits grow for ten attempts
//! (about 1.4 h in all), then stay between 30 and 60 minutes: about 40 attempts over a day.

use std::time::Duration;

use crate::destination::Policy;

/// Delivery worker settings. Defaults are production values; tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Wait cap after the first failure (doubles per failure).
    pub base_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// No attempt is scheduled later than this after the event.
    pub give_up_after: Duration,
    /// Most attempts per delivery.
    pub max_attempts: u32,
    /// Bound on one attempt: connect, send, and the response head and (bounded) body.
    pub attempt_timeout: Duration,
    /// Most attempts in flight at once (all endpoints).
    pub concurrency: usize,
    /// Most attempts in flight at once for one workspace, so one workspace's slow or dead
    /// receivers cannot starve the others.
    pub per_workspace: usize,
    /// Longest the worker sleeps between two scans of the outbox when nothing wakes it.
    pub poll_interval: Duration,
    /// Where deliveries may go (public addresses only by default: see `destination`).
    pub destinations: Policy,
    /// Finished (delivered, failed, cancelled) deliveries are deleted this long after they
    /// finished.
    pub retention: Duration,
    /// How often the worker looks for deliveries past `retention`.
    pub retention_sweep_interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
            max_attempts: 60,
            attempt_timeout: Duration::from_secs(10),
            concurrency: 32,
            per_workspace: 8,
            poll_interval: Duration::from_secs(5),
            destinations: Policy::PublicOnly,
            retention: Duration::from_secs(30 * 24 * 3600),
            retention_sweep_interval: Duration::from_secs(3600),
        }
    }
}

impl WebhookConfig {
    /// The wait cap after `failures` failed attempts (`failures >= 1`; 0 is treated as 1).
    /// Non-decreasing in `failures`, never above `max_backoff`.
    pub fn backoff_cap(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(40);
        let base = self.base_backoff.as_millis().min(u64::MAX as u128) as u64;
        let cap = base.saturating_mul(1u64 << shift);
        Duration::from_millis(cap).min(self.max_backoff)
    }

    /// The wait after `failures` failed attempts, given a uniform random `r`: within
    /// `[cap/2, cap]`, at least `retry_after` (but never above `max_backoff`).
    pub fn backoff(&self, failures: u32, r: u64, retry_after: Option<Duration>) -> Duration {
        let cap = self.backoff_cap(failures).as_millis() as u64;
        let half = cap / 2;
        let span = cap - half;
        // Scales `r` onto 0..=span (r = 0 → the floor, r = u64::MAX → the cap).
        let jitter = ((r as u128 * (span as u128 + 1)) >> 64) as u64;
        let wait = Duration::from_millis(half + jitter);
        match retry_after {
            Some(ra) => wait.max(ra.min(self.max_backoff)),
            None => wait,
        }
    }

    /// When to try again after an attempt that failed at `now_ms` (the delivery has made
    /// `attempts` attempts, counting this one, and was created at `created_ms`); `None` = give
    /// up.
    pub fn next_attempt(
        &self,
        attempts: u32,
        created_ms: u64,
        now_ms: u64,
        r: u64,
        retry_after: Option<Duration>,
    ) -> Option<u64> {
        if attempts >= self.max_attempts {
            return None;
        }
        let at = now_ms.saturating_add(self.backoff(attempts, r, retry_after).as_millis() as u64);
        let deadline = created_ms.saturating_add(self.give_up_after.as_millis() as u64);
        (at <= deadline).then_some(at)
    }
}

/// A uniform random `u64` for jitter (0 if the OS source fails: jitter is not a security
/// property, and a delivery must not fail because of it).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::getrandom(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn cfg(base_ms: u64, max_ms: u64) -> WebhookConfig {
        WebhookConfig {
            base_backoff: Duration::from_millis(base_ms),
            max_backoff: Duration::from_millis(max_ms),
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn the_default_schedule_spans_about_a_day() {
        let c = WebhookConfig::default();
        assert_eq!(c.backoff_cap(1), Duration::from_secs(5));
        assert_eq!(c.backoff_cap(2), Duration::from_secs(10));
        assert_eq!(c.backoff_cap(11), Duration::from_secs(3600));
        // Shortest and longest possible schedules (every wait at its floor or at its cap).
        let span = |r: u64| {
            let (mut now, mut n) = (0u64, 0u32);
            loop {
                n += 1;
                match c.next_attempt(n, 0, now, r, None) {
                    Some(at) => now = at,
                    None => return (n, now),
                }
            }
        };
        let (short_n, short_end) = span(0);
        let (long_n, long_end) = span(u64::MAX);
        assert!((40..=60).contains(&short_n) && (20..=40).contains(&long_n), "{short_n} {long_n}");
        let hours = |ms: u64| ms as f64 / 3_600_000.0;
        assert!(hours(short_end) > 22.0 && hours(long_end) > 22.0, "{short_end} {long_end}");
        assert!(short_end <= 24 * 3_600_000 && long_end <= 24 * 3_600_000);
    }

    #[test]
    fn retry_after_lengthens_but_never_past_the_cap() {
        let c = cfg(1000, 60_000);
        assert_eq!(c.backoff(1, 0, Some(Duration::from_secs(30))), Duration::from_secs(30));
        assert_eq!(c.backoff(1, 0, Some(Duration::from_secs(3600))), Duration::from_secs(60));
        assert_eq!(c.backoff(1, 0, Some(Duration::ZERO)), Duration::from_millis(500));
    }

    #[test]
    fn max_attempts_and_the_deadline_end_the_schedule() {
        let c = WebhookConfig { max_attempts: 3, ..cfg(1000, 60_000) };
        assert!(c.next_attempt(2, 0, 0, 0, None).is_some());
        assert_eq!(c.next_attempt(3, 0, 0, 0, None), None);
        let c = WebhookConfig { give_up_after: Duration::from_secs(10), ..cfg(1000, 60_000) };
        assert_eq!(c.next_attempt(1, 0, 9_000, 0, None), Some(9_500));
        assert_eq!(c.next_attempt(1, 0, 9_600, 0, None), None);
    }

    proptest! {
        #[test]
        fn caps_are_monotone_and_bounded(base in 1u64..100_000, max in 1u64..10_000_000, n in 1u32..200) {
            let c = cfg(base, max);
            let (a, b) = (c.backoff_cap(n), c.backoff_cap(n + 1));
            prop_assert!(a <= b);
            prop_assert!(b <= c.max_backoff);
            prop_assert_eq!(c.backoff_cap(1), Duration::from_millis(base.min(max)));
        }

        #[test]
        fn jitter_stays_within_half_cap_and_cap(base in 1u64..100_000, max in 1u64..10_000_000, n in 1u32..200, r: u64) {
            let c = cfg(base, max);
            let cap = c.backoff_cap(n);
            let w = c.backoff(n, r, None);
            prop_assert!(w <= cap, "{:?} > {:?}", w, cap);
            prop_assert!(w >= cap / 2, "{:?} < {:?} / 2", w, cap);
        }

        #[test]
        fn next_attempts_are_in_the_future_and_before_the_deadline(
            n in 1u32..100, created in 0u64..1_000_000, late in 0u64..100_000_000, r: u64
        ) {
            let c = WebhookConfig::default();
            let now = created + late;
            if let Some(at) = c.next_attempt(n, created, now, r, None) {
                prop_assert!(at >= now + c.backoff_cap(n).as_millis() as u64 / 2);
                prop_assert!(at <= created + c.give_up_after.as_millis() as u64);
                prop_assert!(n < c.max_attempts);
            }
        }
    }
}

//! Per-API-key request rate limits: a GCRA limiter (`governor`, one atomic compare-and-swap
//! per request) for each API key in use, keyed by the key's **id** — never by its secret or a
//! hash of it — in a sharded map.
//!
//! The limit of a key is its workspace's `rate_limit` (set by the instance admin, `PUT
//! /v1/workspaces/{ws}/rate-limit`), else the instance default (`--rate-limit-per-second`,
//! `--rate-limit-burst`; unlimited unless set). A key's entry remembers the limit it was built
//! with and the settings generation it was read at; a change of any workspace's setting bumps
//! the generation, and each key reads its workspace's setting again at its next request (one
//! store read per key in use, per change: changes are rare, requests are not).
//!
//! In a cluster the generation is this node's alone: a setting changed through another node is
//! not counted here. There each key's setting is also read again once it is older than the
//! settings bound (`allowly_engine::CLUSTER_CACHE_MAX_AGE`, a second), so a change reaches
//! every node within it.
//!
//! Memory is bounded: at most [`MAX_TRACKED_KEYS`] entries. When full, entries at rest — unused
//! for as long as their bucket takes to refill, so a fresh limiter would behave exactly the
//! same — are dropped first; if that is not enough, the least recently used tenth is dropped
//! (those keys start again with a full bucket: lenient once, never stricter).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use allowly_store::RateLimit;
use dashmap::DashMap;
use governor::clock::MonotonicClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Most API keys tracked at once (~150 bytes each: ~15 MiB when full).
pub const MAX_TRACKED_KEYS: usize = 100_000;

type Limiter = RateLimiter<NotKeyed, InMemoryState, MonotonicClock>;

/// Every key's limiter, and the instance default.
#[derive(Debug)]
pub struct RateLimits {
    default: RateLimit,
    keys: DashMap<Box<str>, Entry>,
    /// Bumped by every change of a workspace's setting; entries read at an older one are stale.
    generation: AtomicU64,
    max_keys: usize,
    epoch: Instant,
    /// In a cluster: how long (ms) a key's setting, as read, is trusted (changes made through
    /// other nodes do not bump `generation`). `None`: until the generation changes.
    settings_max_age_ms: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    /// Milliseconds since `RateLimits::epoch` when `limit` was read.
    read_ms: u64,
    limit: RateLimit,
    /// `None`: unlimited.
    limiter: Option<Limiter>,
    /// Milliseconds since `RateLimits::epoch` of the last request (for the memory bound).
    last_used_ms: AtomicU64,
}

impl Entry {
    fn new(limit: RateLimit, generation: u64, read_ms: u64) -> Self {
        Self { generation, read_ms, limit, limiter: limiter(limit), last_used_ms: AtomicU64::new(0) }
    }

    /// Whether a fresh limiter would decide exactly as this one: its bucket has refilled.
    fn at_rest(&self, now_ms: u64) -> bool {
        let refill = quota(self.limit).map_or(Duration::ZERO, |q| q.burst_size_replenished_in());
        let idle = Duration::from_millis(now_ms.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)));
        idle >= refill
    }
}

/// `None`: unlimited.
fn quota(limit: RateLimit) -> Option<Quota> {
    match limit {
        RateLimit::Unlimited => None,
        RateLimit::PerKey { requests_per_second, burst } => {
            let rate = NonZeroU32::new(requests_per_second)?;
            Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
        }
    }
}

fn limiter(limit: RateLimit) -> Option<Limiter> {
    quota(limit).map(|q| RateLimiter::direct_with_clock(q, MonotonicClock))
}

/// A request over its key's rate: when the next one would be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl RateLimits {
    /// `default` applies to keys of workspaces that set none.
    pub fn new(default: RateLimit) -> Self {
        Self::with_capacity(default, MAX_TRACKED_KEYS)
    }

    fn with_capacity(default: RateLimit, max_keys: usize) -> Self {
        Self {
            default,
            keys: DashMap::new(),
            generation: AtomicU64::new(0),
            max_keys: max_keys.max(1),
            epoch: Instant::now(),
            settings_max_age_ms: None,
        }
    }

    /// Reads each key's setting again once it is older than `max_age` (in a cluster: changes
    /// made through other nodes are not seen otherwise).
    pub fn with_settings_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.settings_max_age_ms = max_age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Whether `e`'s setting may still be used as read.
    fn current(&self, e: &Entry, generation: u64) -> bool {
        e.generation == generation
            && self.settings_max_age_ms.is_none_or(|max| self.ms(Instant::now()).saturating_sub(e.read_ms) < max)
    }

    /// Counts one request of API key `key_id`. `setting` reads the key's workspace's own
    /// setting (called only when the key is not tracked yet or a setting changed since).
    pub fn check<E>(
        &self,
        key_id: &str,
        setting: impl FnOnce() -> Result<Option<RateLimit>, E>,
    ) -> Result<Result<(), Limited>, E> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(e) = self.keys.get(key_id) {
            if self.current(&e, generation) {
                return Ok(self.take(&e));
            }
        }
        let read_ms = self.ms(Instant::now());
        let limit = setting()?.unwrap_or(self.default);
        if self.keys.len() >= self.max_keys && !self.keys.contains_key(key_id) {
            self.make_room();
        }
        let mut e = self.keys.entry(key_id.into()).or_insert_with(|| Entry::new(limit, generation, read_ms));
        // What was just read applies. Keep the bucket when the limit did not change: a
        // settings change elsewhere must not hand this key a fresh burst.
        if e.limit != limit {
            *e = Entry::new(limit, generation, read_ms);
        } else {
            (e.generation, e.read_ms) = (generation, e.read_ms.max(read_ms));
        }
        Ok(self.take(&e))
    }

    fn take(&self, e: &Entry) -> Result<(), Limited> {
        let Some(l) = &e.limiter else { return Ok(()) };
        let now = Instant::now();
        e.last_used_ms.store(self.ms(now), Ordering::Relaxed);
        l.check().map_err(|not_until| Limited { retry_after: not_until.wait_time_from(now) })
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A workspace's setting changed: every key reads its workspace's setting again.
    pub fn settings_changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    /// Drops entries at rest; if still full, the least recently used tenth.
    fn make_room(&self) {
        let now_ms = self.ms(Instant::now());
        self.keys.retain(|_, e| !e.at_rest(now_ms));
        if self.keys.len() < self.max_keys {
            return;
        }
        let mut used: Vec<u64> = self.keys.iter().map(|e| e.last_used_ms.load(Ordering::Relaxed)).collect();
        if used.is_empty() {
            return;
        }
        let tenth = used.len() / 10;
        let (_, cutoff, _) = used.select_nth_unstable(tenth);
        let cutoff = *cutoff;
        self.keys.retain(|_, e| e.last_used_ms.load(Ordering::Relaxed) > cutoff);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TWO: RateLimit = RateLimit::PerKey { requests_per_second: 1, burst: 2 };

    fn check(r: &RateLimits, key: &str, setting: Option<RateLimit>) -> Result<(), Limited> {
        r.check(key, || Ok::<_, ()>(setting)).unwrap()
    }

    #[test]
    fn a_key_over_its_burst_is_limited_and_another_key_is_not() {
        let r = RateLimits::new(RateLimit::Unlimited);
        assert_eq!(check(&r, "k1", Some(TWO)), Ok(()));
        assert_eq!(check(&r, "k1", Some(TWO)), Ok(()));
        let limited = check(&r, "k1", Some(TWO)).unwrap_err();
        // One token per second: the next one is due within a second.
        assert!(limited.retry_after > Duration::ZERO && limited.retry_after <= Duration::from_secs(1), "{limited:?}");
        assert_eq!(check(&r, "k2", Some(TWO)), Ok(()));
        // Unlimited (the default here) is never limited.
        for _ in 0..1000 {
            assert_eq!(check(&r, "k3", None), Ok(()));
        }
    }

    #[test]
    fn the_instance_default_applies_unless_the_workspace_sets_one() {
        let r = RateLimits::new(TWO);
        assert!((0..3).map(|_| check(&r, "k1", None)).any(|x| x.is_err()));
        assert!((0..100).all(|_| check(&r, "k2", Some(RateLimit::Unlimited)).is_ok()));
    }

    #[test]
    fn a_changed_setting_is_read_again_and_an_unchanged_one_keeps_its_bucket() {
        let r = RateLimits::new(RateLimit::Unlimited);
        let reads = std::cell::Cell::new(0);
        let go = |key: &str, setting: Option<RateLimit>| {
            r.check(key, || {
                reads.set(reads.get() + 1);
                Ok::<_, ()>(setting)
            })
            .unwrap()
        };
        assert!(go("k1", Some(TWO)).is_ok() && go("k1", Some(TWO)).is_ok() && go("k1", Some(TWO)).is_err());
        assert_eq!(reads.get(), 1, "the setting is read once per key, not per request");
        r.settings_changed();
        assert!(go("k1", Some(TWO)).is_err(), "same limit: the empty bucket stays empty");
        assert_eq!(reads.get(), 2);
        r.settings_changed();
        assert!(go("k1", Some(RateLimit::Unlimited)).is_ok());
        assert!(go("k1", Some(RateLimit::Unlimited)).is_ok());
    }

    /// In a cluster a setting changed through another node bumps no generation here: the
    /// setting is read again once older than the bound, keeping the bucket if it is the same.
    #[test]
    fn in_a_cluster_a_setting_is_read_again_once_older_than_the_bound() {
        let reads = std::cell::Cell::new(0);
        let go = |r: &RateLimits, setting: Option<RateLimit>| {
            r.check("k1", || {
                reads.set(reads.get() + 1);
                Ok::<_, ()>(setting)
            })
            .unwrap()
        };
        let r = RateLimits::new(RateLimit::Unlimited).with_settings_max_age(Some(Duration::ZERO));
        assert!(go(&r, Some(TWO)).is_ok() && go(&r, Some(TWO)).is_ok() && go(&r, Some(TWO)).is_err());
        assert_eq!(reads.get(), 3, "read at every request past the bound");
        assert!(go(&r, Some(RateLimit::Unlimited)).is_ok(), "the other node's change applies");
        let r = RateLimits::new(RateLimit::Unlimited).with_settings_max_age(Some(Duration::from_secs(3600)));
        reads.set(0);
        assert!(go(&r, Some(TWO)).is_ok() && go(&r, Some(TWO)).is_ok() && go(&r, Some(TWO)).is_err());
        assert_eq!(reads.get(), 1, "trusted within the bound");
    }

    #[test]
    fn memory_is_bounded() {
        let r = RateLimits::with_capacity(TWO, 10);
        for i in 0..1000 {
            let _ = check(&r, &format!("k{i}"), None);
            assert!(r.tracked() <= 10, "{} keys tracked", r.tracked());
        }
        // The most recent key is still tracked (its bucket kept).
        assert_eq!(check(&r, "k999", None), Ok(()));
        assert!(check(&r, "k999", None).is_err());
    }

    #[test]
    fn a_setting_that_cannot_be_read_is_an_error_and_nothing_is_counted() {
        let r = RateLimits::new(TWO);
        assert_eq!(r.check("k1", || Err::<Option<RateLimit>, _>("store down")), Err("store down"));
        assert_eq!(r.tracked(), 0);
    }
}

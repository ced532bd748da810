//! Signing rounds spaced over the whole instance: at most `sign_rounds_per_second` signer
//! appends a second, over every workspace together.
//!
//! Why. A signing round costs about the same whatever it carries: one Ed25519 signature and a
//! journal record in the signer, the engine's strict verification of the returned checkpoint
//! (about 60 µs here) and a store write. With a few busy workspaces a round carries hundreds of
//! receipts and that cost vanishes; spread over 10,000 workspaces each round carried one
//! receipt, and the rounds were half of both processes' CPU (profile at 4,000 checks/s:
//! verification 25 % of the server, signing and the journal's fsync half of the signer). The
//! checks, which wait for nothing of this, were left the rest of the two cores.
//!
//! How. Each round reserves the next free slot, no sooner than its own batch delay: slots are
//! `1 / rate` apart, handed out first come, first served, so a workspace waits for its turn
//! behind at most the rounds reserved before it and collects its commits meanwhile (the batch
//! grows with the number of workspaces competing). Below the rate nothing waits longer than the
//! batch delay. The price is signing lag: with `W` workspaces all signing at once, about
//! `W / rate` (5 s for 10,000 workspaces at 2,000 rounds/s), never an answer's latency (answers
//! leave at commit). A batch that fills (`sign_batch_max`) goes without waiting for its slot,
//! and nothing waits while the engine shuts down.
//!
//! Ticks. A round that waits more than a tick ([`TICK_SLOTS`] slots) for its slot is woken at
//! the next tick boundary at or after its slot instead, so the rounds of one tick wake together
//! and travel in one signer request (`sign_batcher`). A request costs both processes about the
//! same whatever it carries (a frame each way, a journal group and its fsync in the signer) and
//! the engine's batched check of the returned checkpoints costs less per signature the more it
//! holds: with 10,000 workspaces at the default rate, requests carried ~5 rounds each when each
//! round woke at its own slot. The rate is unchanged (each round still takes one slot); a paced
//! round is at most a tick (8 ms at the default rate) later than its slot, against a wait of
//! more than a tick already; a round that waits less than a tick — every round when a few
//! workspaces sign — is not moved.
//!
//! A bounded wait. No round waits longer than the pacer's bound (a quarter of
//! `max_unsigned_age`, 15 s by default) for its slot: a round that would is sent at the bound,
//! above the rate, without taking a slot. Without it, more busy workspaces than `rate ×
//! max_unsigned_age` (120,000 at the defaults, or a few thousand at a low configured rate) made
//! the oldest unsigned receipt older than `max_unsigned_age` by pacing alone, and the instance
//! failed closed (`signing_backlog`) with the signer healthy and keeping up. Past the bound the
//! rounds' CPU grows with the number of workspaces (about `W / bound` rounds a second) instead
//! of the signing lag; a signer that cannot keep up with that is a real backlog, and fails
//! closed as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots per tick: rounds that wait longer than this many slots wake at tick boundaries.
pub(crate) const TICK_SLOTS: u64 = 16;

/// A round's place in the pacer: when it may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub at: Instant,
    /// The round goes above the rate: the paced queue was longer than the pacer's bound.
    pub over_rate: bool,
}

/// Hands out signing-round slots (see the module docs). Lock-free: one compare-and-swap per
/// round.
#[derive(Debug)]
pub(crate) struct Pacer {
    epoch: Instant,
    /// Nanoseconds between two slots; 0: no pacing.
    interval: u64,
    /// Nanoseconds per tick (`TICK_SLOTS` slots).
    tick: u64,
    /// Nanoseconds a round waits for a slot at most (see *A bounded wait*).
    max_wait: u64,
    /// Nanoseconds since `epoch` of the next free slot.
    next: AtomicU64,
}

impl Pacer {
    /// At most `per_second` rounds a second (0 means no limit), unless a round would wait
    /// longer than `max_wait` for its slot.
    pub(crate) fn new(per_second: u32, max_wait: Duration) -> Self {
        let interval = if per_second == 0 { 0 } else { 1_000_000_000 / u64::from(per_second) };
        Self {
            epoch: Instant::now(),
            interval,
            tick: interval.saturating_mul(TICK_SLOTS),
            max_wait: u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX),
            next: AtomicU64::new(0),
        }
    }

    /// Reserves a slot for one round that is ready at `ready`: when it may be sent (`ready`, or
    /// later if the slots up to then are taken; a round that waits more than a tick goes at the
    /// tick boundary at or after its slot; no round waits much more than `max_wait`).
    pub(crate) fn reserve(&self, ready: Instant) -> Reservation {
        if self.interval == 0 {
            return Reservation { at: ready, over_rate: false };
        }
        let at = u64::try_from(ready.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let slot = next.max(at);
            if slot - at > self.max_wait {
                // Outside the schedule: it takes no slot, so the queue stays `max_wait` long
                // and the rounds beyond it go at the rate the bound needs.
                return Reservation { at: self.wake(at, at.saturating_add(self.max_wait)), over_rate: true };
            }
            match self.next.compare_exchange_weak(
                next,
                slot.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Reservation { at: self.wake(at, slot), over_rate: false },
                Err(seen) => next = seen,
            }
        }
    }

    /// When a round ready at `at` and given `slot` wakes: at its slot, or at the tick boundary
    /// at or after it if that is more than a tick away.
    fn wake(&self, at: u64, slot: u64) -> Instant {
        let wake = match slot - at > self.tick {
            true => slot.div_ceil(self.tick).saturating_mul(self.tick),
            false => slot,
        };
        self.epoch + Duration::from_nanos(wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound no test reaches unless it means to.
    const NO_BOUND: Duration = Duration::from_secs(3600);

    #[test]
    fn below_the_rate_a_round_goes_when_it_is_ready() {
        let p = Pacer::new(1000, NO_BOUND);
        let t0 = Instant::now() + Duration::from_millis(5);
        assert_eq!(p.reserve(t0).at, t0);
        // 10 ms later the next slot (1 ms after the first) is long past.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(p.reserve(t1).at, t1);
    }

    #[test]
    fn rounds_ready_at_once_are_spaced_by_the_rate_in_the_order_they_asked() {
        let p = Pacer::new(1000, NO_BOUND);
        let t0 = Instant::now();
        let slots: Vec<Instant> = (0..5).map(|_| p.reserve(t0).at).collect();
        for (i, s) in slots.iter().enumerate() {
            let expected = slots[0] + Duration::from_millis(i as u64);
            let off = s.saturating_duration_since(expected).max(expected.saturating_duration_since(*s));
            assert!(off < Duration::from_micros(1), "slot {i}: {s:?} vs {expected:?}");
        }
        // A round ready later than the queue's end is not held back by it.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(p.reserve(late).at, late);
    }

    #[test]
    fn rounds_deep_in_the_queue_wake_together_at_tick_boundaries() {
        let p = Pacer::new(1000, NO_BOUND);
        let t0 = Instant::now();
        let wakes: Vec<Duration> = (0..100).map(|_| p.reserve(t0).at - p.epoch).collect();
        let tick = Duration::from_millis(TICK_SLOTS);
        let first = t0 - p.epoch;
        for (i, w) in wakes.iter().enumerate() {
            let slot = first + Duration::from_millis(i as u64);
            if slot - first <= tick {
                // Within a tick of being ready: at its own slot.
                assert!(w.abs_diff(slot) < Duration::from_micros(1), "round {i}: {w:?} vs slot {slot:?}");
            } else {
                // Later: never before its slot, less than a tick after it, on a tick boundary.
                assert!(*w >= slot && *w - slot < tick, "round {i}: {w:?} vs slot {slot:?}");
                assert_eq!(w.as_nanos() % tick.as_nanos(), 0, "round {i}: {w:?} is not on a tick");
            }
        }
        // The rate holds: 100 rounds took 100 slots, so the next one ready now is 100 ms out.
        let next = p.reserve(t0).at - p.epoch;
        assert!(next >= first + Duration::from_millis(100), "{next:?}");
        // Only a few distinct wake-ups for the deep part: one per tick.
        let mut deep: Vec<Duration> = wakes.into_iter().filter(|w| *w > first + tick).collect();
        deep.dedup();
        assert!(deep.len() <= 100 / TICK_SLOTS as usize + 1, "{} wake-ups", deep.len());
    }

    #[test]
    fn no_round_waits_past_the_bound_and_those_that_would_take_no_slot() {
        // 10 rounds a second, at most 1 s of wait: 11 slots (0 to 1 s) are the schedule.
        let p = Pacer::new(10, Duration::from_secs(1));
        let t0 = Instant::now();
        let slots: Vec<Reservation> = (0..50).map(|_| p.reserve(t0)).collect();
        let scheduled = slots.iter().take_while(|s| !s.over_rate).count();
        assert_eq!(scheduled, 11, "{slots:?}");
        for (i, s) in slots.iter().enumerate() {
            let wait = s.at - t0;
            // A tick here is 1.6 s, longer than the bound: nothing is rounded.
            assert!(wait <= Duration::from_secs(1), "round {i} waits {wait:?}");
            assert_eq!(s.over_rate, i >= 11, "round {i}");
        }
        // The rounds over the rate took no slot: the schedule is still 11 slots long, and a
        // round ready once those have passed goes at once, at the rate.
        let later = t0 + Duration::from_millis(1100);
        assert_eq!(p.reserve(later), Reservation { at: later, over_rate: false });
    }

    #[test]
    fn zero_means_no_pacing() {
        let p = Pacer::new(0, NO_BOUND);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(p.reserve(t0).at, t0);
        }
    }

    #[test]
    fn concurrent_reservations_get_distinct_slots() {
        let p = std::sync::Arc::new(Pacer::new(1_000_000, NO_BOUND));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || (0..1000).map(|_| p.reserve(t0).at).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<Instant> = handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
        assert_eq!(all.len(), 4000);
        // Every round took its own slot: the next free one is 4,000 slots (4 ms) after the first.
        let first = t0 - p.epoch;
        let next = Duration::from_nanos(p.next.load(Ordering::Relaxed));
        assert_eq!(next - first, Duration::from_micros(4000), "{next:?}");
        // And no wake-up time serves more rounds than a tick holds (ticks share one, slots
        // within the first tick each have their own).
        all.sort();
        let most = all.chunk_by(|a, b| a == b).map(<[Instant]>::len).max().unwrap_or(0);
        assert!(most as u64 <= TICK_SLOTS, "{most} rounds at one instant");
        let span = *all.last().unwrap_or(&t0) - all[0];
        assert!(span >= Duration::from_micros(3999) && span < Duration::from_micros(4000 + TICK_SLOTS), "{span:?}");
    }
}

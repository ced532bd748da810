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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Hands out signing-round slots (see the module docs). Lock-free: one compare-and-swap per
/// round.
#[derive(Debug)]
pub(crate) struct Pacer {
    epoch: Instant,
    /// Nanoseconds between two slots; 0: no pacing.
    interval: u64,
    /// Nanoseconds since `epoch` of the next free slot.
    next: AtomicU64,
}

impl Pacer {
    /// At most `per_second` rounds a second; 0 means no limit.
    pub(crate) fn new(per_second: u32) -> Self {
        let interval = if per_second == 0 { 0 } else { 1_000_000_000 / u64::from(per_second) };
        Self { epoch: Instant::now(), interval, next: AtomicU64::new(0) }
    }

    /// Reserves a slot for one round that is ready at `ready`: when it may be sent (`ready`, or
    /// later if the slots up to then are taken).
    pub(crate) fn reserve(&self, ready: Instant) -> Instant {
        if self.interval == 0 {
            return ready;
        }
        let at = u64::try_from(ready.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let slot = next.max(at);
            match self.next.compare_exchange_weak(
                next,
                slot.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return self.epoch + Duration::from_nanos(slot),
                Err(seen) => next = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_the_rate_a_round_goes_when_it_is_ready() {
        let p = Pacer::new(1000);
        let t0 = Instant::now() + Duration::from_millis(5);
        assert_eq!(p.reserve(t0), t0);
        // 10 ms later the next slot (1 ms after the first) is long past.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(p.reserve(t1), t1);
    }

    #[test]
    fn rounds_ready_at_once_are_spaced_by_the_rate_in_the_order_they_asked() {
        let p = Pacer::new(1000);
        let t0 = Instant::now();
        let slots: Vec<Instant> = (0..5).map(|_| p.reserve(t0)).collect();
        for (i, s) in slots.iter().enumerate() {
            let expected = slots[0] + Duration::from_millis(i as u64);
            let off = s.saturating_duration_since(expected).max(expected.saturating_duration_since(*s));
            assert!(off < Duration::from_micros(1), "slot {i}: {s:?} vs {expected:?}");
        }
        // A round ready later than the queue's end is not held back by it.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(p.reserve(late), late);
    }

    #[test]
    fn zero_means_no_pacing() {
        let p = Pacer::new(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(p.reserve(t0), t0);
        }
    }

    #[test]
    fn concurrent_reservations_get_distinct_slots() {
        let p = std::sync::Arc::new(Pacer::new(1_000_000));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || (0..1000).map(|_| p.reserve(t0)).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<Instant> = handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4000, "every round its own slot");
        // 4,000 rounds at a million a second span 4 ms.
        let span = *all.last().unwrap_or(&t0) - all[0];
        assert!(span >= Duration::from_micros(3999) && span < Duration::from_micros(4001), "{span:?}");
    }
}

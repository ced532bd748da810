//! A slow or stalled device, for the slow-disk tier (issue 11 part 4). Every request of a class
//! the device is slow for ([`SlowOps`]: by default the write path — `write`, `fallocate`,
//! `fsync`/`fdatasync`, `fsyncdir`) waits here before it is served, outside the disk's lock, so
//! a slow request holds up only the requests queued behind it on the same FUSE thread (as on a
//! device with that many queues), and a crash is still one atomic step.
//!
//! Why here and not `dm-delay`: the test machines have no device-mapper (no
//! `/dev/mapper/control`, no kernel modules to load), and this layer already holds the data
//! directory of the power-loss tier.
//!
//! Reads and metadata requests (lookups, attributes, creates) are not delayed by default: a
//! slow disk's reads are mostly served by the page cache. With [`SlowOps::reads`] and
//! [`SlowOps::metadata`] on, they are too — a read that misses the cache on a device that
//! answers in seconds, or a stalled network volume, where every request waits.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How the device answers the write path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Slowness {
    /// At once.
    #[default]
    Fast,
    /// Each request is served this long after it arrived.
    Latency(Duration),
    /// Nothing is served until the setting changes.
    Stalled,
}

/// Which classes of requests a slow device delays (each `true` waits as [`Slowness`] says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowOps {
    /// `write`, `fallocate`, and `setattr` that changes a size (`truncate`).
    pub writes: bool,
    /// `fsync`/`fdatasync`, `fsyncdir`.
    pub syncs: bool,
    /// `read`, `readdir`, `readlink`.
    pub reads: bool,
    /// Everything that names or describes files: `lookup`, `getattr`, `setattr` without a
    /// size, `open`/`opendir`, `create`, `mknod`, `mkdir`, `unlink`, `rmdir`, `symlink`,
    /// `rename`, `link`, `access`, `statfs`. (`flush` and `release` — close(2) — are not.)
    pub metadata: bool,
}

impl SlowOps {
    /// Every class.
    pub const ALL: Self = Self { writes: true, syncs: true, reads: true, metadata: true };
}

/// The write path, as before classes existed.
impl Default for SlowOps {
    fn default() -> Self {
        Self { writes: true, syncs: true, reads: false, metadata: false }
    }
}

/// The class of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Write,
    Sync,
    Read,
    Metadata,
}

impl SlowOps {
    fn covers(self, op: Op) -> bool {
        match op {
            Op::Write => self.writes,
            Op::Sync => self.syncs,
            Op::Read => self.reads,
            Op::Metadata => self.metadata,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    state: Mutex<(Slowness, SlowOps)>,
    changed: Condvar,
}

impl Throttle {
    pub(crate) fn set(&self, s: Slowness) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = s;
        self.changed.notify_all();
    }

    /// Which classes the slowness applies to from now on (requests already waiting that it no
    /// longer covers go at once).
    pub(crate) fn set_ops(&self, ops: SlowOps) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = ops;
        self.changed.notify_all();
    }

    /// Waits as the device would for a request of class `op` arriving now. A change of the
    /// setting applies to requests already waiting (as reloading a `dm-delay` table flushes its
    /// queue): after `Fast` they go at once, after a shorter latency when it has passed since
    /// they arrived.
    pub(crate) fn wait(&self, op: Op) {
        let arrived = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if !state.1.covers(op) {
                return;
            }
            state = match state.0 {
                Slowness::Fast => return,
                Slowness::Latency(d) => {
                    let Some(left) = (arrived + d).checked_duration_since(Instant::now()) else { return };
                    self.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0
                }
                Slowness::Stalled => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn requests_wait_their_latency_and_a_stall_until_it_is_lifted() {
        let t = Arc::new(Throttle::default());
        let start = Instant::now();
        t.wait(Op::Write);
        assert!(start.elapsed() < Duration::from_millis(50), "fast by default");

        t.set(Slowness::Latency(Duration::from_millis(120)));
        let start = Instant::now();
        t.wait(Op::Write);
        assert!(start.elapsed() >= Duration::from_millis(120));

        t.set(Slowness::Stalled);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || {
                t.wait(Op::Sync);
                let _ = tx.send(());
            })
        };
        // Still stalled a while later (the waiter cannot have passed: nothing changed).
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "a stalled request was served");
        t.set(Slowness::Fast);
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok(), "lifting the stall serves it");
        waiter.join().expect("the waiter ends");
    }

    /// Reads and metadata requests wait only when their class is chosen; a stall of a class
    /// is lifted by taking the class out, too.
    #[test]
    fn only_the_chosen_classes_wait() {
        let t = Arc::new(Throttle::default());
        t.set(Slowness::Stalled);
        let start = Instant::now();
        t.wait(Op::Read);
        t.wait(Op::Metadata);
        assert!(start.elapsed() < Duration::from_millis(50), "reads and metadata are not delayed by default");

        t.set_ops(SlowOps { reads: true, ..SlowOps::default() });
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || {
                t.wait(Op::Read);
                let _ = tx.send(());
            })
        };
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "a stalled read was served");
        t.wait(Op::Metadata);
        t.set_ops(SlowOps::default());
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok(), "taking reads out serves the waiting read");
        waiter.join().expect("the waiter ends");
    }
}

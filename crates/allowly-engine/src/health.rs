//! Faults below the process that make the engine fail closed: a data volume below its
//! free-space floor or a store write the device refused, a signer that cannot make its journal
//! durable, and signing that fell too far behind. Each is a [`Fault`] with a stable code; while
//! one is active every receipt-producing call is refused with it (HTTP 503), `/readyz` lists it,
//! and its gauge is 1. Each clears by itself once its cause does.
//!
//! The request path reads one atomic word ([`Faults::first`] when it is non-zero); the causes
//! are raised and cleared off the request path — by the health task (`health_loop`, every
//! `EngineConfig::health_interval`: free space, the signing backlog, a probe write while a store
//! write failure is outstanding), by the committer (a failed synced write), and by the signing
//! pipeline (the signer's answers).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use allowly_store::{DocKind, Durability, Op, StoreError, WriteBatch};

use crate::metrics::Metrics;
use crate::shared::{blocking, Shared};

/// A reason to fail closed that is not the signer being unreachable. The set is closed: each
/// code is a problem code and a metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The data volume is below `--min-free-disk`, or a store write failed because the device
    /// is full.
    StorageFull,
    /// A store write failed with a device error (EIO and the like).
    StorageFailed,
    /// The signer answered, repeatedly, that it cannot make its journal durable.
    SignerStorageFailed,
    /// The oldest unsigned receipt is older than `--max-unsigned-age-ms`.
    SigningBacklog,
}

impl Fault {
    /// Every fault, in the order `/readyz` lists them.
    pub const ALL: [Fault; 4] =
        [Fault::StorageFull, Fault::StorageFailed, Fault::SignerStorageFailed, Fault::SigningBacklog];

    /// The stable code: problem `code`, `/readyz` cause and metric label.
    pub fn code(self) -> &'static str {
        match self {
            Self::StorageFull => "storage_full",
            Self::StorageFailed => "storage_failed",
            Self::SignerStorageFailed => "signer_storage_failed",
            Self::SigningBacklog => "signing_backlog",
        }
    }

    /// What a client is told (no paths, no sizes: those are in the log and `/readyz`).
    pub fn public_message(self) -> &'static str {
        match self {
            Self::StorageFull => "the data volume is (nearly) full; nothing was decided or changed",
            Self::StorageFailed => "the data volume failed a write; nothing was decided or changed",
            Self::SignerStorageFailed => "the signer cannot write its journal; nothing was decided or changed",
            Self::SigningBacklog => "signing is too far behind; nothing was decided or changed",
        }
    }

    /// The fault a failed store write stands for, if it is one (a full or failing device).
    pub fn of_store_error(e: &StoreError) -> Option<Fault> {
        match e {
            StoreError::NoSpace(_) => Some(Self::StorageFull),
            StoreError::Io(_) => Some(Self::StorageFailed),
            _ => None,
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The active faults: a bit mask for the request path, the detail of each for `/readyz` and
/// the log.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    mask: AtomicU32,
    details: Mutex<[Option<String>; Fault::ALL.len()]>,
    /// A store write failed with a device fault: the health task probes with a small synced
    /// write until one succeeds (free space alone does not prove the store writes again).
    write_failed: AtomicBool,
    /// Signer answers in a row that said its journal failed (reset by any successful append).
    signer_failures: AtomicU32,
}

/// How many `StorageFailed` answers in a row from the signer make [`Fault::SignerStorageFailed`]:
/// one failed group can be a transient error the signer already undid; several in a row (the
/// pipeline retries within about a second) is a disk that stays full or broken.
pub const SIGNER_STORAGE_FAILURES: u32 = 3;

impl Faults {
    /// The first active fault with its detail, or `None` (one atomic load when healthy).
    pub fn first(&self) -> Option<(Fault, String)> {
        if self.mask.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.active().into_iter().next()
    }

    /// Every active fault with its detail, in [`Fault::ALL`] order.
    pub fn active(&self) -> Vec<(Fault, String)> {
        let mask = self.mask.load(Ordering::Acquire);
        let details = self.details.lock().map(|d| d.clone()).unwrap_or_default();
        Fault::ALL
            .iter()
            .zip(details)
            .filter(|(f, _)| mask & f.bit() != 0)
            .map(|(f, d)| (*f, d.unwrap_or_default()))
            .collect()
    }

    /// Raises `fault` (or updates its detail), logging when it becomes active.
    pub fn raise(&self, fault: Fault, detail: String, m: &Metrics) {
        if let Ok(mut d) = self.details.lock() {
            d[fault as usize] = Some(detail.clone());
        }
        if self.mask.fetch_or(fault.bit(), Ordering::AcqRel) & fault.bit() == 0 {
            tracing::error!(cause = fault.code(), detail = %detail, "failing closed: receipt-producing calls answer 503");
        }
        m.faults.with_label_values(&[fault.code()]).set(1);
    }

    /// Clears `fault`, logging when it was active.
    pub fn clear(&self, fault: Fault, m: &Metrics) {
        if self.mask.fetch_and(!fault.bit(), Ordering::AcqRel) & fault.bit() != 0 {
            tracing::info!(cause = fault.code(), "cleared: serving again");
        }
        m.faults.with_label_values(&[fault.code()]).set(0);
    }

    /// Sets or clears `fault` as `detail` says.
    pub fn set(&self, fault: Fault, detail: Option<String>, m: &Metrics) {
        match detail {
            Some(d) => self.raise(fault, d, m),
            None => self.clear(fault, m),
        }
    }

    /// A store write failed: raises its fault (if it is a device fault) at once, and has the
    /// health task probe the store until a write succeeds.
    pub fn store_write_failed(&self, e: &StoreError, m: &Metrics) {
        if let Some(fault) = Fault::of_store_error(e) {
            self.write_failed.store(true, Ordering::Release);
            self.raise(fault, format!("a store write failed: {e}"), m);
        }
    }
}

impl Faults {
    /// The signer refused an append because its journal failed; the third in a row fails the
    /// engine closed.
    pub fn signer_storage_failed(&self, detail: &str, m: &Metrics) {
        let n = self.signer_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= SIGNER_STORAGE_FAILURES {
            self.raise(Fault::SignerStorageFailed, format!("{n} signer journal writes failed in a row: {detail}"), m);
        }
    }

    /// The signer made an append durable: its journal works (cheap when nothing was wrong).
    pub fn signer_stored(&self, m: &Metrics) {
        let was = self.signer_failures.swap(0, Ordering::AcqRel);
        if was != 0 || self.mask.load(Ordering::Acquire) & Fault::SignerStorageFailed.bit() != 0 {
            self.clear(Fault::SignerStorageFailed, m);
        }
    }
}

/// Free space of the data volume, as `statvfs` reports it to an unprivileged writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl VolumeSpace {
    /// Reads the space of the file system holding `path`.
    pub fn of(path: &std::path::Path) -> std::io::Result<Self> {
        let s = rustix::fs::statvfs(path)?;
        Ok(Self {
            free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
        })
    }
}

/// The default free-space floor: 256 MiB or 1 % of the volume, whichever is larger. 256 MiB
/// holds RocksDB's next preallocated write-ahead log (~70 MiB) and a memtable flush with room
/// to spare; the percentage keeps the margin proportional on large volumes.
pub fn default_min_free(total_bytes: u64) -> u64 {
    (256u64 << 20).max(total_bytes / 100)
}

/// The detail of [`Fault::StorageFull`] when `space` is below `floor`, else `None`.
pub(crate) fn below_floor(space: VolumeSpace, floor: u64) -> Option<String> {
    (space.free_bytes < floor).then(|| {
        format!(
            "the data volume has {} MiB free, below the floor of {} MiB (--min-free-disk)",
            space.free_bytes >> 20,
            floor >> 20
        )
    })
}

/// The detail of [`Fault::SigningBacklog`] when the oldest unsigned receipt is older than
/// `bound`, else `None`.
pub(crate) fn backlog_too_old(oldest: Option<Duration>, unsigned: u64, bound: Duration) -> Option<String> {
    let age = oldest?;
    (age > bound).then(|| {
        format!(
            "the oldest of {unsigned} unsigned receipts is {:.1} s old, above the bound of {:.1} s (--max-unsigned-age-ms)",
            age.as_secs_f64(),
            bound.as_secs_f64()
        )
    })
}

/// A store write that changes nothing (the delete of a document no id can name: instance
/// scope, an id outside the `ik_` form) but goes through the write-ahead log and its fsync.
fn probe_batch() -> WriteBatch {
    WriteBatch::from(vec![Op::DeleteDoc {
        kind: DocKind::Idempotency,
        workspace_id: crate::engine::INSTANCE_SCOPE.to_owned(),
        id: "health-probe".to_owned(),
    }])
}

/// Every `health_interval`: the data volume's free space against the floor, the signing
/// backlog against its bound (and their gauges), and a probe write while a store write
/// failure is outstanding. Ends with the engine.
pub(crate) async fn health_loop(shared: Weak<Shared>) {
    let Some(every) = shared.upgrade().map(|s| s.cfg.health_interval) else { return };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        check(&s).await;
    }
}

/// One round of [`health_loop`].
pub(crate) async fn check(s: &Arc<Shared>) {
    let m = &s.metrics;
    // Free space: a statvfs, off the async workers (a hung network volume must not stall them).
    let mut full = None;
    if let Some(path) = s.cfg.data_volume.clone() {
        match blocking(move || VolumeSpace::of(&path).map_err(|e| crate::EngineError::Internal(e.to_string()))).await {
            Ok(space) => {
                let floor = s.cfg.min_free_disk.unwrap_or_else(|| default_min_free(space.total_bytes));
                m.data_volume_free_bytes.set(i64::try_from(space.free_bytes).unwrap_or(i64::MAX));
                m.data_volume_min_free_bytes.set(i64::try_from(floor).unwrap_or(i64::MAX));
                full = below_floor(space, floor);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the data volume's free space"),
        }
    }
    // A store write failed on a full or failing device: free space alone does not prove the
    // store writes again (RocksDB refuses every write after a failed WAL write until it is
    // reopened), so only a write that succeeds clears it.
    let mut still_failing = None;
    let probing = s.faults.write_failed.load(Ordering::Acquire);
    if probing {
        let store = s.store.clone();
        match blocking(move || Ok(store.write(probe_batch(), Durability::Sync)?)).await {
            Ok(()) => s.faults.write_failed.store(false, Ordering::Release),
            Err(e) => {
                let fault = match &e {
                    crate::EngineError::Store(se) => Fault::of_store_error(se),
                    _ => None,
                };
                still_failing = Some((fault.unwrap_or(Fault::StorageFailed), format!("store writes still fail: {e}")));
            }
        }
    }
    let (write_full, write_failed) = match still_failing {
        Some((Fault::StorageFull, why)) => (Some(why), None),
        Some((_, why)) => (None, Some(why)),
        None => (None, None),
    };
    if !probing && s.faults.write_failed.load(Ordering::Acquire) {
        // A write failed since we looked: its fault stands until next round's probe.
        if let Some(why) = full {
            s.faults.raise(Fault::StorageFull, why, m);
        }
    } else {
        s.faults.set(Fault::StorageFull, full.or(write_full), m);
        s.faults.set(Fault::StorageFailed, write_failed, m);
    }
    // The signing backlog, across every workspace with unsigned receipts.
    let backlog = s.pipelines.backlog(|ws| s.diverged.contains(ws));
    let oldest = backlog.oldest.map(|t| t.elapsed());
    m.unsigned_receipts.set(i64::try_from(backlog.unsigned).unwrap_or(i64::MAX));
    m.oldest_unsigned_age_seconds.set(oldest.map_or(0.0, |d| d.as_secs_f64()));
    s.faults.set(Fault::SigningBacklog, backlog_too_old(oldest, backlog.unsigned, s.cfg.max_unsigned_age), m);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_become_faults_only_for_the_device() {
        assert_eq!(Fault::of_store_error(&StoreError::NoSpace("x".into())), Some(Fault::StorageFull));
        assert_eq!(Fault::of_store_error(&StoreError::Io("x".into())), Some(Fault::StorageFailed));
        assert_eq!(Fault::of_store_error(&StoreError::Engine("busy".into())), None);
        assert_eq!(Fault::of_store_error(&StoreError::InvalidOp("x".into())), None);
    }

    #[test]
    fn the_floor_defaults_to_256_mib_or_one_percent() {
        assert_eq!(default_min_free(1 << 30), 256 << 20);
        assert_eq!(default_min_free(100 << 30), 1 << 30);
        let space = |free| VolumeSpace { free_bytes: free, total_bytes: 1 << 30 };
        assert!(below_floor(space(255 << 20), 256 << 20).is_some());
        assert!(below_floor(space(256 << 20), 256 << 20).is_none());
    }

    #[test]
    fn the_backlog_counts_only_when_older_than_the_bound() {
        let bound = Duration::from_secs(60);
        assert!(backlog_too_old(None, 0, bound).is_none());
        assert!(backlog_too_old(Some(Duration::from_secs(60)), 5, bound).is_none());
        let d = backlog_too_old(Some(Duration::from_secs(61)), 5, bound).unwrap_or_default();
        assert!(d.contains("5 unsigned") && d.contains("61.0 s"), "{d}");
    }

    #[test]
    fn faults_list_in_order_and_clear() {
        let (f, m) = (Faults::default(), Metrics::new());
        assert!(f.first().is_none());
        f.raise(Fault::SigningBacklog, "late".into(), &m);
        f.raise(Fault::StorageFull, "full".into(), &m);
        assert_eq!(f.first(), Some((Fault::StorageFull, "full".into())));
        assert_eq!(f.active().len(), 2);
        assert!(m.text().contains(r#"allowly_engine_fault{cause="storage_full"} 1"#), "{}", m.text());
        f.clear(Fault::StorageFull, &m);
        assert_eq!(f.first(), Some((Fault::SigningBacklog, "late".into())));
        f.clear(Fault::SigningBacklog, &m);
        assert!(f.first().is_none());
        assert!(m.text().contains(r#"allowly_engine_fault{cause="storage_full"} 0"#));
    }
}

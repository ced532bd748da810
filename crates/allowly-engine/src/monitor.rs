//! The health task: every `EngineConfig::health_interval` it reads the data volume's free space
//! against its floor, the signing backlog against its bound (and their gauges), and probes the
//! store with a small synced write while a store write failure is outstanding; it raises and
//! clears the [`Faults`](crate::health::Faults) those stand for.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use allowly_store::{DocKind, Durability, Op, WriteBatch};

use crate::health::{backlog_too_old, below_floor, default_min_free, Fault, VolumeSpace};
use crate::services::blocking;
use crate::shared::Shared;

/// A store write that changes nothing (the delete of a document no id can name: instance
/// scope, an id outside the `ik_` form) but goes through the write-ahead log and its fsync.
fn probe_batch() -> WriteBatch {
    WriteBatch::from(vec![Op::DeleteDoc {
        kind: DocKind::Idempotency,
        workspace_id: crate::model::INSTANCE_SCOPE.to_owned(),
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
        match blocking(move || VolumeSpace::of(&path).map_err(|e| crate::error::EngineError::Internal(e.to_string())))
            .await
        {
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
                    crate::error::EngineError::Store(se) => Fault::of_store_error(se),
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

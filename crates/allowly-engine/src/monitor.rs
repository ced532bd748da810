//! The health task: every `EngineConfig::health_interval` it reads the data volume's free space
//! against its floor, the signing backlog against its bound (and their gauges; the backlog at
//! most every second, see [`backlog_every`]), and probes the store with a small synced write
//! while a store write failure is outstanding; it raises and
//! clears the [`Faults`](crate::health::Faults) those stand for. Also what `/metrics` reads at
//! scrape time: [`ScrapeCollector`] and the signer's cached metrics ([`signer_metrics`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use allowly_store::{DocKind, Op, Store, WriteBatch};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::actor::{CONFIRMATION_DUE_SCOPE, DUE_SCOPE};
use crate::clock::now_ms;
use crate::health::{backlog_too_old, below_floor, default_min_free, Fault, VolumeSpace};
use crate::services::{blocking, Services};
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
    let Some((every, scan_every)) = shared.upgrade().map(|s| (s.cfg.health_interval, backlog_every(&s.cfg))) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `Engine::start` ran a whole check just before this loop.
    let mut scanned = Instant::now();
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let scan = scanned.elapsed() >= scan_every;
        if scan {
            scanned = Instant::now();
        }
        check(&s, scan).await;
    }
}

/// How often the health task scans every workspace's signing backlog. The scan visits each
/// loaded workspace (a lock and a few cold cache lines each: ~4 ms over 10,000 busy ones on
/// this project's 2-core machine, on an async worker), so at every 250 ms tick it cost ~1.3 %
/// of the server's CPU under load spread over 10,000 workspaces. The bound it checks is
/// `max_unsigned_age` (60 s by default): a scan every 1/64 of it, at most every second, adds
/// at most that much to the detection, and the gauges it sets stay fresher than any scrape.
fn backlog_every(cfg: &crate::config::EngineConfig) -> Duration {
    let tick = cfg.health_interval;
    (cfg.max_unsigned_age / 64).clamp(tick, tick.max(Duration::from_secs(1)))
}

/// Starts a probe write unless one is running: through the committer, so it is timed like
/// any write (clearing [`Fault::StorageSlow`] when it is quick) and ordered after what is
/// queued. After a failed write (`recover`), the store is asked to recover first, and the
/// outcome is kept for the next round ([`Faults::probe_failure`](crate::health::Faults)); a
/// success ends the write failure.
fn start_probe(s: &Arc<Shared>, recover: bool) {
    if recover {
        let backoff = s.faults.probe_backoff.lock().unwrap_or_else(|e| e.into_inner());
        if backoff.is_some_and(|(not_before, _)| Instant::now() < not_before) {
            return;
        }
    }
    if s.faults.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    // The services alone, not the engine's registries: a probe stuck on a stalled volume
    // keeps the store and committer alive, never the actors.
    let services = s.services.clone();
    tokio::spawn(async move {
        let s = &services;
        let failures = s.faults.write_failures.load(Ordering::Acquire);
        let mut outcome = Ok(());
        if recover {
            let store = s.store.clone();
            outcome = blocking(move || Ok(store.recover()?)).await;
        }
        if outcome.is_ok() {
            outcome = s.committer.write(crate::model::INSTANCE_SCOPE, probe_batch()).await;
        }
        if recover {
            let mut backoff = s.faults.probe_backoff.lock().unwrap_or_else(|e| e.into_inner());
            *backoff = match (&outcome, *backoff) {
                (Ok(()), _) => None,
                (Err(_), None) => Some((Instant::now() + s.cfg.health_interval, s.cfg.health_interval)),
                (Err(_), Some((_, wait))) => {
                    let wait = (wait * 2).min(crate::health::MAX_PROBE_BACKOFF);
                    Some((Instant::now() + wait, wait))
                }
            };
            drop(backoff);
            let mut failure = s.faults.probe_failure.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                // Unless a write failed since it started (that failure stands until the next).
                Ok(()) if s.faults.write_failures.load(Ordering::Acquire) == failures => {
                    *failure = None;
                    s.faults.write_failed.store(false, Ordering::Release);
                    tracing::info!("a probe write succeeded: the store writes again");
                }
                Ok(()) => {}
                Err(e) => {
                    // Not a device error (the store busy recovering, say): the cause raised
                    // by the failed write stands.
                    let fault = match &e {
                        crate::error::EngineError::Store(se) => Fault::of_store_error(se),
                        _ => None,
                    };
                    let standing = Fault::OF_WRITES.into_iter().find(|f| s.faults.is_active(*f));
                    let fault = fault.or(standing).unwrap_or(Fault::StorageFailed);
                    *failure = Some((fault, format!("store writes still fail: {e}")));
                }
            }
        }
        s.faults.probing.store(false, Ordering::Release);
    });
}

/// One round of [`health_loop`]; the signing backlog is scanned only with `scan_backlog`.
pub(crate) async fn check(s: &Arc<Shared>, scan_backlog: bool) {
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
    // store writes again, so only a probe write that succeeds clears it (the probe first asks
    // the store to recover: RocksDB refuses every write after a failed WAL write until then).
    // The probe runs beside this loop, never in it: on a stalled volume it may not return.
    if s.faults.write_failed.load(Ordering::Acquire) {
        start_probe(s, true);
        let failure = s.faults.probe_failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match failure {
            // The probe failed too: its error says which fault stands.
            Some((fault, why)) => {
                for f in Fault::OF_WRITES {
                    let by_write = (f == fault).then(|| why.clone());
                    let detail = if f == Fault::StorageFull { full.clone().or(by_write) } else { by_write };
                    s.faults.set(f, detail, m);
                }
            }
            // No probe has answered since the failure: the fault it raised stands.
            None => {
                if let Some(why) = full {
                    s.faults.raise(Fault::StorageFull, why, m);
                }
            }
        }
    } else {
        s.faults.set(Fault::StorageFull, full, m);
        // A write may have failed since the flag was read: its fault stands until a probe.
        if !s.faults.write_failed.load(Ordering::Acquire) {
            for f in Fault::OF_WRITES.into_iter().filter(|f| *f != Fault::StorageFull) {
                s.faults.clear(f, m);
            }
        }
    }
    // A slow volume. A write running for longer than the bound raises it now (it cannot time
    // itself until it returns); the committer clears it when a write takes less, so while it
    // stands and nothing else writes, a probe write gives it the chance.
    let slow_after = s.cfg.commit_timeout / 2;
    if let Some(running) = s.committer.running_for().filter(|d| *d > slow_after) {
        let detail = format!(
            "a synced store write has been running for {:.2} s, more than {:.2} s (half of --commit-timeout-ms)",
            running.as_secs_f64(),
            slow_after.as_secs_f64()
        );
        s.faults.raise(Fault::StorageSlow, detail, m);
    }
    if s.faults.is_active(Fault::StorageSlow) {
        start_probe(s, false);
    }
    if !scan_backlog {
        return;
    }
    // The signing backlog, across every workspace with unsigned receipts.
    let backlog = s.pipelines.backlog(|ws| s.diverged.contains(ws));
    let oldest = backlog.oldest.map(|t| t.elapsed());
    m.unsigned_receipts.set(i64::try_from(backlog.unsigned).unwrap_or(i64::MAX));
    m.oldest_unsigned_age_seconds.set(oldest.map_or(0.0, |d| d.as_secs_f64()));
    s.faults.set(Fault::SigningBacklog, backlog_too_old(oldest, backlog.unsigned, s.cfg.max_unsigned_age), m);
}

/// Most ids one due index or the outbox is counted to per scrape: a gauge at this value means
/// "at least". Reading ids costs about a microsecond each, so a scrape stays well under a
/// second even then.
pub(crate) const MAX_COUNTED: usize = 1_000_000;

/// The engine's metrics as one [`Collector`] for the process's registry: collecting first
/// reads what is only known at scrape time — the signer client's wait count, the cached
/// authorizations, the store's own figures, the pending human-in-the-loop items — so nothing
/// on the request path pays for them. `collect` reads the store: call it (the registry's
/// `gather`) on a blocking thread, never on an async worker.
pub(crate) struct ScrapeCollector {
    pub shared: Weak<Shared>,
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for ScrapeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeCollector").finish_non_exhaustive()
    }
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.metrics.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(s) = self.shared.upgrade() {
            read_at_scrape(&s);
        }
        self.metrics.collect()
    }
}

/// Sets the gauges [`ScrapeCollector`] reads at scrape time.
fn read_at_scrape(s: &Shared) {
    let m = &s.metrics;
    // The client counts its waits itself (it knows nothing of Prometheus): catch up.
    let waits = s.signer.waits_total();
    let seen = m.signer_waits.get();
    if waits > seen {
        m.signer_waits.inc_by(waits - seen);
    }
    m.cached_authorizations.set(i64::try_from(s.cached_authorizations.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    m.pending_writes.set(i64::try_from(s.admissions.pending()).unwrap_or(i64::MAX));
    m.commit_running_seconds.set(s.committer.running_for().map_or(0.0, |d| d.as_secs_f64()));
    m.set_store_stats(s.store.engine_stats());
    match pending_hitl(&*s.store, now_ms()) {
        Ok((escalations, confirmations)) => {
            m.escalations_pending.set(i64::try_from(escalations).unwrap_or(i64::MAX));
            m.confirmations_pending.set(i64::try_from(confirmations).unwrap_or(i64::MAX));
        }
        // The gauges keep their last value; the next scrape tries again.
        Err(e) => tracing::warn!(error = %e, "cannot count pending escalations and confirmations"),
    }
}

/// Pending escalations and confirmations, every workspace: entries of their due indexes (both
/// in one key space, one scope each), read as ids alone. A confirmation's entry stays until
/// it is answered or pruned after its expiry, so only those not yet expired count.
fn pending_hitl(store: &dyn Store, now: u64) -> allowly_store::Result<(u64, u64)> {
    const PAGE: usize = 1024;
    let (mut escalations, mut confirmations, mut seen) = (0u64, 0u64, 0usize);
    let mut after: Option<(String, String)> = None;
    loop {
        let page =
            store.all_doc_ids(DocKind::EscalationDue, after.as_ref().map(|(w, i)| (w.as_str(), i.as_str())), PAGE)?;
        let last = page.len() < PAGE;
        seen += page.len();
        for (scope, id) in &page {
            if scope == DUE_SCOPE {
                escalations += 1;
            } else if scope == CONFIRMATION_DUE_SCOPE && due_ms(id).is_some_and(|t| t > now) {
                confirmations += 1;
            }
        }
        after = page.into_iter().next_back();
        if last || seen >= MAX_COUNTED {
            return Ok((escalations, confirmations));
        }
    }
}

/// The expiry a due-index id starts with (16 hex digits).
pub(crate) fn due_ms(id: &str) -> Option<u64> {
    id.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// How long a scrape waits for the signer's metrics before serving the last ones it has.
const SIGNER_SCRAPE_WAIT: Duration = Duration::from_millis(100);

/// The signer's metrics for this scrape (empty until the signer answered once): starts a
/// fetch unless one is running, waits for it at most [`SIGNER_SCRAPE_WAIT`], then serves the
/// newest copy ([`SignerScrape`](crate::health::SignerScrape)).
pub(crate) async fn signer_metrics(services: &Arc<Services>) -> Arc<str> {
    let cache = &services.signer_scrape;
    let done = cache.done.notified();
    tokio::pin!(done);
    // Registered before the fetch can finish, so its notification is not missed.
    done.as_mut().enable();
    if !cache.fetching.swap(true, Ordering::AcqRel) {
        let s = services.clone();
        tokio::spawn(async move {
            let fetched = tokio::time::timeout(s.cfg.signer_timeout, s.signer.metrics()).await;
            if let Ok(Ok(text)) = fetched {
                *s.signer_scrape.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((text.into(), Instant::now()));
            }
            s.signer_scrape.fetching.store(false, Ordering::Release);
            s.signer_scrape.done.notify_waiters();
        });
    }
    let _ = tokio::time::timeout(SIGNER_SCRAPE_WAIT, done).await;
    let last = cache.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (text, at) = last.unwrap_or_else(|| (Arc::from(""), cache.started));
    services.metrics.signer_metrics_age_seconds.set(at.elapsed().as_secs_f64());
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineConfig;

    #[test]
    fn the_backlog_is_scanned_every_64th_of_its_bound_within_a_tick_and_a_second() {
        let every = |tick_ms: u64, bound_ms: u64| {
            let cfg = EngineConfig {
                health_interval: Duration::from_millis(tick_ms),
                max_unsigned_age: Duration::from_millis(bound_ms),
                ..EngineConfig::default()
            };
            backlog_every(&cfg).as_millis()
        };
        assert_eq!(every(250, 60_000), 937, "the defaults");
        assert_eq!(every(250, 3_600_000), 1_000, "at most a second");
        assert_eq!(every(250, 2_000), 250, "never more often than the tick");
        assert_eq!(every(5, 2_000), 31);
        assert_eq!(every(2_000, 3_600_000), 2_000, "a tick slower than a second stays the tick");
    }
}

//! Every metric of the engine. Names follow `allowly_engine_<name>_{total,seconds}`, and
//! `allowly_store_<name>` for the store's own figures the engine reads at scrape time; label
//! values come from closed sets (never a workspace or authorization id). [`Metrics`] is a
//! Prometheus [`Collector`]: the server registers it (through `Engine::collector`) in the one
//! registry of the process.

use std::sync::{Arc, Mutex};

use allowly_store::EngineStats;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, TextEncoder,
};

use crate::decide::{Reason, Verdict};

/// `allowly_engine_hitl_answers_total`'s `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitlKind {
    Confirmation,
    Escalation,
}

/// `allowly_engine_hitl_answers_total`'s `outcome` label: `approved` (the answer allowed the
/// action), `declined` (answered, and the action denied: declined by the human, or the
/// authorization revoked or expired meanwhile), `expired` (no answer in time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitlOutcome {
    Approved,
    Declined,
    Expired,
}

impl HitlKind {
    const ALL: [Self; 2] = [Self::Confirmation, Self::Escalation];

    fn label(self) -> &'static str {
        match self {
            Self::Confirmation => "confirmation",
            Self::Escalation => "escalation",
        }
    }
}

impl HitlOutcome {
    const ALL: [Self; 3] = [Self::Approved, Self::Declined, Self::Expired];

    fn label(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::Expired => "expired",
        }
    }
}

/// One `allowly_store_*` gauge and the [`EngineStats`] field it shows.
#[derive(Debug, Clone)]
struct StoreGauge {
    gauge: IntGauge,
    read: fn(&EngineStats) -> Option<u64>,
}

/// The engine's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Decisions by `decision` (allow, deny, confirm, escalate) and `reason` (the reason codes).
    decisions: IntCounterVec,
    /// `decisions`' eight series, by `Reason as usize` (each reason has one decision): a check
    /// counts its decision with one atomic add, no label lookup.
    decided: Arc<[IntCounter]>,
    /// Requests refused (429) because a bounded queue was full: the workspace's mailbox, or
    /// the writes pending for the committer (`max_pending_writes`) while the volume is not slow.
    pub overloaded: IntCounter,
    /// Requests answered 503 `commit_timeout`: not answered within `commit_timeout` (outcome
    /// unknown to the client).
    pub commit_timeouts: IntCounter,
    /// Of those, requests still in their workspace's mailbox when their deadline passed: dropped
    /// undecided, nothing written.
    pub abandoned: IntCounter,
    /// Store reads of requests not done within `commit_timeout` (503 `read_timeout`), or
    /// refused at once because `MAX_PENDING_READS` were already waiting for the volume.
    pub read_timeouts: IntCounter,
    /// Requests admitted and not yet through the committer (set when scraped; bounded by
    /// `max_pending_writes`).
    pub pending_writes: IntGauge,
    /// How long the synced store write running now has been running, 0 when none runs (set
    /// when scraped): a stalled volume shows here before any write finishes to be timed.
    pub commit_running_seconds: Gauge,
    pub idempotency_swept: IntCounter,
    /// Requests refused because the signer was down (fail closed).
    pub failed_closed: IntCounter,
    /// Receipts (and other records) per group commit. Buckets 1..4096 by powers of 2.
    pub commit_batch: Histogram,
    /// Actor groups (one workspace each) per synced write.
    pub commit_groups: Histogram,
    /// Synced writes that waited for the commit window (the committer was under load).
    pub commit_window_waits: IntCounter,
    /// Signer calls that waited for an in-flight slot (back pressure, not an outage).
    pub signer_waits: IntCounter,
    /// Authorizations cached by all workspace actors (set when scraped).
    pub cached_authorizations: IntGauge,
    /// Time of one synced group commit. Buckets 50 µs .. ~1.6 s by powers of 2.
    pub commit_seconds: Histogram,
    /// Group commits that failed (every request in them got an error; the actor reloaded).
    pub commit_failures: IntCounter,
    /// Workspace actors running now.
    pub actors_live: IntGauge,
    /// In a cluster: workspace leases this node holds (0 outside one).
    pub leases_held: IntGauge,
    /// Workspace actors started (first use or reload after passivation).
    pub actor_starts: IntCounter,
    pub passivations: IntCounterVec,
    /// Receipts per signing batch. Buckets 1..4096 by powers of 2.
    pub sign_batch: Histogram,
    /// Workspaces (signing rounds) per signer request (`AppendMany`). Buckets 1..256.
    pub sign_request_workspaces: Histogram,
    /// Signing rounds waiting for a signer request (see `sign_batcher.rs`).
    pub sign_rounds_queued: IntGauge,
    /// Signing batches by where their bodies came from: `memory` (handed over by the commit)
    /// or `store` (read back: after a restart, a failed round or a full buffer).
    pub sign_batch_source: IntCounterVec,
    /// Time from the oldest unsigned receipt being committed to its signature being stored.
    /// Buckets 1 ms .. ~33 s by powers of 2.
    pub signing_lag_seconds: Histogram,
    /// Receipts whose signature is stored.
    pub receipts_signed: IntCounter,
    /// Failed exchanges with the signer, by `kind` (unavailable, storage, token_unavailable,
    /// error).
    pub signer_errors: IntCounterVec,
    /// Signer answers `Busy` (its queue for a workspace over its cap): back pressure, the
    /// signing round waits and is retried. Not an error and never an outage (`signer_up`
    /// stays 1).
    pub signer_busy: IntCounter,
    /// Signing rounds that waited past their batch delay for a slot of the instance's signing
    /// rate (`sign_rounds_per_second`): how often the rate binds. Their wait shows in
    /// `signing_lag_seconds`.
    pub sign_rounds_paced: IntCounter,
    /// Signing rounds sent above that rate because they would have waited longer than a
    /// quarter of `max_unsigned_age` for a slot (more busy workspaces than the rate serves
    /// within the bound; `pace.rs`). Rising: the rounds' CPU grows with the workspaces.
    pub sign_rounds_over_rate: IntCounter,
    /// 1 while the signer answers, 0 while checks fail closed.
    pub signer_up: IntGauge,
    /// Signer logs that disagree with the stored one (fork or rollback): signing stops for the
    /// workspace. Alert on any increase.
    pub log_divergence: IntCounter,
    /// 1 while a fault fails the engine closed, by `cause` (the closed set of
    /// [`Fault`](crate::fault::Fault) codes); 0 otherwise.
    pub faults: IntGaugeVec,
    /// Requests refused because of a fault, by `cause` (same label set as `faults`).
    pub fault_refusals: IntCounterVec,
    /// Free bytes of the data volume (for an unprivileged writer), as last read.
    pub data_volume_free_bytes: IntGauge,
    /// The free-space floor in bytes (`--min-free-disk`, or its default for this volume).
    pub data_volume_min_free_bytes: IntGauge,
    /// Committed receipts not yet signed, over every workspace with a signing task.
    pub unsigned_receipts: IntGauge,
    /// Age of the oldest committed, unsigned receipt of any workspace (0 when none). Grows while
    /// a workspace's signing is stalled, whatever the others do.
    pub oldest_unsigned_age_seconds: Gauge,
    /// Workspaces whose stored log and the signer's log disagree right now: each refuses new
    /// receipts (`workspace_log_diverged`) until resynced. Alert when above 0.
    pub workspaces_diverged: IntGauge,
    /// Requests refused because their workspace's log diverged from the signer's.
    pub diverged_refusals: IntCounter,
    /// Workspace key rotation attempts by `outcome` ([`KEY_ROTATION_OUTCOMES`]); the finishing
    /// of an interrupted rotation counts as an attempt too.
    pub key_rotations: IntCounterVec,
    /// Duration of the last rotation that finished, from its start (including the wait for the
    /// pipeline) to its synced write; 0 before the first.
    pub key_rotation_last_seconds: Gauge,
    /// Escalations waiting for an approver (their due index, counted at scrape time).
    pub escalations_pending: IntGauge,
    /// Confirmation nonces neither answered nor expired (their due index, counted at scrape
    /// time).
    pub confirmations_pending: IntGauge,
    /// Answers to confirmations and escalations, by `kind` and `outcome` ([`HitlOutcome`]).
    hitl_answers: IntCounterVec,
    /// Age of the signer's series served on `/metrics`: the time since they were fetched (they
    /// are served from the last good fetch while the signer does not answer).
    pub signer_metrics_age_seconds: Gauge,
    /// `add-checkpoint` submissions to the witnesses, by `witness` (its configured name) and
    /// `outcome` (`witnessing::SUBMISSION_OUTCOMES`). Alert on `bad_cosignature` and `refused`.
    pub witness_submissions: IntCounterVec,
    /// By `witness`: leaves of the workspaces' newest checkpoints that the witness has not
    /// cosigned yet, summed over the workspaces it lags in (0: caught up). Grows while a
    /// witness is down; with a quorum, receipts stay pending while too many witnesses lag.
    pub witness_cosigned_lag: IntGaugeVec,
    /// By `witness`: 1 while its last exchange got an answer, 0 while it is backed off.
    pub witness_up: IntGaugeVec,
    /// Checkpoints appended to the checkpoint log (`--checkpoint-log`), synced; one appended
    /// again after a crash counts again.
    pub checkpoint_log_appended: IntCounter,
    /// Rounds of appends to the checkpoint log that failed (the file, or recording progress in
    /// the store) and are tried again. Alert on any increase: anchoring is behind.
    pub checkpoint_log_failures: IntCounter,
    /// The store's own figures (`allowly_store_*`), as last read; a figure the store does not
    /// have (`None`) is left out of the scrape rather than shown as 0.
    store: Arc<[StoreGauge]>,
    store_stats: Arc<Mutex<EngineStats>>,
}

/// The `outcome` label of `allowly_engine_key_rotations_total`, a closed set:
/// `rotated`; `drain_timeout` (the log was not signed up to the rotation's index within
/// `rotation_drain_timeout`: nothing reserved); `refused` (the signer answered with an error or
/// busy: the reservation is cleared); `unfinished` (no answer from the signer, or one that could
/// not be stored: the index stays reserved and the rotation is finished later); `failed` (a
/// store error before the reservation, or an answer that does not check: the workspace is then
/// marked diverged).
pub const KEY_ROTATION_OUTCOMES: [&str; 5] = ["rotated", "drain_timeout", "refused", "unfinished", "failed"];

fn pow2(start: f64, n: usize) -> Vec<f64> {
    exponential_buckets(start, 2.0, n).unwrap_or_default()
}

/// Powers of two from 1 ms, plus 50 ms: the signing-lag objective (p99 ≤ 50 ms at 80 % of the
/// check knee, issue 10) falls between the 32 and 64 ms buckets, so without its own bound a
/// quantile could only say "≤ 64 ms".
fn signing_lag_buckets() -> Vec<f64> {
    let mut b = pow2(0.001, 16);
    b.push(0.05);
    b.sort_by(f64::total_cmp);
    b
}

fn store_gauge(name: &str, help: &str, read: fn(&EngineStats) -> Option<u64>) -> StoreGauge {
    StoreGauge { gauge: IntGauge::new(name, help).expect("static metric definition"), read }
}

/// The `allowly_store_*` gauges (each only when the store reports it: RocksDB its engine's
/// figures, PostgreSQL its pool's). Alert on `write_stopped` and on a delayed write rate above 0
/// (writes throttled); compaction debt and sizes explain them. With PostgreSQL, calls queued
/// while every connection is busy mean the database (or the pool) is what requests wait for.
fn store_gauges() -> Vec<StoreGauge> {
    vec![
        store_gauge(
            "allowly_store_write_stopped",
            "1 while the store stops every write until compaction catches up",
            |s| s.write_stopped.map(u64::from),
        ),
        store_gauge(
            "allowly_store_delayed_write_rate_bytes_per_second",
            "Rate the store throttles writes to while it delays them (0 = not delayed)",
            |s| s.delayed_write_rate,
        ),
        store_gauge(
            "allowly_store_pending_compaction_bytes",
            "Bytes compaction must rewrite (estimate); writes stall when it grows past the store's limits",
            |s| s.pending_compaction_bytes,
        ),
        store_gauge("allowly_store_running_compactions", "Compactions running now", |s| s.running_compactions),
        store_gauge("allowly_store_live_data_bytes", "Bytes of the store's live table files", |s| s.live_data_bytes),
        store_gauge("allowly_store_live_blob_bytes", "Bytes of the store's live blob files", |s| s.live_blob_bytes),
        store_gauge("allowly_store_memtable_bytes", "Bytes of the store's in-memory write buffers", |s| {
            s.memtable_bytes
        }),
        // A networked store's (PostgreSQL) connection pool.
        store_gauge("allowly_store_connections_open", "Connections to the database open now", |s| s.connections_open),
        store_gauge("allowly_store_connections_busy", "Connections to the database running a call now", |s| {
            s.connections_busy
        }),
        store_gauge("allowly_store_calls_queued", "Store calls waiting for a connection to the database", |s| {
            s.calls_queued
        }),
    ]
}

impl Metrics {
    /// Every metric, created (labelled counters at zero for each label value they can take).
    pub fn new() -> Self {
        let decisions = IntCounterVec::new(
            Opts::new("allowly_engine_decisions_total", "Decisions by outcome and reason"),
            &["decision", "reason"],
        )
        .expect("static metric definition");
        let decided: Arc<[IntCounter]> = Reason::ALL
            .iter()
            .map(|r| decisions.with_label_values(&[verdict_label(r.verdict()), r.as_str()]))
            .collect();
        let m = Self {
            decisions,
            decided,
            overloaded: IntCounter::new(
                "allowly_engine_overloaded_total",
                "Requests refused with 429: a workspace's queue, or the writes pending for the committer, full",
            )
            .expect("static metric definition"),
            commit_timeouts: IntCounter::new(
                "allowly_engine_commit_timeouts_total",
                "Requests answered 503 commit_timeout (not durable within --commit-timeout-ms; outcome unknown)",
            )
            .expect("static metric definition"),
            read_timeouts: IntCounter::new(
                "allowly_engine_read_timeouts_total",
                "Requests answered 503 read_timeout (a store read not done within --commit-timeout-ms, or too many waiting)",
            )
            .expect("static metric definition"),
            abandoned: IntCounter::new(
                "allowly_engine_abandoned_requests_total",
                "Timed-out requests dropped undecided from their workspace's queue (nothing written)",
            )
            .expect("static metric definition"),
            pending_writes: IntGauge::new(
                "allowly_engine_pending_writes",
                "Requests admitted and not yet through the committer (bounded by --max-pending-writes)",
            )
            .expect("static metric definition"),
            commit_running_seconds: Gauge::new(
                "allowly_engine_commit_running_seconds",
                "How long the synced store write running now has been running (0 when none runs)",
            )
            .expect("static metric definition"),
            idempotency_swept: IntCounter::new(
                "allowly_engine_idempotency_records_swept_total",
                "Records of expired Idempotency-Keys deleted",
            )
            .expect("static metric definition"),
            failed_closed: IntCounter::new(
                "allowly_engine_failed_closed_total",
                "Requests refused because the signer is unavailable",
            )
            .expect("static metric definition"),
            commit_batch: Histogram::with_opts(
                HistogramOpts::new("allowly_engine_commit_batch_size", "Requests per synced write")
                    .buckets(pow2(1.0, 13)),
            )
            .expect("static metric definition"),
            commit_groups: Histogram::with_opts(
                HistogramOpts::new("allowly_engine_commit_groups", "Workspace groups per synced write (one fsync)")
                    .buckets(pow2(1.0, 11)),
            )
            .expect("static metric definition"),
            commit_window_waits: IntCounter::new(
                "allowly_engine_commit_window_waits_total",
                "Synced writes that waited for the commit window (under load)",
            )
            .expect("static metric definition"),
            signer_waits: IntCounter::new(
                "allowly_engine_signer_waits_total",
                "Signer calls that waited for an in-flight slot (back pressure)",
            )
            .expect("static metric definition"),
            cached_authorizations: IntGauge::new(
                "allowly_engine_cached_authorizations",
                "Authorizations cached by all workspace actors (bounded by max_cached_authorizations)",
            )
            .expect("static metric definition"),
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new("allowly_engine_commit_seconds", "Duration of one synced group commit")
                    .buckets(pow2(0.000_05, 16)),
            )
            .expect("static metric definition"),
            commit_failures: IntCounter::new("allowly_engine_commit_failures_total", "Failed group commits")
                .expect("static metric definition"),
            actors_live: IntGauge::new("allowly_engine_actors_live", "Workspace actors running")
                .expect("static metric definition"),
            leases_held: IntGauge::new(
                "allowly_engine_leases_held",
                "Workspace leases this node holds (in a cluster; 0 outside one)",
            )
            .expect("static metric definition"),
            actor_starts: IntCounter::new("allowly_engine_actor_starts_total", "Workspace actors started")
                .expect("static metric definition"),
            // cause: idle (idle_timeout passed) | memory (stopped early above memory_high_water)
            passivations: IntCounterVec::new(
                Opts::new("allowly_engine_passivations_total", "Workspace actors stopped, by cause"),
                &["cause"],
            )
            .expect("static metric definition"),
            sign_rounds_queued: IntGauge::new(
                "allowly_engine_sign_rounds_queued",
                "Signing rounds waiting for a signer request",
            )
            .expect("static metric definition"),
            sign_batch_source: IntCounterVec::new(
                Opts::new("allowly_engine_sign_batches_total", "Signing batches by where their bodies were read from"),
                &["source"],
            )
            .expect("static metric definition"),
            sign_batch: Histogram::with_opts(
                HistogramOpts::new("allowly_engine_sign_batch_size", "Receipts per signing batch")
                    .buckets(pow2(1.0, 13)),
            )
            .expect("static metric definition"),
            sign_request_workspaces: Histogram::with_opts(
                HistogramOpts::new(
                    "allowly_engine_sign_request_workspaces",
                    "Workspaces whose signing rounds one signer request carried",
                )
                .buckets(pow2(1.0, 9)),
            )
            .expect("static metric definition"),
            signing_lag_seconds: Histogram::with_opts(
                HistogramOpts::new("allowly_engine_signing_lag_seconds", "Commit-to-signature delay")
                    .buckets(signing_lag_buckets()),
            )
            .expect("static metric definition"),
            receipts_signed: IntCounter::new("allowly_engine_receipts_signed_total", "Receipts signed")
                .expect("static metric definition"),
            signer_errors: IntCounterVec::new(
                Opts::new("allowly_engine_signer_errors_total", "Failed signer exchanges"),
                &["kind"],
            )
            .expect("static metric definition"),
            signer_busy: IntCounter::new(
                "allowly_engine_signer_busy_total",
                "Signer answers Busy (back pressure: the signing round waits and is retried)",
            )
            .expect("static metric definition"),
            sign_rounds_paced: IntCounter::new(
                "allowly_engine_sign_rounds_paced_total",
                "Signing rounds that waited for a slot of the instance's signing rate",
            )
            .expect("static metric definition"),
            sign_rounds_over_rate: IntCounter::new(
                "allowly_engine_sign_rounds_over_rate_total",
                "Signing rounds sent above the signing rate so as not to wait past a quarter of max_unsigned_age",
            )
            .expect("static metric definition"),
            signer_up: IntGauge::new("allowly_engine_signer_up", "1 while the signer answers")
                .expect("static metric definition"),
            log_divergence: IntCounter::new(
                "allowly_engine_log_divergence_total",
                "Signer log disagrees with the stored log (signing stopped for a workspace)",
            )
            .expect("static metric definition"),
            faults: IntGaugeVec::new(
                Opts::new("allowly_engine_fault", "1 while the engine fails closed for this cause"),
                &["cause"],
            )
            .expect("static metric definition"),
            fault_refusals: IntCounterVec::new(
                Opts::new("allowly_engine_fault_refusals_total", "Requests refused (503) because of a fault"),
                &["cause"],
            )
            .expect("static metric definition"),
            data_volume_free_bytes: IntGauge::new(
                "allowly_engine_data_volume_free_bytes",
                "Free bytes of the data volume (statvfs, unprivileged)",
            )
            .expect("static metric definition"),
            data_volume_min_free_bytes: IntGauge::new(
                "allowly_engine_data_volume_min_free_bytes",
                "Free-space floor of the data volume; below it receipt-producing calls fail closed",
            )
            .expect("static metric definition"),
            unsigned_receipts: IntGauge::new(
                "allowly_engine_unsigned_receipts",
                "Committed receipts not yet signed (every workspace)",
            )
            .expect("static metric definition"),
            oldest_unsigned_age_seconds: Gauge::new(
                "allowly_engine_oldest_unsigned_age_seconds",
                "Age of the oldest committed, unsigned receipt of any workspace (0 when none)",
            )
            .expect("static metric definition"),
            workspaces_diverged: IntGauge::new(
                "allowly_engine_workspaces_diverged",
                "Workspaces whose log disagrees with the signer's (refusing new receipts until resynced)",
            )
            .expect("static metric definition"),
            diverged_refusals: IntCounter::new(
                "allowly_engine_diverged_refusals_total",
                "Requests refused because their workspace's log disagrees with the signer's",
            )
            .expect("static metric definition"),
            key_rotations: IntCounterVec::new(
                Opts::new("allowly_engine_key_rotations_total", "Workspace key rotation attempts by outcome"),
                &["outcome"],
            )
            .expect("static metric definition"),
            key_rotation_last_seconds: Gauge::new(
                "allowly_engine_key_rotation_last_seconds",
                "Duration of the last workspace key rotation that finished (0 before the first)",
            )
            .expect("static metric definition"),
            escalations_pending: IntGauge::new(
                "allowly_engine_escalations_pending",
                "Escalations waiting for an approver (every workspace)",
            )
            .expect("static metric definition"),
            confirmations_pending: IntGauge::new(
                "allowly_engine_confirmations_pending",
                "Confirmation nonces neither answered nor expired (every workspace)",
            )
            .expect("static metric definition"),
            hitl_answers: IntCounterVec::new(
                Opts::new(
                    "allowly_engine_hitl_answers_total",
                    "Answers to confirmations and escalations, by kind and outcome (approved, declined, expired)",
                ),
                &["kind", "outcome"],
            )
            .expect("static metric definition"),
            signer_metrics_age_seconds: Gauge::new(
                "allowly_engine_signer_metrics_age_seconds",
                "Seconds since the signer's series on this page were fetched (served from the last good fetch)",
            )
            .expect("static metric definition"),
            witness_submissions: IntCounterVec::new(
                Opts::new(
                    "allowly_engine_witness_submissions_total",
                    "Checkpoint submissions to witnesses, by witness and outcome",
                ),
                &["witness", "outcome"],
            )
            .expect("static metric definition"),
            witness_cosigned_lag: IntGaugeVec::new(
                Opts::new(
                    "allowly_engine_witness_cosigned_lag",
                    "Leaves of the newest checkpoints a witness has not cosigned yet, over the workspaces it lags in",
                ),
                &["witness"],
            )
            .expect("static metric definition"),
            witness_up: IntGaugeVec::new(
                Opts::new("allowly_engine_witness_up", "1 while the witness answers, 0 while it is backed off"),
                &["witness"],
            )
            .expect("static metric definition"),
            checkpoint_log_appended: IntCounter::new(
                "allowly_engine_checkpoint_log_appended_total",
                "Checkpoints appended to the checkpoint log and synced",
            )
            .expect("static metric definition"),
            checkpoint_log_failures: IntCounter::new(
                "allowly_engine_checkpoint_log_failures_total",
                "Rounds of appends to the checkpoint log that failed and are tried again",
            )
            .expect("static metric definition"),
            store: store_gauges().into(),
            store_stats: Default::default(),
        };
        for fault in crate::fault::Fault::ALL {
            m.faults.with_label_values(&[fault.code()]).set(0);
            m.fault_refusals.with_label_values(&[fault.code()]);
        }
        // Every cause is exported from the start (a series that appears only at its first
        // event makes rate() and absent() alerts lie).
        for cause in ["idle", "memory"] {
            m.passivations.with_label_values(&[cause]);
        }
        for source in ["memory", "store"] {
            m.sign_batch_source.with_label_values(&[source]);
        }
        // The kinds pipeline.rs counts (a closed set): absent until the first signer error,
        // the series made the dashboard's error panel and any rate() over it look broken.
        for kind in ["unavailable", "storage", "token_unavailable", "error"] {
            m.signer_errors.with_label_values(&[kind]);
        }
        for outcome in KEY_ROTATION_OUTCOMES {
            m.key_rotations.with_label_values(&[outcome]);
        }
        for kind in HitlKind::ALL {
            for outcome in HitlOutcome::ALL {
                m.hitl_answers.with_label_values(&[kind.label(), outcome.label()]);
            }
        }
        m
    }

    /// Counts one decision (its label pair is the reason's: [`Reason::verdict`]).
    pub fn decided(&self, reason: Reason) {
        if let Some(c) = self.decided.get(reason as usize) {
            c.inc();
        }
    }

    /// Counts one answer to a confirmation or an escalation.
    pub fn hitl_answered(&self, kind: HitlKind, outcome: HitlOutcome) {
        self.hitl_answers.with_label_values(&[kind.label(), outcome.label()]).inc();
    }

    /// Keeps the store's figures for the next collection.
    pub fn set_store_stats(&self, stats: EngineStats) {
        *self.store_stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }

    /// Every metric but the store's gauges.
    fn parts(&self) -> [&dyn Collector; 51] {
        [
            &self.decisions,
            &self.overloaded,
            &self.commit_timeouts,
            &self.read_timeouts,
            &self.abandoned,
            &self.pending_writes,
            &self.commit_running_seconds,
            &self.idempotency_swept,
            &self.failed_closed,
            &self.commit_batch,
            &self.commit_groups,
            &self.commit_window_waits,
            &self.signer_waits,
            &self.cached_authorizations,
            &self.commit_seconds,
            &self.commit_failures,
            &self.actors_live,
            &self.leases_held,
            &self.actor_starts,
            &self.passivations,
            &self.sign_batch,
            &self.sign_request_workspaces,
            &self.sign_rounds_queued,
            &self.sign_batch_source,
            &self.signing_lag_seconds,
            &self.receipts_signed,
            &self.signer_errors,
            &self.signer_busy,
            &self.sign_rounds_paced,
            &self.sign_rounds_over_rate,
            &self.signer_up,
            &self.log_divergence,
            &self.faults,
            &self.fault_refusals,
            &self.data_volume_free_bytes,
            &self.data_volume_min_free_bytes,
            &self.unsigned_receipts,
            &self.oldest_unsigned_age_seconds,
            &self.workspaces_diverged,
            &self.diverged_refusals,
            &self.escalations_pending,
            &self.confirmations_pending,
            &self.hitl_answers,
            &self.signer_metrics_age_seconds,
            &self.key_rotations,
            &self.key_rotation_last_seconds,
            &self.witness_submissions,
            &self.witness_cosigned_lag,
            &self.witness_up,
            &self.checkpoint_log_appended,
            &self.checkpoint_log_failures,
        ]
    }

    /// Prometheus text exposition of the engine's metrics alone (tests; the server renders its
    /// one registry).
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new().encode(&self.collect(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Confirm => "confirm",
        Verdict::Escalate => "escalate",
    }
}

impl Collector for Metrics {
    fn desc(&self) -> Vec<&Desc> {
        let store = self.store.iter().flat_map(|s| s.gauge.desc());
        self.parts().into_iter().flat_map(Collector::desc).chain(store).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.store_stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let store = self.store.iter().filter_map(|s| {
            let v = (s.read)(&stats)?;
            s.gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
            Some(s.gauge.collect())
        });
        // A labelled family with no series yet (the witness metrics without witnesses) is left
        // out: a text encoder refuses a family without metrics.
        self.parts()
            .into_iter()
            .map(Collector::collect)
            .chain(store)
            .flatten()
            .filter(|mf| !mf.get_metric().is_empty())
            .collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

//! Every metric of the signer, in one place. Names follow `allowly_signer_<name>_{total,seconds}`;
//! label values come from closed sets (never a workspace id). Exposed through the protocol's
//! `Metrics` request, so the signer needs no listening port of its own.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The signer's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by operation and outcome (`ok` or an error code name).
    pub requests: IntCounterVec,
    /// Connections refused because the peer uid is not allowed.
    pub peer_rejected: IntCounter,
    /// Frames that could not be decoded.
    pub bad_frames: IntCounter,
    /// Checkpoints signed (one Ed25519 signature each).
    pub checkpoints_signed: IntCounter,
    /// Leaves appended to logs.
    pub leaves_signed: IntCounter,
    /// Appends (and rotations) refused because they conflict with the signed log: a different
    /// leaf at a signed index, a skipped index, or a size the signer cannot check. Warns.
    pub fork_attempts: IntCounter,
    /// `Adopt` requests by `outcome`: `adopted` (the state moved to the note), `unchanged` (it
    /// was there already), `refused` (also counted in `fork_attempts` and, by reason, in
    /// `adopt_refusals`).
    pub adopts: IntCounterVec,
    /// `Adopt` requests refused, by `reason` ([`crate::adopt::REASONS`]).
    pub adopt_refusals: IntCounterVec,
    /// `ImportKeys` requests by `outcome`: `installed`, `unchanged` (the same record again),
    /// `refused` (nothing written: a record that does not parse, names another workspace, does
    /// not open under this signer's keys, or drops or changes a key it has).
    pub key_imports: IntCounterVec,
    /// Appends at an already signed index whose leaves agree with what was signed: a lost
    /// answer retried, by `answer` (`checkpoint`: answered again with the same checkpoint;
    /// `size_mismatch`: told the current size, the caller catches up; `rotation`: a rotation
    /// asked again after its answer was lost, answered again). Benign; no warning.
    pub append_replays: IntCounterVec,
    /// Batches refused because a body is not a receipt the signer may sign, by `reason` (a
    /// closed set: `malformed`, `workspace`, `log_index`, `kind`, `time_backwards`, `time_future`).
    pub receipts_refused: IntCounterVec,
    /// Appended bodies that the one-pass canonical reader left to the general parser (not in
    /// RFC 8785 canonical form, or a form it does not read) and that were accepted: the
    /// service sends canonical bodies, so this should stay at 0 (refused bodies are counted in
    /// `receipts_refused`).
    pub body_slow_reads: IntCounter,
    /// Leaves per signature. Buckets: powers of 4 from 1 to 4096 (the protocol's batch limit;
    /// coalesced groups can exceed it, hence the last bucket at 65536).
    pub leaves_per_signature: Histogram,
    /// Time from handing a signed group to the journal writer until its record and audit line
    /// are durable in the journal and the line is written to `audit.log` (queueing behind the
    /// writer's current group included). Buckets 0.1 ms .. 1 s.
    pub persist_seconds: Histogram,
    /// Journal records made durable by one journal fdatasync: how many signed groups (of any
    /// workspaces) share an fsync. Buckets: powers of 4 from 1 to 4096, then 16384 (the
    /// writer takes at most 8192 submissions into one group).
    pub journal_records_per_fsync: Histogram,
    /// fdatasync calls by file: `journal` once per group the writer commits (divided by
    /// `checkpoints_signed`, the fsyncs paid per signature); `audit` only when `audit.log` is
    /// made durable on its own — at start after its repair from the journal, before each
    /// journal compaction and at a clean stop —, never per group (the journal holds the lines).
    pub fsyncs: IntCounterVec,
    /// Journal groups (or compactions) that failed; their submitters got errors.
    pub journal_failures: IntCounter,
    /// Journal compactions completed.
    pub journal_compactions: IntCounter,
    /// Current size of the journal file in bytes.
    pub journal_bytes: IntGauge,
    /// Key material that could not be locked in memory.
    pub mlock_failures: IntCounter,
    /// Workspace actors currently loaded.
    pub workspaces_loaded: IntGauge,
    /// Workspaces unloaded after `--idle-unload-secs` without a request (loaded again by the
    /// next one).
    pub workspace_unloads: IntCounter,
    /// Requests answered `Busy` because their workspace's queue was at a cap, by `limit`
    /// (`workspace_requests`: 16 384 requests; `workspace_bytes`:
    /// `--max-workspace-queued-bytes`). Back pressure on one workspace; the caller retries.
    pub busy: IntCounterVec,
    /// Connections closed at once because `--max-connections` were open.
    pub connections_refused: IntCounter,
    /// Connections being served.
    pub connections_open: IntGauge,
    /// Frames whose reading waited for request bytes to be freed (`--max-queued-bytes` held):
    /// back pressure on the connection.
    pub backpressure_waits: IntCounter,
    /// Bytes of requests read and not yet answered (at most `--max-queued-bytes`).
    pub queued_bytes: IntGauge,
    /// Bytes of the pages that hold keys and other secrets (`hardening::pool`), and of those
    /// the bytes locked in RAM: they follow the workspaces loaded (16 keys a page), and drop
    /// when idle ones are unloaded. Read when the metrics are rendered.
    pub secret_bytes: IntGauge,
    pub secret_locked_bytes: IntGauge,
    /// 1 while the PKCS#11 token does not answer (the signer fails closed and re-initialises
    /// the module to find it again); 0 otherwise, and always 0 for sealed-file keys.
    pub token_lost: IntGauge,
    /// Re-initialisations of the PKCS#11 module while its token was lost, by `outcome` (`ok`:
    /// found again; `failed`: not yet, tried again after `token_lost_retry_seconds`).
    pub token_reinits: IntCounterVec,
    /// While the token is lost: the wait after the last re-initialisation that did not find it
    /// before the next may run (1 s doubling to 30 s); 0 while the token answers.
    pub token_lost_retry_seconds: IntGauge,
    /// Recorded keys a look-up did not find on a token that answers (their workspaces' signing
    /// fails closed); 0 once each is found again.
    pub token_keys_missing: IntGauge,
    /// Re-initialisations of the PKCS#11 module to look for missing keys (also counted in
    /// `token_reinits`). They back off: the first at once, then 5 s, 10 s, … up to 300 s apart.
    pub token_missing_key_reinits: IntCounter,
    /// The wait after the last of those before the next may run (5 to 300 s); 0 when no key is
    /// missing.
    pub token_missing_key_retry_seconds: IntGauge,
    /// Keys a crash left made on the token but unrecorded (between `C_GenerateKeyPair` and the
    /// key file), found at start from the key store's intents and deleted.
    pub orphan_keys_destroyed: IntCounter,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let requests =
            counter_vec("allowly_signer_requests_total", "Requests by operation and outcome", &["op", "outcome"]);
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static metric {name}: {e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let fsyncs = counter_vec(
            "allowly_signer_fsyncs_total",
            "fdatasync calls by file (journal: one per group; audit: at start, before a compaction, at stop)",
            &["file"],
        );
        // Both files shown from the start (at 0): `audit` moves rarely, and a missing series reads
        // as "not exported" rather than "none".
        for file in ["journal", "audit"] {
            fsyncs.with_label_values(&[file]);
        }
        let busy = counter_vec(
            "allowly_signer_busy_total",
            "Requests answered Busy because their workspace's queue was at a cap, by limit",
            &["limit"],
        );
        for limit in ["workspace_requests", "workspace_bytes"] {
            busy.with_label_values(&[limit]);
        }
        // The standard process series of the signer (CPU, memory, fds, start time), named
        // `allowly_signer_process_*`: the server re-exports this page beside its own
        // `process_*`, which must not collide. Read from /proc/self when rendered.
        let pid = i32::try_from(std::process::id()).unwrap_or(0);
        let _ =
            registry.register(Box::new(prometheus::process_collector::ProcessCollector::new(pid, "allowly_signer")));
        // Every closed label set at zero from the start: a series that appears at its first
        // event hides that event from rate() and increase().
        for op in allowly_signer_proto::Request::NAMES {
            for outcome in ["ok", "internal"] {
                requests.with_label_values(&[op, outcome]);
            }
        }
        let token_reinits = counter_vec(
            "allowly_signer_token_reinitialisations_total",
            "Re-initialisations of the PKCS#11 module while its token was lost, by outcome",
            &["outcome"],
        );
        for outcome in ["ok", "failed"] {
            token_reinits.with_label_values(&[outcome]);
        }
        let adopts = counter_vec("allowly_signer_adopts_total", "Adopt requests by outcome", &["outcome"]);
        for outcome in ["adopted", "unchanged", "refused"] {
            adopts.with_label_values(&[outcome]);
        }
        let adopt_refusals = counter_vec(
            "allowly_signer_adopt_refusals_total",
            "Adopt requests refused (the note does not extend a log this signer can verify), by reason",
            &["reason"],
        );
        for reason in crate::adopt::REASONS {
            adopt_refusals.with_label_values(&[reason]);
        }
        let key_imports =
            counter_vec("allowly_signer_key_imports_total", "ImportKeys requests by outcome", &["outcome"]);
        for outcome in ["installed", "unchanged", "refused"] {
            key_imports.with_label_values(&[outcome]);
        }
        let m = Self {
            adopts,
            adopt_refusals,
            key_imports,
            token_lost: gauge("allowly_signer_token_lost", "1 while the PKCS#11 token does not answer (checks fail closed)"),
            token_reinits,
            token_lost_retry_seconds: gauge(
                "allowly_signer_token_lost_retry_seconds",
                "Wait before the next re-initialisation looking for a lost PKCS#11 token (1 s doubling to 30 s; 0: not lost)",
            ),
            orphan_keys_destroyed: counter(
                "allowly_signer_orphan_keys_destroyed_total",
                "Keys found at start made on the token but never recorded (a crash in between), deleted",
            ),
            busy,
            workspace_unloads: counter(
                "allowly_signer_workspace_unloads_total",
                "Idle workspaces unloaded (keys wiped, their memory unlocked)",
            ),
            connections_refused: counter(
                "allowly_signer_connections_refused_total",
                "Connections closed at once: --max-connections were open",
            ),
            connections_open: gauge("allowly_signer_connections_open", "Connections being served"),
            backpressure_waits: counter(
                "allowly_signer_backpressure_waits_total",
                "Frames whose reading waited for request bytes to be freed (--max-queued-bytes held)",
            ),
            queued_bytes: gauge("allowly_signer_queued_bytes", "Bytes of requests read and not yet answered"),
            secret_bytes: gauge("allowly_signer_secret_bytes", "Bytes of the pages that hold keys and other secrets"),
            secret_locked_bytes: gauge(
                "allowly_signer_secret_locked_bytes",
                "Bytes of the pages that hold keys and other secrets that are locked in RAM",
            ),
            append_replays: counter_vec(
                "allowly_signer_append_replays_total",
                "Appends at signed indices whose leaves agree with the signed log, and rotations repeated after their answer was lost (lost answers retried), by answer",
                &["answer"],
            ),
            receipts_refused: counter_vec(
                "allowly_signer_receipts_refused_total",
                "Append batches refused because a body is not a receipt the signer may sign, by reason",
                &["reason"],
            ),
            requests,
            peer_rejected: counter("allowly_signer_peer_rejected_total", "Connections refused: peer uid not allowed"),
            bad_frames: counter("allowly_signer_bad_frames_total", "Frames that could not be decoded"),
            checkpoints_signed: counter("allowly_signer_checkpoints_signed_total", "Checkpoints signed"),
            leaves_signed: counter("allowly_signer_leaves_signed_total", "Leaves appended to workspace logs"),
            body_slow_reads: counter(
                "allowly_signer_body_slow_reads_total",
                "Accepted receipt bodies not read by the one-pass canonical reader (not in canonical form)",
            ),
            fork_attempts: counter(
                "allowly_signer_fork_attempts_total",
                "Appends, rotations or adopts refused because they conflict with the signed log (fork, rollback, skipped index)",
            ),
            leaves_per_signature: hist(
                "allowly_signer_leaves_per_signature",
                "Leaves covered by one signature",
                vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 65536.0],
            ),
            persist_seconds: hist(
                "allowly_signer_persist_seconds",
                "Time to make a signed group durable (one journal fsync, audit line written, queueing included)",
                vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            ),
            journal_records_per_fsync: hist(
                "allowly_signer_journal_records_per_fsync",
                "Journal records made durable by one fdatasync",
                vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0],
            ),
            fsyncs,
            journal_failures: counter(
                "allowly_signer_journal_failures_total",
                "Journal writes or compactions that failed (their submitters got errors)",
            ),
            journal_compactions: counter("allowly_signer_journal_compactions_total", "Journal compactions completed"),
            journal_bytes: gauge("allowly_signer_journal_bytes", "Size of the journal file"),
            mlock_failures: counter("allowly_signer_mlock_failures_total", "Key material that could not be locked"),
            workspaces_loaded: gauge("allowly_signer_workspaces_loaded", "Workspace actors loaded"),
            token_keys_missing: gauge(
                "allowly_signer_token_keys_missing",
                "Recorded keys not found on a PKCS#11 token that answers (their workspaces fail closed)",
            ),
            token_missing_key_reinits: counter(
                "allowly_signer_token_missing_key_reinitialisations_total",
                "Re-initialisations of the PKCS#11 module to look for missing keys (backing off from 5 s to 300 s)",
            ),
            token_missing_key_retry_seconds: gauge(
                "allowly_signer_token_missing_key_retry_seconds",
                "Wait before the next re-initialisation for missing keys (0: none missing)",
            ),
            registry,
        };
        for answer in ["checkpoint", "size_mismatch", "rotation"] {
            m.append_replays.with_label_values(&[answer]);
        }
        for reason in crate::check::Reason::ALL {
            m.receipts_refused.with_label_values(&[reason.label()]);
        }
        m
    }

    /// The PKCS#11 backend's series.
    pub fn token(&self) -> TokenMetrics {
        TokenMetrics {
            lost: self.token_lost.clone(),
            reinits: self.token_reinits.clone(),
            lost_retry_seconds: self.token_lost_retry_seconds.clone(),
            keys_missing: self.token_keys_missing.clone(),
            missing_key_reinits: self.token_missing_key_reinits.clone(),
            missing_key_retry_seconds: self.token_missing_key_retry_seconds.clone(),
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let pool = crate::hardening::pool::usage();
        self.secret_bytes.set(i64::try_from(pool.mapped_bytes).unwrap_or(i64::MAX));
        self.secret_locked_bytes.set(i64::try_from(pool.locked_bytes).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The PKCS#11 backend's own series (registered in the signer's [`Metrics`]; unregistered copies by
/// default, for tools and tests).
#[derive(Debug, Clone)]
pub struct TokenMetrics {
    /// `allowly_signer_token_lost`: 1 while the token does not answer (the signer fails closed).
    pub lost: prometheus::IntGauge,
    /// `allowly_signer_token_reinitialisations_total{outcome}`: re-initialisations of the module
    /// while the token was lost (`ok`: it answers again; `failed`: not yet).
    pub reinits: prometheus::IntCounterVec,
    /// `allowly_signer_token_lost_retry_seconds`: while the token is lost, the wait before the
    /// next re-initialisation looking for it.
    pub lost_retry_seconds: prometheus::IntGauge,
    /// `allowly_signer_token_keys_missing`: recorded keys not found on a token that answers.
    pub keys_missing: prometheus::IntGauge,
    /// `allowly_signer_token_missing_key_reinitialisations_total`: re-initialisations to look
    /// for them.
    pub missing_key_reinits: prometheus::IntCounter,
    /// `allowly_signer_token_missing_key_retry_seconds`: the wait before the next one.
    pub missing_key_retry_seconds: prometheus::IntGauge,
}

impl Default for TokenMetrics {
    fn default() -> Self {
        Metrics::new().token()
    }
}

//! Engine tuning. Defaults suit one service on a small machine; every field is documented with
//! what it bounds.

use std::time::Duration;

/// Engine tuning.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most requests waiting for one workspace actor; more get `Overloaded` (HTTP 429).
    pub mailbox_capacity: usize,
    /// An actor with no message for this long stops; its workspace reloads on the next request.
    pub idle_timeout: Duration,
    /// Resident memory (bytes) above which actors idle for `pressure_min_idle` are stopped
    /// early, least recently used first, until it is below again (0: never). Bounds what many
    /// idle workspaces hold (their cached authorizations) without waiting for `idle_timeout`.
    pub memory_high_water: u64,
    /// How long an actor must have been idle to be stopped under memory pressure: busy
    /// workspaces are never cycled.
    pub pressure_min_idle: Duration,
    /// While the committer is busy, a synced store write starts no sooner than this after the
    /// previous one (requests arriving meanwhile share it): fewer fsyncs under load for at most
    /// this much more latency; no wait at low load (see `commit.rs`). Zero: never wait.
    pub commit_window: Duration,
    /// Most receipts sent to the signer in one batch.
    pub sign_batch_max: usize,
    /// How long a workspace's signing batch collects commits before it is sent (unless it
    /// fills first): the signing lag it adds, traded for fewer signatures and signer fsyncs.
    pub sign_batch_delay: Duration,
    /// Most signing rounds a second over every workspace together (0: no limit). A round
    /// costs about the same for one receipt as for a thousand (a signature, its verification, a
    /// journal record and a store write), so with thousands of workspaces signing at once each
    /// waits for its turn and carries more: signing lag of about `W / rate` for `W` workspaces
    /// signing at once, never answer latency (see `pace.rs`).
    pub sign_rounds_per_second: u32,
    /// Most authorizations cached by all workspace actors together (beyond it an actor drops
    /// its cached entries that are durable, and rereads them from the store when used).
    pub max_cached_authorizations: usize,
    /// The signer counts as down when it has not answered for this long (checks then fail
    /// closed with 503). This is the fail-closed window: after the signer stops answering,
    /// checks are still acknowledged (durable, pending receipt) for up to this long.
    pub signer_timeout: Duration,
    /// Longest a workspace key rotation waits for the signing pipeline to sign that
    /// workspace's log up to the rotation's index (it is woken as the pipeline signs, not
    /// polled). Past it the rotation fails with `SignerUnavailable` (HTTP 503
    /// `signer_unavailable`, `Retry-After: 1`), nothing reserved or changed. The workspace's
    /// other requests wait in its mailbox meanwhile, so this also bounds their extra wait.
    pub rotation_drain_timeout: Duration,
    /// Longest a request that writes waits for its answer: in its workspace's queue, and for
    /// the synced write holding its effects. Past it the answer is `CommitTimeout` (HTTP 503
    /// `commit_timeout`, outcome unknown: retry with the same `Idempotency-Key`). Synced writes
    /// slower than half of it raise `Fault::StorageSlow` (new receipt-producing requests are
    /// refused at once, with nothing written), so on a slow volume most requests are refused
    /// with a known outcome rather than timed out with an unknown one. A key rotation waits
    /// longer: `rotation_drain_timeout` + `signer_timeout` + twice this.
    pub commit_timeout: Duration,
    /// Most requests admitted and not yet through the committer, over every workspace: sent to
    /// an actor and not yet answered — or answered with `CommitTimeout` while their write is
    /// still queued or running. One more is refused at once: `StorageSlow` (503) while that
    /// fault is raised, else `Overloaded` (429). Bounds what a slow volume can make the engine
    /// hold, however fast clients retry.
    pub max_pending_writes: usize,
    /// Most long-polls (`wait_escalation`, `wait_confirmation`) waiting at once, instance-wide;
    /// one more is refused at once (`TooManyWaiters`, 503).
    pub max_long_polls: usize,
    /// Longest wait of one long-poll (a longer `wait` is cut to this).
    pub long_poll_max: Duration,
    /// The directory whose file system's free space is watched (the store's); `None` watches
    /// nothing (in-memory stores, tests).
    pub data_volume: Option<std::path::PathBuf>,
    /// Free-space floor of `data_volume` in bytes: below it receipt-producing calls fail closed
    /// (`storage_full`). `None`: 256 MiB or 1 % of the volume, whichever is larger.
    pub min_free_disk: Option<u64>,
    /// Receipt-producing calls fail closed (`signing_backlog`) while the oldest committed,
    /// unsigned receipt of any workspace is older than this.
    pub max_unsigned_age: Duration,
    /// How often free space is looked at (and a failed store is probed); the signing backlog,
    /// a scan of every loaded workspace, every 1/64 of `max_unsigned_age` but never more often
    /// than this nor less often than every second (or this, if longer).
    pub health_interval: Duration,
    /// How long a `confirm` nonce stays valid.
    pub confirmation_ttl: Duration,
    /// How long an escalation stays open.
    pub escalation_ttl: Duration,
    /// Bound on draining at shutdown.
    pub shutdown_timeout: Duration,
    /// How long an `Idempotency-Key` answers repeats with its first answer (after that the key
    /// is free again).
    pub idempotency_ttl: Duration,
    /// How often records of expired `Idempotency-Key`s are deleted.
    pub idempotency_sweep_interval: Duration,
    /// How often escalations past their expiry are resolved to deny (so the receipt and the
    /// `escalation.resolved` event come within this of the expiry, read or not).
    pub escalation_sweep_interval: Duration,
    /// Which webhook URLs registration accepts: public addresses only by default (an IP-literal
    /// host in a private or otherwise non-public range is refused; see
    /// `allowly_webhooks::destination`).
    pub webhook_destinations: allowly_webhooks::Policy,
    /// C2SP witnesses every stored checkpoint is submitted to (`witnessing.rs`); their
    /// cosignatures are stored and served with the checkpoints. Used only with a
    /// `witness_quorum` above 0.
    pub witnesses: Vec<WitnessConfig>,
    /// With N > 0: a receipt is reported signed only once a checkpoint that covers it carries
    /// valid cosignatures by N distinct configured witnesses (until then it is pending, and
    /// its answer says why). 0: witnesses off — nothing is submitted, every answer is as
    /// without witnesses.
    pub witness_quorum: usize,
    /// Bound on one `add-checkpoint` exchange with a witness (connect, request, answer).
    pub witness_timeout: Duration,
    /// After a witness refused a checkpoint (a 4xx other than 409: it does not know the log or
    /// the key that signed it, or refuses the proof) or answered badly (a cosignature that does
    /// not verify, a 409 one retry did not resolve), the workspace is submitted to it again
    /// after this long — doubling at each such answer in a row, at most an hour — even with no
    /// new checkpoint, so a witness whose configuration is fixed catches up by itself.
    pub witness_refused_retry: Duration,
    /// Publish every stored checkpoint to this sink, one JSON line each, at least once (a file,
    /// the system logger or a git work tree: the `checkpoint_log` module; docs/witness.md,
    /// "Anchoring"); `None`: none.
    pub checkpoint_log: Option<crate::CheckpointSink>,
    /// `Some`: this process is one node of several over one shared database (issue 16,
    /// docs/scale-out.md): it sequences a workspace only while it holds the workspace's lease,
    /// and every write of the workspace carries the lease's epoch as a fence. `None` (the
    /// default, and the only mode for the embedded stores): one process owns the database.
    pub cluster: Option<ClusterConfig>,
}

/// This node's identity in a cluster (see [`EngineConfig::cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Unique per running process (`[A-Za-z0-9_-]`, 1..=128): a restarted process must not
    /// reuse its predecessor's id, or it would share the predecessor's lease epochs.
    pub node_id: String,
    /// Where the other nodes forward the requests of workspaces this node owns
    /// (`http://10.0.0.5:8080`).
    pub address: String,
    /// How long a lease lasts without renewal: how soon the workspaces of a dead node are taken
    /// over. Renewed every third of it.
    pub lease_ttl: Duration,
}

/// One witness (see [`EngineConfig::witnesses`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessConfig {
    /// Its `cosignature/v1` verifier key: name and Ed25519 public key. Every cosignature it
    /// returns is checked against it before it is stored.
    pub key: allowly_receipt::cosignature::CosignerKey,
    /// Its submission prefix (`http://host:port` or `https://…`, with a path if it has one):
    /// requests go to `<url>/add-checkpoint`.
    pub url: String,
}

impl EngineConfig {
    /// `idempotency_ttl` in milliseconds (records carry millisecond times).
    pub fn idempotency_ttl_ms(&self) -> u64 {
        self.idempotency_ttl.as_millis() as u64
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 4096,
            idle_timeout: Duration::from_secs(300),
            memory_high_water: 1 << 30,
            // Long against the gap between two requests of a workspace in use (at 1,000
            // checks/s over 10,000 workspaces that gap is 10 s on average): a 10 s bound
            // stopped and restarted ~900 busy actors a second in the scale run.
            pressure_min_idle: Duration::from_secs(60),
            commit_window: Duration::from_millis(2),
            sign_batch_max: 1024,
            sign_batch_delay: Duration::from_millis(10),
            // About a fifth of this 2-core machine at ~100 µs of CPU per round over both
            // processes; a handful of busy workspaces (each at most 1 / sign_batch_delay = 100
            // rounds a second) never reaches it.
            sign_rounds_per_second: 2000,
            max_cached_authorizations: 200_000,
            signer_timeout: Duration::from_secs(2),
            // A backlog the pipeline signs in well under a second at the knee; longer means
            // the signer is stalled, and the workspace's checks are waiting behind it.
            rotation_drain_timeout: Duration::from_secs(10),
            // Synced writes take milliseconds on a healthy volume (an HDD under compaction, tens
            // of ms); as long as the signer's timeout, the other half of failing closed.
            commit_timeout: Duration::from_secs(2),
            // At the knee (~32,000 checks/s, a few ms per synced write) a few hundred are
            // pending; this many is seconds of load at that rate, a few MiB of memory.
            max_pending_writes: 16_384,
            // An entry and an open connection each: a few MiB at most.
            max_long_polls: crate::watchers::MAX_WAITERS,
            long_poll_max: crate::watchers::MAX_WAIT,
            data_volume: None,
            min_free_disk: None,
            max_unsigned_age: Duration::from_secs(60),
            health_interval: Duration::from_millis(250),
            confirmation_ttl: Duration::from_secs(300),
            escalation_ttl: Duration::from_secs(24 * 3600),
            shutdown_timeout: Duration::from_secs(10),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_sweep_interval: Duration::from_secs(3600),
            escalation_sweep_interval: Duration::from_secs(1),
            webhook_destinations: allowly_webhooks::Policy::PublicOnly,
            witnesses: Vec::new(),
            witness_quorum: 0,
            witness_timeout: Duration::from_secs(5),
            witness_refused_retry: Duration::from_secs(60),
            checkpoint_log: None,
            cluster: None,
        }
    }
}

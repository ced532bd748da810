//! Witnessed checkpoints (issue 16 part 4; docs/witness.md): every checkpoint the signing
//! pipeline stores is submitted to the configured C2SP witnesses
//! (<https://c2sp.org/tlog-witness>), their `cosignature/v1` lines are checked and stored, and
//! the engine's read paths serve each checkpoint with the cosignatures stored for it and — with
//! a quorum — report a receipt signed only once a checkpoint covering it is cosigned by enough
//! witnesses.
//!
//! Off the signing path: the pipeline only hands the workspace over ([`Witnessing::stored`]:
//! a set insert and a wake-up per witness, never a wait). Each witness has a task of its own
//! with a bounded, coalescing queue of workspaces — only the workspace is queued, and the task
//! reads its newest stored checkpoint when it gets to it, so a workspace that signed a hundred
//! checkpoints meanwhile costs one submission — so a witness that is down or slow delays only
//! its own cosignatures. A request names as `old` the size that witness last cosigned for the
//! workspace (persisted, `Store::witness_head`, so a restart does not start again from 0) and
//! carries the RFC 9162 consistency proof from there. A `409` (the witness is at another size:
//! its state or ours is older than the other's answer) is retried once from the size it
//! names; a network failure, a timeout or a 5xx backs off that witness (doubling from 100 ms to
//! 5 s: a refused connection every 5 s costs nothing, and a witness back is used soon) with the
//! workspace kept at the head of its queue. Any other answer that is not the witness's valid
//! cosignature — another 4xx (a log or key the witness was not given), a 200 whose cosignature
//! does not verify (an answer corrupted on the way, a witness misconfigured), a 409 that one
//! retry did not resolve — is counted and logged, and the workspace submitted again after
//! `witness_refused_retry`, doubling while the answers stay bad (at most an hour), even if no
//! new checkpoint comes: in an idle workspace its receipts would otherwise stay pending for
//! good. Nothing a witness answers is stored unless it is a valid cosignature by that witness's
//! configured key on exactly the submitted checkpoint.
//!
//! At start each witness's task queues every workspace whose newest stored checkpoint that
//! witness has not cosigned (`Store::workspaces_behind_witness`): a checkpoint stored just
//! before a stop is submitted without waiting for the workspace's next one.
//!
//! Writes go through `Store::write` (one synced batch per cosignature: the line and the
//! witness's new head together), not through the committer: they belong to no check.
//!
//! The same hand-off feeds the checkpoint log (`checkpoint_log`), when one is configured.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allowly_receipt::cosignature::{self, add_cosignatures, CosignerKey};
use allowly_receipt::merkle;
use allowly_receipt::note;
use allowly_store::{Durability, Op, Store, StoreError, StoredNodes, WriteBatch};
use allowly_webhooks::client::{Answer, Outcome, Sender};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::checkpoint_log::CheckpointLog;
use crate::config::{EngineConfig, WitnessConfig};
use crate::metrics::Metrics;

/// Most workspaces waiting in one witness's queue. One more is not queued (counted as
/// `dropped`): its next checkpoint queues it again.
pub(crate) const MAX_QUEUED: usize = 100_000;
/// First and longest wait after a witness did not answer.
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// What submissions say they are (witness operators see it in their logs).
pub const USER_AGENT: &str = concat!("allowly-witness-submitter/", env!("CARGO_PKG_VERSION"));
/// Longest wait before a workspace a witness keeps refusing is submitted to it again.
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(3600);
/// Most stored cosignatures looked at to find a workspace's newest quorum-cosigned checkpoint,
/// per configured witness (each checkpoint has at most one line per witness), from the largest
/// size that `quorum` witnesses have each cosigned or passed (see `witnessed_size`).
const QUORUM_SCAN_PER_WITNESS: usize = 64;

/// The `outcome` label of `allowly_engine_witness_submissions_total`, a closed set:
/// `cosigned` (a valid cosignature stored), `old_size_mismatch` (a 409: retried once from the
/// witness's size), `bad_cosignature` (a 200 whose body is not a valid cosignature by the
/// witness's key on the submitted checkpoint: nothing stored, submitted again later),
/// `refused` (another 4xx: the witness does not know the log or its key, a proof it does not
/// accept; submitted again later), `unavailable` (no answer, a timeout, a 5xx: the witness is
/// backed off), `dropped` (its queue was full). Each submission counts once, so a workspace
/// submitted again after a bad answer counts again.
pub const SUBMISSION_OUTCOMES: [&str; 6] =
    ["cosigned", "old_size_mismatch", "bad_cosignature", "refused", "unavailable", "dropped"];

/// A workspace queue that holds each workspace once, at most [`MAX_QUEUED`] (also the
/// checkpoint log's).
#[derive(Debug, Default)]
pub(crate) struct Queue {
    order: VecDeque<String>,
    queued: HashSet<String>,
}

impl Queue {
    /// Queues `ws` (at the back, or at the front to retry it first); false if the queue is full.
    pub(crate) fn push(&mut self, ws: &str, front: bool) -> bool {
        if self.queued.contains(ws) {
            return true;
        }
        if self.queued.len() >= MAX_QUEUED {
            return false;
        }
        self.queued.insert(ws.to_owned());
        if front {
            self.order.push_front(ws.to_owned());
        } else {
            self.order.push_back(ws.to_owned());
        }
        true
    }

    pub(crate) fn pop(&mut self) -> Option<String> {
        let ws = self.order.pop_front()?;
        self.queued.remove(&ws);
        Some(ws)
    }
}

/// One witness: its configuration and its queue.
#[derive(Debug)]
struct Witness {
    cfg: WitnessConfig,
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Witness {
    fn label(&self) -> &str {
        self.cfg.key.name()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `ws` (at the back, or at the front to retry it first); false if the queue is full.
    fn push(&self, ws: &str, front: bool) -> bool {
        self.lock().push(ws, front)
    }

    fn pop(&self) -> Option<String> {
        self.lock().pop()
    }
}

/// The witnesses, their queues, and the quorum the read paths apply; and the checkpoint log,
/// fed by the same hand-off.
#[derive(Debug)]
pub(crate) struct Witnessing {
    witnesses: Vec<Arc<Witness>>,
    quorum: usize,
    log: Option<Arc<CheckpointLog>>,
}

impl Witnessing {
    /// From the engine's configuration; with a quorum of 0 there are no witnesses at all.
    pub fn new(cfg: &EngineConfig) -> Self {
        let on = cfg.witness_quorum > 0;
        let witnesses = cfg
            .witnesses
            .iter()
            .filter(|_| on)
            .map(|w| Arc::new(Witness { cfg: w.clone(), queue: Default::default(), wake: Notify::new() }))
            .collect();
        let log = cfg.checkpoint_log.clone().map(|sink| Arc::new(CheckpointLog::new(sink)));
        Self { witnesses, quorum: if on { cfg.witness_quorum } else { 0 }, log }
    }

    /// Whether witnesses are configured (quorum above 0).
    pub fn enabled(&self) -> bool {
        self.quorum > 0
    }

    /// The quorum (0: off).
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    fn keys(&self) -> impl Iterator<Item = &CosignerKey> {
        self.witnesses.iter().map(|w| &w.cfg.key)
    }

    /// The hand-off from the signing pipeline: a checkpoint of `ws` was stored. Queues `ws` for
    /// every witness and the checkpoint log, and returns at once.
    pub fn stored(&self, ws: &str, metrics: &Metrics) {
        if let Some(log) = &self.log {
            log.stored(ws);
        }
        for w in &self.witnesses {
            if w.push(ws, false) {
                w.wake.notify_one();
            } else {
                metrics.witness_submissions.with_label_values(&[w.label(), "dropped"]).inc();
            }
        }
    }

    /// `checkpoint` (the stored note of size `size`) with the stored cosignatures of the
    /// configured witnesses appended; `checkpoint` itself when witnesses are off. A stored line that
    /// does not join the note (it never should: each was checked before it was stored) is left
    /// out and logged rather than served.
    pub fn cosigned(&self, store: &dyn Store, ws: &str, size: u64, checkpoint: String) -> Result<String, StoreError> {
        if !self.enabled() {
            return Ok(checkpoint);
        }
        let mut out = checkpoint;
        for (witness, line) in store.cosignatures(ws, size)? {
            if !self.keys().any(|k| k.key().as_bytes() == &witness) {
                continue;
            }
            match add_cosignatures(&out, &line) {
                Ok(joined) => out = joined,
                Err(e) => {
                    tracing::error!(workspace = %ws, size, error = %e, "a stored cosignature does not join its checkpoint; left out")
                }
            }
        }
        Ok(out)
    }

    /// The size of the newest stored checkpoint of size `<= at_most` cosigned by at least
    /// `quorum` distinct configured witnesses, if any (among the most recent stored
    /// cosignatures below the `quorum`-th largest head: see [`QUORUM_SCAN_PER_WITNESS`]).
    /// `Some(at_most)` when witnesses are off.
    pub fn witnessed_size(&self, store: &dyn Store, ws: &str, at_most: u64) -> Result<Option<u64>, StoreError> {
        if !self.enabled() {
            return Ok(Some(at_most));
        }
        // No checkpoint larger than the `quorum`-th largest of the witnesses' heads (the largest
        // size each cosigned) can have `quorum` cosignatures: the scan starts there. Without
        // this, witnesses down for long while one kept cosigning alone pushed the last quorum
        // checkpoint out of the scan's window, and receipts reported signed turned pending.
        let mut heads = Vec::with_capacity(self.witnesses.len());
        for k in self.keys() {
            if let Some(head) = store.witness_head(ws, k.key().as_bytes())? {
                heads.push(head);
            }
        }
        heads.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&bound) = heads.get(self.quorum - 1) else { return Ok(None) };
        let at_most = at_most.min(bound);
        let limit = QUORUM_SCAN_PER_WITNESS * self.witnesses.len().max(1);
        let recent = store.recent_cosignatures(ws, at_most, limit)?;
        let mut current: Option<u64> = None;
        let mut by: Vec<[u8; 32]> = Vec::new();
        for (size, witness, _) in recent {
            if current != Some(size) {
                current = Some(size);
                by.clear();
            }
            // Quorums count distinct public keys of configured witnesses.
            if self.keys().any(|k| k.key().as_bytes() == &witness) && !by.contains(&witness) {
                by.push(witness);
                if by.len() >= self.quorum {
                    return Ok(Some(size));
                }
            }
        }
        Ok(None)
    }
}

/// Starts one task per witness, and the checkpoint log's. Each ends (within a second) once
/// `witnessing` is dropped with the engine.
pub(crate) fn start(
    witnessing: &Arc<Witnessing>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    timeout: Duration,
    refused_retry: Duration,
) -> Result<(), String> {
    if let Some(log) = &witnessing.log {
        crate::checkpoint_log::start(log.clone(), Arc::downgrade(witnessing), store.clone(), metrics.clone())?;
    }
    if !witnessing.enabled() {
        return Ok(());
    }
    // Witnesses are chosen by the operator, on whatever network they are: no address policy.
    let sender = Sender::new(timeout, allowly_webhooks::Policy::AllowPrivate)?.with_user_agent(USER_AGENT);
    for w in &witnessing.witnesses {
        for outcome in SUBMISSION_OUTCOMES {
            metrics.witness_submissions.with_label_values(&[w.label(), outcome]);
        }
        metrics.witness_cosigned_lag.with_label_values(&[w.label()]).set(0);
        metrics.witness_up.with_label_values(&[w.label()]).set(1);
        let task = Submitter {
            witness: w.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            sender: sender.clone(),
            lags: HashMap::new(),
            lag_total: 0,
            refused_retry,
            refused: HashMap::new(),
            refused_due: BTreeSet::new(),
        };
        tokio::spawn(task.run(Arc::downgrade(witnessing)));
    }
    Ok(())
}

/// How one submission ended.
#[derive(Debug)]
enum Sent {
    /// Done with this workspace (cosigned, or up to date).
    Done,
    /// The witness did not answer: back off, and try this workspace again first.
    Unavailable(String),
    /// The witness answered, but not with its valid cosignature of the checkpoint (a 4xx other
    /// than a 409 it resolved, a cosignature that does not verify, a 409 that one retry did not
    /// resolve): retrying at once would get the same answer, so this workspace is submitted
    /// again later (see [`Submitter::refused`]).
    Later,
}

/// One witness's task.
struct Submitter {
    witness: Arc<Witness>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    sender: Sender,
    /// Leaves between each workspace's newest submitted checkpoint and what this witness last
    /// cosigned, for those not caught up; `lag_total` is their sum (the lag gauge).
    lags: HashMap<String, u64>,
    lag_total: u64,
    /// First wait before a refused workspace is submitted again (`witness_refused_retry`).
    refused_retry: Duration,
    /// Workspaces this witness refused or answered badly ([`Sent::Later`]), each with its
    /// current wait: doubled at each such answer in a row (at most [`REFUSED_RETRY_MAX`]),
    /// forgotten once the witness cosigns. Without the retry, a witness refusing (a log or key it
    /// was not yet given, as after a key rotation) or whose answer was corrupted would see the
    /// workspace again only with its next checkpoint — never, in an idle one.
    refused: HashMap<String, Duration>,
    /// When each such workspace goes back into the queue, soonest first.
    refused_due: BTreeSet<(tokio::time::Instant, String)>,
}

impl Submitter {
    async fn run(mut self, alive: std::sync::Weak<Witnessing>) {
        self.sweep(&alive).await;
        let mut backoff = BACKOFF_START;
        loop {
            if alive.upgrade().is_none() {
                return;
            }
            self.requeue_refused();
            let Some(ws) = self.witness.pop() else {
                // Woken by the next hand-off, or at least once a second to notice the engine's
                // end, or when the next refused workspace is due.
                let now = tokio::time::Instant::now();
                let due = self.refused_due.first().map_or(Duration::MAX, |(at, _)| at.saturating_duration_since(now));
                let _ = tokio::time::timeout(due.min(Duration::from_secs(1)), self.witness.wake.notified()).await;
                continue;
            };
            match self.submit(&ws).await {
                Sent::Done => {
                    backoff = BACKOFF_START;
                    self.up(true);
                    self.refused.remove(&ws);
                }
                Sent::Later => {
                    backoff = BACKOFF_START;
                    self.up(true);
                    self.refuse(ws);
                }
                Sent::Unavailable(why) => {
                    self.count("unavailable");
                    if backoff == BACKOFF_START {
                        tracing::warn!(witness = self.witness.label(), error = %why, "witness unavailable; backing off");
                    }
                    self.up(false);
                    self.witness.push(&ws, true);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// At start: queues every workspace whose newest stored checkpoint this witness has not
    /// cosigned. Without it, a checkpoint stored just before a stop (its submission still
    /// queued, or backed off while the witness was away) would wait for the workspace's next
    /// checkpoint, and with a quorum its receipts would stay pending meanwhile — for good in
    /// a workspace that gets no more checks. A store that cannot be read is tried again after
    /// the backoff, as a witness that does not answer is.
    async fn sweep(&mut self, alive: &std::sync::Weak<Witnessing>) {
        let key = *self.witness.cfg.key.key().as_bytes();
        let mut backoff = BACKOFF_START;
        let behind = loop {
            if alive.upgrade().is_none() {
                return;
            }
            match self.blocking(move |s| s.workspaces_behind_witness(&key)).await {
                Ok(behind) => break behind,
                Err(e) => {
                    tracing::warn!(witness = self.witness.label(), error = %e, "listing the checkpoints this witness has not cosigned failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        let mut dropped = 0_usize;
        for ws in &behind {
            if !self.witness.push(ws, false) {
                dropped += 1;
                self.count("dropped");
            }
        }
        if !behind.is_empty() {
            tracing::info!(
                witness = self.witness.label(),
                workspaces = behind.len(),
                dropped,
                "submitting the checkpoints this witness has not cosigned yet"
            );
        }
    }

    /// Schedules the next submission of a workspace the witness refused or answered badly (see
    /// [`Submitter::refused`]).
    fn refuse(&mut self, ws: String) {
        let wait = match self.refused.get(&ws) {
            Some(w) => (*w * 2).min(REFUSED_RETRY_MAX),
            None if self.refused.len() >= MAX_QUEUED => {
                self.count("dropped");
                return;
            }
            None => self.refused_retry,
        };
        self.refused.insert(ws.clone(), wait);
        self.refused_due.insert((tokio::time::Instant::now() + wait, ws));
    }

    /// Puts the refused workspaces that are due back into the queue.
    fn requeue_refused(&mut self) {
        let now = tokio::time::Instant::now();
        while self.refused_due.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, ws)) = self.refused_due.pop_first() {
                if !self.witness.push(&ws, false) {
                    self.count("dropped");
                }
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics.witness_submissions.with_label_values(&[self.witness.label(), outcome]).inc();
    }

    fn up(&self, up: bool) {
        self.metrics.witness_up.with_label_values(&[self.witness.label()]).set(i64::from(up));
    }

    fn set_lag(&mut self, ws: &str, lag: u64) {
        let was = if lag == 0 { self.lags.remove(ws) } else { self.lags.insert(ws.to_owned(), lag) };
        self.lag_total = self.lag_total - was.unwrap_or(0) + lag;
        self.metrics
            .witness_cosigned_lag
            .with_label_values(&[self.witness.label()])
            .set(self.lag_total.min(i64::MAX as u64) as i64);
    }

    /// Runs `f` over the store off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        crate::services::blocking(move || Ok(f(&*store)?)).await.map_err(|e| e.to_string())
    }

    /// Submits the newest stored checkpoint of `ws` to the witness, unless it cosigned it.
    async fn submit(&mut self, ws: &str) -> Sent {
        let key = *self.witness.cfg.key.key().as_bytes();
        let w = ws.to_owned();
        let read = self.blocking(move |s| Ok((s.latest_checkpoint(&w)?, s.witness_head(&w, &key)?))).await;
        let (latest, stored_head) = match read {
            Ok(r) => r,
            Err(e) => {
                // The store, not the witness: try again after the backoff, as for an outage.
                return Sent::Unavailable(format!("reading the checkpoint of {ws}: {e}"));
            }
        };
        let Some((size, checkpoint)) = latest else { return Sent::Done };
        let mut old = stored_head.unwrap_or(0);
        self.set_lag(ws, size.saturating_sub(old));
        if old >= size {
            if old > size {
                tracing::error!(witness = self.witness.label(), workspace = %ws, witness_size = old, stored = size, "the witness cosigned a larger tree than the newest stored checkpoint: the store may have been restored from an older backup");
            }
            return Sent::Done;
        }
        // A 409 names the witness's size: retried once from there.
        for attempt in 0..2 {
            match self.add_checkpoint(ws, old, size, &checkpoint).await {
                Ok(Added::Cosigned(line)) => return self.store_cosignature(ws, size, line).await,
                Ok(Added::Conflict(theirs)) => {
                    self.count("old_size_mismatch");
                    match theirs {
                        // Below ours: retried from it. At ours: either it cosigned this very
                        // checkpoint (an answer we lost) or it saw another root — a fork.
                        // Resubmitting with `old` = size and no proof gets a fresh cosignature
                        // only in the first case.
                        Some(n) if n <= size && attempt == 0 => {
                            tracing::info!(witness = self.witness.label(), workspace = %ws, sent = old, witness_size = n, "the witness is at another size; retrying from it");
                            old = n;
                        }
                        // It moved again meanwhile (another submitter of this log).
                        Some(n) if n < size => {
                            tracing::info!(witness = self.witness.label(), workspace = %ws, sent = old, witness_size = n, "the witness is at yet another size; submitting it again later");
                            return Sent::Later;
                        }
                        Some(n) => {
                            // Submitted again later all the same: should the witness's state (or
                            // ours) have been wrong and be put right, it catches up by itself;
                            // a real fork is logged again at each try, further apart.
                            tracing::error!(witness = self.witness.label(), workspace = %ws, stored = size, witness_size = n, "the witness has cosigned a tree this log does not extend (a larger one, or another root); submitting it again later");
                            return Sent::Later;
                        }
                        None => {
                            tracing::warn!(witness = self.witness.label(), workspace = %ws, "the witness answered 409 without a tree size; submitting it again later");
                            return Sent::Later;
                        }
                    }
                }
                Ok(Added::Refused(status, body)) => {
                    self.count("refused");
                    tracing::warn!(witness = self.witness.label(), workspace = %ws, status, answer = %body, "the witness refused the checkpoint; submitting it again later");
                    return Sent::Later;
                }
                Ok(Added::BadCosignature(why)) => {
                    self.count("bad_cosignature");
                    tracing::error!(witness = self.witness.label(), workspace = %ws, size, error = %why, "the witness answered something that is not its valid cosignature of the checkpoint: not stored; submitting it again later");
                    return Sent::Later;
                }
                Err(why) => return Sent::Unavailable(why),
            }
        }
        Sent::Done
    }

    /// Stores a checked cosignature line and the witness's new head in one synced write.
    async fn store_cosignature(&mut self, ws: &str, size: u64, line: String) -> Sent {
        let witness = *self.witness.cfg.key.key().as_bytes();
        let ops = vec![
            Op::PutCosignature { workspace_id: ws.to_owned(), size, witness, line },
            Op::PutWitnessHead { workspace_id: ws.to_owned(), witness, size },
        ];
        if let Err(e) = self.blocking(move |s| s.write(WriteBatch::from(ops), Durability::Sync)).await {
            // The witness has it; ours is lost. The next submission gets a 409 and catches up.
            return Sent::Unavailable(format!("storing the cosignature of {ws} at {size}: {e}"));
        }
        self.count("cosigned");
        // A newer checkpoint may have been stored meanwhile: the queue has it if so.
        let newest = self.blocking({
            let ws = ws.to_owned();
            move |s| Ok(s.latest_checkpoint(&ws)?.map_or(0, |(n, _)| n))
        });
        let lag = newest.await.map_or(0, |n| n.saturating_sub(size));
        self.set_lag(ws, lag);
        Sent::Done
    }

    /// One `add-checkpoint` exchange: `old`, the consistency proof from `old` to `size`, the
    /// note. `Err` when the witness did not answer (or answered 5xx).
    async fn add_checkpoint(&self, ws: &str, old: u64, size: u64, checkpoint: &str) -> Result<Added, String> {
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            let w = ws.to_owned();
            self.blocking(move |s| {
                let nodes = StoredNodes::new(s, &w);
                merkle::consistency_proof(&nodes, old, size).map_err(|e| match nodes.take_error() {
                    Some(se) => se,
                    None => StoreError::Corrupt {
                        space: "nodes",
                        key: w.clone(),
                        reason: format!("consistency proof {old}..{size}: {e}"),
                    },
                })
            })
            .await?
        };
        let mut body = format!("old {old}\n");
        for h in &proof {
            body.push_str(&B64.encode(h));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(checkpoint);
        let url = format!("{}/add-checkpoint", self.witness.cfg.url.trim_end_matches('/'));
        let answer = match self.sender.exchange(&url, "text/plain", &[], Bytes::from(body)).await {
            Ok(a) => a,
            Err(Outcome::Failed { error, .. }) => return Err(error),
            Err(other) => return Err(format!("{other:?}")),
        };
        Ok(match answer {
            Answer { status: 200, body, .. } => match self.check_cosignature(checkpoint, &body) {
                Ok(line) => Added::Cosigned(line),
                Err(why) => Added::BadCosignature(why),
            },
            Answer { status: 409, body, .. } => Added::Conflict(
                std::str::from_utf8(&body).ok().and_then(|t| note::parse_tree_size(t.trim_end_matches('\n')).ok()),
            ),
            Answer { status, .. } if status >= 500 => return Err(format!("HTTP {status}")),
            Answer { status, body, .. } => {
                Added::Refused(status, String::from_utf8_lossy(&body).chars().take(200).collect::<String>())
            }
        })
    }

    /// The one signature line of `answer` that is a valid `cosignature/v1` by this witness's
    /// key on the signed note `checkpoint`; anything else is an error.
    fn check_cosignature(&self, checkpoint: &str, answer: &[u8]) -> Result<String, String> {
        let text = std::str::from_utf8(answer).map_err(|_| "the answer is not UTF-8".to_owned())?;
        let key = &self.witness.cfg.key;
        for line in text.split_inclusive('\n') {
            let Ok(joined) = add_cosignatures(checkpoint, line) else { continue };
            let Ok(signed) = note::parse_signed_note(&joined) else { continue };
            match cosignature::verify_cosignatures(&signed, std::slice::from_ref(key)) {
                Ok(valid) if !valid.is_empty() => return Ok(line.to_owned()),
                Ok(_) => continue,
                Err(e) => return Err(format!("a line naming the witness's key does not verify: {e}")),
            }
        }
        Err(format!("no cosignature by {} in the answer", key.name()))
    }
}

/// What `add-checkpoint` answered.
#[derive(Debug)]
enum Added {
    /// 200 with a valid cosignature line.
    Cosigned(String),
    /// 409 and the witness's size (if readable).
    Conflict(Option<u64>),
    /// 200 with anything but a valid cosignature by the witness.
    BadCosignature(String),
    /// Another 4xx.
    Refused(u16, String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use allowly_store::MemStore;

    use super::*;

    fn key(seed: u8) -> CosignerKey {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        CosignerKey::new(&format!("w{seed}.test"), sk.verifying_key()).unwrap()
    }

    fn witnessing(keys: &[CosignerKey], quorum: usize) -> Witnessing {
        let witnesses =
            keys.iter().map(|k| WitnessConfig { key: k.clone(), url: "http://127.0.0.1:1".into() }).collect();
        Witnessing::new(&EngineConfig { witnesses, witness_quorum: quorum, ..EngineConfig::default() })
    }

    /// A cosignature as the witness task stores it: the line and the witness's new head.
    fn cosig(size: u64, k: &CosignerKey) -> [Op; 2] {
        let witness = *k.key().as_bytes();
        [
            Op::PutCosignature {
                workspace_id: "ws".into(), size, witness, line: format!("— {} x{size}\n", k.name())
            },
            Op::PutWitnessHead { workspace_id: "ws".into(), witness, size },
        ]
    }

    #[test]
    fn a_queue_holds_each_workspace_once_and_is_bounded() {
        let w = witnessing(&[key(1)], 1);
        let q = &w.witnesses[0];
        assert!(q.push("a", false) && q.push("b", false) && q.push("a", false) && q.push("c", true));
        assert_eq!([q.pop(), q.pop(), q.pop(), q.pop()], [Some("c".into()), Some("a".into()), Some("b".into()), None]);
        for i in 0..MAX_QUEUED {
            assert!(q.push(&format!("ws{i}"), false));
        }
        assert!(!q.push("one_more", false), "the bound holds");
        assert!(q.push("ws7", false), "a workspace already queued is not refused");
    }

    #[test]
    fn a_quorum_of_zero_is_off() {
        let w = witnessing(&[key(1)], 0);
        assert!(!w.enabled() && w.witnesses.is_empty());
        let store = MemStore::default();
        assert_eq!(w.witnessed_size(&store, "ws", 42).unwrap(), Some(42));
        assert_eq!(w.cosigned(&store, "ws", 42, "note\n".into()).unwrap(), "note\n");
    }

    #[test]
    fn the_witnessed_size_is_the_newest_checkpoint_with_the_quorum_of_configured_keys() {
        let (a, b, stranger) = (key(1), key(2), key(3));
        let w = witnessing(&[a.clone(), b.clone()], 2);
        let store = MemStore::default();
        assert_eq!(w.witnessed_size(&store, "ws", u64::MAX).unwrap(), None);
        let ops = [cosig(5, &a), cosig(5, &b), cosig(7, &a), cosig(7, &stranger), cosig(9, &b)];
        store.write(WriteBatch::from(ops.concat()), Durability::Sync).unwrap();
        // 9 and 7 have one configured cosigner each (a stranger does not count): 5.
        assert_eq!(w.witnessed_size(&store, "ws", u64::MAX).unwrap(), Some(5));
        assert_eq!(w.witnessed_size(&store, "ws", 4).unwrap(), None);
        let one = witnessing(&[a.clone(), b.clone()], 1);
        assert_eq!(one.witnessed_size(&store, "ws", u64::MAX).unwrap(), Some(9));
        assert_eq!(one.witnessed_size(&store, "ws", 8).unwrap(), Some(7));
    }

    /// Two of three witnesses down for long while the third cosigns every checkpoint alone:
    /// the last checkpoint with the quorum stays found, however many lone cosignatures follow.
    #[test]
    fn a_quorum_checkpoint_stays_witnessed_behind_any_number_of_lone_cosignatures() {
        let (a, b, c) = (key(1), key(2), key(3));
        let w = witnessing(&[a.clone(), b.clone(), c.clone()], 2);
        let store = MemStore::default();
        let mut ops = [cosig(10, &a), cosig(10, &b)].concat();
        let lone = 3 * QUORUM_SCAN_PER_WITNESS as u64 + 10;
        for size in 11..=10 + lone {
            ops.extend(cosig(size, &a));
        }
        store.write(WriteBatch::from(ops), Durability::Sync).unwrap();
        assert_eq!(w.witnessed_size(&store, "ws", u64::MAX).unwrap(), Some(10));
        // One more witness back, cosigning the newest: that is the quorum now.
        store.write(WriteBatch::from(cosig(10 + lone, &c).to_vec()), Durability::Sync).unwrap();
        assert_eq!(w.witnessed_size(&store, "ws", u64::MAX).unwrap(), Some(10 + lone));
    }
}

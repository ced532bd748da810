//! The signing pipeline: one task per workspace with unsigned receipts. It sends the committed,
//! unsigned leaves to the signer in batches (as many as are ready, up to `sign_batch_max`,
//! waiting at most `sign_batch_delay` for more), checks the signed checkpoint against its own
//! Merkle frontier, and stores checkpoint, Merkle nodes and "signed" marks in one write — with
//! the `receipt.signed` webhook event, when an endpoint subscribes, so the event exists iff the
//! signature does.
//!
//! What to sign is the range `[signed size, committed size)` of the workspace's log. The signer
//! is sent the receipt *bodies*, not leaf hashes: it hashes them itself and refuses anything
//! that is not the next receipts of the workspace, so it never signs bytes the service merely
//! named. In steady state the bodies come from memory: each commit hands the receipts it made
//! durable to the task ([`Fresh`]), so signing does not read back what was just written (that
//! read-back was about 8 % of the server's CPU per check). Whenever memory does not hold
//! exactly the next leaves — a task just started, a round failed, the buffer hit its bound —
//! the task reads the range from the store's `leaves` index instead (`Store::receipts_in_range`,
//! a seek whose cost does not grow with the log's history, each body checked against its
//! stored leaf hash). So recovery stays by construction: receipts left unsigned by a crash are
//! read from the store when their workspace's task starts (at engine start for every workspace
//! whose log extends past its newest checkpoint). If the signer has
//! more leaves than the store knows as signed (an answer lost to a crash or timeout), its
//! `SizeMismatch` is resolved by fetching its latest checkpoint and checking that its root is
//! the root of the *stored* leaves; any other disagreement (and a signer that refuses the
//! stored receipts, `ReceiptRefused`) is a divergence: signing stops for the workspace, it is
//! logged, counted and marked (`Services::diverged`: the workspace refuses new receipts with
//! `workspace_log_diverged` until [`resync`] finds the logs agree again), and nothing is
//! overwritten.
//!
//! Rounds reach the signer through [`SignBatcher`](crate::sign_batcher::SignBatcher): the rounds
//! of many workspaces that are ready at once travel in one request, each still its own append
//! and its own checkpoint, answered and checked here exactly as before.
//!
//! A signer that answers `Busy` (its queue for the workspace is over its cap) is back pressure:
//! the round waits (the task's backoff) and is tried again, counted in
//! `allowly_engine_signer_busy_total`. It is never taken for an outage (`signer_up` stays 1,
//! nothing fails closed) nor for a divergence; only a signer that does not answer is down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allowly_receipt::merkle::{self, Frontier, Hash};
use allowly_receipt::note;
use allowly_receipt::types::log_origin;
use allowly_signer_proto::client::ClientError;
use allowly_signer_proto::{ErrorCode, MAX_BATCH_BODY_BYTES};
use allowly_store::{Durability, Op, StoredNodes, WriteBatch, FIRST_STORED_LEVEL};
use dashmap::DashMap;
use tokio::sync::watch;

use crate::error::{EngineError, Result};
use crate::health::{Divergence, Fault, SigningFailure, SIGNING_TIMED_OUT};
use crate::model::Resynced;
use crate::receipts::{key_records, verifier};
use crate::services::Services;
use crate::sign_batcher::{Expect, Signed};

mod rotation;
mod takeover;
mod token;
pub(crate) use rotation::{count as count_rotation, rotate};
pub(crate) use takeover::key_record_op;

/// Running pipeline tasks by workspace; each gets the workspace's committed log size.
#[derive(Debug, Default)]
pub(crate) struct Pipelines {
    map: DashMap<String, Slot>,
    next_id: AtomicU64,
    /// Body bytes held by every workspace's [`Fresh`] together (bounded by [`FRESH_MAX_BYTES`]).
    fresh_bytes: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Slot {
    /// Tells a retiring task whether the registry entry is still its own.
    id: u64,
    tx: watch::Sender<u64>,
    progress: Arc<Progress>,
    fresh: Arc<Mutex<Fresh>>,
}

/// Most body bytes held in memory for signing, over all workspaces. Past it commits are not
/// buffered and their tasks read them from the store: with the signer down, thousands of
/// workspaces keep committing, and what waits must not grow the heap without bound.
const FRESH_MAX_BYTES: usize = 64 << 20;

/// One committed receipt handed to its signing task: log index, leaf hash, canonical body.
pub(crate) type Committed = (u64, Hash, Vec<u8>);

/// The receipts a workspace's commits made durable that its task has not sent yet, oldest
/// first and contiguous (a commit whose first index does not follow the last one held starts
/// the buffer over). Written only by commit completions, which run in commit order on the
/// committer thread, after the write is durable: so whatever it holds is exactly what the store
/// holds at those indices, and taking from it instead of reading the store changes nothing.
#[derive(Debug)]
pub(crate) struct Fresh {
    entries: VecDeque<Committed>,
    bytes: usize,
    /// Most entries held (two signing batches): beyond that the task is behind anyway and
    /// reads from the store.
    max_entries: usize,
    total: Arc<AtomicUsize>,
}

impl Fresh {
    fn new(max_entries: usize, total: Arc<AtomicUsize>) -> Self {
        Self { entries: VecDeque::new(), bytes: 0, max_entries, total }
    }

    fn push(&mut self, receipts: Vec<Committed>) {
        let Some(first) = receipts.first().map(|r| r.0) else { return };
        if self.entries.back().is_some_and(|last| last.0 + 1 != first) {
            self.clear();
        }
        if receipts.windows(2).any(|w| w[1].0 != w[0].0 + 1) {
            // Never expected (a group's receipts take consecutive indices); the store is the
            // answer then.
            self.clear();
            return;
        }
        let add: usize = receipts.iter().map(|r| r.2.len()).sum();
        if self.entries.len() + receipts.len() > self.max_entries
            || self.total.load(Ordering::Relaxed) + add > FRESH_MAX_BYTES
        {
            // Not buffered: the task finds a gap and reads these from the store. Later commits
            // then start the buffer over (their first index does not follow).
            return;
        }
        self.bytes += add;
        self.total.fetch_add(add, Ordering::Relaxed);
        self.entries.extend(receipts);
    }

    /// Removes and returns the entries `[from, to)`, at most `max` of them and at most
    /// `max_bytes` of bodies (at least one), if the buffer holds `from`; entries below `from`
    /// (already signed) are dropped. `None`: the buffer does not start at `from`, read the store.
    fn take(&mut self, from: u64, to: u64, max: usize, max_bytes: usize) -> Option<(Vec<Hash>, Vec<Vec<u8>>)> {
        while self.entries.front().is_some_and(|e| e.0 < from) {
            self.pop();
        }
        if self.entries.front().is_none_or(|e| e.0 != from) {
            return None;
        }
        let (mut leaves, mut bodies, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        while let Some(e) = self.entries.front() {
            if e.0 >= to || leaves.len() >= max || (bytes + e.2.len() > max_bytes && !bodies.is_empty()) {
                break;
            }
            bytes += e.2.len();
            let (_, leaf, body) = self.pop()?;
            leaves.push(leaf);
            bodies.push(body);
        }
        Some((leaves, bodies))
    }

    fn pop(&mut self) -> Option<Committed> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.2.len();
        self.total.fetch_sub(e.2.len(), Ordering::Relaxed);
        Some(e)
    }

    fn clear(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.entries.clear();
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Slot {
    /// Raises the committed size to `committed`, waking the task only when it has something to
    /// do now: it may be idle (everything it saw was signed), or the unsigned leaves fill a
    /// batch of `batch_max`. Otherwise the task is collecting commits until its round's slot,
    /// reads the raised size then, and a wake-up per commit would only re-arm its timer: with
    /// thousands of workspaces each commit is one check, and those wake-ups (a hop from the
    /// committer thread onto a tokio worker each) were most of the pipeline's share of a check.
    ///
    /// No wake-up is lost: the task publishes its signed size (`Progress::signed`) before it
    /// reads the committed size and waits, and the size is read here under the channel's write
    /// lock, so a commit that finds `old > signed` comes after a read that saw `old`, i.e. the
    /// task is collecting, not idle.
    fn raise(&self, committed: u64, batch_max: usize) {
        let mut raised = false;
        self.tx.send_if_modified(|v| {
            let old = *v;
            raised = raise(v, committed);
            let signed = self.progress.signed.load(Ordering::Acquire);
            raised && (signed == NOT_LOADED || old <= signed || committed - signed >= batch_max as u64)
        });
        if raised {
            self.progress.committed(committed, Instant::now());
        }
    }
}

/// The signing backlog over every workspace with a signing task (see [`Pipelines::backlog`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Backlog {
    /// Committed receipts not yet signed.
    pub unsigned: u64,
    /// When the oldest of them was committed (at the latest).
    pub oldest: Option<Instant>,
}

impl Pipelines {
    /// Tells workspace `ws`'s task that leaves below `committed` are durable, starting the
    /// task if none runs.
    pub fn notify(self: &Arc<Self>, shared: &Arc<Services>, ws: &str, committed: u64) {
        self.committed(shared, ws, committed, Vec::new());
    }

    /// [`Pipelines::notify`] from a commit completion: `receipts` are the receipts that commit
    /// made durable (ascending, ending below `committed`), kept for the task to send without
    /// reading them back.
    pub fn committed(self: &Arc<Self>, shared: &Arc<Services>, ws: &str, committed: u64, receipts: Vec<Committed>) {
        if let Some(slot) = self.map.get(ws) {
            if !slot.tx.is_closed() {
                slot.fresh.lock().map(|mut f| f.push(receipts)).ok();
                slot.raise(committed, shared.cfg.sign_batch_max);
                return;
            }
        }
        match self.map.entry(ws.to_owned()) {
            dashmap::Entry::Occupied(e) if !e.get().tx.is_closed() => {
                e.get().fresh.lock().map(|mut f| f.push(receipts)).ok();
                e.get().raise(committed, shared.cfg.sign_batch_max)
            }
            entry => {
                let (tx, rx) = watch::channel(committed);
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let progress = Arc::new(Progress::default());
                progress.committed(committed, Instant::now());
                let mut fresh = Fresh::new(2 * shared.cfg.sign_batch_max.max(1), self.fresh_bytes.clone());
                fresh.push(receipts);
                let fresh = Arc::new(Mutex::new(fresh));
                entry.insert(Slot { id, tx, progress: progress.clone(), fresh: fresh.clone() });
                tokio::spawn(run(shared.clone(), self.clone(), ws.to_owned(), id, rx, progress, fresh));
            }
        }
    }

    /// Whether `ws` has a signing task (in a cluster, it keeps the workspace's lease).
    pub fn is_running(&self, ws: &str) -> bool {
        self.map.contains_key(ws)
    }

    /// Wakes every task (at shutdown: one waiting for its paced slot sends at once).
    pub fn wake_all(&self) {
        for slot in self.map.iter() {
            slot.tx.send_modify(|_| ());
        }
    }

    /// How many committed receipts wait for a signature, and since when the oldest does. A
    /// workspace whose signing is stalled (signer down) keeps its task and its marks, so its age
    /// keeps growing. A diverged workspace (`is_diverged`) counts in `unsigned` but not in
    /// `oldest`: it is already fenced and shown on its own, and its age must not fail every
    /// other workspace closed with `signing_backlog`.
    pub fn backlog(&self, is_diverged: impl Fn(&str) -> bool) -> Backlog {
        let mut b = Backlog::default();
        for slot in self.map.iter() {
            let committed = *slot.tx.borrow();
            let signed = slot.progress.signed.load(Ordering::Acquire);
            if signed != NOT_LOADED {
                b.unsigned += committed.saturating_sub(signed);
            }
            // The divergence lookup (a map probe by name) only for an age that would count:
            // this runs over every workspace each health tick.
            if let Some(t) = slot.progress.oldest() {
                if b.oldest.is_none_or(|o| t < o) && !is_diverged(slot.key()) {
                    b.oldest = Some(t);
                }
            }
        }
        b
    }
}

/// Longest pause after the signer answered `Busy` before the workspace's round is tried again:
/// far under the 1 s of an outage's backoff, since a busy signer drains its queue in
/// milliseconds and every pause adds to the signing lag.
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(100);

/// `Progress::signed` before the task has read the signed size from the store.
const NOT_LOADED: u64 = u64::MAX;
/// Commits within this of the last mark raise it instead of adding one (the age is then
/// overstated by at most this much).
const MARK_EVERY: Duration = Duration::from_millis(50);
/// Most marks kept per workspace (over three minutes of commits at one per `MARK_EVERY`); past
/// it the last mark is raised, so a stall only overstates the age of the newest receipts.
const MAX_MARKS: usize = 4096;

/// A workspace's signing progress, for the backlog gauges: its signed size and marks
/// `(size, when)` — every leaf below `size` was committed by `when`.
#[derive(Debug)]
struct Progress {
    signed: AtomicU64,
    marks: Mutex<VecDeque<(u64, Instant)>>,
    /// Woken whenever `signed` moves, the task ends, or it stops on a divergence (a key
    /// rotation waits on it for the log to be signed up to its index).
    moved: tokio::sync::Notify,
    /// Set (before `moved` is woken) when the task has ended: a waiter looks for its successor.
    ended: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            signed: AtomicU64::new(NOT_LOADED),
            marks: Mutex::default(),
            moved: tokio::sync::Notify::new(),
            ended: AtomicBool::new(false),
        }
    }
}

/// Marks its task's [`Progress`] ended when the task returns (or panics), whichever way.
struct EndsProgress(Arc<Progress>);

impl Drop for EndsProgress {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
        self.0.moved.notify_waiters();
    }
}

impl Progress {
    /// Leaves below `size` are committed (as of `now`).
    fn committed(&self, size: u64, now: Instant) {
        let Ok(mut marks) = self.marks.lock() else { return };
        let full = marks.len() >= MAX_MARKS;
        match marks.back_mut() {
            Some(last) if size <= last.0 => {}
            Some(last) if full || now.saturating_duration_since(last.1) < MARK_EVERY => last.0 = size,
            _ => marks.push_back((size, now)),
        }
    }

    /// Leaves below `size` are signed.
    fn signed(&self, size: u64) {
        self.signed.store(size, Ordering::Release);
        self.moved.notify_waiters();
        if let Ok(mut marks) = self.marks.lock() {
            while marks.front().is_some_and(|&(s, _)| s <= size) {
                marks.pop_front();
            }
        }
    }

    /// When the oldest unsigned leaf was committed, at the latest.
    fn oldest(&self) -> Option<Instant> {
        let signed = match self.signed.load(Ordering::Acquire) {
            NOT_LOADED => 0,
            s => s,
        };
        self.marks.lock().ok()?.iter().find(|&&(s, _)| s > signed).map(|&(_, t)| t)
    }
}

fn raise(v: &mut u64, to: u64) -> bool {
    if to > *v {
        *v = to;
        true
    } else {
        false
    }
}

/// Why a signing round did not complete.
enum Stop {
    /// Try again after a backoff (signer down, store error).
    Retry(EngineError),
    /// The logs disagree: stop signing this workspace.
    Diverged(String),
    /// In a cluster: another node took the workspace over (a write was fenced, or this node
    /// holds no lease for it): stop; the new owner signs.
    Moved,
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        if crate::ownership::is_fenced(&e) {
            Stop::Moved
        } else {
            Stop::Retry(e)
        }
    }
}

impl From<allowly_store::StoreError> for Stop {
    fn from(e: allowly_store::StoreError) -> Self {
        Stop::from(EngineError::Store(e))
    }
}

struct Signing {
    ws: String,
    /// Frontier of the tree the newest stored checkpoint signs.
    frontier: Frontier,
    /// Where its checkpoints belong and the keys they must be signed by (shared with each
    /// round's request, whose checkpoints are opened together: see `sign_batcher`).
    expect: Expect,
    /// When the oldest receipt now waiting was first seen unsigned.
    waiting_since: Option<Instant>,
    /// Committed receipts handed over by commits (see [`Fresh`]).
    fresh: Arc<Mutex<Fresh>>,
}

async fn run(
    shared: Arc<Services>,
    pipes: Arc<Pipelines>,
    ws: String,
    id: u64,
    mut rx: watch::Receiver<u64>,
    progress: Arc<Progress>,
    fresh: Arc<Mutex<Fresh>>,
) {
    let _ends = EndsProgress(progress.clone());
    let mut backoff = Duration::from_millis(20);
    let mut st = loop {
        match Signing::load(&shared, &ws, fresh.clone()).await {
            // Its signed size is published at the top of the loop below.
            Ok(st) => break st,
            Err(e) => {
                tracing::error!(workspace = %ws, error = %e, "cannot load signing state; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    backoff = Duration::from_millis(20);
    let mut token = token::TokenWait::default();
    // In a cluster this node's signer is made ready for the workspace before its first round
    // (`takeover.rs`); on one node its signer has always had it.
    let mut signer_ready = shared.ownership.is_none();
    loop {
        // The one place the signed size is published (after the load, a round, a take-over, a
        // resync of the frontier): before the committed size is read, since `Slot::raise` wakes
        // an idle task by it.
        if progress.signed.load(Ordering::Acquire) != st.frontier.size() {
            progress.signed(st.frontier.size());
        }
        let committed = *rx.borrow_and_update();
        if st.frontier.size() >= committed {
            st.waiting_since = None;
            if shared.shutting_down.load(Ordering::Acquire) {
                break;
            }
            match tokio::time::timeout(shared.cfg.idle_timeout, rx.changed()).await {
                Ok(Ok(())) => continue,
                // The registry dropped us (engine gone).
                Ok(Err(_)) => return,
                Err(_) => {
                    retire(&shared, &pipes, &ws, id, &rx, st.frontier.size());
                    return;
                }
            }
        }
        let since = *st.waiting_since.get_or_insert_with(Instant::now);
        // Let the commits of the next `sign_batch_delay` join this signature, unless the batch
        // fills first: a signature and the signer's fsyncs cost the same for one leaf as for a
        // thousand. Not on any answer's path (answers leave at commit); bounds the signing lag.
        // With many workspaces signing at once, later: the round waits for its slot of the
        // instance's signing rate (see `pace.rs`), collecting commits meanwhile.
        let ready = since + shared.cfg.sign_batch_delay;
        let slot = match shared.shutting_down.load(Ordering::Acquire) {
            true => ready,
            false => {
                let place = shared.sign_pacer.reserve(ready);
                if place.over_rate {
                    shared.metrics.sign_rounds_over_rate.inc();
                }
                place.at
            }
        };
        if slot > ready {
            shared.metrics.sign_rounds_paced.inc();
        }
        let mut deadline = tokio::time::Instant::from_std(slot);
        let mut committed = committed;
        while ((committed - st.frontier.size()) as usize) < shared.cfg.sign_batch_max {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => committed = *rx.borrow_and_update(),
                // The deadline passed, or the registry dropped us (the next loop sees that).
                _ => break,
            }
            // Shutting down (`Pipelines::wake_all`): what is committed is signed after the batch
            // delay, not at its slot.
            if shared.shutting_down.load(Ordering::Acquire) {
                deadline = deadline.min(tokio::time::Instant::from_std(ready));
            }
        }
        let ready = if signer_ready { Ok(()) } else { st.take_over(&shared).await };
        signer_ready = ready.is_ok();
        let outcome = match ready {
            Ok(()) => st.round(&shared, committed).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                backoff = Duration::from_millis(20);
                token.signed(&shared, &ws);
            }
            // Its own pause, count and mark: a token is not back in milliseconds (`token.rs`).
            Err(Stop::Retry(EngineError::SignerTokenUnavailable(why))) => token.failed(&shared, &ws, &why).await,
            Err(Stop::Retry(e)) => {
                let mut pause = backoff;
                match e {
                    // Said once, by the health task.
                    EngineError::SignerUnavailable(_) => {}
                    // Back pressure, not a failure: the signer answers, so it is asked again
                    // soon (the backoff still grows, so a long busy spell costs few requests).
                    EngineError::Overloaded => {
                        tracing::debug!(workspace = %ws, "the signer is busy with this workspace; waiting");
                        pause = pause.min(BUSY_PAUSE_MAX);
                    }
                    e => tracing::warn!(workspace = %ws, error = %e, "signing round failed; retrying"),
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(Stop::Moved) => {
                tracing::info!(workspace = %ws, "another node owns the workspace now; it signs its receipts");
                pipes.map.remove_if(&ws, |_, slot| slot.id == id);
                return;
            }
            Err(Stop::Diverged(why)) => {
                shared.diverged.mark(&ws, Divergence::Forked, &why, &shared.metrics);
                // A rotation waiting for this log sees the divergence now, not at its bound.
                progress.moved.notify_waiters();
                // Stay registered (so no new task starts) and sign nothing more, until `resync`
                // removes this task's slot (its sender drops) or the engine goes away.
                while rx.changed().await.is_ok() {}
                return;
            }
        }
    }
}

/// One synced write of the workspace's state outside a signing round (a rotation's, a key
/// record), fenced in a cluster.
async fn write_fenced(shared: &Services, ws: &str, mut ops: Vec<Op>) -> Result<()> {
    ops.extend(shared.fence(ws)?);
    let store = shared.store.clone();
    crate::services::blocking(move || Ok(store.write(WriteBatch::from(ops), Durability::Sync)?)).await
}

/// The recovery path of a diverged workspace: re-syncs the two logs where one is a prefix of
/// the other, and refuses where they fork.
///
/// * The signer is **ahead** (an answer lost, then something else failed): its checkpoint is
///   adopted if it signs exactly the stored leaves of its size (as after a lost answer).
/// * The signer is **behind** (its state was restored from an old backup, or lost): if its
///   newest checkpoint signs exactly the stored leaves of its size, the stored receipts from
///   there to the stored signed size are appended to it again (bodies, checked by the signer
///   like any append), and every checkpoint it returns must have the root of the stored tree of
///   that size — the same roots it signed before, so nothing forks.
/// * Same size: the roots must be equal.
///
/// If the logs agree after that, the mark is cleared, the parked signing task is replaced by a
/// fresh one that reloads from the store, and the workspace takes requests again. If they fork
/// (a root that is not the stored leaves' root), it stays diverged and the error says why
/// (`Conflict`): a forked log cannot be repaired in place. A signer outage is
/// `SignerUnavailable`.
pub(crate) async fn resync(shared: &Arc<Services>, pipes: &Arc<Pipelines>, ws: &str) -> Result<Resynced> {
    let owned = ws.to_owned();
    let (stored_size, signed_size) = shared
        .read_in_background(move |store| {
            let stored = store.log_meta(&owned)?.unwrap_or_default().next_index;
            let signed = store.latest_checkpoint(&owned)?.map_or(0, |(size, _)| size);
            Ok((stored, signed))
        })
        .await?;
    if !shared.diverged.contains(ws) {
        return Ok(Resynced { was_diverged: false, signed_size, stored_size });
    }
    let mut st = Signing::load(shared, ws, Arc::new(Mutex::new(Fresh::new(0, Arc::default())))).await?;
    let latest = match tokio::time::timeout(shared.cfg.signer_timeout, shared.signer.latest_checkpoint(ws)).await {
        Err(_) => return Err(EngineError::SignerUnavailable(SIGNING_TIMED_OUT.into())),
        Ok(Err(e)) => return Err(EngineError::from_signer(e)),
        Ok(Ok(c)) => c,
    };
    let ours = st.frontier.size();
    let checked = match latest.checkpoint {
        None if latest.size == 0 && ours == 0 => Ok(()),
        Some(note) if latest.size == ours => match st.open_refreshed(shared, &note).await {
            Ok(cp) if cp.size == ours && cp.root == st.frontier.root() => Ok(()),
            Ok(_) => Err(Stop::Diverged(format!("the signer's checkpoint of size {ours} has another root"))),
            Err(e) => Err(e),
        },
        checkpoint if latest.size < ours => st.refeed(shared, latest.size, checkpoint).await,
        _ => st.reconcile(shared, Some(latest.size)).await,
    };
    match checked {
        Ok(()) => {}
        Err(Stop::Retry(e)) => return Err(e),
        Err(Stop::Diverged(why)) => return Err(EngineError::Conflict(format!("the logs still disagree: {why}"))),
        Err(Stop::Moved) => return Err(crate::ownership::moved(ws)),
    }
    let signed_size = st.frontier.size();
    shared.diverged.clear(ws, &shared.metrics);
    // Dropping the parked task's slot ends it; a fresh task reloads from the store.
    pipes.map.remove(ws);
    if stored_size > signed_size {
        pipes.notify(shared, ws, stored_size);
    }
    tracing::info!(workspace = %ws, signed_size, stored_size, "workspace log resynced with the signer's; it takes requests again");
    Ok(Resynced { was_diverged: true, signed_size, stored_size })
}

/// Removes an idle task from the registry; if work arrived meanwhile a successor is started.
/// Removal takes the map's write lock, so every notifier that found this
/// task has finished sending before the last look at the committed size.
fn retire(shared: &Arc<Services>, pipes: &Arc<Pipelines>, ws: &str, id: u64, rx: &watch::Receiver<u64>, signed: u64) {
    pipes.map.remove_if(ws, |_, slot| slot.id == id);
    let committed = *rx.borrow();
    if committed > signed {
        // A successor takes over (it reloads from the store); this one ends.
        pipes.notify(shared, ws, committed);
    }
}

impl Signing {
    /// The task's state as the store has it (its newest checkpoint's frontier, the
    /// workspace's keys), read off the async workers: a task starts at every commit after an
    /// idle spell, and its reads are many (the frontier's nodes).
    async fn load(shared: &Services, ws: &str, fresh: Arc<Mutex<Fresh>>) -> Result<Self> {
        let ws = ws.to_owned();
        shared.read_in_background(move |store| Self::load_from(store, &ws, fresh)).await
    }

    fn load_from(store: &dyn allowly_store::Store, ws: &str, fresh: Arc<Mutex<Fresh>>) -> Result<Self> {
        let signed = store.latest_checkpoint(ws)?.map(|(size, _)| size).unwrap_or(0);
        let nodes = StoredNodes::new(store, ws);
        let frontier = Frontier::from_source(&nodes, signed).map_err(|e| match nodes.take_error() {
            Some(se) => EngineError::Store(se),
            None => EngineError::Internal(format!("Merkle nodes of {ws} up to {signed}: {e}")),
        })?;
        let record = store.workspace(ws)?.ok_or(EngineError::NotFound { what: "workspace" })?;
        let keys = record.signing_keys.iter().map(|k| verifier(ws, k)).collect::<Result<Vec<_>>>()?;
        let expect = Expect { origin: log_origin(ws).into(), keys: keys.into() };
        Ok(Self { ws: ws.to_owned(), frontier, expect, waiting_since: None, fresh })
    }

    /// One exchange with the signer: the next batch of committed, unsigned leaves, or a
    /// reconciliation.
    async fn round(&mut self, shared: &Services, committed: u64) -> Result<(), Stop> {
        let from = self.frontier.size();
        let max = shared.cfg.sign_batch_max.clamp(1, allowly_signer_proto::MAX_BATCH_LEAVES);
        let held = self.fresh.lock().ok().and_then(|mut f| f.take(from, committed, max, MAX_BATCH_BODY_BYTES));
        let source = if held.is_some() { "memory" } else { "store" };
        let (leaves, bodies) = match held {
            Some(batch) => batch,
            None => read_bodies(shared, &self.ws, from, committed, max).await?,
        };
        shared.metrics.sign_batch_source.with_label_values(&[source]).inc();
        if leaves.is_empty() {
            return Ok(());
        }
        let call = shared.sign_batcher.append(self.ws.clone(), from, bodies, self.expect.clone());
        match tokio::time::timeout(shared.cfg.signer_timeout, call).await {
            Err(_) => Err(self.outage(shared, SigningFailure::TimedOut)),
            Ok(Ok(Signed { out, opened })) => {
                shared.health.set_up(&shared.metrics);
                shared.faults.signer_stored(&shared.metrics);
                shared.diverged.clear_if(&self.ws, Divergence::KeyStoreNotOpen, &shared.metrics);
                self.store_signed(shared, &leaves, out.new_size, out.checkpoint, opened).await
            }
            Ok(Err(ClientError::Remote(reply))) if reply.code == ErrorCode::SizeMismatch => {
                shared.health.set_up(&shared.metrics);
                self.reconcile(shared, reply.current_size).await
            }
            Ok(Err(ClientError::Remote(reply))) if reply.code == ErrorCode::ReceiptRefused => {
                shared.health.set_up(&shared.metrics);
                Err(Stop::Diverged(format!("the signer refuses the stored receipts: {}", reply.message)))
            }
            Ok(Err(e @ ClientError::Busy)) => {
                // It answered: up, and asking this workspace to wait.
                shared.health.set_up(&shared.metrics);
                Err(signer_failed(shared, e))
            }
            // The client's own deadline (its slot wait included) is a timeout like ours.
            Ok(Err(ClientError::Timeout(_))) => Err(self.outage(shared, SigningFailure::TimedOut)),
            Ok(Err(e)) => {
                let e = EngineError::from_signer(e);
                if let EngineError::SignerUnavailable(why) = &e {
                    return Err(self.outage(shared, SigningFailure::Failed(why)));
                }
                if let EngineError::SignerTokenUnavailable(_) = &e {
                    // Counted, and the workspace marked, by the task (`token.rs`); the signer's
                    // health follows its pings, which a lost token fails.
                    return Err(Stop::Retry(e));
                }
                if let EngineError::WorkspaceKeyStoreNotOpen(why) = &e {
                    // The signer answered, for this workspace only: it alone refuses new
                    // receipts (none of them could be signed), and the rounds go on, so the
                    // first that succeeds after the operator's fix lifts the refusal.
                    shared.health.set_up(&shared.metrics);
                    shared.diverged.mark(&self.ws, Divergence::KeyStoreNotOpen, why, &shared.metrics);
                    shared.metrics.signer_errors.with_label_values(&["error"]).inc();
                    return Err(Stop::Retry(e));
                }
                if e.fault() == Some(Fault::SignerStorageFailed) {
                    shared.metrics.signer_errors.with_label_values(&["storage"]).inc();
                    shared.faults.signer_storage_failed(&e.to_string(), &shared.metrics);
                    return Err(Stop::Retry(e));
                }
                shared.metrics.signer_errors.with_label_values(&["error"]).inc();
                Err(Stop::Retry(e))
            }
        }
    }

    /// `call` to the signer within `signer_timeout`: its answer, or — it did not answer in time
    /// — the outage, recorded (the caller matches the answers it expects).
    async fn within<T>(
        &self,
        shared: &Services,
        call: impl std::future::Future<Output = std::result::Result<T, ClientError>>,
    ) -> Result<std::result::Result<T, ClientError>, Stop> {
        tokio::time::timeout(shared.cfg.signer_timeout, call)
            .await
            .map_err(|_| self.outage(shared, SigningFailure::TimedOut))
    }

    fn outage(&self, shared: &Services, failure: SigningFailure<'_>) -> Stop {
        shared.metrics.signer_errors.with_label_values(&["unavailable"]).inc();
        shared.health.set_down(&shared.metrics, failure);
        Stop::Retry(EngineError::SignerUnavailable(failure.detail().to_owned()))
    }

    /// The signer has a different size than the newest stored checkpoint. Larger: an answer
    /// was lost; adopt its checkpoint only if it signs exactly the stored leaves. Smaller: the
    /// signer lost state — never paper over that.
    async fn reconcile(&mut self, shared: &Services, current: Option<u64>) -> Result<(), Stop> {
        let ours = self.frontier.size();
        let latest = self
            .within(shared, shared.signer.latest_checkpoint(&self.ws))
            .await?
            .map_err(|e| signer_failed(shared, e))?;
        let Some(note) = latest.checkpoint else {
            return Err(Stop::Diverged(format!("signer has no checkpoint but refused an append at {ours}")));
        };
        if latest.size < ours || current.is_some_and(|c| c < ours) {
            return Err(Stop::Diverged(format!("signer log has {} leaves, {ours} are stored as signed", latest.size)));
        }
        let ws = self.ws.clone();
        let meta = shared.read_in_background(move |store| Ok(store.log_meta(&ws)?)).await?.unwrap_or_default();
        if latest.size > meta.next_index {
            return Err(Stop::Diverged(format!(
                "signer log has {} leaves, only {} are stored",
                latest.size, meta.next_index
            )));
        }
        tracing::info!(workspace = %self.ws, stored = ours, signer = latest.size, "adopting the signer's checkpoint after a lost answer");
        let mut leaves = Vec::new();
        let mut at = ours;
        while at < latest.size {
            let found = read_leaves(shared, &self.ws, at, latest.size, allowly_signer_proto::MAX_BATCH_LEAVES).await?;
            let chunk = contiguous_leaves(&self.ws, at, found.into_iter())?;
            if chunk.is_empty() {
                return Err(Stop::Diverged(format!("stored leaf {at} is missing")));
            }
            at += chunk.len() as u64;
            leaves.extend(chunk);
        }
        self.store_signed(shared, &leaves, latest.size, note, None).await
    }

    /// Checks `checkpoint` against our own frontier extended by `leaves`, then stores it with
    /// the new Merkle nodes — one write. Storing the checkpoint is what makes the receipts
    /// below its size signed: no receipt is rewritten. `opened`: the checkpoint already opened
    /// with this task's keys and origin (by the sign batcher, together with others).
    async fn store_signed(
        &mut self,
        shared: &Services,
        leaves: &[Hash],
        new_size: u64,
        checkpoint: String,
        opened: Option<note::Checkpoint>,
    ) -> Result<(), Stop> {
        let from = self.frontier.size();
        let mut next = self.frontier.clone();
        let appended = next.append_nodes(leaves).map_err(|e| Stop::Retry(EngineError::Internal(e.to_string())))?;
        // Perhaps signed by a key we have not seen yet (a rotation): refreshed once, then insist.
        let cp = match opened {
            Some(cp) => cp,
            None => self.open_refreshed(shared, &checkpoint).await?,
        };
        if cp.size != new_size || cp.size != next.size() || cp.root != appended.root {
            return Err(Stop::Diverged(format!(
                "signer checkpoint (size {}) does not sign the stored leaves {from}..{}",
                cp.size,
                next.size()
            )));
        }
        load_endpoints(shared, &self.ws).await?;
        let (mut ops, wake) = signed_ops(shared, &self.ws, appended, from, checkpoint)?;
        ops.extend(shared.fence(&self.ws)?);
        // Through the committer: the checkpoint rides along with the next synced write of the
        // actors' groups instead of being a store write of its own (a blocking-pool hop and a
        // second writer queueing on RocksDB's write path per signing round: 4.3 % of the
        // server's samples at 14,000 checks/s). Durable as soon as that write returns.
        if let Err(e) = shared.committer.write(&self.ws, WriteBatch::from(ops)).await {
            return Err(Stop::from(e));
        }
        if wake {
            shared.webhook_wake.notify_one();
        }
        // To the witnesses' queues (no wait: see `witnessing`).
        shared.witnessing.stored(&self.ws, &shared.metrics);
        self.frontier = next;
        let m = &shared.metrics;
        m.sign_batch.observe(leaves.len() as f64);
        m.receipts_signed.inc_by(leaves.len() as u64);
        if let Some(t) = self.waiting_since.take() {
            m.signing_lag_seconds.observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Brings a signer that is behind (`from` < our signed size) forward again by appending the
    /// stored receipts `[from, signed size)`, after checking that its checkpoint at `from` has
    /// the stored tree's root; every answer must have the stored tree's root of its size too.
    async fn refeed(&mut self, shared: &Services, from: u64, checkpoint: Option<String>) -> Result<(), Stop> {
        let ours = self.frontier.size();
        let ws = self.ws.clone();
        let stored_root = |size: u64| stored_root(shared, &ws, size);
        match checkpoint {
            None if from == 0 => {}
            None => return Err(Stop::Diverged(format!("signer has {from} leaves but no checkpoint"))),
            Some(note) => {
                let cp = self.open_refreshed(shared, &note).await?;
                if cp.size != from || cp.root != stored_root(from).await? {
                    return Err(Stop::Diverged(format!(
                        "the signer's checkpoint of size {from} does not sign the stored leaves"
                    )));
                }
            }
        }
        tracing::warn!(workspace = %self.ws, signer = from, stored = ours, "the signer is behind the stored log: appending the stored receipts to it again");
        let mut at = from;
        while at < ours {
            let (_, bodies) = read_bodies(shared, &self.ws, at, ours, allowly_signer_proto::MAX_BATCH_LEAVES).await?;
            if bodies.is_empty() {
                return Err(Stop::Diverged(format!("stored receipt {at} is missing")));
            }
            let call = shared.signer.append_batch(self.ws.clone(), at, bodies);
            let out = match tokio::time::timeout(shared.cfg.signer_timeout, call).await {
                Err(_) => return Err(self.outage(shared, SigningFailure::TimedOut)),
                Ok(Err(ClientError::Remote(reply))) => {
                    return Err(Stop::Diverged(format!("the signer refused the stored receipts from {at}: {reply}")))
                }
                // `Busy` (back pressure) included: tried again, never a divergence.
                Ok(Err(e)) => return Err(signer_failed(shared, e)),
                Ok(Ok(out)) => out,
            };
            let cp = self.open_refreshed(shared, &out.checkpoint).await?;
            if cp.size != out.new_size || cp.root != stored_root(cp.size).await? {
                return Err(Stop::Diverged(format!(
                    "the signer's new checkpoint of size {} does not sign the stored leaves",
                    cp.size
                )));
            }
            at = out.new_size;
        }
        Ok(())
    }

    /// Opens `checkpoint` with the known keys, refreshing them once if that fails (a rotation).
    async fn open_refreshed(&mut self, shared: &Services, checkpoint: &str) -> Result<note::Checkpoint, Stop> {
        if let Ok(cp) = self.open(checkpoint) {
            return Ok(cp);
        }
        self.refresh_keys(shared).await?;
        self.open(checkpoint).map_err(|e| Stop::Diverged(format!("checkpoint does not verify: {e}")))
    }

    fn open(&self, checkpoint: &str) -> allowly_receipt::Result<note::Checkpoint> {
        note::open_checkpoint(checkpoint, &self.expect.origin, &self.expect.keys).map(|(cp, _)| cp)
    }

    async fn refresh_keys(&mut self, shared: &Services) -> Result<(), Stop> {
        let keys = key_records(
            &self.within(shared, shared.signer.list_keys(&self.ws)).await?.map_err(|e| signer_failed(shared, e))?,
        );
        self.expect.keys = keys.iter().map(|k| verifier(&self.ws, k)).collect::<Result<Vec<_>>>()?.into();
        let ws = self.ws.clone();
        let fence = shared.fence(&ws)?;
        shared
            .read_in_background(move |store| {
                let Some(mut record) = store.workspace(&ws)? else { return Ok(()) };
                if record.signing_keys != keys {
                    record.signing_keys = keys;
                    let ops: Vec<Op> = std::iter::once(Op::PutWorkspace(record)).chain(fence).collect();
                    store.write(WriteBatch::from(ops), Durability::Sync)?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}

/// The ops that store a checkpoint of `appended.new_size` leaves (the leaves from `from` on
/// newly signed): the new Merkle nodes, the checkpoint, and the `receipt.signed` event in the
/// same write as the signature it announces. Also whether the event needs the worker woken.
fn signed_ops(
    shared: &Services,
    ws: &str,
    appended: merkle::Appended,
    from: u64,
    checkpoint: String,
) -> Result<(Vec<Op>, bool), Stop> {
    let events = signed_event(shared, ws, from, appended.new_size, &checkpoint)?;
    let wake = !events.is_empty();
    let mut ops = vec![
        // Level 0 is the leaf hashes, already stored in the receipts, and the levels up to
        // `FIRST_STORED_LEVEL` are hashed from them when a proof needs one (`StoredNodes`):
        // seven of every eight nodes, a key per receipt less to insert, flush and compact.
        Op::PutNodes {
            workspace_id: ws.to_owned(),
            nodes: appended.new_nodes.into_iter().filter(|&(level, _, _)| level >= FIRST_STORED_LEVEL).collect(),
        },
        Op::PutCheckpoint { workspace_id: ws.to_owned(), size: appended.new_size, note: checkpoint },
    ];
    ops.extend(events);
    Ok((ops, wake))
}

/// A signer call that failed, to be tried again: `Busy` (back pressure) is counted as such and
/// becomes [`EngineError::Overloaded`]; see [`EngineError::from_signer`] for the rest.
fn signer_failed(shared: &Services, e: ClientError) -> Stop {
    if matches!(e, ClientError::Busy) {
        shared.metrics.signer_busy.inc();
    }
    Stop::Retry(EngineError::from_signer(e))
}

/// The ops enqueueing a `receipt.signed` event (leaves `[from, size)` are now signed by
/// `checkpoint`) for every endpoint of `ws` that wants it. Its id is derived from `ws` and
/// `size`, so a signature stored again after a lost write is announced with the same
/// `webhook-id`.
fn signed_event(shared: &Services, ws: &str, from: u64, size: u64, checkpoint: &str) -> Result<Vec<Op>, Stop> {
    use allowly_webhooks::model::{enqueue, signed_event_id, Event, EventType};
    let endpoints = shared.endpoints.get(&*shared.store, ws)?;
    if !endpoints.iter().any(|e| e.wants(EventType::ReceiptSigned)) {
        return Ok(Vec::new());
    }
    let now = crate::clock::now_ms();
    let data = serde_json::json!({
        "workspace_id": ws,
        "from_log_index": from,
        "tree_size": size,
        "checkpoint": checkpoint,
    });
    let event =
        Event::new(signed_event_id(ws, size), EventType::ReceiptSigned, now, data).map_err(EngineError::from)?;
    Ok(enqueue(ws, &endpoints, &event, now).map_err(EngineError::from)?)
}

/// The committed receipts from `from` on (at most `max`, below `to`, and at most
/// `MAX_BATCH_BODY_BYTES` of bodies together): their leaf hashes and bodies, read off the async
/// workers. Their indices must be exactly `from, from+1, …`.
async fn read_bodies(
    shared: &Services,
    ws: &str,
    from: u64,
    to: u64,
    max: usize,
) -> Result<(Vec<Hash>, Vec<Vec<u8>>), Stop> {
    let owned = ws.to_owned();
    let records = shared.read_in_background(move |store| Ok(store.receipts_in_range(&owned, from, to, max)?)).await?;
    let mut bytes = 0usize;
    let mut leaves = Vec::with_capacity(records.len());
    let mut bodies = Vec::with_capacity(records.len());
    for r in records {
        bytes += r.body.len();
        if bytes > MAX_BATCH_BODY_BYTES && !bodies.is_empty() {
            break; // the rest goes in the next batch
        }
        leaves.push((r.log_index, r.leaf));
        bodies.push(r.body);
    }
    let leaves = contiguous_leaves(ws, from, leaves.into_iter())?;
    Ok((leaves, bodies))
}

/// Up to `max` stored `(index, leaf)` pairs in `[from, to)`, read off the async workers.
async fn read_leaves(shared: &Services, ws: &str, from: u64, to: u64, max: usize) -> Result<Vec<(u64, Hash)>, Stop> {
    let ws = ws.to_owned();
    Ok(shared.read_in_background(move |store| Ok(store.leaf_hashes(&ws, from, to, max)?)).await?)
}

/// The root of `ws`'s stored tree of `size` leaves, read off the async workers.
async fn stored_root(shared: &Services, ws: &str, size: u64) -> Result<Hash, Stop> {
    let ws = ws.to_owned();
    let root = shared.read_in_background(move |store| {
        let nodes = StoredNodes::new(store, &ws);
        merkle::root_from(&nodes, size).map_err(|e| match nodes.take_error() {
            Some(se) => EngineError::Store(se),
            None => EngineError::Internal(format!("stored tree of {ws} at {size}: {e}")),
        })
    });
    Ok(root.await?)
}

/// Loads `ws`'s webhook endpoints into the shared cache off the async workers, if they are not
/// there yet: the `receipt.signed` event of a round is routed by them ([`signed_event`]), and
/// on a cache miss that read would otherwise run on the async worker.
async fn load_endpoints(shared: &Services, ws: &str) -> Result<(), Stop> {
    if shared.endpoints.is_loaded(ws) {
        return Ok(());
    }
    let owned = ws.to_owned();
    let list = shared.read_in_background(move |store| crate::endpoints::load(store, &owned)).await?;
    shared.endpoints.loaded(ws, list);
    Ok(())
}

/// The leaf hashes of `items` if they are exactly the indices `from, from+1, …` (committed
/// leaves have no gaps; anything else is a corrupt store).
fn contiguous_leaves(ws: &str, from: u64, items: impl Iterator<Item = (u64, Hash)>) -> Result<Vec<Hash>, Stop> {
    let mut out = Vec::new();
    for (i, (index, leaf)) in items.enumerate() {
        if index != from + i as u64 {
            return Err(Stop::Diverged(format!(
                "{ws}: unsigned receipts are not contiguous from {from} (found index {index} at position {i})"
            )));
        }
        out.push(leaf);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unsigned_leaf_is_dated_by_the_first_mark_above_the_signed_size() {
        let p = Progress::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(p.oldest(), None);
        p.committed(3, at(0));
        p.committed(5, at(10)); // within MARK_EVERY: raises the mark, dated t0
        p.committed(9, at(100));
        p.committed(12, at(200));
        assert_eq!(p.oldest(), Some(at(0)), "nothing signed (or loaded) yet");
        p.signed(5);
        assert_eq!(p.oldest(), Some(at(100)), "leaf 5 was committed by the mark (9, 100 ms)");
        p.signed(10);
        assert_eq!(p.oldest(), Some(at(200)));
        // A stalled workspace: no new signature, so the same mark keeps dating the backlog.
        assert_eq!(p.oldest(), Some(at(200)));
        p.signed(12);
        assert_eq!(p.oldest(), None);
        // Bounded: past MAX_MARKS the last mark is raised instead.
        for i in 0..(MAX_MARKS as u64 + 10) {
            p.committed(13 + i, at(300 + 100 * i));
        }
        assert_eq!(p.marks.lock().map(|m| m.len()).unwrap_or_default(), MAX_MARKS);
        assert_eq!(p.oldest(), Some(at(300)));
    }

    fn committed(from: u64, n: u64) -> Vec<Committed> {
        (from..from + n).map(|i| (i, [i as u8; 32], vec![b'x'; 10])).collect()
    }

    /// The buffer hands out exactly the next leaves or nothing: any gap sends the task to the
    /// store, and the bytes it holds are returned to the instance-wide budget.
    #[test]
    fn fresh_receipts_are_taken_only_from_the_signed_size_and_only_contiguous() {
        let total = Arc::new(AtomicUsize::new(0));
        let mut f = Fresh::new(8, total.clone());
        f.push(committed(5, 3));
        assert_eq!(total.load(Ordering::Relaxed), 30);
        assert!(f.take(4, 100, 10, 1 << 20).is_none(), "leaf 4 is not held: read the store");
        let (leaves, bodies) = f.take(5, 7, 10, 1 << 20).expect("held");
        assert_eq!((leaves, bodies.len()), (vec![[5; 32], [6; 32]], 2), "stops below `to`");
        f.push(committed(8, 2));
        let (leaves, _) = f.take(7, 100, 2, 1 << 20).expect("held");
        assert_eq!(leaves, vec![[7; 32], [8; 32]], "at most `max`");
        let (leaves, _) = f.take(9, 100, 10, 1).expect("at least one even over the byte bound");
        assert_eq!(leaves, vec![[9; 32]]);
        // A commit that does not follow starts over; one that would pass the bound is dropped.
        f.push(committed(20, 2));
        f.push(committed(30, 1));
        assert!(f.take(20, 100, 10, 1 << 20).is_none());
        f.push(committed(31, 8));
        assert_eq!(f.entries.len(), 1, "over max_entries: not buffered");
        // Already signed entries are dropped on the next take.
        assert!(f.take(32, 100, 10, 1 << 20).is_none());
        assert_eq!(total.load(Ordering::Relaxed), 0);
        f.push(committed(40, 3));
        drop(f);
        assert_eq!(total.load(Ordering::Relaxed), 0, "dropped with its task");
    }

    /// A diverged workspace is fenced on its own: its stalled backlog is counted but does not
    /// date the instance's oldest unsigned receipt (which would fail every workspace closed).
    #[test]
    fn a_diverged_workspace_does_not_date_the_instance_backlog() {
        let p = Pipelines::default();
        let t0 = Instant::now();
        for (ws, committed, when) in [("ws_old", 7, t0), ("ws_new", 3, t0 + Duration::from_secs(5))] {
            let progress = Arc::new(Progress::default());
            progress.committed(committed, when);
            progress.signed(0);
            let (tx, _rx) = watch::channel(committed);
            let fresh = Arc::new(Mutex::new(Fresh::new(0, Arc::default())));
            p.map.insert(ws.into(), Slot { id: 0, tx, progress, fresh });
        }
        let all = p.backlog(|_| false);
        assert_eq!((all.unsigned, all.oldest), (10, Some(t0)));
        let fenced = p.backlog(|ws| ws == "ws_old");
        assert_eq!((fenced.unsigned, fenced.oldest), (10, Some(t0 + Duration::from_secs(5))));
        assert_eq!(p.backlog(|_| true).oldest, None);
    }
}

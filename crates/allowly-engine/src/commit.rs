//! The committer: one thread that makes the staged batches of every workspace actor durable,
//! merging all that are waiting into one synced store write.
//!
//! Why one thread for the whole instance: an fsync costs the same for one receipt as for a
//! thousand, so it must be shared by every request that is waiting for one, whichever workspace
//! it belongs to. With one committer per actor, load spread over thousands of workspaces paid
//! nearly one fsync per request. Why pipelined: an actor hands its group over and goes on
//! deciding the next one while this thread writes; each answer still leaves only after the
//! write holding its own receipt returned `Ok` (the completion runs here, after the write).
//!
//! A slow volume: each write is timed, and one that took longer than `slow_after` (half of
//! `commit_timeout`) raises [`Fault::StorageSlow`]; the next one that does not clears it. A
//! write that never returns cannot report itself: [`Committer::running_for`] lets the health
//! task see it and raise the fault while it runs. Requests waiting for a slow write are
//! answered by their own deadline (`Engine::ask`), not here: this thread is in the write.
//!
//! Order: submissions are taken in FIFO order and a merged write is applied in order, so a
//! workspace's group `k + 1` (decided on top of group `k`) is never durable before `k`. If a
//! write fails, every group in it fails, and so does every later group of the same workspaces
//! that was decided on top of a failed one: those carry the same `epoch` (the actor takes a new
//! epoch when it reloads its state after learning of the failure), and an epoch that failed is
//! refused here without being written.
//!
//! The commit window: a synced write costs this machine about 60 µs of CPU, most of it in the
//! kernel (the WAL's pages, its inode, a cache flush: three virtio requests), whatever it
//! carries. Under load a write therefore starts no sooner than `window` after the previous one
//! started, so that the requests arriving meanwhile share it: at 28,000 checks/s a 2 ms window
//! took the server's CPU per check from 43 to 39 µs (docs/performance.md). "Under load" means
//! the recent arrival rate would bring at least [`WINDOW_REQUESTS`] requests within one window;
//! below that, or after a write that carried a single request, every write starts at once, so
//! a lightly loaded service answers as fast as without a window (a wait at 4,000 checks/s
//! doubled the median latency to save CPU the machine had to spare). The wait is taken in
//! slices of [`SLICE`] and ends at the first slice that brought nothing: a few clients each waiting for their answer before asking again (a
//! closed loop) are all in the queue after one slice, and waiting longer would only slow them
//! down. A request waits at most `window` longer than it would have.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allowly_store::{Durability, Store, StoreError, WriteBatch};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::error::{EngineError, Result};
use crate::fault::Fault;
use crate::health::Faults;
use crate::metrics::Metrics;

/// Most actor groups merged into one write (bounds the write's size and its latency).
const MAX_MERGED: usize = 1024;
/// Submissions that may wait for the committer; actors wait (back pressure) beyond it.
const QUEUE: usize = 4096;
/// The commit window is used only while the recent arrival rate would bring at least this many
/// requests within one window (module docs).
const WINDOW_REQUESTS: f64 = 16.0;
/// The commit window is waited for in slices of this (see the module docs).
const SLICE: Duration = Duration::from_micros(250);
/// Weight of the newest write in the arrival-rate estimate (an exponential average over the
/// last several writes: follows a burst within a few milliseconds, ignores one odd write).
const RATE_WEIGHT: f64 = 0.25;

/// What runs once a group's write is known to be durable (`Ok`) or failed (`Err`).
pub(crate) type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// One group waiting to be made durable: an actor's flush, or a signing round's checkpoint.
pub(crate) struct Submission {
    pub ws: String,
    /// The actor's state generation the group was decided on (see the module docs); `None`
    /// for a signing round's write (derived data, not sequenced by the actor: it is neither
    /// refused after an actor's failed commit nor marks the workspace failed; the signing task
    /// retries it on its own).
    pub epoch: Option<u64>,
    pub batch: WriteBatch,
    pub requests: usize,
    pub done: Completion,
}

/// The committer's handle: submit groups. Dropping it closes the queue and waits for the
/// thread to finish what was queued and let go of the store (so a store is never closed by a
/// thread that outlives its engine, e.g. while the process exits).
#[derive(Debug)]
pub(crate) struct Committer {
    tx: Option<mpsc::Sender<Submission>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// When the write now running started (`now_ms`), 0 while none runs.
    running_since: Arc<AtomicU64>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            // The last reference to the engine can be dropped by a completion running on the
            // committer thread itself: it cannot wait for itself (it returns right after).
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Epochs are unique across actors and restarts of an actor, so a successor never inherits a
/// failed predecessor's refusal.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// The error of a request decided on top of a group whose commit failed with `cause` (it is
/// never written): the same device fault when it was one (a 503 with its code: retry once it
/// clears), else a store error.
pub(crate) fn after_failed_commit(cause: Option<&StoreError>) -> EngineError {
    match cause {
        Some(e) if crate::fault::Fault::of_store_error(e).is_some() || matches!(e, StoreError::Fenced { .. }) => {
            EngineError::Store(e.clone())
        }
        _ => EngineError::Store(StoreError::Engine("an earlier commit of this workspace failed; retry".into())),
    }
}

/// A fresh epoch for an actor that (re)loads its state from the store.
pub(crate) fn new_epoch() -> u64 {
    NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
}

impl Committer {
    /// Starts the committer thread over `store`. Completions run on it inside `rt`'s context
    /// (they may start tasks).
    /// A write that fails because the device is full or failing raises its fault in `faults`
    /// at once, before its requests are answered; one that takes longer than `slow_after`
    /// raises [`Fault::StorageSlow`], and one that does not clears it. `window`: the commit window (module docs).
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Metrics,
        faults: Arc<Faults>,
        slow_after: Duration,
        window: Duration,
        rt: tokio::runtime::Handle,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let running_since = Arc::new(AtomicU64::new(0));
        let since = running_since.clone();
        let thread = std::thread::Builder::new().name("allowly-commit".into()).spawn(move || {
            let _rt = rt.enter();
            let timing = Timing { since, slow_after };
            run(&*store, &metrics, &faults, &timing, window, rx);
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread), running_since })
    }

    /// How long the write now running has been running (`None` while none runs).
    pub fn running_for(&self) -> Option<Duration> {
        match self.running_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }

    /// Queues `batch` as a group of its own and waits until it is durable (or failed): for
    /// writes that are not an actor's, which then share the next synced write instead of
    /// paying a store write of their own.
    pub async fn write(&self, ws: &str, batch: WriteBatch) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: Completion = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.submit(Submission { ws: ws.to_owned(), epoch: None, batch, requests: 0, done }).await;
        rx.await.map_err(|_| EngineError::Internal("the committer dropped a write".into()))?
    }

    /// Queues a group; waits only while the queue is full. Fails (running `done` with the
    /// error) only when the committer is gone.
    pub async fn submit(&self, s: Submission) {
        let Some(tx) = &self.tx else {
            return (s.done)(Err(EngineError::Internal("the committer has stopped".into())));
        };
        if let Err(mpsc::error::SendError(s)) = tx.send(s).await {
            (s.done)(Err(EngineError::Internal("the committer has stopped".into())));
        }
    }
}

/// The committer thread's side of [`Committer::running_for`], and the bound it raises
/// [`Fault::StorageSlow`] at.
struct Timing {
    since: Arc<AtomicU64>,
    slow_after: Duration,
}

impl Timing {
    /// Runs one synced write, published as running while it does, and raises or clears
    /// [`Fault::StorageSlow`] by how long it took.
    fn write<T>(&self, m: &Metrics, faults: &Faults, write: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        // 0 means "none running"; a clock at 0 ms is the epoch, never now.
        self.since.store(now_ms().max(1), Ordering::Release);
        let out = write();
        self.since.store(0, Ordering::Release);
        let took = t.elapsed();
        m.commit_seconds.observe(took.as_secs_f64());
        if took > self.slow_after {
            let detail = format!(
                "a synced store write took {:.2} s, more than {:.2} s (half of --commit-timeout-ms)",
                took.as_secs_f64(),
                self.slow_after.as_secs_f64()
            );
            faults.raise(Fault::StorageSlow, detail, m);
        } else if faults.is_active(Fault::StorageSlow) {
            faults.clear(Fault::StorageSlow, m);
        }
        out
    }
}

/// Moves what is queued into `subs`, up to [`MAX_MERGED`]; returns how many it took.
fn take_queued(rx: &mut mpsc::Receiver<Submission>, subs: &mut Vec<Submission>) -> usize {
    let before = subs.len();
    while subs.len() < MAX_MERGED {
        match rx.try_recv() {
            Ok(s) => subs.push(s),
            Err(_) => break,
        }
    }
    subs.len() - before
}

fn run(
    store: &dyn Store,
    m: &Metrics,
    faults: &Faults,
    timing: &Timing,
    window: Duration,
    mut rx: mpsc::Receiver<Submission>,
) {
    // Workspaces whose last write failed, with the epoch that failed and why.
    let mut failed: HashMap<String, (u64, StoreError)> = HashMap::new();
    let mut subs: Vec<Submission> = Vec::new();
    // When the last write started, and requests per second arriving lately.
    let mut last_start: Option<Instant> = None;
    let mut rate = 0.0_f64;
    // Requests in the last write: one alone is no sign that anyone else is coming (a single
    // client asking again after each answer), so it never waits.
    let mut last_requests = 0_usize;
    while let Some(first) = rx.blocking_recv() {
        subs.push(first);
        if let Some(prev) = last_start {
            if last_requests > 1 && rate * window.as_secs_f64() >= WINDOW_REQUESTS {
                let due = prev + window;
                let mut waited = false;
                while subs.len() < MAX_MERGED {
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    std::thread::sleep(SLICE.min(due - now));
                    waited = true;
                    if take_queued(&mut rx, &mut subs) == 0 {
                        break;
                    }
                }
                if waited {
                    m.commit_window_waits.inc();
                }
            }
        }
        take_queued(&mut rx, &mut subs);
        let mut live = Vec::with_capacity(subs.len());
        for s in subs.drain(..) {
            let Some(epoch) = s.epoch else {
                live.push(s);
                continue;
            };
            match failed.get(&s.ws) {
                Some((bad, cause)) if epoch <= *bad => (s.done)(Err(after_failed_commit(Some(cause)))),
                Some(_) => {
                    failed.remove(&s.ws);
                    live.push(s);
                }
                None => live.push(s),
            }
        }
        if live.is_empty() {
            continue;
        }
        let requests: usize = live.iter().map(|s| s.requests).sum();
        m.commit_groups.observe(live.len() as f64);
        m.commit_batch.observe(requests as f64);
        let mut groups = Vec::with_capacity(live.len());
        let mut dones = Vec::with_capacity(live.len());
        for s in live {
            groups.push((s.ws.clone(), s.batch));
            dones.push((s.ws, s.epoch, s.done));
        }
        let t = Instant::now();
        // These requests arrived since the previous write started (or were waiting then).
        if let Some(prev) = last_start {
            let span = t.duration_since(prev).as_secs_f64().max(1e-6);
            rate += RATE_WEIGHT * (requests as f64 / span - rate);
        }
        last_start = Some(t);
        last_requests = requests;
        let res = timing.write(m, faults, || store.write_groups(groups, Durability::Sync));
        match res {
            Ok(results) => {
                for ((ws, epoch, done), r) in dones.into_iter().zip(results) {
                    if let Err(e) = &r {
                        m.commit_failures.inc();
                        if matches!(e, StoreError::Fenced { .. }) {
                            tracing::warn!(workspace = %ws, error = %e, "a group was fenced: another node owns the workspace now; its requests go there");
                        } else {
                            tracing::error!(workspace = %ws, error = %e, "a group did not validate; its requests fail and the workspace reloads");
                        }
                        if let Some(epoch) = epoch {
                            failed.insert(ws, (epoch, e.clone()));
                        }
                    }
                    done(r.map_err(EngineError::Store));
                }
            }
            Err(e) => {
                m.commit_failures.inc();
                faults.store_write_failed(&e, m);
                tracing::error!(error = %e, groups = dones.len(), "synced commit failed; its requests fail and their workspaces reload");
                for (ws, epoch, done) in dones {
                    if let Some(epoch) = epoch {
                        failed.insert(ws, (epoch, e.clone()));
                    }
                    done(Err(EngineError::Store(e.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use allowly_store::{DocKind, MemStore, Op};

    fn doc_batch(ws: &str, id: &str) -> WriteBatch {
        let mut b = WriteBatch::new();
        b.push(Op::PutDoc {
            kind: DocKind::Confirmation,
            workspace_id: ws.into(),
            id: id.into(),
            doc: serde_json::json!({ "n": id }),
        });
        b
    }

    /// Runs `clients` closed loops of `per_client` one-request groups against a committer with
    /// `window`; returns how many writes waited for the window. Every group must be written.
    fn closed_loops(clients: usize, per_client: usize, window: Duration) -> u64 {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let metrics = Metrics::new();
        let committer = Arc::new(
            Committer::start(
                store.clone(),
                metrics.clone(),
                Arc::new(Faults::default()),
                Duration::from_secs(5),
                window,
                rt.handle().clone(),
            )
            .unwrap(),
        );
        rt.block_on(async {
            let tasks: Vec<_> = (0..clients)
                .map(|c| {
                    let committer = committer.clone();
                    tokio::spawn(async move {
                        for i in 0..per_client {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            let done: Completion = Box::new(move |r| {
                                let _ = tx.send(r);
                            });
                            let id = format!("c{c}-{i}");
                            let s = Submission {
                                ws: "w".into(),
                                epoch: None,
                                batch: doc_batch("w", &id),
                                requests: 1,
                                done,
                            };
                            committer.submit(s).await;
                            rx.await.unwrap().unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        for c in 0..clients {
            for i in 0..per_client {
                let id = format!("c{c}-{i}");
                assert!(
                    store.doc(DocKind::Confirmation, "w", &id).unwrap().is_some(),
                    "{id} was acknowledged but not written"
                );
            }
        }
        metrics.commit_window_waits.get()
    }

    #[test]
    fn under_load_writes_wait_for_the_window_and_every_acknowledged_group_is_written() {
        // 64 clients against an in-memory store: arrivals far above 16 per window.
        assert!(closed_loops(64, 50, Duration::from_millis(2)) > 0, "the window was never used under load");
    }

    #[test]
    fn without_a_window_no_write_waits() {
        assert_eq!(closed_loops(64, 20, Duration::ZERO), 0);
    }

    #[test]
    fn one_client_asking_after_each_answer_never_waits() {
        // Its arrival rate is one request per write: waiting could not gather a second.
        assert_eq!(closed_loops(1, 300, Duration::from_millis(2)), 0);
    }

    /// A write slower than the bound raises `storage_slow` (and shows as running while it
    /// runs); the next quick one clears it.
    #[test]
    fn a_slow_write_raises_storage_slow_and_a_quick_one_clears_it() {
        let (faults, m) = (Faults::default(), Metrics::new());
        let timing = Timing { since: Arc::new(AtomicU64::new(0)), slow_after: Duration::from_millis(50) };
        let seen_running = timing.write(&m, &faults, || {
            let running = timing.since.load(Ordering::Acquire) != 0;
            std::thread::sleep(Duration::from_millis(80));
            running
        });
        assert!(seen_running, "the write was not published as running");
        assert_eq!(timing.since.load(Ordering::Acquire), 0, "still shown as running");
        let (fault, detail) = faults.first().expect("raised");
        assert_eq!(fault, Fault::StorageSlow);
        assert!(detail.contains("half of --commit-timeout-ms"), "{detail}");
        timing.write(&m, &faults, || ());
        assert!(faults.first().is_none(), "a quick write did not clear it");
    }

    /// Requests decided on top of a group that failed on the device get that device's fault (a
    /// 503 to retry once it clears); other failures stay a store error.
    #[test]
    fn requests_after_a_failed_commit_carry_its_device_fault() {
        let full = StoreError::NoSpace("ENOSPC".into());
        assert_eq!(after_failed_commit(Some(&full)).fault(), Some(Fault::StorageFull));
        let eio = StoreError::Io("EIO".into());
        assert_eq!(after_failed_commit(Some(&eio)).fault(), Some(Fault::StorageFailed));
        let other = StoreError::InvalidOp("bad".into());
        assert_eq!(after_failed_commit(Some(&other)).code(), "storage_error");
        assert_eq!(after_failed_commit(None).code(), "storage_error");
    }
}

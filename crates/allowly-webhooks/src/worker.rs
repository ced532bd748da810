//! The delivery worker: one tokio task that reads due entries from the outbox in the store and
//! runs bounded-concurrency attempts, each recorded in its delivery document.
//!
//! Durability comes from the store, not from memory: events are enqueued (delivery + outbox
//! entry) in the same write as the receipt that causes them, an attempt's result and the next
//! schedule replace the outbox entry in one write, and at start the worker simply scans the
//! outbox, so nothing is lost across a crash or a restart. An attempt cut short by a crash is
//! made again (delivery is at least once; receivers deduplicate on `webhook-id`, as the spec
//! asks). Result writes are not fsynced: losing one to a power failure means one more attempt,
//! never a lost event.
//!
//! Scanning: outbox ids start with the due time, so within a workspace the worker reads due
//! entries and stops at the first one that is not due, then jumps to the next workspace. At most
//! `concurrency` attempts run at once, at most `per_workspace` of them for one workspace, so a
//! workspace whose receivers hang cannot take every slot. It scans again when an event is
//! committed (the engine pokes a [`Notify`]), when an attempt finishes, when the earliest entry
//! it saw comes due, and at least every `poll_interval`.
//!
//! Results: 2xx → `delivered`; 410 → the endpoint is disabled (through [`Control`], so the
//! change is sequenced with the workspace's other endpoint changes) and the delivery `failed`
//! (`gone`); anything else → the next attempt per the schedule (`schedule`), or `failed`
//! (`gave_up`) when it runs out. A delivery whose endpoint is disabled when it comes due fails
//! (`endpoint_disabled`) without an attempt; one whose endpoint was deleted is `cancelled` (the
//! deletion cancels what it finds; this catches what it could not, e.g. an attempt in flight
//! that was rescheduled after it).
//!
//! Retention: every `retention_sweep_interval` the worker deletes finished deliveries older
//! than `retention` ([`sweep_finished`], which tests call directly).
//!
//! Several nodes over one store (a cluster): every node runs a worker over the one outbox, and
//! each makes only the deliveries of the workspaces it owns ([`Control::claim`]). An attempt
//! first claims its workspace; its writes carry the claim's fence, so a node that lost the
//! workspace meanwhile records nothing (the new owner makes the attempt again: at least once,
//! as after a crash), and a workspace another node owns is skipped by the scans for a while.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allowly_store::{DocKind, Durability, Op, Store, WriteBatch};
use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use crate::client::{Outcome, Sender};
use crate::error::{Result, WebhookError};
use crate::metrics::Metrics;
use crate::model::{
    decode, now_ms, outbox_id, put, AttemptRecord, DeliveryDoc, DeliveryStatus, FailureReason, OutboxDoc, WebhookDoc,
};
use crate::schedule::{random_u64, WebhookConfig};

/// What the worker asks of the rest of the service.
pub trait Control: Send + Sync + 'static {
    /// Endpoint `webhook_id` of workspace `ws` answered `410 Gone`: disable it, durably. An
    /// error leaves the delivery pending, so the next attempt asks again.
    fn endpoint_gone(&self, ws: &str, webhook_id: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

    /// Whether this node makes the deliveries of `ws` now (asked before every attempt). One
    /// process alone: always, unfenced. In a cluster: only while it owns the workspace.
    fn claim(&self, ws: &str) -> Pin<Box<dyn Future<Output = Claim> + Send>>;
}

/// An answer of [`Control::claim`].
pub enum Claim {
    /// Make the attempt. Every write it makes carries a fence at `epoch` (a cluster's lease
    /// epoch of the workspace, `Op::Fence`: a node that lost the workspace meanwhile writes
    /// nothing), and `hold` is kept until the attempt ends (a cluster keeps the lease meanwhile).
    Here { epoch: Option<u64>, hold: Option<Box<dyn Send>> },
    /// Not on this node (another owns the workspace, or whether it may could not be learned):
    /// the workspace is skipped for `retry_in`.
    NotHere { retry_in: Duration },
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Here { epoch, .. } => f.debug_struct("Here").field("epoch", epoch).finish_non_exhaustive(),
            Claim::NotHere { retry_in } => f.debug_struct("NotHere").field("retry_in", retry_in).finish(),
        }
    }
}

/// The running worker. [`Worker::stop`] ends it; dropping it leaves the task running.
#[derive(Debug)]
pub struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// An id that sorts after every id of a workspace (ids are at most 128 of `[A-Za-z0-9_-]`, and
/// `z` is the largest of those).
fn after_every_id() -> String {
    "z".repeat(128)
}

/// Entries read per store call while scanning.
const PAGE: usize = 256;
/// Pause of an attempt whose bookkeeping hit a store error (it stays "in flight" meanwhile, so
/// the entry is not picked up again at once).
const ERROR_PAUSE: Duration = Duration::from_secs(1);

struct Ctx {
    store: Arc<dyn Store>,
    control: Arc<dyn Control>,
    cfg: WebhookConfig,
    metrics: Metrics,
    sender: Sender,
}

/// One due outbox entry.
#[derive(Debug, Clone)]
struct Due {
    ws: String,
    outbox_id: String,
    delivery_id: String,
    /// The lease epoch every write of its attempt is fenced with ([`Claim::Here`]).
    fence: Option<u64>,
}

/// A workspace an attempt found is not this node's, and for how long to skip it.
type NotHere = Option<(String, Duration)>;

type Key = (String, String);

impl Worker {
    /// Starts the worker (inside a tokio runtime). `wake` is notified after every commit that
    /// enqueued deliveries.
    pub fn start(
        store: Arc<dyn Store>,
        control: Arc<dyn Control>,
        wake: Arc<Notify>,
        cfg: WebhookConfig,
        metrics: Metrics,
    ) -> std::result::Result<Self, String> {
        let sender = Sender::new(cfg.attempt_timeout, cfg.destinations)?;
        let ctx = Arc::new(Ctx { store, control, cfg, metrics, sender });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(ctx, wake, stop_rx));
        Ok(Self { stop, task })
    }

    /// Stops taking new entries, lets the attempts in flight finish (each is bounded by the
    /// attempt timeout; past that they are cut off and made again at the next start), and ends.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(ctx: Arc<Ctx>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut tasks: JoinSet<NotHere> = JoinSet::new();
    // What each running attempt works on (by task id, so even a panicking one is forgotten).
    let mut in_flight: HashMap<tokio::task::Id, Key> = HashMap::new();
    // Workspaces whose deliveries another node makes, until when they are skipped.
    let mut elsewhere: HashMap<String, Instant> = HashMap::new();
    let poll = ctx.cfg.poll_interval;
    let mut next_sweep = Instant::now() + ctx.cfg.retention_sweep_interval;
    loop {
        if *stop.borrow() {
            break;
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + ctx.cfg.retention_sweep_interval;
            let c = ctx.clone();
            let swept =
                tokio::task::spawn_blocking(move || sweep_finished(&*c.store, c.cfg.retention, now_ms(), &c.metrics))
                    .await;
            match swept {
                Ok(Ok(n)) if n > 0 => tracing::info!(deleted = n, "deleted webhook deliveries past their retention"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    ctx.metrics.scan_errors.with_label_values(&["sweep"]).inc();
                    tracing::warn!(error = %e, "sweeping old webhook deliveries failed; retried next time");
                }
                Err(e) => tracing::error!(error = %e, "webhook retention sweep task failed"),
            }
        }
        while let Some(done) = tasks.try_join_next_with_id() {
            finished(done, &mut in_flight, &mut elsewhere);
        }
        let free = ctx.cfg.concurrency.max(1).saturating_sub(tasks.len());
        let mut wait = poll.min(next_sweep.saturating_duration_since(Instant::now()));
        let now_i = Instant::now();
        elsewhere.retain(|_, until| *until > now_i);
        if let Some(soonest) = elsewhere.values().min() {
            wait = wait.min(soonest.saturating_duration_since(now_i));
        }
        if free > 0 {
            let snapshot: HashSet<Key> = in_flight.values().cloned().collect();
            let skip: HashSet<String> = elsewhere.keys().cloned().collect();
            let c = ctx.clone();
            let now = now_ms();
            let scanned =
                tokio::task::spawn_blocking(move || scan(&*c.store, &c.cfg, now, &snapshot, &skip, free)).await;
            match scanned {
                Ok(Ok((due, next))) => {
                    for d in due {
                        let key = (d.ws.clone(), d.delivery_id.clone());
                        let handle = tasks.spawn(attempt(ctx.clone(), d));
                        in_flight.insert(handle.id(), key);
                    }
                    if let Some(next) = next {
                        wait = wait.min(Duration::from_millis(next.saturating_sub(now_ms())));
                    }
                }
                Ok(Err(e)) => {
                    ctx.metrics.scan_errors.with_label_values(&["scan"]).inc();
                    tracing::warn!(error = %e, "cannot scan the webhook outbox; retrying");
                }
                Err(e) => tracing::error!(error = %e, "webhook outbox scan task failed"),
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => finished(done, &mut in_flight, &mut elsewhere),
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    // Let the attempts in flight finish (bounded), then cut off the rest.
    let grace = ctx.cfg.attempt_timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
}

fn finished(
    done: std::result::Result<(tokio::task::Id, NotHere), tokio::task::JoinError>,
    in_flight: &mut HashMap<tokio::task::Id, Key>,
    elsewhere: &mut HashMap<String, Instant>,
) {
    let id = match done {
        Ok((id, not_here)) => {
            if let Some((ws, retry_in)) = not_here {
                elsewhere.insert(ws, Instant::now() + retry_in);
            }
            id
        }
        Err(e) => {
            // Its outbox entry is still there: it is taken up again at the next scan.
            tracing::error!(error = %e, "webhook attempt task failed");
            e.id()
        }
    };
    in_flight.remove(&id);
}

/// Most deliveries deleted in one write of a retention sweep.
const SWEEP_BATCH: usize = 256;

/// Deletes every finished delivery (delivered, failed, cancelled) that finished at least
/// `retention` before `now_ms`, in writes of at most 256; returns how many. Pending
/// deliveries are never touched. Reads the deliveries of every workspace page by page, so it
/// holds at most one page in memory. Documents that do not decode are kept (and logged).
pub fn sweep_finished(store: &dyn Store, retention: Duration, now_ms: u64, metrics: &Metrics) -> Result<usize> {
    let cutoff = now_ms.saturating_sub(retention.as_millis().min(u128::from(u64::MAX)) as u64);
    let mut cursor: Option<(String, String)> = None;
    let mut deleted = 0;
    loop {
        let page = store.all_docs(DocKind::Delivery, cursor.as_ref().map(|(w, i)| (w.as_str(), i.as_str())), PAGE)?;
        let last_page = page.len() < PAGE;
        let mut ops = Vec::new();
        for (ws, id, doc) in page {
            match decode::<DeliveryDoc>("delivery", &id, doc) {
                Ok(d) if d.finished_at_ms().is_some_and(|t| t <= cutoff) => {
                    ops.push(Op::DeleteDoc { kind: DocKind::Delivery, workspace_id: ws.clone(), id: id.clone() });
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(workspace = %ws, error = %e, "keeping a delivery that does not decode"),
            }
            cursor = Some((ws, id));
        }
        for chunk in ops.chunks(SWEEP_BATCH) {
            store.write(WriteBatch::from(chunk.to_vec()), Durability::Buffered)?;
            deleted += chunk.len();
            metrics.swept.inc_by(chunk.len() as u64);
        }
        if last_page {
            return Ok(deleted);
        }
    }
}

/// Reads due outbox entries: at most `free`, and at most `cfg.per_workspace` in flight per
/// workspace (counting those already in flight, which are skipped), none of the workspaces in
/// `skip`. Also returns when the worker should look again: the earliest not-yet-due entry seen
/// (a workspace at its bound is looked at again when one of its attempts finishes).
fn scan(
    store: &dyn Store,
    cfg: &WebhookConfig,
    now: u64,
    in_flight: &HashSet<Key>,
    skip: &HashSet<String>,
    free: usize,
) -> Result<(Vec<Due>, Option<u64>)> {
    let mut due = Vec::new();
    let mut next: Option<u64> = None;
    let mut cursor: Option<(String, String)> = None;
    let mut current: Option<String> = None;
    let mut taken = 0usize;
    let per_ws = cfg.per_workspace.max(1);
    let mut busy: HashMap<&str, usize> = HashMap::new();
    for (ws, _) in in_flight {
        *busy.entry(ws.as_str()).or_default() += 1;
    }
    'pages: loop {
        let page = store.all_docs(DocKind::Outbox, cursor.as_ref().map(|(w, i)| (w.as_str(), i.as_str())), PAGE)?;
        let last_page = page.len() < PAGE;
        for (ws, id, doc) in page {
            if current.as_deref() != Some(ws.as_str()) {
                taken = busy.get(ws.as_str()).copied().unwrap_or(0);
                current = Some(ws.clone());
            }
            if taken >= per_ws || skip.contains(&ws) {
                cursor = Some((ws, after_every_id()));
                continue 'pages;
            }
            let entry: OutboxDoc = match decode("outbox entry", &id, doc) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(workspace = %ws, error = %e, "skipping an outbox entry that does not decode");
                    cursor = Some((ws, id));
                    continue;
                }
            };
            if entry.due_at_ms > now {
                // Entries of a workspace are in due order: the rest of it is not due either.
                next = Some(next.map_or(entry.due_at_ms, |n| n.min(entry.due_at_ms)));
                cursor = Some((ws, after_every_id()));
                continue 'pages;
            }
            cursor = Some((ws.clone(), id.clone()));
            if in_flight.contains(&(ws.clone(), entry.delivery_id.clone())) {
                continue;
            }
            due.push(Due { ws: ws.clone(), outbox_id: id, delivery_id: entry.delivery_id, fence: None });
            taken += 1;
            if due.len() >= free {
                // Full: the attempts finishing wake the worker.
                return Ok((due, next));
            }
        }
        if last_page {
            break;
        }
    }
    Ok((due, next))
}

/// How long a workspace whose delivery write was fenced (another node took it over during
/// the attempt) is skipped: its new owner makes the attempt again.
const FENCED_PAUSE: Duration = Duration::from_secs(1);

async fn attempt(ctx: Arc<Ctx>, mut due: Due) -> NotHere {
    let _hold = match ctx.control.claim(&due.ws).await {
        Claim::Here { epoch, hold } => {
            due.fence = epoch;
            hold
        }
        Claim::NotHere { retry_in } => {
            ctx.metrics.left_to_owner.inc();
            return Some((due.ws, retry_in));
        }
    };
    match attempt_once(&ctx, &due).await {
        Ok(()) => None,
        Err(WebhookError::Store(allowly_store::StoreError::Fenced { .. })) => {
            ctx.metrics.left_to_owner.inc();
            tracing::info!(workspace = %due.ws, delivery = %due.delivery_id, "another node took the workspace over during a webhook attempt; it makes the attempt again");
            Some((due.ws, FENCED_PAUSE))
        }
        Err(e) => {
            ctx.metrics.scan_errors.with_label_values(&["attempt"]).inc();
            tracing::warn!(workspace = %due.ws, delivery = %due.delivery_id, error = %e, "webhook delivery bookkeeping failed; retrying");
            tokio::time::sleep(ERROR_PAUSE).await;
            None
        }
    }
}

/// One stored document, read off the async workers: the attempts run on them, and on a volume
/// whose reads stall an inline read held its worker — and every request and timer sharing it —
/// until the volume answered.
async fn read_doc(ctx: &Ctx, kind: DocKind, ws: &str, id: &str) -> Result<Option<serde_json::Value>> {
    let (store, ws, id) = (ctx.store.clone(), ws.to_owned(), id.to_owned());
    Ok(tokio::task::spawn_blocking(move || store.doc(kind, &ws, &id))
        .await
        .map_err(|e| WebhookError::Encode(format!("store task: {e}")))??)
}

/// One write of `due`'s attempt, carrying its fence.
async fn write(ctx: &Ctx, due: &Due, mut ops: Vec<Op>) -> Result<()> {
    ops.extend(due.fence.map(|epoch| Op::Fence { workspace_id: due.ws.clone(), epoch }));
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || store.write(WriteBatch::from(ops), Durability::Buffered))
        .await
        .map_err(|e| WebhookError::Encode(format!("store task: {e}")))??;
    Ok(())
}

fn delete_outbox(ws: &str, id: &str) -> Op {
    Op::DeleteDoc { kind: DocKind::Outbox, workspace_id: ws.to_owned(), id: id.to_owned() }
}

/// Marks `d` cancelled (its endpoint was deleted) and removes its outbox entry.
async fn cancel(ctx: &Ctx, due: &Due, mut d: DeliveryDoc, now: u64) -> Result<()> {
    tracing::info!(workspace = %due.ws, delivery = %due.delivery_id, "webhook endpoint deleted: delivery cancelled");
    d.cancel(now);
    write(
        ctx,
        due,
        vec![put(DocKind::Delivery, &due.ws, &due.delivery_id, &d)?, delete_outbox(&due.ws, &due.outbox_id)],
    )
    .await
}

/// Marks `d` failed for good and removes its outbox entry.
async fn fail(ctx: &Ctx, due: &Due, mut d: DeliveryDoc, reason: FailureReason, now: u64) -> Result<()> {
    d.status = DeliveryStatus::Failed;
    d.failure = Some(reason);
    d.failed_at_ms = Some(now);
    d.next_attempt_at_ms = None;
    d.outbox_id = None;
    let label = match reason {
        FailureReason::Gone => "gone",
        FailureReason::EndpointDisabled => "endpoint_disabled",
        FailureReason::GaveUp => "gave_up",
    };
    ctx.metrics.failed.with_label_values(&[label]).inc();
    tracing::info!(workspace = %due.ws, delivery = %due.delivery_id, webhook = %d.webhook_id, reason = label, "webhook delivery failed for good");
    write(
        ctx,
        due,
        vec![put(DocKind::Delivery, &due.ws, &due.delivery_id, &d)?, delete_outbox(&due.ws, &due.outbox_id)],
    )
    .await
}

async fn attempt_once(ctx: &Ctx, due: &Due) -> Result<()> {
    let Some(v) = read_doc(ctx, DocKind::Delivery, &due.ws, &due.delivery_id).await? else {
        tracing::warn!(workspace = %due.ws, delivery = %due.delivery_id, "outbox entry without its delivery; removing it");
        return write(ctx, due, vec![delete_outbox(&due.ws, &due.outbox_id)]).await;
    };
    let mut d: DeliveryDoc = decode("delivery", &due.delivery_id, v)?;
    if d.status != DeliveryStatus::Pending || d.outbox_id.as_deref() != Some(due.outbox_id.as_str()) {
        // Not the entry that schedules this delivery (never written so: writes are atomic).
        return write(ctx, due, vec![delete_outbox(&due.ws, &due.outbox_id)]).await;
    }
    let hook: Option<WebhookDoc> = match read_doc(ctx, DocKind::Webhook, &due.ws, &d.webhook_id).await? {
        Some(v) => Some(decode("webhook", &d.webhook_id, v)?),
        None => None,
    };
    let hook = match hook {
        Some(h) if !h.disabled => h,
        Some(_) => return fail(ctx, due, d, FailureReason::EndpointDisabled, now_ms()).await,
        None => return cancel(ctx, due, d, now_ms()).await,
    };
    let started = now_ms();
    let secrets = hook.signing_secrets(started)?;
    let headers = crate::signature::headers(&secrets, &d.event_id, started / 1000, d.payload.as_bytes());
    ctx.metrics.in_flight.inc();
    let t = Instant::now();
    let outcome = ctx.sender.post(&hook.url, &headers, Bytes::from(d.payload.clone())).await;
    let took = t.elapsed();
    ctx.metrics.in_flight.dec();
    ctx.metrics.attempt_seconds.observe(took.as_secs_f64());
    let now = now_ms();
    let mut record =
        AttemptRecord { at_ms: started, duration_ms: took.as_millis() as u64, status_code: None, error: None };
    match outcome {
        Outcome::Delivered { status } => {
            ctx.metrics.attempts.with_label_values(&["delivered"]).inc();
            record.status_code = Some(status);
            d.record(record);
            d.status = DeliveryStatus::Delivered;
            d.delivered_at_ms = Some(now);
            d.next_attempt_at_ms = None;
            d.outbox_id = None;
            tracing::debug!(workspace = %due.ws, delivery = %due.delivery_id, status, "webhook delivered");
            write(
                ctx,
                due,
                vec![put(DocKind::Delivery, &due.ws, &due.delivery_id, &d)?, delete_outbox(&due.ws, &due.outbox_id)],
            )
            .await
        }
        Outcome::Gone => {
            ctx.metrics.attempts.with_label_values(&["gone"]).inc();
            record.status_code = Some(410);
            match ctx.control.endpoint_gone(&due.ws, &d.webhook_id).await {
                Ok(()) => {
                    tracing::info!(workspace = %due.ws, webhook = %d.webhook_id, "endpoint answered 410 Gone: disabled");
                    record.error = Some("HTTP 410: endpoint disabled".into());
                    d.record(record);
                    fail(ctx, due, d, FailureReason::Gone, now).await
                }
                Err(e) => {
                    record.error = Some(format!("HTTP 410, but disabling the endpoint failed: {e}"));
                    d.record(record);
                    reschedule(ctx, due, d, now, None).await
                }
            }
        }
        Outcome::Failed { kind, status, error, retry_after } => {
            ctx.metrics.attempts.with_label_values(&[kind.label()]).inc();
            tracing::debug!(workspace = %due.ws, delivery = %due.delivery_id, %error, "webhook attempt failed");
            record.status_code = status;
            record.error = Some(error);
            d.record(record);
            reschedule(ctx, due, d, now, retry_after).await
        }
    }
}

/// Schedules the next attempt, or gives up.
async fn reschedule(ctx: &Ctx, due: &Due, mut d: DeliveryDoc, now: u64, retry_after: Option<Duration>) -> Result<()> {
    // The endpoint may have been deleted while this attempt was in flight (the deletion
    // cancelled the delivery as it found it then): keep it cancelled rather than bring it back.
    if read_doc(ctx, DocKind::Webhook, &due.ws, &d.webhook_id).await?.is_none() {
        return cancel(ctx, due, d, now).await;
    }
    let Some(at) = ctx.cfg.next_attempt(d.attempts, d.created_at_ms, now, random_u64(), retry_after) else {
        return fail(ctx, due, d, FailureReason::GaveUp, now).await;
    };
    let new_id = outbox_id(at, &due.delivery_id);
    d.next_attempt_at_ms = Some(at);
    d.outbox_id = Some(new_id.clone());
    let entry = OutboxDoc { delivery_id: due.delivery_id.clone(), due_at_ms: at };
    write(
        ctx,
        due,
        vec![
            delete_outbox(&due.ws, &due.outbox_id),
            put(DocKind::Outbox, &due.ws, &new_id, &entry)?,
            put(DocKind::Delivery, &due.ws, &due.delivery_id, &d)?,
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use allowly_store::MemStore;

    use super::*;

    fn entry(store: &MemStore, ws: &str, due: u64, delivery: &str) {
        let o = OutboxDoc { delivery_id: delivery.into(), due_at_ms: due };
        let op = put(DocKind::Outbox, ws, &outbox_id(due, delivery), &o).unwrap();
        store.write(WriteBatch::from(vec![op]), Durability::Sync).unwrap();
    }

    fn ids(due: &[Due]) -> Vec<(&str, &str)> {
        due.iter().map(|d| (d.ws.as_str(), d.delivery_id.as_str())).collect()
    }

    #[test]
    fn a_scan_takes_due_entries_fairly_and_finds_the_next_due_time() {
        let store = MemStore::new();
        for i in 0..5u64 {
            entry(&store, "ws_a", 100 + i, &format!("dl_a{i}"));
        }
        entry(&store, "ws_a", 900, "dl_a_late");
        entry(&store, "ws_b", 50, "dl_b0");
        entry(&store, "ws_b", 700, "dl_b_late");
        entry(&store, "ws_c", 800, "dl_c_late");
        let cfg = WebhookConfig { per_workspace: 3, ..WebhookConfig::default() };
        let none = HashSet::new();
        let no_skip = HashSet::new();

        // Due entries only, in due order per workspace, at most 3 in flight per workspace.
        let (due, next) = scan(&store, &cfg, 500, &none, &no_skip, 100).unwrap();
        assert_eq!(ids(&due), [("ws_a", "dl_a0"), ("ws_a", "dl_a1"), ("ws_a", "dl_a2"), ("ws_b", "dl_b0")]);
        assert_eq!(next, Some(700), "ws_a stopped at its bound: its next due time is seen later");

        // Those in flight are skipped and count against the bound.
        let flying: HashSet<Key> = [("ws_a".to_owned(), "dl_a0".to_owned())].into();
        let (due, _) = scan(&store, &cfg, 500, &flying, &no_skip, 100).unwrap();
        assert_eq!(ids(&due)[..2], [("ws_a", "dl_a1"), ("ws_a", "dl_a2")]);
        assert_eq!(due.len(), 3);

        // At most `free`.
        let (due, _) = scan(&store, &cfg, 500, &none, &no_skip, 2).unwrap();
        assert_eq!(due.len(), 2);

        // Nothing due: the earliest due time.
        let (due, next) = scan(&store, &cfg, 10, &none, &no_skip, 100).unwrap();
        assert!(due.is_empty());
        assert_eq!(next, Some(50));

        // Everything due, bound large: all of it.
        let big = WebhookConfig { per_workspace: 100, ..cfg };
        let (due, next) = scan(&store, &big, 1000, &none, &no_skip, 100).unwrap();
        assert_eq!(due.len(), 9);
        assert_eq!(next, None);

        // Another node's workspace is skipped whole, and its due times are not looked at.
        let elsewhere: HashSet<String> = ["ws_a".to_owned()].into();
        let (due, next) = scan(&store, &big, 1000, &none, &elsewhere, 100).unwrap();
        assert_eq!(ids(&due), [("ws_b", "dl_b0"), ("ws_b", "dl_b_late"), ("ws_c", "dl_c_late")]);
        assert_eq!(next, None);
    }
}

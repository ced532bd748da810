//! One ractor actor per workspace owns that workspace's private key and log state. Appends from
//! many callers are coalesced: an append only queues and schedules a `Flush` behind everything
//! already in the mailbox, so one signature covers every batch that arrived meanwhile.
//!
//! A signed group is released only once its journal record and audit line are durable (both
//! in the journal, the line also written to `audit.log`). The
//! actor *awaits* that (the journal writer thread does the IO; no tokio worker blocks), and
//! handles no other message meanwhile: a workspace has at most one group in flight, its records
//! reach the journal in order, and the appends that arrive during the wait form its next group.
//!
//! What waits for an actor is bounded ([`Queue`]): requests and bytes of appends admitted and
//! not yet answered (an append until its group is durable), and leaves per group
//! (`Limits::max_group_leaves`). The same count decides when an idle workspace may be unloaded
//! (`registry`): only while it is 0, i.e. while the actor has nothing to do.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use allowly_receipt::merkle::{Frontier, Hash};
use allowly_receipt::note::{Checkpoint, NoteVerifier};
use allowly_receipt::types::{
    log_origin, EventKind, HexHash, ReceiptBody, RotatedKey, Timestamp, FORMAT_VERSION, TIME_EXTENSION_PREFIX,
};
use allowly_signer_proto::{Response, SignedLeaf};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::audit::{Entry, Event};
use crate::check::{check_batch, Reason, Refusal};
use crate::error::{Result, SignerError};
use crate::journal::Record;
use crate::keystore::{WorkspaceKey, WorkspaceKeys};
use crate::state::LogState;
use crate::Shared;

/// Most requests that may wait in one workspace's mailbox; more are answered `Busy`.
pub const MAX_QUEUED: usize = 16_384;

/// The top bit of [`Queue`]'s request count: the workspace is being unloaded, its actor takes
/// nothing more (requests go to the next actor, loaded once this one is gone).
const CLOSED: usize = 1 << (usize::BITS - 1);

/// What waits for one workspace's actor, shared by its handle (the connections admit requests
/// into it) and the actor (which takes them off): requests and bytes of appends not yet taken,
/// when a request last came, and a mark that closes it for good when the workspace is unloaded.
#[derive(Debug)]
pub struct Queue {
    /// Requests admitted and not yet taken (an append is taken once its group is durable or
    /// failed, just before it is answered; any other request once handled), plus [`CLOSED`]
    /// once closed. So it reads 0 only while the actor has nothing to do.
    requests: AtomicUsize,
    /// Bytes of the appends among them (bodies as received: what the mailbox holds until the
    /// actor hashes them, and an upper bound of the 32-byte leaves it keeps after, until they
    /// are signed).
    bytes: AtomicUsize,
    /// When a request was last admitted, in ms of [`clock_ms`].
    last_used_ms: AtomicU64,
    /// The lowest `expected_size` of an append answered `Busy` since the log last grew past it
    /// (`u64::MAX`: none): appends a caller pipelined behind it skip its index, and are told the
    /// size without being taken for fork attempts.
    busy_floor: AtomicU64,
}

/// What [`Queue::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over a cap (named, a closed set for the `allowly_signer_busy_total` label): answer `Busy`.
    Busy(&'static str),
    /// The workspace is being unloaded: wait for that, then go to its next actor.
    Closed,
}

/// Milliseconds on a monotonic clock that starts with the process.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            requests: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(clock_ms()),
            busy_floor: AtomicU64::new(u64::MAX),
        }
    }
}

impl Queue {
    /// Admits one request carrying `bytes` of appended bodies (0 for other requests), unless
    /// the queue is closed or at a cap: [`MAX_QUEUED`] requests, or `max_bytes` of appends.
    /// The byte cap is checked before adding, so one append always fits in an empty queue.
    pub fn admit(&self, bytes: usize, max_bytes: usize) -> Admission {
        // SeqCst with `close_if_empty`: either this increment is seen there (no close), or
        // the close is seen here (go to the next actor). Never both missed.
        let prev = self.requests.fetch_add(1, Ordering::SeqCst);
        if prev & CLOSED != 0 {
            self.requests.fetch_sub(1, Ordering::SeqCst);
            return Admission::Closed;
        }
        if prev >= MAX_QUEUED {
            self.requests.fetch_sub(1, Ordering::SeqCst);
            return Admission::Busy("workspace_requests");
        }
        if bytes > 0 && self.bytes.fetch_add(bytes, Ordering::SeqCst) >= max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::SeqCst);
            self.requests.fetch_sub(1, Ordering::SeqCst);
            return Admission::Busy("workspace_bytes");
        }
        self.last_used_ms.store(clock_ms(), Ordering::Relaxed);
        Admission::Admitted
    }

    /// The actor took `requests` requests, with `bytes` of appends among them, off the queue.
    pub fn taken(&self, requests: usize, bytes: usize) {
        self.requests.fetch_sub(requests, Ordering::SeqCst);
        self.bytes.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Closes the queue if nothing is in it (nothing admitted is waiting or unsigned): from
    /// then on every [`Queue::admit`] says `Closed`. Whether it closed it.
    pub fn close_if_empty(&self) -> bool {
        self.requests.compare_exchange(0, CLOSED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Whether nothing is queued (and the queue is open).
    pub fn is_empty(&self) -> bool {
        self.requests.load(Ordering::SeqCst) == 0
    }

    /// How long since a request was last admitted.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(clock_ms().saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    /// An append at `expected_size` was answered `Busy`.
    pub fn refused_busy(&self, expected_size: u64) {
        self.busy_floor.fetch_min(expected_size, Ordering::Relaxed);
    }

    /// Whether an append at `expected_size`, past the log's `size`, skips the index of an append
    /// answered `Busy` (so it was pipelined behind that one, not aimed at a gap).
    fn skips_a_busy_append(&self, size: u64, expected_size: u64) -> bool {
        let floor = self.busy_floor.load(Ordering::Relaxed);
        size <= floor && floor < expected_size
    }

    /// The log grew to `size`: an append answered `Busy` below it was sent again (or never will
    /// be); forget it.
    fn grew_to(&self, size: u64) {
        let _ = self.busy_floor.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| (f < size).then_some(u64::MAX));
    }
}

/// Where an answer goes.
pub type Reply = oneshot::Sender<Result<Response>>;

/// Messages a workspace actor handles.
#[derive(Debug)]
pub enum WsMsg {
    Append {
        expected_size: u64,
        /// Receipt bodies, checked and hashed by the actor (`check`).
        bodies: Vec<Vec<u8>>,
        /// What [`Queue::admit`] counted for them (given back with [`Queue::taken`]).
        bytes: usize,
        want_proofs: bool,
        peer_uid: u32,
        reply: Reply,
    },
    Rotate {
        expected_size: u64,
        peer_uid: u32,
        reply: Reply,
    },
    ListKeys {
        reply: Reply,
    },
    Latest {
        reply: Reply,
    },
    /// `ImportKeys` for this loaded workspace: installed after the appends queued before it are
    /// signed, and the actor signs on with the installed record's active key.
    Import {
        record: Vec<u8>,
        peer_uid: u32,
        reply: Reply,
    },
    /// `Adopt` for this loaded workspace, after the appends queued before it are signed: an
    /// append queued after it extends the adopted note (see `crate::adopt`).
    Adopt {
        args: crate::registry::AdoptArgs,
        reply: Reply,
    },
    /// Sign everything queued so far (sent by the actor to itself).
    Flush,
}

#[derive(Debug)]
struct PendingAppend {
    expected_size: u64,
    /// Its bytes in the [`Queue`].
    bytes: usize,
    leaves: Vec<Hash>,
    /// Unix ms of the first and last body's `time`.
    first_ms: u64,
    last_ms: u64,
    want_proofs: bool,
    peer_uid: u32,
    reply: Reply,
}

/// Everything the actor owns.
#[derive(Debug)]
pub struct WsState {
    ws: String,
    origin: String,
    keys: WorkspaceKeys,
    durable: LogState,
    frontier: Frontier,
    pending: VecDeque<PendingAppend>,
    flush_scheduled: bool,
    shared: Arc<Shared>,
    queue: Arc<Queue>,
}

/// Start-up arguments: what the registry loaded from disk.
#[derive(Debug)]
pub struct WsArgs {
    pub ws: String,
    pub keys: WorkspaceKeys,
    pub durable: LogState,
    pub shared: Arc<Shared>,
    pub queue: Arc<Queue>,
    /// Loaded from the journal (not just created): write a `resumed` audit line first.
    pub resumed: bool,
}

/// The actor type.
#[derive(Debug)]
pub struct WorkspaceActor;

/// The wall clock in Unix milliseconds (the one helper every crate reads).
pub(crate) use allowly_receipt::types::now_ms;

fn ts(ms: u64) -> Timestamp {
    Timestamp::from_unix_ms(ms.min(Timestamp::MAX_MS)).unwrap_or_else(|_| unreachable!("clamped"))
}

impl Actor for WorkspaceActor {
    type Msg = WsMsg;
    type State = WsState;
    type Arguments = WsArgs;

    async fn pre_start(&self, _myself: ActorRef<WsMsg>, a: WsArgs) -> Result<WsState, ActorProcessingErr> {
        let frontier = a.durable.frontier()?;
        let s = WsState {
            origin: log_origin(&a.ws),
            ws: a.ws,
            keys: a.keys,
            frontier,
            durable: a.durable,
            pending: VecDeque::new(),
            flush_scheduled: false,
            shared: a.shared,
            queue: a.queue,
        };
        if a.resumed {
            // Durable before the actor answers anything: the audit log says from which checkpoint
            // each load (a restart, typically) went on.
            let line = s.audit_line(s.durable.size, Event::Resumed, None, None)?;
            s.shared.journal.write(None, line).await?;
        }
        s.shared.metrics.workspaces_loaded.inc();
        Ok(s)
    }

    /// Stopped (unloaded, or the signer stopping): the state, keys included, is dropped right
    /// after (a file key's slot wiped, its page unlocked once no other key shares it; a token
    /// key's cached object handle forgotten).
    async fn post_stop(&self, _myself: ActorRef<WsMsg>, s: &mut WsState) -> Result<(), ActorProcessingErr> {
        s.shared.metrics.workspaces_loaded.dec();
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<WsMsg>, msg: WsMsg, s: &mut WsState) -> Result<(), ActorProcessingErr> {
        match msg {
            WsMsg::Append { expected_size, bodies, bytes, want_proofs, peer_uid, reply } => {
                // The stateless checks and the hashing run here, once per batch, so a group
                // keeps only leaf hashes; the time floor is checked against the running log in
                // `sign_pending`.
                let checked = match check_batch(&s.ws, expected_size, &bodies, now_ms()) {
                    Ok(c) => c,
                    Err(refusal) => {
                        let e = s.refuse_receipts(refusal, peer_uid).await;
                        s.queue.taken(1, bytes);
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                };
                drop(bodies);
                if checked.slow_reads > 0 {
                    s.shared.metrics.body_slow_reads.inc_by(checked.slow_reads as u64);
                }
                s.pending.push_back(PendingAppend {
                    expected_size,
                    bytes,
                    leaves: checked.leaves,
                    first_ms: checked.first_ms,
                    last_ms: checked.last_ms,
                    want_proofs,
                    peer_uid,
                    reply,
                });
                if !s.flush_scheduled {
                    s.flush_scheduled = true;
                    // Lands behind every message already queued: they all join this signature.
                    myself.send_message(WsMsg::Flush)?;
                }
            }
            WsMsg::Flush => {
                s.flush_scheduled = false;
                s.flush().await;
            }
            WsMsg::Rotate { expected_size, peer_uid, reply } => {
                // Appends queued before the rotation are signed by the old key first.
                s.flush().await;
                let rotated = s.rotate(expected_size, peer_uid).await;
                s.dequeued();
                let _ = reply.send(rotated);
            }
            WsMsg::Import { record, peer_uid, reply } => {
                s.flush().await;
                let imported = s.import(record, peer_uid).await;
                s.dequeued();
                let _ = reply.send(imported);
            }
            WsMsg::Adopt { args, reply } => {
                s.flush().await;
                let adopted = s.adopt(args).await;
                s.dequeued();
                let _ = reply.send(adopted);
            }
            WsMsg::ListKeys { reply } => {
                s.dequeued();
                let _ = reply.send(Ok(Response::Keys { keys: s.keys.infos.clone() }));
            }
            WsMsg::Latest { reply } => {
                s.dequeued();
                let _ = reply
                    .send(Ok(Response::Checkpoint { size: s.durable.size, checkpoint: s.durable.checkpoint.clone() }));
            }
        }
        Ok(())
    }
}

/// The signer's whole CPU work for one batch: extend the frontier by `leaves`, sign one
/// checkpoint of the new tree, and return the note, with every new leaf's inclusion proof if
/// `want_proofs` (else no proofs). (Public so the benchmark measures exactly this code.)
pub fn sign_batch(
    f: &mut Frontier,
    leaves: &[Hash],
    origin: &str,
    key: &dyn WorkspaceKey,
    time_ms: u64,
    want_proofs: bool,
) -> Result<(String, Vec<Vec<Hash>>)> {
    // Without proofs the frontier builds none (`append_nodes`); the tree and root are the same.
    let appended = if want_proofs { f.append(leaves)? } else { f.append_nodes(leaves)? };
    let (root, proofs) = (appended.root, appended.proofs);
    let text = Checkpoint {
        origin: origin.to_owned(),
        size: f.size(),
        root,
        extensions: vec![format!("{TIME_EXTENSION_PREFIX}{}", ts(time_ms))],
    }
    .to_text()?;
    Ok((crate::keystore::sign_note(&text, origin, key)?, proofs))
}

impl WsState {
    fn dequeued(&self) {
        self.queue.taken(1, 0);
    }

    /// An audit line naming `size` as the log size it speaks of (a refusal inside a coalesced
    /// group is checked against the group's running size, not the last durable one).
    fn audit_line(&self, size: u64, event: Event, peer_uid: Option<u32>, detail: Option<String>) -> Result<Vec<u8>> {
        Entry {
            time: ts(now_ms()),
            event,
            workspace_id: &self.ws,
            size,
            root: self
                .durable
                .checkpoint
                .as_ref()
                .filter(|_| size == self.durable.size)
                .map(|_| B64.encode(self.frontier.root())),
            key_id: Some(hex::encode(self.keys.active_key_id())),
            peer_uid,
            detail,
            leaves: None,
        }
        .line()
    }

    /// Counts, logs and audits a refused batch (durable before the refusal is answered), and
    /// returns the error to answer with.
    async fn refuse_receipts(&self, r: Refusal, peer_uid: u32) -> SignerError {
        self.shared.metrics.receipts_refused.with_label_values(&[r.reason.label()]).inc();
        tracing::warn!(workspace = %self.ws, index = r.index, reason = r.reason.label(), detail = %r.detail, peer_uid, "refused to sign a batch: a body is not a receipt of this log");
        let detail = format!("log_index {}: {} ({})", r.index, r.detail, r.reason.label());
        match self.audit_line(self.frontier.size(), Event::ReceiptRefused, Some(peer_uid), Some(detail)) {
            Ok(line) => self.audit_refusals(line).await,
            Err(e) => tracing::error!(workspace = %self.ws, error = %e, "refusal audit line"),
        }
        r.into()
    }

    /// Whether `p` (an append at an index the log already has) agrees with the leaves the signer
    /// remembers: its last signed group, then `pending` (this group's accepted leaves, which
    /// follow it). Leaves of `p` past those are new ones; they do not make it disagree.
    fn agrees(&self, p: &PendingAppend, pending: &[Hash]) -> bool {
        let group = &self.durable.last_group;
        let start = self.durable.prev_size;
        if start + group.len() as u64 != self.durable.size {
            return false;
        }
        let Some(offset) = p.expected_size.checked_sub(start).and_then(|o| usize::try_from(o).ok()) else {
            return false;
        };
        if offset >= group.len() + pending.len() {
            return false;
        }
        let remembered = group.iter().map(|h| &h.0).chain(pending.iter()).skip(offset);
        p.leaves.iter().zip(remembered).all(|(a, b)| a == b)
    }

    /// Writes refusal lines (durable before the refusals are answered, like every audit line);
    /// a failure is logged, the refusals stand.
    async fn audit_refusals(&self, lines: Vec<u8>) {
        if lines.is_empty() {
            return;
        }
        if let Err(e) = self.shared.journal.write(None, lines).await {
            tracing::error!(workspace = %self.ws, error = %e, "could not write refusal audit lines");
        }
    }

    /// Checkpoint time: the wall clock, but never before the previous checkpoint (and strictly
    /// after it when a new key takes over, so windows never overlap).
    fn next_time(&self, strictly_after: bool) -> u64 {
        let floor = if strictly_after {
            // A new key's window must start after the old key's last checkpoint and after the
            // old key's own start, so no window is empty and no two overlap.
            let active_since = self.keys.infos.iter().filter(|k| k.active).map(|k| k.not_before_ms).max().unwrap_or(0);
            self.durable.checkpoint_ms.max(active_since) + 1
        } else {
            self.durable.checkpoint_ms
        };
        now_ms().max(floor)
    }

    /// A lost answer retried verbatim: the same leaves at the same place in the last signed
    /// group get the same checkpoint again (and their proofs, if asked), with no new signature.
    fn replay(&self, p: &PendingAppend) -> Option<Response> {
        let prev = self.durable.prev_frontier().ok()?;
        let group = self.durable.group();
        let offset = usize::try_from(p.expected_size.checked_sub(prev.size())?).ok()?;
        let end = offset.checked_add(p.leaves.len())?;
        if group.get(offset..end)? != p.leaves.as_slice() || prev.size() + group.len() as u64 != self.durable.size {
            return None;
        }
        let proofs = if p.want_proofs {
            let mut f = prev;
            let appended = f.append(&group).ok()?;
            appended.proofs.get(offset..end)?.to_vec()
        } else {
            Vec::new()
        };
        Some(Response::Appended {
            old_size: p.expected_size,
            new_size: p.expected_size + p.leaves.len() as u64,
            checkpoint: self.durable.checkpoint.clone()?,
            proofs,
        })
    }

    /// Signs everything pending, in groups of at most `Limits::max_group_leaves` leaves (one
    /// append larger than that alone: an append is never split, its answer is one checkpoint).
    /// The cap bounds what one group costs — its leaves, its journal record and audit line
    /// (each lists every leaf), its proofs — however many appends a caller pipelined.
    async fn flush(&mut self) {
        let max = self.shared.limits.max_group_leaves;
        while !self.pending.is_empty() {
            let mut group = Vec::new();
            let mut leaves = 0usize;
            while let Some(p) = self.pending.front() {
                if !group.is_empty() && leaves + p.leaves.len() > max {
                    break;
                }
                leaves += p.leaves.len();
                if let Some(p) = self.pending.pop_front() {
                    group.push(p);
                }
            }
            self.sign_pending(group).await;
        }
    }

    /// Signs `group` (one signature for the appends that extend the log, refusals for the
    /// others), then takes it off the [`Queue`] and answers. Off the queue only once its record
    /// is durable (or failed): so the group's leaves count against the workspace's byte cap
    /// while they are signed, and a queue that reads empty has no group in flight, which is
    /// what `registry::unload_if_idle` closes it on.
    async fn sign_pending(&mut self, group: Vec<PendingAppend>) {
        let taken = (group.len(), group.iter().map(|p| p.bytes).sum::<usize>());
        let mut answers: Vec<(Reply, Result<Response>)> = Vec::with_capacity(group.len());
        let mut running = self.frontier.size();
        let mut running_ms = self.durable.last_leaf_ms;
        let mut accepted: Vec<PendingAppend> = Vec::with_capacity(group.len());
        let mut leaves: Vec<Hash> = Vec::new();
        let mut refused: Vec<(PendingAppend, SignerError)> = Vec::new();
        let mut refusal_lines = Vec::new();
        let m = &self.shared.metrics;
        for p in group {
            let (event, detail, error) = if p.expected_size == running {
                if p.first_ms >= running_ms {
                    running += p.leaves.len() as u64;
                    running_ms = p.last_ms;
                    leaves.extend_from_slice(&p.leaves);
                    accepted.push(p);
                    continue;
                }
                let reason = Reason::TimeBackwards;
                m.receipts_refused.with_label_values(&[reason.label()]).inc();
                tracing::warn!(workspace = %self.ws, index = running, peer_uid = p.peer_uid, "refused to sign a batch whose first receipt is older than the log's last");
                let r = Refusal {
                    index: running,
                    reason,
                    detail: format!("time {} is before the previous leaf's {}", ts(p.first_ms), ts(running_ms)),
                };
                let detail = format!("log_index {}: {} ({})", r.index, r.detail, reason.label());
                (Event::ReceiptRefused, detail, r.into())
            } else if let Some(resp) = self.replay(&p) {
                // A lost answer retried verbatim: the same checkpoint again, nothing new signed.
                m.append_replays.with_label_values(&["checkpoint"]).inc();
                answers.push((p.reply, Ok(resp)));
                continue;
            } else if p.expected_size > running && self.queue.skips_a_busy_append(running, p.expected_size) {
                // Pipelined behind an append that was answered `Busy`: the caller resends from
                // there. A consequence of back pressure, not a fork attempt.
                tracing::info!(workspace = %self.ws, expected = p.expected_size, current = running, peer_uid = p.peer_uid, "an append follows one that was answered Busy; answered with the current size");
                let detail = format!(
                    "expected_size {} but log has {running}; an append before it was answered Busy",
                    p.expected_size
                );
                (Event::Stale, detail, SignerError::SizeMismatch { expected: p.expected_size, current: running })
            } else if p.expected_size < running && self.agrees(&p, &leaves) {
                // Behind, but in agreement with what was signed (a lost answer retried with more
                // leaves, or queued behind the group it repeats): tell the caller the size.
                m.append_replays.with_label_values(&["size_mismatch"]).inc();
                tracing::info!(workspace = %self.ws, expected = p.expected_size, current = running, peer_uid = p.peer_uid, "an append repeats signed leaves (a lost answer retried); answered with the current size");
                let detail =
                    format!("expected_size {} but log has {running}; its leaves agree with the log", p.expected_size);
                (Event::Stale, detail, SignerError::SizeMismatch { expected: p.expected_size, current: running })
            } else {
                m.fork_attempts.inc();
                tracing::warn!(workspace = %self.ws, expected = p.expected_size, current = running, peer_uid = p.peer_uid, "refused an append that would fork or roll back the log");
                let detail = format!("expected_size {} but log has {running}", p.expected_size);
                (Event::Refused, detail, SignerError::SizeMismatch { expected: p.expected_size, current: running })
            };
            match self.audit_line(running, event, Some(p.peer_uid), Some(detail)) {
                Ok(line) => refusal_lines.extend_from_slice(&line),
                Err(e) => tracing::error!(workspace = %self.ws, error = %e, "refusal audit line"),
            }
            refused.push((p, error));
        }
        if accepted.is_empty() {
            self.audit_refusals(refusal_lines).await;
        } else {
            let time = self.next_time(false);
            let want_proofs = accepted.iter().any(|p| p.want_proofs);
            let peer = accepted.last().map(|p| p.peer_uid);
            // The refusal lines ride along with the group's record: one wait, one fsync.
            match self.sign_group(&leaves, running_ms, time, Event::Checkpoint, peer, want_proofs, refusal_lines).await
            {
                Ok((checkpoint, proofs)) => {
                    let mut start = 0usize;
                    for p in accepted {
                        let end = start + p.leaves.len();
                        let proofs = match p.want_proofs {
                            true => proofs.get(start..end).map(<[_]>::to_vec).unwrap_or_default(),
                            false => Vec::new(),
                        };
                        start = end;
                        let resp = Response::Appended {
                            old_size: p.expected_size,
                            new_size: p.expected_size + p.leaves.len() as u64,
                            checkpoint: checkpoint.clone(),
                            proofs,
                        };
                        answers.push((p.reply, Ok(resp)));
                    }
                }
                Err(e) => {
                    tracing::error!(workspace = %self.ws, error = %e, "signing a batch failed; nothing was released");
                    // Each submitter is told the class of the failure (storage, token or
                    // other), so the service can tell a failing disk or token from a bug.
                    for p in accepted {
                        answers.push((p.reply, Err(e.class_again())));
                    }
                }
            }
        }
        answers.extend(refused.into_iter().map(|(p, e)| (p.reply, Err(e))));
        self.queue.taken(taken.0, taken.1);
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
    }

    /// Appends `leaves`, signs one checkpoint, and makes the new state durable (journal record
    /// and audit line, plus `extra_audit` lines, in one journal fsync) before returning the
    /// note and proofs. On
    /// failure nothing changes in memory and the signature is dropped unseen. `last_leaf_ms` is
    /// the time of the last appended receipt after this group (the floor for the next one).
    #[allow(clippy::too_many_arguments)]
    async fn sign_group(
        &mut self,
        leaves: &[Hash],
        last_leaf_ms: u64,
        time: u64,
        event: Event,
        peer: Option<u32>,
        want_proofs: bool,
        mut extra_audit: Vec<u8>,
    ) -> Result<(String, Vec<Vec<Hash>>)> {
        let prev = self.frontier.clone();
        let mut next = prev.clone();
        let (checkpoint, proofs) = sign_batch(&mut next, leaves, &self.origin, &*self.keys.active, time, want_proofs)?;
        let state = LogState {
            size: next.size(),
            peaks: next.peaks().iter().copied().map(HexHash).collect(),
            checkpoint: Some(checkpoint.clone()),
            checkpoint_ms: time,
            prev_size: prev.size(),
            prev_peaks: prev.peaks().iter().copied().map(HexHash).collect(),
            last_group: leaves.iter().copied().map(HexHash).collect(),
            last_leaf_ms,
        };
        let entry = Entry {
            time: ts(now_ms()),
            event,
            workspace_id: &self.ws,
            size: next.size(),
            root: Some(B64.encode(next.root())),
            key_id: Some(hex::encode(self.keys.active_key_id())),
            peer_uid: peer,
            detail: None,
            leaves: Some(leaves),
        };
        let record = Record::new(&self.ws, &state)?;
        extra_audit.extend_from_slice(&entry.line()?);
        let started = Instant::now();
        self.shared.journal.write(Some(record), extra_audit).await?;
        self.durable = state;
        self.frontier = next;
        self.queue.grew_to(self.frontier.size());
        let m = &self.shared.metrics;
        m.persist_seconds.observe(started.elapsed().as_secs_f64());
        m.checkpoints_signed.inc();
        m.leaves_signed.inc_by(leaves.len() as u64);
        m.leaves_per_signature.observe(leaves.len() as f64);
        Ok((checkpoint, proofs))
    }

    /// Rotates the key and logs the rotation as a `key.rotated` leaf at `expected_size`, signed
    /// by the new key. The new key is durable in the key store before it signs anything.
    ///
    /// A rotation whose answer was lost (the service crashed or timed out after asking) is
    /// asked again at the same `expected_size`: if the last signed group is exactly that
    /// rotation's leaf, the same answer is given again (same checkpoint, nothing new signed or
    /// generated), so the service can store the leaf it never received.
    async fn rotate(&mut self, expected_size: u64, peer_uid: u32) -> Result<Response> {
        if let Some(replayed) = self.replay_rotation(expected_size) {
            self.shared.metrics.append_replays.with_label_values(&["rotation"]).inc();
            tracing::info!(workspace = %self.ws, index = expected_size, peer_uid, "a rotation retried after a lost answer; answered again");
            return Ok(replayed);
        }
        if expected_size != self.frontier.size() {
            self.shared.metrics.fork_attempts.inc();
            let current = self.frontier.size();
            tracing::warn!(workspace = %self.ws, expected = expected_size, current, peer_uid, "refused a rotation that would fork or roll back the log");
            // Audited like a refused append: it is the same fork/rollback attempt.
            let detail = format!("rotation: expected_size {expected_size} but log has {current}");
            let line = self.audit_line(current, Event::Refused, Some(peer_uid), Some(detail))?;
            self.audit_refusals(line).await;
            return Err(SignerError::SizeMismatch { expected: expected_size, current });
        }
        let time = self.next_time(true);
        // The key file write (and its fsyncs) runs on the blocking pool, not on a tokio worker.
        let rotated = self.keystore(move |k, ws| k.rotate(ws, time)).await?;
        let previous = std::mem::replace(&mut self.keys, rotated);
        match self.sign_rotation(expected_size, time, peer_uid).await {
            Ok(answer) => {
                // The rotation is durable in the log: if it moved the workspace's keys to sealed
                // files, its retired token keys never sign again (failures are logged there and
                // tried again at the next rotation; the rotation stands either way).
                if let Err(e) = self.keystore(|k, ws| k.destroy_retired_token_keys(ws)).await {
                    tracing::warn!(workspace = %self.ws, error = %e, "could not destroy the retired token keys");
                }
                Ok(answer)
            }
            Err(e) => {
                // Answered with an error, the rotation did not happen (the engine then goes on
                // at `expected_size` with the old key): the old key signs on, and the key file
                // says so too, with the new key kept aside for the next rotation (which uses
                // it: one key per rotation, however often it is repeated).
                self.keys = previous;
                if let Err(undo) = self.keystore(|k, ws| k.unrotate(ws)).await {
                    // The next load puts it aside (`KeyStore::load_for_log`).
                    tracing::error!(workspace = %self.ws, error = %undo, "could not put a failed rotation's key aside");
                }
                Err(e)
            }
        }
    }

    /// Installs a key record (see `KeyStore::import`) and signs on with its active key.
    async fn import(&mut self, record: Vec<u8>, peer_uid: u32) -> Result<Response> {
        let imported = self
            .keystore(move |k, ws| {
                let written = k.import(ws, &record)?;
                Ok((written, k.load(ws)?))
            })
            .await;
        let (written, keys) = crate::registry::counted_import(&self.shared, &self.ws, imported)?;
        let line = written.then(|| crate::registry::keys_imported_line(&self.ws, &keys, peer_uid)).transpose()?;
        let infos = keys.infos.clone();
        // The file holds the record now, whatever becomes of its audit line.
        self.keys = keys;
        if let Some(line) = line {
            self.shared.journal.write(None, line).await?;
        }
        Ok(Response::Keys { keys: infos })
    }

    /// Continues the log from a checkpoint another signer signed, if it extends this one's
    /// (see `crate::adopt`): journaled before the answer, like a signed group.
    async fn adopt(&mut self, a: crate::registry::AdoptArgs) -> Result<Response> {
        let checked = crate::adopt::check(
            &self.ws,
            &self.keys.infos,
            Some(&self.durable),
            &a.checkpoint,
            &a.peaks,
            &a.proof,
            a.last_leaf_ms,
        );
        match crate::registry::adopt_outcome(
            &self.shared,
            &self.ws,
            checked,
            Some(&self.durable),
            &self.keys,
            a.peer_uid,
        )? {
            Ok((adoption, line)) => {
                if let Some(state) = &adoption.state {
                    let frontier = state.frontier()?;
                    self.shared.journal.write(Some(Record::new(&self.ws, state)?), line).await?;
                    self.durable = state.clone();
                    self.frontier = frontier;
                    self.queue.grew_to(self.frontier.size());
                }
                Ok(crate::registry::adopted(&adoption))
            }
            Err((refused, line)) => {
                self.audit_refusals(line).await;
                Err(refused)
            }
        }
    }

    /// Runs `f` with the key store and this workspace's id on the blocking pool.
    async fn keystore<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::keystore::KeyStore, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (shared, ws) = (self.shared.clone(), self.ws.clone());
        tokio::task::spawn_blocking(move || f(&shared.keystore, &ws))
            .await
            .map_err(|e| SignerError::Io(std::io::Error::other(format!("key store task: {e}"))))?
    }

    /// Signs and logs the `key.rotated` leaf of the key set just rotated to, at `expected_size`.
    async fn sign_rotation(&mut self, expected_size: u64, time: u64, peer_uid: u32) -> Result<Response> {
        let bytes = rotation_body(&self.ws, expected_size, &self.keys.infos)?
            .ok_or_else(|| SignerError::Corrupt(format!("{}: the rotated key set names no rotation", self.ws)))?;
        let leaf = allowly_receipt::merkle::leaf_hash(&bytes);
        let (checkpoint, proofs) =
            // The signer's own leaf: its time (the signer's clock) is not the floor for the
            // appended receipts, which carry the service's clock.
            self.sign_group(&[leaf], self.durable.last_leaf_ms, time, Event::Rotation, Some(peer_uid), true, Vec::new())
                .await?;
        let proof = proofs.into_iter().next().unwrap_or_default();
        Ok(Response::Rotated {
            keys: self.keys.infos.clone(),
            rotation: SignedLeaf { body: bytes, log_index: expected_size, proof, checkpoint },
        })
    }

    /// The answer to a rotation at `expected_size` that is already the last signed group (its
    /// one leaf is the `key.rotated` body the current key set describes), if it is.
    fn replay_rotation(&self, expected_size: u64) -> Option<Response> {
        let d = &self.durable;
        if d.prev_size != expected_size || d.size != expected_size.checked_add(1)? || d.last_group.len() != 1 {
            return None;
        }
        let body = rotation_body(&self.ws, expected_size, &self.keys.infos).ok()??;
        let leaf = allowly_receipt::merkle::leaf_hash(&body);
        if d.last_group[0].0 != leaf {
            return None;
        }
        let mut f = d.prev_frontier().ok()?;
        let proof = f.append(&[leaf]).ok()?.proofs.into_iter().next()?;
        Some(Response::Rotated {
            keys: self.keys.infos.clone(),
            rotation: SignedLeaf { body, log_index: expected_size, proof, checkpoint: d.checkpoint.clone()? },
        })
    }
}

/// The canonical `key.rotated` receipt body of the rotation that made `keys`' active key, logged
/// at `log_index`: `None` if the active key replaced none (a workspace's first key). Everything
/// in it comes from the key set (its time is the new key's `not_before`, which is the old key's
/// `not_after`), so a lost answer can be given again byte for byte. Its id has the form the
/// service gives receipt ids (`rc_` + the index as 16 hex digits + 32 hex digits; here derived
/// from the new public key), so the service finds it by id like any other receipt.
fn rotation_body(ws: &str, log_index: u64, keys: &[allowly_signer_proto::KeyInfo]) -> Result<Option<Vec<u8>>> {
    use sha2::{Digest as _, Sha256};
    let Some(new) = keys.iter().find(|k| k.active) else { return Ok(None) };
    let Some(old) = keys.iter().find(|k| !k.active && k.not_after_ms == Some(new.not_before_ms)) else {
        return Ok(None);
    };
    let origin = log_origin(ws);
    let public = ed25519_dalek::VerifyingKey::from_bytes(&new.public_key)
        .map_err(|e| SignerError::Corrupt(format!("public key of {ws}: {e}")))?;
    let verifier = NoteVerifier::new(&origin, public)?;
    let tag: [u8; 32] =
        Sha256::new().chain_update(b"allowly/key.rotated\0").chain_update(new.public_key).finalize().into();
    let body = ReceiptBody {
        v: FORMAT_VERSION,
        id: format!("rc_{log_index:016x}{}", hex::encode(&tag[..16])),
        workspace_id: ws.to_owned(),
        authorization_id: None,
        seq: None,
        prev: None,
        log_index,
        kind: EventKind::KeyRotated,
        decision: None,
        reason: None,
        scopes: vec![],
        resource: None,
        time: ts(new.not_before_ms),
        auth_state_hash: None,
        grant: None,
        approval: None,
        escalation_id: None,
        context_hash: None,
        key: Some(RotatedKey {
            key_id: hex::encode(verifier.key_id()),
            vkey: verifier.to_vkey(),
            replaces: hex::encode(old.key_id),
        }),
        asked_authorization_id: None,
        expires_at: None,
        scope_rules: None,
    };
    Ok(Some(body.canonical_bytes()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use allowly_receipt::merkle::leaf_hash;

    #[test]
    fn sign_batch_with_and_without_proofs_signs_the_same_tree() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let leaves: Vec<Hash> = (0..37u64).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let (mut a, mut b) = (Frontier::new(), Frontier::new());
        let (note_a, proofs_a) = sign_batch(&mut a, &leaves, "o", &key, 5, true).unwrap();
        let (note_b, proofs_b) = sign_batch(&mut b, &leaves, "o", &key, 5, false).unwrap();
        assert_eq!(note_a, note_b, "Ed25519 is deterministic: same tree, same note");
        assert_eq!(proofs_a.len(), 37);
        assert!(proofs_b.is_empty());
    }
}

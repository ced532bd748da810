//! One ractor actor per workspace owns that workspace's private key and log state. Appends from
//! many callers are coalesced: an append only queues and schedules a `Flush` behind everything
//! already in the mailbox, so one signature covers every batch that arrived meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use allowly_receipt::merkle::{Frontier, Hash};
use allowly_receipt::note::{self, Checkpoint, NoteVerifier};
use allowly_receipt::types::{
    log_origin, EventKind, HexHash, ReceiptBody, RotatedKey, Timestamp, FORMAT_VERSION, TIME_EXTENSION_PREFIX,
};
use allowly_signer_proto::{Response, SignedLeaf};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::audit::{Entry, Event};
use crate::error::{Result, SignerError};
use crate::keystore::WorkspaceKeys;
use crate::state::{LogState, StateFile};
use crate::Shared;

/// Most requests that may wait in one workspace's mailbox; more are answered `Busy`.
pub const MAX_QUEUED: usize = 16_384;

/// Where an answer goes.
pub type Reply = oneshot::Sender<Result<Response>>;

/// Messages a workspace actor handles.
#[derive(Debug)]
pub enum WsMsg {
    Append {
        expected_size: u64,
        leaves: Vec<Hash>,
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
    /// Sign everything queued so far (sent by the actor to itself).
    Flush,
}

#[derive(Debug)]
struct PendingAppend {
    expected_size: u64,
    leaves: Vec<Hash>,
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
    file: StateFile,
    pending: Vec<PendingAppend>,
    flush_scheduled: bool,
    shared: Arc<Shared>,
    queued: Arc<AtomicUsize>,
}

/// Start-up arguments: what the registry loaded from disk.
#[derive(Debug)]
pub struct WsArgs {
    pub ws: String,
    pub keys: WorkspaceKeys,
    pub file: StateFile,
    pub durable: LogState,
    pub shared: Arc<Shared>,
    pub queued: Arc<AtomicUsize>,
}

/// The actor type.
#[derive(Debug)]
pub struct WorkspaceActor;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

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
            file: a.file,
            pending: Vec::new(),
            flush_scheduled: false,
            shared: a.shared,
            queued: a.queued,
        };
        s.audit(Event::Resumed, None, None)?;
        s.shared.metrics.workspaces_loaded.inc();
        Ok(s)
    }

    async fn handle(&self, myself: ActorRef<WsMsg>, msg: WsMsg, s: &mut WsState) -> Result<(), ActorProcessingErr> {
        match msg {
            WsMsg::Append { expected_size, leaves, peer_uid, reply } => {
                s.pending.push(PendingAppend { expected_size, leaves, peer_uid, reply });
                if !s.flush_scheduled {
                    s.flush_scheduled = true;
                    // Lands behind every message already queued: they all join this signature.
                    myself.send_message(WsMsg::Flush)?;
                }
            }
            WsMsg::Flush => {
                s.flush_scheduled = false;
                s.flush();
            }
            WsMsg::Rotate { expected_size, peer_uid, reply } => {
                s.dequeued();
                // Appends queued before the rotation are signed by the old key first.
                s.flush();
                let _ = reply.send(s.rotate(expected_size, peer_uid));
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
/// checkpoint of the new tree, and return the note with every new leaf's inclusion proof.
/// (Public so the benchmark measures exactly this code.)
pub fn sign_batch(
    f: &mut Frontier,
    leaves: &[Hash],
    origin: &str,
    key: &ed25519_dalek::SigningKey,
    time_ms: u64,
) -> Result<(String, Vec<Vec<Hash>>)> {
    let appended = f.append(leaves)?;
    let text = Checkpoint {
        origin: origin.to_owned(),
        size: f.size(),
        root: appended.root,
        extensions: vec![format!("{TIME_EXTENSION_PREFIX}{}", ts(time_ms))],
    }
    .to_text()?;
    Ok((note::sign_note(&text, origin, key)?, appended.proofs))
}

impl WsState {
    fn dequeued(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    fn audit(&self, event: Event, peer_uid: Option<u32>, detail: Option<String>) -> std::io::Result<()> {
        self.audit_at(self.durable.size, event, peer_uid, detail)
    }

    /// An audit line naming `size` as the log size it speaks of (a refusal inside a coalesced
    /// group is checked against the group's running size, not the last durable one).
    fn audit_at(&self, size: u64, event: Event, peer_uid: Option<u32>, detail: Option<String>) -> std::io::Result<()> {
        let e = Entry {
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
        };
        tokio::task::block_in_place(|| self.shared.audit.record(&e))
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

    /// Makes `next` durable (state record, then audit line). On failure nothing changes in memory.
    fn commit(&mut self, next: LogState, frontier: Frontier, event: Event, peer: Option<u32>) -> Result<()> {
        let started = Instant::now();
        tokio::task::block_in_place(|| self.file.append(&next))?;
        self.durable = next;
        self.frontier = frontier;
        self.audit(event, peer, None)?;
        self.shared.metrics.persist_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// A lost answer retried verbatim: the same leaves at the same place in the last signed
    /// group get the same checkpoint and proofs again, with no new signature.
    fn replay(&self, p: &PendingAppend) -> Option<Response> {
        let prev = self.durable.prev_frontier().ok()?;
        let group = self.durable.group();
        let offset = usize::try_from(p.expected_size.checked_sub(prev.size())?).ok()?;
        let end = offset.checked_add(p.leaves.len())?;
        if group.get(offset..end)? != p.leaves.as_slice() || prev.size() + group.len() as u64 != self.durable.size {
            return None;
        }
        let mut f = prev;
        let appended = f.append(&group).ok()?;
        Some(Response::Appended {
            old_size: p.expected_size,
            new_size: p.expected_size + p.leaves.len() as u64,
            checkpoint: self.durable.checkpoint.clone()?,
            proofs: appended.proofs.get(offset..end)?.to_vec(),
        })
    }

    fn flush(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        if batch.is_empty() {
            return;
        }
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let mut running = self.frontier.size();
        let mut accepted: Vec<(PendingAppend, u64)> = Vec::with_capacity(batch.len());
        let mut leaves: Vec<Hash> = Vec::new();
        for p in batch {
            if p.expected_size == running {
                running += p.leaves.len() as u64;
                leaves.extend_from_slice(&p.leaves);
                accepted.push((p, leaves.len() as u64));
            } else if let Some(resp) = self.replay(&p) {
                let _ = p.reply.send(Ok(resp));
            } else {
                self.shared.metrics.fork_attempts.inc();
                tracing::warn!(workspace = %self.ws, expected = p.expected_size, current = running, peer_uid = p.peer_uid, "refused an append that would fork or roll back the log");
                let _ = self.audit_at(
                    running,
                    Event::Refused,
                    Some(p.peer_uid),
                    Some(format!("expected_size {} but log has {running}", p.expected_size)),
                );
                let _ = p.reply.send(Err(SignerError::SizeMismatch { expected: p.expected_size, current: running }));
            }
        }
        if accepted.is_empty() {
            return;
        }
        let time = self.next_time(false);
        match self.sign_group(&leaves, time, Event::Checkpoint, accepted.last().map(|(p, _)| p.peer_uid)) {
            Ok((checkpoint, proofs)) => {
                let mut start = 0usize;
                for (p, end) in accepted {
                    let end = end as usize;
                    let resp = Response::Appended {
                        old_size: p.expected_size,
                        new_size: p.expected_size + p.leaves.len() as u64,
                        checkpoint: checkpoint.clone(),
                        proofs: proofs[start..end].to_vec(),
                    };
                    start = end;
                    let _ = p.reply.send(Ok(resp));
                }
            }
            Err(e) => {
                tracing::error!(workspace = %self.ws, error = %e, "signing a batch failed; nothing was released");
                for (p, _) in accepted {
                    let _ = p.reply.send(Err(SignerError::Io(std::io::Error::other("signing failed"))));
                }
            }
        }
    }

    /// Appends `leaves`, signs one checkpoint, makes it durable. Returns the note and proofs.
    fn sign_group(
        &mut self,
        leaves: &[Hash],
        time: u64,
        event: Event,
        peer: Option<u32>,
    ) -> Result<(String, Vec<Vec<Hash>>)> {
        let prev = self.frontier.clone();
        let mut next = prev.clone();
        let (checkpoint, proofs) = sign_batch(&mut next, leaves, &self.origin, self.keys.active.signing_key(), time)?;
        let state = LogState {
            size: next.size(),
            peaks: next.peaks().iter().copied().map(HexHash).collect(),
            checkpoint: Some(checkpoint.clone()),
            checkpoint_ms: time,
            prev_size: prev.size(),
            prev_peaks: prev.peaks().iter().copied().map(HexHash).collect(),
            last_group: leaves.iter().copied().map(HexHash).collect(),
        };
        self.commit(state, next, event, peer)?;
        let m = &self.shared.metrics;
        m.checkpoints_signed.inc();
        m.leaves_signed.inc_by(leaves.len() as u64);
        m.leaves_per_signature.observe(leaves.len() as f64);
        Ok((checkpoint, proofs))
    }

    /// Rotates the key and logs the rotation as a `key.rotated` leaf at `expected_size`, signed
    /// by the new key. The new key is durable in the key store before it signs anything.
    fn rotate(&mut self, expected_size: u64, peer_uid: u32) -> Result<Response> {
        if expected_size != self.frontier.size() {
            self.shared.metrics.fork_attempts.inc();
            let current = self.frontier.size();
            tracing::warn!(workspace = %self.ws, expected = expected_size, current, peer_uid, "refused a rotation that would fork or roll back the log");
            // Audited like a refused append: it is the same fork/rollback attempt.
            let _ = self.audit(
                Event::Refused,
                Some(peer_uid),
                Some(format!("rotation: expected_size {expected_size} but log has {current}")),
            );
            return Err(SignerError::SizeMismatch { expected: expected_size, current });
        }
        let time = self.next_time(true);
        let old_id = hex::encode(self.keys.active_key_id());
        let keys = tokio::task::block_in_place(|| self.shared.keystore.rotate(&self.ws, time))?;
        self.keys = keys;
        let verifier = NoteVerifier::new(&self.origin, self.keys.active.verifying_key())?;
        let body = ReceiptBody {
            v: FORMAT_VERSION,
            id: format!("rcpt_keyrot_{expected_size}"),
            workspace_id: self.ws.clone(),
            authorization_id: None,
            seq: None,
            prev: None,
            log_index: expected_size,
            kind: EventKind::KeyRotated,
            decision: None,
            reason: None,
            scopes: vec![],
            resource: None,
            time: ts(time),
            auth_state_hash: None,
            grant: None,
            approval: None,
            escalation_id: None,
            context_hash: None,
            key: Some(RotatedKey {
                key_id: hex::encode(verifier.key_id()),
                vkey: verifier.to_vkey(),
                replaces: old_id,
            }),
        };
        let bytes = body.canonical_bytes()?;
        let leaf = allowly_receipt::merkle::leaf_hash(&bytes);
        let (checkpoint, proofs) = self.sign_group(&[leaf], time, Event::Rotation, Some(peer_uid))?;
        let proof = proofs.into_iter().next().unwrap_or_default();
        Ok(Response::Rotated {
            keys: self.keys.infos.clone(),
            rotation: SignedLeaf { body: bytes, log_index: expected_size, proof, checkpoint },
        })
    }
}

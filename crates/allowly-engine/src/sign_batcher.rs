//! Signing rounds of many workspaces in one signer request (`AppendMany`).
//!
//! Why. Each workspace's pipeline task signs its own rounds (one checkpoint per workspace per
//! round: the receipt contract), but with thousands of workspaces each round carries a few
//! receipts, and a signer request cost about the same per request whatever it carried: a
//! frame written and read, decoded, dispatched and answered in both processes (ninth session's
//! profile at 10,000 workspaces: ~6 µs of signer CPU per check, against ~2 with 8 workspaces).
//! So the rounds that are ready at once travel together.
//!
//! How. A round hands its append to [`SignBatcher::append`] and waits for its own result, as
//! it waited for `append_batch`. One task takes the queued appends: as soon as one of
//! [`IN_FLIGHT`] request slots is free (and after one yield, so the rounds woken at the same
//! tick are queued too) it sends everything queued meanwhile (up to the
//! protocol's limits), so nothing waits for a timer — under light load a request carries one
//! round, and the more rounds arrive while requests are out, the more the next one carries.
//! The queue is bounded ([`QUEUE`]): a round that finds it full waits (back pressure; its own
//! `signer_timeout` still bounds it), nothing is dropped. A round that stopped waiting (its
//! timeout) is left out of the next request. A failure of the whole request (timeout, lost
//! connection) is every round's failure in it, exactly as if each had sent its own; one
//! workspace's refusal is its own result only. A signer that does not know `AppendMany`
//! (`UnknownKind`: an older external signer) is sent one `AppendBatch` per round from then on.
//!
//! The checkpoints a request brings back are opened here, together: each round hands over the
//! keys it expects its checkpoint to be signed by, and one batched Ed25519 check covers every
//! checkpoint of the request (`allowly_receipt::note_batch`: about half the CPU of one strict
//! check each, from 8 on; the checks were 7–12 % of the server at 10,000 workspaces). A round
//! gets its checkpoint opened, or `None` when it did not open with those keys (a rotation's new
//! key, a fault): the round then opens it itself, strictly, as it always did, and decides.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use allowly_receipt::note::{Checkpoint, NoteVerifier};
use allowly_receipt::note_batch::{open_checkpoints, NoteToOpen};
use allowly_signer_proto::client::{AppendOutcome, ClientError, SignerClient};
use allowly_signer_proto::{Append, ErrorCode, MAX_BATCH_BODY_BYTES, MAX_BATCH_LEAVES, MAX_MANY_APPENDS};
use prometheus::{Histogram, IntGauge};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Signer requests carrying rounds at once. Two: one is written and signed while the next
/// fills; more would split the rounds ready at one moment over more requests.
const IN_FLIGHT: usize = 2;
/// Rounds waiting for a request. Far above what two requests carry; a round waits for room.
const QUEUE: usize = 4 * MAX_MANY_APPENDS;

type Reply = oneshot::Sender<Result<Signed, ClientError>>;

/// What the signer answered a round, and its checkpoint opened with the round's keys.
#[derive(Debug)]
pub(crate) struct Signed {
    pub out: AppendOutcome,
    /// The checkpoint, verified and parsed with the round's keys and origin; `None` if it did
    /// not open with them (or was not checked here: an older signer's `AppendBatch`).
    pub opened: Option<Checkpoint>,
}

/// The log a round's checkpoint must belong to and the keys it must be signed by.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    pub origin: Arc<str>,
    pub keys: Arc<[NoteVerifier]>,
}

struct Item {
    append: Append,
    expect: Expect,
    bytes: usize,
    reply: Reply,
}

/// Sends signing rounds to the signer, many workspaces per request (see the module docs).
#[derive(Debug)]
pub(crate) struct SignBatcher {
    tx: mpsc::Sender<Item>,
    queued: IntGauge,
}

impl SignBatcher {
    /// Starts the sending task (it ends when the batcher is dropped). `per_request` observes
    /// how many rounds each request carried, `queued` counts the rounds waiting for one.
    pub fn start(signer: SignerClient, per_request: Histogram, queued: IntGauge) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(signer, rx, per_request, queued.clone()));
        Self { tx, queued }
    }

    /// Appends `bodies` at `expected_size` of `workspace_id`'s log: what
    /// [`SignerClient::append_batch`] answers, sent together with other workspaces' rounds,
    /// with the checkpoint opened as `expect` says if it can be.
    pub async fn append(
        &self,
        workspace_id: String,
        expected_size: u64,
        bodies: Vec<Vec<u8>>,
        expect: Expect,
    ) -> Result<Signed, ClientError> {
        let bytes = bodies.iter().map(Vec::len).sum();
        let (reply, rx) = oneshot::channel();
        let item = Item { append: Append { workspace_id, expected_size, bodies }, expect, bytes, reply };
        // Room first, then the item and its count together: a round that gives up while it
        // waits for room (its timeout) leaves nothing queued and nothing counted.
        // Closed only once the task is gone (engine dropped): as a lost connection.
        let Ok(room) = self.tx.reserve().await else { return Err(ClientError::Disconnected) };
        self.queued.inc();
        room.send(item);
        rx.await.unwrap_or(Err(ClientError::Disconnected))
    }
}

async fn run(signer: SignerClient, mut rx: mpsc::Receiver<Item>, per_request: Histogram, queued: IntGauge) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let legacy = Arc::new(AtomicBool::new(false));
    let mut carried: Option<Item> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        // Waiting for a slot is what lets the queue fill: the next request takes all of it.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        // Rounds woken together (a tick of paced slots, `pace.rs`) are still being polled when
        // the first one's item wakes this task, which would then run next and send it nearly
        // alone: yield once so the tasks already woken queue their rounds first.
        tokio::task::yield_now().await;
        let mut batch = Batch::default();
        batch.push(first);
        while batch.items.len() < MAX_MANY_APPENDS {
            let Ok(item) = rx.try_recv() else { break };
            if !batch.fits(&item) {
                carried = Some(item);
                break;
            }
            batch.push(item);
        }
        queued.sub(batch.items.len() as i64);
        // Rounds that gave up waiting (their timeout) are not sent: nothing would read the
        // answer, and a repeat of the round may be queued already.
        batch.items.retain(|i| !i.reply.is_closed());
        if batch.items.is_empty() {
            continue;
        }
        per_request.observe(batch.items.len() as f64);
        let (signer, legacy) = (signer.clone(), legacy.clone());
        tokio::spawn(async move {
            send(&signer, &legacy, batch.items).await;
            drop(slot);
        });
    }
}

/// The rounds of one request, within the protocol's limits for an `AppendMany`.
#[derive(Default)]
struct Batch {
    items: Vec<Item>,
    workspaces: HashSet<String>,
    leaves: usize,
    bytes: usize,
}

impl Batch {
    /// Whether `item` may join: a workspace at most once (a round given up on may still be
    /// queued beside its repeat), and the request's leaves and body bytes within their limits.
    /// The first item always fits (a round is within one `AppendBatch`'s limits).
    fn fits(&self, item: &Item) -> bool {
        !self.workspaces.contains(&item.append.workspace_id)
            && self.leaves + item.append.bodies.len() <= MAX_BATCH_LEAVES
            && self.bytes + item.bytes <= MAX_BATCH_BODY_BYTES
    }

    fn push(&mut self, item: Item) {
        self.leaves += item.append.bodies.len();
        self.bytes += item.bytes;
        self.workspaces.insert(item.append.workspace_id.clone());
        self.items.push(item);
    }
}

/// One request for `items`, each answered with its own result.
async fn send(signer: &SignerClient, legacy: &AtomicBool, items: Vec<Item>) {
    if !legacy.load(Ordering::Relaxed) {
        let (mut appends, mut expects, mut replies) = (Vec::new(), Vec::new(), Vec::new());
        for i in items {
            appends.push(i.append);
            expects.push(i.expect);
            replies.push(i.reply);
        }
        match signer.append_many(appends).await {
            Ok(results) => {
                let mut opened = open_all(&results, &expects).into_iter();
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result.map(|out| Signed { opened: opened.next().flatten(), out }));
                }
            }
            Err(e) => {
                let unknown = matches!(&e, ClientError::Remote(r) if r.code == ErrorCode::UnknownKind);
                if unknown {
                    tracing::warn!("the signer does not know AppendMany (an older signer): one request per signing round from now on");
                    legacy.store(true, Ordering::Relaxed);
                }
                for reply in replies {
                    // Nothing was done; `Busy` has the rounds tried again at once (their
                    // bodies went with the request), and from then on one by one.
                    let _ = reply.send(Err(if unknown { ClientError::Busy } else { e.duplicate() }));
                }
            }
        }
        return;
    }
    // Each round in an `AppendBatch` of its own, concurrently.
    let mut calls = tokio::task::JoinSet::new();
    for Item { append: a, reply, .. } in items {
        let signer = signer.clone();
        calls.spawn(async move {
            let out = signer.append_batch(a.workspace_id, a.expected_size, a.bodies).await;
            let _ = reply.send(out.map(|out| Signed { out, opened: None }));
        });
    }
    while calls.join_next().await.is_some() {}
}

/// Opens the checkpoint of every successful result with its round's [`Expect`], all in one
/// batch: one entry per result, in order (`None` for a failed round or a checkpoint that did
/// not open).
fn open_all(results: &[Result<AppendOutcome, ClientError>], expects: &[Expect]) -> Vec<Option<Checkpoint>> {
    let notes: Vec<NoteToOpen<'_>> = results
        .iter()
        .zip(expects)
        .filter_map(|(r, e)| r.as_ref().ok().map(|out| (out.checkpoint.as_str(), &*e.origin, &*e.keys)))
        .collect();
    let mut opened = open_checkpoints(&notes).into_iter();
    results.iter().map(|r| r.as_ref().ok().and_then(|_| opened.next()?.ok())).collect()
}

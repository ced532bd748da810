//! Async client: one multiplexed connection to the signer, shared by all
//! callers.
//!
//! ```no_run
//! # async fn demo(receipt_body_at_42: Vec<u8>) -> Result<(), allowly_signer_proto::client::ClientError> {
//! use allowly_signer_proto::client::{ClientError, ClientOptions, SignerClient};
//! use allowly_signer_proto::ErrorCode;
//!
//! let signer = SignerClient::new("/run/allowly/signer.sock".into(), ClientOptions::default());
//! match signer.append_batch("acme", 42, vec![receipt_body_at_42]).await {
//!     Ok(appended) => assert_eq!(appended.new_size, 43),
//!     Err(ClientError::Remote(e)) if e.code == ErrorCode::SizeMismatch => {
//!         // Someone else appended first: e.current_size is the log's size.
//!     }
//!     Err(ClientError::Remote(e)) if e.code == ErrorCode::ReceiptRefused => {
//!         // The body is not receipt 42 of workspace acme: nothing was signed.
//!     }
//!     Err(other) => return Err(other),
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! * [`SignerClient`] is a cheap `Clone` (an `Arc`). It connects lazily on
//!   the first call and keeps one Unix-socket connection for all callers.
//! * Each call takes an in-flight permit, encodes its frame, registers a
//!   `oneshot` sender under a fresh request id, and hands the frame to the
//!   connection's writer task through a bounded channel. The reader task
//!   decodes responses and routes each to the sender registered under its id;
//!   responses may come back in any order.
//! * Responses for ids nobody waits for (timed out, cancelled, duplicated)
//!   are dropped.
//! * When the connection breaks (EOF, I/O error, unaddressable frame), every
//!   in-flight call fails with [`ClientError::Disconnected`] and the next
//!   call reconnects.
//!
//! # Bounds (nothing queues without limit)
//!
//! * At most [`ClientOptions::max_in_flight`] calls are outstanding; one more
//!   **waits** for a slot (back pressure, not failure: a full pipe to a
//!   healthy signer is load, not an outage). Each wait is counted in
//!   [`SignerClient::waits_total`], so callers can export it as a metric.
//! * Each call (waiting for a slot + enqueue + waiting for the answer) is
//!   bounded by [`ClientOptions::request_timeout`], measured from the start
//!   of the call; on expiry the call fails with [`ClientError::Timeout`] and
//!   its slot is removed.
//! * [`ClientError::Busy`] means the signer itself answered `Busy` (a
//!   workspace's queue in the signer is over its cap), never a local limit.
//!   It is back pressure, not an outage: the signer answered, nothing was
//!   done, and the call may be retried after a pause. A signer that holds
//!   all the request bytes it may stops reading the socket instead; calls
//!   then wait (within `request_timeout`) like calls waiting for a slot.
//! * Connecting is bounded by [`ClientOptions::connect_timeout`] and happens
//!   once at a time; callers arriving meanwhile wait for that attempt. So a
//!   call takes at most about `connect_timeout + request_timeout`.
//! * After a failed connect, further connects are refused for a backoff
//!   (doubling from [`ClientOptions::reconnect_backoff_min`] up to
//!   [`ClientOptions::reconnect_backoff_max`]); calls in that window fail at
//!   once with [`ClientError::Unavailable`] instead of hammering a dead
//!   signer. A successful connect resets the backoff. Reconnecting after a
//!   connection that *was* established and then broke is immediate.
//!
//! # Outcome of a timed-out or disconnected call
//!
//! `Timeout` and `Disconnected` do not say whether the signer acted on the
//! request. For `AppendBatch` this is safe to retry with the same
//! `expected_size`: the append is compare-and-swap, so a duplicate is
//! answered with `SizeMismatch` and `current_size`, never applied twice.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};

use crate::message::{Append, AppendResult, Hash, KeyInfo, Request, Response, SignedLeaf};
use crate::{decode_response, encode_request, read_frame, ErrorCode, ProtoError};

/// Tuning of a [`SignerClient`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Bound on one call: waiting for an in-flight slot, enqueueing the frame
    /// and waiting for the answer (connecting is bounded separately).
    pub request_timeout: Duration,
    /// Bound on one connect attempt.
    pub connect_timeout: Duration,
    /// Maximum outstanding calls; more wait for a slot (within
    /// `request_timeout`). Clamped to at least 1.
    pub max_in_flight: usize,
    /// Backoff after the first failed connect.
    pub reconnect_backoff_min: Duration,
    /// Cap on the backoff, which doubles with each consecutive failure.
    pub reconnect_backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            max_in_flight: 1024,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
        }
    }
}

/// Why a call failed: the crate's one error type, [`ProtoError`], under the name its callers
/// know. Besides the codec's variants (a request that breaks a protocol limit fails as
/// [`ProtoError::InvalidRequest`] and an answer that does not decode as
/// [`ProtoError::BadResponse`], each wrapping the codec's error), a call can fail with the
/// client's own: `Connect`, `Unavailable`, `Disconnected`, `Timeout`, `Busy`, `Remote` and
/// `UnexpectedResponse`.
pub type ClientError = ProtoError;

/// Answer to [`SignerClient::rotate_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotateOutcome {
    /// All keys after the rotation.
    pub keys: Vec<KeyInfo>,
    /// The logged `key.rotated` receipt.
    pub rotation: SignedLeaf,
}

/// Answer to [`SignerClient::append_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Log size before the batch.
    pub old_size: u64,
    /// Log size after the batch.
    pub new_size: u64,
    /// Signed note for `new_size`.
    pub checkpoint: String,
    /// From [`SignerClient::append_batch_with_proofs`]: one inclusion proof
    /// per leaf, in order (not verified here). From
    /// [`SignerClient::append_batch`]: empty.
    pub proofs: Vec<Vec<Hash>>,
}

/// Answer to [`SignerClient::latest_checkpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Current log size.
    pub size: u64,
    /// Signed note, if any.
    pub checkpoint: Option<String>,
}

/// Answer to [`SignerClient::adopt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptOutcome {
    /// The signer's log size now (the note's): its next append is at this size.
    pub size: u64,
    /// The root at that size (the note's).
    pub root: Hash,
    /// Whether the signer's state moved (`false`: it was at the note already).
    pub changed: bool,
}

/// Client for the signer socket. Clone freely: clones share one connection.
#[derive(Clone)]
pub struct SignerClient {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    opts: ClientOptions,
    in_flight: Semaphore,
    max_in_flight: usize,
    /// Calls that found every in-flight slot taken and had to wait.
    waits: AtomicU64,
    next_id: AtomicU64,
    /// Async mutex: held across a connect so only one attempt runs at a time.
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    conn: Option<Arc<Conn>>,
    consecutive_failures: u32,
    retry_at: Option<Instant>,
}

/// Handle to one live connection.
struct Conn {
    /// Frames for the writer task. Bounded; each sender holds an in-flight
    /// permit, so this queue is at most about `max_in_flight` deep.
    frames: mpsc::Sender<Vec<u8>>,
    waiters: Arc<Waiters>,
}

type Reply = Result<Response, ClientError>;

/// Calls waiting for an answer on one connection, by request id.
#[derive(Default)]
struct Waiters {
    state: StdMutex<WaitState>,
}

#[derive(Default)]
struct WaitState {
    by_id: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the connection is dead; no registration succeeds after it.
    closed: bool,
}

impl Waiters {
    /// The lock is never held across a panic point, so poisoning cannot
    /// happen; recover the guard rather than unwrap anyway.
    fn lock(&self) -> MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, id: u64, tx: oneshot::Sender<Reply>) -> Result<(), ClientError> {
        let mut st = self.lock();
        if st.closed {
            return Err(ClientError::Disconnected);
        }
        st.by_id.insert(id, tx);
        Ok(())
    }

    fn complete(&self, id: u64, reply: Reply) {
        let tx = self.lock().by_id.remove(&id);
        if let Some(tx) = tx {
            // The caller may have just given up; nothing to do then.
            let _ = tx.send(reply);
        }
    }

    fn remove(&self, id: u64) {
        self.lock().by_id.remove(&id);
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Marks the connection dead and fails every waiter. The flag and the
    /// drain happen under one lock, so a concurrent `register` either sees
    /// `closed` or is drained here: no call can be left waiting.
    fn close(&self) {
        let drained = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.by_id)
        };
        for tx in drained.into_values() {
            let _ = tx.send(Err(ClientError::Disconnected));
        }
    }
}

/// Removes a call's slot however the call ends (answer, timeout, or the
/// caller's future being dropped), so the map cannot leak entries.
struct SlotGuard<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.waiters.remove(self.id);
    }
}

/// Fails all waiters when the connection task ends for any reason,
/// including being dropped at runtime shutdown.
struct CloseOnDrop(Arc<Waiters>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl fmt::Debug for SignerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignerClient")
            .field("path", &self.inner.path)
            .field("opts", &self.inner.opts)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// Frames written per flush at most, so one busy writer still flushes
/// regularly.
const WRITE_BATCH: usize = 64;
/// A read buffer grown beyond this by a large frame is released afterwards.
const READ_BUF_KEEP: usize = 1 << 20;

impl SignerClient {
    /// Creates a client for the socket at `path`. Does not connect: the first
    /// call does.
    pub fn new(path: PathBuf, opts: ClientOptions) -> Self {
        let max_in_flight = opts.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                path,
                in_flight: Semaphore::new(max_in_flight),
                max_in_flight,
                waits: AtomicU64::new(0),
                opts,
                next_id: AtomicU64::new(1),
                slot: Mutex::new(Slot::default()),
            }),
        }
    }

    /// Number of calls currently outstanding.
    pub fn in_flight(&self) -> usize {
        self.inner.max_in_flight.saturating_sub(self.inner.in_flight.available_permits())
    }

    /// Calls so far that found all [`ClientOptions::max_in_flight`] slots
    /// taken and waited for one. A cheap counter (one atomic load) meant to
    /// be exported as a metric: a steadily rising value means the signer
    /// pipe is the bottleneck.
    pub fn waits_total(&self) -> u64 {
        self.inner.waits.load(Ordering::Relaxed)
    }

    /// Sends `req` and waits for its answer.
    ///
    /// Never returns `Ok(Response::Error(_))`: an error answer becomes
    /// [`ClientError::Remote`] (or [`ClientError::Busy`] for
    /// [`ErrorCode::Busy`](crate::ErrorCode::Busy)). The response kind is
    /// checked against the request (e.g. `Ping` must get `Pong`), so `Ok` is
    /// always a matching answer.
    pub async fn call(&self, req: Request) -> Result<Response, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        // Before waiting for anything: a request the signer would refuse
        // fails at once, and never takes a slot.
        encode_request(id, &req, &mut frame).map_err(|e| ClientError::InvalidRequest(Box::new(e)))?;
        let limit = self.inner.opts.request_timeout;
        // One deadline for the whole call, so waiting for a slot cannot
        // stretch a call past `request_timeout`. `None`: too far away to
        // represent, i.e. no limit.
        let deadline = Instant::now().checked_add(limit);
        let _permit = match self.inner.in_flight.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.inner.waits.fetch_add(1, Ordering::Relaxed);
                let acquire = self.inner.in_flight.acquire();
                let permit = match deadline {
                    Some(d) => timeout_at(d, acquire).await.map_err(|_| ClientError::Timeout(limit))?,
                    None => acquire.await,
                };
                // The semaphore is never closed; map rather than unwrap.
                permit.map_err(|_| ClientError::Disconnected)?
            }
        };

        let conn = self.connection().await?;
        let (tx, rx) = oneshot::channel();
        conn.waiters.register(id, tx)?;
        let _slot = SlotGuard { waiters: &conn.waiters, id };
        let exchange = async {
            conn.frames.send(frame).await.map_err(|_| ClientError::Disconnected)?;
            // A dropped sender means the connection task is gone.
            rx.await.unwrap_or(Err(ClientError::Disconnected))
        };
        // Connecting is bounded on its own (connect_timeout) and does not eat
        // into the exchange's share of the deadline.
        let resp = match deadline {
            Some(d) => timeout_at(d, exchange).await.map_err(|_| ClientError::Timeout(limit))??,
            None => exchange.await?,
        };
        check_answer(&req, resp)
    }

    /// `Ping` → `Pong`.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.call(Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected("Ping", &other)),
        }
    }

    /// Creates the workspace's first signing key; returns all its keys.
    pub async fn create_key(&self, workspace_id: impl Into<String>) -> Result<Vec<KeyInfo>, ClientError> {
        let req = Request::CreateKey { workspace_id: workspace_id.into() };
        match self.call(req).await? {
            Response::Keys { keys } => Ok(keys),
            other => Err(unexpected("CreateKey", &other)),
        }
    }

    /// Lists the workspace's keys.
    pub async fn list_keys(&self, workspace_id: impl Into<String>) -> Result<Vec<KeyInfo>, ClientError> {
        let req = Request::ListKeys { workspace_id: workspace_id.into() };
        match self.call(req).await? {
            Response::Keys { keys } => Ok(keys),
            other => Err(unexpected("ListKeys", &other)),
        }
    }

    /// Rotates the workspace's key.
    pub async fn rotate_key(
        &self,
        workspace_id: impl Into<String>,
        expected_size: u64,
    ) -> Result<RotateOutcome, ClientError> {
        let req = Request::RotateKey { workspace_id: workspace_id.into(), expected_size };
        match self.call(req).await? {
            Response::Rotated { keys, rotation } => Ok(RotateOutcome { keys, rotation }),
            other => Err(unexpected("RotateKey", &other)),
        }
    }

    /// Appends the receipt `bodies` (canonical JSON) at `expected_size..`
    /// and returns the signed checkpoint, without inclusion proofs
    /// (`AppendOutcome::proofs` is empty). The signer hashes the bodies
    /// itself and refuses the batch (`ReceiptRefused`) unless each is a
    /// receipt of that workspace at its index.
    ///
    /// Checks that the answer is consistent with the request (`old_size ==
    /// expected_size`, `new_size == old_size + bodies.len()`, no proofs).
    pub async fn append_batch(
        &self,
        workspace_id: impl Into<String>,
        expected_size: u64,
        bodies: Vec<Vec<u8>>,
    ) -> Result<AppendOutcome, ClientError> {
        self.append(workspace_id.into(), expected_size, bodies, false).await
    }

    /// [`Self::append_batch`], with one inclusion proof per leaf in the
    /// answer (checked to be present; the proofs themselves are not verified
    /// here).
    pub async fn append_batch_with_proofs(
        &self,
        workspace_id: impl Into<String>,
        expected_size: u64,
        bodies: Vec<Vec<u8>>,
    ) -> Result<AppendOutcome, ClientError> {
        self.append(workspace_id.into(), expected_size, bodies, true).await
    }

    async fn append(
        &self,
        workspace_id: String,
        expected_size: u64,
        bodies: Vec<Vec<u8>>,
        want_proofs: bool,
    ) -> Result<AppendOutcome, ClientError> {
        let n = bodies.len();
        let req = Request::AppendBatch { workspace_id, expected_size, bodies, want_proofs };
        match self.call(req).await? {
            Response::Appended { old_size, new_size, checkpoint, proofs } => {
                let consistent = old_size == expected_size
                    && u64::try_from(n).ok().and_then(|n| old_size.checked_add(n)) == Some(new_size)
                    && proofs.len() == if want_proofs { n } else { 0 };
                if !consistent {
                    return Err(ClientError::UnexpectedResponse {
                        request: "AppendBatch",
                        detail: format!(
                            "sent {n} leaves at {expected_size}, got old_size {old_size}, \
                             new_size {new_size}, {} proofs",
                            proofs.len()
                        ),
                    });
                }
                Ok(AppendOutcome { old_size, new_size, checkpoint, proofs })
            }
            other => Err(unexpected("AppendBatch", &other)),
        }
    }

    /// `AppendMany`: the appends of several workspaces (each at most once) in one request.
    /// `Ok` holds one result per append, in order, each what an [`Self::append_batch`] of
    /// its own would have returned; `Err` is a failure of the whole request (nothing is known
    /// of any append then, as with a failed `append_batch`). A signer too old for the
    /// request answers `Err(Remote)` with [`ErrorCode::UnknownKind`].
    pub async fn append_many(
        &self,
        appends: Vec<Append>,
    ) -> Result<Vec<Result<AppendOutcome, ClientError>>, ClientError> {
        let sent: Vec<(u64, usize)> = appends.iter().map(|a| (a.expected_size, a.bodies.len())).collect();
        let results = match self.call(Request::AppendMany { appends }).await? {
            Response::AppendedMany { results } if results.len() == sent.len() => results,
            Response::AppendedMany { results } => {
                return Err(ClientError::UnexpectedResponse {
                    request: "AppendMany",
                    detail: format!("sent {} appends, got {} results", sent.len(), results.len()),
                })
            }
            other => return Err(unexpected("AppendMany", &other)),
        };
        Ok(results
            .into_iter()
            .zip(sent)
            .map(|(r, (expected_size, n))| match r {
                AppendResult::Appended { old_size, new_size, checkpoint } => {
                    if old_size == expected_size
                        && u64::try_from(n).ok().and_then(|n| old_size.checked_add(n)) == Some(new_size)
                    {
                        Ok(AppendOutcome { old_size, new_size, checkpoint, proofs: Vec::new() })
                    } else {
                        Err(ClientError::UnexpectedResponse {
                            request: "AppendMany",
                            detail: format!(
                                "sent {n} leaves at {expected_size}, got old_size {old_size}, new_size {new_size}"
                            ),
                        })
                    }
                }
                AppendResult::Error(e) if e.code == ErrorCode::Busy => Err(ClientError::Busy),
                AppendResult::Error(e) => Err(ClientError::Remote(e)),
            })
            .collect())
    }

    /// Latest checkpoint of the workspace's log.
    pub async fn latest_checkpoint(&self, workspace_id: impl Into<String>) -> Result<CheckpointInfo, ClientError> {
        let req = Request::LatestCheckpoint { workspace_id: workspace_id.into() };
        match self.call(req).await? {
            Response::Checkpoint { size, checkpoint } => Ok(CheckpointInfo { size, checkpoint }),
            other => Err(unexpected("LatestCheckpoint", &other)),
        }
    }

    /// The signer's own metrics, Prometheus text format.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        match self.call(Request::Metrics).await? {
            Response::MetricsText { text } => Ok(text),
            other => Err(unexpected("Metrics", &other)),
        }
    }

    /// `Snapshot`: the signer writes a consistent copy of its state (never the master key) into
    /// `snapshots/<name>/` of its own directory. `(workspaces, journal bytes, audit bytes)`.
    pub async fn snapshot(&self, name: impl Into<String>) -> Result<(u64, u64, u64), ClientError> {
        match self.call(Request::Snapshot { name: name.into() }).await? {
            Response::Snapshotted { workspaces, journal_bytes, audit_bytes } => {
                Ok((workspaces, journal_bytes, audit_bytes))
            }
            other => Err(unexpected("Snapshot", &other)),
        }
    }

    /// `LogSizes`, every page: the durable log size of every workspace the signer knows.
    pub async fn log_sizes(&self) -> Result<Vec<(String, u64)>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            match self.call(Request::LogSizes { after: after.take() }).await? {
                Response::LogSizes { sizes, more } => {
                    let last = sizes.last().map(|(ws, _)| ws.clone());
                    all.extend(sizes);
                    match (more, last) {
                        (true, Some(last)) => after = Some(last),
                        _ => return Ok(all),
                    }
                }
                other => return Err(unexpected("LogSizes", &other)),
            }
        }
    }

    /// `ExportKeys`: the workspace's key record as the signer stores it (public keys, windows,
    /// sealed seeds or token object ids; never a private key in the clear).
    pub async fn export_keys(&self, workspace_id: impl Into<String>) -> Result<Vec<u8>, ClientError> {
        match self.call(Request::ExportKeys { workspace_id: workspace_id.into() }).await? {
            Response::KeyRecord { record } => Ok(record),
            other => Err(unexpected("ExportKeys", &other)),
        }
    }

    /// `ImportKeys`: installs a key record another signer exported (same master key or token);
    /// returns the workspace's keys after it. A record the signer refuses is
    /// `Err(Remote)` with [`ErrorCode::KeyRecordRefused`].
    pub async fn import_keys(
        &self,
        workspace_id: impl Into<String>,
        record: Vec<u8>,
    ) -> Result<Vec<KeyInfo>, ClientError> {
        match self.call(Request::ImportKeys { workspace_id: workspace_id.into(), record }).await? {
            Response::Keys { keys } => Ok(keys),
            other => Err(unexpected("ImportKeys", &other)),
        }
    }

    /// `Adopt`: the signer continues the workspace's log from `checkpoint` (a signed note) whose
    /// tree has the frontier `peaks`, `proof` proving it extends the signer's own log (empty
    /// when the signer has none, or the same size). `last_leaf_ms`: the time of the note's last
    /// receipt. The
    /// answer's size and root are the note's (the caller, which parsed the note, can compare).
    pub async fn adopt(
        &self,
        workspace_id: impl Into<String>,
        checkpoint: String,
        peaks: Vec<Hash>,
        proof: Vec<Hash>,
        last_leaf_ms: u64,
    ) -> Result<AdoptOutcome, ClientError> {
        let req = Request::Adopt { workspace_id: workspace_id.into(), checkpoint, peaks, proof, last_leaf_ms };
        match self.call(req).await? {
            Response::Adopted { size, root, changed } => Ok(AdoptOutcome { size, root, changed }),
            other => Err(unexpected("Adopt", &other)),
        }
    }

    /// The live connection, connecting if there is none.
    async fn connection(&self) -> Result<Arc<Conn>, ClientError> {
        let mut slot = self.inner.slot.lock().await;
        if let Some(conn) = &slot.conn {
            if !conn.waiters.is_closed() {
                return Ok(Arc::clone(conn));
            }
        }
        slot.conn = None;
        if let Some(at) = slot.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(ClientError::Unavailable { retry_after: at - now });
            }
        }
        let opts = &self.inner.opts;
        let attempt = timeout(opts.connect_timeout, UnixStream::connect(&self.inner.path)).await;
        let err = match attempt {
            Ok(Ok(stream)) => {
                slot.consecutive_failures = 0;
                slot.retry_at = None;
                let conn = spawn_connection(stream, self.inner.max_in_flight);
                slot.conn = Some(Arc::clone(&conn));
                return Ok(conn);
            }
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", opts.connect_timeout),
            ),
        };
        slot.consecutive_failures = slot.consecutive_failures.saturating_add(1);
        let doublings = slot.consecutive_failures.saturating_sub(1).min(20);
        let backoff = opts.reconnect_backoff_min.saturating_mul(1 << doublings).min(opts.reconnect_backoff_max);
        // checked: a huge configured backoff must not overflow `Instant`.
        let now = Instant::now();
        slot.retry_at = now.checked_add(backoff).or_else(|| now.checked_add(Duration::from_secs(86_400)));
        Err(ClientError::Connect { path: self.inner.path.clone(), source: err })
    }
}

fn unexpected(request: &'static str, got: &Response) -> ClientError {
    ClientError::UnexpectedResponse { request, detail: format!("got {}", got.name()) }
}

/// Maps `Error` answers to [`ClientError::Remote`] and rejects answers of
/// the wrong kind.
fn check_answer(req: &Request, resp: Response) -> Result<Response, ClientError> {
    let fits = matches!(
        (req, &resp),
        (Request::Ping, Response::Pong)
            | (Request::CreateKey { .. } | Request::ListKeys { .. }, Response::Keys { .. })
            | (Request::RotateKey { .. }, Response::Rotated { .. })
            | (Request::AppendBatch { .. }, Response::Appended { .. })
            | (Request::AppendMany { .. }, Response::AppendedMany { .. })
            | (Request::LatestCheckpoint { .. }, Response::Checkpoint { .. })
            | (Request::Metrics, Response::MetricsText { .. })
            | (Request::Snapshot { .. }, Response::Snapshotted { .. })
            | (Request::LogSizes { .. }, Response::LogSizes { .. })
            | (Request::ExportKeys { .. }, Response::KeyRecord { .. })
            | (Request::ImportKeys { .. }, Response::Keys { .. })
            | (Request::Adopt { .. }, Response::Adopted { .. })
    );
    match resp {
        Response::Error(e) if e.code == ErrorCode::Busy => Err(ClientError::Busy),
        Response::Error(e) => Err(ClientError::Remote(e)),
        resp if fits => Ok(resp),
        resp => Err(unexpected(req.name(), &resp)),
    }
}

fn spawn_connection(stream: UnixStream, queue: usize) -> Arc<Conn> {
    let (rd, wr) = stream.into_split();
    let (frames, rx) = mpsc::channel(queue);
    let waiters = Arc::new(Waiters::default());
    let closer = CloseOnDrop(Arc::clone(&waiters));
    tokio::spawn(async move {
        // Whichever half stops first ends the connection; dropping the other
        // half's future closes the socket. The writer also stops once every
        // `Conn` (hence every sender) is gone, i.e. the client was dropped.
        tokio::select! {
            () = reader_loop(rd, &closer.0) => {}
            () = writer_loop(wr, rx) => {}
        }
        drop(closer);
    });
    Arc::new(Conn { frames, waiters })
}

async fn reader_loop(mut rd: OwnedReadHalf, waiters: &Waiters) {
    let mut buf = Vec::new();
    loop {
        let frame = match read_frame(&mut rd, &mut buf).await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        match decode_response(frame) {
            Ok((id, resp)) => waiters.complete(id, Ok(resp)),
            // Framing is intact, so only this call's answer is lost.
            Err(e) => match e.request_id() {
                Some(id) => waiters.complete(id, Err(ClientError::BadResponse(Box::new(e)))),
                // Nothing to route by: the signer is not speaking this
                // protocol. Drop the connection.
                None => return,
            },
        }
        if buf.capacity() > READ_BUF_KEEP {
            buf = Vec::new();
        }
    }
}

async fn writer_loop(wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut w = BufWriter::new(wr);
    while let Some(frame) = rx.recv().await {
        if w.write_all(&frame).await.is_err() {
            return;
        }
        // Coalesce whatever else is already queued into one flush.
        for _ in 1..WRITE_BATCH {
            let Ok(frame) = rx.try_recv() else { break };
            if w.write_all(&frame).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

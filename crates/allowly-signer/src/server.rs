//! The Unix-socket front of the signer: peer check, connection cap, framing within the
//! signer's byte budget, dispatch to workspace actors (`registry`).
//!
//! # What a connection may cost, and what happens at each bound
//!
//! * **Connections** (`Limits::max_connections`): each costs a task, a read buffer and up to
//!   8192 requests in flight. One more is closed as soon as it is accepted, before it is read:
//!   counted in `allowly_signer_connections_refused_total`, and logged at most once per
//!   [`REFUSAL_LOG_EVERY`] (with how many since the last line), so a client looping on connect
//!   cannot flood the log. Refusing beats queueing: a connection waiting in the listen backlog
//!   looks to its client like a signer that does not answer.
//! * **Request bytes** (`Limits::max_queued_bytes`, over all connections): the read loop reads a
//!   frame's length, then waits until the budget has that many bytes before it reads the body;
//!   they are given back once the request's answer is written. Waiting (back pressure) rather
//!   than refusing keeps the stream in order and loses nothing: the caller's writes block in
//!   the socket and its calls wait, within their timeout, as they would for a slot of their
//!   own. Every byte a request holds is counted, wherever it is — the frame buffer, a
//!   workspace's mailbox (bodies until they are hashed), its pending leaves, the answer
//!   waiting to be written — so this, not the number of connections or workspaces, bounds the
//!   signer's memory for requests. Waits are counted in
//!   `allowly_signer_backpressure_waits_total`; the bytes held are `allowly_signer_queued_bytes`.
//! * **One workspace's queue** (`registry::enqueue`): over its cap, `Busy` at once — never a
//!   wait, which would stall every other workspace sharing this connection.
//! * **Answers not read**: a peer that takes more than [`WRITE_TIMEOUT`] to read one answer is
//!   disconnected, so it cannot keep the budget forever.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allowly_signer_proto::{
    decode_request, encode_response, read_frame_body, read_frame_len, write_frame, Append, AppendResult, ErrorCode,
    ErrorReply, Request, Response,
};
use prometheus::IntGauge;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::{Result, SignerError};
use crate::registry::{adopt_unloaded, blocking, create, enqueue, import_unloaded, serialised, AdoptArgs, Queued};
use crate::workspace::WsMsg;
use crate::Shared;

/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests one connection may have in flight; the next read waits for a slot.
const MAX_IN_FLIGHT_PER_CONN: usize = 8192;
/// Answers waiting to be written on one connection.
const WRITE_QUEUE: usize = 1024;
/// A peer that takes longer than this to take one answer is disconnected (see the module docs).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// A read buffer grown past this by a large frame is given back once the frame is decoded: a
/// connection that once sent a 16 MiB frame would otherwise keep 16 MiB for good.
const READ_BUF_KEEP: usize = 1 << 20;
/// At most one warning per this long about refused connections.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Prepares the socket path: the directory must exist or be created with mode 0700, and must not
/// be writable by group or others; a stale socket file is removed.
pub fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    let dir = socket.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let meta = std::fs::metadata(dir)?;
    if meta.mode() & 0o022 != 0 || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "socket directory {} must be owned by the signer's user and not writable by others (0700, or 0710 for a separate service user)",
            dir.display()
        )));
    }
    if let Ok(m) = std::fs::symlink_metadata(socket) {
        if m.file_type().is_socket() {
            std::fs::remove_file(socket)?;
        } else {
            return Err(std::io::Error::other(format!("{} exists and is not a socket", socket.display())));
        }
    }
    UnixListener::bind(socket)
}

/// Accepts connections until `shutdown` resolves, within `Limits::max_connections`, and
/// unloads idle workspaces meanwhile (`registry::sweep`) if `Limits::idle_unload` is set.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let sweeper = shared.limits.idle_unload.map(|idle| tokio::spawn(crate::registry::sweep(shared.clone(), idle)));
    let mut refusals = Throttled::new(REFUSAL_LOG_EVERY);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let uid = match stream.peer_cred() {
                        Ok(c) => c.uid(),
                        Err(_) => { shared.metrics.peer_rejected.inc(); continue; }
                    };
                    if !shared.allowed_uids.contains(&uid) {
                        shared.metrics.peer_rejected.inc();
                        tracing::warn!(peer_uid = uid, "refused a connection from a uid that is not allowed");
                        drop(stream);
                        continue;
                    }
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        shared.metrics.connections_refused.inc();
                        if let Some(refused) = refusals.hit() {
                            tracing::warn!(
                                peer_uid = uid,
                                max_connections = shared.limits.max_connections,
                                refused_since_last_line = refused,
                                "refused a connection: the signer serves --max-connections already"
                            );
                        }
                        drop(stream);
                        continue;
                    };
                    let open = Open::new(slot, shared.metrics.connections_open.clone());
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        connection(stream, uid, shared).await;
                        drop(open);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    if let Some(s) = sweeper {
        s.abort();
    }
}

/// One served connection: its slot of `max_connections`, and its count in the open gauge.
struct Open {
    _slot: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit, gauge: IntGauge) -> Self {
        gauge.inc();
        Self { _slot: slot, gauge }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Says yes at most once per `every`, with how many times it was asked since the last yes.
#[derive(Debug)]
struct Throttled {
    every: Duration,
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    fn new(every: Duration) -> Self {
        Self { every, last: None, since: 0 }
    }

    fn hit(&mut self) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.since))
    }
}

/// Bytes of the request budget held by one request; given back when dropped.
struct Charge {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: IntGauge,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// Takes `len` bytes (one frame's) of the request budget, waiting until they are free (see the
/// module docs). `None` only if the budget is gone (never: it is not closed).
async fn charge(shared: &Shared, len: usize) -> Option<Charge> {
    // A frame is at most MAX_FRAME (16 MiB) bytes, and the budget at least that.
    let n = u32::try_from(len).ok()?;
    let permit = match shared.budget.clone().try_acquire_many_owned(n) {
        Ok(p) => p,
        Err(TryAcquireError::NoPermits) => {
            shared.metrics.backpressure_waits.inc();
            shared.budget.clone().acquire_many_owned(n).await.ok()?
        }
        Err(TryAcquireError::Closed) => return None,
    };
    let bytes = i64::from(n);
    shared.metrics.queued_bytes.add(bytes);
    Some(Charge { _permit: permit, bytes, gauge: shared.metrics.queued_bytes.clone() })
}

fn error_response(e: &SignerError) -> Response {
    let current_size = match e {
        SignerError::SizeMismatch { current, .. } | SignerError::AdoptRefused { current, .. } => Some(*current),
        _ => None,
    };
    Response::Error(ErrorReply { code: e.code(), message: e.public_message(), current_size })
}

fn outcome_label(r: &Response) -> &'static str {
    match r {
        Response::Error(e) => match e.code {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::UnknownWorkspace => "unknown_workspace",
            ErrorCode::WorkspaceExists => "workspace_exists",
            ErrorCode::SizeMismatch => "size_mismatch",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::Busy => "busy",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::ReceiptRefused => "receipt_refused",
            ErrorCode::KeyStoreNotOpen => "key_store_not_open",
            ErrorCode::TokenUnavailable => "token_unavailable",
            ErrorCode::KeyRecordRefused => "key_record_refused",
            ErrorCode::AdoptRefused => "adopt_refused",
            ErrorCode::Internal | ErrorCode::Unknown(_) => "internal",
        },
        _ => "ok",
    }
}

async fn connection(stream: UnixStream, peer_uid: u32, shared: Arc<Shared>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, Charge)>(WRITE_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some((frame, charge)) = rx.recv().await {
            match tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut wr, &frame)).await {
                Ok(Ok(())) => drop(charge),
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::warn!(peer_uid, "closing a connection whose peer does not read its answers");
                    break;
                }
            }
        }
        // Dropping `rx` gives back the budget of every answer still queued.
        let _ = wr.shutdown().await;
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONN));
    let mut buf = Vec::new();
    while !tx.is_closed() {
        let len = match tokio::time::timeout(IDLE_TIMEOUT, read_frame_len(&mut rd)).await {
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => {
                // Unreadable length prefix or oversize frame: the stream cannot be resynchronised.
                shared.metrics.bad_frames.inc();
                tracing::warn!(peer_uid, error = %e, "closing a connection after a bad frame");
                break;
            }
        };
        // Before the body is read: what waits here is a 4-byte prefix, not the frame.
        let Some(charge) = charge(&shared, len).await else { break };
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, read_frame_body(&mut rd, len, &mut buf)).await {
            Ok(Ok(f)) => f,
            Ok(Err(_)) | Err(_) => break,
        };
        let decoded = decode_request(frame);
        if buf.capacity() > READ_BUF_KEEP {
            buf = Vec::new();
        }
        let (id, req) = match decoded {
            Ok(x) => x,
            Err(e) => {
                shared.metrics.bad_frames.inc();
                match e.request_id() {
                    Some(id) => {
                        let resp =
                            Response::Error(ErrorReply { code: e.code(), message: e.to_string(), current_size: None });
                        send(&tx, id, &resp, charge).await;
                        continue;
                    }
                    None => break,
                }
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        let op = req.name();
        // Handed to its workspace actor here, in the read loop, so requests take effect in the
        // order they arrived on this connection (pipelined appends at n, n+k, ... must not be
        // reordered into SizeMismatch refusals); only the wait for the answer runs concurrently.
        let dispatched = dispatch(&shared, req, peer_uid).await;
        let (shared, tx) = (shared.clone(), tx.clone());
        tokio::spawn(async move {
            let resp = match dispatched {
                Dispatched::Now(r) => answer(r, peer_uid, op),
                Dispatched::Actor(rx) => answer(rx.await.unwrap_or(Err(SignerError::ActorGone)), peer_uid, op),
                Dispatched::Many(each) => {
                    let mut results = Vec::with_capacity(each.len());
                    for one in each {
                        let r = match one {
                            Ok(rx) => rx.await.unwrap_or(Err(SignerError::ActorGone)),
                            Err(e) => Err(e),
                        };
                        results.push(match answer(r, peer_uid, op) {
                            Response::Appended { old_size, new_size, checkpoint, .. } => {
                                AppendResult::Appended { old_size, new_size, checkpoint }
                            }
                            Response::Error(e) => AppendResult::Error(e),
                            other => AppendResult::Error(ErrorReply {
                                code: ErrorCode::Internal,
                                message: format!("an append was answered {}", other.name()),
                                current_size: None,
                            }),
                        });
                    }
                    Response::AppendedMany { results }
                }
            };
            shared.metrics.requests.with_label_values(&[op, outcome_label(&resp)]).inc();
            send(&tx, id, &resp, charge).await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// The answer to one request (or one append of an `AppendMany`); internal failures logged.
fn answer(result: Result<Response>, peer_uid: u32, op: &str) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            // The caller is told the code alone: what failed (the module's words) is logged here.
            if matches!(e.code(), ErrorCode::Internal | ErrorCode::TokenUnavailable) {
                tracing::error!(peer_uid, op, error = %e, "request failed");
            }
            error_response(&e)
        }
    }
}

/// Queues `resp` for the writer, with the budget its request holds until it is written.
async fn send(tx: &mpsc::Sender<(Vec<u8>, Charge)>, id: u64, resp: &Response, charge: Charge) {
    let mut out = Vec::new();
    if encode_response(id, resp, &mut out).is_err() {
        out.clear();
        let fallback = Response::Error(ErrorReply {
            code: ErrorCode::Internal,
            message: "answer too large to encode".into(),
            current_size: None,
        });
        if encode_response(id, &fallback, &mut out).is_err() {
            return;
        }
    }
    let _ = tx.send((out, charge)).await;
}

/// A request as dispatched: answered already, queued at its workspace actor, or (an
/// `AppendMany`) each append queued at its own workspace's actor or refused at once.
enum Dispatched {
    Now(Result<Response>),
    Actor(oneshot::Receiver<Result<Response>>),
    Many(Vec<Result<oneshot::Receiver<Result<Response>>>>),
}

async fn dispatch(shared: &Arc<Shared>, req: Request, peer_uid: u32) -> Dispatched {
    let queued = match req {
        // Pong only while keys can be used: a signer whose token is gone answers an error, so
        // the service's probe fails it closed (503) instead of queueing receipts it cannot sign.
        Request::Ping => {
            return Dispatched::Now(blocking(shared, |s| s.keystore.check()).await.map(|()| Response::Pong))
        }
        Request::Metrics => return Dispatched::Now(Ok(Response::MetricsText { text: shared.metrics.render() })),
        Request::CreateKey { workspace_id } => return Dispatched::Now(create(shared, &workspace_id, peer_uid).await),
        // In a task of its own: copying the state must not hold up this connection's other requests.
        Request::Snapshot { name } => {
            let (tx, rx) = oneshot::channel();
            let shared = shared.clone();
            tokio::spawn(async move { tx.send(crate::snapshot::snapshot(&shared, &name).await) });
            return Dispatched::Actor(rx);
        }
        Request::LogSizes { after } => return Dispatched::Now(crate::snapshot::log_sizes(shared, after).await),
        // A file read: the key file is only ever replaced whole (renamed into place).
        Request::ExportKeys { workspace_id } => {
            let exported = blocking(shared, move |s| s.keystore.export(&workspace_id)).await;
            return Dispatched::Now(exported.map(|record| Response::KeyRecord { record }));
        }
        // Both in order with the workspace's appends: through its actor if it is loaded, else
        // under its load lock, awaited here like `CreateKey` so that a request behind it on
        // this connection finds it done.
        Request::ImportKeys { workspace_id, record } => {
            let make = |record, reply| WsMsg::Import { record, peer_uid, reply };
            let ws = workspace_id.as_str();
            let locked = |record| import_unloaded(shared, ws, record, peer_uid);
            serialised(shared, ws, record, make, locked).await
        }
        Request::Adopt { workspace_id, checkpoint, peaks, proof, last_leaf_ms } => {
            let args = AdoptArgs { checkpoint, peaks, proof, last_leaf_ms, peer_uid };
            let make = |args, reply| WsMsg::Adopt { args, reply };
            let ws = workspace_id.as_str();
            let locked = |args| adopt_unloaded(shared, ws, args);
            serialised(shared, ws, args, make, locked).await
        }
        Request::ListKeys { workspace_id } => {
            let make = |reply| WsMsg::ListKeys { reply };
            enqueue(shared, &workspace_id, Queued { bytes: 0, append_at: None, make }).await
        }
        Request::LatestCheckpoint { workspace_id } => {
            match crate::registry::latest_without_log(shared, &workspace_id).await {
                Ok(None) => {}
                Ok(Some(empty)) => return Dispatched::Now(Ok(empty)),
                Err(e) => return Dispatched::Now(Err(e)),
            }
            let make = |reply| WsMsg::Latest { reply };
            enqueue(shared, &workspace_id, Queued { bytes: 0, append_at: None, make }).await
        }
        Request::RotateKey { workspace_id, expected_size } => {
            let make = |reply| WsMsg::Rotate { expected_size, peer_uid, reply };
            enqueue(shared, &workspace_id, Queued { bytes: 0, append_at: None, make }).await
        }
        Request::AppendBatch { workspace_id, expected_size, bodies, want_proofs } => {
            append(shared, Append { workspace_id, expected_size, bodies }, want_proofs, peer_uid).await
        }
        // Each append goes to its own workspace's actor, in request order, exactly as an
        // `AppendBatch` of its own would: the workspaces are signed concurrently and one's
        // refusal (`Busy`, `SizeMismatch`, ...) is its own result, not the request's.
        Request::AppendMany { appends } => {
            let mut each = Vec::with_capacity(appends.len());
            for a in appends {
                each.push(append(shared, a, false, peer_uid).await);
            }
            return Dispatched::Many(each);
        }
    };
    match queued {
        Ok(rx) => Dispatched::Actor(rx),
        Err(e) => Dispatched::Now(Err(e)),
    }
}

/// Queues one append at its workspace's actor.
async fn append(
    shared: &Arc<Shared>,
    Append { workspace_id, expected_size, bodies }: Append,
    want_proofs: bool,
    peer_uid: u32,
) -> Result<oneshot::Receiver<Result<Response>>> {
    // What the bodies cost while they wait: their bytes and their `Vec`s.
    let bytes = bodies.iter().map(|b| b.len() + std::mem::size_of::<Vec<u8>>()).sum();
    let make = |reply| WsMsg::Append { expected_size, bodies, bytes, want_proofs, peer_uid, reply };
    enqueue(shared, &workspace_id, Queued { bytes, append_at: Some(expected_size), make }).await
}

//! The Unix-socket front of the signer: peer check, framing, dispatch to workspace actors.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use allowly_signer_proto::{
    decode_request, encode_response, read_frame, write_frame, ErrorCode, ErrorReply, Request, Response,
};
use ractor::Actor;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::audit::{Entry, Event};
use crate::error::{Result, SignerError};
use crate::journal::Record;
use crate::keystore::WorkspaceKeys;
use crate::state::LogState;
use crate::workspace::{now_ms, WorkspaceActor, WsArgs, WsMsg, MAX_QUEUED};
use crate::{Shared, WsHandle};

/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests one connection may have in flight; the next read waits for a slot.
const MAX_IN_FLIGHT_PER_CONN: usize = 8192;
/// Answers waiting to be written on one connection.
const WRITE_QUEUE: usize = 1024;

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

/// Accepts connections until `shutdown` resolves.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
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
                    tokio::spawn(connection(stream, uid, shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

fn error_response(e: &SignerError) -> Response {
    let current_size = match e {
        SignerError::SizeMismatch { current, .. } => Some(*current),
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
            ErrorCode::Internal | ErrorCode::Unknown(_) => "internal",
        },
        _ => "ok",
    }
}

async fn connection(stream: UnixStream, peer_uid: u32, shared: Arc<Shared>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut wr, &frame).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONN));
    let mut buf = Vec::new();
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut rd, &mut buf)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => {
                // Unreadable length prefix or oversize frame: the stream cannot be resynchronised.
                shared.metrics.bad_frames.inc();
                tracing::warn!(peer_uid, error = %e, "closing a connection after a bad frame");
                break;
            }
        };
        let (id, req) = match decode_request(frame) {
            Ok(x) => x,
            Err(e) => {
                shared.metrics.bad_frames.inc();
                match e.request_id() {
                    Some(id) => {
                        let resp =
                            Response::Error(ErrorReply { code: e.code(), message: e.to_string(), current_size: None });
                        send(&tx, id, &resp).await;
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
            let result = match dispatched {
                Dispatched::Now(r) => r,
                Dispatched::Actor(rx) => rx.await.unwrap_or(Err(SignerError::ActorGone)),
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    if e.code() == ErrorCode::Internal {
                        tracing::error!(peer_uid, op, error = %e, "request failed");
                    }
                    error_response(&e)
                }
            };
            shared.metrics.requests.with_label_values(&[op, outcome_label(&resp)]).inc();
            send(&tx, id, &resp).await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}

async fn send(tx: &mpsc::Sender<Vec<u8>>, id: u64, resp: &Response) {
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
    let _ = tx.send(out).await;
}

/// Runs `f` on the blocking pool (key files are read, written and fsynced there, never on a
/// tokio worker).
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
) -> Result<T> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .map_err(|e| SignerError::Io(std::io::Error::other(format!("blocking task: {e}"))))?
}

/// Finds (loading if needed) the workspace's actor.
async fn workspace(shared: &Arc<Shared>, ws: &str) -> Result<WsHandle> {
    if let Some(h) = shared.workspaces.get(ws) {
        return Ok(h.clone());
    }
    let _guard = shared.load_lock.lock(ws).await;
    if let Some(h) = shared.workspaces.get(ws) {
        return Ok(h.clone());
    }
    let name = ws.to_owned();
    let keys = blocking(shared, move |s| s.keystore.load(&name)).await?;
    // Keys without a log record: starting again from size 0 would fork the log.
    let durable = shared.journal.load(ws).await?.ok_or_else(|| {
        SignerError::Corrupt(format!("log state of {ws} is missing from the journal; refusing to restart the log"))
    })?;
    spawn(shared, ws, keys, durable, true).await
}

async fn spawn(
    shared: &Arc<Shared>,
    ws: &str,
    keys: WorkspaceKeys,
    durable: LogState,
    resumed: bool,
) -> Result<WsHandle> {
    let queued = Arc::new(AtomicUsize::new(0));
    let args = WsArgs { ws: ws.to_owned(), keys, durable, shared: shared.clone(), queued: queued.clone(), resumed };
    let (actor, _join) = Actor::spawn(None, WorkspaceActor, args)
        .await
        .map_err(|e| SignerError::Io(std::io::Error::other(format!("spawning workspace actor: {e}"))))?;
    let h = WsHandle { actor, queued };
    shared.workspaces.insert(ws.to_owned(), h.clone());
    Ok(h)
}

async fn create(shared: &Arc<Shared>, ws: &str, peer_uid: u32) -> Result<Response> {
    let _guard = shared.load_lock.lock(ws).await;
    let name = ws.to_owned();
    let new = blocking(shared, move |s| {
        if s.keystore.exists(&name) {
            return Err(SignerError::WorkspaceExists);
        }
        s.keystore.prepare(&name, now_ms())
    })
    .await?;
    // The empty log's record goes first (durable, with its `created` audit line): keys without
    // a log record refuse to load. The journal refuses it if it holds a non-empty log for `ws`.
    let entry = Entry {
        time: allowly_receipt::types::Timestamp::from_unix_ms(now_ms())?,
        event: Event::Created,
        workspace_id: ws,
        size: 0,
        root: None,
        key_id: Some(new.key_id().to_owned()),
        peer_uid: Some(peer_uid),
        detail: None,
        leaves: None,
    };
    let record = Record::create(ws)?;
    let line = entry.line()?;
    if let Err(e) = shared.journal.write(Some(record), line).await {
        // Not recorded, never to be used: a token deletes the key pair it made.
        let _ = blocking(shared, move |s| {
            s.keystore.discard(new);
            Ok(())
        })
        .await;
        return Err(e);
    }
    let keys = blocking(shared, move |s| s.keystore.commit_new(new)).await?;
    let infos = keys.infos.clone();
    spawn(shared, ws, keys, LogState::empty(), false).await?;
    Ok(Response::Keys { keys: infos })
}

/// Sends `msg` to the workspace actor, bounded by its queue limit; the answer comes on the
/// returned receiver.
async fn enqueue(
    shared: &Arc<Shared>,
    ws: &str,
    make: impl FnOnce(crate::workspace::Reply) -> WsMsg,
) -> Result<oneshot::Receiver<Result<Response>>> {
    let h = workspace(shared, ws).await?;
    if h.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
        h.queued.fetch_sub(1, Ordering::Relaxed);
        return Err(SignerError::Busy);
    }
    let (tx, rx) = oneshot::channel();
    if h.actor.send_message(make(tx)).is_err() {
        h.queued.fetch_sub(1, Ordering::Relaxed);
        return Err(SignerError::ActorGone);
    }
    Ok(rx)
}

/// A request as dispatched: answered already, or queued at its workspace actor.
enum Dispatched {
    Now(Result<Response>),
    Actor(oneshot::Receiver<Result<Response>>),
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
        Request::ListKeys { workspace_id } => enqueue(shared, &workspace_id, |reply| WsMsg::ListKeys { reply }).await,
        Request::LatestCheckpoint { workspace_id } => {
            enqueue(shared, &workspace_id, |reply| WsMsg::Latest { reply }).await
        }
        Request::RotateKey { workspace_id, expected_size } => {
            enqueue(shared, &workspace_id, |reply| WsMsg::Rotate { expected_size, peer_uid, reply }).await
        }
        Request::AppendBatch { workspace_id, expected_size, bodies, want_proofs } => {
            enqueue(shared, &workspace_id, |reply| WsMsg::Append {
                expected_size,
                bodies,
                want_proofs,
                peer_uid,
                reply,
            })
            .await
        }
    };
    match queued {
        Ok(rx) => Dispatched::Actor(rx),
        Err(e) => Dispatched::Now(Err(e)),
    }
}

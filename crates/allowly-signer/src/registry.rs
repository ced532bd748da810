//! The loaded workspaces: finding (loading) a workspace's actor, creating a workspace, queueing
//! a request for its actor within the workspace's caps, and unloading workspaces that went idle.
//!
//! # Unloading, and why it cannot fork or roll a log back
//!
//! A workspace whose [`Queue`] has taken no request for `Limits::idle_unload` is unloaded by
//! [`sweep`]: its actor stops and its state is dropped — a file key's slot wiped and, once no
//! other key shares its page, unlocked and unmapped (`hardening::pool`); a token key's cached
//! object handle forgotten. Nothing is written: the journal already holds the state (every
//! group is durable before it is answered). The next request loads it again from the journal,
//! as after a restart (with a `resumed` audit line).
//!
//! A queue counts a request until it is answered (an append until its group is durable), so it
//! is empty only while its actor has nothing to do. Under the workspace's load lock,
//! [`unload_if_idle`] closes the queue only if it is empty (one compare-and-swap from 0),
//! removes the handle from the map, and lets the actor finish every message already in its
//! mailbox before it stops; the lock is released only once the actor is gone. A request racing it either got into the queue first (then the queue was not
//! empty, and nothing is unloaded) or finds it closed, waits for the load lock — so for the old
//! actor's last journal write — and loads a new actor from the journal. So at most one actor per
//! workspace ever runs, and each load starts from the last durable state: the log goes on
//! exactly as if it had never been unloaded.

use std::sync::Arc;
use std::time::Duration;

use allowly_signer_proto::Response;
use ractor::Actor;
use tokio::sync::oneshot;

use crate::audit::{Entry, Event};
use crate::error::{Result, SignerError};
use crate::journal::Record;
use crate::keystore::WorkspaceKeys;
use crate::state::LogState;
use crate::workspace::{now_ms, Admission, Queue, Reply, WorkspaceActor, WsArgs, WsMsg};
use crate::{Shared, WsHandle};

/// Runs `f` on the blocking pool (key files are read, written and fsynced there, never on a
/// tokio worker).
pub(crate) async fn blocking<T: Send + 'static>(
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
    let durable = shared.journal.load(ws).await?;
    // The keys as the log knows them: a rotation the log never got is put aside. (An unknown
    // workspace has no key file: that is its answer, before the journal's.)
    let checkpoint = durable.as_ref().map(|d| d.checkpoint.clone());
    let keys = blocking(shared, move |s| match checkpoint {
        Some(cp) => s.keystore.load_for_log(&name, cp.as_deref()),
        None => s.keystore.load(&name),
    })
    .await?;
    // Keys without a log record: starting again from size 0 would fork the log.
    let durable = durable.ok_or_else(|| {
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
    let queue = Arc::new(Queue::default());
    let args = WsArgs { ws: ws.to_owned(), keys, durable, shared: shared.clone(), queue: queue.clone(), resumed };
    let (actor, _join) = Actor::spawn(None, WorkspaceActor, args)
        .await
        .map_err(|e| SignerError::Io(std::io::Error::other(format!("spawning workspace actor: {e}"))))?;
    let h = WsHandle { actor, queue };
    shared.workspaces.insert(ws.to_owned(), h.clone());
    Ok(h)
}

/// `CreateKey`: the workspace's first key and its empty log, both durable, then its actor.
pub(crate) async fn create(shared: &Arc<Shared>, ws: &str, peer_uid: u32) -> Result<Response> {
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

/// A request for a workspace actor: what [`enqueue`] needs to know about it.
pub(crate) struct Queued<F> {
    /// Bytes of appended bodies it carries (0 for other requests).
    pub bytes: usize,
    /// An append's `expected_size` (to tell its followers apart from forks if it gets `Busy`).
    pub append_at: Option<u64>,
    pub make: F,
}

/// Sends a request to the workspace's actor (loading it if needed), within the workspace's
/// caps; the answer comes on the returned receiver.
///
/// Over a cap the answer is `Busy`, at once, rather than a wait: the service multiplexes every
/// workspace over one connection, which the read loop serves in order, so waiting here would
/// stall every other workspace behind one that is over its cap. `Busy` is back pressure for
/// that workspace alone (the service retries it after a pause, never taking the signer for
/// down). Memory over all workspaces is bounded by the read loop's byte budget instead, which
/// does wait (`server`).
pub(crate) async fn enqueue<F: FnOnce(Reply) -> WsMsg>(
    shared: &Arc<Shared>,
    ws: &str,
    req: Queued<F>,
) -> Result<oneshot::Receiver<Result<Response>>> {
    let h = loop {
        let h = workspace(shared, ws).await?;
        match h.queue.admit(req.bytes, shared.limits.max_workspace_queued_bytes) {
            Admission::Admitted => break h,
            Admission::Busy(limit) => {
                shared.metrics.busy.with_label_values(&[limit]).inc();
                if let Some(at) = req.append_at {
                    h.queue.refused_busy(at);
                }
                return Err(SignerError::Busy { limit });
            }
            // Being unloaded: the unloader holds the load lock until the old actor is gone and
            // its handle out of the map. Wait for that, then load the workspace again.
            Admission::Closed => drop(shared.load_lock.lock(ws).await),
        }
    };
    let (tx, rx) = oneshot::channel();
    if h.actor.send_message((req.make)(tx)).is_err() {
        h.queue.taken(1, req.bytes);
        return Err(SignerError::ActorGone);
    }
    Ok(rx)
}

/// A request that must run in order with the workspace's appends but must not load the
/// workspace the ordinary way (`ImportKeys`, `Adopt`: a workspace moving here may have keys and
/// no log yet, or a log older than its imported keys, which a load would take for a rotation
/// that never reached the log and put aside). If the workspace is loaded, `make`'s message goes
/// to its actor (behind the appends already queued; the actor signs those first); if not,
/// `locked` runs under the workspace's load lock, so no actor can be loaded meanwhile, and the
/// next request loads the state it left. Either way the answer comes on the receiver.
pub(crate) async fn serialised<T, F, L, Fut>(
    shared: &Arc<Shared>,
    ws: &str,
    arg: T,
    make: F,
    locked: L,
) -> Result<oneshot::Receiver<Result<Response>>>
where
    F: FnOnce(T, Reply) -> WsMsg,
    L: FnOnce(T) -> Fut,
    Fut: std::future::Future<Output = Result<Response>>,
{
    loop {
        if let Some(h) = shared.workspaces.get(ws).map(|h| h.clone()) {
            match h.queue.admit(0, shared.limits.max_workspace_queued_bytes) {
                Admission::Admitted => {
                    let (tx, rx) = oneshot::channel();
                    if h.actor.send_message(make(arg, tx)).is_err() {
                        h.queue.taken(1, 0);
                        return Err(SignerError::ActorGone);
                    }
                    return Ok(rx);
                }
                Admission::Busy(limit) => {
                    shared.metrics.busy.with_label_values(&[limit]).inc();
                    return Err(SignerError::Busy { limit });
                }
                // Being unloaded: once that is done, the workspace is not loaded.
                Admission::Closed => drop(shared.load_lock.lock(ws).await),
            }
            continue;
        }
        let _guard = shared.load_lock.lock(ws).await;
        if shared.workspaces.contains_key(ws) {
            continue;
        }
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(locked(arg).await);
        return Ok(rx);
    }
}

/// `ImportKeys` for a workspace that is not loaded (see [`serialised`]): installs the record
/// and audits it.
pub(crate) async fn import_unloaded(
    shared: &Arc<Shared>,
    ws: &str,
    record: Vec<u8>,
    peer_uid: u32,
) -> Result<Response> {
    let name = ws.to_owned();
    let imported = blocking(shared, move |s| {
        let written = s.keystore.import(&name, &record)?;
        Ok((written, s.keystore.load(&name)?))
    })
    .await;
    let (written, keys) = counted_import(shared, ws, imported)?;
    if written {
        let line = keys_imported_line(ws, &keys, peer_uid)?;
        shared.journal.write(None, line).await?;
    }
    Ok(Response::Keys { keys: keys.infos })
}

/// Counts and logs an import's outcome.
pub(crate) fn counted_import(
    shared: &Shared,
    ws: &str,
    imported: Result<(bool, WorkspaceKeys)>,
) -> Result<(bool, WorkspaceKeys)> {
    let outcome = match &imported {
        Ok((true, _)) => "installed",
        Ok((false, _)) => "unchanged",
        Err(SignerError::KeyRecordRefused(why)) => {
            tracing::warn!(workspace = ws, reason = %why, "refused a key record");
            "refused"
        }
        Err(_) => return imported,
    };
    shared.metrics.key_imports.with_label_values(&[outcome]).inc();
    imported
}

/// The audit line of an installed key record.
pub(crate) fn keys_imported_line(ws: &str, keys: &WorkspaceKeys, peer_uid: u32) -> Result<Vec<u8>> {
    Entry {
        time: allowly_receipt::types::Timestamp::from_unix_ms(now_ms())?,
        event: Event::KeysImported,
        workspace_id: ws,
        size: 0,
        root: None,
        key_id: Some(hex::encode(keys.active_key_id())),
        peer_uid: Some(peer_uid),
        detail: Some(format!("{} keys", keys.infos.len())),
        leaves: None,
    }
    .line()
}

/// What an `Adopt` asks (see [`crate::adopt::check`]).
#[derive(Debug)]
pub struct AdoptArgs {
    pub checkpoint: String,
    pub peaks: Vec<allowly_receipt::merkle::Hash>,
    pub proof: Vec<allowly_receipt::merkle::Hash>,
    pub last_leaf_ms: u64,
    pub peer_uid: u32,
}

/// `Adopt` for a workspace that is not loaded (see [`serialised`]): the check against its keys
/// (opened: the signer must be able to sign after it) and its journal state, if any, then the
/// adopted state journaled.
pub(crate) async fn adopt_unloaded(shared: &Arc<Shared>, ws: &str, a: AdoptArgs) -> Result<Response> {
    let durable = shared.journal.load(ws).await?;
    let name = ws.to_owned();
    // `load`, not `load_for_log`: keys imported for this adopt are newer than the old log, whose
    // last checkpoint their active key did not sign; that is no rotation to put aside.
    let keys = blocking(shared, move |s| s.keystore.load(&name)).await?;
    let checked =
        crate::adopt::check(ws, &keys.infos, durable.as_ref(), &a.checkpoint, &a.peaks, &a.proof, a.last_leaf_ms);
    match adopt_outcome(shared, ws, checked, durable.as_ref(), &keys, a.peer_uid)? {
        Ok((adoption, line)) => {
            let record = adoption.state.as_ref().map(|st| Record::new(ws, st)).transpose()?;
            if record.is_some() {
                shared.journal.write(record, line).await?;
            }
            Ok(adopted(&adoption))
        }
        Err((refused, line)) => {
            // Durable before the refusal is answered, like every refusal line; a failure to
            // write it is logged, the refusal stands.
            if let Err(e) = shared.journal.write(None, line).await {
                tracing::error!(workspace = ws, error = %e, "could not write an adopt refusal's audit line");
            }
            Err(refused)
        }
    }
}

/// `LatestCheckpoint` of a workspace whose keys are installed (`ImportKeys`) but that has no
/// log here yet: size 0, no checkpoint — where its new owner adopts from. `None`: the
/// workspace is loaded, has a log, or is unknown: its actor (or the loader) answers. Without
/// this the loader's refusal to restart a log from keys alone would answer the question the
/// caller needs before it can adopt.
pub(crate) async fn latest_without_log(shared: &Arc<Shared>, ws: &str) -> Result<Option<Response>> {
    if shared.workspaces.contains_key(ws) {
        return Ok(None);
    }
    let _guard = shared.load_lock.lock(ws).await;
    if shared.workspaces.contains_key(ws) || shared.journal.load(ws).await?.is_some() {
        return Ok(None);
    }
    let name = ws.to_owned();
    let keyed = blocking(shared, move |s| Ok(s.keystore.exists(&name))).await?;
    Ok(keyed.then_some(Response::Checkpoint { size: 0, checkpoint: None }))
}

/// The answer to an accepted adopt.
pub(crate) fn adopted(a: &crate::adopt::Adoption) -> Response {
    Response::Adopted { size: a.size, root: a.root, changed: a.state.is_some() }
}

/// An adopt's outcome, counted and logged: the adoption with its audit line (empty if nothing
/// changed), or the error to answer with and its refusal line.
type AdoptOutcome = std::result::Result<(crate::adopt::Adoption, Vec<u8>), (SignerError, Vec<u8>)>;

/// Counts and logs an adopt's outcome and makes its audit line. `own`: the signer's state of
/// the workspace before it.
pub(crate) fn adopt_outcome(
    shared: &Shared,
    ws: &str,
    checked: std::result::Result<crate::adopt::Adoption, crate::adopt::Refusal>,
    own: Option<&LogState>,
    keys: &WorkspaceKeys,
    peer_uid: u32,
) -> Result<AdoptOutcome> {
    use base64::Engine as _;
    let b64 = |h: &allowly_receipt::merkle::Hash| base64::engine::general_purpose::STANDARD.encode(h);
    let m = &shared.metrics;
    let size = own.map_or(0, |d| d.size);
    let time = allowly_receipt::types::Timestamp::from_unix_ms(now_ms())?;
    let entry = |event, size, root: Option<String>, detail| Entry {
        time,
        event,
        workspace_id: ws,
        size,
        root,
        key_id: Some(hex::encode(keys.active_key_id())),
        peer_uid: Some(peer_uid),
        detail,
        leaves: None,
    };
    match checked {
        Ok(a) if a.state.is_none() => {
            m.adopts.with_label_values(&["unchanged"]).inc();
            Ok(Ok((a, Vec::new())))
        }
        Ok(a) => {
            m.adopts.with_label_values(&["adopted"]).inc();
            tracing::info!(
                workspace = ws,
                from = size,
                to = a.size,
                peer_uid,
                "adopted a checkpoint another signer signed"
            );
            let line = entry(Event::Adopted, a.size, Some(b64(&a.root)), Some(format!("from size {size}"))).line()?;
            Ok(Ok((a, line)))
        }
        Err(r) => {
            m.adopts.with_label_values(&["refused"]).inc();
            m.adopt_refusals.with_label_values(&[r.reason]).inc();
            m.fork_attempts.inc();
            tracing::warn!(workspace = ws, reason = r.reason, detail = %r.detail, current = size, peer_uid, "refused to adopt a checkpoint: it does not extend a log this signer can verify");
            let root = own.and_then(|d| d.frontier().ok()).map(|f| b64(&f.root()));
            let line = entry(Event::Refused, size, root, Some(format!("adopt: {} ({})", r.detail, r.reason))).line()?;
            let error = match r.reason {
                // A smaller size: the caller's copy is behind; it is told the signer's size.
                "rollback" => SignerError::SizeMismatch { expected: r.note_size, current: size },
                reason => SignerError::AdoptRefused { reason, detail: r.detail, current: size },
            };
            Ok(Err((error, line)))
        }
    }
}

/// Unloads `ws` if its queue is empty and has taken no request for `idle` (see the module
/// docs). Whether it did.
pub async fn unload_if_idle(shared: &Arc<Shared>, ws: &str, idle: Duration) -> bool {
    let _guard = shared.load_lock.lock(ws).await;
    let Some(h) = shared.workspaces.get(ws).map(|h| h.clone()) else { return false };
    if h.queue.idle_for() < idle || !h.queue.close_if_empty() {
        return false;
    }
    shared.workspaces.remove_if(ws, |_, cur| cur.actor.get_id() == h.actor.get_id());
    // Whatever reached the mailbox before the close (a flush it sent itself) is handled first;
    // the actor then stops and its state is dropped. No timeout: releasing the lock while it
    // may still write the journal would let a new actor load a state about to be outdated.
    if let Err(e) = h.actor.drain_and_wait(None).await {
        // Already stopped (the signer is shutting down): nothing left to wait for.
        tracing::debug!(workspace = ws, error = %e, "unloading a workspace whose actor had stopped");
    }
    shared.metrics.workspace_unloads.inc();
    tracing::debug!(workspace = ws, idle_ms = idle.as_millis() as u64, "unloaded an idle workspace");
    true
}

/// Unloads every workspace idle for `idle`, every `idle / 2` (at least every 30 s, at most
/// every 10 ms), until dropped.
pub async fn sweep(shared: Arc<Shared>, idle: Duration) {
    let mut tick = tokio::time::interval((idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(30)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let idle_ones: Vec<String> = shared
            .workspaces
            .iter()
            .filter(|e| e.queue.is_empty() && e.queue.idle_for() >= idle)
            .map(|e| e.key().clone())
            .collect();
        for ws in idle_ones {
            // In a task of its own, so that stopping the sweeper (at shutdown) never leaves an
            // unload half done: a closed queue whose handle is still in the map.
            let shared = shared.clone();
            let _ = tokio::spawn(async move { unload_if_idle(&shared, &ws, idle).await }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use allowly_signer_proto::client::{ClientOptions, SignerClient};

    use super::*;
    use crate::Limits;

    /// Unloads forced as fast as they can go (no idle bound at all: whenever a queue is empty)
    /// while appends run on several workspaces: every append lands at exactly the size its
    /// caller expects (an unload that lost an append, forked or rolled back a log would answer
    /// `SizeMismatch`), no workspace ever has two actors, and each journal holds the last size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forced_unloads_racing_appends_lose_nothing_and_never_load_twice() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::open_local_with(dir.path(), Limits { idle_unload: None, ..Limits::default() }).unwrap();
        let sock = dir.path().join("run/signer.sock");
        let listener = crate::server::bind(&sock).unwrap();
        tokio::spawn(crate::server::serve(listener, shared.clone(), std::future::pending()));
        let c = SignerClient::new(sock.clone(), ClientOptions::default());
        const WS: usize = 3;
        let names: Vec<String> = (0..WS).map(|i| format!("ws_{i}")).collect();
        for ws in &names {
            c.create_key(ws.as_str()).await.unwrap();
        }
        let (stop, unloads, most) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let unloader = {
            let (shared, names, stop, unloads, most) =
                (shared.clone(), names.clone(), stop.clone(), unloads.clone(), most.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for ws in &names {
                        if unload_if_idle(&shared, ws, Duration::ZERO).await {
                            unloads.fetch_add(1, Ordering::Relaxed);
                        }
                        most.fetch_max(shared.metrics.workspaces_loaded.get() as u64, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        for ws in names.clone() {
            let c = c.clone();
            tasks.spawn(async move {
                let mut size = 0u64;
                for round in 0..40u64 {
                    let n = 1 + round % 3;
                    let bodies = (size..size + n)
                        .map(|i| crate::check::sample_body(&ws, "", i, 1_767_225_600_000 + i).unwrap())
                        .collect();
                    let out = c.append_batch(ws.as_str(), size, bodies).await;
                    let out = out.unwrap_or_else(|e| panic!("{ws} round {round} at {size}: {e}"));
                    assert_eq!(out.new_size, size + n);
                    size = out.new_size;
                }
                (ws, size)
            });
        }
        let mut done = Vec::new();
        while let Some(r) = tasks.join_next().await {
            done.push(r.unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        unloader.await.unwrap();
        assert!(
            unloads.load(Ordering::Relaxed) >= 20,
            "only {} unloads raced the appends",
            unloads.load(Ordering::Relaxed)
        );
        assert!(
            most.load(Ordering::Relaxed) <= WS as u64,
            "{} actors for {WS} workspaces",
            most.load(Ordering::Relaxed)
        );
        for (ws, size) in done {
            assert_eq!(c.latest_checkpoint(ws.as_str()).await.unwrap().size, size, "{ws}");
            assert_eq!(shared.journal.load(&ws).await.unwrap().map(|s| s.size), Some(size), "{ws}");
        }
        assert_eq!(shared.metrics.fork_attempts.get(), 0);
    }
}

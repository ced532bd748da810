//! The checkpoint log (issue 16 part 4: checkpoints "published to an append-only sink for
//! anchoring"; docs/witness.md, "Anchoring: the checkpoint log"): with `checkpoint_log` set,
//! every checkpoint the signing pipeline stores is appended to that file, as one JSON line
//! `{"checkpoint": <the signed note>, "size": N, "workspace_id": "ws_…"}`, and synced. A copy
//! of every signed tree head outside the database — shipped elsewhere, or kept on storage the
//! database's operator cannot rewrite — lets anyone show later that the log presented a head,
//! whatever happens to the database (a rollback, a restore).
//!
//! At least once, never missing: the file is synced *before* the store records how far it got
//! for the workspace (a `witness_heads` entry under an id derived from the file's absolute
//! path, so another path starts from the beginning), in one synced write per round. A crash,
//! or a store that fails, between the two makes the next round (or the next start) append those
//! checkpoints again: a checkpoint may appear twice, identical; none is skipped. At start every
//! workspace with a checkpoint above its recorded size is queued (`workspaces_behind_witness`),
//! so one stored just before a stop or a crash is appended without waiting for a new one.
//!
//! Off the signing path, like the witnesses: the pipeline's hand-off (`Witnessing::stored`)
//! only queues the workspace; one task reads the checkpoints after the recorded size, appends
//! the lines of every queued workspace with one `write` and one `fsync`, then records the new
//! sizes. The file is opened for each round (`O_APPEND`, created if missing): a file moved away
//! by log rotation is simply started again at the path. A line cut short by a crash (no final
//! newline) is ended with one before the next line, so it stays one unreadable line and never
//! corrupts the next; its checkpoint is appended again after it (it was not recorded).

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use allowly_store::{Durability, Op, Store, StoreError, WriteBatch};
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

use crate::error::EngineError;
use crate::metrics::Metrics;
// After a failed round (the file or the store): the witnesses' backoff, 100 ms doubling to 5 s.
use crate::witnessing::{Queue, Witnessing, BACKOFF_MAX, BACKOFF_START};

/// Most workspaces appended in one round (one write and one sync for all of them).
const WORKSPACES_PER_ROUND: usize = 256;
/// Most checkpoints of one workspace appended in one round; a workspace with more (the first
/// start with the log configured on a busy instance) is queued again for the next round.
const CHECKPOINTS_PER_WORKSPACE: usize = 1024;

/// The file and its queue of workspaces with checkpoints to append.
#[derive(Debug)]
pub(crate) struct CheckpointLog {
    path: PathBuf,
    /// The `witness_heads` id under which the size appended per workspace is recorded.
    id: [u8; 32],
    queue: Mutex<Queue>,
    wake: Notify,
}

impl CheckpointLog {
    /// The log at `path` (made absolute against the working directory, if it has one).
    pub fn new(path: &Path) -> Self {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Self { id: log_id(&path), path, queue: Default::default(), wake: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A checkpoint of `ws` was stored: queue it, never wait. A full queue drops it (the next
    /// checkpoint, or the next start, queues it again; nothing is lost, the appends are late).
    pub fn stored(&self, ws: &str) {
        if self.lock().push(ws, false) {
            self.wake.notify_one();
        }
    }
}

/// SHA-256 of a fixed prefix and the absolute path: a 32-byte id no witness's Ed25519 key is.
fn log_id(path: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"allowly checkpoint log\n");
    h.update(path.as_os_str().as_encoded_bytes());
    h.finalize().into()
}

/// Checks that the file can be opened for appending (created if missing), so that a wrong path
/// stops the start, then starts the task; it ends (within a second) once `alive` is dropped.
pub(crate) fn start(
    log: Arc<CheckpointLog>,
    alive: Weak<Witnessing>,
    store: Arc<dyn Store>,
    metrics: Metrics,
) -> Result<(), String> {
    open(&log.path).map_err(|e| format!("the checkpoint log {}: {e}", log.path.display()))?;
    tokio::spawn(Appender { log, store, metrics }.run(alive));
    Ok(())
}

/// Opens `path` for appending and reading its last byte, creating it (and syncing its
/// directory, so the new entry survives a crash) if missing.
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    let existed = path.exists();
    let file = std::fs::OpenOptions::new().read(true).append(true).create(true).open(path)?;
    if !existed {
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(file)
}

/// Appends `lines` to the file at `path` and syncs it; first ends a line a crash cut short.
fn append(path: &Path, lines: &[u8]) -> std::io::Result<()> {
    let mut file = open(path)?;
    let len = file.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        file.read_exact_at(&mut last, len - 1)?;
    }
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
    }
    file.write_all(lines)?;
    file.sync_data()
}

/// One round's work, read from the store: the lines to append and the sizes to record.
#[derive(Debug, Default)]
struct Round {
    lines: Vec<u8>,
    appended: u64,
    heads: Vec<Op>,
    /// Workspaces with more checkpoints than one round takes.
    more: Vec<String>,
}

struct Appender {
    log: Arc<CheckpointLog>,
    store: Arc<dyn Store>,
    metrics: Metrics,
}

impl Appender {
    async fn run(self, alive: Weak<Witnessing>) {
        let mut backoff = BACKOFF_START;
        let mut swept = false;
        loop {
            if alive.upgrade().is_none() {
                return;
            }
            if !swept {
                // At start: every workspace with a checkpoint above its recorded size.
                let (store, id) = (self.store.clone(), self.log.id);
                match crate::services::blocking(move || Ok(store.workspaces_behind_witness(&id)?)).await {
                    Ok(behind) => {
                        // A full queue drops some: their next checkpoint queues them again.
                        let mut q = self.log.lock();
                        for ws in &behind {
                            q.push(ws, false);
                        }
                        swept = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listing the checkpoints the checkpoint log lacks failed; trying again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let batch: Vec<String> = {
                let mut q = self.log.lock();
                std::iter::from_fn(|| q.pop()).take(WORKSPACES_PER_ROUND).collect()
            };
            if batch.is_empty() {
                // Woken by the next hand-off, or at least once a second to notice the engine's end.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.log.wake.notified()).await;
                continue;
            }
            match self.round(batch.clone()).await {
                Ok(more) => {
                    backoff = BACKOFF_START;
                    let mut q = self.log.lock();
                    for ws in &more {
                        q.push(ws, false);
                    }
                }
                Err(e) => {
                    self.metrics.checkpoint_log_failures.inc();
                    if backoff == BACKOFF_START {
                        tracing::error!(path = %self.log.path.display(), error = %e, "appending to the checkpoint log failed; trying again");
                    }
                    {
                        let mut q = self.log.lock();
                        for ws in batch.iter().rev() {
                            q.push(ws, true);
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Appends the checkpoints of `batch` above their recorded sizes, syncs, records the new
    /// sizes; returns the workspaces that have more.
    async fn round(&self, batch: Vec<String>) -> Result<Vec<String>, String> {
        let (store, log) = (self.store.clone(), self.log.clone());
        let round = crate::services::blocking(move || {
            let mut round = Round::default();
            for ws in batch {
                read(&*store, &log.id, ws, &mut round)?;
            }
            Ok(round)
        })
        .await
        .map_err(|e| e.to_string())?;
        if round.heads.is_empty() {
            return Ok(round.more);
        }
        let (store, path) = (self.store.clone(), self.log.path.clone());
        let Round { lines, appended, heads, more } = round;
        crate::services::blocking(move || {
            append(&path, &lines).map_err(|e| EngineError::Internal(format!("{}: {e}", path.display())))?;
            // Only once the lines are durable: recorded first, a crash would skip them.
            Ok(store.write(WriteBatch::from(heads), Durability::Sync)?)
        })
        .await
        .map_err(|e| e.to_string())?;
        self.metrics.checkpoint_log_appended.inc_by(appended);
        Ok(more)
    }
}

/// Adds to `round` the checkpoints of `ws` above the size recorded under `id`.
fn read(store: &dyn Store, id: &[u8; 32], ws: String, round: &mut Round) -> Result<(), StoreError> {
    let recorded = store.witness_head(&ws, id)?.unwrap_or(0);
    let mut size = recorded;
    let mut taken = 0;
    while let Some((at, note)) = store.checkpoint_at_or_after(&ws, size + 1)? {
        if taken == CHECKPOINTS_PER_WORKSPACE {
            round.more.push(ws.clone());
            break;
        }
        let line = serde_json::json!({ "checkpoint": note, "size": at, "workspace_id": ws });
        round.lines.extend_from_slice(line.to_string().as_bytes());
        round.lines.push(b'\n');
        (size, taken) = (at, taken + 1);
    }
    if size > recorded {
        round.appended += taken as u64;
        round.heads.push(Op::PutWitnessHead { workspace_id: ws, witness: *id, size });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use allowly_store::MemStore;

    use super::*;

    fn put_checkpoint(store: &MemStore, ws: &str, size: u64) {
        let op = Op::PutCheckpoint { workspace_id: ws.into(), size, note: format!("note {ws} {size}\n") };
        store.write(WriteBatch::from(vec![op]), Durability::Sync).unwrap();
    }

    /// Reads what the file holds: (workspace, size) per line.
    fn lines(path: &Path) -> Vec<(String, u64)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| (v["workspace_id"].as_str().unwrap().to_owned(), v["size"].as_u64().unwrap()))
            .collect()
    }

    /// A round appends every checkpoint above the recorded size, in order, and records the
    /// size only with the lines durable; the next round starts there; a line cut short by a
    /// crash is ended and stays apart.
    #[test]
    fn a_round_appends_what_is_above_the_recorded_size_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        let log = CheckpointLog::new(&path);
        let store = MemStore::default();
        for size in [1, 3, 4] {
            put_checkpoint(&store, "ws_a", size);
        }
        put_checkpoint(&store, "ws_b", 2);
        let mut round = Round::default();
        read(&store, &log.id, "ws_a".into(), &mut round).unwrap();
        read(&store, &log.id, "ws_b".into(), &mut round).unwrap();
        assert_eq!(round.appended, 4);
        append(&path, &round.lines).unwrap();
        store.write(WriteBatch::from(round.heads), Durability::Sync).unwrap();
        assert_eq!(store.witness_head("ws_a", &log.id).unwrap(), Some(4));
        let want = |v: &[(&str, u64)]| v.iter().map(|(w, s)| ((*w).to_owned(), *s)).collect::<Vec<_>>();
        assert_eq!(lines(&path), want(&[("ws_a", 1), ("ws_a", 3), ("ws_a", 4), ("ws_b", 2)]));

        // A torn last line (a crash mid-write), then a new checkpoint: only it is appended,
        // on a line of its own.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"checkp").unwrap();
        put_checkpoint(&store, "ws_a", 9);
        let mut next = Round::default();
        read(&store, &log.id, "ws_a".into(), &mut next).unwrap();
        assert_eq!(next.appended, 1);
        append(&path, &next.lines).unwrap();
        assert_eq!(lines(&path), want(&[("ws_a", 1), ("ws_a", 3), ("ws_a", 4), ("ws_b", 2), ("ws_a", 9)]));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 6, "the torn line stays one line");
        // Nothing new: nothing to append or record.
        let mut idle = Round::default();
        read(&store, &log.id, "ws_b".into(), &mut idle).unwrap();
        assert!(idle.heads.is_empty() && idle.lines.is_empty());
    }

    /// A workspace with more checkpoints than a round takes is taken up to the bound and
    /// queued again; another path is another log, which starts from the beginning.
    #[test]
    fn a_round_is_bounded_and_each_path_has_its_own_progress() {
        let store = MemStore::default();
        for size in 1..=(CHECKPOINTS_PER_WORKSPACE as u64 + 5) {
            put_checkpoint(&store, "ws_a", size);
        }
        let a = CheckpointLog::new(Path::new("/var/log/a.jsonl"));
        let mut round = Round::default();
        read(&store, &a.id, "ws_a".into(), &mut round).unwrap();
        assert_eq!((round.appended, round.more.clone()), (CHECKPOINTS_PER_WORKSPACE as u64, vec!["ws_a".to_owned()]));
        store.write(WriteBatch::from(round.heads), Durability::Sync).unwrap();
        let mut rest = Round::default();
        read(&store, &a.id, "ws_a".into(), &mut rest).unwrap();
        assert_eq!((rest.appended, rest.more.len()), (5, 0));
        let b = CheckpointLog::new(Path::new("/var/log/b.jsonl"));
        assert_ne!(a.id, b.id);
        assert_eq!(store.witness_head("ws_a", &b.id).unwrap(), None);
    }
}

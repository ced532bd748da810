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
//!
//! Three sinks ([`CheckpointSink`]), the same lines and the same "recorded only once durable":
//! - **a file** (`--checkpoint-log PATH`), as above;
//! - **the system logger** (`syslog` or `syslog:SOCKET`, `/dev/log` by default): one datagram
//!   per checkpoint, in the form `syslog(3)` sends (`<13>Mmm dd hh:mm:ss allowly[pid]: LINE`,
//!   facility user, severity notice, UTC). A send that returned handed the line to the
//!   logger's socket (a full socket makes the send wait: back pressure, never a drop); what the
//!   logger keeps, forwards or signs is its configuration's (a remote, append-only collector is
//!   the point);
//! - **a git work tree** (`git:DIR`, made with `git init` by the operator): the lines are
//!   appended (and synced) to `checkpoints.jsonl` in it, then committed (`git add`, `git
//!   commit --no-verify`, as "Allowly"). Each commit names its parent, so a rewritten history is
//!   visible to anyone holding a copy; a `post-commit` hook (which still runs) can push it
//!   elsewhere. A failed commit is a failed round: the next one appends the lines again and
//!   commits them all.

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

/// Where the checkpoint log goes (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointSink {
    /// A file, appended to and synced.
    File(PathBuf),
    /// The system logger's Unix datagram socket.
    Syslog(PathBuf),
    /// A git work tree.
    Git(PathBuf),
}

/// The system logger's usual socket.
const DEV_LOG: &str = "/dev/log";
/// The file a [`CheckpointSink::Git`] work tree holds the lines in.
const GIT_FILE: &str = "checkpoints.jsonl";

impl CheckpointSink {
    /// `PATH` or `file:PATH` (a file), `syslog` or `syslog:SOCKET`, `git:DIR`; paths made
    /// absolute against the working directory (if it has one).
    pub fn parse(s: &str) -> Result<Self, String> {
        let absolute = |p: &str| -> Result<PathBuf, String> {
            if p.is_empty() {
                return Err(format!("{s:?}: an empty path"));
            }
            Ok(std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p)))
        };
        Ok(match s.split_once(':') {
            _ if s == "syslog" => CheckpointSink::Syslog(PathBuf::from(DEV_LOG)),
            Some(("syslog", socket)) => CheckpointSink::Syslog(absolute(socket)?),
            Some(("git", dir)) => CheckpointSink::Git(absolute(dir)?),
            Some(("file", path)) => CheckpointSink::File(absolute(path)?),
            _ => CheckpointSink::File(absolute(s)?),
        })
    }

    /// Its kind as written before the path (none for a file, as before there were other
    /// sinks) and its path.
    fn kind_and_path(&self) -> (&'static str, &Path) {
        match self {
            CheckpointSink::File(p) => ("", p),
            CheckpointSink::Syslog(p) => ("syslog:", p),
            CheckpointSink::Git(p) => ("git:", p),
        }
    }

    /// What a log says it is: as it was given.
    fn describe(&self) -> String {
        let (kind, path) = self.kind_and_path();
        format!("{kind}{}", path.display())
    }

    /// Whether the sink can be written to now: a wrong path stops the start.
    fn check(&self) -> std::io::Result<()> {
        match self {
            CheckpointSink::File(path) => open(path).map(drop),
            CheckpointSink::Syslog(socket) => std::os::unix::net::UnixDatagram::unbound()?.connect(socket),
            CheckpointSink::Git(dir) => git(dir, &["rev-parse", "--is-inside-work-tree"]),
        }
    }

    /// Appends `lines` (newline-ended JSON lines) durably, as far as the sink goes.
    fn append(&self, lines: &[u8]) -> std::io::Result<()> {
        match self {
            CheckpointSink::File(path) => append(path, lines),
            CheckpointSink::Syslog(socket) => send_to_syslog(socket, lines),
            CheckpointSink::Git(dir) => {
                append(&dir.join(GIT_FILE), lines)?;
                git(dir, &["add", "--", GIT_FILE])?;
                let n = lines.iter().filter(|&&b| b == b'\n').count();
                let message = format!("{n} checkpoint(s)");
                let who = ["-c", "user.name=Allowly", "-c", "user.email=allowly@localhost"];
                git(dir, &[&who[..], &["commit", "--quiet", "--no-verify", "-m", &message]].concat())
            }
        }
    }
}

/// Runs `git -C dir ARGS`; an error names what git printed. The operator named `dir`, so it is
/// trusted whoever owns it (`safe.directory`: a server started as root runs as a user of its
/// own, and git refuses a work tree another user owns).
fn git(dir: &Path, args: &[&str]) -> std::io::Result<()> {
    let mut safe = std::ffi::OsString::from("safe.directory=");
    safe.push(dir);
    let out = std::process::Command::new("git").arg("-c").arg(safe).arg("-C").arg(dir).args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(if out.stderr.is_empty() { &out.stdout } else { &out.stderr }).trim().to_owned();
    Err(std::io::Error::other(format!("git {}: {} ({said})", args.join(" "), out.status)))
}

/// Sends each line to the logger at `socket`, one datagram each, as `syslog(3)` does.
fn send_to_syslog(socket: &Path, lines: &[u8]) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.connect(socket)?;
    let stamp = crate::clock::ts(crate::clock::now_ms()).map(|t| t.to_string()).unwrap_or_default();
    let header = format!("<13>{} allowly[{}]: ", syslog_time(&stamp), std::process::id());
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut datagram = Vec::with_capacity(header.len() + line.len());
        datagram.extend_from_slice(header.as_bytes());
        datagram.extend_from_slice(line);
        sock.send(&datagram)?;
    }
    Ok(())
}

/// `Mmm dd hh:mm:ss` (RFC 3164's timestamp, the day space-padded) from an RFC 3339 UTC
/// timestamp `YYYY-MM-DDThh:mm:ss…`.
fn syslog_time(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = rfc3339.get(5..7).and_then(|m| m.parse::<usize>().ok()).and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    let day = rfc3339.get(8..10).and_then(|d| d.parse::<u8>().ok());
    match (month, day, rfc3339.get(11..19)) {
        (Some(m), Some(d), Some(time)) => format!("{m} {d:>2} {time}"),
        _ => "Jan  1 00:00:00".to_owned(),
    }
}

/// The sink and its queue of workspaces with checkpoints to append.
#[derive(Debug)]
pub(crate) struct CheckpointLog {
    sink: CheckpointSink,
    /// The `witness_heads` id under which the size appended per workspace is recorded.
    id: [u8; 32],
    queue: Mutex<Queue>,
    wake: Notify,
}

impl CheckpointLog {
    pub fn new(sink: CheckpointSink) -> Self {
        Self { id: log_id(&sink), sink, queue: Default::default(), wake: Notify::new() }
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

/// SHA-256 of a fixed prefix and the sink (a file: its absolute path alone, as before there
/// were other sinks): a 32-byte id no witness's Ed25519 key is. Another sink or path starts
/// from the beginning.
fn log_id(sink: &CheckpointSink) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"allowly checkpoint log\n");
    let (kind, path) = sink.kind_and_path();
    h.update(kind.as_bytes());
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
    log.sink.check().map_err(|e| format!("the checkpoint log {}: {e}", log.sink.describe()))?;
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
                        tracing::error!(sink = %self.log.sink.describe(), error = %e, "appending to the checkpoint log failed; trying again");
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
        let (store, log) = (self.store.clone(), self.log.clone());
        let Round { lines, appended, heads, more } = round;
        crate::services::blocking(move || {
            log.sink.append(&lines).map_err(|e| EngineError::Internal(format!("{}: {e}", log.sink.describe())))?;
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
        let log = CheckpointLog::new(CheckpointSink::File(path.clone()));
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
        let a = CheckpointLog::new(CheckpointSink::parse("/var/log/a.jsonl").unwrap());
        let mut round = Round::default();
        read(&store, &a.id, "ws_a".into(), &mut round).unwrap();
        assert_eq!((round.appended, round.more.clone()), (CHECKPOINTS_PER_WORKSPACE as u64, vec!["ws_a".to_owned()]));
        store.write(WriteBatch::from(round.heads), Durability::Sync).unwrap();
        let mut rest = Round::default();
        read(&store, &a.id, "ws_a".into(), &mut rest).unwrap();
        assert_eq!((rest.appended, rest.more.len()), (5, 0));
        let b = CheckpointLog::new(CheckpointSink::parse("/var/log/b.jsonl").unwrap());
        assert_ne!(a.id, b.id);
        assert_eq!(store.witness_head("ws_a", &b.id).unwrap(), None);
        // A file keeps the id it had before there were other sinks; another sink at the same
        // path is another log.
        let old = {
            let mut h = Sha256::new();
            h.update(b"allowly checkpoint log\n/var/log/a.jsonl");
            <[u8; 32]>::from(h.finalize())
        };
        assert_eq!(a.id, old);
        assert_ne!(CheckpointLog::new(CheckpointSink::parse("git:/var/log/a.jsonl").unwrap()).id, a.id);
    }

    #[test]
    fn sinks_parse_and_syslog_times_are_rfc_3164() {
        let p = |s: &str| CheckpointSink::parse(s).unwrap();
        assert_eq!(p("/x/log.jsonl"), CheckpointSink::File("/x/log.jsonl".into()));
        assert_eq!(p("file:/x/log.jsonl"), CheckpointSink::File("/x/log.jsonl".into()));
        assert_eq!(p("syslog"), CheckpointSink::Syslog("/dev/log".into()));
        assert_eq!(p("syslog:/run/log.sock"), CheckpointSink::Syslog("/run/log.sock".into()));
        assert_eq!(p("git:/srv/anchors"), CheckpointSink::Git("/srv/anchors".into()));
        assert!(matches!(p("rel/log.jsonl"), CheckpointSink::File(f) if f.is_absolute()));
        for bad in ["", "git:", "syslog:", "file:"] {
            assert!(CheckpointSink::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(syslog_time("2026-12-07T11:05:09.123Z"), "Dec  7 11:05:09");
        assert_eq!(syslog_time("2027-01-31T00:00:00.000Z"), "Jan 31 00:00:00");
    }
}

//! The signer's one durable log of workspace states and audit lines: `<dir>/journal`, shared by
//! every workspace, written by one dedicated thread that group-commits whatever the workspace
//! actors queued.
//!
//! # Why one journal, and one fsync
//!
//! A durable signature needs its state on disk first, and its audit line recoverable. With one
//! file per workspace, load spread over thousands of workspaces paid one fsync per signed batch
//! (plus one for the audit line). Here every actor hands its record and audit lines to the
//! writer thread over a bounded channel and awaits a completion; the thread takes everything
//! queued, chains the group's audit lines (`audit::chain_lines`), writes the group's state
//! records *and one audit record holding those chained lines* to the journal with one `write`,
//! fdatasyncs the journal once, then appends the same lines to `audit.log` **without** an
//! fsync, and completes every submitter. One fsync per group, however many workspaces, batches
//! and audit lines it holds (`allowly_signer_journal_records_per_fsync`): the journal is the
//! only file whose durability a signature waits for, and `audit.log` is a copy of the journal's
//! audit records that is repaired from them at start (see *Recovery*). The actor awaits its own
//! completion before it signs its next group, so a workspace has at most one record in flight
//! and records of one workspace reach the file in order; batches arriving meanwhile coalesce
//! into its next group.
//!
//! # Commit delay
//!
//! With [`JournalOptions::commit_delay`] set, a group may wait that long after its first
//! submission for the next record of each *other* workspace that wrote one in the last 50
//! delays (100 ms at 2 ms), so that they share one fsync instead of paying one each. The service's signing pipeline
//! sends each workspace's batches one at a time, at intervals (its `sign_batch_delay`), so at
//! the check knee most groups would otherwise hold one batch each, and an fdatasync costs far
//! more CPU than signing a batch's receipts. A workspace appending alone never waits; a group
//! waits at most the delay and stops as soon as every such workspace is in it; with more than
//! 256 recently active workspaces it does not wait (groups fill up by themselves). The cost is
//! latency: up to the delay per signed group. Off (zero) by default.
//!
//! # Format
//!
//! Records back to back, no file header: `u32` BE payload length ‖ SHA-256(payload) ‖ payload.
//! Two kinds, told apart by the payload's first byte:
//! - a *state record*, JSON `{"ws": id, "state": LogState}` (first byte `{`; records written
//!   before the audit records existed also carry an `"audit"` member, ignored). The last state
//!   record of a workspace is its state.
//! - an *audit record*, `a` ‖ `u64` BE offset in `audit.log` ‖ the group's audit lines exactly
//!   as they are in `audit.log` at that offset (chained, newline-terminated). Each audit record
//!   starts where the previous one ended; one written by a compaction has no lines and only says
//!   where `audit.log` was durable when the older records were dropped.
//!
//! # Recovery
//!
//! On open the whole file is scanned. A record whose header or payload runs past the end of the
//! file is a torn write and is cut off (with everything after it, which can only be more of the
//! same torn write). A complete record whose checksum or JSON is wrong, or an audit record that
//! does not start where the previous one ended, is corruption: the signer refuses to start
//! rather than guess (as with the per-workspace files before). A workspace whose keys exist but
//! that has no record is refused at load ("refusing to restart the log").
//!
//! Then `audit.log` is made to match the journal's audit records: every byte they cover is
//! compared with the file and rewritten where it differs or is missing (a crash between the
//! journal's fsync and the audit write, or an OS crash that lost unsynced audit pages), bytes
//! after the last one are cut (lines of a group whose journal record did not survive: never
//! released), and `audit.log` is fdatasynced before anything is served. A file shorter than
//! where the journal's audit records begin has lost lines that were durable: the signer refuses
//! to start. A journal without audit records (written before they existed) leaves `audit.log`
//! as it is, minus a partial last line.
//!
//! # Failed writes never tear the file
//!
//! The writer appends at an explicit offset, the durable length. If `write` or `fdatasync`
//! fails (ENOSPC, EIO), it truncates the file back to the durable length and fdatasyncs; every
//! submitter of the group gets an error and its actor keeps its previous state, so nothing
//! signed leaves. If the `audit.log` write fails, both files are cut back too (a checkpoint is
//! never released while its audit line could not be written). If even a truncation fails, the
//! journal is *poisoned*: every later submission fails until restart, so no good record can
//! ever follow a partial one, and the restart cuts the torn tail (its length runs past the end
//! of the file) and rewrites `audit.log` from the journal. Records of the failed group that did
//! reach the disk whole then become the state, with their audit lines: signatures that were
//! never released, which the service reconciles like any lost answer.
//!
//! Because `audit.log` is not fsynced per group, a write-back error on it would surface only at
//! its next fsync, and after a failed fsync Linux may have dropped the unwritten pages
//! ("fsyncgate"): so the journal keeps every audit record until an fsync of `audit.log` has
//! succeeded after it, and a failed one poisons the journal (restart rewrites the file from the
//! journal, then fsyncs it before serving).
//!
//! # Compaction
//!
//! Once the file exceeds [`JournalOptions::compact_bytes`] and holds more than twice the bytes
//! of the live state records (one per workspace), the writer fdatasyncs `audit.log` (so the
//! audit records may go), copies the live records, checksums verified, into `journal.compact`
//! after an empty audit record marking `audit.log`'s durable length, fsyncs it, renames it over
//! `journal`, fsyncs the directory and appends to the new file. Until the rename the old file
//! is complete; after it the new one is; every workspace's last record is in both. A failure
//! before the rename leaves the old file in use; a failure after it (directory fsync, reopening)
//! poisons the journal, since appending to the unlinked old file would lose acknowledged records.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read as _, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{chain_lines, line_hash, write_hex_array, GENESIS};
use crate::error::{Result, SignerError};
use crate::keystore::sync_dir;
use crate::metrics::Metrics;
use crate::state::LogState;

/// The journal's file name in the data directory.
pub const JOURNAL_FILE: &str = "journal";
/// The audit log's file name in the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// Where a compaction builds the next journal before renaming it into place.
const COMPACT_FILE: &str = "journal.compact";
/// Held (flock) by the one writer of the directory's journal, for as long as its thread runs.
/// A file of its own because compaction replaces the journal's inode.
const LOCK_FILE: &str = "journal.lock";
/// How long opening waits for a previous writer in this process to finish (a signer restarted
/// in-process, as the engine's tests do, while the old one's last group is still being written).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// `u32` length + SHA-256.
const HEADER_LEN: usize = 36;
/// First byte of an audit record's payload (a state record's payload is JSON: `{`).
const AUDIT_TAG: u8 = b'a';
/// An audit record's tag and `audit.log` offset, before its lines.
const AUDIT_PREFIX: usize = 9;
/// Submissions waiting for the writer; a full queue makes actors wait (back pressure).
const QUEUE: usize = 16_384;
/// Most submissions, and about the most bytes, the writer takes into one group.
const MAX_GROUP_SUBMISSIONS: usize = 8_192;
const MAX_GROUP_BYTES: usize = 64 << 20;
/// Bytes at the end of the audit log looked at when opening it (to cut a partial last line and
/// hash the last whole one, which the chain continues from). A line lists a group's leaf hashes,
/// so the longest (65 536 leaves) is about 4.4 MB.
const AUDIT_TAIL_SCAN: u64 = 8 << 20;

/// How many commit delays after its last record a workspace counts as appending (see
/// [`JournalOptions::commit_delay`]): 100 ms at 2 ms, ten times the service's signing interval.
const ACTIVE_DELAYS: u32 = 50;
/// Most recently active workspaces tracked for the commit delay; with more, groups fill up by
/// themselves and nothing is waited for.
const MAX_ACTIVE_TRACKED: usize = 256;

/// Tuning of the journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Compact once the file is larger than this (and more than twice its live records).
    pub compact_bytes: u64,
    /// How long a group may wait, after its first submission, for the next record of every
    /// *other* workspace that wrote one in the last 50 delays and is not in the group yet, so
    /// that they share one fsync (see *Commit delay* in the module docs). Zero: never wait.
    pub commit_delay: std::time::Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self { compact_bytes: 64 << 20, commit_delay: std::time::Duration::ZERO }
    }
}

/// Which file a [`Storage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Journal,
    Audit,
}

/// The three operations the writer performs on its files. Implemented by `File`; the seam
/// exists so tests can inject a write that stops part-way with ENOSPC, or a failing fsync.
pub trait Storage: Send {
    /// `pwrite`: may write fewer bytes than asked (the caller loops).
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// `fdatasync` (also makes a changed file length durable).
    fn sync_data(&mut self) -> io::Result<()>;
    /// `ftruncate`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl Storage for File {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<usize> {
        FileExt::write_at(self, buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// Turns an opened file into the writer's [`Storage`] (the identity, outside tests).
pub(crate) type Wrap = Box<dyn Fn(Role, File) -> Box<dyn Storage> + Send>;

/// A state record's payload, as serde would write it ([`encode_record`] writes the same bytes,
/// faster; the test compares them).
#[cfg(test)]
#[derive(Serialize)]
struct RecordRef<'a> {
    ws: &'a str,
    state: &'a LogState,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordOwned {
    ws: String,
    state: LogState,
    // Records written before audit records existed carried their event's audit fields here
    // (the audit records now hold the whole lines); read and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    audit: Option<serde::de::IgnoredAny>,
}

/// One encoded state record, ready to submit. Encoded by the submitting actor, so the JSON work
/// is spread over the runtime's workers and the writer thread only copies bytes.
#[derive(Debug)]
pub struct Record {
    ws: String,
    size: u64,
    bytes: Vec<u8>,
    /// A workspace's first record: refused if the journal already holds a non-empty log for it.
    create: bool,
}

impl Record {
    /// The record of `state`, the workspace's new state. (Its audit lines are submitted beside
    /// it, [`Journal::write`], and written into the group's audit record.)
    pub fn new(ws: &str, state: &LogState) -> Result<Self> {
        let hashes = state.peaks.len() + state.prev_peaks.len() + state.last_group.len();
        let mut bytes = Vec::with_capacity(HEADER_LEN + 512 + hashes * 67);
        bytes.resize(HEADER_LEN, 0);
        encode_record(ws, state, &mut bytes).map_err(|e| SignerError::Corrupt(format!("journal record: {e}")))?;
        let payload = &bytes[HEADER_LEN..];
        let len = u32::try_from(payload.len())
            .map_err(|_| SignerError::InvalidArgument("journal record larger than 4 GiB".into()))?;
        let digest = Sha256::digest(payload);
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        bytes[4..HEADER_LEN].copy_from_slice(&digest);
        Ok(Self { ws: ws.to_owned(), size: state.size, bytes, create: false })
    }

    /// The empty-log record of a workspace being created. The writer refuses it when the journal
    /// already has a non-empty log for `ws` (keys lost but log kept: recreating would fork it); an
    /// empty one (a creation that failed after its record) may be written again.
    pub fn create(ws: &str) -> Result<Self> {
        Ok(Self { create: true, ..Self::new(ws, &LogState::empty())? })
    }
}

/// Appends a state record's payload: the JSON serde_json writes for [`RecordRef`], with the
/// hash lists (a group's leaves, the peaks: most of the record) written by
/// [`write_hex_array`], which skips serde_json's check of every hex digit for escapes.
fn encode_record(ws: &str, state: &LogState, out: &mut Vec<u8>) -> serde_json::Result<()> {
    // Destructured, so that a new `LogState` member cannot be forgotten here.
    let LogState { size, peaks, checkpoint, checkpoint_ms, prev_size, prev_peaks, last_group, last_leaf_ms } = state;
    let member = |out: &mut Vec<u8>, name: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    };
    out.extend_from_slice(b"{\"ws\":");
    serde_json::to_writer(&mut *out, ws)?;
    out.extend_from_slice(b",\"state\":{\"size\":");
    serde_json::to_writer(&mut *out, size)?;
    member(out, "peaks");
    write_hex_array(out, peaks.iter().map(|h| &h.0));
    member(out, "checkpoint");
    serde_json::to_writer(&mut *out, checkpoint)?;
    member(out, "checkpoint_ms");
    serde_json::to_writer(&mut *out, checkpoint_ms)?;
    member(out, "prev_size");
    serde_json::to_writer(&mut *out, prev_size)?;
    member(out, "prev_peaks");
    write_hex_array(out, prev_peaks.iter().map(|h| &h.0));
    member(out, "last_group");
    write_hex_array(out, last_group.iter().map(|h| &h.0));
    member(out, "last_leaf_ms");
    serde_json::to_writer(&mut *out, last_leaf_ms)?;
    out.extend_from_slice(b"}}");
    Ok(())
}

/// Appends the audit record of `lines` (chained lines that go to `audit.log` at `offset`).
fn encode_audit_record(offset: u64, lines: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let len = u32::try_from(AUDIT_PREFIX + lines.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "audit lines of one group larger than 4 GiB"))?;
    let start = out.len();
    out.reserve(HEADER_LEN + AUDIT_PREFIX + lines.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0; 32]);
    out.push(AUDIT_TAG);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(lines);
    let digest = Sha256::digest(&out[start + HEADER_LEN..]);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&digest);
    Ok(())
}

/// One decoded record.
enum Decoded<'a> {
    State(RecordOwned),
    /// Audit lines and the `audit.log` offset they belong at.
    Audit {
        offset: u64,
        lines: &'a [u8],
    },
}

/// Parses one whole record (header included).
fn decode(bytes: &[u8]) -> std::result::Result<Decoded<'_>, String> {
    let (header, payload) = bytes.split_at_checked(HEADER_LEN).ok_or("record shorter than its header")?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if payload.len() != len {
        return Err("record length does not match its header".into());
    }
    if Sha256::digest(payload).as_slice() != &header[4..] {
        return Err("record fails its checksum".into());
    }
    if payload.first() != Some(&AUDIT_TAG) {
        return serde_json::from_slice(payload).map(Decoded::State).map_err(|e| format!("record: {e}"));
    }
    let (offset, lines) = payload.split_at_checked(AUDIT_PREFIX).ok_or("audit record shorter than its offset")?;
    let offset = u64::from_be_bytes(offset[1..].try_into().map_err(|_| "audit record offset")?);
    if !lines.is_empty() && !lines.ends_with(b"\n") {
        return Err("audit record does not end with a whole line".into());
    }
    Ok(Decoded::Audit { offset, lines })
}

/// Where a workspace's last record is in the current file.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    /// Whole record, header included.
    len: u64,
    /// Its log size (for the creation check).
    size: u64,
}

/// Where one audit record's lines are, in the journal and in `audit.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AuditSpan {
    /// Offset of the lines (after the record's header and prefix) in the journal.
    journal_at: u64,
    /// Offset in `audit.log`.
    audit_at: u64,
    len: u64,
}

enum Submission {
    Write {
        record: Option<Record>,
        audit: Vec<u8>,
        done: oneshot::Sender<Result<()>>,
    },
    Load {
        ws: String,
        reply: oneshot::Sender<Result<Option<LogState>>>,
    },
    /// A consistent copy of both files into a directory ([`Journal::snapshot`]).
    Snapshot {
        dest: PathBuf,
        reply: oneshot::Sender<Result<SnapshotInfo>>,
    },
    /// A page of every workspace's durable size ([`Journal::sizes`]).
    Sizes {
        after: Option<String>,
        limit: usize,
        reply: oneshot::Sender<(Vec<(String, u64)>, bool)>,
    },
}

/// What [`Journal::snapshot`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Workspaces whose last state record it holds.
    pub workspaces: u64,
    /// Bytes of the journal copy.
    pub journal_bytes: u64,
    /// Bytes of the `audit.log` copy.
    pub audit_bytes: u64,
}

impl Submission {
    fn bytes(&self) -> usize {
        match self {
            Self::Write { record, audit, .. } => record.as_ref().map_or(0, |r| r.bytes.len()) + audit.len(),
            Self::Load { .. } | Self::Snapshot { .. } | Self::Sizes { .. } => 0,
        }
    }
}

/// Handle to the journal and its writer thread. Dropping it stops the thread (after the group
/// in progress) and waits for it.
pub struct Journal {
    tx: Option<mpsc::Sender<Submission>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

fn writer_gone() -> SignerError {
    SignerError::Io(io::Error::other("the journal writer has stopped"))
}

impl Journal {
    /// Opens (creating if needed) `dir/journal` and `dir/audit.log`, recovers both (see the
    /// module docs) and starts the writer thread.
    pub fn open(dir: &Path, opts: JournalOptions, metrics: Metrics) -> Result<Self> {
        Self::open_with(dir, opts, metrics, Box::new(|_, f| Box::new(f)))
    }

    pub(crate) fn open_with(dir: &Path, opts: JournalOptions, metrics: Metrics, wrap: Wrap) -> Result<Self> {
        let writer = Writer::open(dir, opts, metrics, wrap)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new().name("allowly-journal".into()).spawn(move || writer.run(rx))?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    async fn submit(&self, s: Submission) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(writer_gone)?;
        tx.send(s).await.map_err(|_| writer_gone())
    }

    /// Makes `record` (if any) and the audit `lines` (whole lines as `audit::Entry::line` makes
    /// them) durable in the journal, together with whatever else the writer's current group
    /// holds, and appends the lines to `audit.log`. Returns once the journal is fsynced and the
    /// lines written, or with an error after which neither is in the files.
    pub async fn write(&self, record: Option<Record>, lines: Vec<u8>) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.submit(Submission::Write { record, audit: lines, done }).await?;
        rx.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// The last durable state of `ws`, `None` if the journal has no record of it.
    pub async fn load(&self, ws: &str) -> Result<Option<LogState>> {
        let (reply, rx) = oneshot::channel();
        self.submit(Submission::Load { ws: ws.to_owned(), reply }).await?;
        rx.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}

impl Journal {
    /// Writes a consistent copy of the journal and `audit.log` into `dest` (an existing, empty
    /// directory): between two groups of the writer, the journal compacted to each workspace's
    /// last state record after an empty audit record at `audit.log`'s length, and `audit.log`
    /// up to that length; both fsynced. Opened together (`Journal::open`), they give exactly
    /// the states and audit lines that were durable at that moment. Refused while the journal
    /// is poisoned.
    pub async fn snapshot(&self, dest: &Path) -> Result<SnapshotInfo> {
        let (reply, rx) = oneshot::channel();
        self.submit(Submission::Snapshot { dest: dest.to_owned(), reply }).await?;
        rx.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Up to `limit` workspaces after `after`, in id order, each with its durable log size, and
    /// whether more follow.
    pub async fn sizes(&self, after: Option<String>, limit: usize) -> Result<(Vec<(String, u64)>, bool)> {
        let (reply, rx) = oneshot::channel();
        self.submit(Submission::Sizes { after, limit, reply }).await?;
        rx.await.map_err(|_| writer_gone())
    }
}

/// Every workspace's last durable state in the journal of `dir`, read without taking the
/// writer's lock and without changing anything (a torn tail is ignored, as `open` would cut
/// it): for tools that compare a signer's state with a backup (`allowly-signer heads`).
pub fn read_states(dir: &Path) -> Result<std::collections::BTreeMap<String, LogState>> {
    let file = File::open(dir.join(JOURNAL_FILE))?;
    let len = file.metadata()?.len();
    let scanned = scan(&file, len)?;
    let mut out = std::collections::BTreeMap::new();
    let mut bytes = Vec::new();
    for (ws, slot) in scanned.index {
        bytes.resize(slot.len as usize, 0);
        file.read_exact_at(&mut bytes, slot.offset)?;
        match decode(&bytes) {
            Ok(Decoded::State(rec)) if rec.ws == ws => {
                out.insert(ws, rec.state);
            }
            _ => return Err(SignerError::Corrupt(format!("journal byte {}: not the state of {ws}", slot.offset))),
        }
    }
    Ok(out)
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once it has drained it.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The workspaces that wrote a record lately, for the commit delay.
#[derive(Default)]
struct Active {
    /// Hash of the workspace id → when its last record joined a group.
    last: HashMap<u64, std::time::Instant>,
}

fn ws_key(ws: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    ws.hash(&mut h);
    h.finish()
}

impl Active {
    /// Receives more submissions into `group` until every workspace active in the last
    /// `window` has a record in it, or `deadline`. A workspace has at most one record in flight
    /// (its actor awaits it), so one whose record is in the group will send nothing more, and a
    /// workspace appending alone never waits.
    fn linger(
        &mut self,
        timer: &tokio::runtime::Runtime,
        rx: &mut mpsc::Receiver<Submission>,
        group: &mut Vec<Submission>,
        bytes: &mut usize,
        deadline: std::time::Instant,
        window: std::time::Duration,
    ) {
        // Loads alone have nothing to make durable: they are answered at once.
        if !group.iter().any(|s| matches!(s, Submission::Write { .. })) {
            return;
        }
        let now = std::time::Instant::now();
        self.last.retain(|_, at| now.duration_since(*at) < window);
        let mut expected: Vec<u64> = match self.last.len() <= MAX_ACTIVE_TRACKED {
            true => self.last.keys().copied().collect(),
            false => Vec::new(),
        };
        let mut arrived = |s: &Submission, expected: &mut Vec<u64>| {
            if let Submission::Write { record: Some(r), .. } = s {
                let key = ws_key(&r.ws);
                self.last.insert(key, now);
                expected.retain(|k| *k != key);
            }
        };
        for s in group.iter() {
            arrived(s, &mut expected);
        }
        while !expected.is_empty() && group.len() < MAX_GROUP_SUBMISSIONS && *bytes < MAX_GROUP_BYTES {
            // The timeout is made inside the runtime: its timer must exist when it is created.
            match timer.block_on(async { tokio::time::timeout_at(deadline.into(), rx.recv()).await }) {
                Ok(Some(s)) => {
                    arrived(&s, &mut expected);
                    *bytes += s.bytes();
                    group.push(s);
                }
                // Closed (shutting down) or the delay is over.
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// The writer thread's state. Nothing else touches the files.
struct Writer {
    /// The flock on [`LOCK_FILE`]; released when the thread ends.
    _lock: File,
    dir: PathBuf,
    path: PathBuf,
    journal: Box<dyn Storage>,
    /// A second descriptor for loads and compaction reads.
    reader: File,
    /// Durable length of the journal: every byte before it is whole, fsynced records.
    jlen: u64,
    audit: Box<dyn Storage>,
    /// Length of `audit.log`: every byte before it is whole lines, each durable in the journal's
    /// audit records or (before the oldest of them) by an fsync of `audit.log`.
    alen: u64,
    /// Hash of the audit log's last line ([`GENESIS`] when empty): the next line's `prev`.
    audit_head: [u8; 32],
    index: HashMap<String, Slot>,
    /// Bytes of the records in `index`.
    live: u64,
    opts: JournalOptions,
    /// Why the journal refuses writes until restart, once a failed write could not be undone.
    poisoned: Option<String>,
    metrics: Metrics,
    wrap: Wrap,
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

/// What a scan of the journal found.
struct Scanned {
    /// Each workspace's last state record.
    index: HashMap<String, Slot>,
    /// Bytes of the records in `index`.
    live: u64,
    /// Length of the valid prefix (shorter than the file if its tail is torn).
    valid: u64,
    /// Every audit record, in file order (so in `audit.log` order, each starting where the
    /// previous one ended).
    audit: Vec<AuditSpan>,
}

/// Scans the journal (see *Recovery* in the module docs).
fn scan(file: impl io::Read, file_len: u64) -> Result<Scanned> {
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut s = Scanned { index: HashMap::new(), live: 0, valid: 0, audit: Vec::new() };
    let mut record = Vec::new();
    while file_len - s.valid >= HEADER_LEN as u64 {
        let at = s.valid;
        record.resize(HEADER_LEN, 0);
        r.read_exact(&mut record)?;
        let len = u64::from(u32::from_be_bytes([record[0], record[1], record[2], record[3]]));
        if file_len - at - (HEADER_LEN as u64) < len {
            break; // torn payload
        }
        let whole = HEADER_LEN + len as usize;
        record.resize(whole, 0);
        r.read_exact(&mut record[HEADER_LEN..])?;
        let corrupt = |e: &str| SignerError::Corrupt(format!("journal byte {at}: {e}"));
        match decode(&record).map_err(|e| corrupt(&e))? {
            Decoded::State(rec) => {
                let slot = Slot { offset: at, len: whole as u64, size: rec.state.size };
                if let Some(old) = s.index.insert(rec.ws, slot) {
                    s.live -= old.len;
                }
                s.live += slot.len;
            }
            Decoded::Audit { offset, lines } => {
                if let Some(prev) = s.audit.last() {
                    if offset != prev.audit_at + prev.len {
                        return Err(corrupt(&format!(
                            "audit record for audit.log byte {offset}, but the previous one ended at byte {}",
                            prev.audit_at + prev.len
                        )));
                    }
                }
                let journal_at = at + (HEADER_LEN + AUDIT_PREFIX) as u64;
                s.audit.push(AuditSpan { journal_at, audit_at: offset, len: lines.len() as u64 });
            }
        }
        s.valid += whole as u64;
    }
    Ok(s)
}

/// Makes `audit.log` hold exactly the lines of the journal's audit records `spans` where they
/// say (rewriting what differs or is missing, cutting what follows the last one) and fsyncs it.
/// `reader` reads `audit.log`, `journal` the journal. Nothing to do without audit records (a
/// journal from before they existed): the file is then taken as it is.
fn repair_audit(
    path: &Path,
    reader: &File,
    storage: &mut dyn Storage,
    journal: &File,
    spans: &[AuditSpan],
    metrics: &Metrics,
) -> Result<()> {
    let (Some(first), Some(last)) = (spans.first(), spans.last()) else { return Ok(()) };
    let file_len = reader.metadata()?.len();
    if file_len < first.audit_at {
        return Err(SignerError::Corrupt(format!(
            "{} has {file_len} bytes, but the journal holds its lines only from byte {} on: lines that were durable \
             are gone (restore the file; the signer will not start a new audit log over the journal's)",
            path.display(),
            first.audit_at
        )));
    }
    let (mut want, mut have) = (Vec::new(), Vec::new());
    let mut rewritten = 0u64;
    for s in spans {
        want.resize(s.len as usize, 0);
        journal.read_exact_at(&mut want, s.journal_at)?;
        let present = file_len.saturating_sub(s.audit_at).min(s.len) as usize;
        have.resize(present, 0);
        reader.read_exact_at(&mut have, s.audit_at)?;
        if present < want.len() || have[..] != want[..present] {
            write_all_at(storage, &want, s.audit_at)?;
            rewritten += s.len;
        }
    }
    let end = last.audit_at + last.len;
    if rewritten > 0 {
        tracing::warn!(bytes = rewritten, "rewrote audit lines missing from audit.log from the journal");
    }
    if file_len > end {
        tracing::warn!(cut = file_len - end, "discarding audit lines whose journal records did not survive");
        storage.set_len(end)?;
    }
    // Durable before anything is served: the journal may drop these records at its next
    // compaction, and a write-back error must stop the start, not be found later.
    metrics.fsyncs.with_label_values(&["audit"]).inc();
    storage.sync_data()?;
    Ok(())
}

/// The length of `audit.log` and the hash of its last line (the chain's head, [`GENESIS`] when
/// empty), after cutting a partial last line left by a crash, so that what is appended next
/// starts a line of its own.
fn audit_tail(path: &Path, reader: &File, storage: &mut dyn Storage) -> Result<(u64, [u8; 32])> {
    let len = reader.metadata()?.len();
    if len == 0 {
        return Ok((0, GENESIS));
    }
    let from = len.saturating_sub(AUDIT_TAIL_SCAN);
    let mut tail = vec![0u8; (len - from) as usize];
    reader.read_exact_at(&mut tail, from)?;
    let too_long = || {
        SignerError::Corrupt(format!(
            "the last line of {} is longer than {AUDIT_TAIL_SCAN} bytes: not written by this signer",
            path.display()
        ))
    };
    let keep = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if from == 0 => 0,
        None => return Err(too_long()),
    };
    if keep < tail.len() {
        tracing::warn!(cut = tail.len() - keep, "discarding a partial last line of the audit log");
        storage.set_len(from + keep as u64)?;
        storage.sync_data()?;
    }
    let whole = &tail[..keep];
    let head = match whole.strip_suffix(b"\n") {
        None => GENESIS,
        Some(body) => match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => line_hash(&whole[i + 1..]),
            None if from == 0 => line_hash(whole),
            None => return Err(too_long()),
        },
    };
    Ok((from + keep as u64, head))
}

/// Writes all of `buf` at `offset`. A write that makes no progress is an error: it would loop.
fn write_all_at(f: &mut dyn Storage, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.write_at(buf, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write made no progress")),
            Ok(n) => {
                buf = buf.get(n..).unwrap_or_default();
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Takes the journal's lock, waiting up to [`LOCK_WAIT`] for a previous writer to let go: two
/// writers appending to one journal would interleave their records.
fn lock(dir: &Path) -> Result<File> {
    let file = open_rw(&dir.join(LOCK_FILE))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(SignerError::Io(io::Error::other(format!(
                    "another journal writer holds {} (still after {LOCK_WAIT:?})",
                    dir.join(LOCK_FILE).display()
                ))))
            }
            Err(e) => return Err(SignerError::Io(e.into())),
        }
    }
}

impl Writer {
    fn open(dir: &Path, opts: JournalOptions, metrics: Metrics, wrap: Wrap) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let lock = lock(dir)?;
        let path = dir.join(JOURNAL_FILE);
        match fs::remove_file(dir.join(COMPACT_FILE)) {
            Ok(()) => tracing::warn!("removed an unfinished journal compaction"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let existed = path.exists();
        let file = open_rw(&path)?;
        if !existed {
            sync_dir(dir)?;
        }
        let file_len = file.metadata()?.len();
        let scanned = scan(&file, file_len)?;
        if scanned.valid < file_len {
            tracing::warn!(cut = file_len - scanned.valid, at = scanned.valid, "discarding a torn journal tail");
            file.set_len(scanned.valid)?;
            file.sync_all()?;
        }
        let audit_path = dir.join(AUDIT_FILE);
        let audit_existed = audit_path.exists();
        let mut audit = wrap(Role::Audit, open_rw(&audit_path)?);
        if !audit_existed {
            // A new file's name is durable only once its directory is synced: without this a
            // power cut could take `audit.log` whole, with the lines of checkpoints already
            // released (the power-loss tier, allowly-server's tests/it/powerloss.rs, found it).
            sync_dir(dir)?;
        }
        let audit_reader = File::open(&audit_path)?;
        repair_audit(&audit_path, &audit_reader, &mut *audit, &file, &scanned.audit, &metrics)?;
        let (alen, audit_head) = audit_tail(&audit_path, &audit_reader, &mut *audit)?;
        let reader = File::open(&path)?;
        metrics.journal_bytes.set(i64::try_from(scanned.valid).unwrap_or(i64::MAX));
        Ok(Self {
            _lock: lock,
            dir: dir.to_owned(),
            journal: wrap(Role::Journal, file),
            audit,
            path,
            reader,
            jlen: scanned.valid,
            alen,
            audit_head,
            index: scanned.index,
            live: scanned.live,
            opts,
            poisoned: None,
            metrics,
            wrap,
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        // A clock for the commit delay's timed waits on the channel (a thread of our own, not a
        // tokio worker, so a runtime of its own, with the timer only).
        let timer = match self.opts.commit_delay.is_zero() {
            true => None,
            false => match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => Some(rt),
                Err(e) => {
                    tracing::error!(error = %e, "no timer for the journal's commit delay; committing without it");
                    None
                }
            },
        };
        let mut active = Active::default();
        let mut group = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let started = std::time::Instant::now();
            let mut bytes = first.bytes();
            group.push(first);
            // Everything queued meanwhile joins this group: that is the whole point.
            while group.len() < MAX_GROUP_SUBMISSIONS && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(s) => {
                        bytes += s.bytes();
                        group.push(s);
                    }
                    Err(_) => break,
                }
            }
            if let Some(timer) = &timer {
                let delay = self.opts.commit_delay;
                active.linger(timer, &mut rx, &mut group, &mut bytes, started + delay, delay * ACTIVE_DELAYS);
            }
            self.group(&mut group);
        }
        // A clean stop leaves `audit.log` durable, for whoever copies it before the next start
        // (which would repair it from the journal anyway).
        if self.poisoned.is_none() {
            if let Err(e) = self.sync_audit() {
                tracing::error!(error = %e, "fdatasync of the audit log at shutdown failed; the next start rewrites it from the journal");
            }
        }
    }

    fn poisoned_error(why: &str) -> SignerError {
        SignerError::Storage(io::Error::other(format!("journal unusable until restart: {why}")))
    }

    fn group(&mut self, group: &mut Vec<Submission>) {
        let mut journal = Vec::new();
        let mut audit = Vec::new();
        // The chain's head as of the lines of this group; kept only if the group is durable.
        let mut head = self.audit_head;
        // Index updates, applied only once the group is durable.
        let mut staged: Vec<(String, Slot)> = Vec::new();
        let mut waiting = Vec::new();
        let mut loads = Vec::new();
        let mut reads = Vec::new();
        for s in group.drain(..) {
            let (record, lines, done) = match s {
                Submission::Load { ws, reply } => {
                    loads.push((ws, reply));
                    continue;
                }
                s @ (Submission::Snapshot { .. } | Submission::Sizes { .. }) => {
                    reads.push(s);
                    continue;
                }
                Submission::Write { record, audit, done } => (record, audit, done),
            };
            if let Some(why) = &self.poisoned {
                let _ = done.send(Err(Self::poisoned_error(why)));
                continue;
            }
            if let Some(r) = record {
                if r.create {
                    let existing = staged
                        .iter()
                        .rev()
                        .find(|(ws, _)| *ws == r.ws)
                        .map(|(_, s)| s.size)
                        .or_else(|| self.index.get(&r.ws).map(|s| s.size));
                    if let Some(size) = existing.filter(|&s| s > 0) {
                        let _ = done.send(Err(SignerError::Corrupt(format!(
                            "the journal holds a log of {size} leaves for {} but its keys are missing; refusing to restart the log",
                            r.ws
                        ))));
                        continue;
                    }
                }
                let slot = Slot { offset: self.jlen + journal.len() as u64, len: r.bytes.len() as u64, size: r.size };
                journal.extend_from_slice(&r.bytes);
                staged.push((r.ws, slot));
            }
            chain_lines(&mut head, &lines, &mut audit);
            waiting.push(done);
        }
        if !waiting.is_empty() {
            // The group's audit lines go into the journal too, after its state records, in the
            // same write: the one fsync makes both durable.
            let encoded = match audit.is_empty() {
                true => Ok(()),
                false => encode_audit_record(self.alen, &audit, &mut journal),
            };
            match encoded.and_then(|()| self.persist(&journal, &audit, staged.len())) {
                Ok(()) => {
                    self.audit_head = head;
                    for (ws, slot) in staged {
                        if let Some(old) = self.index.insert(ws, slot) {
                            self.live -= old.len;
                        }
                        self.live += slot.len;
                    }
                    for done in waiting {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(e) => {
                    self.metrics.journal_failures.inc();
                    tracing::error!(error = %e, submitters = waiting.len(), poisoned = self.poisoned.is_some(), "journal write failed; the group is refused and nothing of it was signed out");
                    for done in waiting {
                        let _ = done.send(Err(SignerError::Storage(io::Error::new(
                            e.kind(),
                            format!("journal write failed: {e}"),
                        ))));
                    }
                }
            }
        }
        for (ws, reply) in loads {
            let _ = reply.send(self.load(&ws));
        }
        // After the group's writes: a snapshot holds everything made durable before it.
        for s in reads {
            match s {
                Submission::Snapshot { dest, reply } => {
                    let _ = reply.send(self.snapshot(&dest));
                }
                Submission::Sizes { after, limit, reply } => {
                    let _ = reply.send(self.sizes(after.as_deref(), limit));
                }
                Submission::Write { .. } | Submission::Load { .. } => {}
            }
        }
        if self.poisoned.is_none() && self.jlen > self.opts.compact_bytes && self.jlen > self.live.saturating_mul(2) {
            if let Err(e) = self.compact() {
                self.metrics.journal_failures.inc();
                tracing::error!(error = %e, poisoned = self.poisoned.is_some(), "journal compaction failed");
            }
        }
    }

    /// The group's journal bytes (state records and audit record) written and fdatasynced, then
    /// its audit lines written to `audit.log` (not synced: the journal holds them); on any
    /// failure both files are cut back to where this group began.
    fn persist(&mut self, journal: &[u8], audit: &[u8], records: usize) -> io::Result<()> {
        if journal.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.append_synced(journal) {
            self.roll_back(Role::Journal);
            return Err(e);
        }
        self.metrics.journal_records_per_fsync.observe(records as f64);
        if let Err(e) = write_all_at(&mut *self.audit, audit, self.alen) {
            self.roll_back(Role::Audit);
            // Durable already, but its audit lines could not be written: undo it, so that no
            // checkpoint is released while its line is missing from the file.
            self.roll_back(Role::Journal);
            return Err(e);
        }
        self.jlen += journal.len() as u64;
        self.alen += audit.len() as u64;
        self.metrics.journal_bytes.set(i64::try_from(self.jlen).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Writes `bytes` at the journal's durable length and fdatasyncs it (counted).
    fn append_synced(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_all_at(&mut *self.journal, bytes, self.jlen)?;
        self.metrics.fsyncs.with_label_values(&["journal"]).inc();
        self.journal.sync_data()
    }

    /// fdatasyncs `audit.log` (counted); a failure poisons the journal, since after a failed
    /// fsync the kernel may have dropped lines that only the journal still holds, and a later
    /// fsync would not say so (see the module docs).
    fn sync_audit(&mut self) -> io::Result<()> {
        self.metrics.fsyncs.with_label_values(&["audit"]).inc();
        if let Err(e) = self.audit.sync_data() {
            let why = format!("fdatasync of the audit log failed ({e}); a restart rewrites its lines from the journal");
            tracing::error!("{why}");
            self.poisoned = Some(why);
            return Err(e);
        }
        Ok(())
    }

    /// Truncates a file back to its durable length; poisons the journal if that fails.
    fn roll_back(&mut self, role: Role) {
        let (file, len) = match role {
            Role::Journal => (&mut self.journal, self.jlen),
            Role::Audit => (&mut self.audit, self.alen),
        };
        if let Err(e) = file.set_len(len).and_then(|()| file.sync_data()) {
            let why = format!("cannot truncate the {role:?} file back to {len} bytes after a failed write: {e}");
            tracing::error!("{why}");
            self.poisoned = Some(why);
        }
    }

    fn load(&self, ws: &str) -> Result<Option<LogState>> {
        let Some(slot) = self.index.get(ws) else { return Ok(None) };
        let mut bytes = vec![0u8; slot.len as usize];
        self.reader.read_exact_at(&mut bytes, slot.offset)?;
        let corrupt = |e: String| SignerError::Corrupt(format!("journal byte {}: {e}", slot.offset));
        match decode(&bytes).map_err(corrupt)? {
            Decoded::State(rec) if rec.ws == ws => Ok(Some(rec.state)),
            Decoded::State(rec) => Err(corrupt(format!("holds {}, not {ws}", rec.ws))),
            Decoded::Audit { .. } => Err(corrupt(format!("holds audit lines, not the state of {ws}"))),
        }
    }

    /// Rewrites the journal with only the last record of each workspace (see the module docs).
    fn compact(&mut self) -> io::Result<()> {
        // The old file's audit records are about to go: their lines must be durable in
        // `audit.log` first.
        self.sync_audit()?;
        let tmp = self.dir.join(COMPACT_FILE);
        let built = self.write_snapshot(&tmp);
        let (index, len) = match built {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // From here on `journal` names the new file: appending to the old (unlinked) one would
        // lose acknowledged records, so any failure poisons.
        let switched = sync_dir(&self.dir).and_then(|()| {
            let file = OpenOptions::new().read(true).write(true).open(&self.path)?;
            let reader = File::open(&self.path)?;
            Ok((file, reader))
        });
        match switched {
            Ok((file, reader)) => {
                self.journal = (self.wrap)(Role::Journal, file);
                self.reader = reader;
                self.index = index;
                self.jlen = len;
                self.metrics.journal_compactions.inc();
                self.metrics.journal_bytes.set(i64::try_from(len).unwrap_or(i64::MAX));
                tracing::info!(bytes = len, workspaces = self.index.len(), "journal compacted");
                Ok(())
            }
            Err(e) => {
                self.poisoned = Some(format!("switching to the compacted journal failed: {e}"));
                Err(e)
            }
        }
    }

    /// See [`Journal::snapshot`].
    fn snapshot(&self, dest: &Path) -> Result<SnapshotInfo> {
        if let Some(why) = &self.poisoned {
            return Err(Self::poisoned_error(why));
        }
        if dest.join(JOURNAL_FILE).exists() {
            return Err(SignerError::InvalidArgument(format!("{} holds a journal already", dest.display())));
        }
        let (_, journal_bytes) = self.write_snapshot(&dest.join(JOURNAL_FILE))?;
        let mut lines = vec![0u8; usize::try_from(self.alen).map_err(io::Error::other)?];
        File::open(self.dir.join(AUDIT_FILE))?.read_exact_at(&mut lines, 0)?;
        let mut copy = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dest.join(AUDIT_FILE))?;
        copy.write_all(&lines)?;
        copy.sync_all()?;
        sync_dir(dest)?;
        Ok(SnapshotInfo { workspaces: self.index.len() as u64, journal_bytes, audit_bytes: self.alen })
    }

    /// See [`Journal::sizes`].
    fn sizes(&self, after: Option<&str>, limit: usize) -> (Vec<(String, u64)>, bool) {
        let mut ids: Vec<(&String, u64)> = self
            .index
            .iter()
            .filter(|(ws, _)| after.is_none_or(|a| ws.as_str() > a))
            .map(|(ws, s)| (ws, s.size))
            .collect();
        ids.sort_unstable();
        let more = ids.len() > limit;
        (ids.into_iter().take(limit).map(|(ws, size)| (ws.clone(), size)).collect(), more)
    }

    /// Writes an empty audit record at `audit.log`'s (just fsynced) length, then every live
    /// record (checksum verified), into `tmp`, and fsyncs it.
    fn write_snapshot(&self, tmp: &Path) -> io::Result<(HashMap<String, Slot>, u64)> {
        let file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut mark = Vec::new();
        encode_audit_record(self.alen, &[], &mut mark)?;
        w.write_all(&mark)?;
        let mut order: Vec<(&String, &Slot)> = self.index.iter().collect();
        order.sort_unstable_by_key(|(_, s)| s.offset); // sequential reads
        let mut index = HashMap::with_capacity(order.len());
        let mut at = mark.len() as u64;
        let mut bytes = Vec::new();
        for (ws, slot) in order {
            bytes.resize(slot.len as usize, 0);
            self.reader.read_exact_at(&mut bytes, slot.offset)?;
            // Never copy a record that does not verify: the copy would launder it.
            match decode(&bytes) {
                Ok(Decoded::State(rec)) if rec.ws == *ws => {}
                Ok(_) | Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("journal record of {ws} at byte {} does not verify", slot.offset),
                    ))
                }
            }
            w.write_all(&bytes)?;
            index.insert(ws.clone(), Slot { offset: at, ..*slot });
            at += slot.len;
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((index, at))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use allowly_receipt::types::Timestamp;
    use proptest::prelude::*;

    use super::*;
    use crate::audit::{verify_chain, Entry, Event};

    fn state(size: u64) -> LogState {
        LogState { size, checkpoint: Some(format!("cp {size}")), checkpoint_ms: size, ..LogState::empty() }
    }

    fn entry(ws: &str, size: u64) -> Entry<'_> {
        Entry {
            time: Timestamp::from_unix_ms(1_700_000_000_000).unwrap(),
            event: Event::Checkpoint,
            workspace_id: ws,
            size,
            root: None,
            key_id: None,
            peer_uid: None,
            detail: None,
            leaves: None,
        }
    }

    fn record(ws: &str, size: u64) -> Vec<u8> {
        Record::new(ws, &state(size)).unwrap().bytes
    }

    async fn commit(j: &Journal, ws: &str, size: u64) -> Result<()> {
        let e = entry(ws, size);
        j.write(Some(Record::new(ws, &state(size)).unwrap()), e.line().unwrap()).await
    }

    fn open(dir: &Path) -> Journal {
        Journal::open(dir, JournalOptions::default(), Metrics::new()).unwrap()
    }

    async fn sizes(j: &Journal, names: &[&str]) -> Vec<Option<u64>> {
        let mut out = Vec::new();
        for ws in names {
            out.push(j.load(ws).await.unwrap().map(|s| s.size));
        }
        out
    }

    fn len(path: PathBuf) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(dir.join(AUDIT_FILE)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Failures to inject, per file.
    #[derive(Default)]
    struct Plan {
        /// Every write to this file stops after this many bytes; the next call fails with ENOSPC.
        torn: Option<(Role, usize)>,
        /// The next fdatasync of this file fails with EIO.
        sync_fails: Option<Role>,
        /// ftruncate fails (so a failed write cannot be undone).
        truncate_fails: bool,
    }

    struct Faulty {
        file: File,
        role: Role,
        plan: Arc<Mutex<Plan>>,
        /// Between the short write and the ENOSPC that follows it.
        mid_write: bool,
    }

    impl Storage for Faulty {
        fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<usize> {
            let torn = self.plan.lock().unwrap().torn.filter(|(r, _)| *r == self.role);
            match torn {
                Some(_) if self.mid_write => {
                    self.mid_write = false;
                    Err(io::Error::from(rustix::io::Errno::NOSPC))
                }
                Some((_, n)) if n < buf.len() => {
                    self.mid_write = true;
                    FileExt::write_all_at(&self.file, &buf[..n], offset)?;
                    Ok(n)
                }
                _ => FileExt::write_at(&self.file, buf, offset),
            }
        }
        fn sync_data(&mut self) -> io::Result<()> {
            let mut plan = self.plan.lock().unwrap();
            if plan.sync_fails == Some(self.role) {
                plan.sync_fails = None; // once: the fsync after the rollback's truncate works
                return Err(io::Error::from(rustix::io::Errno::IO));
            }
            drop(plan);
            self.file.sync_data()
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            if self.plan.lock().unwrap().truncate_fails {
                return Err(io::Error::from(rustix::io::Errno::IO));
            }
            self.file.set_len(len)
        }
    }

    fn open_faulty(dir: &Path, plan: &Arc<Mutex<Plan>>, metrics: Metrics) -> Journal {
        let plan = plan.clone();
        let wrap: Wrap =
            Box::new(move |role, file| Box::new(Faulty { file, role, plan: plan.clone(), mid_write: false }));
        Journal::open_with(dir, JournalOptions::default(), metrics, wrap).unwrap()
    }

    /// (a) every submitter of a group whose write stops part-way with ENOSPC gets an error and
    /// nothing of it stays in either file; (b) a later group succeeds; (c) reopening yields
    /// exactly the acknowledged states.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_write_fails_its_group_leaves_no_trace_and_later_groups_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let metrics = Metrics::new();
        let j = open_faulty(dir.path(), &plan, metrics.clone());
        for (ws, size) in [("a", 1), ("b", 1), ("a", 2)] {
            commit(&j, ws, size).await.unwrap();
        }
        let (jlen, alen) = (len(dir.path().join(JOURNAL_FILE)), len(dir.path().join(AUDIT_FILE)));

        plan.lock().unwrap().torn = Some((Role::Journal, 10));
        let (ra, rb, rc) = tokio::join!(commit(&j, "a", 3), commit(&j, "b", 2), commit(&j, "c", 1));
        for r in [ra, rb, rc] {
            assert!(matches!(&r, Err(SignerError::Storage(e)) if e.kind() == io::ErrorKind::StorageFull), "{r:?}");
        }
        assert_eq!(len(dir.path().join(JOURNAL_FILE)), jlen, "the torn bytes were cut");
        assert_eq!(len(dir.path().join(AUDIT_FILE)), alen, "no audit line for a failed group");
        assert!(metrics.journal_failures.get() >= 1);
        assert_eq!(sizes(&j, &["a", "b", "c"]).await, [Some(2), Some(1), None]);

        plan.lock().unwrap().torn = None;
        let (rb, rc) = tokio::join!(commit(&j, "b", 2), commit(&j, "c", 1));
        rb.unwrap();
        rc.unwrap();
        drop(j);

        let j = open(dir.path());
        assert_eq!(sizes(&j, &["a", "b", "c"]).await, [Some(2), Some(2), Some(1)]);
        let audited: Vec<_> =
            audit_lines(dir.path()).iter().map(|l| (l["workspace_id"].clone(), l["size"].clone())).collect();
        let want: Vec<_> =
            [("a", 1), ("b", 1), ("a", 2)].iter().map(|(w, s)| (serde_json::json!(w), serde_json::json!(s))).collect();
        assert_eq!(audited[..3], want[..], "acknowledged groups audited in order");
        assert_eq!(audited.len(), 5);
        commit(&j, "a", 3).await.unwrap();
        drop(j);
        let chain = crate::audit::verify_chain(&fs::read(dir.path().join(AUDIT_FILE)).unwrap(), None);
        assert_eq!(chain.unwrap().lines, 6, "the chain skips the failed group's lines and spans the restart");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_or_audit_write_undoes_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let j = open_faulty(dir.path(), &plan, Metrics::new());
        commit(&j, "a", 1).await.unwrap();
        let (jlen, alen) = (len(dir.path().join(JOURNAL_FILE)), len(dir.path().join(AUDIT_FILE)));
        // (`audit.log` is not fsynced per group: a failing fsync of it is
        // `a_failed_audit_fsync_poisons_and_the_restart_rewrites_the_lines`.)
        for fault in [
            Plan { sync_fails: Some(Role::Journal), ..Plan::default() },
            Plan { torn: Some((Role::Audit, 7)), ..Plan::default() },
            Plan { torn: Some((Role::Journal, 7)), ..Plan::default() },
        ] {
            *plan.lock().unwrap() = fault;
            assert!(commit(&j, "a", 2).await.is_err());
            assert_eq!(len(dir.path().join(JOURNAL_FILE)), jlen, "journal rolled back");
            assert_eq!(len(dir.path().join(AUDIT_FILE)), alen, "audit log rolled back");
            assert_eq!(j.load("a").await.unwrap().map(|s| s.size), Some(1));
        }
        *plan.lock().unwrap() = Plan::default();
        commit(&j, "a", 2).await.unwrap();
        drop(j);
        assert_eq!(open(dir.path()).load("a").await.unwrap().map(|s| s.size), Some(2));
        let chain = crate::audit::verify_chain(&fs::read(dir.path().join(AUDIT_FILE)).unwrap(), None);
        assert_eq!(chain.unwrap().lines, 2, "rolled-back lines left the chain intact");
    }

    /// When a failed write cannot even be truncated away, the journal refuses everything until
    /// restart (so no good record can follow the partial one), and the restart cuts the tail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undoable_failure_poisons_until_restart_which_cuts_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let j = open_faulty(dir.path(), &plan, Metrics::new());
        commit(&j, "a", 1).await.unwrap();
        commit(&j, "b", 1).await.unwrap();
        let jlen = len(dir.path().join(JOURNAL_FILE));
        *plan.lock().unwrap() = Plan { torn: Some((Role::Journal, 50)), truncate_fails: true, ..Plan::default() };
        assert!(commit(&j, "a", 2).await.is_err());
        assert_eq!(len(dir.path().join(JOURNAL_FILE)), jlen + 50, "the partial record is still there");
        *plan.lock().unwrap() = Plan::default();
        let e = commit(&j, "b", 2).await.unwrap_err();
        assert!(e.to_string().contains("unusable until restart"), "{e}");
        assert_eq!(len(dir.path().join(JOURNAL_FILE)), jlen + 50, "nothing written after the partial record");
        assert_eq!(sizes(&j, &["a", "b"]).await, [Some(1), Some(1)], "loads still work");
        drop(j);

        let j = open(dir.path());
        assert_eq!(len(dir.path().join(JOURNAL_FILE)), jlen, "restart cut the torn tail");
        assert_eq!(sizes(&j, &["a", "b"]).await, [Some(1), Some(1)]);
        commit(&j, "b", 2).await.unwrap();
    }

    /// Three groups from two workspaces, a refusal line with no record among them; returns the
    /// audit log as written.
    async fn three_groups(dir: &Path) -> Vec<u8> {
        let j = open(dir);
        commit(&j, "a", 1).await.unwrap();
        let refusal = Entry { event: Event::Refused, detail: Some("fork".into()), ..entry("b", 0) };
        j.write(None, refusal.line().unwrap()).await.unwrap();
        let (ra, rb) = tokio::join!(commit(&j, "a", 2), commit(&j, "b", 1));
        ra.unwrap();
        rb.unwrap();
        drop(j);
        fs::read(dir.join(AUDIT_FILE)).unwrap()
    }

    /// Whatever a crash (of the process or of the machine) left of `audit.log` after the journal
    /// was fsynced — lines missing, a partial line, zeros or garbage where unsynced pages were,
    /// lines of a group whose journal records did not survive, no file at all — opening the
    /// journal makes it exactly the acknowledged lines again, fsynced, chain intact, and the
    /// next group continues the chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_audit_log_behind_or_damaged_after_a_crash_is_repaired_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let good = three_groups(dir.path()).await;
        let path = dir.path().join(AUDIT_FILE);
        let last_line = good[..good.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
        let damaged: Vec<(&str, Vec<u8>)> = vec![
            ("last line missing", good[..last_line].to_vec()),
            ("partial last line", good[..last_line + 9].to_vec()),
            ("empty", Vec::new()),
            ("zeros in place of the tail", [&good[..40], &vec![0u8; good.len() - 40][..]].concat()),
            ("garbage in a middle line", {
                let mut g = good.clone();
                g[last_line - 20] ^= 0x5a;
                g
            }),
            ("lines of a group that did not survive", [&good[..], b"{\"prev\":\"00\",\"event\":\"lost\"}\n"].concat()),
        ];
        for (what, bytes) in damaged {
            fs::write(&path, &bytes).unwrap();
            let metrics = Metrics::new();
            let j = Journal::open(dir.path(), JournalOptions::default(), metrics.clone()).unwrap();
            assert_eq!(fs::read(&path).unwrap(), good, "{what}: repaired at open");
            assert_eq!(metrics.fsyncs.with_label_values(&["audit"]).get(), 1, "{what}: fsynced at open");
            drop(j);
        }
        fs::remove_file(&path).unwrap();
        let j = open(dir.path());
        assert_eq!(fs::read(&path).unwrap(), good, "a deleted audit log is written again");
        commit(&j, "b", 2).await.unwrap();
        drop(j);
        let text = fs::read(&path).unwrap();
        assert!(text.starts_with(&good));
        assert_eq!(verify_chain(&text, None).unwrap().lines, 5, "the chain continues over the repair");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// A crash at any byte of the audit write (what reached the disk of the unsynced lines
        /// is any prefix, then anything) is repaired at open.
        #[test]
        fn any_audit_tail_is_repaired(cut in any::<prop::sample::Index>(), junk in prop::collection::vec(any::<u8>(), 0..80)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let good = rt.block_on(three_groups(dir.path()));
            let path = dir.path().join(AUDIT_FILE);
            fs::write(&path, [&good[..cut.index(good.len() + 1)], &junk[..]].concat()).unwrap();
            drop(open(dir.path()));
            prop_assert_eq!(fs::read(&path).unwrap(), good);
        }
    }

    /// After a compaction the journal no longer holds the old lines (`audit.log` was fsynced
    /// first): losing them from the file is refused at open, not papered over; damage after
    /// the compaction point is still repaired.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_syncs_the_audit_log_first_and_lost_durable_lines_refuse_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let opts = JournalOptions { compact_bytes: 4 << 10, ..JournalOptions::default() };
        let j = Journal::open(dir.path(), opts.clone(), metrics.clone()).unwrap();
        let mut size = 0;
        while metrics.journal_compactions.get() == 0 {
            size += 1;
            commit(&j, "a", size).await.unwrap();
        }
        assert!(metrics.fsyncs.with_label_values(&["audit"]).get() >= 1, "audit.log fsynced before compacting");
        commit(&j, "a", size + 1).await.unwrap();
        drop(j);
        let path = dir.path().join(AUDIT_FILE);
        let good = fs::read(&path).unwrap();
        assert_eq!(verify_chain(&good, None).unwrap().lines, size + 1);
        // Where the compacted journal's audit records begin (its first record says).
        let journal = File::open(dir.path().join(JOURNAL_FILE)).unwrap();
        let compacted_at = scan(&journal, len(dir.path().join(JOURNAL_FILE))).unwrap().audit[0].audit_at;
        assert!(compacted_at > 0 && compacted_at < good.len() as u64);

        fs::write(&path, &good[..compacted_at as usize + 5]).unwrap();
        drop(Journal::open(dir.path(), opts.clone(), Metrics::new()).unwrap());
        assert_eq!(fs::read(&path).unwrap(), good, "a line after the compaction is repaired");

        fs::write(&path, &good[..compacted_at as usize - 1]).unwrap();
        let e = Journal::open(dir.path(), opts.clone(), Metrics::new()).unwrap_err();
        assert!(matches!(&e, SignerError::Corrupt(m) if m.contains("lines that were durable are gone")), "{e}");
        fs::write(&path, &good).unwrap();
        assert_eq!(
            Journal::open(dir.path(), opts, Metrics::new()).unwrap().load("a").await.unwrap(),
            Some(state(size + 1))
        );
    }

    /// A failed fsync of `audit.log` (before a compaction, the only time a running journal syncs
    /// it) may have lost lines only the journal holds: the journal refuses writes until restart
    /// and keeps its audit records; the restart rewrites the lines and the chain verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_audit_fsync_poisons_and_the_restart_rewrites_the_lines() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let metrics = Metrics::new();
        let opts = JournalOptions { compact_bytes: 4 << 10, ..JournalOptions::default() };
        let wrap_plan = plan.clone();
        let wrap: Wrap =
            Box::new(move |role, file| Box::new(Faulty { file, role, plan: wrap_plan.clone(), mid_write: false }));
        let j = Journal::open_with(dir.path(), opts.clone(), metrics.clone(), wrap).unwrap();
        plan.lock().unwrap().sync_fails = Some(Role::Audit);
        let mut size = 0;
        let e = loop {
            size += 1;
            if let Err(e) = commit(&j, "a", size).await {
                break e;
            }
        };
        assert!(e.to_string().contains("unusable until restart"), "{e}");
        assert_eq!(metrics.journal_compactions.get(), 0, "no compaction without a durable audit log");
        drop(j);
        let path = dir.path().join(AUDIT_FILE);
        let acknowledged = fs::read(&path).unwrap();
        // What the failed fsync may have cost: the file as it was before the last few groups.
        fs::write(&path, &acknowledged[..acknowledged.len() / 2]).unwrap();
        let j = Journal::open(dir.path(), opts, Metrics::new()).unwrap();
        assert_eq!(j.load("a").await.unwrap().map(|s| s.size), Some(size - 1));
        drop(j);
        assert_eq!(fs::read(&path).unwrap(), acknowledged);
        assert_eq!(verify_chain(&acknowledged, None).unwrap().lines, size - 1);
    }

    /// An `audit.log` write that fails and cannot be cut back poisons the journal; if the
    /// group's journal records are durable they are its state after the restart, and their
    /// audit lines are in `audit.log` (never a state without its lines).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_kept_by_a_poisoned_journal_gets_its_audit_lines_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let j = open_faulty(dir.path(), &plan, Metrics::new());
        commit(&j, "a", 1).await.unwrap();
        *plan.lock().unwrap() = Plan { torn: Some((Role::Audit, 30)), truncate_fails: true, ..Plan::default() };
        assert!(commit(&j, "a", 2).await.is_err());
        *plan.lock().unwrap() = Plan::default();
        assert!(commit(&j, "a", 3).await.unwrap_err().to_string().contains("unusable until restart"));
        drop(j);
        let j = open(dir.path());
        assert_eq!(j.load("a").await.unwrap().map(|s| s.size), Some(2), "the durable record is the state");
        drop(j);
        let text = fs::read(dir.path().join(AUDIT_FILE)).unwrap();
        assert_eq!(verify_chain(&text, None).unwrap().lines, 2);
        let sizes: Vec<_> = audit_lines(dir.path()).iter().map(|l| l["size"].clone()).collect();
        assert_eq!(sizes, [serde_json::json!(1), serde_json::json!(2)], "and its audit line with it");
    }

    /// A journal written before audit records existed (state records carrying an `audit`
    /// member, no audit records) opens with its `audit.log` as it was (minus a partial last
    /// line); the audit records written from then on start where that file ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_from_before_audit_records_opens_and_continues_its_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let payload = serde_json::json!({"ws": "a", "state": state(7), "audit": entry("a", 7)}).to_string();
        let mut old = (payload.len() as u32).to_be_bytes().to_vec();
        old.extend_from_slice(&Sha256::digest(payload.as_bytes()));
        old.extend_from_slice(payload.as_bytes());
        fs::write(dir.path().join(JOURNAL_FILE), &old).unwrap();
        let mut head = GENESIS;
        let mut lines = Vec::new();
        chain_lines(&mut head, &entry("a", 7).line().unwrap(), &mut lines);
        fs::write(dir.path().join(AUDIT_FILE), [&lines[..], b"{\"prev\":\"0"].concat()).unwrap();

        let j = open(dir.path());
        assert_eq!(j.load("a").await.unwrap(), Some(state(7)));
        commit(&j, "a", 8).await.unwrap();
        drop(j);
        let text = fs::read(dir.path().join(AUDIT_FILE)).unwrap();
        assert!(text.starts_with(&lines), "the old lines are kept, the partial one cut");
        assert_eq!(verify_chain(&text, None).unwrap().lines, 2);
        let journal = File::open(dir.path().join(JOURNAL_FILE)).unwrap();
        let spans = scan(&journal, len(dir.path().join(JOURNAL_FILE))).unwrap().audit;
        assert_eq!(spans.iter().map(|s| s.audit_at).collect::<Vec<_>>(), [lines.len() as u64]);
        fs::write(dir.path().join(AUDIT_FILE), &lines).unwrap();
        drop(open(dir.path()));
        assert_eq!(fs::read(dir.path().join(AUDIT_FILE)).unwrap(), text, "and repaired from there");
    }

    #[tokio::test]
    async fn last_record_wins_a_torn_tail_is_cut_and_a_corrupt_record_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path());
        for (ws, size) in [("a", 1), ("b", 5), ("a", 2)] {
            commit(&j, ws, size).await.unwrap();
        }
        drop(j);
        let path = dir.path().join(JOURNAL_FILE);
        let good = fs::read(&path).unwrap();
        for cut in [1, 20, 36, 40, record("a", 3).len() - 1] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&record("a", 3)[..cut]); // a crash mid-write
            fs::write(&path, &bytes).unwrap();
            let j = open(dir.path());
            assert_eq!(sizes(&j, &["a", "b", "c"]).await, [Some(2), Some(5), None], "cut {cut}");
            drop(j);
            assert_eq!(fs::read(&path).unwrap(), good, "the torn tail is cut (cut {cut})");
        }
        // A complete record with a flipped payload byte: corruption, refused.
        let mut bytes = good.clone();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let e = Journal::open(dir.path(), JournalOptions::default(), Metrics::new()).unwrap_err();
        assert!(matches!(e, SignerError::Corrupt(_)), "{e}");
        // A partial audit line left by a crash is cut too.
        fs::write(&path, &good).unwrap();
        let audit = dir.path().join(AUDIT_FILE);
        let whole = fs::read(&audit).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"time\":\"20");
        fs::write(&audit, &torn).unwrap();
        drop(open(dir.path()));
        assert_eq!(fs::read(&audit).unwrap(), whole);
    }

    fn with_delay(delay: std::time::Duration) -> JournalOptions {
        JournalOptions { commit_delay: delay, ..JournalOptions::default() }
    }

    /// A long commit delay never holds a workspace that appends alone (no other workspace to
    /// wait for), and writing it one record at a time works as without the delay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_commit_delay_a_workspace_appending_alone_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), with_delay(Duration::from_secs(600)), Metrics::new()).unwrap();
        for size in 1..=5 {
            let c = tokio::time::timeout(Duration::from_secs(60), commit(&j, "a", size)).await;
            c.expect("a lone workspace waited for nobody").unwrap();
        }
        assert_eq!(j.load("a").await.unwrap().map(|s| s.size), Some(5));
    }

    /// With a commit delay, a group waits for the next record of a workspace that appended
    /// lately, and the two share one fsync.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_commit_delay_recently_active_workspaces_share_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let j = Arc::new(Journal::open(dir.path(), with_delay(Duration::from_secs(600)), metrics.clone()).unwrap());
        commit(&j, "a", 1).await.unwrap();
        let fsyncs = || metrics.fsyncs.with_label_values(&["journal"]).get();
        let before = fsyncs();
        let waiting = tokio::spawn({
            let j = j.clone();
            async move { commit(&j, "b", 1).await }
        });
        let mut waiting = std::pin::pin!(waiting);
        // `a` appended lately, so `b`'s group waits for `a`'s next record (up to ten minutes):
        // `b` is not answered without it.
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(), "b did not wait");
        tokio::time::timeout(Duration::from_secs(60), commit(&j, "a", 2)).await.expect("a's record was held").unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(fsyncs() - before, 1, "b and a shared one fsync");
        assert_eq!(sizes(&j, &["a", "b"]).await, [Some(2), Some(1)]);
    }

    /// A second journal on the same directory opens only once the first writer has stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_writer_per_journal() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path());
        commit(&first, "a", 1).await.unwrap();
        let path = dir.path().to_owned();
        let second = std::thread::spawn(move || open(&path));
        // The second open waits on the lock (it cannot finish while `first` lives): dropping
        // `first` is what lets it through.
        commit(&first, "a", 2).await.unwrap();
        assert!(!second.is_finished(), "a second writer opened the journal while the first runs");
        drop(first);
        let second = second.join().unwrap();
        assert_eq!(second.load("a").await.unwrap().map(|s| s.size), Some(2));
    }

    /// A snapshot (for backups) opens as exactly the state that was durable when it was taken,
    /// with the audit lines those states vouch for; later groups are not in it.
    #[tokio::test]
    async fn a_snapshot_opens_as_the_durable_state_and_its_audit_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path());
        for (ws, size) in [("a", 1), ("b", 2), ("a", 3)] {
            commit(&j, ws, size).await.unwrap();
        }
        let dest = dir.path().join("snap");
        fs::create_dir(&dest).unwrap();
        let info = j.snapshot(&dest).await.unwrap();
        assert_eq!(info.workspaces, 2);
        assert_eq!(info.audit_bytes, len(dir.path().join(AUDIT_FILE)));
        commit(&j, "a", 4).await.unwrap();
        assert!(j.snapshot(&dest).await.is_err(), "an existing snapshot is never overwritten");
        assert_eq!(j.sizes(None, 1).await.unwrap(), (vec![("a".to_owned(), 4)], true));
        assert_eq!(j.sizes(Some("a".into()), 5).await.unwrap(), (vec![("b".to_owned(), 2)], false));

        let read = read_states(&dest).unwrap();
        assert_eq!(read.iter().map(|(ws, st)| (ws.as_str(), st.size)).collect::<Vec<_>>(), [("a", 3), ("b", 2)]);
        let copy = open(&dest);
        assert_eq!(sizes(&copy, &["a", "b"]).await, [Some(3), Some(2)]);
        let chain = crate::audit::verify_chain(&fs::read(dest.join(AUDIT_FILE)).unwrap(), None).unwrap();
        assert_eq!(chain.lines, 3);
        // And it goes on from there like any journal.
        commit(&copy, "b", 5).await.unwrap();
        drop(copy);
        assert_eq!(audit_lines(&dest).len(), 4);
    }

    #[tokio::test]
    async fn create_is_refused_over_a_non_empty_log_but_not_over_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path());
        let created = |ws: &'static str| Record::create(ws).unwrap();
        j.write(Some(created("a")), Vec::new()).await.unwrap();
        j.write(Some(created("a")), Vec::new()).await.unwrap(); // a creation that failed after its record
        commit(&j, "a", 4).await.unwrap();
        let e = j.write(Some(created("a")), Vec::new()).await.unwrap_err();
        assert!(matches!(e, SignerError::Corrupt(_)), "{e}");
        assert_eq!(j.load("a").await.unwrap().map(|s| s.size), Some(4), "never restarted at 0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_keeps_every_workspace_and_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let opts = JournalOptions { compact_bytes: 16 << 10, ..JournalOptions::default() };
        let j = Arc::new(Journal::open(dir.path(), opts.clone(), metrics.clone()).unwrap());
        let names: Vec<String> = (0..60).map(|i| format!("ws{i}")).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for ws in names.clone() {
            let j = j.clone();
            tasks.spawn(async move {
                for size in 1..=40u64 {
                    commit(&j, &ws, size).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert!(metrics.journal_compactions.get() >= 1, "never compacted");
        let live: u64 = names.iter().map(|ws| record(ws, 40).len() as u64).sum();
        // The most one group adds after the size was checked: a record and a chained audit line
        // (`"prev":"<64 hex>",` longer than the entry's) per workspace, in one audit record.
        let group = live + names.iter().map(|ws| entry(ws, 40).line().unwrap().len() as u64 + 73).sum::<u64>() + 45;
        let file = len(dir.path().join(JOURNAL_FILE));
        assert!(file <= (2 * live).max(opts.compact_bytes) + group, "journal of {file} bytes for {live} live bytes");
        let j = Arc::into_inner(j).unwrap();
        drop(j);
        let j = open(dir.path());
        for ws in &names {
            assert_eq!(j.load(ws).await.unwrap(), Some(state(40)), "{ws}");
        }
        assert!(!dir.path().join(COMPACT_FILE).exists());
    }

    proptest! {
        /// The hand-written record is what serde_json writes, and reads back as the state.
        #[test]
        fn records_are_what_serde_json_writes(
            ws in "[a-z_]{1,8}|.{1,4}",
            n in (0usize..4, 0usize..4, 0usize..6),
            size in any::<u64>(),
            checkpoint in prop::option::of(".{0,12}"),
            times in any::<(u64, u64, u64)>(),
            seed in any::<u8>(),
        ) {
            let hashes = |k: usize, salt: u8| (0..k).map(|i| allowly_receipt::types::HexHash([seed ^ salt ^ i as u8; 32])).collect::<Vec<_>>();
            let state = LogState {
                size,
                peaks: hashes(n.0, 1),
                checkpoint,
                checkpoint_ms: times.0,
                prev_size: times.1,
                prev_peaks: hashes(n.1, 2),
                last_group: hashes(n.2, 3),
                last_leaf_ms: times.2,
            };
            let mut ours = Vec::new();
            encode_record(&ws, &state, &mut ours).unwrap();
            let serde = serde_json::to_vec(&RecordRef { ws: &ws, state: &state }).unwrap();
            prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(serde).unwrap());
            let bytes = Record::new(&ws, &state).unwrap().bytes;
            match decode(&bytes) {
                Ok(Decoded::State(rec)) => prop_assert_eq!((rec.ws, rec.state), (ws, state)),
                _ => prop_assert!(false, "does not decode as a state record"),
            }
        }

        #[test]
        fn scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = scan(&bytes[..], bytes.len() as u64);
        }

        /// Any prefix of valid records (a crash at any byte) scans to the records wholly in it.
        #[test]
        fn any_prefix_yields_exactly_the_whole_records(n in 1u64..6, cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            let mut ends = vec![0u64];
            for i in 0..n {
                bytes.extend_from_slice(&record(if i % 2 == 0 { "x" } else { "y" }, i));
                ends.push(bytes.len() as u64);
            }
            let c = cut.index(bytes.len() + 1);
            let s = scan(&bytes[..c], c as u64).unwrap();
            let whole = ends.iter().rposition(|&e| e <= c as u64).unwrap();
            prop_assert_eq!(s.valid, ends[whole]);
            prop_assert_eq!(s.index.len(), whole.min(2));
        }
    }
}

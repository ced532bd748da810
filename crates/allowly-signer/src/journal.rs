//! The signer's one durable log of workspace states: `<dir>/journal`, shared by every workspace,
//! written by one dedicated thread that group-commits whatever the workspace actors queued.
//!
//! # Why one journal
//!
//! A durable signature needs its state on disk first. With one file per workspace, load spread
//! over thousands of workspaces paid one fsync per signed batch (plus one for the audit line).
//! Here every actor hands its record to the writer thread over a bounded channel and awaits a
//! completion; the thread takes everything queued, writes it with one `write`, fdatasyncs once,
//! appends the group's audit lines to `audit.log` and fdatasyncs that once, then completes every
//! submitter. Two fsyncs per group, however many workspaces and batches the group holds
//! (`allowly_signer_journal_records_per_fsync`). The actor awaits its own completion before it
//! signs its next group, so a workspace has at most one record in flight and records of one
//! workspace reach the file in order; batches arriving meanwhile coalesce into its next group.
//!
//! # Format
//!
//! Records back to back, no file header: `u32` BE payload length ‖ SHA-256(payload) ‖ payload,
//! the payload being JSON `{"ws": id, "state": LogState, "audit": audit entry}`. The last
//! record of a workspace is its state.
//!
//! # Recovery
//!
//! On open the whole file is scanned. A record whose header or payload runs past the end of the
//! file is a torn write and is cut off (with everything after it, which can only be more of the
//! same torn write). A complete record whose checksum or JSON is wrong is corruption: the signer
//! refuses to start rather than guess (as with the per-workspace files before). A workspace
//! whose keys exist but that has no record is refused at load ("refusing to restart the log").
//!
//! # Failed writes never tear the file
//!
//! The writer appends at an explicit offset, the durable length. If `write` or `fdatasync`
//! fails (ENOSPC, EIO), it truncates the file back to the durable length and fdatasyncs; every
//! submitter of the group gets an error and its actor keeps its previous state, so nothing
//! signed leaves. If the audit write fails, the journal is truncated back too (a checkpoint is
//! never released without its audit line). If even the truncation fails, the journal is
//! *poisoned*: every later submission fails until restart, so no good record can ever follow a
//! partial one, and the restart cuts the torn tail (its length runs past the end of the file).
//! Records of the failed group that did reach the disk whole then become the state: signatures
//! that were never released, which the service reconciles like any lost answer.
//!
//! # Compaction
//!
//! Once the file exceeds [`JournalOptions::compact_bytes`] and holds more than twice the bytes
//! of the live records (one per workspace), the writer copies the live records, checksums
//! verified, into `journal.compact`, fsyncs it, renames it over `journal`, fsyncs the directory
//! and appends to the new file. Until the rename the old file is complete; after it the new one
//! is; every workspace's last record is in both. A failure before the rename leaves the old file
//! in use; a failure after it (directory fsync, reopening) poisons the journal, since appending
//! to the unlinked old file would lose acknowledged records.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read as _, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{chain_lines, line_hash, Entry, GENESIS};
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
/// Submissions waiting for the writer; a full queue makes actors wait (back pressure).
const QUEUE: usize = 16_384;
/// Most submissions, and about the most bytes, the writer takes into one group.
const MAX_GROUP_SUBMISSIONS: usize = 8_192;
const MAX_GROUP_BYTES: usize = 64 << 20;
/// Bytes at the end of the audit log looked at when opening it (to cut a partial last line and
/// hash the last whole one, which the chain continues from). A line lists a group's leaf hashes,
/// so the longest (65 536 leaves) is about 4.4 MB.
const AUDIT_TAIL_SCAN: u64 = 8 << 20;

/// Tuning of the journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Compact once the file is larger than this (and more than twice its live records).
    pub compact_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self { compact_bytes: 64 << 20 }
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

#[derive(Serialize)]
struct RecordRef<'a> {
    ws: &'a str,
    state: &'a LogState,
    audit: &'a Entry<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordOwned {
    ws: String,
    state: LogState,
    // Kept in the file for auditors; the signer itself needs only the state.
    #[allow(dead_code)]
    audit: serde::de::IgnoredAny,
}

/// One encoded journal record, ready to submit. Encoded by the submitting actor, so the JSON
/// work is spread over the runtime's workers and the writer thread only copies bytes.
#[derive(Debug)]
pub struct Record {
    ws: String,
    size: u64,
    bytes: Vec<u8>,
    /// A workspace's first record: refused if the journal already holds a non-empty log for it.
    create: bool,
}

impl Record {
    /// The record of `state` (the workspace's new state) and the audit fields of its event.
    pub fn new(ws: &str, state: &LogState, audit: &Entry<'_>) -> Result<Self> {
        let payload = serde_json::to_vec(&RecordRef { ws, state, audit })
            .map_err(|e| SignerError::Corrupt(format!("journal record: {e}")))?;
        let len = u32::try_from(payload.len())
            .map_err(|_| SignerError::InvalidArgument("journal record larger than 4 GiB".into()))?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&Sha256::digest(&payload));
        bytes.extend_from_slice(&payload);
        Ok(Self { ws: ws.to_owned(), size: state.size, bytes, create: false })
    }

    /// The empty-log record of a workspace being created. The writer refuses it when the journal
    /// already has a non-empty log for `ws` (keys lost but log kept: recreating would fork it); an
    /// empty one (a creation that failed after its record) may be written again.
    pub fn create(ws: &str, audit: &Entry<'_>) -> Result<Self> {
        Ok(Self { create: true, ..Self::new(ws, &LogState::empty(), audit)? })
    }
}

/// Parses one whole record (header included).
fn decode(bytes: &[u8]) -> std::result::Result<RecordOwned, String> {
    let (header, payload) = bytes.split_at_checked(HEADER_LEN).ok_or("record shorter than its header")?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if payload.len() != len {
        return Err("record length does not match its header".into());
    }
    if Sha256::digest(payload).as_slice() != &header[4..] {
        return Err("record fails its checksum".into());
    }
    serde_json::from_slice(payload).map_err(|e| format!("record: {e}"))
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

enum Submission {
    Write { record: Option<Record>, audit: Vec<u8>, done: oneshot::Sender<Result<()>> },
    Load { ws: String, reply: oneshot::Sender<Result<Option<LogState>>> },
}

impl Submission {
    fn bytes(&self) -> usize {
        match self {
            Self::Write { record, audit, .. } => record.as_ref().map_or(0, |r| r.bytes.len()) + audit.len(),
            Self::Load { .. } => 0,
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
    /// Opens (creating if needed) `dir/journal` and `dir/audit.log`, recovers the journal (see
    /// the module docs) and starts the writer thread.
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

    /// Makes `record` (if any) and the audit `lines` durable, together with whatever else the
    /// writer's current group holds. Returns once both are fsynced, or with an error after which
    /// neither is in the files.
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

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once it has drained it.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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
    alen: u64,
    /// Hash of the audit log's last durable line ([`GENESIS`] when empty): the next line's `prev`.
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

/// Scans the journal: the index of last records, their total bytes, and the length of the
/// valid prefix (shorter than the file if its tail is torn).
fn scan(file: impl io::Read, file_len: u64) -> Result<(HashMap<String, Slot>, u64, u64)> {
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut index: HashMap<String, Slot> = HashMap::new();
    let mut live = 0u64;
    let mut at = 0u64;
    let mut record = Vec::new();
    while file_len - at >= HEADER_LEN as u64 {
        record.resize(HEADER_LEN, 0);
        r.read_exact(&mut record)?;
        let len = u64::from(u32::from_be_bytes([record[0], record[1], record[2], record[3]]));
        if file_len - at - (HEADER_LEN as u64) < len {
            break; // torn payload
        }
        let whole = HEADER_LEN + len as usize;
        record.resize(whole, 0);
        r.read_exact(&mut record[HEADER_LEN..])?;
        let rec = decode(&record).map_err(|e| SignerError::Corrupt(format!("journal byte {at}: {e}")))?;
        let slot = Slot { offset: at, len: whole as u64, size: rec.state.size };
        if let Some(old) = index.insert(rec.ws, slot) {
            live -= old.len;
        }
        live += slot.len;
        at += slot.len;
    }
    Ok((index, live, at))
}

/// Opens the audit log and cuts a partial last line left by a crash, so that what is appended
/// next starts a line of its own. Returns the file, its length and the hash of its last line
/// (the chain's head, [`GENESIS`] when empty).
fn open_audit(path: &Path) -> Result<(File, u64, [u8; 32])> {
    let file = open_rw(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((file, 0, GENESIS));
    }
    let from = len.saturating_sub(AUDIT_TAIL_SCAN);
    let mut tail = vec![0u8; (len - from) as usize];
    file.read_exact_at(&mut tail, from)?;
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
        file.set_len(from + keep as u64)?;
        file.sync_all()?;
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
    Ok((file, from + keep as u64, head))
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
        let (index, live, valid) = scan(&file, file_len)?;
        if valid < file_len {
            tracing::warn!(cut = file_len - valid, at = valid, "discarding a torn journal tail");
            file.set_len(valid)?;
            file.sync_all()?;
        }
        let audit_path = dir.join(AUDIT_FILE);
        let audit_existed = audit_path.exists();
        let (audit, alen, audit_head) = open_audit(&audit_path)?;
        if !audit_existed {
            // A new file's name is durable only once its directory is synced: without this a
            // power cut could take `audit.log` whole, with the lines of checkpoints already
            // released (the power-loss tier, allowly-server's tests/powerloss.rs, found it).
            sync_dir(dir)?;
        }
        let reader = File::open(&path)?;
        metrics.journal_bytes.set(i64::try_from(valid).unwrap_or(i64::MAX));
        Ok(Self {
            _lock: lock,
            dir: dir.to_owned(),
            journal: wrap(Role::Journal, file),
            audit: wrap(Role::Audit, audit),
            path,
            reader,
            jlen: valid,
            alen,
            audit_head,
            index,
            live,
            opts,
            poisoned: None,
            metrics,
            wrap,
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        let mut group = Vec::new();
        while let Some(first) = rx.blocking_recv() {
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
            self.group(&mut group);
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
        for s in group.drain(..) {
            let (record, lines, done) = match s {
                Submission::Load { ws, reply } => {
                    loads.push((ws, reply));
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
            match self.persist(&journal, &audit, staged.len()) {
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
        if self.poisoned.is_none() && self.jlen > self.opts.compact_bytes && self.jlen > self.live.saturating_mul(2) {
            if let Err(e) = self.compact() {
                self.metrics.journal_failures.inc();
                tracing::error!(error = %e, poisoned = self.poisoned.is_some(), "journal compaction failed");
            }
        }
    }

    /// Journal records, then audit lines, each written and fdatasynced; on any failure both
    /// files are cut back to where this group began.
    fn persist(&mut self, journal: &[u8], audit: &[u8], records: usize) -> io::Result<()> {
        if !journal.is_empty() {
            if let Err(e) = self.append_synced(Role::Journal, journal) {
                self.roll_back(Role::Journal);
                return Err(e);
            }
            self.metrics.journal_records_per_fsync.observe(records as f64);
        }
        if !audit.is_empty() {
            if let Err(e) = self.append_synced(Role::Audit, audit) {
                self.roll_back(Role::Audit);
                if !journal.is_empty() {
                    // Durable already, but its audit lines are not: undo it, so that no
                    // checkpoint is released (or recovered) without its line.
                    self.roll_back(Role::Journal);
                }
                return Err(e);
            }
        }
        self.jlen += journal.len() as u64;
        self.alen += audit.len() as u64;
        self.metrics.journal_bytes.set(i64::try_from(self.jlen).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Writes `bytes` at the file's durable length and fdatasyncs it (counted).
    fn append_synced(&mut self, role: Role, bytes: &[u8]) -> io::Result<()> {
        let (file, len, label) = match role {
            Role::Journal => (&mut self.journal, self.jlen, "journal"),
            Role::Audit => (&mut self.audit, self.alen, "audit"),
        };
        write_all_at(&mut **file, bytes, len)?;
        self.metrics.fsyncs.with_label_values(&[label]).inc();
        file.sync_data()
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
        let rec = decode(&bytes).map_err(|e| SignerError::Corrupt(format!("journal byte {}: {e}", slot.offset)))?;
        if rec.ws != ws {
            return Err(SignerError::Corrupt(format!("journal byte {} holds {}, not {ws}", slot.offset, rec.ws)));
        }
        Ok(Some(rec.state))
    }

    /// Rewrites the journal with only the last record of each workspace (see the module docs).
    fn compact(&mut self) -> io::Result<()> {
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
                self.live = len;
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

    /// Copies every live record (checksum verified) into `tmp` and fsyncs it.
    fn write_snapshot(&self, tmp: &Path) -> io::Result<(HashMap<String, Slot>, u64)> {
        let file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut order: Vec<(&String, &Slot)> = self.index.iter().collect();
        order.sort_unstable_by_key(|(_, s)| s.offset); // sequential reads
        let mut index = HashMap::with_capacity(order.len());
        let mut at = 0u64;
        let mut bytes = Vec::new();
        for (ws, slot) in order {
            bytes.resize(slot.len as usize, 0);
            self.reader.read_exact_at(&mut bytes, slot.offset)?;
            // Never copy a record that does not verify: the copy would launder it.
            match decode(&bytes) {
                Ok(rec) if rec.ws == *ws => {}
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

    use allowly_receipt::types::Timestamp;
    use proptest::prelude::*;

    use super::*;
    use crate::audit::Event;

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
        Record::new(ws, &state(size), &entry(ws, size)).unwrap().bytes
    }

    async fn commit(j: &Journal, ws: &str, size: u64) -> Result<()> {
        let e = entry(ws, size);
        j.write(Some(Record::new(ws, &state(size), &e).unwrap()), e.line().unwrap()).await
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
        assert_eq!(chain.map(|c| c.lines), Ok(6), "the chain skips the failed group's lines and spans the restart");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_or_audit_write_undoes_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(Mutex::new(Plan::default()));
        let j = open_faulty(dir.path(), &plan, Metrics::new());
        commit(&j, "a", 1).await.unwrap();
        let (jlen, alen) = (len(dir.path().join(JOURNAL_FILE)), len(dir.path().join(AUDIT_FILE)));
        for fault in [
            Plan { sync_fails: Some(Role::Journal), ..Plan::default() },
            Plan { sync_fails: Some(Role::Audit), ..Plan::default() },
            Plan { torn: Some((Role::Audit, 7)), ..Plan::default() },
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
        assert_eq!(chain.map(|c| c.lines), Ok(2), "rolled-back lines left the chain intact");
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

    #[tokio::test]
    async fn create_is_refused_over_a_non_empty_log_but_not_over_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path());
        let created = |ws: &'static str| Record::create(ws, &entry(ws, 0)).unwrap();
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
        let opts = JournalOptions { compact_bytes: 16 << 10 };
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
        let file = len(dir.path().join(JOURNAL_FILE));
        assert!(file <= (2 * live).max(opts.compact_bytes) + live, "journal of {file} bytes for {live} live bytes");
        let j = Arc::into_inner(j).unwrap();
        drop(j);
        let j = open(dir.path());
        for ws in &names {
            assert_eq!(j.load(ws).await.unwrap(), Some(state(40)), "{ws}");
        }
        assert!(!dir.path().join(COMPACT_FILE).exists());
    }

    proptest! {
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
            let (index, _, valid) = scan(&bytes[..c], c as u64).unwrap();
            let whole = ends.iter().rposition(|&e| e <= c as u64).unwrap();
            prop_assert_eq!(valid, ends[whole]);
            prop_assert_eq!(index.len(), whole.min(2));
        }
    }
}

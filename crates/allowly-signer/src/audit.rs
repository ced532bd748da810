//! The signer's own audit log: `<dir>/audit.log`, append-only JSON lines, one per signed
//! checkpoint (and per refused fork/rollback attempt, key creation and rotation), so the security
//! team can reconcile what the signer signed with what the service stored.
//!
//! Order of writes for a batch: log state (fsync), then the audit line (fsync), then the answer.
//! A crash between the two leaves a durable checkpoint without its line; every workspace load
//! therefore writes a `resumed` line naming the checkpoint it continues from, so no checkpoint
//! that can ever be released is missing from the log.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Mutex;

use allowly_receipt::types::Timestamp;
use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Created,
    Checkpoint,
    Rotation,
    Resumed,
    Refused,
}

/// One line.
#[derive(Debug, Clone, Serialize)]
pub struct Entry<'a> {
    pub time: Timestamp,
    pub event: Event,
    pub workspace_id: &'a str,
    pub size: u64,
    /// Base64 root of the checkpoint (as in the note), when there is one.
    pub root: Option<String>,
    pub key_id: Option<String>,
    /// Uid of the peer that asked (from SO_PEERCRED); `None` for the signer's own actions.
    pub peer_uid: Option<u32>,
    pub detail: Option<String>,
}

/// The audit log file.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().append(true).create(true).mode(0o600).open(dir.join("audit.log"))?;
        Ok(Self { file: Mutex::new(file) })
    }

    /// Appends one line and fsyncs it.
    pub fn record(&self, e: &Entry<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        f.write_all(&line)?;
        f.sync_data()
    }
}

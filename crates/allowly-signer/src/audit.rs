//! The signer's own audit log: `<dir>/audit.log`, append-only JSON lines, one per signed
//! checkpoint (and per refused fork/rollback attempt, key creation, rotation and workspace
//! load), so the security team can reconcile what the signer signed with what the service
//! stored. This module only shapes the lines; the journal writer thread (`journal`) writes them.
//!
//! # Durability (what survives a crash)
//!
//! The journal writer handles a whole group of submissions (from any number of workspaces) at
//! once: it writes every journal record of the group and fdatasyncs the journal, then appends
//! every audit line of the group and fdatasyncs `audit.log`, and only then completes the
//! submitters. So a signature leaves the process only once both its journal record and its
//! audit line are durable, at a cost of two fsyncs per *group*, not per batch.
//!
//! If either write or fsync fails, the writer truncates both files back to where the group
//! began and fails the whole group: no checkpoint is released without its line. A crash
//! between the journal's fsync and the audit log's can leave a durable checkpoint (never
//! released) without its line; every workspace load therefore writes a `resumed` line naming
//! the checkpoint it continues from, so no checkpoint that can ever be released is missing from
//! the log. Each journal record also carries its event's audit fields, so the journal itself is
//! a second, checksummed copy of every durable event until compaction drops superseded records.
//!
//! A crash in the middle of an audit write leaves a partial last line; it is cut when the
//! signer starts again (before anything is appended after it), so every line stays whole JSON.

use allowly_receipt::types::Timestamp;
use serde::Serialize;

use crate::error::{Result, SignerError};

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

impl Entry<'_> {
    /// The entry as one audit-log line, newline included.
    pub fn line(&self) -> Result<Vec<u8>> {
        let mut line = serde_json::to_vec(self).map_err(|e| SignerError::Corrupt(format!("audit line: {e}")))?;
        line.push(b'\n');
        Ok(line)
    }
}

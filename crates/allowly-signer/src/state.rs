//! Durable log state of one workspace: `<dir>/logs/<workspace>.state`, an append-only file of
//! checksummed records; the last valid record is the state. A record is written and fsynced
//! before any signature over it leaves the process, so after a crash the signer continues from
//! exactly what it last answered and can never sign two different checkpoints for one size.
//!
//! Record: `u32` BE payload length ‖ SHA-256(payload) ‖ payload (JSON). A record whose length
//! runs past the end of the file is a torn write from a crash and is cut off; a complete record
//! with a wrong checksum is corruption and the workspace refuses to load.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use allowly_receipt::merkle::{Frontier, Hash};
use allowly_receipt::types::HexHash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, SignerError};
use crate::keystore::{sync_dir, write_atomic};

/// Compact the file (rewrite it with only the last record) once it grows past this.
const COMPACT_BYTES: u64 = 8 << 20;

/// What the signer remembers of a workspace log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogState {
    pub size: u64,
    pub peaks: Vec<HexHash>,
    /// The last signed checkpoint note (`None` for an empty log).
    pub checkpoint: Option<String>,
    /// Unix ms of the last checkpoint; checkpoint times never go backwards.
    pub checkpoint_ms: u64,
    /// The frontier before the last signed group and that group's leaves: lets an identical
    /// retry of a lost answer be answered again (same checkpoint, same proofs) instead of failing.
    pub prev_size: u64,
    pub prev_peaks: Vec<HexHash>,
    pub last_group: Vec<HexHash>,
}

impl LogState {
    /// The state of a new, empty log.
    pub fn empty() -> Self {
        Self {
            size: 0,
            peaks: vec![],
            checkpoint: None,
            checkpoint_ms: 0,
            prev_size: 0,
            prev_peaks: vec![],
            last_group: vec![],
        }
    }

    pub fn frontier(&self) -> Result<Frontier> {
        Ok(Frontier::from_parts(self.size, self.peaks.iter().map(|h| h.0).collect())?)
    }

    pub fn prev_frontier(&self) -> Result<Frontier> {
        Ok(Frontier::from_parts(self.prev_size, self.prev_peaks.iter().map(|h| h.0).collect())?)
    }

    pub fn group(&self) -> Vec<Hash> {
        self.last_group.iter().map(|h| h.0).collect()
    }
}

/// The append-only state file of one workspace.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    file: File,
    len: u64,
}

fn encode(state: &LogState) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec(state).map_err(|e| SignerError::Corrupt(e.to_string()))?;
    let len = u32::try_from(payload.len()).map_err(|_| SignerError::Corrupt("state record too large".into()))?;
    let mut rec = Vec::with_capacity(36 + payload.len());
    rec.extend_from_slice(&len.to_be_bytes());
    rec.extend_from_slice(&Sha256::digest(&payload));
    rec.extend_from_slice(&payload);
    Ok(rec)
}

/// Scans records; returns the last valid state and the byte length of the valid prefix.
fn scan(bytes: &[u8], what: &str) -> Result<(Option<LogState>, u64)> {
    let mut at = 0usize;
    let mut last = None;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 36) else { break }; // torn header
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(payload) = bytes.get(at + 36..at + 36 + len) else { break }; // torn payload
        if Sha256::digest(payload).as_slice() != &header[4..36] {
            return Err(SignerError::Corrupt(format!("{what}: record at byte {at} fails its checksum")));
        }
        let state: LogState = serde_json::from_slice(payload)
            .map_err(|e| SignerError::Corrupt(format!("{what}: record at byte {at}: {e}")))?;
        last = Some(state);
        at += 36 + len;
    }
    Ok((last, at as u64))
}

impl StateFile {
    fn path_for(dir: &Path, ws: &str) -> PathBuf {
        dir.join("logs").join(format!("{ws}.state"))
    }

    /// Creates the state file of a new workspace with an empty-log record. Fails if one exists
    /// (a log is never silently restarted).
    pub fn create(dir: &Path, ws: &str) -> Result<Self> {
        let logs = dir.join("logs");
        fs::create_dir_all(&logs)?;
        let path = Self::path_for(dir, ws);
        let file = OpenOptions::new().append(true).create_new(true).mode(0o600).open(&path)?;
        let mut s = Self { path, file, len: 0 };
        s.append(&LogState::empty())?;
        sync_dir(&logs)?;
        Ok(s)
    }

    /// Opens an existing state file and returns the last durable state. A workspace whose keys
    /// exist but whose state file is missing is refused: starting again from size 0 would fork.
    pub fn open(dir: &Path, ws: &str) -> Result<(Self, LogState)> {
        let path = Self::path_for(dir, ws);
        let mut file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SignerError::Corrupt(format!("log state of {ws} is missing; refusing to restart the log")))
            }
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (state, valid) = scan(&bytes, &path.display().to_string())?;
        let state = state.ok_or_else(|| SignerError::Corrupt(format!("log state of {ws} has no record")))?;
        if valid < bytes.len() as u64 {
            tracing::warn!(workspace = ws, cut = bytes.len() as u64 - valid, "discarding a torn state record");
            file.set_len(valid)?;
            file.sync_all()?;
        }
        Ok((Self { path, file, len: valid }, state))
    }

    /// Appends a record and fsyncs it. Returns only once it is durable.
    pub fn append(&mut self, state: &LogState) -> Result<()> {
        let rec = encode(state)?;
        if self.len + rec.len() as u64 > COMPACT_BYTES {
            write_atomic(&self.path, &rec)?;
            self.file = OpenOptions::new().append(true).open(&self.path)?;
            self.len = rec.len() as u64;
            return Ok(());
        }
        self.file.write_all(&rec)?;
        self.file.sync_data()?;
        self.len += rec.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn state(size: u64) -> LogState {
        LogState { size, checkpoint: Some(format!("cp {size}")), checkpoint_ms: size, ..LogState::empty() }
    }

    #[test]
    fn last_record_wins_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = StateFile::create(dir.path(), "ws").unwrap();
        f.append(&state(1)).unwrap();
        f.append(&state(2)).unwrap();
        drop(f);
        let path = StateFile::path_for(dir.path(), "ws");
        let mut bytes = fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&encode(&state(3)).unwrap()[..20]); // a crash mid-write
        fs::write(&path, &bytes).unwrap();
        let (_, s) = StateFile::open(dir.path(), "ws").unwrap();
        assert_eq!(s.size, 2);
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, good);
    }

    #[test]
    fn a_corrupt_complete_record_is_refused_and_a_missing_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = StateFile::create(dir.path(), "ws").unwrap();
        f.append(&state(1)).unwrap();
        drop(f);
        let path = StateFile::path_for(dir.path(), "ws");
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(StateFile::open(dir.path(), "ws"), Err(SignerError::Corrupt(_))));
        assert!(matches!(StateFile::open(dir.path(), "other"), Err(SignerError::Corrupt(_))));
        assert!(StateFile::create(dir.path(), "ws").is_err(), "never recreated over an existing log");
    }

    proptest! {
        #[test]
        fn scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = scan(&bytes, "fuzz");
        }

        #[test]
        fn any_prefix_of_valid_records_yields_a_recorded_state(n in 1u64..6, cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            for i in 0..n {
                bytes.extend_from_slice(&encode(&state(i)).unwrap());
            }
            let c = cut.index(bytes.len() + 1);
            let (s, valid) = scan(&bytes[..c], "t").unwrap();
            prop_assert!(valid as usize <= c);
            if let Some(s) = s {
                prop_assert!(s.size < n);
            }
        }
    }
}

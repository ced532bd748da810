//! What the signer remembers of one workspace log: [`LogState`], the frontier plus what it
//! needs to answer a retried lost answer again. Pure data; the `journal` makes it durable (one
//! journal record per signed group, written before the signature leaves the process).

use allowly_receipt::merkle::{Frontier, Hash};
use allowly_receipt::types::HexHash;
use serde::{Deserialize, Serialize};

use crate::error::Result;

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
    /// Unix ms of the `time` of the last receipt appended to the log (not the signer's own
    /// `key.rotated` leaves): the next appended receipt may not be earlier. 0 in journals
    /// written before it existed (then the first append after the upgrade sets it).
    #[serde(default)]
    pub last_leaf_ms: u64,
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
            last_leaf_ms: 0,
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

//! Wall-clock time as the engine stores and signs it, and this process's memory: one helper
//! each, so every part reads them the same way.

pub(crate) use allowly_receipt::types::now_ms;
use allowly_receipt::types::Timestamp;

use crate::error::{EngineError, Result};

/// A stored millisecond time as a receipt timestamp.
pub(crate) fn ts(ms: u64) -> Result<Timestamp> {
    Timestamp::from_unix_ms(ms).map_err(|e| EngineError::Internal(format!("time {ms}: {e}")))
}

/// This process's resident memory in bytes (`VmRSS` of `/proc/self/status`), if readable.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

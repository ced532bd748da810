//! RocksDB's errors, mapped into [`StoreError`] at this crate's boundary.
//!
//! No error enum of its own, on purpose: every caller reaches this crate through the `Store`
//! trait, whose errors are `StoreError`, and what a caller acts on is the *kind* — a full
//! device (`NoSpace`) or a failing one (`Io`) fails the engine closed with that cause,
//! corruption (`Corrupt`) is refused and alerted — which every backend must report alike. A
//! second enum would be converted on every call and could only add RocksDB's own status
//! codes, which no caller may branch on; `RocksStore::open` returns `StoreError` for the same
//! reason (the server reports it like any other store failure).

use allowly_store::kv::Space;
use allowly_store::StoreError;
use rocksdb::ErrorKind;

/// A RocksDB error met while reading or opening `space`.
pub(crate) fn engine_err(space: Space, e: rocksdb::Error) -> StoreError {
    match e.kind() {
        ErrorKind::Corruption => {
            StoreError::Corrupt { space: space.name(), key: String::new(), reason: e.into_string() }
        }
        kind => device_err(kind, e.into_string()),
    }
}

/// A RocksDB error that is not corruption. The Rust binding exposes the status code but not
/// its subcode, so a full device is told apart from other IO errors by the subcode's fixed
/// text (`Status::NoSpace()` renders as "IO error: No space left on device: …").
pub(crate) fn device_err(kind: ErrorKind, message: String) -> StoreError {
    match kind {
        ErrorKind::IOError if message.contains("No space left on device") => StoreError::NoSpace(message),
        ErrorKind::IOError => StoreError::Io(message),
        _ => StoreError::Engine(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_errors_are_classified_by_status_and_subcode() {
        let check = |kind, msg: &str, expect: StoreError| assert_eq!(device_err(kind, msg.to_owned()), expect, "{msg}");
        // The texts RocksDB produced in a full-volume run (WAL append on a full tmpfs).
        let full =
            "IO error: No space left on device: While appending to file: /d/db/000004.log: No space left on device";
        check(ErrorKind::IOError, full, StoreError::NoSpace(full.into()));
        let eio = "IO error: While fsync: a file descriptor: Input/output error";
        check(ErrorKind::IOError, eio, StoreError::Io(eio.into()));
        check(ErrorKind::Busy, "Resource busy: ", StoreError::Engine("Resource busy: ".into()));
        check(
            ErrorKind::ShutdownInProgress,
            "Shutdown in progress: ",
            StoreError::Engine("Shutdown in progress: ".into()),
        );
    }
}

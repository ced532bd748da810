//! Taking writes again after a failed one, in-process (issue 11): `RocksStore::recover`.
//!
//! RocksDB stops taking writes after a write-ahead-log write or sync fails, and the Rust crate
//! has no way back short of closing and reopening the database. Reopening in-process is not
//! safe here: the failed record may still sit complete in the log, and a reopen replays it —
//! a write that was refused to its callers (whose workspace actors reloaded their state
//! without it) would appear afterwards under their feet. `DB::Resume` is RocksDB's own way
//! back and keeps that record out: the memtables never held it, `Resume` flushes them (every
//! acknowledged write, into new table files, synced) and switches to a new log, and the old log
//! becomes obsolete, never replayed. Two things make it usable, both in `cpp/recovery.cc`:
//!
//! - RocksDB lets `Resume` clear only a "hard" error. A full device (ENOSPC) on the log is one;
//!   a device error (EIO) is "fatal" — unless the file system says the error concerns only the
//!   file, which `AllowlyRecoverableEnv` does for every file being written: RocksDB then retries
//!   with new files, which is all `Resume` does. A file system that stays broken fails the
//!   retry, and the store keeps refusing writes (nothing is lost either way).
//! - `Resume` flushes one column family at a time. Had the failed record stayed in the old log,
//!   a crash between two of those flushes would replay it into the column families not yet
//!   flushed and not into the others: a batch torn in half. So the log whose append or sync
//!   failed is cut back at once to the length its last successful sync made durable, and never
//!   appended to again.
//!
//! What that cut costs: the log's unsynced tail goes with it. Every write the engine
//! acknowledges is synced (`Durability::Sync`), so that tail is only the failed write and
//! `Durability::Buffered` writes made since the last sync (the webhook worker's bookkeeping):
//! those are still in the memtables and `Resume` makes them durable, unless the process dies
//! before it does — then they are lost, as a power cut would lose them (a delivery may then be
//! attempted once more: deliveries are at least once).
//!
//! RocksDB's own automatic recoveries are off, so there is one way back and it is observable:
//! the engine's health probe calls [`resume`] while a write failure is outstanding (every
//! round, backing off while it keeps failing), then proves the store writes with a synced probe
//! write. Off are the retries of file-scoped errors (`max_bgerror_resume_count=0`) and the
//! recovery from a full volume, which waits until the volume has RocksDB's write buffers' worth
//! of room to spare — on a small volume never (writes still failed 50 s after the space came
//! back) — and refuses `Resume` meanwhile: the Env does not tell RocksDB the free space.

#![allow(unsafe_code)] // the two foreign calls into cpp/recovery.cc; justified at each.

use std::ffi::{c_char, c_void, CStr};

use allowly_store::StoreError;
use rocksdb::{AsRawPtr, DB};

unsafe extern "C" {
    fn allowly_register_recoverable_env() -> i32;
    /// `db` is the C API's `rocksdb_t*` (the `rocksdb` crate's raw handle).
    fn allowly_db_resume(db: *mut c_void, msg: *mut c_char, len: usize) -> i32;
}

/// The options string that opens a database on `AllowlyRecoverableEnv` with RocksDB's own
/// automatic resume off, registering the Env first.
pub(crate) fn options_string() -> Result<&'static str, StoreError> {
    // SAFETY: takes no arguments, catches every C++ exception (noexcept) and is safe to call
    // from any thread (std::call_once).
    if unsafe { allowly_register_recoverable_env() } != 0 {
        return Err(StoreError::Engine("registering the recoverable RocksDB environment failed".into()));
    }
    Ok("env=AllowlyRecoverableEnv;max_bgerror_resume_count=0")
}

/// `DB::Resume()`: `Ok` once the database takes writes again (or if it never stopped); the
/// error's kind says whether the device is still full (`NoSpace`) or failing (`Io`).
pub(crate) fn resume(db: &DB) -> Result<(), StoreError> {
    let mut msg = [0 as c_char; 512];
    // SAFETY: the pointer is the live database's C handle (valid while `db` is borrowed, and
    // `Resume` is thread-safe); the function writes at most `msg.len()` bytes into `msg`,
    // NUL-terminated, and catches every C++ exception (noexcept).
    let rc = unsafe { allowly_db_resume(db.as_raw_ptr().cast::<c_void>(), msg.as_mut_ptr(), msg.len()) };
    // SAFETY: `msg` was zeroed and the function NUL-terminates whatever it writes into it.
    let text = unsafe { CStr::from_ptr(msg.as_ptr()) }.to_string_lossy().into_owned();
    match rc {
        0 => Ok(()),
        1 => Err(StoreError::NoSpace(text)),
        2 => Err(StoreError::Io(text)),
        -1 => Err(StoreError::Engine("resuming the store threw".into())),
        _ => Err(StoreError::Engine(text)),
    }
}

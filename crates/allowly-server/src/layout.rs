//! What lives where in an instance's data directory. A leaf: start-up (`serve`) and the
//! hand-over of files to the two users (`isolation`) both name these.

/// The instance admin key (mode 0600, written once at first start).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// RocksDB.
pub const DB_DIR: &str = "db";
/// The embedded signer's directory (master key, sealed keys, journal, audit log).
pub const SIGNER_DIR: &str = "signer";
/// Backups staged by `POST /v1/admin/backup` (the RocksDB checkpoint and its manifest), each
/// in `backups/<name>/` until `allowly backup` moves it out.
pub const BACKUPS_DIR: &str = "backups";
/// Sockets.
pub const RUN_DIR: &str = "run";
/// The embedded signer's socket, in [`RUN_DIR`].
pub const SIGNER_SOCKET: &str = "signer.sock";

//! Backups of the signer's state (`Snapshot`) and the durable log sizes of every workspace
//! (`LogSizes`), for the service's `allowly backup` and its start-up check.
//!
//! # What a snapshot holds, and why it is consistent
//!
//! `snapshots/<name>/` in the signer's own directory (so in an isolated deployment only the
//! signer's user — and root, which moves it into the backup — can read it): `journal` and
//! `audit.log` as the journal writer copies them between two groups ([`crate::journal::Journal::snapshot`]:
//! every workspace's last durable state, and the audit log up to exactly the lines those states
//! vouch for), then `keys/` (public key records and, with the file backend, the *sealed* private
//! keys: ciphertext under the master key). Never `master.key`, the journal's lock or a socket.
//!
//! All 64 load locks are held from before the journal copy until the keys are copied, so no
//! workspace is created in between: a workspace's journal record is written before its key file
//! (`registry::create`), and both or neither are in the snapshot. (A *rotation* writes the key
//! file, then the journal; one that races a snapshot may leave the new key in `keys/` without
//! its `key.rotated` leaf in the journal. Rotations are rare and the operator's own act:
//! do not rotate during a backup.)
//!
//! A snapshot is consistent with a store copied *after* it (the service's invariant is store ≥
//! signer: every leaf the signer signed is stored), which is the order `allowly backup` uses.
//!
//! At most [`MAX_SNAPSHOTS`] snapshots are kept: older than [`SNAPSHOT_MAX_AGE`], one is
//! removed when the next is made; with that many younger ones a new one is refused, so a
//! caller cannot fill the signer's volume with copies.

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use allowly_signer_proto::{Response, MAX_LOG_SIZES};

use crate::error::{Result, SignerError};
use crate::keystore::sync_dir;
use crate::registry::blocking;
use crate::Shared;

/// The directory of snapshots in the signer's data directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Most snapshots kept at once.
pub const MAX_SNAPSHOTS: usize = 4;
/// Snapshots older than this are removed when a new one is made.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// `Snapshot { name }`: see the module docs.
pub(crate) async fn snapshot(shared: &Arc<Shared>, name: &str) -> Result<Response> {
    let root = shared.dir.join(SNAPSHOTS_DIR);
    let dest = root.join(name);
    {
        let (root, dest) = (root.clone(), dest.clone());
        blocking(shared, move |_| prepare(&root, &dest)).await?;
    }
    let _locks = shared.load_lock.lock_all().await;
    let info = match shared.journal.snapshot(&dest).await {
        Ok(info) => info,
        Err(e) => {
            let _ = fs::remove_dir_all(&dest);
            return Err(e);
        }
    };
    let copied = {
        let dest = dest.clone();
        blocking(shared, move |s| copy_keys(&s.dir.join("keys"), &dest.join("keys")).map_err(SignerError::from)).await
    };
    if let Err(e) = copied {
        let _ = fs::remove_dir_all(&dest);
        return Err(e);
    }
    tracing::info!(snapshot = name, workspaces = info.workspaces, "state snapshot written (without the master key)");
    Ok(Response::Snapshotted {
        workspaces: info.workspaces,
        journal_bytes: info.journal_bytes,
        audit_bytes: info.audit_bytes,
    })
}

/// `LogSizes { after }`: one page of the journal's index.
pub(crate) async fn log_sizes(shared: &Arc<Shared>, after: Option<String>) -> Result<Response> {
    let (sizes, more) = shared.journal.sizes(after, MAX_LOG_SIZES).await?;
    Ok(Response::LogSizes { sizes, more })
}

/// Creates `snapshots/` (0700) and the empty `dest` (0700), after removing snapshots older
/// than [`SNAPSHOT_MAX_AGE`]; refuses an existing `dest` or [`MAX_SNAPSHOTS`] young ones.
fn prepare(root: &Path, dest: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o700);
    match builder.create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    let mut kept = 0;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
        if age > SNAPSHOT_MAX_AGE {
            tracing::info!(snapshot = %entry.path().display(), "removing a snapshot older than a day");
            fs::remove_dir_all(entry.path())?;
        } else {
            kept += 1;
        }
    }
    if kept >= MAX_SNAPSHOTS {
        return Err(SignerError::InvalidArgument(format!(
            "{kept} snapshots are waiting in {}: move or remove them first",
            root.display()
        )));
    }
    builder.create(dest).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => SignerError::InvalidArgument("a snapshot of that name exists".into()),
        _ => e.into(),
    })?;
    sync_dir(root)?;
    Ok(())
}

/// Copies every regular file of `from` (not `*.tmp`: an unfinished atomic write) into the new
/// directory `to`, each fsynced, then `to` itself.
fn copy_keys(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() || Path::new(&name).extension().is_some_and(|e| e == "tmp") {
            continue;
        }
        let bytes = fs::read(entry.path())?;
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to.join(&name))?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    sync_dir(to)?;
    sync_dir(to.parent().unwrap_or(to))
}

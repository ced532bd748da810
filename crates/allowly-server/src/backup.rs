//! Backup and restore: `POST /v1/admin/backup` (the running server's half), `allowly backup
//! DIR` and `allowly restore` (the operator's commands). The operator's guide is
//! `docs/operations.md`, *Backup and restore*.
//!
//! # The consistent pair
//!
//! The engine relies on *store ≥ signer*: every leaf the signer has signed is in the store. A
//! backup keeps that by taking the signer's state **first** (`Snapshot`: the signer copies its
//! journal, audit log and key records — sealed keys are ciphertext; never the master key —
//! into `snapshots/<name>/` of its own directory, between two journal groups) and the RocksDB
//! checkpoint **second** (hard links on the same file system, memtables flushed), both while
//! the server runs. Whatever the signer signed before its snapshot was stored before it was
//! sent to be signed, so it is in the later checkpoint.
//!
//! # Who does what (key isolation)
//!
//! Isolated (`separate_users`), the front end cannot read `signer/`, so the signer writes its
//! snapshot itself, inside its own directory, and the front end never reads it; the front end
//! writes the checkpoint into `backups/<name>/` of the data directory. `allowly backup`, run by
//! the operator (root, or the single user of a development instance: whoever can read the
//! admin token), then copies the checkpoint into `DIR` (a real copy: its files are hard links
//! to the live database's, which must never change owner or mode) and moves the signer's
//! snapshot there, makes `DIR` private to its own user, adds the master key only with
//! `--include-master-key`, and checks the pair (every workspace: store ≥ signer, and the roots
//! agree) before it says the backup is good.
//!
//! # Restore
//!
//! Offline, into a data directory that is not in use: the backup's `db/` and `signer/` are
//! copied (the backup is only read), checked as a pair on the copy, and compared with whatever newer evidence the operator has —
//! checkpoints handed out (`--checkpoint FILE`), a newer signer state (`--signer-state DIR`, or
//! the `signer/` of the data directory being replaced). A backup older than any of them is
//! refused (it would fork those logs) with what to do; `--force` only allows a non-empty target.
//! Run as root over an existing data directory, the restored `db/` and `signer/` go to the
//! owners of the ones they replace; into a new one they stay root's, and `allowly serve`
//! started as root gives every file to the right user at its next start
//! (`isolation::take_over`).

use allowly_receipt::types::now_ms;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use allowly_receipt::merkle::Frontier;
use allowly_receipt::note::{parse_signed_note, Checkpoint};
use allowly_receipt::types::log_origin;
use allowly_signer_proto::client::{ClientOptions, SignerClient};
use allowly_store::Store as _;
use allowly_store_rocks::{RocksOptions, RocksStore};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::layout::{ADMIN_TOKEN_FILE, BACKUPS_DIR, DB_DIR, SIGNER_DIR};

/// What `POST /v1/admin/backup` answers when the data is in PostgreSQL (`docs/postgres.md`).
pub const POSTGRES_BACKUP: &str = "this server keeps its data in PostgreSQL, which Allowly does not back up: \
     back up the signer's directory first, then the database with its own tools (pg_basebackup, \
     continuous archiving); see docs/postgres.md";

/// The master key's file name in the signer's directory.
const MASTER_KEY_FILE: &str = "master.key";
/// The signer's snapshots, in its directory (`allowly_signer::snapshot::SNAPSHOTS_DIR`).
const SIGNER_SNAPSHOTS_DIR: &str = "snapshots";
/// The description of a backup, in its directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// How long the signer may take to write its snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn store_err(what: impl Into<String>) -> impl FnOnce(allowly_store::StoreError) -> Error {
    let what = what.into();
    move |source| Error::BackupStore { what, source }
}

/// What `POST /v1/admin/backup` answers: where the two halves of the new backup wait.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Staged {
    /// The backup's name (`b<unix ms>-<hex>`).
    pub name: String,
    /// The RocksDB checkpoint and manifest, relative to the data directory.
    pub staging: String,
    /// The signer's snapshot, relative to the signer's directory.
    pub signer_snapshot: String,
    /// Workspaces in the signer's snapshot.
    pub workspaces: u64,
    /// When it was taken, Unix ms.
    pub created_ms: u64,
}

/// The running server's half (`POST /v1/admin/backup`).
#[derive(Debug)]
pub struct Backups {
    /// `None`: the data is not in RocksDB (PostgreSQL), and [`Backups::take`] refuses.
    store: Option<Arc<RocksStore>>,
    signer_socket: PathBuf,
    /// Where the data directory is opened (see `serve::Prepared::open_dir`).
    data_dir: PathBuf,
}

impl Backups {
    pub fn new(store: Option<Arc<RocksStore>>, signer_socket: PathBuf, data_dir: PathBuf) -> Self {
        Self { store, signer_socket, data_dir }
    }

    /// Signer snapshot first, RocksDB checkpoint second (see the module docs). Nothing of a
    /// failed backup is left in `backups/`.
    pub async fn take(&self) -> Result<Staged, Error> {
        let Some(store) = &self.store else {
            return Err(Error::BackupNotSupported(POSTGRES_BACKUP.into()));
        };
        let created_ms = now_ms();
        let mut rand = [0u8; 4];
        getrandom::getrandom(&mut rand).map_err(|e| Error::BackupServer(format!("random name: {e}")))?;
        let name = format!("b{created_ms}-{}", hex::encode(rand));
        let root = self.data_dir.join(BACKUPS_DIR);
        let staging = root.join(&name);
        let mut dirs = std::fs::DirBuilder::new();
        dirs.mode(0o700).recursive(true);
        dirs.create(&staging).map_err(io(format!("creating {BACKUPS_DIR}/{name}")))?;
        let result = self.take_into(store.clone(), &name, &staging, created_ms).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    async fn take_into(
        &self,
        store: Arc<RocksStore>,
        name: &str,
        staging: &Path,
        created_ms: u64,
    ) -> Result<Staged, Error> {
        // A connection of its own, with room for a long copy.
        let opts = ClientOptions { request_timeout: SNAPSHOT_TIMEOUT, ..ClientOptions::default() };
        let signer = SignerClient::new(self.signer_socket.clone(), opts);
        let (workspaces, journal_bytes, audit_bytes) =
            signer.snapshot(name).await.map_err(|e| Error::BackupSigner(format!("snapshot: {e}")))?;
        let db = staging.join(DB_DIR);
        tokio::task::spawn_blocking(move || store.backup_to(&db))
            .await
            .map_err(|e| Error::BackupServer(format!("checkpoint task: {e}")))?
            .map_err(store_err("RocksDB checkpoint"))?;
        let staged = Staged {
            name: name.to_owned(),
            staging: format!("{BACKUPS_DIR}/{name}"),
            signer_snapshot: format!("{SIGNER_SNAPSHOTS_DIR}/{name}"),
            workspaces,
            created_ms,
        };
        let manifest = Manifest {
            format: 1,
            name: name.to_owned(),
            created_ms,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            workspaces,
            signer_journal_bytes: journal_bytes,
            signer_audit_bytes: audit_bytes,
            master_key_included: false,
        };
        write_manifest(&staging.join(MANIFEST_FILE), &manifest)?;
        tracing::info!(backup = name, workspaces, "backup staged: signer snapshot, then store checkpoint");
        Ok(staged)
    }
}

/// `manifest.json` of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub created_ms: u64,
    /// The `allowly` version that took it.
    pub version: String,
    pub workspaces: u64,
    pub signer_journal_bytes: u64,
    pub signer_audit_bytes: u64,
    /// Whether `signer/master.key` is in the backup (`--include-master-key`).
    pub master_key_included: bool,
}

fn write_manifest(path: &Path, m: &Manifest) -> Result<(), Error> {
    let text = serde_json::to_vec_pretty(m).map_err(|e| Error::BackupServer(format!("manifest: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    f.write_all(&text).and_then(|()| f.sync_all()).map_err(io(format!("writing {}", path.display())))
}

/// `b<digits>-<hex>`, as [`Backups::take`] names them: nothing that could leave a directory.
fn is_backup_name(name: &str) -> bool {
    let Some((ms, hex)) = name.strip_prefix('b').and_then(|n| n.split_once('-')) else { return false };
    !ms.is_empty()
        && ms.bytes().all(|b| b.is_ascii_digit())
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && name.len() <= 64
}

/// `allowly backup DIR`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to put the backup (must not exist, or be empty).
    pub dir: PathBuf,
    /// The running instance's data directory (for the admin token and the staged halves).
    #[arg(long, env = "ALLOWLY_DATA_DIR", default_value = "./allowly-data")]
    pub data_dir: PathBuf,
    /// The running instance's API (`http://` as `allowly serve --listen`, or `https://` behind a
    /// TLS terminator), as for the other operator commands.
    #[command(flatten)]
    pub api: crate::http_client::ApiArgs,
    /// The instance admin key file [default: DATA_DIR/admin-token].
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The signer's directory [default: DATA_DIR/signer, the embedded signer's].
    #[arg(long, value_name = "DIR")]
    pub signer_dir: Option<PathBuf>,
    /// Also copy the signer's master key into the backup. Off by default: whoever holds a
    /// backup with it can unseal every key. Keep the master key in your secret store instead.
    #[arg(long)]
    pub include_master_key: bool,
    /// The `allowly-signer` binary (used to read signer state) [default: next to `allowly`, else on PATH].
    #[arg(long, env = "ALLOWLY_SIGNER_BIN", value_name = "PATH")]
    pub signer_bin: Option<PathBuf>,
}

/// `allowly restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup (a directory made by `allowly backup`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The data directory to restore into; it must not be in use (stop the server first).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Restore into a non-empty data directory: its `db/` and `signer/` are moved aside into
    /// `pre-restore-<time>/` (never deleted), and its `signer/` counts as newer state to
    /// compare with; its master key is kept.
    #[arg(long)]
    pub force: bool,
    /// A checkpoint that was handed out (the body of `GET /v1/workspaces/{ws}/log/checkpoint`,
    /// or the signed note alone); repeatable. The backup must hold its log.
    #[arg(long = "checkpoint", value_name = "FILE")]
    pub checkpoints: Vec<PathBuf>,
    /// A signer directory whose state may be newer than the backup (e.g. an external signer's,
    /// stopped); the backup must hold every log it signed.
    #[arg(long, value_name = "DIR")]
    pub signer_state: Option<PathBuf>,
    /// Copy this master key into the restored `signer/` (when the backup has none and the
    /// signer reads it from its directory).
    #[arg(long, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// The `allowly-signer` binary [default: next to `allowly`, else on PATH].
    #[arg(long, env = "ALLOWLY_SIGNER_BIN", value_name = "PATH")]
    pub signer_bin: Option<PathBuf>,
}

/// `allowly backup DIR`: asks the server for a snapshot, moves it into `DIR`, checks it.
pub fn backup(args: BackupArgs) -> Result<(), Error> {
    let dest = args.dir.clone();
    ensure_empty_or_missing(&dest)?;
    let token_file = args.admin_token_file.clone().unwrap_or_else(|| args.data_dir.join(ADMIN_TOKEN_FILE));
    let token = std::fs::read_to_string(&token_file).map_err(io(format!("reading {}", token_file.display())))?;
    let answer = post(&args.api, "/v1/admin/backup", token.trim())?;
    let staged: Staged = serde_json::from_str(&answer)
        .map_err(|e| Error::BackupServer(format!("unexpected answer to the backup request: {e}")))?;
    let signer_dir = args.signer_dir.clone().unwrap_or_else(|| args.data_dir.join(SIGNER_DIR));
    // This command may run as root, the server's answer comes from a less trusted process: only
    // the name is taken from it, checked, and the paths are built here; neither may be a link.
    if !is_backup_name(&staged.name) {
        return Err(Error::BackupServer(format!("the server named its backup {:?}", staged.name)));
    }
    let from_db = args.data_dir.join(BACKUPS_DIR).join(&staged.name);
    let from_signer = signer_dir.join(SIGNER_SNAPSHOTS_DIR).join(&staged.name);
    for dir in [&from_db, &from_db.join(DB_DIR), &from_signer] {
        let real =
            std::fs::symlink_metadata(dir).map(|m| m.is_dir()).map_err(io(format!("reading {}", dir.display())))?;
        if !real {
            return Err(Error::BackupServer(format!("{} is not a directory (a link?)", dir.display())));
        }
    }
    // Copied, never moved: the checkpoint's files are hard links to the live database's, and
    // the backup's own files get this user's ownership and modes below (changing a shared
    // inode would change the live file too).
    copy_tree(&from_db, &dest)?;
    std::fs::remove_dir_all(&from_db).map_err(io(format!("removing {}", from_db.display())))?;
    move_dir(&from_signer, &dest.join(SIGNER_DIR))?;
    if args.include_master_key {
        let key = signer_dir.join(MASTER_KEY_FILE);
        copy_file(&key, &dest.join(SIGNER_DIR).join(MASTER_KEY_FILE))?;
        let path = dest.join(MANIFEST_FILE);
        let mut m = read_manifest(&dest)?;
        m.master_key_included = true;
        write_manifest(&path, &m)?;
    }
    let signer_bin = crate::signer_child::find_binary(args.signer_bin.clone())
        .map_err(|e| Error::Usage(format!("finding allowly-signer: {e}")))?;
    let heads = signer_heads(&signer_bin, &dest.join(SIGNER_DIR))?;
    let checked = check_pair(&dest.join(DB_DIR), &heads)?;
    // After the check, which opens the database copy and so adds files to it.
    make_private(&dest)?;
    println!(
        "backup {} written to {}: {} workspaces, store >= signer checked for each{}",
        staged.name,
        dest.display(),
        checked,
        if args.include_master_key {
            "; it INCLUDES the master key: whoever holds it can unseal every key"
        } else {
            "; the master key is not in it (restore needs it: keep it in your secret store)"
        }
    );
    Ok(())
}

/// `allowly restore`: see the module docs.
pub fn restore(args: RestoreArgs) -> Result<(), Error> {
    let signer_bin = crate::signer_child::find_binary(args.signer_bin.clone())
        .map_err(|e| Error::Usage(format!("finding allowly-signer: {e}")))?;
    let manifest = read_manifest(&args.from)?;
    let (b_db, b_signer) = (args.from.join(DB_DIR), args.from.join(SIGNER_DIR));
    if !b_db.is_dir() || !b_signer.is_dir() {
        return Err(Error::Usage(format!("{} is not a backup (no db/ or signer/)", args.from.display())));
    }
    // Newer evidence, gathered before anything is touched.
    let mut newer: Vec<(String, Head)> = Vec::new();
    for file in &args.checkpoints {
        newer.push((file.display().to_string(), read_checkpoint_file(file)?));
    }
    let target = &args.data_dir;
    let occupied = std::fs::read_dir(target).map(|mut d| d.next().is_some()).unwrap_or(false);
    if occupied && !args.force {
        return Err(Error::Usage(format!(
            "{} is not empty: stop the server and pass --force to restore over it (its db/ and signer/ are moved \
             aside, never deleted, and its signer state is compared with the backup)",
            target.display()
        )));
    }
    if occupied {
        refuse_if_in_use(target)?;
    }
    let mut signer_states: Vec<PathBuf> = args.signer_state.iter().cloned().collect();
    let existing_signer = target.join(SIGNER_DIR);
    if occupied && existing_signer.join("journal").is_file() {
        signer_states.push(existing_signer.clone());
    }
    for dir in &signer_states {
        for (ws, (size, checkpoint)) in signer_heads(&signer_bin, dir)? {
            if let Some(cp) = checkpoint.as_deref().map(parse_checkpoint).transpose()? {
                newer.push((format!("signer state {}", dir.display()), Head { ws, size, root: Some(cp.root) }));
            } else if size > 0 {
                newer.push((format!("signer state {}", dir.display()), Head { ws, size, root: None }));
            }
        }
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(target)
        .map_err(io(format!("creating {}", target.display())))?;
    // Copied first and checked on the copy (opening a database writes to it: the backup itself
    // is only read); a refused restore removes the copy and leaves the target as it was.
    let tmp = target.join(format!("restore-{}.tmp", now_ms()));
    let checked = (|| {
        std::fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        copy_tree(&b_db, &tmp.join(DB_DIR))?;
        copy_tree(&b_signer, &tmp.join(SIGNER_DIR))?;
        let heads = signer_heads(&signer_bin, &tmp.join(SIGNER_DIR))?;
        let checked = check_pair(&tmp.join(DB_DIR), &heads)?;
        check_not_older(&tmp.join(DB_DIR), &newer, &manifest)?;
        Ok(checked)
    })();
    let checked = match checked {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            if !occupied {
                let _ = std::fs::remove_dir(target);
            }
            return Err(e);
        }
    };
    let mut master_key = args.master_key_file.clone();
    // Whose the replaced db/ and signer/ were: the restored ones go to the same users.
    let owners: Vec<Option<crate::isolation::Account>> = [DB_DIR, SIGNER_DIR]
        .iter()
        .map(|name| {
            use std::os::unix::fs::MetadataExt as _;
            let m = std::fs::symlink_metadata(target.join(name)).ok()?;
            Some(crate::isolation::Account { uid: m.uid(), gid: m.gid() })
        })
        .collect();
    if occupied {
        let aside = target.join(format!("pre-restore-{}", now_ms()));
        std::fs::DirBuilder::new().mode(0o700).create(&aside).map_err(io(format!("creating {}", aside.display())))?;
        for name in [DB_DIR, SIGNER_DIR] {
            let p = target.join(name);
            if p.exists() {
                std::fs::rename(&p, aside.join(name)).map_err(io(format!("moving {} aside", p.display())))?;
            }
        }
        let old_key = aside.join(SIGNER_DIR).join(MASTER_KEY_FILE);
        if master_key.is_none() && !manifest.master_key_included && old_key.is_file() {
            master_key = Some(old_key);
        }
        println!("moved the old db/ and signer/ to {}", aside.display());
    }
    for name in [DB_DIR, SIGNER_DIR] {
        let (from, to) = (tmp.join(name), target.join(name));
        std::fs::rename(&from, &to).map_err(io(format!("moving {} to {}", from.display(), to.display())))?;
    }
    std::fs::remove_dir(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
    let restored_key = target.join(SIGNER_DIR).join(MASTER_KEY_FILE);
    if let Some(key) = master_key {
        if !restored_key.exists() {
            copy_file(&key, &restored_key)?;
        }
    }
    if rustix::process::geteuid().is_root() {
        for (name, owner) in [DB_DIR, SIGNER_DIR].into_iter().zip(owners) {
            match owner {
                Some(a) => crate::isolation::own_tree(&target.join(name), a, name == SIGNER_DIR)?,
                None => println!(
                    "{name}/ is root's: `allowly serve` started as root gives it to its user at start; otherwise \
                     chown it to the user that runs {}",
                    if name == DB_DIR { "the server" } else { "the signer" }
                ),
            }
        }
    }
    sync_dir(target)?;
    println!(
        "restored backup {} ({} workspaces, store >= signer checked for each) into {}",
        manifest.name,
        checked,
        target.display()
    );
    if !restored_key.exists() {
        println!(
            "the master key is not in {}: put it there (mode 0600) before starting, unless the signer gets it \
             otherwise (ALLOWLY_SIGNER_MASTER_KEY, or --master-key-file for a signer run on its own) or uses \
             --keystore pkcs11",
            target.join(SIGNER_DIR).display()
        );
    }
    println!("start the server as before");
    Ok(())
}

/// Refuses a data directory whose database or signer journal is open (a server running on it):
/// RocksDB's lock (a POSIX record lock on `db/LOCK`) and the journal writer's (`flock` on
/// `signer/journal.lock`) are tried without opening either, and let go at once.
fn refuse_if_in_use(target: &Path) -> Result<(), Error> {
    use rustix::fs::FlockOperation::NonBlockingLockExclusive;
    let in_use = |what: &str, e: rustix::io::Errno| {
        Error::Usage(format!(
            "{} is in use ({what} is locked: {e}): stop the server (and its signer) before restoring",
            target.display()
        ))
    };
    let open = |p: PathBuf| std::fs::OpenOptions::new().read(true).write(true).open(p);
    if let Ok(f) = open(target.join(DB_DIR).join("LOCK")) {
        rustix::fs::fcntl_lock(&f, NonBlockingLockExclusive).map_err(|e| in_use("its database", e))?;
    }
    if let Ok(f) = open(target.join(SIGNER_DIR).join("journal.lock")) {
        rustix::fs::flock(&f, NonBlockingLockExclusive).map_err(|e| in_use("the signer's journal", e))?;
    }
    Ok(())
}

/// A log head: a workspace's size and (if anything is signed) its root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    ws: String,
    size: u64,
    root: Option<[u8; 32]>,
}

fn parse_checkpoint(note: &str) -> Result<Checkpoint, Error> {
    let signed = parse_signed_note(note).map_err(|e| Error::Usage(format!("not a signed checkpoint: {e}")))?;
    Checkpoint::parse(&signed.text).map_err(|e| Error::Usage(format!("not a checkpoint: {e}")))
}

/// A checkpoint file: the JSON answer of the checkpoint endpoint, or the note itself.
fn read_checkpoint_file(file: &Path) -> Result<Head, Error> {
    let text = std::fs::read_to_string(file).map_err(io(format!("reading {}", file.display())))?;
    let note = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v
            .get("checkpoint")
            .and_then(|c| c.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::Usage(format!("{}: no \"checkpoint\" member", file.display())))?,
        Err(_) => text,
    };
    let cp = parse_checkpoint(&note).map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
    let ws = cp.origin.strip_prefix(&log_origin("")).map(str::to_owned).ok_or_else(|| {
        Error::Usage(format!("{}: origin {:?} is not an Allowly workspace log", file.display(), cp.origin))
    })?;
    Ok(Head { ws, size: cp.size, root: Some(cp.root) })
}

/// Every workspace's head in a signer directory, read by `allowly-signer heads`.
fn signer_heads(bin: &Path, dir: &Path) -> Result<BTreeMap<String, (u64, Option<String>)>, Error> {
    let out = Command::new(bin)
        .args(["heads", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {}", bin.display())))?;
    if !out.status.success() {
        return Err(Error::BackupSigner(format!(
            "reading the signer state in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    #[derive(Deserialize)]
    struct Line {
        workspace_id: String,
        size: u64,
        checkpoint: Option<String>,
    }
    let mut heads = BTreeMap::new();
    for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let l: Line = serde_json::from_slice(line).map_err(|e| Error::BackupSigner(format!("heads: {e}")))?;
        heads.insert(l.workspace_id, (l.size, l.checkpoint));
    }
    Ok(heads)
}

/// The root of the first `size` stored leaves of `ws`; `None` if fewer are stored.
fn stored_root(store: &RocksStore, ws: &str, size: u64) -> Result<Option<[u8; 32]>, Error> {
    let next = store.log_meta(ws).map_err(store_err(format!("reading the log of {ws}")))?.map_or(0, |m| m.next_index);
    if next < size {
        return Ok(None);
    }
    let mut f = Frontier::new();
    let mut at = 0;
    while at < size {
        let page = store.leaf_hashes(ws, at, size, 65_536).map_err(store_err(format!("reading the leaves of {ws}")))?;
        let mut leaves = Vec::with_capacity(page.len());
        for (i, h) in page {
            if i != at + leaves.len() as u64 {
                return Err(Error::Refused(format!("the stored log of {ws} lacks leaf {}", at + leaves.len() as u64)));
            }
            leaves.push(h);
        }
        if leaves.is_empty() {
            return Err(Error::Refused(format!("the stored log of {ws} lacks leaf {at}")));
        }
        at += leaves.len() as u64;
        f.append(&leaves).map_err(|e| Error::Refused(format!("the stored log of {ws}: {e}")))?;
    }
    Ok(Some(f.root()))
}

fn open_store(db: &Path) -> Result<RocksStore, Error> {
    RocksStore::open(db, RocksOptions::default()).map_err(store_err(format!("opening {}", db.display())))
}

/// Store ≥ signer, workspace by workspace: the store holds every leaf the signer signed, and
/// the signer's root is the root of those stored leaves. Returns how many were checked.
fn check_pair(db: &Path, heads: &BTreeMap<String, (u64, Option<String>)>) -> Result<usize, Error> {
    let store = open_store(db)?;
    let mut bad = Vec::new();
    for (ws, (size, checkpoint)) in heads {
        let Some(note) = checkpoint else { continue };
        let cp = parse_checkpoint(note)?;
        match stored_root(&store, ws, *size)? {
            None => bad.push(format!("{ws}: the signer signed {size} leaves, the store holds fewer")),
            Some(root) if root != cp.root => {
                bad.push(format!("{ws}: the signer's root at {size} is not the stored one"))
            }
            Some(_) => {}
        }
    }
    if !bad.is_empty() {
        return Err(Error::Refused(format!(
            "the backup's store and signer state disagree (store >= signer does not hold), so it cannot be \
             restored as it is: {}",
            bad.join("; ")
        )));
    }
    Ok(heads.len())
}

/// Every newer head must be a prefix of the backup's stored log: otherwise the backup is
/// older than what was handed out (or forks it).
fn check_not_older(db: &Path, newer: &[(String, Head)], manifest: &Manifest) -> Result<(), Error> {
    if newer.is_empty() {
        return Ok(());
    }
    let store = open_store(db)?;
    let mut older = Vec::new();
    for (source, head) in newer {
        match (stored_root(&store, &head.ws, head.size)?, head.root) {
            (None, _) => older.push(format!(
                "{}: {source} has {} leaves, the backup only {}",
                head.ws,
                head.size,
                store.log_meta(&head.ws).ok().flatten().map_or(0, |m| m.next_index)
            )),
            (Some(root), Some(theirs)) if root != theirs => {
                older.push(format!("{}: {source} at size {} has another root (a fork)", head.ws, head.size))
            }
            _ => {}
        }
    }
    if older.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "refusing to restore backup {}: it is OLDER than checkpoints already handed out, so restoring it would \
         fork those logs (receipts after the backup would be issued again with other contents):\n  {}\n\
         What to do: restore a newer backup (one taken after these checkpoints) instead. If there is none, the \
         receipts after this backup are lost: do not serve from this backup with the newer signer state beside \
         it (the server would refuse those workspaces with workspace_log_behind_signer); contact whoever holds \
         those checkpoints, and keep the newer signer state as evidence.",
        manifest.name,
        older.join("\n  ")
    )))
}

fn read_manifest(dir: &Path) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

fn ensure_empty_or_missing(dir: &Path) -> Result<(), Error> {
    match std::fs::read_dir(dir).map(|mut d| d.next().is_some()) {
        Ok(true) => Err(Error::Usage(format!("{} exists and is not empty", dir.display()))),
        Ok(false) => std::fs::remove_dir(dir).map_err(io(format!("removing the empty {}", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("reading {}", dir.display()))(e)),
    }
}

/// Renames `from` to `to` (which must not exist), copying and removing across file systems.
fn move_dir(from: &Path, to: &Path) -> Result<(), Error> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            copy_tree(from, to)?;
            std::fs::remove_dir_all(from).map_err(io(format!("removing {}", from.display())))
        }
        Err(e) => Err(io(format!("moving {} to {}", from.display(), to.display()))(e)),
    }
}

/// Copies a tree of directories and regular files (each file fsynced), private (0700/0600).
fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::DirBuilder::new().mode(0o700).create(to).map_err(io(format!("creating {}", to.display())))?;
    for entry in std::fs::read_dir(from).map_err(io(format!("listing {}", from.display())))? {
        let entry = entry.map_err(io(format!("listing {}", from.display())))?;
        let kind = entry.file_type().map_err(io(format!("reading {}", entry.path().display())))?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if kind.is_file() {
            copy_file(&entry.path(), &dest)?;
        }
    }
    sync_dir(to)
}

fn copy_file(from: &Path, to: &Path) -> Result<(), Error> {
    let what = || format!("copying {} to {}", from.display(), to.display());
    let mut src = std::fs::File::open(from).map_err(io(what()))?;
    let mut dst = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to).map_err(io(what()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).map_err(io(what()))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).map_err(io(what()))?;
    }
    dst.sync_all().map_err(io(what()))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("syncing {}", dir.display())))
}

/// The whole backup to the caller's uid and gid, directories 0700, files without group or
/// other permissions: whoever holds a backup holds the sealed keys (and, with
/// `--include-master-key`, the key to them).
fn make_private(dir: &Path) -> Result<(), Error> {
    let me = crate::isolation::Account {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    };
    crate::isolation::own_tree(dir, me, true)
}

/// A bodyless `POST` with the admin key through the operator commands' client
/// ([`crate::http_client`]); the answer's body if it is 2xx.
fn post(api: &crate::http_client::ApiArgs, path: &str, token: &str) -> Result<String, Error> {
    let auth = format!("Bearer {token}");
    let req = crate::http_client::Request {
        url: &api.url,
        ca_file: api.ca_file.as_deref(),
        method: "POST",
        path,
        headers: &[("Authorization", &auth)],
        timeout: SNAPSHOT_TIMEOUT + Duration::from_secs(60),
    };
    req.send().map_err(|e| match e {
        Error::Remote { status, body } => Error::BackupServer(format!("{status}: {body}")),
        Error::Io { what, source } => Error::Io { what, source },
        other => Error::BackupServer(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_names_the_server_makes_are_taken_from_its_answer() {
        assert!(is_backup_name("b1796527058167-439080c0"));
        for bad in ["", "b", "b1-", "b-00", "../../etc", "b1-00/..", "b1-0g", "x1-00", "b1-00\0"] {
            assert!(!is_backup_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_checkpoint_file_names_its_workspace_by_the_log_origin() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let cp = Checkpoint { origin: log_origin("ws_1"), size: 3, root: [9; 32], extensions: vec![] };
        let note = allowly_receipt::note::sign_note(&cp.to_text().unwrap(), "k", &key).unwrap();
        let json = dir.path().join("cp.json");
        std::fs::write(&json, serde_json::json!({ "checkpoint": note }).to_string()).unwrap();
        let raw = dir.path().join("cp.txt");
        std::fs::write(&raw, &note).unwrap();
        let want = Head { ws: "ws_1".into(), size: 3, root: Some([9; 32]) };
        assert_eq!(read_checkpoint_file(&json).unwrap(), want);
        assert_eq!(read_checkpoint_file(&raw).unwrap(), want);
        let other = Checkpoint { origin: "example.com/log".into(), ..cp };
        let note = allowly_receipt::note::sign_note(&other.to_text().unwrap(), "k", &key).unwrap();
        std::fs::write(&raw, &note).unwrap();
        assert!(read_checkpoint_file(&raw).is_err());
    }
}

//! Key isolation of the embedded signer: what `allowly serve` does when it starts as root, and
//! what it says when it cannot.
//!
//! Started as **root** with the embedded signer (the README's `./scripts/run.sh` on a fresh
//! machine), `allowly serve` does what nginx and PostgreSQL do, before any other thread exists:
//!
//! 1. it finds or creates two system users (`useradd --system --no-create-home --shell
//!    /usr/sbin/nologin --user-group`): the front end's (`--user`, default `allowly`) and the
//!    signer's (`--signer-user`, default `allowly-signer`);
//! 2. it takes over the data directory, every start (so a directory made by an older version,
//!    by root or by one uid, is converted in place — [`take_over`]): the directory itself
//!    `allowly:allowly 0710`, `db/` and `admin-token` owned by `allowly` (`db/` 0700),
//!    `signer/` recursively owned by `allowly-signer` (directories 0700, files at most 0600),
//!    `run/` (the socket's directory) `allowly-signer:allowly 0710`;
//! 3. it binds the HTTP listener and starts a *keeper*: the same binary (`allowly signer-keeper`,
//!    hidden) kept as root, whose only input is its stdin pipe. The keeper starts, restarts (with
//!    backoff) and stops the signer, each time dropping to `allowly-signer` (`RLIMIT_MEMLOCK`
//!    raised to 64 MiB, primary group
//!    `allowly`, no supplementary groups, capability bounding set emptied, `setresuid`, which
//!    clears every capability, `PR_SET_NO_NEW_PRIVS`, umask 0007) in the forked child before
//!    `exec`; the signer makes itself non-dumpable first thing. The signer accepts only its own
//!    uid and the front end's (`--allow-uid`, SO_PEERCRED); the front end reaches the socket
//!    through the `allowly` group (socket 0770 in a 0710 directory);
//! 4. it changes its working directory to the data directory and drops itself to `allowly`
//!    (`setgroups([])`, `setresgid`, `setresuid`: no way back); everything after that — RocksDB,
//!    the admin token, HTTP — runs unprivileged, with paths relative to the data directory (its
//!    parents, e.g. `/root`, need not be searchable by `allowly`).
//!
//! When the front end exits, however it exits (even `kill -9`), the keeper's stdin reaches EOF
//! and it stops the signer (SIGTERM, then SIGKILL), then exits; the signer also dies with the
//! keeper (parent-death signal). The front end cannot signal, trace or read either of them.
//!
//! Not root: the old behaviour (signer child under the server's own uid), for development, with
//! one `WARN` line at start-up, `allowly_server_key_isolation{mode="same_uid"} 1` and
//! `"key_isolation": "same_uid"` in `/readyz` (which stays ready). With `--signer-socket` the
//! signer is the deployment's (e.g. `ops/systemd`): mode `external`.

use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::Error;

/// Default user of the HTTP front end.
pub const DEFAULT_USER: &str = "allowly";
/// Default user of the embedded signer.
pub const DEFAULT_SIGNER_USER: &str = "allowly-signer";

/// Names of the two users (resolved from `--user` / `--signer-user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    pub user: String,
    pub signer_user: String,
}

impl Default for Users {
    fn default() -> Self {
        Self { user: DEFAULT_USER.into(), signer_user: DEFAULT_SIGNER_USER.into() }
    }
}

/// What a running instance promises about its signing keys: the closed label `mode` of
/// `allowly_server_key_isolation` and the `key_isolation` member of `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyIsolation {
    /// Embedded signer, started as root: front end and signer run as two dedicated users, and
    /// the front end's uid cannot read the keys, the master key or the signer's memory.
    SeparateUsers,
    /// Embedded signer under the server's own uid (not started as root): development only; a
    /// file-read bug in the server reads every key.
    SameUid,
    /// `--signer-socket`: a signer run by the deployment (e.g. `ops/systemd`); its isolation is
    /// the deployment's.
    External,
}

impl KeyIsolation {
    /// Every value, for the metric's label set.
    pub const ALL: [KeyIsolation; 3] = [Self::SeparateUsers, Self::SameUid, Self::External];

    /// The metric label and `/readyz` value.
    pub fn label(self) -> &'static str {
        match self {
            Self::SeparateUsers => "separate_users",
            Self::SameUid => "same_uid",
            Self::External => "external",
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A user's uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// The two accounts of an isolated instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounts {
    /// The front end (`--user`).
    pub front: Account,
    /// The signer's uid; it runs with the front end's gid, which is how the socket is shared.
    pub signer: Account,
}

/// Looks `name` up through NSS (`getent passwd`), so users from any configured source count.
pub fn lookup(name: &str) -> Result<Option<Account>, Error> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(io_err("running getent passwd"))?;
    // Exit status 2: no such user.
    if !out.status.success() {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = line.trim_end().split(':').collect();
    let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok());
    match (fields.first(), parse(2), parse(3)) {
        (Some(n), Some(uid), Some(gid)) if *n == name => Ok(Some(Account { uid, gid })),
        _ => Err(Error::UserAdd { name: name.into(), detail: format!("unexpected getent output {line:?}") }),
    }
}

/// Finds `name`, creating it as a system user without a home or a login shell if it does not
/// exist. Idempotent, and safe against a concurrent creation of the same user.
pub fn ensure_user(name: &str) -> Result<Account, Error> {
    let mut last = String::new();
    for _ in 0..50 {
        if let Some(a) = lookup(name)? {
            return Ok(a);
        }
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
            .args(["--user-group", "--comment", "Allowly (created by allowly serve)", name])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running useradd (install the passwd package)"))?;
        if out.status.success() {
            tracing::info!(user = name, "created system user");
            continue;
        }
        // 9: exists (created meanwhile); 10: /etc/passwd locked by another useradd. Look again.
        last = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::UserAdd { name: name.into(), detail: last })
}

/// Resolves (creating if needed) the two users.
pub fn accounts(users: &Users) -> Result<Accounts, Error> {
    let front = ensure_user(&users.user)?;
    let signer_user = ensure_user(&users.signer_user)?;
    for (name, a) in [(&users.user, front), (&users.signer_user, signer_user)] {
        if a.uid == 0 {
            return Err(Error::RootUser(name.clone()));
        }
    }
    if front.uid == signer_user.uid {
        return Err(Error::SameUser(front.uid));
    }
    Ok(Accounts { front, signer: Account { uid: signer_user.uid, gid: front.gid } })
}

/// Sets owner and mode of `path`. Never follows a symlink: a link is chowned itself and its
/// mode left alone (root must not be led to chmod what a link points at).
fn own(path: &Path, a: Account, mode: Option<u32>) -> Result<(), Error> {
    std::os::unix::fs::lchown(path, Some(a.uid), Some(a.gid)).map_err(io_err(format!("chown {}", path.display())))?;
    let is_link = std::fs::symlink_metadata(path).map(|m| m.file_type().is_symlink()).unwrap_or(true);
    if let (Some(mode), false) = (mode, is_link) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

/// Chowns `dir` and everything below it to `a` (symlinks are chowned, never followed). With
/// `private`, directories become 0700 and files lose every group and other permission. (Also
/// how `allowly backup` makes a backup its caller's alone.)
pub(crate) fn own_tree(dir: &Path, a: Account, private: bool) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(format!("reading {}", dir.display())))?;
    if meta.is_dir() {
        own(dir, a, private.then_some(0o700))?;
        for entry in std::fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            own_tree(&entry.path(), a, private)?;
        }
    } else if meta.file_type().is_symlink() {
        own(dir, a, None)?;
    } else {
        own(dir, a, private.then_some(meta.mode() & 0o700))?;
    }
    Ok(())
}

/// Creates `dir` if missing; an existing one must be a real directory (not a symlink a previous
/// occupant of the front end's uid could have planted to steer root's chown elsewhere).
/// Returns its owner's uid.
fn mkdir(dir: &Path) -> Result<u32, Error> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(format!("reading {}", dir.display())))?;
    if !meta.is_dir() {
        let e = io::Error::other("not a directory (a symlink?); refusing to take it over");
        return Err(io_err(dir.display().to_string())(e));
    }
    Ok(meta.uid())
}

/// Gives every part of the data directory to the user that needs it (see the module docs).
/// Runs at every start, so directories written by root or by a single uid (before isolation
/// existed, or by a non-root development run) are taken over in place.
pub fn take_over(data_dir: &Path, acc: &Accounts) -> Result<(), Error> {
    own(data_dir, acc.front, Some(0o710))?;
    let db = data_dir.join(crate::layout::DB_DIR);
    // The front end writes in db/ as itself: once it owns db/, nothing below needs root (and
    // root does not walk a tree its previous occupant could still be changing).
    if mkdir(&db)? != acc.front.uid {
        own_tree(&db, acc.front, false)?;
    }
    own(&db, acc.front, Some(0o700))?;
    for f in [crate::layout::ADMIN_TOKEN_FILE, "admin-token.tmp"] {
        let p = data_dir.join(f);
        if std::fs::symlink_metadata(&p).is_ok() {
            own(&p, acc.front, Some(0o600))?;
        }
    }
    let signer = data_dir.join(crate::layout::SIGNER_DIR);
    mkdir(&signer)?;
    own_tree(&signer, acc.signer, true)?;
    let run = data_dir.join(crate::layout::RUN_DIR);
    mkdir(&run)?;
    own_tree(&run, acc.signer, false)?;
    own(&run, acc.signer, Some(0o710))?;
    Ok(())
}

/// Drops the calling process, which must have exactly one thread, to `a` for good: no
/// supplementary groups, real/effective/saved gid and uid all `a`'s (so every capability is
/// gone and cannot come back).
pub fn drop_privileges(a: Account) -> Result<(), Error> {
    use rustix::process::{Gid, Uid};
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned())));
    if threads.as_deref() != Some("1") {
        // Credentials are per thread in the kernel: with other threads, some would stay root.
        return Err(Error::DropPrivileges(format!("the process has {threads:?} threads, expected 1")));
    }
    let (uid, gid) = (Uid::from_raw(a.uid), Gid::from_raw(a.gid));
    let err = |what: &'static str| move |e: rustix::io::Errno| Error::DropPrivileges(format!("{what}: {e}"));
    rustix::thread::set_thread_groups(&[]).map_err(err("setgroups"))?;
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(err("setresgid"))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(err("setresuid"))?;
    if rustix::thread::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).is_ok() {
        return Err(Error::DropPrivileges("could regain root after dropping it".into()));
    }
    Ok(())
}

/// `RLIMIT_MEMLOCK` given to the isolated signer (the systemd unit's `LimitMEMLOCK=64M`).
pub const SIGNER_MEMLOCK: u64 = 64 << 20;

/// What the forked signer child does before `exec` (see the module docs). Runs between `fork`
/// and `exec`, so it uses raw system calls only (rustix), no allocation, no locks.
pub fn child_drop(uid: u32, gid: u32) -> io::Result<()> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::CapabilitySet;
    for cap in CapabilitySet::all().iter() {
        // EINVAL for capabilities this kernel does not know: nothing to drop.
        let _ = rustix::thread::remove_capability_from_bounding_set(cap);
    }
    // Unprivileged, the signer's mlock is bounded by RLIMIT_MEMLOCK (often 8 MiB: about 2,000
    // workspace keys); raised while we may, as the systemd unit's LimitMEMLOCK does.
    let lim = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    if lim.current.is_some_and(|c| c < SIGNER_MEMLOCK) {
        let want = Some(SIGNER_MEMLOCK);
        let maximum = if lim.maximum.is_some_and(|m| m < SIGNER_MEMLOCK) { want } else { lim.maximum };
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Memlock,
            rustix::process::Rlimit { current: want, maximum },
        );
    }
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    rustix::thread::set_no_new_privs(true)?;
    // The socket must be group-connectable (0770); every secret file is created 0600 explicitly.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o007));
    Ok(())
}

/// The data directory made absolute, for messages: with isolation the process works relative
/// to it (see [`KeyIsolation::SeparateUsers`]).
#[derive(Debug, Clone)]
pub struct DataDir {
    /// Absolute path, for messages.
    pub shown: PathBuf,
    /// Path to open files under: the absolute path, or `.` once the process works inside it.
    pub open: PathBuf,
}

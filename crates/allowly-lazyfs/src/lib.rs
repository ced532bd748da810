//! A FUSE file system that loses, at a simulated power cut, everything that was not made durable
//! by `fsync`/`fdatasync` — in the spirit of LazyFS, for Allowly's power-loss test tier
//! (issue 11 part 3). `kill -9` keeps the kernel's page cache, so it never tests fsync ordering;
//! this does.
//!
//! # Why FUSE, and why in memory
//!
//! The test machines have `/dev/fuse` but no device-mapper targets (no `dm-flakey`, no
//! `dm-log-writes`), so a block-level replay is not available; a FUSE layer needs nothing but the
//! kernel module, and it runs inside the test process, so a crash is a function call that is
//! atomic with respect to every fsync. The file contents live in this process's memory as two
//! images of one inode table sharing 4 KiB pages copy-on-write: what processes see (`live`) and
//! what a power cut would leave (`durable`). Nothing is written to a real disk, so the test's
//! figures do not depend on the machine's own fsync latency, and a crash costs a pointer copy.
//!
//! # What it models (the strict POSIX reading, no journaling file system's extra kindness)
//!
//! - File data and size (`write`, `truncate`, `fallocate`): durable at `fsync`/`fdatasync` of
//!   that file. Both sync the same things (data, size and attributes).
//! - Directory entries (create, `mkdir`, `mknod`, `symlink`, `link`, `unlink`, `rmdir`, `rename`):
//!   durable at `fsync` of that directory. A file fsynced in a directory that was not is lost
//!   with its name; a name whose directory was fsynced but whose file was not comes back as an
//!   empty file; a rename not followed by a directory fsync is undone; a rename across two
//!   directories needs both (with only the target synced, both names survive).
//! - Attributes (`chmod`, `chown`, times): durable at `fsync` of that inode.
//! - After the crash: inodes no durable directory names are collected, link counts recounted.
//!
//! # What it does not model
//!
//! - Reordered writes within an unsynced region. By default everything written since the last
//!   fsync of a file is lost together; with torn tails on ([`LazyFs::set_torn_tails`]) a crash
//!   keeps a random prefix of each file's unsynced pages in file order, the last of them torn at
//!   a 512-byte sector (LazyFS's "torn-seq" fault), as a disk that wrote back part of its page
//!   cache before the power went. Never pages out of order (a hole followed by newer data).
//! - `sync_file_range`, `syncfs`/`sync(2)` and `O_SYNC`/`O_DSYNC`: only `fsync`/`fdatasync` (and
//!   `fsyncdir`) make anything durable. Allowly and RocksDB use `fsync`/`fdatasync`.
//! - Failing writes and fsyncs, latency: not part of the power-loss model, but this layer can
//!   inject them ([`LazyFs::fail`] and [`LazyFs::fail_once`], [`LazyFs::set_slowness`] — for the write path, and with
//!   [`LazyFs::set_slow_ops`] for reads and metadata requests too) for the failing- and
//!   slow-disk tests (issue 11 parts 2 and 4). A failed fsync from [`LazyFs::fail`] and
//!   [`LazyFs::fail_once`] leaves the live data as it was (unsynced, written back by a later
//!   fsync that succeeds); [`LazyFs::fail_fsync_dropping_unsynced`] models what Linux may do
//!   instead ("fsyncgate"): the file's dirty pages are dropped, later reads see the old
//!   data, and the next fsync succeeds without it.
//! - Dirty pages dropped without an fsync to report it: Linux may drop them after a failed
//!   background write-back and tell only the next fsync; here they are dropped by that fsync
//!   itself, which a program cannot tell apart (it learns of the loss at the same call).
//! - Memory-mapped writes (`MAP_SHARED` + `msync`), extended attributes, hole punching: refused
//!   or absent; nothing under test uses them.
//! - Journaling file systems that commit every earlier metadata change with any fsync (ext4's
//!   default `data=ordered` does): a program that is correct only thanks to that fails here.
//!   That is on purpose: POSIX does not promise it, and ext4 with fast commits, XFS and btrfs
//!   behave differently from each other.
//!
//! # Use
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let fs = allowly_lazyfs::LazyFs::new();
//! let mount = fs.mount(std::path::Path::new("/mnt/lazy"))?; // root and /dev/fuse needed
//! // ... run processes with their data under /mnt/lazy ...
//! let lost = fs.crash(); // the power cut: the mount now answers EIO
//! // ... SIGKILL those processes ...
//! mount.unmount()?;
//! let mount = fs.mount(std::path::Path::new("/mnt/lazy"))?; // what survived
//! # drop((lost, mount)); Ok(()) }
//! ```

mod fuse;
mod image;
mod throttle;

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::Disk;
pub use image::{CrashReport, Point};
use throttle::Throttle;
pub use throttle::{SlowOps, Slowness};

/// Picks files by their last name (the one [`LazyFs::crash_at`] and [`LazyFs::fail`] match).
pub type FileMatcher = fn(&OsStr) -> bool;

/// One simulated disk. Cheap to clone: clones share the disk.
#[derive(Clone, Debug, Default)]
pub struct LazyFs {
    disk: Arc<Mutex<Disk>>,
    throttle: Arc<Throttle>,
}

impl LazyFs {
    /// An empty disk (a root directory, mode 0755, owned by root).
    pub fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        // Poisoned only if a request panicked; the image is still the best there is.
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mounts the disk's current state at `at` (an existing directory), readable and writable
    /// by every user (`allow_other`) with the kernel checking permissions
    /// (`default_permissions`). Needs root (it calls mount(2) directly) and `/dev/fuse`.
    pub fn mount(&self, at: &Path) -> io::Result<Mount> {
        self.mount_with_threads(at, 1)
    }

    /// [`Self::mount`] served by `threads` FUSE threads: with a slow write path
    /// ([`Self::set_slowness`]) one slow request then holds up only the requests queued behind
    /// it on its thread, as on a device with that many queues; with one thread every request
    /// waits for every slow one before it.
    pub fn mount_with_threads(&self, at: &Path, threads: usize) -> io::Result<Mount> {
        self.mount_as(at, threads, fuser::FopenFlags::empty())
    }

    /// [`Self::mount_with_threads`] with no page cache: every file is opened `FOPEN_DIRECT_IO`,
    /// so every read a process makes reaches the disk and its throttle, and nothing written is
    /// kept by the kernel. For tests of slow reads, which otherwise race with whatever writes
    /// files meanwhile (a compaction's output stays in the page cache, and is then read from
    /// there however slow the device is). Files cannot be `mmap`ped through it.
    pub fn mount_uncached(&self, at: &Path, threads: usize) -> io::Result<Mount> {
        self.mount_as(at, threads, fuser::FopenFlags::FOPEN_DIRECT_IO)
    }

    fn mount_as(&self, at: &Path, threads: usize, open_flags: fuser::FopenFlags) -> io::Result<Mount> {
        let epoch = self.disk().epoch();
        let notifier = Arc::new(std::sync::OnceLock::new());
        let adapter = fuse::Adapter {
            disk: self.disk.clone(),
            epoch,
            throttle: self.throttle.clone(),
            notifier: notifier.clone(),
            open_flags,
        };
        let mut config = fuser::Config::default();
        config.n_threads = Some(threads.max(1));
        config.mount_options = vec![
            fuser::MountOption::FSName("allowly-lazyfs".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::RW,
        ];
        config.acl = fuser::SessionACL::All;
        let session = fuser::spawn_mount(adapter, at, &config)?;
        let _ = notifier.set(session.notifier());
        Ok(Mount { session: Some(session), at: at.to_owned() })
    }

    /// The power cut. Atomically with respect to every request: whatever was not durable is
    /// gone, and every later request through a mount made before this call fails with `EIO`
    /// (the processes that were using it are about to be killed). Mount again to see what
    /// survived. Returns what was thrown away.
    pub fn crash(&self) -> CrashReport {
        self.disk().crash()
    }

    /// Arms a crash for a moment that a timer would rarely hit: the `skip + 1`-th write to (or
    /// fsync of) a file whose name matches `name`, from now on. The crash then happens inside
    /// that request, atomically, exactly as [`Self::crash`]; [`Self::crashes`] shows when.
    pub fn crash_at(&self, at: Point, name: fn(&OsStr) -> bool, skip: u32) {
        self.disk().arm(at, Box::new(name), skip);
    }

    /// Every crash so far, oldest first: when it happened, and what it threw away.
    pub fn crashes(&self) -> Vec<(Instant, CrashReport)> {
        self.disk().crashes().to_vec()
    }

    /// Whether a crash now would lose anything.
    pub fn has_unsynced(&self) -> bool {
        self.disk().has_unsynced()
    }

    /// A slow or stalled device: from now on every request of the classes [`Self::set_slow_ops`]
    /// chose — by default `write`, `fallocate`, `fsync`/`fdatasync` and `fsyncdir`, not reads
    /// or metadata requests — waits as `slowness` says before it is served. Applies to requests
    /// already waiting too, so `Slowness::Fast` releases a stall at once.
    pub fn set_slowness(&self, slowness: Slowness) {
        self.throttle.set(slowness);
    }

    /// Which classes of requests [`Self::set_slowness`] delays (default: writes and syncs, see
    /// [`SlowOps`]). Applies to requests already waiting too.
    pub fn set_slow_ops(&self, ops: SlowOps) {
        self.throttle.set_ops(ops);
    }

    /// A failing device: from now on every write to (`Point::Write`) or fsync of
    /// (`Point::Sync`) a file whose name matches `name` fails with `errno` (e.g. `libc::ENOSPC`,
    /// `libc::EIO`) and changes nothing; `None` heals it. A failed fsync syncs nothing, so the
    /// data it should have made durable is lost at a later crash unless an fsync succeeds first.
    pub fn fail(&self, failing: Option<(Point, FileMatcher, i32)>) {
        self.set_failing(failing, false);
    }

    /// [`Self::fail`] for the next matching request only: it fails with `errno`, and the device
    /// is healthy again after it (a failed fsync, and the writes after it succeed).
    /// [`Self::failures`] tells when it happened.
    pub fn fail_once(&self, at: Point, name: FileMatcher, errno: i32) {
        self.set_failing(Some((at, name, errno)), true);
    }

    /// The next fsync of a file whose name matches `name` fails with `EIO` and, as Linux may
    /// after a failed write-back ("fsyncgate"), drops that file's data written since its last
    /// fsync: later reads see what was last made durable (zeros where nothing was; the size
    /// stays), and the next fsync succeeds without bringing it back. A program that takes the
    /// data for written after such a failure — that retries the fsync on the same file, or
    /// keeps appending after the dropped bytes — reads or leaves zeros and old bytes there.
    /// The kernel's cached pages of the file are dropped too (a reader that had them cached
    /// reads the device's bytes again), just after the fsync is answered.
    pub fn fail_fsync_dropping_unsynced(&self, name: FileMatcher) {
        self.disk().fail_fsync_dropping_unsynced(Box::new(name));
    }

    /// How many dirty pages [`Self::fail_fsync_dropping_unsynced`] has dropped so far.
    pub fn dropped_pages(&self) -> usize {
        self.disk().dropped_pages()
    }

    /// How many requests failed as [`Self::fail`] and [`Self::fail_once`] asked, so far.
    pub fn failures(&self) -> u64 {
        self.disk().failed()
    }

    fn set_failing(&self, failing: Option<(Point, FileMatcher, i32)>, once: bool) {
        let failing =
            failing.map(|(at, name, errno)| (at, Box::new(name) as image::Lie, fuser::Errno::from_i32(errno)));
        self.disk().set_failing(failing, once);
    }

    /// Torn tails from now on: a crash keeps, of each file's writes since its last fsync, a
    /// random prefix in file order ending on a 512-byte sector — none, some, or all of them —
    /// instead of nothing. Synced data always survives whole. The amounts come from a generator
    /// seeded with `seed` (the same history and seed tear the same way); `None` turns it off.
    pub fn set_torn_tails(&self, seed: Option<u64>) {
        self.disk().set_torn_tails(seed);
    }

    /// A disk that lies: from now on an fsync of a file whose name matches `name` reports
    /// success and makes nothing durable (`None`: honest again). For negative controls — a
    /// checker that cannot see what this loses proves nothing.
    pub fn lie_about_fsync_of(&self, name: Option<fn(&OsStr) -> bool>) {
        self.disk().set_lie(name.map(|f| Box::new(f) as image::Lie));
    }
}

/// A mounted [`LazyFs`]. Dropping it unmounts (lazily if something still uses it).
#[derive(Debug)]
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    at: PathBuf,
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Unmounts and waits for the request loop to end. A file closed just before may still
    /// hold the mount busy for a moment (FUSE answers its `RELEASE` asynchronously), so an
    /// `EBUSY` is retried until [`UNMOUNT_WAIT`]; after that the mount is detached lazily and
    /// the error returned (a process still has something open on it).
    pub fn unmount(mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let deadline = Instant::now() + UNMOUNT_WAIT;
        loop {
            match nix::mount::umount(&self.at) {
                Ok(()) => break,
                Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    lazy_unmount(&self.at);
                    return Err(io::Error::other(format!("unmounting {}: {e}", self.at.display())));
                }
            }
        }
        // The kernel ends the session once unmounted: the request loop returns.
        session.join()
    }
}

/// How long [`Mount::unmount`] retries a busy mount.
pub const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if session.umount_and_join().is_err() {
                lazy_unmount(&self.at);
            }
        }
    }
}

/// `umount -l`: detaches the mount now; the kernel ends it when its last user is gone.
fn lazy_unmount(at: &Path) {
    let _ = std::process::Command::new("umount").arg("-l").arg(at).status();
}

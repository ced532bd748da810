//! The file system through the kernel, with real system calls: the self-check of the power-loss
//! tier. What was fsynced survives a crash, what was not is gone — so a power-loss test that
//! passes on it has really lost the unsynced state. Needs root and `/dev/fuse` (CI has both); a
//! machine without them fails here rather than skipping, since a skipped self-check would let
//! the tier above it pass without testing anything.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use allowly_lazyfs::{LazyFs, Mount};

struct Rig {
    fs: LazyFs,
    mount: Option<Mount>,
    at: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        Self::with_threads(1)
    }

    fn with_threads(threads: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let at = tmp.path().join("mnt");
        fs::create_dir(&at).unwrap();
        let fs = LazyFs::new();
        let mount = fs
            .mount_with_threads(&at, threads)
            .unwrap_or_else(|e| panic!("mounting the FUSE layer at {} (needs root and /dev/fuse): {e}", at.display()));
        Self { fs, mount: Some(mount), at, _tmp: tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.at.join(rel)
    }

    /// Power cut, then a fresh mount of what survived.
    fn crash(&mut self) -> allowly_lazyfs::CrashReport {
        let report = self.fs.crash();
        // The old mount refuses everything from the crash on.
        let err = fs::read_dir(&self.at).and_then(|mut d| d.next().transpose()).err();
        let err = err.or_else(|| File::create(self.at.join("after-crash")).err());
        assert!(err.is_some(), "the crashed mount still answers");
        if let Err(e) = self.mount.take().unwrap().unmount() {
            // Busy: show what this process still has open (a file the test forgot to close).
            let fds: Vec<_> =
                fs::read_dir("/proc/self/fd").unwrap().filter_map(|e| fs::read_link(e.ok()?.path()).ok()).collect();
            panic!("{e}; open here: {fds:?}");
        }
        self.mount = Some(self.fs.mount(&self.at).unwrap());
        report
    }
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

fn read(p: &Path) -> Option<Vec<u8>> {
    let mut f = File::open(p).ok()?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    Some(v)
}

#[test]
fn what_was_not_fsynced_is_gone_and_what_was_survives() {
    let mut rig = Rig::new();
    let (synced, unsynced, datasynced) = (rig.path("synced"), rig.path("unsynced"), rig.path("datasynced"));
    let mut f = File::create(&synced).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    let mut g = File::create(&unsynced).unwrap();
    g.write_all(b"volatile").unwrap();
    let mut h = File::create(&datasynced).unwrap();
    h.write_all(b"data").unwrap();
    h.sync_data().unwrap();
    sync_dir(&rig.at);
    // After the directory is synced: one more write to each, never synced.
    f.write_all(b" and more").unwrap();
    h.write_all(b" and more").unwrap();
    g.write_all(b" and more").unwrap();
    drop((f, g, h));
    assert_eq!(read(&synced).unwrap(), b"durable and more", "the live view has every write");
    assert!(rig.fs.has_unsynced());

    let report = rig.crash();
    assert_eq!(report.files_with_unsynced_data, 3, "{report:?}");
    assert_eq!(read(&synced).unwrap(), b"durable");
    assert_eq!(read(&datasynced).unwrap(), b"data");
    assert_eq!(read(&unsynced).unwrap(), b"", "its name was synced, its data never");
    assert!(!rig.fs.has_unsynced());
}

#[test]
fn names_need_their_directory_fsynced() {
    let mut rig = Rig::new();
    fs::create_dir(rig.path("d")).unwrap();
    sync_dir(&rig.at);
    // A file fsynced in a directory that never was: gone after the crash, name and all.
    let mut f = File::create(rig.path("d/lost")).unwrap();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // The atomic-write pattern without its last step: the rename is undone.
    fs::write(rig.path("cfg"), b"old").unwrap();
    File::open(rig.path("cfg")).unwrap().sync_all().unwrap();
    sync_dir(&rig.at);
    fs::write(rig.path("cfg.tmp"), b"new").unwrap();
    File::open(rig.path("cfg.tmp")).unwrap().sync_all().unwrap();
    fs::rename(rig.path("cfg.tmp"), rig.path("cfg")).unwrap();
    // A directory created and never synced in its parent.
    fs::create_dir(rig.path("newdir")).unwrap();
    sync_dir(&rig.path("newdir"));

    let report = rig.crash();
    assert_eq!(report.dirs_with_unsynced_entries, 2, "the root and d: {report:?}");
    assert!(!rig.path("d/lost").exists());
    assert_eq!(read(&rig.path("cfg")).unwrap(), b"old");
    assert!(!rig.path("cfg.tmp").exists());
    assert!(!rig.path("newdir").exists());

    // The same with every step: all of it survives.
    fs::write(rig.path("cfg.tmp"), b"new").unwrap();
    File::open(rig.path("cfg.tmp")).unwrap().sync_all().unwrap();
    fs::rename(rig.path("cfg.tmp"), rig.path("cfg")).unwrap();
    let mut f = File::create(rig.path("d/kept")).unwrap();
    f.write_all(b"y").unwrap();
    f.sync_all().unwrap();
    drop(f);
    sync_dir(&rig.path("d"));
    sync_dir(&rig.at);
    rig.crash();
    assert_eq!(read(&rig.path("cfg")).unwrap(), b"new");
    assert_eq!(read(&rig.path("d/kept")).unwrap(), b"y");
}

#[test]
fn truncates_appends_links_and_modes_behave_like_a_disk() {
    let mut rig = Rig::new();
    let p = rig.path("log");
    let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(&p).unwrap();
    for i in 0..1000u32 {
        f.write_all(format!("line {i}\n").as_bytes()).unwrap();
    }
    f.sync_data().unwrap();
    sync_dir(&rig.at);
    let len = fs::metadata(&p).unwrap().len();
    f.set_len(10).unwrap(); // cut, not synced
    fs::hard_link(&p, rig.path("log2")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(1234)).unwrap();
    assert_eq!(fs::metadata(rig.path("log2")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(&p).unwrap().uid(), 1234);
    drop(f);
    rig.crash();
    let m = fs::metadata(&p).unwrap();
    assert_eq!(m.len(), len, "the unsynced truncate is undone");
    assert_eq!((m.mode() & 0o777, m.uid(), m.nlink()), (0o600, 0, 1), "unsynced chmod, chown and link undone");
    assert!(read(&p).unwrap().starts_with(b"line 0\nline 1\n"));
    assert!(!rig.path("log2").exists());
}

/// A Unix socket bound on the mount (the embedded signer's lives under the data directory).
#[test]
fn unix_sockets_bind_and_connect_on_the_mount() {
    let rig = Rig::new();
    let sock = rig.path("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

/// The failing- and slow-disk modes through the kernel: a write refused with ENOSPC and an fsync
/// refused with EIO reach the caller as those errors and change nothing; a stalled write path
/// holds an fsync (and only the write path: reads are served) until the stall is lifted.
#[test]
fn a_failing_or_stalled_device_shows_through_the_kernel() {
    // Several FUSE threads: the stalled fsync holds one, the reads go through another.
    let mut rig = Rig::with_threads(4);
    let p = rig.path("000007.log");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    sync_dir(&rig.at);
    fn is_log(name: &std::ffi::OsStr) -> bool {
        name.to_string_lossy().ends_with(".log")
    }
    rig.fs.fail(Some((allowly_lazyfs::Point::Write, is_log, libc::ENOSPC)));
    let e = f.write_all(b"refused").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    rig.fs.fail(Some((allowly_lazyfs::Point::Sync, is_log, libc::EIO)));
    f.write_all(b"+tail").unwrap();
    let e = f.sync_data().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(read(&p).unwrap(), b"synced+tail");
    rig.fs.fail(None);

    rig.fs.set_slowness(allowly_lazyfs::Slowness::Stalled);
    let (tx, rx) = std::sync::mpsc::channel();
    let syncer = std::thread::spawn(move || {
        let r = f.sync_data();
        let _ = tx.send(());
        r
    });
    // Reads are not held up by the stall; the fsync is, until it is lifted.
    assert_eq!(read(&p).unwrap(), b"synced+tail");
    assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "a stalled fsync returned");
    rig.fs.set_slowness(allowly_lazyfs::Slowness::Fast);
    rx.recv_timeout(std::time::Duration::from_secs(10)).expect("lifting the stall serves the fsync");
    syncer.join().unwrap().unwrap();
    rig.crash();
    assert_eq!(read(&p).unwrap(), b"synced+tail", "the fsync after the failed one synced the tail");
}

/// A failed fsync that drops the file's dirty pages (`fail_fsync_dropping_unsynced`, Linux's
/// "fsyncgate"), through the kernel: the fsync returns EIO; the data written since the last
/// fsync reads back as the old bytes (zeros past them, the size kept) through a new open and,
/// once the kernel was told to forget its cached pages, through the descriptor that wrote it;
/// the next fsync succeeds and a crash keeps exactly that.
#[test]
fn a_failed_fsync_can_drop_the_unsynced_data() {
    use std::os::unix::fs::FileExt as _;
    let mut rig = Rig::new();
    let path = rig.path("audit.log");
    let mut f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    sync_dir(&rig.at);
    f.write_all(b"+lost").unwrap();
    let old = b"synced\0\0\0\0\0".to_vec();

    rig.fs.fail_fsync_dropping_unsynced(|n| n == "audit.log");
    let err = f.sync_data().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(rig.fs.dropped_pages() > 0);
    assert_eq!(read(&path).unwrap(), old, "a new open reads what the device has");
    let start = std::time::Instant::now();
    loop {
        let mut buf = vec![0u8; 64];
        let n = f.read_at(&mut buf, 0).unwrap();
        if buf[..n] == old[..] {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "the writer still reads {:?}", &buf[..n]);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    f.sync_data().unwrap();
    drop(f);
    rig.crash();
    assert_eq!(read(&path).unwrap(), old);
}

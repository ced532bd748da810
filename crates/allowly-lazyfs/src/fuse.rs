//! The FUSE side: each kernel request becomes one call on the shared [`Disk`] under its lock.
//! Every request first checks the mount's epoch, so once [`Disk::crash`] ran, a request through
//! the crashed mount fails with `EIO` instead of touching the image that replaced it.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::image::{Body, Data, Disk, Kind, Meta};
use crate::throttle::{Op, Throttle};

/// How long the kernel may cache names and attributes. Every change goes through this kernel,
/// so its caches never go stale within one mount; a crash is followed by a fresh mount.
const TTL: Duration = Duration::from_secs(1);
/// The size `statfs` reports: large, so the service's free-space floor never trips here.
const CAPACITY: u64 = 64 << 30;
const BLOCK: u64 = 4096;

pub(crate) struct Adapter {
    pub(crate) disk: Arc<Mutex<Disk>>,
    /// The epoch this mount serves; any other means a crash happened since it was mounted.
    pub(crate) epoch: u64,
    /// How slow the device is, per class of request (waited for before the disk's lock is taken).
    pub(crate) throttle: Arc<Throttle>,
    /// Tells the kernel to forget cached pages (set once the session runs).
    pub(crate) notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// What every `open` and `create` answers: `FOPEN_DIRECT_IO` for a mount whose pages the
    /// kernel must never cache (see [`crate::LazyFs::mount_uncached`]).
    pub(crate) open_flags: FopenFlags,
}

fn kind_of(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Adapter {
    /// The disk, if this mount has not crashed.
    fn disk(&self) -> Result<MutexGuard<'_, Disk>, Errno> {
        // A panic while holding the lock leaves the image as consistent as any one request
        // can leave it; carrying on beats wedging every process on the mount.
        let disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        if disk.epoch() == self.epoch {
            Ok(disk)
        } else {
            Err(Errno::EIO)
        }
    }

    fn attr(disk: &Disk, ino: u64) -> Result<FileAttr, Errno> {
        let n = disk.node(ino)?;
        let size = n.size();
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.meta.atime,
            mtime: n.meta.mtime,
            ctime: n.meta.ctime,
            crtime: n.meta.ctime,
            kind: kind_of(n.kind()),
            perm: n.meta.perm,
            nlink: disk.nlink(ino)?,
            uid: n.meta.uid,
            gid: n.meta.gid,
            rdev: n.rdev(),
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    fn make(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, body: Body) -> Result<FileAttr, Errno> {
        let mut disk = self.disk()?;
        // The kernel has applied the umask already (no FUSE_DONT_MASK).
        let meta = Meta::new((mode & 0o7777) as u16, req.uid(), req.gid());
        let ino = disk.create(parent.0, name, body, meta)?;
        Self::attr(&disk, ino)
    }
}

fn entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Adapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.throttle.wait(Op::Metadata);
        entry(
            reply,
            self.disk().and_then(|d| {
                let ino = d.lookup(parent.0, name)?;
                Self::attr(&d, ino)
            }),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.throttle.wait(Op::Metadata);
        match self.disk().and_then(|d| Self::attr(&d, ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.throttle.wait(if size.is_some() { Op::Write } else { Op::Metadata });
        let r = self.disk().and_then(|mut d| {
            if let Some(size) = size {
                d.truncate(ino.0, size)?;
            }
            if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
                d.set_meta(ino.0, |m| {
                    if let Some(mode) = mode {
                        m.perm = (mode & 0o7777) as u16;
                    }
                    if let Some(uid) = uid {
                        m.uid = uid;
                    }
                    if let Some(gid) = gid {
                        m.gid = gid;
                    }
                    if let Some(t) = atime {
                        m.atime = time(t);
                    }
                    if let Some(t) = mtime {
                        m.mtime = time(t);
                    }
                })?;
            }
            Self::attr(&d, ino.0)
        });
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.throttle.wait(Op::Read);
        match self.disk().and_then(|d| d.readlink(ino.0)) {
            Ok(t) => reply.data(t.as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.throttle.wait(Op::Metadata);
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDevice),
            libc::S_IFBLK => Some(Kind::BlockDevice),
            _ => return reply.error(Errno::EINVAL),
        };
        let body = match kind {
            None => Body::File(Data::default()),
            Some(kind) => Body::Special { kind, rdev },
        };
        entry(reply, self.make(req, parent, name, mode, body));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        self.throttle.wait(Op::Metadata);
        entry(reply, self.make(req, parent, name, mode, Body::Dir(Default::default())));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.throttle.wait(Op::Metadata);
        empty(reply, self.disk().and_then(|mut d| d.remove(parent.0, name, false)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.throttle.wait(Op::Metadata);
        empty(reply, self.disk().and_then(|mut d| d.remove(parent.0, name, true)));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        self.throttle.wait(Op::Metadata);
        let body = Body::Symlink(target.as_os_str().to_owned());
        entry(reply, self.make(req, parent, link_name, 0o777, body));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.throttle.wait(Op::Metadata);
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(reply, self.disk().and_then(|mut d| d.rename(parent.0, name, newparent.0, newname, no_replace)));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.throttle.wait(Op::Metadata);
        entry(
            reply,
            self.disk().and_then(|mut d| {
                d.link(ino.0, newparent.0, newname)?;
                Self::attr(&d, ino.0)
            }),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.throttle.wait(Op::Metadata);
        match self.disk().and_then(|mut d| d.open(ino.0)) {
            Ok(()) => reply.opened(FileHandle(0), self.open_flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.throttle.wait(Op::Read);
        match self.disk().and_then(|d| d.read(ino.0, offset, size as usize)) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.throttle.wait(Op::Write);
        match self.disk().and_then(|mut d| d.write(ino.0, offset, data)) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2) makes nothing durable.
        empty(reply, self.disk().map(drop));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.disk().map(|mut d| d.release(ino.0)));
    }

    /// Never `ENOSYS`: the kernel would take that as "fsync is a no-op here" and answer every
    /// later fsync with success itself.
    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.throttle.wait(Op::Sync);
        let (r, dropped) = match self.disk() {
            Ok(mut d) => {
                let before = d.dropped_pages();
                let r = d.fsync(ino.0);
                (r, d.dropped_pages() > before)
            }
            Err(e) => (Err(e), false),
        };
        empty(reply, r);
        if dropped {
            // The file's dirty pages were dropped (`Disk::fail_fsync_dropping_unsynced`): the
            // kernel's cached copy of them must go too, or a reader holding the file open
            // would still see them. From another thread, once this request is answered (the
            // kernel may hold the inode's lock until then).
            if let Some(notifier) = self.notifier.get().cloned() {
                std::thread::spawn(move || {
                    let _ = notifier.inval_inode(ino, 0, 0);
                });
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.throttle.wait(Op::Metadata);
        match self.disk().and_then(|mut d| d.open(ino.0)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.throttle.wait(Op::Read);
        let entries = match self.disk().and_then(|d| d.entries(ino.0)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dots = [(".".into(), ino.0, Kind::Dir), ("..".into(), ino.0, Kind::Dir)];
        // Offsets are positions in the sorted listing (1-based: 0 asks for the start).
        for (i, (name, child, kind)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind_of(kind), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        empty(reply, self.disk().map(|mut d| d.release(ino.0)));
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.throttle.wait(Op::Sync);
        empty(reply, self.disk().and_then(|mut d| d.fsync(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.throttle.wait(Op::Metadata);
        match self.disk() {
            Ok(d) => {
                let free = CAPACITY.saturating_sub(d.used_bytes()) / BLOCK;
                let files = 1u64 << 24;
                let ffree = files.saturating_sub(d.inode_count());
                reply.statfs(CAPACITY / BLOCK, free, free, files, ffree, BLOCK as u32, 255, BLOCK as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.throttle.wait(Op::Metadata);
        // With `default_permissions` the kernel checks permissions itself.
        empty(reply, self.disk().map(drop));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.throttle.wait(Op::Metadata);
        let r = self.make(req, parent, name, mode, Body::File(Data::default())).and_then(|attr| {
            self.disk()?.open(attr.ino.0)?;
            Ok(attr)
        });
        match r {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), self.open_flags),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.throttle.wait(Op::Write);
        empty(reply, self.disk().and_then(|mut d| d.fallocate(ino.0, offset, length, mode)));
    }
}

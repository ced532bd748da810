//! The file system itself, without FUSE: two images of one inode table — what processes see
//! (`live`) and what would be on the platter after a power cut (`durable`) — and the rules that
//! move state from the first to the second. Pure data and functions, so every rule has a unit
//! test that needs neither root nor `/dev/fuse`.
//!
//! What becomes durable, and when (the strict POSIX reading, see the crate docs):
//!
//! | operation                         | becomes durable at                                   |
//! |-----------------------------------|------------------------------------------------------|
//! | `write`, `truncate`, `fallocate`  | `fsync`/`fdatasync` of that file                     |
//! | `chmod`, `chown`, times           | `fsync`/`fdatasync` of that inode                    |
//! | create, `mkdir`, `link`, `unlink`, `rename`, `mknod`, `symlink` | `fsync` of the directory whose entries changed (a cross-directory rename needs both) |
//!
//! A name made durable by a directory fsync points at the inode's durable content: a file whose
//! data was never fsynced comes back empty, a directory never fsynced itself comes back empty.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::Errno;

/// Inode number of the root directory (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;
/// Granularity of the page cache: what one dirty page costs to keep or to sync.
pub const PAGE: usize = 4096;
/// What a device writes atomically: a torn write keeps a whole number of these.
pub const SECTOR: usize = 512;

/// File types this file system stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Attributes that are not content.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Meta {
    pub fn new(perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Self { perm: perm & 0o7777, uid, gid, atime: now, mtime: now, ctime: now }
    }
}

/// A file's bytes as shared pages: cloning an image copies pointers, and a write to a page that
/// the other image also holds copies that one page (`Arc::make_mut`).
#[derive(Clone, Debug, Default)]
pub struct Data {
    size: u64,
    /// Page `i` holds bytes `i * PAGE ..`; `None` is a hole (zeros).
    pages: Vec<Option<Arc<[u8; PAGE]>>>,
    /// Pages written since the last sync (live image only).
    dirty: BTreeSet<usize>,
    /// The fewest pages the file had since the last sync (live image only): a sync must cut the
    /// durable copy there first, or old bytes would reappear in a region truncated and regrown.
    shrunk_to: Option<usize>,
}

impl Data {
    pub fn size(&self) -> u64 {
        self.size
    }

    fn pages_for(size: u64) -> usize {
        usize::try_from(size.div_ceil(PAGE as u64)).unwrap_or(usize::MAX)
    }

    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        if offset >= self.size {
            return Vec::new();
        }
        let end = self.size.min(offset.saturating_add(len as u64));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        while at < end {
            let page = (at / PAGE as u64) as usize;
            let within = (at % PAGE as u64) as usize;
            let take = (PAGE - within).min((end - at) as usize);
            match self.pages.get(page).and_then(Option::as_ref) {
                Some(p) => out.extend_from_slice(&p[within..within + take]),
                None => out.resize(out.len() + take, 0),
            }
            at += take as u64;
        }
        out
    }

    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        let need = Self::pages_for(end);
        if self.pages.len() < need {
            self.pages.resize(need, None);
        }
        let mut at = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let page = (at / PAGE as u64) as usize;
            let within = (at % PAGE as u64) as usize;
            let take = (PAGE - within).min(rest.len());
            let slot = self.pages[page].get_or_insert_with(|| Arc::new([0u8; PAGE]));
            Arc::make_mut(slot)[within..within + take].copy_from_slice(&rest[..take]);
            self.dirty.insert(page);
            rest = &rest[take..];
            at += take as u64;
        }
        self.size = self.size.max(end);
    }

    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            let keep = Self::pages_for(size);
            self.pages.truncate(keep);
            self.dirty.retain(|p| *p < keep);
            self.shrunk_to = Some(self.shrunk_to.map_or(keep, |s| s.min(keep)));
            // Zero the tail of the last kept page, so that growing the file again reads zeros.
            let within = (size % PAGE as u64) as usize;
            if within != 0 {
                if let Some(Some(p)) = self.pages.last_mut() {
                    Arc::make_mut(p)[within..].fill(0);
                    self.dirty.insert(keep - 1);
                }
            }
        }
        self.size = size;
        let need = Self::pages_for(size);
        if self.pages.len() < need {
            self.pages.resize(need, None);
        }
    }

    /// Makes `durable` equal to `self` by copying only what changed since the last sync.
    fn sync_into(&mut self, durable: &mut Data) {
        if let Some(n) = self.shrunk_to.take() {
            durable.pages.truncate(n);
        }
        durable.pages.resize(self.pages.len(), None);
        for p in std::mem::take(&mut self.dirty) {
            durable.pages[p] = self.pages[p].clone();
        }
        durable.size = self.size;
    }

    fn unsynced_pages(&self) -> usize {
        self.dirty.len()
    }

    /// What Linux may do after a failed write-back ("fsyncgate"): the pages written since the
    /// last sync are dropped from the page cache, so later reads see what the device has —
    /// `durable`'s bytes, zeros where it has none — while the size stays (the inode's size is
    /// not rolled back). They are clean now: a later sync does not write them again. Returns how
    /// many pages were dropped.
    fn drop_unsynced(&mut self, durable: Option<&Data>) -> usize {
        let dirty = std::mem::take(&mut self.dirty);
        for &p in &dirty {
            if let Some(slot) = self.pages.get_mut(p) {
                *slot = durable.and_then(|d| d.pages.get(p).cloned().flatten());
            }
        }
        // Past the size reads as zeros, whatever the device's page held there (a file cut
        // shorter since its last sync).
        let within = (self.size % PAGE as u64) as usize;
        let last = Self::pages_for(self.size).wrapping_sub(1);
        if within != 0 && dirty.contains(&last) {
            if let Some(Some(page)) = self.pages.get_mut(last) {
                Arc::make_mut(page)[within..].fill(0);
            }
        }
        dirty.len()
    }

    /// What a power cut may leave of the unsynced writes besides nothing: the first `pages`
    /// dirty pages in file order reached the platter, the last of them only its first
    /// `sectors` 512-byte sectors (a torn write), the rest never did. The durable size grows
    /// to cover what arrived (never past the live size). A file cut shorter since its last
    /// sync keeps nothing: that case stays all or nothing. Returns how many bytes the durable
    /// file grew by (what survived of unsynced appends).
    fn tear_into(&self, durable: &mut Data, pages: usize, sectors: usize) -> u64 {
        if self.shrunk_to.is_some() || pages == 0 {
            return 0;
        }
        let old_size = durable.size;
        let kept: Vec<usize> = self.dirty.iter().copied().take(pages).collect();
        let Some(&last) = kept.last() else { return 0 };
        if durable.pages.len() < self.pages.len() {
            durable.pages.resize(self.pages.len(), None);
        }
        for &p in &kept {
            let take = if p == last { (sectors * SECTOR).min(PAGE) } else { PAGE };
            let live = self.pages[p].as_deref().copied().unwrap_or([0u8; PAGE]);
            let slot = durable.pages[p].get_or_insert_with(|| Arc::new([0u8; PAGE]));
            Arc::make_mut(slot)[..take].copy_from_slice(&live[..take]);
        }
        let end = (last * PAGE + (sectors * SECTOR).min(PAGE)) as u64;
        durable.size = durable.size.max(end.min(self.size));
        // No page past the durable size (a torn tail of a file that also has holes).
        durable.pages.truncate(Self::pages_for(durable.size));
        durable.size - old_size
    }
}

#[derive(Clone, Debug)]
pub enum Body {
    File(Data),
    Dir(BTreeMap<OsString, u64>),
    Symlink(OsString),
    /// FIFOs, sockets and device nodes: nothing but their kind and device number.
    Special {
        kind: Kind,
        rdev: u32,
    },
}

#[derive(Clone, Debug)]
pub struct Node {
    pub meta: Meta,
    pub body: Body,
    /// Directory entries naming this inode (files and specials; directories count theirs).
    pub nlink: u32,
    /// Open handles (live image only): an unlinked file lives while it is open.
    pub opens: u32,
    /// The last name it was given: what a [`Lie`] matches on.
    pub name: OsString,
    /// Meta changed since the inode was last synced (live image only).
    meta_dirty: bool,
}

impl Node {
    pub fn kind(&self) -> Kind {
        match &self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
            Body::Symlink(_) => Kind::Symlink,
            Body::Special { kind, .. } => *kind,
        }
    }

    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File(d) => d.size(),
            Body::Dir(e) => e.len() as u64,
            Body::Symlink(t) => t.len() as u64,
            Body::Special { .. } => 0,
        }
    }

    pub fn rdev(&self) -> u32 {
        match &self.body {
            Body::Special { rdev, .. } => *rdev,
            _ => 0,
        }
    }

    fn entries(&self) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.body {
            Body::Dir(e) => Ok(e),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.body {
            Body::Dir(e) => Ok(e),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn data_mut(&mut self) -> Result<&mut Data, Errno> {
        match &mut self.body {
            Body::File(d) => Ok(d),
            Body::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.meta.mtime = now;
        self.meta.ctime = now;
        self.meta_dirty = true;
    }
}

/// Which files' fsyncs are ignored (a disk that lies): for negative controls only.
pub type Lie = Box<dyn Fn(&OsStr) -> bool + Send>;

/// Where an armed crash strikes: right after a write to a matching file is applied (the
/// write succeeded into the page cache, its fsync never comes), or right after a matching
/// file's fsync made it durable (before the process can act on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Write,
    Sync,
}

/// A failing device (see [`Disk::set_failing`]): requests at `point` of files whose last name
/// matches `name` fail with `errno` and change nothing, unless `drops` (see
/// [`Disk::fail_fsync_dropping_unsynced`]); with `once`, only the next one does.
struct Failing {
    point: Point,
    name: Lie,
    errno: Errno,
    once: bool,
    drops: bool,
}

/// What a crash threw away (counted on the live image just before it was dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Files with written but unsynced pages.
    pub files_with_unsynced_data: usize,
    /// Their names (the last name each was given), sorted.
    pub unsynced_files: Vec<OsString>,
    /// Names of the directories whose unsynced entries were lost, sorted.
    pub unsynced_dirs: Vec<OsString>,
    /// Those pages (each up to [`PAGE`] bytes).
    pub unsynced_pages: usize,
    /// Directories whose entries differ from their durable ones.
    pub dirs_with_unsynced_entries: usize,
    /// Durable inodes that no durable directory names any more (garbage-collected).
    pub orphans_collected: usize,
    /// With torn tails on ([`Disk::set_torn_tails`]): the files that kept part of their
    /// unsynced appends (last names, sorted), and how many bytes of them (the bytes their
    /// durable sizes grew by).
    pub torn_files: Vec<OsString>,
    pub torn_bytes_kept: u64,
}

/// One inode table.
#[derive(Clone, Debug, Default)]
struct Image {
    nodes: HashMap<u64, Node>,
}

impl Image {
    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }
}

/// The whole file system: both images, the inode counter, and the mount epoch (bumped by every
/// crash, so that a request arriving through an old mount is refused).
pub struct Disk {
    live: Image,
    durable: Image,
    next_ino: u64,
    epoch: u64,
    lie: Option<Lie>,
    /// A crash waiting for its moment: where, which files, how many matches to let pass first.
    armed: Option<(Point, Lie, u32)>,
    /// A failing device: writes or fsyncs of matching files fail (see [`Disk::set_failing`]).
    failing: Option<Failing>,
    /// How many requests [`Disk::set_failing`] has failed so far.
    failed: u64,
    /// How many dirty pages failed fsyncs dropped ([`Disk::fail_fsync_dropping_unsynced`]).
    dropped_pages: usize,
    /// Torn tails at a crash ([`Disk::set_torn_tails`]): the state of the generator that picks
    /// how much of each file's unsynced writes survives.
    torn: Option<u64>,
    /// Every crash so far: when, and what it threw away.
    crashes: Vec<(std::time::Instant, CrashReport)>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("live_nodes", &self.live.nodes.len())
            .field("durable_nodes", &self.durable.nodes.len())
            .field("epoch", &self.epoch)
            .field("lies", &self.lie.is_some())
            .finish()
    }
}

impl Default for Disk {
    fn default() -> Self {
        Self::new()
    }
}

impl Disk {
    /// An empty file system: a root directory (0755, root's) that is already durable, as a
    /// freshly made file system is.
    pub fn new() -> Self {
        let root = Node {
            meta: Meta::new(0o755, 0, 0),
            body: Body::Dir(BTreeMap::new()),
            nlink: 2,
            opens: 0,
            name: OsString::from("/"),
            meta_dirty: false,
        };
        let image = Image { nodes: HashMap::from([(ROOT, root)]) };
        Self {
            live: image.clone(),
            durable: image,
            next_ino: ROOT + 1,
            epoch: 0,
            lie: None,
            armed: None,
            failing: None,
            failed: 0,
            dropped_pages: 0,
            torn: None,
            crashes: Vec::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// From now on, fsyncs of files whose last name matches `lie` succeed without making
    /// anything durable.
    pub fn set_lie(&mut self, lie: Option<Lie>) {
        self.lie = lie;
    }

    /// From now on a crash may keep part of each file's unsynced writes, as a disk that wrote
    /// some of its page cache back before the power went: for every file, a random number of
    /// its dirty pages in file order (none, some or all), the last of them torn at a random
    /// sector boundary. Never anything a sync did not cover *instead of* what it did: synced
    /// data always survives whole. `Some(seed)` picks the amounts from a generator seeded with
    /// it (replayable); `None`: all or nothing again (nothing unsynced survives).
    pub fn set_torn_tails(&mut self, seed: Option<u64>) {
        // xorshift64 needs a state other than 0.
        self.torn = seed.map(|s| s | 1);
    }

    /// The next number of the torn-tail generator, below `n` (0 if torn tails are off).
    fn torn_pick(&mut self, n: u64) -> u64 {
        let Some(x) = self.torn.as_mut() else { return 0 };
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        if n == 0 {
            0
        } else {
            *x % n
        }
    }

    /// From now on, every [`Point`] `at` of a file whose last name matches `name` fails with
    /// `errno` and changes nothing (`None`: the device is healthy again). A failed write leaves
    /// the file as it was; a failed fsync makes nothing durable (what it should have synced
    /// stays unsynced, and a later fsync that succeeds syncs it).
    /// With `once`, only the next such request fails; the device is healthy after it.
    pub fn set_failing(&mut self, failing: Option<(Point, Lie, Errno)>, once: bool) {
        self.failing = failing.map(|(point, name, errno)| Failing { point, name, errno, once, drops: false });
    }

    /// The next fsync of a file whose last name matches `name` fails with `EIO` as a failed
    /// write-back makes it fail on Linux, which may then drop the file's dirty pages
    /// ("fsyncgate"): that file's data written since its last sync is gone from the live image
    /// too ([`Data::drop_unsynced`]: reads see the durable bytes, zeros past them; the size
    /// stays), and nothing of it becomes durable. The device is healthy after it, and the next
    /// fsync of the file succeeds (Linux reports a write-back error once) without bringing the
    /// dropped data back.
    pub fn fail_fsync_dropping_unsynced(&mut self, name: Lie) {
        self.failing = Some(Failing { point: Point::Sync, name, errno: Errno::EIO, once: true, drops: true });
    }

    /// How many requests failed as [`Disk::set_failing`] asked, so far.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// The error `at` of `ino` fails with, if the device is failing there (counted; a failure
    /// asked for once heals the device). A failure that drops the file's unsynced data
    /// ([`Disk::fail_fsync_dropping_unsynced`]) has dropped it when this returns.
    fn failure(&mut self, at: Point, ino: u64) -> Result<(), Errno> {
        let Some(f) = &self.failing else { return Ok(()) };
        match self.live.nodes.get(&ino) {
            Some(node) if f.point == at && f.name.as_ref()(&node.name) => {
                let (errno, drops) = (f.errno, f.drops);
                if f.once {
                    self.failing = None;
                }
                self.failed += 1;
                if drops {
                    let durable = match self.durable.nodes.get(&ino).map(|n| &n.body) {
                        Some(Body::File(d)) => Some(d),
                        _ => None,
                    };
                    if let Some(Node { body: Body::File(live), .. }) = self.live.nodes.get_mut(&ino) {
                        self.dropped_pages += live.drop_unsynced(durable);
                    }
                }
                Err(errno)
            }
            _ => Ok(()),
        }
    }

    /// How many dirty pages failed fsyncs have dropped so far
    /// ([`Disk::fail_fsync_dropping_unsynced`]).
    pub fn dropped_pages(&self) -> usize {
        self.dropped_pages
    }

    /// Arms a crash at the `skip + 1`-th [`Point`] of a file whose name matches `name` (replacing
    /// any armed before).
    pub fn arm(&mut self, at: Point, name: Lie, skip: u32) {
        self.armed = Some((at, name, skip));
    }

    /// Every crash so far, oldest first: when it happened and what it threw away.
    pub fn crashes(&self) -> &[(std::time::Instant, CrashReport)] {
        &self.crashes
    }

    /// Crashes now if an armed crash waits for this point of `ino`.
    fn strike(&mut self, at: Point, ino: u64) {
        let Some((point, name, skip)) = &mut self.armed else { return };
        let Some(node) = self.live.nodes.get(&ino) else { return };
        if *point != at || !name(&node.name) {
            return;
        }
        if *skip > 0 {
            *skip -= 1;
            return;
        }
        self.armed = None;
        self.crash();
    }

    pub fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.live.node(ino)
    }

    /// Hard links of a directory: its own `.`, its name in the parent, each subdirectory's `..`.
    pub fn nlink(&self, ino: u64) -> Result<u32, Errno> {
        let n = self.live.node(ino)?;
        match &n.body {
            Body::Dir(entries) => {
                let subdirs =
                    entries.values().filter(|c| self.live.nodes.get(c).is_some_and(|c| c.kind() == Kind::Dir)).count();
                Ok(2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2))
            }
            _ => Ok(n.nlink),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.live.node(parent)?.entries()?.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// The entries of a directory, sorted by name.
    pub fn entries(&self, dir: u64) -> Result<Vec<(OsString, u64, Kind)>, Errno> {
        let entries = self.live.node(dir)?.entries()?;
        Ok(entries
            .iter()
            .filter_map(|(name, ino)| Some((name.clone(), *ino, self.live.nodes.get(ino)?.kind())))
            .collect())
    }

    /// Bytes held by live files (for `statfs`).
    pub fn used_bytes(&self) -> u64 {
        self.live.nodes.values().map(|n| if let Body::File(d) = &n.body { d.size() } else { 0 }).sum()
    }

    pub fn inode_count(&self) -> u64 {
        self.live.nodes.len() as u64
    }

    /// Creates `name` in `parent`. Only the live image changes: the entry is durable after the
    /// parent's fsync.
    pub fn create(&mut self, parent: u64, name: &OsStr, body: Body, meta: Meta) -> Result<u64, Errno> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let dir = self.live.node_mut(parent)?;
        if dir.entries()?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        dir.entries_mut()?.insert(name.to_owned(), ino);
        dir.touch();
        let node = Node { meta, body, nlink: 1, opens: 0, name: name.to_owned(), meta_dirty: true };
        self.live.nodes.insert(ino, node);
        Ok(ino)
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<(), Errno> {
        if self.live.node(ino)?.kind() == Kind::Dir {
            return Err(Errno::EPERM);
        }
        let dir = self.live.node_mut(parent)?;
        if dir.entries()?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.entries_mut()?.insert(name.to_owned(), ino);
        dir.touch();
        let node = self.live.node_mut(ino)?;
        node.nlink += 1;
        node.meta.ctime = SystemTime::now();
        Ok(())
    }

    /// Removes a non-directory entry (`unlink`) or an empty directory (`rmdir`).
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir_wanted: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let node = self.live.node(ino)?;
        match (node.kind() == Kind::Dir, dir_wanted) {
            (true, false) => return Err(Errno::EISDIR),
            (false, true) => return Err(Errno::ENOTDIR),
            (true, true) if !node.entries()?.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let dir = self.live.node_mut(parent)?;
        dir.entries_mut()?.remove(name);
        dir.touch();
        self.drop_link(ino);
        Ok(())
    }

    /// One name fewer for `ino`; forgets it when nothing names it and nothing has it open.
    fn drop_link(&mut self, ino: u64) {
        if let Some(n) = self.live.nodes.get_mut(&ino) {
            n.nlink = n.nlink.saturating_sub(1);
            if n.kind() == Kind::Dir {
                n.nlink = 0;
            }
            n.meta.ctime = SystemTime::now();
            if n.nlink == 0 && n.opens == 0 {
                self.live.nodes.remove(&ino);
            }
        }
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let moving_dir = self.live.node(ino)?.kind() == Kind::Dir;
        if moving_dir && self.is_ancestor(ino, new_parent)? {
            return Err(Errno::EINVAL);
        }
        let replaced = match self.lookup(new_parent, new_name) {
            Ok(same) if same == ino => return Ok(()),
            Ok(_) if no_replace => return Err(Errno::EEXIST),
            Ok(old) => {
                let old_node = self.live.node(old)?;
                match (old_node.kind() == Kind::Dir, moving_dir) {
                    (true, false) => return Err(Errno::EISDIR),
                    (false, true) => return Err(Errno::ENOTDIR),
                    (true, true) if !old_node.entries()?.is_empty() => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
                Some(old)
            }
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        self.live.node(new_parent)?.entries()?;
        let from = self.live.node_mut(parent)?;
        from.entries_mut()?.remove(name);
        from.touch();
        let to = self.live.node_mut(new_parent)?;
        to.entries_mut()?.insert(new_name.to_owned(), ino);
        to.touch();
        let node = self.live.node_mut(ino)?;
        node.name = new_name.to_owned();
        node.meta.ctime = SystemTime::now();
        if let Some(old) = replaced {
            self.drop_link(old);
        }
        Ok(())
    }

    /// Whether `ancestor` is `ino` or contains it (a directory may not move into itself).
    fn is_ancestor(&self, ancestor: u64, ino: u64) -> Result<bool, Errno> {
        if ancestor == ino {
            return Ok(true);
        }
        for (_, child, kind) in self.entries(ancestor)? {
            if kind == Kind::Dir && self.is_ancestor(child, ino)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn open(&mut self, ino: u64) -> Result<(), Errno> {
        self.live.node_mut(ino)?.opens += 1;
        Ok(())
    }

    pub fn release(&mut self, ino: u64) {
        if let Some(n) = self.live.nodes.get_mut(&ino) {
            n.opens = n.opens.saturating_sub(1);
            if n.opens == 0 && n.nlink == 0 {
                self.live.nodes.remove(&ino);
            }
        }
    }

    pub fn read(&self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        match &self.live.node(ino)?.body {
            Body::File(d) => Ok(d.read(offset, len)),
            Body::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    pub fn readlink(&self, ino: u64) -> Result<OsString, Errno> {
        match &self.live.node(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<usize, Errno> {
        self.failure(Point::Write, ino)?;
        let node = self.live.node_mut(ino)?;
        node.data_mut()?.write(offset, bytes);
        node.touch();
        self.strike(Point::Write, ino);
        Ok(bytes.len())
    }

    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let node = self.live.node_mut(ino)?;
        node.data_mut()?.truncate(size);
        node.touch();
        Ok(())
    }

    /// `fallocate`: mode 0 may grow the file (reads as zeros); `FALLOC_FL_KEEP_SIZE` changes
    /// nothing a reader can see. Anything else (punching holes, ...) is not supported.
    pub fn fallocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let node = self.live.node_mut(ino)?;
        let data = node.data_mut()?;
        match mode {
            0 => {
                let end = offset.saturating_add(len);
                if end > data.size() {
                    data.truncate(end);
                    node.touch();
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::from_i32(libc::EOPNOTSUPP)),
        }
    }

    pub fn set_meta(&mut self, ino: u64, f: impl FnOnce(&mut Meta)) -> Result<(), Errno> {
        let node = self.live.node_mut(ino)?;
        f(&mut node.meta);
        node.meta.ctime = SystemTime::now();
        node.meta_dirty = true;
        Ok(())
    }

    /// `fsync`/`fdatasync` of `ino` (`fsyncdir` for a directory): copies its live state into
    /// the durable image. For a directory that is its entries; an entry naming an inode that
    /// was never synced itself enters the durable image as what it would be after a power cut:
    /// a file empty, a directory empty, a symlink or special node whole (they are written with
    /// their inode).
    pub fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        self.failure(Point::Sync, ino)?;
        let name = &self.live.node(ino)?.name;
        if self.lie.as_ref().is_some_and(|lie| lie(name)) {
            return Ok(());
        }
        let live = self.live.node_mut(ino)?;
        live.meta_dirty = false;
        let durable = self.durable.nodes.entry(ino).or_insert_with(|| Node {
            meta: live.meta,
            body: match &live.body {
                Body::File(_) => Body::File(Data::default()),
                Body::Dir(_) => Body::Dir(BTreeMap::new()),
                other => other.clone(),
            },
            nlink: 0,
            opens: 0,
            name: live.name.clone(),
            meta_dirty: false,
        });
        durable.meta = live.meta;
        durable.name = live.name.clone();
        let mut children = Vec::new();
        match (&mut live.body, &mut durable.body) {
            (Body::File(l), Body::File(d)) => l.sync_into(d),
            (Body::Dir(l), Body::Dir(d)) => {
                d.clone_from(l);
                children.extend(l.values().copied());
            }
            (l, d) => *d = l.clone(),
        }
        for child in children {
            if self.durable.nodes.contains_key(&child) {
                continue;
            }
            let Some(node) = self.live.nodes.get(&child) else { continue };
            let body = match &node.body {
                Body::File(_) => Body::File(Data::default()),
                Body::Dir(_) => Body::Dir(BTreeMap::new()),
                other => other.clone(),
            };
            let stub = Node { meta: node.meta, body, nlink: 0, opens: 0, name: node.name.clone(), meta_dirty: false };
            self.durable.nodes.insert(child, stub);
        }
        self.strike(Point::Sync, ino);
        Ok(())
    }

    /// The power cut: everything not in the durable image is gone. Inodes no durable directory
    /// names are collected (as `fsck` or a journal's orphan list would), link counts are
    /// recounted, nothing is open. Requests of the mount that saw the crash are refused from now
    /// on (the epoch moves).
    pub fn crash(&mut self) -> CrashReport {
        let mut report = CrashReport::default();
        for (ino, node) in &self.live.nodes {
            match &node.body {
                Body::File(d) if d.unsynced_pages() > 0 || d.shrunk_to.is_some() => {
                    report.files_with_unsynced_data += 1;
                    report.unsynced_pages += d.unsynced_pages();
                    report.unsynced_files.push(node.name.clone());
                }
                Body::Dir(l) => {
                    let same = matches!(self.durable.nodes.get(ino), Some(Node { body: Body::Dir(d), .. }) if d == l);
                    if !same {
                        report.dirs_with_unsynced_entries += 1;
                        report.unsynced_dirs.push(node.name.clone());
                    }
                }
                _ => {}
            }
        }
        report.unsynced_files.sort();
        report.unsynced_dirs.sort();
        if self.torn.is_some() {
            self.tear(&mut report);
        }
        let mut reachable = BTreeSet::from([ROOT]);
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut todo = vec![ROOT];
        while let Some(dir) = todo.pop() {
            let Some(Node { body: Body::Dir(entries), .. }) = self.durable.nodes.get(&dir) else { continue };
            for child in entries.values() {
                *links.entry(*child).or_default() += 1;
                if reachable.insert(*child) {
                    todo.push(*child);
                }
            }
        }
        let before = self.durable.nodes.len();
        self.durable.nodes.retain(|ino, _| reachable.contains(ino));
        report.orphans_collected = before - self.durable.nodes.len();
        for (ino, node) in &mut self.durable.nodes {
            node.nlink = links.get(ino).copied().unwrap_or(1);
            node.opens = 0;
        }
        // A durable directory may name an inode its own sync never copied (it was removed from
        // the durable image by nothing: cannot happen), so every reachable name resolves.
        self.live = self.durable.clone();
        self.epoch += 1;
        self.armed = None;
        self.crashes.push((std::time::Instant::now(), report.clone()));
        report
    }

    /// Torn tails ([`Self::set_torn_tails`]): for every file the durable image holds that has
    /// unsynced pages, part of them reaches the durable image. In inode order, so a seed
    /// replays the same choices for the same history.
    fn tear(&mut self, report: &mut CrashReport) {
        let mut files: Vec<u64> = self
            .live
            .nodes
            .iter()
            .filter(|(ino, n)| {
                matches!(&n.body, Body::File(d) if d.unsynced_pages() > 0) && self.durable.nodes.contains_key(ino)
            })
            .map(|(ino, _)| *ino)
            .collect();
        files.sort_unstable();
        for ino in files {
            let Some(Node { body: Body::File(live), .. }) = self.live.nodes.get(&ino) else { continue };
            let dirty = live.unsynced_pages() as u64;
            let pages = self.torn_pick(dirty + 1) as usize;
            let sectors = self.torn_pick((PAGE / SECTOR) as u64) as usize + 1;
            let Some(Node { body: Body::File(live), name, .. }) = self.live.nodes.get(&ino) else { continue };
            let Some(Node { body: Body::File(durable), .. }) = self.durable.nodes.get_mut(&ino) else { continue };
            let kept = live.tear_into(durable, pages, sectors);
            if kept > 0 {
                report.torn_files.push(name.clone());
                report.torn_bytes_kept += kept;
            }
        }
        report.torn_files.sort();
    }

    /// Whether the live image has anything a crash would lose (for tests and reports).
    pub fn has_unsynced(&self) -> bool {
        self.live.nodes.iter().any(|(ino, n)| match &n.body {
            Body::File(d) => d.unsynced_pages() > 0 || d.shrunk_to.is_some() || n.meta_dirty,
            Body::Dir(l) => !matches!(self.durable.nodes.get(ino), Some(Node { body: Body::Dir(d), .. }) if d == l),
            _ => n.meta_dirty,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(d: &mut Disk, parent: u64, name: &str) -> u64 {
        d.create(parent, OsStr::new(name), Body::File(Data::default()), Meta::new(0o644, 0, 0)).unwrap()
    }

    fn dir(d: &mut Disk, parent: u64, name: &str) -> u64 {
        d.create(parent, OsStr::new(name), Body::Dir(BTreeMap::new()), Meta::new(0o755, 0, 0)).unwrap()
    }

    fn content(d: &Disk, parent: u64, name: &str) -> Option<Vec<u8>> {
        let ino = d.lookup(parent, OsStr::new(name)).ok()?;
        Some(d.read(ino, 0, 1 << 20).unwrap())
    }

    #[test]
    fn unsynced_data_and_names_are_lost() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "a");
        d.write(f, 0, b"hello").unwrap();
        assert!(d.has_unsynced());
        let r = d.crash();
        assert_eq!(content(&d, ROOT, "a"), None, "the name was never synced");
        assert_eq!(r.files_with_unsynced_data, 1);
        assert_eq!(r.dirs_with_unsynced_entries, 1);
        assert_eq!((r.unsynced_files, r.unsynced_dirs), (vec!["a".into()], vec!["/".into()]));
        assert!(!d.has_unsynced());
    }

    #[test]
    fn a_synced_file_in_an_unsynced_directory_is_lost_with_its_name() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "a");
        d.write(f, 0, b"hello").unwrap();
        d.fsync(f).unwrap();
        let r = d.crash();
        assert_eq!(content(&d, ROOT, "a"), None);
        assert_eq!(r.orphans_collected, 1);
    }

    #[test]
    fn a_synced_name_without_synced_data_comes_back_empty() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "a");
        d.write(f, 0, b"hello").unwrap();
        d.fsync(ROOT).unwrap();
        d.crash();
        assert_eq!(content(&d, ROOT, "a"), Some(Vec::new()));
    }

    #[test]
    fn synced_data_survives_and_later_writes_do_not() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "a");
        d.write(f, 0, &vec![7u8; 10_000]).unwrap();
        d.fsync(f).unwrap();
        d.fsync(ROOT).unwrap();
        d.write(f, 5_000, b"later").unwrap();
        d.write(f, 10_000, b"appended").unwrap();
        assert_eq!(d.read(f, 4_998, 9).unwrap(), b"\x07\x07later\x07\x07");
        d.crash();
        assert_eq!(content(&d, ROOT, "a"), Some(vec![7u8; 10_000]));
    }

    #[test]
    fn a_truncate_is_undone_unless_synced_and_regrown_regions_read_zeros() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "a");
        d.write(f, 0, &vec![1u8; 3 * PAGE]).unwrap();
        d.fsync(f).unwrap();
        d.fsync(ROOT).unwrap();
        d.truncate(f, 10).unwrap();
        d.crash();
        let f = d.lookup(ROOT, OsStr::new("a")).unwrap();
        assert_eq!(d.node(f).unwrap().size(), 3 * PAGE as u64, "an unsynced truncate is lost");
        d.truncate(f, 10).unwrap();
        d.write(f, 2 * PAGE as u64, b"x").unwrap();
        d.fsync(f).unwrap();
        d.crash();
        let got = content(&d, ROOT, "a").unwrap();
        assert_eq!(got.len(), 2 * PAGE + 1);
        assert_eq!(&got[..10], &[1u8; 10]);
        assert!(got[10..2 * PAGE].iter().all(|b| *b == 0), "bytes cut by the truncate came back");
        assert_eq!(got[2 * PAGE], b'x');
    }

    #[test]
    fn a_rename_is_durable_only_with_its_directory() {
        let mut d = Disk::new();
        let old = file(&mut d, ROOT, "f");
        d.write(old, 0, b"old").unwrap();
        d.fsync(old).unwrap();
        d.fsync(ROOT).unwrap();
        let tmp = file(&mut d, ROOT, "f.tmp");
        d.write(tmp, 0, b"new").unwrap();
        d.fsync(tmp).unwrap();
        d.rename(ROOT, OsStr::new("f.tmp"), ROOT, OsStr::new("f"), false).unwrap();
        assert_eq!(content(&d, ROOT, "f"), Some(b"new".to_vec()));
        d.crash();
        assert_eq!(content(&d, ROOT, "f"), Some(b"old".to_vec()), "rename without a directory fsync");

        let tmp = file(&mut d, ROOT, "f.tmp");
        d.write(tmp, 0, b"new").unwrap();
        d.fsync(tmp).unwrap();
        d.rename(ROOT, OsStr::new("f.tmp"), ROOT, OsStr::new("f"), false).unwrap();
        d.fsync(ROOT).unwrap();
        d.crash();
        assert_eq!(content(&d, ROOT, "f"), Some(b"new".to_vec()));
        assert_eq!(content(&d, ROOT, "f.tmp"), None);
    }

    #[test]
    fn a_cross_directory_rename_needs_both_directories() {
        let mut d = Disk::new();
        let a = dir(&mut d, ROOT, "a");
        let b = dir(&mut d, ROOT, "b");
        let f = file(&mut d, a, "f");
        d.fsync(f).unwrap();
        for ino in [a, b, ROOT] {
            d.fsync(ino).unwrap();
        }
        d.rename(a, OsStr::new("f"), b, OsStr::new("g"), false).unwrap();
        d.fsync(b).unwrap();
        d.crash();
        // Only the new name's directory was synced: both names lead to the file now.
        let (a, b) = (d.lookup(ROOT, OsStr::new("a")).unwrap(), d.lookup(ROOT, OsStr::new("b")).unwrap());
        assert_eq!(d.lookup(a, OsStr::new("f")).unwrap(), d.lookup(b, OsStr::new("g")).unwrap());
        assert_eq!(d.node(d.lookup(b, OsStr::new("g")).unwrap()).unwrap().nlink, 2);
    }

    #[test]
    fn an_unlinked_open_file_lives_until_released_and_hard_links_count() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "a");
        d.link(f, ROOT, OsStr::new("b")).unwrap();
        assert_eq!(d.node(f).unwrap().nlink, 2);
        d.open(f).unwrap();
        d.remove(ROOT, OsStr::new("a"), false).unwrap();
        d.remove(ROOT, OsStr::new("b"), false).unwrap();
        d.write(f, 0, b"still here").unwrap();
        assert_eq!(d.read(f, 0, 100).unwrap(), b"still here");
        d.release(f);
        assert_eq!(d.node(f).err(), Some(Errno::ENOENT));
    }

    #[test]
    fn directories_refuse_what_posix_refuses() {
        let mut d = Disk::new();
        let a = dir(&mut d, ROOT, "a");
        file(&mut d, a, "f");
        assert_eq!(d.remove(ROOT, OsStr::new("a"), true), Err(Errno::ENOTEMPTY));
        assert_eq!(d.remove(ROOT, OsStr::new("a"), false), Err(Errno::EISDIR));
        assert_eq!(d.remove(a, OsStr::new("f"), true), Err(Errno::ENOTDIR));
        assert_eq!(d.rename(ROOT, OsStr::new("a"), a, OsStr::new("x"), false), Err(Errno::EINVAL));
        let b = file(&mut d, ROOT, "b");
        assert_eq!(d.rename(ROOT, OsStr::new("b"), ROOT, OsStr::new("a"), false), Err(Errno::EISDIR));
        assert_eq!(d.rename(a, OsStr::new("f"), ROOT, OsStr::new("b"), true), Err(Errno::EEXIST));
        assert_eq!(d.nlink(ROOT).unwrap(), 3);
        assert!(d.node(b).is_ok());
    }

    #[test]
    fn a_lying_disk_keeps_nothing_of_the_files_it_lies_about() {
        let mut d = Disk::new();
        d.set_lie(Some(Box::new(|name| name.to_string_lossy().ends_with(".log"))));
        let wal = file(&mut d, ROOT, "000001.log");
        let other = file(&mut d, ROOT, "MANIFEST");
        d.fsync(ROOT).unwrap();
        for f in [wal, other] {
            d.write(f, 0, b"data").unwrap();
            d.fsync(f).unwrap();
        }
        d.crash();
        assert_eq!(content(&d, ROOT, "000001.log"), Some(Vec::new()));
        assert_eq!(content(&d, ROOT, "MANIFEST"), Some(b"data".to_vec()));
    }

    #[test]
    fn a_failing_device_refuses_matching_writes_or_syncs_and_changes_nothing() {
        let mut d = Disk::new();
        let wal = file(&mut d, ROOT, "000001.log");
        let other = file(&mut d, ROOT, "MANIFEST");
        d.fsync(ROOT).unwrap();
        d.write(wal, 0, b"synced").unwrap();
        d.fsync(wal).unwrap();
        let is_wal: Lie = Box::new(|name| name.to_string_lossy().ends_with(".log"));
        d.set_failing(Some((Point::Write, is_wal, Errno::ENOSPC)), false);
        assert_eq!(d.write(wal, 6, b"lost").unwrap_err(), Errno::ENOSPC);
        assert_eq!(d.read(wal, 0, 64).unwrap(), b"synced", "a failed write changes nothing");
        d.write(other, 0, b"m").unwrap();
        d.fsync(wal).unwrap();

        let is_wal: Lie = Box::new(|name| name.to_string_lossy().ends_with(".log"));
        d.set_failing(Some((Point::Sync, is_wal, Errno::EIO)), false);
        d.write(wal, 6, b"+tail").unwrap();
        assert_eq!(d.fsync(wal).unwrap_err(), Errno::EIO);
        assert_eq!(d.read(wal, 0, 64).unwrap(), b"synced+tail", "the live data stays");
        d.fsync(other).unwrap();
        d.crash();
        assert_eq!(content(&d, ROOT, "000001.log"), Some(b"synced".to_vec()), "a failed fsync synced nothing");
        assert_eq!(content(&d, ROOT, "MANIFEST"), Some(b"m".to_vec()));

        // Healed: the same file syncs again.
        d.set_failing(None, false);
        let wal = d.lookup(ROOT, OsStr::new("000001.log")).unwrap();
        d.write(wal, 6, b"+more").unwrap();
        d.fsync(wal).unwrap();
        d.crash();
        assert_eq!(content(&d, ROOT, "000001.log"), Some(b"synced+more".to_vec()));
        assert_eq!(d.failed(), 2, "one write, one fsync");

        // Once: the next matching fsync fails, the one after succeeds.
        let wal = d.lookup(ROOT, OsStr::new("000001.log")).unwrap();
        let is_wal: Lie = Box::new(|name| name.to_string_lossy().ends_with(".log"));
        d.set_failing(Some((Point::Sync, is_wal, Errno::EIO)), true);
        d.write(wal, 11, b"+once").unwrap();
        d.fsync(other).unwrap();
        assert_eq!(d.fsync(wal).unwrap_err(), Errno::EIO);
        assert_eq!(d.failed(), 3);
        d.fsync(wal).unwrap();
        d.crash();
        assert_eq!(content(&d, ROOT, "000001.log"), Some(b"synced+more+once".to_vec()), "healed after one failure");
    }

    #[test]
    fn a_failed_fsync_that_drops_dirty_pages_leaves_the_old_data_in_the_live_view() {
        let mut d = Disk::new();
        let log = file(&mut d, ROOT, "audit.log");
        let other = file(&mut d, ROOT, "journal");
        d.fsync(ROOT).unwrap();
        d.write(log, 0, b"synced").unwrap();
        d.fsync(log).unwrap();
        // Unsynced: an overwrite of synced bytes, an append, and a page of its own further on.
        d.write(log, 0, b"SY").unwrap();
        d.write(log, 6, b"+tail").unwrap();
        d.write(log, PAGE as u64 + 10, b"far").unwrap();
        d.write(other, 0, b"kept").unwrap();
        let size = PAGE as u64 + 13;
        d.fail_fsync_dropping_unsynced(Box::new(|n| n == "audit.log"));
        d.fsync(other).unwrap();
        assert_eq!(d.fsync(log).unwrap_err(), Errno::EIO);
        assert_eq!((d.failed(), d.dropped_pages()), (1, 2));
        let mut old = b"synced".to_vec();
        old.resize(size as usize, 0);
        assert_eq!(d.read(log, 0, 2 * PAGE).unwrap(), old, "the old data, zeros past it, the size kept");
        assert_eq!(d.read(other, 0, 64).unwrap(), b"kept", "another file keeps its unsynced data");
        // Once: the next fsync succeeds and makes what is live durable, without the dropped data.
        d.fsync(log).unwrap();
        d.crash();
        assert_eq!(content(&d, ROOT, "audit.log"), Some(old));
        assert_eq!(content(&d, ROOT, "journal"), Some(b"kept".to_vec()));
    }

    #[test]
    fn an_armed_crash_strikes_at_its_point_and_not_before() {
        let mut d = Disk::new();
        let wal = file(&mut d, ROOT, "wal");
        let other = file(&mut d, ROOT, "other");
        d.fsync(ROOT).unwrap();
        d.arm(Point::Write, Box::new(|n| n == "wal"), 1);
        d.write(other, 0, b"x").unwrap();
        d.write(wal, 0, b"first").unwrap();
        d.fsync(wal).unwrap();
        assert_eq!(d.epoch(), 0, "the first matching write was to be let pass");
        d.write(wal, 5, b"second").unwrap();
        assert_eq!(d.epoch(), 1, "the second matching write crashes");
        assert_eq!(content(&d, ROOT, "wal"), Some(b"first".to_vec()));
        assert_eq!(d.crashes().len(), 1);

        // At a sync point: what the sync made durable stays.
        let wal = d.lookup(ROOT, OsStr::new("wal")).unwrap();
        d.arm(Point::Sync, Box::new(|n| n == "wal"), 0);
        d.write(wal, 5, b"third").unwrap();
        assert_eq!(d.epoch(), 1);
        d.fsync(wal).unwrap();
        assert_eq!(d.epoch(), 2);
        assert_eq!(content(&d, ROOT, "wal"), Some(b"firstthird".to_vec()));
    }

    /// Torn tails: over many crashes of the same history, what survives of an unsynced append
    /// is always the synced part whole plus a prefix of the append ending on a sector boundary
    /// (or the append's end) — sometimes none of it, sometimes all of it, sometimes a torn
    /// page — and a seed replays the same choices.
    #[test]
    fn torn_tails_keep_a_sector_aligned_prefix_of_the_unsynced_writes() {
        let synced: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let unsynced: Vec<u8> = (0..9000u32).map(|i| (i % 13) as u8 + 100).collect();
        let run = |seed: u64| -> Vec<u8> {
            let mut d = Disk::new();
            d.set_torn_tails(Some(seed));
            let f = file(&mut d, ROOT, "journal");
            d.fsync(ROOT).unwrap();
            d.write(f, 0, &synced).unwrap();
            d.fsync(f).unwrap();
            d.write(f, synced.len() as u64, &unsynced).unwrap();
            let r = d.crash();
            let kept = content(&d, ROOT, "journal").unwrap();
            assert_eq!(r.torn_files.len() == 1, kept.len() > synced.len(), "{r:?}");
            kept
        };
        let (mut none, mut all, mut torn) = (0, 0, 0);
        for seed in 0..200 {
            let kept = run(seed);
            assert_eq!(kept, run(seed), "seed {seed} does not replay");
            assert!(kept.len() >= synced.len(), "seed {seed}: synced data lost");
            assert_eq!(&kept[..synced.len()], &synced[..], "seed {seed}: synced data changed");
            let tail = &kept[synced.len()..];
            assert_eq!(tail, &unsynced[..tail.len()], "seed {seed}: not a prefix of the unsynced append");
            match tail.len() {
                0 => none += 1,
                n if n == unsynced.len() => all += 1,
                _ => {
                    assert_eq!(kept.len() % SECTOR, 0, "seed {seed}: torn off a sector boundary");
                    torn += 1;
                }
            }
        }
        assert!(none > 0 && all > 0 && torn > 0, "none {none}, all {all}, torn {torn}");

        // Off again: all or nothing.
        let mut d = Disk::new();
        d.set_torn_tails(Some(7));
        d.set_torn_tails(None);
        let f = file(&mut d, ROOT, "log");
        d.fsync(ROOT).unwrap();
        d.write(f, 0, &unsynced).unwrap();
        assert!(d.crash().torn_files.is_empty());
        assert_eq!(content(&d, ROOT, "log"), Some(Vec::new()));
    }

    #[test]
    fn holes_and_fallocate_read_as_zeros() {
        let mut d = Disk::new();
        let f = file(&mut d, ROOT, "a");
        d.write(f, 3 * PAGE as u64 + 1, b"z").unwrap();
        assert_eq!(d.read(f, 0, 4).unwrap(), vec![0; 4]);
        d.fallocate(f, 0, 10 * PAGE as u64, libc::FALLOC_FL_KEEP_SIZE).unwrap();
        assert_eq!(d.node(f).unwrap().size(), 3 * PAGE as u64 + 2);
        d.fallocate(f, 0, 10 * PAGE as u64, 0).unwrap();
        assert_eq!(d.node(f).unwrap().size(), 10 * PAGE as u64);
        assert_eq!(d.read(f, 3 * PAGE as u64, 3).unwrap(), b"\0z\0");
    }
}

//! [`RocksStore`]: the store on an embedded RocksDB, one column family per key space.

use std::fmt;
use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBRecoveryMode, Direction, ErrorKind, IteratorMode, Options, ReadOptions, WriteOptions, DB,
};

use crate::error::{Result, StoreError};
use crate::kv::{self, KvEngine, KvRead, Pair, Space};
use crate::types::Durability;

/// Tuning for [`RocksStore::open`]. The defaults suit one service on a small machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksOptions {
    /// Block cache shared by every key space (index and filter blocks are charged to it too, so
    /// it bounds read memory).
    pub block_cache_bytes: usize,
    /// Flush and compaction threads.
    pub max_background_jobs: i32,
    /// When the write-ahead logs exceed this, the key spaces still holding the oldest log are
    /// flushed. Without it a rarely written space (`workspaces`) would pin every old log file.
    pub max_total_wal_bytes: u64,
    /// Memtables of all key spaces together; above it the largest is flushed early. Without
    /// it each of the ~15 key spaces could hold up to two 16 MiB memtables.
    pub memtable_budget_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            max_background_jobs: 2,
            max_total_wal_bytes: 256 << 20,
            memtable_budget_bytes: 128 << 20,
        }
    }
}

/// The durable store: an embedded RocksDB.
///
/// A [`WriteBatch`] becomes one RocksDB write batch, so it is atomic across key spaces (one WAL
/// record). With [`Durability::Sync`] the WAL is fsynced before `write` returns. Call `write`
/// from as many threads as you like: RocksDB's write group commit lets concurrent synced
/// writers share one fsync, so throughput grows with concurrency instead of being one fsync
/// per batch.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
}

impl fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn engine_err(space: Space, e: rocksdb::Error) -> StoreError {
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
fn device_err(kind: ErrorKind, message: String) -> StoreError {
    match kind {
        ErrorKind::IOError if message.contains("No space left on device") => StoreError::NoSpace(message),
        ErrorKind::IOError => StoreError::Io(message),
        _ => StoreError::Engine(message),
    }
}

impl RocksStore {
    /// Opens (or creates) the store at `path`. A database holding column families this version
    /// does not know is refused by RocksDB rather than opened partially.
    pub fn open(path: &Path, opts: RocksOptions) -> Result<Self> {
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Bloom filters make point lookups that miss (receipt by id, API key by hash) one probe.
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Partitioned index and filters: a point read loads one 4 KiB index partition, not the
        // whole index block of a large file. With one index block per file, a read that missed
        // the block cache read and LZ4-decompressed an index of up to megabytes: 34% of the
        // server's CPU (index) + 6% (filter) in the 10,000-workspace profile, ~1.5 ms per
        // authorization cache miss. Only the small top-level index stays pinned.
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);

        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        // The one compression built in (see Cargo.toml): cheap, and ids/JSON compress well. Not
        // on L0 and the level L0 is merged into: those files are rewritten again soon, and
        // compressing them was ~3% of a check's CPU in the profile (flushes and the first
        // compactions). The bottom level, which holds nearly all the data, is compressed.
        cf_opts.set_level_compaction_dynamic_level_bytes(true);
        let mut per_level = [DBCompressionType::Lz4; 7];
        per_level[..2].fill(DBCompressionType::None);
        cf_opts.set_compression_per_level(&per_level);
        cf_opts.set_bottommost_compression_type(DBCompressionType::Lz4);
        // Memtables of 16 MiB instead of 64: most key spaces hold small entries (index entries
        // of ~100 bytes), and a skip list of a million of them costs a cache miss per level on
        // every insert — the largest single cost of a check in the profile. Smaller memtables
        // are shallower and warmer; flushes are more frequent but cheap.
        cf_opts.set_write_buffer_size(16 << 20);

        let mut db_opts = cf_opts.clone();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Point-in-time recovery, set explicitly because it is what makes "acknowledged ⇒
        // durable" and "a batch is all or nothing" hold together after a crash: replay stops at
        // the first torn or corrupt WAL record, so the recovered state is exactly a prefix of
        // the batches written. A torn tail can only be a batch whose synced write never
        // returned (never acknowledged). `AbsoluteConsistency` would refuse to open after an
        // ordinary crash mid-write; `SkipAnyCorruptedRecords` would replay batches *after* a
        // hole, i.e. a state that never existed.
        db_opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        // The WAL buffer is handed to the OS on every write (no manual FlushWAL needed), so even
        // a `Buffered` write survives a process crash; `Sync` adds the fsync.
        db_opts.set_manual_wal_flush(false);
        db_opts.set_max_background_jobs(opts.max_background_jobs);
        db_opts.set_max_total_wal_size(opts.max_total_wal_bytes);
        db_opts.set_db_write_buffer_size(opts.memtable_budget_bytes);
        db_opts.set_keep_log_file_num(4);

        let cfs = Space::ALL.iter().map(|&s| ColumnFamilyDescriptor::new(s.name(), space_options(s, &cf_opts)));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| engine_err(Space::Workspaces, e))?;
        let store = Self { db, path: path.to_path_buf() };
        for space in Space::ALL {
            store.cf(space)?;
        }
        Ok(store)
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, space: Space) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StoreError::Engine(format!("column family {} is not open", space.name())))
    }
}

/// The options of one key space: `base`, plus key-value separation for receipts.
///
/// Receipts are most of the bytes written (a ~0.5 KiB body per check, never rewritten or
/// deleted) under random ids, so in an LSM tree each one was rewritten by every compaction
/// level it passed through: ~12% of a check's CPU went to flushes and compactions. Stored as
/// blobs (RocksDB's integrated BlobDB), a receipt is written once into a blob file at flush and
/// compactions move only its key and a small reference. Blobs are never garbage collected:
/// nothing is ever deleted from `receipts`. They are not compressed one by one (a single
/// receipt compresses poorly, and the flush would pay for it on every check).
fn space_options(space: Space, base: &Options) -> Options {
    let mut o = base.clone();
    if space == Space::Receipts {
        o.set_enable_blob_files(true);
        o.set_min_blob_size(256);
        o.set_blob_file_size(64 << 20);
        o.set_blob_compression_type(DBCompressionType::None);
    }
    o
}

/// Reads of a [`RocksStore`], at a snapshot or at the latest state.
struct View<'a> {
    store: &'a RocksStore,
    snapshot: Option<rocksdb::Snapshot<'a>>,
}

impl View<'_> {
    fn read_opts(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            ro.set_snapshot(s);
        }
        ro
    }
}

impl KvRead for View<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let v = self.store.db.get_pinned_cf_opt(self.store.cf(space)?, key, &self.read_opts());
        Ok(v.map_err(|e| engine_err(space, e))?.map(|v| v.to_vec()))
    }

    fn scan(&self, space: Space, lower: &[u8], upper: Option<&[u8]>, limit: usize, reverse: bool) -> Result<Vec<Pair>> {
        if limit == 0 || upper.is_some_and(|u| u <= lower) {
            return Ok(Vec::new());
        }
        let mut ro = self.read_opts();
        ro.set_iterate_lower_bound(lower);
        if let Some(upper) = upper {
            ro.set_iterate_upper_bound(upper);
        }
        // With both bounds set, Start/End position at the first/last key inside them.
        let mode = if reverse { IteratorMode::End } else { IteratorMode::From(lower, Direction::Forward) };
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf_opt(self.store.cf(space)?, ro, mode).take(limit) {
            let (k, v) = item.map_err(|e| engine_err(space, e))?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }
}

impl KvRead for RocksStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        View { store: self, snapshot: None }.get(space, key)
    }

    fn scan(&self, space: Space, lower: &[u8], upper: Option<&[u8]>, limit: usize, reverse: bool) -> Result<Vec<Pair>> {
        View { store: self, snapshot: None }.scan(space, lower, upper, limit, reverse)
    }
}

impl KvEngine for RocksStore {
    fn read<T>(&self, f: impl FnOnce(&dyn KvRead) -> Result<T>) -> Result<T> {
        f(&View { store: self, snapshot: Some(self.db.snapshot()) })
    }

    fn apply(&self, muts: kv::Mutations, durability: Durability) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for (space, key, value) in muts.iter() {
            let cf = self.cf(space)?;
            match value {
                Some(v) => wb.put_cf(cf, key, v),
                None => wb.delete_cf(cf, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durability == Durability::Sync);
        self.db.write_opt(wb, &wo).map_err(|e| device_err(e.kind(), e.into_string()))
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

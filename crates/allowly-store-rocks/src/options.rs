//! [`RocksOptions`] and every RocksDB tuning decision, with the measurement behind it.

use allowly_store::kv::Space;
use allowly_store::StoreError;
use rocksdb::{BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, DBRecoveryMode, Options};

/// Tuning for [`RocksStore::open`](crate::RocksStore::open). The defaults suit one service on a
/// small machine.
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
    /// The append-only key spaces (`receipts`, `trail`, `nodes`, `checkpoints`) cut their
    /// files between streams once a file holds this much (see `partitioner.rs`). Fixed per
    /// process: the first store opened sets it.
    pub stream_min_file_bytes: u64,
    /// `max_bytes_for_level_base` of the append-only key spaces: the most that every memtable
    /// flush merged into the first level below L0 rewrites (those files span every stream, so
    /// that merge is the one rewrite the partitioner cannot avoid).
    pub stream_level_base_bytes: u64,
    /// SST and blob files kept open (RocksDB's table cache); more are reopened on demand. Must
    /// stay well under the process's open-file limit: RocksDB's default (-1, all of them) turns
    /// a large database into EMFILE on a WAL write, which fails every check closed. The server
    /// derives it from its limit (`serve.rs`).
    pub max_open_files: i32,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            max_background_jobs: 2,
            max_total_wal_bytes: 256 << 20,
            memtable_budget_bytes: 128 << 20,
            stream_min_file_bytes: 1 << 20,
            stream_level_base_bytes: 16 << 20,
            max_open_files: 512,
        }
    }
}

impl RocksOptions {
    /// The database's options and the options every key space starts from (see
    /// [`space_options`]).
    pub(crate) fn db_and_cf_options(&self) -> (Options, Options) {
        let cache = Cache::new_lru_cache(self.block_cache_bytes);
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
        db_opts.set_max_background_jobs(self.max_background_jobs);
        db_opts.set_max_total_wal_size(self.max_total_wal_bytes);
        db_opts.set_db_write_buffer_size(self.memtable_budget_bytes);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_open_files(self.max_open_files);
        (db_opts, cf_opts)
    }
}

/// The key spaces whose keys are `prefix ‖ u64 BE`, each prefix appending at its own end: a
/// workspace's receipts, an authorization's trail, one level of a workspace's tree, a
/// workspace's checkpoints.
pub(crate) const STREAM_SPACES: [Space; 4] = [Space::Receipts, Space::Trail, Space::Nodes, Space::Checkpoints];

/// The options of one key space: `base`, plus key-value separation for receipts and the stream
/// partitioner for [`STREAM_SPACES`].
///
/// Receipts are most of the bytes written (a ~0.5 KiB body per check, never rewritten or
/// deleted) under random ids, so in an LSM tree each one was rewritten by every compaction
/// level it passed through: ~12% of a check's CPU went to flushes and compactions. Stored as
/// blobs (RocksDB's integrated BlobDB), a receipt is written once into a blob file at flush and
/// compactions move only its key and a small reference. Blobs are never garbage collected:
/// nothing is ever deleted from `receipts`. They are not compressed one by one (a single
/// receipt compresses poorly, and the flush would pay for it on every check).
pub(crate) fn space_options(space: Space, base: &Options, tuning: &RocksOptions) -> Result<Options, StoreError> {
    let mut o = base.clone();
    if space == Space::Receipts {
        o.set_enable_blob_files(true);
        o.set_min_blob_size(256);
        o.set_blob_file_size(64 << 20);
        o.set_blob_compression_type(DBCompressionType::None);
    }
    if STREAM_SPACES.contains(&space) {
        o.set_max_bytes_for_level_base(tuning.stream_level_base_bytes);
        // A stream's files sit alone at the bottom of its key range, so RocksDB takes each for
        // a "bottommost file" and soon rewrites it in place only to zero its sequence numbers
        // (nothing is ever deleted here, so there is nothing else to gain): ~10 % of these
        // spaces' compaction CPU in a sustained run. Not within a day of the file's creation.
        let extra = format!(
            "{};bottommost_file_compaction_delay=86400",
            crate::partitioner::options_string(tuning.stream_min_file_bytes)?
        );
        o = o.get_options_from_string(extra).map_err(|e| StoreError::Engine(e.into_string()))?;
    }
    Ok(o)
}

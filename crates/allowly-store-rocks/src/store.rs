//! [`RocksStore`]: the store on an embedded RocksDB, one column family per key space.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use allowly_store::kv::{Checked, KvEngine, KvRead, Mutation, Mutations, Outcome, Pair, Space};
use allowly_store::{Durability, EngineStats, Result, StoreError};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, ReadOptions, WriteOptions, DB};

use crate::error::{device_err, engine_err};
use crate::options::{space_options, RocksOptions};

/// The durable store: an embedded RocksDB. It is an [`allowly_store::Store`] through
/// [`KvEngine`].
///
/// A [`WriteBatch`](allowly_store::WriteBatch) becomes one RocksDB write batch, so it is atomic
/// across key spaces (one WAL record). With [`Durability::Sync`] the WAL is fsynced before
/// `write` returns. Call `write` from as many threads as you like: RocksDB's write group
/// commit lets concurrent synced writers share one fsync, so throughput grows with concurrency
/// instead of being one fsync per batch.
pub struct RocksStore {
    pub(crate) db: DB,
    path: PathBuf,
    /// Held by [`KvEngine::apply_checked`] from its read to its write: RocksDB has no
    /// compare-and-set, and only those calls write the keys they read (see `allowly_store::kv`),
    /// so plain writes never wait for it.
    checked: Mutex<()>,
}

impl fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RocksStore {
    /// Opens (or creates) the store at `path`. A database holding column families this version
    /// does not know is refused by RocksDB rather than opened partially.
    pub fn open(path: &Path, opts: RocksOptions) -> Result<Self> {
        let (mut db_opts, cf_opts) = opts.db_and_cf_options();
        // On the file system that lets a failed write be recovered from in-process
        // (`recovery.rs`).
        let db_opts = db_opts
            .get_options_from_string(crate::recovery::options_string()?)
            .map_err(|e| StoreError::Engine(e.into_string()))?;
        let cfs = Space::ALL
            .iter()
            .map(|&s| Ok(ColumnFamilyDescriptor::new(s.name(), space_options(s, &cf_opts, &opts)?)))
            .collect::<Result<Vec<_>>>()?;
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| engine_err(Space::Workspaces, e))?;
        let store = Self { db, path: path.to_path_buf(), checked: Mutex::new(()) };
        for space in Space::ALL {
            store.cf(space)?;
        }
        Ok(store)
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a consistent, openable copy of the whole database into `dest` (which must not
    /// exist; its parent must), while writes go on: RocksDB's checkpoint (memtables flushed,
    /// then the files hard-linked when `dest` is on the same file system, copied otherwise, with
    /// the WAL's synced part). It holds every write acknowledged before the call; open it with
    /// [`RocksStore::open`]. For `allowly backup`.
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        let err = |e: rocksdb::Error| engine_err(Space::Workspaces, e);
        rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(err)?.create_checkpoint(dest).map_err(err)
    }

    pub(crate) fn cf(&self, space: Space) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StoreError::Engine(format!("column family {} is not open", space.name())))
    }
}

impl RocksStore {
    /// One RocksDB write batch of `muts`: atomic, one WAL record, fsynced with [`Durability::Sync`].
    fn write_all<'a>(&self, muts: impl IntoIterator<Item = Mutation<'a>>, durability: Durability) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for (space, key, value) in muts {
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

    fn apply(&self, muts: Mutations, durability: Durability) -> Result<()> {
        self.write_all(muts.iter(), durability)
    }

    fn apply_checked(&self, write: Checked, durability: Durability) -> Result<Outcome> {
        // Nothing is left half-done under the lock, so a poisoned one still guards consistent data.
        let _only_one = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        let plan = write.plan(|space, key| self.get(space, key))?;
        self.write_all(plan.mutations(), durability)?;
        Ok(plan.into_outcome())
    }

    /// RocksDB's properties worth an alert, read from the counters it keeps in memory (each
    /// read takes the DB mutex for a moment; no file is touched): a few dozen microseconds per
    /// scrape. A property RocksDB cannot answer is `None`.
    /// `DB::Resume()` (see `recovery.rs`): flushes the memtables, switches to a new log, and
    /// takes writes again — or answers why not yet.
    fn recover(&self) -> Result<()> {
        crate::recovery::resume(&self.db)
    }

    fn stats(&self) -> EngineStats {
        let db_wide = |name: &str| self.db.property_int_value(name).ok().flatten();
        // Per-column-family figures, summed over every key space.
        let summed = |name: &str| {
            Space::ALL.iter().try_fold(0u64, |sum, &space| {
                let cf = self.cf(space).ok()?;
                Some(sum.saturating_add(self.db.property_int_value_cf(cf, name).ok().flatten()?))
            })
        };
        let mut stats = EngineStats::default();
        stats.write_stopped = db_wide("rocksdb.is-write-stopped").map(|v| v != 0);
        stats.delayed_write_rate = db_wide("rocksdb.actual-delayed-write-rate");
        stats.running_compactions = db_wide("rocksdb.num-running-compactions");
        stats.pending_compaction_bytes = summed("rocksdb.estimate-pending-compaction-bytes");
        stats.live_data_bytes = summed("rocksdb.live-sst-files-size");
        stats.live_blob_bytes = summed("rocksdb.live-blob-file-size");
        stats.memtable_bytes = summed("rocksdb.cur-size-all-mem-tables");
        stats
    }
}

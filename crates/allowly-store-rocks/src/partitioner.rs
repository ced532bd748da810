//! The SST partitioner of the append-only key spaces (`cpp/stream_partitioner.cc`), and why.
//!
//! `receipts`, `trail`, `nodes` and `checkpoints` are made of streams: every key is
//! `prefix ‖ u64 BE` and each prefix (a workspace's log, an authorization's trail, a level of a
//! workspace's tree) only ever appends at its own end. With RocksDB's default cuts, every file a
//! flush or compaction wrote held the newest keys of *every* active stream, so its key range
//! spanned every older key of the streams between its first and last one, and each compaction
//! into the next level rewrote nearly all of that level: a sustained run's compaction CPU grew
//! with the database (3.0 → 8.8 → 14.2 s per minute over three minutes at 14,000 checks/s,
//! `docs/performance.md`). Cutting output files between streams makes a file hold one stream's
//! newest keys, which lie above everything stored for that stream, so RocksDB moves it down a
//! level without rewriting anything.
//!
//! Cuts are made only once a file holds `min_file_bytes`: with thousands of streams (10,000
//! workspaces), one file per stream per compaction would be millions of tiny files; there files
//! hold runs of neighbouring streams and compaction is RocksDB's ordinary leveled kind, whose
//! cost is bounded (the pathology above needs fewer streams than files in a level).
//!
//! The partitioner is C++ (RocksDB calls it for every key a compaction writes) registered in
//! RocksDB's object library and named in an options string, because the `rocksdb` crate has no
//! setter for `sst_partitioner_factory`.

#![allow(unsafe_code)] // the one foreign call into the C++ partitioner; justified at its use.

use allowly_store::StoreError;

unsafe extern "C" {
    fn allowly_register_stream_partitioner(min_file_bytes: u64, in_force: *mut u64) -> i32;
}

/// The RocksDB options string that installs the stream partitioner, registering it first.
/// The minimum is fixed by the first call in a process; a later call asking for another one is
/// an error rather than a silently different layout.
pub(crate) fn options_string(min_file_bytes: u64) -> Result<String, StoreError> {
    let mut in_force = 0u64;
    // SAFETY: the function only reads its first argument and writes one u64 through a pointer
    // to a live local; it catches every C++ exception (noexcept) and is safe to call from any
    // thread (std::call_once).
    let rc = unsafe { allowly_register_stream_partitioner(min_file_bytes, &mut in_force) };
    if rc != 0 {
        return Err(StoreError::Engine("registering the SST stream partitioner failed".into()));
    }
    if in_force != min_file_bytes {
        return Err(StoreError::Engine(format!(
            "the SST stream partitioner is registered with a minimum of {in_force} bytes in this process, not {min_file_bytes}"
        )));
    }
    Ok("sst_partitioner_factory={id=AllowlyStreamPartitioner}".to_owned())
}

#[cfg(test)]
mod tests {
    use allowly_store::kv::Space;
    use rocksdb::{CompactOptions, WriteOptions};

    use crate::options::STREAM_SPACES;
    use crate::{RocksOptions, RocksStore};

    /// `prefix ‖ u64 BE`, the shape of every key in the stream spaces.
    fn key(stream: &[u8], n: u64) -> Vec<u8> {
        let mut k = stream.to_vec();
        k.extend_from_slice(&n.to_be_bytes());
        k
    }

    /// The streams of every SST file of `space`: one entry per file, the set of prefixes its
    /// first and last key belong to.
    fn files(store: &RocksStore, space: Space) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        let live = store.db.live_files().expect("live files");
        live.into_iter()
            .filter(|f| f.column_family_name == space.name())
            .map(|f| {
                let (s, e) = (f.start_key.expect("start"), f.end_key.expect("end"));
                (f.level, s[..s.len() - 8].to_vec(), e[..e.len() - 8].to_vec())
            })
            .collect()
    }

    /// Value size: below `receipts`' blob threshold, so the bytes stay in the SST files.
    const VALUE: u64 = 200;

    /// Appends `per_stream` keys to each stream of `space`, interleaved as the engine writes
    /// them (every batch touches every stream), then flushes.
    fn append(store: &RocksStore, space: Space, streams: &[&[u8]], per_stream: u64) {
        let cf = store.cf(space).expect("cf");
        // Incompressible values (a xorshift sequence): file sizes are counted after LZ4.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut value = vec![0u8; VALUE as usize];
        let mut wb = rocksdb::WriteBatch::default();
        for n in 0..per_stream {
            for s in streams {
                for b in value.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                wb.put_cf(cf, key(s, n), &value);
            }
            if wb.len() >= 4096 {
                store.db.write_opt(std::mem::take(&mut wb), &WriteOptions::default()).expect("write");
            }
        }
        store.db.write_opt(wb, &WriteOptions::default()).expect("write");
        store.db.flush_cf(cf).expect("flush");
    }

    #[test]
    fn compacted_files_of_the_stream_spaces_hold_one_stream_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RocksOptions::default();
        let min = opts.stream_min_file_bytes;
        let store = RocksStore::open(dir.path(), opts).expect("open");
        // Four streams (workspaces' logs, say), each with well over the minimum file size.
        let streams: [&[u8]; 4] = [b"ws_a\0", b"ws_b\0", b"ws_c\0", b"ws_d\0"];
        let per_stream = 3 * min / VALUE;
        for space in STREAM_SPACES {
            append(&store, space, &streams, per_stream);
            let cf = store.cf(space).expect("cf");
            let mut co = CompactOptions::default();
            co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            store.db.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &co);
            let after = files(&store, space);
            assert!(after.len() >= streams.len(), "{}: {after:?}", space.name());
            for (level, first, last) in &after {
                assert_eq!(first, last, "{}: a file at level {level} spans two streams: {after:?}", space.name());
            }
        }
        // A key space outside the list is cut by size only: one file for all four streams.
        append(&store, Space::Authorizations, &streams, per_stream);
        let cf = store.cf(Space::Authorizations).expect("cf");
        store.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        let other = files(&store, Space::Authorizations);
        assert!(other.iter().any(|(_, first, last)| first != last), "{other:?}");
    }

    #[test]
    fn a_second_minimum_in_the_same_process_is_refused() {
        let first = RocksOptions::default().stream_min_file_bytes;
        assert!(super::options_string(first).is_ok());
        let err = super::options_string(first + 1).expect_err("another minimum");
        assert!(err.to_string().contains("registered with a minimum"), "{err}");
    }
}

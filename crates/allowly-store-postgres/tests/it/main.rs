//! The PostgreSQL store's integration tests, against a real PostgreSQL: a private cluster this
//! process starts (`allowly_store_postgres::test_cluster`), one fresh schema per store. Without
//! PostgreSQL's binaries they fail, naming `scripts/setup.sh`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod faults;
mod nodes;
mod tls;

use allowly_store::conformance::leases::granted;
use allowly_store::conformance::{records, Fixture};
use allowly_store::kv::{KvEngine, KvRead, Space};
use allowly_store::{Durability, MemStore, Op, Store, StoreError, WriteBatch};
use allowly_store_postgres::{test_cluster, PgOptions, PgStore};

/// An empty store in a schema of its own. These cases test behaviour, not deadlines (`faults`
/// does, with its own): a call may take up to 30 s, so that a machine loaded by other builds
/// slows them down without failing them; a hang still fails.
fn fresh() -> Fixture<PgStore> {
    let (_, conninfo) = test_cluster::shared().fresh_schema();
    let mut opts = PgOptions::default();
    opts.timeout = std::time::Duration::from_secs(30);
    Fixture { store: PgStore::open(&conninfo, opts).unwrap(), keep: () }
}

/// The suite every store passes (`allowly-store` runs it on `MemStore`, `allowly-store-rocks` on
/// `RocksStore`), with the cases that corrupt stored bytes: `PgStore` is a `KvEngine`.
mod conformance {
    allowly_store::conformance_tests!(kv_engine: crate::fresh);
}

/// Random op sequences applied to `MemStore` and `PgStore` give the same results.
#[test]
fn mem_and_postgres_agree() {
    allowly_store::conformance::agrees_with_mem_store(fresh);
}

/// Keys compare as bytes: 0x00 first, 0xff last, 0x80 after 0x7f (no signed bytes, no
/// collation), a prefix before its extensions; forward and reverse, bounded and not, exactly
/// as `MemStore` (a `BTreeMap<Vec<u8>, _>`) orders them.
#[test]
fn keys_scan_in_byte_order() {
    let f = fresh();
    let mem = MemStore::new();
    let mut hashes = vec![[0u8; 32], [0xff; 32], [0x7f; 32], [0x80; 32], [1; 32]];
    let mut low_high = [0u8; 32];
    low_high[31] = 0xff;
    let mut high_low = [0xffu8; 32];
    high_low[31] = 0;
    hashes.extend([low_high, high_low]);
    let mut ops: Vec<Op> =
        hashes.iter().enumerate().map(|(i, h)| Op::PutApiKey(records::api_key(&format!("k{i}"), None, *h))).collect();
    // Receipt keys `w ‖ 0x00 ‖ u64` whose index bytes hold 0x00, 0x7f, 0x80 and 0xff.
    for index in [0, 0x7f, 0x80, 0xff, 0x100, 0xff00, (1 << 63) - 1, 1 << 63, u64::MAX] {
        ops.push(Op::PutReceipt(records::receipt("w", &format!("r{index}"), index, None)));
    }
    for s in [&f.store as &dyn Store, &mem] {
        s.write(WriteBatch::from(ops.clone()), Durability::Sync).unwrap();
    }

    let keys = |pairs: Vec<(Vec<u8>, Vec<u8>)>| pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let mut sorted: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
    sorted.sort();
    assert_eq!(keys(f.store.scan(Space::ApiKeys, &[], None, 100, false).unwrap()), sorted);
    sorted.reverse();
    assert_eq!(keys(f.store.scan(Space::ApiKeys, &[], None, 100, true).unwrap()), sorted);

    type Range<'a> = (Space, &'a [u8], Option<&'a [u8]>);
    let ranges: [Range<'_>; 6] = [
        (Space::ApiKeys, &[0x7f; 32], Some(&[0xff; 32])),
        (Space::ApiKeys, &[0], Some(&[0x80])),
        (Space::ApiKeys, &[0x80], None),
        (Space::Receipts, b"w\0", Some(b"w\x01")),
        (Space::Receipts, b"w\0\x00\x00\x00\x00\x00\x00\x00\x80", Some(b"w\0\x80")),
        (Space::Receipts, b"w\0\x80", None),
    ];
    for (space, lower, upper) in ranges {
        for (limit, reverse) in [(100, false), (100, true), (2, false), (2, true)] {
            let pg = f.store.scan(space, lower, upper, limit, reverse).unwrap();
            let expected = mem.scan(space, lower, upper, limit, reverse).unwrap();
            assert!(!expected.is_empty(), "{space:?} {lower:?}..{upper:?}: the case reads nothing");
            assert_eq!(pg, expected, "{space:?} {lower:?}..{upper:?} limit {limit} reverse {reverse}");
        }
    }
}

/// Every read inside one `read` sees one snapshot: a write committed between two of them is
/// seen by neither (here by a read after it), and is there for the next `read`.
#[test]
fn read_is_one_snapshot() {
    let f = fresh();
    let s = &f.store;
    let mut renamed = records::workspace("a");
    renamed.name = "renamed".into();
    s.write(WriteBatch::from(vec![Op::PutWorkspace(records::workspace("a"))]), Durability::Sync).unwrap();
    let (before, during, b) = s
        .read(|view| {
            let before = view.get(Space::Workspaces, b"a")?;
            // Committed on another connection while this transaction is open.
            let ops = vec![Op::PutWorkspace(renamed.clone()), Op::PutWorkspace(records::workspace("b"))];
            s.write(WriteBatch::from(ops), Durability::Sync)?;
            Ok((before, view.get(Space::Workspaces, b"a")?, view.scan(Space::Workspaces, b"b", None, 10, false)?))
        })
        .unwrap();
    assert!(before.is_some());
    assert_eq!(during, before, "a write committed during the read was seen by it");
    assert_eq!(b, vec![], "a write committed during the read was seen by it");
    assert_eq!(s.workspace("a").unwrap().unwrap().name, "renamed");
    assert!(s.workspace("b").unwrap().is_some());
}

/// The schema is created on open and carries its version; a version-1 database (before leases)
/// and a version-2 one (every Merkle node level stored) are migrated on open, their data kept;
/// a database at a newer version is refused (nothing written), and one whose version is not a
/// number is reported corrupt.
#[test]
fn schema_version_is_checked() {
    let cluster = test_cluster::shared();
    let (schema, conninfo) = cluster.fresh_schema();
    let s = PgStore::open(&conninfo, PgOptions::default()).unwrap();
    s.write(WriteBatch::from(vec![Op::PutWorkspace(records::workspace("a"))]), Durability::Sync).unwrap();
    drop(s);
    let sql = |sql: &str| cluster.psql("postgres", &format!("SET search_path TO {schema}; {sql}"));
    let version = || sql("SELECT value FROM allowly_meta WHERE name = 'schema_version'").trim().to_owned();
    assert_eq!(version(), "3");
    // Reopening is idempotent and keeps the data.
    let s = PgStore::open(&conninfo, PgOptions::default()).unwrap();
    assert!(s.workspace("a").unwrap().is_some());
    drop(s);

    // Versions 1 and 2 had the same tables: what an older build left is migrated, data kept.
    for old in ["1", "2"] {
        sql(&format!("UPDATE allowly_meta SET value = '{old}'"));
        let s = PgStore::open(&conninfo, PgOptions::default()).unwrap();
        assert_eq!(version(), "3", "from {old}");
        assert!(s.workspace("a").unwrap().is_some());
        granted(s.acquire_lease("a", "n", "http://n:1", std::time::Duration::from_secs(60)));
        drop(s);
    }

    sql("UPDATE allowly_meta SET value = '4'");
    match PgStore::open(&conninfo, PgOptions::default()) {
        Err(StoreError::Engine(msg)) => assert!(msg.contains("newer than this build's 3"), "{msg}"),
        other => panic!("a newer schema was not refused: {other:?}"),
    }
    assert_eq!(version(), "4", "a newer version is never lowered");
    sql("UPDATE allowly_meta SET value = 'x'");
    assert!(matches!(PgStore::open(&conninfo, PgOptions::default()), Err(StoreError::Corrupt { .. })));
    sql("UPDATE allowly_meta SET value = '3'");
    assert!(PgStore::open(&conninfo, PgOptions::default()).unwrap().workspace("a").unwrap().is_some());
}

/// Stores opening the same empty schema at once all succeed (the creation races are retried).
#[test]
fn concurrent_opens_create_the_schema_once() {
    let (_, conninfo) = test_cluster::shared().fresh_schema();
    std::thread::scope(|scope| {
        let opens: Vec<_> =
            (0..4).map(|_| scope.spawn(|| PgStore::open(&conninfo, PgOptions::default()).map(drop))).collect();
        for open in opens {
            open.join().unwrap().unwrap();
        }
    });
}

/// The store is usable from inside a tokio runtime's async worker (where a client that blocks
/// on a runtime of its own would panic): the engine's actors read on a cache miss there.
#[test]
fn usable_from_an_async_context() {
    let store = std::sync::Arc::new(fresh().store);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let on_worker = rt.spawn(async move {
        store.write(WriteBatch::from(vec![Op::PutWorkspace(records::workspace("a"))]), Durability::Sync).unwrap();
        assert!(store.workspace("a").unwrap().is_some());
        assert_eq!(store.authorizations("a", None, 10).unwrap(), vec![]);
    });
    rt.block_on(on_worker).unwrap();
}

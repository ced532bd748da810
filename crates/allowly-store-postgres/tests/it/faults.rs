//! A database that hangs or drops its connections: the store answers with errors within its
//! timeout (never hangs), and works again once the database does, on new connections.
//!
//! The faults come from a proxy in this process between the store and the cluster's socket
//! (`allowly_store_postgres::test_proxy`): it can stop forwarding (a hung server or network:
//! bytes go nowhere, nothing is refused) and cut every connection (a restarted server, a
//! dropped link).

use std::time::{Duration, Instant};

use allowly_store::conformance::records;
use allowly_store::{Durability, Op, Store, StoreError, WriteBatch};
use allowly_store_postgres::test_proxy::Proxy;
use allowly_store_postgres::{test_cluster, PgOptions, PgStore};

fn workspace(id: &str) -> WriteBatch {
    WriteBatch::from(vec![Op::PutWorkspace(records::workspace(id))])
}

/// A database out of reach is `Unavailable` (the engine fails closed with
/// `503 storage_unavailable` and probes until it answers), not the generic `Engine` kind.
#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(r: Result<T, StoreError>, started: Instant, timeout: Duration) {
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "expected an unavailable store, got {r:?}");
    // The call's deadline, the hand-over grace, and slack for a loaded machine.
    assert!(started.elapsed() < timeout * 5, "the error took {:?}", started.elapsed());
}

#[test]
fn a_hung_database_gives_errors_and_a_dropped_connection_is_replaced() {
    let cluster = test_cluster::shared();
    let (schema, _) = cluster.fresh_schema();
    let proxy = Proxy::start(cluster);
    let timeout = Duration::from_secs(1);
    let mut opts = PgOptions::default();
    opts.connections = 2;
    opts.timeout = timeout;
    let conninfo = format!("{} options='-c search_path={schema}'", proxy.conninfo("postgres"));
    let s = PgStore::open(&conninfo, opts).unwrap();
    s.write(workspace("a"), Durability::Sync).unwrap();

    // Hung: reads, writes and read transactions all end in errors within the timeout.
    proxy.set_hung(true);
    let t = Instant::now();
    assert_unavailable(s.workspace("a"), t, timeout);
    let t = Instant::now();
    assert_unavailable(s.write(workspace("b"), Durability::Sync), t, timeout);
    let t = Instant::now();
    assert_unavailable(s.authorization("a", "x"), t, timeout);

    // The connections that timed out were dropped; new ones serve.
    proxy.set_hung(false);
    assert!(s.workspace("a").unwrap().is_some());
    s.write(workspace("c"), Durability::Sync).unwrap();

    // Silently dead connections: each is given up at its deadline (an error for that call) and
    // replaced; without the connection threads' own deadline they would stay stuck for good.
    proxy.kill_silently();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        answers.push(s.workspace("c"));
        assert!(t.elapsed() < timeout * 5, "{:?}", t.elapsed());
        if matches!(answers.last(), Some(Ok(Some(_)))) {
            break;
        }
    }
    assert!(matches!(answers.last(), Some(Ok(Some(_)))), "no recovery from dead connections: {answers:?}");

    // Every connection cut: a call may fail on a connection that looked open; the store then
    // opens new ones and serves again, without a restart.
    proxy.cut();
    answers.clear();
    for _ in 0..4 {
        answers.push(s.workspace("c"));
        if matches!(answers.last(), Some(Ok(Some(_)))) {
            break;
        }
    }
    assert!(matches!(answers.last(), Some(Ok(Some(_)))), "no recovery after a cut: {answers:?}");
    assert!(answers.len() <= 3, "{answers:?}");
}

/// Nothing listening: opening fails with an error within the connect timeout.
#[test]
fn an_absent_database_is_an_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PgOptions::default();
    opts.timeout = Duration::from_secs(2);
    let t = Instant::now();
    let r = PgStore::open(&format!("host={} user=allowly dbname=postgres", dir.path().display()), opts);
    assert_unavailable(r, t, Duration::from_secs(2));
}

//! A database that hangs or drops its connections: the store answers with errors within its
//! timeout (never hangs), and works again once the database does, on new connections.
//!
//! The faults come from a proxy in this process between the store and the cluster's socket: it
//! can stop forwarding (a hung server or network: bytes go nowhere, nothing is refused) and cut
//! every connection (a restarted server, a dropped link).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use allowly_store::conformance::records;
use allowly_store::{Durability, Op, Store, StoreError, WriteBatch};
use allowly_store_postgres::{test_cluster, PgOptions, PgStore};
use tempfile::TempDir;

#[derive(Default)]
struct State {
    hung: bool,
    /// Connections numbered below this forward nothing any more, ever (a silently dead link).
    dead_below: u64,
    accepted: u64,
    streams: Vec<UnixStream>,
}

struct Proxy {
    dir: TempDir,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Proxy {
    /// Listens on a socket of its own (libpq's `.s.PGSQL.5432` in a new directory) and forwards
    /// each connection to the cluster's socket.
    fn start(target: &Path) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5432")).unwrap();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let target = target.join(".s.PGSQL.5432");
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = UnixStream::connect(&target) else { return };
                let mut st = shared.0.lock().unwrap();
                st.streams.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let number = st.accepted;
                st.accepted += 1;
                drop(st);
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let shared = shared.clone();
                    std::thread::spawn(move || forward(number, from, to, &shared));
                }
            }
        });
        Proxy { dir, state }
    }

    fn conninfo(&self, schema: &str) -> String {
        format!(
            "host={} user={} dbname=postgres options='-c search_path={schema}'",
            self.dir.path().display(),
            test_cluster::USER
        )
    }

    fn set_hung(&self, hung: bool) {
        self.state.0.lock().unwrap().hung = hung;
        self.state.1.notify_all();
    }

    /// Every connection made so far stops forwarding for good, without being closed (what a
    /// half-open TCP connection looks like: only a timeout can tell); new ones work.
    fn kill_silently(&self) {
        let mut st = self.state.0.lock().unwrap();
        st.dead_below = st.accepted;
    }

    /// Closes every connection made so far, both ways.
    fn cut(&self) {
        for s in self.state.0.lock().unwrap().streams.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` (both of connection `number`), holding whatever it read while the
/// proxy is hung or the connection silently dead.
fn forward(number: u64, mut from: UnixStream, mut to: UnixStream, state: &(Mutex<State>, Condvar)) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        drop(state.1.wait_while(state.0.lock().unwrap(), |s| s.hung || number < s.dead_below).unwrap());
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

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
    let proxy = Proxy::start(cluster.socket_dir());
    let timeout = Duration::from_secs(1);
    let mut opts = PgOptions::default();
    opts.connections = 2;
    opts.timeout = timeout;
    let s = PgStore::open(&proxy.conninfo(&schema), opts).unwrap();
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

//! Several nodes on one database: each node is a `PgStore` of its own (its own connections)
//! on one schema of the shared cluster. Leases expire on the database's clock; a takeover and
//! a fenced write of the old owner are ordered one way or the other, never both ways; racing
//! nodes get one owner per epoch. The interleavings are made with the store's test hook (a
//! transaction held at a point until the test lets it go), never with sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use allowly_store::conformance::leases::{assert_fenced, fenced_receipt, granted, one_owner_per_epoch_among};
use allowly_store::kv::KvEngine;
use allowly_store::{Durability, LeaseAnswer, Store};
use allowly_store_postgres::{test_cluster, PgOptions, PgStore, TestHook, TxPoint};

const LONG: Duration = Duration::from_secs(3600);
const ADDR_A: &str = "http://10.0.0.1:8080";
const ADDR_B: &str = "http://10.0.0.2:8080";

/// One schema and the connection string each node opens it with (named, so that the test can
/// find a node's sessions in `pg_stat_activity`).
struct Db {
    schema: String,
    conninfo: String,
}

impl Db {
    fn new() -> Db {
        let (schema, conninfo) = test_cluster::shared().fresh_schema();
        Db { schema, conninfo }
    }

    /// Node `name`'s store; `hook` holds its checked writes where the test says.
    fn node(&self, name: &str, hook: Option<&Arc<Gate>>) -> PgStore {
        self.node_idle(name, hook, LONG)
    }

    /// [`Db::node`], whose write transactions the database ends after `idle` without a
    /// statement ([`PgOptions::write_idle_limit`]; the other tests hold them as long as they
    /// like).
    fn node_idle(&self, name: &str, hook: Option<&Arc<Gate>>, idle: Duration) -> PgStore {
        let mut opts = PgOptions::default();
        opts.write_idle_limit = idle;
        opts.connections = 2;
        opts.timeout = Duration::from_secs(30);
        opts.test_hook = hook.map(|gate| {
            let gate = gate.clone();
            TestHook(Arc::new(move |point, attempt| gate.on(point, attempt)))
        });
        let conninfo = format!("{} application_name={}", self.conninfo, self.app(name));
        PgStore::open(&conninfo, opts).unwrap()
    }

    fn app(&self, name: &str) -> String {
        format!("{}_{name}", self.schema)
    }

    /// Whether a session of node `name` is waiting for a lock (another transaction's row lock).
    fn waits_for_a_lock(&self, name: &str) -> bool {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}' AND wait_event_type = 'Lock'",
            self.app(name)
        );
        test_cluster::shared().psql("postgres", &sql).trim() != "0"
    }
}

/// Holds a node's next checked write at one [`TxPoint`] of its first attempt, once armed,
/// until [`Gate::open`].
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    at: Mutex<Option<TxPoint>>,
    /// (reached, opened)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    fn arm(&self, point: TxPoint) {
        *self.at.lock().unwrap() = Some(point);
        *self.state.lock().unwrap() = (false, false);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// On the connection thread, inside the transaction.
    fn on(&self, point: TxPoint, attempt: u32) {
        if attempt != 0 || *self.at.lock().unwrap() != Some(point) || !self.armed.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut st = self.state.lock().unwrap();
        st.0 = true;
        self.changed.notify_all();
        drop(self.changed.wait_while(st, |st| !st.1).unwrap());
    }

    fn wait_reached(&self) {
        let st = self.state.lock().unwrap();
        let (st, timeout) = self.changed.wait_timeout_while(st, Duration::from_secs(30), |st| !st.0).unwrap();
        drop(st);
        assert!(!timeout.timed_out(), "the write never reached the hook");
    }

    fn open(&self) {
        // Also from a failing test's unwinding (`Opens`): never poisoned by the hook's side.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1 = true;
        self.changed.notify_all();
    }
}

/// Opens the gate when dropped: a failing assertion must not leave the held transaction (and
/// the thread scope waiting for it) hanging.
struct Opens<'a>(&'a Gate);

impl Drop for Opens<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Polls `f` every 10 ms until it holds, failing with `what` after 30 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The database's clock, read through `s`.
fn db_now(s: &PgStore) -> u64 {
    KvEngine::now_ms(s).unwrap()
}

/// Heartbeats expire on the database's clock; every node sees the same live members, and a
/// node that stops heartbeating drops out of the list.
#[test]
fn heartbeats_and_the_live_nodes() {
    let db = Db::new();
    let (a, b, c) = (db.node("a", None), db.node("b", None), db.node("c", None));
    let short = Duration::from_millis(300);
    let before = db_now(&c);
    let ma = a.heartbeat("node-a", ADDR_A, short).unwrap();
    let mb = b.heartbeat("node-b", ADDR_B, LONG).unwrap();
    let after = db_now(&c);
    // Expiries are the database's "now" plus the TTL, in milliseconds.
    assert!((before + 300..=after + 300).contains(&ma.expires_at_ms), "{before} {ma:?} {after}");
    assert!((before + 3_600_000..=after + 3_600_000).contains(&mb.expires_at_ms), "{mb:?}");
    let live = c.live_nodes().unwrap();
    if db_now(&c) < ma.expires_at_ms {
        assert_eq!(live, vec![ma.clone(), mb.clone()]);
    }
    assert_eq!(b.live_nodes().unwrap().last(), Some(&mb));
    // Node a stops heartbeating: gone once its TTL passed on the database's clock.
    eventually("node-a to drop out", || c.live_nodes().unwrap() == vec![mb.clone()]);
    assert!(db_now(&c) >= ma.expires_at_ms);
    let back = a.heartbeat("node-a", ADDR_A, LONG).unwrap();
    assert_eq!(b.live_nodes().unwrap(), vec![back, mb]);
}

/// A live lease is never taken over; once it expired (on the database's clock, not renewed),
/// another node takes the workspace over at the next epoch, and the old owner can neither
/// renew nor write with its epoch.
#[test]
fn takeover_only_after_expiry_and_with_a_higher_epoch() {
    let db = Db::new();
    let (a, b) = (db.node("a", None), db.node("b", None));
    let ttl = Duration::from_millis(1500);
    let la = granted(a.acquire_lease("w", "node-a", ADDR_A, ttl));
    assert_eq!(la.epoch, 1);
    a.write(fenced_receipt("w", 1, 1), Durability::Sync).unwrap();

    let mut held = 0;
    let lb = loop {
        let asked_at = db_now(&b);
        match b.acquire_lease("w", "node-b", ADDR_B, LONG).unwrap() {
            LeaseAnswer::Held(l) => {
                assert_eq!(l, la, "held by a, as granted");
                assert!(asked_at < la.expires_at_ms, "an expired lease was reported held");
                held += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            LeaseAnswer::Granted(l) => break l,
        }
    };
    assert!(held > 0, "b asked only after a's lease had expired: nothing tested");
    // Granted at the database's "now" = its expiry minus its TTL: after a's expiry.
    assert!(lb.expires_at_ms - 3_600_000 >= la.expires_at_ms, "{lb:?} {la:?}");
    assert_eq!((lb.node_id.as_str(), lb.epoch), ("node-b", 2));

    assert_fenced(a.renew_lease("w", "node-a", 1, ttl), "w", 2);
    assert_fenced(a.write(fenced_receipt("w", 2, 1), Durability::Sync), "w", 2);
    assert_eq!(b.receipt_at("w", 2).unwrap(), None);
    b.write(fenced_receipt("w", 2, 2), Durability::Sync).unwrap();
    assert_eq!(a.acquire_lease("w", "node-a", ADDR_A, ttl).unwrap(), LeaseAnswer::Held(lb));
}

/// Node a (its checked writes gated) holds the lease of `w` at epoch 1, lapsed — a paused
/// past it, say — but not taken over, so its fenced writes still count; node b is ready to
/// take over.
fn lapsed_owner() -> (Db, Arc<Gate>, PgStore, PgStore) {
    lapsed_owner_idle(LONG)
}

/// [`lapsed_owner`], node a's write transactions ended by the database after `idle` silent.
fn lapsed_owner_idle(idle: Duration) -> (Db, Arc<Gate>, PgStore, PgStore) {
    let db = Db::new();
    let gate = Arc::new(Gate::default());
    let (a, b) = (db.node_idle("a", Some(&gate), idle), db.node("b", None));
    assert_eq!(granted(a.acquire_lease("w", "node-a", ADDR_A, Duration::ZERO)).epoch, 1);
    (db, gate, a, b)
}

/// The old owner's fenced write whose transaction began — wrote its rows, took its snapshot —
/// before the takeover committed is refused when it checks its epoch after: the epoch row it
/// locks changed under its snapshot, so its transaction fails to serialize, and run again it
/// reads the new epoch. Nothing of it is written; the new owner's write of the same index is.
#[test]
fn a_write_begun_before_a_takeover_committed_is_refused() {
    let (_, gate, a, b) = lapsed_owner();
    a.write(fenced_receipt("w", 1, 1), Durability::Sync).unwrap();
    gate.arm(TxPoint::BeforeCheck);
    std::thread::scope(|scope| {
        let _opens = Opens(&gate);
        let late = scope.spawn(|| a.write(fenced_receipt("w", 2, 1), Durability::Sync));
        gate.wait_reached();
        // a's transaction has written receipt 2 and holds its snapshot: b takes over now.
        let lb = granted(b.acquire_lease("w", "node-b", ADDR_B, LONG));
        assert_eq!(lb.epoch, 2);
        gate.open();
        assert_fenced(late.join().unwrap(), "w", 2);
    });
    assert_eq!(b.receipt_at("w", 2).unwrap(), None, "the old owner's late write is not there");
    assert!(b.receipt_at("w", 1).unwrap().is_some());
    b.write(fenced_receipt("w", 2, 2), Durability::Sync).unwrap();
    assert_fenced(a.write(fenced_receipt("w", 3, 1), Durability::Sync), "w", 2);
}

/// The old owner's fenced write that checked its epoch before the takeover holds the epoch
/// row's lock: the takeover waits for it to commit, and is granted after. So the write is
/// ordered before the takeover, and the new owner, once granted, reads it.
#[test]
fn a_takeover_waits_for_a_write_that_checked_its_epoch_first() {
    let (db, gate, a, b) = lapsed_owner();
    gate.arm(TxPoint::BeforeCommit);
    std::thread::scope(|scope| {
        let _opens = Opens(&gate);
        let write = scope.spawn(|| a.write(fenced_receipt("w", 1, 1), Durability::Sync));
        gate.wait_reached();
        let takeover = scope.spawn(|| b.acquire_lease("w", "node-b", ADDR_B, LONG));
        eventually("the takeover to wait for the write's lock", || db.waits_for_a_lock("b"));
        assert!(!takeover.is_finished(), "the takeover did not wait for the write");
        gate.open();
        write.join().unwrap().unwrap();
        let lb = granted(takeover.join().unwrap());
        assert_eq!(lb.epoch, 2);
    });
    assert!(b.receipt_at("w", 1).unwrap().is_some(), "the write that went first is there for the new owner");
    assert_fenced(a.write(fenced_receipt("w", 2, 1), Durability::Sync), "w", 2);
}

/// The old owner stops in the middle of a fenced write that holds the epoch row's lock (a
/// pause, a partition: to the database the session only falls silent): the takeover waits for
/// it only until the database ends that idle session (`PgOptions::write_idle_limit`), not
/// until the old owner wakes or its connection is found dead. The write is then not applied,
/// and the old owner, once it wakes, gets an error for it, never an acknowledgement.
#[test]
fn a_takeover_waits_for_a_write_stopped_mid_transaction_only_up_to_the_idle_limit() {
    let (_, gate, a, b) = lapsed_owner_idle(Duration::from_millis(500));
    gate.arm(TxPoint::BeforeCommit);
    std::thread::scope(|scope| {
        let _opens = Opens(&gate);
        let write = scope.spawn(|| a.write(fenced_receipt("w", 1, 1), Durability::Sync));
        gate.wait_reached();
        // a's transaction has checked its epoch and holds the row's lock; a stays stopped (the
        // gate is closed until after the takeover): only the database can let the lock go.
        let lb = granted(b.acquire_lease("w", "node-b", ADDR_B, LONG));
        assert_eq!(lb.epoch, 2);
        gate.open();
        let late = write.join().unwrap();
        assert!(late.is_err(), "the cut-off write was acknowledged: {late:?}");
    });
    assert_eq!(b.receipt_at("w", 1).unwrap(), None, "the cut-off write was applied");
    b.write(fenced_receipt("w", 1, 2), Durability::Sync).unwrap();
    assert_fenced(a.write(fenced_receipt("w", 2, 1), Durability::Sync), "w", 2);
}

/// Four nodes racing for one workspace, round after round: one owner per epoch.
#[test]
fn racing_nodes_get_one_owner_per_epoch() {
    let db = Db::new();
    let nodes: Vec<PgStore> = (0..4).map(|n| db.node(&format!("n{n}"), None)).collect();
    let nodes: Vec<&dyn Store> = nodes.iter().map(|n| n as &dyn Store).collect();
    one_owner_per_epoch_among(&nodes);
}

/// The pool's figures for `/metrics`: connections open once used, one busy while a call runs
/// (held at a point of its transaction), none busy and nothing queued at rest.
#[test]
fn the_pool_reports_connections_open_busy_and_calls_queued() {
    let (_, gate, a, _) = lapsed_owner();
    let figures = |s: &PgStore| {
        let st = s.engine_stats();
        (st.connections_open.unwrap(), st.connections_busy.unwrap(), st.calls_queued.unwrap())
    };
    let (open, busy, queued) = figures(&a);
    assert!(open >= 1, "the lease was taken over a connection: {open}");
    assert_eq!((busy, queued), (0, 0));
    gate.arm(TxPoint::BeforeCommit);
    std::thread::scope(|scope| {
        let _opens = Opens(&gate);
        let write = scope.spawn(|| a.write(fenced_receipt("w", 1, 1), Durability::Sync));
        gate.wait_reached();
        assert_eq!(figures(&a).1, 1, "the held write's connection is busy");
        gate.open();
        write.join().unwrap().unwrap();
    });
    assert_eq!(figures(&a).1, 0);
    // RocksDB's figures are not a pool's.
    let st = a.engine_stats();
    assert_eq!((st.write_stopped, st.memtable_bytes), (None, None));
}

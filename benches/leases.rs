//! What a cluster node's lease keeper pays per round on a real PostgreSQL (a throwaway cluster
//! started for the bench, `allowly_store_postgres::test_cluster`): renewing every lease it
//! holds one call per workspace (the keeper before bulk renewal: for each, the database's
//! clock, a read of the lease and a checked, synced write) against one `renew_leases` call per
//! 512 leases (one clock read and one checked write with a group per lease, its checks read by
//! the write itself).
//! Measured for 512 leases per round, so the ratio is per lease either way.

use std::time::{Duration, Instant};

use allowly_benches::{print_ratios, Ratio};
use allowly_store::{LeaseAnswer, Store};
use allowly_store_postgres::{test_cluster, PgOptions, PgStore};
use criterion::Criterion;

const LEASES: usize = 512;
const NODE: &str = "bench-node";
const ADDRESS: &str = "http://10.0.0.1:8080";
const TTL: Duration = Duration::from_secs(3600);

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("lease_keeper");
    g.measurement_time(Duration::from_secs(8)).sample_size(10);
    let (_, conninfo) = test_cluster::shared().fresh_schema();
    let store = PgStore::open(&conninfo, PgOptions::default()).expect("open");
    let held: Vec<(String, u64)> = (0..LEASES)
        .map(|i| {
            let ws = format!("ws_{i:05}");
            match store.acquire_lease(&ws, NODE, ADDRESS, TTL).expect("acquire") {
                LeaseAnswer::Granted(l) => (ws, l.epoch),
                LeaseAnswer::Held(l) => panic!("held by {}", l.node_id),
            }
        })
        .collect();
    g.bench_function("one_call_per_lease", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                for (ws, epoch) in &held {
                    store.renew_lease(ws, NODE, *epoch, TTL).expect("renew");
                }
            }
            t.elapsed()
        })
    });
    g.bench_function("bulk", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let answers = store.renew_leases(NODE, ADDRESS, &held, TTL).expect("renew");
                assert!(answers.iter().all(Result::is_ok));
            }
            t.elapsed()
        })
    });
    g.finish();
    c.final_summary();
    print_ratios(
        "lease keeper round, 512 leases on PostgreSQL",
        &[Ratio {
            label: "bulk renewal vs one call per lease",
            measured: "lease_keeper/bulk",
            per: 1.0,
            baseline: "lease_keeper/one_call_per_lease",
        }],
    );
}

//! The engine's durable check path, beside a single synced RocksDB write in the same run.
//!
//! `engine_check/concurrent_N` runs N checks at once on one workspace (real RocksDB with WAL
//! fsync, real signer code on a real Unix socket, in this process) and waits for every answer;
//! each answer left only after its receipt was durable. Reported per check, against
//! `baseline_synced_write` (one small synced write: what a check would cost with one fsync
//! each). Group commit is what makes concurrent checks cheaper than that baseline; the
//! average group size (requests per fsync) is printed for each N.
//!
//! Then `passivation`: touches many workspaces once each, and reports live actors and resident
//! memory right after and once idle actors have stopped: memory follows active workspaces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use allowly_benches::{print_ratios, Ratio};
use allowly_engine::model::{CheckRequest, NewAuthorization, NewWorkspace};
use allowly_engine::{Engine, EngineConfig};
use allowly_signer_proto::client::{ClientOptions, SignerClient};
use allowly_store::{Durability, LogMeta, Op, Store, WriteBatch};
use allowly_store_rocks::{RocksOptions, RocksStore};
use criterion::Criterion;

const CONCURRENCY: [usize; 3] = [1, 16, 64];

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (engine, store, sock) = allowly_benches::local_engine(&rt, dir.path(), EngineConfig::default());
    let (ws, auth) = rt.block_on(async {
        let ws =
            engine.create_workspace(NewWorkspace { name: "bench".into(), scope_rules: Default::default() }, None).await;
        let ws = ws.expect("workspace").id;
        let grant = grant();
        let auth = engine.create_authorization(&ws, grant, None).await.expect("authorization").authorization.id;
        (ws, auth)
    });
    let req = CheckRequest {
        authorization_id: auth,
        scopes: vec!["files.read".into()],
        resource: Some("doc:1".into()),
        context: None,
    };

    let mut g = c.benchmark_group("engine_check");
    g.measurement_time(Duration::from_secs(6));
    let mut groups = Vec::new();
    for n in CONCURRENCY {
        let m = engine.metrics();
        let (sum0, count0) = (m.commit_batch.get_sample_sum(), m.commit_batch.get_sample_count());
        g.bench_function(format!("concurrent_{n}"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    rt.block_on(async {
                        let calls: Vec<_> = (0..n)
                            .map(|_| {
                                let (e, ws, req) = (engine.clone(), ws.clone(), req.clone());
                                tokio::spawn(async move { e.check(&ws, req, None).await })
                            })
                            .collect();
                        for c in calls {
                            c.await.expect("task").expect("check");
                        }
                    });
                }
                t.elapsed()
            })
        });
        let (sum, count) = (m.commit_batch.get_sample_sum() - sum0, m.commit_batch.get_sample_count() - count0);
        groups.push((n, sum / (count.max(1) as f64)));
    }
    // Baseline: one synced write of about a check's size (receipt body ~700 bytes + meta).
    let mut i = 0u64;
    let pad = "x".repeat(700);
    g.bench_function("baseline_synced_write", |b| {
        b.iter(|| {
            i += 1;
            let op = Op::PutLogMeta {
                workspace_id: format!("base{}", i % 8),
                meta: LogMeta { next_index: i, ..LogMeta::default() },
            };
            let ws = Op::PutWorkspace(allowly_store::WorkspaceRecord {
                id: "baseline".into(),
                name: pad.clone(),
                created_at_ms: i,
                scope_rules: Default::default(),
                fail_open: false,
                signing_keys: vec![],
                rate_limit: None,
            });
            store.write(WriteBatch::from(vec![ws, op]), Durability::Sync).expect("write");
        })
    });
    g.finish();
    rt.block_on(engine.shutdown());
    c.final_summary();
    passivation(&rt, &dir, &sock);

    println!("\n== engine: average group commit size (requests per fsync)");
    for (n, avg) in &groups {
        println!("concurrent {n:>3}: {avg:.1} requests per synced write");
    }
    let rows: Vec<Ratio> = CONCURRENCY
        .iter()
        .map(|&n| Ratio {
            label: match n {
                1 => "durable check, 1 caller, per check",
                16 => "durable check, 16 concurrent, per check",
                _ => "durable check, 64 concurrent, per check",
            },
            measured: match n {
                1 => "engine_check/concurrent_1",
                16 => "engine_check/concurrent_16",
                _ => "engine_check/concurrent_64",
            },
            per: n as f64,
            baseline: "engine_check/baseline_synced_write",
        })
        .collect();
    print_ratios("engine", &rows);
}

/// Resident set size of this process, from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // 4 KiB pages: x86-64 and aarch64 Linux defaults (a figure, not a test).
    pages * 4096
}

fn passivation(rt: &tokio::runtime::Runtime, dir: &tempfile::TempDir, sock: &std::path::Path) {
    const WORKSPACES: usize = 2000;
    const AUTHS_PER_WORKSPACE: usize = 5;
    let store = Arc::new(RocksStore::open(&dir.path().join("db2"), RocksOptions::default()).expect("store"));
    let cfg = EngineConfig { idle_timeout: Duration::from_secs(2), ..EngineConfig::default() };
    rt.block_on(async {
        let client = SignerClient::new(sock.to_owned(), ClientOptions::default());
        let engine = Engine::start(store, client, cfg).await.expect("engine");
        let before = rss_bytes();
        let t = Instant::now();
        for i in 0..WORKSPACES {
            let ws = engine.create_workspace(NewWorkspace { name: format!("w{i}"), scope_rules: Default::default() }, None);
            let ws = ws.await.expect("workspace").id;
            for _ in 0..AUTHS_PER_WORKSPACE {
                let grant = grant();
                engine.create_authorization(&ws, grant, None).await.expect("authorization");
            }
        }
        let busy = rss_bytes();
        let live = engine.metrics().actors_live.get();
        println!("\n== engine: passivation ({WORKSPACES} workspaces x {AUTHS_PER_WORKSPACE} authorizations, set up in {:.1} s)", t.elapsed().as_secs_f64());
        println!("after touching all: {live} live actors, RSS {:.1} MiB (+{:.1} MiB)", mib(busy), mib(busy.saturating_sub(before)));
        let deadline = Instant::now() + Duration::from_secs(60);
        while engine.metrics().actors_live.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let idle = rss_bytes();
        println!(
            "after idle_timeout: {} live actors, RSS {:.1} MiB (allocator may keep freed pages)",
            engine.metrics().actors_live.get(),
            mib(idle)
        );
        engine.shutdown().await;
    });
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A grant of `files.*` to one user (what every benched check is asked against).
fn grant() -> NewAuthorization {
    NewAuthorization {
        subject: "user".into(),
        scopes: vec!["files.*".into()],
        resources: vec![],
        expires_at: None,
        metadata: None,
    }
}

//! The decay regression bench: a signing round must cost the same whatever the log's history.
//!
//! Two workspaces in one engine (real RocksDB with WAL fsync, real signer code on a real Unix
//! socket, in this process): `fresh` with an empty log and `deep` with `HISTORY` receipts
//! already signed. One round = 64 concurrent checks on one workspace, then waiting until the
//! pipeline has stored the checkpoint that covers them (commit + read unsigned leaves + sign +
//! store the signature). `deep` must cost what `fresh` costs: the ratio printed last is the
//! figure (it was the point of the rewrite: the old pending queue was scanned from its head over
//! one tombstone per receipt ever signed, so rounds slowed as history grew).
//!
//! `HISTORY` defaults to 100,000; set `ALLOWLY_BENCH_HISTORY` to change it.

use std::time::{Duration, Instant};

use allowly_benches::{print_ratios, Ratio};
use allowly_engine::model::{CheckRequest, NewAuthorization, NewWorkspace};
use allowly_engine::{Engine, EngineConfig};
use criterion::Criterion;

const ROUND: usize = 64;

fn main() {
    let history: usize = std::env::var("ALLOWLY_BENCH_HISTORY").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mut c = Criterion::default().configure_from_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // No batching delay: a round is then the signing work itself (read the unsigned leaves,
    // sign, store), not mostly a timer, so a decay would show.
    let cfg = EngineConfig { sign_batch_delay: Duration::ZERO, ..EngineConfig::default() };
    let (engine, _store, _sock) = allowly_benches::local_engine(&rt, dir.path(), cfg);
    let fresh = rt.block_on(setup(&engine, "fresh"));
    let deep = rt.block_on(setup(&engine, "deep"));

    // The history: `history` receipts in `deep`, all signed before measuring.
    let t = Instant::now();
    rt.block_on(async {
        let mut done = 0;
        while done < history {
            round(&engine, &deep, ROUND.min(history - done)).await;
            done += ROUND;
        }
    });
    println!("history: {history} signed receipts in `deep`, written in {:.1} s", t.elapsed().as_secs_f64());

    let mut g = c.benchmark_group("signing_round");
    g.measurement_time(Duration::from_secs(8));
    for (name, w) in [("fresh", &fresh), ("deep", &deep)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    rt.block_on(round(&engine, w, ROUND));
                }
                t.elapsed()
            })
        });
    }
    g.finish();
    rt.block_on(engine.shutdown());
    c.final_summary();
    print_ratios(
        "history",
        &[Ratio {
            label: "signing round after history / on an empty log",
            measured: "signing_round/deep",
            per: 1.0,
            baseline: "signing_round/fresh",
        }],
    );
}

/// A workspace and an authorization to check against.
struct Ws {
    id: String,
    req: CheckRequest,
}

async fn setup(engine: &Engine, name: &str) -> Ws {
    let ws = engine.create_workspace(NewWorkspace { name: name.into(), scope_rules: Default::default() }, None);
    let id = ws.await.expect("workspace").id;
    let grant = NewAuthorization {
        subject: "user".into(),
        scopes: vec!["files.*".into()],
        resources: vec![],
        expires_at: None,
        metadata: None,
    };
    let auth = engine.create_authorization(&id, grant, None).await.expect("authorization").authorization.id;
    let req = CheckRequest {
        authorization_id: auth,
        scopes: vec!["files.read".into()],
        resource: Some("doc:1".into()),
        context: None,
    };
    Ws { id, req }
}

/// `n` concurrent checks on `w`, then waits until a stored checkpoint covers all of them.
async fn round(engine: &Engine, w: &Ws, n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (e, ws, req) = (engine.clone(), w.id.clone(), w.req.clone());
            tokio::spawn(async move { e.check(&ws, req, None).await })
        })
        .collect();
    let mut last = 0;
    for c in calls {
        let out = c.await.expect("task").expect("check");
        last = last.max(out.receipt.expect("receipt").log_index);
    }
    // Polled (a bench, not a test): 50 µs steps add the same small noise to both workspaces.
    while engine.latest_checkpoint(&w.id).map(|c| c.size).unwrap_or(0) <= last {
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
}

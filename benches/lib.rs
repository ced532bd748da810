//! Shared support for the criterion benches in this package: every figure is printed beside a
//! baseline measured in the same run, as a ratio, because absolute numbers on a shared 2-core
//! machine mean little while ratios travel.

use std::path::PathBuf;

/// Where criterion writes its estimates (it honours `CRITERION_HOME`, else `<target>/criterion`).
fn criterion_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    target.join("criterion")
}

/// Mean time in nanoseconds of one benchmark id (`group/function`), from this run's estimates.
pub fn mean_ns(id: &str) -> Option<f64> {
    let path = criterion_home().join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

/// One line of the ratio table: `measured` against `baseline`, with an optional divisor for the
/// measured side (e.g. per-leaf cost of a batch of 256).
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    pub label: &'static str,
    pub measured: &'static str,
    pub per: f64,
    pub baseline: &'static str,
}

/// Prints the ratio table for the benches that ran (ids that did not run, e.g. filtered out, are
/// skipped).
pub fn print_ratios(title: &str, rows: &[Ratio]) {
    println!("\n== {title}: ratios against baselines measured in this run");
    println!("{:<48} {:>14} {:>14} {:>9}", "measure", "measured", "baseline", "ratio");
    for r in rows {
        let (Some(m), Some(b)) = (mean_ns(r.measured), mean_ns(r.baseline)) else { continue };
        let m = m / r.per;
        println!("{:<48} {:>11.1} ns {:>11.1} ns {:>8.3}x   ({} vs {})", r.label, m, b, m / b, r.measured, r.baseline);
    }
}

/// An engine over a fresh RocksDB in `dir/db`, talking to the real signer code serving on a real
/// Unix socket (`dir/run/signer.sock`) in this process: what the engine benches measure.
/// Returns the engine, its store and the socket (for a second engine on the same signer).
pub fn local_engine(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    cfg: allowly_engine::EngineConfig,
) -> (allowly_engine::Engine, std::sync::Arc<allowly_store_rocks::RocksStore>, PathBuf) {
    use allowly_signer_proto::client::{ClientOptions, SignerClient};
    let sock = dir.join("run/signer.sock");
    let listener = {
        let _in_rt = rt.enter();
        allowly_signer::server::bind(&sock).expect("bind")
    };
    let signer_state = allowly_signer::Shared::open_local(&dir.join("signer")).expect("signer state");
    rt.spawn(allowly_signer::server::serve(listener, signer_state, std::future::pending()));
    let store = std::sync::Arc::new(
        allowly_store_rocks::RocksStore::open(&dir.join("db"), allowly_store_rocks::RocksOptions::default())
            .expect("store"),
    );
    let engine = rt.block_on(async {
        let client = SignerClient::new(sock.clone(), ClientOptions::default());
        allowly_engine::Engine::start(store.clone(), client, cfg).await.expect("engine")
    });
    (engine, store, sock)
}

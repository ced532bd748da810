//! How many fsyncs a signed batch costs, measured from the signer's own metrics.
//!
//! Runs a real signer server in-process (temp directory on the current disk, real journal and
//! audit fsyncs), creates `W` workspaces, then has every workspace append `B` batches of `L`
//! leaves one after another (one batch in flight per workspace, as the engine's signing
//! pipeline does), all workspaces at once. Prints batches, checkpoints, fsyncs by file, fsyncs
//! per batch and batches per second.
//!
//! ```text
//! cargo run --release -p allowly-signer --example fsyncs -- 1000 20 16
//! ```

use std::time::Instant;

use allowly_signer::{server, Shared};
use allowly_signer_proto::client::{ClientOptions, SignerClient};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (workspaces, batches, leaves) = (arg(1, 1000), arg(2, 20), arg(3, 16));
    let dir = tempfile::tempdir_in(std::env::var_os("FSYNCS_DIR").unwrap_or_else(|| ".".into()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let shared = Shared::open_local(dir.path())?;
        let sock = dir.path().join("run/signer.sock");
        let listener = server::bind(&sock)?;
        tokio::spawn(server::serve(listener, shared, std::future::pending()));
        let client = SignerClient::new(sock, ClientOptions { max_in_flight: 8192, ..ClientOptions::default() });
        let names: Vec<String> = (0..workspaces).map(|w| format!("ws_{w}")).collect();
        for ws in &names {
            client.create_key(ws.as_str()).await?;
        }
        let before = client.metrics().await?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for ws in names {
            let c = client.clone();
            tasks.spawn(async move {
                let mut size = 0u64;
                for b in 0..batches {
                    const T0: u64 = 1_767_225_600_000;
                    let batch: Vec<Vec<u8>> = (size..size + leaves as u64)
                        .map(|i| allowly_signer::check::sample_body(&ws, &b.to_string(), i, T0 + i))
                        .collect::<Result<_, _>>()
                        .map_err(|e| allowly_signer_proto::client::ClientError::UnexpectedResponse {
                            request: "sample body",
                            detail: e.to_string(),
                        })?;
                    size = c.append_batch(ws.as_str(), size, batch).await?.new_size;
                }
                Ok::<_, allowly_signer_proto::client::ClientError>(size)
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let elapsed = started.elapsed();
        let after = client.metrics().await?;
        let d = |name: &str| metric(&after, name) - metric(&before, name);
        let total = (workspaces * batches) as f64;
        let checkpoints = d("allowly_signer_checkpoints_signed_total");
        let journal = d("allowly_signer_fsyncs_total{file=\"journal\"}");
        let audit = d("allowly_signer_fsyncs_total{file=\"audit\"}");
        println!(
            "workspaces {workspaces}, batches {total} of {leaves} leaves, checkpoints {checkpoints}, \
             journal fsyncs {journal}, audit fsyncs {audit}, fsyncs per batch {:.4}, \
             batches/s {:.0}, client waits {}, elapsed {:.2?}",
            (journal + audit) / total,
            total / elapsed.as_secs_f64(),
            client.waits_total(),
            elapsed,
        );
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })
}

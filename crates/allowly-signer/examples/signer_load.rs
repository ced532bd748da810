//! Load for a running `allowly-signer serve` process, to measure its CPU per signed receipt on
//! the real process (the bench and `leaf_cost` measure pieces; this measures everything the
//! process does: socket reads, frame decoding, dispatch, checks, signing, the journal thread).
//!
//! `W` workspaces each append `N` batches of `B` sample receipt bodies (~490 bytes, like the
//! service's check receipts), one batch in flight per workspace, all workspaces at once: the
//! shape of the engine's signing pipeline at its knee (8 workspaces, tens of receipts per batch).
//! With `--rate R` the batches are paced to `R` receipts/s in total (open loop per workspace:
//! a batch leaves every `W·B/R` seconds, or as soon as the previous one is answered when late).
//! Bodies are built before the clock starts, so the client's own work is not in the window.
//!
//! Prints receipts, elapsed time, the signer's fsyncs and checkpoints (from its metrics) and,
//! with `--pid P`, the CPU the process `P` spent in the window (user + system, from
//! `/proc/P/stat`) per receipt and its threads' context switches per batch.
//!
//! Instructions per receipt, repeatable on a busy machine: run the signer under callgrind twice,
//! with two values of `N`, and divide the difference of the totals by the difference of receipts
//! (start-up and key creation cancel out):
//!
//! ```sh
//! S=target/release/allowly-signer; L=target/release/examples/signer_load
//! for n in 20 80; do
//!   d=$(mktemp -d); $S init --dir $d/data >/dev/null
//!   valgrind --tool=callgrind --callgrind-out-file=$d/cg.out $S serve --dir $d/data --socket $d/run/s.sock &
//!   $L --socket $d/run/s.sock --workspaces 8 --batch 32 --batches $n --wait
//!   kill %1; wait; grep ^summary $d/cg.out
//! done
//! ```
//!
//! (`--wait` polls the socket until the signer answers a ping.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use allowly_signer::check::sample_body;
use allowly_signer_proto::client::{ClientError, ClientOptions, SignerClient};

#[derive(Debug)]
struct Args {
    socket: PathBuf,
    workspaces: usize,
    batch: u64,
    batches: usize,
    rate: f64,
    pid: Option<u32>,
    wait: bool,
    prefix: String,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        socket: PathBuf::new(),
        workspaces: 8,
        batch: 32,
        batches: 50,
        rate: 0.0,
        pid: None,
        wait: false,
        prefix: "load".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--wait" {
            a.wait = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        match flag.as_str() {
            "--socket" => a.socket = v.into(),
            "--workspaces" => a.workspaces = v.parse().map_err(|e| bad(&e))?,
            "--batch" => a.batch = v.parse().map_err(|e| bad(&e))?,
            "--batches" => a.batches = v.parse().map_err(|e| bad(&e))?,
            "--rate" => a.rate = v.parse().map_err(|e| bad(&e))?,
            "--pid" => a.pid = Some(v.parse().map_err(|e| bad(&e))?),
            "--prefix" => a.prefix = v,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.socket.as_os_str().is_empty() {
        return Err("--socket is required".into());
    }
    Ok(a)
}

/// User and system CPU of process `pid` so far (clock ticks → seconds).
fn cpu_seconds(pid: u32) -> Result<(f64, f64), Box<dyn std::error::Error + Send + Sync>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').ok_or("unreadable /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let field = |i: usize| -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
        Ok(f.get(i).ok_or("short stat")?.parse::<f64>()? / hz)
    };
    Ok((field(11)?, field(12)?))
}

/// Context switches (voluntary + involuntary) of process `pid`'s live threads so far: each is a
/// thread blocking (or being preempted) and woken again, which costs the kernel (and, in a VM,
/// often an exit) on top of the user-space work.
fn context_switches(pid: u32) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>()?;
            }
        }
    }
    Ok(total)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async move {
        let opts = ClientOptions {
            max_in_flight: 4096,
            request_timeout: Duration::from_secs(600),
            ..ClientOptions::default()
        };
        let client = SignerClient::new(a.socket.clone(), opts);
        if a.wait {
            // Poll until the signer answers (it may be starting under valgrind).
            let deadline = Instant::now() + Duration::from_secs(300);
            while client.ping().await.is_err() {
                if Instant::now() > deadline {
                    return Err("the signer did not answer a ping within 300 s".into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        const T0: u64 = 1_767_225_600_000;
        let mut work = Vec::new();
        for w in 0..a.workspaces {
            let ws = format!("{}_{w}", a.prefix);
            let size = match client.latest_checkpoint(ws.as_str()).await {
                Ok(c) => c.size,
                Err(_) => {
                    client.create_key(ws.as_str()).await?;
                    0
                }
            };
            let mut batches = Vec::with_capacity(a.batches);
            for b in 0..a.batches as u64 {
                let at = size + b * a.batch;
                let bodies: Vec<Vec<u8>> =
                    (at..at + a.batch).map(|i| sample_body(&ws, "load", i, T0 + i)).collect::<Result<_, _>>()?;
                batches.push((at, bodies));
            }
            work.push((ws, batches));
        }
        let before = client.metrics().await?;
        let cpu0 = a.pid.map(cpu_seconds).transpose()?;
        let switches0 = a.pid.map(context_switches).transpose()?;
        let started = Instant::now();
        let period = (a.rate > 0.0).then(|| Duration::from_secs_f64(a.workspaces as f64 * a.batch as f64 / a.rate));
        let mut tasks = tokio::task::JoinSet::new();
        for (w, (ws, batches)) in work.into_iter().enumerate() {
            let c = client.clone();
            tasks.spawn(async move {
                // Workspaces start spread over one period, as independent pipelines would.
                let offset = period.map(|p| p.mul_f64(w as f64 / a.workspaces as f64));
                let mut latencies = Vec::with_capacity(batches.len());
                for (b, (at, bodies)) in batches.into_iter().enumerate() {
                    if let (Some(p), Some(o)) = (period, offset) {
                        tokio::time::sleep_until((started + o + p * b as u32).into()).await;
                    }
                    let sent = Instant::now();
                    let out = c.append_batch(ws.as_str(), at, bodies).await?;
                    latencies.push(sent.elapsed());
                    if out.new_size != at + a.batch {
                        return Err(ClientError::UnexpectedResponse {
                            request: "append",
                            detail: format!("new size {}", out.new_size),
                        });
                    }
                }
                Ok::<_, ClientError>(latencies)
            });
        }
        let mut latencies = Vec::new();
        while let Some(r) = tasks.join_next().await {
            latencies.extend(r??);
        }
        latencies.sort_unstable();
        let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
        let elapsed = started.elapsed();
        let cpu1 = a.pid.map(cpu_seconds).transpose()?;
        let switches1 = a.pid.map(context_switches).transpose()?;
        let after = client.metrics().await?;
        let d = |name: &str| metric(&after, name) - metric(&before, name);
        let receipts = (a.workspaces * a.batches) as f64 * a.batch as f64;
        println!(
            "receipts {receipts}, elapsed {:.3} s ({:.0} receipts/s), checkpoints {}, fsyncs journal {} audit {}",
            elapsed.as_secs_f64(),
            receipts / elapsed.as_secs_f64(),
            d("allowly_signer_checkpoints_signed_total"),
            d("allowly_signer_fsyncs_total{file=\"journal\"}"),
            d("allowly_signer_fsyncs_total{file=\"audit\"}"),
        );
        if let (Some(p50), Some(p99)) = (pct(0.5), pct(0.99)) {
            println!("append round trip p50 {:.2} ms, p99 {:.2} ms", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
        }
        if let (Some(c0), Some(c1), Some(s0), Some(s1)) = (cpu0, cpu1, switches0, switches1) {
            let (user, system) = (c1.0 - c0.0, c1.1 - c0.1);
            println!(
                "signer CPU {:.3} s, {:.2} us per receipt ({:.2} user, {:.2} system); {} context switches, {:.2} per batch",
                user + system,
                (user + system) * 1e6 / receipts,
                user * 1e6 / receipts,
                system * 1e6 / receipts,
                s1.saturating_sub(s0),
                s1.saturating_sub(s0) as f64 / (a.workspaces * a.batches) as f64
            );
        }
        Ok(())
    })
}

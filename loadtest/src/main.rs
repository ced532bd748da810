//! `allowly-loadtest`: an open-loop load test of a running `allowly serve`, with its baselines
//! measured by the same generator in the same run, so the figures are ratios that mean
//! something on a shared 2-core machine (DESIGN §7).
//!
//! Standard mode measures, in one run, the knee and the latency at half the knee of three
//! targets: `POST /v1/check` (durable, signed), `GET /healthz` of the *same* process (its HTTP
//! ceiling) and a bare hyper server started by this tool; CPU per request of the real
//! processes (server, signer, bare server, and the generator itself) from `/proc`; the latency
//! of one synced write on the server's disk; disk bytes per receipt; signed receipts/s and the
//! signing lag at 80 % of the check knee. `--sustained` and `--scale` are the long modes.
//! How to read the output: `loadtest/README.md`.

mod bare;
mod chart;
mod fsync;
mod gen;
mod http;
mod knee;
mod procfs;
mod prom;
mod rocks_log;
mod setup;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::gen::{quantile_ms, StepConfig, StepResult};
use crate::knee::{Outcome, Rule, Search};
use crate::setup::Api;

#[derive(Debug, Parser)]
#[command(
    name = "allowly-loadtest",
    about = "Open-loop load test of allowly: /v1/check against /healthz and a bare hyper server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A running `allowly serve` (loopback).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Create the check load's workspaces through this node instead of --url (a cluster,
    /// docs/scale-out.md: the node that creates a workspace owns it, so with the load on
    /// another node every check is forwarded, and the step measures the forwarding).
    #[arg(long)]
    setup_url: Option<String>,
    /// The server's data directory: the fsync baseline is written there and `db/` is measured.
    #[arg(long, default_value = "./allowly-data")]
    data_dir: PathBuf,
    /// The instance admin token [default: <data-dir>/admin-token].
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The server's pid [default: the process listening on the URL's port, else one named `allowly`].
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds per step.
    #[arg(long, default_value = "5")]
    seconds: u64,
    /// Keep-alive connections for /healthz and the bare server (one request in flight on each).
    #[arg(long, default_value = "64")]
    connections: usize,
    /// Keep-alive connections for /v1/check (a durable answer waits for a group commit, so the
    /// rate a connection can carry is 1 / latency: more connections are needed).
    #[arg(long, default_value = "256")]
    check_connections: usize,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value = "2")]
    threads: usize,
    /// Targets of the standard run, comma-separated: bare, healthz, check.
    #[arg(long, value_delimiter = ',', default_value = "bare,healthz,check")]
    targets: Vec<String>,
    /// Workspaces the standard run's checks are spread over (one authorization each).
    #[arg(long, default_value = "8")]
    workspaces: usize,
    /// First offered rate for /healthz and the bare server.
    #[arg(long, default_value = "8000")]
    http_start_rate: f64,
    /// First offered rate for /v1/check.
    #[arg(long, default_value = "500")]
    check_start_rate: f64,
    /// Geometric factor between search steps.
    #[arg(long, default_value = "2")]
    factor: f64,
    /// Highest rate ever offered.
    #[arg(long, default_value = "1000000")]
    max_rate: f64,
    /// Bisection steps after the first failing step at most.
    #[arg(long, default_value = "4")]
    bisections: usize,
    /// Stop bisecting when failing / passing rate ≤ 1 + this.
    #[arg(long, default_value = "0.05")]
    resolution: f64,
    /// A step fails if its p99 exceeds this (ms).
    #[arg(long, default_value = "100")]
    max_p99_ms: f64,
    /// A step fails (and stops) once a request is sent this late after its due instant (ms).
    #[arg(long, default_value = "1000")]
    max_lag_ms: u64,
    /// A request without an answer after this is an error (s).
    #[arg(long, default_value = "5")]
    timeout: u64,
    /// Wait up to this many seconds for the machine to be idle before measuring.
    #[arg(long, default_value = "120")]
    wait_idle: u64,
    /// Seconds of the step at 80 % of the check knee that reads the signing metrics.
    #[arg(long, default_value = "10")]
    signing_seconds: u64,
    /// Synced writes of the fsync baseline (bounded to 10 s).
    #[arg(long, default_value = "1000")]
    fsync_count: usize,
    /// Bytes per synced write (about a receipt record).
    #[arg(long, default_value = "2048")]
    fsync_bytes: usize,
    /// Sustained mode: 80 % of the check knee for this many minutes.
    #[arg(long, num_args = 0..=1, default_missing_value = "10", value_name = "MINUTES")]
    sustained: Option<u64>,
    /// Timeline mode: offer this many checks/s for `--seconds` and print the p99 and max of every
    /// `--timeline-ms` slice (by due instant), to find periodic stalls that a whole-step p99 hides.
    #[arg(long, value_name = "RATE")]
    timeline: Option<f64>,
    #[arg(long, default_value = "100")]
    timeline_ms: u64,
    /// Use this check knee instead of searching for it (sustained mode).
    #[arg(long)]
    check_knee: Option<f64>,
    /// Scale mode: many workspaces and authorizations, then checks at a fixed rate.
    #[arg(long)]
    scale: bool,
    #[arg(long, default_value = "10000")]
    scale_workspaces: usize,
    #[arg(long, default_value = "1000000")]
    scale_authorizations: usize,
    /// Concurrent connections creating the scale set-up.
    #[arg(long, default_value = "64")]
    scale_concurrency: usize,
    /// Checks/s offered in scale mode (both spreads).
    #[arg(long, default_value = "1000")]
    scale_rate: f64,
    #[arg(long, default_value = "60")]
    scale_seconds: u64,
    /// The scale set-up stops creating after this many minutes (what exists is measured).
    #[arg(long, default_value = "30")]
    scale_setup_minutes: u64,
    /// After the scale checks, wait up to this long for every workspace to be unloaded
    /// (`allowly_engine_actors_live` 0: start the server with a short `--idle-timeout-ms`) and
    /// report the memory left.
    #[arg(long, default_value = "120")]
    scale_idle_seconds: u64,
    /// The JSON report.
    #[arg(long, default_value = "report.json")]
    out: PathBuf,
    /// The SVG chart.
    #[arg(long, default_value = "report.svg")]
    chart: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) the bare baseline server, started by the load test itself.
    #[command(hide = true)]
    BareServer,
}

fn main() {
    let cli = Cli::parse();
    if let Some(Cmd::BareServer) = cli.cmd {
        if let Err(e) = bare::serve() {
            eprintln!("bare server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("allowly-loadtest: runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("allowly-loadtest: {e}");
        std::process::exit(1);
    }
}

/// The processes whose CPU a step is charged to.
#[derive(Debug, Clone, Copy)]
struct Watched {
    main: Option<u32>,
    /// Also sum the `allowly-signer` children of `main`.
    signer: bool,
}

/// CPU ticks at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    main: Option<u64>,
    signer: Option<u64>,
    signer_pids: usize,
    generator: Option<u64>,
    /// Busy ticks of the whole machine.
    system: Option<u64>,
    at: Option<Instant>,
}

fn cpu_now(w: Watched) -> Cpu {
    let main = w.main.and_then(procfs::stat).map(|s| s.cpu_ticks);
    let (signer, signer_pids) = match (w.signer, w.main) {
        (true, Some(pid)) => {
            let kids = procfs::signers_of(pid);
            let t: Option<u64> = kids.iter().map(|&k| procfs::stat(k).map(|s| s.cpu_ticks)).sum();
            (t, kids.len())
        }
        _ => (None, 0),
    };
    let generator = procfs::stat(std::process::id()).map(|s| s.cpu_ticks);
    Cpu { main, signer, signer_pids, generator, system: procfs::system_busy(), at: Some(Instant::now()) }
}

/// One named target of the generator.
#[derive(Debug, Clone)]
struct Target {
    name: &'static str,
    addr: std::net::SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    connections: usize,
    watched: Watched,
}

/// A step with everything measured around it.
#[derive(Debug, Clone)]
struct Row {
    target: &'static str,
    phase: &'static str,
    offered: f64,
    achieved: f64,
    ok: u64,
    errors: u64,
    error_detail: Value,
    backlogged: bool,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    send_lag_p99: f64,
    /// Fraction of requests sent more than 1 ms after their due instant (all connections busy).
    late: f64,
    pass: bool,
    why: String,
    server_us: Option<f64>,
    signer_us: Option<f64>,
    generator_us: Option<f64>,
    /// Cores' worth of CPU the main process used during the step.
    server_cores: Option<f64>,
    /// Cores' worth of CPU used during the step by everything else on the machine (not the
    /// server, its signer or the generator): other work that contaminates the figures.
    other_cores: Option<f64>,
    /// Per-bucket (throughput/s, p99 ms), sustained mode.
    buckets: Vec<(f64, f64)>,
    /// Signed receipts and signing lag over the step (checks only).
    signing: Option<Value>,
    /// Mean fraction of the connections with a request in flight (see `busy_fraction`).
    busy: f64,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "target": self.target, "phase": self.phase, "offered_per_s": self.offered,
            "achieved_per_s": round(self.achieved), "ok": self.ok, "errors": self.errors,
            "error_detail": self.error_detail, "backlogged": self.backlogged,
            "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "p999_ms": self.p999, "max_ms": self.max,
            "send_lag_p99_ms": self.send_lag_p99, "sent_late_over_1ms_fraction": self.late, "pass": self.pass, "fail_reason": self.why,
            "server_cpu_us_per_request": self.server_us.map(round), "signer_cpu_us_per_request": self.signer_us.map(round),
            "generator_cpu_us_per_request": self.generator_us.map(round), "server_cores_used": self.server_cores.map(round), "other_cores_used": self.other_cores.map(round),
            "signing": self.signing, "connections_busy_fraction": round(self.busy),
            "buckets": self.buckets.iter().map(|(t, p)| json!({"throughput_per_s": round(*t), "p99_ms": p})).collect::<Vec<_>>(),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

struct Ctx {
    cli: Cli,
    rule: Rule,
    tck: u64,
    rows: Vec<Row>,
    api: Api,
    /// Where the check load's workspaces are created (`--setup-url`, else `api`).
    setup_api: Api,
}

impl Ctx {
    fn step_config(&self, t: &Target, rate: f64, secs: u64, bucket: Option<Duration>) -> StepConfig {
        StepConfig {
            rate,
            duration: Duration::from_secs(secs.max(1)),
            connections: t.connections,
            max_lag: Duration::from_millis(self.cli.max_lag_ms),
            timeout: Duration::from_secs(self.cli.timeout.max(1)),
            bucket,
        }
    }

    /// Runs one step against `t` and records it with the CPU it cost, then lets the system
    /// settle (see `settle`). For allowly, `/metrics` is read just before the step and right
    /// after its last answer (signed receipts and signing lag over the step), and the CPU per
    /// request is read *after* settling, so the signing of the step's last receipts, which
    /// finishes after the last answer, is charged to the step that caused it.
    async fn step(&mut self, t: &Target, phase: &'static str, rate: f64, secs: u64, bucket: Option<Duration>) -> Row {
        let cfg = self.step_config(t, rate, secs, bucket);
        let is_check = t.name == "check";
        let m_before = if is_check { scrape(&self.api).await } else { None };
        let before = cpu_now(t.watched);
        let r = gen::run_step(t.addr, t.requests.clone(), cfg).await;
        let after_run = cpu_now(t.watched);
        let m_after = if is_check { scrape(&self.api).await } else { None };
        settle(is_check.then_some(&self.api)).await;
        let after = if is_check { cpu_now(t.watched) } else { after_run };
        let mut row = self.row(t, phase, &r, &before, &after_run, &after, bucket);
        if is_check {
            row.signing = Some(signing_json(m_before.as_ref(), m_after.as_ref(), &row, r.elapsed.as_secs_f64()));
        }
        print_row(&row);
        if let Some(e) = &r.errors.first {
            println!("      first error: {e}");
        }
        if row.other_cores.is_some_and(|c| c > 0.2) {
            println!(
                "      note: other processes used {:.2} cores during this step: the figures are contaminated",
                row.other_cores.unwrap_or(0.0)
            );
        }
        if row.busy > 0.9 {
            println!(
                "      note: {:.0}% of the {} connections busy on average: if the server had CPU to spare, more connections could carry more",
                row.busy * 100.0,
                t.connections
            );
        }
        if before.signer_pids != after.signer_pids || (t.watched.signer && after.signer_pids == 0) {
            println!("      note: allowly-signer children {} -> {}", before.signer_pids, after.signer_pids);
        }
        self.rows.push(row.clone());
        row
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        t: &Target,
        phase: &'static str,
        r: &StepResult,
        b: &Cpu,
        a_run: &Cpu,
        a: &Cpu,
        bucket: Option<Duration>,
    ) -> Row {
        let o = Outcome {
            offered: r.offered,
            achieved: r.achieved(),
            errors: r.errors.total(),
            backlogged: r.backlogged,
            p99_ms: r.quantile_ms(0.99),
        };
        let per = |x: Option<u64>, y: Option<u64>| -> Option<f64> {
            procfs::cpu_us_per(y?.checked_sub(x?)?, self.tck, r.ok + r.errors.status)
        };
        let wall = match (b.at, a_run.at) {
            (Some(x), Some(y)) => y.duration_since(x).as_secs_f64(),
            _ => 0.0,
        };
        let server_cores = match (b.main, a_run.main) {
            (Some(x), Some(y)) if wall > 0.0 => Some(y.saturating_sub(x) as f64 / self.tck as f64 / wall),
            _ => None,
        };
        let d = |f: fn(&Cpu) -> Option<u64>| f(a_run).zip(f(b)).map(|(y, x)| y.saturating_sub(x));
        let other_cores = match (d(|c| c.system), wall > 0.0) {
            (Some(sys), true) => {
                let ours = d(|c| c.main).unwrap_or(0) + d(|c| c.signer).unwrap_or(0) + d(|c| c.generator).unwrap_or(0);
                Some(sys.saturating_sub(ours) as f64 / self.tck as f64 / wall)
            }
            _ => None,
        };
        let buckets = bucket.map_or_else(Vec::new, |d| {
            r.buckets.iter().map(|h| (h.len() as f64 / d.as_secs_f64(), quantile_ms(h, 0.99))).collect()
        });
        Row {
            target: t.name,
            phase,
            offered: r.offered,
            achieved: o.achieved,
            ok: r.ok,
            errors: o.errors,
            error_detail: json!({
                "statuses": r.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "io": r.errors.io, "timeout": r.errors.timeout, "connect": r.errors.connect,
                "not_sent": r.due.saturating_sub(r.sent), "first": r.errors.first,
            }),
            backlogged: r.backlogged,
            p50: r.quantile_ms(0.5),
            p90: r.quantile_ms(0.9),
            p99: o.p99_ms,
            p999: r.quantile_ms(0.999),
            max: quantile_ms(&r.latency, 1.0),
            send_lag_p99: quantile_ms(&r.send_lag, 0.99),
            late: if r.send_lag.is_empty() {
                0.0
            } else {
                r.send_lag.count_between(1001, u64::MAX) as f64 / r.send_lag.len() as f64
            },
            pass: self.rule.passes(&o),
            why: self.rule.why(&o),
            server_us: per(b.main, a.main),
            signer_us: per(b.signer, a.signer),
            generator_us: per(b.generator, a.generator),
            server_cores,
            other_cores,
            buckets,
            signing: None,
            busy: r.busy_fraction(),
        }
    }

    /// Geometric steps then bisection (see `knee`), returning the knee row if any.
    async fn search(&mut self, t: &Target, start: f64) -> Option<Row> {
        let s = Search {
            start,
            factor: self.cli.factor.max(1.1),
            min_rate: (start / 64.0).max(1.0),
            max_rate: self.cli.max_rate,
            resolution: self.cli.resolution,
            max_bisections: self.cli.bisections,
        };
        let mut tried = Vec::new();
        let mut rows: Vec<Row> = Vec::new();
        while let Some(rate) = knee::next_rate(&s, &tried) {
            let mut row = self.step(t, "search", rate, self.cli.seconds, None).await;
            if !row.pass && knee::confirm(&tried) {
                println!("  {}: first failure of the search, offered again to confirm it", t.name);
                row = self.step(t, "confirm", rate, self.cli.seconds, None).await;
                if row.pass {
                    // The failed try was noise: it is reported, but does not count as a failure.
                    let noise = self
                        .rows
                        .iter_mut()
                        .rev()
                        .find(|r| r.target == t.name && r.phase == "search" && r.offered == rate);
                    if let Some(r) = noise {
                        r.phase = "noise";
                    }
                }
            }
            tried.push((rate, row.pass));
            rows.push(row);
        }
        let k = knee::knee(&tried)?;
        if !knee::saturated(&tried) {
            println!("  {}: never saturated up to {} /s: the knee is only a lower bound", t.name, k);
        }
        rows.into_iter().find(|r| r.offered == k && r.pass)
    }
}

/// Waits up to `max` for the machine to be idle (under 0.2 cores busy over 2 s; at this point
/// nothing of ours is running), so the run does not start in the middle of someone else's.
/// Returns whether it was.
async fn wait_idle(max: Duration) -> bool {
    let tck = procfs::clock_ticks_per_second() as f64;
    let deadline = Instant::now() + max;
    loop {
        let (a, t0) = (procfs::system_busy(), Instant::now());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cores = match (a, procfs::system_busy()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / tck / t0.elapsed().as_secs_f64(),
            _ => return false,
        };
        if cores < 0.2 {
            return true;
        }
        if Instant::now() >= deadline {
            println!("the machine is not idle ({cores:.2} cores busy before the run): figures will be contaminated");
            return false;
        }
        println!("waiting for the machine to be idle ({cores:.2} cores busy)");
    }
}

/// Lets the system settle between steps: 1 s, and for allowly until the signer has caught up
/// (the signed counter stops moving, at most 15 s), so one step's backlog is not the next's.
async fn settle(api: Option<&Api>) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let Some(api) = api else { return };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while Instant::now() < deadline {
        let now = scrape(api).await.and_then(|s| s.sum(SIGNED));
        if now.is_some() && now == last {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

const SIGNED: &str = "allowly_engine_receipts_signed_total";
const LAG: &str = "allowly_engine_signing_lag_seconds";
const DECISIONS: &str = "allowly_engine_decisions_total";

async fn scrape(api: &Api) -> Option<prom::Scrape> {
    api.get_text("/metrics").await.ok().map(|t| prom::Scrape::parse(&t))
}

fn print_header() {
    println!(
        "{:<8} {:<9} {:>9} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7} {:>5}  verdict",
        "target",
        "phase",
        "offered",
        "achieved",
        "errors",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "lag p99",
        "srv µs",
        "sgn µs",
        "gen µs",
        "cores",
        "busy"
    );
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.1}"))
}

fn print_row(r: &Row) {
    println!(
        "{:<8} {:<9} {:>9.0} {:>9.0} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>8} {:>8} {:>7} {:>4.0}%  {}",
        r.target,
        r.phase,
        r.offered,
        r.achieved,
        r.errors,
        r.p50,
        r.p99,
        r.p999,
        r.send_lag_p99,
        opt(r.server_us),
        opt(r.signer_us),
        opt(r.generator_us),
        r.server_cores.map_or("-".into(), |c| format!("{c:.2}")),
        r.busy * 100.0,
        if r.pass { "ok".to_owned() } else { format!("FAIL ({})", r.why) }
    );
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0).then(|| round(a / b * 1000.0) / 1000.0)
}

async fn run(cli: Cli) -> Result<(), String> {
    let api = Api::from_url(&cli.url).await?;
    let setup_api = match &cli.setup_url {
        Some(u) => Api::from_url(u).await?,
        None => api.clone(),
    };
    for a in [&api, &setup_api] {
        if !a.addr.ip().is_loopback() {
            return Err(format!("{}: this load test only runs against loopback", a.addr));
        }
    }
    let rule = Rule { min_achieved: 0.95, max_p99_ms: cli.max_p99_ms };
    let mut ctx = Ctx { cli, rule, tck: procfs::clock_ticks_per_second(), rows: Vec::new(), api, setup_api };
    let server_pid = ctx
        .cli
        .server_pid
        .or_else(|| procfs::pid_listening_on(ctx.api.addr.port()))
        .or_else(|| procfs::pid_named("allowly"));
    match server_pid {
        Some(p) => println!(
            "server pid {p} ({}), allowly-signer children {:?}, {} clock ticks/s",
            procfs::stat(p).map_or("?".into(), |s| s.comm),
            procfs::signers_of(p),
            ctx.tck
        ),
        None => println!("server pid not found: CPU and memory of the server will not be reported (give --server-pid)"),
    }
    let started = Instant::now();
    let mut report = json!({
        "tool": "allowly-loadtest",
        "started_unix_s": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "url": ctx.cli.url, "server_pid": server_pid, "clock_ticks_per_s": ctx.tck,
        "machine": { "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
                     "loadavg_before": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim() },
        "settings": {
            "seconds_per_step": ctx.cli.seconds, "connections": ctx.cli.connections,
            "check_connections": ctx.cli.check_connections, "generator_threads": ctx.cli.threads,
            "knee_rule": format!(
                "highest offered rate with no errors, no backlog beyond {} ms, achieved >= 95% of offered and p99 <= {} ms; geometric steps x{} then geometric bisection to within {}% (at most {} bisections)",
                ctx.cli.max_lag_ms, ctx.cli.max_p99_ms, ctx.cli.factor, ctx.cli.resolution * 100.0, ctx.cli.bisections),
        },
    });
    let token_file = ctx.cli.admin_token_file.clone().unwrap_or_else(|| ctx.cli.data_dir.join("admin-token"));
    let admin = std::fs::read_to_string(&token_file).map(|s| s.trim().to_owned());

    let mut panels = Vec::new();
    if ctx.cli.scale {
        let admin = admin.map_err(|e| format!("{}: {e}", token_file.display()))?;
        report["scale"] = scale_mode(&mut ctx, &admin, server_pid).await?;
        panels.push(scale_panel(&report["scale"]));
    } else if let Some(rate) = ctx.cli.timeline {
        let admin = admin.map_err(|e| format!("{}: {e}", token_file.display()))?;
        report["timeline"] = timeline_mode(&mut ctx, &admin, server_pid, rate).await?;
    } else if let Some(minutes) = ctx.cli.sustained {
        let admin = admin.map_err(|e| format!("{}: {e}", token_file.display()))?;
        let (v, p) = sustained_mode(&mut ctx, &admin, server_pid, minutes).await?;
        report["sustained"] = v;
        panels.extend(p);
    } else {
        let needs_admin = ctx.cli.targets.iter().any(|t| t == "check");
        let admin = if needs_admin { Some(admin.map_err(|e| format!("{}: {e}", token_file.display()))?) } else { None };
        let (v, p) = standard(&mut ctx, admin.as_deref(), server_pid).await?;
        report["standard"] = v;
        panels.extend(p);
    }
    report["steps"] = Value::Array(ctx.rows.iter().map(Row::json).collect());
    report["elapsed_s"] = json!(round(started.elapsed().as_secs_f64()));
    report["loadavg_after"] = json!(std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&ctx.cli.out, text).map_err(|e| format!("{}: {e}", ctx.cli.out.display()))?;
    let svg = chart::render("allowly-loadtest", &panels);
    std::fs::write(&ctx.cli.chart, svg).map_err(|e| format!("{}: {e}", ctx.cli.chart.display()))?;
    println!(
        "\nreport: {}  chart: {}  ({:.0} s)",
        ctx.cli.out.display(),
        ctx.cli.chart.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_target(ctx: &Ctx, prepared: &[setup::Prepared], server_pid: Option<u32>) -> Target {
    let mut reqs = Vec::new();
    for p in prepared {
        for a in &p.authorizations {
            reqs.push(http::build_request(
                "POST",
                "/v1/check",
                &ctx.api.host,
                Some(&p.key),
                Some(&setup::check_body(a)),
            ));
        }
    }
    Target {
        name: "check",
        addr: ctx.api.addr,
        requests: Arc::new(reqs),
        connections: ctx.cli.check_connections,
        watched: Watched { main: server_pid, signer: true },
    }
}

const COLORS: [(&str, &str); 3] = [("bare", "#1f77b4"), ("healthz", "#2ca02c"), ("check", "#d62728")];

fn color(name: &str) -> &'static str {
    COLORS.iter().find(|c| c.0 == name).map_or("#000", |c| c.1)
}

async fn standard(
    ctx: &mut Ctx,
    admin: Option<&str>,
    server_pid: Option<u32>,
) -> Result<(Value, Vec<chart::Panel>), String> {
    let mut out = json!({});
    // Set-up first (not timed).
    let check = match admin {
        Some(admin) => {
            let prepared = setup::small(&ctx.setup_api, admin, ctx.cli.workspaces).await?;
            println!("set up {} workspaces with one authorization each (a check on each: allow)", prepared.len());
            out["workspaces"] = json!(prepared.iter().map(|p| p.workspace.clone()).collect::<Vec<_>>());
            Some(check_target(ctx, &prepared, server_pid))
        }
        None => None,
    };
    out["idle_at_start"] = json!(wait_idle(Duration::from_secs(ctx.cli.wait_idle)).await);
    // The fsync floor, before any load, on the server's disk.
    match fsync::measure(&ctx.cli.data_dir, ctx.cli.fsync_bytes, ctx.cli.fsync_count, Duration::from_secs(10)) {
        Ok(h) => {
            let (p50, p99) = (quantile_ms(&h, 0.5), quantile_ms(&h, 0.99));
            println!(
                "fsync baseline: {} x write({} B)+fdatasync in {}: median {p50:.3} ms, p99 {p99:.3} ms",
                h.len(),
                ctx.cli.fsync_bytes,
                ctx.cli.data_dir.display()
            );
            out["fsync"] = json!({"dir": ctx.cli.data_dir, "bytes": ctx.cli.fsync_bytes, "count": h.len(), "median_ms": p50, "p99_ms": p99});
        }
        Err(e) => {
            println!("fsync baseline skipped: {e}");
            out["fsync"] = json!({"error": e});
        }
    }
    let bare = bare::Bare::start()?;
    let healthz_req = |host: &str| Arc::new(vec![http::build_request("GET", "/healthz", host, None, None)]);
    let mut targets = Vec::new();
    for name in ctx.cli.targets.clone() {
        match name.as_str() {
            "bare" => targets.push(Target {
                name: "bare",
                addr: bare.addr,
                requests: healthz_req(&bare.addr.to_string()),
                connections: ctx.cli.connections,
                watched: Watched { main: Some(bare.pid()), signer: false },
            }),
            "healthz" => targets.push(Target {
                name: "healthz",
                addr: ctx.api.addr,
                requests: healthz_req(&ctx.api.host),
                connections: ctx.cli.connections,
                watched: Watched { main: server_pid, signer: true },
            }),
            "check" => targets.extend(check.clone()),
            other => return Err(format!("unknown target {other:?} (bare, healthz, check)")),
        }
    }
    let db = ctx.cli.data_dir.join("db");
    let du_before = procfs::du(&db);
    print_header();
    let mut knees: Vec<(Target, Option<Row>)> = Vec::new();
    for t in &targets {
        let is_check = t.name == "check";
        let start = if is_check { ctx.cli.check_start_rate } else { ctx.cli.http_start_rate };
        let k = ctx.search(t, start).await;
        knees.push((t.clone(), k));
    }
    // Half of each knee, one after the other.
    let mut halves: Vec<Option<Row>> = Vec::new();
    for (t, k) in &knees {
        let h = match k {
            Some(k) => Some(ctx.step(t, "half", (k.offered / 2.0).round(), ctx.cli.seconds, None).await),
            None => None,
        };
        halves.push(h);
    }
    // Signing at 80 % of the check knee.
    let check_knee = knees.iter().find(|(t, _)| t.name == "check").and_then(|(_, k)| k.clone());
    if let (Some(t), Some(k)) = (check.as_ref(), check_knee.as_ref()) {
        let row = ctx.step(t, "signing", (0.8 * k.offered).round(), ctx.cli.signing_seconds, None).await;
        out["signing"] = row.signing.clone().unwrap_or(Value::Null);
        println!("signing at 80% of the check knee: {}", out["signing"]);
    }
    if check.is_some() {
        let du_after = procfs::du(&db);
        let receipts: u64 = ctx.rows.iter().filter(|r| r.target == "check").map(|r| r.ok).sum();
        out["disk"] = json!({
            "db": db, "receipts_written": receipts,
            "apparent_bytes_before": du_before.0, "apparent_bytes_after": du_after.0,
            "allocated_bytes_before": du_before.1, "allocated_bytes_after": du_after.1,
            "apparent_bytes_per_receipt": (receipts > 0).then(|| round(du_after.0.saturating_sub(du_before.0) as f64 / receipts as f64)),
            "allocated_bytes_per_receipt": (receipts > 0).then(|| round(du_after.1.saturating_sub(du_before.1) as f64 / receipts as f64)),
            "note": "before compaction (RocksDB WAL + memtable flushes as they stand; compaction cannot be triggered from outside); includes the signed marks, Merkle nodes and checkpoints the pipeline wrote",
        });
    }
    drop(bare);
    // Summary.
    let get = |name: &str| knees.iter().position(|(t, _)| t.name == name);
    let mut summary = serde_json::Map::new();
    println!("\n== summary (same generator, same run; knee rule in the README)");
    println!(
        "{:<8} {:>9} {:>10} {:>9} {:>9} {:>10} {:>12} {:>12} {:>12}  other load (cores, max over the target's steps)",
        "target", "knee/s", "saturated", "p50@½", "p99@½", "p99.9@½", "srv µs@knee", "srv µs@½", "sgn µs@knee",
    );
    for (i, (t, k)) in knees.iter().enumerate() {
        let h = halves[i].as_ref();
        let saturated = ctx.rows.iter().any(|r| r.target == t.name && r.phase == "search" && !r.pass);
        let other = ctx.rows.iter().filter(|r| r.target == t.name).filter_map(|r| r.other_cores).reduce(f64::max);
        println!(
            "{:<8} {:>9} {:>10} {:>9} {:>9} {:>10} {:>12} {:>12} {:>12}  {}",
            t.name,
            k.as_ref().map_or("-".into(), |k| format!("{:.0}", k.offered)),
            if saturated { "yes" } else { "NO (bound)" },
            h.map_or("-".into(), |h| format!("{:.2}", h.p50)),
            h.map_or("-".into(), |h| format!("{:.2}", h.p99)),
            h.map_or("-".into(), |h| format!("{:.2}", h.p999)),
            opt(k.as_ref().and_then(|k| k.server_us)),
            opt(h.and_then(|h| h.server_us)),
            opt(k.as_ref().and_then(|k| k.signer_us)),
            match other {
                Some(o) if o > 0.2 => format!("{o:.2} CONTAMINATED"),
                Some(o) => format!("{o:.2}"),
                None => "-".into(),
            }
        );
        summary.insert(
            t.name.into(),
            json!({
                "knee_per_s": k.as_ref().map(|k| k.offered), "saturated": saturated,
                "max_other_cores_used": other.map(round), "contaminated": other.is_some_and(|o| o > 0.2),
                "knee_step": k.as_ref().map(Row::json), "half_knee_step": h.map(Row::json),
                "server_cpu_us_per_request_at_knee": k.as_ref().and_then(|k| k.server_us),
                "server_cpu_us_per_request_at_half": h.and_then(|h| h.server_us),
                "signer_cpu_us_per_receipt_at_knee": if t.name == "check" { k.as_ref().and_then(|k| k.signer_us) } else { None },
                "signer_cpu_us_per_receipt_at_half": if t.name == "check" { h.and_then(|h| h.signer_us) } else { None },
            }),
        );
    }
    let knee_of = |n: &str| get(n).and_then(|i| knees[i].1.as_ref().map(|k| k.offered));
    let half_of = |n: &str| get(n).and_then(|i| halves[i].clone());
    let srv = |n: &str, half: bool| {
        if half {
            half_of(n).and_then(|h| h.server_us)
        } else {
            get(n).and_then(|i| knees[i].1.as_ref().and_then(|k| k.server_us))
        }
    };
    let fsync_median = out["fsync"]["median_ms"].as_f64();
    let unsaturated: Vec<&str> = knees
        .iter()
        .filter(|(t, _)| !ctx.rows.iter().any(|r| r.target == t.name && r.phase == "search" && !r.pass))
        .map(|(t, _)| t.name)
        .collect();
    let ratios = json!({
        "unsaturated_targets": unsaturated,
        "note": "a target in unsaturated_targets has only a lower bound for its knee: a ratio over its knee is an upper bound, and under it a lower bound",
        "check_knee_over_healthz_knee": ratio(knee_of("check"), knee_of("healthz")),
        "check_knee_over_bare_knee": ratio(knee_of("check"), knee_of("bare")),
        "healthz_knee_over_bare_knee": ratio(knee_of("healthz"), knee_of("bare")),
        "check_p99_at_half_over_fsync_median": ratio(half_of("check").map(|h| h.p99), fsync_median),
        "check_over_healthz_server_cpu_per_request_at_knee": ratio(srv("check", false), srv("healthz", false)),
        "check_over_healthz_server_cpu_per_request_at_half": ratio(srv("check", true), srv("healthz", true)),
        "check_p99_at_half_over_bare_p99_at_half": ratio(half_of("check").map(|h| h.p99), half_of("bare").map(|h| h.p99)),
    });
    println!("ratios: {ratios}");
    if let Some(d) = out.get("disk") {
        println!("disk: {d}");
    }
    out["targets"] = Value::Object(summary);
    out["ratios"] = ratios;
    // Chart: latency vs offered rate for each target.
    let mut series = Vec::new();
    let mut marks = Vec::new();
    for (t, k) in &knees {
        let pts = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
            ctx.rows
                .iter()
                .filter(|r| r.target == t.name && r.phase != "signing" && r.ok > 0)
                .map(|r| (r.offered, f(r)))
                .collect()
        };
        series.push(chart::Series {
            name: format!("{} p99", t.name),
            color: color(t.name),
            dashed: false,
            points: pts(|r| r.p99),
        });
        series.push(chart::Series {
            name: format!("{} p50", t.name),
            color: color(t.name),
            dashed: true,
            points: pts(|r| r.p50),
        });
        if let Some(k) = k {
            marks.push((k.offered, format!("{} knee {:.0}/s", t.name, k.offered), color(t.name)));
        }
    }
    let panel = chart::Panel {
        title: "latency from the due instant vs offered rate (open loop)".into(),
        x_label: "offered requests/s (log)".into(),
        y_label: "latency ms (log)".into(),
        log_x: true,
        log_y: true,
        series,
        marks,
    };
    Ok((out, vec![panel]))
}

fn signing_json(before: Option<&prom::Scrape>, after: Option<&prom::Scrape>, row: &Row, secs: f64) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return json!({"error": "could not read /metrics"});
    };
    let signed = match (b.sum(SIGNED), a.sum(SIGNED)) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let decisions = match (b.sum(DECISIONS), a.sum(DECISIONS)) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let lag_p99 = prom::quantile_between(&b.buckets(LAG), &a.buckets(LAG), 0.99);
    let lag_p50 = prom::quantile_between(&b.buckets(LAG), &a.buckets(LAG), 0.5);
    json!({
        "offered_per_s": row.offered, "checks_ok": row.ok, "checks_per_s": round(row.ok as f64 / secs),
        "decisions_metric_delta": decisions,
        "signed": signed, "signed_per_s": signed.map(|s| round(s / secs)),
        "signed_over_checks": signed.and_then(|s| ratio(Some(s), Some(row.ok as f64))),
        "signing_lag_p50_s_at_most": lag_p50.filter(|x| x.is_finite()),
        "signing_lag_p99_s_at_most": lag_p99.filter(|x| x.is_finite()),
        "signing_lag_p99_over_last_bucket": lag_p99.is_some_and(f64::is_infinite),
        "metric_names": [SIGNED, LAG, DECISIONS],
        "note": "counters read just before the step and right after its last answer; the lag quantile is the upper bound of the histogram bucket that holds it",
    })
}

/// Finds the check knee (or takes `--check-knee`), then offers 80 % of it for `minutes`.
/// One check step at `rate`, reported per `--timeline-ms` slice: when latency spikes and how
/// often (a flush, a compaction, a signer round), which a whole-step p99 cannot say.
async fn timeline_mode(ctx: &mut Ctx, admin: &str, server_pid: Option<u32>, rate: f64) -> Result<Value, String> {
    let prepared = setup::small(&ctx.setup_api, admin, ctx.cli.workspaces).await?;
    let t = check_target(ctx, &prepared, server_pid);
    print_header();
    let slice = Duration::from_millis(ctx.cli.timeline_ms.max(1));
    let row = ctx.step(&t, "timeline", rate, ctx.cli.seconds, Some(slice)).await;
    let mut slices = Vec::new();
    for (i, (tp, p99)) in row.buckets.iter().enumerate() {
        let at_ms = i as u64 * ctx.cli.timeline_ms;
        println!("  {at_ms:>7} ms {tp:>8.0}/s p99 {p99:>8.2} ms");
        slices.push(json!({ "at_ms": at_ms, "throughput_per_s": round(*tp), "p99_ms": p99 }));
    }
    Ok(json!({ "rate_per_s": rate, "slice_ms": ctx.cli.timeline_ms, "slices": slices }))
}

async fn sustained_mode(
    ctx: &mut Ctx,
    admin: &str,
    server_pid: Option<u32>,
    minutes: u64,
) -> Result<(Value, Vec<chart::Panel>), String> {
    let prepared = setup::small(&ctx.setup_api, admin, ctx.cli.workspaces).await?;
    let t = check_target(ctx, &prepared, server_pid);
    print_header();
    let knee = match ctx.cli.check_knee {
        Some(k) => k,
        None => {
            ctx.search(&t, ctx.cli.check_start_rate).await.map(|r| r.offered).ok_or("no check rate passed: no knee")?
        }
    };
    let rate = (0.8 * knee).round();
    let db = ctx.cli.data_dir.join("db");
    let du0 = procfs::du(&db);
    let rss0 = rss(server_pid);
    println!("sustained: {rate}/s (80% of {knee}/s) for {minutes} min");
    let minute = Duration::from_secs(60);
    // A sampler beside the load: every minute the server's and signer's CPU, the signed counter
    // and RSS, so signing and CPU per check can be followed minute by minute.
    type Sample = (Cpu, Option<f64>, Value);
    let samples: Arc<std::sync::Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (api, samples, watched) = (ctx.api.clone(), samples.clone(), t.watched);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(minute);
            loop {
                tick.tick().await;
                let signed = scrape(&api).await.and_then(|s| s.sum(SIGNED));
                if let Ok(mut g) = samples.lock() {
                    g.push((cpu_now(watched), signed, rss(watched.main)));
                }
            }
        })
    };
    let started_micros =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let row = ctx.step(&t, "sustained", rate, minutes.max(1) * 60, Some(minute)).await;
    sampler.abort();
    // RocksDB's background work per minute, from its own log (absent for a server whose data
    // directory this tool cannot read: then the figures are left out).
    let rocks = std::fs::read_to_string(db.join("LOG"))
        .ok()
        .map(|log| rocks_log::per_minute(&log, started_micros, row.buckets.len()));
    let samples: Vec<Sample> = samples.lock().map(|g| g.clone()).unwrap_or_default();
    let du1 = procfs::du(&db);
    let rss1 = rss(server_pid);
    let mut per_minute = Vec::new();
    for (i, (tp, p99)) in row.buckets.iter().enumerate() {
        let (a, b) = (samples.get(i), samples.get(i + 1));
        let checks = tp * 60.0;
        let d = |f: fn(&Cpu) -> Option<u64>| -> Option<f64> {
            let (a, b) = (f(&a?.0)?, f(&b?.0)?);
            procfs::cpu_us_per(b.checked_sub(a)?, ctx.tck, checks as u64)
        };
        let signed = match (a.and_then(|x| x.1), b.and_then(|x| x.1)) {
            (Some(x), Some(y)) => Some(round((y - x) / 60.0)),
            _ => None,
        };
        let (srv, sgn) = (d(|c| c.main), d(|c| c.signer));
        let rm = rocks.as_ref().and_then(|r| r.get(i));
        println!(
            "  minute {:>2}: {:>8.0}/s p99 {:>8.2} ms  signed {:>8}/s  server {:>6} µs/check  signer {:>6} µs/receipt  compactions {:>5} s CPU",
            i + 1,
            tp,
            p99,
            signed.map_or("-".into(), |s| format!("{s:.0}")),
            opt(srv),
            opt(sgn),
            opt(rm.map(|m| m.compaction_cpu_s)),
        );
        if let Some(m) = rm.filter(|m| !m.compaction_cpu_s_by_space.is_empty()) {
            let spaces: Vec<String> = m.compaction_cpu_s_by_space.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
            println!("             compaction CPU s by key space: {}", spaces.join(", "));
        }
        per_minute.push(json!({
            "throughput_per_s": round(*tp), "p99_ms": p99, "signed_per_s": signed,
            "server_cpu_us_per_check": srv.map(round), "signer_cpu_us_per_receipt": sgn.map(round),
            "rss_kib_end": b.map(|x| x.2.clone()),
            "rocksdb": rm.map(|m| json!({
                "compaction_cpu_s": round(m.compaction_cpu_s), "compaction_written_bytes": m.compaction_written_bytes,
                "compactions": m.compactions, "flushes": m.flushes,
                "compaction_cpu_s_by_space": m.compaction_cpu_s_by_space.iter()
                    .map(|(k, v)| (k.clone(), json!(round(*v)))).collect::<serde_json::Map<_, _>>(),
            })),
        }));
    }
    let first = row.buckets.first().copied();
    let last = row.buckets.last().copied();
    let v = json!({
        "check_knee_per_s": knee, "rate_per_s": rate, "minutes": minutes,
        "per_minute": per_minute,
        "per_minute_note": "throughput and p99 by due instant; CPU and signed/s from samples taken every 60 s beside the load (aligned to within the sampler's wake-up); rocksdb: compactions and flushes that finished in the minute, from the server's db/LOG (its CPU is part of the server's)",
        "last_over_first_throughput": ratio(last.map(|x| x.0), first.map(|x| x.0)),
        "last_over_first_p99": ratio(last.map(|x| x.1), first.map(|x| x.1)),
        "signing": row.signing,
        "db_apparent_bytes_before": du0.0, "db_apparent_bytes_after": du1.0,
        "rss_kib_before": rss0, "rss_kib_after": rss1,
    });
    println!("sustained: {v}");
    let xs = |f: fn(&(f64, f64)) -> f64| -> Vec<(f64, f64)> {
        row.buckets.iter().enumerate().map(|(i, b)| ((i + 1) as f64, f(b))).collect()
    };
    let panels = vec![
        chart::Panel {
            title: format!("sustained {rate}/s: throughput per minute"),
            x_label: "minute".into(),
            y_label: "answers/s".into(),
            log_x: false,
            log_y: false,
            series: vec![chart::Series {
                name: "check ok/s".into(),
                color: color("check"),
                dashed: false,
                points: xs(|b| b.0),
            }],
            marks: vec![],
        },
        chart::Panel {
            title: "sustained: p99 per minute".into(),
            x_label: "minute".into(),
            y_label: "p99 ms".into(),
            log_x: false,
            log_y: false,
            series: vec![chart::Series {
                name: "check p99".into(),
                color: color("check"),
                dashed: false,
                points: xs(|b| b.1),
            }],
            marks: vec![],
        },
    ];
    Ok((v, panels))
}

fn rss(server_pid: Option<u32>) -> Value {
    let Some(p) = server_pid else { return Value::Null };
    let signer: Vec<Option<u64>> = procfs::signers_of(p).into_iter().map(procfs::rss_kib).collect();
    json!({"server": procfs::rss_kib(p), "signer": signer})
}

/// Many workspaces and authorizations, then the same fixed check rate spread over all of them
/// and over 8 of them.
async fn scale_mode(ctx: &mut Ctx, admin: &str, server_pid: Option<u32>) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(ctx.cli.scale_setup_minutes * 60);
    println!(
        "scale set-up: {} workspaces, {} authorizations, {} connections, at most {} min",
        ctx.cli.scale_workspaces, ctx.cli.scale_authorizations, ctx.cli.scale_concurrency, ctx.cli.scale_setup_minutes
    );
    let rss0 = rss(server_pid);
    let (prepared, made, ws_s, auth_s) = setup::scale(
        &ctx.api,
        admin,
        ctx.cli.scale_workspaces,
        ctx.cli.scale_authorizations,
        ctx.cli.scale_concurrency,
        deadline,
    )
    .await?;
    let rss1 = rss(server_pid);
    let retried = |i: usize| ctx.api.retried[i].load(std::sync::atomic::Ordering::Relaxed);
    // The server's own count of requests refused because the signer was (taken for) down.
    let failed_closed = scrape(&ctx.api).await.and_then(|s| s.sum("allowly_engine_failed_closed_total"));
    println!(
        "created {} workspaces in {ws_s:.0} s, {made} authorizations in {auth_s:.0} s ({:.0}/s); RSS {rss1}; \
         retried 429: {}, 503: {}; server failed_closed_total: {failed_closed:?}",
        prepared.len(),
        made as f64 / auth_s.max(1e-3),
        retried(0),
        retried(1),
    );
    let mut out = json!({
        "workspaces": prepared.len(), "authorizations": made,
        "workspaces_seconds": round(ws_s), "authorizations_seconds": round(auth_s),
        "rss_kib_before_setup": rss0, "rss_kib_after_setup": rss1,
        "setup_retried": {"http_429": retried(0), "http_503": retried(1)},
        "failed_closed_total_after_setup": failed_closed,
    });
    let all = check_target(ctx, &prepared, server_pid);
    let few = check_target(ctx, &prepared[..prepared.len().min(8)], server_pid);
    print_header();
    for (label, t) in [("all_workspaces", all), ("eight_workspaces", few)] {
        let row = ctx.step(&t, "scale", ctx.cli.scale_rate, ctx.cli.scale_seconds, None).await;
        let s503 = row.error_detail["statuses"]["503"].as_u64().unwrap_or(0);
        let s429 = row.error_detail["statuses"]["429"].as_u64().unwrap_or(0);
        out[label] = json!({
            "offered_per_s": row.offered, "achieved_per_s": round(row.achieved), "p99_ms": row.p99, "p50_ms": row.p50,
            "http_503": s503, "http_429": s429, "errors": row.errors, "rss_kib_after": rss(server_pid),
        });
    }
    // Memory once the load is gone and idle workspaces are unloaded (polls the server's gauge:
    // this is a measurement, not a synchronization).
    let idle_from = Instant::now();
    let live = || async { scrape(&ctx.api).await.and_then(|s| s.sum("allowly_engine_actors_live")) };
    let mut actors = live().await;
    while actors.is_some_and(|n| n > 0.0) && idle_from.elapsed() < Duration::from_secs(ctx.cli.scale_idle_seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        actors = live().await;
    }
    out["idle"] = json!({
        "seconds_waited": round(idle_from.elapsed().as_secs_f64()), "actors_live": actors, "rss_kib": rss(server_pid),
    });
    println!("scale: {out}");
    Ok(out)
}

/// Scale mode's chart: p50 and p99 of the same rate spread over all workspaces (x = 1) and
/// over eight (x = 2).
fn scale_panel(v: &Value) -> chart::Panel {
    let pts = |key: &str| -> Vec<(f64, f64)> {
        ["all_workspaces", "eight_workspaces"]
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some(((i + 1) as f64, v[s][key].as_f64()?)))
            .collect()
    };
    chart::Panel {
        title: format!(
            "scale: {} workspaces, {} authorizations; same check rate",
            v["workspaces"].as_u64().unwrap_or(0),
            v["authorizations"].as_u64().unwrap_or(0)
        ),
        x_label: "1 = spread over all workspaces, 2 = over eight".into(),
        y_label: "latency ms".into(),
        log_x: false,
        log_y: false,
        series: vec![
            chart::Series { name: "p99".into(), color: color("check"), dashed: false, points: pts("p99_ms") },
            chart::Series { name: "p50".into(), color: color("check"), dashed: true, points: pts("p50_ms") },
        ],
        marks: vec![],
    }
}

//! `allowly-loadtest`: an open-loop load generator for `POST /v1/check`, run beside a bare
//! hyper "hello" server driven by the same generator in the same run, so the figures are
//! ratios that mean something on a shared machine (DESIGN §7).
//!
//! Open loop: requests are due at fixed instants (`start + i / rate`), whatever happened to the
//! previous ones, and latency is measured from the instant a request was *due*, not from when a
//! connection got round to sending it. A server that stalls therefore shows the stall in every
//! request that queued behind it (no coordinated omission).
//!
//! Each step offers one rate for `--duration`; the knee is the highest offered rate at which
//! the achieved rate stays within 5 % of it with no errors. Then both targets run at half their
//! own knee to compare p99.
//!
//! ```text
//! allowly-loadtest --url http://127.0.0.1:8080 --admin-token-file allowly-data/admin-token
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

#[derive(Debug, Parser)]
#[command(name = "allowly-loadtest", about = "Open-loop load test of /v1/check against a bare hyper baseline")]
struct Cli {
    /// A running `allowly serve`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The instance admin token (`<data-dir>/admin-token`): used to create a workspace, a
    /// `check` key and an authorization for the run.
    #[arg(long)]
    admin_token_file: PathBuf,
    /// Offered rates (requests/s) to step through, ascending.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,4000,8000,16000")]
    rates: Vec<u64>,
    /// Length of each step.
    #[arg(long, default_value = "5")]
    seconds: u64,
    /// Concurrent HTTP/1.1 keep-alive connections.
    #[arg(long, default_value = "64")]
    connections: usize,
    /// Distinct workspaces the checks are spread over.
    #[arg(long, default_value = "4")]
    workspaces: usize,
}

/// Where requests go and what they carry.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
    /// (authorization header, body) per workspace; requests cycle through them.
    requests: Arc<Vec<(String, Bytes)>>,
}

/// What one step measured.
#[derive(Debug, Clone)]
struct Step {
    offered: u64,
    achieved: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let token = std::fs::read_to_string(&cli.admin_token_file)?.trim().to_owned();
    let allowly = setup_allowly(&cli.url, &token, cli.workspaces).await?;
    let baseline = start_baseline().await?;
    let dur = Duration::from_secs(cli.seconds);
    let mut table = Vec::new();
    for (name, target) in [("bare hyper", &baseline), ("allowly /v1/check", &allowly)] {
        let mut steps = Vec::new();
        for &rate in &cli.rates {
            let s = step(target, rate, dur, cli.connections).await;
            println!(
                "{name:<18} offered {:>6}/s achieved {:>8.0}/s errors {:>5} p50 {:>7.2} ms p99 {:>8.2} ms max {:>8.2} ms",
                s.offered, s.achieved, s.errors, s.p50_ms, s.p99_ms, s.max_ms
            );
            let saturated = s.errors > 0 || s.achieved < 0.95 * s.offered as f64;
            steps.push(s);
            if saturated {
                break;
            }
        }
        let knee = steps.iter().rfind(|s| s.errors == 0 && s.achieved >= 0.95 * s.offered as f64).cloned();
        let half = match &knee {
            Some(k) => Some(step(target, (k.offered / 2).max(1), dur, cli.connections).await),
            None => None,
        };
        table.push((name, knee, half));
    }
    println!("\n== summary (ratios: allowly / bare hyper, same generator, same run)");
    for (name, knee, half) in &table {
        match (knee, half) {
            (Some(k), Some(h)) => println!(
                "{name:<18} knee {:>6}/s; at half the knee ({}/s): p99 {:.2} ms",
                k.offered, h.offered, h.p99_ms
            ),
            _ => println!("{name:<18} no rate was sustained without errors"),
        }
    }
    if let [(_, Some(bk), Some(bh)), (_, Some(ak), Some(ah))] = table.as_slice() {
        println!("knee throughput ratio: {:.2} (target >= 0.70)", ak.offered as f64 / bk.offered as f64);
        println!("p99 at half the knee ratio: {:.2} (target <= 2.0)", ah.p99_ms / bh.p99_ms.max(0.001));
    }
    Ok(())
}

/// Offers `rate` requests/s for `dur` over `conns` connections; latency from each request's due
/// instant.
async fn step(target: &Target, rate: u64, dur: Duration, conns: usize) -> Step {
    let total = rate.saturating_mul(dur.as_secs()).max(1);
    // The queue of due requests: bounded so a hopeless rate cannot eat memory (a full queue
    // counts as an error, like a client timeout would).
    let (tx, rx) = mpsc::channel::<(u64, Instant)>(65_536);
    let rx = Arc::new(Mutex::new(rx));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conns {
        let (target, rx, hist, errors) = (target.clone(), rx.clone(), hist.clone(), errors.clone());
        workers.push(tokio::spawn(async move { worker(target, rx, hist, errors).await }));
    }
    let mut dropped = 0u64;
    for i in 0..total {
        let due = start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate.max(1));
        tokio::time::sleep_until(due.into()).await;
        if tx.try_send((i, due)).is_err() {
            dropped += 1;
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = hist.lock().await;
    let errors = errors.load(std::sync::atomic::Ordering::Relaxed) + dropped;
    Step {
        offered: rate,
        achieved: h.len() as f64 / elapsed,
        errors,
        p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: h.max() as f64 / 1000.0,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn worker(
    t: Target,
    rx: Arc<Mutex<mpsc::Receiver<(u64, Instant)>>>,
    hist: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut sender = connect(t.addr).await;
    loop {
        let Some((i, due)) = rx.lock().await.recv().await else { return };
        let (auth, body) = &t.requests[(i as usize) % t.requests.len()];
        let ok = match sender.as_mut() {
            Some(s) => send(s, &t, auth, body.clone()).await,
            None => false,
        };
        if ok {
            let us = due.elapsed().as_micros().max(1) as u64;
            let _ = hist.lock().await.record(us.min(60_000_000));
        } else {
            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            sender = connect(t.addr).await;
        }
    }
}

async fn send(s: &mut Sender, t: &Target, auth: &str, body: Bytes) -> bool {
    let req = http::Request::post(&t.path)
        .header("host", &t.host)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(Full::new(body));
    let Ok(req) = req else { return false };
    if s.ready().await.is_err() {
        return false;
    }
    match s.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            ok && resp.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// One JSON request to allowly's API (setup only; not timed).
async fn call(
    addr: SocketAddr,
    host: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let mut s = connect(addr).await.ok_or("cannot connect")?;
    let req = http::Request::post(path)
        .header("host", host)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("{path}: {status} {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

async fn setup_allowly(url: &str, admin: &str, workspaces: usize) -> Result<Target, Box<dyn std::error::Error>> {
    let host = url.strip_prefix("http://").ok_or("only http:// URLs")?.trim_end_matches('/').to_owned();
    let addr: SocketAddr = tokio::net::lookup_host(&host).await?.next().ok_or("cannot resolve the URL's host")?;
    let mut requests = Vec::new();
    for i in 0..workspaces.max(1) {
        let ws =
            call(addr, &host, "/v1/workspaces", admin, serde_json::json!({"name": format!("loadtest {i}")})).await?;
        let ws = ws["id"].as_str().ok_or("no workspace id")?.to_owned();
        let key = call(
            addr,
            &host,
            &format!("/v1/workspaces/{ws}/api-keys"),
            admin,
            serde_json::json!({"roles": ["admin", "check"]}),
        )
        .await?;
        let key = key["secret"].as_str().ok_or("no key secret")?.to_owned();
        let grant = serde_json::json!({"subject": "load", "scopes": ["files.*"], "resources": ["doc:*"]});
        let auth = call(addr, &host, "/v1/authorizations", &key, grant).await?;
        let auth = auth["authorization"]["id"].as_str().ok_or("no authorization id")?.to_owned();
        let body = serde_json::json!({"authorization_id": auth, "scopes": ["files.read"], "resource": "doc:42"});
        requests.push((format!("Bearer {key}"), Bytes::from(body.to_string())));
    }
    Ok(Target { addr, host, path: "/v1/check".into(), requests: Arc::new(requests) })
}

/// The baseline: hyper answering a small JSON document to every request, after reading the body.
async fn start_baseline() -> Result<Target, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{\"hello\":\"world\"}"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let body = Bytes::from(
        serde_json::json!({"authorization_id": "au_x", "scopes": ["files.read"], "resource": "doc:42"}).to_string(),
    );
    Ok(Target {
        addr,
        host: addr.to_string(),
        path: "/hello".into(),
        requests: Arc::new(vec![("Bearer x".into(), body)]),
    })
}

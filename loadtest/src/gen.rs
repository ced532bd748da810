//! One open-loop step: offer `rate` requests/s for `duration` over a fixed set of keep-alive
//! connections, one request in flight per connection.
//!
//! Request `i` is *due* at `start + i / rate`, whatever happened to the ones before. Each
//! connection, when free, claims the next index (one shared atomic counter, no channel) and
//! sends it at its due instant. If every connection is busy, due requests wait, and their
//! latency counts from the due instant: a stall shows in every request that queued behind it
//! (no coordinated omission). A request that is sent later than `max_lag` after it was due
//! means the backlog of due-but-unsent requests exceeds `rate × max_lag`: the step stops there
//! and is marked backlogged (over the knee).
//!
//! tokio's timer has millisecond resolution, so an idle connection sleeps until 1 ms before the
//! due instant and sends when it wakes: a request may leave up to ~1 ms early, never late
//! because of the timer. Latency is measured from `min(sent, due)`, so an early send is timed
//! from when it actually left and a late one from when it was due.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::http::Conn;

/// Latencies are recorded in microseconds up to this (a minute).
const MAX_US: u64 = 60_000_000;
/// How early an idle connection wakes before a due instant (the timer's resolution).
const EARLY: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct StepConfig {
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub max_lag: Duration,
    pub timeout: Duration,
    /// Also keep per-interval histograms (sustained mode: per minute), by due instant.
    pub bucket: Option<Duration>,
}

/// Errors of one step, by kind.
#[derive(Debug, Clone, Default)]
pub struct Errors {
    /// Answers that were not 2xx (their statuses are in `StepResult::statuses`).
    pub status: u64,
    pub io: u64,
    pub timeout: u64,
    pub connect: u64,
    /// The first error seen, for the log.
    pub first: Option<String>,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.status + self.io + self.timeout + self.connect
    }

    fn merge(&mut self, o: Errors) {
        self.status += o.status;
        self.io += o.io;
        self.timeout += o.timeout;
        self.connect += o.connect;
        if self.first.is_none() {
            self.first = o.first;
        }
    }
}

/// What one step measured.
#[derive(Debug)]
pub struct StepResult {
    pub offered: f64,
    /// Requests that were due in the step.
    pub due: u64,
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    pub errors: Errors,
    pub statuses: BTreeMap<u16, u64>,
    /// The step stopped because the generator fell more than `max_lag` behind schedule.
    pub backlogged: bool,
    /// From the first due instant to the last answer.
    pub elapsed: Duration,
    /// Latency of 2xx answers, µs from `min(sent, due)`.
    pub latency: Histogram<u64>,
    /// How late requests were sent, µs after their due instant (the generator's own queue).
    pub send_lag: Histogram<u64>,
    /// Per-interval latency of 2xx answers, by due instant (empty unless `bucket`).
    pub buckets: Vec<Histogram<u64>>,
    /// Total time connections spent with a request in flight (sent → answered).
    pub busy: Duration,
    pub connections: usize,
}

impl StepResult {
    pub fn achieved(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency, q)
    }

    /// The mean fraction of connections with a request in flight: near 1, the step was limited
    /// by the number of connections (one request in flight each), not by the server.
    pub fn busy_fraction(&self) -> f64 {
        self.busy.as_secs_f64() / (self.elapsed.as_secs_f64() * self.connections.max(1) as f64).max(1e-9)
    }
}

/// The `q` quantile of a µs histogram in ms (0 when empty).
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; a failure here is a programming error.
    #[allow(clippy::expect_used)]
    let mut h = Histogram::new_with_bounds(1, MAX_US, sigfig).expect("valid histogram bounds");
    // The counts are calloc'd, i.e. not yet backed by memory; writing them now takes the page
    // faults here, before a step's clock starts, instead of inside the first requests' latency.
    h.reset();
    h
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(MAX_US).clamp(1, MAX_US);
    // Cannot fail: the value is clamped into the histogram's range.
    let _ = h.record(us);
}

struct Shared {
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    start: Instant,
    interval_ns: f64,
    total: u64,
    next: AtomicU64,
    stop: AtomicBool,
    cfg: StepConfig,
    /// Per-interval latency (timeline and sustained modes), shared by the connections: one
    /// set per connection was 256 × intervals histograms (~1 GB for a 15 s timeline), which
    /// the generator allocated and paged in at the start of the step, i.e. inside the first
    /// requests' latency (the "start-of-step stall" of earlier reports).
    buckets: Vec<Mutex<Histogram<u64>>>,
}

struct Local {
    sent: u64,
    ok: u64,
    errors: Errors,
    statuses: BTreeMap<u16, u64>,
    backlogged: bool,
    last_done: Instant,
    busy: Duration,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
}

impl Local {
    /// Built before the clock starts (see [`histogram`]). `last_done` starts before the step
    /// does; the step's end is the latest of it and the start, so an idle connection is harmless.
    fn new() -> Self {
        Self {
            sent: 0,
            ok: 0,
            errors: Errors::default(),
            statuses: BTreeMap::new(),
            backlogged: false,
            last_done: Instant::now(),
            busy: Duration::ZERO,
            latency: histogram(3),
            send_lag: histogram(2),
        }
    }
}

/// Opens `n` connections (before the clock starts, so connection set-up is not measured).
pub async fn connect_all(addr: SocketAddr, n: usize) -> Vec<Option<Conn>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Conn::connect(addr).await.ok());
    }
    v
}

/// Runs one step. `requests` are pre-built; request `i` is `requests[i % len]`.
pub async fn run_step(addr: SocketAddr, requests: Arc<Vec<Vec<u8>>>, cfg: StepConfig) -> StepResult {
    let conns = connect_all(addr, cfg.connections.max(1)).await;
    let total = (cfg.rate * cfg.duration.as_secs_f64()).round().max(1.0) as u64;
    let n_buckets = cfg.bucket.map_or(0, |b| (cfg.duration.as_secs_f64() / b.as_secs_f64().max(1e-3)).ceil() as usize);
    let buckets = (0..n_buckets).map(|_| Mutex::new(histogram(2))).collect();
    // Everything a connection task records into is allocated and paged in before the clock.
    let locals: Vec<Local> = conns.iter().map(|_| Local::new()).collect();
    let connections = cfg.connections.max(1);
    let shared = Arc::new(Shared {
        addr,
        requests,
        // A short delay so every task is parked before the first request is due.
        start: Instant::now() + Duration::from_millis(20),
        interval_ns: 1e9 / cfg.rate.max(1e-3),
        total,
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        cfg,
        buckets,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (c, l) in conns.into_iter().zip(locals) {
        tasks.spawn(connection(shared.clone(), c, l));
    }
    let mut r = StepResult {
        offered: shared.cfg.rate,
        due: total,
        sent: 0,
        ok: 0,
        errors: Errors::default(),
        statuses: BTreeMap::new(),
        backlogged: false,
        elapsed: Duration::ZERO,
        latency: histogram(3),
        send_lag: histogram(2),
        buckets: Vec::new(),
        busy: Duration::ZERO,
        connections,
    };
    let mut last = shared.start;
    while let Some(joined) = tasks.join_next().await {
        let Ok(l) = joined else {
            r.errors.merge(Errors { io: 1, first: Some("a connection task panicked".into()), ..Errors::default() });
            continue;
        };
        r.sent += l.sent;
        r.ok += l.ok;
        r.errors.merge(l.errors);
        for (s, n) in l.statuses {
            *r.statuses.entry(s).or_default() += n;
        }
        r.backlogged |= l.backlogged;
        r.busy += l.busy;
        last = last.max(l.last_done);
        // Same bounds on both sides: cannot fail.
        let _ = r.latency.add(&l.latency);
        let _ = r.send_lag.add(&l.send_lag);
    }
    r.elapsed = last.saturating_duration_since(shared.start);
    r.buckets =
        shared.buckets.iter().map(|h| h.lock().map_or_else(|p| p.into_inner().clone(), |h| h.clone())).collect();
    r
}

async fn connection(s: Arc<Shared>, mut conn: Option<Conn>, mut l: Local) -> Local {
    while !s.stop.load(Ordering::Relaxed) {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= s.total {
            break;
        }
        let due = s.start + Duration::from_nanos((i as f64 * s.interval_ns) as u64);
        if due > Instant::now() + EARLY {
            tokio::time::sleep_until((due - EARLY).into()).await;
        }
        let sent = Instant::now();
        let lag = sent.saturating_duration_since(due);
        if lag > s.cfg.max_lag {
            // The backlog exceeds rate × max_lag: over the knee. Everything still unsent stops.
            s.stop.store(true, Ordering::Relaxed);
            l.backlogged = true;
            break;
        }
        record(&mut l.send_lag, lag);
        l.sent += 1;
        let c = match conn.take().filter(|c| !c.closed) {
            Some(c) => c,
            None => match tokio::time::timeout(s.cfg.timeout, Conn::connect(s.addr)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    l.errors.connect += 1;
                    l.errors.first.get_or_insert_with(|| format!("connect: {e}"));
                    l.last_done = Instant::now();
                    continue;
                }
                Err(_) => {
                    l.errors.connect += 1;
                    l.errors.first.get_or_insert_with(|| "connect: timed out".into());
                    l.last_done = Instant::now();
                    continue;
                }
            },
        };
        let mut c = c;
        let req = &s.requests[(i % s.requests.len() as u64) as usize];
        let result = tokio::time::timeout(s.cfg.timeout, c.roundtrip(req, false)).await;
        let done = Instant::now();
        l.last_done = done;
        l.busy += done.saturating_duration_since(sent);
        match result {
            Ok(Ok((status, _))) => {
                *l.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    l.ok += 1;
                    let latency = done.saturating_duration_since(sent.min(due));
                    record(&mut l.latency, latency);
                    if let Some(b) = s.cfg.bucket {
                        let k = (due.saturating_duration_since(s.start).as_secs_f64() / b.as_secs_f64()) as usize;
                        // A poisoned lock only means another task panicked mid-record.
                        if let Some(h) = s.buckets.get(k) {
                            record(&mut h.lock().unwrap_or_else(|p| p.into_inner()), latency);
                        }
                    }
                } else {
                    l.errors.status += 1;
                    l.errors.first.get_or_insert_with(|| format!("HTTP {status}"));
                }
                conn = Some(c);
            }
            Ok(Err(e)) => {
                // The connection's state is unknown after a failed exchange: drop it.
                l.errors.io += 1;
                l.errors.first.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                l.errors.timeout += 1;
                l.errors.first.get_or_insert_with(|| format!("no answer within {:?}", s.cfg.timeout));
            }
        }
    }
    l
}

//! Every metric of the witness, served at `GET /metrics` in the Prometheus text format. Names
//! follow `allowly_witness_<name>_{total,seconds}`; label values come from closed sets (never an
//! origin: the set of logs is the operator's, but a metric must not grow with input).

use prometheus::{exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};

/// Every `outcome` of `allowly_witness_requests_total`: `cosigned` and each [`crate::Error::label`].
pub const OUTCOMES: &[&str] = &[
    "cosigned",
    "malformed",
    "too_large",
    "unknown_log",
    "bad_signature",
    "old_size_mismatch",
    "fork",
    "bad_proof",
    "not_found",
    "internal",
];

/// The witness's metrics and the registry that renders them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `add-checkpoint` requests (and stray routes) by `outcome`; `fork` is the one to alert on.
    pub requests: IntCounterVec,
    /// Time to write one log's state durably (write, fsync, rename, fsync of the directory), the
    /// bulk of a cosigning's latency. Buckets 0.5 ms .. ~4 s by powers of 2.
    pub persist_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, each outcome's counter at zero so that rates exist from the start.
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new("allowly_witness_requests_total", "add-checkpoint requests by outcome"),
            &["outcome"],
        )
        .expect("static metric definition");
        let persist_seconds = Histogram::with_opts(
            HistogramOpts::new("allowly_witness_persist_duration_seconds", "Time to write a log's state durably")
                .buckets(exponential_buckets(0.0005, 2.0, 14).unwrap_or_default()),
        )
        .expect("static metric definition");
        for o in OUTCOMES {
            requests.with_label_values(&[o]);
        }
        let registry = Registry::new();
        registry.register(Box::new(requests.clone())).expect("unique metric");
        registry.register(Box::new(persist_seconds.clone())).expect("unique metric");
        Self { registry, requests, persist_seconds }
    }

    /// Counts one request's outcome.
    pub fn count(&self, outcome: &'static str) {
        self.requests.with_label_values(&[outcome]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

//! Every metric of the HTTP front end, and the process's one registry: the engine's and the
//! webhook worker's collectors are registered in it too (`register`), so one `gather` renders
//! `/metrics` and a name two crates both used would fail the start, not duplicate a series.
//! Label values come from closed sets: the route is the template name (`routes::Route::name`),
//! never a path or an id; the status is the numeric code, of which the server only ever sends
//! a fixed handful.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The front end's metrics and the process's registry.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    registry: Registry,
    /// Requests answered, by route template and status code.
    requests: IntCounterVec,
    /// Time from request head to response, by route template.
    duration: HistogramVec,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// 1 for the instance's key isolation mode, 0 for the others (closed label `mode`:
    /// `separate_users`, `same_uid` — keys not isolated from the server — or `external`).
    key_isolation: IntGaugeVec,
    /// Connections and rate limiting (the front end under abuse).
    pub front: FrontMetrics,
    /// In a cluster: requests forwarded to the node owning their workspace, by outcome
    /// (`answered`: relayed whatever the owner's status; `unreachable`: answered 503 here;
    /// `already_forwarded`: a request another node forwarded here that this node does not own).
    forwarded: IntCounterVec,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    /// Registers every metric of the front end (and the process collector) in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("allowly_http_requests_total", "HTTP requests answered, by route template and status"),
            &["route", "status"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        // Buckets 100 µs .. 10 s: a durable check is ~1 ms; exports and fail-closed signer
        // timeouts reach seconds.
        let duration = HistogramVec::new(
            HistogramOpts::new("allowly_http_request_duration_seconds", "Time to answer an HTTP request").buckets(
                vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
            ),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let in_flight = IntGauge::new("allowly_http_in_flight_requests", "HTTP requests being handled")
            .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let key_isolation = IntGaugeVec::new(
            Opts::new(
                "allowly_server_key_isolation",
                "1 for how the signing keys are isolated from this process (mode same_uid: not at all)",
            ),
            &["mode"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        // Always 1: joins any series to the release that produced it (`* on (instance)
        // group_left (version) allowly_build_info`), and shows rollouts on a dashboard.
        let build_info =
            IntGaugeVec::new(Opts::new("allowly_build_info", "1, labelled with this build's version"), &["version"])
                .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // The standard process_* series of this process (the front end and engine; the signer is
        // another process): CPU seconds, resident and virtual memory, open and max fds, start
        // time. Read from /proc at each scrape.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(key_isolation.clone()),
            Box::new(build_info),
            Box::new(process),
        ] {
            let _ = registry.register(m);
        }
        let forwarded = IntCounterVec::new(
            Opts::new(
                "allowly_http_forwarded_total",
                "Requests forwarded to the node owning their workspace (in a cluster), by outcome",
            ),
            &["outcome"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        for outcome in ["answered", "unreachable", "already_forwarded"] {
            forwarded.with_label_values(&[outcome]);
        }
        let _ = registry.register(Box::new(forwarded.clone()));
        let front = FrontMetrics::new(&registry);
        Self { registry, requests, duration, in_flight, key_isolation, front, forwarded }
    }

    /// Sets `allowly_server_key_isolation`: 1 for `mode`, 0 for every other mode.
    pub fn set_key_isolation(&self, mode: crate::isolation::KeyIsolation) {
        for m in crate::isolation::KeyIsolation::ALL {
            self.key_isolation.with_label_values(&[m.label()]).set(i64::from(m == mode));
        }
    }

    /// Records one answered request.
    /// Creates `route`'s server-error series at zero (the caller names the route: this module
    /// knows labels, not routes). The availability SLO's error ratio (ops/prometheus/rules.yml)
    /// is otherwise empty until the first 5xx, and rate() misses that first error (a series that
    /// appears at 1 has no increase).
    pub fn zero_server_errors(&self, route: &'static str) {
        for status in [http::StatusCode::INTERNAL_SERVER_ERROR, http::StatusCode::SERVICE_UNAVAILABLE] {
            self.requests.with_label_values(&[route, status.as_str()]);
        }
    }

    /// `route` is a route's template name (a closed set: `routes::Route::name`).
    pub fn observe(&self, route: &'static str, status: http::StatusCode, elapsed: Duration) {
        self.requests.with_label_values(&[route, status.as_str()]).inc();
        self.duration.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    }

    /// Counts one request forwarded (or not) to its workspace's owner; `outcome` is one of
    /// the closed set above.
    pub fn forwarded(&self, outcome: &'static str) {
        self.forwarded.with_label_values(&[outcome]).inc();
    }

    /// Adds another crate's collector to the registry. Fails if one of its names is taken.
    pub fn register(&self, c: Box<dyn Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    /// `/metrics` (text format 0.0.4): one gather of the registry, on a blocking thread (the
    /// engine's and the worker's collectors read the store), then the signer's own series,
    /// which come from another process as text (`Engine::signer_metrics_text`: at most 100 ms
    /// old or the last good copy).
    pub async fn render(&self, engine: &allowly_engine::Engine) -> String {
        // First: it sets the age gauge of the signer's series the gather then reads.
        let signer = engine.signer_metrics_text().await;
        let registry = self.registry.clone();
        let gathered = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
                tracing::warn!("encoding metrics: {e}");
            }
            String::from_utf8(out).unwrap_or_default()
        });
        let mut text = gathered.await.unwrap_or_else(|e| {
            tracing::warn!("gathering metrics: {e}");
            String::new()
        });
        text.push_str(&signer_families(&signer));
        text
    }
}

/// The signer's exposition, keeping only its own families (`allowly_signer_*`): whatever a
/// signer of another version sends, it cannot add a second copy of a family of this process.
fn signer_families(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let name = match line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            Some(rest) => rest,
            None if line.starts_with('#') => continue,
            None => line,
        };
        if name.starts_with("allowly_signer_") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_signers_own_families_are_kept() {
        let text = "# HELP allowly_signer_a_total A\n# TYPE allowly_signer_a_total counter\nallowly_signer_a_total 3\n\
                    # HELP process_open_fds fds\n# TYPE process_open_fds gauge\nprocess_open_fds 9\n# a comment\n\
                    allowly_signer_b{x=\"1\"} 2\n";
        assert_eq!(
            super::signer_families(text),
            "# HELP allowly_signer_a_total A\n# TYPE allowly_signer_a_total counter\nallowly_signer_a_total 3\n\
             allowly_signer_b{x=\"1\"} 2\n"
        );
    }
}

/// Why a connection was closed: the closed label set of `allowly_http_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnClose {
    /// Ended without trouble: the client closed it, or an answer said `Connection: close`.
    Done,
    /// A request's head or body did not arrive within the read deadline (answered 408).
    ReadTimeout,
    /// Idle for the keep-alive timeout with no request.
    IdleTimeout,
    /// Closed while idle to make room for a new connection at the overall cap.
    Evicted,
    /// Refused at accept: its client address already had the most connections allowed.
    PerAddressLimit,
    /// An I/O or HTTP protocol error.
    Error,
    /// Closed by the server's graceful shutdown.
    Shutdown,
    /// The TLS handshake failed or did not finish within the read deadline (a TLS listener).
    TlsHandshake,
}

impl ConnClose {
    pub const ALL: [Self; 8] = [
        Self::Done,
        Self::ReadTimeout,
        Self::IdleTimeout,
        Self::Evicted,
        Self::PerAddressLimit,
        Self::Error,
        Self::Shutdown,
        Self::TlsHandshake,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::ReadTimeout => "read_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Evicted => "evicted",
            Self::PerAddressLimit => "per_address_limit",
            Self::Error => "error",
            Self::Shutdown => "shutdown",
            Self::TlsHandshake => "tls_handshake",
        }
    }
}

/// The front end under abuse: connections open, accepted and closed (by [`ConnClose`]), and
/// requests refused by a key's rate limit. No per-workspace or per-address label.
#[derive(Debug, Clone)]
pub struct FrontMetrics {
    /// Connections open now.
    pub connections_open: IntGauge,
    /// Connections asked to close at the overall cap and not closed yet (counted in
    /// `connections_open`, no longer in the cap).
    pub connections_evicting: IntGauge,
    /// Connections accepted (refused ones included: they are closed with reason
    /// `per_address_limit`).
    pub connections_accepted: IntCounter,
    connections_closed: IntCounterVec,
    /// Requests answered `429 rate_limited`.
    pub rate_limited: IntCounter,
}

impl FrontMetrics {
    fn new(registry: &Registry) -> Self {
        let connections_open = IntGauge::new("allowly_http_connections_open", "HTTP connections open")
            .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let connections_evicting = IntGauge::new(
            "allowly_http_connections_evicting",
            "HTTP connections asked to close to make room at the connection cap, not closed yet",
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let connections_accepted =
            IntCounter::new("allowly_http_connections_accepted_total", "HTTP connections accepted")
                .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        let connections_closed = IntCounterVec::new(
            Opts::new("allowly_http_connections_closed_total", "HTTP connections closed, by reason"),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        // Every reason at zero from the start: a rate() over a series that appears at 1 misses
        // its first event.
        for r in ConnClose::ALL {
            connections_closed.with_label_values(&[r.label()]);
        }
        let rate_limited = IntCounter::new(
            "allowly_http_rate_limited_total",
            "Requests refused because their API key was over its rate limit (429 rate_limited)",
        )
        .unwrap_or_else(|e| unreachable!("static metric: {e}"));
        for m in [
            Box::new(connections_open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections_evicting.clone()),
            Box::new(connections_accepted.clone()),
            Box::new(connections_closed.clone()),
            Box::new(rate_limited.clone()),
        ] {
            let _ = registry.register(m);
        }
        Self { connections_open, connections_evicting, connections_accepted, connections_closed, rate_limited }
    }

    /// Counts a connection closed for `reason`.
    pub fn closed(&self, reason: ConnClose) {
        self.connections_closed.with_label_values(&[reason.label()]).inc();
    }
}

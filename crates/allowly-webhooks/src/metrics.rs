//! Every metric of the delivery worker, in one registry. Names follow
//! `allowly_webhook_<name>_{total,seconds}`; label values come from closed sets (never a
//! workspace, endpoint or URL).

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The worker's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Attempts by `result`: `delivered` (2xx), `gone` (410), `http_error` (any other status),
    /// `timeout`, `connect_error` (connection refused or reset, DNS, TLS),
    /// `destination_not_allowed` (no public address to send to: nothing was sent).
    pub attempts: IntCounterVec,
    /// Time of one attempt. Buckets 5 ms .. ~41 s by powers of 2.
    pub attempt_seconds: Histogram,
    /// Deliveries that failed for good, by `reason`: `gone`, `endpoint_disabled`, `gave_up`.
    pub failed: IntCounterVec,
    /// Attempts in flight now.
    pub in_flight: IntGauge,
    /// Store errors met by the worker, by `step`: `scan` (reading the outbox), `attempt` (an
    /// attempt's bookkeeping), `sweep` (the retention sweep). Each is retried later.
    pub scan_errors: IntCounterVec,
    /// Finished deliveries deleted after the retention period.
    pub swept: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            attempts: IntCounterVec::new(
                Opts::new("allowly_webhook_attempts_total", "Webhook delivery attempts by result"),
                &["result"],
            )
            .expect("static metric definition"),
            attempt_seconds: Histogram::with_opts(
                HistogramOpts::new("allowly_webhook_attempt_duration_seconds", "Time of one webhook delivery attempt")
                    .buckets(exponential_buckets(0.005, 2.0, 14).unwrap_or_default()),
            )
            .expect("static metric definition"),
            failed: IntCounterVec::new(
                Opts::new("allowly_webhook_deliveries_failed_total", "Webhook deliveries given up, by reason"),
                &["reason"],
            )
            .expect("static metric definition"),
            in_flight: IntGauge::new("allowly_webhook_in_flight_attempts", "Webhook delivery attempts in flight")
                .expect("static metric definition"),
            scan_errors: IntCounterVec::new(
                Opts::new("allowly_webhook_store_errors_total", "Store errors met by the webhook worker, by step"),
                &["step"],
            )
            .expect("static metric definition"),
            swept: IntCounter::new(
                "allowly_webhook_deliveries_swept_total",
                "Finished webhook deliveries deleted after the retention period",
            )
            .expect("static metric definition"),
            registry,
        };
        for c in [
            Box::new(m.attempts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.attempt_seconds.clone()),
            Box::new(m.failed.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.scan_errors.clone()),
            Box::new(m.swept.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        // Every label value of the closed sets above is exported from the start, at zero: a
        // series that appears only at its first event makes rate() and increase() miss that
        // event, and alerts and dashboards that name it look broken until then.
        use crate::client::FailKind;
        let results = [FailKind::Http, FailKind::Timeout, FailKind::Connect, FailKind::NotAllowed].map(FailKind::label);
        for result in ["delivered", "gone"].into_iter().chain(results) {
            m.attempts.with_label_values(&[result]);
        }
        for reason in ["gone", "endpoint_disabled", "gave_up"] {
            m.failed.with_label_values(&[reason]);
        }
        for step in ["scan", "attempt", "sweep"] {
            m.scan_errors.with_label_values(&[step]);
        }
        m
    }

    /// Prometheus text exposition.
    pub fn text(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

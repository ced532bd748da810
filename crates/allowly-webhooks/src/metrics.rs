//! Every metric of the delivery worker. Names follow `allowly_webhook_<name>_{total,seconds}`;
//! label values come from closed sets (never a workspace, endpoint or URL). The server
//! registers them, with the outbox read at scrape time ([`Metrics::collector`]), in the one
//! registry of the process.

use std::sync::Arc;

use allowly_store::{DocKind, Store};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    TextEncoder,
};

/// The worker's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
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
    /// Due attempts this node left to the node that owns their workspace (a cluster), or
    /// stopped recording because that node took the workspace over meanwhile.
    pub left_to_owner: IntCounter,
    /// Deliveries not yet finished (the outbox, every workspace), counted at scrape time.
    pub outbox_deliveries: IntGauge,
    /// Age of the oldest unfinished delivery (since its event was created; 0 when none):
    /// grows while a receiver fails or the worker falls behind.
    pub outbox_oldest_age_seconds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, labelled counters at zero for each label value they can take.
    pub fn new() -> Self {
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
            left_to_owner: IntCounter::new(
                "allowly_webhook_attempts_left_to_owner_total",
                "Due webhook attempts left to the node owning their workspace (a cluster)",
            )
            .expect("static metric definition"),
            outbox_deliveries: IntGauge::new(
                "allowly_webhook_outbox_deliveries",
                "Webhook deliveries not yet finished (delivered, failed or cancelled)",
            )
            .expect("static metric definition"),
            outbox_oldest_age_seconds: Gauge::new(
                "allowly_webhook_outbox_oldest_age_seconds",
                "Age of the oldest unfinished webhook delivery, since its event (0 when none)",
            )
            .expect("static metric definition"),
        };
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

    /// These metrics as one collector that reads the outbox of `store` at each collection (ids
    /// only, at most `MAX_COUNTED`): call the registry's `gather` on a blocking thread.
    pub fn collector(&self, store: Arc<dyn Store>) -> Box<dyn Collector> {
        Box::new(OutboxCollector { metrics: self.clone(), store })
    }

    fn parts(&self) -> [&dyn Collector; 9] {
        [
            &self.attempts,
            &self.attempt_seconds,
            &self.failed,
            &self.in_flight,
            &self.scan_errors,
            &self.swept,
            &self.left_to_owner,
            &self.outbox_deliveries,
            &self.outbox_oldest_age_seconds,
        ]
    }

    /// Prometheus text exposition of these metrics alone (tests; the server renders its one
    /// registry).
    pub fn text(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.collect(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Collector for Metrics {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(Collector::desc).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.parts().into_iter().flat_map(Collector::collect).collect()
    }
}

/// Most outbox entries counted per scrape: the gauge at this value means "at least".
const MAX_COUNTED: usize = 1_000_000;

/// [`Metrics`] with the outbox gauges read at collection.
struct OutboxCollector {
    metrics: Metrics,
    store: Arc<dyn Store>,
}

impl Collector for OutboxCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.metrics.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = crate::model::now_ms();
        match outbox_figures(&*self.store) {
            Ok((n, oldest)) => {
                let m = &self.metrics;
                m.outbox_deliveries.set(i64::try_from(n).unwrap_or(i64::MAX));
                let age_ms = oldest.map_or(0, |t| now.saturating_sub(t));
                m.outbox_oldest_age_seconds.set(age_ms as f64 / 1000.0);
            }
            // The gauges keep their last value; the next scrape tries again.
            Err(e) => tracing::warn!(error = %e, "cannot count the webhook outbox"),
        }
        self.metrics.collect()
    }
}

/// Unfinished deliveries and the creation time of the oldest, from the outbox's ids alone.
fn outbox_figures(store: &dyn Store) -> allowly_store::Result<(u64, Option<u64>)> {
    const PAGE: usize = 1024;
    let (mut n, mut oldest, mut after) = (0u64, None::<u64>, None::<(String, String)>);
    loop {
        let page = store.all_doc_ids(DocKind::Outbox, after.as_ref().map(|(w, i)| (w.as_str(), i.as_str())), PAGE)?;
        let last = page.len() < PAGE;
        n += page.len() as u64;
        for (_, id) in &page {
            if let Some(t) = crate::model::outbox_created_ms(id) {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        after = page.into_iter().next_back();
        if last || n >= MAX_COUNTED as u64 {
            return Ok((n, oldest));
        }
    }
}

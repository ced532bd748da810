//! Just enough of the Prometheus text format to read allowly's `/metrics`: a sample's value
//! summed over its label sets, and a histogram's cumulative buckets.

/// Samples of one scrape: (metric name, labels text without braces, value).
#[derive(Debug, Clone, Default)]
pub struct Scrape(Vec<(String, String, f64)>);

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut v = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series.trim(), ""),
            };
            v.push((name.to_owned(), labels.to_owned(), value));
        }
        Self(v)
    }

    /// The sum of every sample of `name`; `None` if there is none (the metric does not exist).
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let s = self.0.iter().filter(|(n, _, _)| n == name).inspect(|_| found = true).map(|(_, _, v)| v).sum();
        found.then_some(s)
    }

    /// `(upper bound, cumulative count)` of histogram `name`, sorted by bound (`+Inf` last).
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut v: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|(n, _, _)| *n == bucket)
            .filter_map(|(_, labels, value)| {
                let le = labels.split(',').find_map(|l| l.trim().strip_prefix("le="))?.trim_matches('"');
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((bound, *value))
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// The `q` quantile of the observations made between two scrapes of a cumulative histogram:
/// the upper bound of the first bucket whose delta reaches `q` of the delta count (so "≤ this").
/// `None` without observations; `Some(INFINITY)` if it is only in the `+Inf` bucket.
pub fn quantile_between(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, c)| {
            let b = before.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
            (le, (c - b).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP allowly_engine_receipts_signed_total Receipts signed\n\
# TYPE allowly_engine_receipts_signed_total counter\n\
allowly_engine_receipts_signed_total 1200\n\
allowly_engine_decisions_total{decision=\"allow\",reason=\"granted\"} 1000\n\
allowly_engine_decisions_total{decision=\"deny\",reason=\"x\"} 5\n\
lag_bucket{le=\"0.001\"} 10\n\
lag_bucket{le=\"0.002\"} 50\n\
lag_bucket{le=\"+Inf\"} 100\n\
lag_sum 1.5\n\
lag_count 100\n\
broken line\n";

    #[test]
    fn sums_and_buckets() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("allowly_engine_receipts_signed_total"), Some(1200.0));
        assert_eq!(s.sum("allowly_engine_decisions_total"), Some(1005.0));
        assert_eq!(s.sum("missing"), None);
        assert_eq!(s.buckets("lag"), vec![(0.001, 10.0), (0.002, 50.0), (f64::INFINITY, 100.0)]);
    }

    #[test]
    fn quantile_from_bucket_deltas() {
        let before = vec![(0.001, 10.0), (0.002, 50.0), (f64::INFINITY, 100.0)];
        // 100 new observations: 90 ≤ 1 ms, 8 in (1, 2] ms, 2 above.
        let after = vec![(0.001, 100.0), (0.002, 148.0), (f64::INFINITY, 200.0)];
        assert_eq!(quantile_between(&before, &after, 0.5), Some(0.001));
        assert_eq!(quantile_between(&before, &after, 0.98), Some(0.002));
        assert_eq!(quantile_between(&before, &after, 0.99), Some(f64::INFINITY));
        assert_eq!(quantile_between(&before, &before, 0.99), None, "no observations in between");
        assert_eq!(quantile_between(&[], &after, 0.6), Some(0.002), "a histogram that did not exist before");
    }
}

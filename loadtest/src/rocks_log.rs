//! RocksDB's own account of its background work, read from the server's `db/LOG`: per minute of
//! a sustained step, the CPU its compactions used, the bytes they wrote and the memtable flushes.
//!
//! Why here: the server's CPU per check grows through a long run, and the profile that explains
//! it (compactions rewriting more each time) is in this log, not in `/proc`. With it in the
//! report, a sustained run says by itself how much of the growth is compaction.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// RocksDB's background work during one minute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Minute {
    /// CPU seconds of the compactions that finished in the minute.
    pub compaction_cpu_s: f64,
    /// Bytes those compactions wrote (SST output).
    pub compaction_written_bytes: u64,
    /// Compactions finished.
    pub compactions: u64,
    /// Memtable flushes finished.
    pub flushes: u64,
    /// `compaction_cpu_s` by key space (column family), for the compactions whose start is in
    /// the log.
    pub compaction_cpu_s_by_space: BTreeMap<String, f64>,
}

/// Buckets the `EVENT_LOG_v1` events of `log` (the text of RocksDB's info log) into `minutes`
/// minutes from `start_micros` (µs since the Unix epoch, the clock RocksDB's `time_micros`
/// uses). Events before the start or after the last minute are left out; lines that are not
/// events, or events that do not parse, are skipped.
pub fn per_minute(log: &str, start_micros: u64, minutes: usize) -> Vec<Minute> {
    let mut out = vec![Minute::default(); minutes];
    const MARK: &str = "EVENT_LOG_v1 ";
    // A compaction's key space is named only in its `compaction_started` event.
    let mut space_of_job: HashMap<u64, String> = HashMap::new();
    for line in log.lines() {
        let Some(at) = line.find(MARK) else { continue };
        let Ok(ev) = serde_json::from_str::<Value>(&line[at + MARK.len()..]) else { continue };
        let job = ev.get("job").and_then(Value::as_u64);
        if ev.get("event").and_then(Value::as_str) == Some("compaction_started") {
            if let (Some(job), Some(cf)) = (job, ev.get("cf_name").and_then(Value::as_str)) {
                space_of_job.insert(job, cf.to_owned());
            }
        }
        let Some(t) = ev.get("time_micros").and_then(Value::as_u64) else { continue };
        let Some(since) = t.checked_sub(start_micros) else { continue };
        let Some(m) = out.get_mut((since / 60_000_000) as usize) else { continue };
        match ev.get("event").and_then(Value::as_str) {
            Some("compaction_finished") => {
                m.compactions += 1;
                let cpu = ev.get("compaction_time_cpu_micros").and_then(Value::as_u64).unwrap_or(0) as f64 / 1e6;
                m.compaction_cpu_s += cpu;
                if let Some(space) = job.and_then(|j| space_of_job.get(&j)) {
                    *m.compaction_cpu_s_by_space.entry(space.clone()).or_default() += cpu;
                }
                m.compaction_written_bytes += ev.get("total_output_size").and_then(Value::as_u64).unwrap_or(0);
            }
            Some("flush_finished") => m.flushes += 1,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_in_their_minute_and_the_rest_is_skipped() {
        let start = 1_796_526_900_000_000u64;
        let ev = |t: u64, body: &str| {
            format!("2026/12/06-03:15:15.271919 30996 EVENT_LOG_v1 {{\"time_micros\": {t}, {body}}}")
        };
        let log = [
            "2026/12/06-03:15:15.000000 30996 [db/db_impl] some other line".to_owned(),
            ev(start - 1, r#""event": "flush_finished""#),
            ev(start + 5, r#""event": "flush_finished""#),
            ev(start + 8, r#""job": 7, "event": "compaction_started", "cf_name": "receipts""#),
            ev(
                start + 10,
                r#""job": 7, "event": "compaction_finished", "compaction_time_cpu_micros": 1500000, "total_output_size": 1000"#,
            ),
            ev(
                start + 61_000_000,
                r#""event": "compaction_finished", "compaction_time_cpu_micros": 500000, "total_output_size": 24"#,
            ),
            ev(
                start + 62_000_000,
                r#""event": "compaction_finished", "compaction_time_cpu_micros": 250000, "total_output_size": 1"#,
            ),
            ev(start + 125_000_000, r#""event": "flush_finished""#),
            "2026/12/06-03:15:15.271919 30996 EVENT_LOG_v1 {not json".to_owned(),
        ]
        .join("\n");
        let m = per_minute(&log, start, 2);
        let by_space = BTreeMap::from([("receipts".to_owned(), 1.5)]);
        assert_eq!(
            m[0],
            Minute {
                compaction_cpu_s: 1.5,
                compaction_written_bytes: 1000,
                compactions: 1,
                flushes: 1,
                compaction_cpu_s_by_space: by_space
            }
        );
        assert_eq!(
            m[1],
            Minute {
                compaction_cpu_s: 0.75,
                compaction_written_bytes: 25,
                compactions: 2,
                flushes: 0,
                compaction_cpu_s_by_space: BTreeMap::new()
            }
        );
    }
}

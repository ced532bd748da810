//! The floor under a durable answer: `write()` of a receipt-sized record plus `fdatasync()` to
//! a file on the same disk as the server's data, appended the way a WAL is.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies of `count` synced appends of `size` bytes (or as many as fit in `budget`), µs.
/// The file is created in `dir` and removed afterwards.
pub fn measure(dir: &Path, size: usize, count: usize, budget: Duration) -> Result<Histogram<u64>, String> {
    let path = dir.join(format!(".loadtest-fsync-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let record = vec![b'x'; size];
    let start = Instant::now();
    let mut result = Ok(());
    for _ in 0..count {
        let t = Instant::now();
        if let Err(e) = f.write_all(&record).and_then(|()| f.sync_data()) {
            result = Err(format!("{}: {e}", path.display()));
            break;
        }
        let _ = h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000));
        if start.elapsed() > budget {
            break;
        }
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    result.map(|()| h)
}

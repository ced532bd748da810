//! What the kernel says about the processes under test: CPU time, resident memory, who listens
//! on a port, a process's children, and disk usage of a directory. Linux `/proc` only.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times. Read from the auxiliary vector
/// (`AT_CLKTCK`, what `sysconf(_SC_CLK_TCK)` returns) because the workspace forbids `unsafe`;
/// 100 (the value on every Linux architecture we run on) if it cannot be read.
pub fn clock_ticks_per_second() -> u64 {
    fs::read("/proc/self/auxv").ok().and_then(|a| auxv_value(&a, 17)).filter(|&t| t > 0).unwrap_or(100)
}

/// The value of auxiliary-vector entry `key` (native-endian pairs of machine words).
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    const W: usize = std::mem::size_of::<usize>();
    auxv.chunks_exact(2 * W).find_map(|pair| {
        let word = |b: &[u8]| -> Option<u64> {
            let arr: [u8; W] = b.try_into().ok()?;
            u64::try_from(usize::from_ne_bytes(arr)).ok()
        };
        let (k, v) = (word(&pair[..W])?, word(&pair[W..])?);
        (k == key).then_some(v)
    })
}

/// One line of `/proc/<pid>/stat`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub ppid: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may itself contain spaces
/// and parentheses, so the fields are counted from the *last* `)`.
pub fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat { comm, ppid: u32::try_from(field(4)?).ok()?, cpu_ticks: field(14)?.checked_add(field(15)?)? })
}

pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Children of `parent` whose command name is `name` (found by scanning every process's ppid:
/// `/proc/<pid>/task/*/children` needs a kernel option that is not always set).
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut v: Vec<u32> =
        pids().into_iter().filter(|&p| stat(p).is_some_and(|s| s.ppid == parent && s.comm == name)).collect();
    v.sort_unstable();
    v
}

/// The signer processes of an `allowly serve` with pid `server`: its children, or, started as
/// root (key isolation), the children of its keeper (a child named `allowly`).
pub fn signers_of(server: u32) -> Vec<u32> {
    let mut v = children_named(server, "allowly-signer");
    for keeper in children_named(server, "allowly") {
        v.extend(children_named(keeper, "allowly-signer"));
    }
    v
}

/// Inodes of sockets listening on `port` (IPv4 and IPv6 tables; state 0A is LISTEN).
pub fn parse_listen_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// The process listening on `port`: the one holding the listening socket's inode among its fds.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for t in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(s) = fs::read_to_string(t) {
            inodes.extend(parse_listen_inodes(&s, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    pids().into_iter().find(|pid| {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.filter_map(Result::ok)
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.to_str().is_some_and(|l| wanted.iter().any(|w| w == l))))
    })
}

/// Any process whose command name is `name` (the fallback when the port lookup finds nothing,
/// e.g. without permission to read other processes' fds).
pub fn pid_named(name: &str) -> Option<u32> {
    pids().into_iter().find(|&p| stat(p).is_some_and(|s| s.comm == name))
}

/// Busy CPU time of the whole machine in clock ticks: the first line of `/proc/stat` minus idle
/// and iowait.
pub fn parse_system_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4).copied().unwrap_or(0))
}

pub fn system_busy() -> Option<u64> {
    parse_system_busy(&fs::read_to_string("/proc/stat").ok()?)
}

/// Disk usage of a directory tree: (apparent bytes, allocated bytes like `du`).
pub fn du(path: &Path) -> (u64, u64) {
    let mut total = (0u64, 0u64);
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = fs::read_dir(&p) else { continue };
        for e in entries.filter_map(Result::ok) {
            // A file RocksDB deletes between listing and stat is simply not counted.
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total.0 += m.len();
                total.1 += m.blocks() * 512;
            }
        }
    }
    total
}

/// CPU per unit of work in microseconds from a tick delta.
pub fn cpu_us_per(ticks_delta: u64, ticks_per_second: u64, work: u64) -> Option<f64> {
    if work == 0 || ticks_per_second == 0 {
        return None;
    }
    Some(ticks_delta as f64 * 1e6 / ticks_per_second as f64 / work as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_name() {
        let line = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s, Stat { comm: "a) b (c)".into(), ppid: 17, cpu_ticks: 325 });
        assert_eq!(parse_stat("12 (x) S 1 2"), None, "too few fields");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn stat_of_this_process() {
        let s = stat(std::process::id()).expect("own stat");
        assert!(!s.comm.is_empty());
        assert!(rss_kib(std::process::id()).is_some_and(|r| r > 0));
    }

    #[test]
    fn clock_ticks_from_auxv() {
        let w = |v: u64| (v as usize).to_ne_bytes();
        let mut a = Vec::new();
        for (k, v) in [(6u64, 4096u64), (17, 250), (0, 0)] {
            a.extend_from_slice(&w(k));
            a.extend_from_slice(&w(v));
        }
        assert_eq!(auxv_value(&a, 17), Some(250));
        assert_eq!(auxv_value(&a, 99), None);
        assert_eq!(auxv_value(&a[..5], 17), None);
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn listening_sockets_by_port() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5551 1 0 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 6662 1 0 100 0 0 10 0\n\
   2: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7773 1 0 100 0 0 10 0\n";
        assert_eq!(parse_listen_inodes(t, 8080), vec![5551]);
        assert_eq!(parse_listen_inodes(t, 80), vec![7773]);
        assert!(parse_listen_inodes(t, 9).is_empty());
        assert!(parse_listen_inodes("header only\nbroken line\n", 8080).is_empty());
    }

    #[test]
    fn system_busy_ticks() {
        let s = "cpu  100 5 50 1000 20 3 2 0 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1 2\n";
        assert_eq!(parse_system_busy(s), Some(160));
        assert_eq!(parse_system_busy("cpu  1 2\n"), None);
        assert_eq!(parse_system_busy("intr 1\n"), None);
        assert!(system_busy().is_some());
    }

    #[test]
    fn cpu_delta_arithmetic() {
        // 50 ticks at 100 Hz = 0.5 s over 10,000 requests = 50 µs each.
        assert_eq!(cpu_us_per(50, 100, 10_000), Some(50.0));
        assert_eq!(cpu_us_per(50, 100, 0), None);
        assert_eq!(cpu_us_per(0, 100, 10), Some(0.0));
    }

    #[test]
    fn du_counts_nested_files() {
        let d = std::env::temp_dir().join(format!("allowly-loadtest-du-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("a/b")).expect("mkdir");
        fs::write(d.join("x"), [0u8; 100]).expect("write");
        fs::write(d.join("a/b/y"), [0u8; 50]).expect("write");
        assert_eq!(du(&d).0, 150);
        let _ = fs::remove_dir_all(&d);
        assert_eq!(du(&d), (0, 0), "a missing directory is empty");
    }
}

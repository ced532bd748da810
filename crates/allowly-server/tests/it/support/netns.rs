//! Test networks made of network namespaces, for the tests that need a real partition.
//!
//! A [`Net`] is a Linux bridge in this process's namespace, holding the network's first address:
//! PostgreSQL and witnesses listen there, and the tests' clients connect from there. A [`Host`]
//! is a namespace of its own, joined to the bridge by a veth pair, where a node runs
//! ([`Host::command`]). A partition ([`Host::cut`]) is a pair of nftables `drop` rules inside a
//! host's namespace: packets are lost silently, as on a real network — nothing is refused, TCP
//! retransmits into the void and the peer hears nothing — until [`Host::heal`] removes them and
//! the retransmissions arrive late.
//!
//! Needs root (network namespaces, links and their mounts under /run/netns), `ip` (iproute2)
//! and `nft` (nftables), which `scripts/setup.sh` installs; without them the test fails, saying
//! so. Addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for testing network
//! equipment, a /24 no interface of this machine has. Names carry this process's pid: what a
//! killed test run left behind is removed by the next run's first [`Net::new`].

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Networks made by this process, to name bridges and pick /24s.
static NETS: AtomicU32 = AtomicU32::new(0);
/// Hosts made by this process, to name veth links (interface names are at most 15 bytes).
static HOSTS: AtomicU32 = AtomicU32::new(0);
/// One network at a time picks its /24 and creates its bridge (another test's network could
/// otherwise pick the same /24 before either has its address).
static CREATING: Mutex<()> = Mutex::new(());

/// The nftables table holding a host's partition rules.
const TABLE: &str = "allowly_partition";

/// Runs `program args`, panicking with its output if it fails.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "{program} {args:?}: {e}: the partition tests need root, `ip` (iproute2) and `nft` (nftables); \
             run scripts/setup.sh"
        )
    });
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        if rustix::process::geteuid().is_root() { "" } else { " (the partition tests need root)" }
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run("ip", args, None)
}

/// The pid a name made by [`Net`] or [`Host`] carries, if it is one of theirs.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("alw-").or_else(|| name.strip_prefix("alwb")).or_else(|| name.strip_prefix("alwv"))?;
    rest.split(['-', 'n']).next()?.parse().ok()
}

/// Removes the namespaces and links of test processes that are gone (killed before their drops).
fn sweep() {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
    for line in ip(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if dead(name) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    for line in ip(&["-o", "link", "show"]).lines() {
        // "12: alwb123n0: <BROADCAST,…" or "13: alwv123n4@if2: <…"
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        if dead(name) {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
}

/// A bridge and its /24, in this process's namespace. Dropped: the bridge is deleted.
pub struct Net {
    /// Its number among this process's networks (in its hosts' names).
    number: u32,
    bridge: String,
    /// The /24's first three octets.
    prefix: [u8; 3],
    next_host: AtomicU32,
}

impl Net {
    pub fn new() -> Net {
        let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        sweep();
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let bridge = format!("alwb{pid}n{n}");
        let used = ip(&["-o", "-4", "addr", "show"]);
        let start = (pid as usize).wrapping_mul(31).wrapping_add(n as usize * 7);
        let prefix = (0..512)
            .map(|i| {
                let k = (start + i) % 512;
                [198, 18 + (k / 256) as u8, (k % 256) as u8]
            })
            .find(|p| !used.contains(&format!(" {}.{}.{}.", p[0], p[1], p[2])))
            .expect("a free /24 in 198.18.0.0/15");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let net = Net { number: n, bridge, prefix, next_host: AtomicU32::new(2) };
        ip(&["addr", "add", &format!("{}/24", net.address()), "dev", &net.bridge]);
        ip(&["link", "set", &net.bridge, "up"]);
        net
    }

    /// The network's own address (the bridge's, in this process's namespace): where servers
    /// that every host reaches listen, and where the tests' clients come from.
    pub fn address(&self) -> IpAddr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 1).into()
    }

    /// A new host `name` on this network, with the next address.
    pub fn host(&self, name: &str) -> Host {
        let last = self.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(last < 255, "too many hosts on one test network");
        let pid = std::process::id();
        let ns = format!("alw-{pid}-{}-{name}", self.number);
        let veth = format!("alwv{pid}n{}", HOSTS.fetch_add(1, Ordering::Relaxed));
        let addr: IpAddr = Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], last as u8).into();
        ip(&["netns", "add", &ns]);
        let host = Host { ns, addr };
        // The namespace's end is made inside it, named eth0 there; ours joins the bridge.
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &host.ns]);
        ip(&["link", "set", &veth, "master", &self.bridge, "up"]);
        ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
        ip(&["-n", &host.ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &host.ns, "link", "set", "eth0", "up"]);
        host
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// A network namespace on a [`Net`], with one address. Dropped: the namespace is deleted (its
/// veth pair with it, once the processes in it are gone).
pub struct Host {
    ns: String,
    pub addr: IpAddr,
}

impl Host {
    /// `program`, to be run inside this host's namespace (`ip netns exec`, which then execs it:
    /// the child's pid is the program's, for signals).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// From now on, every packet between this host and `peer` (on TCP port `port` of the peer,
    /// or any) is dropped, both ways, without a word to either side.
    pub fn cut(&self, peer: IpAddr, port: Option<u16>) {
        let (to, from) = match port {
            Some(p) => (format!("ip daddr {peer} tcp dport {p}"), format!("ip saddr {peer} tcp sport {p}")),
            None => (format!("ip daddr {peer}"), format!("ip saddr {peer}")),
        };
        let rules = format!(
            "table inet {TABLE} {{\n\
               chain output {{ type filter hook output priority 0; policy accept; {to} drop; }}\n\
               chain input {{ type filter hook input priority 0; policy accept; {from} drop; }}\n\
             }}\n"
        );
        run("ip", &["netns", "exec", &self.ns, "nft", "-f", "-"], Some(&rules));
    }

    /// Removes every cut: what TCP retransmits from now on arrives.
    pub fn heal(&self) {
        run("ip", &["netns", "exec", &self.ns, "nft", "delete", "table", "inet", TABLE], None);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

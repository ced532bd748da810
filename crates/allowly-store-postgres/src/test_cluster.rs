//! A private, throwaway PostgreSQL cluster for tests (feature `test-cluster`: test support,
//! never enabled by a build that ships).
//!
//! `initdb` into a temporary directory, listening on a Unix socket in that directory only (no
//! TCP port, so runs never clash), `trust` authentication for the user `allowly`. PostgreSQL
//! refuses to run as root, so as root the cluster belongs to `nobody`. It is stopped and its
//! directory removed when the test process ends, however it ends: a small shell started with
//! it waits for end-of-file on a pipe only this process holds, then stops the server.
//!
//! The binaries are found with `pg_config --bindir`, else in the newest
//! `/usr/lib/postgresql/*/bin`; without them every caller panics, naming `scripts/setup.sh`
//! (which installs Debian's `postgresql`): a test that needs PostgreSQL fails, never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The user the tests connect as (created by `initdb -U`).
pub const USER: &str = "allowly";

/// A running cluster. Dropping it (or the process ending) stops it and removes its directory.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    /// The port: of the Unix socket's name, and on its address for a [`Cluster::start_tcp_on`] one.
    port: u16,
    /// The watchdog shell: closing its stdin stops the cluster.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
static NEXT_SCHEMA: AtomicU64 = AtomicU64::new(0);

/// One cluster for the whole test process, started by the first caller.
pub fn shared() -> &'static Cluster {
    SHARED.get_or_init(Cluster::start)
}

/// The directory holding `initdb`, `pg_ctl` and `psql`, or why there is none.
pub fn bindir() -> Result<PathBuf, String> {
    let has_tools = |d: &Path| ["initdb", "pg_ctl", "psql"].iter().all(|b| d.join(b).is_file());
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Ok(dir);
        }
    }
    // Debian keeps the server's binaries off PATH, one directory per major version.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has_tools(d))
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d).ok_or_else(|| {
        "PostgreSQL's server binaries (initdb, pg_ctl, psql) were found neither by `pg_config --bindir` nor in \
         /usr/lib/postgresql/*/bin: run scripts/setup.sh (it installs Debian's postgresql package)"
            .to_owned()
    })
}

/// `nobody`'s uid and gid, to run the cluster as when this process is root.
fn nobody() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, "nobody"]).output().expect("id nobody");
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().expect("a uid or gid for nobody")
    };
    (id("-u"), id("-g"))
}

fn as_cluster_owner(cmd: &mut Command) -> &mut Command {
    if is_root() {
        let (uid, gid) = nobody();
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn is_root() -> bool {
    // `id -u` rather than a libc call: this crate has no unsafe code and no libc dependency.
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Cluster {
    /// Starts a new cluster (panics, saying why, if it cannot).
    pub fn start() -> Cluster {
        Self::start_with(5432, |_| String::new())
    }

    /// Starts a new cluster that also listens on 127.0.0.1 ([`Cluster::port`]), with TLS when
    /// given a certificate (chain) and its key: PostgreSQL has no TLS on a Unix socket. The port
    /// is one the system just gave as free; another process taking it in between fails the
    /// start (a panic saying so), never a test against the wrong server.
    pub fn start_tcp(tls: Option<(&Path, &Path)>) -> Cluster {
        Self::start_tcp_on(std::net::Ipv4Addr::LOCALHOST.into(), tls)
    }

    /// [`Cluster::start_tcp`] on `ip`, an address of this host (a test network's bridge, which
    /// nodes in other network namespaces reach), accepting `trust` connections from every
    /// subnet the host is directly on (`samenet`).
    pub fn start_tcp_on(ip: std::net::IpAddr, tls: Option<(&Path, &Path)>) -> Cluster {
        let port = std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("a free port").port();
        Self::start_with(port, |dir| {
            let hba = dir.join("data").join("pg_hba.conf");
            let mut rules = std::fs::OpenOptions::new().append(true).open(&hba).expect("pg_hba.conf");
            writeln!(rules, "host all all samenet trust").expect("write pg_hba.conf");
            let mut conf = format!("listen_addresses = '{ip}'\n");
            if let Some((cert, key)) = tls {
                // The server refuses a key others can read; as root the cluster runs as nobody.
                for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                    let to = dir.join(name);
                    std::fs::copy(from, &to).expect("copy the certificate and key");
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
                    if is_root() {
                        let (uid, gid) = nobody();
                        std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown to nobody");
                    }
                }
                conf.push_str(&format!(
                    "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                    dir.join("server.crt").display(),
                    dir.join("server.key").display()
                ));
            }
            conf
        })
    }

    /// `extra` gives settings for `postgresql.conf` (after ours: they win), given the cluster's
    /// directory.
    fn start_with(port: u16, extra: impl FnOnce(&Path) -> String) -> Cluster {
        let bindir = bindir().unwrap_or_else(|why| panic!("{why}"));
        // Kept, not removed on drop: the watchdog removes it after stopping the server.
        let dir = tempfile::Builder::new().prefix("allowly-pg-").tempdir().expect("temporary directory").keep();
        // The socket lives here, so the directory is searchable by everyone (the server under
        // test may run as another user); the data directory inside is 0700.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if is_root() {
            let (uid, gid) = nobody();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown to nobody");
        }
        let data = dir.join("data");
        let out = as_cluster_owner(Command::new(bindir.join("initdb")).current_dir(&dir))
            .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "-U", USER, "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Unix socket in the cluster's own directory only; no TCP.
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("conf");
        // Statements slower than a second are logged (`log` in the cluster's directory), so a
        // test that timed out on a loaded machine can be told from a hang.
        writeln!(
            conf,
            "listen_addresses = ''\nunix_socket_directories = '{}'\nmax_connections = 200\n\
             log_min_duration_statement = 1000\nlog_checkpoints = on\nport = {port}\n{}",
            dir.display(),
            extra(&dir)
        )
        .expect("write conf");
        // The shell ignores the signals a terminal or `timeout` sends to the whole process group
        // (pg_ctl puts the server in a session of its own, out of their reach): killed with the
        // test process, the shell could not stop the server; ignoring them, it still sees the
        // end of file and does.
        let script = r#"
            trap '' HUP INT TERM
            "$1/pg_ctl" -D "$2/data" -l "$2/log" -w -t 120 start >/dev/null || exit 1
            echo ready
            read _ignored
            "$1/pg_ctl" -D "$2/data" -m immediate -w stop >/dev/null 2>&1
            rm -rf "$2"
        "#;
        let mut child = as_cluster_owner(Command::new("sh").current_dir(&dir))
            .args(["-c", script, "sh"])
            .arg(&bindir)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the cluster's watchdog shell");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the watchdog");
        if line.trim() != "ready" {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            panic!("PostgreSQL did not start (pg_ctl failed):\n{log}");
        }
        Cluster { dir, bindir, port, watchdog: Mutex::new(Some((child, stdin))) }
    }

    /// The directory of the cluster's Unix socket (libpq's `host`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The port: on its address for a [`Cluster::start_tcp_on`] cluster; for every cluster, the
    /// one in its Unix socket's name.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for database `dbname` as [`USER`], over the Unix socket.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!("host={} port={} user={USER} dbname={dbname}", self.dir.display(), self.port)
    }

    /// Runs SQL with `psql` (stops at the first error); panics with its output if it fails.
    pub fn psql(&self, dbname: &str, sql: &str) -> String {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", dbname, "-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new, empty schema of database `postgres`: its name, and a connection string whose
    /// `search_path` is it. A fresh store for one test, much cheaper than a database.
    pub fn fresh_schema(&self) -> (String, String) {
        let name = format!("t{}_{}", std::process::id(), NEXT_SCHEMA.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE SCHEMA {name}"));
        let conninfo = format!("{} options='-c search_path={name}'", self.conninfo("postgres"));
        (name, conninfo)
    }

    /// Stops the database server (`pg_ctl stop -m fast`: every connection is closed), keeping
    /// its data, as an outage would; [`Cluster::start_server`] starts it again. For a cluster of
    /// its own: the [`shared`] one serves other tests.
    pub fn stop_server(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Starts the server [`Cluster::stop_server`] stopped, on the same data.
    pub fn start_server(&self) {
        let log = self.dir.join("log");
        self.pg_ctl(&["-l", log.to_str().expect("UTF-8 path"), "-w", "-t", "120", "start"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = as_cluster_owner(&mut Command::new(self.bindir.join("pg_ctl")))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .output()
            .expect("run pg_ctl");
        assert!(out.status.success(), "pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A new, empty database and its connection string.
    pub fn fresh_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.conninfo(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // End of file on the watchdog's stdin: it stops the server and removes the directory.
        if let Some((mut child, stdin)) = self.watchdog.lock().map(|mut w| w.take()).ok().flatten() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

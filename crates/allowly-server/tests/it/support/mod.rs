//! Harness for the black-box tests: runs the real `allowly` binary (with the real signer next to
//! it) on a free port in a temp dir, talks raw HTTP/1.1 to it over TCP, polls instead of
//! sleeping, and prints the server's output when a test fails.
#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

/// The value of `series` (its name and labels, exactly as exposed) in a Prometheus text
/// exposition, if it is there.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The `allowly-verify` binary built next to `allowly`.
pub fn verifier_bin() -> PathBuf {
    let bin = Path::new(allowly_bin()).with_file_name("allowly-verify");
    assert!(bin.is_file(), "{} is missing: run `cargo build -p allowly-verify`", bin.display());
    bin
}

/// Runs `allowly-verify bundle FILE --keys KEYS [--checkpoint CP]...`; returns its exit code
/// and a description of the run.
pub fn run_verifier(bundle: &Path, keys: &Path, checkpoints: &[PathBuf]) -> (Option<i32>, String) {
    let mut cmd = Command::new(verifier_bin());
    cmd.arg("bundle").arg(bundle).arg("--keys").arg(keys);
    for cp in checkpoints {
        cmd.arg("--checkpoint").arg(cp);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let shown = format!(
        "{cmd:?} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), shown)
}

/// This package's directory, read when the test runs (cargo sets it): the value compiled in
/// can name another checkout that shared the target directory and built this binary.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    manifest_dir().join("../..")
}

/// A program of the project's Python venv (`scripts/setup.sh` installs it and what the tests
/// need in it: a missing one fails the test, never skips it).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("ALLOWLY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/allowly/venv"));
    let bin = venv.join("bin").join(name);
    assert!(bin.is_file(), "{} is missing: run scripts/setup.sh", bin.display());
    bin
}

/// Everything useful about a finished command, for assertion messages.
pub fn describe_output(what: &str, out: &std::process::Output) -> String {
    format!(
        "{what}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Everything in these tests waits at most this long.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Poll interval of [`eventually`].
pub const POLL: Duration = Duration::from_millis(20);

/// The binary under test.
pub fn allowly_bin() -> &'static str {
    env!("CARGO_BIN_EXE_allowly")
}

/// The signer binary the server finds next to itself.
pub fn signer_bin() -> PathBuf {
    let bin = Path::new(allowly_bin()).with_file_name("allowly-signer");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p allowly-signer` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// Polls `f` every [`POLL`] until it returns `Some`, failing with `what` and `diag()` after
/// [`DEADLINE`].
pub fn eventually<T>(what: &str, diag: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}\n{}", diag());
        std::thread::sleep(POLL);
    }
}

/// A running `allowly serve`. SIGKILLed and reaped on drop; its output is printed if the test
/// is failing.
pub struct Server {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn drain(
    pipe: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<String>>,
    first_line: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut first_line = first_line;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    into.lock().expect("lock").push_str(&line);
                    if let Some(tx) = first_line.take() {
                        let _ = tx.send(line.clone());
                    }
                }
            }
        }
    });
}

impl Server {
    /// `allowly serve --data-dir <dir> --listen 127.0.0.1:0`, waiting for its first stdout line.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        signer_bin();
        let mut cmd = Command::new(allowly_bin());
        cmd.arg("serve").arg("--data-dir").arg(data_dir).args(["--listen", "127.0.0.1:0"]).args(extra);
        Self::start_command(cmd, data_dir)
    }

    /// Starts `cmd`, which must end up running `allowly serve --data-dir <data_dir>` (e.g. under
    /// `setpriv`), with the same environment clean-up and first-line wait as [`Self::start`].
    pub fn start_command(mut cmd: Command, data_dir: &Path) -> Self {
        for var in [
            "ALLOWLY_DATA_DIR",
            "ALLOWLY_LISTEN",
            "ALLOWLY_SIGNER_SOCKET",
            "ALLOWLY_SIGNER_BIN",
            "ALLOWLY_SIGNER_KEYSTORE",
            "ALLOWLY_PKCS11_MODULE",
            "ALLOWLY_PKCS11_TOKEN_LABEL",
            "ALLOWLY_PKCS11_PIN_FILE",
            "ALLOWLY_CONFIG",
            "ALLOWLY_BODY_LIMIT",
            "ALLOWLY_MAX_CONNECTIONS",
            "ALLOWLY_MAX_CONNECTIONS_PER_ADDRESS",
            "ALLOWLY_REQUEST_READ_TIMEOUT_MS",
            "ALLOWLY_METRICS_TOKEN_FILE",
            "ALLOWLY_RATE_LIMIT_PER_SECOND",
            "ALLOWLY_RATE_LIMIT_BURST",
            "ALLOWLY_SIGNER_MASTER_KEY",
            "ALLOWLY_WEBHOOK_BASE_BACKOFF_MS",
            "ALLOWLY_WEBHOOK_MAX_BACKOFF_MS",
            "ALLOWLY_WEBHOOK_GIVE_UP_AFTER_MS",
            "ALLOWLY_WEBHOOK_ATTEMPT_TIMEOUT_MS",
            "ALLOWLY_WEBHOOK_RETENTION_MS",
            "ALLOWLY_WEBHOOK_ALLOW_PRIVATE_NETWORKS",
            "ALLOWLY_SIGNER_TIMEOUT_MS",
            "ALLOWLY_MIN_FREE_DISK",
            "ALLOWLY_MAX_UNSIGNED_AGE_MS",
            "ALLOWLY_USER",
            "ALLOWLY_SIGNER_USER",
            "ALLOWLY_POSTGRES",
            "ALLOWLY_NODE_NAME",
            "ALLOWLY_ADVERTISE_URL",
            "ALLOWLY_LEASE_TTL_MS",
        ] {
            // Unless the test itself set it on `cmd` (a cluster's shared master key).
            if !cmd.get_envs().any(|(k, v)| k == var && v.is_some()) {
                cmd.env_remove(var);
            }
        }
        // The caller may ask for other logging (a test of the logs does).
        if !cmd.get_envs().any(|(k, _)| k == "ALLOWLY_LOG") {
            cmd.env("ALLOWLY_LOG", "info");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let (stdout, stderr) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(String::new())));
        let (tx, rx) = mpsc::channel();
        drain(child.stdout.take().expect("stdout"), stdout.clone(), Some(tx));
        drain(child.stderr.take().expect("stderr"), stderr.clone(), None);
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "allowly printed no `listening on` line within {DEADLINE:?} (status {status:?})\n--- stderr ---\n{}",
                    stderr.lock().expect("lock")
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"));
        Self { child: Some(child), data_dir: data_dir.to_owned(), addr, stdout, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    pub fn diagnostics(&self) -> String {
        format!("--- allowly stdout ---\n{}\n--- allowly stderr ---\n{}", self.stdout(), self.stderr())
    }

    /// The instance admin key.
    pub fn admin_token(&self) -> String {
        let path = self.data_dir.join("admin-token");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
    }

    pub fn client(&self) -> Client {
        Client { addr: self.addr }
    }

    /// The pid of the live signer (polled until there is one): the server's child, or, started
    /// as root, the child of its keeper.
    pub fn signer_pid(&self) -> u32 {
        let me = self.pid();
        eventually("a signer", || self.diagnostics(), || descendants_named(me, "allowly-signer").first().copied())
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// Polls `/readyz` until it answers 200 (signer answering, engine accepting work).
    pub fn wait_ready(&self) {
        let c = self.client();
        eventually(
            "/readyz to answer 200",
            || self.diagnostics(),
            || (c.get("/readyz", None).status == 200).then_some(()),
        );
    }

    /// Waits for the server to exit by itself, failing after [`DEADLINE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("child");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(start.elapsed() < DEADLINE, "allowly did not exit within {DEADLINE:?}\n{}", self.diagnostics());
            std::thread::sleep(POLL);
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        self.signal(rustix::process::Signal::TERM);
        let status = self.wait_exit();
        assert!(status.success(), "allowly exited with {status} on SIGTERM\n{}", self.diagnostics());
        self.child = None;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.kill9();
        if panicking {
            eprintln!("{}", self.diagnostics());
        }
    }
}

/// Live (not zombie) children of `parent` whose command name is `name`.
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(comm, state, ppid)| comm == name && state != "Z" && ppid == parent))
        .collect()
}

/// Live children and grandchildren of `root` named `name` (a signer started by the server
/// itself, or, started as root, by its keeper).
pub fn descendants_named(root: u32, name: &str) -> Vec<u32> {
    let mut out = children_named(root, name);
    for keeper in children_named(root, "allowly") {
        out.extend(children_named(keeper, name));
    }
    out
}

/// Whether `pid` is a live process (a zombie nobody reaps counts as dead).
pub fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(_, state, _)| state != "Z")
}

/// `(comm, state, ppid)` from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(String, String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.to_owned();
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// splitmix64, seeded from `ALLOWLY_TEST_SEED` or the clock (printed, so a failing schedule
/// replays).
pub struct Rng(u64);

impl Rng {
    pub fn seeded(test: &str) -> Self {
        let seed = std::env::var("ALLOWLY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (now.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
        });
        eprintln!("{test}: seed {seed} (replay with ALLOWLY_TEST_SEED={seed})");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// One workspace with an admin, a read and a check key and one authorization, all created over
/// HTTP (each acknowledged, so each must survive a crash too).
#[derive(Debug, Clone)]
pub struct Tenant {
    pub ws: String,
    pub admin: String,
    pub reader: String,
    pub reader_id: String,
    pub checker: String,
    pub az: String,
}

/// A workspace named `name` (as the instance admin), its keys, and an authorization for `scopes`.
pub fn tenant(s: &Server, name: &str, scopes: &[&str]) -> Tenant {
    tenant_as(s, &s.admin_token(), name, scopes)
}

/// [`tenant`] made through `s` with the instance admin key `root` (another node's, in a
/// cluster: only the first node writes the key to its data directory).
pub fn tenant_as(s: &Server, root: &str, name: &str, scopes: &[&str]) -> Tenant {
    tenant_through(&s.client(), root, name, scopes)
}

/// [`tenant_as`] through `c` (a server reached some other way, e.g. through a TLS bridge).
pub fn tenant_through(c: &Client, root: &str, name: &str, scopes: &[&str]) -> Tenant {
    let root = root.to_owned();
    let ws = c.post("/v1/workspaces", &root, json!({ "name": name })).created("workspace")["id"]
        .as_str()
        .expect("workspace id")
        .to_owned();
    let key = |roles: &[&str]| {
        let v = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": roles })).created("key");
        (v["id"].as_str().expect("key id").to_owned(), v["secret"].as_str().expect("key secret").to_owned())
    };
    let (_, admin) = key(&["admin"]);
    let (reader_id, reader) = key(&["read"]);
    let (_, checker) = key(&["check"]);
    let v = c.post("/v1/authorizations", &admin, json!({ "subject": "user-1", "scopes": scopes })).created("grant");
    let az = v["authorization"]["id"].as_str().expect("authorization id").to_owned();
    Tenant { ws, admin, reader, reader_id, checker, az }
}

/// File mode bits of `path`.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client: one connection per request, so every test sees exactly what the
// server sent, including on requests a library client would refuse to send.

/// An answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self}"))
    }

    /// Checks that this is a 201 (`what` names it in the failure); returns the JSON body.
    pub fn created(&self, what: &str) -> serde_json::Value {
        assert_eq!(self.status, 201, "{what}: {self}");
        self.json()
    }

    /// Checks that this is a problem document with `code` and `status`, carrying the request id
    /// of the `Request-Id` header; returns the document.
    pub fn problem(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "status: {self}");
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self}");
        let p = self.json();
        assert_eq!(p["code"], code, "{self}");
        assert_eq!(p["status"], status, "{self}");
        assert_eq!(p["type"], format!("urn:allowly:problem:{code}"), "{self}");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{self}");
        assert!(p["detail"].is_string(), "{self}");
        let rid = self.header("request-id").unwrap_or_else(|| panic!("no Request-Id header: {self}"));
        assert_eq!(p["request_id"], rid, "{self}");
        p
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {:?} {}", self.status, self.headers, self.text())
    }
}

/// A client of one server.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
}

impl Client {
    /// A request with an optional bearer key and an optional JSON body.
    pub fn call(&self, method: &str, path: &str, key: Option<&str>, json: Option<&serde_json::Value>) -> Resp {
        let mut headers = Vec::new();
        if let Some(k) = key {
            headers.push(("Authorization".to_owned(), format!("Bearer {k}")));
        }
        let body = json.map(|j| j.to_string().into_bytes());
        if body.is_some() {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        }
        self.request(method, path, &headers, body.as_deref())
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Resp {
        self.call("GET", path, key, None)
    }

    pub fn post(&self, path: &str, key: &str, json: serde_json::Value) -> Resp {
        self.call("POST", path, Some(key), Some(&json))
    }

    /// A request with a `Content-Length` body.
    pub fn request(&self, method: &str, path: &str, headers: &[(String, String)], body: Option<&[u8]>) -> Resp {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.raw(&bytes)
    }

    /// Sends `bytes` as they are and reads the answer until the server closes.
    pub fn raw(&self, bytes: &[u8]) -> Resp {
        let mut s = TcpStream::connect(self.addr).unwrap_or_else(|e| panic!("connect {}: {e}", self.addr));
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        // The server may answer and close before reading everything (e.g. a 413): keep going.
        let _ = s.write_all(bytes);
        let (out, error) = read_until_closed(&mut s);
        if let (Some(e), true) = (error, out.is_empty()) {
            panic!("reading from {}: {e}", self.addr);
        }
        parse_response(&out)
    }
}

/// Reads until the server closes the connection. An error (the server died, or went silent for
/// the read timeout) ends it with what arrived so far, and is returned with it. A signal (a
/// child exiting, a test stopping the signer) is not the server's answer: it reads again.
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return (out, Some(e)),
        }
    }
}

/// A request that tolerates the server dying under it (`kill -9`, a power cut): `None` unless
/// a complete answer (its whole `Content-Length` body) arrived.
pub fn try_request(addr: SocketAddr, method: &str, path: &str, key: &str, body: &[u8]) -> Option<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    // The server dying mid-answer ends the read: what arrived so far decides.
    let (raw, _) = read_until_closed(&mut s);
    let (status, headers, rest) = split_response(&raw)?;
    let len: usize = headers.iter().find(|(k, _)| k == "content-length")?.1.parse().ok()?;
    (rest.len() == len).then(|| Resp { status, headers, body: rest.to_vec() })
}

/// Header names (in lower case) and values.
type Headers = Vec<(String, String)>;

/// An answer's status, headers and the bytes after its head; `None` without a whole head and a
/// status code.
fn split_response(raw: &[u8]) -> Option<(u16, Headers, &[u8])> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers, &raw[split + 4..]))
}

/// A whole answer as it came off the wire (panics without a head and a status code).
pub fn parse_response(raw: &[u8]) -> Resp {
    let (status, headers, rest) = split_response(raw)
        .unwrap_or_else(|| panic!("no response head with a status code in {:?}", String::from_utf8_lossy(raw)));
    let mut body = rest.to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    } else if let Some(len) =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok())
    {
        assert_eq!(body.len(), len, "body shorter or longer than its Content-Length");
    }
    Resp { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).expect("utf8").trim(), 16).expect("size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// A free loopback port for a child process that binds it later (a receiver, a witness,
/// Prometheus). Taken below the kernel's ephemeral range (32768–60999 by default), from a
/// sequence of this process: a port from `bind(127.0.0.1:0)` was released before the child bound
/// it, and another test's `bind(0)` or outgoing connection could take it meanwhile (it did:
/// `EADDRINUSE` failed a webhooks test). Below that range only explicit binds compete, and each
/// call here hands out a different port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 8_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Another test binary running at the same time starts elsewhere in the range.
    let start = (std::process::id() % 8) as u16 * (SPAN / 8);
    for _ in 0..SPAN {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

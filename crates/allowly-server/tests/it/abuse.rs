//! The front end under abuse (issue 14 part 5), against the real binary: a head or a body
//! trickled byte by byte gets `408 request_timeout` and a closed connection at the read
//! deadline (not before); a flood of idle connections at the overall cap costs the oldest idle
//! ones, never a new client; one address over its cap is refused while another is served; a
//! key over its rate gets `429 rate_limited` with `Retry-After` while other keys are not
//! limited; `/metrics` takes its bearer token when one is configured. Each runs while a
//! well-behaved client keeps being served (`Background`).
//!
//! Timing: deadlines are asserted as "not before the deadline" and "within the deadline plus
//! a generous slack"; nothing sleeps to synchronise (the tricklers pace their own bytes, which
//! is the abuse under test).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{self, eventually, parse_response, tenant, Resp, Server, DEADLINE};

/// The read deadline the deadline tests configure: short, so a test takes seconds.
const READ_TIMEOUT: Duration = Duration::from_millis(1500);
/// One trickled byte per this.
const TRICKLE: Duration = Duration::from_millis(100);

/// A client that keeps doing `GET /healthz` on fresh connections while a test abuses the
/// server, and must be served every time.
struct Background {
    stop: Arc<AtomicBool>,
    /// Requests served so far.
    served: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Background {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                match healthz(addr) {
                    Ok(r) if r.status == 200 => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("answered {r}")),
                    Err(e) => failures.push(e),
                }
                if started.elapsed() > Duration::from_secs(5) {
                    failures.push(format!("a /healthz took {:?}", started.elapsed()));
                }
            }
            failures
        });
        Self { stop, served, thread: Some(thread) }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Waits until the client was served more than `mark` requests in all (a busy machine may
    /// not have run its thread yet), then stops it; asserts it was served every time.
    fn finish_after(mut self, s: &Server, mark: usize) {
        let thread = self.thread.take().expect("thread");
        eventually(
            "the well-behaved client to be served",
            || s.diagnostics(),
            || (self.served() > mark || thread.is_finished()).then_some(()),
        );
        self.stop.store(true, Ordering::Relaxed);
        let failures = thread.join().expect("background client");
        assert!(failures.is_empty(), "the well-behaved client was not served: {failures:?}\n{}", s.diagnostics());
        assert!(
            self.served() > mark,
            "the well-behaved client was served {} requests\n{}",
            self.served(),
            s.diagnostics()
        );
    }

    /// Stops the client once it was served at least once; asserts it was served every time.
    fn finish(self, s: &Server) {
        self.finish_after(s, 0);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `GET /healthz` on a fresh connection, without panicking.
fn healthz(addr: SocketAddr) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(DEADLINE)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    if !out.starts_with(b"HTTP/1.1 ") {
        return Err(format!("no answer: {:?}", String::from_utf8_lossy(&out)));
    }
    Ok(parse_response(&out))
}

/// What a trickling client saw.
struct Trickled {
    answer: Vec<u8>,
    /// From the first byte sent to the server closing the connection.
    closed_after: Duration,
}

/// Sends `at_once`, then `trickled` one byte per [`TRICKLE`], reading in between; stops
/// sending at the first byte of an answer and reads until the server closes the connection.
fn trickle(addr: SocketAddr, at_once: &[u8], trickled: &[u8]) -> Trickled {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TRICKLE)).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut next = 0;
    if !at_once.is_empty() {
        s.write_all(at_once).unwrap();
    }
    let mut buf = [0u8; 4096];
    loop {
        assert!(start.elapsed() < DEADLINE, "the server neither answered nor closed within {DEADLINE:?}");
        if answer.is_empty() && next < trickled.len() {
            // The server may close first: then the next read says so.
            let _ = s.write_all(&trickled[next..next + 1]);
            next += 1;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                assert!(next < trickled.len() || !answer.is_empty(), "the whole request went out before the deadline");
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A reset after the answer also closes it.
            Err(_) => break,
        }
    }
    Trickled { answer, closed_after: start.elapsed() }
}

fn assert_timed_out(t: &Trickled, s: &Server) {
    assert!(!t.answer.is_empty(), "closed without an answer after {:?}\n{}", t.closed_after, s.diagnostics());
    parse_response(&t.answer).problem(408, "request_timeout");
    // Not before the deadline (counted from the first byte the server read, which is after
    // the first one sent), and not much after it.
    assert!(t.closed_after >= READ_TIMEOUT, "closed after {:?}, before the deadline", t.closed_after);
    assert!(t.closed_after < READ_TIMEOUT + Duration::from_secs(10), "closed only after {:?}", t.closed_after);
}

fn start_with(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(&dir.path().join("data"), extra);
    s.wait_ready();
    (dir, s)
}

/// A sample of a counter or gauge on `/metrics` (0 when absent).
fn metric(s: &Server, series: &str, token: Option<&str>) -> f64 {
    let mut headers = Vec::new();
    if let Some(t) = token {
        headers.push(("Authorization".to_owned(), format!("Bearer {t}")));
    }
    let r = s.client().request("GET", "/metrics", &headers, None);
    assert_eq!(r.status, 200, "{r}");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn a_head_trickled_byte_by_byte_is_answered_408_and_closed_at_the_read_deadline() {
    let (_dir, s) = start_with(&["--request-read-timeout-ms", "1500"]);
    let bg = Background::start(s.addr);
    // 15 s of head at one byte per 100 ms: it would never complete within the deadline.
    let head = format!("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: {}\r\n\r\n", "s".repeat(150));
    let t = trickle(s.addr, b"", head.as_bytes());
    assert_timed_out(&t, &s);
    bg.finish(&s);
    assert!(metric(&s, "allowly_http_connections_closed_total{reason=\"read_timeout\"}", None) >= 1.0);
}

#[test]
fn a_body_trickled_byte_by_byte_is_answered_408_and_closed_at_the_read_deadline() {
    let (_dir, s) = start_with(&["--request-read-timeout-ms", "1500"]);
    let bg = Background::start(s.addr);
    let body = format!("{{\"name\": \"{}\"}}", "b".repeat(150));
    // The head at once, the body trickled: the deadline counts from the head's first byte.
    let head = format!(
        "POST /v1/workspaces HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        s.admin_token(),
        body.len()
    );
    let t = trickle(s.addr, head.as_bytes(), body.as_bytes());
    assert_timed_out(&t, &s);
    let r = parse_response(&t.answer);
    assert_eq!(r.header("connection"), Some("close"), "{r}");
    bg.finish(&s);
    assert!(metric(&s, "allowly_http_connections_closed_total{reason=\"read_timeout\"}", None) >= 1.0);
    // A body that arrives at once is still fine.
    let ok = s.client().post("/v1/workspaces", &s.admin_token(), json!({ "name": "fast" }));
    assert_eq!(ok.status, 201, "{ok}");
}

/// A connection that sends nothing and is held open, and what the server sent on it.
struct Idle {
    stream: TcpStream,
    received: Vec<u8>,
}

impl Idle {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nonblocking(true).unwrap();
        Self { stream, received: Vec::new() }
    }

    /// Whether the server closed it (end of stream or reset); `false` while it is open.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(n) => self.received.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Closed at the cap before it sent anything: answered `503 too_many_connections` first.
    fn assert_refused(&self, s: &Server) {
        assert!(!self.received.is_empty(), "an idle connection was closed without an answer\n{}", s.diagnostics());
        let r = parse_response(&self.received);
        r.problem(503, "too_many_connections");
        assert_eq!(r.header("retry-after"), Some("1"), "{r}");
    }
}

#[test]
fn an_idle_connection_flood_at_the_cap_closes_the_oldest_idle_connections_not_new_clients() {
    const CAP: usize = 40;
    let (_dir, s) = start_with(&["--max-connections", "40", "--max-connections-per-address", "40"]);
    // Public without a token (no --metrics-token-file).
    assert_eq!(s.client().get("/metrics", None).status, 200);
    let mut flood: Vec<Idle> = (0..CAP).map(|_| Idle::connect(s.addr)).collect();
    let diag = || s.diagnostics();
    // A new, well-behaved client is served once the flood's oldest connection is out of its
    // grace (250 ms). (The kernel hands connections to accept() in the order they were made:
    // the flood's are all open when this one comes.)
    let r = healthz(s.addr).unwrap_or_else(|e| panic!("a new client at the cap: {e}\n{}", s.diagnostics()));
    assert_eq!(r.status, 200, "{r}");
    // The connections asked to close to make room (for it, and for the `/metrics` requests
    // here) are closed: then the client sees all of them closed, none half way.
    eventually("the connections asked to close to be closed", diag, || {
        let evicted = metric(&s, "allowly_http_connections_closed_total{reason=\"evicted\"}", None);
        (evicted >= 1.0 && metric(&s, "allowly_http_connections_evicting", None) == 0.0).then_some(())
    });
    // The oldest idle connection was closed; the newest is still open; what was closed is a
    // prefix of the flood: the oldest ones, each answered 503 (it had sent nothing).
    let shut: Vec<bool> = flood.iter_mut().map(Idle::closed).collect();
    assert!(shut[0], "the oldest idle connection is open: {shut:?}\n{}", s.diagnostics());
    assert!(!shut[CAP - 1], "the newest idle connection was closed: {shut:?}\n{}", s.diagnostics());
    let first_open = shut.iter().position(|c| !c).unwrap();
    assert!(shut[first_open..].iter().all(|c| !c), "closed out of age order: {shut:?}");
    for c in &flood[..first_open] {
        c.assert_refused(&s);
    }
    // The flood goes on (twice the cap more) while a client keeps being served.
    let bg = Background::start(s.addr);
    for _ in 0..2 * CAP {
        flood.push(Idle::connect(s.addr));
    }
    eventually("the second flood to be accepted", diag, || {
        (metric(&s, "allowly_http_connections_accepted_total", None) >= (3 * CAP) as f64).then_some(())
    });
    // Served again with the cap full of the flood's idle connections.
    let mark = bg.served();
    bg.finish_after(&s, mark + 1);
    // (Connections asked to close are counted out of the cap at once, and close just after.)
    eventually("at most the cap open", diag, || {
        (metric(&s, "allowly_http_connections_open", None) <= CAP as f64).then_some(())
    });
    assert!(metric(&s, "allowly_http_connections_closed_total{reason=\"evicted\"}", None) >= CAP as f64);
}

/// A client descheduled between `connect` and `write` while a flood of idle connections turns
/// the cap over: its connection becomes the oldest idle one and is closed. Its request, sent
/// after that, must meet an answer — `503 too_many_connections`, which it can retry — never a
/// bare end of stream. (How long such a client is waited for is the unit test
/// `conn::tests::idle_connections_go_oldest_first_and_none_within_its_grace`.)
#[test]
fn a_client_whose_request_comes_after_the_flood_went_past_it_gets_an_answer_not_a_bare_close() {
    const CAP: usize = 40;
    let (_dir, s) = start_with(&["--max-connections", "40", "--max-connections-per-address", "40"]);
    let diag = || s.diagnostics();
    // Connected, and silent until the flood went past it.
    let mut late = TcpStream::connect(s.addr).unwrap();
    late.set_read_timeout(Some(DEADLINE)).unwrap();
    // Accepted, and read (nothing) before the flood: a request on a later connection is
    // answered only after the server accepted this one and started its connection.
    assert_eq!(s.client().get("/healthz", None).status, 200);
    // Twice the cap of idle connections, every one younger than `late`.
    let mut flood: Vec<Idle> = (0..2 * CAP).map(|_| Idle::connect(s.addr)).collect();
    // The flood's oldest connection closed: every idle one older than it was asked to close
    // first, `late` among them.
    eventually("the flood's oldest connection to be closed", diag, || flood[0].closed().then_some(()));
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    // All there is until the end of the stream (or the reset the request met).
    let mut answer = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match late.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&b[..n]),
        }
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "the late client got no answer: {:?}\n{}",
        String::from_utf8_lossy(&answer),
        diag()
    );
    // Older and as silent as the flood's oldest, it was closed before it: with a refusal.
    let r = parse_response(&answer);
    r.problem(503, "too_many_connections");
    assert_eq!(r.header("retry-after"), Some("1"), "{r}");
    drop(flood);
}

/// A connection from source address `ip` (any 127/8 address reaches a loopback listener).
fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &SocketAddrV4::new(ip, 0)).unwrap();
    connect(&fd, &to).unwrap();
    TcpStream::from(fd)
}

#[test]
fn an_address_over_its_connection_cap_is_refused_while_another_address_is_served() {
    let (_dir, s) = start_with(&["--max-connections-per-address", "4"]);
    let crowded = Ipv4Addr::new(127, 0, 0, 2);
    let held: Vec<TcpStream> = (0..4).map(|_| connect_from(crowded, s.addr)).collect();
    // The fifth from that address (accepted after the four: the kernel queues them in order)
    // is refused with a problem document, and closed.
    let mut fifth = connect_from(crowded, s.addr);
    fifth.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    fifth.read_to_end(&mut out).unwrap_or_else(|e| panic!("the fifth connection: {e}\n{}", s.diagnostics()));
    let refused = parse_response(&out);
    refused.problem(503, "too_many_connections");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused}");
    // Another address is not affected.
    let mut other = connect_from(Ipv4Addr::LOCALHOST, s.addr);
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    other.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    other.read_to_end(&mut out).unwrap();
    assert_eq!(parse_response(&out).status, 200);
    let bg = Background::start(s.addr);
    assert!(metric(&s, "allowly_http_connections_closed_total{reason=\"per_address_limit\"}", None) >= 1.0);
    bg.finish(&s);
    drop(held);
}

/// `POST /v1/check` for `t`'s authorization with key `key`.
fn check(s: &Server, t: &support::Tenant, key: &str) -> Resp {
    s.client().post("/v1/check", key, json!({ "authorization_id": t.az, "scopes": ["files.read"] }))
}

#[test]
fn a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    // The instance default: 1 request per second, bursts of 3.
    let (_dir, s) = start_with(&["--rate-limit-per-second", "1", "--rate-limit-burst", "3"]);
    let a = tenant(&s, "limited", &["files.read"]);
    let b = tenant(&s, "unlimited", &["files.read"]);
    let root = s.admin_token();
    // Only the instance admin sets a workspace's limit (a tenant must not raise its own).
    let put = |ws: &str, key: &str, body: serde_json::Value| {
        let path = format!("/v1/workspaces/{ws}/rate-limit");
        s.client().call("PUT", &path, Some(key), Some(&body))
    };
    put(&b.ws, &b.admin, json!({ "rate_limit": "unlimited" })).problem(403, "forbidden");
    let view = put(&b.ws, &root, json!({ "rate_limit": "unlimited" }));
    assert_eq!((view.status, &view.json()["rate_limit"]), (200, &json!("unlimited")), "{view}");
    put(&b.ws, &root, json!({ "rate_limit": { "requests_per_second": 0 } })).problem(400, "invalid_request");

    let bg = Background::start(s.addr);
    // A's check key: its burst, then 429 (a paused machine refills one token per second).
    let start = Instant::now();
    let mut served = 0;
    let limited = loop {
        let r = check(&s, &a, &a.checker);
        if r.status != 200 {
            break r;
        }
        served += 1;
        let allowed = 3 + start.elapsed().as_secs() + 1;
        assert!(served <= allowed, "{served} checks served within {:?} at 1/s, burst 3", start.elapsed());
    };
    limited.problem(429, "rate_limited");
    let retry: u64 = limited.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert_eq!(retry, 1, "Retry-After at 1 request/s: {limited}");
    // Another key of the same workspace has its own bucket; another workspace's keys are
    // unlimited.
    assert_eq!(s.client().get(&format!("/v1/authorizations/{}", a.az), Some(&a.reader)).status, 200);
    for _ in 0..20 {
        let r = check(&s, &b, &b.checker);
        assert_eq!(r.status, 200, "{r}");
    }
    // A's key is served again once its Retry-After has passed.
    eventually(
        "the limited key to be served again",
        || s.diagnostics(),
        || (check(&s, &a, &a.checker).status == 200).then_some(()),
    );
    // Raising A's limit applies at once (its next request reads the new setting).
    let view = put(&a.ws, &root, json!({ "rate_limit": { "requests_per_second": 100000 } }));
    assert_eq!(view.json()["rate_limit"], json!({ "requests_per_second": 100000, "burst": 100000 }), "{view}");
    for _ in 0..20 {
        let r = check(&s, &a, &a.checker);
        assert_eq!(r.status, 200, "{r}");
    }
    bg.finish(&s);
    assert!(metric(&s, "allowly_http_rate_limited_total", None) >= 1.0);
    // `null` goes back to the instance default, and is shown as such.
    let view = put(&a.ws, &root, json!({ "rate_limit": null }));
    assert_eq!(view.json()["rate_limit"], json!(null), "{view}");
    let shown = s.client().get(&format!("/v1/workspaces/{}", b.ws), Some(&b.reader));
    assert_eq!(shown.json()["rate_limit"], json!("unlimited"), "{shown}");
}

#[test]
fn metrics_take_the_bearer_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me-0123\n").unwrap();
    let s = Server::start_with(&dir.path().join("data"), &["--metrics-token-file", token_file.to_str().unwrap()]);
    s.wait_ready();
    let bg = Background::start(s.addr);
    let c = s.client();
    let none = c.get("/metrics", None);
    none.problem(401, "unauthenticated");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"), "{none}");
    c.get("/metrics", Some("scrape-me-012")).problem(401, "unauthenticated");
    // The instance admin key is not the metrics token.
    c.get("/metrics", Some(&s.admin_token())).problem(401, "unauthenticated");
    let ok = c.get("/metrics", Some("scrape-me-0123"));
    assert_eq!(ok.status, 200, "{ok}");
    assert!(ok.text().contains("allowly_http_connections_open"), "{ok}");
    // The rest stays public.
    assert_eq!(c.get("/healthz", None).status, 200);
    bg.finish(&s);
    // The token never reaches the logs.
    let logs = format!("{}{}", s.stdout(), s.stderr());
    assert!(!logs.contains("scrape-me"), "the metrics token is in the logs:\n{logs}");
}

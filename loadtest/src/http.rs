//! A minimal HTTP/1.1 client over a raw tokio `TcpStream`, written for the generator's hot path.
//!
//! Why not hyper's client: on a 2-core machine where generator and server share the cores,
//! every microsecond the generator spends is taken from the server, and the baselines must be
//! *saturated* (an unsaturated baseline only gives a bound, DESIGN §7). Here a request is a
//! pre-built byte string written with one `write`, and an answer is parsed only as far as the
//! status line and `Content-Length` (enough to find where it ends on a keep-alive connection).
//! One request in flight per connection: no pipelining, which would change what is measured.
//!
//! What is refused (an error, never a guess): a status line that is not `HTTP/1.x NNN`, a head
//! over [`MAX_HEAD`] bytes, a missing, malformed or conflicting `Content-Length`, any
//! `Transfer-Encoding` (the servers measured here always send `Content-Length`), a body over
//! [`MAX_BODY`], and bytes arriving beyond the end of an answer.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Longest accepted response head (status line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest accepted response body.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// The parts of a response head the generator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head including the blank line.
    pub head_len: usize,
    pub content_length: usize,
    /// The server will close the connection after this answer.
    pub close: bool,
}

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    StatusLine,
    HeadTooLong,
    HeaderLine,
    ContentLength,
    MissingContentLength,
    TransferEncoding,
    BodyTooLarge,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::StatusLine => "malformed status line",
            Self::HeadTooLong => "response head too long",
            Self::HeaderLine => "malformed header line",
            Self::ContentLength => "malformed or conflicting Content-Length",
            Self::MissingContentLength => "response without Content-Length",
            Self::TransferEncoding => "Transfer-Encoding is not supported by this client",
            Self::BodyTooLarge => "response body too large",
        };
        f.write_str(s)
    }
}

/// Parses a response head from the start of `buf`. `Ok(None)`: not complete yet, read more.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ParseError> {
    let Some(end) = find_blank_line(buf) else {
        if buf.len() > MAX_HEAD {
            return Err(ParseError::HeadTooLong);
        }
        // A status line can be rejected before the rest arrives.
        if buf.len() >= 12 {
            status_of(&buf[..12])?;
        }
        return Ok(None);
    };
    let head_len = end + 4;
    if head_len > MAX_HEAD {
        return Err(ParseError::HeadTooLong);
    }
    let mut lines = buf[..end].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().ok_or(ParseError::StatusLine)?;
    let status = status_of(status_line)?;
    let http10 = status_line.starts_with(b"HTTP/1.0");
    let mut content_length: Option<usize> = None;
    let mut close = http10;
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').ok_or(ParseError::HeaderLine)?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(ParseError::HeaderLine);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(ParseError::ContentLength)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(ParseError::ContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(ParseError::TransferEncoding);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    // 1xx, 204 and 304 have no body by definition (RFC 9112 §6.3).
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    let content_length = match content_length {
        Some(n) if n > MAX_BODY => return Err(ParseError::BodyTooLarge),
        Some(n) => n,
        None if bodiless => 0,
        None => return Err(ParseError::MissingContentLength),
    };
    Ok(Some(Head { status, head_len, content_length, close }))
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// `HTTP/1.x NNN` followed by a space or the end of the line.
fn status_of(line: &[u8]) -> Result<u16, ParseError> {
    let ok = line.len() >= 12
        && line.starts_with(b"HTTP/1.")
        && line[7].is_ascii_digit()
        && line[8] == b' '
        && line[9..12].iter().all(u8::is_ascii_digit)
        && (line.len() == 12 || line[12] == b' ' || line[12] == b'\r');
    if !ok {
        return Err(ParseError::StatusLine);
    }
    Ok(line[9..12].iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Digits only (no sign, no spaces inside), at most 18 of them so it cannot overflow.
fn parse_decimal(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// A request as it goes on the wire.
pub fn build_request(method: &str, path: &str, host: &str, auth: Option<&str>, body: Option<&[u8]>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(a) = auth {
        r.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// Why a round trip failed.
#[derive(Debug)]
pub enum RoundTripError {
    Io(io::Error),
    Parse(ParseError),
    /// The peer closed the connection before a whole answer arrived.
    Closed,
    /// Bytes arrived beyond the end of the answer (no request was pipelined).
    Trailing,
}

impl fmt::Display for RoundTripError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "io: {e}"),
            Self::Parse(e) => write!(f, "bad response: {e}"),
            Self::Closed => f.write_str("connection closed mid-answer"),
            Self::Trailing => f.write_str("unexpected bytes after an answer"),
        }
    }
}

impl From<io::Error> for RoundTripError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// One keep-alive connection; one request in flight at a time.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Storage for one answer; only `buf[..filled]` holds data. Its length only grows (to the
    /// largest answer seen), so reads need no zeroing on the hot path.
    buf: Vec<u8>,
    filled: usize,
    /// The last answer said `Connection: close`: reconnect before the next request.
    pub closed: bool,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are single small writes; Nagle would only delay them.
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: vec![0; 8192], filled: 0, closed: false })
    }

    /// Sends `req` and reads one whole answer. Returns the status and, when `keep_body`, the
    /// body (the hot path discards it).
    pub async fn roundtrip(&mut self, req: &[u8], keep_body: bool) -> Result<(u16, Vec<u8>), RoundTripError> {
        self.write_all(req).await?;
        self.filled = 0;
        let head = loop {
            if let Some(h) = parse_head(&self.buf[..self.filled]).map_err(RoundTripError::Parse)? {
                break h;
            }
            self.read_some().await?;
        };
        let end = head.head_len + head.content_length;
        while self.filled < end {
            self.read_some().await?;
        }
        if self.filled > end {
            return Err(RoundTripError::Trailing);
        }
        self.closed = head.close;
        let body = if keep_body { self.buf[head.head_len..end].to_vec() } else { Vec::new() };
        Ok((head.status, body))
    }

    async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            // Try first: the socket is almost always writable, which saves a readiness poll.
            match self.stream.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stream.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn read_some(&mut self) -> Result<(), RoundTripError> {
        if self.buf.len() - self.filled < 4096 {
            // Bounded: parse_head refuses heads over MAX_HEAD and bodies over MAX_BODY.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(&mut self.buf[self.filled..]) {
                Ok(0) => return Err(RoundTripError::Closed),
                Ok(n) => {
                    self.filled += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<Head>, ParseError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn parses_a_keep_alive_answer() {
        let h =
            head("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}")
                .expect("valid")
                .expect("complete");
        assert_eq!(h.status, 200);
        assert_eq!(h.content_length, 15);
        assert_eq!(h.head_len, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 15\r\n\r\n".len());
        assert!(!h.close);
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert_eq!(head(""), Ok(None));
        assert_eq!(head("HTTP/1"), Ok(None));
    }

    #[test]
    fn status_without_reason_and_connection_close() {
        let h =
            head("HTTP/1.1 503\r\nContent-Length: 0\r\nConnection: keep-alive, Close\r\n\r\n").expect("ok").expect("c");
        assert_eq!((h.status, h.content_length, h.close), (503, 0, true));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n").expect("ok").expect("c");
        assert!(h.close, "HTTP/1.0 closes unless keep-alive");
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n").expect("ok").expect("c");
        assert!(!h.close);
    }

    #[test]
    fn bodiless_statuses_need_no_length() {
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").expect("ok").expect("c").content_length, 0);
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n"), Err(ParseError::MissingContentLength));
    }

    #[test]
    fn refuses_malformed_input() {
        assert_eq!(head("HTTP/2 200 OK\r\n\r\n"), Err(ParseError::StatusLine));
        assert_eq!(head("HTTP/1.1 20x OK\r\n\r\n"), Err(ParseError::StatusLine));
        assert_eq!(head("HTTP/1.1 2000 OK\r\n\r\n"), Err(ParseError::StatusLine));
        assert_eq!(head("SSH-2.0-OpenSSH_9\r\n"), Err(ParseError::StatusLine), "rejected before the head ends");
        assert_eq!(head("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"), Err(ParseError::HeaderLine));
        assert_eq!(head("HTTP/1.1 200 OK\r\nbad name: 1\r\n\r\n"), Err(ParseError::HeaderLine));
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), Err(ParseError::ContentLength));
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n"), Err(ParseError::ContentLength));
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n"), Err(ParseError::ContentLength));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"),
            Err(ParseError::ContentLength)
        );
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n")
            .expect("same value twice")
            .is_some());
        assert_eq!(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(ParseError::TransferEncoding));
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n"), Err(ParseError::BodyTooLarge));
        let long = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(head(&long), Err(ParseError::HeadTooLong));
    }

    #[test]
    fn builds_requests() {
        let r = build_request("POST", "/v1/check", "h:1", Some("k"), Some(b"{}"));
        assert_eq!(
            String::from_utf8(r).expect("ascii"),
            "POST /v1/check HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer k\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let r = build_request("GET", "/healthz", "h:1", None, None);
        assert_eq!(r, b"GET /healthz HTTP/1.1\r\nHost: h:1\r\n\r\n");
    }

    /// A server that answers each request with the next of `answers`, written in 3-byte pieces
    /// (so the client sees every partial state; 1000-byte pieces for long answers).
    async fn serve(answers: Vec<&'static [u8]>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((s, _)) = l.accept().await else { return };
            let mut got = Vec::new();
            for a in answers {
                // Wait for a whole request head (the tests send no bodies).
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut b = [0u8; 512];
                    let _ = s.readable().await;
                    match s.try_read(&mut b) {
                        Ok(0) => return,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                        Err(_) => continue,
                    }
                }
                got.clear();
                for piece in a.chunks(if a.len() > 1000 { 1000 } else { 3 }) {
                    let _ = s.writable().await;
                    let _ = s.try_write(piece);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        addr
    }

    use std::time::Duration;

    #[tokio::test]
    async fn round_trips_on_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ])
        .await;
        let mut c = Conn::connect(addr).await.expect("connect");
        let req = build_request("GET", "/", "x", None, None);
        assert_eq!(c.roundtrip(&req, true).await.expect("first"), (200, b"hello".to_vec()));
        assert!(!c.closed);
        assert_eq!(c.roundtrip(&req, false).await.expect("second"), (503, Vec::new()));
        assert!(c.closed);
    }

    #[tokio::test]
    async fn refuses_bad_answers() {
        let req = build_request("GET", "/", "x", None, None);
        let addr = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"]).await;
        let mut c = Conn::connect(addr).await.expect("connect");
        assert!(matches!(c.roundtrip(&req, false).await, Err(RoundTripError::Trailing)));
        let addr = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]).await;
        let mut c = Conn::connect(addr).await.expect("connect");
        assert!(matches!(c.roundtrip(&req, false).await, Err(RoundTripError::Closed)));
        let addr = serve(vec![b"garbage that is not http\r\n\r\n"]).await;
        let mut c = Conn::connect(addr).await.expect("connect");
        assert!(matches!(c.roundtrip(&req, false).await, Err(RoundTripError::Parse(ParseError::StatusLine))));
    }

    #[tokio::test]
    async fn large_body_grows_the_buffer() {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n".to_vec();
            v.extend(std::iter::repeat_n(b'z', 20000));
            v
        });
        let addr = serve(vec![big.as_slice()]).await;
        let mut c = Conn::connect(addr).await.expect("connect");
        let (status, body) = c.roundtrip(&build_request("GET", "/", "x", None, None), true).await.expect("ok");
        assert_eq!((status, body.len()), (200, 20000));
    }
}

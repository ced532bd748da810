//! Reading requests strictly: request ids, path ids, JSON bodies (media type, size limit, serde
//! error classes) and query strings. Everything here returns a [`Problem`] instead of panicking.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// Longest accepted request id and path id.
pub const MAX_ID_LEN: usize = 128;

/// After a body went over the limit, at most this much more is read and discarded (and for at
/// most [`DRAIN_TIME`]) so the client can read the 413 instead of a connection reset. Past it
/// the connection is closed.
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Whether a client-supplied `Request-Id` is acceptable as is: 1..=128 of `[A-Za-z0-9._-]`.
pub fn valid_request_id(s: &[u8]) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len()) && s.iter().all(|&b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether a path segment can be an object id: 1..=128 of `[A-Za-z0-9_-]`.
pub fn valid_path_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The request and response header carrying the request id.
pub const REQUEST_ID: &str = "request-id";

/// Request ids for requests that bring none: a per-process random prefix and a counter, unique
/// without a syscall per request.
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // A clock-derived prefix if the OS has no randomness for us: ids stay unique per run.
        if getrandom::getrandom(&mut seed).is_err() {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            seed = (now.as_nanos() as u64).to_be_bytes();
        }
        Self { prefix: format!("req_{}", hex::encode(seed)), next: AtomicU64::new(1) }
    }

    pub fn next(&self) -> String {
        format!("{}_{:x}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the request declares `application/json` (parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Whether the request's head declares a body (`Content-Length` above 0, or a transfer coding).
pub fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// A request body that may hold data: declared by `Content-Length > 0` or by chunked transfer.
fn has_body(headers: &HeaderMap, body: &hyper::body::Incoming) -> bool {
    use hyper::body::Body as _;
    let declared_empty = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n == 0);
    !declared_empty && !body.is_end_stream()
}

/// What a request body must keep to: its size, and when the whole request (head and body)
/// must have arrived.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Bytes.
    pub size: usize,
    /// The request's read deadline: its first byte's arrival plus the read timeout.
    pub deadline: tokio::time::Instant,
    /// The read timeout (for the answer's detail).
    pub timeout: Duration,
}

/// Reads the whole body into memory, never holding more than `limit.size` bytes (an over-long
/// `Content-Length` is refused before reading, a chunked body as soon as it crosses the limit)
/// and never past `limit.deadline` (408; the caller closes the connection).
pub async fn read_body(
    headers: &HeaderMap,
    mut body: hyper::body::Incoming,
    limit: BodyLimits,
) -> Result<Bytes, Problem> {
    let size = limit.size;
    if let Some(len) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > size as u64 {
            return Err(Problem::body_too_large(size));
        }
    }
    // One timer, and only if the body is not all there at the first poll (`timeout_at` polls
    // the read first and arms the timer only when it must wait).
    let read = tokio::time::timeout_at(limit.deadline, async {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Problem::invalid(format!("reading the body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            if data.len() > size - buf.len() {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
        Ok(Some(buf.freeze()))
    })
    .await;
    match read {
        Err(_elapsed) => Err(Problem::request_timeout(limit.timeout)),
        Ok(Err(p)) => Err(p),
        Ok(Ok(Some(bytes))) => Ok(bytes),
        Ok(Ok(None)) => {
            drain(body).await;
            Err(Problem::body_too_large(size))
        }
    }
}

/// Reads and discards what is left of a body, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(mut body: hyper::body::Incoming) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            if n > left {
                return;
            }
            left -= n;
        }
    })
    .await;
}

/// The bytes of a body that must be `application/json` (within `limit`).
pub async fn json_bytes(headers: &HeaderMap, body: hyper::body::Incoming, limit: BodyLimits) -> Result<Bytes, Problem> {
    if !is_json(headers) {
        return Err(Problem::unsupported_media_type());
    }
    read_body(headers, body, limit).await
}

/// The bytes of an optional JSON body: `None` when the request has none, else as
/// [`json_bytes`].
pub async fn optional_json_bytes(
    headers: &HeaderMap,
    body: hyper::body::Incoming,
    limit: BodyLimits,
) -> Result<Option<Bytes>, Problem> {
    if !has_body(headers, &body) {
        return Ok(None);
    }
    json_bytes(headers, body, limit).await.map(Some)
}

/// A body that must hold no fields (`{}`, or nothing): the body of a POST that takes no input
/// (`Cx::empty_body`).
#[derive(Debug, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// Parses JSON into a request type, telling apart malformed JSON, unknown fields (request types
/// deny them) and wrong or missing fields.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // serde lets a struct be read from an array (fields by position): require an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Problem::invalid("the body must be a JSON object"),
            Err(e) => Problem::malformed_json(e.to_string()),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            // serde_json reports some type errors (a number where an enum is expected) as
            // syntax errors: the body is malformed only if it is not JSON at all. (`Value`, not
            // `IgnoredAny`: only decoding strings catches lone surrogates. Error path only; the
            // body is already within the size limit.)
            Category::Syntax | Category::Eof | Category::Io
                if serde_json::from_slice::<serde_json::Value>(bytes).is_err() =>
            {
                Problem::malformed_json(e.to_string())
            }
            Category::Syntax | Category::Eof | Category::Io => Problem::invalid(e.to_string()),
            // serde's wording for `deny_unknown_fields`: "unknown field `x`, expected ...".
            Category::Data if e.to_string().starts_with("unknown field") => Problem::unknown_field(e.to_string()),
            Category::Data => Problem::invalid(e.to_string()),
        }
    })
}

/// A query string checked against the parameters an endpoint knows: an unknown or repeated
/// parameter is an error rather than silently ignored.
#[derive(Debug)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Self, Problem> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !known.contains(&k.as_ref()) {
                return Err(Problem::invalid(format!("unknown query parameter `{}`", truncate(&k))));
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(Problem::invalid(format!("query parameter `{k}` given twice")));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Self { pairs })
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn required_str(&self, name: &str) -> Result<&str, Problem> {
        self.str(name).ok_or_else(|| Problem::invalid(format!("query parameter `{name}` is required")))
    }

    /// A non-negative decimal integer (digits only: no sign, no spaces).
    pub fn u64(&self, name: &str) -> Result<Option<u64>, Problem> {
        let Some(v) = self.str(name) else { return Ok(None) };
        let bad = || Problem::invalid(format!("query parameter `{name}` must be a non-negative integer"));
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        v.parse().map(Some).map_err(|_| bad())
    }

    pub fn required_u64(&self, name: &str) -> Result<u64, Problem> {
        self.u64(name)?.ok_or_else(|| Problem::invalid(format!("query parameter `{name}` is required")))
    }
}

/// A client's string echoed in a message, cut to a readable length.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The `Idempotency-Key` header, if any (the engine checks its length and characters).
pub fn idempotency_key(h: &http::HeaderMap) -> Result<Option<&str>, Problem> {
    let mut values = h.get_all("idempotency-key").iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Problem::invalid("Idempotency-Key given twice"));
    }
    v.to_str().map(Some).map_err(|_| Problem::invalid("Idempotency-Key must be printable ASCII"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
        #[serde(default)]
        b: Option<String>,
    }

    fn code(r: Result<T, Problem>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|p| p.code())
    }

    #[test]
    fn json_errors_are_classified() {
        for (input, expect) in [
            (r#"{"a": 1}"#, "ok"),
            (r#"{"a": 1, "b": "x"}"#, "ok"),
            (r#"{"a": 1"#, "malformed_json"),
            ("", "malformed_json"),
            ("not json", "malformed_json"),
            (r#"{"a": 1} trailing"#, "malformed_json"),
            ("\u{0}", "malformed_json"),
            (r#"{"a": 1, "c": 2}"#, "unknown_field"),
            (r#"{"a": "one"}"#, "invalid_request"),
            (r#"{}"#, "invalid_request"),
            (r#"[1]"#, "invalid_request"),
            (r#" [1, null]"#, "invalid_request"),
            (r#"[1"#, "malformed_json"),
            (r#""a""#, "invalid_request"),
            ("null", "invalid_request"),
            (r#"{"a": -1}"#, "invalid_request"),
            (r#"{"a": 1, "a": 2}"#, "invalid_request"),
        ] {
            assert_eq!(code(parse_json(input.as_bytes())), expect, "input {input:?}");
        }
        assert_eq!(code(parse_json(&[0xff, 0xfe])), "malformed_json");
    }

    #[test]
    fn ids() {
        assert!(valid_request_id(b"abc.DEF_12-3"));
        assert!(valid_request_id(&[b'a'; 128]));
        for bad in [&b""[..], &[b'a'; 129], b"a b", b"a/b", "é".as_bytes(), b"a\nb"] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
        assert!(valid_path_id("ws_1-A"));
        for bad in ["", "a.b", "a%2Fb", "é", &"x".repeat(129)] {
            assert!(!valid_path_id(bad), "{bad:?}");
        }
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert!(valid_request_id(a.as_bytes()), "{a}");
    }

    #[test]
    fn queries_are_strict() {
        let q = Query::parse(Some("log_index=5&tree_size=7"), &["log_index", "tree_size"]).unwrap();
        assert_eq!(q.required_u64("log_index").unwrap(), 5);
        assert_eq!(q.u64("tree_size").unwrap(), Some(7));
        let q = Query::parse(None, &["log_index"]).unwrap();
        assert_eq!(q.required_u64("log_index").unwrap_err().code(), "invalid_request");
        for (raw, name) in
            [("n=-1", "n"), ("n=%2B1", "n"), ("n=1.0", "n"), ("n=", "n"), ("n=99999999999999999999", "n")]
        {
            let q = Query::parse(Some(raw), &["n"]).unwrap();
            assert_eq!(q.u64(name).unwrap_err().code(), "invalid_request", "{raw}");
        }
        assert_eq!(Query::parse(Some("x=1"), &["n"]).unwrap_err().code(), "invalid_request");
        assert_eq!(Query::parse(Some("n=1&n=2"), &["n"]).unwrap_err().code(), "invalid_request");
        let q = Query::parse(Some("c=a%20b"), &["c"]).unwrap();
        assert_eq!(q.str("c"), Some("a b"));
    }

    #[test]
    fn media_type() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (ct, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/jsonx", false),
            ("application/problem+json", false),
        ] {
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_json(&h), ok, "{ct}");
        }
    }
}

//! The operator commands' HTTP client (`admin_cli`, `allowly backup`): one request,
//! `Connection: close`, the answer read to its end, over plain TCP (`http://`, the API on
//! loopback) or TLS (`https://`, the API behind a TLS terminator). TLS is `allowly-tls`'s, as
//! the webhook client's: the Mozilla root set compiled in, or, with `--ca-file`, only the
//! roots in that PEM file (a private CA, a self-signed terminator). Minimal on purpose: no
//! redirects, no proxies, no chunked answers (the server sends `Content-Length`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::error::Error;

/// Where the running server's API is: every operator command that calls it (these and
/// `allowly backup`) takes the same two options.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The server's API address: http://HOST[:PORT], or https://HOST[:PORT] for a server
    /// behind a TLS terminator (its certificate checked against Mozilla's roots, or --ca-file).
    #[arg(long, env = "ALLOWLY_URL", default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub url: String,
    /// With an https:// URL: trust only the CA certificates in this PEM file (a private CA or a
    /// self-signed terminator) instead of Mozilla's roots.
    #[arg(long, env = "ALLOWLY_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// A parsed `--url`: `http://HOST[:PORT]` or `https://HOST[:PORT]`, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// `host:port` to connect to (and, as given, the `Host` header).
    pub authority: String,
    /// The host alone, brackets removed: what the certificate must name.
    pub host: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = || format!("--url must be http://HOST[:PORT] or https://HOST[:PORT], not {url:?}");
        let (tls, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => return Err(bad()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(bad)?;
                (host, after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
            return Err(bad());
        }
        let port = port.unwrap_or(if tls { "443" } else { "80" });
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Self { tls, authority, host: host.to_owned() })
    }
}

/// One request of an operator command (no body).
#[derive(Debug)]
pub struct Request<'a> {
    pub url: &'a str,
    pub ca_file: Option<&'a Path>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub timeout: Duration,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn invalid(what: String) -> Error {
    Error::Io { what, source: std::io::Error::from(std::io::ErrorKind::InvalidInput) }
}

impl Request<'_> {
    /// A 2xx answer's body; any other status is `Error::Remote` with the server's answer.
    pub fn send(&self) -> Result<String, Error> {
        let ep = Endpoint::parse(self.url).map_err(invalid)?;
        if self.ca_file.is_some() && !ep.tls {
            return Err(invalid(format!("--ca-file is for https:// URLs; {} is http://", self.url)));
        }
        let tcp = TcpStream::connect(&ep.authority).map_err(io(format!("connecting to {}", self.url)))?;
        tcp.set_read_timeout(Some(self.timeout)).map_err(io(format!("connecting to {}", self.url)))?;
        let mut head = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", self.method, self.path, ep.authority);
        for (name, value) in self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        let answer = if ep.tls {
            let ca = self.ca_file.map(allowly_tls::CaFile::read).transpose().map_err(|e| invalid(e.to_string()))?;
            let config = Arc::new(allowly_tls::client_config(ca.as_ref()).map_err(|e| invalid(e.to_string()))?);
            let name = ServerName::try_from(ep.host.clone())
                .map_err(|_| invalid(format!("{:?} is not a host name a certificate can name", ep.host)))?;
            let conn = rustls::ClientConnection::new(config, name)
                .map_err(|e| invalid(format!("starting TLS with {}: {e}", self.url)))?;
            exchange(rustls::StreamOwned::new(conn, tcp), head.as_bytes(), self.url)?
        } else {
            exchange(tcp, head.as_bytes(), self.url)?
        };
        if cut_short(&answer) {
            // The server (or something between) closed the connection without a whole answer:
            // the request may or may not have been acted on. Said as a lost answer, which a
            // command holding an `Idempotency-Key` may send again ([`answer_lost`]).
            let e =
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connection closed before a whole answer");
            return Err(io(format!("reading the answer of {}", self.url))(e));
        }
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        if (200..300).contains(&status) {
            Ok(body.to_owned())
        } else {
            Err(Error::Remote { status, body: body.to_owned() })
        }
    }
}

/// Sends `request` and reads the answer to the end of the connection. A TLS peer that closes
/// without `close_notify` (some terminators do) ends the answer too, when it is complete by
/// its `Content-Length`; a cut one is an error.
fn exchange(mut s: impl Read + Write, request: &[u8], url: &str) -> Result<Vec<u8>, Error> {
    s.write_all(request).map_err(io(format!("sending to {url}")))?;
    s.flush().map_err(io(format!("sending to {url}")))?;
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && complete(&answer) => Ok(answer),
        Err(e) => Err(io(format!("reading the answer of {url}"))(e)),
    }
}

/// The `Content-Length` the head of `answer` announces, if its head is whole: `(head end, length)`.
fn announced(answer: &[u8]) -> Option<(usize, Option<usize>)> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
    Some((end + 4, length))
}

/// Whether `answer` holds its whole head and the `Content-Length` bytes the head announces.
fn complete(answer: &[u8]) -> bool {
    announced(answer).is_some_and(|(body, length)| length == Some(answer.len() - body))
}

/// Whether a connection that ended with `answer` ended before its answer did: no whole head,
/// or fewer body bytes than announced. (Without a `Content-Length` the end of the connection is
/// the end of the body.)
fn cut_short(answer: &[u8]) -> bool {
    announced(answer).is_none_or(|(body, length)| length.is_some_and(|n| answer.len() - body < n))
}

/// Whether `e` says the answer to a request that may have been sent was lost on the way: the
/// connection was reset, broke or timed out, or closed before a whole answer. Such a request
/// may or may not have been acted on, so only a request carrying an `Idempotency-Key` may be
/// sent again (the server answers a repeat with the first outcome). A refused connection, a
/// TLS or URL problem, or any answer the server gave, is not a lost answer.
pub fn answer_lost(e: &Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e,
        Error::Io { source, .. } if matches!(
            source.kind(),
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof | K::TimedOut | K::WouldBlock
        )
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_parse_to_where_to_connect_and_what_the_certificate_names() {
        let ep =
            |tls, authority: &str, host: &str| Ok(Endpoint { tls, authority: authority.into(), host: host.into() });
        for (url, want) in [
            ("http://127.0.0.1:8080", ep(false, "127.0.0.1:8080", "127.0.0.1")),
            ("http://127.0.0.1:8080/", ep(false, "127.0.0.1:8080", "127.0.0.1")),
            ("https://allowly.example.com", ep(true, "allowly.example.com:443", "allowly.example.com")),
            ("https://[::1]:8443", ep(true, "[::1]:8443", "::1")),
            ("http://[::1]", ep(false, "[::1]:80", "::1")),
        ] {
            assert_eq!(Endpoint::parse(url), want, "{url}");
        }
        for bad in
            ["127.0.0.1:8080", "ftp://h", "https://", "https://h/v1", "https://h:99999", "https://u@h", "https://[::1"]
        {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_answer_is_complete_by_its_content_length() {
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\n{}"), "no length: not known to be whole");
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"));
    }

    #[test]
    fn an_answer_is_cut_short_without_its_head_or_announced_body() {
        assert!(cut_short(b""), "no answer at all: the connection closed");
        assert!(cut_short(b"HTTP/1.1 200 OK\r\nContent-Len"));
        assert!(cut_short(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}"));
        assert!(!cut_short(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"));
        assert!(!cut_short(b"HTTP/1.1 204 No Content\r\n\r\n"), "no length: the body ends with the connection");
    }

    #[test]
    fn only_transport_failures_after_sending_are_lost_answers() {
        let e = |kind| Error::Io { what: "x".into(), source: std::io::Error::from(kind) };
        use std::io::ErrorKind as K;
        for kind in [K::ConnectionReset, K::BrokenPipe, K::UnexpectedEof, K::TimedOut, K::WouldBlock] {
            assert!(answer_lost(&e(kind)), "{kind:?}");
        }
        for kind in [K::ConnectionRefused, K::InvalidInput, K::InvalidData, K::NotFound] {
            assert!(!answer_lost(&e(kind)), "{kind:?}");
        }
        assert!(!answer_lost(&Error::Remote { status: 503, body: String::new() }), "an answer is not lost");
    }
}

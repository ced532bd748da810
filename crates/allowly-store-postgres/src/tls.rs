//! TLS to the database: libpq's `sslmode` and `sslrootcert`, on `allowly-tls`'s rustls (ring,
//! the Mozilla roots or a CA file).
//!
//! `tokio-postgres` knows `sslmode` only as `disable`, `prefer` and `require`, and no
//! `sslrootcert`; it also knows nothing of certificates (that is its `MakeTlsConnect`'s job).
//! So [`TlsSettings::take`] removes both settings from the connection string before
//! `tokio-postgres` parses the rest, and [`TlsSettings::apply`] sets what `tokio-postgres` must do
//! and builds the [`Tls`] that checks the certificate. The modes:
//!
//! | `sslmode` | here |
//! |---|---|
//! | `disable` | no TLS |
//! | `allow` | refused: it means "plaintext unless the server insists" |
//! | `prefer`, `require` | TLS or no connection (never libpq's silent plaintext fallback of `prefer`); any certificate — but, as in libpq, `verify-ca` when `sslrootcert` is given |
//! | `verify-ca` | TLS, a certificate `sslrootcert` (else a Mozilla root) issued, for any name |
//! | `verify-full` | that, and issued for the host name connected to |
//! | *absent* | **`verify-full`** (libpq's default is `prefer`, which falls back to plaintext and checks nothing: wrong for a store of signed receipts) |
//!
//! A Unix socket has no TLS (PostgreSQL refuses it there, and libpq ignores `sslmode` for it):
//! a connection string whose hosts are all sockets connects without, whatever the mode; one that
//! mixes sockets and TCP hosts under a TLS mode is refused, as it could only fail on one of them.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use allowly_store::StoreError;
use allowly_tls::{CaFile, ServerCheck};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

/// How the server's certificate is checked (TLS is on in every mode but `Disable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The Mozilla set (no `sslrootcert`, or libpq 16's `sslrootcert=system`).
    Mozilla,
    /// Only the certificates of this file.
    File(String),
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    mode: SslMode,
    roots: Roots,
}

/// Everything wrong with a connection string is this. Never quotes the string: it may hold a
/// password.
fn invalid(why: &str) -> StoreError {
    StoreError::Engine(format!("postgres: invalid connection string: {why}"))
}

impl TlsSettings {
    /// Removes `sslmode` and `sslrootcert` from `conninfo` (key-value or URL form) and returns
    /// the rest, for `tokio-postgres`, with the settings they made.
    pub(crate) fn take(conninfo: &str) -> Result<(String, TlsSettings), StoreError> {
        let (rest, sslmode, sslrootcert) = if is_url(conninfo) { take_url(conninfo)? } else { take_pairs(conninfo)? };
        let roots = match sslrootcert.as_deref() {
            None => Roots::Mozilla,
            Some("system") => Roots::Mozilla,
            Some("") => return Err(invalid("sslrootcert is empty")),
            Some(path) => Roots::File(path.to_owned()),
        };
        let mode = match sslmode.as_deref() {
            None | Some("verify-full") => SslMode::VerifyFull,
            Some("verify-ca") => SslMode::VerifyCa,
            // libpq: "if a root CA file exists, require behaves as verify-ca".
            Some("prefer" | "require") if matches!(roots, Roots::File(_)) => SslMode::VerifyCa,
            Some("prefer" | "require") => SslMode::Require,
            Some("disable") => SslMode::Disable,
            Some("allow") => {
                return Err(invalid(
                    "sslmode=allow is not supported (it connects in plaintext unless the server insists on TLS): \
                     use disable, require, verify-ca or verify-full",
                ))
            }
            Some(_) => return Err(invalid("sslmode must be disable, prefer, require, verify-ca or verify-full")),
        };
        Ok((rest, TlsSettings { mode, roots }))
    }

    /// Sets `config`'s `sslmode` for these settings and its hosts, and returns the connector.
    pub(crate) fn apply(&self, config: &mut tokio_postgres::Config) -> Result<Tls, StoreError> {
        let hosts = config.get_hosts();
        let sockets = hosts.iter().any(|h| !matches!(h, Host::Tcp(_)));
        let tcp = hosts.iter().any(|h| matches!(h, Host::Tcp(_))) || !config.get_hostaddrs().is_empty();
        if tcp && sockets && self.mode != SslMode::Disable {
            return Err(invalid(
                "it names both Unix sockets and TCP hosts, and TLS (sslmode, verify-full by default) is only \
                 possible over TCP: give one kind of host, or sslmode=disable",
            ));
        }
        if !tcp || self.mode == SslMode::Disable {
            config.ssl_mode(PgSslMode::Disable);
            return Ok(Tls { config: None, label: if tcp { "sslmode=disable" } else { "Unix socket, no TLS" } });
        }
        // `Require` in tokio-postgres: TLS or an error, never the plaintext fallback of `Prefer`.
        config.ssl_mode(PgSslMode::Require);
        let ca = match &self.roots {
            Roots::Mozilla => None,
            Roots::File(path) => Some(
                CaFile::read(std::path::Path::new(path))
                    .map_err(|e| StoreError::Engine(format!("postgres: sslrootcert: {e}")))?,
            ),
        };
        let check = match self.mode {
            SslMode::VerifyFull => ServerCheck::Full,
            SslMode::VerifyCa => ServerCheck::ChainOnly,
            SslMode::Require | SslMode::Disable => ServerCheck::Nothing,
        };
        let tls = allowly_tls::client_config_checking(ca.as_ref(), check)
            .map_err(|e| StoreError::Engine(format!("postgres: TLS settings: {e}")))?;
        Ok(Tls { config: Some(Arc::new(tls)), label: self.mode.name() })
    }
}

fn is_url(conninfo: &str) -> bool {
    conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://")
}

/// What [`take_pairs`] and [`take_url`] give: the rest of the string, `sslmode`, `sslrootcert`.
type Taken = (String, Option<String>, Option<String>);

/// The key-value form (`host=db sslmode=verify-full`), with `tokio-postgres`'s grammar (libpq's):
/// `key = value`, a value either bare up to white space or in single quotes, `\` escaping the
/// next character in both. The other pairs are kept as written.
fn take_pairs(conninfo: &str) -> Result<Taken, StoreError> {
    let (mut kept, mut sslmode, mut sslrootcert) = (Vec::new(), None, None);
    let mut chars = conninfo.char_indices().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(start, _)) = chars.peek() else { break };
        while chars.next_if(|&(_, c)| !c.is_whitespace() && c != '=').is_some() {}
        let key_end = chars.peek().map_or(conninfo.len(), |&(i, _)| i);
        let key = &conninfo[start..key_end];
        skip_ws(&mut chars);
        if chars.next_if(|&(_, c)| c == '=').is_none() {
            return Err(invalid("expected `=` after a key"));
        }
        skip_ws(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|&(_, c)| c == '\'').is_some();
        let mut closed = !quoted;
        while let Some((_, c)) = chars.next_if(|&(_, c)| if quoted { true } else { !c.is_whitespace() }) {
            match c {
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                c => value.push(c),
            }
        }
        if !closed {
            return Err(invalid("a quoted value is not terminated"));
        }
        let end = chars.peek().map_or(conninfo.len(), |&(i, _)| i);
        match key {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => sslrootcert = Some(value),
            _ => kept.push(&conninfo[start..end]),
        }
    }
    Ok((kept.join(" "), sslmode, sslrootcert))
}

/// The URL form (`postgresql://u@db/x?sslmode=verify-full&sslrootcert=%2Fca.pem`): the
/// settings are query parameters, percent-encoded.
fn take_url(conninfo: &str) -> Result<Taken, StoreError> {
    let Some((base, query)) = conninfo.split_once('?') else { return Ok((conninfo.to_owned(), None, None)) };
    let (mut kept, mut sslmode, mut sslrootcert) = (Vec::new(), None, None);
    for param in query.split('&') {
        let (key, value) = param.split_once('=').ok_or_else(|| invalid("a URL parameter without `=`"))?;
        match percent_decode(key)?.as_str() {
            "sslmode" => sslmode = Some(percent_decode(value)?),
            "sslrootcert" => sslrootcert = Some(percent_decode(value)?),
            _ => kept.push(param),
        }
    }
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, sslmode, sslrootcert))
}

fn percent_decode(s: &str) -> Result<String, StoreError> {
    let bad = || invalid("a bad percent-encoding in a URL parameter");
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
            let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The connector `tokio-postgres` is given: rustls with `allowly-tls`'s settings, or none
/// (`sslmode=disable`, Unix sockets), in which case `tokio-postgres` never asks it to connect.
#[derive(Clone)]
pub(crate) struct Tls {
    config: Option<Arc<ClientConfig>>,
    /// How connections are secured, for errors.
    label: &'static str,
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.config {
            Some(_) => write!(f, "TLS, sslmode={}", self.label),
            None => f.write_str(self.label),
        }
    }
}

impl MakeTlsConnect<Socket> for Tls {
    type Stream = TlsStream;
    type TlsConnect = Handshake;
    type Error = io::Error;

    /// Called for every host, TLS or not (`domain` is empty for a Unix socket): the name is
    /// only checked when a handshake happens.
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Handshake> {
        Ok(Handshake { config: self.config.clone(), domain: domain.to_owned() })
    }
}

/// One connection's handshake, to `domain` (the connection string's `host`: with `hostaddr`,
/// the name the certificate is checked against while the address is connected to).
pub(crate) struct Handshake {
    config: Option<Arc<ClientConfig>>,
    domain: String,
}

impl TlsConnect<Socket> for Handshake {
    type Stream = TlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            // Unreachable: `apply` sets tokio-postgres's `sslmode` to `disable` with no config.
            let config = self.config.ok_or_else(|| io::Error::other("TLS requested with sslmode=disable"))?;
            let name = ServerName::try_from(self.domain).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("the host is not a name TLS can check: {e}"))
            })?;
            Ok(TlsStream(tokio_rustls::TlsConnector::from(config).connect(name, socket).await?))
        })
    }
}

/// A TLS connection to the database.
pub(crate) struct TlsStream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for TlsStream {
    /// None: SCRAM authentication without channel binding (`tls-server-end-point` would need the
    /// certificate's signature algorithm parsed). With `verify-full` the certificate check is
    /// what keeps a man in the middle out; `channel_binding=require` is refused by the client.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    /// `take(input)`: the rest of the string, the mode, and the roots.
    fn check(input: &str, rest: &str, mode: SslMode, roots: Roots) {
        let (got, settings) = TlsSettings::take(input).unwrap();
        assert_eq!((got.as_str(), settings), (rest, TlsSettings { mode, roots }), "{input}");
    }

    #[test]
    fn the_tls_settings_are_taken_out_of_both_forms() {
        use Roots::{File, Mozilla};
        use SslMode::*;
        check("host=db dbname=x", "host=db dbname=x", VerifyFull, Mozilla);
        check("host=db sslmode=disable dbname=x", "host=db dbname=x", Disable, Mozilla);
        check(" host = db  sslmode = 'verify-ca' ", "host = db", VerifyCa, Mozilla);
        check(
            "password='a b\\' sslmode=disable' sslmode=require",
            "password='a b\\' sslmode=disable'",
            Require,
            Mozilla,
        );
        check("sslrootcert='/etc/my ca.pem' sslmode=require", "", VerifyCa, File("/etc/my ca.pem".into()));
        check("sslmode=prefer sslrootcert=system", "", Require, Mozilla);
        check("sslrootcert=/a\\ b.pem host=db", "host=db", VerifyFull, File("/a b.pem".into()));
        check("postgresql://u:p@db/x", "postgresql://u:p@db/x", VerifyFull, Mozilla);
        check(
            "postgres://db/x?sslmode=verify-ca&connect_timeout=3",
            "postgres://db/x?connect_timeout=3",
            VerifyCa,
            Mozilla,
        );
        check(
            "postgresql://db/x?sslrootcert=%2Fca.pem&sslmode=verify-full",
            "postgresql://db/x",
            VerifyFull,
            File("/ca.pem".into()),
        );
        // The rest still parses.
        let (rest, _) = TlsSettings::take("host=db sslmode=require port=5433").unwrap();
        assert_eq!(rest.parse::<tokio_postgres::Config>().unwrap().get_ports(), [5433]);
    }

    #[test]
    fn a_bad_setting_is_refused_without_quoting_the_string() {
        for (input, why) in [
            ("password=hunter2 sslmode=allow", "sslmode=allow is not supported"),
            ("password=hunter2 sslmode=verify", "sslmode must be"),
            ("password=hunter2 sslmode", "expected `=`"),
            ("password='hunter2", "not terminated"),
            ("postgresql://u:hunter2@db/x?sslmode", "without `=`"),
            ("postgresql://u:hunter2@db/x?sslmode=%zz", "percent-encoding"),
            ("password=hunter2 sslrootcert=''", "sslrootcert is empty"),
        ] {
            let e = TlsSettings::take(input).unwrap_err().to_string();
            assert!(e.contains(why) && !e.contains("hunter2"), "{input}: {e}");
        }
    }

    #[test]
    fn tls_is_for_tcp_hosts_only() {
        let apply = |s: &str| {
            let (rest, settings) = TlsSettings::take(s).unwrap();
            let mut config: tokio_postgres::Config = rest.parse().unwrap();
            settings.apply(&mut config).map(|tls| (tls.to_string(), config.get_ssl_mode()))
        };
        assert_eq!(apply("host=/run/pg").unwrap(), ("Unix socket, no TLS".into(), PgSslMode::Disable));
        assert_eq!(apply("host=db").unwrap(), ("TLS, sslmode=verify-full".into(), PgSslMode::Require));
        assert_eq!(
            apply("hostaddr=10.0.0.1 sslmode=require").unwrap(),
            ("TLS, sslmode=require".into(), PgSslMode::Require)
        );
        assert_eq!(apply("host=db sslmode=disable").unwrap(), ("sslmode=disable".into(), PgSslMode::Disable));
        let mixed = apply("host=/run/pg,db").err().unwrap().to_string();
        assert!(mixed.contains("both Unix sockets and TCP hosts"), "{mixed}");
        assert!(apply("host=/run/pg,db sslmode=disable").is_ok());
        let missing = apply("host=db sslrootcert=/nonexistent/ca.pem").err().unwrap().to_string();
        assert!(missing.contains("sslrootcert: CA file /nonexistent/ca.pem"), "{missing}");
    }
}

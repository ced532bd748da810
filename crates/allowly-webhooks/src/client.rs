//! One delivery attempt: an HTTP/1.1 `POST` of the payload with the Standard Webhooks headers,
//! over `http://` or `https://` (rustls with the Mozilla roots compiled in; no client
//! certificate). Redirects are not followed (a 3xx is a failure, as the spec recommends). The
//! whole attempt — connect, TLS, request, response head and at most [`MAX_BODY_READ`] bytes of
//! the response body — is bounded by one timeout.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Most response-body bytes read (the start of it is kept in the attempt log on failure).
pub const MAX_BODY_READ: usize = 4096;
/// Most characters of a response body kept in an attempt's error.
const BODY_SNIPPET: usize = 200;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered { status: u16 },
    /// 410 Gone: the receiver wants no more deliveries.
    Gone,
    /// Anything else: try again later.
    Failed { kind: FailKind, status: Option<u16>, error: String, retry_after: Option<Duration> },
}

/// The closed set of failure kinds (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// A response with a status other than 2xx and 410.
    Http,
    /// No complete answer within the attempt timeout.
    Timeout,
    /// No connection (refused, reset, DNS, TLS) or a broken exchange.
    Connect,
}

impl FailKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http => "http_error",
            Self::Timeout => "timeout",
            Self::Connect => "connect_error",
        }
    }
}

/// A pooled HTTP(S) client with a per-attempt timeout.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Sender {
    /// A client whose attempts each take at most `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("TLS configuration: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(https);
        let user_agent = HeaderValue::from_static(concat!("allowly-webhooks/", env!("CARGO_PKG_VERSION")));
        Ok(Self { client, timeout, user_agent })
    }

    /// POSTs `body` to `url` with `headers` (the Standard Webhooks ones).
    pub async fn post(&self, url: &str, headers: &[(&'static str, String)], body: Bytes) -> Outcome {
        let mut req =
            Request::post(url).header(CONTENT_TYPE, "application/json").header(USER_AGENT, self.user_agent.clone());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    kind: FailKind::Connect,
                    status: None,
                    error: format!("cannot build the request: {e}"),
                    retry_after: None,
                }
            }
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| error_chain(&e))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Read (a bounded part of) the body, so the connection can be reused and a failure
            // can say what the receiver answered.
            let body = match Limited::new(resp.into_body(), MAX_BODY_READ).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok::<_, String>((status, retry_after, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Failed {
                kind: FailKind::Timeout,
                status: None,
                error: format!("no answer within {} ms", self.timeout.as_millis()),
                retry_after: None,
            },
            Ok(Err(error)) => Outcome::Failed { kind: FailKind::Connect, status: None, error, retry_after: None },
            Ok(Ok((status, _, _))) if (200..300).contains(&status) => Outcome::Delivered { status },
            Ok(Ok((410, _, _))) => Outcome::Gone,
            Ok(Ok((status, retry_after, body))) => {
                let snippet: String = String::from_utf8_lossy(&body).chars().take(BODY_SNIPPET).collect();
                let error = if snippet.trim().is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {}", snippet.trim())
                };
                Outcome::Failed { kind: FailKind::Http, status: Some(status), error, retry_after }
            }
        }
    }
}

/// An error and its sources, joined (hyper's own message is often just "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

//! One delivery attempt: an HTTP/1.1 `POST` of the payload with the Standard Webhooks headers,
//! over `http://` or `https://` (`allowly-tls`: rustls on ring with the Mozilla roots compiled
//! in; no client certificate). Redirects are not followed (a 3xx is a failure, as the spec recommends). The
//! whole attempt — connect, TLS, request, response head and at most [`MAX_BODY_READ`] bytes of
//! the response body — is bounded by one timeout.
//!
//! Destinations are checked per [`Policy`]: host names go through
//! [`CheckedResolver`], which resolves once and hands the connector only the addresses that
//! passed (the connector connects to exactly those); an IP-literal host, which the connector
//! does not resolve, is checked before the request is made.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::destination::{self, Policy, NOT_ALLOWED};
use crate::error::WebhookError;

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
    /// The destination is not a public address (see [`destination`]): nothing was sent.
    NotAllowed,
}

impl FailKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http => "http_error",
            Self::Timeout => "timeout",
            Self::Connect => "connect_error",
            Self::NotAllowed => NOT_ALLOWED,
        }
    }
}

/// A host name resolved by [`CheckedResolver`] to no allowed address.
#[derive(Debug)]
struct NotAllowed(String);

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAllowed {}

/// The connector's resolver: resolves a name once and returns only the addresses `policy`
/// allows, so the connector can connect to nothing else (no second lookup, no rebinding
/// window). No allowed address → an error naming `destination_not_allowed`.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver {
    policy: Policy,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // Port 0: the connector sets the URL's port on what it gets back.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = Vec::new();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.refuses(a.ip()) {
                    None => true,
                    Some(why) => {
                        refused.push(format!("{} {why}", a.ip()));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let what = if refused.is_empty() { "no address".to_owned() } else { refused.join(", ") };
                return Err(
                    Box::new(NotAllowed(format!("{NOT_ALLOWED}: {host} resolves to no public address ({what})")))
                        as BoxError,
                );
            }
            Ok(allowed.into_iter())
        })
    }
}

/// A pooled HTTP(S) client with a per-attempt timeout.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector<CheckedResolver>>, Full<Bytes>>,
    timeout: Duration,
    user_agent: HeaderValue,
    policy: Policy,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Sender {
    /// A client whose attempts each take at most `timeout` and go only where `policy` allows.
    pub fn new(timeout: Duration, policy: Policy) -> Result<Self, String> {
        let mut http = HttpConnector::new_with_resolver(CheckedResolver { policy });
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let tls = allowly_tls::client_config(None).map_err(|e| e.to_string())?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(https);
        let user_agent = HeaderValue::from_static(concat!("allowly-webhooks/", env!("CARGO_PKG_VERSION")));
        Ok(Self { client, timeout, user_agent, policy })
    }

    /// The same client, saying `user_agent` (`name/version`) instead of `allowly-webhooks/…`:
    /// for requests that are not webhook deliveries.
    pub fn with_user_agent(mut self, user_agent: &'static str) -> Self {
        self.user_agent = HeaderValue::from_static(user_agent);
        self
    }

    /// POSTs `body` to `url` with `headers` (the Standard Webhooks ones).
    pub async fn post(&self, url: &str, headers: &[(&'static str, String)], body: Bytes) -> Outcome {
        match self.exchange(url, "application/json", headers, body).await {
            Err(failed) => failed,
            Ok(Answer { status, .. }) if (200..300).contains(&status) => Outcome::Delivered { status },
            Ok(Answer { status: 410, .. }) => Outcome::Gone,
            Ok(Answer { status, retry_after, body }) => {
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

    /// POSTs `body` (of type `content_type`) to `url` with `headers`, and returns whatever the
    /// server answered — any status, and at most [`MAX_BODY_READ`] bytes of its body — or the
    /// failure (never [`Outcome::Delivered`] nor [`Outcome::Gone`]) if no answer came. Also
    /// what other clients of a small HTTP protocol use (the engine's witness submissions).
    pub async fn exchange(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, Outcome> {
        // The connector connects to an IP literal without resolving it: check it here.
        if let Some((ip, why)) = destination::ip_literal(url).and_then(|ip| self.policy.refuses(ip).map(|w| (ip, w))) {
            return Err(not_allowed(format!("{NOT_ALLOWED}: {ip} is not a public address ({why})")));
        }
        let mut req = Request::post(url).header(CONTENT_TYPE, content_type).header(USER_AGENT, self.user_agent.clone());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                return Err(Outcome::Failed {
                    kind: FailKind::Connect,
                    status: None,
                    error: format!("cannot build the request: {e}"),
                    retry_after: None,
                })
            }
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| match refusal(&e) {
                Some(r) => WebhookError::DestinationRefused(r),
                None => WebhookError::Exchange(allowly_tls::error_chain(&e)),
            })?;
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
            Ok::<_, WebhookError>(Answer { status, retry_after, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(Outcome::Failed {
                kind: FailKind::Timeout,
                status: None,
                error: format!("no answer within {} ms", self.timeout.as_millis()),
                retry_after: None,
            }),
            Ok(Err(WebhookError::DestinationRefused(error))) => Err(not_allowed(error)),
            Ok(Err(e)) => {
                Err(Outcome::Failed { kind: FailKind::Connect, status: None, error: e.to_string(), retry_after: None })
            }
            Ok(Ok(answer)) => Ok(answer),
        }
    }
}

/// What a server answered ([`Sender::exchange`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `Retry-After` in seconds, if the answer had one.
    pub retry_after: Option<Duration>,
    /// At most [`MAX_BODY_READ`] bytes of the body (empty if it could not be read).
    pub body: Bytes,
}

fn not_allowed(error: String) -> Outcome {
    Outcome::Failed { kind: FailKind::NotAllowed, status: None, error, retry_after: None }
}

/// The resolver's refusal, if that is what ended the request (it is somewhere in the chain).
fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(n) = err.downcast_ref::<NotAllowed>() {
            return Some(n.0.clone());
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, policy: Policy) -> Outcome {
        let s = Sender::new(Duration::from_secs(5), policy).expect("client");
        s.post(url, &[], Bytes::from_static(b"{}")).await
    }

    #[tokio::test]
    async fn refused_destinations_are_never_contacted() {
        // A listener that would answer if contacted: the policy must stop the attempt first.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let accepted = tokio::spawn(async move { l.accept().await.is_ok() });
        for url in [format!("http://127.0.0.1:{port}/x"), format!("http://localhost:{port}/x")] {
            match post(&url, Policy::PublicOnly).await {
                Outcome::Failed { kind: FailKind::NotAllowed, status: None, error, .. } => {
                    assert!(error.starts_with(NOT_ALLOWED) && error.contains("loopback"), "{url}: {error}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(!accepted.is_finished(), "nothing may connect");
        // Allowed: the same listener is contacted (it never answers: the connection is made).
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            post(&format!("http://localhost:{port}/x"), Policy::AllowPrivate),
        )
        .await;
        assert!(accepted.await.expect("join"), "with private networks allowed, it connects");
    }
}

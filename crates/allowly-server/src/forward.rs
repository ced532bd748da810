//! In a cluster (`--node-name`, docs/scale-out.md): a request for a workspace another node
//! owns is forwarded to that node, once, and its answer relayed as is. The owner authenticates
//! and decides it again from scratch: forwarding adds no trust — what this node checked is not
//! passed on, only the request.
//!
//! - **Once.** A forwarded request carries [`FORWARDED_BY`]; a node never forwards a request
//!   that has it (two nodes that each think the other owns a workspace — a lease changing
//!   hands — answer 503 `workspace_owned_elsewhere` instead of looping). A client can set the
//!   header too: it only stops its own request from being forwarded.
//! - **Nothing changed here.** Only requests the engine refused with `NotOwner` are forwarded:
//!   this node wrote nothing for them.
//! - **A lost answer** (the owner died or timed out after the request reached it) is answered
//!   503; the request may have taken effect there, exactly as for a lost answer from any node:
//!   retried with its `Idempotency-Key`, it gets the first answer.
//! - **HTTP or HTTPS**, as the owner advertises itself: `http://` on a private network (like
//!   the server's own listener, behind the TLS terminator), `https://` to a TLS terminator in
//!   front of the owner, whose certificate is verified against `--cluster-ca-file` (else the
//!   Mozilla roots) and the advertised host name (rustls: TLS 1.2/1.3, no plaintext fallback).
//!   Forwarded requests carry the client's bearer key: on any network another party can
//!   read, advertise `https://`. Connections are pooled (keep-alive) per owner.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::handlers::Resp;
use crate::problem::Problem;

/// The header a forwarded request carries: the id of the node that forwarded it.
pub const FORWARDED_BY: &str = "allowly-forwarded-by";

/// Largest answer relayed (the routes that can be forwarded answer small JSON documents; the
/// large exports are reads, served by every node).
const MAX_ANSWER: usize = 16 << 20;

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), and `Host`,
/// which names the node the client reached.
fn hop_by_hop(name: &HeaderName) -> bool {
    [CONNECTION, TRANSFER_ENCODING, UPGRADE, HOST, CONTENT_LENGTH].contains(name)
        || ["keep-alive", "proxy-connection", "te", "trailer"].contains(&name.as_str())
}

/// Why a forwarded request has no answer from its owner.
#[derive(Debug)]
pub enum NotForwarded {
    /// It never reached the owner (no connection could be made: the node is gone): nothing
    /// happened there, so it may be decided elsewhere (`routes::dispatch` runs it here again,
    /// once: the workspace's lease may be free).
    Unsent(Problem),
    /// It may have reached the owner (no answer in time, a connection lost mid-answer): the
    /// answer is this problem, and the client retries with its `Idempotency-Key`.
    Lost(Problem),
}

/// Forwards requests to the owners of their workspaces.
#[derive(Debug)]
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    node_id: HeaderValue,
    /// Bound on one forwarded exchange: the owner's own bound on the request plus a margin.
    timeout: Duration,
    /// Added to it for a long-poll (`?wait=`), which the owner may hold that long.
    long_poll_max: Duration,
    metrics: crate::metrics::HttpMetrics,
}

impl Forwarder {
    /// `ca`: the CA the owners' certificates are verified against (`https://` owners); `None`:
    /// the Mozilla roots.
    pub fn new(
        node_id: &str,
        timeout: Duration,
        long_poll_max: Duration,
        ca: Option<&allowly_tls::CaFile>,
        metrics: crate::metrics::HttpMetrics,
    ) -> Result<Self, String> {
        let node_id = HeaderValue::from_str(node_id).map_err(|e| format!("node id as a header: {e}"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(1)));
        let tls = allowly_tls::client_config(ca).map_err(|e| e.to_string())?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(Self { client, node_id, timeout, long_poll_max, metrics })
    }

    /// Whether `parts` was forwarded to this node already (then it is answered here).
    pub fn was_forwarded(parts: &Parts) -> bool {
        parts.headers.contains_key(FORWARDED_BY)
    }

    /// Sends the request (`parts`, `body`) to `owner` (`http://host:port`) and relays its
    /// answer; a problem if the owner cannot be reached or does not answer in time.
    /// The forwarded request bears `request_id` (the owner logs and answers under the same id).
    pub async fn forward(
        &self,
        parts: &Parts,
        body: Bytes,
        owner: &str,
        request_id: &str,
    ) -> Result<Resp, NotForwarded> {
        let outcome = self.exchange(parts, body, owner, request_id).await;
        self.metrics.forwarded(if outcome.is_ok() { "answered" } else { "unreachable" });
        outcome.map_err(|(sent, why)| {
            tracing::warn!(owner, error = %why, "forwarding a request to its workspace's owner failed");
            if !sent {
                return NotForwarded::Unsent(Problem::owner_unreachable(
                    "another node of this cluster owns the workspace and could not be reached; nothing was changed: \
                     retry",
                ));
            }
            NotForwarded::Lost(Problem::owner_unreachable(
                "another node of this cluster owns the workspace and did not answer; the request may have taken \
                 effect there if it reached it: retry with the same Idempotency-Key",
            ))
        })
    }

    /// The owner's answer, or why there is none and whether the request may have reached it.
    async fn exchange(
        &self,
        parts: &Parts,
        body: Bytes,
        owner: &str,
        request_id: &str,
    ) -> Result<Resp, (bool, String)> {
        let unsent = |why: String| (false, why);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri =
            format!("{}{path}", owner.trim_end_matches('/')).parse().map_err(|e| unsent(format!("owner URL: {e}")))?;
        let mut req = Request::builder().method(parts.method.clone()).uri(uri);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) && name.as_str() != crate::extract::REQUEST_ID {
                req = req.header(name, value);
            }
        }
        let req = req
            .header(crate::extract::REQUEST_ID, request_id)
            .header(FORWARDED_BY, self.node_id.clone())
            .body(Full::new(body))
            .map_err(|e| unsent(format!("building the request: {e}")))?;
        let bound = if is_long_poll(parts) { self.timeout + self.long_poll_max } else { self.timeout };
        let answer = tokio::time::timeout(bound, async {
            // A connection that could not be made: the request was never sent.
            let resp = self.client.request(req).await.map_err(|e| (!e.is_connect(), allowly_tls::error_chain(&e)))?;
            let (head, body) = resp.into_parts();
            let bytes = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| (true, format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, (bool, String)>((head, bytes))
        })
        .await
        .map_err(|_| (true, format!("no answer within {} ms", bound.as_millis())))??;
        let (head, bytes) = answer;
        let mut resp = Response::new(Full::new(bytes));
        *resp.status_mut() = head.status;
        for (name, value) in &head.headers {
            if !hop_by_hop(name) {
                resp.headers_mut().append(name, value.clone());
            }
        }
        Ok(resp)
    }
}

/// Whether `parts` is a long-poll: a read with a `wait` parameter (the confirmation and
/// escalation reads), which the owner holds until a decision or the wait's end.
fn is_long_poll(parts: &Parts) -> bool {
    parts.method == http::Method::GET
        && parts.uri.query().is_some_and(|q| q.split('&').any(|pair| pair.split('=').next() == Some("wait")))
}

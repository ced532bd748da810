//! The server loop: accepts TCP connections (bounded), serves HTTP/1.1 on each with hyper,
//! stamps every response with its `Request-Id`, records metrics, and drains gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument as _;

pub use crate::app::App;
use crate::extract::valid_request_id;
use crate::routes;

/// The request and response header carrying the request id.
pub const REQUEST_ID: &str = "request-id";
/// Open connections at most; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// A client must send a request's head within this (slow-loris bound).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

impl App {
    /// Answers one request. Never fails: every error is already a problem response.
    pub async fn handle(&self, req: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let _in_flight = InFlight::enter(&self.metrics.in_flight);
        let request_id = req
            .headers()
            .get(REQUEST_ID)
            .map(HeaderValue::as_bytes)
            .filter(|v| valid_request_id(v))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map_or_else(|| self.request_ids.next(), str::to_owned);
        let method = req.method().clone();
        // Every line logged while this request is served names it (see `allowly_logs`).
        let span = tracing::info_span!("request", request_id = %request_id);
        let (route, mut resp) = routes::dispatch(self, req, &request_id).instrument(span).await;
        // Valid by construction (checked, or generated from [A-Za-z0-9_]).
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
        let elapsed = start.elapsed();
        self.metrics.observe(route.name(), resp.status(), elapsed);
        // The route template, never the path (it holds ids); no header, no body.
        tracing::info!(
            target: allowly_logs::ACCESS,
            method = method.as_str(),
            route = route.name(),
            status = resp.status().as_u16(),
            duration_us = elapsed.as_micros() as u64,
            request_id = %request_id,
            "answered"
        );
        resp
    }
}

/// Counts a request in flight until dropped, also when hyper drops the handler because the
/// client went away.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and waits up to `drain`
/// for the requests in flight (connections left after that are dropped).
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>, drain: Duration) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break, // closed: never, the semaphore lives here
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining requests in flight");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {drain:?}; closing their connections");
    }
}

//! The server loop: accepts TCP connections within the caps of `conn` (evicting the oldest idle
//! ones at the overall cap), serves HTTP/1.1 on each with hyper behind the read deadline,
//! stamps every response with its `Request-Id`, records metrics, and drains gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument as _;

pub use crate::app::App;
use crate::conn::Guarded;
use crate::extract::{valid_request_id, REQUEST_ID};
use crate::metrics::ConnClose;
use crate::routes;
use crate::stream::Stream;

impl App {
    /// Answers one request whose head and body must have arrived by `read_deadline`. Never
    /// fails: every error is already a problem response.
    pub async fn handle(&self, req: hyper::Request<Incoming>, read_deadline: Instant) -> Response<Full<Bytes>> {
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
        let deadline = tokio::time::Instant::from_std(read_deadline);
        let (route, mut resp) = routes::dispatch(self, req, &request_id, deadline).instrument(span).await;
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
/// for the requests in flight (connections left after that are dropped). With `tls`, every
/// connection is TLS (`--tls-cert-file`), its handshake bounded by the request read timeout.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(app.connections.idle_timeout()).keep_alive(true);
    let builder = Arc::new(builder);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // Every connection holds a receiver; the drain waits until all are dropped.
    let (stop, stopping) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = app.connections.room() => {}
        }
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
        let Some(admitted) = app.connections.admit(&stream, peer.ip()) else { continue };
        let _ = stream.set_nodelay(true);
        let (app, builder, acceptor, stopping) = (app.clone(), builder.clone(), acceptor.clone(), stopping.clone());
        tokio::spawn(async move {
            let stream = match acceptor {
                None => Stream::Plain(stream),
                // On the connection's own task: a slow handshake holds up no other. Bounded
                // like a request's head, so a client that connects and says nothing holds the
                // connection no longer than one that sends half a request.
                Some(acceptor) => {
                    let bound = app.connections.limits().read_timeout;
                    let handshake = match tokio::time::timeout(bound, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("not done within {bound:?}")),
                    };
                    match handshake {
                        Ok(stream) => stream,
                        Err(why) => {
                            tracing::debug!(%peer, "TLS handshake: {why}");
                            app.connections.release(&admitted, ConnClose::TlsHandshake);
                            return;
                        }
                    }
                }
            };
            serve_connection(&app, &admitted, stream, &builder, stopping, peer).await;
        });
    }
    drop(listener);
    drop(stopping);
    tracing::info!("stopped accepting; draining requests in flight");
    let _ = stop.send(());
    if tokio::time::timeout(drain, stop.closed()).await.is_err() {
        tracing::warn!("requests still in flight after {drain:?}; closing their connections");
    }
}

/// Serves HTTP/1.1 on one admitted connection until it closes, then releases it.
async fn serve_connection(
    app: &Arc<App>,
    admitted: &crate::conn::Admitted,
    stream: Stream,
    builder: &http1::Builder,
    mut stopping: tokio::sync::watch::Receiver<()>,
    peer: std::net::SocketAddr,
) {
    let conn = admitted.conn.clone();
    let service = {
        let (app, conn) = (app.clone(), conn.clone());
        service_fn(move |req| {
            // Called when hyper has the head: from here the body's part of the deadline.
            let read_deadline = conn.begin_request() + app.connections.limits().read_timeout;
            let (app, conn) = (app.clone(), conn.clone());
            async move {
                let mut resp = app.handle(req, read_deadline).await;
                if resp.status() == StatusCode::REQUEST_TIMEOUT {
                    // The rest of a late body is never read: the connection cannot carry
                    // another request.
                    conn.mark_timed_out();
                    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                }
                conn.end_request();
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let io = TokioIo::new(Guarded::new(stream, conn.clone(), app.connections.clone()));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    let mut shutting_down = false;
    let result = loop {
        tokio::select! {
            r = connection.as_mut() => break r,
            () = conn.evicted(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = stopping.changed(), if !closing => {
                closing = true;
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = &result {
        tracing::debug!(%peer, "connection: {e}");
    }
    app.connections.release(admitted, conn.close_reason(&result, shutting_down));
}

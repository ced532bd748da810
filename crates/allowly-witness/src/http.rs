//! The HTTP edge: hyper 1, HTTP/1.1 with keep-alive (the spec's SHOULD). Routes:
//! `POST /add-checkpoint` (C2SP tlog-witness) and `GET /metrics`. Errors become HTTP statuses
//! here, once, through [`Error::status`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::witness::Witness;
use crate::{Error, Result};

/// Largest request body read: a checkpoint note with its signatures plus 63 proof lines fit
/// many times over; anything larger is refused before it is parsed (413).
pub const MAX_BODY: usize = 64 * 1024;

/// Most connections served at once; the accept loop waits for a free slot beyond that.
pub const MAX_CONNECTIONS: usize = 256;

/// Time to send a request's headers, and then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `witness` on `listener` until the process is stopped.
pub async fn serve(listener: TcpListener, witness: Arc<Witness>) -> Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = Arc::clone(&slots).acquire_owned().await.map_err(|_| Error::Internal("semaphore closed"))?;
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Per-connection failures (reset before accept, out of descriptors): keep serving.
            Err(e) => {
                eprintln!("allowly-witness: accept: {e}");
                continue;
            }
        };
        let witness = Arc::clone(&witness);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&witness), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
            drop(permit);
        });
    }
}

async fn handle(witness: Arc<Witness>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let result = route(&witness, req).await;
    let outcome = match &result {
        Ok(_) => "cosigned",
        Err(e) => e.label(),
    };
    match result {
        Ok(Reply::Cosigned(lines)) => {
            witness.metrics().count(outcome);
            Ok(reply(StatusCode::OK, "text/plain; charset=utf-8", lines.into_bytes()))
        }
        Ok(Reply::Metrics(body)) => Ok(reply(StatusCode::OK, "text/plain; version=0.0.4", body)),
        Err(e) => {
            witness.metrics().count(outcome);
            Ok(error_reply(&e))
        }
    }
}

enum Reply {
    Cosigned(String),
    Metrics(Vec<u8>),
}

async fn route(witness: &Arc<Witness>, req: Request<Incoming>) -> Result<Reply> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/add-checkpoint") => {
            let body = read_body(req).await?;
            let w = Arc::clone(witness);
            // On the blocking pool (it fsyncs), and not cancelled if the client goes away.
            tokio::task::spawn_blocking(move || w.add_checkpoint(&body))
                .await
                .map_err(|_| Error::Internal("the add-checkpoint task panicked"))?
                .map(Reply::Cosigned)
        }
        (&Method::GET, "/metrics") => Ok(Reply::Metrics(witness.metrics().render())),
        (_, "/add-checkpoint" | "/metrics") => Err(Error::MethodNotAllowed),
        _ => Err(Error::NotFound),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(Error::Malformed("request body not received in time".into())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge { max: MAX_BODY }),
        Ok(Err(e)) => Err(Error::Malformed(format!("reading the body: {e}"))),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

/// The one mapping of errors to responses. A 409 carries the recorded size as
/// `text/x.tlog.size` (spec), so a client can retry from it.
fn error_reply(e: &Error) -> Response<Full<Bytes>> {
    match e {
        Error::OldSizeMismatch { size, .. } | Error::Fork { size } => {
            reply(e.status(), "text/x.tlog.size", format!("{size}\n").into_bytes())
        }
        // Internal details stay in the log, not in the answer.
        Error::Io(_) | Error::Internal(_) | Error::Setup(_) => {
            eprintln!("allowly-witness: {e}");
            reply(e.status(), "text/plain; charset=utf-8", b"internal error\n".to_vec())
        }
        _ => reply(e.status(), "text/plain; charset=utf-8", format!("{e}\n").into_bytes()),
    }
}

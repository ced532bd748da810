//! The bare baseline: a hyper HTTP/1.1 server that answers `{"status":"ok"}` to everything,
//! after reading the request body. It runs as a *child process* of the load tester (the same
//! executable, hidden subcommand `bare-server`) so that, like allowly, it has its own tokio
//! runtime with one worker per core and its CPU time can be read from `/proc` the same way.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves forever on 127.0.0.1 (an ephemeral port), printing `listening on ADDR` first.
/// Exits when its stdin closes, so it never outlives the load tester.
pub fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        tokio::spawn(async {
            // EOF or an error on stdin: the parent is gone.
            let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
            std::process::exit(0);
        });
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}")));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

/// The running child.
#[derive(Debug)]
pub struct Bare {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Bare {
    pub fn start() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut child = Command::new(exe)
            .arg("bare-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the bare server: {e}"))?;
        let out = child.stdout.take().ok_or("bare server without stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).map_err(|e| format!("bare server: {e}"))?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("bare server said {line:?}"))?;
        Ok(Self { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

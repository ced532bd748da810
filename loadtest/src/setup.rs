//! Setting up through allowly's own API (not timed): workspaces created with the instance admin
//! token, one API key per workspace with roles `admin` (to create authorizations) and `check`,
//! and authorizations that the checks then hit, so every check is an `allow` on an existing
//! grant — the common, durable, signed path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{build_request, Conn};

/// A client of allowly's JSON API.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub host: String,
    /// Answers 429 and 503 that `call` retried (shared by clones): a set-up that retries must
    /// still be able to say how often it had to.
    pub retried: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

/// One workspace prepared for checks.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub workspace: String,
    pub key: String,
    pub authorizations: Vec<String>,
}

/// The grant every authorization carries, and a check it allows.
pub const GRANT_SCOPES: &[&str] = &["files.*"];
pub fn check_body(authorization: &str) -> Vec<u8> {
    json!({"authorization_id": authorization, "scopes": ["files.read"], "resource": "doc:42"}).to_string().into_bytes()
}

impl Api {
    /// `http://host:port` → its address (loopback is all this tool is for).
    pub async fn from_url(url: &str) -> Result<Self, String> {
        let host = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?
            .trim_end_matches('/')
            .to_owned();
        if host.contains('/') {
            return Err(format!("{url}: give the server's root URL, without a path"));
        }
        let addr = tokio::net::lookup_host(&host)
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        Ok(Self { addr, host, retried: Default::default() })
    }

    /// One request; answers other than 2xx are errors with their body. `429` and `503` (queue
    /// full, signer restarting) are retried with a short pause for up to ~10 s: nothing was
    /// done, so a retry is safe.
    pub async fn call(
        &self,
        conn: &mut Option<Conn>,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, String> {
        let body = body.map(|b| b.to_string().into_bytes());
        let req = build_request(method, path, &self.host, token, body.as_deref());
        let mut pause = Duration::from_millis(20);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = match conn.take().filter(|c| !c.closed) {
                Some(c) => c,
                None => Conn::connect(self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?,
            };
            let (status, body) = tokio::time::timeout(Duration::from_secs(30), c.roundtrip(&req, true))
                .await
                .map_err(|_| format!("{method} {path}: no answer within 30 s"))?
                .map_err(|e| format!("{method} {path}: {e}"))?;
            *conn = Some(c);
            if (200..300).contains(&status) {
                return Ok(body);
            }
            if matches!(status, 429 | 503) && Instant::now() < deadline {
                self.retried[usize::from(status == 503)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
                continue;
            }
            return Err(format!("{method} {path}: HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
    }

    pub async fn post_json(
        &self,
        conn: &mut Option<Conn>,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Result<Value, String> {
        let b = self.call(conn, "POST", path, Some(token), Some(body)).await?;
        serde_json::from_slice(&b).map_err(|e| format!("POST {path}: answer is not JSON: {e}"))
    }

    pub async fn get_text(&self, path: &str) -> Result<String, String> {
        let b = self.call(&mut None, "GET", path, None, None).await?;
        String::from_utf8(b).map_err(|_| format!("GET {path}: answer is not UTF-8"))
    }

    /// A workspace and its `admin`+`check` key.
    pub async fn workspace(
        &self,
        conn: &mut Option<Conn>,
        admin: &str,
        name: &str,
    ) -> Result<(String, String), String> {
        let ws = self.post_json(conn, "/v1/workspaces", admin, &json!({"name": name})).await?;
        let ws = ws["id"].as_str().ok_or("workspace answer without id")?.to_owned();
        let key = self
            .post_json(conn, &format!("/v1/workspaces/{ws}/api-keys"), admin, &json!({"roles": ["admin", "check"]}))
            .await?;
        let key = key["secret"].as_str().ok_or("API key answer without secret")?.to_owned();
        Ok((ws, key))
    }

    pub async fn authorization(&self, conn: &mut Option<Conn>, key: &str, subject: &str) -> Result<String, String> {
        let grant = json!({"subject": subject, "scopes": GRANT_SCOPES, "resources": ["doc:*"]});
        let a = self.post_json(conn, "/v1/authorizations", key, &grant).await?;
        Ok(a["authorization"]["id"].as_str().ok_or("authorization answer without id")?.to_owned())
    }

    /// One check, to make sure the load is what we think it is (an `allow`).
    pub async fn check_allows(&self, key: &str, authorization: &str) -> Result<(), String> {
        let body: Value = serde_json::from_slice(&check_body(authorization)).map_err(|e| e.to_string())?;
        let a = self.post_json(&mut None, "/v1/check", key, &body).await?;
        match a["decision"].as_str() {
            Some("allow") => Ok(()),
            other => Err(format!("setup check was not allowed: decision {other:?}: {a}")),
        }
    }
}

/// The standard set-up: `n` workspaces, one authorization each.
pub async fn small(api: &Api, admin: &str, n: usize) -> Result<Vec<Prepared>, String> {
    let mut conn = None;
    let mut v = Vec::new();
    for i in 0..n.max(1) {
        let (workspace, key) = api.workspace(&mut conn, admin, &format!("loadtest {i}")).await?;
        let a = api.authorization(&mut conn, &key, "load").await?;
        api.check_allows(&key, &a).await?;
        v.push(Prepared { workspace, key, authorizations: vec![a] });
    }
    Ok(v)
}

/// Runs `job(i)` for `i in 0..n` over `concurrency` connections (closed loop: each connection
/// does the next job when the last is done), stopping at `deadline`. Returns how many finished
/// and the first error. Progress is printed every 10 s.
async fn parallel<F, Fut>(
    what: &str,
    n: usize,
    concurrency: usize,
    deadline: Instant,
    job: F,
) -> (usize, Option<String>)
where
    F: Fn(usize, Option<Conn>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Option<Conn>, Result<(), String>)> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let job = Arc::new(job);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, done, error, job) = (next.clone(), done.clone(), error.clone(), job.clone());
        tasks.spawn(async move {
            let mut conn = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    return;
                }
                let (c, r) = job(i, conn).await;
                conn = c;
                match r {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if let Ok(mut g) = error.lock() {
                            g.get_or_insert(e);
                        }
                        // Stop everyone: a half-built set-up is reported, not papered over.
                        next.store(n, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            j = tasks.join_next() => if j.is_none() { break },
            _ = tick.tick() => {
                let d = done.load(Ordering::Relaxed);
                let s = started.elapsed().as_secs_f64();
                eprintln!("  {what}: {d}/{n} ({:.0}/s)", d as f64 / s.max(1e-3));
            }
        }
    }
    let e = error.lock().ok().and_then(|g| g.clone());
    (done.load(Ordering::Relaxed), e)
}

/// The scale set-up: `workspaces` workspaces with a key each, then `authorizations` spread
/// evenly over them, created concurrently. Bounded by `deadline`: what was created by then is
/// what is measured (and reported).
pub async fn scale(
    api: &Api,
    admin: &str,
    workspaces: usize,
    authorizations: usize,
    concurrency: usize,
    deadline: Instant,
) -> Result<(Vec<Prepared>, usize, f64, f64), String> {
    /// (workspace id, key secret) per workspace index, filled as they are created.
    type Slots = Arc<Vec<Mutex<Option<(String, String)>>>>;
    let slots: Slots = Arc::new((0..workspaces).map(|_| Mutex::new(None)).collect());
    let t0 = Instant::now();
    let (a, s, admin_s) = (api.clone(), slots.clone(), admin.to_owned());
    let (made, err) = parallel("workspaces", workspaces, concurrency, deadline, move |i, mut conn| {
        let (a, s, admin_s) = (a.clone(), s.clone(), admin_s.clone());
        async move {
            let r = a.workspace(&mut conn, &admin_s, &format!("scale {i}")).await.map(|wk| {
                if let Ok(mut g) = s[i].lock() {
                    *g = Some(wk);
                }
            });
            (conn, r)
        }
    })
    .await;
    let ws_secs = t0.elapsed().as_secs_f64();
    if let Some(e) = err {
        return Err(format!("creating workspaces ({made} made): {e}"));
    }
    let ready: Vec<(String, String)> = slots.iter().filter_map(|m| m.lock().ok().and_then(|g| g.clone())).collect();
    if ready.is_empty() {
        return Err("no workspace was created before the deadline".into());
    }
    // Authorization j goes to workspace j mod W; its id is kept for the first few per workspace
    // only (checks need a few, and a million ids would only cost memory).
    const KEEP: usize = 4;
    let ids: Arc<Vec<Mutex<Vec<String>>>> = Arc::new((0..ready.len()).map(|_| Mutex::new(Vec::new())).collect());
    let ready = Arc::new(ready);
    let t1 = Instant::now();
    let (a, r, ids2) = (api.clone(), ready.clone(), ids.clone());
    let (made_auth, err) = parallel("authorizations", authorizations, concurrency, deadline, move |j, mut conn| {
        let (a, r, ids2) = (a.clone(), r.clone(), ids2.clone());
        async move {
            let w = j % r.len();
            let res = a.authorization(&mut conn, &r[w].1, &format!("user-{j}")).await.map(|id| {
                if let Ok(mut g) = ids2[w].lock() {
                    if g.len() < KEEP {
                        g.push(id);
                    }
                }
            });
            (conn, res)
        }
    })
    .await;
    let auth_secs = t1.elapsed().as_secs_f64();
    if let Some(e) = err {
        return Err(format!("creating authorizations ({made_auth} made): {e}"));
    }
    let prepared = ready
        .iter()
        .zip(ids.iter())
        .filter_map(|((workspace, key), ids)| {
            let authorizations = ids.lock().ok()?.clone();
            (!authorizations.is_empty()).then(|| Prepared {
                workspace: workspace.clone(),
                key: key.clone(),
                authorizations,
            })
        })
        .collect();
    Ok((prepared, made_auth, ws_secs, auth_secs))
}

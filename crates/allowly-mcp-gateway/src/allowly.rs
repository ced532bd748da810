//! The gateway as a client of Allowly's API: `POST /v1/check`, `POST /v1/confirmations/{nonce}`
//! (answering a confirmation the MCP client's user gave through elicitation) and the escalation
//! long-poll `GET /v1/escalations/{id}?wait=…`. Plain HTTP/1.1, one connection per call.
//!
//! Retries: a POST is sent with one `Idempotency-Key` and resent with the same key after a
//! connection error or a 429/503 whose `Retry-After` is short, so a retry never makes a second
//! decision. API keys live in memory only; no error message includes one.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::error::GatewayError;

/// How often a call is sent again after a connection error or a passing 429/503.
const RETRIES: u32 = 2;
/// A `Retry-After` longer than this is not waited for: the call fails (closed) at once.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Where Allowly is: `http://host:port`, no path (`--allowly-url`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    authority: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, GatewayError> {
        let bad = || GatewayError::Config(format!("--allowly-url must be http://HOST:PORT, not {url:?}"));
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        let authority = if rest.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            rest.to_owned()
        } else {
            format!("{rest}:80")
        };
        Ok(Self { authority })
    }
}

/// A decision of `POST /v1/check`, as far as the gateway acts on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub decision: String,
    pub reason: String,
    pub receipt_id: Option<String>,
    /// `confirm`: the nonce the answer goes to.
    pub nonce: Option<String>,
    /// `escalate`: the escalation to wait for.
    pub escalation_id: Option<String>,
}

/// The final decision after a person's step.
#[derive(Debug, Clone, PartialEq)]
pub struct Final {
    pub allowed: bool,
    pub reason: String,
    pub receipt_id: Option<String>,
    /// The wait ended before anyone answered.
    pub pending: bool,
}

#[derive(Debug)]
pub struct Allowly {
    endpoint: Endpoint,
    timeout: Duration,
}

impl Allowly {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Self { endpoint, timeout }
    }

    /// `POST /v1/check` with the `check` key.
    pub async fn check(
        &self,
        key: &str,
        authorization_id: &str,
        scope: &str,
        resource: Option<&str>,
        context: &Value,
    ) -> Result<Check, GatewayError> {
        let mut body = json!({ "authorization_id": authorization_id, "scopes": [scope], "context": context });
        if let Some(resource) = resource {
            body["resource"] = json!(resource);
        }
        let v = self.send(Method::POST, "/v1/check", key, Some(body), Duration::ZERO).await?;
        let s = |v: &Value| v.as_str().map(str::to_owned);
        Ok(Check {
            decision: s(&v["decision"]).ok_or_else(|| GatewayError::BadAnswer("check without decision".into()))?,
            reason: s(&v["reason"]).unwrap_or_default(),
            receipt_id: receipt_id(&v["receipt"]),
            nonce: s(&v["confirmation"]["nonce"]),
            escalation_id: s(&v["escalation"]["id"]),
        })
    }

    /// The user's answer to a confirmation (`POST /v1/confirmations/{nonce}`, an `admin` key).
    pub async fn answer_confirmation(
        &self,
        key: &str,
        nonce: &str,
        approved: bool,
        by: &str,
        shown: &str,
    ) -> Result<Final, GatewayError> {
        let outcome = if approved { "approved" } else { "declined" };
        let body = json!({ "outcome": outcome, "by": by, "shown": shown });
        let v = self.send(Method::POST, &format!("/v1/confirmations/{nonce}"), key, Some(body), Duration::ZERO).await?;
        Ok(Final {
            allowed: v["decision"] == "allow",
            reason: v["reason"].as_str().unwrap_or_default().to_owned(),
            receipt_id: receipt_id(&v["receipt"]),
            pending: false,
        })
    }

    /// Long-polls an escalation (a `read` key) until it is resolved or `wait` is over.
    pub async fn wait_escalation(&self, key: &str, id: &str, wait: Duration) -> Result<Final, GatewayError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // The server cuts a wait to its --long-poll-max-ms (60 s by default).
            let slice = left.min(Duration::from_secs(60));
            let path = format!("/v1/escalations/{id}?wait={}ms", slice.as_millis());
            let v = self.send(Method::GET, &path, key, None, slice).await?;
            let receipt = v["resolution_receipt_id"].as_str().map(str::to_owned);
            match v["status"].as_str() {
                Some("pending") if left.is_zero() => {
                    return Ok(Final {
                        allowed: false,
                        reason: "still_pending".into(),
                        receipt_id: None,
                        pending: true,
                    })
                }
                Some("pending") => continue,
                Some("approved") => {
                    return Ok(Final { allowed: true, reason: "approved".into(), receipt_id: receipt, pending: false })
                }
                Some("declined") => {
                    return Ok(Final { allowed: false, reason: "declined".into(), receipt_id: receipt, pending: false })
                }
                _ => {
                    return Ok(Final {
                        allowed: false,
                        reason: "escalation_expired".into(),
                        receipt_id: receipt,
                        pending: false,
                    })
                }
            }
        }
    }

    /// One API call with its retries; the parsed JSON answer of a 2xx.
    async fn send(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
        extra: Duration,
    ) -> Result<Value, GatewayError> {
        let idempotency_key = random_key();
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut attempt = 0;
        loop {
            let sent = tokio::time::timeout(
                self.timeout + extra,
                self.once(&method, path, key, &idempotency_key, body.clone()),
            )
            .await
            .unwrap_or_else(|_| Err(Attempt::Retry(format!("no answer within {:?}", self.timeout + extra), None)));
            match sent {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(why, after)) => {
                    if attempt >= RETRIES || after.is_some_and(|d| d > MAX_RETRY_AFTER) {
                        return Err(GatewayError::Unreachable(why));
                    }
                    attempt += 1;
                    let backoff = Duration::from_millis(100 << attempt);
                    tokio::time::sleep(after.unwrap_or(backoff).max(backoff)).await;
                }
            }
        }
    }

    async fn once(
        &self,
        method: &Method,
        path: &str,
        key: &str,
        idempotency_key: &str,
        body: Bytes,
    ) -> Result<Value, Attempt> {
        let stream = tokio::net::TcpStream::connect(&self.endpoint.authority)
            .await
            .map_err(|e| Attempt::Retry(format!("connect {}: {e}", self.endpoint.authority), None))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Attempt::Retry(format!("handshake: {e}"), None))?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, &self.endpoint.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
            .header(http::header::ACCEPT, "application/json");
        if *method == Method::POST {
            req = req.header(http::header::CONTENT_TYPE, "application/json").header("idempotency-key", idempotency_key);
        }
        let req = req.body(Full::new(body)).map_err(|e| Attempt::Fail(GatewayError::BadAnswer(e.to_string())))?;
        let resp = sender.send_request(req).await.map_err(|e| Attempt::Retry(format!("request: {e}"), None))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Attempt::Retry(format!("reading the answer: {e}"), None))?
            .to_bytes();
        driver.abort();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let code = v["code"].as_str().unwrap_or("unknown").to_owned();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            // Passing (with Retry-After) or not, the answer is not a decision: fail closed.
            return Err(match retry_after {
                Some(after) => Attempt::Retry(format!("{} {code}", status.as_u16()), Some(after)),
                None => Attempt::Fail(GatewayError::Unreachable(format!("{} {code}", status.as_u16()))),
            });
        }
        let detail = v["detail"].as_str().unwrap_or_default().to_owned();
        Err(Attempt::Fail(GatewayError::Refused { status: status.as_u16(), code, detail }))
    }
}

enum Attempt {
    /// Worth another try (with the server's `Retry-After`, if it sent one).
    Retry(String, Option<Duration>),
    Fail(GatewayError),
}

/// A pending receipt's `receipt_id`, or a signed one's `body.id`.
fn receipt_id(receipt: &Value) -> Option<String> {
    receipt["receipt_id"].as_str().or_else(|| receipt["body"]["id"].as_str()).map(str::to_owned)
}

fn random_key() -> String {
    let mut b = [0u8; 16];
    // No randomness from the OS is no reason to refuse a tool call; a fixed key would be one
    // (every call would replay the first answer), so the time stands in.
    if getrandom::getrandom(&mut b).is_err() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b = now.as_nanos().to_le_bytes();
    }
    format!("mcp-gateway-{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints_are_http_host_and_port() {
        assert_eq!(Endpoint::parse("http://127.0.0.1:8080").unwrap().authority, "127.0.0.1:8080");
        assert_eq!(Endpoint::parse("http://allowly/").unwrap().authority, "allowly:80");
        for bad in ["https://a:1", "a:1", "http://", "http://a:1/v1", "http://u@a:1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn receipt_ids_of_pending_and_signed_receipts() {
        assert_eq!(receipt_id(&json!({"receipt_id": "rc_1", "body": {"id": "rc_1"}})).as_deref(), Some("rc_1"));
        assert_eq!(receipt_id(&json!({"body": {"id": "rc_2"}})).as_deref(), Some("rc_2"));
        assert_eq!(receipt_id(&Value::Null), None);
    }
}

//! What every request handler shares. Its own leaf, so the request loop (`http`) and the
//! handlers (`routes`) both name it without naming each other both ways.

use allowly_engine::Engine;

use crate::extract::RequestIds;
use crate::isolation::KeyIsolation;
use crate::metrics::HttpMetrics;

/// What every request handler shares.
#[derive(Debug)]
pub struct App {
    pub engine: Engine,
    /// The process's metrics registry (`/metrics`).
    pub metrics: HttpMetrics,
    pub body_limit: usize,
    pub request_ids: RequestIds,
    /// What this instance promises about its keys (`/readyz`, metric).
    pub key_isolation: KeyIsolation,
    /// The instance admin key file, rewritten when the key is rotated.
    pub admin_token: std::path::PathBuf,
    /// `POST /v1/admin/backup`.
    pub backups: crate::backup::Backups,
    /// The open connections and their caps (shared with each connection's I/O guard).
    pub connections: std::sync::Arc<crate::conn::Connections>,
    /// Per-API-key rate limits.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// The OpenAPI document `GET /v1/openapi.json` serves, built at start by `crate::openapi`
    /// (handed in, so the handlers need not import the module that documents them).
    pub openapi: &'static serde_json::Value,
    /// `/metrics` requires this bearer token if set.
    pub metrics_token: Option<crate::auth::MetricsToken>,
    /// In a cluster: sends requests for another node's workspaces there (`None` outside one).
    pub forwarder: Option<crate::forward::Forwarder>,
}

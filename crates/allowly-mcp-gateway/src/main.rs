//! `allowly-mcp-gateway`: an MCP gateway that asks Allowly before every tool call.
//!
//! ```text
//! allowly-mcp-gateway --allowly-url http://127.0.0.1:8080 --server-name github \
//!     --authorization-id au_… -- npx -y @modelcontextprotocol/server-github
//! ```
//!
//! It speaks MCP to the client over stdio (in the client's configuration, in place of the
//! server's own command) or, with `--listen HOST:PORT`, over streamable HTTP at `/mcp`
//! (docs/mcp-gateway.md says who may connect). Behind it: the server given after `--` (started,
//! stdio), or `--upstream-url http(s)://…/mcp` (streamable HTTP), or several servers named in a
//! `--config` file, whose tools are listed as `<server>__<tool>`. Everything passes through;
//! `tools/call` is checked first (`POST /v1/check` of scope `mcp.<server>.<tool>`,
//! docs/tool-scopes.md): allow → forwarded; deny → a tool error naming the reason; confirm → the
//! client's user is asked (MCP elicitation) and the answer recorded in Allowly, or, when the
//! client cannot ask, a tool error carrying the nonce; escalate → waits for the approver within
//! `--escalation-wait-ms`. The result's `_meta` names the receipts (`allowly/receipt_ids`).
//! Allowly unreachable: the call is refused (`--on-unreachable allow` lets it through unchecked).
//!
//! Keys come from the environment only (a command line is visible to every local user):
//! `ALLOWLY_CHECK_KEY` (role check, required), `ALLOWLY_READ_KEY` (role read: wait for
//! escalations), `ALLOWLY_ANSWER_KEY` (role admin: record the user's answer to a confirmation),
//! `ALLOWLY_GATEWAY_TOKEN` (the bearer token HTTP clients must send; required beyond loopback).

mod allowly;
mod config;
mod error;
mod gate;
mod http;
mod proxy;
mod scope;
mod tasks;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rmcp::service::ServiceExt as _;

use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnUnreachable {
    Deny,
    Allow,
}

#[derive(Debug, Parser)]
#[command(name = "allowly-mcp-gateway", version, about = "An MCP gateway that asks Allowly before every tool call")]
struct Args {
    /// Allowly's API, http://HOST:PORT.
    #[arg(long, env = "ALLOWLY_URL", default_value = "http://127.0.0.1:8080")]
    allowly_url: String,
    /// The user's authorization the agent acts under.
    #[arg(long, env = "ALLOWLY_AUTHORIZATION_ID")]
    authorization_id: String,
    /// The server's name in scopes: tool T is `mcp.<name>.<T>` (use the name the agent's MCP
    /// configuration gives the server, so the Claude Code hook and the gateway agree).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    server_name: Option<String>,
    /// The MCP server behind the gateway over streamable HTTP (`http://HOST:PORT/mcp` or
    /// `https://…`) instead of a command after `--`. With `ALLOWLY_UPSTREAM_TOKEN` set, every
    /// request to it carries `Authorization: Bearer <token>`.
    #[arg(long, value_name = "URL", conflicts_with = "config")]
    upstream_url: Option<String>,
    /// With an `https://` `--upstream-url`: a PEM file of the CA (or CAs) the server's
    /// certificate must chain to, in place of the Mozilla roots (a private CA).
    #[arg(long, value_name = "FILE", requires = "upstream_url")]
    upstream_ca_file: Option<PathBuf>,
    /// A TOML file naming several MCP servers (docs/mcp-gateway.md); their tools are listed as
    /// `<server>__<tool>`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve the MCP client over streamable HTTP at `http://HOST:PORT/mcp` instead of stdio.
    /// Beyond loopback only with `ALLOWLY_GATEWAY_TOKEN` set.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// With `--listen`: how many client sessions may be open at once (each has its own servers
    /// behind); one more is answered 503.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions: u32,
    /// With `--listen`: how many client connections may be open at once (a session's event
    /// stream holds one); one more is answered 503 and closed. Also how many MCP requests may
    /// be in flight at once (of sessions and of 2026-07-28 clients), those whose client has gone
    /// counted until answered (a tool call is stopped when its request is cancelled).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// How long a call waits for an approver's answer to an escalation (ms).
    #[arg(long, default_value_t = 120_000)]
    escalation_wait_ms: u64,
    /// Per request to Allowly (ms).
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// When Allowly cannot be reached: refuse the call (deny) or let it through unchecked.
    #[arg(long, value_enum, default_value_t = OnUnreachable::Deny)]
    on_unreachable: OnUnreachable,
    /// The check's resource for a tool: `TOOL=TEMPLATE` (TOOL `*` for every tool), `{arg}` an
    /// argument of the call (string or number), e.g. `create_issue=github:{owner}/{repo}`.
    /// Repeatable; the first that matches applies. A call lacking an argument is refused.
    #[arg(long = "resource", value_name = "TOOL=TEMPLATE", value_parser = parse_resource)]
    resources: Vec<(String, String)>,
    /// Who answers confirmations (the answer's `by`).
    #[arg(long, env = "ALLOWLY_USER", default_value = "mcp-client-user")]
    user: String,
    /// The MCP server's command and arguments.
    #[arg(last = true, num_args = 1.., required_unless_present_any = ["upstream_url", "config"], conflicts_with_all = ["upstream_url", "config"])]
    command: Vec<String>,
}

fn parse_resource(s: &str) -> Result<(String, String), String> {
    let (tool, template) = s.split_once('=').ok_or("expected TOOL=TEMPLATE")?;
    if tool.is_empty() || template.is_empty() {
        return Err("expected TOOL=TEMPLATE".into());
    }
    Ok((tool.to_owned(), template.to_owned()))
}

fn key(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The servers behind the gateway, from `--config`, `--upstream-url` or the command after `--`.
fn upstreams(args: &mut Args) -> Result<Vec<proxy::Upstream>, GatewayError> {
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GatewayError::Config(format!("--config {}: {e}", path.display())))?;
        return config::parse(&text, key);
    }
    let name = args.server_name.clone().ok_or_else(|| GatewayError::Config("--server-name is required".into()))?;
    let reach = match args.upstream_url.take() {
        Some(url) => {
            let url = config::upstream_url(&url).map_err(|e| GatewayError::Config(format!("--upstream-url {e}")))?;
            config::check_ca(&url, args.upstream_ca_file.as_deref())
                .map_err(|e| GatewayError::Config(format!("--upstream-ca-file {e}")))?;
            let ca = args.upstream_ca_file.as_deref().map(allowly_tls::CaFile::read).transpose()?;
            // Environment only: a command line is visible to every local user.
            proxy::Reach::Url { url, token: key("ALLOWLY_UPSTREAM_TOKEN").map(proxy::Token), ca }
        }
        None => {
            let mut command = std::mem::take(&mut args.command).into_iter();
            let program =
                command.next().ok_or_else(|| GatewayError::Config("no MCP server command after --".into()))?;
            proxy::Reach::Command { program, args: command.collect() }
        }
    };
    Ok(vec![proxy::Upstream { name, reach }])
}

async fn run(mut args: Args) -> Result<(), GatewayError> {
    let endpoint = allowly::Endpoint::parse(&args.allowly_url)?;
    let check_key =
        key("ALLOWLY_CHECK_KEY").ok_or_else(|| GatewayError::Config("ALLOWLY_CHECK_KEY is not set".into()))?;
    let max_sessions = usize::try_from(args.max_sessions).unwrap_or(usize::MAX);
    let max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    let listen = args
        .listen
        .map(|addr| http::Listen::new(addr, key("ALLOWLY_GATEWAY_TOKEN"), max_sessions, max_connections))
        .transpose()?;
    let upstreams = upstreams(&mut args)?;
    let policy = gate::Policy {
        authorization_id: args.authorization_id,
        check_key,
        read_key: key("ALLOWLY_READ_KEY"),
        answer_key: key("ALLOWLY_ANSWER_KEY"),
        user: args.user,
        escalation_wait: Duration::from_millis(args.escalation_wait_ms),
        allow_unreachable: args.on_unreachable == OnUnreachable::Allow,
        resources: args.resources,
    };
    let shared = Arc::new(proxy::Shared {
        policy,
        allowly: allowly::Allowly::new(endpoint, Duration::from_millis(args.timeout_ms)),
        upstreams,
        aggregate: args.config.is_some(),
    });
    if let Some(listen) = listen {
        return http::serve(listen, shared).await;
    }
    let running = proxy::Gateway::new(shared)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| GatewayError::Downstream(format!("serving the MCP client: {e}")))?;
    // Until the client closes stdin; then the servers behind are stopped with the gateway.
    let _ = running.waiting().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("allowly-mcp-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allowly-mcp-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

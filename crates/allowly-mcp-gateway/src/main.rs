//! `allowly-mcp-gateway`: an MCP gateway that asks Allowly before every tool call.
//!
//! ```text
//! allowly-mcp-gateway --allowly-url http://127.0.0.1:8080 --server-name github \
//!     --authorization-id au_… -- npx -y @modelcontextprotocol/server-github
//! ```
//!
//! It speaks MCP over stdio to the client that starts it (in the client's configuration, in
//! place of the server's own command) and starts the server given after `--`. Everything passes
//! through; `tools/call` is checked first (`POST /v1/check` of scope `mcp.<server>.<tool>`,
//! docs/tool-scopes.md): allow → forwarded; deny → a tool error naming the reason; confirm → the
//! client's user is asked (MCP elicitation) and the answer recorded in Allowly, or, when the
//! client cannot ask, a tool error carrying the nonce; escalate → waits for the approver within
//! `--escalation-wait-ms`. The result's `_meta` names the receipts (`allowly/receipt_ids`).
//! Allowly unreachable: the call is refused (`--on-unreachable allow` lets it through unchecked).
//!
//! Keys come from the environment only (a command line is visible to every local user):
//! `ALLOWLY_CHECK_KEY` (role check, required), `ALLOWLY_READ_KEY` (role read: wait for
//! escalations), `ALLOWLY_ANSWER_KEY` (role admin: record the user's answer to a confirmation).

mod allowly;
mod error;
mod gate;
mod proxy;
mod scope;

use std::process::ExitCode;
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
    #[arg(long)]
    server_name: String,
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
    #[arg(last = true, required = true, num_args = 1..)]
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

async fn run(args: Args) -> Result<(), GatewayError> {
    let endpoint = allowly::Endpoint::parse(&args.allowly_url)?;
    let check_key =
        key("ALLOWLY_CHECK_KEY").ok_or_else(|| GatewayError::Config("ALLOWLY_CHECK_KEY is not set".into()))?;
    let policy = gate::Policy {
        server: args.server_name,
        authorization_id: args.authorization_id,
        check_key,
        read_key: key("ALLOWLY_READ_KEY"),
        answer_key: key("ALLOWLY_ANSWER_KEY"),
        user: args.user,
        escalation_wait: Duration::from_millis(args.escalation_wait_ms),
        allow_unreachable: args.on_unreachable == OnUnreachable::Allow,
        resources: args.resources,
    };
    let mut command = args.command.into_iter();
    let program = command.next().ok_or_else(|| GatewayError::Config("no MCP server command after --".into()))?;
    let downstream = proxy::Downstream { program, args: command.collect() };
    let gateway = proxy::Gateway::new(
        policy,
        allowly::Allowly::new(endpoint, Duration::from_millis(args.timeout_ms)),
        downstream,
    );
    let running = gateway
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| GatewayError::Downstream(format!("serving the MCP client: {e}")))?;
    // Until the client closes stdin; then the server behind is stopped with the gateway.
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

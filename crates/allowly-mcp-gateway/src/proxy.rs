//! The pass-through: an MCP server for the client in front (stdio) and an MCP client of the
//! server behind (a child process), built on rmcp's raw `Service` so that every request,
//! result and notification goes through as it came, whatever its kind — but `tools/call`,
//! which goes through the gate first.
//!
//! The server behind is started when the client in front initializes, with the client's own
//! `initialize` parameters (its capabilities and protocol version), and the client gets the
//! server's `initialize` result: the two negotiate through the gateway as if it were not there.
//! Requests the server makes of the client (sampling, roots, elicitation) are forwarded the
//! other way. Not forwarded: `notifications/cancelled` (request ids differ on the two sides;
//! a cancelled call's answer is dropped by the client) and the client's `initialized` (the
//! gateway's own client already sent one).

use rmcp::model::{
    CallToolRequest, CallToolResult, ClientConfig, ClientNotification, ClientRequest, ClientResult, ElicitRequest,
    ElicitRequestParams, ElicitationAction, ErrorData, GetMeta as _, InitializeRequestParams, InitializeResult,
    MetaObject, ServerCapabilities, ServerConfig, ServerNotification, ServerRequest, ServerResult,
};
use rmcp::service::{
    NotificationContext, Peer, RequestContext, RoleClient, RoleServer, RunningService, Service, ServiceError,
    ServiceExt as _,
};
use rmcp::transport::TokioChildProcess;
use serde_json::{json, Value};
use tokio::sync::{Mutex, OnceCell};

use crate::allowly::Allowly;
use crate::error::GatewayError;
use crate::gate::{Policy, UserAnswer, Verdict};
use crate::scope::mcp_scope;

/// The command that starts the MCP server behind the gateway.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub program: String,
    pub args: Vec<String>,
}

/// The client side, facing the MCP server behind: forwards what the server asks of the client.
struct Behind {
    info: ClientConfig,
    front: Peer<RoleServer>,
}

impl Service<RoleClient> for Behind {
    async fn handle_request(
        &self,
        mut request: ServerRequest,
        context: RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        *request.get_meta_mut() = context.meta;
        self.front.send_request(request).await.map_err(relay_error)
    }

    async fn handle_notification(
        &self,
        mut notification: ServerNotification,
        context: NotificationContext<RoleClient>,
    ) -> Result<(), ErrorData> {
        if matches!(notification, ServerNotification::CancelledNotification(_)) {
            return Ok(());
        }
        *notification.get_meta_mut() = context.meta;
        self.front.send_notification(notification).await.map_err(relay_error)
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

/// The server side, facing the MCP client in front.
pub struct Gateway {
    policy: Policy,
    allowly: Allowly,
    downstream: Downstream,
    behind: OnceCell<Peer<RoleClient>>,
    /// Kept so the server behind lives as long as the gateway (dropping it stops the child).
    running: Mutex<Option<RunningService<RoleClient, Behind>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("server", &self.policy.server).field("downstream", &self.downstream).finish()
    }
}

impl Gateway {
    pub fn new(policy: Policy, allowly: Allowly, downstream: Downstream) -> Self {
        Self { policy, allowly, downstream, behind: OnceCell::new(), running: Mutex::new(None) }
    }

    fn behind(&self) -> Result<&Peer<RoleClient>, ErrorData> {
        self.behind
            .get()
            .ok_or_else(|| ErrorData::internal_error("the MCP server behind the gateway is not started", None))
    }

    /// Starts the server behind with the client's own parameters; its answer is the client's.
    async fn initialize(
        &self,
        params: InitializeRequestParams,
        front: Peer<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Err(ErrorData::invalid_request("initialize was already sent", None));
        }
        let mut cmd = tokio::process::Command::new(&self.downstream.program);
        cmd.args(&self.downstream.args);
        let transport = TokioChildProcess::new(cmd).map_err(|e| {
            downstream_error(GatewayError::Downstream(format!("cannot start {}: {e}", self.downstream.program)))
        })?;
        let service = Behind { info: params, front }
            .serve(transport)
            .await
            .map_err(|e| downstream_error(GatewayError::Downstream(format!("initialize: {e}"))))?;
        let info = service
            .peer_info()
            .ok_or_else(|| downstream_error(GatewayError::Downstream("no initialize result".into())))?;
        // rmcp keeps the server's answer as its `ServerPeerInfo`; the client gets it back as the
        // `initialize` result it was (an implementation without a name is given one).
        let mut result = serde_json::to_value(&*info).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        if result.get("serverInfo").is_none_or(Value::is_null) {
            result["serverInfo"] = json!({ "name": "mcp-server", "version": "unknown" });
        }
        let info: InitializeResult =
            serde_json::from_value(result).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let _ = self.behind.set(service.peer().clone());
        *running = Some(service);
        Ok(ServerResult::InitializeResult(info))
    }

    /// `tools/call`: the gate, then the server behind (or a tool error), with the receipt ids.
    async fn call_tool(&self, call: CallToolRequest, front: &Peer<RoleServer>) -> Result<ServerResult, ErrorData> {
        let behind = self.behind()?.clone();
        let tool = call.params.name.to_string();
        let arguments = call.params.arguments.clone().map(Value::Object).unwrap_or(Value::Null);
        let scope = mcp_scope(&self.policy.server, &tool);
        let can_ask = front.peer_info().is_some_and(|i| i.capabilities.elicitation.is_some());
        let verdict = self
            .policy
            .decide(&self.allowly, scope, &tool, &arguments, |message| ask_user(front, can_ask, message))
            .await;
        match verdict {
            Verdict::Forward { meta } => {
                let result = behind.send_request(ClientRequest::CallToolRequest(call)).await.map_err(relay_error)?;
                Ok(with_meta(result, meta))
            }
            Verdict::Refuse { text, meta } => {
                let result: CallToolResult = serde_json::from_value(json!({
                    "content": [{ "type": "text", "text": text }],
                    "isError": true,
                }))
                .map_err(|e| ErrorData::internal_error(format!("building a tool error: {e}"), None))?;
                Ok(with_meta(ServerResult::CallToolResult(result), meta))
            }
        }
    }
}

impl Service<RoleServer> for Gateway {
    async fn handle_request(
        &self,
        mut request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        *request.get_meta_mut() = context.meta;
        match request {
            ClientRequest::InitializeRequest(init) => self.initialize(init.params, context.peer).await,
            ClientRequest::CallToolRequest(call) => self.call_tool(call, &context.peer).await,
            other => self.behind()?.send_request(other).await.map_err(relay_error),
        }
    }

    async fn handle_notification(
        &self,
        mut notification: ClientNotification,
        context: NotificationContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if matches!(
            notification,
            ClientNotification::InitializedNotification(_) | ClientNotification::CancelledNotification(_)
        ) {
            return Ok(());
        }
        *notification.get_meta_mut() = context.meta;
        self.behind()?.send_notification(notification).await.map_err(relay_error)
    }

    fn get_info(&self) -> ServerConfig {
        // Asked before `initialize` (a discover probe) the gateway shows no capability of its
        // own; after it, the client holds the server's answer.
        ServerConfig::new(ServerCapabilities::default())
    }
}

/// Asks the client's user to confirm (MCP elicitation, a form with one boolean).
async fn ask_user(front: &Peer<RoleServer>, can_ask: bool, message: String) -> UserAnswer {
    if !can_ask {
        return UserAnswer::CannotAsk;
    }
    let params: Result<ElicitRequestParams, _> = serde_json::from_value(json!({
        "mode": "form",
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": { "approve": { "type": "boolean", "title": "Approve", "description": "Let the tool run" } },
            "required": ["approve"],
        },
    }));
    let Ok(params) = params else { return UserAnswer::CannotAsk };
    let answer = front.send_request(ServerRequest::ElicitRequest(ElicitRequest::new(params))).await;
    match answer {
        Ok(ClientResult::ElicitResult(r)) if r.action == ElicitationAction::Accept => {
            if r.content.as_ref().and_then(|c| c.get("approve")).and_then(Value::as_bool) == Some(true) {
                UserAnswer::Approved
            } else {
                UserAnswer::Declined
            }
        }
        // Declined or cancelled by the user: a no, recorded as such.
        Ok(ClientResult::ElicitResult(_)) => UserAnswer::Declined,
        Ok(_) => UserAnswer::CannotAsk,
        Err(_) => UserAnswer::CannotAsk,
    }
}

/// The tool result with the gate's `_meta` members added (the server's own are kept).
fn with_meta(result: ServerResult, gate: serde_json::Map<String, Value>) -> ServerResult {
    match result {
        ServerResult::CallToolResult(mut r) => {
            let mut meta = r.meta.take().map(|m| m.0).unwrap_or_default();
            meta.extend(gate);
            r.meta = Some(MetaObject(meta));
            ServerResult::CallToolResult(r)
        }
        other => other,
    }
}

fn relay_error(e: ServiceError) -> ErrorData {
    match e {
        ServiceError::McpError(e) => e,
        e => ErrorData::internal_error(format!("relaying through the gateway: {e}"), None),
    }
}

fn downstream_error(e: GatewayError) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}

//! The pass-through: an MCP server for the client in front and an MCP client of each server
//! behind (a child process over stdio, or a URL over streamable HTTP), built on rmcp's raw
//! `Service` so that every request, result and notification goes through as it came, whatever
//! its kind — but `tools/call`, which goes through the gate first.
//!
//! One server behind (`--`, `--upstream-url`): the server is reached when the client in front
//! initializes, with the client's own `initialize` parameters (its capabilities and protocol
//! version), and the client gets the server's `initialize` result: the two negotiate through the
//! gateway as if it were not there. Tool names are the server's own.
//!
//! Several servers behind (`--config`): the gateway is itself the server the client
//! initializes with (capability `tools`); each server behind is reached with the client's
//! parameters, and its tools are listed as `<server>__<tool>` (docs/mcp-gateway.md). A call is
//! routed by that prefix to its server under the tool's own name and checked as
//! `mcp.<server>.<tool>`. A server that cannot be reached at start, or that goes away, is left
//! out of the list and its calls are answered with a tool error naming it; the others go on.
//! It is reached again when next used (a list, a call), at most once per [`RECONNECT_EVERY`]: a
//! command is started anew, a URL gets a new session (what the server kept for the old one is
//! gone, as after any restart of it). One server alone is reached again the same way: what the
//! client negotiated with it still holds for a command started anew or the same URL, and a
//! request meanwhile is answered with an error naming it (a tool error for a call).
//! Prompts are merged like tools (`<server>__<prompt>`, `prompts/get` routed by the prefix).
//! Resources and resource templates keep their URIs (they name things outside the gateway):
//! the lists are each reachable server's together, and `resources/read` goes to the server
//! that listed the URI — the first one, if two list the same URI — or, for a URI no list has
//! shown, to each server in turn until one has it. `resources/subscribe` and `unsubscribe` go
//! to the server that listed or served the URI, `completion/complete` to the server of the
//! prompt (by its prefix) or of the resource template.
//!
//! A client of MCP 2026-07-28 sends no `initialize`: the servers are reached at its first request
//! with what that request's `_meta` says (`ensure_started`), by `server/discover` (or
//! `initialize` for an older server). rmcp 3.11 reads every method of that revision and of its
//! tasks and skills extensions into typed requests, so they are relayed as such, not as raw
//! JSON-RPC: a task-augmented `tools/call` is a `tools/call` (the client declares the extension
//! in `_meta`) and takes the gate like any other; tasks are routed by the ids the session was
//! handed (`tasks`); `subscriptions/listen` is relayed stream by stream (`listen`).
//!
//! Requests a server makes of the client (sampling, roots, elicitation) are forwarded the other
//! way. Not forwarded as such: `notifications/cancelled` (request ids differ on the two sides;
//! rmcp cancels the request's token, and a `tools/call` that sees it sends the server behind a
//! cancellation of its own request, see `forward`) and the client's `initialized` (the
//! gateway's own client already sent one).

use std::sync::Arc;
use std::time::Duration;

use allowly_tls::CaFile;
use rmcp::model::{
    CallToolRequest, CallToolResult, CancelledNotification, CancelledNotificationParam, ClientConfig,
    ClientNotification, ClientRequest, ClientResult, CompleteRequest, DetailedTask, DiscoverResult, ElicitRequest,
    ElicitRequestParams, ElicitationAction, ErrorCode, ErrorData, GetMeta as _, GetPromptRequest, Implementation,
    InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListSkillsResult, ListToolsResult, MetaObject, ProtocolVersion, Reference, RequestMetaObject, ResourcesCapability,
    ResultType, ServerCapabilities, ServerConfig, ServerNotification, ServerRequest, ServerResult, SubscriptionFilter,
    SubscriptionsAcknowledgedNotification, SubscriptionsAcknowledgedNotificationParams, SubscriptionsListenResult,
    TaskPayload, SKILLS_EXTENSION_ID, TASKS_EXTENSION_ID,
};
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, ClientServiceExt as _, NotificationContext, Peer, PeerRequestOptions,
    RequestContext, RoleClient, RoleServer, RunningService, Service, ServiceError, ServiceExt as _,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{IntoTransport, StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{json, Value};
use tokio::sync::{Mutex, OnceCell};

use crate::allowly::Allowly;
use crate::error::GatewayError;
use crate::gate::{Policy, UserAnswer, Verdict};
use crate::tasks::{Task, Tasks};
use crate::tls;

/// Between a server name and a tool name in what the client sees with several servers.
pub const SEPARATOR: &str = "__";

/// How long reaching one server behind may take (starting it and its `initialize`): a server
/// that hangs at start is counted as down rather than holding the client's `initialize`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the gateway reaches one MCP server behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A command the gateway starts; MCP over its stdin and stdout.
    Command { program: String, args: Vec<String> },
    /// An MCP endpoint over streamable HTTP (`http://…/mcp` or `https://…/mcp`), with the
    /// bearer token it wants, if any (sent as `Authorization: Bearer`, never logged), and the CA
    /// its certificate must chain to, if not one of the Mozilla roots (`tls`).
    Url { url: String, token: Option<Token>, ca: Option<CaFile> },
}

/// A secret the gateway sends upstream: compared, cloned and sent, never shown (its `Debug` is
/// a placeholder, so no log line or error message can carry it).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// One MCP server behind the gateway and its name in scopes (and, with several, in tool names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub reach: Reach,
}

/// What every client's gateway shares: the policy, Allowly, and the servers behind. Over
/// streamable HTTP each client session has a gateway of its own (and its own servers behind).
#[derive(Debug)]
pub struct Shared {
    pub policy: Policy,
    pub allowly: Allowly,
    pub upstreams: Vec<Upstream>,
    /// Several servers behind (`--config`): the tools are named `<server>__<tool>`.
    pub aggregate: bool,
}

/// The client in front as the servers behind reach it: set by the first request whose peer can
/// reach the client. (A 2026-07-28 client may open with `server/discover`, which rmcp hands the
/// gateway with a peer that cannot reach the client: the servers are reached then, and their
/// requests and notifications go to the peer of the client's next request.)
type FrontPeer = Arc<std::sync::Mutex<Option<Peer<RoleServer>>>>;

fn front_of(front: &FrontPeer) -> Option<Peer<RoleServer>> {
    front.lock().ok().and_then(|f| f.clone())
}

/// The client side, facing one MCP server behind: forwards what the server asks of the client.
struct Behind {
    info: ClientConfig,
    front: FrontPeer,
    /// Its server's index among the session's links, and the session's tasks (its
    /// `notifications/tasks` name a task by the id the client was given).
    link: usize,
    tasks: Arc<std::sync::Mutex<Tasks>>,
    /// The gateway made the ids of the tasks it handed out (`Gateway::mints_task_ids`): a task
    /// it did not hand out has no id the client knows.
    minted: bool,
}

impl Service<RoleClient> for Behind {
    async fn handle_request(
        &self,
        mut request: ServerRequest,
        context: RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        *request.get_meta_mut() = context.meta;
        let front = front_of(&self.front).ok_or_else(|| ErrorData::internal_error("no MCP client to ask", None))?;
        front.send_request(request).await.map_err(relay_error)
    }

    async fn handle_notification(
        &self,
        mut notification: ServerNotification,
        context: NotificationContext<RoleClient>,
    ) -> Result<(), ErrorData> {
        if matches!(notification, ServerNotification::CancelledNotification(_)) {
            return Ok(());
        }
        if let ServerNotification::TaskStatusNotification(status) = &mut notification {
            let known = self.tasks.lock().ok().and_then(|tasks| {
                let id = tasks.client_id(self.link, &status.params.task.task.task_id)?;
                let meta = tasks.get(&id)?.meta.clone();
                Some((id, meta))
            });
            match known {
                Some((id, meta)) => {
                    status.params.task.task.task_id = id;
                    decorate(&mut status.params.task, meta);
                }
                // A task the client was not handed has no id it knows.
                None if self.minted => return Ok(()),
                None => {}
            }
        }
        *notification.get_meta_mut() = context.meta;
        let Some(front) = front_of(&self.front) else { return Ok(()) };
        front.send_notification(notification).await.map_err(relay_error)
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

/// A task's final result (`completed`) with the gate's `_meta` of the call that created it.
fn decorate(task: &mut DetailedTask, gate: serde_json::Map<String, Value>) {
    if let TaskPayload::Completed { result } = &mut task.payload {
        if gate.is_empty() {
            return;
        }
        let meta = result.entry("_meta").or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(meta) = meta {
            meta.extend(gate);
        }
    }
}

/// One server behind, once the client has initialized: its peer, or why it could not be reached.
struct Link {
    name: String,
    /// Its place in `Shared::upstreams` (how to reach it again).
    upstream: usize,
    /// The connection, or why there is none; replaced by a reconnection.
    state: std::sync::Mutex<LinkState>,
    /// Held while reconnecting, so calls arriving together start one server, not several.
    reconnecting: Mutex<()>,
    /// What the server answered at `initialize` (its capabilities say what to merge).
    capabilities: ServerCapabilities,
}

struct LinkState {
    peer: Result<Peer<RoleClient>, String>,
    /// When the last reconnection failed ([`RECONNECT_EVERY`] apart at most).
    failed_at: Option<std::time::Instant>,
}

/// With several servers, a server that is down (at start, or gone since) is reached again when
/// it is next used, at most once per this long: a server restarted by its operator (or a
/// command that crashed) comes back without restarting the client's session, and one that stays
/// down costs one failed attempt per interval, not one per call.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

impl Link {
    fn new(
        name: String,
        upstream: usize,
        peer: Result<Peer<RoleClient>, String>,
        capabilities: ServerCapabilities,
    ) -> Self {
        let state = std::sync::Mutex::new(LinkState { peer, failed_at: None });
        Self { name, upstream, state, reconnecting: Mutex::new(()), capabilities }
    }

    /// The connection as it stands: a peer whose transport has closed is `Err`.
    fn current(&self) -> Result<Peer<RoleClient>, String> {
        let state = self.state.lock().map_err(|_| "the gateway's state of this server is lost".to_owned())?;
        match &state.peer {
            Ok(peer) if peer.is_transport_closed() => Err("the connection to it was lost".to_owned()),
            other => other.clone(),
        }
    }

    /// Whether a reconnection may be tried now.
    fn may_retry(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.failed_at.is_none_or(|t| t.elapsed() >= RECONNECT_EVERY))
    }

    fn set(&self, peer: Result<Peer<RoleClient>, String>, failed: bool) {
        if let Ok(mut state) = self.state.lock() {
            state.peer = peer;
            state.failed_at = failed.then(std::time::Instant::now);
        }
    }
}

/// How many URIs found by reads (no list showed them) a session remembers the server of
/// (listed URIs and templates always are, and do not count): a subscription to such a URI is
/// routed by it, but one entry per distinct URI read would otherwise be the client's to grow.
/// Past it, reads still work (each asks the servers in turn again); a subscription to a URI not
/// remembered is refused with a message naming this limit — unless one server alone takes
/// subscriptions — and one remembered keeps its server, so its unsubscription goes where the
/// subscription went (forgetting the oldest instead would lose exactly that).
const MAX_FOUND_OWNERS: usize = 4096;

/// Which server owns each resource URI or template a session has seen (index into the links).
#[derive(Debug, Default)]
struct Owners {
    by_uri: std::collections::HashMap<String, usize>,
    /// How many of them a read found (at most [`MAX_FOUND_OWNERS`]).
    found: usize,
}

/// The server side, facing the MCP client in front.
pub struct Gateway {
    shared: Arc<Shared>,
    links: OnceCell<Vec<Link>>,
    /// What the client was answered at `initialize` (rmcp asks `get_info` over HTTP).
    info: OnceCell<ServerConfig>,
    /// Kept so the servers behind live as long as the gateway (dropping one stops its child
    /// process or closes its HTTP session).
    running: Mutex<Option<Vec<RunningService<RoleClient, Behind>>>>,
    /// The client's `initialize` parameters (or, for a 2026-07-28 client, what its first request's
    /// `_meta` said), kept to reach a server again.
    reconnect_with: OnceCell<InitializeRequestParams>,
    /// The client, as the servers behind reach it.
    front: FrontPeer,
    /// The tasks this session was handed (`tasks`).
    tasks: Arc<std::sync::Mutex<Tasks>>,
    /// With several servers: which server listed each resource URI or template (index into the
    /// links), filled by the lists, and by reads of URIs no list showed up to
    /// [`MAX_FOUND_OWNERS`]; bounded by what the servers list and that.
    resource_owners: std::sync::Mutex<Owners>,
    /// Serves the requests of any number of clients (the HTTP front's 2026-07-28 clients, see
    /// [`Gateway::for_many_clients`]) rather than one client's session.
    many_clients: bool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("upstreams", &self.shared.upstreams).finish()
    }
}

/// Reaches `upstream` as an MCP client with the client's `initialize` parameters (`behind.info`);
/// `Err` says why it could not.
async fn connect(upstream: &Upstream, behind: Behind) -> Result<RunningService<RoleClient, Behind>, String> {
    let started = async {
        match &upstream.reach {
            Reach::Command { program, args } => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args);
                let transport = TokioChildProcess::new(cmd).map_err(|e| format!("cannot start {program}: {e}"))?;
                handshake(behind, transport).await.map_err(|e| format!("initialize: {e}"))
            }
            Reach::Url { url, token, ca } => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                if let Some(Token(token)) = token {
                    config = config.auth_header(token.as_str());
                }
                let client = tls::client(ca.as_ref()).map_err(|e| e.to_string())?;
                handshake(behind, StreamableHttpClientTransport::with_client(client, config))
                    .await
                    .map_err(|e| format!("initialize at {url}: {}", tls::why(&e)))
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, started)
        .await
        .map_err(|_| format!("no answer to initialize within {CONNECT_TIMEOUT:?}"))?
}

/// The newest protocol version with an `initialize` handshake: what a server that does not speak
/// 2026-07-28 is initialized with on behalf of a 2026-07-28 client.
const NEWEST_WITH_INITIALIZE: ProtocolVersion = ProtocolVersion::V_2025_11_25;

/// The lifecycle with a server behind, as the client in front chose it: `initialize` for a
/// client that initialized; for a 2026-07-28 client (no `initialize`), `server/discover` and
/// per-request metadata, falling back to `initialize` with a server that does not speak that
/// revision (whose requests then carry the client's capabilities as it initialized).
async fn handshake<T, E, A>(
    behind: Behind,
    transport: T,
) -> Result<RunningService<RoleClient, Behind>, ClientInitializeError>
where
    T: IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let version = behind.info.protocol_version.clone();
    if version.has_initialize() {
        return behind.serve(transport).await;
    }
    let lifecycle =
        ClientLifecycleMode::Auto { preferred_versions: vec![version], legacy_version: Some(NEWEST_WITH_INITIALIZE) };
    behind.serve_with_lifecycle(transport, lifecycle).await
}

/// The server's `initialize` result as rmcp keeps it (its `ServerPeerInfo`), for the client.
fn initialize_result(service: &RunningService<RoleClient, Behind>) -> Result<InitializeResult, ErrorData> {
    let info =
        service.peer_info().ok_or_else(|| downstream_error(GatewayError::Downstream("no initialize result".into())))?;
    let mut result = serde_json::to_value(&*info).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    // An implementation without a name is given one (the field is required).
    if result.get("serverInfo").is_none_or(Value::is_null) {
        result["serverInfo"] = json!({ "name": "mcp-server", "version": "unknown" });
    }
    serde_json::from_value(result).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

impl Gateway {
    /// The gateway of one client: the stdio front's, or one HTTP session's.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            links: OnceCell::new(),
            info: OnceCell::new(),
            running: Mutex::new(None),
            reconnect_with: OnceCell::new(),
            front: Default::default(),
            tasks: Default::default(),
            resource_owners: Default::default(),
            many_clients: false,
        }
    }

    /// The gateway the HTTP front's 2026-07-28 clients share. That revision has no session:
    /// each request comes alone (rmcp's HTTP service builds a handler per request), so the
    /// servers behind, and the tasks handed out, must outlive the request — one long-lived
    /// gateway for all of them, its servers reached at the first request. The front does not
    /// tell its clients apart (one bearer token at most), so what a client may reach must not
    /// be namable by another: task ids are always the gateway's own, unguessable ones (with one
    /// server too; a server's own id, often a count, never reaches the client), and no server
    /// request or notification is relayed to a client (the gateway could not tell whose it is).
    pub fn for_many_clients(shared: Arc<Shared>) -> Self {
        Self { many_clients: true, ..Self::new(shared) }
    }

    /// Whether the client is given ids the gateway made, and only those reach a server: with
    /// several servers (their ids may collide), and when clients share the gateway.
    fn mints_task_ids(&self) -> bool {
        self.shared.aggregate || self.many_clients
    }

    /// Whether it has reached its servers (and `get_info` says what it offers).
    pub fn started(&self) -> bool {
        self.info.get().is_some()
    }

    fn links(&self) -> Result<&[Link], ErrorData> {
        self.links
            .get()
            .map(Vec::as_slice)
            .ok_or_else(|| ErrorData::internal_error("the MCP server behind the gateway is not started", None))
    }

    /// The one server behind (pass-through), reached again if it went away.
    async fn only(&self) -> Result<Peer<RoleClient>, ErrorData> {
        let link = self.links()?.first().ok_or_else(|| ErrorData::internal_error("no MCP server", None))?;
        self.peer(link).await.map_err(|why| unavailable(link, why))
    }

    /// The server a `<server>__<name>` names, and the name on that server.
    fn routed<'a>(&self, listed: &'a str) -> Option<(&Link, &'a str)> {
        let (server, name) = listed.split_once(SEPARATOR)?;
        self.links().ok()?.iter().find(|l| l.name == server).map(|l| (l, name))
    }

    /// The server that listed `uri` (a resource, or a resource template), or served a read of it.
    fn owner(&self, uri: &str) -> Option<&Link> {
        let i = self.resource_owners.lock().ok()?.by_uri.get(uri).copied()?;
        self.links().ok()?.get(i)
    }

    /// `link`'s connection, reaching the server again first if it is down and may be retried.
    /// One server alone too: the client negotiated with it, but a command started anew (or the
    /// same URL) is the same server, and answering "unavailable" for the rest of the session
    /// would leave the client nothing but a restart of its own.
    async fn peer(&self, link: &Link) -> Result<Peer<RoleClient>, String> {
        let current = link.current();
        if current.is_ok() || !link.may_retry() {
            return current;
        }
        let _one = link.reconnecting.lock().await;
        // Another call may have reconnected (or failed) while this one waited.
        let current = link.current();
        if current.is_ok() || !link.may_retry() {
            return current;
        }
        let (Some(upstream), Some(params)) = (self.shared.upstreams.get(link.upstream), self.reconnect_with.get())
        else {
            return current;
        };
        match connect(upstream, self.behind(params.clone(), link.upstream)).await {
            Ok(service) => {
                let peer = service.peer().clone();
                link.set(Ok(peer.clone()), false);
                if let Some(services) = self.running.lock().await.as_mut() {
                    // Those whose server went away hold nothing worth keeping: a server that
                    // keeps dying costs one entry, not one per reconnection.
                    services.retain(|s| !s.is_closed());
                    services.push(service);
                }
                eprintln!("allowly-mcp-gateway: MCP server {} reached again", link.name);
                Ok(peer)
            }
            Err(why) => {
                link.set(Err(why.clone()), true);
                Err(why)
            }
        }
    }

    /// The client side of the gateway for server `link`, as the client in front is.
    fn behind(&self, params: InitializeRequestParams, link: usize) -> Behind {
        Behind {
            info: params,
            front: self.front.clone(),
            link,
            tasks: self.tasks.clone(),
            minted: self.mints_task_ids(),
        }
    }

    /// The client's `initialize`: the servers behind are reached with its parameters.
    async fn initialize(&self, params: InitializeRequestParams) -> Result<ServerResult, ErrorData> {
        match self.start(params).await? {
            Some(result) => Ok(ServerResult::InitializeResult(result)),
            None => Err(ErrorData::invalid_request("initialize was already sent", None)),
        }
    }

    /// A 2026-07-28 client has no `initialize`: its first request's `_meta` names its protocol
    /// version, its capabilities and itself (rmcp has checked they are there), and the servers
    /// behind are reached with those, once, when that request arrives. A request without them
    /// before any `initialize` is refused.
    async fn ensure_started(&self, meta: &RequestMetaObject) -> Result<(), ErrorData> {
        if self.links.get().is_some() {
            return Ok(());
        }
        let Some(version) = meta.protocol_version() else {
            return Err(ErrorData::invalid_request(
                "initialize first, or name the protocol version in the request's _meta (2026-07-28)",
                None,
            ));
        };
        let mut params = InitializeRequestParams::default();
        params.protocol_version = version;
        params.capabilities = meta.client_capabilities().unwrap_or_default();
        if let Some(client) = meta.client_info() {
            params.client_info = client;
        }
        self.start(params).await.map(|_| ())
    }

    /// Reaches the servers behind with the client's own parameters. One server: its answer is
    /// the client's, and failing to reach it fails the `initialize`. Several: the gateway's own
    /// answer, whatever number of them could be reached. `None` if they were reached already.
    async fn start(&self, params: InitializeRequestParams) -> Result<Option<InitializeResult>, ErrorData> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(None);
        }
        let mut services = Vec::new();
        let mut links = Vec::new();
        let mut first = None;
        // One after the other: a few servers, each bounded by CONNECT_TIMEOUT.
        for (i, upstream) in self.shared.upstreams.iter().enumerate() {
            match connect(upstream, self.behind(params.clone(), i)).await {
                Ok(service) => {
                    let init = initialize_result(&service)?;
                    let capabilities = init.capabilities.clone();
                    first.get_or_insert(init);
                    links.push(Link::new(upstream.name.clone(), i, Ok(service.peer().clone()), capabilities));
                    services.push(service);
                }
                Err(why) if !self.shared.aggregate => return Err(downstream_error(GatewayError::Downstream(why))),
                Err(why) => {
                    eprintln!("allowly-mcp-gateway: MCP server {}: {why}", upstream.name);
                    // A server down at start has shown no capabilities: once reached again it
                    // serves its tools (the gateway always offers tools), not prompts or resources.
                    links.push(Link::new(upstream.name.clone(), i, Err(why), Default::default()));
                }
            }
        }
        let _ = self.reconnect_with.set(params.clone());
        let result = if self.shared.aggregate {
            aggregate_result(&params, first.as_ref(), &links)
        } else {
            first.ok_or_else(|| downstream_error(GatewayError::Downstream("no initialize result".into())))?
        };
        let _ = self.links.set(links);
        let _ = self.info.set(result.clone());
        *running = Some(services);
        Ok(Some(result))
    }

    /// `server/discover` (2026-07-28): with one server, what it offers; with several, the
    /// gateway's own answer (as to `initialize`). Either way the protocol versions are the
    /// gateway's, and an extension is shown only when a server behind offers it.
    fn discover(&self) -> Result<ServerResult, ErrorData> {
        let info = self.info.get().cloned().ok_or_else(|| ErrorData::internal_error("not started", None))?;
        let versions = Service::<RoleServer>::supported_protocol_versions(self).into_owned();
        Ok(ServerResult::DiscoverResult(DiscoverResult::from_server_info(versions, info)))
    }

    /// `tools/list` with several servers: each reachable server's tools, named `<server>__<tool>`.
    async fn list_tools(&self) -> Result<ServerResult, ErrorData> {
        let mut tools = Vec::new();
        for link in self.links()? {
            let Ok(peer) = self.peer(link).await else { continue };
            match peer.list_all_tools().await {
                Ok(listed) => tools.extend(listed.into_iter().map(|mut t| {
                    t.name = format!("{}{SEPARATOR}{}", link.name, t.name).into();
                    t
                })),
                // Gone mid-session: its tools are left out; a call of one says why.
                Err(e) => eprintln!("allowly-mcp-gateway: listing the tools of {}: {e}", link.name),
            }
        }
        Ok(ServerResult::ListToolsResult(ListToolsResult::with_all_items(tools)))
    }

    /// `prompts/list` with several servers: each reachable server's prompts, named
    /// `<server>__<prompt>`.
    async fn list_prompts(&self) -> Result<ServerResult, ErrorData> {
        let mut prompts = Vec::new();
        for link in self.links()?.iter().filter(|l| l.capabilities.prompts.is_some()) {
            let Ok(peer) = self.peer(link).await else { continue };
            match peer.list_all_prompts().await {
                Ok(listed) => prompts.extend(listed.into_iter().map(|mut p| {
                    p.name = format!("{}{SEPARATOR}{}", link.name, p.name);
                    p
                })),
                Err(e) => eprintln!("allowly-mcp-gateway: listing the prompts of {}: {e}", link.name),
            }
        }
        Ok(ServerResult::ListPromptsResult(ListPromptsResult::with_all_items(prompts)))
    }

    /// `prompts/get` with several servers: to the server the prefix names, under the prompt's
    /// own name.
    async fn get_prompt(&self, mut request: GetPromptRequest) -> Result<ServerResult, ErrorData> {
        let listed = request.params.name.clone();
        let Some((link, prompt)) = self.routed(&listed) else {
            return Err(ErrorData::invalid_params(
                format!("no MCP server behind the gateway has the prompt {listed:?}"),
                None,
            ));
        };
        let peer = self.peer(link).await.map_err(|why| unavailable(link, why))?;
        request.params.name = prompt.to_owned();
        peer.send_request(ClientRequest::GetPromptRequest(request)).await.map_err(relay_error)
    }

    /// `resources/list` (or `resources/templates/list`, `templates`) with several servers:
    /// every reachable server's, URIs unchanged; remembers who listed which resource.
    async fn list_resources(&self, templates: bool) -> Result<ServerResult, ErrorData> {
        let (mut resources, mut listed_templates) = (Vec::new(), Vec::new());
        for (i, link) in self.links()?.iter().enumerate().filter(|(_, l)| l.capabilities.resources.is_some()) {
            let Ok(peer) = self.peer(link).await else { continue };
            if templates {
                match peer.list_all_resource_templates().await {
                    Ok(listed) => {
                        // A completion of a template's argument names the template.
                        self.owned_by(listed.iter().map(|t| t.uri_template.as_str()), i);
                        listed_templates.extend(listed);
                    }
                    Err(e) => eprintln!("allowly-mcp-gateway: listing the resource templates of {}: {e}", link.name),
                }
                continue;
            }
            match peer.list_all_resources().await {
                Ok(listed) => {
                    self.owned_by(listed.iter().map(|r| r.uri.as_str()), i);
                    resources.extend(listed);
                }
                Err(e) => eprintln!("allowly-mcp-gateway: listing the resources of {}: {e}", link.name),
            }
        }
        Ok(if templates {
            ServerResult::ListResourceTemplatesResult(ListResourceTemplatesResult::with_all_items(listed_templates))
        } else {
            ServerResult::ListResourcesResult(ListResourcesResult::with_all_items(resources))
        })
    }

    /// Records `i` as the owner of `uris` (the first server to list one keeps it).
    fn owned_by<'a>(&self, uris: impl Iterator<Item = &'a str>, i: usize) {
        if let Ok(mut owners) = self.resource_owners.lock() {
            for uri in uris {
                owners.by_uri.entry(uri.to_owned()).or_insert(i);
            }
        }
    }

    /// Records `i` as the owner of `uri`, which a read found, while fewer than
    /// [`MAX_FOUND_OWNERS`] were: a client reading URIs made from templates, one after the
    /// other, cannot grow the map without bound.
    fn found_by(&self, uri: &str, i: usize) {
        if let Ok(mut owners) = self.resource_owners.lock() {
            if owners.found < MAX_FOUND_OWNERS && !owners.by_uri.contains_key(uri) {
                owners.by_uri.insert(uri.to_owned(), i);
                owners.found += 1;
            }
        }
    }

    /// `resources/read` with several servers: to the server that listed the URI, else to each
    /// reachable server with resources in turn until one has it (then its owner: a
    /// subscription to it goes there). `skills/get` and `resources/directory/read` (skills
    /// extension) the same way, among the servers that offer skills (or directory reads).
    async fn by_uri(
        &self,
        request: ClientRequest,
        uri: &str,
        serves: fn(&ServerCapabilities) -> bool,
    ) -> Result<ServerResult, ErrorData> {
        let links = self.links()?;
        let owner = self.resource_owners.lock().ok().and_then(|o| o.by_uri.get(uri).copied());
        let candidates: Vec<(usize, &Link)> = match owner.and_then(|i| Some((i, links.get(i)?))) {
            Some(owned) => vec![owned],
            None => links.iter().enumerate().filter(|(_, l)| serves(&l.capabilities)).collect(),
        };
        let mut last = None;
        for (i, link) in candidates {
            let Ok(peer) = self.peer(link).await else { continue };
            match peer.send_request(request.clone()).await {
                Ok(result) => {
                    self.found_by(uri, i);
                    return Ok(result);
                }
                Err(e) => last = Some(relay_error(e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            ErrorData::resource_not_found(format!("no MCP server behind the gateway has {uri}"), None)
        }))
    }

    /// `skills/list` with several servers: the skills of every reachable server that offers the
    /// skills extension, URIs unchanged (a skill is a resource: its URI names it); remembers who
    /// listed which, so `skills/get` goes there.
    async fn list_skills(&self) -> Result<ServerResult, ErrorData> {
        let mut skills = Vec::new();
        for (i, link) in self.links()?.iter().enumerate().filter(|(_, l)| l.capabilities.supports_skills()) {
            let Ok(peer) = self.peer(link).await else { continue };
            match peer.list_all_skills().await {
                Ok(listed) => {
                    self.owned_by(listed.iter().map(|s| s.uri.as_str()), i);
                    skills.extend(listed);
                }
                Err(e) => eprintln!("allowly-mcp-gateway: listing the skills of {}: {e}", link.name),
            }
        }
        Ok(ServerResult::ListSkillsResult(ListSkillsResult::with_all_items(skills)))
    }

    /// `tasks/get`, `tasks/update`, `tasks/cancel` (tasks extension): to the server of the task,
    /// under its id there. With several servers, or clients sharing the gateway, only a task the
    /// gateway handed out is reached (`tasks`): any other id is refused without asking a server.
    /// With one server and one client, an id the gateway has not seen still goes to the server
    /// (it alone knows its tasks). A `tasks/get` answer
    /// names the task as the client knows it, and a completed task's result carries the
    /// receipt ids of the call that created it, as a plain call's result does.
    async fn task_request(&self, mut request: ClientRequest) -> Result<ServerResult, ErrorData> {
        let id = match &mut request {
            ClientRequest::GetTaskRequest(r) => &mut r.params.task_id,
            ClientRequest::UpdateTaskRequest(r) => &mut r.params.task_id,
            ClientRequest::CancelTaskRequest(r) => &mut r.params.task_id,
            other => return Err(ErrorData::internal_error(format!("{} is no task request", other.method()), None)),
        };
        let asked = id.clone();
        let known = self.tasks.lock().ok().and_then(|t| t.get(&asked).cloned());
        let links = self.links()?;
        let link = match &known {
            Some(task) => {
                id.clone_from(&task.downstream);
                links.get(task.link)
            }
            None if !self.mints_task_ids() => links.first(),
            None => {
                return Err(ErrorData::invalid_params(
                    format!("no task {asked:?} was started through this gateway"),
                    None,
                ))
            }
        }
        .ok_or_else(|| ErrorData::internal_error("no MCP server", None))?;
        let peer = self.peer(link).await.map_err(|why| unavailable(link, why))?;
        let mut result = peer.send_request(request).await.map_err(relay_error)?;
        if let ServerResult::GetTaskResult(r) = &mut result {
            r.task.task.task_id = asked;
            if let Some(task) = known {
                decorate(&mut r.task, task.meta);
            }
        }
        Ok(result)
    }

    /// `subscriptions/listen` (2026-07-28): a listen on each reachable server (one, or each of
    /// several; with several a resource URI goes to the server that listed it, or to all if none
    /// did), acknowledged to the client as what the servers accepted together; then their
    /// notifications, each re-addressed to the client's request (its `subscriptionId`), until
    /// the client cancels the request or every server ends its stream. The listens behind are
    /// cancelled when this one ends.
    async fn listen(
        &self,
        requested: SubscriptionFilter,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let links = self.links()?;
        let owners: std::collections::HashMap<String, usize> =
            self.resource_owners.lock().map(|o| o.by_uri.clone()).unwrap_or_default();
        let mut accepted = SubscriptionFilter::default();
        let mut streams = Vec::new();
        let mut last = None;
        for (i, link) in links.iter().enumerate() {
            let Ok(peer) = self.peer(link).await else { continue };
            let mut filter = requested.clone();
            if self.shared.aggregate {
                filter.resource_subscriptions = requested
                    .resource_subscriptions
                    .as_ref()
                    .map(|uris| uris.iter().filter(|u| owners.get(*u).is_none_or(|o| *o == i)).cloned().collect());
            }
            match peer.listen(filter).await {
                Ok(stream) => {
                    union(&mut accepted, stream.acknowledged());
                    streams.push(stream);
                }
                Err(e) => {
                    eprintln!("allowly-mcp-gateway: subscriptions/listen at {}: {e}", link.name);
                    last = Some(relay_error(e));
                }
            }
        }
        if streams.is_empty() {
            return Err(last.unwrap_or_else(|| {
                ErrorData::new(ErrorCode::METHOD_NOT_FOUND, "no MCP server behind the gateway can be listened to", None)
            }));
        }
        let id = context.id.clone();
        let mut ack = ServerNotification::SubscriptionsAcknowledgedNotification(
            SubscriptionsAcknowledgedNotification::new(SubscriptionsAcknowledgedNotificationParams::new(accepted)),
        );
        ack.get_meta_mut().set_subscription_id(id.clone());
        context.peer.send_notification(ack).await.map_err(relay_error)?;
        // Bounded: a client that does not read its stream holds up the servers' streams (rmcp
        // ends a server's stream that its reader lets fill), never the gateway's memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ServerNotification>(64);
        let stop = context.ct.child_token();
        let _stop_on_return = stop.clone().drop_guard();
        for mut stream in streams {
            let (tx, stop) = (tx.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        next = stream.next() => match next {
                            Ok(Some(notification)) => if tx.send(notification).await.is_err() { break },
                            _ => return,
                        },
                    }
                }
                let _ = stream.cancel().await;
            });
        }
        drop(tx);
        loop {
            tokio::select! {
                () = context.ct.cancelled() => break,
                next = rx.recv() => match next {
                    Some(mut notification) => {
                        notification.get_meta_mut().set_subscription_id(id.clone());
                        context.peer.send_notification(notification).await.map_err(relay_error)?;
                    }
                    None => break,
                },
            }
        }
        Ok(ServerResult::SubscriptionsListenResult(SubscriptionsListenResult::complete(id)))
    }

    /// `resources/subscribe` or `resources/unsubscribe` of `uri` with several servers: to the
    /// server that listed (or served) the URI, else to the one server that takes subscriptions,
    /// if only one does. Its `notifications/resources/updated` reach this client session as
    /// every notification of that server does (each session has its own servers behind).
    async fn subscription(&self, request: ClientRequest, uri: String) -> Result<ServerResult, ErrorData> {
        let link = match self.owner(&uri) {
            Some(link) => link,
            None => {
                let subscribes =
                    |l: &&Link| l.capabilities.resources.as_ref().is_some_and(|r| r.subscribe == Some(true));
                let mut takers = self.links()?.iter().filter(subscribes);
                match (takers.next(), takers.next()) {
                    (Some(link), None) => link,
                    _ => {
                        let full = self.resource_owners.lock().is_ok_and(|o| o.found >= MAX_FOUND_OWNERS);
                        let why = if full {
                            format!(
                                "no MCP server behind the gateway has listed {uri:?}, and this session has read \
                                 more URIs no list showed than the {MAX_FOUND_OWNERS} whose server the gateway \
                                 remembers: subscribe to a URI a server lists (resources/list), or in a new session"
                            )
                        } else {
                            format!("no MCP server behind the gateway has listed {uri:?}: list or read it first")
                        };
                        return Err(ErrorData::invalid_params(why, None));
                    }
                }
            }
        };
        let peer = self.peer(link).await.map_err(|why| unavailable(link, why))?;
        peer.send_request(request).await.map_err(relay_error)
    }

    /// `completion/complete` with several servers: a prompt's to the server its
    /// `<server>__<prompt>` names, under the prompt's own name; a resource template's to the
    /// server that listed the template.
    async fn complete(&self, mut request: CompleteRequest) -> Result<ServerResult, ErrorData> {
        let link = match &mut request.params.r#ref {
            Reference::Prompt(prompt) => {
                let Some((link, name)) = self.routed(&prompt.name) else {
                    return Err(ErrorData::invalid_params(
                        format!("no MCP server behind the gateway has the prompt {:?}", prompt.name),
                        None,
                    ));
                };
                prompt.name = name.to_owned();
                link
            }
            Reference::Resource(resource) => self.owner(&resource.uri).ok_or_else(|| {
                ErrorData::invalid_params(
                    format!("no MCP server behind the gateway has listed {:?}: list the templates first", resource.uri),
                    None,
                )
            })?,
            _ => return Err(ErrorData::invalid_params("a completion reference of an unknown kind", None)),
        };
        let peer = self.peer(link).await.map_err(|why| unavailable(link, why))?;
        peer.send_request(ClientRequest::CompleteRequest(request)).await.map_err(relay_error)
    }

    /// `tools/call`: the gate, then the server behind (or a tool error), with the receipt ids.
    ///
    /// Stopped when the request is cancelled (`context.ct`: the client sent
    /// `notifications/cancelled`, or, over HTTP, a 2026-07-28 client closed its connection, or its
    /// session ended): the gate is no longer waited for (an escalation stays pending at Allowly
    /// until it is answered or expires; nothing reaches the server), and a call already forwarded
    /// is cancelled at the server behind with `notifications/cancelled`. A call whose client is
    /// still there is waited for as long as it runs (a tool may legitimately take long).
    async fn call_tool(
        &self,
        mut call: CallToolRequest,
        context: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let front = &context.peer;
        let listed = call.params.name.to_string();
        let (link, tool) = if self.shared.aggregate {
            let Some((link, tool)) = self.routed(&listed) else {
                return tool_error(
                    format!("no MCP server behind the gateway has the tool {listed:?}"),
                    Default::default(),
                );
            };
            (link, tool.to_owned())
        } else {
            let link = self.links()?.first().ok_or_else(|| ErrorData::internal_error("no MCP server", None))?;
            (link, listed.clone())
        };
        // Down at start (several servers), or gone and not reached again (within 5 s of the
        // last failure, or it still cannot be reached).
        let peer = match self.peer(link).await {
            Ok(peer) => peer,
            Err(why) => {
                return tool_error(format!("the MCP server {} is unavailable: {why}", link.name), Default::default())
            }
        };
        let arguments = call.params.arguments.clone().map(Value::Object).unwrap_or(Value::Null);
        let can_ask = front.peer_info().is_some_and(|i| i.capabilities.elicitation.is_some());
        let decided =
            self.shared.policy.decide(&self.shared.allowly, &link.name, &tool, &listed, &arguments, |message| {
                ask_user(front, can_ask, message)
            });
        let verdict = tokio::select! {
            verdict = decided => verdict,
            () = context.ct.cancelled() => return Err(cancelled_call(&listed, "before it was forwarded")),
        };
        match verdict {
            Verdict::Forward { meta } => {
                call.params.name = tool.into();
                match forward(&peer, ClientRequest::CallToolRequest(call), context).await {
                    Ok(result) => Ok(with_meta(self.handed(result, link, &meta)?, meta)),
                    // A server that went away mid-call answers with a tool error naming it: the
                    // client goes on (with the others, or with this one once it is back).
                    Err(ServiceError::McpError(e)) => Err(e),
                    Err(ServiceError::Cancelled { .. }) => {
                        Err(cancelled_call(&listed, "while the MCP server ran it (the server was told)"))
                    }
                    Err(e) => tool_error(format!("the MCP server {} is unavailable: {e}", link.name), meta),
                }
            }
            Verdict::Refuse { text, meta } => tool_error(text, meta),
        }
    }

    /// A tool call's result as the client gets it: a task (tasks extension) is recorded as this
    /// session's, under the id the client is given, with the gate's `_meta` (`tasks`).
    fn handed(
        &self,
        mut result: ServerResult,
        link: &Link,
        gate: &serde_json::Map<String, Value>,
    ) -> Result<ServerResult, ErrorData> {
        if let ServerResult::CreateTaskResult(created) = &mut result {
            let task = Task { link: link.upstream, downstream: created.task.task_id.clone(), meta: gate.clone() };
            let id = self
                .tasks
                .lock()
                .ok()
                .and_then(|mut tasks| tasks.add(self.mints_task_ids(), &link.name, task))
                .ok_or_else(|| ErrorData::internal_error("the gateway could not record the task", None))?;
            created.task.task_id = id;
        }
        Ok(result)
    }

    /// The servers a client notification goes to (all connected ones).
    fn peers(&self) -> Result<Vec<Peer<RoleClient>>, ErrorData> {
        Ok(self.links()?.iter().filter_map(|l| l.current().ok()).collect())
    }
}

/// The gateway's own `initialize` answer with several servers behind: tools, and prompts or
/// resources when a reachable server has them; the protocol version the first reachable server
/// agreed to (else the client's); the instructions say which servers are down.
fn aggregate_result(
    params: &InitializeRequestParams,
    first: Option<&InitializeResult>,
    links: &[Link],
) -> InitializeResult {
    let down: Vec<String> =
        links.iter().filter_map(|l| l.current().err().map(|why| format!("{} ({why})", l.name))).collect();
    let mut instructions = format!(
        "Tools and prompts of several MCP servers, named <server>{SEPARATOR}<name>; every tool call is checked by Allowly first."
    );
    if !down.is_empty() {
        instructions.push_str(&format!(" Unavailable: {}.", down.join("; ")));
    }
    let mut capabilities = ServerCapabilities::builder().enable_tools().build();
    let reachable = || links.iter().filter(|l| l.current().is_ok());
    if reachable().any(|l| l.capabilities.prompts.is_some()) {
        capabilities.prompts = Some(Default::default());
    }
    if reachable().any(|l| l.capabilities.resources.is_some()) {
        let mut resources = ResourcesCapability::default();
        if reachable().any(|l| l.capabilities.resources.as_ref().is_some_and(|r| r.subscribe == Some(true))) {
            resources.subscribe = Some(true);
        }
        capabilities.resources = Some(resources);
    }
    if reachable().any(|l| l.capabilities.completions.is_some()) {
        capabilities.completions = Some(Default::default());
    }
    // The extensions the gateway relays with several servers, when a reachable one offers it
    // (with the settings of the first that does); others' methods it does not route.
    for id in [TASKS_EXTENSION_ID, SKILLS_EXTENSION_ID] {
        if let Some(settings) = reachable().find_map(|l| l.capabilities.extensions.as_ref()?.get(id)) {
            capabilities.extensions.get_or_insert_default().insert(id.to_owned(), settings.clone());
        }
    }
    let mut result = InitializeResult::new(capabilities)
        .with_server_info(Implementation::new("allowly-mcp-gateway", env!("CARGO_PKG_VERSION")))
        .with_instructions(instructions);
    result.protocol_version = first.map_or_else(|| params.protocol_version.clone(), |r| r.protocol_version.clone());
    result
}

impl Service<RoleServer> for Gateway {
    async fn handle_request(
        &self,
        mut request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        if let ClientRequest::CustomRequest(custom) = &request {
            if SPEC_METHODS.contains(&custom.method.as_str()) {
                return Err(ErrorData::invalid_params(
                    format!("malformed {} request: its params are not those of the protocol", custom.method),
                    None,
                ));
            }
        }
        // Clients sharing the gateway: none is the one the servers reach.
        if !self.many_clients && !context.peer.is_transport_closed() {
            if let Ok(mut front) = self.front.lock() {
                if front.as_ref().is_none_or(Peer::is_transport_closed) {
                    *front = Some(context.peer.clone());
                }
            }
        }
        if !matches!(request, ClientRequest::InitializeRequest(_)) {
            self.ensure_started(&context.meta).await?;
        }
        *request.get_meta_mut() = context.meta.clone();
        let modern = context
            .meta
            .protocol_version()
            .or_else(|| context.peer.peer_info().map(|i| i.protocol_version.clone()))
            .is_some_and(|v| !v.has_initialize());
        let result = self.dispatch(request, context).await;
        result.map(|r| shaped(r, modern))
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
        for peer in self.peers()? {
            peer.send_notification(notification.clone()).await.map_err(relay_error)?;
        }
        Ok(())
    }

    fn get_info(&self) -> ServerConfig {
        // Asked before `initialize` (a discover probe) the gateway shows no capability of its
        // own; after it, what the client was answered.
        self.info.get().cloned().unwrap_or_else(|| ServerConfig::new(ServerCapabilities::default()))
    }
}

/// A result in the shape of the client's protocol version, as rmcp's typed server handlers
/// give theirs (the gateway is a raw `Service`, for which rmcp does not): 2026-07-28 wants
/// `resultType` and the caching hints (the gateway's own results, a tool error or a merged
/// list, have neither); an older version has neither field.
fn shaped(mut result: ServerResult, modern: bool) -> ServerResult {
    if !modern {
        result.strip_result_type_for_legacy_peer();
        result.strip_non_object_output_for_legacy_peer();
        return result;
    }
    let result_type = match &mut result {
        ServerResult::CompleteResult(r) => &mut r.result_type,
        ServerResult::GetPromptResult(r) => &mut r.result_type,
        ServerResult::ListPromptsResult(r) => &mut r.result_type,
        ServerResult::ListResourcesResult(r) => &mut r.result_type,
        ServerResult::ListResourceTemplatesResult(r) => &mut r.result_type,
        ServerResult::ReadResourceResult(r) => &mut r.result_type,
        ServerResult::ListToolsResult(r) => &mut r.result_type,
        ServerResult::CallToolResult(r) => &mut r.result_type,
        ServerResult::ListSkillsResult(r) => &mut r.result_type,
        ServerResult::GetSkillResult(r) => &mut r.result_type,
        _ => {
            result.fill_missing_cache_hints();
            return result;
        }
    };
    result_type.get_or_insert(ResultType::COMPLETE);
    result.fill_missing_cache_hints();
    result
}

impl Gateway {
    async fn dispatch(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        match request {
            ClientRequest::InitializeRequest(init) => self.initialize(init.params).await,
            ClientRequest::DiscoverRequest(_) => self.discover(),
            ClientRequest::CallToolRequest(call) => self.call_tool(call, &context).await,
            r @ (ClientRequest::GetTaskRequest(_)
            | ClientRequest::UpdateTaskRequest(_)
            | ClientRequest::CancelTaskRequest(_)) => self.task_request(r).await,
            ClientRequest::SubscriptionsListenRequest(r) => self.listen(r.params.notifications, context).await,
            ClientRequest::ListSkillsRequest(_) if self.shared.aggregate => self.list_skills().await,
            ClientRequest::GetSkillRequest(r) if self.shared.aggregate => {
                let uri = r.params.uri.clone();
                self.by_uri(ClientRequest::GetSkillRequest(r), &uri, ServerCapabilities::supports_skills).await
            }
            ClientRequest::ReadResourceDirectoryRequest(r) if self.shared.aggregate => {
                let uri = r.params.uri.clone();
                self.by_uri(
                    ClientRequest::ReadResourceDirectoryRequest(r),
                    &uri,
                    ServerCapabilities::supports_directory_read,
                )
                .await
            }
            ClientRequest::ListToolsRequest(_) if self.shared.aggregate => self.list_tools().await,
            ClientRequest::ListPromptsRequest(_) if self.shared.aggregate => self.list_prompts().await,
            ClientRequest::GetPromptRequest(get) if self.shared.aggregate => self.get_prompt(get).await,
            ClientRequest::ListResourcesRequest(_) if self.shared.aggregate => self.list_resources(false).await,
            ClientRequest::ListResourceTemplatesRequest(_) if self.shared.aggregate => self.list_resources(true).await,
            ClientRequest::ReadResourceRequest(read) if self.shared.aggregate => {
                let uri = read.params.uri.clone();
                self.by_uri(ClientRequest::ReadResourceRequest(read), &uri, |c| c.resources.is_some()).await
            }
            ClientRequest::SubscribeRequest(r) if self.shared.aggregate => {
                let uri = r.params.uri.clone();
                self.subscription(ClientRequest::SubscribeRequest(r), uri).await
            }
            ClientRequest::UnsubscribeRequest(r) if self.shared.aggregate => {
                let uri = r.params.uri.clone();
                self.subscription(ClientRequest::UnsubscribeRequest(r), uri).await
            }
            ClientRequest::CompleteRequest(c) if self.shared.aggregate => self.complete(c).await,
            ClientRequest::PingRequest(_) if self.shared.aggregate => Ok(ServerResult::empty(())),
            other if self.shared.aggregate => {
                let why = format!(
                    "{}: with several MCP servers the gateway merges their tools, prompts, resources, completions, skills and tasks only",
                    other.method()
                );
                Err(ErrorData::new(ErrorCode::METHOD_NOT_FOUND, why, None))
            }
            // Stopped, and cancelled at the server, if the client gives up (as a call is).
            other => match forward(&self.only().await?, other, &context).await {
                Err(ServiceError::Cancelled { .. }) => Err(ErrorData::internal_error(
                    "the request was cancelled while the MCP server handled it (the server was told): the MCP client cancelled it or went away",
                    None,
                )),
                answer => answer.map_err(relay_error),
            },
        }
    }
}

/// Why a `tools/call` whose request was cancelled is answered so (rmcp drops the answer to a
/// request the client cancelled; a 2026-07-28 client that closed its connection gets none).
fn cancelled_call(listed: &str, when: &str) -> ErrorData {
    ErrorData::internal_error(
        format!("the call of {listed} was cancelled {when}: the MCP client cancelled it or went away"),
        None,
    )
}

/// What the server behind is told when the gateway abandons a request it forwarded.
const ABANDONED: &str = "the MCP client of the gateway cancelled the request or went away";

/// Sends a request to the server behind and waits for its answer, unless the client's request
/// is cancelled first: the server is then sent `notifications/cancelled` for it (as rmcp's
/// `RequestHandle::cancel` would), so it can stop too, and the handler ends at once.
async fn forward(
    peer: &Peer<RoleClient>,
    request: ClientRequest,
    context: &RequestContext<RoleServer>,
) -> Result<ServerResult, ServiceError> {
    let handle = peer.send_cancellable_request(request, PeerRequestOptions::no_options()).await?;
    let (id, behind) = (handle.id.clone(), handle.peer.clone());
    tokio::select! {
        answer = handle.await_response() => answer,
        () = context.ct.cancelled() => {
            let cancelled = CancelledNotification::new(CancelledNotificationParam::new(Some(id), Some(ABANDONED.into())));
            // A server gone meanwhile needs no telling.
            let _ = behind.send_notification(ClientNotification::CancelledNotification(cancelled)).await;
            Err(ServiceError::Cancelled { reason: Some(ABANDONED.into()) })
        }
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

/// A tool error (`isError: true`) saying `text`, with the gate's `_meta`.
fn tool_error(text: String, meta: serde_json::Map<String, Value>) -> Result<ServerResult, ErrorData> {
    let result: CallToolResult = serde_json::from_value(json!({
        "content": [{ "type": "text", "text": text }],
        "isError": true,
    }))
    .map_err(|e| ErrorData::internal_error(format!("building a tool error: {e}"), None))?;
    Ok(with_meta(ServerResult::CallToolResult(result), meta))
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
        // A task-augmented call (tasks extension): the receipts of the call that created it.
        ServerResult::CreateTaskResult(mut r) => {
            let mut meta = r.meta.take().map(|m| m.0).unwrap_or_default();
            meta.extend(gate);
            r.meta = Some(MetaObject(meta));
            ServerResult::CreateTaskResult(r)
        }
        other => other,
    }
}

/// Adds what `other` accepted to `into` (the acknowledgment of listens on several servers).
fn union(into: &mut SubscriptionFilter, other: &SubscriptionFilter) {
    let or = |a: Option<bool>, b: Option<bool>| (a == Some(true) || b == Some(true)).then_some(true);
    into.tools_list_changed = or(into.tools_list_changed, other.tools_list_changed);
    into.prompts_list_changed = or(into.prompts_list_changed, other.prompts_list_changed);
    into.resources_list_changed = or(into.resources_list_changed, other.resources_list_changed);
    if let Some(uris) = &other.resource_subscriptions {
        let all = into.resource_subscriptions.get_or_insert_default();
        all.extend(uris.iter().filter(|u| !all.contains(u)).cloned().collect::<Vec<_>>());
    }
}

/// Request methods of the protocol that rmcp reads into typed requests. A request naming one
/// that rmcp could not read as such (its params malformed) falls through to a custom request
/// (`ClientRequest` is an untagged union, `CustomRequest` its catch-all): forwarded as it came,
/// a `tools/call` a server reads more leniently than rmcp would run its tool without the gate.
/// So such a request is refused here, whatever the method, and reaches no server.
const SPEC_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "completion/complete",
    "logging/setLevel",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "resources/directory/read",
    "subscriptions/listen",
    "tools/call",
    "tools/list",
    "tasks/get",
    "tasks/update",
    "tasks/cancel",
    "tasks/result",
    "tasks/list",
    "skills/list",
    "skills/get",
];

fn relay_error(e: ServiceError) -> ErrorData {
    match e {
        ServiceError::McpError(e) => e,
        e => ErrorData::internal_error(format!("relaying through the gateway: {e}"), None),
    }
}

/// A request for a server that is down (and could not be reached again).
fn unavailable(link: &Link, why: String) -> ErrorData {
    ErrorData::internal_error(format!("the MCP server {} is unavailable: {why}", link.name), None)
}

fn downstream_error(e: GatewayError) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Why the gateway refuses custom requests named like the protocol's: rmcp's untagged
    /// `ClientRequest` reads a `tools/call` it cannot parse as a custom request, which would be
    /// forwarded unchecked.
    #[test]
    fn a_tools_call_rmcp_cannot_read_becomes_a_custom_request() {
        let request: ClientRequest = serde_json::from_value(json!({
            "method": "tools/call", "params": { "name": "deleteRepo", "arguments": ["shop"] },
        }))
        .unwrap();
        let ClientRequest::CustomRequest(custom) = request else { panic!("read as {request:?}") };
        assert!(SPEC_METHODS.contains(&custom.method.as_str()));
    }

    #[test]
    fn a_completed_task_carries_the_receipts_of_its_call() {
        let mut task: DetailedTask = serde_json::from_value(json!({
            "taskId": "1", "status": "completed", "createdAt": "t", "lastUpdatedAt": "t", "ttlMs": null,
            "result": { "content": [], "_meta": { "server": 1 } },
        }))
        .unwrap();
        let gate = json!({ "allowly/receipt_ids": ["rc_1"] }).as_object().cloned().unwrap();
        decorate(&mut task, gate);
        let value = serde_json::to_value(&task).unwrap();
        assert_eq!(value["result"]["_meta"], json!({ "server": 1, "allowly/receipt_ids": ["rc_1"] }));
    }
}

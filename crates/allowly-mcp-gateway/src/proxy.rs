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
//! Requests a server makes of the client (sampling, roots, elicitation) are forwarded the other
//! way. Not forwarded: `notifications/cancelled` (request ids differ on the two sides; a
//! cancelled call's answer is dropped by the client) and the client's `initialized` (the
//! gateway's own client already sent one).

use std::sync::Arc;
use std::time::Duration;

use allowly_tls::CaFile;
use rmcp::model::{
    CallToolRequest, CallToolResult, ClientConfig, ClientNotification, ClientRequest, ClientResult, CompleteRequest,
    ElicitRequest, ElicitRequestParams, ElicitationAction, ErrorCode, ErrorData, GetMeta as _, GetPromptRequest,
    Implementation, InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, MetaObject, ReadResourceRequest, Reference, ResourcesCapability,
    ServerCapabilities, ServerConfig, ServerNotification, ServerRequest, ServerResult,
};
use rmcp::service::{
    NotificationContext, Peer, RequestContext, RoleClient, RoleServer, RunningService, Service, ServiceError,
    ServiceExt as _,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{json, Value};
use tokio::sync::{Mutex, OnceCell};

use crate::allowly::Allowly;
use crate::error::GatewayError;
use crate::gate::{Policy, UserAnswer, Verdict};
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

/// The client side, facing one MCP server behind: forwards what the server asks of the client.
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
    /// The client's `initialize` parameters and its peer, kept to reach a server again.
    reconnect_with: OnceCell<(InitializeRequestParams, Peer<RoleServer>)>,
    /// With several servers: which server listed each resource URI or template (index into the
    /// links), filled by the lists, and by reads of URIs no list showed up to
    /// [`MAX_FOUND_OWNERS`]; bounded by what the servers list and that.
    resource_owners: std::sync::Mutex<Owners>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("upstreams", &self.shared.upstreams).finish()
    }
}

/// Reaches `upstream` as an MCP client with the client's `initialize` parameters; `Err` says
/// why it could not.
async fn connect(
    upstream: &Upstream,
    params: InitializeRequestParams,
    front: Peer<RoleServer>,
) -> Result<RunningService<RoleClient, Behind>, String> {
    let behind = Behind { info: params, front };
    let started = async {
        match &upstream.reach {
            Reach::Command { program, args } => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args);
                let transport = TokioChildProcess::new(cmd).map_err(|e| format!("cannot start {program}: {e}"))?;
                behind.serve(transport).await.map_err(|e| format!("initialize: {e}"))
            }
            Reach::Url { url, token, ca } => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                if let Some(Token(token)) = token {
                    config = config.auth_header(token.as_str());
                }
                let client = tls::client(ca.as_ref()).map_err(|e| e.to_string())?;
                behind
                    .serve(StreamableHttpClientTransport::with_client(client, config))
                    .await
                    .map_err(|e| format!("initialize at {url}: {}", tls::why(&e)))
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, started)
        .await
        .map_err(|_| format!("no answer to initialize within {CONNECT_TIMEOUT:?}"))?
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
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            links: OnceCell::new(),
            info: OnceCell::new(),
            running: Mutex::new(None),
            reconnect_with: OnceCell::new(),
            resource_owners: Default::default(),
        }
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
        let (Some(upstream), Some((params, front))) =
            (self.shared.upstreams.get(link.upstream), self.reconnect_with.get())
        else {
            return current;
        };
        match connect(upstream, params.clone(), front.clone()).await {
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

    /// Reaches the servers behind with the client's own parameters. One server: its answer is
    /// the client's, and failing to reach it fails the `initialize`. Several: the gateway's own
    /// answer, whatever number of them could be reached.
    async fn initialize(
        &self,
        params: InitializeRequestParams,
        front: Peer<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Err(ErrorData::invalid_request("initialize was already sent", None));
        }
        let mut services = Vec::new();
        let mut links = Vec::new();
        let mut first = None;
        // One after the other: a few servers, each bounded by CONNECT_TIMEOUT.
        for (i, upstream) in self.shared.upstreams.iter().enumerate() {
            match connect(upstream, params.clone(), front.clone()).await {
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
        let _ = self.reconnect_with.set((params.clone(), front));
        let result = if self.shared.aggregate {
            aggregate_result(&params, first.as_ref(), &links)
        } else {
            first.ok_or_else(|| downstream_error(GatewayError::Downstream("no initialize result".into())))?
        };
        let _ = self.links.set(links);
        let _ = self.info.set(result.clone());
        *running = Some(services);
        Ok(ServerResult::InitializeResult(result))
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
    /// subscription to it goes there).
    async fn read_resource(&self, request: ReadResourceRequest) -> Result<ServerResult, ErrorData> {
        let links = self.links()?;
        let owner = self.resource_owners.lock().ok().and_then(|o| o.by_uri.get(&request.params.uri).copied());
        let candidates: Vec<(usize, &Link)> = match owner.and_then(|i| Some((i, links.get(i)?))) {
            Some(owned) => vec![owned],
            None => links.iter().enumerate().filter(|(_, l)| l.capabilities.resources.is_some()).collect(),
        };
        let mut last = None;
        for (i, link) in candidates {
            let Ok(peer) = self.peer(link).await else { continue };
            match peer.send_request(ClientRequest::ReadResourceRequest(request.clone())).await {
                Ok(result) => {
                    self.found_by(&request.params.uri, i);
                    return Ok(result);
                }
                Err(e) => last = Some(relay_error(e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            ErrorData::resource_not_found(format!("no MCP server behind the gateway has {}", request.params.uri), None)
        }))
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
    async fn call_tool(&self, mut call: CallToolRequest, front: &Peer<RoleServer>) -> Result<ServerResult, ErrorData> {
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
        let verdict = self
            .shared
            .policy
            .decide(&self.shared.allowly, &link.name, &tool, &listed, &arguments, |message| {
                ask_user(front, can_ask, message)
            })
            .await;
        match verdict {
            Verdict::Forward { meta } => {
                call.params.name = tool.into();
                match peer.send_request(ClientRequest::CallToolRequest(call)).await {
                    Ok(result) => Ok(with_meta(result, meta)),
                    // A server that went away mid-call answers with a tool error naming it: the
                    // client goes on (with the others, or with this one once it is back).
                    Err(ServiceError::McpError(e)) => Err(e),
                    Err(e) => tool_error(format!("the MCP server {} is unavailable: {e}", link.name), meta),
                }
            }
            Verdict::Refuse { text, meta } => tool_error(text, meta),
        }
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
        *request.get_meta_mut() = context.meta;
        match request {
            ClientRequest::InitializeRequest(init) => self.initialize(init.params, context.peer).await,
            ClientRequest::CallToolRequest(call) => self.call_tool(call, &context.peer).await,
            ClientRequest::ListToolsRequest(_) if self.shared.aggregate => self.list_tools().await,
            ClientRequest::ListPromptsRequest(_) if self.shared.aggregate => self.list_prompts().await,
            ClientRequest::GetPromptRequest(get) if self.shared.aggregate => self.get_prompt(get).await,
            ClientRequest::ListResourcesRequest(_) if self.shared.aggregate => self.list_resources(false).await,
            ClientRequest::ListResourceTemplatesRequest(_) if self.shared.aggregate => self.list_resources(true).await,
            ClientRequest::ReadResourceRequest(read) if self.shared.aggregate => self.read_resource(read).await,
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
                    "{}: with several MCP servers the gateway merges their tools, prompts, resources and completions only",
                    other.method()
                );
                Err(ErrorData::new(ErrorCode::METHOD_NOT_FOUND, why, None))
            }
            other => self.only().await?.send_request(other).await.map_err(relay_error),
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
        other => other,
    }
}

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

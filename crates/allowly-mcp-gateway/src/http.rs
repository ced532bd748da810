//! The gateway's client over MCP streamable HTTP (`--listen HOST:PORT`, path `/mcp`), with
//! rmcp's `StreamableHttpService` in session mode: each client session (an `initialize`) gets a
//! gateway of its own, which reaches its own servers behind (a child process each, for
//! commands), stopped when the session ends.
//!
//! A client of MCP 2026-07-28 has no session: rmcp serves each of its requests alone, with a
//! handler made for that request (its `service_factory` is called per request). A gateway per
//! request would start every command server behind anew for each request and forget the tasks
//! it handed out before their `tasks/get`; so those requests all go to one long-lived gateway
//! ([`Gateway::for_many_clients`], which says what keeps its clients apart).
//!
//! Who may connect: anyone who can open a TCP connection to the address, and the gateway acts
//! under one authorization for all of them. So it binds loopback unless told otherwise, answers
//! only `Host: localhost|127.0.0.1|::1` there (rmcp's check against DNS rebinding from a
//! browser page), and refuses to start on another address unless `ALLOWLY_GATEWAY_TOKEN` is
//! set; when it is set, every request must carry `Authorization: Bearer <token>` (loopback too).
//!
//! rmcp's HTTP service needs a `ServerHandler` (typed methods) where the gateway is a raw
//! `Service` (one method for every request): `Front` turns each typed method back into the
//! request it came as and hands it to the gateway, so stdio and HTTP take the same path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CancelTaskParams, CancelTaskRequest, ClientNotification,
    ClientRequest, CompleteRequest, CompleteRequestParams, CompleteResult, CustomNotification, CustomRequest,
    CustomResult, DiscoverRequest, DiscoverRequestParams, DiscoverResult, ErrorData, GetPromptRequest,
    GetPromptRequestParams, GetPromptResponse, GetSkillRequest, GetSkillRequestParams, GetSkillResult, GetTaskParams,
    GetTaskRequest, GetTaskResult, InitializeRequest, InitializeRequestParams, InitializeResult, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListSkillsResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotification, ProgressNotificationParam, ProtocolVersion, ReadResourceDirectoryRequest,
    ReadResourceDirectoryRequestParams, ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse,
    RequestMetaObject, RequestOptionalParam, ServerConfig, ServerResult, SubscribeRequestParams,
    UnsubscribeRequestParams, UpdateTaskParams, UpdateTaskRequest,
};
// `logging/setLevel` is deprecated by SEP-2577, but clients of the protocol versions before it
// still send it: forwarded while rmcp has it.
#[expect(deprecated, reason = "logging/setLevel is forwarded for clients of older protocol versions")]
use rmcp::model::{SetLevelRequest, SetLevelRequestParams};
// The same for `resources/subscribe` and `unsubscribe` (2026-07-28 has `subscriptions/listen`
// instead, relayed over stdio; over HTTP rmcp answers it itself, see docs/mcp-gateway.md).
#[expect(
    deprecated,
    reason = "resources/subscribe is forwarded for clients of the protocol versions with initialize"
)]
use rmcp::model::{SubscribeRequest, UnsubscribeRequest};
use rmcp::service::{NotificationContext, RequestContext, RoleServer, Service};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServerHandler;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::GatewayError;
use crate::proxy::{Gateway, Shared};

/// The path the MCP endpoint is served at.
pub const PATH: &str = "/mcp";

/// What rmcp's HTTP service is handed for one client session (or one 2026-07-28 request): the
/// session's own gateway, the one 2026-07-28 clients share, and the places for requests in
/// flight (all clients').
struct Front {
    session: Gateway,
    modern: Arc<Gateway>,
    in_flight: Arc<Semaphore>,
}

/// Whether the request is of the sessionless 2026-07-28 lifecycle (its protocol version in its
/// `_meta`), which rmcp serves without a session.
fn sessionless(meta: &RequestMetaObject) -> bool {
    meta.protocol_version().is_some_and(|v| !v.has_initialize())
}

impl Front {
    /// A request takes a place (refused if there is none), then goes to the shared gateway (a
    /// 2026-07-28 request) or to the session's own.
    ///
    /// The place is held until the gateway has answered, also when the client has gone: rmcp
    /// does not stop a handler. A 2026-07-28 client closing its connection cancels the
    /// request's token, which the gateway's `tools/call` honours (it stops, and cancels a call
    /// forwarded to a server behind), but other requests go on until the server behind answers.
    /// A session's request is not even cancelled: rmcp keeps its handler running for the client
    /// to resume its stream (`Last-Event-ID`) and spawns each one with no bound, until the
    /// session ends (`DELETE`, or idle for 5 minutes: then the tokens are cancelled). Without the
    /// bound a client opening a connection, sending a request and closing, again and again,
    /// would pile up handlers the cap on connections does not see.
    async fn relay(
        &self,
        request: ClientRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let Ok(_place) = self.in_flight.try_acquire() else {
            return Err(ErrorData::internal_error(TOO_MANY_REQUESTS, None));
        };
        if sessionless(&context.meta) {
            self.modern.handle_request(request, context).await
        } else {
            self.session.handle_request(request, context).await
        }
    }

    /// (rmcp drops a 2026-07-28 client's notifications: only a session's arrive here.)
    async fn notify(&self, notification: ClientNotification, context: NotificationContext<RoleServer>) {
        if let Err(e) = self.session.handle_notification(notification, context).await {
            eprintln!("allowly-mcp-gateway: forwarding a notification: {e}");
        }
    }
}

/// The result variant a request must be answered with; any other is the server's error.
macro_rules! expect {
    ($result:expr, $($variant:ident)|+) => {
        match $result? {
            $(ServerResult::$variant(r) => Ok(r.into()),)+
            other => Err(ErrorData::internal_error(format!("unexpected result from the MCP server: {other:?}"), None)),
        }
    };
}

/// `ServerHandler` methods that rebuild their request (`ClientRequest::$variant($build(params))`)
/// and hand it to the gateway, expecting one of the result variants.
macro_rules! relay {
    ($($method:ident($params:ty) -> $out:ty = $variant:ident($build:expr) => $($result:ident)|+;)*) => {$(
        async fn $method(&self, params: $params, context: RequestContext<RoleServer>) -> Result<$out, ErrorData> {
            expect!(self.relay(ClientRequest::$variant(($build)(params)), context).await, $($result)|+)
        }
    )*};
}

/// The same for methods answered with nothing (`()`): the gateway's result is only checked
/// to be no error.
macro_rules! relay_unit {
    ($($(#[$attr:meta])* $method:ident($params:ty) = $variant:ident($build:expr);)*) => {$(
        $(#[$attr])*
        async fn $method(&self, params: $params, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
            self.relay(ClientRequest::$variant(($build)(params)), context).await.map(|_| ())
        }
    )*};
}

fn paginated<M: Default>(params: Option<PaginatedRequestParams>) -> RequestOptionalParam<M, PaginatedRequestParams> {
    RequestOptionalParam { method: M::default(), params, extensions: Default::default() }
}

impl ServerHandler for Front {
    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.relay(ClientRequest::PingRequest(Default::default()), context).await.map(|_| ())
    }

    relay! {
        initialize(InitializeRequestParams) -> InitializeResult =
            InitializeRequest(InitializeRequest::new) => InitializeResult;
        complete(CompleteRequestParams) -> CompleteResult = CompleteRequest(CompleteRequest::new) => CompleteResult;
        get_prompt(GetPromptRequestParams) -> GetPromptResponse =
            GetPromptRequest(GetPromptRequest::new) => GetPromptResult | InputRequiredResult;
        list_prompts(Option<PaginatedRequestParams>) -> ListPromptsResult = ListPromptsRequest(paginated) => ListPromptsResult;
        list_resources(Option<PaginatedRequestParams>) -> ListResourcesResult =
            ListResourcesRequest(paginated) => ListResourcesResult;
        list_resource_templates(Option<PaginatedRequestParams>) -> ListResourceTemplatesResult =
            ListResourceTemplatesRequest(paginated) => ListResourceTemplatesResult;
        read_resource(ReadResourceRequestParams) -> ReadResourceResponse =
            ReadResourceRequest(ReadResourceRequest::new) => ReadResourceResult | InputRequiredResult;
        // A task-augmented call (tasks extension) is answered with a task: gated all the same
        // (the gateway's `tools/call`), its receipt ids in the task's `_meta`.
        call_tool(CallToolRequestParams) -> CallToolResponse =
            CallToolRequest(CallToolRequest::new) => CallToolResult | InputRequiredResult | CreateTaskResult;
        // 2026-07-28: rmcp routes these to typed methods (whose defaults answer "method not
        // found"); each goes to the gateway as the request it came as, like every other. rmcp
        // checks first that the capabilities allow them (the tasks extension declared by the
        // client and shown by the gateway, i.e. offered by a server behind).
        get_task(GetTaskParams) -> GetTaskResult = GetTaskRequest(GetTaskRequest::new) => GetTaskResult;
        list_skills(Option<PaginatedRequestParams>) -> ListSkillsResult = ListSkillsRequest(paginated) => ListSkillsResult;
        get_skill(GetSkillRequestParams) -> GetSkillResult = GetSkillRequest(GetSkillRequest::new) => GetSkillResult;
        read_resource_directory(ReadResourceDirectoryRequestParams) -> ListResourcesResult =
            ReadResourceDirectoryRequest(ReadResourceDirectoryRequest::new) => ListResourcesResult;
        list_tools(Option<PaginatedRequestParams>) -> ListToolsResult = ListToolsRequest(paginated) => ListToolsResult;
        on_custom_request(CustomRequest) -> CustomResult = CustomRequest(std::convert::identity) => CustomResult;
    }

    relay_unit! {
        #[expect(
            deprecated,
            reason = "resources/subscribe is forwarded for clients of the protocol versions with initialize"
        )]
        subscribe(SubscribeRequestParams) = SubscribeRequest(SubscribeRequest::new);
        #[expect(
            deprecated,
            reason = "resources/unsubscribe is forwarded for clients of the protocol versions with initialize"
        )]
        unsubscribe(UnsubscribeRequestParams) = UnsubscribeRequest(UnsubscribeRequest::new);
        #[expect(deprecated, reason = "logging/setLevel is forwarded for clients of older protocol versions")]
        set_level(SetLevelRequestParams) = SetLevelRequest(SetLevelRequest::new);
        update_task(UpdateTaskParams) = UpdateTaskRequest(UpdateTaskRequest::new);
        cancel_task(CancelTaskParams) = CancelTaskRequest(CancelTaskRequest::new);
    }

    async fn discover(&self, context: RequestContext<RoleServer>) -> Result<DiscoverResult, ErrorData> {
        let request = ClientRequest::DiscoverRequest(DiscoverRequest::new(DiscoverRequestParams {}));
        expect!(self.relay(request, context).await, DiscoverResult)
    }

    async fn on_progress(&self, params: ProgressNotificationParam, context: NotificationContext<RoleServer>) {
        self.notify(ClientNotification::ProgressNotification(ProgressNotification::new(params)), context).await;
    }

    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        self.notify(ClientNotification::RootsListChangedNotification(Default::default()), context).await;
    }

    async fn on_custom_notification(&self, notification: CustomNotification, context: NotificationContext<RoleServer>) {
        self.notify(ClientNotification::CustomNotification(notification), context).await;
    }

    /// rmcp asks it (no request at hand) before dispatching some methods (`tasks/get` is "method
    /// not found" unless the tasks extension is shown): a session's answer once it initialized,
    /// else the shared gateway's (a `Front` made for one 2026-07-28 request never initializes).
    fn get_info(&self) -> ServerConfig {
        let gateway = if self.session.started() { &self.session } else { &*self.modern };
        Service::<RoleServer>::get_info(gateway)
    }
}

/// Who may call: loopback without a token, or anyone with the token.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    /// `ALLOWLY_GATEWAY_TOKEN`: required of every request when set.
    pub token: Option<String>,
    /// Client sessions open at once (each has its own servers behind, a child process for a
    /// command): one more `initialize` is answered 503.
    pub max_sessions: usize,
    /// Client connections open at once (a session's event stream holds one, each request in
    /// flight another): one more is answered 503 and closed before anything of it is read.
    /// Also the bound on requests in flight (of sessions and of 2026-07-28 clients), counting
    /// those whose client has gone until they are answered.
    pub max_connections: usize,
}

/// A request's head must have arrived this long after the connection was opened or its
/// previous answer sent: a client that trickles headers (or sends none) cannot hold a
/// connection of the cap for ever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request is answered when `max_connections` of them are in flight.
const TOO_MANY_REQUESTS: &str = "too many MCP requests are in flight at the gateway: try again later";

/// What a connection over the cap is told before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 61\r\n\r\ntoo many connections to the gateway are open: try again later";

/// Sessions being opened (an `initialize` handled but not yet answered), counted with those
/// already open against `max_sessions`, so initializes arriving together cannot all pass.
#[derive(Debug, Default)]
struct Opening(AtomicUsize);

/// One session being opened, counted in [`Opening`] until dropped (answered or abandoned).
struct Reservation<'a>(&'a Opening);

impl Opening {
    /// Reserves a place for one more session if `open + opening < max`.
    fn reserve(&self, open: usize, max: usize) -> Option<Reservation<'_>> {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        if open.saturating_add(before) >= max {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Reservation(self))
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Listen {
    /// Refuses an address beyond loopback without a token (fail closed: an open gateway would
    /// let anyone on the network act under the user's authorization).
    pub fn new(
        addr: SocketAddr,
        token: Option<String>,
        max_sessions: usize,
        max_connections: usize,
    ) -> Result<Self, GatewayError> {
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(GatewayError::Config(format!(
                "--listen {addr} is beyond loopback: set ALLOWLY_GATEWAY_TOKEN (clients then send Authorization: Bearer <token>)"
            )));
        }
        Ok(Self { addr, token, max_sessions, max_connections })
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else { return true };
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }
}

/// Compares without stopping at the first differing byte (the token's prefix is not told by
/// how long a refusal takes).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request that may open a session: a POST without `Mcp-Session-Id` (an `initialize`), unless
/// its headers say it is a request of the sessionless revision (2026-07-28 and later) that is not
/// an `initialize`.
///
/// rmcp routes by the body, which the front does not read, so those headers are taken on trust
/// only where rmcp holds the body to them: from `MCP-Protocol-Version` 2026-07-28 on
/// (`ProtocolVersion::STANDARD_HEADERS`, compared as rmcp compares it) rmcp requires `Mcp-Method`
/// on every request and refuses an `initialize` whose `Mcp-Method` is anything but `initialize`
/// (a second value too) before it creates a session. A client that lies in its headers is
/// refused; it cannot open a session past the cap. Every 2026-07-28 client sends both headers
/// (rmcp refuses its requests without `Mcp-Method`), so none of them is counted against the cap
/// of `initialize` sessions while those are all open.
fn opens_session(method: &http::Method, headers: &http::HeaderMap) -> bool {
    let sessionless = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|version| version >= ProtocolVersion::STANDARD_HEADERS.as_str())
        && headers.get("mcp-method").is_some_and(|method| method != "initialize");
    method == http::Method::POST && !headers.contains_key("mcp-session-id") && !sessionless
}

fn plain(status: StatusCode, text: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}

/// The answer to a `DELETE` of a session: rmcp's 202 Accepted, said as 204 No Content. The
/// session is gone by then (rmcp closes it before answering), and MCP clients read 202 as a
/// failed termination (the Python SDK logs `Session termination failed: 202` for anything but
/// 200 and 204). rmcp's answer is its own (no setting), so it is rewritten here, at the edge.
fn session_ended(mut response: Response<BoxBody<Bytes, Infallible>>) -> Response<BoxBody<Bytes, Infallible>> {
    if response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
        *response.body_mut() = Full::new(Bytes::new()).boxed();
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
        response.headers_mut().remove(http::header::CONTENT_TYPE);
    }
    response
}

/// Serves MCP clients at `http://<addr>/mcp` until the process is stopped.
pub async fn serve(listen: Listen, shared: Arc<Shared>) -> Result<(), GatewayError> {
    let listener = TcpListener::bind(listen.addr)
        .await
        .map_err(|e| GatewayError::Config(format!("cannot listen on {}: {e}", listen.addr)))?;
    let mut config = StreamableHttpServerConfig::default();
    if !listen.addr.ip().is_loopback() {
        // Beyond loopback the bearer token is what keeps others out; the Host allowlist
        // (against DNS rebinding) would only refuse the names clients reach the host by.
        config = config.disable_allowed_hosts();
    }
    // rmcp closes a session idle for 5 minutes (its default keep-alive).
    let sessions = Arc::new(LocalSessionManager::default());
    let modern = Arc::new(Gateway::for_many_clients(shared.clone()));
    let in_flight = Arc::new(Semaphore::new(listen.max_connections.max(1)));
    let mcp = StreamableHttpService::new(
        move || {
            Ok(Front { session: Gateway::new(shared.clone()), modern: modern.clone(), in_flight: in_flight.clone() })
        },
        sessions.clone(),
        config,
    );
    let local = listener.local_addr().map_err(|e| GatewayError::Config(e.to_string()))?;
    // A client (or a test) that asked for port 0 learns the port from this line.
    eprintln!("allowly-mcp-gateway: listening on http://{local}{PATH}");
    let listen = Arc::new(listen);
    let opening = Arc::new(Opening::default());
    let slots = Arc::new(Semaphore::new(listen.max_connections.max(1)));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: this connection is lost, the next may work.
            Err(e) => {
                eprintln!("allowly-mcp-gateway: accept: {e}");
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Told why, without reading its request: a refusal costs a write, not a task.
            let _ = stream.try_write(TOO_MANY_CONNECTIONS);
            let _ = stream.shutdown().await;
            continue;
        };
        let (mcp, listen, sessions, opening) = (mcp.clone(), listen.clone(), sessions.clone(), opening.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (mcp, listen, sessions, opening) = (mcp.clone(), listen.clone(), sessions.clone(), opening.clone());
                async move {
                    let response = if request.uri().path() != PATH {
                        plain(StatusCode::NOT_FOUND, "the MCP endpoint is /mcp")
                    } else if !listen.authorized(&request) {
                        let mut r = plain(StatusCode::UNAUTHORIZED, "a bearer token is required");
                        r.headers_mut()
                            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                        r
                    } else if opens_session(request.method(), request.headers()) {
                        let open = sessions.sessions.read().await.len();
                        match opening.reserve(open, listen.max_sessions) {
                            // Held until the session exists (rmcp registers it before answering).
                            Some(_reserved) => mcp.handle(request).await,
                            None => plain(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "too many MCP sessions are open: try again later",
                            ),
                        }
                    } else if request.method() == http::Method::DELETE {
                        session_ended(mcp.handle(request).await)
                    } else {
                        mcp.handle(request).await
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            // A client that goes away mid-request is no error of the gateway's.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn beyond_loopback_a_token_is_required() {
        let listen = |addr: &str, token: Option<&str>| Listen::new(addr.parse().unwrap(), token.map(Into::into), 1, 4);
        assert!(listen("127.0.0.1:0", None).is_ok());
        assert!(listen("[::1]:0", None).is_ok());
        let open = listen("0.0.0.0:0", None).unwrap_err().to_string();
        assert!(open.contains("ALLOWLY_GATEWAY_TOKEN"), "{open}");
        assert!(listen("0.0.0.0:0", Some("t")).is_ok());
    }

    /// Places are counted with the sessions already open; a place given back (answered or
    /// abandoned) is free again.
    #[test]
    fn session_places_count_those_being_opened() {
        let opening = Opening::default();
        let first = opening.reserve(0, 2).unwrap();
        let second = opening.reserve(0, 2).unwrap();
        assert!(opening.reserve(0, 2).is_none(), "a third while two are being opened");
        drop(first);
        // The first is open now: one open, one opening.
        assert!(opening.reserve(1, 2).is_none());
        drop(second);
        assert!(opening.reserve(1, 2).is_some());
        assert!(opening.reserve(2, 2).is_none());
    }

    #[test]
    fn the_refusal_is_one_whole_http_answer() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
    }

    /// A 2026-07-28 request goes to the gateway clients share; one of an older version (or
    /// naming none: a session's, which rmcp routes by its session id) to the session's own.
    #[test]
    fn only_requests_of_the_sessionless_revision_share_a_gateway() {
        let meta = |version: Option<ProtocolVersion>| {
            let mut meta = RequestMetaObject::default();
            if let Some(version) = version {
                meta.set_protocol_version(version);
            }
            meta
        };
        assert!(sessionless(&meta(Some(ProtocolVersion::V_2026_07_28))));
        assert!(!sessionless(&meta(Some(ProtocolVersion::V_2025_11_25))));
        assert!(!sessionless(&meta(None)));
    }

    /// Only a POST without a session id opens one, and not one whose headers say it is a
    /// request of the sessionless revision (rmcp holds the body to those headers).
    #[test]
    fn sessionless_requests_are_not_counted_as_opening_sessions() {
        let opens = |method: http::Method, headers: &[(&'static str, &'static [u8])]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in headers {
                map.append(*name, http::HeaderValue::from_bytes(value).unwrap());
            }
            opens_session(&method, &map)
        };
        let modern: &[(&str, &[u8])] = &[("mcp-protocol-version", b"2026-07-28"), ("mcp-method", b"tools/call")];
        assert!(!opens(http::Method::POST, modern));
        assert!(!opens(http::Method::POST, &[("mcp-protocol-version", b"2099-01-01"), ("mcp-method", b"ping")]));
        // An initialize, of any version, and whatever else does not say it is sessionless.
        assert!(opens(http::Method::POST, &[]));
        assert!(opens(http::Method::POST, &[("mcp-protocol-version", b"2026-07-28"), ("mcp-method", b"initialize")]));
        assert!(opens(http::Method::POST, &[("mcp-protocol-version", b"2026-07-28")]));
        assert!(opens(http::Method::POST, &[("mcp-protocol-version", b"2025-11-25"), ("mcp-method", b"tools/call")]));
        assert!(opens(http::Method::POST, &[("mcp-method", b"tools/call")]));
        assert!(opens(
            http::Method::POST,
            &[("mcp-protocol-version", b"2026-07-28\xff"), ("mcp-method", b"tools/call")]
        ));
        // A session's own requests, and other methods, open none.
        assert!(!opens(http::Method::POST, &[("mcp-session-id", b"s")]));
        assert!(!opens(http::Method::GET, &[]));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

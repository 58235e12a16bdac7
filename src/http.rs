//! The HTTP front door: MCP over streamable HTTP, for many clients at once
//! on one shared service (one pool, one set of sessions and artifacts, each
//! principal's kept apart).
//!
//! Owns the listener and its router: `/mcp` is rmcp's own
//! `StreamableHttpService` (no protocol of ours: both revisions, sessions,
//! SSE, the 16 MiB body bound, `Host`/`Origin` validation against DNS
//! rebinding, which rmcp does once asked), behind our authentication layer
//! ([`auth`], [`jwt`]), which puts the request's [`Principal`] in its extensions for
//! the front end to find; `/.well-known/oauth-protected-resource` (RFC 9728);
//! the refusal to listen beyond loopback without tokens; the connections
//! (a bound on the time a request head may take); and the drain at
//! shutdown. It does not run calls or judge them: each request goes to
//! [`CodeExecServer`], as stdio's do.

pub mod auth;
pub mod jwt;
pub mod mcp_sessions;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use rmcp::transport::common::server_side_http::SessionId;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::config::{CaBundle, HttpSettings};
use crate::frontend::CodeExecServer;
use crate::frontend::transport::MAX_MESSAGE_BYTES;
use crate::metrics;
use crate::principals::Principal;
use crate::service::Service;
use auth::{Auth, TokensFile, Verdict};
use jwt::JwtVerifier;
use mcp_sessions::{McpSessions, Opened};

/// The path of the MCP endpoint.
pub const MCP_PATH: &str = "/mcp";
/// The protected-resource metadata (RFC 9728), at the root and, as RFC
/// 9728 §3.1 derives it from the resource's path, under `/mcp`.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// How long a shutdown waits for the calls in flight to end before it
/// removes their sandboxes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, after the drain, the last answers have to reach their
/// clients before the sessions and their streams are ended (and as long
/// again for the connections to close).
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// Why the HTTP front door does not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "MCP over HTTP on {addr} is reachable beyond this machine: set \
         MCP_BRIDGE_HTTP_TOKENS_FILE (name:sha256-hex-of-token lines) or \
         MCP_BRIDGE_HTTP_JWT_ISSUER and MCP_BRIDGE_HTTP_JWT_JWKS_URL so that only \
         clients with a token are served, or listen on a loopback address"
    )]
    Unauthenticated { addr: SocketAddr },
    #[error(transparent)]
    Tokens(#[from] auth::TokensError),
    #[error(transparent)]
    Jwt(#[from] jwt::JwtError),
    #[error("cannot listen on {addr} (MCP_BRIDGE_HTTP_ADDR): {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// How long a client may take to send a request's head (the request line
/// and headers), counted from the connection's first byte or the previous
/// response; past it the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The header of rmcp's session ids.
const SESSION_ID: &str = "mcp-session-id";

/// What the authentication layer needs.
#[derive(Debug, Clone)]
struct Gate {
    auth: Auth,
    resource_url: Option<String>,
    sessions: Arc<McpSessions>,
    /// rmcp's sessions, to close those [`McpSessions`] lets go.
    manager: Arc<LocalSessionManager>,
}

/// The HTTP front door, bound and ready to serve.
#[derive(Debug)]
pub struct HttpFrontDoor {
    listener: tokio::net::TcpListener,
    router: Router,
    /// Ends every MCP session and stream of rmcp's service.
    sessions: CancellationToken,
    /// Connections served at once (`MCP_BRIDGE_HTTP_MAX_CONNECTIONS`).
    max_connections: usize,
}

/// The authentication `settings` ask for (a tokens file that reads, an
/// issuer whose settings hold), [`Auth::Local`] when they name neither.
/// The issuer's keys are fetched trusting `trust`, else the host's CAs. A
/// tokens file is watched for changes until `stop`.
pub fn authentication(
    settings: &HttpSettings,
    trust: Option<&CaBundle>,
    stop: CancellationToken,
) -> Result<Auth, StartError> {
    let tokens = settings.tokens_file.as_deref().map(TokensFile::open);
    let jwt = settings
        .jwt
        .as_ref()
        .map(|jwt| JwtVerifier::new(jwt, trust));
    let auth = match (tokens.transpose()?, jwt.transpose()?) {
        (None, None) => Auth::Local,
        (tokens, jwt) => Auth::Bearer { tokens, jwt },
    };
    if let Auth::Bearer {
        tokens: Some(file), ..
    } = &auth
    {
        file.watch(stop);
    }
    Ok(auth)
}

impl HttpFrontDoor {
    /// Checks that `auth` asks for tokens beyond loopback, binds
    /// `settings.addr`, and builds the router.
    pub async fn bind(
        settings: &HttpSettings,
        addr: SocketAddr,
        server: CodeExecServer,
        auth: Auth,
    ) -> Result<Self, StartError> {
        if matches!(auth, Auth::Local) && !addr.ip().is_loopback() {
            return Err(StartError::Unauthenticated { addr });
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| StartError::Bind { addr, error })?;
        let sessions = CancellationToken::new();
        let router = router(settings, auth, server, sessions.clone());
        Ok(Self {
            listener,
            router,
            sessions,
            max_connections: settings.max_connections,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop`; then takes no new connection, lets the calls in
    /// flight end (at most [`DRAIN_TIMEOUT`]), and ends the MCP sessions.
    pub async fn serve(self, service: Arc<Service>, stop: CancellationToken) {
        let Self {
            listener,
            router,
            sessions,
            max_connections,
        } = self;
        let server = tokio::spawn(accept(listener, router, stop.clone(), max_connections));
        stop.cancelled().await;
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while service.calls().total() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = service.calls().total();
        if left > 0 {
            tracing::warn!(
                left,
                "calls still in flight after the drain; their sandboxes go"
            );
        }
        // The answers of the last calls go out on their streams first; then
        // the sessions end, and the streams that kept connections open.
        let mut server = server;
        if tokio::time::timeout(ANSWER_GRACE, &mut server)
            .await
            .is_err()
        {
            sessions.cancel();
            let _ = tokio::time::timeout(ANSWER_GRACE, server).await;
        }
    }
}

/// Serves each connection (HTTP/1.1, a request head within
/// [`HEADER_READ_TIMEOUT`], else the connection is closed: a client that
/// dribbles its headers holds a socket that long, not forever) until `stop`;
/// then asks each to close once its response is sent, and returns when all
/// have. The side port serves its connections the same way.
pub async fn accept(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
    max_connections: usize,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let connections = tokio_util::task::TaskTracker::new();
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        // At the bound, the next connection waits in the listen backlog.
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = open.clone().acquire_owned() => permit.expect("never closed"),
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, most likely: give closing ones a moment.
                    tracing::warn!(%error, "HTTP: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Answers are small writes after a read: without this, Nagle's
        // algorithm and the client's delayed ACK hold each answer ~40 ms.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "HTTP: TCP_NODELAY not set");
        }
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _open = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// `/mcp` behind the authentication layer, and the metadata document.
fn router(
    settings: &HttpSettings,
    auth: Auth,
    server: CodeExecServer,
    sessions: CancellationToken,
) -> Router {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(settings.allowed_hosts.clone())
        .with_allowed_origins(settings.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(MAX_MESSAGE_BYTES)
        .with_cancellation_token(sessions.clone());
    let manager = Arc::new(LocalSessionManager::default());
    let mcp = StreamableHttpService::new(move || Ok(server.clone()), manager.clone(), config);
    let gate = Gate {
        auth,
        resource_url: settings.resource_url.clone(),
        sessions: Arc::new(McpSessions::new(settings.mcp_sessions)),
        manager,
    };
    tokio::spawn(sweep_sessions(
        gate.sessions.clone(),
        gate.manager.clone(),
        sessions,
    ));
    Router::new()
        .route_service(MCP_PATH, mcp)
        .route_layer(axum::middleware::from_fn_with_state(
            gate.clone(),
            authenticate,
        ))
        .route(METADATA_PATH, get(metadata))
        .route(&format!("{METADATA_PATH}{MCP_PATH}"), get(metadata))
        .with_state(gate)
}

/// The authentication layer: a request with a principal's token goes on
/// with that [`Principal`] in its extensions (and without its
/// `Authorization` header), to a session that principal opened if it names
/// one (else 404, as an unknown session); any other gets a 401 that says
/// where the metadata is.
async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let verdict = gate
        .auth
        .check(authorization.as_ref().map(HeaderValue::as_bytes))
        .await;
    match verdict {
        Verdict::Allowed(principal) => {
            request.headers_mut().remove(header::AUTHORIZATION);
            let session = request
                .headers()
                .get(SESSION_ID)
                .map(|id| id.as_bytes().to_vec());
            let in_use = match &session {
                Some(id) => match gate.sessions.enter(id, &principal) {
                    Some(in_use) => Some(in_use),
                    None => {
                        metrics::observe_http_request(principal.metric_label(), 404);
                        return (StatusCode::NOT_FOUND, "Not Found: Session not found\n")
                            .into_response();
                    }
                },
                None => None,
            };
            let ends_session = request.method() == axum::http::Method::DELETE;
            request.extensions_mut().insert(principal.clone());
            let mut response = next.run(request).await;
            match (&session, response.headers().get(SESSION_ID)) {
                (None, Some(opened)) => {
                    // In a task of its own: a client that goes away now
                    // must not leave rmcp's session outside the table.
                    let (opened, gate) = (opened.as_bytes().to_vec(), gate.clone());
                    let principal = principal.clone();
                    let opening =
                        tokio::spawn(async move { open_session(&gate, &opened, &principal).await });
                    if let Ok(Some(refusal)) = opening.await {
                        response = refusal;
                    }
                }
                (Some(id), _) if ends_session && response.status().is_success() => {
                    gate.sessions.forget(id);
                }
                _ => {}
            }
            metrics::observe_http_request(principal.metric_label(), response.status().as_u16());
            match in_use {
                // The session is in use until its answer's stream ends.
                Some(in_use) => response.map(|body| {
                    axum::body::Body::new(body.map_frame(move |frame| {
                        let _held = &in_use;
                        frame
                    }))
                }),
                None => response,
            }
        }
        Verdict::Missing | Verdict::Invalid => {
            let metadata = format!("{}{METADATA_PATH}", origin(&gate, &request));
            let mut challenge = format!("Bearer resource_metadata=\"{metadata}\"");
            if verdict == Verdict::Invalid {
                challenge.push_str(", error=\"invalid_token\"");
            }
            tracing::info!(
                invalid = verdict == Verdict::Invalid,
                "HTTP request refused: no valid bearer token"
            );
            metrics::observe_http_request("unauthenticated", 401);
            let mut response = (
                StatusCode::UNAUTHORIZED,
                "unauthorized: send Authorization: Bearer <token>\n",
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            response
        }
    }
}

/// Keeps the session rmcp just opened for `principal` within the bounds,
/// closing those it pushes out; when it is refused, closes it and returns
/// the answer to send instead (503, naming the variable).
async fn open_session(gate: &Gate, id: &[u8], principal: &Principal) -> Option<Response> {
    let (closed, refusal) = match gate.sessions.open(id, principal) {
        Opened::Kept { closed } => (closed, None),
        Opened::Refused { message } => (vec![id.to_vec()], Some(message)),
    };
    for id in &closed {
        let Ok(id) = std::str::from_utf8(id) else {
            continue; // rmcp's ids are UUIDs: never
        };
        if let Err(error) = gate.manager.close_session(&Arc::from(id)).await {
            tracing::warn!(%error, "an MCP session could not be closed");
        }
    }
    if let Some(message) = &refusal {
        tracing::warn!(principal = %principal, "new MCP session refused: {message}");
    } else if !closed.is_empty() {
        tracing::info!(
            principal = %principal,
            closed = closed.len(),
            "least recently used MCP sessions closed to keep within \
             MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS(_PER_CLIENT)"
        );
    }
    refusal.map(|message| (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")).into_response())
}

/// How often [`sweep_sessions`] looks at rmcp's sessions.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Until `stop`, closes the sessions rmcp holds that the table does not
/// know, two looks in a row ([`SWEEP_EVERY`] apart): those whose opening
/// request went away before its answer reached the table, which would
/// otherwise live outside the bounds until rmcp's own timeouts.
async fn sweep_sessions(
    sessions: Arc<McpSessions>,
    manager: Arc<LocalSessionManager>,
    stop: CancellationToken,
) {
    let mut unknown = HashSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        unknown = sweep_once(&sessions, &manager, &unknown).await;
    }
}

/// One look: closes the sessions unknown to the table that were unknown at
/// the last look too; returns those unknown now.
async fn sweep_once(
    sessions: &McpSessions,
    manager: &LocalSessionManager,
    unknown_before: &HashSet<SessionId>,
) -> HashSet<SessionId> {
    let live: Vec<SessionId> = manager.sessions.read().await.keys().cloned().collect();
    let mut unknown = HashSet::new();
    for id in live {
        if sessions.knows(id.as_bytes()) {
            continue;
        }
        if unknown_before.contains(&id) {
            tracing::info!(
                "an MCP session outside the table closed (its opening request went away)"
            );
            if let Err(error) = manager.close_session(&id).await {
                tracing::warn!(%error, "an MCP session could not be closed");
            }
        } else {
            unknown.insert(id);
        }
    }
    unknown
}

/// The protected-resource metadata document (RFC 9728 §2).
async fn metadata(State(gate): State<Gate>, request: Request) -> Response {
    let resource = gate
        .resource_url
        .clone()
        .unwrap_or_else(|| format!("{}{MCP_PATH}", origin(&gate, &request)));
    let mut document = serde_json::json!({
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "resource_name": env!("CARGO_PKG_NAME"),
    });
    if let Auth::Bearer { jwt: Some(jwt), .. } = &gate.auth {
        document["authorization_servers"] = serde_json::json!([jwt.issuer()]);
    }
    axum::Json(document).into_response()
}

/// `scheme://authority` clients reach the server at: from
/// `MCP_BRIDGE_HTTP_RESOURCE_URL`, else `http://` and the request's `Host`
/// (only when it is a valid authority: nothing else is echoed).
fn origin(gate: &Gate, request: &Request) -> String {
    if let Some(url) = &gate.resource_url
        && let Ok(uri) = url.parse::<axum::http::Uri>()
        && let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority())
    {
        return format!("{scheme}://{authority}");
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| host.parse::<axum::http::uri::Authority>().ok());
    match host {
        Some(host) => format!("http://{host}"),
        None => "http://localhost".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionBounds;

    #[tokio::test]
    async fn a_session_rmcp_holds_outside_the_table_is_closed_at_the_second_look() {
        let manager = LocalSessionManager::default();
        let sessions = McpSessions::new(SessionBounds {
            total: 8,
            per_client: 8,
        });
        let (lost, _lost_transport) = manager.create_session().await.unwrap();
        let (kept, _kept_transport) = manager.create_session().await.unwrap();
        let owner = Principal::new("p").unwrap();
        assert_eq!(
            sessions.open(kept.as_bytes(), &owner),
            Opened::Kept { closed: vec![] }
        );
        let unknown = sweep_once(&sessions, &manager, &HashSet::new()).await;
        assert_eq!(unknown, HashSet::from([lost.clone()]));
        assert!(
            manager.has_session(&lost).await.unwrap(),
            "one look: it may be opening still"
        );
        sweep_once(&sessions, &manager, &unknown).await;
        assert!(!manager.has_session(&lost).await.unwrap(), "closed");
        assert!(
            manager.has_session(&kept).await.unwrap(),
            "the table's stays"
        );
    }
}

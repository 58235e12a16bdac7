//! The HTTP side port: `/metrics` (Prometheus text), `/healthz` (the process
//! is up), `/readyz` (a call would be served at once; a 503 says why in
//! prose, and as a word from a closed set in its `x-not-ready-cause` header),
//! and the console: its page at `/`, its script and style, and its JSON views
//! and live feed under `/api/`.
//!
//! Owns the axum router and its listener, and who may see the console: on a
//! loopback address, the operator, every call (a request whose `Host` is not
//! a loopback name is refused, against DNS rebinding); on any other address,
//! only a request with a bearer token of the HTTP transport's
//! ([`crate::http::auth`]), which sees its principal's calls, and nobody
//! when no tokens are configured. Every console answer carries a strict
//! Content-Security-Policy. It sits above the service and reads it through
//! [`Service::readiness`], the pool's counts and sandboxes, the sessions,
//! the servers' states and the console; it never starts anything. The side
//! port never takes the MCP server down: a port already in use is returned
//! to the caller as a warning.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::console::{self, Feed, PoolView, SandboxView, ServerView, SessionView, Status, Viewer};
use crate::http::auth::{Auth, Verdict};
use crate::metrics;
use crate::service::Service;

/// Live feeds open at once; past this a page gets a 503 (it retries).
const MAX_FEEDS: usize = 64;
/// Live feeds one viewer may hold of them.
const FEEDS_PER_VIEWER: usize = 8;
/// Connections the side port serves at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 256;
/// Sessions the console lists.
const LISTED_SESSIONS: usize = 200;
/// The console's Content-Security-Policy: its own script and style only.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Who may see the console, by the side port's address and the tokens.
#[derive(Debug, Clone)]
enum Access {
    /// Loopback without tokens: the operator, for a request to a loopback name.
    Operator,
    /// Tokens configured: a bearer token's principal, on any address.
    Bearer(Auth),
    /// Beyond loopback without tokens: nobody.
    Closed,
}

#[derive(Clone)]
struct PortState {
    service: Arc<Service>,
    access: Access,
    feeds: Arc<Semaphore>,
    /// Feeds open, by viewer (at most [`FEEDS_PER_VIEWER`] each).
    viewers: Arc<std::sync::Mutex<HashMap<Viewer, usize>>>,
}

/// One viewer's open feed, counted while it lives.
struct FeedSeat {
    viewers: Arc<std::sync::Mutex<HashMap<Viewer, usize>>>,
    viewer: Viewer,
}

impl FeedSeat {
    fn take(
        viewers: &Arc<std::sync::Mutex<HashMap<Viewer, usize>>>,
        viewer: &Viewer,
    ) -> Option<Self> {
        let mut open = viewers.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(viewer.clone()).or_default();
        if *count >= FEEDS_PER_VIEWER {
            return None;
        }
        *count += 1;
        Some(Self {
            viewers: viewers.clone(),
            viewer: viewer.clone(),
        })
    }
}

impl Drop for FeedSeat {
    fn drop(&mut self) {
        let mut open = self.viewers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.viewer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.viewer);
            }
        }
    }
}

/// The side port's router for a port bound at `addr`: `/metrics`,
/// `/healthz`, `/readyz` and the console (see the module's text for who may
/// see it; `auth` is the HTTP transport's).
pub fn router(service: Arc<Service>, addr: SocketAddr, auth: Auth) -> Router {
    // With tokens, a token's principal even on loopback: the port is
    // reachable by every local user and process, and the calls are the
    // principals' own.
    let access = match auth {
        Auth::Local if addr.ip().is_loopback() => Access::Operator,
        Auth::Local => Access::Closed,
        auth @ Auth::Bearer { .. } => Access::Bearer(auth),
    };
    let state = PortState {
        service: service.clone(),
        access,
        feeds: Arc::new(Semaphore::new(MAX_FEEDS)),
        viewers: Arc::default(),
    };
    let console = Router::new()
        .route("/", get(serve_page))
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", console::SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", console::STYLE) }),
        )
        .route("/api/calls", get(serve_calls))
        .route("/api/calls/{id}", get(serve_call))
        .route("/api/calls/{id}/images/{index}", get(serve_image))
        .route("/api/status", get(serve_status))
        .route("/api/events", get(serve_feed))
        .layer(axum::middleware::from_fn(console_headers))
        .with_state(state);
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_readiness))
        .with_state(service)
        .merge(console)
}

async fn serve_metrics(State(service): State<Arc<Service>>) -> impl IntoResponse {
    let sandboxes = service
        .started_pool()
        .map(|pool| pool.status().by_state())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&sandboxes, service.sessions().live()),
    )
}

/// Every console answer: no script but ours, no framing, no sniffing, no caching.
async fn console_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        // Another site's page may not even embed an image of it.
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        text,
    )
        .into_response()
}

/// Who is asking, or the answer that refuses them.
async fn viewer(state: &PortState, headers: &HeaderMap) -> Result<Viewer, Response> {
    if !state.service.console().enabled() {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "the console is off (MCP_BRIDGE_CONSOLE_CALLS=0)",
        ));
    }
    // A page of another site (a fetch, an <img>, an EventSource) is refused
    // before anything is looked up.
    let fetched_by = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok());
    if fetched_by == Some("cross-site") {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "the console answers its own pages only",
        ));
    }
    match &state.access {
        Access::Operator => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            if host.is_some_and(is_loopback_host) {
                Ok(Viewer::Operator)
            } else {
                Err(refusal(
                    StatusCode::FORBIDDEN,
                    "the console answers requests to a loopback name (localhost, 127.0.0.1, [::1])",
                ))
            }
        }
        Access::Closed => Err(refusal(
            StatusCode::FORBIDDEN,
            "the console beyond loopback needs bearer tokens: set MCP_BRIDGE_HTTP_TOKENS_FILE \
             (or MCP_BRIDGE_HTTP_JWT_ISSUER), or bind MCP_BRIDGE_METRICS_ADDR to loopback",
        )),
        Access::Bearer(auth) => {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            match auth.check(authorization).await {
                Verdict::Allowed(principal) => Ok(Viewer::Principal(principal.as_str().to_owned())),
                Verdict::Missing | Verdict::Invalid => {
                    let mut response =
                        refusal(StatusCode::UNAUTHORIZED, "a valid bearer token is needed");
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"mcp-code-exec console\""),
                    );
                    Err(response)
                }
            }
        }
    }
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port (digits).
fn is_loopback_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some(parts) => parts,
            None => return false,
        },
        None => match host.rfind(':') {
            Some(colon) => host.split_at(colon),
            None => (host, ""),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && (name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()))
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn serve_page(State(state): State<PortState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(viewer) => viewer,
        Err(refused) => return refused,
    };
    let status = status(&state.service, &viewer);
    let page = state.service.console().page(&viewer, &status);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn serve_calls(State(state): State<PortState>, headers: HeaderMap) -> Response {
    match viewer(&state, &headers).await {
        Ok(viewer) => json(state.service.console().calls_json(&viewer)),
        Err(refused) => refused,
    }
}

async fn serve_call(
    State(state): State<PortState>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(viewer) => viewer,
        Err(refused) => return refused,
    };
    match state.service.console().call_json(&viewer, id) {
        Some(detail) => json(detail),
        None => refusal(StatusCode::NOT_FOUND, "no such call (or no longer kept)"),
    }
}

async fn serve_image(
    State(state): State<PortState>,
    Path((id, index)): Path<(u64, usize)>,
    headers: HeaderMap,
) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(viewer) => viewer,
        Err(refused) => return refused,
    };
    match state.service.console().image(&viewer, id, index) {
        Some(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        None => refusal(StatusCode::NOT_FOUND, "no such image (or no longer kept)"),
    }
}

async fn serve_status(State(state): State<PortState>, headers: HeaderMap) -> Response {
    match viewer(&state, &headers).await {
        Ok(viewer) => json(
            serde_json::to_string(&status(&state.service, &viewer)).expect("a status serializes"),
        ),
        Err(refused) => refused,
    }
}

async fn serve_feed(State(state): State<PortState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers).await {
        Ok(viewer) => viewer,
        Err(refused) => return refused,
    };
    let Some(seat) = FeedSeat::take(&state.viewers, &viewer) else {
        let message =
            format!("this viewer has {FEEDS_PER_VIEWER} console pages open already: close one");
        return refusal(StatusCode::SERVICE_UNAVAILABLE, &message);
    };
    let Ok(permit) = state.feeds.clone().try_acquire_owned() else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console pages are open at once",
        );
    };
    let events = state.service.console().feed(viewer).map(move |item| {
        let _open = (&permit, &seat);
        Ok::<_, Infallible>(match item {
            Feed::Call(json) => Event::default().event("call").data(&*json),
            Feed::Resync => Event::default().event("resync").data(""),
        })
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The pool, the sessions `viewer` sees (at most [`LISTED_SESSIONS`]) and
/// the servers, as they are now.
fn status(service: &Service, viewer: &Viewer) -> Status {
    let pool = service.started_pool().map(|pool| {
        let counts = pool.status();
        let mut by_state: std::collections::BTreeMap<&'static str, usize> =
            counts.by_state().into_iter().collect();
        by_state.insert("waiting", counts.waiting);
        PoolView {
            counts: by_state,
            max: counts.max,
            sandboxes: pool
                .sandboxes()
                .into_iter()
                .map(|(id, state, age, runs)| SandboxView {
                    id,
                    state,
                    age_secs: age.as_secs_f64(),
                    runs,
                })
                .collect(),
        }
    });
    Status {
        pool,
        sessions: service
            .sessions()
            .list()
            .into_iter()
            .filter(|(name, _)| viewer.sees(name.principal.as_str()))
            .take(LISTED_SESSIONS)
            .map(|(name, idle)| SessionView {
                name: name.name,
                principal: name.principal.as_str().to_owned(),
                idle_secs: idle.map(|idle| idle.as_secs_f64()),
            })
            .collect(),
        servers: service
            .proxy()
            .states()
            .into_iter()
            .map(|(name, state)| ServerView { name, state })
            .collect(),
    }
}

/// The header of a 503 from `/readyz` that names what is missing as a word
/// from a closed set ([`crate::service::NotReady::cause`]), for probes and
/// dashboards; the body says it in prose.
pub const NOT_READY_CAUSE: HeaderName = HeaderName::from_static("x-not-ready-cause");

/// Ready: the engine answers and at least one warm sandbox is idle.
async fn serve_readiness(State(service): State<Arc<Service>>) -> Response {
    match service.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(NOT_READY_CAUSE, reason.cause())],
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// Binds `addr` and serves the side port in the background; `auth` is the
/// HTTP transport's, for a console beyond loopback. A failure to bind is
/// returned (for a warning); the MCP server goes on either way.
pub async fn spawn(
    addr: SocketAddr,
    service: Arc<Service>,
    auth: Auth,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    // The front door's loop: a request head within its timeout, a bound on
    // connections; it serves for the process's life.
    let router = router(service, bound, auth);
    tokio::spawn(crate::http::accept(
        listener,
        router,
        tokio_util::sync::CancellationToken::new(),
        MAX_CONNECTIONS,
    ));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_reach_the_operators_console() {
        for host in [
            "localhost",
            "localhost:9464",
            "127.0.0.1:9464",
            "[::1]:9464",
            "[::1]",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:9464",
            "10.0.0.1:9464",
            "localhost.evil.example",
            "",
            "[::2]:80",
            "[::1]evil",
            "[::1]evil:80",
            "localhost.",
            "[::ffff:10.0.0.1]:80",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}

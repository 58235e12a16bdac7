//! The HTTP side port: `/metrics` (Prometheus text), `/healthz` (the process
//! is up) and `/readyz` (a call would be served at once; a 503 says why in
//! prose, and as a word from a closed set in its `x-not-ready-cause` header).
//!
//! Owns the axum router and its listener. It sits above the service and reads
//! it through [`Service::readiness`], the pool's counts and the number of
//! live sessions only; it never
//! starts anything. The side port never takes the MCP server down: a port
//! already in use is returned to the caller as a warning.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics;
use crate::service::Service;

/// The side port's router: `/metrics`, `/healthz`, `/readyz`.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_readiness))
        .with_state(service)
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

/// Binds `addr` and serves the side port in the background. A failure to
/// bind is returned (for a warning); the MCP server goes on either way.
pub async fn spawn(addr: SocketAddr, service: Arc<Service>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(service)).await {
            tracing::warn!(%error, "metrics side port stopped");
        }
    });
    Ok(bound)
}

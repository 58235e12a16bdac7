//! Prometheus metrics, and the axum side port that serves them with health
//! endpoints.
//!
//! Owns every metric (names prefixed `mcp_code_exec_`, help text on each,
//! labels from closed sets only: statuses, reasons, streams, and the server
//! names of the user's own configuration; nothing the sandbox controls
//! becomes a label) and the HTTP side port. Every series of a closed set, and
//! of every configured server ([`register_servers`]), exists at 0 from the
//! start, so dashboards show 0, not "No data". Other modules report events
//! through the functions here and never touch the registry. Pool occupancy
//! gauges are read from the pool at scrape time, so they cannot drift.
//! Metrics never take the MCP server down: a port already in use is a
//! warning.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::backend::Backend;
use crate::pool::{PoolStatus, RecycleReason};
use crate::report::{RunReport, RunStatus};

struct Metrics {
    registry: Registry,
    runs: IntCounterVec,
    run_duration: HistogramVec,
    wait: Histogram,
    sandboxes: IntGaugeVec,
    created: IntCounter,
    create_failures: IntCounter,
    create_duration: Histogram,
    resets: IntCounter,
    reset_duration: Histogram,
    recycled: IntCounterVec,
    truncations: IntCounterVec,
    proxy_calls: IntCounterVec,
    proxy_call_duration: HistogramVec,
    proxy_restarts: IntCounterVec,
}

/// The `status` of a call whose client went away before its result: not a
/// [`RunStatus`], since no report is ever sent for it.
pub const CANCELLED: &str = "cancelled";
const SANDBOX_STATES: [&str; 5] = ["idle", "busy", "starting", "resetting", "removing"];

/// Run durations: 0.5 ms (a warm `print`) to 120 s (the largest timeout).
const RUN_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];
const STARTUP_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let registry = Registry::new_custom(Some("mcp_code_exec".into()), None).expect("a valid prefix");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("a valid metric");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let metric = HistogramVec::new(opts, labels).expect("a valid metric");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let sandboxes = IntGaugeVec::new(
            Opts::new("sandboxes", "Sandbox containers by state (idle, busy, starting, resetting, removing)"),
            &["state"],
        )
        .expect("a valid metric");
        registry.register(Box::new(sandboxes.clone())).expect("registered once");
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; the version label says which build is running"),
            &["version"],
        )
        .expect("a valid metric");
        registry.register(Box::new(build_info.clone())).expect("registered once");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let metrics = Metrics {
            runs: counter_vec("runs_total", "run_python calls by final status (cancelled: the client went away)", &["status"]),
            run_duration: histogram_vec(
                "run_duration_seconds",
                "Time from the start of a run in a sandbox to its result, by status",
                &["status"],
                RUN_BUCKETS,
            ),
            wait: histogram(
                "sandbox_wait_seconds",
                "Time a call waited for a free warm sandbox",
                FAST_BUCKETS,
            ),
            sandboxes,
            created: counter("sandboxes_created_total", "Sandbox containers started and warm"),
            create_failures: counter("sandbox_create_failures_total", "Sandbox containers that failed to start"),
            create_duration: histogram(
                "sandbox_create_duration_seconds",
                "Time from create request to a warm agent",
                STARTUP_BUCKETS,
            ),
            resets: counter("sandbox_resets_total", "Sandboxes reset and returned to the pool"),
            reset_duration: histogram(
                "sandbox_reset_duration_seconds",
                "Time from a run's end to its sandbox being idle and warm again",
                FAST_BUCKETS,
            ),
            recycled: counter_vec(
                "sandboxes_recycled_total",
                "Sandbox containers destroyed instead of reused, by reason",
                &["reason"],
            ),
            truncations: counter_vec(
                "output_truncations_total",
                "Runs whose output was cut at MCP_BRIDGE_MAX_OUTPUT_BYTES, by stream",
                &["stream"],
            ),
            proxy_calls: counter_vec(
                "proxy_calls_total",
                "MCP tool calls made from sandboxes, by server and outcome (ok, tool_error, failed)",
                &["server", "outcome"],
            ),
            proxy_call_duration: histogram_vec(
                "proxy_call_duration_seconds",
                "Duration of MCP tool calls made from sandboxes, by server",
                &["server"],
                RUN_BUCKETS,
            ),
            proxy_restarts: counter_vec(
                "proxy_client_restarts_total",
                "MCP server processes restarted after they died or failed to start",
                &["server"],
            ),
            registry,
        };
        // Every closed-set label is present from the start, so dashboards see zeros, not gaps.
        for status in RunStatus::ALL.map(RunStatus::as_str).into_iter().chain([CANCELLED]) {
            metrics.runs.with_label_values(&[status]);
            metrics.run_duration.with_label_values(&[status]);
        }
        for state in SANDBOX_STATES {
            metrics.sandboxes.with_label_values(&[state]);
        }
        for reason in RecycleReason::ALL {
            metrics.recycled.with_label_values(&[reason.as_str()]);
        }
        for stream in ["stdout", "stderr"] {
            metrics.truncations.with_label_values(&[stream]);
        }
        metrics
    })
}

/// Creates the per-server series of the configured servers at 0.
pub fn register_servers(names: &[String]) {
    let m = metrics();
    for server in names {
        for outcome in CallOutcome::ALL {
            m.proxy_calls.with_label_values(&[server, outcome.as_str()]);
        }
        m.proxy_call_duration.with_label_values(&[server]);
        m.proxy_restarts.with_label_values(&[server]);
    }
}

/// A `run_python` call whose client went away (its future was dropped)
/// `took` after it began.
pub fn observe_cancelled_run(took: Duration) {
    let m = metrics();
    m.runs.with_label_values(&[CANCELLED]).inc();
    m.run_duration
        .with_label_values(&[CANCELLED])
        .observe(took.as_secs_f64());
}

/// A finished `run_python` call (any status, validation errors included).
pub fn observe_run(report: &RunReport) {
    let m = metrics();
    let status = report.status.as_str();
    m.runs.with_label_values(&[status]).inc();
    if report.status != RunStatus::ValidationError {
        m.run_duration
            .with_label_values(&[status])
            .observe(report.duration_ms / 1e3);
    }
    if report.stdout_truncated {
        m.truncations.with_label_values(&["stdout"]).inc();
    }
    if report.stderr_truncated {
        m.truncations.with_label_values(&["stderr"]).inc();
    }
}

pub fn observe_wait(waited: Duration) {
    metrics().wait.observe(waited.as_secs_f64());
}

pub fn observe_created(took: Duration) {
    let m = metrics();
    m.created.inc();
    m.create_duration.observe(took.as_secs_f64());
}

pub fn observe_create_failure() {
    metrics().create_failures.inc();
}

pub fn observe_reset(took: Duration) {
    let m = metrics();
    m.resets.inc();
    m.reset_duration.observe(took.as_secs_f64());
}

pub fn observe_recycled(reason: RecycleReason) {
    metrics()
        .recycled
        .with_label_values(&[reason.as_str()])
        .inc();
}

/// How a proxied tool call ended.
#[derive(Debug, Clone, Copy)]
pub enum CallOutcome {
    Ok,
    /// The tool answered with `isError`.
    ToolError,
    /// The server could not be reached or the call broke.
    Failed,
}

impl CallOutcome {
    const ALL: [Self; 3] = [Self::Ok, Self::ToolError, Self::Failed];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ToolError => "tool_error",
            Self::Failed => "failed",
        }
    }
}

pub fn observe_proxy_call(server: &str, outcome: CallOutcome, took: Duration) {
    let m = metrics();
    m.proxy_calls
        .with_label_values(&[server, outcome.as_str()])
        .inc();
    m.proxy_call_duration
        .with_label_values(&[server])
        .observe(took.as_secs_f64());
}

pub fn observe_proxy_restart(server: &str) {
    metrics().proxy_restarts.with_label_values(&[server]).inc();
}

/// The text exposition, with the pool gauges read now.
pub fn render(pool: Option<PoolStatus>) -> String {
    let m = metrics();
    let pool = pool.unwrap_or_default();
    let counts = [
        pool.idle,
        pool.busy,
        pool.starting,
        pool.resetting,
        pool.removing,
    ];
    for (state, count) in SANDBOX_STATES.into_iter().zip(counts) {
        m.sandboxes.with_label_values(&[state]).set(count as i64);
    }
    exposition()
}

fn exposition() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&metrics().registry.gather())
        .expect("text encoding of valid metrics cannot fail")
}

/// The side port's router: `/metrics`, `/healthz`, `/readyz`.
pub fn router(backend: Arc<Backend>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_readiness))
        .with_state(backend)
}

async fn serve_metrics(State(backend): State<Arc<Backend>>) -> impl IntoResponse {
    let pool = backend
        .started_executor()
        .map(|executor| executor.pool().status());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(pool),
    )
}

/// Ready: the engine answers and at least one warm sandbox is idle.
async fn serve_readiness(State(backend): State<Arc<Backend>>) -> (StatusCode, String) {
    match backend.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Binds `addr` and serves the side port in the background. A failure to
/// bind is returned (for a warning); the MCP server goes on either way.
pub async fn spawn_side_port(
    addr: SocketAddr,
    backend: Arc<Backend>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(backend)).await {
            tracing::warn!(%error, "metrics side port stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_the_prefix() {
        observe_run(&RunReport::rejected(RunStatus::ValidationError, "x"));
        observe_proxy_call("time", CallOutcome::Ok, Duration::from_millis(2));
        let text = render(Some(PoolStatus {
            idle: 2,
            busy: 1,
            ..PoolStatus::default()
        }));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("mcp_code_exec_"), "{line}");
        }
        let families = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text
            .lines()
            .filter(|l| l.starts_with("# HELP") && l.split(' ').count() > 3)
            .count();
        assert_eq!(families, helps, "every metric has help text");
        assert!(text.contains("mcp_code_exec_sandboxes{state=\"idle\"} 2"));
        assert!(
            text.contains("mcp_code_exec_runs_total{status=\"oom\"} 0"),
            "closed sets start at 0"
        );
        assert!(text.contains("mcp_code_exec_proxy_calls_total{outcome=\"ok\",server=\"time\"}"));
        assert!(text.contains("mcp_code_exec_build_info{version="));
    }

    #[test]
    fn configured_servers_and_cancelled_runs_exist_at_zero_before_any_event() {
        register_servers(&["never-called".into()]);
        // Not `render`: the gauges belong to the test above, running alongside.
        let text = exposition();
        for series in [
            "mcp_code_exec_proxy_client_restarts_total{server=\"never-called\"} 0",
            "mcp_code_exec_proxy_calls_total{outcome=\"failed\",server=\"never-called\"} 0",
            "mcp_code_exec_proxy_call_duration_seconds_count{server=\"never-called\"} 0",
            "mcp_code_exec_run_duration_seconds_count{status=\"timeout\"} 0",
            "mcp_code_exec_sandboxes{state=\"removing\"} 0",
        ] {
            assert!(text.contains(series), "{series}");
        }
        assert!(text.contains("mcp_code_exec_runs_total{status=\"cancelled\"}"));
    }
}

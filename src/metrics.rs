//! Prometheus metrics: the registry and the functions every other module
//! reports its events through.
//!
//! A leaf: it imports no module of this crate, so anything may report into it
//! without a cycle. Owns every metric (names prefixed `mcp_code_exec_`, help
//! text on each). Labels are `&'static str` values from closed sets that their
//! owners list (statuses, recycle reasons, sandbox states, call outcomes), or
//! the server names of the user's own configuration, or the principals of
//! the operator's tokens file (JWT principals folded into one); nothing the sandbox
//! controls becomes a label. [`start_at_zero`] creates every series of those
//! sets at 0, so dashboards show 0, not "No data". Pool occupancy gauges are
//! set at scrape time ([`render`]), so they cannot drift. Serving them over
//! HTTP is [`crate::side_port`]'s job.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

struct Metrics {
    registry: Registry,
    calls: CallMetrics,
    sandboxes: SandboxMetrics,
    sessions: SessionMetrics,
    proxy: ProxyMetrics,
    egress: EgressMetrics,
    http: HttpMetrics,
    audit: IntCounterVec,
}

/// MCP over HTTP: requests by principal and status class.
struct HttpMetrics {
    requests: IntCounterVec,
}

/// The `run_python` calls: outcome, time in a sandbox, wait, truncation.
struct CallMetrics {
    runs: IntCounterVec,
    run_duration: HistogramVec,
    agent_duration: Histogram,
    wait: Histogram,
    truncations: IntCounterVec,
}

/// The pool's sandboxes: occupancy, starts, resets, recycling.
struct SandboxMetrics {
    by_state: IntGaugeVec,
    created: IntCounter,
    create_failures: IntCounter,
    create_duration: Histogram,
    resets: IntCounter,
    reset_duration: Histogram,
    recycled: IntCounterVec,
}

/// Sessions: how many are live, why they ended.
struct SessionMetrics {
    live: IntGauge,
    ended: IntCounterVec,
}

/// The MCP tool calls made from sandboxes, by server.
struct ProxyMetrics {
    calls: IntCounterVec,
    /// By tool too: its series appear as tools are called (their names come
    /// from the servers' lists, or `(other)`: a bounded set).
    tool_calls: IntCounterVec,
    call_duration: HistogramVec,
    restarts: IntCounterVec,
}

/// The sandboxes' network connections, through the host's proxy.
struct EgressMetrics {
    connections: IntCounterVec,
    bytes: IntCounterVec,
}

/// What became of a call's audit record ([`observe_audit`]).
pub const AUDIT_OUTCOMES: [&str; 3] = ["written", "dropped", "failed"];

/// The directions egress bytes are counted in.
const DIRECTIONS: [&str; 2] = ["sent", "received"];

/// The output streams whose truncation is counted.
const STREAMS: [&str; 2] = ["stdout", "stderr"];

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
        let registry =
            Registry::new_custom(Some("mcp_code_exec".into()), None).expect("a valid prefix");
        let registrar = Registrar(&registry);
        registrar
            .gauge_vec(
                "build_info",
                "Always 1; the version label says which build is running",
                &["version"],
            )
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            calls: CallMetrics::new(&registrar),
            sandboxes: SandboxMetrics::new(&registrar),
            sessions: SessionMetrics::new(&registrar),
            proxy: ProxyMetrics::new(&registrar),
            egress: EgressMetrics::new(&registrar),
            audit: {
                let audit = registrar.counter_vec(
                    "audit_records_total",
                    "Calls' audit log lines, by outcome (written; dropped: the writer's queue was \
                     full; failed: the file could not be written, e.g. a full disk)",
                    &["outcome"],
                );
                for outcome in AUDIT_OUTCOMES {
                    audit.with_label_values(&[outcome]);
                }
                audit
            },
            http: HttpMetrics {
                requests: registrar.counter_vec(
                    "http_requests_total",
                    "HTTP requests to the MCP endpoint, by principal (a tokens-file name, local, \
                     jwt for every JWT principal, unauthenticated for a 401) and status class \
                     (2xx, 3xx, 4xx, 5xx)",
                    &["principal", "class"],
                ),
            },
            registry,
        }
    })
}

/// Creates metrics and registers each in the registry, once.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn register<M: Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("registered once");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("a valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("a valid metric"))
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("a valid metric"))
    }
}

impl CallMetrics {
    fn new(registrar: &Registrar<'_>) -> Self {
        let truncations = registrar.counter_vec(
            "output_truncations_total",
            "Runs whose output was cut at MCP_BRIDGE_MAX_OUTPUT_BYTES, by stream",
            &["stream"],
        );
        for stream in STREAMS {
            truncations.with_label_values(&[stream]);
        }
        Self {
            runs: registrar.counter_vec(
                "runs_total",
                "run_python calls by final status (cancelled: the client went away)",
                &["status"],
            ),
            run_duration: registrar.histogram_vec(
                "run_duration_seconds",
                "Time from the start of a run in a sandbox to its result, by status",
                &["status"],
                RUN_BUCKETS,
            ),
            agent_duration: registrar.histogram(
                "run_agent_seconds",
                "Time the sandbox's agent took for a run that ended with its result, from the \
                 request to the result (the rest of run_duration is the host's and the channel's)",
                RUN_BUCKETS,
            ),
            wait: registrar.histogram(
                "sandbox_wait_seconds",
                "Time a call waited for a free warm sandbox",
                FAST_BUCKETS,
            ),
            truncations,
        }
    }
}

impl SandboxMetrics {
    fn new(registrar: &Registrar<'_>) -> Self {
        Self {
            by_state: registrar.gauge_vec(
                "sandboxes",
                "Sandbox containers by state (idle, busy, starting, resetting, removing)",
                &["state"],
            ),
            created: registrar.counter(
                "sandboxes_created_total",
                "Sandbox containers started and warm",
            ),
            create_failures: registrar.counter(
                "sandbox_create_failures_total",
                "Sandbox containers that failed to start",
            ),
            create_duration: registrar.histogram(
                "sandbox_create_duration_seconds",
                "Time from create request to a warm agent",
                STARTUP_BUCKETS,
            ),
            resets: registrar.counter(
                "sandbox_resets_total",
                "Sandboxes reset and returned to the pool",
            ),
            reset_duration: registrar.histogram(
                "sandbox_reset_duration_seconds",
                "Time from a run's end to its sandbox being idle and warm again",
                FAST_BUCKETS,
            ),
            recycled: registrar.counter_vec(
                "sandboxes_recycled_total",
                "Sandbox containers destroyed instead of reused, by reason",
                &["reason"],
            ),
        }
    }
}

impl SessionMetrics {
    fn new(registrar: &Registrar<'_>) -> Self {
        Self {
            live: registrar.register(
                IntGauge::new("sessions", "Live sessions (each holds one sandbox)")
                    .expect("a valid metric"),
            ),
            ended: registrar.counter_vec(
                "sessions_ended_total",
                "Sessions ended, by reason (requested, idle, timeout, oom, cancelled, exited, \
                 sandbox_failed, shutdown)",
                &["reason"],
            ),
        }
    }
}

impl ProxyMetrics {
    fn new(registrar: &Registrar<'_>) -> Self {
        Self {
            calls: registrar.counter_vec(
                "proxy_calls_total",
                "MCP tool calls made from sandboxes, by server and outcome \
                 (ok, tool_error, failed; refused on the host: denied, declined, over_budget)",
                &["server", "outcome"],
            ),
            tool_calls: registrar.counter_vec(
                "proxy_tool_calls_total",
                "MCP tool calls made from sandboxes, by server, tool (one the run's view \
                 lists, else (other)) and outcome",
                &["server", "tool", "outcome"],
            ),
            call_duration: registrar.histogram_vec(
                "proxy_call_duration_seconds",
                "Duration of MCP tool calls made from sandboxes, by server",
                &["server"],
                RUN_BUCKETS,
            ),
            restarts: registrar.counter_vec(
                "proxy_client_restarts_total",
                "MCP server processes restarted after they died or failed to start",
                &["server"],
            ),
        }
    }
}

impl EgressMetrics {
    fn new(registrar: &Registrar<'_>) -> Self {
        let bytes = registrar.counter_vec(
            "egress_bytes_total",
            "Bytes sandboxes sent to and received from the network, by direction",
            &["direction"],
        );
        for direction in DIRECTIONS {
            bytes.with_label_values(&[direction]);
        }
        Self {
            connections: registrar.counter_vec(
                "egress_connections_total",
                "Network connections sandboxes asked for, by outcome (allowed, refused_host, \
                 refused_address, limit, failed)",
                &["outcome"],
            ),
            bytes,
        }
    }
}

/// The closed sets of label values, and the configured servers, whose
/// series must exist before their first event.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub statuses: &'a [&'static str],
    pub recycle_reasons: &'a [&'static str],
    pub sandbox_states: &'a [&'static str],
    pub call_outcomes: &'a [&'static str],
    pub session_end_reasons: &'a [&'static str],
    pub egress_outcomes: &'a [&'static str],
    pub servers: &'a [String],
}

/// Creates every series of `series` at 0 (idempotent).
pub fn start_at_zero(series: Series<'_>) {
    let m = metrics();
    for status in series.statuses {
        m.calls.runs.with_label_values(&[status]);
        m.calls.run_duration.with_label_values(&[status]);
    }
    for reason in series.recycle_reasons {
        m.sandboxes.recycled.with_label_values(&[reason]);
    }
    for state in series.sandbox_states {
        m.sandboxes.by_state.with_label_values(&[state]);
    }
    for reason in series.session_end_reasons {
        m.sessions.ended.with_label_values(&[reason]);
    }
    for outcome in series.egress_outcomes {
        m.egress.connections.with_label_values(&[outcome]);
    }
    for server in series.servers {
        for outcome in series.call_outcomes {
            m.proxy.calls.with_label_values(&[server.as_str(), outcome]);
        }
        m.proxy.call_duration.with_label_values(&[server]);
        m.proxy.restarts.with_label_values(&[server]);
    }
}

/// An HTTP request to the MCP endpoint answered with `status`, for the
/// principal labelled `principal` (a bounded set: see [`HttpMetrics`]).
pub fn observe_http_request(principal: &str, status: u16) {
    let class = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics()
        .http
        .requests
        .with_label_values(&[principal, class])
        .inc();
}

/// A network connection a sandbox asked for, and how it went.
pub fn observe_egress_connection(outcome: &'static str) {
    metrics()
        .egress
        .connections
        .with_label_values(&[outcome])
        .inc();
}

/// Bytes a sandbox's connection moved (`sent` or `received`).
pub fn observe_egress_bytes(direction: &'static str, bytes: u64) {
    metrics()
        .egress
        .bytes
        .with_label_values(&[direction])
        .inc_by(bytes);
}

/// A finished `run_python` call with its `status`; `took` is `None` when
/// nothing ran (a rejected request has no duration worth a histogram).
pub fn observe_run(status: &'static str, took: Option<Duration>) {
    let m = metrics();
    m.calls.runs.with_label_values(&[status]).inc();
    if let Some(took) = took {
        m.calls
            .run_duration
            .with_label_values(&[status])
            .observe(took.as_secs_f64());
    }
}

/// A call's audit record `outcome` (one of [`AUDIT_OUTCOMES`]).
pub fn observe_audit(outcome: &'static str) {
    debug_assert!(AUDIT_OUTCOMES.contains(&outcome));
    metrics().audit.with_label_values(&[outcome]).inc();
}

/// A run whose `stream` (`stdout` or `stderr`) was cut at the output cap.
pub fn observe_truncated(stream: &'static str) {
    debug_assert!(STREAMS.contains(&stream));
    metrics()
        .calls
        .truncations
        .with_label_values(&[stream])
        .inc();
}

/// The agent's own time for a run that sent its result (`agent_us`).
pub fn observe_agent(took: Duration) {
    metrics().calls.agent_duration.observe(took.as_secs_f64());
}

pub fn observe_wait(waited: Duration) {
    metrics().calls.wait.observe(waited.as_secs_f64());
}

pub fn observe_created(took: Duration) {
    let m = metrics();
    m.sandboxes.created.inc();
    m.sandboxes.create_duration.observe(took.as_secs_f64());
}

pub fn observe_create_failure() {
    metrics().sandboxes.create_failures.inc();
}

pub fn observe_reset(took: Duration) {
    let m = metrics();
    m.sandboxes.resets.inc();
    m.sandboxes.reset_duration.observe(took.as_secs_f64());
}

pub fn observe_recycled(reason: &'static str) {
    metrics()
        .sandboxes
        .recycled
        .with_label_values(&[reason])
        .inc();
}

pub fn observe_session_ended(reason: &'static str) {
    metrics().sessions.ended.with_label_values(&[reason]).inc();
}

pub fn observe_proxy_call(server: &str, tool: &str, outcome: &'static str, took: Duration) {
    let m = metrics();
    m.proxy.calls.with_label_values(&[server, outcome]).inc();
    m.proxy
        .tool_calls
        .with_label_values(&[server, tool, outcome])
        .inc();
    m.proxy
        .call_duration
        .with_label_values(&[server])
        .observe(took.as_secs_f64());
}

/// A proxied tool call the host refused before it reached the server (the
/// tool policy, a budget): counted, not timed.
pub fn observe_proxy_refusal(server: &str, tool: &str, outcome: &'static str) {
    let m = metrics();
    m.proxy.calls.with_label_values(&[server, outcome]).inc();
    m.proxy
        .tool_calls
        .with_label_values(&[server, tool, outcome])
        .inc();
}

pub fn observe_proxy_restart(server: &str) {
    metrics().proxy.restarts.with_label_values(&[server]).inc();
}

/// The text exposition, with the sandbox gauges set to `sandboxes`
/// (state, count) as the pool reads them now, and the live sessions.
pub fn render(sandboxes: &[(&'static str, usize)], live_sessions: usize) -> String {
    let m = metrics();
    m.sessions
        .live
        .set(i64::try_from(live_sessions).unwrap_or(i64::MAX));
    for &(state, count) in sandboxes {
        m.sandboxes
            .by_state
            .with_label_values(&[state])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    exposition()
}

fn exposition() -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&metrics().registry.gather())
        .expect("text encoding of valid metrics cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_the_prefix() {
        observe_run("validation_error", None);
        observe_proxy_call("time", "get_current_time", "ok", Duration::from_millis(2));
        let text = render(&[("idle", 2), ("busy", 1)], 3);
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
        assert!(text.contains("mcp_code_exec_sessions 3"));
        assert!(text.contains("mcp_code_exec_proxy_calls_total{outcome=\"ok\",server=\"time\"}"));
        assert!(text.contains("mcp_code_exec_build_info{version="));
        assert!(text.contains("mcp_code_exec_output_truncations_total{stream=\"stderr\"} 0"));
    }

    #[test]
    fn series_exist_at_zero_before_any_event() {
        start_at_zero(Series {
            statuses: &["a_status"],
            recycle_reasons: &["a_reason"],
            sandbox_states: &["a_state"],
            call_outcomes: &["an_outcome"],
            session_end_reasons: &["an_end"],
            egress_outcomes: &["an_egress_outcome"],
            servers: &["never-called".into()],
        });
        // Not `render`: the gauges belong to the test above, running alongside.
        let text = exposition();
        for series in [
            "mcp_code_exec_runs_total{status=\"a_status\"} 0",
            "mcp_code_exec_run_duration_seconds_count{status=\"a_status\"} 0",
            "mcp_code_exec_sandboxes_recycled_total{reason=\"a_reason\"} 0",
            "mcp_code_exec_sandboxes{state=\"a_state\"} 0",
            "mcp_code_exec_sessions_ended_total{reason=\"an_end\"} 0",
            "mcp_code_exec_egress_connections_total{outcome=\"an_egress_outcome\"} 0",
            "mcp_code_exec_egress_bytes_total{direction=\"received\"} 0",
            "mcp_code_exec_proxy_client_restarts_total{server=\"never-called\"} 0",
            "mcp_code_exec_proxy_calls_total{outcome=\"an_outcome\",server=\"never-called\"} 0",
            "mcp_code_exec_proxy_call_duration_seconds_count{server=\"never-called\"} 0",
        ] {
            assert!(text.contains(series), "{series}");
        }
    }
}

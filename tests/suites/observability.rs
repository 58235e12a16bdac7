//! The metrics side port and the Grafana dashboard, against the real thing:
//! the built binary serving runs, scraped by a real Prometheus (Debian's
//! `prometheus`, installed by scripts/test.sh), with every PromQL expression
//! of grafana/dashboards/mcp-code-exec.json run through Prometheus's API.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::server::{Server, free_port, http_get};
use crate::util::{FIXTURE_SCRIPT, python, wait_until};
use serde_json::{Value, json};

/// The value of one sample line of the exposition, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn fixture_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("servers.json");
    let config =
        json!({"mcpServers": {"fixture": {"command": python(), "args": [FIXTURE_SCRIPT]}}});
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &std::path::Path, target_port: u16) -> (Prometheus, u16) {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mcp-code-exec\n    \
             static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Debian's `prometheus` is installed (scripts/test.sh installs it)");
    (Prometheus(child), port)
}

fn query(prometheus: u16, expr: &str) -> Value {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", percent_encode(expr)),
    )
    .expect("Prometheus answers");
    assert_eq!(status, 200, "{expr}: {body}");
    serde_json::from_str(&body).unwrap()
}

engine_test! {
    fn metrics_move_with_runs_and_every_dashboard_query_returns_data() {
        let dir = std::env::temp_dir().join(format!(
            "mcp-code-exec-observability-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let metrics_port = free_port();
        let addr = format!("127.0.0.1:{metrics_port}");
        let servers = fixture_config(&dir);
        let mut server = Server::start(
            &[
                ("MCP_BRIDGE_METRICS_ADDR", addr.as_str()),
                // Small enough for a quick OOM, too small for the data stack.
                ("MCP_BRIDGE_MEMORY", "64m"),
                ("MCP_BRIDGE_PRELOAD", "none"),
                ("MCP_BRIDGE_MAX_OUTPUT_BYTES", "1k"),
                ("MCP_BRIDGE_POOL_MIN_IDLE", "1"),
                ("MCP_SERVERS_CONFIG", servers.to_str().unwrap()),
            ],
            Stdio::null(),
        );
        assert_eq!(http_get(metrics_port, "/healthz").unwrap().0, 200);
        wait_until("readiness", Duration::from_secs(60), || {
            http_get(metrics_port, "/readyz").is_some_and(|(status, _)| status == 200)
        });
        let (prometheus, prometheus_port) = start_prometheus(&dir, metrics_port);
        wait_until(
            "Prometheus to scrape the side port",
            Duration::from_secs(60),
            || {
                http_get(prometheus_port, "/api/v1/query?query=up")
                    .is_some_and(|(_, body)| body.contains("\"1\"]"))
            },
        );

        let metrics = || http_get(metrics_port, "/metrics").unwrap().1;
        let before = metrics();
        // Before any run or call: every configured server's series and every
        // closed-set label already exist, at 0 (dashboards show 0, not "No data").
        for series in [
            "mcp_code_exec_proxy_client_restarts_total{server=\"fixture\"} 0",
            "mcp_code_exec_proxy_calls_total{outcome=\"failed\",server=\"fixture\"} 0",
            "mcp_code_exec_proxy_call_duration_seconds_count{server=\"fixture\"} 0",
            "mcp_code_exec_runs_total{status=\"cancelled\"} 0",
            "mcp_code_exec_sandboxes_recycled_total{reason=\"abandoned\"} 0",
            "mcp_code_exec_sessions_ended_total{reason=\"idle\"} 0",
            "mcp_code_exec_egress_connections_total{outcome=\"refused_host\"} 0",
            "mcp_code_exec_egress_bytes_total{direction=\"received\"} 0",
            "mcp_code_exec_sessions 0",
        ] {
            assert!(
                before.lines().any(|line| line == series),
                "{series}\n{before}"
            );
        }
        // A burst of runs of every kind, some while others are in flight.
        let ok = server.run_python(json!({"code": "print(6*7)"}));
        assert_eq!(ok["status"], "success");
        let during = metrics();
        assert_eq!(
            sample(&during, "mcp_code_exec_runs_total{status=\"success\"}")
                - sample(&before, "mcp_code_exec_runs_total{status=\"success\"}"),
            1.0
        );
        assert_eq!(server.run_python(json!({"code": "1/0"}))["status"], "error");
        assert_eq!(
            server.run_python(json!({"code": "while True: pass", "timeout": 1}))["status"],
            "timeout"
        );
        let oom = server.run_python(
            json!({"code": "x = []\nwhile True: x.append(bytearray(8 << 20))", "timeout": 30}),
        );
        assert_eq!(oom["status"], "oom", "{oom}");
        assert_eq!(
            server.run_python(json!({"code": "print('y' * 5000)"}))["stdoutTruncated"],
            true
        );
        assert_eq!(
            server.run_python(json!({"code": ""}))["status"],
            "validation_error"
        );
        let proxied = json!({
            "code": "print((await mcp_fixture.structured(name='a'))['greeting'])\n\
                 for f in (mcp_fixture.fail(message='x'), mcp_fixture.crash()):\n    try:\n        await f\n    except MCPError:\n        pass\n\
                 print((await mcp_fixture.structured(name='b'))['greeting'])\n\
                 try:\n    await runtime.call_tool_raw('fixture', 'made_up_' + 'x' * 100, {})\nexcept MCPError:\n    pass",
            "servers": ["fixture"],
        });
        let report = server.run_python(proxied);
        assert_eq!(report["stdout"], "hello a\nhello b\n", "{report}");
        // A connection while egress is off: refused, and counted so.
        let refused = server.run_python(json!({
            "code": "import urllib.request
try:
    urllib.request.urlopen('http://example.org/')
except OSError as error:
    print(error.code)",
        }));
        assert_eq!(refused["stdout"], "403\n", "{refused}");
        // A session that lives, then ends on request: the gauge, then the counter.
        server.run_python(json!({"code": "x = 1", "session": "s"}));
        assert_eq!(sample(&metrics(), "mcp_code_exec_sessions"), 1.0);
        let ended = server.run_python(json!({"code": "", "session": "s", "end_session": true}));
        assert_eq!(ended["session"]["ended"], "ended as asked (end_session)");
        // A call the client cancels mid-run: counted (and logged) as cancelled.
        server.send(
            &json!({"jsonrpc": "2.0", "id": "to-cancel", "method": "tools/call",
                    "params": {"name": "run_python", "arguments": {"code": "import time\ntime.sleep(60)"}}})
            .to_string(),
        );
        std::thread::sleep(Duration::from_millis(500));
        server.send(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": "to-cancel", "reason": "test"}})
            .to_string(),
        );
        wait_until(
            "the cancelled run to be counted",
            Duration::from_secs(10),
            || {
                sample(&metrics(), "mcp_code_exec_runs_total{status=\"cancelled\"}")
                    - sample(&before, "mcp_code_exec_runs_total{status=\"cancelled\"}")
                    == 1.0
            },
        );
        // Everything reaches the exposition; the reset runs in the background.
        wait_until("the last reset", Duration::from_secs(10), || {
            sample(&metrics(), "mcp_code_exec_sandboxes{state=\"resetting\"}") == 0.0
                && sample(&metrics(), "mcp_code_exec_sandboxes{state=\"busy\"}") == 0.0
        });
        let after = metrics();
        let delta = |series: &str| sample(&after, series) - sample(&before, series);
        for (series, expected) in [
            // The end-session call ran no code: not a run.
            ("mcp_code_exec_runs_total{status=\"success\"}", 5.0),
            ("mcp_code_exec_runs_total{status=\"error\"}", 1.0),
            ("mcp_code_exec_runs_total{status=\"timeout\"}", 1.0),
            ("mcp_code_exec_runs_total{status=\"oom\"}", 1.0),
            ("mcp_code_exec_runs_total{status=\"validation_error\"}", 1.0),
            ("mcp_code_exec_runs_total{status=\"cancelled\"}", 1.0),
            (
                "mcp_code_exec_sandboxes_recycled_total{reason=\"abandoned\"}",
                1.0,
            ),
            (
                "mcp_code_exec_sandboxes_recycled_total{reason=\"timeout\"}",
                1.0,
            ),
            (
                "mcp_code_exec_sandboxes_recycled_total{reason=\"oom\"}",
                1.0,
            ),
            (
                "mcp_code_exec_output_truncations_total{stream=\"stdout\"}",
                1.0,
            ),
            (
                "mcp_code_exec_proxy_calls_total{outcome=\"ok\",server=\"fixture\"}",
                2.0,
            ),
            (
                "mcp_code_exec_proxy_calls_total{outcome=\"tool_error\",server=\"fixture\"}",
                2.0,
            ),
            (
                "mcp_code_exec_proxy_calls_total{outcome=\"failed\",server=\"fixture\"}",
                1.0,
            ),
            (
                "mcp_code_exec_proxy_tool_calls_total{outcome=\"ok\",server=\"fixture\",tool=\"structured\"}",
                2.0,
            ),
            (
                "mcp_code_exec_proxy_tool_calls_total{outcome=\"tool_error\",server=\"fixture\",tool=\"fail\"}",
                1.0,
            ),
            (
                "mcp_code_exec_proxy_tool_calls_total{outcome=\"failed\",server=\"fixture\",tool=\"crash\"}",
                1.0,
            ),
            // A name no server lists is not a label of its own.
            (
                "mcp_code_exec_proxy_tool_calls_total{outcome=\"tool_error\",server=\"fixture\",tool=\"(other)\"}",
                1.0,
            ),
            (
                "mcp_code_exec_proxy_client_restarts_total{server=\"fixture\"}",
                1.0,
            ),
            (
                "mcp_code_exec_sessions_ended_total{reason=\"requested\"}",
                1.0,
            ),
            (
                "mcp_code_exec_sandboxes_recycled_total{reason=\"session_ended\"}",
                1.0,
            ),
            ("mcp_code_exec_sessions", 0.0),
            ("mcp_code_exec_sandbox_resets_total", 5.0),
            // Every run that sent its result: not the timeout, not the cancelled
            // one (under runc the OOM killer takes the run, not the agent: it
            // reports; CI runs this suite in the Docker lane only).
            ("mcp_code_exec_run_agent_seconds_count", 7.0),
            (
                "mcp_code_exec_egress_connections_total{outcome=\"refused_host\"}",
                1.0,
            ),
        ] {
            assert_eq!(delta(series), expected, "{series}\n{after}");
        }
        // The agent's time is part of the host's time for the same runs.
        let agent = delta("mcp_code_exec_run_agent_seconds_sum");
        let host: f64 = ["success", "error", "oom"]
            .iter()
            .map(|status| {
                delta(&format!(
                    "mcp_code_exec_run_duration_seconds_sum{{status=\"{status}\"}}"
                ))
            })
            .sum();
        assert!(agent > 0.0 && agent < host, "agent {agent} s, host {host} s");
        assert!(
            delta("mcp_code_exec_sandboxes_created_total") >= 2.0,
            "replacements were started"
        );
        // The pool refills off the callers' path: the gauge shows a warm
        // sandbox again once the replacements are up (sampled at scrape time).
        wait_until("an idle sandbox in the gauge", Duration::from_secs(60), || {
            sample(&metrics(), "mcp_code_exec_sandboxes{state=\"idle\"}") >= 1.0
        });

        // Let Prometheus scrape the new values a few times, then run the dashboard.
        std::thread::sleep(Duration::from_secs(4));
        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/grafana/dashboards/mcp-code-exec.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let mut checked = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m");
                let answer = query(prometheus_port, &expr);
                assert_eq!(answer["status"], "success", "{expr}: {answer}");
                let result = answer["data"]["result"].as_array().unwrap();
                assert!(
                    !result.is_empty(),
                    "panel {:?}: {expr} returned no data",
                    panel["title"]
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked} expressions");
        drop(prometheus);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn health_endpoints_say_what_is_missing() {
    // No engine at all: alive, not ready, and the reason says so.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server = Server::start(
        &[
            ("MCP_BRIDGE_METRICS_ADDR", addr.as_str()),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        ],
        Stdio::null(),
    );
    wait_until("the side port", Duration::from_secs(10), || {
        http_get(port, "/healthz").is_some()
    });
    assert_eq!(http_get(port, "/healthz").unwrap(), (200, "ok\n".into()));
    let (status, body) = http_get(port, "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: the sandbox service has not started"),
        "{body}"
    );
    let (status, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("mcp_code_exec_sandboxes{state=\"idle\"} 0"));
}

#[test]
fn a_taken_metrics_port_is_a_warning_mcp_still_works_and_logs_are_json() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let log = std::env::temp_dir().join(format!(
        "mcp-code-exec-taken-port-{}.log",
        std::process::id()
    ));
    let mut server = Server::start(
        &[
            ("MCP_BRIDGE_METRICS_ADDR", addr.as_str()),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
            ("MCP_BRIDGE_LOG_FORMAT", "json"),
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let tools = server.request("tools/list", json!({}));
    assert_eq!(tools["result"]["tools"][0]["name"], "run_python");
    // A run that needs no engine: rejected by validation, logged all the same.
    assert_eq!(
        server.run_python(json!({"code": ""}))["status"],
        "validation_error"
    );
    drop(server);
    let stderr = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"))
        })
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("metrics side port unavailable")),
        "{stderr}"
    );
    let run = lines
        .iter()
        .find(|l| l["fields"]["message"] == "run finished")
        .expect("a log line for the run");
    assert_eq!(run["span"]["name"], "run");
    assert_eq!(run["span"]["status"], "validation_error");
    assert!(
        run["span"]["id"].is_u64() && run["span"]["servers"] == "[]",
        "{run}"
    );
    let _ = std::fs::remove_file(log);
}

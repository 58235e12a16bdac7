//! A proxied MCP tool call from sandboxed Python versus the same call made
//! directly by a host-side client, measured in one run.
//!
//! `cargo bench --bench proxy`. Needs the engine, the sandbox image and a
//! Python with the MCP SDK for the fixture server (scripts/test.sh installs
//! it into target/e2e-venv; or set MCP_CODE_EXEC_TEST_PYTHON). Skips with a
//! message when either is missing.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::percentiles;
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::proxy::Proxy;
use mcp_code_exec::proxy::clients::ClientHub;
use mcp_code_exec::proxy::discovery::{ServerDefinition, identifier};
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

fn fixture() -> Option<ServerDefinition> {
    let python = std::env::var("MCP_CODE_EXEC_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/e2e-venv/bin/python"
            ))
        });
    let has_sdk = std::process::Command::new(&python)
        .args(["-c", "import mcp.server.fastmcp"])
        .status()
        .is_ok_and(|s| s.success());
    has_sdk.then(|| ServerDefinition {
        name: "fixture".into(),
        alias: identifier("fixture"),
        command: python.to_string_lossy().into_owned(),
        args: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/fixture_server.py").into()],
        env: Default::default(),
        cwd: None,
        description: None,
        source: "benches/proxy.rs".into(),
        allow_tools: None,
        deny_tools: Vec::new(),
    })
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let calls = if full { 1000 } else { 5 };
    let Some(fixture) = fixture() else {
        eprintln!("SKIPPED proxy benchmark: no Python with the MCP SDK (run scripts/test.sh)");
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    let service = Service::with_proxy(config, Arc::new(Proxy::new(vec![fixture.clone()])));
    if let Err(error) = tokio.block_on(service.pool()) {
        eprintln!("SKIPPED proxy benchmark: {error}");
        return;
    }

    // Direct: a host-side client of its own, the same tool, sequential calls.
    let hub = ClientHub::new(vec![fixture]);
    let client = hub.get("fixture").unwrap().clone();
    let arguments = serde_json::json!({"name": "bench"}).as_object().cloned();
    let direct: Vec<Duration> = tokio.block_on(async {
        client.call("structured", arguments.clone()).await.unwrap(); // start + warm
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            client.call("structured", arguments.clone()).await.unwrap();
            samples.push(started.elapsed());
        }
        samples
    });

    // Proxied: the same calls from sandboxed Python, timed inside the sandbox.
    let code = format!(
        "import time\nawait mcp_fixture.structured(name='bench')\n\
         for _ in range({calls}):\n    t = time.perf_counter_ns()\n    await mcp_fixture.structured(name='bench')\n    \
         print(time.perf_counter_ns() - t)"
    );
    let request = CallRequest {
        code,
        servers: vec!["fixture".into()],
        timeout_secs: Some(120.0),
        ..CallRequest::default()
    };
    let report = tokio.block_on(call(&service, &request));
    assert_eq!(report.status, RunStatus::Success, "{report:?}");
    let proxied: Vec<Duration> = report
        .stdout
        .lines()
        .map(|ns| Duration::from_nanos(ns.parse().unwrap()))
        .collect();

    println!("\nMCP tool call `structured` of the fixture server, sequential:");
    let direct = percentiles("direct, host-side rmcp client", direct);
    let proxied = percentiles("proxied, from sandboxed Python", proxied);
    println!(
        "proxy overhead at p50: {:.3} ms",
        (proxied.as_secs_f64() - direct.as_secs_f64()) * 1e3
    );
    tokio.block_on(async {
        hub.shutdown().await;
        service.shutdown().await;
    });
}

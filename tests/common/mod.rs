//! Shared harness for tests that need a container engine.
//!
//! They run against the real engine, never a mock. When no engine answers
//! they fail, with the fix in the message; only the explicit opt-out
//! `MCP_CODE_EXEC_SKIP_ENGINE_TESTS=1` turns them into a printed skip.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod forwarder;
pub mod server;

/// Python that prints the start time of the container's PID 1 (the agent):
/// the same value in two runs means they used the same container.
pub const AGENT_START: &str = "print(open('/proc/1/stat').read().rsplit(')', 1)[1].split()[19])";

use std::sync::OnceLock;
use std::time::Duration;

use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::report::{RunReport, RunStatus};
use mcp_code_exec::service::Service;

/// One runtime for the whole test binary, so pools outlive single tests.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// False (after saying so) when engine tests are explicitly opted out.
pub fn engine_tests_enabled() -> bool {
    if std::env::var_os("MCP_CODE_EXEC_SKIP_ENGINE_TESTS").is_some_and(|v| v != "0") {
        eprintln!("SKIPPED: MCP_CODE_EXEC_SKIP_ENGINE_TESTS is set");
        return false;
    }
    true
}

/// The configuration tests use: small pool, short waits, env respected
/// (so MCP_BRIDGE_IMAGE and MCP_BRIDGE_RUNTIME still choose the engine).
pub fn test_config() -> Config {
    let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    config.pool_min_idle = 1;
    config.pool_max = 4;
    config.memory_bytes = 256 << 20;
    config.pool_wait_timeout = Duration::from_secs(90);
    config
}

/// A service shared by the tests of one binary, started and checked once.
pub fn shared_service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| started_service(test_config()))
}

/// A service of its own (e.g. a one-sandbox pool to observe reuse).
pub fn started_service(config: Config) -> Service {
    let service = Service::new(config);
    let warm = runtime().block_on(async {
        match service.pool().await {
            // Warm before the test starts: a short pool wait in a test must
            // not race the first container's start.
            Ok(pool) => Ok(pool.wait_warm(Duration::from_secs(60)).await),
            Err(error) => Err(error),
        }
    });
    match warm {
        Ok(true) => service,
        Ok(false) => panic!("the pool did not warm up within 60 s"),
        Err(error) => panic!(
            "these tests need a container engine and the sandbox image: {error}\n\
             Run scripts/setup-engine.sh (or set MCP_CODE_EXEC_SKIP_ENGINE_TESTS=1 to skip them explicitly)."
        ),
    }
}

pub fn request(code: &str, timeout_secs: Option<f64>) -> CallRequest {
    CallRequest {
        code: code.into(),
        servers: vec![],
        timeout_secs,
    }
}

pub fn run_on(service: &Service, code: &str, timeout_secs: Option<f64>) -> RunReport {
    runtime().block_on(call(service, &request(code, timeout_secs)))
}

pub fn run(code: &str) -> RunReport {
    run_on(shared_service(), code, Some(20.0))
}

/// The recovery check every bad-input test ends with.
pub fn assert_next_call_works(service: &Service) {
    let report = run_on(service, "print(6*7)", Some(20.0));
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
    assert_eq!(report.stdout, "42\n");
}

/// The Python the tests' MCP servers run with (scripts/test.sh's venv).
pub fn test_python() -> std::path::PathBuf {
    std::env::var("MCP_CODE_EXEC_TEST_PYTHON")
        .unwrap_or_else(|_| "python3".into())
        .into()
}

/// The project's fixture MCP server (tests/e2e/fixture_server.py) as `name`.
pub fn fixture_server(name: &str) -> mcp_code_exec::proxy::discovery::ServerDefinition {
    use mcp_code_exec::proxy::discovery::{ServerDefinition, identifier};
    ServerDefinition {
        name: name.into(),
        alias: identifier(name),
        command: test_python().to_string_lossy().into_owned(),
        args: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/fixture_server.py").into()],
        env: Default::default(),
        cwd: None,
        description: Some(format!("{name} (test fixture)")),
        source: std::path::PathBuf::from("tests/common/mod.rs"),
    }
}

/// Python alone, no scientific stack (`scripts/setup-engine.sh --bare`).
pub const BARE_IMAGE: &str = "mcp-code-exec-sandbox:trixie";

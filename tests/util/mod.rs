//! The helpers every suite shares: the one skip rule for engine tests
//! ([`engine_test!`]), the tokio executor ([`block_on`]), services started
//! and warmed against the real engine, the MCP servers the tests call, and
//! polling with a bound ([`wait_until`]).
//!
//! Engine tests run against the real engine, never a mock. When no engine
//! answers they fail, with the fix in the message; only the explicit opt-out
//! `MCP_CODE_EXEC_SKIP_ENGINE_TESTS=1` turns them into a printed skip.

pub mod forwarder;
pub mod issuer;
pub mod server;
pub mod web;

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::Engine;
use mcp_code_exec::proxy::discovery::{ServerDefinition, identifier};
use mcp_code_exec::report::{RunReport, RunStatus};
use mcp_code_exec::service::Service;

/// A `#[test]` that needs the container engine. The skip rule is written
/// here once: the test returns at once (after saying so) when
/// `MCP_CODE_EXEC_SKIP_ENGINE_TESTS` is set, and runs otherwise.
///
/// ```ignore
/// engine_test! {
///     /// What it checks.
///     fn name_of_the_test() { ... }
/// }
/// ```
macro_rules! engine_test {
    ($(#[$attribute:meta])* fn $name:ident() $body:block) => {
        $(#[$attribute])*
        #[test]
        fn $name() {
            if !$crate::util::engine_tests_enabled() {
                return;
            }
            $body
        }
    };
}

/// Python that prints the start time of the container's PID 1 (the agent):
/// the same value in two runs means they used the same container.
pub const AGENT_START: &str = "print(open('/proc/1/stat').read().rsplit(')', 1)[1].split()[19])";

/// Python alone, no scientific stack (`scripts/setup-engine.sh --bare`).
pub const BARE_IMAGE: &str = "mcp-code-exec-sandbox:trixie";

/// The project's fixture MCP server.
pub const FIXTURE_SCRIPT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/fixture_server.py");

/// One multi-threaded tokio executor for the whole test crate, so pools
/// outlive single tests.
fn executor() -> &'static tokio::runtime::Runtime {
    static EXECUTOR: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    EXECUTOR.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Runs `future` to completion on the crate's executor.
pub fn block_on<F: Future>(future: F) -> F::Output {
    executor().block_on(future)
}

/// Spawns `future` on the crate's executor.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    executor().spawn(future)
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
    // As the configuration's check would have it: a sandbox is left to stateless calls.
    config.max_sessions = config.max_sessions.min(config.pool_max - 1);
    // gVisor's sentry charges its own memory to the sandbox (an idle one
    // takes ~176 MiB there, ~88 under runc): 384 MiB, as README advises.
    config.memory_bytes = if config.oci_runtime.as_deref() == Some("runsc") {
        384 << 20
    } else {
        256 << 20
    };
    config.pool_wait_timeout = Duration::from_secs(90);
    // The tests' calls are audited in the scratch folder, not the user's state.
    // Skills too: a suite that tests them names its own folder.
    config.skills.dir = Some(
        std::env::temp_dir().join(format!("mcp-code-exec-test-skills-{}", std::process::id())),
    );
    config.audit.path = Some(std::env::temp_dir().join(format!(
        "mcp-code-exec-test-audit-{}.jsonl",
        std::process::id()
    )));
    config
}

/// A service shared by the tests of one suite, started and warmed on first
/// use. Each suite has its own (`static SERVICE: Shared = Shared::new();`),
/// so the suites' pools stay apart as when each suite was a binary.
pub struct Shared {
    service: OnceLock<Service>,
    make: fn() -> Service,
}

impl Shared {
    /// A service of [`test_config`] without MCP servers.
    pub const fn new() -> Self {
        Self::with(|| Service::new(test_config()))
    }

    /// A service `make` builds (e.g. with MCP servers).
    pub const fn with(make: fn() -> Service) -> Self {
        Self {
            service: OnceLock::new(),
            make,
        }
    }

    pub fn get(&'static self) -> &'static Service {
        self.service.get_or_init(|| warmed((self.make)()))
    }

    /// Runs `code` on this service with a 20 s timeout.
    pub fn run(&'static self, code: &str) -> RunReport {
        run_on(self.get(), code, Some(20.0))
    }
}

/// A service of its own (e.g. a one-sandbox pool to observe reuse), warm.
/// The test configuration with one sandbox: consecutive runs share its
/// container (the runs of isolation and residue tests).
pub fn one_sandbox() -> Config {
    let mut config = test_config();
    config.pool_max = 1;
    config.max_sessions = 0;
    config
}

pub fn started_service(config: Config) -> Service {
    warmed(Service::new(config))
}

/// `service` once its pool is warm: a short pool wait in a test must not
/// race the first container's start.
pub fn warmed(service: Service) -> Service {
    let warm = block_on(async {
        match service.pool().await {
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
        timeout_secs,
        ..CallRequest::default()
    }
}

pub fn run_on(service: &Service, code: &str, timeout_secs: Option<f64>) -> RunReport {
    block_on(call(service, &request(code, timeout_secs)))
}

/// The recovery check every bad-input test ends with.
pub fn assert_next_call_works(service: &Service) {
    let report = run_on(service, "print(6*7)", Some(20.0));
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
    assert_eq!(report.stdout, "42\n");
}

/// Polls `done` every 50 ms; fails the test when `timeout` passes first.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The engine and OCI runtime the tests run against, chosen by the same
/// `MCP_BRIDGE_RUNTIME` / `MCP_BRIDGE_OCI_RUNTIME` / `DOCKER_HOST` the server
/// reads (`scripts/test.sh --engine`), and asked of the engine itself: a
/// test that expects another engine's behaviour then fails, it is not skipped.
#[derive(Debug)]
pub struct UnderTest {
    /// Where the engine answers (`unix:///run/podman/podman.sock`, …).
    pub endpoint: String,
    /// The engine says it is Podman (its version's component name).
    pub podman: bool,
    /// The sandboxes' OCI runtime: `MCP_BRIDGE_OCI_RUNTIME`, else the engine's default.
    pub runtime: String,
}

impl UnderTest {
    /// Sandboxes run under gVisor (runsc): a user-space kernel between them
    /// and the host, which differs from Linux in ways the tests pin down.
    pub fn gvisor(&self) -> bool {
        self.runtime == "runsc"
    }
}

/// The engine under test, asked once.
pub fn under_test() -> &'static UnderTest {
    static UNDER_TEST: OnceLock<UnderTest> = OnceLock::new();
    UNDER_TEST.get_or_init(|| {
        let config = test_config();
        block_on(async {
            let engine = Engine::connect(config.engine)
                .await
                .unwrap_or_else(|error| panic!("the engine under test answers: {error}"));
            let facts = engine.facts().await.expect("the engine describes itself");
            UnderTest {
                endpoint: engine.endpoint().to_owned(),
                podman: facts.description.starts_with("Podman"),
                runtime: config.oci_runtime.unwrap_or(facts.default_runtime),
            }
        })
    })
}

/// The containers `service`'s pool has now, as the engine lists them (ids).
/// For a one-sandbox pool, the same single id before and after a run means
/// the run reused that container; `AGENT_START` says the same from inside,
/// but not under gVisor, where every sandbox's clock starts at 0.
pub fn containers_of(service: &Service) -> Vec<String> {
    let pool = service.started_pool().expect("the service has started");
    let owner = format!(
        "label={}={}",
        mcp_code_exec::engine::spec::OWNER_LABEL,
        pool.engine().owner_label()
    );
    let ids = docker_ps(&["-aq", "--no-trunc", "--filter", &owner]);
    ids.lines().map(str::to_owned).collect()
}

/// `docker ps ARGS`' trimmed stdout. A listing fails whole when it catches
/// a container being removed (Podman: "no such container"; the suites run
/// in parallel, so another test's sandbox is often going away): that
/// listing is repeated for up to 10 s. Any other failure panics, so a
/// listing that failed never reads as "no containers".
pub fn docker_ps(args: &[&str]) -> String {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new("docker")
            .env("DOCKER_HOST", &under_test().endpoint)
            .arg("ps")
            .args(args)
            .output()
            .expect("the docker CLI runs");
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        let error = String::from_utf8_lossy(&output.stderr);
        let passing = error.to_lowercase().contains("no such container");
        assert!(
            passing && Instant::now() < give_up,
            "docker ps {args:?} failed: {error}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The docker CLI's trimmed stdout, against the engine under test (Podman
/// through its Docker-compatible API when that is what the tests run on).
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .env("DOCKER_HOST", &under_test().endpoint)
        .args(args)
        .output()
        .expect("the docker CLI runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The Python the tests' MCP servers and clients run with (scripts/test.sh's
/// venv, which has the MCP SDK and mcp-server-time).
pub fn python() -> PathBuf {
    std::env::var("MCP_CODE_EXEC_TEST_PYTHON")
        .unwrap_or_else(|_| "python3".into())
        .into()
}

/// `mcp-server-everything` (npm), where scripts/test.sh installs it.
pub fn everything() -> PathBuf {
    std::env::var("MCP_CODE_EXEC_TEST_EVERYTHING")
        .unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/e2e-node/node_modules/.bin/mcp-server-everything"
            )
            .into()
        })
        .into()
}

/// Where scripts/test.sh puts Node 24 (`node`) and the npm packages the
/// HTTP tests run on it (`node_modules`: the conformance suite, the
/// TypeScript SDK).
pub fn node24() -> PathBuf {
    std::env::var("MCP_CODE_EXEC_TEST_NODE24")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/e2e-node24").into())
        .into()
}

/// An MCP server definition, as discovery would make it.
pub fn server(name: &str, command: PathBuf, args: &[&str]) -> ServerDefinition {
    assert!(
        command.exists() || command.components().count() == 1,
        "{} is missing: run scripts/test.sh (it installs the MCP servers the tests use)",
        command.display()
    );
    ServerDefinition {
        name: name.into(),
        alias: identifier(name),
        command: command.to_string_lossy().into_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Default::default(),
        cwd: None,
        description: Some(format!("{name} (test)")),
        source: PathBuf::from("tests/util/mod.rs"),
        allow_tools: None,
        deny_tools: Vec::new(),
    }
}

/// The project's fixture MCP server (tests/e2e/fixture_server.py) as `name`.
pub fn fixture_server(name: &str) -> ServerDefinition {
    server(name, python(), &[FIXTURE_SCRIPT])
}

//! The `mcp-code-exec` binary: a thin command line over the library.
//!
//! `serve` (the default) speaks MCP on stdin/stdout, so in that mode nothing
//! but protocol may reach stdout: logs go to stderr. `run` and `doctor` are
//! for people and scripts, and print their results on stdout.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rmcp::ServiceExt;
use tracing_subscriber::EnvFilter;

use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::{Config, LogFormat, ProjectServers, parse_metrics_addr};
use mcp_code_exec::engine::{Engine, SeccompProfile};
use mcp_code_exec::frontend::CodeExecServer;
use mcp_code_exec::proxy::Proxy;
use mcp_code_exec::proxy::discovery::{self, SearchRoots};
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;
use mcp_code_exec::side_port;

#[derive(Parser)]
#[command(
    version,
    about = "Run Python for AI agents in warm, hardened containers (an MCP server)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Metrics and health side port (`host:port` or `off`); overrides MCP_BRIDGE_METRICS_ADDR.
    #[arg(long, global = true)]
    metrics_addr: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over stdin/stdout (the default).
    Serve,
    /// Run code once through the same pool and print the result.
    Run {
        /// File with the code; `-` or nothing reads stdin.
        file: Option<PathBuf>,
        /// Time limit in seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// A configured MCP server the code may call (repeatable).
        #[arg(long = "server")]
        servers: Vec<String>,
    },
    /// Check the engine, the image, a warm-up and one run; say what to fix.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(mut config) => match cli.metrics_addr.as_deref().map(parse_metrics_addr) {
            None => config,
            Some(Ok(addr)) => {
                config.metrics_addr = addr;
                config
            }
            Some(Err(expected)) => {
                eprintln!("mcp-code-exec: --metrics-addr: {expected}");
                return ExitCode::from(2);
            }
        },
        Err(error) => {
            eprintln!("mcp-code-exec: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_filter, config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let exit = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Run {
                file,
                timeout,
                servers,
            } => run_once(config, file, timeout, servers).await,
            Command::Doctor => doctor(config).await,
        }
    });
    // Don't wait for the blocking stdin reader: after a signal, stdin may never close.
    runtime.shutdown_background();
    exit
}

/// Logs to stderr only, with the filter the configuration checked.
fn init_logging(filter: &str, format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

async fn serve(config: Config) -> ExitCode {
    let output_mode = config.output_mode;
    let metrics_addr = config.metrics_addr;
    let proxy = Arc::new(Proxy::discover(&SearchRoots::from_environment(
        config.project_servers,
    )));
    let service = Arc::new(Service::with_proxy(config, proxy));
    // Warm up in the background: the MCP handshake never waits for it.
    let warm = service.clone();
    tokio::spawn(async move {
        if let Err(error) = warm.pool().await {
            tracing::error!(%error, "sandbox service unavailable; will retry on the first call");
        }
    });
    if let Some(addr) = metrics_addr {
        // Metrics never take the MCP server down: a taken port is a warning.
        match side_port::spawn(addr, service.clone()).await {
            Ok(bound) => tracing::info!(%bound, "metrics and health on http://{bound}/metrics"),
            Err(error) => {
                tracing::warn!(
                    %addr,
                    %error,
                    "metrics side port unavailable; serving MCP without it"
                )
            }
        }
    }
    let server = CodeExecServer::new(service.clone(), output_mode);
    let exit = match server
        .serve(mcp_code_exec::frontend::transport::stdio())
        .await
    {
        Ok(service) => {
            tokio::select! {
                result = service.waiting() => {
                    if let Err(error) = result {
                        tracing::error!(%error, "MCP session ended with an error");
                    }
                }
                signal = shutdown_signal() => tracing::info!(signal, "shutting down"),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "MCP initialization failed");
            ExitCode::FAILURE
        }
    };
    service.shutdown().await;
    exit
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler can be installed");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn run_once(
    mut config: Config,
    file: Option<PathBuf>,
    timeout: Option<f64>,
    servers: Vec<String>,
) -> ExitCode {
    let code = match read_code(file) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("mcp-code-exec: {error}");
            return ExitCode::from(2);
        }
    };
    // One run needs one sandbox, not a warm spare.
    config.pool_min_idle = 0;
    let output_mode = config.output_mode;
    let proxy = Arc::new(Proxy::discover(&SearchRoots::from_environment(
        config.project_servers,
    )));
    let service = Service::with_proxy(config, proxy);
    let request = CallRequest {
        code,
        servers,
        timeout_secs: timeout,
        ..CallRequest::default()
    };
    let report = tokio::select! {
        report = call(&service, &request) => report,
        signal = shutdown_signal() => {
            service.shutdown().await;
            eprintln!("mcp-code-exec: interrupted by {signal}");
            return ExitCode::from(130);
        }
    };
    service.shutdown().await;
    let text = report.render(output_mode);
    if text.ends_with('\n') {
        print!("{text}");
    } else {
        println!("{text}");
    }
    if report.status == RunStatus::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn read_code(file: Option<PathBuf>) -> Result<String, String> {
    match file {
        Some(path) if path.as_os_str() != "-" => std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        _ => {
            let mut code = String::new();
            std::io::stdin()
                .read_to_string(&mut code)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            Ok(code)
        }
    }
}

/// Each check prints one line; the first failure says how to fix it.
async fn doctor(mut config: Config) -> ExitCode {
    println!("mcp-code-exec {} doctor", env!("CARGO_PKG_VERSION"));
    print_servers(config.project_servers);
    let engine = match Engine::connect(config.engine).await {
        Ok(engine) => engine,
        Err(error) => return fail("container engine", error),
    };
    let facts = match engine.facts().await {
        Ok(facts) => facts,
        Err(error) => return fail("container engine", error),
    };
    println!(
        "ok    engine: {} at {}",
        facts.description,
        engine.endpoint()
    );
    if let Some(runtime) = &config.oci_runtime {
        if let Err(error) = engine.check_runtime(runtime).await {
            return fail("OCI runtime", error);
        }
    }
    println!(
        "ok    OCI runtime: {} (engine's runtimes: {}); rootless: {}",
        config
            .oci_runtime
            .as_deref()
            .unwrap_or(&facts.default_runtime),
        facts.runtimes.join(", "),
        if facts.rootless { "yes" } else { "no" }
    );
    let seccomp = engine.seccomp();
    let verdict = match seccomp {
        SeccompProfile::PodmanDefault(_) => "warn",
        SeccompProfile::EngineDefault | SeccompProfile::PodmanWithoutKeyring(_) => "ok  ",
    };
    println!("{verdict}  seccomp: {seccomp}");
    let image = match engine.resolve_image(&config.image).await {
        Ok(image) => image,
        Err(error) => return fail("image", error),
    };
    println!("ok    image: {image}");
    config.pool_min_idle = 1;
    let service = Service::new(config);
    let started = Instant::now();
    let warm = match service.pool().await {
        Ok(pool) => pool.wait_warm(Duration::from_secs(60)).await,
        Err(error) => return fail("sandbox service", error),
    };
    if !warm {
        let last_error = service
            .started_pool()
            .and_then(|pool| pool.last_start_error());
        service.shutdown().await;
        return fail(
            "warm-up",
            format!(
                "no sandbox became ready in 60 s{}",
                last_error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        );
    }
    println!(
        "ok    warm-up: first sandbox ready in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let request = CallRequest {
        code: "import sys; print(6*7, sys.version.split()[0])".into(),
        ..CallRequest::default()
    };
    let report = call(&service, &request).await;
    service.shutdown().await;
    if report.status != RunStatus::Success || !report.stdout.starts_with("42 ") {
        return fail("run", format!("{report:?}"));
    }
    println!(
        "ok    run: print(6*7) in {:.2} ms on Python {}",
        report.duration_ms,
        report.stdout.trim().trim_start_matches("42 ")
    );
    println!("all checks passed");
    ExitCode::SUCCESS
}

/// A line per MCP server and the file it comes from (its command runs on
/// the host), then a line per file or server that was skipped, and why.
fn print_servers(project: ProjectServers) {
    let (servers, warnings) = discovery::discover(&SearchRoots::from_environment(project));
    if servers.is_empty() {
        println!(
            "ok    MCP servers: none configured (README, \"MCP servers\", says where they are read from)"
        );
    }
    for server in &servers {
        println!(
            "ok    MCP server {:?} (mcp_{}): {}",
            server.name,
            server.alias,
            server.source.display()
        );
    }
    for warning in &warnings {
        println!(
            "warn  MCP servers: {}: {}",
            warning.file.display(),
            warning.reason
        );
    }
}

fn fail(step: &str, error: impl std::fmt::Display) -> ExitCode {
    println!("FAIL  {step}: {error}");
    ExitCode::FAILURE
}

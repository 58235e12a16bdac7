//! The `mcp-code-exec` binary: a thin command line over the library.
//!
//! `serve` (the default) speaks MCP on stdin/stdout, so in that mode nothing
//! but protocol may reach stdout: logs go to stderr, through a queue of
//! their own ([`LogQueue`]) so that a client that stops reading stderr stalls
//! nothing. `run` and `doctor` are for people and scripts, and print their
//! results on stdout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rmcp::ServiceExt;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::{
    Config, LogFormat, ProjectServers, parse_http_addr, parse_metrics_addr,
};
use mcp_code_exec::engine::{Engine, SeccompProfile};
use mcp_code_exec::frontend::CodeExecServer;
use mcp_code_exec::frontend::transport::{MAX_MESSAGE_BYTES, StdioTransport};
use mcp_code_exec::http::HttpFrontDoor;
use mcp_code_exec::http::auth::Auth;
use mcp_code_exec::policy::ToolPolicy;
use mcp_code_exec::pool::SHUTDOWN_TIMEOUT;
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
    /// Serve MCP over stdin/stdout (the default), or over streamable HTTP.
    Serve {
        /// Serve MCP over streamable HTTP at `host:port` (path /mcp) instead of
        /// stdio; overrides MCP_BRIDGE_HTTP_ADDR.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
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
    let mut config = config;
    if let Some(Command::Serve { http: Some(addr) }) = &cli.command {
        match parse_http_addr(addr) {
            Ok(addr) => config.http.addr = Some(addr),
            Err(expected) => {
                eprintln!("mcp-code-exec: --http: {expected}");
                return ExitCode::from(2);
            }
        }
    }
    // A rules file that cannot be used stops the launch, naming its line.
    let policy = match config.tool_policy_file.as_deref().map(ToolPolicy::load) {
        None => ToolPolicy::default(),
        Some(Ok(policy)) => policy,
        Some(Err(error)) => {
            eprintln!("mcp-code-exec: invalid tool policy: {error}");
            return ExitCode::from(2);
        }
    };
    let logs = init_logging(&config.log_filter, config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let exit = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve { http: None }) {
            Command::Serve { .. } => serve(config, policy).await,
            Command::Run {
                file,
                timeout,
                servers,
            } => run_once(config, policy, file, timeout, servers).await,
            Command::Doctor => doctor(config, &policy).await,
        }
    });
    // Don't wait for the blocking stdin reader: after a signal, stdin may never close.
    runtime.shutdown_background();
    logs.flush(LOG_FLUSH_TIMEOUT);
    exit
}

/// Log lines waiting for stderr, at most: past this, lines are dropped.
const LOG_QUEUE_BYTES: usize = 4 << 20;
/// How long the exit waits for the queued log lines to reach stderr.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Logs to stderr only, with the filter the configuration checked, through
/// a [`LogQueue`].
fn init_logging(filter: &str, format: LogFormat) -> Arc<LogQueue> {
    let queue = LogQueue::start(std::io::stderr(), LOG_QUEUE_BYTES);
    let writer = {
        let queue = queue.clone();
        move || LogLine(queue.clone())
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    queue
}

/// Log lines on their way to a sink (stderr), written by a thread of their
/// own: logging never waits for the sink, so a client that stops reading
/// our stderr (its pipe fills at 64 KiB) stalls no tokio worker. Bounded by
/// bytes: a line that would take the queue past its bound is dropped and
/// counted, and the writer says how many were dropped before the next line
/// it writes. (tracing-appender's writer does the same, but its guard
/// prints to stdout, the MCP channel, when its queue stays full at exit.)
struct LogQueue {
    sender: mpsc::Sender<Vec<u8>>,
    bound: usize,
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// Lines queued (ticks included) and not yet written.
    pending: AtomicUsize,
    /// Lines dropped since the writer last said so.
    dropped: AtomicU64,
}

impl LogQueue {
    fn start(mut sink: impl Write + Send + 'static, bound: usize) -> Arc<Self> {
        let (sender, lines) = mpsc::channel::<Vec<u8>>();
        let queue = Arc::new(Self {
            sender,
            bound,
            queued: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        let writer = queue.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                for line in lines {
                    let dropped = writer.dropped.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let _ = writeln!(
                            sink,
                            "mcp-code-exec: {dropped} log lines dropped: stderr was not read \
                             fast enough (at most {} KiB wait for it)",
                            writer.bound >> 10
                        );
                    }
                    let _ = sink.write_all(&line);
                    writer.queued.fetch_sub(line.len(), Ordering::Relaxed);
                    writer.pending.fetch_sub(1, Ordering::Release);
                }
            })
            .expect("the log writer thread starts");
        queue
    }

    /// Queues `line` if it fits within the bound; never waits.
    fn push(&self, line: &[u8]) {
        let fits = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                Some(queued + line.len()).filter(|&total| total <= self.bound)
            })
            .is_ok();
        if !fits {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.sender.send(line.to_vec()).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits, at most `timeout`, until every queued line (and the count of
    /// dropped ones) is written. False if the sink did not take them.
    fn flush(&self, timeout: Duration) -> bool {
        // An empty line: the writer then says what it dropped.
        self.push(b"");
        let deadline = Instant::now() + timeout;
        while self.pending.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// One log event's bytes, handed to the queue whole.
struct LogLine(Arc<LogQueue>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn serve(config: Config, policy: ToolPolicy) -> ExitCode {
    let output_mode = config.output_mode;
    let metrics_addr = config.metrics_addr;
    let http = config.http.clone();
    let trust = config.egress.ca_bundle.clone();
    if policy.asks() {
        tracing::info!(
            "MCP_BRIDGE_TOOL_POLICY has ask rules: each call they match waits for a human's \
             approval, asked through the MCP client (elicitation); a client that did not declare \
             elicitation gets those calls refused"
        );
    }
    let proxy = Arc::new(
        Proxy::discover(&SearchRoots::from_environment(config.project_servers)).with_policy(policy),
    );
    let service = Arc::new(Service::with_proxy(config, proxy));
    let server = CodeExecServer::new(service.clone(), output_mode);
    // The tokens: of the HTTP transport, and of a console beyond loopback.
    let console_beyond_loopback = metrics_addr.is_some_and(|addr| !addr.ip().is_loopback());
    let tokens = http.tokens_file.is_some() || http.jwt.is_some();
    let auth = if http.addr.is_some() || tokens || console_beyond_loopback {
        match mcp_code_exec::http::authentication(&http, trust.as_ref(), CancellationToken::new()) {
            Ok(auth) => auth,
            Err(error) => {
                tracing::error!(%error, "not started: the tokens cannot be read");
                eprintln!("mcp-code-exec: {error}");
                return ExitCode::from(2);
            }
        }
    } else {
        Auth::Local
    };
    // Over HTTP, the listener is checked and bound before anything starts.
    let door = match http.addr {
        None => None,
        Some(addr) => match HttpFrontDoor::bind(&http, addr, server.clone(), auth.clone()).await {
            Ok(door) => Some(door),
            Err(error) => {
                tracing::error!(%error, "MCP over HTTP not started");
                eprintln!("mcp-code-exec: {error}");
                return ExitCode::from(2);
            }
        },
    };
    // Warm up in the background: the MCP handshake never waits for it.
    let warm = service.clone();
    tokio::spawn(async move {
        if let Err(error) = warm.pool().await {
            tracing::error!(%error, "sandbox service unavailable; will retry on the first call");
        }
    });
    if let Some(addr) = metrics_addr {
        // Metrics never take the MCP server down: a taken port is a warning.
        match side_port::spawn(addr, service.clone(), auth).await {
            Ok(bound) => tracing::info!(
                %bound,
                "metrics and health on http://{bound}/metrics, the console on http://{bound}/"
            ),
            Err(error) => {
                tracing::warn!(
                    %addr,
                    %error,
                    "metrics side port unavailable; serving MCP without it"
                )
            }
        }
    }
    if let Some(door) = door {
        return serve_http(door, service).await;
    }
    let stdin_closed = CancellationToken::new();
    let stdin = WatchedStdin {
        stdin: tokio::io::stdin(),
        closed: stdin_closed.clone(),
    };
    let transport = StdioTransport::new(stdin, tokio::io::stdout(), MAX_MESSAGE_BYTES);
    let running = match server.serve(transport).await {
        Ok(running) => running,
        Err(error) => {
            tracing::error!(%error, "MCP initialization failed");
            service.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    let cancel = running.cancellation_token();
    let waiting = running.waiting();
    tokio::pin!(waiting);
    let stopping = tokio::select! {
        result = &mut waiting => {
            if let Err(error) = result {
                tracing::error!(%error, "MCP session ended with an error");
            }
            None
        }
        () = stdin_closed.cancelled() => Some("stdin closed"),
        signal = shutdown_signal() => {
            // rmcp answers what it can for 2 s, then cancels the rest.
            cancel.cancel();
            Some(signal)
        }
    };
    let Some(why) = stopping else {
        service.shutdown().await;
        return ExitCode::SUCCESS;
    };
    tracing::info!(why, "shutting down");
    // The containers go at once, while rmcp sends the answers of the calls
    // in flight, which end as their sandboxes go (it waits for them up to
    // 5 s after stdin closed, 2 s after a signal).
    let answers = async {
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut waiting).await;
    };
    tokio::join!(service.shutdown(), answers);
    ExitCode::SUCCESS
}

/// MCP over streamable HTTP until SIGTERM or SIGINT; then the calls in
/// flight end (within the front door's drain bound) before the containers go.
async fn serve_http(door: HttpFrontDoor, service: Arc<Service>) -> ExitCode {
    match door.local_addr() {
        Ok(bound) => tracing::info!(%bound, "serving MCP on http://{bound}/mcp"),
        Err(error) => tracing::warn!(%error, "serving MCP over HTTP at an unknown address"),
    }
    let stop = CancellationToken::new();
    let serving = tokio::spawn(door.serve(service.clone(), stop.clone()));
    let why = shutdown_signal().await;
    tracing::info!(why, "shutting down: draining the calls in flight");
    stop.cancel();
    let _ = serving.await;
    service.shutdown().await;
    ExitCode::SUCCESS
}

/// stdin, cancelling `closed` when it ends (EOF or an error), so that
/// shutdown starts then, not only after rmcp has waited for the calls in
/// flight.
struct WatchedStdin {
    stdin: tokio::io::Stdin,
    closed: CancellationToken,
}

impl AsyncRead for WatchedStdin {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let room = buf.remaining();
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stdin).poll_read(cx, buf);
        let ended = match &polled {
            Poll::Ready(Ok(())) => room > 0 && buf.filled().len() == before,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if ended {
            self.closed.cancel();
        }
        polled
    }
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
    policy: ToolPolicy,
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
    let proxy = Arc::new(
        Proxy::discover(&SearchRoots::from_environment(config.project_servers)).with_policy(policy),
    );
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

/// What runs may reach on the network, as `doctor` says it.
fn print_egress(egress: &mcp_code_exec::config::EgressSettings) {
    if egress.policy.is_off() {
        println!(
            "ok    egress: off (MCP_BRIDGE_ALLOW_HOSTS is empty): every connection is refused"
        );
        return;
    }
    let nets = egress.policy.nets();
    let limits = &egress.limits;
    println!(
        "ok    egress: to {} (networks allowed despite the refused ranges: {}); per run at most {} \
         connections at once, {} in all, {} bytes each way",
        egress.policy.hosts(),
        if nets.is_empty() {
            "none".to_owned()
        } else {
            nets
        },
        limits.connections,
        limits.connections_total,
        limits.bytes
    );
    match &egress.ca_bundle {
        Some(bundle) => println!(
            "ok    egress trust: {} (MCP_BRIDGE_CA_BUNDLE, {} certificates)",
            bundle.path.display(),
            bundle.pem.matches("-----BEGIN CERTIFICATE-----").count()
        ),
        None => println!("ok    egress trust: the image's own certificates"),
    }
}

/// Each check prints one line; the first failure says how to fix it.
async fn doctor(mut config: Config, policy: &ToolPolicy) -> ExitCode {
    println!("mcp-code-exec {} doctor", env!("CARGO_PKG_VERSION"));
    print_servers(config.project_servers);
    match &config.tool_policy_file {
        None => {
            println!("ok    tool policy: none (MCP_BRIDGE_TOOL_POLICY unset): every tool allowed")
        }
        Some(file) => println!(
            "ok    tool policy: {}: {}",
            file.display(),
            policy.describe()
        ),
    }
    if policy.asks() {
        println!(
            "info  tool policy: ask rules wait for a human's approval through the MCP client \
             (elicitation, at most {} each, MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT); a client that did \
             not declare elicitation gets their calls refused",
            humantime::format_duration(config.tool_approval_timeout)
        );
    }
    print_egress(&config.egress);
    match &config.audit.path {
        None => println!("ok    audit log: off (MCP_BRIDGE_AUDIT_LOG=off)"),
        Some(path) => println!(
            "ok    audit log: {} (with its rotated files at most {} MiB, MCP_BRIDGE_AUDIT_LOG_BYTES; \
             it holds the code and the tool arguments runs sent)",
            path.display(),
            config.audit.bytes >> 20
        ),
    }
    match (config.metrics_addr, config.console_calls) {
        (None, _) => println!("ok    console: off (MCP_BRIDGE_METRICS_ADDR=off)"),
        (Some(_), 0) => println!("ok    console: off (MCP_BRIDGE_CONSOLE_CALLS=0)"),
        (Some(addr), calls) => println!(
            "ok    console: http://{addr}/ (the last {calls} calls, MCP_BRIDGE_CONSOLE_CALLS){}",
            match (
                config.http.tokens_file.is_some() || config.http.jwt.is_some(),
                addr.ip().is_loopback(),
            ) {
                (true, _) => "; a bearer token of the HTTP transport's on every address",
                (false, true) => "; every call, for the operator on this machine",
                (false, false) => "; refused to everyone: beyond loopback it needs tokens",
            }
        ),
    }
    println!(
        "ok    packages: {}",
        mcp_code_exec::packages::describe(&config.packages)
    );
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
    let mut gvisor = false;
    if let Some(runtime) = &config.oci_runtime {
        match engine.check_runtime(runtime).await {
            Ok(is_gvisor) => gvisor = is_gvisor,
            Err(error) => return fail("OCI runtime", error),
        }
    }
    println!(
        "ok    OCI runtime: {}{} (engine's runtimes: {}); rootless: {}",
        config
            .oci_runtime
            .as_deref()
            .unwrap_or(&facts.default_runtime),
        if gvisor { " (gVisor)" } else { "" },
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
    match service.started_pool().and_then(|pool| pool.single_use()) {
        Some(reason) => println!(
            "warn  reuse: a sandbox serves one run and is then replaced (slower under load): {reason}"
        ),
        None => println!("ok    reuse: a sandbox is reset after each run and serves the next"),
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;

    /// A sink that takes nothing until it is opened (a pipe nobody reads),
    /// then keeps what it is given.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        taken: Arc<Mutex<Vec<u8>>>,
    }

    impl Gate {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.open;
            let _open = opened
                .wait_while(open.lock().unwrap(), |open| !*open)
                .unwrap();
            self.taken.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logging_never_waits_for_a_sink_that_takes_nothing() {
        let gate = Gate::default();
        let queue = LogQueue::start(gate.clone(), 64 << 10);
        // Ten lines of 16 KiB into a 64 KiB queue whose sink is stuck: four
        // are kept (a line counts until it is written, and the sink writes
        // nothing), six dropped, and no push waits. The six may be told in
        // two notes: a writer thread scheduled late takes the first line
        // after some drops, says those, and blocks on the sink (seen in CI).
        let line = |i: usize| format!("{i}{}\n", "-".repeat((16 << 10) - 2));
        for i in 0..10 {
            queue.push(line(i).as_bytes());
        }
        assert!(
            !queue.flush(Duration::from_millis(50)),
            "the sink took nothing"
        );
        gate.open();
        assert!(queue.flush(Duration::from_secs(10)));
        let taken = String::from_utf8(gate.taken.lock().unwrap().clone()).unwrap();
        let (notes, kept): (Vec<&str>, Vec<&str>) = taken
            .split_inclusive('\n')
            .partition(|written| written.starts_with("mcp-code-exec: "));
        let dropped: u64 = notes
            .iter()
            .map(|note| {
                let count = note
                    .strip_prefix("mcp-code-exec: ")
                    .and_then(|rest| {
                        rest.strip_suffix(
                            " log lines dropped: stderr was not read fast enough \
                         (at most 64 KiB wait for it)\n",
                        )
                    })
                    .unwrap_or_else(|| panic!("not a drop note: {note}"));
                count.parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(dropped, 6, "{notes:?}");
        assert!(notes.len() <= 2, "{notes:?}");
        assert_eq!(kept.concat(), (0..4).map(line).collect::<String>());
        queue.push(b"after\n");
        assert!(queue.flush(Duration::from_secs(10)));
        assert!(
            gate.taken.lock().unwrap().ends_with(b"-\nafter\n"),
            "nothing dropped once the sink takes lines"
        );
    }
}

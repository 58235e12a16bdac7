//! Configuration: the `MCP_BRIDGE_*` environment variables, parsed and
//! validated without side effects.
//!
//! Owns names, defaults and units; builds nothing expensive (the engine,
//! pool and server are built from a finished [`Config`] by their own
//! modules). Every error names the variable, the value and what it accepts.
//! Values are taken as written (module names, tracing directives, runtime
//! names are case-sensitive); only words from a fixed set (`docker`, `json`,
//! `off`, …) and units are read in any case.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::allowlist::Policy;

/// Which container engine to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// `DOCKER_HOST`, then the Docker socket, then the Podman sockets.
    Auto,
    Docker,
    Podman,
}

/// Which MCP server files of the working directory are read. That folder is
/// the project the client opened, which may be a hostile repository, and a
/// server's command runs on the host, outside any sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectServers {
    /// None.
    Off,
    /// The servers of `./.mcp.json` that the user approved for this folder in
    /// Claude Code (recorded in `~/.claude.json`, which no repository writes).
    Approved,
    /// Every project file (`./.mcp.json`, `./mcp-servers/*.json`, …).
    All,
}

/// How the text content of a `run_python` result is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// stdout, then a `stderr:` block, then `status:`/`exit:` lines when not a success.
    Compact,
    /// The structured payload as a TOON block.
    Toon,
    /// The structured payload as JSON.
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub engine: EngineKind,
    /// The OCI runtime sandboxes run under (`runsc` for gVisor); `None`:
    /// the engine's default.
    pub oci_runtime: Option<String>,
    /// Whether `oci_runtime` is gVisor's, as the engine said when it was
    /// checked (its program is `runsc`); `None` before: its name tells.
    pub gvisor_runtime: Option<bool>,
    pub image: String,
    /// Modules imported once before any run (`MCP_BRIDGE_PRELOAD`).
    pub preload: Vec<String>,
    /// A light zygote beside the preloaded one, for runs that need none of
    /// the preload (`MCP_BRIDGE_LIGHT_SPARE`), under every runtime unless
    /// turned off. Under gVisor it costs memory: the sentry charges the
    /// second fork source and its spare against `MCP_BRIDGE_MEMORY`
    /// (measured idle: 218 MiB a sandbox with it, 176 without; runc: 91 and
    /// 88), and it pays back most there, where forking the preloaded zygote
    /// is slow (43 ms for a fork and exit, 4 ms under runc): warm runs and
    /// resets of runs that need no preload fork the light one instead.
    pub light_spare: bool,
    /// Whether the zygotes move their memory into huge pages before the
    /// first fork (`MCP_BRIDGE_HUGE_PAGES`).
    pub huge_pages: bool,
    pub container_user: String,
    pub memory_bytes: u64,
    pub pids_limit: i64,
    pub cpus: Option<f64>,
    pub pool_min_idle: usize,
    pub pool_max: usize,
    pub pool_max_uses: u32,
    pub pool_max_age: Duration,
    /// How long a call waits for a free sandbox before it fails.
    pub pool_wait_timeout: Duration,
    /// Sessions live at once (0: no sessions); each holds a sandbox of the pool.
    pub max_sessions: usize,
    /// A session without calls for this long ends.
    pub session_idle_ttl: Duration,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_code_bytes: usize,
    /// Per stream (stdout and stderr each).
    pub max_output_bytes: u64,
    pub output_mode: OutputMode,
    /// Images a run returns: the longest side, in pixels.
    pub max_image_pixels: u32,
    /// Images a run returns: bytes of each PNG.
    pub max_image_bytes: u64,
    /// Images a run returns: how many.
    pub max_images: u32,
    /// The `files` a call brings, decoded, all together.
    pub max_input_files_bytes: u64,
    /// The host folders runs may read (`MCP_BRIDGE_HOST_READ`).
    pub host_read: HostRead,
    /// The host folder runs may save to (`MCP_BRIDGE_HOST_WRITE`).
    pub host_write: Option<PathBuf>,
    /// The host files a call reads, all together (`MCP_BRIDGE_MAX_HOST_FILES_BYTES`).
    pub max_host_files_bytes: u64,
    /// Files and folders a call's host reads look at (`MCP_BRIDGE_MAX_HOST_FILES`).
    pub max_host_files: usize,
    /// How host paths are resolved: the kernel's `openat2` where it has one
    /// (not a variable: tests choose the walk to run it on Linux too).
    pub host_resolution: HostResolution,
    /// The size of `/workspace` (`MCP_BRIDGE_WORKSPACE_BYTES`).
    pub workspace_bytes: u64,
    /// Files a run returns from `/workspace/out`: how many.
    pub max_output_files: u32,
    /// Files a run returns from `/workspace/out`: bytes, all together.
    pub max_output_files_bytes: u64,
    /// How long returned files stay readable as `artifact://` resources.
    pub artifact_ttl: Duration,
    /// The host's budget for kept artifacts (least recently used out first).
    pub artifact_bytes: u64,
    /// What one principal's kept artifacts may take of it together.
    pub artifact_bytes_per_client: u64,
    /// The largest tool call a run may make (its JSON, arguments included).
    pub max_tool_call_bytes: usize,
    /// What one run's tool calls and their answers may hold on the host at once.
    pub tool_bytes_in_flight: usize,
    /// Calls one run may send to MCP servers, all tools together.
    pub tool_calls_per_run: u32,
    /// Calls one run may send to one tool.
    pub tool_calls_per_tool: u32,
    /// Bytes of arguments one run's calls may carry, all together.
    pub tool_argument_bytes_per_run: u64,
    /// Bytes of results one run's calls may receive, all together.
    pub tool_result_bytes_per_run: u64,
    /// `MCP_BRIDGE_TOOL_POLICY`: the rules file, read at start by the
    /// binary ([`crate::policy::ToolPolicy::load`]).
    pub tool_policy_file: Option<std::path::PathBuf>,
    /// How long an `ask` rule's call waits for the human's answer
    /// (`MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT`).
    pub tool_approval_timeout: Duration,
    /// The network runs may reach through the host's proxy, and its bounds.
    pub egress: EgressSettings,
    /// Packages runs install, and the host's wheel cache they come from.
    pub packages: PackageSettings,
    /// `tracing` filter directives built from `MCP_BRIDGE_LOG_LEVEL`, checked.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// The metrics and health side port; `None` when `off`.
    pub metrics_addr: Option<SocketAddr>,
    /// The audit log: every call as one JSON line (see [`crate::audit`]).
    pub audit: AuditSettings,
    /// Calls the console keeps in memory (`MCP_BRIDGE_CONSOLE_CALLS`).
    pub console_calls: usize,
    /// Where runs' skills are kept (see [`crate::skills`]).
    pub skills: SkillSettings,
    /// `MCP_BRIDGE_PROJECT_SERVERS`.
    pub project_servers: ProjectServers,
    /// Calls one principal may have in flight at once.
    pub max_calls_per_client: usize,
    /// Live sessions one principal may have (`MCP_BRIDGE_MAX_SESSIONS_PER_CLIENT`;
    /// `None`: `max_sessions`).
    pub max_sessions_per_client: Option<usize>,
    /// The streamable HTTP listener, when MCP is served over HTTP.
    pub http: HttpSettings,
}

/// The skills' store (see [`crate::skills`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillSettings {
    /// `MCP_BRIDGE_SKILLS_DIR`; `None` when `off`. By default
    /// `$XDG_DATA_HOME/mcp-code-exec/skills` (`~/.local/share/…`).
    pub dir: Option<PathBuf>,
    /// `MCP_BRIDGE_SKILLS_BYTES`: one principal's skills together, previous
    /// versions included.
    pub bytes: u64,
}

/// This program's folder `name` in the XDG base directory `variable`
/// (an absolute path), else in its default under `$HOME` (`home_default`).
fn xdg_folder(variable: &str, home_default: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(home_default)))
        .map(|dir| dir.join("mcp-code-exec").join(name))
}

impl Default for SkillSettings {
    fn default() -> Self {
        Self {
            dir: xdg_folder("XDG_DATA_HOME", ".local/share", "skills"),
            bytes: 64 * MIB,
        }
    }
}

/// The audit log (see [`crate::audit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// `MCP_BRIDGE_AUDIT_LOG`: the file; `None` when `off`. By default
    /// `$XDG_STATE_HOME/mcp-code-exec/audit.jsonl` (`~/.local/state/…`).
    pub path: Option<PathBuf>,
    /// `MCP_BRIDGE_AUDIT_LOG_BYTES`: the log and its rotated files together.
    pub bytes: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            path: xdg_folder("XDG_STATE_HOME", ".local/state", "audit.jsonl"),
            bytes: 64 * MIB,
        }
    }
}

/// MCP over streamable HTTP (see [`crate::http`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// `MCP_BRIDGE_HTTP_ADDR` (or `serve --http ADDR`); `None`: stdio.
    pub addr: Option<SocketAddr>,
    /// `MCP_BRIDGE_HTTP_TOKENS_FILE`: `name:sha256-hex-of-token` lines.
    pub tokens_file: Option<PathBuf>,
    /// `MCP_BRIDGE_HTTP_ALLOWED_HOSTS`: the `Host` values served (`name`
    /// or `name:port`), against DNS rebinding; loopback names by default.
    pub allowed_hosts: Vec<String>,
    /// `MCP_BRIDGE_HTTP_ALLOWED_ORIGINS`: the browser origins served (a
    /// request without `Origin` is not a browser's); loopback by default.
    pub allowed_origins: Vec<String>,
    /// `MCP_BRIDGE_HTTP_RESOURCE_URL`: the URL clients reach the MCP
    /// endpoint at, as the protected-resource metadata names it; by default
    /// `http://<Host>/mcp` from the request.
    pub resource_url: Option<String>,
    /// `MCP_BRIDGE_HTTP_JWT_*`: JWT access tokens of an external
    /// authorization server, besides (or instead of) the tokens file.
    pub jwt: Option<JwtSettings>,
    /// `MCP_BRIDGE_HTTP_MAX_CONNECTIONS`: connections served at once; more
    /// wait in the listen backlog.
    pub max_connections: usize,
    /// `MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS(_PER_CLIENT)`: the MCP sessions kept.
    pub mcp_sessions: SessionBounds,
}

/// The bounds on live MCP sessions over HTTP (see `http::mcp_sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBounds {
    /// `MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS`: in all.
    pub total: usize,
    /// `MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT`: of one principal.
    pub per_client: usize,
}

/// JWT access tokens (see [`crate::http::jwt`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    /// `MCP_BRIDGE_HTTP_JWT_ISSUER`: the `iss` every token must carry.
    pub issuer: String,
    /// `MCP_BRIDGE_HTTP_JWT_AUDIENCE` (else `MCP_BRIDGE_HTTP_RESOURCE_URL`):
    /// the `aud` a token must name, this server's URL (RFC 8707).
    pub audience: String,
    /// `MCP_BRIDGE_HTTP_JWT_JWKS_URL`: the issuer's signing keys.
    pub jwks_url: String,
    /// `MCP_BRIDGE_HTTP_JWT_PRINCIPAL_CLAIM`: the claim naming the principal.
    pub principal_claim: String,
    /// `MCP_BRIDGE_HTTP_JWT_ALGORITHMS`: the asymmetric algorithms accepted.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: None,
            tokens_file: None,
            allowed_hosts: ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec(),
            allowed_origins: ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]
                .map(String::from)
                .to_vec(),
            resource_url: None,
            jwt: None,
            max_connections: 4096,
            mcp_sessions: SessionBounds {
                total: 1024,
                per_client: 64,
            },
        }
    }
}

/// How host paths are resolved beneath a root (see [`crate::hostfiles`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostResolution {
    /// `openat2` where the kernel has it, else the walk.
    Kernel,
    /// The walk only (what runs without `openat2`; tests choose it on Linux).
    Walk,
}

/// Where host files may be read from (see [`crate::hostfiles`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostRead {
    /// No host files (the default).
    #[default]
    Off,
    /// These folders (absolute paths).
    Folders(Vec<PathBuf>),
    /// The MCP client's roots (`roots/list`), as it declares them.
    ClientRoots,
}

/// What each run may do on the network (see [`crate::egress`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressSettings {
    pub policy: Policy,
    pub limits: EgressLimits,
    /// A PEM file on the host installed as the sandboxes' trust
    /// (`MCP_BRIDGE_CA_BUNDLE`), read at launch.
    pub ca_bundle: Option<CaBundle>,
}

/// Packages (see [`crate::packages`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PackageSettings {
    /// The sandbox's exec-allowed package directory (`MCP_BRIDGE_PACKAGES_BYTES`).
    pub sandbox_bytes: u64,
    /// The host's wheel cache (`MCP_BRIDGE_PACKAGE_CACHE`).
    pub cache_dir: PathBuf,
    /// Its bound (`MCP_BRIDGE_PACKAGE_CACHE_BYTES`).
    pub cache_bytes: u64,
    /// The index wheels come from (`MCP_BRIDGE_PACKAGE_INDEX`); `None`: the
    /// one the host's pip is configured with.
    pub index: Option<String>,
    /// Requests one run may make to the index (`MCP_BRIDGE_PACKAGE_RUN_REQUESTS`).
    pub run_requests: usize,
    /// Bytes of answers one run may take from it (`MCP_BRIDGE_PACKAGE_RUN_BYTES`).
    pub run_bytes: u64,
    /// Whether a set of requirements installed before is installed from the
    /// wheels pip chose then, without pip (`MCP_BRIDGE_PACKAGE_PLANS`).
    pub plans: bool,
}

impl Default for PackageSettings {
    fn default() -> Self {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        Self {
            sandbox_bytes: 256 * MIB,
            cache_dir: cache.join("mcp-code-exec").join("wheels"),
            cache_bytes: 4096 * MIB,
            index: None,
            run_requests: 2000,
            run_bytes: 2048 * MIB,
            plans: true,
        }
    }
}

/// The sandboxes' trust for TLS: certificates as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: String,
}

/// A run's (or a session call's) network bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressLimits {
    /// Connections open at once (`MCP_BRIDGE_EGRESS_CONNECTIONS`).
    pub connections: usize,
    /// Connections in total (`MCP_BRIDGE_EGRESS_CONNECTIONS_TOTAL`).
    pub connections_total: usize,
    /// Bytes each way, all connections together (`MCP_BRIDGE_EGRESS_BYTES`).
    pub bytes: u64,
    /// Resolving and connecting (`MCP_BRIDGE_EGRESS_CONNECT_TIMEOUT`).
    pub connect_timeout: Duration,
    /// A connection moving no byte for this long is closed
    /// (`MCP_BRIDGE_EGRESS_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
}

impl Default for EgressLimits {
    fn default() -> Self {
        Self {
            connections: 64,
            connections_total: 1024,
            bytes: 256 << 20,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Whether the runtime registered as `name`, running the program at
/// `path` (as the engine lists it), is gVisor's: its program is `runsc`,
/// whatever the operator named it (`gvisor`, `runsc-debug`, a path of
/// their own).
pub fn is_gvisor(name: &str, path: Option<&str>) -> bool {
    let program = path
        .and_then(|path| std::path::Path::new(path).file_name())
        .and_then(|name| name.to_str());
    name.starts_with("runsc") || program.is_some_and(|program| program.starts_with("runsc"))
}

/// How logs (stderr) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            engine: EngineKind::Auto,
            oci_runtime: None,
            gvisor_runtime: None,
            image: DEFAULT_IMAGE.into(),
            preload: DEFAULT_PRELOAD.iter().map(|&m| m.to_owned()).collect(),
            light_spare: true,
            huge_pages: true,
            container_user: "65534:65534".into(),
            memory_bytes: 512 * MIB,
            pids_limit: 128,
            cpus: None,
            pool_min_idle: 2,
            pool_max: 8,
            // Defense in depth only (the reset is complete): a recycle costs
            // ~200 ms of engine and interpreter CPU, so at 100 it took 40% of
            // the throughput of a busy pool.
            pool_max_uses: 1000,
            pool_max_age: Duration::from_secs(30 * 60),
            pool_wait_timeout: Duration::from_secs(30),
            max_sessions: 4,
            session_idle_ttl: Duration::from_secs(10 * 60),
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(120),
            max_code_bytes: 1 << 20,
            max_output_bytes: MIB,
            output_mode: OutputMode::Compact,
            max_image_pixels: 1024,
            max_image_bytes: 512 * 1024,
            max_images: 8,
            max_input_files_bytes: 8 * MIB,
            host_read: HostRead::Off,
            host_write: None,
            max_host_files_bytes: 64 * MIB,
            max_host_files: 10_000,
            host_resolution: HostResolution::Kernel,
            workspace_bytes: 128 * MIB,
            max_output_files: 32,
            max_output_files_bytes: 16 * MIB,
            artifact_ttl: Duration::from_secs(30 * 60),
            artifact_bytes: 256 * MIB,
            artifact_bytes_per_client: 256 * MIB,
            max_tool_call_bytes: 4 << 20,
            tool_bytes_in_flight: 64 << 20,
            tool_calls_per_run: 10_000,
            tool_calls_per_tool: 10_000,
            tool_argument_bytes_per_run: 1024 * MIB,
            tool_result_bytes_per_run: 4096 * MIB,
            tool_policy_file: None,
            tool_approval_timeout: Duration::from_secs(120),
            egress: EgressSettings::default(),
            packages: PackageSettings::default(),
            log_filter: log_filter("info").expect("info is a level"),
            log_format: LogFormat::Text,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            audit: AuditSettings::default(),
            console_calls: 200,
            skills: SkillSettings::default(),
            project_servers: ProjectServers::Approved,
            max_calls_per_client: 16,
            max_sessions_per_client: None,
            http: HttpSettings::default(),
        }
    }
}

const MIB: u64 = 1024 * 1024;
/// The largest CA bundle installed in the sandboxes (the Mozilla roots are ~220 KiB).
pub const MAX_CA_BUNDLE: u64 = MIB;
/// The engine refuses less than 0.01 CPUs; below 1e-9 the limit would round
/// to 0 nanoCPUs, which means "no limit".
const MIN_CPUS: f64 = 0.01;
/// Keeps the nanoCPU count the engine takes far inside `i64`.
const MAX_CPUS: f64 = 1024.0;

/// The project's sandbox image (Python with numpy, pandas, matplotlib, scipy
/// and pillow), built by `scripts/setup-engine.sh`.
pub const DEFAULT_IMAGE: &str = "mcp-code-exec-sandbox:data";
/// What data work imports first, and what costs most to import: numpy and
/// pandas ~220 ms, matplotlib.pyplot ~250 ms more, PIL.Image ~30 ms
/// (measured on the default image). Importing them once, before any run,
/// makes `import pandas` in a run a dictionary lookup. scipy is left out:
/// its top level is cheap and its submodules are many.
const DEFAULT_PRELOAD: [&str; 4] = ["numpy", "pandas", "matplotlib.pyplot", "PIL.Image"];

/// A variable that is set to something it does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: {expected}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub expected: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Whether sandboxes run under gVisor (`runsc`): a kernel of their own,
    /// whose own threads are what the host sees of them.
    pub fn gvisor(&self) -> bool {
        self.gvisor_runtime.unwrap_or_else(|| {
            self.oci_runtime
                .as_deref()
                .is_some_and(|runtime| is_gvisor(runtime, None))
        })
    }

    /// Reads variables through `lookup`; unset and empty mean "default".
    /// Variables are read in a fixed order and the first bad one is reported.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(&lookup);
        let mut config = Self::default();
        config.read_engine_and_image(&vars)?;
        config.read_sandbox_limits(&vars)?;
        config.read_pool(&vars)?;
        config.read_run_limits(&vars)?;
        config.read_output(&vars)?;
        config.read_results(&vars)?;
        config.read_host_files(&vars)?;
        config.read_tool_calls(&vars)?;
        config.read_egress(&vars)?;
        config.read_packages(&vars)?;
        config.read_logging(&vars)?;
        config.read_servers(&vars)?;
        config.read_http(&vars)?;
        config.check()
    }

    /// The engine, the image, what it preloads and whom it runs code as.
    fn read_engine_and_image(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        self.engine = vars.choice("MCP_BRIDGE_RUNTIME", self.engine, |v| match v {
            "auto" => Ok(EngineKind::Auto),
            "docker" => Ok(EngineKind::Docker),
            "podman" => Ok(EngineKind::Podman),
            _ => Err("one of auto, docker, podman".into()),
        })?;
        self.oci_runtime = vars.parse("MCP_BRIDGE_OCI_RUNTIME", None, |v| {
            let name = v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if name {
                Ok(Some(v.to_owned()))
            } else {
                Err("the name of an OCI runtime registered with the engine, like runsc".into())
            }
        })?;
        self.image = vars.string("MCP_BRIDGE_IMAGE", std::mem::take(&mut self.image));
        let preload = std::mem::take(&mut self.preload);
        self.preload = vars.parse("MCP_BRIDGE_PRELOAD", preload, parse_modules)?;
        // `auto` (the default until gVisor got the light zygote too) is `on`.
        self.light_spare = vars.parse("MCP_BRIDGE_LIGHT_SPARE", self.light_spare, |v| match v {
            "auto" => Ok(true),
            _ => parse_on_off(v),
        })?;
        self.huge_pages = vars.parse("MCP_BRIDGE_HUGE_PAGES", self.huge_pages, parse_on_off)?;
        let user = std::mem::take(&mut self.container_user);
        self.container_user = vars.parse("MCP_BRIDGE_CONTAINER_USER", user, parse_user)?;
        Ok(())
    }

    /// Each container's memory, processes and CPUs.
    fn read_sandbox_limits(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        self.memory_bytes = vars.parse("MCP_BRIDGE_MEMORY", self.memory_bytes, |v| {
            parse_bytes(v).filter(|&b| b >= 32 * MIB).ok_or_else(|| {
                "a size of at least 32m, like 512m or 1g (suffixes b, k, m, g)".into()
            })
        })?;
        self.pids_limit = vars.parse("MCP_BRIDGE_PIDS", self.pids_limit, |v| {
            v.parse::<i64>()
                .ok()
                .filter(|&n| n >= 8)
                .ok_or_else(|| "a whole number of at least 8".into())
        })?;
        self.cpus = vars.parse("MCP_BRIDGE_CPUS", self.cpus, |v| {
            v.parse::<f64>()
                .ok()
                .filter(|c| (MIN_CPUS..=MAX_CPUS).contains(c))
                .map(Some)
                .ok_or_else(|| "a number of CPUs from 0.01 to 1024, like 1 or 0.5".into())
        })?;
        Ok(())
    }

    /// The pool's size, sandbox lifetime and how long a call waits for one.
    fn read_pool(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        self.pool_min_idle = vars.parse("MCP_BRIDGE_POOL_MIN_IDLE", self.pool_min_idle, |v| {
            v.parse::<usize>()
                .map_err(|_| "a whole number (0 or more)".into())
        })?;
        self.pool_max = vars.parse("MCP_BRIDGE_POOL_MAX", self.pool_max, |v| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| (1..=1024).contains(&n))
                .ok_or_else(|| "a whole number from 1 to 1024".into())
        })?;
        self.pool_max_uses = vars.parse("MCP_BRIDGE_POOL_MAX_USES", self.pool_max_uses, |v| {
            v.parse::<u32>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| "a whole number of at least 1".into())
        })?;
        let (max_age, wait) = (self.pool_max_age, self.pool_wait_timeout);
        self.pool_max_age = vars.parse("MCP_BRIDGE_POOL_MAX_AGE", max_age, parse_duration)?;
        self.pool_wait_timeout =
            vars.parse("MCP_BRIDGE_POOL_WAIT_TIMEOUT", wait, parse_duration)?;
        let ttl = self.session_idle_ttl;
        self.session_idle_ttl = vars.parse("MCP_BRIDGE_SESSION_IDLE_TTL", ttl, parse_duration)?;
        // Stateless calls always keep one sandbox of the pool's.
        let room = self.pool_max - 1;
        let sessions = self.max_sessions.min(room);
        self.max_sessions =
            vars.parse("MCP_BRIDGE_MAX_SESSIONS", sessions, |v| {
                v.parse::<usize>().ok().filter(|&n| n <= room).ok_or_else(|| {
                format!(
                    "a whole number from 0 (no sessions) to {room}: MCP_BRIDGE_POOL_MAX - 1, \
                     so that stateless calls always have a sandbox"
                )
            })
            })?;
        Ok(())
    }

    /// What one run may take: time and code size.
    fn read_run_limits(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let (default, max) = (self.default_timeout, self.max_timeout);
        self.default_timeout = vars.parse("MCP_BRIDGE_TIMEOUT", default, parse_duration)?;
        self.max_timeout = vars.parse("MCP_BRIDGE_MAX_TIMEOUT", max, parse_duration)?;
        self.max_code_bytes =
            vars.parse("MCP_BRIDGE_MAX_CODE_BYTES", self.max_code_bytes, |v| {
                parse_bytes(v)
                    // A call travels in one 16 MiB message, its code included.
                    .filter(|&b| (1..=12 * MIB).contains(&b))
                    .and_then(|b| usize::try_from(b).ok())
                    .ok_or_else(|| "a size from 1 byte to 12m, like 1m or 65536".into())
            })?;
        Ok(())
    }

    /// How much of a run's output is kept and how results are rendered.
    fn read_output(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let max_output = self.max_output_bytes;
        self.max_output_bytes = vars.parse("MCP_BRIDGE_MAX_OUTPUT_BYTES", max_output, |v| {
            parse_bytes(v)
                .filter(|&b| (1..=256 * MIB).contains(&b))
                .ok_or_else(|| "a size from 1 byte to 256m, like 1m or 65536".into())
        })?;
        self.output_mode =
            vars.choice("MCP_BRIDGE_OUTPUT_MODE", self.output_mode, |v| match v {
                "compact" | "text" => Ok(OutputMode::Compact),
                "toon" => Ok(OutputMode::Toon),
                "json" => Ok(OutputMode::Json),
                _ => Err("one of compact, toon, json".into()),
            })?;
        Ok(())
    }

    /// What a run brings and hands back besides text: files and images.
    fn read_results(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let size = |low: u64, high: u64, range: &'static str| {
            move |v: &str| {
                parse_bytes(v)
                    .filter(|b| (low..=high).contains(b))
                    .ok_or_else(|| format!("a size from {range}, like 512k or 8m"))
            }
        };
        let count = |low: u32, high: u32| {
            move |v: &str| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (low..=high).contains(n))
                    .ok_or_else(|| format!("a whole number from {low} to {high}"))
            }
        };
        self.max_image_pixels = vars.parse(
            "MCP_BRIDGE_MAX_IMAGE_PIXELS",
            self.max_image_pixels,
            count(16, 8192),
        )?;
        self.max_image_bytes = vars.parse(
            "MCP_BRIDGE_MAX_IMAGE_BYTES",
            self.max_image_bytes,
            size(1024, 8 * MIB, "1k to 8m"),
        )?;
        self.max_images = vars.parse("MCP_BRIDGE_MAX_IMAGES", self.max_images, count(0, 64))?;
        self.max_input_files_bytes = vars.parse(
            "MCP_BRIDGE_MAX_INPUT_FILES_BYTES",
            self.max_input_files_bytes,
            size(
                0,
                12 * MIB,
                "0 to 12m (a call travels in one 16 MiB message)",
            ),
        )?;
        self.max_output_files = vars.parse(
            "MCP_BRIDGE_MAX_OUTPUT_FILES",
            self.max_output_files,
            count(0, 1024),
        )?;
        self.max_output_files_bytes = vars.parse(
            "MCP_BRIDGE_MAX_OUTPUT_FILES_BYTES",
            self.max_output_files_bytes,
            size(0, 64 * MIB, "0 to 64m"),
        )?;
        self.artifact_ttl =
            vars.parse("MCP_BRIDGE_ARTIFACT_TTL", self.artifact_ttl, parse_duration)?;
        self.artifact_bytes = vars.parse(
            "MCP_BRIDGE_ARTIFACT_BYTES",
            self.artifact_bytes,
            size(0, 64 * 1024 * MIB, "0 to 64g"),
        )?;
        // By default a principal may fill the whole store (stdio has one).
        self.artifact_bytes_per_client = vars.parse(
            "MCP_BRIDGE_ARTIFACT_BYTES_PER_CLIENT",
            self.artifact_bytes,
            size(0, 64 * 1024 * MIB, "0 to 64g"),
        )?;
        Ok(())
    }

    /// Host files: where runs may read and save, and the bounds.
    fn read_host_files(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        self.host_read = vars.parse("MCP_BRIDGE_HOST_READ", HostRead::Off, |v| {
            if v.eq_ignore_ascii_case("roots") {
                return Ok(HostRead::ClientRoots);
            }
            let folders: Vec<PathBuf> = std::env::split_paths(v).collect();
            if folders.iter().all(|f| f.is_absolute()) {
                Ok(HostRead::Folders(folders))
            } else {
                Err("absolute folders separated by ':', or roots (the client's MCP roots)".into())
            }
        })?;
        self.host_write = vars.parse("MCP_BRIDGE_HOST_WRITE", None, |v| {
            let folder = PathBuf::from(v);
            if folder.is_absolute() {
                Ok(Some(folder))
            } else {
                Err("one absolute folder".into())
            }
        })?;
        self.workspace_bytes =
            vars.parse("MCP_BRIDGE_WORKSPACE_BYTES", self.workspace_bytes, |v| {
                parse_bytes(v)
                    .filter(|b| (MIB..=64 * 1024 * MIB).contains(b))
                    .ok_or_else(|| "a size from 1m to 64g, like 512m".into())
            })?;
        let workspace = self.workspace_bytes;
        self.max_host_files_bytes = vars.parse(
            "MCP_BRIDGE_MAX_HOST_FILES_BYTES",
            self.max_host_files_bytes.min(workspace),
            |v| {
                parse_bytes(v).filter(|&b| b <= workspace).ok_or_else(|| {
                    format!(
                        "a size of at most MCP_BRIDGE_WORKSPACE_BYTES ({workspace} bytes), \
                             like 64m"
                    )
                })
            },
        )?;
        self.max_host_files =
            vars.parse("MCP_BRIDGE_MAX_HOST_FILES", self.max_host_files, |v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| "a whole number from 1 to 1000000".into())
            })?;
        Ok(())
    }

    /// What a run's calls to MCP servers may hold on the host.
    fn read_tool_calls(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let size = |low: u64, high: u64, range: &'static str| {
            move |v: &str| {
                parse_bytes(v)
                    .filter(|b| (low..=high).contains(b))
                    .and_then(|b| usize::try_from(b).ok())
                    .ok_or_else(|| format!("a size from {range}, like 4m"))
            }
        };
        self.max_tool_call_bytes = vars.parse(
            "MCP_BRIDGE_MAX_TOOL_CALL_BYTES",
            self.max_tool_call_bytes,
            size(1024, 16 * MIB, "1k to 16m (the agent's bound on one call)"),
        )?;
        self.tool_bytes_in_flight = vars.parse(
            "MCP_BRIDGE_TOOL_BYTES_IN_FLIGHT",
            self.tool_bytes_in_flight,
            size(MIB, 4096 * MIB, "1m to 4g"),
        )?;
        let calls = |v: &str| {
            v.parse::<u32>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| "a whole number from 1 to 1000000".to_string())
        };
        self.tool_calls_per_run = vars.parse(
            "MCP_BRIDGE_TOOL_CALLS_PER_RUN",
            self.tool_calls_per_run,
            calls,
        )?;
        self.tool_calls_per_tool = vars.parse(
            "MCP_BRIDGE_TOOL_CALLS_PER_TOOL",
            self.tool_calls_per_tool,
            calls,
        )?;
        let total = |v: &str| {
            parse_bytes(v)
                .filter(|b| (1..=1024 * 1024 * MIB).contains(b))
                .ok_or_else(|| "a size from 1 byte to 1t, like 256m or 4g".to_string())
        };
        self.tool_argument_bytes_per_run = vars.parse(
            "MCP_BRIDGE_TOOL_ARGUMENT_BYTES_PER_RUN",
            self.tool_argument_bytes_per_run,
            total,
        )?;
        self.tool_result_bytes_per_run = vars.parse(
            "MCP_BRIDGE_TOOL_RESULT_BYTES_PER_RUN",
            self.tool_result_bytes_per_run,
            total,
        )?;
        self.tool_policy_file = vars
            .raw("MCP_BRIDGE_TOOL_POLICY")
            .map(std::path::PathBuf::from);
        self.tool_approval_timeout = vars.parse(
            "MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT",
            self.tool_approval_timeout,
            parse_duration,
        )?;
        if self.tool_bytes_in_flight < self.max_tool_call_bytes {
            return Err(ConfigError {
                name: "MCP_BRIDGE_TOOL_BYTES_IN_FLIGHT",
                value: self.tool_bytes_in_flight.to_string(),
                expected: format!(
                    "at least MCP_BRIDGE_MAX_TOOL_CALL_BYTES ({} bytes): one call must fit",
                    self.max_tool_call_bytes
                ),
            });
        }
        Ok(())
    }

    /// The network: which hosts runs may reach, and each run's bounds.
    fn read_egress(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let hosts = vars.raw("MCP_BRIDGE_ALLOW_HOSTS").unwrap_or_default();
        let nets = vars.raw("MCP_BRIDGE_ALLOW_NETS").unwrap_or_default();
        self.egress.policy =
            Policy::parse(&hosts, &nets).map_err(|(name, expected)| ConfigError {
                name,
                value: if name == "MCP_BRIDGE_ALLOW_HOSTS" {
                    hosts.clone()
                } else {
                    nets.clone()
                },
                expected,
            })?;
        let limits = &mut self.egress.limits;
        let count = |low: usize, high: usize| {
            move |v: &str| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (low..=high).contains(n))
                    .ok_or_else(|| format!("a whole number from {low} to {high}"))
            }
        };
        limits.connections = vars.parse(
            "MCP_BRIDGE_EGRESS_CONNECTIONS",
            limits.connections,
            count(1, 256),
        )?;
        limits.connections_total = vars.parse(
            "MCP_BRIDGE_EGRESS_CONNECTIONS_TOTAL",
            limits.connections_total,
            count(1, 1_000_000),
        )?;
        limits.bytes = vars.parse("MCP_BRIDGE_EGRESS_BYTES", limits.bytes, |v| {
            parse_bytes(v)
                .filter(|&b| b >= 1024)
                .ok_or_else(|| "a size of at least 1k, like 256m or 2g".into())
        })?;
        limits.connect_timeout = vars.parse(
            "MCP_BRIDGE_EGRESS_CONNECT_TIMEOUT",
            limits.connect_timeout,
            parse_duration,
        )?;
        limits.idle_timeout = vars.parse(
            "MCP_BRIDGE_EGRESS_IDLE_TIMEOUT",
            limits.idle_timeout,
            parse_duration,
        )?;
        self.egress.ca_bundle = vars.parse("MCP_BRIDGE_CA_BUNDLE", None, |v| {
            read_ca_bundle(PathBuf::from(v)).map(Some)
        })?;
        Ok(())
    }

    /// Packages: the sandbox's package directory and the host's cache.
    fn read_packages(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let packages = &mut self.packages;
        packages.sandbox_bytes =
            vars.parse("MCP_BRIDGE_PACKAGES_BYTES", packages.sandbox_bytes, |v| {
                parse_bytes(v)
                    .filter(|b| (MIB..=64 * 1024 * MIB).contains(b))
                    .ok_or_else(|| "a size from 1m to 64g, like 256m".into())
            })?;
        packages.cache_bytes = vars.parse(
            "MCP_BRIDGE_PACKAGE_CACHE_BYTES",
            packages.cache_bytes,
            |v| {
                parse_bytes(v)
                    .filter(|&b| b >= MIB)
                    .ok_or_else(|| "a size of at least 1m, like 4g".into())
            },
        )?;
        let default_dir = std::mem::take(&mut packages.cache_dir);
        packages.cache_dir = vars.parse("MCP_BRIDGE_PACKAGE_CACHE", default_dir, |v| {
            let path = PathBuf::from(v);
            if path.is_absolute() {
                Ok(path)
            } else {
                Err("an absolute path to a directory".into())
            }
        })?;
        packages.run_requests = vars.parse(
            "MCP_BRIDGE_PACKAGE_RUN_REQUESTS",
            packages.run_requests,
            |v| {
                v.parse()
                    .ok()
                    .filter(|&n: &usize| n >= 1)
                    .ok_or_else(|| "a count of at least 1, like 2000".into())
            },
        )?;
        packages.run_bytes =
            vars.parse("MCP_BRIDGE_PACKAGE_RUN_BYTES", packages.run_bytes, |v| {
                parse_bytes(v)
                    .filter(|&b| b >= MIB)
                    .ok_or_else(|| "a size of at least 1m, like 2g".into())
            })?;
        packages.plans = vars.parse("MCP_BRIDGE_PACKAGE_PLANS", packages.plans, parse_on_off)?;
        packages.index = vars.parse("MCP_BRIDGE_PACKAGE_INDEX", None, |v| {
            let valid = (v.starts_with("https://") || v.starts_with("http://"))
                && !v.contains(char::is_whitespace);
            if valid {
                Ok(Some(v.trim_end_matches('/').to_owned()))
            } else {
                Err("the URL of a simple index, like https://pypi.org/simple".into())
            }
        })?;
        Ok(())
    }

    /// Logs and the metrics side port.
    fn read_logging(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let filter = std::mem::take(&mut self.log_filter);
        self.log_filter = vars.parse("MCP_BRIDGE_LOG_LEVEL", filter, log_filter)?;
        self.log_format = vars.choice("MCP_BRIDGE_LOG_FORMAT", self.log_format, |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("one of text, json".into()),
        })?;
        let addr = self.metrics_addr;
        self.metrics_addr = vars.parse("MCP_BRIDGE_METRICS_ADDR", addr, parse_metrics_addr)?;
        let path = self.audit.path.take();
        self.audit.path = vars.parse("MCP_BRIDGE_AUDIT_LOG", path, |v| {
            absolute_or_off(v, "an absolute file path, or off")
        })?;
        let bytes = self.audit.bytes;
        self.audit.bytes = vars.parse("MCP_BRIDGE_AUDIT_LOG_BYTES", bytes, at_least_a_mib)?;
        let dir = self.skills.dir.take();
        self.skills.dir = vars.parse("MCP_BRIDGE_SKILLS_DIR", dir, |v| {
            absolute_or_off(v, "an absolute folder path, or off")
        })?;
        let bytes = self.skills.bytes;
        self.skills.bytes = vars.parse("MCP_BRIDGE_SKILLS_BYTES", bytes, at_least_a_mib)?;
        self.console_calls = vars.parse("MCP_BRIDGE_CONSOLE_CALLS", self.console_calls, |v| {
            v.parse()
                .ok()
                .filter(|&n: &usize| n <= 10_000)
                .ok_or_else(|| "a count from 0 (no console) to 10000, like 200".into())
        })?;
        Ok(())
    }

    /// Where the user's MCP servers may come from.
    fn read_servers(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let project = self.project_servers;
        self.project_servers = vars.choice("MCP_BRIDGE_PROJECT_SERVERS", project, |v| match v {
            "off" | "0" => Ok(ProjectServers::Off),
            "approved" => Ok(ProjectServers::Approved),
            "all" | "1" => Ok(ProjectServers::All),
            _ => Err("one of off (0), approved, all (1)".into()),
        })?;
        Ok(())
    }

    /// The HTTP listener and the bound on each client's calls.
    fn read_http(&mut self, vars: &Vars<'_, impl Lookup>) -> Result<(), ConfigError> {
        let max = self.max_calls_per_client;
        self.max_calls_per_client = vars.parse("MCP_BRIDGE_MAX_CALLS_PER_CLIENT", max, |v| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| "a whole number, 1 or more".into())
        })?;
        self.max_sessions_per_client =
            vars.parse("MCP_BRIDGE_MAX_SESSIONS_PER_CLIENT", None, |v| {
                v.parse::<usize>()
                    .map(Some)
                    .map_err(|_| "a whole number, like 2".into())
            })?;
        let http = &mut self.http;
        http.max_connections = vars.parse(
            "MCP_BRIDGE_HTTP_MAX_CONNECTIONS",
            http.max_connections,
            |v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (16..=1_000_000).contains(n))
                    .ok_or_else(|| "a count from 16 to 1000000, like 4096".into())
            },
        )?;
        let count = |v: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| "a count from 1 to 1000000, like 64".to_owned())
        };
        let bounds = &mut http.mcp_sessions;
        bounds.total = vars.parse("MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS", bounds.total, count)?;
        bounds.per_client = vars.parse(
            "MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT",
            bounds.per_client,
            count,
        )?;
        http.addr = vars.parse("MCP_BRIDGE_HTTP_ADDR", http.addr, |v| {
            parse_http_addr(v).map(Some)
        })?;
        http.tokens_file = vars.raw("MCP_BRIDGE_HTTP_TOKENS_FILE").map(PathBuf::from);
        let hosts = std::mem::take(&mut http.allowed_hosts);
        http.allowed_hosts = vars.parse("MCP_BRIDGE_HTTP_ALLOWED_HOSTS", hosts, |v| {
            list(v, "host names or host:port, comma-separated")
        })?;
        let origins = std::mem::take(&mut http.allowed_origins);
        http.allowed_origins = vars.parse("MCP_BRIDGE_HTTP_ALLOWED_ORIGINS", origins, |v| {
            let origins = list(v, "origins like https://app.example.com:443, comma-separated")?;
            match origins.iter().find(|o| !o.contains("://") && *o != "null") {
                Some(bad) => Err(format!(
                    "origins with their scheme (https://app.example.com:443, http://localhost:*);                      {bad:?} has none"
                )),
                None => Ok(origins),
            }
        })?;
        http.resource_url = vars.parse("MCP_BRIDGE_HTTP_RESOURCE_URL", None, |v| {
            if v.starts_with("https://") || v.starts_with("http://") {
                Ok(Some(v.to_owned()))
            } else {
                Err(
                    "the URL clients reach the MCP endpoint at, like https://mcp.example.com/mcp"
                        .into(),
                )
            }
        })?;
        http.jwt = read_jwt(vars, http.resource_url.as_deref())?;
        Ok(())
    }

    /// Cross-field rules, reported against the variable a user would change.
    fn check(self) -> Result<Self, ConfigError> {
        if self.pool_min_idle > self.pool_max {
            return Err(ConfigError {
                name: "MCP_BRIDGE_POOL_MIN_IDLE",
                value: self.pool_min_idle.to_string(),
                expected: format!("at most MCP_BRIDGE_POOL_MAX ({})", self.pool_max),
            });
        }
        if self.default_timeout.is_zero() || self.default_timeout > self.max_timeout {
            return Err(ConfigError {
                name: "MCP_BRIDGE_TIMEOUT",
                value: humantime::format_duration(self.default_timeout).to_string(),
                expected: format!(
                    "more than 0 and at most MCP_BRIDGE_MAX_TIMEOUT ({})",
                    humantime::format_duration(self.max_timeout)
                ),
            });
        }
        Ok(self)
    }
}

/// The PEM certificates of `path`: a regular file of at most
/// [`MAX_CA_BUNDLE`] bytes, text, with at least one certificate.
fn read_ca_bundle(path: PathBuf) -> Result<CaBundle, String> {
    let meta = std::fs::metadata(&path)
        .map_err(|error| format!("a PEM file that can be read ({error})"))?;
    if !meta.is_file() {
        return Err("a PEM file (this is not a regular file)".into());
    }
    if meta.len() > MAX_CA_BUNDLE {
        return Err(format!(
            "a PEM file of at most {} KiB (this one is {} bytes)",
            MAX_CA_BUNDLE >> 10,
            meta.len()
        ));
    }
    let pem = std::fs::read_to_string(&path)
        .map_err(|error| format!("a PEM file that can be read as text ({error})"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("a PEM file of certificates (no -----BEGIN CERTIFICATE----- in it)".into());
    }
    Ok(CaBundle { path, pem })
}

/// `on` or `off`.
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("on or off".into()),
    }
}

/// A comma-separated list of dotted module names, or `none`.
fn parse_modules(value: &str) -> Result<Vec<String>, String> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let modules: Vec<String> = value.split(',').map(|m| m.trim().to_owned()).collect();
    let valid = |module: &String| {
        !module.is_empty()
            && module.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    match modules.iter().find(|m| !valid(m)) {
        None => Ok(modules),
        Some(bad) => Err(format!(
            "comma-separated module names like numpy,pandas,matplotlib.pyplot, or none \
             ({bad:?} is not one)"
        )),
    }
}

/// Where variables are read from: the environment, or a map in tests.
trait Lookup: Fn(&str) -> Option<String> {}

impl<F: Fn(&str) -> Option<String>> Lookup for F {}

/// Typed access to the variables with uniform error reporting.
struct Vars<'a, F: Lookup>(&'a F);

impl<F: Lookup> Vars<'_, F> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn string(&self, name: &str, default: String) -> String {
        self.raw(name).unwrap_or(default)
    }

    /// The variable as written, through `parse`.
    fn parse<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(value) => parse(&value).map_err(|expected| ConfigError {
                name,
                value,
                expected,
            }),
        }
    }

    /// A word of a fixed set, in any case: `parse` sees it lowercased.
    fn choice<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(name, default, |value| parse(&value.to_ascii_lowercase()))
    }
}

/// A duration as humantime (`30s`, `2m`, `1h 30m`) or plain seconds (`30`, `0.5`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    // Units in any case (`30S`, `2M`): humantime knows only lowercase.
    let value = value.trim().to_ascii_lowercase();
    let parsed = match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Duration::try_from_secs_f64(seconds).ok()
        }
        Ok(_) => None,
        Err(_) => humantime::parse_duration(&value).ok(),
    };
    parsed
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "a positive duration: seconds (30, 0.5) or humantime (30s, 2m, 1h)".into())
}

/// A byte size: a number with an optional suffix b, k, m, g (also kb/kib...).
pub fn parse_bytes(value: &str) -> Option<u64> {
    let value = value.trim().to_ascii_lowercase();
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match suffix.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// An absolute path, or `off` (`None`); else `expected`.
fn absolute_or_off(value: &str, expected: &str) -> Result<Option<PathBuf>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(Some(path))
    } else {
        Err(expected.to_owned())
    }
}

/// A byte size of at least 1 MiB.
fn at_least_a_mib(value: &str) -> Result<u64, String> {
    parse_bytes(value)
        .filter(|&b| b >= MIB)
        .ok_or_else(|| "a size of at least 1m, like 64m".into())
}

/// `host:port`, or `off` to disable the side port.
pub fn parse_metrics_addr(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| "an address like 127.0.0.1:9464 (port 0 picks a free one), or off".into())
}

/// The HTTP listener's `host:port`.
pub fn parse_http_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| "an address like 127.0.0.1:8080 (port 0 picks a free one)".into())
}

/// A comma-separated list of words, none empty.
/// `MCP_BRIDGE_HTTP_JWT_*`: all or nothing (issuer and JWKS URL name each
/// other; the audience defaults to the resource URL).
fn read_jwt(
    vars: &Vars<'_, impl Lookup>,
    resource_url: Option<&str>,
) -> Result<Option<JwtSettings>, ConfigError> {
    const ISSUER: &str = "MCP_BRIDGE_HTTP_JWT_ISSUER";
    const JWKS: &str = "MCP_BRIDGE_HTTP_JWT_JWKS_URL";
    let (issuer, jwks) = (vars.raw(ISSUER), vars.raw(JWKS));
    let needed = |name: &'static str, value: Option<String>, expected: &str| {
        value.ok_or_else(|| ConfigError {
            name,
            value: String::new(),
            expected: expected.to_owned(),
        })
    };
    let (issuer, jwks_url) = match (issuer, jwks) {
        (None, None) => return Ok(None),
        (issuer, jwks) => (
            needed(
                ISSUER,
                issuer,
                "the authorization server's issuer URL (the tokens' iss), set with MCP_BRIDGE_HTTP_JWT_JWKS_URL",
            )?,
            needed(
                JWKS,
                jwks,
                "the URL of the issuer's JSON Web Key Set, set with MCP_BRIDGE_HTTP_JWT_ISSUER",
            )?,
        ),
    };
    vars.parse(JWKS, (), |v| {
        let url = reqwest::Url::parse(v).ok();
        let host = url.as_ref().and_then(reqwest::Url::host_str);
        let loopback = host.is_some_and(|host| {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match url.as_ref().map(reqwest::Url::scheme) {
            Some("https") => Ok(()),
            Some("http") if loopback => Ok(()),
            _ => Err("an https:// URL (http:// only to a loopback address)".into()),
        }
    })?;
    let audience = vars
        .raw("MCP_BRIDGE_HTTP_JWT_AUDIENCE")
        .or(resource_url.map(str::to_owned));
    let audience = needed(
        "MCP_BRIDGE_HTTP_JWT_AUDIENCE",
        audience,
        "the aud tokens must name: this server's URL (RFC 8707), e.g. https://mcp.example.com/mcp          (or set MCP_BRIDGE_HTTP_RESOURCE_URL)",
    )?;
    let principal_claim = vars.string("MCP_BRIDGE_HTTP_JWT_PRINCIPAL_CLAIM", "sub".to_owned());
    use jsonwebtoken::Algorithm;
    let algorithms = vars.parse(
        "MCP_BRIDGE_HTTP_JWT_ALGORITHMS",
        vec![Algorithm::RS256, Algorithm::ES256],
        |v| {
            let expected = "asymmetric JWS algorithms, comma-separated: RS256, RS384, RS512,                             PS256, PS384, PS512, ES256, ES384, EdDSA (never HS*, never none)";
            list(v, expected)?
                .iter()
                .map(|name| match name.parse::<Algorithm>() {
                    Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) | Err(_) => {
                        Err(expected.to_owned())
                    }
                    Ok(alg) => Ok(alg),
                })
                .collect()
        },
    )?;
    Ok(Some(JwtSettings {
        issuer,
        audience,
        jwks_url,
        principal_claim,
        algorithms,
    }))
}

fn list(value: &str, expected: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
    if items.iter().any(String::is_empty) {
        return Err(expected.to_owned());
    }
    Ok(items)
}

/// `uid[:gid]` as numbers: names would need the image's /etc/passwd. Ids
/// are compared as numbers (`00` is root too) and passed on in canonical form.
fn parse_user(value: &str) -> Result<String, String> {
    let id = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok()
    };
    let (uid, gid) = match value.split_once(':') {
        Some((uid, gid)) => (id(uid), id(gid).map(Some)),
        None => (id(value), Some(None)),
    };
    let (Some(uid), Some(gid)) = (uid, gid) else {
        return Err("a numeric uid or uid:gid (each at most 4294967295), like 65534:65534".into());
    };
    if uid == 0 || gid == Some(0) {
        return Err(
            "a non-root uid and gid: the sandbox never runs code as root (uid 0) \
             or in group root (gid 0)"
                .into(),
        );
    }
    Ok(match gid {
        Some(gid) => format!("{uid}:{gid}"),
        None => uid.to_string(),
    })
}

/// `MCP_BRIDGE_LOG_LEVEL`: a level for this program (dependencies only warn:
/// rmcp logs every request at info), or full `tracing` directives when it
/// contains `=`. Returns the filter directives.
fn log_filter(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "one of off, error, warn, info, debug, trace, \
                            or tracing directives like warn,mcp_code_exec=debug";
    let level = value.to_ascii_lowercase();
    let directives = match level.as_str() {
        "off" | "error" | "warn" => level,
        "info" | "debug" | "trace" => format!("warn,mcp_code_exec={level}"),
        // As written: span and field values in directives are case-sensitive.
        _ if value.contains('=') => value.to_owned(),
        _ => return Err(EXPECTED.into()),
    };
    tracing_subscriber::EnvFilter::try_new(&directives)
        .map(|_| directives)
        .map_err(|_| EXPECTED.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        assert_eq!(config(&[]).unwrap(), Config::default());
    }

    #[test]
    fn durations_accept_humantime_and_plain_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").is_err());
        let c = config(&[
            ("MCP_BRIDGE_TIMEOUT", "45s"),
            ("MCP_BRIDGE_POOL_MAX_AGE", "600"),
            ("MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT", "5m"),
        ])
        .unwrap();
        assert_eq!(c.default_timeout, Duration::from_secs(45));
        assert_eq!(c.pool_max_age, Duration::from_secs(600));
        assert_eq!(c.tool_approval_timeout, Duration::from_secs(300));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("64KiB"), Some(64 << 10));
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("12x"), None);
        assert_eq!(parse_bytes("m"), None);
        assert_eq!(parse_bytes("99999999999999999999g"), None);
        assert_eq!(
            config(&[("MCP_BRIDGE_MEMORY", "1g")]).unwrap().memory_bytes,
            1 << 30
        );
    }

    #[test]
    fn errors_name_the_variable_and_what_it_accepts() {
        let error = config(&[("MCP_BRIDGE_MEMORY", "lots")]).unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_MEMORY");
        assert!(error.to_string().contains("\"lots\""), "{error}");
        assert!(error.to_string().contains("512m"), "{error}");

        let error = config(&[("MCP_BRIDGE_RUNTIME", "lxc")]).unwrap_err();
        assert!(
            error.to_string().contains("auto, docker, podman"),
            "{error}"
        );
    }

    #[test]
    fn result_bounds_are_checked_and_named() {
        for (name, bad, accepts) in [
            ("MCP_BRIDGE_MAX_IMAGE_PIXELS", "8", "from 16 to 8192"),
            ("MCP_BRIDGE_MAX_IMAGES", "65", "from 0 to 64"),
            ("MCP_BRIDGE_MAX_IMAGE_BYTES", "9m", "from 1k to 8m"),
            ("MCP_BRIDGE_MAX_INPUT_FILES_BYTES", "13m", "16 MiB message"),
            ("MCP_BRIDGE_MAX_OUTPUT_FILES", "-1", "from 0 to 1024"),
            ("MCP_BRIDGE_MAX_OUTPUT_FILES_BYTES", "65m", "from 0 to 64m"),
            ("MCP_BRIDGE_ARTIFACT_TTL", "soon", "30s"),
            ("MCP_BRIDGE_PRELOAD", "numpy,,pandas", "numpy,pandas"),
            ("MCP_BRIDGE_OCI_RUNTIME", "run sc", "runsc"),
        ] {
            let error = config(&[(name, bad)]).unwrap_err();
            assert_eq!(error.name, name);
            assert!(error.to_string().contains(accepts), "{error}");
        }
        let ok = config(&[
            ("MCP_BRIDGE_PRELOAD", "none"),
            ("MCP_BRIDGE_MAX_IMAGES", "0"),
        ])
        .unwrap();
        assert!(ok.preload.is_empty() && ok.max_images == 0);
    }

    #[test]
    fn the_first_bad_variable_is_reported() {
        let error = config(&[
            ("MCP_BRIDGE_METRICS_ADDR", "nowhere"),
            ("MCP_BRIDGE_POOL_MAX", "0"),
            ("MCP_BRIDGE_RUNTIME", "lxc"),
        ])
        .unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_RUNTIME");
    }

    #[test]
    fn sessions_leave_a_sandbox_to_stateless_calls() {
        let c = config(&[]).unwrap();
        assert_eq!(
            (c.max_sessions, c.session_idle_ttl),
            (4, Duration::from_secs(600))
        );
        let c = config(&[("MCP_BRIDGE_POOL_MAX", "3")]).unwrap();
        assert_eq!(c.max_sessions, 2, "the default shrinks with a small pool");
        let c = config(&[
            ("MCP_BRIDGE_POOL_MAX", "1"),
            ("MCP_BRIDGE_POOL_MIN_IDLE", "1"),
        ])
        .unwrap();
        assert_eq!(c.max_sessions, 0);
        let error = config(&[("MCP_BRIDGE_MAX_SESSIONS", "8")]).unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_MAX_SESSIONS");
        assert!(
            error.expected.contains("from 0 (no sessions) to 7"),
            "{error}"
        );
        let c = config(&[
            ("MCP_BRIDGE_MAX_SESSIONS", "0"),
            ("MCP_BRIDGE_SESSION_IDLE_TTL", "90"),
        ])
        .unwrap();
        assert_eq!(
            (c.max_sessions, c.session_idle_ttl),
            (0, Duration::from_secs(90))
        );
        let error = config(&[("MCP_BRIDGE_SESSION_IDLE_TTL", "never")]).unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_SESSION_IDLE_TTL");
    }

    #[test]
    fn cross_field_rules() {
        let error = config(&[("MCP_BRIDGE_POOL_MIN_IDLE", "9")]).unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_POOL_MIN_IDLE");
        let error = config(&[("MCP_BRIDGE_TIMEOUT", "5m")]).unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_TIMEOUT");
        assert!(
            config(&[
                ("MCP_BRIDGE_TIMEOUT", "5m"),
                ("MCP_BRIDGE_MAX_TIMEOUT", "10m")
            ])
            .is_ok()
        );
    }

    #[test]
    fn never_root() {
        for root in [
            "0", "00", "0:0", "00:0", "000:1000", "1000:00", "1000:0", "+0",
        ] {
            let error = config(&[("MCP_BRIDGE_CONTAINER_USER", root)]).unwrap_err();
            assert_eq!(error.name, "MCP_BRIDGE_CONTAINER_USER", "{root}");
        }
        for invalid in ["root", "1000:", ":1000", "-1", "4294967296", "1:2:3"] {
            assert!(
                config(&[("MCP_BRIDGE_CONTAINER_USER", invalid)]).is_err(),
                "{invalid}"
            );
        }
        assert_eq!(
            config(&[("MCP_BRIDGE_CONTAINER_USER", "01000:01000")])
                .unwrap()
                .container_user,
            "1000:1000"
        );
        assert_eq!(
            config(&[("MCP_BRIDGE_CONTAINER_USER", "1000")])
                .unwrap()
                .container_user,
            "1000"
        );
        assert_eq!(
            config(&[("MCP_BRIDGE_CONTAINER_USER", "1000:1000")])
                .unwrap()
                .container_user,
            "1000:1000"
        );
    }

    #[test]
    fn metrics_address_and_log_format() {
        assert_eq!(
            config(&[("MCP_BRIDGE_METRICS_ADDR", "off")])
                .unwrap()
                .metrics_addr,
            None
        );
        let c = config(&[
            ("MCP_BRIDGE_METRICS_ADDR", "0.0.0.0:9000"),
            ("MCP_BRIDGE_LOG_FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9000".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(config(&[("MCP_BRIDGE_METRICS_ADDR", "9464")]).is_err());
    }

    #[test]
    fn the_audit_log_and_the_console() {
        let c = config(&[]).unwrap();
        assert_eq!(c.audit.bytes, 64 * MIB);
        assert_eq!(c.console_calls, 200);
        let c = config(&[
            ("MCP_BRIDGE_AUDIT_LOG", "/var/log/mcp/audit.jsonl"),
            ("MCP_BRIDGE_AUDIT_LOG_BYTES", "8m"),
            ("MCP_BRIDGE_CONSOLE_CALLS", "0"),
        ])
        .unwrap();
        assert_eq!(
            c.audit.path.as_deref(),
            Some(std::path::Path::new("/var/log/mcp/audit.jsonl"))
        );
        assert_eq!((c.audit.bytes, c.console_calls), (8 * MIB, 0));
        assert_eq!(
            config(&[("MCP_BRIDGE_AUDIT_LOG", "OFF")])
                .unwrap()
                .audit
                .path,
            None
        );
        let c = config(&[
            ("MCP_BRIDGE_SKILLS_DIR", "/srv/skills"),
            ("MCP_BRIDGE_SKILLS_BYTES", "2m"),
        ])
        .unwrap();
        assert_eq!(
            c.skills.dir.as_deref(),
            Some(std::path::Path::new("/srv/skills"))
        );
        assert_eq!(c.skills.bytes, 2 * MIB);
        assert_eq!(
            config(&[("MCP_BRIDGE_SKILLS_DIR", "off")])
                .unwrap()
                .skills
                .dir,
            None
        );
        for (name, value) in [
            ("MCP_BRIDGE_SKILLS_DIR", "skills"),
            ("MCP_BRIDGE_SKILLS_BYTES", "10k"),
            ("MCP_BRIDGE_AUDIT_LOG", "audit.jsonl"),
            ("MCP_BRIDGE_AUDIT_LOG_BYTES", "100k"),
            ("MCP_BRIDGE_CONSOLE_CALLS", "10001"),
        ] {
            let error = config(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name), "{error}");
        }
    }

    #[test]
    fn http_listener_settings() {
        let c = config(&[
            ("MCP_BRIDGE_HTTP_ADDR", "0.0.0.0:8080"),
            ("MCP_BRIDGE_HTTP_TOKENS_FILE", "/etc/mcp/tokens"),
            (
                "MCP_BRIDGE_HTTP_ALLOWED_HOSTS",
                "mcp.example.com, mcp.example.com:8443",
            ),
            (
                "MCP_BRIDGE_HTTP_ALLOWED_ORIGINS",
                "https://app.example.com:443",
            ),
            ("MCP_BRIDGE_MAX_CALLS_PER_CLIENT", "3"),
            ("MCP_BRIDGE_MAX_SESSIONS_PER_CLIENT", "1"),
        ])
        .unwrap();
        assert_eq!(c.max_sessions_per_client, Some(1));
        assert_eq!(Config::default().max_sessions_per_client, None);
        assert_eq!(c.http.addr, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(c.http.tokens_file, Some("/etc/mcp/tokens".into()));
        assert_eq!(
            c.http.allowed_hosts,
            ["mcp.example.com", "mcp.example.com:8443"]
        );
        assert_eq!(c.http.allowed_origins, ["https://app.example.com:443"]);
        assert_eq!(c.max_calls_per_client, 3);
        let defaults = Config::default();
        assert_eq!(defaults.http.addr, None, "stdio unless asked");
        assert!(
            defaults
                .http
                .allowed_hosts
                .contains(&"localhost".to_owned())
        );
        for (name, value) in [
            ("MCP_BRIDGE_HTTP_ADDR", "8080"),
            ("MCP_BRIDGE_HTTP_ALLOWED_ORIGINS", "app.example.com"),
            ("MCP_BRIDGE_HTTP_ALLOWED_HOSTS", "a,,b"),
            ("MCP_BRIDGE_MAX_CALLS_PER_CLIENT", "0"),
            ("MCP_BRIDGE_MAX_SESSIONS_PER_CLIENT", "two"),
            ("MCP_BRIDGE_HTTP_MAX_CONNECTIONS", "8"),
            ("MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS", "0"),
            ("MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT", "many"),
            ("MCP_BRIDGE_HTTP_RESOURCE_URL", "mcp.example.com"),
        ] {
            assert_eq!(config(&[(name, value)]).unwrap_err().name, name);
        }
    }

    #[test]
    fn a_clients_artifact_share_defaults_to_the_whole_store() {
        let c = config(&[("MCP_BRIDGE_ARTIFACT_BYTES", "1m")]).unwrap();
        assert_eq!(c.artifact_bytes_per_client, MIB);
        let c = config(&[("MCP_BRIDGE_ARTIFACT_BYTES_PER_CLIENT", "64k")]).unwrap();
        assert_eq!(
            (c.artifact_bytes, c.artifact_bytes_per_client),
            (256 * MIB, 64 << 10)
        );
        let refused = config(&[("MCP_BRIDGE_ARTIFACT_BYTES_PER_CLIENT", "lots")]).unwrap_err();
        assert_eq!(refused.name, "MCP_BRIDGE_ARTIFACT_BYTES_PER_CLIENT");
    }

    #[test]
    fn jwt_settings_are_all_or_nothing_and_asymmetric_only() {
        let issuer = ("MCP_BRIDGE_HTTP_JWT_ISSUER", "https://auth.example.com/");
        let jwks = (
            "MCP_BRIDGE_HTTP_JWT_JWKS_URL",
            "https://auth.example.com/jwks.json",
        );
        let resource = (
            "MCP_BRIDGE_HTTP_RESOURCE_URL",
            "https://mcp.example.com/mcp",
        );
        let jwt = config(&[issuer, jwks, resource]).unwrap().http.jwt.unwrap();
        assert_eq!(jwt.audience, "https://mcp.example.com/mcp");
        assert_eq!(jwt.principal_claim, "sub");
        assert_eq!(
            jwt.algorithms,
            [
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256
            ]
        );
        assert_eq!(Config::default().http.jwt, None);
        let refused = |vars: &[(&str, &str)]| config(vars).unwrap_err().name;
        assert_eq!(refused(&[issuer, resource]), "MCP_BRIDGE_HTTP_JWT_JWKS_URL");
        assert_eq!(refused(&[jwks, resource]), "MCP_BRIDGE_HTTP_JWT_ISSUER");
        assert_eq!(refused(&[issuer, jwks]), "MCP_BRIDGE_HTTP_JWT_AUDIENCE");
        let plain = (
            "MCP_BRIDGE_HTTP_JWT_JWKS_URL",
            "http://auth.example.com/jwks",
        );
        assert_eq!(refused(&[issuer, plain, resource]), plain.0);
        let lookalike = (
            "MCP_BRIDGE_HTTP_JWT_JWKS_URL",
            "http://127.0.0.1.evil.example/jwks",
        );
        assert_eq!(refused(&[issuer, lookalike, resource]), plain.0);
        let loopback = ("MCP_BRIDGE_HTTP_JWT_JWKS_URL", "http://127.0.0.1:9/jwks");
        assert!(config(&[issuer, loopback, resource]).is_ok());
        for algorithms in ["HS256", "ES256,none", "RS256,HS512", ""] {
            let vars = [
                issuer,
                jwks,
                resource,
                ("MCP_BRIDGE_HTTP_JWT_ALGORITHMS", algorithms),
            ];
            if algorithms.is_empty() {
                assert!(config(&vars).is_ok(), "empty means the default");
            } else {
                assert_eq!(refused(&vars), "MCP_BRIDGE_HTTP_JWT_ALGORITHMS");
            }
        }
    }

    #[test]
    fn log_level_is_a_level_or_valid_directives() {
        let filter = |value: &str| config(&[("MCP_BRIDGE_LOG_LEVEL", value)]).map(|c| c.log_filter);
        assert_eq!(filter("DEBUG").unwrap(), "warn,mcp_code_exec=debug");
        assert_eq!(filter("warn").unwrap(), "warn");
        assert_eq!(
            filter("info,rmcp=debug").unwrap(),
            "info,rmcp=debug",
            "directives pass as written"
        );
        for invalid in ["verbose", "infoo", "mcp_code_exec=loud", "warn,"] {
            let error = filter(invalid).unwrap_err();
            assert_eq!(error.name, "MCP_BRIDGE_LOG_LEVEL", "{invalid}");
            assert!(error.to_string().contains("one of off, error"), "{error}");
        }
    }

    #[test]
    fn gvisor_is_known_by_its_program_whatever_its_name() {
        assert!(is_gvisor("runsc", None));
        assert!(is_gvisor("runsc-debug", Some("/usr/local/bin/runsc-debug")));
        assert!(is_gvisor("gvisor", Some("/usr/bin/runsc")));
        assert!(is_gvisor("sandboxed", Some("/opt/gvisor/runsc")));
        assert!(!is_gvisor("runc", Some("runc")));
        assert!(!is_gvisor("crun", Some("/usr/bin/crun")));
        assert!(
            !is_gvisor("gvisor", None),
            "a name alone says so only as runsc"
        );
        // Before the engine is asked the name tells; after, the engine does.
        let named = config(&[("MCP_BRIDGE_OCI_RUNTIME", "gvisor")]).unwrap();
        assert!(!named.gvisor());
        let checked = Config {
            gvisor_runtime: Some(true),
            ..named
        };
        assert!(checked.gvisor());
    }

    #[test]
    fn the_light_spare_is_on_under_every_runtime_unless_turned_off() {
        let runsc = ("MCP_BRIDGE_OCI_RUNTIME", "runsc");
        let light = |vars: &[(&str, &str)]| config(vars).unwrap().light_spare;
        assert!(light(&[]));
        assert!(light(&[runsc]));
        assert!(!light(&[("MCP_BRIDGE_LIGHT_SPARE", "off")]));
        assert!(!light(&[runsc, ("MCP_BRIDGE_LIGHT_SPARE", "off")]));
        assert!(light(&[runsc, ("MCP_BRIDGE_LIGHT_SPARE", "auto")]));
        let error = config(&[("MCP_BRIDGE_LIGHT_SPARE", "yes")]).unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_LIGHT_SPARE");
        assert!(error.to_string().contains("on or off"), "{error}");
    }

    #[test]
    fn huge_pages_are_on_unless_turned_off() {
        assert!(config(&[]).unwrap().huge_pages);
        assert!(
            !config(&[("MCP_BRIDGE_HUGE_PAGES", "off")])
                .unwrap()
                .huge_pages
        );
        let error = config(&[("MCP_BRIDGE_HUGE_PAGES", "2m")]).unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_HUGE_PAGES");
    }

    #[test]
    fn values_keep_their_case_and_words_are_read_in_any_case() {
        let directives = "warn,mcp_code_exec[call{server=GitHub}]=debug";
        let c = config(&[
            ("MCP_BRIDGE_PRELOAD", "numpy, PIL.Image"),
            ("MCP_BRIDGE_OCI_RUNTIME", "Kata-Runtime"),
            ("MCP_BRIDGE_LOG_LEVEL", directives),
            ("MCP_BRIDGE_RUNTIME", "Docker"),
            ("MCP_BRIDGE_LOG_FORMAT", "JSON"),
            ("MCP_BRIDGE_PROJECT_SERVERS", "All"),
            ("MCP_BRIDGE_TIMEOUT", "45S"),
            ("MCP_BRIDGE_MEMORY", "1G"),
            ("MCP_BRIDGE_METRICS_ADDR", "OFF"),
        ])
        .unwrap();
        assert_eq!(c.preload, ["numpy", "PIL.Image"]);
        assert_eq!(c.oci_runtime.as_deref(), Some("Kata-Runtime"));
        assert_eq!(c.log_filter, directives);
        assert_eq!(c.engine, EngineKind::Docker);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.project_servers, ProjectServers::All);
        assert_eq!(c.default_timeout, Duration::from_secs(45));
        assert_eq!(c.memory_bytes, 1 << 30);
        assert_eq!(c.metrics_addr, None);
        let words = config(&[
            ("MCP_BRIDGE_PRELOAD", "None"),
            ("MCP_BRIDGE_LOG_LEVEL", "Trace"),
            ("MCP_BRIDGE_PROJECT_SERVERS", "OFF"),
        ])
        .unwrap();
        assert!(words.preload.is_empty());
        assert_eq!(words.log_filter, "warn,mcp_code_exec=trace");
        assert_eq!(words.project_servers, ProjectServers::Off);
    }

    #[test]
    fn project_servers_are_approved_ones_unless_told() {
        let project = |value: &str| {
            config(&[("MCP_BRIDGE_PROJECT_SERVERS", value)]).map(|c| c.project_servers)
        };
        assert_eq!(
            config(&[]).unwrap().project_servers,
            ProjectServers::Approved
        );
        assert_eq!(project("0"), Ok(ProjectServers::Off));
        assert_eq!(project("approved"), Ok(ProjectServers::Approved));
        assert_eq!(project("1"), Ok(ProjectServers::All));
        let error = project("yes").unwrap_err();
        assert_eq!(error.name, "MCP_BRIDGE_PROJECT_SERVERS");
        assert!(
            error.expected.contains("off (0), approved, all (1)"),
            "{error}"
        );
    }

    #[test]
    fn modes_and_cpus() {
        let c = config(&[
            ("MCP_BRIDGE_OUTPUT_MODE", "TOON"),
            ("MCP_BRIDGE_CPUS", "1.5"),
        ])
        .unwrap();
        assert_eq!(c.output_mode, OutputMode::Toon);
        assert_eq!(c.cpus, Some(1.5));
        for invalid in ["0", "0.001", "1e-12", "2000", "inf", "NaN"] {
            let error = config(&[("MCP_BRIDGE_CPUS", invalid)]).unwrap_err();
            assert!(error.to_string().contains("from 0.01 to 1024"), "{error}");
        }
        assert_eq!(
            config(&[("MCP_BRIDGE_CPUS", "0.01")]).unwrap().cpus,
            Some(0.01)
        );
    }
}

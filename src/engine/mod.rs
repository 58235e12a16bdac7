//! The container engine: Docker or Podman through the Docker-compatible API.
//!
//! Owns the bollard client and every engine request (connect and negotiate,
//! resolve the image, create + attach + start, remove, list by label), the
//! names and owner labels of the containers it creates, and the judgement of
//! which leftovers belong to instances that are gone. An engine that does not
//! answer is always reported as [`EngineError::Unreachable`] with its
//! address. It hands out containers as an id plus plain byte streams, so
//! nothing above this module imports bollard. It knows nothing of the agent
//! protocol or of pooling.

mod seccomp;
pub mod spec;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    EventsOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncWrite;

use crate::config::{DEFAULT_IMAGE, EngineKind};

/// How long engine requests (not attach streams) may take.
const REQUEST_TIMEOUT_SECS: u64 = 60;
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long [`Engine::oom_killed`] waits for each of a dead container's
/// events, and after its end for a late OOM (a failure path: bounded, short).
const OOM_EVENTS_WAIT: Duration = Duration::from_secs(2);
const OOM_AFTER_DIE: Duration = Duration::from_millis(100);
/// All of [`Engine::oom_killed`]'s reading, at most.
const OOM_QUESTION_WAIT: Duration = Duration::from_secs(5);
/// A removal the engine refuses with a 500 is tried again this many times,
/// this far apart, before it is an error (see [`Engine::try_remove`]).
const REMOVE_SETTLE_TRIES: u32 = 10;
const REMOVE_SETTLE_PAUSE: Duration = Duration::from_millis(100);
/// A list that caught a container between two states (see
/// [`listing_caught_a_passing_state`]) is tried again for this long in all,
/// the pause doubling from the first up to the longest: the two listings of
/// [`crate::pool::Pool::shutdown`] and its 2 s wait between them still fit
/// its 5 s.
pub(crate) const LIST_RETRY_WITHIN: Duration = Duration::from_secs(1);
const LIST_FIRST_PAUSE: Duration = Duration::from_millis(25);
const LIST_LONGEST_PAUSE: Duration = Duration::from_millis(400);

/// A chunk of a container's output, as the engine demultiplexed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

pub type OutputStream = Pin<Box<dyn Stream<Item = io::Result<OutputChunk>> + Send>>;
pub type InputSink = Pin<Box<dyn AsyncWrite + Send>>;

/// A started container, attached before start so no output is missed.
pub struct StartedContainer {
    pub id: String,
    /// The name it was created with (`mcp-code-exec-<owner>-<n>`).
    pub name: String,
    pub input: InputSink,
    pub output: OutputStream,
}

impl std::fmt::Debug for StartedContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedContainer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "no container engine answers ({tried}): {source}. Start Docker or Podman \
         (on Debian as root: scripts/setup-engine.sh), or point DOCKER_HOST at a running engine"
    )]
    Unreachable {
        tried: String,
        #[source]
        source: BollardError,
    },
    #[error("image {wanted} is not present and could not be pulled ({reason}); {fix}")]
    NoImage {
        wanted: String,
        reason: String,
        /// What the user can do about it.
        fix: &'static str,
    },
    /// The engine has no such image when a sandbox is created (removed since
    /// it was resolved, or never resolved): the pool retries by itself.
    #[error("image {image} is not present ({source}); {fix}")]
    ImageMissing {
        image: String,
        #[source]
        source: BollardError,
        fix: &'static str,
    },
    #[error("{action} failed: {source}")]
    Engine {
        action: &'static str,
        #[source]
        source: BollardError,
    },
    /// `MCP_BRIDGE_RUNTIME=podman` and no Podman socket exists: Docker's
    /// socket is never used in its place.
    #[error(
        "MCP_BRIDGE_RUNTIME=podman, but no Podman socket exists (tried {tried}). Start Podman's \
         API service (`podman system service --time=0 unix:///run/podman/podman.sock`), or \
         point DOCKER_HOST at it"
    )]
    NoPodmanSocket { tried: String },
    /// The strict seccomp profile sandboxes get on Podman was removed and
    /// cannot be written again: no sandbox starts less isolated.
    #[error(
        "the seccomp profile for sandboxes ({}) is gone and cannot be written again: {reason}",
        .path.display()
    )]
    Seccomp {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "MCP_BRIDGE_OCI_RUNTIME={wanted} is not a runtime of this engine; it has: {}",
        .available.join(", ")
    )]
    UnknownRuntime {
        wanted: String,
        available: Vec<String>,
    },
}

/// What `doctor` and the log say about the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineFacts {
    /// Product, version and API version.
    pub description: String,
    /// The OCI runtime containers get unless told otherwise (`runc`, `crun`, …).
    pub default_runtime: String,
    /// Every OCI runtime registered with the engine.
    pub runtimes: Vec<String>,
    /// Those of them that are gVisor's ([`crate::config::is_gvisor`]).
    pub gvisor_runtimes: Vec<String>,
    pub rootless: bool,
}

/// What one of a dead container's events says to [`Engine::oom_killed`].
#[derive(Debug, PartialEq, Eq)]
enum OomStep {
    /// The kernel's OOM killer killed in it.
    Oom,
    /// Removed: no event of it follows.
    Gone,
    /// Its processes ended (an OOM may still be reported just after).
    Ended,
    /// Its create, start, attach...
    Other,
}

/// Docker's and Podman's actions (Podman's compatible API names them as
/// Docker does, its own `died` too).
fn oom_step(action: Option<&str>) -> OomStep {
    match action {
        Some("oom") => OomStep::Oom,
        Some("destroy" | "remove") => OomStep::Gone,
        Some("die" | "died" | "cleanup") => OomStep::Ended,
        _ => OomStep::Other,
    }
}

/// Whether creating a container failed because its image is missing: the
/// one 404 of a create (Docker says "No such image", Podman "image not known").
fn image_is_missing(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// What the user can do about a missing `image`.
fn image_fix(image: &str) -> &'static str {
    if image == DEFAULT_IMAGE {
        "build it with scripts/setup-engine.sh (a Dockerfile where a registry answers, \
         Debian packages where none does)"
    } else {
        "pull or build it, or unset MCP_BRIDGE_IMAGE to use the project's image"
    }
}

/// Whether a list failed only because it caught a container between two
/// states, which listing again a moment later does not. Two such cases, both
/// Podman's (4.3 here):
/// - a container it had found was removed before it read it: it fails the
///   whole list with a 500 "does not exist in database: no such container"
///   (podman#10120, #11810);
/// - a container whose PID 1 exited on its own is `stopped` until its
///   cleanup removes it (a sandbox: auto-removed; ~100 ms here) or makes
///   it `exited`, and its Docker-compatible list reports that libpod state
///   as it is, which bollard's `ContainerSummary` cannot read ("unknown
///   variant `stopped`"; bollard has no looser list), failing the whole
///   list again.
fn listing_caught_a_passing_state(error: &BollardError) -> bool {
    match error {
        BollardError::DockerResponseServerError {
            status_code: 500,
            message,
        } => message.contains("no such container"),
        BollardError::JsonDataError { message, .. } => {
            message.contains("unknown variant `stopped`")
        }
        _ => false,
    }
}

/// Whether the engine answered at all: anything else (no socket, refused,
/// reset, timed out) means it is unreachable, not that the request was wrong.
fn engine_answered(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError { .. }
            | BollardError::DockerStreamError { .. }
            | BollardError::DockerContainerWaitError { .. }
            | BollardError::JsonDataError { .. }
            | BollardError::JsonSerdeError { .. }
    )
}

/// Identity of one engine client (one pool) of this server process, written
/// on each container it creates:
/// `host,boot=BOOT_ID,pidns=INODE/pid/start/instance`. A later process can
/// tell from it whether the owner of a leftover is still running, and
/// shutdown removes exactly its own containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    host: String,
    /// Where the pid and start time mean something: a pid is only the same
    /// process within one boot and one pid namespace (two instances with one
    /// hostname may run in different pid namespaces: a dev container with a
    /// fixed hostname beside the host).
    place: Place,
    pid: u32,
    /// Process start time in clock ticks since boot: guards against pid
    /// reuse. 0 when it could not be read (no `/proc`).
    start: u64,
    /// Tells apart several pools in one process.
    instance: u64,
}

/// The boot and the pid namespace a process runs in; `None` for what could
/// not be read (then no owner there can be checked).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    /// `/proc/sys/kernel/random/boot_id`.
    boot: Option<String>,
    /// The inode of `/proc/self/ns/pid`.
    pid_ns: Option<u64>,
}

impl Place {
    fn current() -> Self {
        Self {
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty() && !id.contains(['/', ','])),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .and_then(|link| {
                    // `pid:[4026531836]`
                    let link = link.to_string_lossy().into_owned();
                    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
                }),
        }
    }

    /// Both known and equal: pids of one are pids of the other.
    fn same_as(&self, other: &Self) -> bool {
        let known = self.boot.is_some() && self.pid_ns.is_some();
        known && self == other
    }
}

/// What this process can see of the processes of its own host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostView {
    /// `None` when the host's name cannot be read.
    host: Option<String>,
    place: Place,
    /// Whether `/proc` shows processes (not on macOS or Windows, where even
    /// Docker Desktop's engine runs in a VM we cannot look into).
    proc_visible: bool,
}

impl HostView {
    fn current() -> Self {
        Self {
            host: hostname(),
            place: Place::current(),
            proc_visible: process_start_ticks(std::process::id()).is_some(),
        }
    }
}

impl Owner {
    pub fn current() -> Self {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        Self {
            host: hostname().unwrap_or_else(|| "unknown".into()),
            place: Place::current(),
            pid,
            start: process_start_ticks(pid).unwrap_or(0),
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn label(&self) -> String {
        let unknown = || "?".to_owned();
        format!(
            "{},boot={},pidns={}/{}/{}/{}",
            self.host,
            self.place.boot.clone().unwrap_or_else(unknown),
            self.place
                .pid_ns
                .map_or_else(unknown, |inode| inode.to_string()),
            self.pid,
            self.start,
            self.instance
        )
    }

    /// A readable, engine-unique name for this owner's `n`th container:
    /// `mcp-code-exec-<host>-<pid>-<n>`, so `docker ps` says whose it is.
    fn container_name(&self, n: u64) -> String {
        let host: String = self
            .host
            .chars()
            .take(32)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("mcp-code-exec-{host}-{}-{n}", self.pid)
    }

    /// The owner a label names. A label of an older version (`host/…`, no
    /// boot or namespace) parses with an unknown place: it is never judged gone.
    fn parse(label: &str) -> Option<Self> {
        let mut parts = label.rsplitn(4, '/');
        let instance = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let mut host_and_place = parts.next()?.split(',');
        let host = host_and_place.next()?.to_owned();
        let mut place = Place {
            boot: None,
            pid_ns: None,
        };
        for field in host_and_place {
            match field.split_once('=') {
                Some(("boot", id)) if id != "?" => place.boot = Some(id.to_owned()),
                Some(("pidns", inode)) => place.pid_ns = inode.parse().ok(),
                _ => {}
            }
        }
        Some(Self {
            host,
            place,
            pid,
            start,
            instance,
        })
    }

    /// Whether the process this label names is known to be gone
    /// (`start_of(pid)`: that process's start time on this host, if it runs).
    /// An owner we cannot check is never judged gone: one on another host (a
    /// shared remote engine), in another boot or pid namespace (or one whose
    /// boot or namespace is unknown), one that recorded no start time, or any
    /// owner when this host shows no `/proc`.
    fn is_gone(&self, here: &HostView, start_of: impl Fn(u32) -> Option<u64>) -> bool {
        let checkable = here.proc_visible
            && self.start != 0
            && here.host.as_deref() == Some(&*self.host)
            && here.place.same_as(&self.place);
        checkable && start_of(self.pid) != Some(self.start)
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; fields after the parenthesised command name, which may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(19)?.parse().ok()
}

/// A connected, version-negotiated engine client.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    owner: Owner,
    /// Where we connected, for messages.
    endpoint: String,
    /// The security option every sandbox gets on top of its spec, if any
    /// (see [`SeccompProfile`]).
    seccomp: SeccompProfile,
}

/// The seccomp profile sandboxes run under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompProfile {
    /// The engine's default (Docker's refuses the kernel keyring).
    EngineDefault,
    /// Podman's default without the keyring syscalls, at this path.
    PodmanWithoutKeyring(std::path::PathBuf),
    /// Podman's default, which allows `keyctl`: the strict copy could not be
    /// made (a remote engine, or no profile file on this host); why.
    PodmanDefault(String),
}

impl std::fmt::Display for SeccompProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EngineDefault => write!(f, "the engine's default"),
            Self::PodmanWithoutKeyring(path) => write!(
                f,
                "Podman's default without the kernel keyring syscalls ({})",
                path.display()
            ),
            Self::PodmanDefault(why) => write!(
                f,
                "Podman's default, which lets sandboxes reach the kernel keyring \
                 their uid shares on the host (keyctl): {why}"
            ),
        }
    }
}

impl Engine {
    pub async fn connect(kind: EngineKind) -> Result<Self, EngineError> {
        let (endpoint, connected) = match kind {
            EngineKind::Docker => docker_endpoint(),
            EngineKind::Podman => podman_endpoint()?,
            EngineKind::Auto => {
                let (endpoint, connected) = docker_endpoint();
                let answered = match connected {
                    Ok(docker) => docker.ping().await.map(|_| docker),
                    Err(error) => Err(error),
                };
                match answered {
                    Ok(docker) => (endpoint, Ok(docker)),
                    // DOCKER_HOST set explicitly: do not second-guess it.
                    Err(error) if std::env::var_os("DOCKER_HOST").is_some() => {
                        (endpoint, Err(error))
                    }
                    Err(error) => podman_endpoint().unwrap_or((endpoint, Err(error))),
                }
            }
        };
        let unreachable = |source| EngineError::Unreachable {
            tried: endpoint.clone(),
            source,
        };
        let docker = connected
            .map_err(unreachable)?
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        let mut engine = Self {
            docker,
            owner: Owner::current(),
            endpoint,
            seccomp: SeccompProfile::EngineDefault,
        };
        if engine.describe().await?.starts_with("Podman") {
            engine.seccomp = podman_seccomp(&engine.endpoint);
            if let SeccompProfile::PodmanDefault(_) = &engine.seccomp {
                tracing::warn!(seccomp = %engine.seccomp, "sandboxes are less isolated on this engine");
            }
        }
        Ok(engine)
    }

    /// The seccomp profile sandboxes run under.
    pub fn seccomp(&self) -> &SeccompProfile {
        &self.seccomp
    }

    /// How a failed request is reported: [`EngineError::Unreachable`] (with
    /// the engine's address) when the engine did not answer at all.
    fn failed(&self, action: &'static str) -> impl FnOnce(BollardError) -> EngineError + '_ {
        move |source| {
            if engine_answered(&source) {
                EngineError::Engine { action, source }
            } else {
                EngineError::Unreachable {
                    tried: self.endpoint.clone(),
                    source,
                }
            }
        }
    }

    /// Whether the engine answers.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.docker
            .ping()
            .await
            .map(drop)
            .map_err(self.failed("pinging the engine"))
    }

    pub fn owner_label(&self) -> String {
        self.owner.label()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `name version (API x.y)` of the engine, for logs and `doctor`.
    pub async fn describe(&self) -> Result<String, EngineError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(self.failed("reading the engine version"))?;
        let product = version
            .components
            .as_ref()
            .and_then(|components| components.first())
            .map(|component| component.name.clone())
            .unwrap_or_else(|| "Engine".into());
        Ok(format!(
            "{product} {} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    /// The engine, its default OCI runtime, the runtimes it has, and
    /// whether it runs rootless.
    pub async fn facts(&self) -> Result<EngineFacts, EngineError> {
        let description = self.describe().await?;
        let info = self
            .docker
            .info()
            .await
            .map_err(self.failed("reading the engine's information"))?;
        let registered = info.runtimes.unwrap_or_default();
        let mut runtimes: Vec<String> = registered.keys().cloned().collect();
        runtimes.sort();
        let mut gvisor_runtimes: Vec<String> = registered
            .iter()
            .filter(|(name, runtime)| crate::config::is_gvisor(name, runtime.path.as_deref()))
            .map(|(name, _)| name.clone())
            .collect();
        gvisor_runtimes.sort();
        let rootless = info
            .security_options
            .unwrap_or_default()
            .iter()
            .any(|option| option.contains("rootless"));
        Ok(EngineFacts {
            description,
            default_runtime: info.default_runtime.unwrap_or_else(|| "runc".into()),
            runtimes,
            gvisor_runtimes,
            rootless,
        })
    }

    /// `wanted` (from `MCP_BRIDGE_OCI_RUNTIME`) is a runtime of this
    /// engine; `true` when it is gVisor's.
    pub async fn check_runtime(&self, wanted: &str) -> Result<bool, EngineError> {
        let facts = self.facts().await?;
        if facts.runtimes.iter().any(|runtime| runtime == wanted) {
            Ok(facts
                .gvisor_runtimes
                .iter()
                .any(|runtime| runtime == wanted))
        } else {
            Err(EngineError::UnknownRuntime {
                wanted: wanted.to_owned(),
                available: facts.runtimes,
            })
        }
    }

    /// The image to run: `wanted`, if present or pullable; never another one.
    pub async fn resolve_image(&self, wanted: &str) -> Result<String, EngineError> {
        if self.docker.inspect_image(wanted).await.is_ok() {
            return Ok(wanted.to_owned());
        }
        let reason = match tokio::time::timeout(PULL_TIMEOUT, self.pull(wanted)).await {
            Ok(Ok(())) => return Ok(wanted.to_owned()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {}s", PULL_TIMEOUT.as_secs()),
        };
        Err(EngineError::NoImage {
            wanted: wanted.to_owned(),
            reason,
            fix: image_fix(wanted),
        })
    }

    async fn pull(&self, image: &str) -> Result<(), BollardError> {
        tracing::info!(image, "pulling image");
        let (name, tag) = split_image_tag(image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(name)
            .tag(tag)
            .build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(info) = progress.try_next().await? {
            if let Some(error) = info.error_detail.and_then(|detail| detail.message) {
                return Err(BollardError::DockerStreamError { error });
            }
            if let (Some(status), Some(id)) = (info.status, info.id) {
                tracing::info!(image, layer = %id, %status, "pull progress");
            }
        }
        Ok(())
    }

    /// Creates, attaches and starts a container, named after its owner (see
    /// [`Owner`]). Attaching before starting means the agent's first frame
    /// cannot be missed.
    pub async fn start_container(
        &self,
        spec: &spec::ContainerSpec,
    ) -> Result<StartedContainer, EngineError> {
        // Numbered across the process: several pools may share its pid.
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let name = self
            .owner
            .container_name(CREATED.fetch_add(1, Ordering::Relaxed) + 1);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let mut body = spec.0.clone();
        if let (SeccompProfile::PodmanWithoutKeyring(path), Some(host)) =
            (&self.seccomp, body.host_config.as_mut())
        {
            // Podman reads the file at every create: one removed since
            // (a cleaned /tmp, a logout's runtime directory) is written again.
            let path = if path.exists() {
                path.clone()
            } else {
                seccomp::podman_profile().map_err(|error| EngineError::Seccomp {
                    path: path.clone(),
                    reason: error.to_string(),
                })?
            };
            host.security_opt
                .get_or_insert_with(Vec::new)
                .push(format!("seccomp={}", path.display()));
        }
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(source) if image_is_missing(&source) => {
                let image = spec.0.image.clone().unwrap_or_default();
                let fix = image_fix(&image);
                return Err(EngineError::ImageMissing { image, source, fix });
            }
            Err(error) => return Err(self.failed("creating the sandbox container")(error)),
        };
        let id = created.id;
        let attached = async {
            let options = AttachContainerOptionsBuilder::default()
                .stdin(true)
                .stdout(true)
                .stderr(true)
                .stream(true)
                .build();
            let attached = self
                .docker
                .attach_container(&id, Some(options))
                .await
                .map_err(self.failed("attaching to the sandbox container"))?;
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .map_err(self.failed("starting the sandbox container"))?;
            Ok(attached)
        }
        .await;
        let attached = match attached {
            Ok(attached) => attached,
            Err(error) => {
                // If this fails too, the container never started: it holds no
                // resources, and our shutdown (or the next launch) removes it.
                self.remove(&id).await;
                return Err(error);
            }
        };
        let output = attached.output.filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok(OutputChunk::Stdout(message))),
                Ok(LogOutput::StdErr { message }) => Some(Ok(OutputChunk::Stderr(message))),
                Ok(LogOutput::StdIn { .. } | LogOutput::Console { .. }) => None,
                Err(error) => Some(Err(io::Error::other(error))),
            }
        });
        Ok(StartedContainer {
            id,
            name,
            input: attached.input,
            output: Box::pin(output),
        })
    }

    /// Force-removes a container; one that is already gone (or being
    /// removed by the engine itself) is not an error.
    pub async fn try_remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let mut settling = REMOVE_SETTLE_TRIES;
        loop {
            match self
                .docker
                .remove_container(id, Some(options.clone()))
                .await
            {
                Ok(()) => return Ok(()),
                // 404: gone already; 409: the engine's auto-remove is under way.
                Err(BollardError::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => return Ok(()),
                // Podman: between its process's exit and the cleanup that
                // auto-removes it, a container is "stopped", and a forced
                // removal then fails with a 500 ("could not be stopped ...
                // container state improper"). It settles within milliseconds.
                Err(BollardError::DockerResponseServerError {
                    status_code: 500, ..
                }) if settling > 0 => {
                    settling -= 1;
                    tokio::time::sleep(REMOVE_SETTLE_PAUSE).await;
                }
                Err(error) => return Err(self.failed("removing a sandbox container")(error)),
            }
        }
    }

    /// [`Engine::try_remove`] for callers that need not know: a failure is
    /// logged.
    pub async fn remove(&self, id: &str) {
        if let Err(error) = self.try_remove(id).await {
            tracing::warn!(container = id, %error, "could not remove sandbox container");
        }
    }

    /// Removes containers concurrently; failures are logged.
    async fn remove_each(&self, ids: &[String]) {
        futures_util::future::join_all(ids.iter().map(|id| self.remove(id))).await;
    }

    /// Whether the engine saw the container run out of memory, asked once
    /// its agent has gone: from the container's events since `since` (its
    /// start), until its end (`die`) or the container's removal. Not from
    /// an inspection: that races with the engine's own bookkeeping (the
    /// container may still be running, or already removed with
    /// `auto_remove`, when the attach stream ends).
    pub async fn oom_killed(&self, id: &str, since: SystemTime) -> bool {
        let since = since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs().saturating_sub(1));
        // No `event` filter: Podman matches it against its own names
        // (`died`), so it would pass nothing; the actions are sorted here.
        let filters = HashMap::from([("type", vec!["container"]), ("container", vec![id])]);
        let options = EventsOptionsBuilder::default()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let mut events = self.docker.events(Some(options));
        let deadline = tokio::time::Instant::now() + OOM_QUESTION_WAIT;
        let mut ended = false;
        loop {
            // After its end, a moment for an OOM the engine reports late.
            let wait = if ended {
                OOM_AFTER_DIE
            } else {
                OOM_EVENTS_WAIT
            };
            let until = deadline.min(tokio::time::Instant::now() + wait);
            match tokio::time::timeout_at(until, events.next()).await {
                Ok(Some(Ok(event))) => match oom_step(event.action.as_deref()) {
                    OomStep::Oom => return true,
                    OomStep::Gone => return false,
                    OomStep::Ended => ended = true,
                    OomStep::Other => {}
                },
                Ok(Some(Err(error))) => {
                    tracing::warn!(
                        container = id,
                        %error,
                        "the engine's events failed: an OOM kill, if any, is reported as the agent's death"
                    );
                    return false;
                }
                Ok(None) | Err(_) => return false,
            }
        }
    }

    /// Ids and owner labels of every container this program created, on any instance.
    async fn list_managed(&self) -> Result<Vec<(String, String)>, EngineError> {
        let filters = HashMap::from([("label", vec![spec::MANAGED_LABEL])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let give_up = tokio::time::Instant::now() + LIST_RETRY_WITHIN;
        let mut pause = LIST_FIRST_PAUSE;
        let containers = loop {
            match self.docker.list_containers(Some(options.clone())).await {
                Ok(containers) => break containers,
                Err(error)
                    if listing_caught_a_passing_state(&error)
                        && tokio::time::Instant::now() + pause < give_up =>
                {
                    tracing::debug!(%error, "the listing caught a container between two states; listing again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LIST_LONGEST_PAUSE);
                }
                Err(error) => return Err(self.failed("listing sandbox containers")(error)),
            }
        };
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let owner = container.labels?.remove(spec::OWNER_LABEL)?;
                Some((container.id?, owner))
            })
            .collect())
    }

    /// Removes the containers of instances known to be no longer running.
    pub async fn remove_orphans(&self) -> Result<usize, EngineError> {
        let here = HostView::current();
        let orphans: Vec<String> = self
            .list_managed()
            .await?
            .into_iter()
            .filter(|(_, owner)| {
                Owner::parse(owner).is_some_and(|owner| owner.is_gone(&here, process_start_ticks))
            })
            .map(|(id, _)| id)
            .collect();
        self.remove_each(&orphans).await;
        Ok(orphans.len())
    }

    /// Ids of every container of this instance the engine has, in any state
    /// (what `docker ps -a --filter label=…` shows).
    pub async fn list_owned(&self) -> Result<Vec<String>, EngineError> {
        let mine = self.owner.label();
        Ok(self
            .list_managed()
            .await?
            .into_iter()
            .filter(|(_, owner)| *owner == mine)
            .map(|(id, _)| id)
            .collect())
    }

    /// Removes every container of this instance, concurrently.
    pub async fn remove_all_owned(&self) -> Result<usize, EngineError> {
        let owned = self.list_owned().await?;
        self.remove_each(&owned).await;
        Ok(owned.len())
    }
}

fn docker_endpoint() -> (String, Result<Docker, BollardError>) {
    match std::env::var("DOCKER_HOST") {
        Ok(host) => (host.clone(), Docker::connect_with_host(&host)),
        Err(_) => (
            "unix:///var/run/docker.sock".into(),
            Docker::connect_with_unix(
                "/var/run/docker.sock",
                REQUEST_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            ),
        ),
    }
}

/// Where Podman's API socket lives: rootless under the user's runtime
/// directory, rootful under /run.
fn podman_sockets() -> Vec<std::path::PathBuf> {
    let mut candidates = Vec::new();
    if let Some(runtime_dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        candidates.push(std::path::Path::new(&runtime_dir).join("podman/podman.sock"));
    }
    candidates.push("/run/podman/podman.sock".into());
    candidates.push("/var/run/podman/podman.sock".into());
    candidates
}

/// The first candidate that exists.
fn first_existing(
    candidates: &[std::path::PathBuf],
    exists: impl Fn(&std::path::Path) -> bool,
) -> Option<&std::path::PathBuf> {
    candidates.iter().find(|path| exists(path))
}

/// Podman only: `DOCKER_HOST` when set, else the first Podman socket that
/// exists, else an error naming the paths tried (never Docker's socket,
/// which the client library's Podman defaults fall back to).
fn podman_endpoint() -> Result<(String, Result<Docker, BollardError>), EngineError> {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return Ok(docker_endpoint());
    }
    let candidates = podman_sockets();
    let Some(socket) = first_existing(&candidates, std::path::Path::exists) else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(EngineError::NoPodmanSocket {
            tried: tried.join(", "),
        });
    };
    let path = socket.display().to_string();
    Ok((
        format!("unix://{path}"),
        Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION),
    ))
}

/// Podman's profile without the keyring, when Podman runs on this host (its
/// API reads a profile from a path only); else its default, and why.
fn podman_seccomp(endpoint: &str) -> SeccompProfile {
    if !endpoint.starts_with("unix://") {
        return SeccompProfile::PodmanDefault(format!(
            "the engine at {endpoint} is not on this host"
        ));
    }
    match seccomp::podman_profile() {
        Ok(path) => SeccompProfile::PodmanWithoutKeyring(path),
        Err(error) => SeccompProfile::PodmanDefault(error.to_string()),
    }
}

/// `name:tag` split at the last colon that is not part of a registry port.
fn split_image_tag(image: &str) -> (&str, &str) {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_containers_events_are_sorted_for_the_oom_question() {
        assert_eq!(oom_step(Some("oom")), OomStep::Oom);
        for ended in ["die", "died", "cleanup"] {
            assert_eq!(oom_step(Some(ended)), OomStep::Ended, "{ended}");
        }
        for gone in ["destroy", "remove"] {
            assert_eq!(oom_step(Some(gone)), OomStep::Gone, "{gone}");
        }
        for other in ["create", "start", "attach", "kill", "exec_create: sh", ""] {
            assert_eq!(oom_step(Some(other)), OomStep::Other, "{other}");
        }
        assert_eq!(oom_step(None), OomStep::Other);
    }

    #[test]
    fn podman_means_a_podman_socket_never_dockers() {
        let candidates = vec![
            "/run/user/1000/podman/podman.sock".into(),
            "/run/podman/podman.sock".into(),
        ];
        let rootful = std::path::PathBuf::from("/run/podman/podman.sock");
        assert_eq!(
            first_existing(&candidates, |p| p == rootful.as_path()),
            Some(&rootful)
        );
        assert_eq!(first_existing(&candidates, |_| false), None);
        assert!(
            podman_sockets()
                .iter()
                .all(|path| !path.ends_with("docker.sock"))
        );
    }

    #[test]
    fn only_a_404_on_create_means_the_image_is_missing() {
        let response = |status_code| BollardError::DockerResponseServerError {
            status_code,
            message: "No such image: x:1".into(),
        };
        assert!(image_is_missing(&response(404)));
        assert!(!image_is_missing(&response(409)), "a name conflict");
        assert!(!image_is_missing(&response(500)));
        let timeout = BollardError::RequestTimeoutError;
        assert!(!image_is_missing(&timeout));
        assert!(!engine_answered(&timeout), "no answer: unreachable");
    }

    #[test]
    fn only_a_container_caught_between_two_states_makes_a_list_try_again() {
        let response = |status_code, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.into(),
        };
        let lost = "container 5224255e does not exist in database: no such container";
        assert!(listing_caught_a_passing_state(&response(500, lost)));
        assert!(!listing_caught_a_passing_state(&response(
            500,
            "database is locked"
        )));
        assert!(
            !listing_caught_a_passing_state(&response(404, lost)),
            "not a list's answer"
        );
        // What CI's Podman lane failed a list with (2026-12-04).
        let stopped = BollardError::JsonDataError {
            message: "unknown variant `stopped`, expected one of ``, `created`, `running`, \
                      `paused`, `restarting`, `exited`, `removing`, `dead`, `stopping` at line 1 \
                      column 37885"
                .into(),
            column: 37885,
        };
        assert!(listing_caught_a_passing_state(&stopped));
        let unreadable = BollardError::JsonDataError {
            message: "invalid type: string \"x\", expected u64 at line 1 column 9".into(),
            column: 9,
        };
        assert!(
            !listing_caught_a_passing_state(&unreadable),
            "not a passing state"
        );
        assert!(!listing_caught_a_passing_state(
            &BollardError::RequestTimeoutError
        ));
    }

    #[test]
    fn image_tags() {
        assert_eq!(split_image_tag("python:3.12-slim"), ("python", "3.12-slim"));
        assert_eq!(split_image_tag("python"), ("python", "latest"));
        assert_eq!(
            split_image_tag("registry:5000/team/py"),
            ("registry:5000/team/py", "latest")
        );
        assert_eq!(
            split_image_tag("registry:5000/team/py:3"),
            ("registry:5000/team/py", "3")
        );
    }

    #[test]
    fn owner_labels_round_trip_and_judge_liveness() {
        let me = Owner::current();
        assert!(me.start > 0, "reads its own start time from /proc");
        assert!(
            me.place.boot.is_some() && me.place.pid_ns.is_some(),
            "reads its boot id and pid namespace from /proc: {me:?}"
        );
        let parsed = Owner::parse(&me.label()).unwrap();
        assert_eq!(parsed, me);
        let here = HostView::current();
        assert!(here.proc_visible);
        assert_eq!(here.place, me.place);
        assert!(
            !parsed.is_gone(&here, process_start_ticks),
            "this process is running"
        );
        let reused_pid = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(
            reused_pid.is_gone(&here, process_start_ticks),
            "same pid, other start time: a different process"
        );
        let elsewhere = Owner {
            host: "another-host".into(),
            place: me.place.clone(),
            pid: u32::MAX,
            start: 1,
            instance: 0,
        };
        assert_ne!(
            Owner::current().label(),
            me.label(),
            "each pool has its own label"
        );
        assert!(
            !elsewhere.is_gone(&here, process_start_ticks),
            "owners on other hosts are never judged"
        );
        assert_eq!(Owner::parse("garbage"), None);
        let older_version = Owner::parse(&format!("{}/{}/{}/0", me.host, me.pid, me.start + 1));
        assert!(
            !older_version.unwrap().is_gone(&here, process_start_ticks),
            "a label without boot and namespace cannot be checked"
        );
    }

    #[test]
    fn an_owner_that_cannot_be_checked_is_never_judged_gone() {
        let place = Place {
            boot: Some("b1".into()),
            pid_ns: Some(4026531836),
        };
        let owner = Owner {
            host: "unknown".into(),
            place: place.clone(),
            pid: 4242,
            start: 17,
            instance: 0,
        };
        let no_process = |_| None;
        // Docker Desktop on macOS: no /proc, so no host name and no processes
        // to look at; another live instance on the same engine looks just the same.
        let no_proc = HostView {
            host: None,
            place: place.clone(),
            proc_visible: false,
        };
        assert!(!owner.is_gone(&no_proc, no_process));
        let named_but_blind = HostView {
            host: Some("unknown".into()),
            place: place.clone(),
            proc_visible: false,
        };
        assert!(!owner.is_gone(&named_but_blind, no_process));
        // An owner that could not read its own start time cannot be told from a pid reuse.
        let here = HostView {
            host: Some("h".into()),
            place: place.clone(),
            proc_visible: true,
        };
        let startless = Owner {
            host: "h".into(),
            start: 0,
            ..owner.clone()
        };
        assert!(!startless.is_gone(&here, no_process));
        let checkable = Owner {
            host: "h".into(),
            ..owner
        };
        assert!(
            checkable.is_gone(&here, no_process),
            "no such process: gone"
        );
        assert!(!checkable.is_gone(&here, |_| Some(17)), "same start: alive");
        // The same host name in another pid namespace or another boot: its
        // pid 4242 is not our pid 4242 (a live instance in a dev container).
        for (boot, pid_ns) in [
            (Some("b1"), Some(4026532180)),
            (Some("b2"), Some(4026531836)),
            (None, Some(4026531836)),
            (Some("b1"), None),
        ] {
            let elsewhere = Owner {
                place: Place {
                    boot: boot.map(str::to_owned),
                    pid_ns,
                },
                ..checkable.clone()
            };
            assert!(!elsewhere.is_gone(&here, no_process), "{elsewhere:?}");
        }
        let lost_here = HostView {
            place: Place {
                boot: None,
                pid_ns: None,
            },
            ..here
        };
        assert!(
            !checkable.is_gone(&lost_here, no_process),
            "our own boot and namespace unknown: nobody can be checked"
        );
    }

    #[test]
    fn container_names_say_whose_they_are() {
        let owner = Owner {
            host: "build box_7".into(),
            place: Place::current(),
            pid: 4242,
            start: 17,
            instance: 3,
        };
        assert_eq!(owner.container_name(5), "mcp-code-exec-build-box-7-4242-5");
    }
}

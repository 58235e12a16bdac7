//! The service: the container engine, the sandbox image, the warm pool and
//! the user's MCP servers, assembled from a [`Config`] in the background so
//! the MCP handshake never waits for an engine or a warm-up.
//!
//! Owns startup ordering and its failures (connecting to the engine,
//! resolving the image, removing orphans of dead instances, starting the
//! pool), the sessions' table, each principal's call quota, readiness, and
//! shutdown. A failed start is not cached: the next
//! call tries again, so an engine started after the server is picked up.
//! It does not run calls (that is [`crate::call`]) and serves no protocol.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::artifacts::ArtifactStore;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::console::Console;
use crate::egress::{Egress, SiteLimits};
use crate::engine::{Engine, EngineError};
use crate::metrics;
use crate::packages::PackageIndex;
use crate::pool::{Pool, PoolStatus, RecycleReason, SHUTDOWN_TIMEOUT, StartCause, StartError};
use crate::principals::CallQuota;
use crate::proxy::{CallOutcome, Proxy};
use crate::report::RunStatus;
use crate::sessions::{EndReason, Sessions};
use crate::skills::SkillStore;

pub struct Service {
    config: Config,
    /// Files runs handed back, served as `artifact://` resources.
    artifacts: ArtifactStore,
    pool: OnceCell<Pool>,
    proxy: Arc<Proxy>,
    /// Named interpreters kept between calls, each on a sandbox of the pool.
    sessions: Sessions,
    /// The network runs may reach, by the operator's policy.
    egress: Egress,
    /// The host's package index (served to runs through `egress`).
    packages: PackageIndex,
    /// Each principal's calls in flight (`MCP_BRIDGE_MAX_CALLS_PER_CLIENT`).
    calls: CallQuota,
    /// Every call, one JSON line each (`MCP_BRIDGE_AUDIT_LOG`).
    audit: Arc<AuditLog>,
    /// The recent calls, for the console (`MCP_BRIDGE_CONSOLE_CALLS`).
    console: Console,
    /// Runs' saved skills (`MCP_BRIDGE_SKILLS_DIR`).
    skills: Arc<SkillStore>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("started", &self.pool.initialized())
            .field("servers", &self.proxy.names())
            .finish()
    }
}

/// Why a call would not be served at once (`/readyz`).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the sandbox service has not started (no engine yet, or still connecting)")]
    NotStarted,
    /// The engine does not answer: the error names its address.
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "no warm sandbox idle ({} busy, {} starting, {} resetting){}",
        .status.busy, .status.starting, .status.resetting,
        .last_error.as_deref()
            .map(|e| format!("; sandboxes fail to start: {e}"))
            .unwrap_or_default()
    )]
    NoIdleSandbox {
        status: PoolStatus,
        /// Why sandboxes fail to start, if they do.
        last_error: Option<Arc<StartError>>,
    },
}

impl NotReady {
    /// What is missing, as a closed set: `not_started`, `no_idle_sandbox`
    /// (all busy or warming up), or a [`StartCause`] (`engine_unreachable`,
    /// `image_missing`, `engine_refused`, `agent_failed`).
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Engine(error) => StartCause::of_engine(error).as_str(),
            Self::NoIdleSandbox {
                last_error: Some(error),
                ..
            } => error.cause().as_str(),
            Self::NoIdleSandbox {
                last_error: None, ..
            } => "no_idle_sandbox",
        }
    }
}

impl Service {
    /// A service whose sandboxes can call no MCP servers.
    pub fn new(config: Config) -> Self {
        Self::with_proxy(config, Arc::new(Proxy::new(Vec::new())))
    }

    pub fn with_proxy(config: Config, proxy: Arc<Proxy>) -> Self {
        metrics::start_at_zero(metrics::Series {
            statuses: &RunStatus::ALL.map(RunStatus::as_str),
            recycle_reasons: &RecycleReason::ALL.map(RecycleReason::as_str),
            sandbox_states: &PoolStatus::STATES,
            call_outcomes: &CallOutcome::ALL.map(CallOutcome::as_str),
            session_end_reasons: &EndReason::ALL.map(EndReason::as_str),
            egress_outcomes: &crate::egress::Outcome::ALL.map(crate::egress::Outcome::as_str),
            servers: proxy.names(),
        });
        let packages = PackageIndex::new(config.packages.clone(), config.egress.ca_bundle.clone());
        let site_limits = SiteLimits {
            requests: config.packages.run_requests,
            bytes: config.packages.run_bytes,
        };
        Self {
            artifacts: ArtifactStore::new(config.artifact_ttl, config.artifact_bytes)
                .with_per_owner(config.artifact_bytes_per_client),
            sessions: Sessions::new(config.max_sessions, config.session_idle_ttl)
                .with_per_principal(
                    config
                        .max_sessions_per_client
                        .unwrap_or(config.max_sessions),
                ),
            egress: Egress::new(config.egress.clone())
                .with_site(Arc::new(packages.clone()), site_limits),
            packages,
            calls: CallQuota::new(config.max_calls_per_client),
            audit: Arc::new(AuditLog::open(&config.audit)),
            console: Console::new(config.console_calls),
            skills: Arc::new(SkillStore::open(&config.skills)),
            config,
            pool: OnceCell::new(),
            proxy,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn console(&self) -> &Console {
        &self.console
    }

    pub fn skills(&self) -> &Arc<SkillStore> {
        &self.skills
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    pub fn packages(&self) -> &PackageIndex {
        &self.packages
    }

    pub fn calls(&self) -> &CallQuota {
        &self.calls
    }

    /// The pool, starting the service on first use (concurrent callers share one start).
    pub async fn pool(&self) -> Result<&Pool, EngineError> {
        self.pool
            .get_or_try_init(|| async {
                let engine = Engine::connect(self.config.engine).await?;
                let description = engine.describe().await.unwrap_or_else(|e| e.to_string());
                let checked;
                let config = match &self.config.oci_runtime {
                    Some(runtime) => {
                        let gvisor = engine.check_runtime(runtime).await?;
                        checked = Config {
                            gvisor_runtime: Some(gvisor),
                            ..self.config.clone()
                        };
                        &checked
                    }
                    None => &self.config,
                };
                let image = engine.resolve_image(&config.image).await?;
                tracing::info!(
                    endpoint = engine.endpoint(),
                    engine = %description,
                    %image,
                    "container engine ready"
                );
                let cleanup = engine.clone();
                tokio::spawn(async move {
                    match cleanup.remove_orphans().await {
                        Ok(0) => {}
                        Ok(count) => tracing::info!(
                            count,
                            "removed containers left by instances no longer running"
                        ),
                        Err(error) => {
                            tracing::warn!(%error, "could not look for leftover containers")
                        }
                    }
                });
                Ok(Pool::start(engine, config, &image))
            })
            .await
    }

    /// The pool, if the service has started (no waiting, no start attempt).
    pub fn started_pool(&self) -> Option<&Pool> {
        self.pool.get()
    }

    /// Ready to serve a call at once: the engine answers and a warm sandbox
    /// is idle. `Err` says what is missing.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        let pool = self.pool.get().ok_or(NotReady::NotStarted)?;
        pool.engine().ping().await?;
        let status = pool.status();
        if status.idle == 0 {
            return Err(NotReady::NoIdleSandbox {
                status,
                last_error: pool.last_start_error(),
            });
        }
        Ok(())
    }

    /// Removes every container of this instance (within the pool's
    /// [`SHUTDOWN_TIMEOUT`]), ends the sessions and stops the MCP servers it
    /// started, all at once. The containers go first, by label, those of
    /// runs and sessions in flight included, so those calls end at once (as
    /// a dead sandbox) rather than being waited for.
    pub async fn shutdown(&self) {
        let containers = async {
            if let Some(pool) = self.pool.get() {
                pool.shutdown().await;
            }
        };
        // A session in a call ends when the call does, which its container's
        // removal brings about.
        let sessions = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.sessions.shutdown());
        let _ = tokio::join!(containers, sessions, self.proxy.shutdown());
        // The lines of the calls that ended are written (at most 1 s more).
        let audit = self.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.close(Duration::from_secs(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxFailure;

    #[test]
    fn readiness_names_what_is_missing() {
        let no_idle = |last_error: Option<StartError>| NotReady::NoIdleSandbox {
            status: PoolStatus::default(),
            last_error: last_error.map(Arc::new),
        };
        assert_eq!(NotReady::NotStarted.cause(), "not_started");
        assert_eq!(no_idle(None).cause(), "no_idle_sandbox");
        let image = EngineError::NoImage {
            wanted: "py:1".into(),
            reason: "pull refused".into(),
            fix: "build it",
        };
        let image = no_idle(Some(image.into()));
        assert_eq!(image.cause(), "image_missing");
        let expected = "; sandboxes fail to start: image py:1 is not present and could not be \
                        pulled (pull refused); build it";
        assert!(image.to_string().ends_with(expected), "{image}");
        let agent = SandboxFailure::Timeout(Duration::from_secs(60));
        assert_eq!(no_idle(Some(agent.into())).cause(), "agent_failed");
    }
}

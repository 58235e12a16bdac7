//! Assembles the execution stack (engine, image, pool, executor) from a
//! [`Config`], in the background, so the MCP handshake never waits for an
//! engine or a warm-up.
//!
//! Owns startup ordering and its failures: connecting to the engine,
//! resolving the image, removing orphans of dead instances, starting the
//! pool; and shutdown. A failed start is not cached: the next call tries
//! again, so an engine started after the server is picked up. Every call is
//! observed once (log line and metrics), cancelled ones included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::OnceCell;
use tracing::Instrument;

use crate::config::Config;
use crate::engine::Engine;
use crate::execution::{Executor, Limits, RunRequest};
use crate::metrics;
use crate::pool::Pool;
use crate::proxy::Proxy;
use crate::report::{RunReport, RunStatus};
use crate::sandbox::RunProxy;

pub struct Backend {
    config: Config,
    limits: Limits,
    executor: OnceCell<Executor>,
    proxy: Arc<Proxy>,
}

impl Backend {
    /// A backend whose sandboxes can call no MCP servers.
    pub fn new(config: Config) -> Self {
        Self::with_proxy(config, Arc::new(Proxy::new(Vec::new())))
    }

    pub fn with_proxy(config: Config, proxy: Arc<Proxy>) -> Self {
        metrics::register_servers(proxy.names());
        Self {
            limits: Limits::from(&config),
            config,
            executor: OnceCell::new(),
            proxy,
        }
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The executor, starting the stack on first use (concurrent callers share one start).
    pub async fn executor(&self) -> Result<&Executor, String> {
        self.executor
            .get_or_try_init(|| async {
                let config = &self.config;
                let engine = Engine::connect(config.engine).await.map_err(|e| e.to_string())?;
                let description = engine.describe().await.unwrap_or_else(|e| e.to_string());
                let image = engine.resolve_image(&config.image).await.map_err(|e| e.to_string())?;
                tracing::info!(endpoint = engine.endpoint(), engine = %description, %image, "container engine ready");
                let cleanup = engine.clone();
                tokio::spawn(async move {
                    match cleanup.remove_orphans().await {
                        Ok(0) => {}
                        Ok(count) => tracing::info!(count, "removed containers left by instances no longer running"),
                        Err(error) => tracing::warn!(%error, "could not look for leftover containers"),
                    }
                });
                let pool = Pool::start(engine, config, &image);
                Ok(Executor::new(pool, self.limits.clone()))
            })
            .await
    }

    /// The executor, if the stack has started (no waiting, no start attempt).
    pub fn started_executor(&self) -> Option<&Executor> {
        self.executor.get()
    }

    /// Ready to serve a call at once: the engine answers and a warm sandbox
    /// is idle. `Err` says what is missing.
    pub async fn readiness(&self) -> Result<(), String> {
        let Some(executor) = self.executor.get() else {
            return Err(
                "the sandbox backend has not started (no engine yet, or still connecting)".into(),
            );
        };
        let pool = executor.pool();
        // Unreachable: the error names the engine's address.
        pool.engine()
            .ping()
            .await
            .map_err(|error| error.to_string())?;
        let status = pool.status();
        if status.idle == 0 {
            let why = pool
                .last_start_error()
                .map(|e| format!("; sandboxes fail to start: {e}"))
                .unwrap_or_default();
            return Err(format!(
                "no warm sandbox idle ({} busy, {} starting, {} resetting){why}",
                status.busy, status.starting, status.resetting
            ));
        }
        Ok(())
    }

    /// Validates and runs a request. Never fails: a bad request, or a stack
    /// that cannot start, is a report like any other. Dropping the future
    /// mid-run (client cancellation) destroys the sandbox, and is logged and
    /// counted as `cancelled`. One span per run carries its id, servers,
    /// status and duration.
    pub async fn execute(&self, request: &RunRequest) -> RunReport {
        let observer = RunObserver::new(request);
        let report = self
            .execute_unobserved(request)
            .instrument(observer.span.clone())
            .await;
        observer.finished(&report);
        report
    }

    async fn execute_unobserved(&self, request: &RunRequest) -> RunReport {
        let timeout = match self.limits.validate(request, self.proxy.names()) {
            Ok(timeout) => timeout,
            Err(message) => return RunReport::rejected(RunStatus::ValidationError, message),
        };
        let executor = match self.executor().await {
            Ok(executor) => executor,
            Err(error) => {
                return RunReport::rejected(
                    RunStatus::Error,
                    format!("the sandbox backend is unavailable: {error}"),
                );
            }
        };
        let prepared = match self.proxy.prepare(&request.servers).await {
            Ok(prepared) => prepared,
            Err(error) => return RunReport::rejected(RunStatus::Error, error.to_string()),
        };
        let proxy = prepared.as_ref().map(|prepared| RunProxy {
            metadata: &prepared.metadata,
            calls: &prepared.calls,
        });
        executor.run(&request.code, timeout, proxy).await
    }

    /// Removes every container of this instance (bounded by the pool's
    /// shutdown timeout) and stops the MCP servers it started.
    pub async fn shutdown(&self) {
        self.proxy.shutdown().await;
        if let Some(executor) = self.executor.get() {
            executor.pool().shutdown().await;
        }
    }
}

/// Observes one call exactly once: [`RunObserver::finished`] with its report,
/// or, when the call's future is dropped first (the client cancelled), as
/// `cancelled` from `Drop`.
struct RunObserver {
    span: tracing::Span,
    started: Instant,
    finished: bool,
}

impl RunObserver {
    fn new(request: &RunRequest) -> Self {
        static RUN_IDS: AtomicU64 = AtomicU64::new(1);
        let span = tracing::info_span!(
            "run",
            id = RUN_IDS.fetch_add(1, Ordering::Relaxed),
            servers = ?request.servers,
            status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        Self {
            span,
            started: Instant::now(),
            finished: false,
        }
    }

    fn finished(mut self, report: &RunReport) {
        self.finished = true;
        self.span.record("status", report.status.as_str());
        self.span.record("duration_ms", report.duration_ms);
        self.span.in_scope(|| match &report.error {
            None => tracing::info!("run finished"),
            Some(error) => tracing::info!(%error, "run finished"),
        });
        metrics::observe_run(report);
    }
}

impl Drop for RunObserver {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let took = self.started.elapsed();
        self.span.record("status", metrics::CANCELLED);
        self.span.record("duration_ms", took.as_secs_f64() * 1e3);
        self.span
            .in_scope(|| tracing::info!("run cancelled by the client"));
        metrics::observe_cancelled_run(took);
    }
}

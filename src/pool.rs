//! The warm pool: sandboxes started ahead of need, leased one run at a time.
//!
//! Owns the sandbox lifecycle around runs: warm-up at launch, keeping
//! `min_idle` ready, leasing (a channel receive on the warm path, no engine
//! request), reset or recycle after each run *off the caller's path*, refill,
//! age sweeps, and removal of every container at shutdown. It does not look
//! inside runs (that is [`crate::execution`]) nor speak the agent protocol
//! (that is [`crate::sandbox`]).
//!
//! Sizing: every sandbox, whether starting, idle, busy, resetting or being
//! removed, holds one permit of a `max`-sized semaphore, so the number of
//! containers never exceeds `MCP_BRIDGE_POOL_MAX`. Idle sandboxes live in a
//! `deadpool::unmanaged::Pool` (LIFO, so the most recently used, warmest
//! sandbox goes out first).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::unmanaged::{Object, Pool as IdleQueue, PoolConfig, PoolError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics;
use crate::runtime::{Runtime, spec};
use crate::sandbox::{AGENT, Sandbox, SandboxFailure};

/// How long a new container may take from create to the agent's first `Ready`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to reset after a run before it is recycled.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);
/// Removal of all containers at shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CREATE_BACKOFF: Duration = Duration::from_secs(30);

/// Why a sandbox was destroyed instead of reused. A closed set, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecycleReason {
    Timeout,
    Oom,
    AgentDied,
    Protocol,
    ResetFailed,
    MaxUses,
    MaxAge,
    /// The caller went away mid-run (client cancellation): its state is unknown.
    Abandoned,
    /// Found dead or talking while idle.
    Unhealthy,
}

impl RecycleReason {
    pub const ALL: [Self; 9] = [
        Self::Timeout,
        Self::Oom,
        Self::AgentDied,
        Self::Protocol,
        Self::ResetFailed,
        Self::MaxUses,
        Self::MaxAge,
        Self::Abandoned,
        Self::Unhealthy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Oom => "oom",
            Self::AgentDied => "agent_died",
            Self::Protocol => "protocol",
            Self::ResetFailed => "reset_failed",
            Self::MaxUses => "max_uses",
            Self::MaxAge => "max_age",
            Self::Abandoned => "abandoned",
            Self::Unhealthy => "unhealthy",
        }
    }

    pub fn for_failure(failure: &SandboxFailure) -> Self {
        match failure {
            SandboxFailure::Timeout(_) => Self::Timeout,
            SandboxFailure::AgentDied { .. } | SandboxFailure::Transport(_) => Self::AgentDied,
            SandboxFailure::Protocol(_) => Self::Protocol,
            SandboxFailure::ResetFailed(_) => Self::ResetFailed,
        }
    }
}

/// What to do with a sandbox after its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reset it and return it to the pool (unless it is worn out).
    Reuse,
    Recycle(RecycleReason),
}

impl Verdict {
    /// A reuse becomes a recycle once the sandbox is worn out.
    fn or_worn_out(self, runs: u32, age: Duration, max_uses: u32, max_age: Duration) -> Self {
        match self {
            Self::Reuse if runs >= max_uses => Self::Recycle(RecycleReason::MaxUses),
            Self::Reuse if age >= max_age => Self::Recycle(RecycleReason::MaxAge),
            verdict => verdict,
        }
    }
}

/// Whether refill should start one more sandbox: the idle and starting ones
/// must cover `min_idle` plus every caller waiting right now.
fn needs_another(idle_and_starting: usize, min_idle: usize, waiting: usize) -> bool {
    idle_and_starting < min_idle + waiting
}

/// How long a failed start holds its slot before refill may try again:
/// 250 ms doubling per consecutive failure, at most [`MAX_CREATE_BACKOFF`].
fn create_backoff(consecutive_failures: u32) -> Duration {
    Duration::from_millis(250 << consecutive_failures.min(7)).min(MAX_CREATE_BACKOFF)
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(
        "no sandbox became free within {waited:?} (all {max} in use; raise MCP_BRIDGE_POOL_MAX or \
         MCP_BRIDGE_POOL_WAIT_TIMEOUT){}",
        last_error.as_deref().map(|e| format!("; last sandbox start failed: {e}")).unwrap_or_default()
    )]
    Exhausted {
        waited: Duration,
        max: usize,
        last_error: Option<String>,
    },
    #[error("no sandbox can be started: {0}")]
    Unavailable(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A sandbox in the pool, with the capacity permit it holds until removed.
struct Slot {
    sandbox: Sandbox,
    _capacity: OwnedSemaphorePermit,
}

/// Counts of sandboxes by state, for `doctor`, readiness and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    pub idle: usize,
    /// Leased to a run.
    pub busy: usize,
    pub starting: usize,
    /// Between a run's end and the agent's confirmation that it is clean.
    pub resetting: usize,
    /// Every container that exists or is being created or removed.
    pub total: usize,
    pub max: usize,
}

#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    runtime: Runtime,
    container_spec: spec::ContainerSpec,
    idle: IdleQueue<Slot>,
    capacity: Arc<Semaphore>,
    starting: AtomicUsize,
    busy: AtomicUsize,
    resetting: AtomicUsize,
    waiting: AtomicUsize,
    min_idle: usize,
    max: usize,
    max_uses: u32,
    max_age: Duration,
    wait_timeout: Duration,
    wake_refill: Notify,
    create_failures: watch::Sender<u32>,
    consecutive_failures: AtomicU32,
    last_create_error: Mutex<Option<String>>,
    closed: CancellationToken,
    /// Resets, removals and creations in flight, awaited at shutdown.
    background: TaskTracker,
}

impl Pool {
    /// Starts the pool: warm-up begins in the background at once.
    pub fn start(runtime: Runtime, config: &Config, image: &str) -> Self {
        let container_spec = spec::container_spec(config, image, &runtime.owner_label(), AGENT);
        let shared = Arc::new(Shared {
            runtime,
            container_spec,
            idle: IdleQueue::from_config(&PoolConfig {
                runtime: Some(deadpool::Runtime::Tokio1),
                ..PoolConfig::new(config.pool_max)
            }),
            capacity: Arc::new(Semaphore::new(config.pool_max)),
            starting: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            resetting: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            min_idle: config.pool_min_idle,
            max: config.pool_max,
            max_uses: config.pool_max_uses,
            max_age: config.pool_max_age,
            wait_timeout: config.pool_wait_timeout,
            wake_refill: Notify::new(),
            create_failures: watch::channel(0).0,
            consecutive_failures: AtomicU32::new(0),
            last_create_error: Mutex::new(None),
            closed: CancellationToken::new(),
            background: TaskTracker::new(),
        });
        tokio::spawn(refill_loop(shared.clone()));
        shared.wake_refill.notify_one();
        Self { shared }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    pub fn status(&self) -> PoolStatus {
        let shared = &self.shared;
        PoolStatus {
            idle: shared.idle.status().available,
            busy: shared.busy.load(Ordering::Relaxed),
            starting: shared.starting.load(Ordering::Relaxed),
            resetting: shared.resetting.load(Ordering::Relaxed),
            total: shared.max - shared.capacity.available_permits(),
            max: shared.max,
        }
    }

    /// The error of the last failed sandbox start, if the last start failed.
    pub fn last_start_error(&self) -> Option<String> {
        self.shared
            .last_create_error
            .lock()
            .expect("not poisoned")
            .clone()
    }

    /// Takes a warm sandbox, waiting (bounded) when none is idle.
    pub async fn acquire(&self) -> Result<Lease, AcquireError> {
        let shared = &self.shared;
        let started = Instant::now();
        let mut failures = shared.create_failures.subscribe();
        loop {
            let object = match shared.idle.try_get() {
                Ok(object) => object,
                Err(PoolError::Closed) => return Err(AcquireError::ShuttingDown),
                Err(_) => self.wait_for_idle(started, &mut failures).await?,
            };
            // Taking one may leave fewer than min_idle: top up in the background.
            shared.wake_refill.notify_one();
            let mut lease = Lease::new(object, shared.clone());
            let sandbox = lease.sandbox();
            if sandbox.age() >= shared.max_age {
                lease.finish(Verdict::Recycle(RecycleReason::MaxAge));
            } else if !sandbox.is_idle_and_alive() {
                lease.finish(Verdict::Recycle(RecycleReason::Unhealthy));
            } else {
                return Ok(lease);
            }
        }
    }

    async fn wait_for_idle(
        &self,
        started: Instant,
        failures: &mut watch::Receiver<u32>,
    ) -> Result<Object<Slot>, AcquireError> {
        let shared = &self.shared;
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        shared.wake_refill.notify_one();
        let _waiting = scopeguard(|| {
            shared.waiting.fetch_sub(1, Ordering::Relaxed);
        });
        loop {
            let remaining = shared.wait_timeout.saturating_sub(started.elapsed());
            tokio::select! {
                got = shared.idle.timeout_get(Some(remaining)) => {
                    return got.map_err(|error| match error {
                        PoolError::Closed => AcquireError::ShuttingDown,
                        _ => AcquireError::Exhausted {
                            waited: shared.wait_timeout,
                            max: shared.max,
                            last_error: self.last_start_error(),
                        },
                    });
                }
                changed = failures.changed() => {
                    // A start failed while we wait. If no sandbox exists at all,
                    // nothing will free up: say why now instead of at the timeout.
                    if changed.is_err() || self.status().total == 0 {
                        let reason = self.last_start_error().unwrap_or_else(|| "unknown".into());
                        return Err(AcquireError::Unavailable(reason));
                    }
                }
            }
        }
    }

    /// Waits until `min_idle` sandboxes are idle (or `timeout` passes).
    pub async fn wait_warm(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.status().idle < self.shared.min_idle {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops refilling, drops idle sandboxes and removes every container of
    /// this instance, within [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        shared.closed.cancel();
        shared.idle.close();
        shared.background.close();
        let removal = async {
            let _ = tokio::time::timeout(Duration::from_secs(2), shared.background.wait()).await;
            shared.runtime.remove_all_owned().await
        };
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, removal).await {
            Ok(Ok(count)) => tracing::info!(
                removed = count,
                "removed this instance's sandbox containers"
            ),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not list sandbox containers at shutdown")
            }
            Err(_) => tracing::warn!("sandbox removal did not finish within {SHUTDOWN_TIMEOUT:?}"),
        }
    }
}

/// Runs `f` when dropped (also when the owning future is cancelled).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// A sandbox checked out for one run. [`Lease::finish`] hands it back with a
/// verdict; dropping a lease unfinished (a cancelled call) destroys the
/// sandbox, because a run's state cannot be trusted back into the pool.
pub struct Lease {
    object: Option<Object<Slot>>,
    shared: Arc<Shared>,
}

impl Lease {
    fn new(object: Object<Slot>, shared: Arc<Shared>) -> Self {
        shared.busy.fetch_add(1, Ordering::Relaxed);
        Self {
            object: Some(object),
            shared,
        }
    }

    /// Takes the sandbox out of the lease (it is no longer busy).
    fn release(&mut self) -> Option<Object<Slot>> {
        let object = self.object.take()?;
        self.shared.busy.fetch_sub(1, Ordering::Relaxed);
        Some(object)
    }

    pub fn sandbox(&mut self) -> &mut Sandbox {
        &mut self
            .object
            .as_mut()
            .expect("present until finish or drop")
            .sandbox
    }

    /// Whether the engine saw this sandbox OOM-killed (an engine request:
    /// only for the failure path, when the agent itself died).
    pub async fn engine_saw_oom(&mut self) -> bool {
        let id = self.sandbox().id().to_owned();
        self.shared.runtime.oom_killed(&id).await.unwrap_or(false)
    }

    /// Returns the sandbox: reset and back to idle, or destroyed. Either way
    /// the work happens in the background, after the caller has its result.
    pub fn finish(mut self, verdict: Verdict) {
        let object = self.release().expect("finish is called once");
        let shared = self.shared.clone();
        let verdict = verdict.or_worn_out(
            object.sandbox.runs(),
            object.sandbox.age(),
            shared.max_uses,
            shared.max_age,
        );
        match verdict {
            Verdict::Recycle(reason) => shared.destroy(Object::take(object), reason),
            Verdict::Reuse => {
                let task_shared = shared.clone();
                shared.resetting.fetch_add(1, Ordering::Relaxed);
                shared.background.spawn(async move {
                    let mut object = object;
                    let started = Instant::now();
                    let ready = object.sandbox.await_ready(RESET_TIMEOUT).await;
                    task_shared.resetting.fetch_sub(1, Ordering::Relaxed);
                    match ready {
                        // Dropping the object returns it to the idle queue.
                        Ok(_) => {
                            metrics::observe_reset(started.elapsed());
                            drop(object);
                        }
                        Err(failure) => {
                            tracing::warn!(sandbox = object.sandbox.short_id(), %failure, "reset failed; recycling");
                            task_shared.destroy(Object::take(object), RecycleReason::ResetFailed);
                        }
                    }
                });
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(object) = self.release() {
            self.shared
                .destroy(Object::take(object), RecycleReason::Abandoned);
        }
    }
}

impl Shared {
    /// Removes a sandbox's container in the background; its capacity permit
    /// is released only once the container is gone.
    fn destroy(self: &Arc<Self>, slot: Slot, reason: RecycleReason) {
        tracing::debug!(
            sandbox = slot.sandbox.short_id(),
            reason = reason.as_str(),
            "recycling sandbox"
        );
        metrics::observe_recycled(reason);
        let shared = self.clone();
        self.background.spawn(async move {
            shared.runtime.remove(slot.sandbox.id()).await;
            drop(slot);
            shared.wake_refill.notify_one();
        });
    }

    /// Starts sandboxes until `min_idle` plus the waiting callers are covered,
    /// within capacity.
    fn top_up(self: &Arc<Self>) {
        loop {
            let covered = self.idle.status().available + self.starting.load(Ordering::Relaxed);
            if !needs_another(covered, self.min_idle, self.waiting.load(Ordering::Relaxed)) {
                return;
            }
            let Ok(permit) = self.capacity.clone().try_acquire_owned() else {
                return;
            };
            self.starting.fetch_add(1, Ordering::Relaxed);
            self.background.spawn(self.clone().create(permit));
        }
    }

    async fn create(self: Arc<Self>, permit: OwnedSemaphorePermit) {
        let started = Instant::now();
        let result = async {
            let container = self
                .runtime
                .start_container(&self.container_spec)
                .await
                .map_err(|e| e.to_string())?;
            let id = container.id.clone();
            match Sandbox::attach(container, START_TIMEOUT).await {
                Ok(sandbox) => Ok(sandbox),
                Err(failure) => {
                    self.runtime.remove(&id).await;
                    Err(failure.to_string())
                }
            }
        }
        .await;
        match result {
            Ok(sandbox) => {
                metrics::observe_created(started.elapsed());
                tracing::debug!(
                    sandbox = sandbox.short_id(),
                    python = sandbox.python_version(),
                    elapsed = ?started.elapsed(),
                    "sandbox warm"
                );
                self.consecutive_failures.store(0, Ordering::Relaxed);
                *self.last_create_error.lock().expect("not poisoned") = None;
                self.starting.fetch_sub(1, Ordering::Relaxed);
                let slot = Slot {
                    sandbox,
                    _capacity: permit,
                };
                if let Err((slot, _)) = self.idle.try_add(slot) {
                    // Closed for shutdown.
                    self.runtime.remove(slot.sandbox.id()).await;
                }
            }
            Err(error) => {
                metrics::observe_create_failure();
                let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, consecutive = failures + 1, "could not start a sandbox");
                *self.last_create_error.lock().expect("not poisoned") = Some(error);
                self.create_failures.send_modify(|count| *count += 1);
                // Hold the slot through the backoff so refill does not spin.
                let backoff = create_backoff(failures);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = self.closed.cancelled() => {}
                }
                self.starting.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            }
        }
        self.wake_refill.notify_one();
    }

    /// Destroys idle sandboxes that are too old or died while idle.
    fn sweep_idle(self: &Arc<Self>) {
        let mut keep = Vec::new();
        while let Ok(object) = self.idle.try_get() {
            keep.push(object);
        }
        for mut object in keep {
            if object.sandbox.age() >= self.max_age {
                self.destroy(Object::take(object), RecycleReason::MaxAge);
            } else if !object.sandbox.is_idle_and_alive() {
                self.destroy(Object::take(object), RecycleReason::Unhealthy);
            }
        }
    }
}

async fn refill_loop(shared: Arc<Shared>) {
    let sweep_period = (shared.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut sweep = tokio::time::interval(sweep_period);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = shared.wake_refill.notified() => {}
            _ = sweep.tick() => shared.sweep_idle(),
        }
        shared.top_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn worn_out_sandboxes_are_recycled_not_reused() {
        let reuse = Verdict::Reuse;
        assert_eq!(
            reuse.or_worn_out(9, MINUTE, 10, 30 * MINUTE),
            Verdict::Reuse
        );
        assert_eq!(
            reuse.or_worn_out(10, MINUTE, 10, 30 * MINUTE),
            Verdict::Recycle(RecycleReason::MaxUses)
        );
        assert_eq!(
            reuse.or_worn_out(1, 30 * MINUTE, 10, 30 * MINUTE),
            Verdict::Recycle(RecycleReason::MaxAge)
        );
        let timeout = Verdict::Recycle(RecycleReason::Timeout);
        assert_eq!(
            timeout.or_worn_out(10, 30 * MINUTE, 10, 30 * MINUTE),
            timeout,
            "the first reason stands"
        );
    }

    #[test]
    fn refill_covers_min_idle_plus_waiting_callers() {
        assert!(needs_another(1, 2, 0));
        assert!(!needs_another(2, 2, 0));
        assert!(
            needs_another(2, 2, 1),
            "a waiting caller gets a sandbox of its own"
        );
        assert!(!needs_another(3, 2, 1));
        assert!(
            !needs_another(0, 0, 0),
            "min idle 0: nothing starts until someone waits"
        );
    }

    #[test]
    fn start_failures_back_off_exponentially_up_to_a_cap() {
        let backoffs: Vec<u64> = (0..10)
            .map(|n| create_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(backoffs[..4], [250, 500, 1000, 2000]);
        assert!(backoffs.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            *backoffs.last().unwrap(),
            MAX_CREATE_BACKOFF.as_millis() as u64
        );
    }

    #[test]
    fn every_recycle_reason_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> =
            RecycleReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RecycleReason::ALL.len());
    }
}

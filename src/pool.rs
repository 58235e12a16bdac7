//! The warm pool: sandboxes started ahead of need, leased one run at a time.
//!
//! Owns the sandbox lifecycle around runs: warm-up at launch, keeping
//! `min_idle` ready, leasing (a lock and a `Vec::pop` on the warm path, no
//! engine request), reset or recycle after each run *off the caller's path*,
//! refill with back-off when starts fail, age sweeps, removal of containers
//! (retried until the engine confirms it), and removal of every container at
//! shutdown. It does not look inside runs (that is [`crate::call`]) nor
//! speak the agent protocol (that is [`crate::sandbox`]) nor the engine's API
//! (that is [`crate::engine`]).
//!
//! All bookkeeping is one [`State`] under one `std::sync::Mutex`, never held
//! across an `.await` (the mini-redis `Shared { state, background_task }`
//! shape): the idle sandboxes (a LIFO stack: the most recently used, warmest,
//! goes out first) and the counts of sandboxes starting, busy, resetting and
//! being removed, the callers waiting, the failed starts in a row and the last
//! error. Each transition is one `State` method, so the counts change
//! together. A `Notify` wakes the refill task; another wakes waiting callers.
//! (`deadpool::managed` was measured against this and cannot keep the refill
//! invariant: it creates only in a `get` that found its queue empty; see
//! ARCHITECTURE.md, "Pool state", and `benches/pool.rs`.)
//! Invariants:
//! - `total = idle + starting + busy + resetting + removing <= max`: a
//!   container counts from its create request until the engine confirmed its
//!   removal (a refused removal is retried and keeps counting);
//! - refill starts a sandbox only while `idle + starting + resetting <
//!   min_idle + waiting` (a sandbox in reset is coming back);
//! - after a failed start its slot is free at once; the next start waits out
//!   the back-off and starts one at a time until one succeeds;
//! - a waiting caller gives up at once, with the last error, when nothing can
//!   become idle (nothing starting, busy or resetting) and that error stands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::engine::{Engine, EngineError, spec};
use crate::metrics;
use crate::principals::Principal;
use crate::sandbox::{Sandbox, SandboxFailure, agent_command};

/// How long a new container may take from create to the agent's first `Ready`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to reset after a run before it is recycled.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);
/// Removal of all containers at shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the background work between its two
/// listings.
const SHUTDOWN_BACKGROUND_WAIT: Duration = Duration::from_secs(2);
// Each of shutdown's two listings may try again for this long (a Podman list
// that caught a container between two states), and a second is left for the
// removals: the build fails when the budgets stop fitting.
const _: () = assert!(
    2 * crate::engine::LIST_RETRY_WITHIN.as_millis() + SHUTDOWN_BACKGROUND_WAIT.as_millis() + 1000
        <= SHUTDOWN_TIMEOUT.as_millis()
);
/// The longest wait between failed starts: also how long, at most, the pool
/// takes to notice that the engine is back.
const MAX_CREATE_BACKOFF: Duration = Duration::from_secs(10);
/// The first and the longest wait before retrying a removal the engine refused.
const FIRST_REMOVE_RETRY: Duration = Duration::from_secs(1);
const MAX_REMOVE_RETRY: Duration = Duration::from_secs(10);

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
    /// Its session ended (it holds a session's state: never reset for another).
    SessionEnded,
    /// Its agent cannot reset it here (gVisor: IPC objects cannot be listed).
    SingleUse,
}

impl RecycleReason {
    pub const ALL: [Self; 11] = [
        Self::Timeout,
        Self::Oom,
        Self::AgentDied,
        Self::Protocol,
        Self::ResetFailed,
        Self::MaxUses,
        Self::MaxAge,
        Self::Abandoned,
        Self::Unhealthy,
        Self::SessionEnded,
        Self::SingleUse,
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
            Self::SessionEnded => "session_ended",
            Self::SingleUse => "single_use",
        }
    }

    pub fn for_failure(failure: &SandboxFailure) -> Self {
        match failure {
            SandboxFailure::Timeout(_) => Self::Timeout,
            SandboxFailure::AgentDied { .. } | SandboxFailure::Transport(_) => Self::AgentDied,
            SandboxFailure::Protocol(_) | SandboxFailure::StderrFlood(_) => Self::Protocol,
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

/// How long a failed start holds back the next one: 250 ms doubling per
/// consecutive failure, at most [`MAX_CREATE_BACKOFF`].
fn create_backoff(consecutive_failures: u32) -> Duration {
    Duration::from_millis(250 << consecutive_failures.min(7)).min(MAX_CREATE_BACKOFF)
}

/// Why a sandbox could not be started, or its container not removed: the
/// pool's last error until a start succeeds, shared by every caller told of it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The engine did not answer, has no such image, or refused a request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The container started but its agent never became ready.
    #[error(transparent)]
    Agent(#[from] SandboxFailure),
}

/// What a [`StartError`] says is wrong: a closed set, for logs and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartCause {
    EngineUnreachable,
    ImageMissing,
    /// The engine answered a request with an error.
    EngineRefused,
    AgentFailed,
}

impl StartCause {
    pub fn of_engine(error: &EngineError) -> Self {
        match error {
            EngineError::Unreachable { .. } | EngineError::NoPodmanSocket { .. } => {
                Self::EngineUnreachable
            }
            EngineError::UnknownRuntime { .. } | EngineError::Seccomp { .. } => Self::EngineRefused,
            EngineError::NoImage { .. } | EngineError::ImageMissing { .. } => Self::ImageMissing,
            EngineError::Engine { .. } => Self::EngineRefused,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EngineUnreachable => "engine_unreachable",
            Self::ImageMissing => "image_missing",
            Self::EngineRefused => "engine_refused",
            Self::AgentFailed => "agent_failed",
        }
    }
}

impl StartError {
    pub fn cause(&self) -> StartCause {
        match self {
            Self::Engine(error) => StartCause::of_engine(error),
            Self::Agent(_) => StartCause::AgentFailed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(
        "no sandbox became free within {waited:?} (all {} in use: {} busy, {} resetting, \
         {} starting, {} being removed; \
         raise MCP_BRIDGE_POOL_MAX or MCP_BRIDGE_POOL_WAIT_TIMEOUT){}",
        status.max, status.busy, status.resetting, status.starting, status.removing,
        last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    Exhausted {
        waited: Duration,
        status: PoolStatus,
        last_error: Option<Arc<StartError>>,
    },
    /// Nothing can become idle and the last attempt failed: said at once, not at the wait's end.
    #[error("no sandbox can be started: {0}")]
    Unavailable(#[source] Arc<StartError>),
    #[error("the server is shutting down")]
    ShuttingDown,
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
    /// Destroyed; the engine has not yet confirmed the container's removal.
    pub removing: usize,
    /// Callers waiting for a sandbox.
    pub waiting: usize,
    /// Every container that exists or is being created or removed.
    pub total: usize,
    pub max: usize,
}

impl PoolStatus {
    /// The states a sandbox can be in, as metric labels.
    pub const STATES: [&'static str; 5] = ["idle", "busy", "starting", "resetting", "removing"];

    /// The count of sandboxes in each of [`Self::STATES`].
    pub fn by_state(&self) -> Vec<(&'static str, usize)> {
        let counts = [
            self.idle,
            self.busy,
            self.starting,
            self.resetting,
            self.removing,
        ];
        Self::STATES.into_iter().zip(counts).collect()
    }
}

/// A leased sandbox as the console lists it.
#[derive(Debug, Clone, Copy)]
struct Leased {
    created: Instant,
    runs: u32,
}

/// One principal's part of the pool: the sandboxes it holds (leased:
/// runs, sessions) and its callers waiting for one.
#[derive(Debug, Default, Clone, Copy)]
struct Share {
    held: usize,
    waiting: usize,
}

/// The pool's limits, from [`Config`].
#[derive(Debug, Clone, Copy)]
struct Sizing {
    min_idle: usize,
    max: usize,
    max_uses: u32,
    max_age: Duration,
    wait_timeout: Duration,
}

/// The pool's bookkeeping (see the module docs for its invariants). Generic
/// over the sandbox so that its rules are unit-tested without containers.
#[derive(Debug)]
struct State<S> {
    /// Idle, warm sandboxes; the last one is the warmest (LIFO).
    idle: Vec<S>,
    starting: usize,
    busy: usize,
    resetting: usize,
    removing: usize,
    waiting: usize,
    /// Starts that failed in a row.
    failed_starts: u32,
    /// Why the last start (or removal) failed; cleared by a successful start.
    last_error: Option<Arc<StartError>>,
    /// The leased sandboxes, by short id (for the console).
    leased: HashMap<String, Leased>,
    /// Each principal's leases and waiting callers, while it has either:
    /// the next idle sandbox goes to a waiting principal holding the fewest.
    shares: HashMap<String, Share>,
    /// No start before this instant (the back-off after a failed start).
    retry_at: Option<Instant>,
    closed: bool,
}

impl<S> State<S> {
    fn new() -> Self {
        Self {
            idle: Vec::new(),
            starting: 0,
            busy: 0,
            resetting: 0,
            removing: 0,
            waiting: 0,
            failed_starts: 0,
            last_error: None,
            retry_at: None,
            closed: false,
            shares: HashMap::new(),
            leased: HashMap::new(),
        }
    }

    fn total(&self) -> usize {
        self.idle.len() + self.starting + self.busy + self.resetting + self.removing
    }

    fn status(&self, max: usize) -> PoolStatus {
        PoolStatus {
            idle: self.idle.len(),
            busy: self.busy,
            starting: self.starting,
            resetting: self.resetting,
            removing: self.removing,
            waiting: self.waiting,
            total: self.total(),
            max,
        }
    }

    /// Counts the starts to make now (idle, starting and resetting sandboxes
    /// must cover `min_idle` plus every waiting caller, within `max`) as
    /// starting, and returns how many. None during the back-off of a failed
    /// start; after it, one at a time until a start succeeds.
    fn reserve_starts(&mut self, sizing: &Sizing, now: Instant) -> usize {
        if self.closed {
            return 0;
        }
        match self.retry_at {
            Some(at) if now < at => return 0,
            Some(_) => self.retry_at = None,
            None => {}
        }
        let covered = self.idle.len() + self.starting + self.resetting;
        let wanted = sizing.min_idle + self.waiting;
        let room = sizing.max.saturating_sub(self.total());
        let mut starts = wanted.saturating_sub(covered).min(room);
        if self.failed_starts > 0 {
            starts = starts.min(1usize.saturating_sub(self.starting));
        }
        self.starting += starts;
        starts
    }

    /// Why a waiting caller should give up now: nothing is starting, busy or
    /// resetting (so nothing can become idle) and the last attempt failed.
    fn unavailable(&self) -> Option<Arc<StartError>> {
        if self.starting + self.busy + self.resetting > 0 {
            return None;
        }
        self.last_error.clone()
    }

    /// A start succeeded. Returns the sandbox back if the pool closed meanwhile
    /// (it is then counted as removing).
    fn started(&mut self, sandbox: S) -> Option<S> {
        self.starting -= 1;
        self.failed_starts = 0;
        self.last_error = None;
        self.retry_at = None;
        self.make_idle(sandbox)
    }

    /// A start failed; its slot is free at once unless it left a container
    /// to remove. Returns the failures in a row.
    fn start_failed(
        &mut self,
        error: Arc<StartError>,
        now: Instant,
        left_a_container: bool,
    ) -> u32 {
        self.starting -= 1;
        if left_a_container {
            self.removing += 1;
        }
        self.retry_at = Some(now + create_backoff(self.failed_starts));
        self.failed_starts += 1;
        self.last_error = Some(error);
        self.failed_starts
    }

    /// Takes the warmest idle sandbox for a run of `principal`, unless
    /// another principal that holds fewer sandboxes is waiting: its turn
    /// comes first (fair queueing: one principal's flood of calls cannot
    /// keep another's from the next sandbox).
    fn lease(&mut self, principal: &str) -> Option<S> {
        if self.idle.is_empty() {
            return None;
        }
        let held = self.shares.get(principal).map_or(0, |share| share.held);
        let before_us = self
            .shares
            .iter()
            .any(|(other, share)| share.waiting > 0 && share.held < held && other != principal);
        if before_us {
            return None;
        }
        let sandbox = self.idle.pop()?;
        self.busy += 1;
        self.shares.entry(principal.to_owned()).or_default().held += 1;
        Some(sandbox)
    }

    /// `principal`'s callers waiting: one `more`, or one fewer.
    fn wait(&mut self, principal: &str, more: bool) {
        let share = self.shares.entry(principal.to_owned()).or_default();
        if more {
            share.waiting += 1;
            self.waiting += 1;
        } else {
            share.waiting -= 1;
            self.waiting -= 1;
            self.forget_if_done(principal);
        }
    }

    fn forget_if_done(&mut self, principal: &str) {
        if self
            .shares
            .get(principal)
            .is_some_and(|share| share.held == 0 && share.waiting == 0)
        {
            self.shares.remove(principal);
        }
    }

    /// A run's sandbox goes to reset (`reuse`) or to removal.
    fn end_lease(&mut self, reuse: bool, principal: &str) {
        if let Some(share) = self.shares.get_mut(principal) {
            share.held -= 1;
            self.forget_if_done(principal);
        }
        self.busy -= 1;
        if reuse {
            self.resetting += 1;
        } else {
            self.removing += 1;
        }
    }

    /// The agent confirmed its reset. Returns the sandbox back if the pool
    /// closed meanwhile (it is then counted as removing).
    fn reset_done(&mut self, sandbox: S) -> Option<S> {
        self.resetting -= 1;
        self.make_idle(sandbox)
    }

    fn make_idle(&mut self, sandbox: S) -> Option<S> {
        if self.closed {
            self.removing += 1;
            return Some(sandbox);
        }
        self.idle.push(sandbox);
        None
    }

    fn reset_failed(&mut self) {
        self.resetting -= 1;
        self.removing += 1;
    }

    /// The engine refused a removal: the container still counts, and until
    /// a start succeeds this is the pool's last error.
    fn removal_failed(&mut self, error: Arc<StartError>) {
        self.last_error = Some(error);
    }

    fn removed(&mut self) {
        self.removing -= 1;
    }

    /// Takes the idle sandboxes `unfit` finds a reason to recycle, counting
    /// them as removing. The fit ones stay, in their order: callers never see
    /// the idle stack emptied by a sweep, and the warmest stays on top.
    fn take_unfit(
        &mut self,
        mut unfit: impl FnMut(&mut S) -> Option<RecycleReason>,
    ) -> Vec<(S, RecycleReason)> {
        let mut kept = Vec::with_capacity(self.idle.len());
        let mut taken = Vec::new();
        for mut sandbox in self.idle.drain(..) {
            match unfit(&mut sandbox) {
                Some(reason) => taken.push((sandbox, reason)),
                None => kept.push(sandbox),
            }
        }
        self.idle = kept;
        self.removing += taken.len();
        taken
    }

    /// Stops all further starts and leases; returns the idle sandboxes,
    /// counted as removing (shutdown removes their containers).
    fn close(&mut self) -> Vec<S> {
        self.closed = true;
        self.removing += self.idle.len();
        std::mem::take(&mut self.idle)
    }
}

#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("engine", &self.shared.engine.endpoint())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

struct Shared {
    engine: Engine,
    container_spec: spec::ContainerSpec,
    sizing: Sizing,
    state: Mutex<State<Sandbox>>,
    /// Wakes the refill task: something changed that may call for a start.
    background_task: Notify,
    /// Wakes waiting callers: one per sandbox made idle, all when an attempt
    /// failed (they may have nothing left to wait for) or at shutdown.
    sandbox_ready: Notify,
    closed: CancellationToken,
    /// Resets, removals and creations in flight, awaited at shutdown.
    background: TaskTracker,
}

impl Pool {
    /// Starts the pool: warm-up begins in the background at once.
    pub fn start(engine: Engine, config: &Config, image: &str) -> Self {
        let container_spec =
            spec::container_spec(config, image, &engine.owner_label(), agent_command(config));
        let shared = Arc::new(Shared {
            engine,
            container_spec,
            sizing: Sizing {
                min_idle: config.pool_min_idle,
                max: config.pool_max,
                max_uses: config.pool_max_uses,
                max_age: config.pool_max_age,
                wait_timeout: config.pool_wait_timeout,
            },
            state: Mutex::new(State::new()),
            background_task: Notify::new(),
            sandbox_ready: Notify::new(),
            closed: CancellationToken::new(),
            background: TaskTracker::new(),
        });
        tokio::spawn(refill_loop(shared.clone()));
        Self { shared }
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    pub fn status(&self) -> PoolStatus {
        self.shared.state().status(self.shared.sizing.max)
    }

    /// The idle sandboxes (warmest last), then the leased ones: short id,
    /// state (`idle` or `busy`), age, runs served (a leased one's when it
    /// was leased).
    pub fn sandboxes(&self) -> Vec<(String, &'static str, Duration, u32)> {
        let state = self.shared.state();
        let idle = state.idle.iter().map(|sandbox| {
            (
                sandbox.short_id().to_owned(),
                "idle",
                sandbox.age(),
                sandbox.runs(),
            )
        });
        let leased = state
            .leased
            .iter()
            .map(|(id, leased)| (id.clone(), "busy", leased.created.elapsed(), leased.runs));
        idle.chain(leased).collect()
    }

    /// Why sandboxes cannot be started right now (the last failed start, or
    /// a removal the engine refused), until a start succeeds.
    pub fn last_start_error(&self) -> Option<Arc<StartError>> {
        self.shared.state().last_error.clone()
    }

    /// Why the warmest idle sandbox serves one run only (its agent cannot
    /// reset it here), or None: it is reset after each run, or none is idle.
    pub fn single_use(&self) -> Option<String> {
        let state = self.shared.state();
        state
            .idle
            .last()
            .and_then(|sandbox| sandbox.single_use().map(str::to_owned))
    }

    /// Takes a warm sandbox, waiting (bounded) when none is idle. Fails at
    /// once, with the cause, when nothing can become idle because sandboxes
    /// cannot be started (engine unreachable, image broken, …).
    pub async fn acquire(&self) -> Result<Lease, AcquireError> {
        self.acquire_for(&Principal::local()).await
    }

    /// A sandbox for a run of `principal`: the next idle one goes to the
    /// waiting principal that holds the fewest (see `State::lease`).
    pub async fn acquire_for(&self, principal: &Principal) -> Result<Lease, AcquireError> {
        let shared = &self.shared;
        let name = principal.as_str();
        let deadline = tokio::time::Instant::now() + shared.sizing.wait_timeout;
        let mut waiting: Option<Waiting> = None;
        loop {
            // Registered before looking, so a sandbox made idle after the look wakes us.
            let ready = shared.sandbox_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let leased = {
                let mut state = shared.state();
                if state.closed {
                    return Err(AcquireError::ShuttingDown);
                }
                let leased = state.lease(name);
                if let Some(sandbox) = &leased {
                    let created = Instant::now()
                        .checked_sub(sandbox.age())
                        .unwrap_or_else(Instant::now);
                    let runs = sandbox.runs();
                    state
                        .leased
                        .insert(sandbox.short_id().to_owned(), Leased { created, runs });
                    // No longer waiting, before refill counts the waiting callers.
                    if let Some(was_waiting) = waiting.take() {
                        was_waiting.leave(&mut state);
                    }
                } else if waiting.is_none() {
                    waiting = Some(Waiting::enter(shared, &mut state, name));
                }
                leased
            };
            // Taking one may leave fewer than min_idle; a waiting caller needs one.
            shared.start_needed();
            let Some(sandbox) = leased else {
                // (The lock is released before `waiting` drops, which takes it.)
                let unavailable = shared.state().unavailable();
                if let Some(reason) = unavailable {
                    return Err(AcquireError::Unavailable(reason));
                }
                tokio::select! {
                    _ = &mut ready => continue,
                    _ = tokio::time::sleep_until(deadline) => return Err(self.exhausted()),
                }
            };
            let mut lease = Lease {
                sandbox: Some(sandbox),
                shared: shared.clone(),
                principal: name.to_owned(),
            };
            let sandbox = lease.sandbox();
            if sandbox.age() >= shared.sizing.max_age {
                lease.finish(Verdict::Recycle(RecycleReason::MaxAge));
            } else if !sandbox.is_idle_and_alive() {
                lease.finish(Verdict::Recycle(RecycleReason::Unhealthy));
            } else {
                return Ok(lease);
            }
        }
    }

    fn exhausted(&self) -> AcquireError {
        let state = self.shared.state();
        AcquireError::Exhausted {
            waited: self.shared.sizing.wait_timeout,
            status: state.status(self.shared.sizing.max),
            last_error: state.last_error.clone(),
        }
    }

    /// Waits until `min_idle` sandboxes are idle (or `timeout` passes).
    pub async fn wait_warm(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.status().idle < self.shared.sizing.min_idle {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops refilling and leasing, and removes every container of this
    /// instance, within [`SHUTDOWN_TIMEOUT`]: by label at once, those of runs
    /// and sessions in flight included (their runs then end at once, as a
    /// dead sandbox, instead of being waited for); then, after the background
    /// work (a start in flight ends with the pool closed, and removes its
    /// container), once more by label for what a start created after the
    /// first listing.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        // The idle ones' agents see their stdin close and exit.
        drop(shared.state().close());
        shared.closed.cancel();
        shared.sandbox_ready.notify_waiters();
        shared.background.close();
        let removal = async {
            let first = shared.engine.remove_all_owned().await?;
            let _ = tokio::time::timeout(SHUTDOWN_BACKGROUND_WAIT, shared.background.wait()).await;
            let second = shared.engine.remove_all_owned().await?;
            Ok::<_, EngineError>(first + second)
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

/// A caller counted as waiting for as long as this lives (also when the
/// caller's future is dropped).
/// Every caller that leaves is told of to the others: the turn may now be
/// another principal's.
struct Waiting<'a> {
    shared: &'a Shared,
    principal: &'a str,
}

impl<'a> Waiting<'a> {
    fn enter(shared: &'a Shared, state: &mut State<Sandbox>, principal: &'a str) -> Self {
        state.wait(principal, true);
        Self { shared, principal }
    }

    /// Stops waiting under a lock already held.
    fn leave(self, state: &mut State<Sandbox>) {
        state.wait(self.principal, false);
        self.shared.sandbox_ready.notify_waiters();
        std::mem::forget(self);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.state().wait(self.principal, false);
        self.shared.sandbox_ready.notify_waiters();
    }
}

/// A sandbox checked out for one run. [`Lease::finish`] hands it back with a
/// verdict; dropping a lease unfinished (a cancelled call) destroys the
/// sandbox, because a run's state cannot be trusted back into the pool.
pub struct Lease {
    sandbox: Option<Sandbox>,
    shared: Arc<Shared>,
    /// Whose run it is (its share of the pool).
    principal: String,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub fn sandbox(&mut self) -> &mut Sandbox {
        self.sandbox.as_mut().expect("present until finish or drop")
    }

    /// Whether the engine saw this sandbox OOM-killed (an engine request:
    /// only for the failure path, when the agent itself died).
    pub async fn engine_saw_oom(&mut self) -> bool {
        let started = SystemTime::now()
            .checked_sub(self.sandbox().age())
            .unwrap_or(UNIX_EPOCH);
        let id = self.sandbox().id().to_owned();
        self.shared.engine.oom_killed(&id, started).await
    }

    /// Returns the sandbox: reset and back to idle, or destroyed. Either way
    /// the work happens in the background, after the caller has its result.
    pub fn finish(mut self, verdict: Verdict) {
        let sandbox = self.sandbox.take().expect("finish is called once");
        let sizing = &self.shared.sizing;
        let verdict = match verdict {
            Verdict::Reuse if sandbox.single_use().is_some() => {
                Verdict::Recycle(RecycleReason::SingleUse)
            }
            verdict => verdict.or_worn_out(
                sandbox.runs(),
                sandbox.age(),
                sizing.max_uses,
                sizing.max_age,
            ),
        };
        self.shared.end_lease(sandbox, verdict, &self.principal);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.shared.end_lease(
                sandbox,
                Verdict::Recycle(RecycleReason::Abandoned),
                &self.principal,
            );
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State<Sandbox>> {
        // Every transition is a few integer updates that cannot panic halfway.
        self.state.lock().expect("pool state is never poisoned")
    }

    fn end_lease(self: &Arc<Self>, mut sandbox: Sandbox, verdict: Verdict, principal: &str) {
        {
            let mut state = self.state();
            state.end_lease(verdict == Verdict::Reuse, principal);
            state.leased.remove(sandbox.short_id());
        }
        if let Verdict::Recycle(reason) = verdict {
            return self.destroy(sandbox, reason);
        }
        let shared = self.clone();
        self.background.spawn(async move {
            let started = Instant::now();
            match sandbox.await_reset(RESET_TIMEOUT).await {
                Ok(()) => {
                    metrics::observe_reset(started.elapsed());
                    let closed = shared.state().reset_done(sandbox);
                    match closed {
                        Some(sandbox) => shared.remove(sandbox.id().to_owned(), Some(sandbox)),
                        None => shared.sandbox_ready.notify_waiters(),
                    }
                }
                Err(failure) => {
                    if matches!(failure, SandboxFailure::AgentDied { .. }) && shared.state().closed {
                        // Shutdown ends the agents (their stdin closes),
                        // resets in flight with them: nothing went wrong.
                        tracing::debug!(sandbox = sandbox.short_id(), %failure, "reset ended by the shutdown");
                    } else {
                        tracing::warn!(
                            sandbox = sandbox.short_id(),
                            %failure,
                            "reset failed; recycling"
                        );
                    }
                    shared.state().reset_failed();
                    shared.destroy(sandbox, RecycleReason::ResetFailed);
                }
            }
            shared.background_task.notify_one();
        });
    }

    /// Recycles a sandbox already counted as removing.
    fn destroy(self: &Arc<Self>, sandbox: Sandbox, reason: RecycleReason) {
        tracing::debug!(
            sandbox = sandbox.short_id(),
            reason = reason.as_str(),
            "recycling sandbox"
        );
        metrics::observe_recycled(reason.as_str());
        self.remove(sandbox.id().to_owned(), Some(sandbox));
        // A waiting caller may have been counting on this one.
        self.sandbox_ready.notify_waiters();
    }

    /// Removes a container counted as removing, in the background, retrying
    /// until the engine confirms (or shutdown takes over); only then is its
    /// slot free. The sandbox's streams are kept open until the first attempt,
    /// then closed (the agent exits and the engine removes the container
    /// itself, if it can).
    fn remove(self: &Arc<Self>, id: String, sandbox: Option<Sandbox>) {
        let shared = self.clone();
        self.background.spawn(async move {
            let mut sandbox = sandbox;
            let mut retry = FIRST_REMOVE_RETRY;
            while let Err(error) = shared.engine.try_remove(&id).await {
                tracing::warn!(
                    container = %id,
                    %error,
                    retry_in = ?retry,
                    "could not remove a sandbox container; \
                     it still counts toward MCP_BRIDGE_POOL_MAX"
                );
                drop(sandbox.take());
                shared
                    .state()
                    .removal_failed(Arc::new(StartError::Engine(error)));
                shared.sandbox_ready.notify_waiters();
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    // Shutdown removes whatever is left.
                    _ = shared.closed.cancelled() => return,
                }
                retry = (retry * 2).min(MAX_REMOVE_RETRY);
            }
            drop(sandbox);
            shared.state().removed();
            shared.background_task.notify_one();
        });
    }

    /// Starts the sandboxes [`State::reserve_starts`] calls for.
    fn start_needed(self: &Arc<Self>) {
        let starts = self.state().reserve_starts(&self.sizing, Instant::now());
        for _ in 0..starts {
            self.background.spawn(self.clone().create());
        }
    }

    async fn create(self: Arc<Self>) {
        let started = Instant::now();
        let container = match self.engine.start_container(&self.container_spec).await {
            Ok(container) => container,
            Err(error) => return self.start_failed(error.into(), None),
        };
        let id = container.id.clone();
        match Sandbox::attach(container, START_TIMEOUT).await {
            Ok(sandbox) => {
                metrics::observe_created(started.elapsed());
                tracing::debug!(
                    sandbox = sandbox.short_id(),
                    python = sandbox.python_version(),
                    elapsed = ?started.elapsed(),
                    "sandbox warm"
                );
                let closed = self.state().started(sandbox);
                match closed {
                    Some(sandbox) => self.remove(id, Some(sandbox)),
                    None => self.sandbox_ready.notify_waiters(),
                }
                self.background_task.notify_one();
            }
            Err(failure) => self.start_failed(failure.into(), Some(id)),
        }
    }

    fn start_failed(self: &Arc<Self>, error: StartError, container: Option<String>) {
        metrics::observe_create_failure();
        let cause = error.cause().as_str();
        let error = Arc::new(error);
        let failures =
            self.state()
                .start_failed(error.clone(), Instant::now(), container.is_some());
        tracing::warn!(%error, cause, consecutive = failures, "could not start a sandbox");
        if let Some(id) = container {
            self.remove(id, None);
        }
        self.sandbox_ready.notify_waiters();
        self.background_task.notify_one();
    }

    /// Destroys idle sandboxes that are too old or died while idle.
    fn sweep_idle(self: &Arc<Self>) {
        let max_age = self.sizing.max_age;
        let unfit = self.state().take_unfit(|sandbox| {
            if sandbox.age() >= max_age {
                Some(RecycleReason::MaxAge)
            } else if !sandbox.is_idle_and_alive() {
                Some(RecycleReason::Unhealthy)
            } else {
                None
            }
        });
        for (sandbox, reason) in unfit {
            self.destroy(sandbox, reason);
        }
    }
}

async fn refill_loop(shared: Arc<Shared>) {
    let sweep_period =
        (shared.sizing.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut sweep = tokio::time::interval(sweep_period);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        shared.start_needed();
        let retry_at = shared.state().retry_at.map(tokio::time::Instant::from_std);
        let retry = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now));
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = shared.background_task.notified() => {}
            _ = sweep.tick() => shared.sweep_idle(),
            _ = retry, if retry_at.is_some() => {}
        }
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

    fn sizing(min_idle: usize, max: usize) -> Sizing {
        Sizing {
            min_idle,
            max,
            max_uses: 1000,
            max_age: 30 * MINUTE,
            wait_timeout: MINUTE,
        }
    }

    /// A start error as the pool keeps it (an agent's, the one kind built
    /// without an engine).
    fn agent_failure(reason: &str) -> Arc<StartError> {
        Arc::new(SandboxFailure::ResetFailed(reason.into()).into())
    }

    #[test]
    fn start_errors_say_whether_the_engine_the_image_or_the_agent_failed() {
        let no_image = StartError::from(EngineError::NoImage {
            wanted: "py:1".into(),
            reason: "pull refused".into(),
            fix: "build it",
        });
        assert_eq!(no_image.cause(), StartCause::ImageMissing);
        assert!(
            no_image
                .to_string()
                .starts_with("image py:1 is not present")
        );
        let agent = StartError::from(SandboxFailure::Timeout(START_TIMEOUT));
        assert_eq!(agent.cause(), StartCause::AgentFailed);
        let unavailable = AcquireError::Unavailable(Arc::new(agent)).to_string();
        assert_eq!(
            unavailable,
            "no sandbox can be started: the run exceeded its 60s time limit"
        );
    }

    /// A state with `idle` idle sandboxes (numbered 0.., the last the warmest).
    fn with_idle(idle: u32) -> State<u32> {
        State {
            idle: (0..idle).collect(),
            ..State::new()
        }
    }

    #[test]
    fn refill_covers_min_idle_plus_waiting_callers() {
        let now = Instant::now();
        let mut state = with_idle(1);
        assert_eq!(state.reserve_starts(&sizing(2, 8), now), 1);
        assert_eq!(state.starting, 1);
        assert_eq!(
            state.reserve_starts(&sizing(2, 8), now),
            0,
            "starting ones count"
        );
        state.waiting = 1;
        assert_eq!(
            state.reserve_starts(&sizing(2, 8), now),
            1,
            "a waiting caller gets a sandbox of its own"
        );
        assert_eq!(
            State::<u32>::new().reserve_starts(&sizing(0, 8), now),
            0,
            "min idle 0: nothing starts until someone waits"
        );
    }

    #[test]
    fn a_sandbox_in_reset_counts_toward_refill() {
        let now = Instant::now();
        // A burst of back-to-back calls: the one sandbox is resetting while
        // the next call arrives; it comes back in ~2 ms, so no start is needed.
        let mut state = with_idle(1);
        assert_eq!(state.lease("local"), Some(0));
        state.end_lease(true, "local");
        assert_eq!(state.resetting, 1);
        assert_eq!(state.reserve_starts(&sizing(1, 8), now), 0);
        state.waiting = 1;
        assert_eq!(
            state.reserve_starts(&sizing(1, 8), now),
            1,
            "a waiting caller still gets one beyond min idle"
        );
    }

    #[test]
    fn refill_stays_within_max_counting_containers_being_removed() {
        let now = Instant::now();
        let mut state = with_idle(0);
        state.removing = 3;
        state.busy = 1;
        state.waiting = 4;
        assert_eq!(state.reserve_starts(&sizing(2, 6), now), 2);
        assert_eq!(state.total(), 6);
        assert_eq!(state.reserve_starts(&sizing(2, 6), now), 0);
    }

    #[test]
    fn a_failed_start_frees_its_slot_backs_off_then_probes_one_at_a_time() {
        let now = Instant::now();
        let mut state = with_idle(0);
        state.waiting = 3;
        assert_eq!(state.reserve_starts(&sizing(1, 8), now), 4);
        for _ in 0..4 {
            state.start_failed(agent_failure("not ready"), now, false);
        }
        assert_eq!((state.starting, state.total()), (0, 0), "no slot held");
        assert_eq!(state.failed_starts, 4);
        assert_eq!(state.reserve_starts(&sizing(1, 8), now), 0, "backing off");
        let later = now + MAX_CREATE_BACKOFF;
        assert_eq!(
            state.reserve_starts(&sizing(1, 8), later),
            1,
            "then one probe"
        );
        assert_eq!(state.reserve_starts(&sizing(1, 8), later), 0);
        assert_eq!(state.started(7), None);
        assert_eq!(state.failed_starts, 0);
        assert!(state.last_error.is_none());
        assert_eq!(
            state.reserve_starts(&sizing(1, 8), later),
            3,
            "all at once again"
        );
    }

    #[test]
    fn callers_give_up_at_once_only_when_nothing_can_become_idle() {
        let now = Instant::now();
        let mut state = with_idle(0);
        assert!(state.unavailable().is_none(), "nothing failed");
        state.starting = 1;
        state.start_failed(agent_failure("image broken"), now, true);
        assert_eq!(state.removing, 1, "its container still counts");
        let reason = state.unavailable().map(|e| e.to_string());
        assert_eq!(
            reason.as_deref(),
            Some("the sandbox reset failed: image broken")
        );
        state.busy = 1;
        assert!(
            state.unavailable().is_none(),
            "a busy sandbox may come back"
        );
        state.busy = 0;
        state.starting = 1;
        assert!(state.unavailable().is_none(), "a start is under way");
    }

    #[test]
    fn a_removal_the_engine_refused_keeps_its_slot() {
        let mut state = with_idle(1);
        assert_eq!(state.lease("local"), Some(0));
        state.end_lease(false, "local");
        state.removal_failed(agent_failure("engine unreachable"));
        assert_eq!((state.removing, state.total()), (1, 1));
        assert_eq!(
            state.reserve_starts(&sizing(1, 1), Instant::now()),
            0,
            "no room"
        );
        assert!(state.unavailable().is_some(), "the refusal stands");
        state.removed();
        assert_eq!(state.total(), 0);
    }

    #[test]
    fn the_sweep_keeps_fit_sandboxes_in_order_and_the_stack_never_empty() {
        let mut state = with_idle(6);
        let taken = state.take_unfit(|n| (*n % 2 == 0).then_some(RecycleReason::MaxAge));
        assert_eq!(taken.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 2, 4]);
        assert_eq!(state.idle, [1, 3, 5]);
        assert_eq!(state.removing, 3);
        assert_eq!(
            state.lease("local"),
            Some(5),
            "the warmest still goes out first"
        );
        assert!(state.take_unfit(|_| None).is_empty());
        assert_eq!(state.idle, [1, 3]);
    }

    #[test]
    fn the_next_sandbox_goes_to_the_waiting_principal_holding_the_fewest() {
        let mut state: State<u32> = State::new();
        state.idle = vec![1, 2];
        // ann takes both, and waits for a third and a fourth.
        assert_eq!(state.lease("ann"), Some(2));
        assert_eq!(state.lease("ann"), Some(1));
        state.wait("ann", true);
        state.wait("ann", true);
        // bob, holding none, comes to wait too; a sandbox comes back.
        state.wait("bob", true);
        state.idle.push(3);
        assert_eq!(state.lease("ann"), None, "bob holds fewer: his turn");
        assert_eq!(state.lease("bob"), Some(3));
        state.wait("bob", false);
        // Both hold some now; ann (2) waits, bob (1) does not: ann may take the next.
        state.idle.push(4);
        assert_eq!(state.lease("ann"), Some(4));
        state.wait("ann", false);
        // Alone, a principal takes whatever is idle however much it holds.
        state.idle.push(5);
        assert_eq!(state.lease("ann"), Some(5));
        state.wait("ann", false);
        for _ in 0..4 {
            state.end_lease(true, "ann");
        }
        state.end_lease(true, "bob");
        assert!(
            state.shares.is_empty(),
            "nothing kept of principals gone: {:?}",
            state.shares
        );
        assert_eq!((state.busy, state.waiting), (0, 0));
    }

    #[test]
    fn a_closed_pool_takes_nothing_back() {
        let mut state = with_idle(2);
        state.resetting = 1;
        assert_eq!(state.close(), [0, 1]);
        assert_eq!(state.reset_done(9), Some(9));
        assert_eq!((state.removing, state.total()), (3, 3));
        assert_eq!(state.reserve_starts(&sizing(2, 8), Instant::now()), 0);
    }

    #[test]
    fn start_failures_back_off_exponentially_up_to_a_cap() {
        let backoffs: Vec<Duration> = (0..10).map(create_backoff).collect();
        let ms = Duration::from_millis;
        assert_eq!(backoffs[..4], [ms(250), ms(500), ms(1000), ms(2000)]);
        assert!(backoffs.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*backoffs.last().unwrap(), MAX_CREATE_BACKOFF);
    }

    #[test]
    fn every_recycle_reason_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> =
            RecycleReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RecycleReason::ALL.len());
    }
}

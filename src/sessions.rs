//! Sessions: named interpreters that keep their state between calls.
//!
//! Owns the table of live sessions, each holding one sandbox leased from the
//! pool for its whole life; the order of a session's calls (one at a time, in
//! arrival order: a fair `tokio::sync::Mutex` per session); the limit on live
//! sessions; their end (on request, after `MCP_BRIDGE_SESSION_IDLE_TTL`
//! without calls, when a call in it fails, at shutdown), which recycles the
//! container; a new sandbox under a session whose interpreter or container
//! died while it waited; and the memory of why a session ended, so the next
//! call with its name says it was lost. It does not run code nor judge runs
//! (that is [`crate::call`], which decides when a session ends) and does not
//! speak to the engine or the agent (a sandbox's liveness is a look at its
//! stream, as the pool's).
//!
//! Locks: the table is a `std::sync::Mutex` never held across an `.await`; a
//! session's seat is a `tokio` mutex held for the whole of a call. The table
//! may be locked while a seat is held, never the other way round.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use crate::metrics;
use crate::pool::{AcquireError, Lease, Pool, RecycleReason, Verdict};
use crate::principals::Principal;
use crate::report::Found;

/// How many ended sessions' reasons are remembered for their next call.
const REMEMBERED_ENDS: usize = 256;
/// Calls of one session running or waiting at once (each holds its request
/// in memory while it waits).
const MAX_QUEUED: usize = 16;
/// How often, at most, idle sessions are looked for.
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(15);

/// A session's name as its principal owns it: two principals that both
/// name a session `eda` have two sessions, and neither sees the other's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionName {
    pub principal: Principal,
    /// The name the client gave.
    pub name: String,
}

impl SessionName {
    pub fn new(principal: Principal, name: &str) -> Self {
        Self {
            principal,
            name: name.to_owned(),
        }
    }
}

/// What the client named it (never its principal: errors go to that client).
impl std::fmt::Display for SessionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why a session ended. A closed set, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client asked (`end_session: true`).
    Requested,
    /// No call for `MCP_BRIDGE_SESSION_IDLE_TTL`.
    Idle,
    /// A call in it ran out of time, or of memory, and was killed.
    Timeout,
    Oom,
    /// A call in it was cancelled by the client.
    Cancelled,
    /// Its interpreter exited (`os._exit`, a crash), during a call or between calls.
    Exited,
    /// Its sandbox failed underneath it (agent, protocol, transport).
    SandboxFailed,
    /// The server is shutting down.
    Shutdown,
}

impl EndReason {
    pub const ALL: [Self; 8] = [
        Self::Requested,
        Self::Idle,
        Self::Timeout,
        Self::Oom,
        Self::Cancelled,
        Self::Exited,
        Self::SandboxFailed,
        Self::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Idle => "idle",
            Self::Timeout => "timeout",
            Self::Oom => "oom",
            Self::Cancelled => "cancelled",
            Self::Exited => "exited",
            Self::SandboxFailed => "sandbox_failed",
            Self::Shutdown => "shutdown",
        }
    }

    /// Why a session ends when its sandbox must be recycled after a call.
    pub fn for_recycle(reason: RecycleReason) -> Self {
        match reason {
            RecycleReason::Timeout => Self::Timeout,
            RecycleReason::Oom => Self::Oom,
            _ => Self::SandboxFailed,
        }
    }
}

/// How a session ended, for the result of its next call (or of this one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub reason: EndReason,
    /// What happened, in words a model can act on.
    pub detail: String,
}

impl Ended {
    /// The client asked (`end_session: true`).
    pub fn requested() -> Self {
        Self {
            reason: EndReason::Requested,
            detail: "ended as asked (end_session)".into(),
        }
    }
}

/// Why a call could not have its session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "session limit reached: {live} live ({variable}={max}): {listing}; end one \
         with end_session: true, or wait until one has been idle for {ttl} \
         (MCP_BRIDGE_SESSION_IDLE_TTL)",
        ttl = humantime::format_duration(*.ttl)
    )]
    Limit {
        live: usize,
        /// `MCP_BRIDGE_MAX_SESSIONS`, or `…_PER_CLIENT` for one principal's.
        variable: &'static str,
        max: usize,
        listing: String,
        ttl: Duration,
    },
    #[error("sessions are off (MCP_BRIDGE_MAX_SESSIONS=0): run without `session`")]
    Off,
    #[error(
        "session {name:?} already has {MAX_QUEUED} calls running or waiting; its calls run one \
         at a time: wait for their results"
    )]
    Queue { name: String },
    #[error(
        "session {name:?} stayed busy with its earlier calls for {} (MCP_BRIDGE_POOL_WAIT_TIMEOUT): \
         this call did not run; send it again once they are done",
        humantime::format_duration(*.waited)
    )]
    Busy { name: String, waited: Duration },
    #[error("no sandbox for the session: {0}")]
    NoSandbox(#[from] AcquireError),
}

/// What `end_session` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The session ended (after the calls before the request).
    Ended,
    /// It had ended before (on its own, while the request waited): why.
    AlreadyEnded(Ended),
    /// No session has that name, nor had lately.
    NoSession,
}

/// The live sessions.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.live())
            .field("max", &self.shared.max)
            .finish_non_exhaustive()
    }
}

struct Shared {
    table: Mutex<Table>,
    idle_ttl: Duration,
    max: usize,
    /// Live sessions one principal may have (`MCP_BRIDGE_MAX_SESSIONS_PER_CLIENT`).
    max_per_principal: usize,
    /// The sweeper of idle sessions was started (with the first session).
    sweeping: AtomicBool,
    /// Numbers the calls and end requests in the order they arrive.
    arrivals: AtomicU64,
}

#[derive(Default)]
struct Table {
    live: HashMap<SessionName, Arc<Session>>,
    /// Why sessions ended, by name, oldest first (at most [`REMEMBERED_ENDS`]).
    ended: VecDeque<(SessionName, Ended)>,
}

struct Session {
    seat: Arc<tokio::sync::Mutex<Seat>>,
    /// Calls holding or waiting for the seat (at most [`MAX_QUEUED`]).
    queued: AtomicUsize,
    /// The arrival of the call that made it (see [`Sessions::end`]).
    made_by: u64,
}

/// Counts a call as queued on its session for as long as it lives: while
/// it waits for the seat and while its turn lasts.
struct Queued(Arc<Session>);

impl Queued {
    fn join(session: Arc<Session>, name: &SessionName) -> Result<Self, SessionError> {
        if session.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
            session.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SessionError::Queue {
                name: name.to_string(),
            });
        }
        Ok(Self(session))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the call holding a session's lock may use.
#[derive(Default)]
struct Seat {
    lease: Option<Lease>,
    /// The session ended: a caller that waited for this seat looks again.
    closed: bool,
    last_used: Option<Instant>,
}

impl Sessions {
    pub fn new(max: usize, idle_ttl: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                table: Mutex::new(Table::default()),
                idle_ttl,
                max,
                max_per_principal: max,
                sweeping: AtomicBool::new(false),
                arrivals: AtomicU64::new(0),
            }),
        }
    }

    /// At most `max` live sessions for each principal (the total bound stays).
    pub fn with_per_principal(mut self, max: usize) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("set before the sessions are shared")
            .max_per_principal = max;
        self
    }

    /// How many sessions are live.
    pub fn live(&self) -> usize {
        self.shared.table().live.len()
    }

    /// The live sessions (at most `MCP_BRIDGE_MAX_SESSIONS`) and how long
    /// each has been idle (`None`: a call holds it now).
    pub fn list(&self) -> Vec<(SessionName, Option<Duration>)> {
        let table = self.shared.table();
        table
            .live
            .iter()
            .map(|(name, session)| {
                let idle = session
                    .seat
                    .try_lock()
                    .ok()
                    .and_then(|seat| seat.last_used.map(|used| used.elapsed()));
                (name.clone(), idle)
            })
            .collect()
    }

    /// Waits for the session's turn (a session runs one call at a time, in
    /// arrival order; at most `wait`, then [`SessionError::Busy`]) and
    /// returns it with the session's sandbox: its own, or a new one from
    /// `pool` when the session is new, was lost, or its sandbox died while
    /// the session was idle (the turn then says it was lost).
    pub async fn enter(
        &self,
        name: &SessionName,
        pool: &Pool,
        wait: Duration,
    ) -> Result<Turn, SessionError> {
        let mut turn = self.seated(name, wait).await?;
        let alive = turn
            .seat_mut()
            .lease
            .as_mut()
            .map(|lease| lease.sandbox().is_idle_and_alive());
        match alive {
            None => turn.take_sandbox(pool).await?,
            Some(true) => {}
            Some(false) => {
                let ended = Ended {
                    reason: EndReason::SandboxFailed,
                    detail: "its sandbox stopped between calls (the container died)".into(),
                };
                turn.restart(ended, RecycleReason::Unhealthy, pool).await?;
            }
        }
        Ok(turn)
    }

    /// The session's turn, without a sandbox if it has none (new, or lost).
    async fn seated(&self, name: &SessionName, wait: Duration) -> Result<Turn, SessionError> {
        if self.shared.max == 0 {
            return Err(SessionError::Off);
        }
        self.start_sweeping();
        let arrival = self.shared.arrival();
        let deadline = tokio::time::Instant::now() + wait;
        let mut session = self.shared.find_or_create(name, arrival)?;
        loop {
            let queued = Queued::join(session.clone(), name)?;
            let Ok(mut seat) =
                tokio::time::timeout_at(deadline, session.seat.clone().lock_owned()).await
            else {
                return Err(SessionError::Busy {
                    name: name.to_string(),
                    waited: wait,
                });
            };
            if !seat.closed {
                let idle = seat.last_used.map(|t| t.elapsed());
                if idle.is_none_or(|idle| idle < self.shared.idle_ttl) {
                    return Ok(Turn {
                        shared: self.shared.clone(),
                        name: name.clone(),
                        session,
                        seat: Some(seat),
                        found: Found::Continued,
                        _queued: queued,
                    });
                }
                // The sweeper had not got to it yet; the caller sees what it would have.
                self.shared
                    .end(name, &session, &mut seat, self.idle_end(), None);
            }
            // It ended while we waited: the name is free again. Its successor
            // is found or made while this seat is still held, so that an end
            // request queued behind this call finds it (see `end`).
            session = self.shared.find_or_create(name, arrival)?;
        }
    }

    /// Ends the session `name` after the calls queued before this request.
    /// When it ended on its own while the request waited (a call timed
    /// out), the session a call queued before the request made in its
    /// place is ended instead: the client asked for the end after that call.
    pub async fn end(&self, name: &SessionName, reason: Ended) -> Ending {
        let arrival = self.shared.arrival();
        let Some(mut session) = self.shared.table().live.get(name).cloned() else {
            return self.shared.ended_before(name);
        };
        loop {
            let mut seat = session.seat.clone().lock_owned().await;
            if !seat.closed {
                self.shared.end(name, &session, &mut seat, reason, None);
                return Ending::Ended;
            }
            let successor = self.shared.table().live.get(name).cloned();
            match successor {
                Some(next) if next.made_by < arrival => session = next,
                _ => return self.shared.ended_before(name),
            }
        }
    }

    /// Ends every session (their containers go with the pool's).
    pub async fn shutdown(&self) {
        let names: Vec<SessionName> = self.shared.table().live.keys().cloned().collect();
        for name in names {
            let ended = Ended {
                reason: EndReason::Shutdown,
                detail: "the server shut down".into(),
            };
            self.end(&name, ended).await;
        }
    }

    fn idle_end(&self) -> Ended {
        Ended {
            reason: EndReason::Idle,
            detail: format!(
                "it was idle for {} (MCP_BRIDGE_SESSION_IDLE_TTL)",
                humantime::format_duration(self.shared.idle_ttl)
            ),
        }
    }

    /// The sweeper of idle sessions: one task, started with the first session,
    /// gone with the last handle on the table.
    fn start_sweeping(&self) {
        // A load on every call; the swap only until the sweeper runs.
        if self.shared.sweeping.load(Ordering::Relaxed)
            || self.shared.sweeping.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak = Arc::downgrade(&self.shared);
        let period = (self.shared.idle_ttl / 4).clamp(Duration::from_millis(100), MAX_SWEEP_PERIOD);
        tokio::spawn(sweep(weak, period));
    }
}

async fn sweep(shared: Weak<Shared>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let sessions = Sessions { shared };
        let candidates: Vec<(SessionName, Arc<Session>)> = sessions
            .shared
            .table()
            .live
            .iter()
            .map(|(name, session)| (name.clone(), session.clone()))
            .collect();
        for (name, session) in candidates {
            // A session in a call (or with callers queued) is not idle.
            let Ok(mut seat) = session.seat.clone().try_lock_owned() else {
                continue;
            };
            let idle = seat.last_used.map(|t| t.elapsed());
            if !seat.closed && idle.is_some_and(|idle| idle >= sessions.shared.idle_ttl) {
                let ended = sessions.idle_end();
                sessions.shared.end(&name, &session, &mut seat, ended, None);
            }
        }
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // Each update is a few map operations that cannot panic halfway.
        self.table.lock().expect("session table is never poisoned")
    }

    fn arrival(&self) -> u64 {
        self.arrivals.fetch_add(1, Ordering::Relaxed)
    }

    /// What an end request says of a name that is not live (any more).
    fn ended_before(&self, name: &SessionName) -> Ending {
        match self.table().take_ended(name) {
            Some(ended) => Ending::AlreadyEnded(ended),
            None => Ending::NoSession,
        }
    }

    /// The live session `name`, or a new one made by the call that arrived
    /// as `arrival`.
    fn find_or_create(
        &self,
        name: &SessionName,
        arrival: u64,
    ) -> Result<Arc<Session>, SessionError> {
        let mut table = self.table();
        if let Some(session) = table.live.get(name) {
            return Ok(session.clone());
        }
        if table.live.len() >= self.max {
            return Err(SessionError::Limit {
                live: table.live.len(),
                variable: "MCP_BRIDGE_MAX_SESSIONS",
                max: self.max,
                listing: table.listing(&name.principal),
                ttl: self.idle_ttl,
            });
        }
        let own = table
            .live
            .keys()
            .filter(|live| live.principal == name.principal)
            .count();
        if own >= self.max_per_principal {
            return Err(SessionError::Limit {
                live: own,
                variable: "MCP_BRIDGE_MAX_SESSIONS_PER_CLIENT",
                max: self.max_per_principal,
                listing: table.listing(&name.principal),
                ttl: self.idle_ttl,
            });
        }
        let session = Arc::new(Session {
            seat: Arc::new(tokio::sync::Mutex::new(Seat::default())),
            queued: AtomicUsize::new(0),
            made_by: arrival,
        });
        table.live.insert(name.clone(), session.clone());
        Ok(session)
    }

    /// Ends a session whose seat is held: its sandbox is recycled (with
    /// `verdict`'s reason, or as an ended session), its name freed, and why it
    /// ended remembered for its next call (unless the client asked for it).
    fn end(
        &self,
        name: &SessionName,
        session: &Arc<Session>,
        seat: &mut Seat,
        ended: Ended,
        recycle: Option<RecycleReason>,
    ) {
        seat.closed = true;
        recycle_lease(seat, recycle.unwrap_or(RecycleReason::SessionEnded));
        // The detail quoted: it can hold the agent's stderr, which user code
        // can write under gVisor.
        tracing::info!(
            session = %name,
            principal = %name.principal,
            reason = ended.reason.as_str(),
            detail = ?ended.detail,
            "session ended"
        );
        metrics::observe_session_ended(ended.reason.as_str());
        let mut table = self.table();
        table.forget_live(name, session);
        if ended.reason == EndReason::Requested {
            table.ended.retain(|(n, _)| n != name);
        } else {
            table.remember(name, ended);
        }
    }
}

/// A session's sandbox destroyed (it holds the session's state: never
/// reset for another call).
fn recycle_lease(seat: &mut Seat, reason: RecycleReason) {
    if let Some(lease) = seat.lease.take() {
        lease.finish(Verdict::Recycle(reason));
    }
}

impl Table {
    /// Removes `name` from the live sessions if it is still `session`.
    fn forget_live(&mut self, name: &SessionName, session: &Arc<Session>) {
        if self
            .live
            .get(name)
            .is_some_and(|live| Arc::ptr_eq(live, session))
        {
            self.live.remove(name);
        }
    }

    /// Why `name`'s state was lost, for its next call (the latest only).
    fn remember(&mut self, name: &SessionName, ended: Ended) {
        self.ended.retain(|(n, _)| n != name);
        if self.ended.len() >= REMEMBERED_ENDS {
            self.ended.pop_front();
        }
        self.ended.push_back((name.clone(), ended));
    }

    fn take_ended(&mut self, name: &SessionName) -> Option<Ended> {
        let at = self.ended.iter().position(|(n, _)| n == name)?;
        self.ended.remove(at).map(|(_, ended)| ended)
    }

    /// `a (idle 2m 3s), b (in a call)`, by name: the sessions of
    /// `principal`, then how many other clients hold (never their names).
    fn listing(&self, principal: &Principal) -> String {
        let mut entries: Vec<String> = self
            .live
            .iter()
            .filter(|(name, _)| name.principal == *principal)
            .map(|(name, session)| {
                let state = match session.seat.try_lock() {
                    Ok(seat) => match seat.last_used {
                        Some(t) => format!(
                            "idle {}",
                            humantime::format_duration(Duration::from_secs(t.elapsed().as_secs()))
                        ),
                        None => "starting".to_owned(),
                    },
                    Err(_) => "in a call".to_owned(),
                };
                format!("{name} ({state})")
            })
            .collect();
        entries.sort();
        let others = self.live.len() - entries.len();
        if others > 0 {
            entries.push(format!("{others} of other clients"));
        }
        entries.join(", ")
    }
}

/// A call's turn in its session: the session's sandbox, held until the call
/// is over. [`Turn::keep`] leaves the session for its next call,
/// [`Turn::end`] ends it; a turn dropped otherwise (the client cancelled
/// the call mid-run) ends it as cancelled, since a run's state cannot be
/// trusted after it was cut.
pub struct Turn {
    shared: Arc<Shared>,
    name: SessionName,
    session: Arc<Session>,
    seat: Option<OwnedMutexGuard<Seat>>,
    found: Found,
    /// The call counts toward the session's [`MAX_QUEUED`] until its turn ends.
    _queued: Queued,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("session", &self.name)
            .field("found", &self.found)
            .finish_non_exhaustive()
    }
}

impl Turn {
    pub fn found(&self) -> &Found {
        &self.found
    }

    pub fn lease(&mut self) -> &mut Lease {
        self.seat_mut()
            .lease
            .as_mut()
            .expect("a turn holds its session's lease until keep or end")
    }

    fn seat_mut(&mut self) -> &mut Seat {
        self.seat
            .as_mut()
            .expect("a turn holds its seat until keep or end")
    }

    /// Its interpreter is gone (`ended` says how; its sandbox is recycled
    /// for `recycle`) before this call ran: the session goes on, without the
    /// call losing its place, on a new sandbox, and the call is told it was
    /// lost. Not an end of the session (nor counted as one). If no sandbox
    /// comes, the next call with the name is told instead.
    pub async fn restart(
        &mut self,
        ended: Ended,
        recycle: RecycleReason,
        pool: &Pool,
    ) -> Result<(), SessionError> {
        recycle_lease(self.seat_mut(), recycle);
        tracing::info!(
            session = %self.name,
            principal = %self.name.principal,
            reason = ended.reason.as_str(),
            detail = ?ended.detail,
            "session lost its interpreter; it goes on in a new sandbox"
        );
        self.shared.table().remember(&self.name, ended);
        self.take_sandbox(pool).await
    }

    /// A sandbox of the pool for a seat that has none: the session is new,
    /// or it was lost (and the turn says why).
    async fn take_sandbox(&mut self, pool: &Pool) -> Result<(), SessionError> {
        let waiting = Instant::now();
        let lease = pool.acquire_for(&self.name.principal).await;
        metrics::observe_wait(waiting.elapsed());
        // A failed wait drops the turn, which frees the name; why it was
        // lost stays remembered for the next call.
        self.seat_mut().lease = Some(lease?);
        self.found = match self.shared.table().take_ended(&self.name) {
            Some(ended) => Found::Lost(ended.detail),
            None => Found::New,
        };
        Ok(())
    }

    /// The call is over; the session waits for its next one.
    pub fn keep(mut self) {
        if let Some(mut seat) = self.seat.take() {
            seat.last_used = Some(Instant::now());
        }
    }

    /// The session ends with this call. `recycle` is the reason its sandbox
    /// is destroyed when the call's run failed (else it counts as an ended session).
    pub fn end(mut self, ended: Ended, recycle: Option<RecycleReason>) {
        if let Some(mut seat) = self.seat.take() {
            self.shared
                .end(&self.name, &self.session, &mut seat, ended, recycle);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(mut seat) = self.seat.take() else {
            return;
        };
        if seat.lease.is_none() {
            // It never had a sandbox (or its restart found none): nothing
            // ran, nothing to tell; why it was lost, if it was, stays
            // remembered for the next call.
            seat.closed = true;
            self.shared.table().forget_live(&self.name, &self.session);
        } else {
            let ended = Ended {
                reason: EndReason::Cancelled,
                detail: "a call in it was cancelled mid-run".into(),
            };
            self.shared.end(
                &self.name,
                &self.session,
                &mut seat,
                ended,
                Some(RecycleReason::Abandoned),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_labels() {
        let labels: std::collections::BTreeSet<_> =
            EndReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), EndReason::ALL.len());
        assert_eq!(
            EndReason::for_recycle(RecycleReason::Timeout),
            EndReason::Timeout
        );
        assert_eq!(
            EndReason::for_recycle(RecycleReason::Protocol),
            EndReason::SandboxFailed
        );
    }

    fn shared(max: usize) -> Arc<Shared> {
        Sessions::new(max, Duration::from_secs(600)).shared
    }

    fn local(name: &str) -> SessionName {
        SessionName::new(Principal::local(), name)
    }

    /// Long enough never to be reached by a test that does not mean to.
    const WAIT: Duration = Duration::from_secs(600);

    /// Lets the tasks spawned so far run until they wait (the tests run on
    /// tokio's current-thread runtime: a spawned task runs only then).
    async fn let_them_queue() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    fn queued(sessions: &Sessions, name: &str) -> usize {
        let table = sessions.shared.table();
        table.live[&local(name)].queued.load(Ordering::Acquire)
    }

    #[test]
    fn ended_sessions_are_remembered_within_a_bound_and_requested_ends_are_not() {
        let shared = shared(4);
        let end = |name: &str, reason| {
            let name = local(name);
            let session = shared.find_or_create(&name, 0).unwrap();
            let mut seat = Seat::default();
            let ended = Ended {
                reason,
                detail: format!("{name} ended"),
            };
            shared.end(&name, &session, &mut seat, ended, None);
            assert!(seat.closed);
        };
        end("asked", EndReason::Requested);
        assert!(shared.table().take_ended(&local("asked")).is_none());
        for i in 0..=REMEMBERED_ENDS {
            end(&format!("s{i}"), EndReason::Idle);
        }
        let mut table = shared.table();
        assert_eq!(table.ended.len(), REMEMBERED_ENDS);
        assert!(
            table.take_ended(&local("s0")).is_none(),
            "the oldest is forgotten"
        );
        let last = format!("s{REMEMBERED_ENDS}");
        assert_eq!(
            table.take_ended(&local(&last)).unwrap().detail,
            format!("{last} ended")
        );
        assert!(table.take_ended(&local(&last)).is_none(), "told once");
        assert!(table.live.is_empty());
    }

    /// Through the turns callers get: the call in its turn counts too, so
    /// at most 16 run or wait (it was 17: a call stopped counting once seated).
    #[tokio::test]
    async fn a_session_holds_at_most_max_queued_calls() {
        let sessions = Sessions::new(4, Duration::from_secs(600));
        let running = sessions.seated(&local("q"), WAIT).await.unwrap();
        let waiting: Vec<_> = (1..MAX_QUEUED)
            .map(|_| {
                let sessions = sessions.clone();
                tokio::spawn(
                    async move { sessions.seated(&local("q"), WAIT).await.map(Turn::keep) },
                )
            })
            .collect();
        let_them_queue().await;
        assert_eq!(queued(&sessions, "q"), MAX_QUEUED);
        // Refused at once, not after its (short) wait.
        let Err(error) = sessions
            .seated(&local("q"), Duration::from_millis(50))
            .await
        else {
            panic!("one call more than the bound");
        };
        assert_eq!(
            error.to_string(),
            "session \"q\" already has 16 calls running or waiting; its calls run one at a time: \
             wait for their results"
        );
        running.keep();
        for call in waiting {
            call.await.unwrap().unwrap();
        }
        assert_eq!(queued(&sessions, "q"), 0, "each call counted out");
        assert!(sessions.seated(&local("q"), WAIT).await.is_ok());
    }

    #[tokio::test]
    async fn a_call_waits_for_its_turn_within_a_bound() {
        let sessions = Sessions::new(4, Duration::from_secs(600));
        let running = sessions.seated(&local("slow"), WAIT).await.unwrap();
        let Err(error) = sessions
            .seated(&local("slow"), Duration::from_millis(50))
            .await
        else {
            panic!("the session is busy");
        };
        assert_eq!(
            error.to_string(),
            "session \"slow\" stayed busy with its earlier calls for 50ms \
             (MCP_BRIDGE_POOL_WAIT_TIMEOUT): this call did not run; send it again once they are done"
        );
        assert_eq!(
            queued(&sessions, "slow"),
            1,
            "the call that gave up no longer counts"
        );
        running.keep();
    }

    /// A call C2 queued behind C1, then an end request E. C1's run fails,
    /// which ends the session; C2 finds it ended and makes a new one; E,
    /// seated next on the ended session, follows the name to the session C2
    /// made (C2 arrived before E) and ends it after C2's turn, as the client
    /// asked: it used to end nothing and leave C2's session to idle expiry.
    #[tokio::test]
    async fn an_end_queued_behind_a_call_that_made_a_new_session_ends_that_one() {
        let sessions = Sessions::new(4, Duration::from_secs(600));
        let first = sessions.seated(&local("s"), WAIT).await.unwrap();
        let second = tokio::spawn({
            let sessions = sessions.clone();
            async move { sessions.seated(&local("s"), WAIT).await }
        });
        let_them_queue().await;
        let end = tokio::spawn({
            let sessions = sessions.clone();
            async move { sessions.end(&local("s"), Ended::requested()).await }
        });
        let_them_queue().await;
        let timed_out = Ended {
            reason: EndReason::Timeout,
            detail: "a call timed out".into(),
        };
        first.end(timed_out, Some(RecycleReason::Timeout));
        let second = second.await.unwrap().unwrap();
        assert_eq!(
            second.found(),
            &Found::Continued,
            "no sandbox yet: `enter` takes one"
        );
        let_them_queue().await;
        assert!(!end.is_finished(), "the end waits for the call before it");
        assert_eq!(sessions.live(), 1);
        second.keep();
        assert_eq!(end.await.unwrap(), Ending::Ended);
        assert_eq!(sessions.live(), 0, "nothing left to idle");

        // A call that arrives after the end request is not ended by it.
        let first = sessions.seated(&local("t"), WAIT).await.unwrap();
        let end = tokio::spawn({
            let sessions = sessions.clone();
            async move { sessions.end(&local("t"), Ended::requested()).await }
        });
        let_them_queue().await;
        first.end(
            Ended {
                reason: EndReason::Exited,
                detail: "its interpreter exited".into(),
            },
            None,
        );
        let later = sessions.seated(&local("t"), WAIT).await.unwrap();
        later.keep();
        let Ending::AlreadyEnded(before) = end.await.unwrap() else {
            panic!("the end request finds the session ended before it");
        };
        assert_eq!(before.detail, "its interpreter exited");
        assert_eq!(sessions.live(), 1, "the later call's session lives on");
        assert_eq!(
            sessions.end(&local("nobody"), Ended::requested()).await,
            Ending::NoSession
        );
    }

    #[test]
    fn the_limit_error_lists_the_live_sessions() {
        let shared = shared(2);
        let a = shared.find_or_create(&local("a"), 0).unwrap();
        a.seat.try_lock().unwrap().last_used = Some(Instant::now() - Duration::from_secs(125));
        let b = shared.find_or_create(&local("b"), 1).unwrap();
        let _in_a_call = b.seat.try_lock().unwrap();
        assert!(Arc::ptr_eq(
            &shared.find_or_create(&local("a"), 2).unwrap(),
            &a
        ));
        let Err(error) = shared.find_or_create(&local("c"), 3) else {
            panic!("a third session is over the limit");
        };
        assert_eq!(
            error.to_string(),
            "session limit reached: 2 live (MCP_BRIDGE_MAX_SESSIONS=2): a (idle 2m 5s), \
             b (in a call); end one with end_session: true, or wait until one has been idle \
             for 10m (MCP_BRIDGE_SESSION_IDLE_TTL)"
        );
    }

    /// Two principals naming a session alike get two sessions, and the
    /// limit error lists only the asker's own sessions.
    #[test]
    fn principals_have_their_own_sessions_under_one_name() {
        let shared = shared(2);
        let (ann, bob) = (
            Principal::new("ann").unwrap(),
            Principal::new("bob").unwrap(),
        );
        let ann_eda = shared
            .find_or_create(&SessionName::new(ann.clone(), "eda"), 0)
            .unwrap();
        let bob_eda = shared
            .find_or_create(&SessionName::new(bob.clone(), "eda"), 1)
            .unwrap();
        assert!(!Arc::ptr_eq(&ann_eda, &bob_eda));
        let Err(error) = shared.find_or_create(&SessionName::new(bob, "secret"), 2) else {
            panic!("over the limit");
        };
        let error = error.to_string();
        assert!(
            error.contains("eda (starting), 1 of other clients;"),
            "{error}"
        );
        assert!(!error.contains("ann"), "{error}");
    }

    #[test]
    fn one_principal_cannot_take_every_session() {
        let sessions = Sessions::new(4, Duration::from_secs(600)).with_per_principal(2);
        let shared = &sessions.shared;
        let (ann, bob) = (
            Principal::new("ann").unwrap(),
            Principal::new("bob").unwrap(),
        );
        for name in ["a", "b"] {
            shared
                .find_or_create(&SessionName::new(ann.clone(), name), 0)
                .unwrap();
        }
        let Err(error) = shared.find_or_create(&SessionName::new(ann.clone(), "c"), 1) else {
            panic!("ann is over her share");
        };
        let error = error.to_string();
        assert!(
            error.contains("2 live (MCP_BRIDGE_MAX_SESSIONS_PER_CLIENT=2)"),
            "{error}"
        );
        // Her own live ones still serve her; bob still gets his.
        shared
            .find_or_create(&SessionName::new(ann, "a"), 2)
            .unwrap();
        shared
            .find_or_create(&SessionName::new(bob, "a"), 3)
            .unwrap();
    }
}

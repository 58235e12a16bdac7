//! Sessions: named interpreters that keep their state between calls.
//!
//! Owns the table of live sessions, each holding one sandbox leased from the
//! pool for its whole life; the order of a session's calls (one at a time, in
//! arrival order: a fair `tokio::sync::Mutex` per session); the limit on live
//! sessions; their end (on request, after `MCP_BRIDGE_SESSION_IDLE_TTL`
//! without calls, when a call in it fails, at shutdown), which recycles the
//! container; and the memory of why a session ended, so the next call with its
//! name says it was lost. It does not run code nor judge runs (that is
//! [`crate::call`], which decides when a session ends) and does not speak to
//! the engine or the agent.
//!
//! Locks: the table is a `std::sync::Mutex` never held across an `.await`; a
//! session's seat is a `tokio` mutex held for the whole of a call. The table
//! may be locked while a seat is held, never the other way round.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use crate::metrics;
use crate::pool::{AcquireError, Lease, Pool, RecycleReason, Verdict};
use crate::report::Found;

/// How many ended sessions' reasons are remembered for their next call.
const REMEMBERED_ENDS: usize = 256;
/// Calls of one session running or waiting at once (each holds its request
/// in memory while it waits).
const MAX_QUEUED: usize = 16;
/// How often, at most, idle sessions are looked for.
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(15);

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
        "session limit reached: {live} live (MCP_BRIDGE_MAX_SESSIONS={max}): {listing}; end one \
         with end_session: true, or wait until one has been idle for {ttl} \
         (MCP_BRIDGE_SESSION_IDLE_TTL)",
        ttl = humantime::format_duration(*.ttl)
    )]
    Limit {
        live: usize,
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
    #[error("no sandbox for the session: {0}")]
    NoSandbox(#[from] AcquireError),
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
    /// The sweeper of idle sessions was started (with the first session).
    sweeping: AtomicBool,
}

#[derive(Default)]
struct Table {
    live: HashMap<String, Arc<Session>>,
    /// Why sessions ended, by name, oldest first (at most [`REMEMBERED_ENDS`]).
    ended: VecDeque<(String, Ended)>,
}

struct Session {
    seat: Arc<tokio::sync::Mutex<Seat>>,
    /// Calls holding or waiting for the seat (at most [`MAX_QUEUED`]).
    queued: AtomicUsize,
}

/// Counts a call as queued on its session for as long as it lives.
struct Queued(Arc<Session>);

impl Queued {
    fn join(session: Arc<Session>, name: &str) -> Result<Self, SessionError> {
        if session.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED {
            session.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SessionError::Queue {
                name: name.to_owned(),
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
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// How many sessions are live.
    pub fn live(&self) -> usize {
        self.shared.table().live.len()
    }

    /// Waits for the session's turn (a session runs one call at a time, in
    /// arrival order) and returns it with the session's sandbox: its own, or
    /// a new one from `pool` when the session is new or was lost.
    pub async fn enter(&self, name: &str, pool: &Pool) -> Result<Turn, SessionError> {
        if self.shared.max == 0 {
            return Err(SessionError::Off);
        }
        self.start_sweeping();
        loop {
            let session = self.shared.find_or_create(name)?;
            let queued = Queued::join(session.clone(), name)?;
            let mut seat = session.seat.clone().lock_owned().await;
            drop(queued);
            if seat.closed {
                continue; // it ended while we waited: the name is free again
            }
            let idle = seat.last_used.map(|t| t.elapsed());
            if idle.is_some_and(|idle| idle >= self.shared.idle_ttl) {
                // The sweeper had not got to it yet; the caller sees what it would have.
                self.shared
                    .end(name, &session, &mut seat, self.idle_end(), None);
                continue;
            }
            let mut turn = Turn {
                shared: self.shared.clone(),
                name: name.to_owned(),
                session,
                seat: Some(seat),
                found: Found::Continued,
            };
            if turn.seat.as_ref().is_some_and(|seat| seat.lease.is_none()) {
                // A failed or cancelled wait drops the turn, which frees the name.
                turn.take_sandbox(pool).await?;
                turn.found = match self.shared.table().take_ended(name) {
                    Some(ended) => Found::Lost(ended.detail),
                    None => Found::New,
                };
            }
            return Ok(turn);
        }
    }

    /// Ends the session `name` (after the call it is running, if any);
    /// false when no session has that name.
    pub async fn end(&self, name: &str, reason: Ended) -> bool {
        let Some(session) = self.shared.table().live.get(name).cloned() else {
            return false;
        };
        let mut seat = session.seat.clone().lock_owned().await;
        if seat.closed {
            return false;
        }
        self.shared.end(name, &session, &mut seat, reason, None);
        true
    }

    /// Ends every session (their containers go with the pool's).
    pub async fn shutdown(&self) {
        let names: Vec<String> = self.shared.table().live.keys().cloned().collect();
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
        let candidates: Vec<(String, Arc<Session>)> = sessions
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

    fn find_or_create(&self, name: &str) -> Result<Arc<Session>, SessionError> {
        let mut table = self.table();
        if let Some(session) = table.live.get(name) {
            return Ok(session.clone());
        }
        if table.live.len() >= self.max {
            return Err(SessionError::Limit {
                live: table.live.len(),
                max: self.max,
                listing: table.listing(),
                ttl: self.idle_ttl,
            });
        }
        let session = Arc::new(Session {
            seat: Arc::new(tokio::sync::Mutex::new(Seat::default())),
            queued: AtomicUsize::new(0),
        });
        table.live.insert(name.to_owned(), session.clone());
        Ok(session)
    }

    /// Ends a session whose seat is held: its sandbox is recycled (with
    /// `verdict`'s reason, or as an ended session), its name freed, and why it
    /// ended remembered for its next call (unless the client asked for it).
    fn end(
        &self,
        name: &str,
        session: &Arc<Session>,
        seat: &mut Seat,
        ended: Ended,
        recycle: Option<RecycleReason>,
    ) {
        seat.closed = true;
        retire(name, seat, &ended, recycle);
        let mut table = self.table();
        table.forget_live(name, session);
        table.ended.retain(|(n, _)| n != name);
        if ended.reason != EndReason::Requested {
            if table.ended.len() >= REMEMBERED_ENDS {
                table.ended.pop_front();
            }
            table.ended.push_back((name.to_owned(), ended));
        }
    }
}

/// The end of a session's interpreter: its sandbox recycled (with the
/// failed run's reason, or as an ended session), logged and counted.
fn retire(name: &str, seat: &mut Seat, ended: &Ended, recycle: Option<RecycleReason>) {
    if let Some(lease) = seat.lease.take() {
        let reason = recycle.unwrap_or(RecycleReason::SessionEnded);
        lease.finish(Verdict::Recycle(reason));
    }
    // The detail quoted: it can hold the agent's stderr, which user code
    // can write under gVisor.
    tracing::info!(
        session = name,
        reason = ended.reason.as_str(),
        detail = ?ended.detail,
        "session ended"
    );
    metrics::observe_session_ended(ended.reason.as_str());
}

impl Table {
    /// Removes `name` from the live sessions if it is still `session`.
    fn forget_live(&mut self, name: &str, session: &Arc<Session>) {
        if self
            .live
            .get(name)
            .is_some_and(|live| Arc::ptr_eq(live, session))
        {
            self.live.remove(name);
        }
    }

    fn take_ended(&mut self, name: &str) -> Option<Ended> {
        let at = self.ended.iter().position(|(n, _)| n == name)?;
        self.ended.remove(at).map(|(_, ended)| ended)
    }

    /// `a (idle 2m 3s), b (in a call)`, by name.
    fn listing(&self) -> String {
        let mut entries: Vec<String> = self
            .live
            .iter()
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
    name: String,
    session: Arc<Session>,
    seat: Option<OwnedMutexGuard<Seat>>,
    found: Found,
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
        self.seat
            .as_mut()
            .and_then(|seat| seat.lease.as_mut())
            .expect("a turn holds its session's lease until keep or end")
    }

    /// Its interpreter is gone (`ended` says how) before this call ran:
    /// the session goes on, without the call losing its place, on a new
    /// sandbox, and the call is told it was lost.
    pub async fn restart(&mut self, ended: Ended, pool: &Pool) -> Result<(), SessionError> {
        if let Some(seat) = self.seat.as_mut() {
            retire(&self.name, seat, &ended, None);
        }
        self.found = Found::Lost(ended.detail);
        self.take_sandbox(pool).await
    }

    /// A sandbox of the pool for a seat that has none.
    async fn take_sandbox(&mut self, pool: &Pool) -> Result<(), SessionError> {
        let waiting = Instant::now();
        let lease = pool.acquire().await;
        metrics::observe_wait(waiting.elapsed());
        if let Some(seat) = self.seat.as_mut() {
            seat.lease = Some(lease?);
        }
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
            // It never had a sandbox: nothing ran, nothing to tell.
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

    fn shared(max: usize) -> Shared {
        Shared {
            table: Mutex::new(Table::default()),
            idle_ttl: Duration::from_secs(600),
            max,
            sweeping: AtomicBool::new(false),
        }
    }

    #[test]
    fn ended_sessions_are_remembered_within_a_bound_and_requested_ends_are_not() {
        let shared = shared(4);
        let end = |name: &str, reason| {
            let session = shared.find_or_create(name).unwrap();
            let mut seat = Seat::default();
            let ended = Ended {
                reason,
                detail: format!("{name} ended"),
            };
            shared.end(name, &session, &mut seat, ended, None);
            assert!(seat.closed);
        };
        end("asked", EndReason::Requested);
        assert!(shared.table().take_ended("asked").is_none());
        for i in 0..=REMEMBERED_ENDS {
            end(&format!("s{i}"), EndReason::Idle);
        }
        let mut table = shared.table();
        assert_eq!(table.ended.len(), REMEMBERED_ENDS);
        assert!(table.take_ended("s0").is_none(), "the oldest is forgotten");
        let last = format!("s{REMEMBERED_ENDS}");
        assert_eq!(
            table.take_ended(&last).unwrap().detail,
            format!("{last} ended")
        );
        assert!(table.take_ended(&last).is_none(), "told once");
        assert!(table.live.is_empty());
    }

    #[test]
    fn a_session_holds_at_most_max_queued_calls() {
        let session = Arc::new(Session {
            seat: Arc::new(tokio::sync::Mutex::new(Seat::default())),
            queued: AtomicUsize::new(0),
        });
        let queued: Vec<_> = (0..MAX_QUEUED)
            .map(|_| Queued::join(session.clone(), "q").unwrap())
            .collect();
        let Err(error) = Queued::join(session.clone(), "q") else {
            panic!("one call more than the bound");
        };
        assert_eq!(
            error.to_string(),
            "session \"q\" already has 16 calls running or waiting; its calls run one at a time: \
             wait for their results"
        );
        drop(queued);
        assert_eq!(
            session.queued.load(Ordering::Acquire),
            0,
            "each call counted out"
        );
        assert!(Queued::join(session, "q").is_ok());
    }

    #[test]
    fn the_limit_error_lists_the_live_sessions() {
        let shared = shared(2);
        let a = shared.find_or_create("a").unwrap();
        a.seat.try_lock().unwrap().last_used = Some(Instant::now() - Duration::from_secs(125));
        let b = shared.find_or_create("b").unwrap();
        let _in_a_call = b.seat.try_lock().unwrap();
        assert!(Arc::ptr_eq(&shared.find_or_create("a").unwrap(), &a));
        let Err(error) = shared.find_or_create("c") else {
            panic!("a third session is over the limit");
        };
        assert_eq!(
            error.to_string(),
            "session limit reached: 2 live (MCP_BRIDGE_MAX_SESSIONS=2): a (idle 2m 5s), \
             b (in a call); end one with end_session: true, or wait until one has been idle \
             for 10m (MCP_BRIDGE_SESSION_IDLE_TTL)"
        );
    }
}

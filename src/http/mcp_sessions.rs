//! The MCP sessions of the HTTP front door (2025-11-25's `Mcp-Session-Id`;
//! not the Python sessions of [`crate::sessions`]): which principal opened
//! each, and how many may live.
//!
//! Owns the table of sessions: a session id is served to the principal
//! that opened it only (another that learnt it could otherwise read its
//! stream or cancel its calls), and the sessions are bounded, in all
//! (`MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS`) and per principal
//! (`MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT`). rmcp keeps a session's
//! worker and channels (~160 KiB) until it has been idle for 5 minutes, so
//! without a bound a client that opens sessions and leaves them, as clients
//! that restart do, grows the server by that much a session. Past a bound,
//! the least recently used session that no request or stream is using is
//! closed (its client gets 404 and initializes anew, as the MCP spec has
//! it); when every one is in use, the new session is closed and refused.
//! It does not authenticate, and it never reads a session's messages: the
//! front door ([`super`]) asks it, and closes what it says to close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::SessionBounds;
use crate::principals::Principal;

/// The live MCP sessions and their principals.
#[derive(Debug)]
pub struct McpSessions {
    bounds: SessionBounds,
    table: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<Vec<u8>, Entry>,
}

#[derive(Debug)]
struct Entry {
    principal: Principal,
    /// When a request last named it, or last finished with it.
    last_used: Instant,
    /// Requests (and their streamed answers) using it now.
    in_use: usize,
}

/// A new session's fate: kept, with the sessions it pushed out (to close),
/// or refused (close it, and answer with the message).
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    Kept { closed: Vec<Vec<u8>> },
    Refused { message: String },
}

/// A request using a session: while it lives (its answer's stream
/// included) the session is not pushed out.
#[derive(Debug)]
pub struct InUse {
    table: Arc<Mutex<Table>>,
    id: Vec<u8>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(entry) = lock(&self.table).by_id.get_mut(&self.id) {
            entry.in_use = entry.in_use.saturating_sub(1);
            entry.last_used = Instant::now();
        }
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // Each update is a few map operations that cannot panic halfway.
    table.lock().unwrap_or_else(|e| e.into_inner())
}

impl McpSessions {
    pub fn new(bounds: SessionBounds) -> Self {
        Self {
            bounds,
            table: Arc::default(),
        }
    }

    /// A request of `principal` naming session `id`: in use until the
    /// returned guard drops; `None` when `principal` did not open it (or
    /// it is gone).
    pub fn enter(&self, id: &[u8], principal: &Principal) -> Option<InUse> {
        let mut table = lock(&self.table);
        let entry = table.by_id.get_mut(id)?;
        if entry.principal != *principal {
            return None;
        }
        entry.in_use += 1;
        entry.last_used = Instant::now();
        Some(InUse {
            table: self.table.clone(),
            id: id.to_vec(),
        })
    }

    /// rmcp opened session `id` for `principal`: kept within the bounds,
    /// pushing out the least recently used idle sessions (the principal's
    /// own for its bound), or refused when none is idle.
    pub fn open(&self, id: &[u8], principal: &Principal) -> Opened {
        let mut table = lock(&self.table);
        let mut closed = Vec::new();
        // Each bound: whose sessions it counts, and how its refusal reads.
        let bounds = [
            (
                Some(principal),
                self.bounds.per_client,
                "this client has",
                "one client may have",
                "MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT",
                "end one (DELETE)",
            ),
            (
                None,
                self.bounds.total,
                "the server has",
                "it keeps",
                "MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS",
                "try again later,",
            ),
        ];
        for (scope, bound, who, most, variable, advice) in bounds {
            let open = table.count(scope);
            if open < bound {
                continue;
            }
            let Some(oldest) = table.least_recently_used(scope) else {
                return Opened::Refused {
                    message: format!(
                        "{who} {open} MCP sessions open, each in use, the most {most} \
                         ({variable}={bound}): {advice} or raise the bound"
                    ),
                };
            };
            table.by_id.remove(&oldest);
            closed.push(oldest);
        }
        let entry = Entry {
            principal: principal.clone(),
            last_used: Instant::now(),
            in_use: 0,
        };
        table.by_id.insert(id.to_vec(), entry);
        Opened::Kept { closed }
    }

    /// Whether session `id` is in the table.
    pub fn knows(&self, id: &[u8]) -> bool {
        lock(&self.table).by_id.contains_key(id)
    }

    /// Session `id` ended (its client's DELETE, or rmcp closed it).
    pub fn forget(&self, id: &[u8]) {
        lock(&self.table).by_id.remove(id);
    }
}

impl Table {
    /// The sessions (of `principal`, if given).
    fn of<'a>(
        &'a self,
        principal: Option<&'a Principal>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Entry)> {
        self.by_id
            .iter()
            .filter(move |(_, entry)| principal.is_none_or(|p| entry.principal == *p))
    }

    fn count(&self, principal: Option<&Principal>) -> usize {
        self.of(principal).count()
    }

    /// The idle session (of `principal`, if given) used longest ago.
    fn least_recently_used(&self, principal: Option<&Principal>) -> Option<Vec<u8>> {
        self.of(principal)
            .filter(|(_, entry)| entry.in_use == 0)
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(id, _)| id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str) -> Principal {
        Principal::new(name).unwrap()
    }

    fn open_count(sessions: &McpSessions) -> usize {
        lock(&sessions.table).by_id.len()
    }

    fn kept(opened: Opened) -> Vec<Vec<u8>> {
        match opened {
            Opened::Kept { closed } => closed,
            Opened::Refused { message } => panic!("refused: {message}"),
        }
    }

    #[test]
    fn a_session_is_served_to_its_principal_only() {
        let sessions = McpSessions::new(SessionBounds {
            total: 8,
            per_client: 8,
        });
        let (alice, bob) = (principal("alice"), principal("bob"));
        assert!(kept(sessions.open(b"s1", &alice)).is_empty());
        assert!(sessions.enter(b"s1", &alice).is_some());
        assert!(sessions.enter(b"s1", &bob).is_none(), "another's session");
        assert!(sessions.enter(b"s2", &alice).is_none(), "an unknown one");
        sessions.forget(b"s1");
        assert!(sessions.enter(b"s1", &alice).is_none(), "ended");
        assert_eq!(open_count(&sessions), 0);
    }

    #[test]
    fn past_a_clients_bound_its_own_least_recently_used_idle_session_goes() {
        let sessions = McpSessions::new(SessionBounds {
            total: 100,
            per_client: 3,
        });
        let (alice, bob) = (principal("alice"), principal("bob"));
        kept(sessions.open(b"bob", &bob));
        for id in [b"a1", b"a2", b"a3"] {
            kept(sessions.open(id, &alice));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        drop(sessions.enter(b"a1", &alice)); // a1 used again: a2 is the oldest now
        let streaming = sessions.enter(b"a2", &alice); // and in use: a3 goes
        assert_eq!(kept(sessions.open(b"a4", &alice)), vec![b"a3".to_vec()]);
        assert!(sessions.enter(b"a3", &alice).is_none(), "closed, refused");
        assert!(sessions.enter(b"bob", &bob).is_some(), "never another's");
        drop(streaming);
        assert_eq!(kept(sessions.open(b"a5", &alice)), vec![b"a1".to_vec()]);
        assert_eq!(open_count(&sessions), 4);
    }

    #[test]
    fn when_every_session_is_in_use_a_new_one_is_refused_naming_the_variable() {
        let sessions = McpSessions::new(SessionBounds {
            total: 3,
            per_client: 2,
        });
        let (alice, bob) = (principal("alice"), principal("bob"));
        kept(sessions.open(b"a1", &alice));
        kept(sessions.open(b"a2", &alice));
        let busy = [
            sessions.enter(b"a1", &alice).unwrap(),
            sessions.enter(b"a2", &alice).unwrap(),
        ];
        let Opened::Refused { message } = sessions.open(b"a3", &alice) else {
            panic!("kept past the client's bound");
        };
        assert!(
            message.contains("MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS_PER_CLIENT=2"),
            "{message}"
        );
        kept(sessions.open(b"b1", &bob));
        let bob_busy = sessions.enter(b"b1", &bob).unwrap();
        let Opened::Refused { message } = sessions.open(b"b2", &bob) else {
            panic!("kept past the total");
        };
        assert!(
            message.contains("MCP_BRIDGE_HTTP_MAX_MCP_SESSIONS=3"),
            "{message}"
        );
        assert_eq!(open_count(&sessions), 3, "a refused session is not kept");
        drop(bob_busy);
        // Past the total, the least recently used idle session goes,
        // whoever's: here bob's own.
        assert_eq!(kept(sessions.open(b"b3", &bob)), vec![b"b1".to_vec()]);
        drop(busy);
    }
}

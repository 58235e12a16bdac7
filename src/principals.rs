//! Principals: whom a call is made for, the unit of isolation between clients.
//!
//! Owns the [`Principal`] name (who authenticated: a name of the HTTP tokens
//! file, `jwt:` and a JWT claim ([`Principal::external`]), or [`Principal::LOCAL`] for the one client of stdio and of an
//! unauthenticated loopback listener) and the bound on each principal's calls
//! in flight ([`CallQuota`], `MCP_BRIDGE_MAX_CALLS_PER_CLIENT`). It does not
//! authenticate anyone (that is [`crate::http`]) nor keep what a principal
//! owns: sessions and artifacts carry their principal and refuse others.
//! A leaf: it imports no module of the crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Who a call is made for. Cheap to clone; compared by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(Arc<str>);

/// The longest principal name.
pub const MAX_NAME: usize = 64;
/// The longest name an external authority gives (a JWT claim).
pub const MAX_EXTERNAL_NAME: usize = 256;

impl Principal {
    /// The one client of stdio, and of a loopback listener without tokens.
    pub const LOCAL: &str = "local";

    pub fn local() -> Self {
        Self(Arc::from(Self::LOCAL))
    }

    /// A principal named `name`: 1 to [`MAX_NAME`] letters, digits, `_`,
    /// `-` or `.` (it appears in logs and metric labels).
    pub fn new(name: &str) -> Result<Self, String> {
        let valid = (1..=MAX_NAME).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if valid {
            Ok(Self(Arc::from(name)))
        } else {
            Err(format!(
                "principal name {name:?} must be 1 to {MAX_NAME} letters, digits, '_', '-' or '.'"
            ))
        }
    }

    /// A principal an external authority names, kept apart from every
    /// tokens-file name by `source` and a `:` (which no such name has):
    /// `jwt:alice@example.com`. `name` is 1 to [`MAX_EXTERNAL_NAME`]
    /// printable ASCII characters, no space.
    pub fn external(source: &str, name: &str) -> Result<Self, String> {
        let valid = (1..=MAX_EXTERNAL_NAME).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(Arc::from(format!("{source}:{name}"))))
        } else {
            Err(format!(
                "a {source} principal is 1 to {MAX_EXTERNAL_NAME} printable ASCII characters, no space"
            ))
        }
    }

    /// Its metric label, from a set the operator bounds: its name, but
    /// `jwt` (the source) for every principal an external authority names.
    pub fn metric_label(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(source, _)| source)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Principal {
    fn default() -> Self {
        Self::local()
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A principal has as many calls in flight as it may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this client already has {max} calls in flight (MCP_BRIDGE_MAX_CALLS_PER_CLIENT={max}): \
     wait for their results before sending more"
)]
pub struct QuotaError {
    pub max: usize,
}

/// Calls in flight by principal, at most `max` each. Entries exist only
/// while a principal has calls in flight, so the map is bounded by the
/// calls in flight.
#[derive(Debug)]
pub struct CallQuota {
    max: usize,
    in_flight: Arc<Mutex<HashMap<Principal, usize>>>,
}

impl CallQuota {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            in_flight: Arc::default(),
        }
    }

    /// A seat for one call of `principal`, held until the slot is dropped.
    pub fn enter(&self, principal: &Principal) -> Result<CallSlot, QuotaError> {
        let mut in_flight = lock(&self.in_flight);
        let count = in_flight.entry(principal.clone()).or_insert(0);
        if *count >= self.max {
            return Err(QuotaError { max: self.max });
        }
        *count += 1;
        Ok(CallSlot {
            in_flight: self.in_flight.clone(),
            principal: principal.clone(),
        })
    }

    /// Calls in flight now, of all principals.
    pub fn total(&self) -> usize {
        lock(&self.in_flight).values().sum()
    }

    /// Calls of `principal` in flight now.
    pub fn in_flight(&self, principal: &Principal) -> usize {
        lock(&self.in_flight).get(principal).copied().unwrap_or(0)
    }
}

fn lock(
    map: &Mutex<HashMap<Principal, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<Principal, usize>> {
    // Each update is one map operation that cannot panic halfway.
    map.lock().expect("the call quota is never poisoned")
}

/// One call counted against its principal's quota until dropped (the call
/// ended, or was cancelled).
#[derive(Debug)]
pub struct CallSlot {
    in_flight: Arc<Mutex<HashMap<Principal, usize>>>,
    principal: Principal,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.in_flight);
        if let Some(count) = in_flight.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(
            Principal::new("team-a.bot_1").unwrap().as_str(),
            "team-a.bot_1"
        );
        for bad in ["", "a b", "a:b", "a/b", &"x".repeat(MAX_NAME + 1)] {
            assert!(Principal::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Principal::default(), Principal::local());
        let external = Principal::external("jwt", "ann@example.com").unwrap();
        assert_eq!(external.as_str(), "jwt:ann@example.com");
        assert!(
            Principal::new(external.as_str()).is_err(),
            "never a tokens-file name"
        );
        for bad in ["", "a b", "a\nb", "é", &"x".repeat(MAX_EXTERNAL_NAME + 1)] {
            assert!(Principal::external("jwt", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_principal_has_its_own_quota_and_slots_give_it_back() {
        let quota = CallQuota::new(2);
        let (a, b) = (Principal::new("a").unwrap(), Principal::new("b").unwrap());
        let first = quota.enter(&a).unwrap();
        let _second = quota.enter(&a).unwrap();
        let refused = quota.enter(&a).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("MCP_BRIDGE_MAX_CALLS_PER_CLIENT=2")
        );
        // Another principal is not affected.
        let _other = quota.enter(&b).unwrap();
        drop(first);
        assert_eq!(quota.in_flight(&a), 1);
        let _third = quota.enter(&a).unwrap();
    }
}

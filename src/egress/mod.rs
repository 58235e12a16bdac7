//! Egress: the network, only where the operator allows it.
//!
//! A sandbox has no network interface (`--network none`). Its agent listens
//! on the sandbox's loopback as an HTTP proxy port, and hands each accepted
//! connection to the host as a stream ([`crate::sandbox::streams`]); this
//! module serves those streams: it speaks HTTP proxy on them
//! ([`proxy`]: `CONNECT host:port` tunnels, TLS end to end, and
//! absolute-form plain-HTTP requests), decides every connection by the
//! operator's [`Policy`] ([`crate::allowlist`]: the name before any lookup, then every address it
//! resolves to, then it dials exactly a checked address), bounds each run
//! (connections at once and in total, bytes each way, connect and idle
//! timeouts; the host's own [`Site`]: requests and bytes, recording the
//! paths it served), and records every connection for the run's result, the log
//! and the metrics. It knows nothing of containers or of the call that owns
//! the run; [`RunEgress::finish`] closes every connection of the run.

mod proxy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use crate::allowlist::{Policy, Refusal};
use crate::metrics;
use crate::sandbox::protocol::StreamService as Service;
use crate::sandbox::streams::{SandboxStream, StreamService};

/// Connections a run's result lists (the rest are counted).
const RECORDS_KEPT: usize = 32;
/// Paths of the host's site a run's record keeps (the rest are not).
const SITE_PATHS_KEPT: usize = 1024;

pub use crate::config::{EgressLimits as Limits, EgressSettings as Settings};

/// How a connection attempt ended: a closed set, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Dialled; bytes may have moved.
    Allowed,
    /// The name (or the literal) is not in the allowlist, or egress is off.
    RefusedHost,
    /// Every address of the name is in a refused range.
    RefusedAddress,
    /// A bound of the run was reached (connections, bytes).
    Limit,
    /// Allowed, but the name did not resolve or nothing answered in time.
    Failed,
}

impl Outcome {
    pub const ALL: [Self; 5] = [
        Self::Allowed,
        Self::RefusedHost,
        Self::RefusedAddress,
        Self::Limit,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::RefusedHost => "refused_host",
            Self::RefusedAddress => "refused_address",
            Self::Limit => "limit",
            Self::Failed => "failed",
        }
    }
}

/// One connection of a run, as its result lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub outcome: Outcome,
    /// Why it was refused or failed, or why an allowed one was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A run's network use, for its result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The first connections, in order.
    pub connections: Vec<Connection>,
    /// Connections beyond those listed.
    pub unlisted: usize,
    /// Paths of the host's site ([`Site`]) answered with success, in order
    /// (the first [`SITE_PATHS_KEPT`]): what the host served this run.
    pub site_paths: Vec<String>,
}

impl Report {
    /// One note per refusal listed (what the model needs to act on).
    pub fn notes(&self) -> Vec<String> {
        let mut notes: Vec<String> = self
            .connections
            .iter()
            .filter(|c| c.outcome != Outcome::Allowed)
            .filter_map(|c| {
                let reason = c.reason.as_deref()?;
                Some(format!(
                    "egress {}: {reason}",
                    c.outcome.as_str().replace('_', " ")
                ))
            })
            .collect();
        notes.dedup();
        if self.unlisted > 0 {
            notes.push(format!(
                "{} more network connections are not listed",
                self.unlisted
            ));
        }
        notes
    }
}

/// The body of an answer the proxy sends.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A site the host serves itself under a name of its own that no resolver
/// knows (the package index): plain-HTTP requests for it never reach the
/// network nor the allowlist, whatever egress allows.
pub trait Site: Send + Sync + std::fmt::Debug {
    /// The name, e.g. `packages.mcp-code-exec.invalid` (port 80).
    fn host(&self) -> &str;
    fn serve(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> BoxFuture<'static, hyper::Response<Body>>;
}

/// What one run may take from the host's site: requests, and bytes of
/// answers (`MCP_BRIDGE_PACKAGE_RUN_REQUESTS`, `MCP_BRIDGE_PACKAGE_RUN_BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteLimits {
    pub requests: usize,
    pub bytes: u64,
}

/// Puts `why` (its printable ASCII, at most 200 characters) in the status
/// line of `response`: clients that show no body (pip) show that.
pub fn give_reason(response: &mut hyper::Response<Body>, why: &str) {
    let phrase: String = why
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect();
    if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(phrase) {
        response.extensions_mut().insert(phrase);
    }
}

/// The egress of a service: its settings, shared by every run.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    settings: Arc<Settings>,
    site: Option<(Arc<dyn Site>, SiteLimits)>,
}

impl Egress {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
            site: None,
        }
    }

    /// Serves `site` to every run, whether or not egress is allowed, each
    /// run within `limits`.
    #[must_use]
    pub fn with_site(mut self, site: Arc<dyn Site>, limits: SiteLimits) -> Self {
        self.site = Some((site, limits));
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The egress of one run: its own bounds and record.
    pub fn run(&self) -> RunEgress {
        RunEgress {
            shared: Arc::new(Shared {
                settings: self.settings.clone(),
                site: self.site.clone(),
                site_requests: AtomicUsize::new(0),
                site_bytes: AtomicU64::new(0),
                site_paths: Mutex::new(Vec::new()),
                open: AtomicUsize::new(0),
                opened: AtomicUsize::new(0),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                records: Mutex::new(Records::default()),
                ended: CancellationToken::new(),
            }),
        }
    }
}

/// One run's egress: served to the sandbox as its streams' service. Its
/// connections end with [`Self::finish`] (or when it is dropped).
#[derive(Debug)]
pub struct RunEgress {
    shared: Arc<Shared>,
}

impl RunEgress {
    /// Ends every connection of the run (the remote peers see them close)
    /// and says what the run did on the network.
    pub fn finish(&self) -> Report {
        self.shared.ended.cancel();
        let records = self.shared.records();
        Report {
            connections: records
                .kept
                .iter()
                .map(|record| record.snapshot())
                .collect(),
            unlisted: records.unlisted,
            site_paths: lock(&self.shared.site_paths).clone(),
        }
    }
}

impl Drop for RunEgress {
    fn drop(&mut self) {
        self.shared.ended.cancel();
    }
}

impl StreamService for RunEgress {
    fn serve(&self, service: Service, stream: SandboxStream) -> BoxFuture<'static, ()> {
        match service {
            Service::HttpProxy => Box::pin(proxy::serve(self.shared.clone(), stream)),
        }
    }
}

/// What a run's connections share.
#[derive(Debug)]
struct Shared {
    settings: Arc<Settings>,
    site: Option<(Arc<dyn Site>, SiteLimits)>,
    /// Requests to the site, and bytes of its answers, so far.
    site_requests: AtomicUsize,
    site_bytes: AtomicU64,
    /// Paths of the site answered with success (see [`Report::site_paths`]).
    site_paths: Mutex<Vec<String>>,
    /// Connections dialled and not yet closed.
    open: AtomicUsize,
    /// Connections dialled in all.
    opened: AtomicUsize,
    sent: AtomicU64,
    received: AtomicU64,
    records: Mutex<Records>,
    /// The run ended: every connection closes.
    ended: CancellationToken,
}

#[derive(Debug, Default)]
struct Records {
    kept: Vec<Arc<Record>>,
    unlisted: usize,
}

/// One connection as it goes: its bytes move while it lives.
#[derive(Debug)]
struct Record {
    host: String,
    port: u16,
    outcome: Mutex<(Outcome, Option<String>)>,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Record {
    fn snapshot(&self) -> Connection {
        let (outcome, reason) = lock(&self.outcome).clone();
        Connection {
            host: self.host.clone(),
            port: self.port,
            outcome,
            reason,
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
        }
    }

    /// An allowed connection cut by a bound: said in the result.
    fn cut(&self, reason: String) {
        *lock(&self.outcome) = (Outcome::Limit, Some(reason));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a push or a copy that cannot panic halfway.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn records(&self) -> MutexGuard<'_, Records> {
        lock(&self.records)
    }

    /// Records an attempt (logged and counted), kept for the result while
    /// the list has room.
    fn record(
        &self,
        host: &str,
        port: u16,
        outcome: Outcome,
        reason: Option<String>,
    ) -> Arc<Record> {
        metrics::observe_egress_connection(outcome.as_str());
        match &reason {
            Some(reason) => tracing::info!(
                host = ?host,
                port,
                outcome = outcome.as_str(),
                reason = ?reason,
                "egress connection"
            ),
            None => {
                tracing::debug!(host = ?host, port, outcome = outcome.as_str(), "egress connection")
            }
        }
        let record = Arc::new(Record {
            host: host.to_owned(),
            port,
            outcome: Mutex::new((outcome, reason)),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        let mut records = self.records();
        if records.kept.len() < RECORDS_KEPT {
            records.kept.push(record.clone());
        } else {
            records.unlisted += 1;
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_notes_once_each() {
        let refused = |host: &str| Connection {
            host: host.into(),
            port: 443,
            outcome: Outcome::RefusedHost,
            reason: Some(format!("{host}:443 is not in MCP_BRIDGE_ALLOW_HOSTS")),
            bytes_sent: 0,
            bytes_received: 0,
        };
        let allowed = Connection {
            outcome: Outcome::Allowed,
            reason: None,
            ..refused("ok.example")
        };
        let report = Report {
            connections: vec![refused("a.example"), refused("a.example"), allowed],
            unlisted: 3,
            site_paths: Vec::new(),
        };
        assert_eq!(
            report.notes(),
            [
                "egress refused host: a.example:443 is not in MCP_BRIDGE_ALLOW_HOSTS",
                "3 more network connections are not listed"
            ]
        );
    }
}

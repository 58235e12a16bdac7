//! The HTTP proxy served on each stream a sandbox opens (hyper's HTTP/1
//! server): `CONNECT host:port` becomes a tunnel to a checked address (the
//! bytes, TLS included, pass untouched), and an absolute-form plain-HTTP
//! request (`GET http://host/path`) is checked exactly like a `CONNECT`
//! and forwarded in origin form on a connection of its own (hyper's client;
//! a redirect is the sandbox's to follow, as a new, checked request).
//!
//! Every refusal is an answer: a status (403 refused or over a bound, 502
//! or 504 when the host cannot be reached) whose reason phrase and one-line
//! body say why and name the variable to change. Everything here runs
//! under the run's cancellation: a tunnel or a forwarded request still open
//! when the run ends is closed then.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Body, Outcome, Record, Shared, Site, SiteLimits};
use crate::metrics;
use crate::sandbox::streams::SandboxStream;

/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head the proxy reads.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves one stream: requests one after another, until the client closes
/// it, a tunnel takes it over, or the run ends.
pub(super) async fn serve(shared: Arc<Shared>, stream: SandboxStream) {
    let ended = shared.ended.clone();
    let service = hyper::service::service_fn(move |request| handle(shared.clone(), request));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = connection => {}
        () = ended.cancelled() => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.method() == Method::CONNECT {
        let Some((host, port)) = target(request.uri(), None) else {
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                "CONNECT takes host:port, like CONNECT example.org:443",
            ));
        };
        let upstream = match shared.open(&host, port).await {
            Ok(upstream) => upstream,
            Err(refused) => return Ok(refused.response()),
        };
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(tunnel(shared, upgrade, upstream));
        return Ok(Response::new(empty()));
    }
    match request.uri().scheme_str() {
        Some("http") => {}
        Some(_) => {
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                "this proxy forwards http:// URLs; https:// ones go through CONNECT (as clients do by themselves)",
            ));
        }
        None => {
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                "this is the sandbox's HTTP proxy: send absolute-form requests (GET http://host/path) or CONNECT host:port",
            ));
        }
    }
    let Some((host, port)) = target(request.uri(), Some(80)) else {
        return Ok(answer(StatusCode::BAD_REQUEST, "the URL has no host"));
    };
    if let Some((site, limits)) = shared
        .site
        .as_ref()
        .filter(|(site, _)| port == 80 && host == site.host())
    {
        // The host's own site (the package index): not the network.
        return Ok(site_request(&shared, site.as_ref(), *limits, request).await);
    }
    let upstream = match shared.open(&host, port).await {
        Ok(upstream) => upstream,
        Err(refused) => return Ok(refused.response()),
    };
    Ok(forward(shared, request, &host, port, upstream).await)
}

/// A request for the host's own site, within the run's bounds of it: its
/// requests, and the bytes of its answers (an answer that would pass the
/// bound is refused whole, before any of it is sent).
async fn site_request(
    shared: &Shared,
    site: &dyn Site,
    limits: SiteLimits,
    request: Request<Incoming>,
) -> Response<Body> {
    let host = site.host();
    if shared.site_requests.fetch_add(1, Ordering::AcqRel) >= limits.requests {
        return answer(
            StatusCode::FORBIDDEN,
            &format!(
                "this run made its {} requests to {host} (MCP_BRIDGE_PACKAGE_RUN_REQUESTS)",
                limits.requests
            ),
        );
    }
    let path = request.uri().path().to_owned();
    let response = site.serve(request).await;
    let size = body_size(&response);
    let taken = shared
        .site_bytes
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(size)
                .filter(|&total| total <= limits.bytes)
        });
    if taken.is_err() {
        return answer(
            StatusCode::FORBIDDEN,
            &format!(
                "over MCP_BRIDGE_PACKAGE_RUN_BYTES ({} bytes from {host} per run): \
                 {} is {size} bytes more",
                limits.bytes,
                path.rsplit('/').next().unwrap_or_default()
            ),
        );
    }
    if response.status().is_success() {
        let mut paths = super::lock(&shared.site_paths);
        if paths.len() < super::SITE_PATHS_KEPT {
            paths.push(path);
        }
    }
    response
}

/// The size of an answer of the site: exact, or its Content-Length (the
/// site streams cached files with one); an answer of unknown size counts
/// as more than any bound (refused).
fn body_size(response: &Response<Body>) -> u64 {
    use hyper::body::Body as _;
    response.body().size_hint().exact().unwrap_or_else(|| {
        response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .unwrap_or(u64::MAX)
    })
}

/// The host (lower case, brackets of an IPv6 literal kept) and port a
/// request names; `default_port` when it names none.
fn target(uri: &Uri, default_port: Option<u16>) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let port = authority.port_u16().or(default_port)?;
    Some((authority.host().to_ascii_lowercase(), port))
}

/// The sandbox's side of a tunnel, once the `200` is out, to the upstream
/// connection, until either side closes, the connection idles or the run ends.
async fn tunnel(shared: Arc<Shared>, upgrade: hyper::upgrade::OnUpgrade, upstream: Upstream) {
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let mut client = TokioIo::new(upgraded);
    let Upstream { mut stream, _open } = upstream;
    let activity = stream.activity.clone();
    let idle = shared.settings.limits.idle_timeout;
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut stream) => {}
        () = idle_for(&activity, idle) => stream.record.cut(idle_reason(idle)),
        () = shared.ended.cancelled() => {}
    }
}

/// Forwards a plain-HTTP request in origin form on a connection of its own.
async fn forward(
    shared: Arc<Shared>,
    mut request: Request<Incoming>,
    host: &str,
    port: u16,
    upstream: Upstream,
) -> Response<Body> {
    let Upstream { stream, _open } = upstream;
    let activity = stream.activity.clone();
    let record = stream.record.clone();
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(handshake) => handshake,
            Err(error) => {
                return answer(
                    StatusCode::BAD_GATEWAY,
                    &format!("{host}:{port} broke the connection: {error}"),
                );
            }
        };
    let idle = shared.settings.limits.idle_timeout;
    let ended = shared.ended.clone();
    tokio::spawn(async move {
        let _open = _open;
        tokio::select! {
            _ = connection => {}
            () = idle_for(&activity, idle) => record.cut(idle_reason(idle)),
            () = ended.cancelled() => {}
        }
    });
    let origin_form = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"));
    *request.uri_mut() = origin_form;
    strip_hop_by_hop(request.headers_mut());
    let authority = if port == 80 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    if let Ok(value) = HeaderValue::from_str(&authority) {
        request.headers_mut().insert(header::HOST, value);
    }
    match sender.send_request(request).await {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            response.map(|body| body.map_err(Into::into).boxed())
        }
        Err(error) => answer(
            StatusCode::BAD_GATEWAY,
            &format!("{host}:{port} did not answer: {error}"),
        ),
    }
}

/// Headers that concern one hop, not the request: the proxy's own
/// credentials and the connection's options (RFC 9110 section 7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for name in listed {
        headers.remove(name.as_str());
    }
    for name in [
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "connection",
    ] {
        headers.remove(name);
    }
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// An answer from the proxy itself: the status, its reason phrase saying
/// why (clients show it for a failed CONNECT), and the same in the body.
fn answer(status: StatusCode, why: &str) -> Response<Body> {
    let line = format!("mcp-code-exec egress: {why}\n");
    let mut response = Response::new(
        Full::new(Bytes::from(line))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    super::give_reason(&mut response, why);
    response
}

/// Waits until `activity` saw no byte for `timeout`.
async fn idle_for(activity: &Activity, timeout: Duration) {
    loop {
        let quiet = activity.quiet_for();
        if quiet >= timeout {
            return;
        }
        tokio::time::sleep(timeout - quiet).await;
    }
}

fn idle_reason(idle: Duration) -> String {
    format!(
        "closed after {} without a byte (MCP_BRIDGE_EGRESS_IDLE_TIMEOUT)",
        humantime::format_duration(idle)
    )
}

/// Why a connection was not made.
pub(super) struct Refused {
    outcome: Outcome,
    reason: String,
}

impl Refused {
    fn response(&self) -> Response<Body> {
        let status = match self.outcome {
            Outcome::Failed => StatusCode::BAD_GATEWAY,
            _ => StatusCode::FORBIDDEN,
        };
        answer(status, &format!("refused {}", self.reason))
    }
}

/// A dialled connection, and its place among the run's open connections.
pub(super) struct Upstream {
    stream: Metered,
    _open: OpenSlot,
}

/// Counts a connection as open until it closes.
struct OpenSlot(Arc<Shared>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Decides a connection to `host:port` and dials it: the bounds, the
    /// name against the allowlist (before any lookup), the lookup, the
    /// addresses against the refused ranges, then a checked address.
    async fn open(self: &Arc<Self>, host: &str, port: u16) -> Result<Upstream, Refused> {
        let limits = self.settings.limits;
        let refuse = |outcome: Outcome, reason: String| {
            self.record(host, port, outcome, Some(reason.clone()));
            Refused { outcome, reason }
        };
        let checked = self
            .settings
            .policy
            .check_name(host, port)
            .map_err(|refusal| {
                let outcome = match refusal {
                    crate::allowlist::Refusal::Address { .. } => Outcome::RefusedAddress,
                    _ => Outcome::RefusedHost,
                };
                refuse(outcome, refusal.to_string())
            })?;
        if self.sent.load(Ordering::Relaxed) >= limits.bytes
            || self.received.load(Ordering::Relaxed) >= limits.bytes
        {
            return Err(refuse(Outcome::Limit, self.bytes_reason()));
        }
        if self.opened.fetch_add(1, Ordering::AcqRel) >= limits.connections_total {
            return Err(refuse(
                Outcome::Limit,
                format!(
                    "{host}:{port}: the run made {} connections already (MCP_BRIDGE_EGRESS_CONNECTIONS_TOTAL)",
                    limits.connections_total
                ),
            ));
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= limits.connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(refuse(
                Outcome::Limit,
                format!(
                    "{host}:{port}: the run has {} connections open (MCP_BRIDGE_EGRESS_CONNECTIONS); \
                     close some first",
                    limits.connections
                ),
            ));
        }
        let slot = OpenSlot(self.clone());
        let addresses = match checked {
            Some(literal) => vec![literal],
            None => self
                .resolve(host, port)
                .await
                .map_err(|(outcome, reason)| refuse(outcome, reason))?,
        };
        let tcp = connect(&addresses, port, limits.connect_timeout)
            .await
            .map_err(|reason| refuse(Outcome::Failed, format!("{host}:{port}: {reason}")))?;
        let record = self.record(host, port, Outcome::Allowed, None);
        Ok(Upstream {
            stream: Metered {
                tcp,
                shared: self.clone(),
                record,
                activity: Arc::new(Activity::new()),
            },
            _open: slot,
        })
    }

    /// The name's addresses that may be dialled, looked up by the host (the
    /// sandbox has no DNS).
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, (Outcome, String)> {
        let timeout = self.settings.limits.connect_timeout;
        let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await;
        let addresses: Vec<IpAddr> = match lookup {
            Ok(Ok(addresses)) => addresses.map(|address| address.ip()).collect(),
            Ok(Err(error)) => {
                return Err((
                    Outcome::Failed,
                    format!("{host}: the name does not resolve ({error})"),
                ));
            }
            Err(_) => {
                return Err((
                    Outcome::Failed,
                    format!(
                        "{host}: the name did not resolve in time ({}, MCP_BRIDGE_EGRESS_CONNECT_TIMEOUT)",
                        humantime::format_duration(timeout)
                    ),
                ));
            }
        };
        self.settings
            .policy
            .filter(host, &addresses)
            .map_err(|refusal| (Outcome::RefusedAddress, refusal.to_string()))
    }

    fn bytes_reason(&self) -> String {
        format!(
            "the run moved {} bytes each way at most (MCP_BRIDGE_EGRESS_BYTES)",
            self.settings.limits.bytes
        )
    }
}

/// Connects to the first of `addresses` that answers, within `timeout` in all.
async fn connect(addresses: &[IpAddr], port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let attempt = async {
        let mut last = String::from("no address");
        for &address in addresses {
            match TcpStream::connect(SocketAddr::new(address, port)).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(error) => last = format!("{address}: {error}"),
            }
        }
        Err(format!("could not connect ({last})"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "nothing answered in time ({}, MCP_BRIDGE_EGRESS_CONNECT_TIMEOUT)",
                humantime::format_duration(timeout)
            ))
        })
}

/// When a connection last moved a byte.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// A dialled connection whose bytes count toward the run's bound (and its
/// record); past the bound it fails, and the record says why.
struct Metered {
    tcp: TcpStream,
    shared: Arc<Shared>,
    record: Arc<Record>,
    activity: Arc<Activity>,
}

impl Metered {
    /// Takes up to `want` bytes of the run's bound in `total`: what the next
    /// read or write may move (all connections of the run draw on it at
    /// once, so the reservation, not the count after the fact, is what
    /// keeps the bound exact). An error once nothing is left.
    fn reserve(&self, want: usize, total: &AtomicU64) -> std::io::Result<usize> {
        let limit = self.shared.settings.limits.bytes;
        let want = want as u64;
        let mut granted = 0;
        let _ = total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            granted = want.min(limit.saturating_sub(used));
            Some(used + granted)
        });
        if granted == 0 && want > 0 {
            let reason = format!(
                "{}:{}: cut: {}",
                self.record.host,
                self.record.port,
                self.shared.bytes_reason()
            );
            self.record.cut(reason.clone());
            return Err(std::io::Error::other(reason));
        }
        Ok(usize::try_from(granted).expect("at most `want`"))
    }

    /// Settles a reservation of `granted` bytes of which `moved` moved: the
    /// rest goes back to `total`; `moved` counts for the connection.
    fn settle(
        &self,
        granted: usize,
        moved: usize,
        total: &AtomicU64,
        own: &AtomicU64,
        direction: &'static str,
    ) {
        total.fetch_sub((granted - moved) as u64, Ordering::Relaxed);
        if moved > 0 {
            self.activity.touch();
            own.fetch_add(moved as u64, Ordering::Relaxed);
            metrics::observe_egress_bytes(direction, moved as u64);
        }
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let granted = this.reserve(buf.remaining(), &this.shared.received)?;
        let before = buf.filled().len();
        let polled = if granted == buf.remaining() {
            Pin::new(&mut this.tcp).poll_read(cx, buf)
        } else {
            // Near the bound: read no more than is left of it (a copy, only
            // for the last read before the cut).
            let mut rest = vec![0; granted];
            let mut limited = ReadBuf::new(&mut rest);
            let polled = Pin::new(&mut this.tcp).poll_read(cx, &mut limited);
            buf.put_slice(limited.filled());
            polled
        };
        let read = buf.filled().len() - before;
        this.settle(
            granted,
            read,
            &this.shared.received,
            &this.record.received,
            "received",
        );
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let granted = this.reserve(buf.len(), &this.shared.sent)?;
        let polled = Pin::new(&mut this.tcp).poll_write(cx, &buf[..granted]);
        let written = match &polled {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        this.settle(
            granted,
            written,
            &this.shared.sent,
            &this.record.sent,
            "sent",
        );
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

//! Host-side MCP clients of the user's servers, kept warm for the life of
//! the server and shared by every run.
//!
//! Owns each server's child process (rmcp client over stdio): start on first
//! use (two concurrent first uses share one start), `initialize` and
//! `tools/list` each under a timeout, restart with backoff after it died,
//! tool metadata cached and refreshed (under a timeout) on
//! `notifications/tools/list_changed` or restart, child stderr to our log
//! (never our stdout), a message over the size limit ending the connection
//! (not waited for: see [`MessageBound`]), and stopping them all at shutdown. No lock is held
//! across I/O: a hung server delays only the callers that wait for that very
//! answer, and each of those waits is bounded. It knows nothing of
//! sandboxes: it answers "call tool T of server S".

use std::collections::HashMap;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};

use super::discovery::ServerDefinition;
use crate::metrics;

/// Servers started through `npx`/`uvx` may download first.
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);
/// `tools/list`, at start and on refresh: the server is up by then, so a
/// list that takes longer means it hangs.
const LIST_TOOLS_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message (one line, its newline not counted) accepted from a
/// server.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The longest line of a server's stderr that goes to our log; the rest of
/// the line is dropped.
const STDERR_LINE_CAP: usize = 8 * 1024;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("MCP server {server:?} could not be started: {reason}")]
    Start { server: String, reason: String },
    #[error("MCP server {server:?} failed {ago:?} ago ({reason}); next attempt in {retry_in:?}")]
    BackingOff {
        server: String,
        reason: String,
        ago: Duration,
        retry_in: Duration,
    },
    #[error("MCP server {server:?}, tool {tool:?}: {reason}")]
    Call {
        server: String,
        tool: String,
        reason: String,
    },
    #[error("unknown MCP server {0:?}")]
    UnknownServer(String),
}

/// Marks the tool list stale when the server says it changed.
#[derive(Clone, Default)]
struct Handler {
    tools_changed: Arc<AtomicBool>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.store(true, Ordering::Relaxed);
    }
}

/// A running server. Shared by the calls that use it; the child is killed
/// when the last of them lets go after a restart or shutdown.
struct Connected {
    service: RunningService<RoleClient, Handler>,
    _child: tokio::process::Child,
    tools_changed: Arc<AtomicBool>,
    /// Set when the server sent a message over [`MAX_MESSAGE_BYTES`] (the
    /// connection is closed then).
    oversized: Arc<AtomicBool>,
    /// The last tool list; swapped whole on refresh, never held across I/O.
    tools: Mutex<Arc<Vec<Tool>>>,
}

/// A start in progress, awaited by every caller that asked meanwhile.
type Start = Shared<BoxFuture<'static, Result<Arc<Connected>, String>>>;

enum State {
    Idle,
    Starting {
        start: Start,
        attempts: u32,
    },
    Connected(Arc<Connected>),
    Failed {
        at: Instant,
        reason: String,
        attempts: u32,
    },
}

/// One configured server and its (lazily started) client.
pub struct ServerClient {
    pub definition: ServerDefinition,
    /// Only held to read or switch the state, never across an `.await`.
    state: Mutex<State>,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClient")
            .field("definition", &self.definition)
            .finish_non_exhaustive()
    }
}

impl ServerClient {
    fn new(definition: ServerDefinition) -> Self {
        Self {
            definition,
            state: Mutex::new(State::Idle),
        }
    }

    /// How the client is, in words (for the console).
    pub fn describe(&self) -> String {
        match &*self.state() {
            State::Idle => "not started".into(),
            State::Starting { .. } => "starting".into(),
            State::Connected(_) => "running".into(),
            State::Failed { reason, .. } => format!("failed: {reason}"),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the state is
        // still one of the variants above.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live connection, starting (or restarting) the server if needed.
    /// Concurrent callers share one start.
    async fn connection(&self) -> Result<Arc<Connected>, ProxyError> {
        let (start, attempts) = {
            let mut state = self.state();
            if let State::Connected(connected) = &*state {
                if !connected.service.is_transport_closed() {
                    return Ok(connected.clone());
                }
                let reason = connected.closed_because();
                tracing::warn!(server = %self.definition.name, reason, "MCP server connection ended; restarting");
                *state = State::Failed {
                    at: Instant::now(),
                    reason: reason.into(),
                    attempts: 0,
                };
            }
            match &*state {
                State::Starting { start, attempts } => (start.clone(), *attempts),
                State::Failed {
                    at,
                    reason,
                    attempts,
                } => {
                    let backoff = (FIRST_RETRY * 2u32.saturating_pow(*attempts)).min(MAX_RETRY);
                    let ago = at.elapsed();
                    let attempts = *attempts;
                    if attempts > 0 && ago < backoff {
                        return Err(ProxyError::BackingOff {
                            server: self.definition.name.clone(),
                            reason: reason.clone(),
                            ago,
                            retry_in: backoff - ago,
                        });
                    }
                    metrics::observe_proxy_restart(&self.definition.name);
                    self.begin_start(&mut state, attempts + 1)
                }
                State::Idle | State::Connected(_) => self.begin_start(&mut state, 1),
            }
        };
        let result = start.clone().await;
        {
            let mut state = self.state();
            // The first waiter to get here records the outcome.
            if matches!(&*state, State::Starting { start: current, .. } if current.ptr_eq(&start)) {
                *state = match &result {
                    Ok(connected) => State::Connected(connected.clone()),
                    Err(reason) => State::Failed {
                        at: Instant::now(),
                        reason: reason.clone(),
                        attempts,
                    },
                };
            }
        }
        result.map_err(|reason| ProxyError::Start {
            server: self.definition.name.clone(),
            reason,
        })
    }

    fn begin_start(&self, state: &mut State, attempts: u32) -> (Start, u32) {
        let start = start(self.definition.clone()).boxed().shared();
        *state = State::Starting {
            start: start.clone(),
            attempts,
        };
        (start, attempts)
    }

    /// The server's tools (starting it if needed). After the server said
    /// they changed, the first caller refreshes them (bounded); callers
    /// meanwhile get the previous list rather than waiting.
    pub async fn tools(&self) -> Result<Arc<Vec<Tool>>, ProxyError> {
        let connected = self.connection().await?;
        if connected.tools_changed.swap(false, Ordering::Relaxed) {
            match list_tools(&connected.service).await {
                Ok(tools) => *lock(&connected.tools) = Arc::new(tools),
                // Not retried before the next change notice: a server that
                // hangs on tools/list would cost every run the timeout.
                Err(error) => {
                    tracing::warn!(
                        server = %self.definition.name,
                        %error,
                        "could not refresh tools; keeping the previous list"
                    );
                }
            }
        }
        Ok(lock(&connected.tools).clone())
    }

    /// Calls a tool. Dropping the future cancels the call on the server.
    pub async fn call(
        &self,
        tool: &str,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<CallToolResult, ProxyError> {
        let connected = self.connection().await?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        connected
            .service
            .call_tool(params)
            .await
            .map_err(|error| ProxyError::Call {
                server: self.definition.name.clone(),
                tool: tool.to_owned(),
                reason: if connected.oversized.load(Ordering::Relaxed) {
                    connected.closed_because().to_owned()
                } else {
                    error.to_string()
                },
            })
    }

    fn stop(&self) {
        if let State::Connected(connected) = std::mem::replace(&mut *self.state(), State::Idle) {
            connected.service.cancellation_token().cancel();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spawns the server and completes `initialize` and the first `tools/list`,
/// each under its timeout.
async fn start(definition: ServerDefinition) -> Result<Arc<Connected>, String> {
    let mut command = tokio::process::Command::new(&definition.command);
    command
        .args(&definition.args)
        .envs(&definition.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = &definition.cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", definition.command))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("the child process has no stdio pipes".into());
    };
    tokio::spawn(log_stderr(definition.name.clone(), stderr));
    let oversized = Arc::new(AtomicBool::new(false));
    let stdout = MessageBound::new(stdout, MAX_MESSAGE_BYTES, oversized.clone());
    // rmcp drops incoming lines over 16 MiB by default; results that size
    // must pass intact, with room for JSON escaping. Its own limit is never
    // reached: MessageBound ends the stream first.
    let transport =
        AsyncRwTransport::new_client(stdout, stdin).with_max_line_length(MAX_MESSAGE_BYTES + 1);
    let handler = Handler::default();
    let tools_changed = handler.tools_changed.clone();
    let service = match tokio::time::timeout(INITIALIZE_TIMEOUT, handler.serve(transport)).await {
        Ok(Ok(service)) => service,
        Ok(Err(error)) => return Err(format!("initialize failed: {error}")),
        Err(_) => {
            return Err(format!(
                "no answer to initialize within {INITIALIZE_TIMEOUT:?}"
            ));
        }
    };
    let tools = list_tools(&service).await?;
    tracing::info!(server = %definition.name, tools = tools.len(), "MCP server started");
    Ok(Arc::new(Connected {
        service,
        _child: child,
        tools_changed,
        oversized,
        tools: Mutex::new(Arc::new(tools)),
    }))
}

impl Connected {
    /// Why the connection ended, as a caller is told.
    fn closed_because(&self) -> &'static str {
        if self.oversized.load(Ordering::Relaxed) {
            OVERSIZED
        } else {
            "the server exited"
        }
    }
}

const OVERSIZED: &str = "the server sent a message over 64 MiB, the largest accepted: \
    its connection was closed (the server is restarted for the next call)";

/// A server's stdout as rmcp reads it, ended (EOF) at the first line over
/// its limit ([`MAX_MESSAGE_BYTES`]). rmcp drops such a line and reads on, so the call
/// it answered would wait until its run's deadline; ending the stream closes
/// the connection instead, and every call waiting on it fails at once. What
/// came before the long line in the same read is passed on.
struct MessageBound<R> {
    inner: R,
    limit: usize,
    /// Bytes of the current line so far.
    line: usize,
    oversized: Arc<AtomicBool>,
}

impl<R> MessageBound<R> {
    fn new(inner: R, limit: usize, oversized: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit,
            line: 0,
            oversized,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MessageBound<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.oversized.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let mut line = self.line;
        let mut line_start = before;
        let mut over = false;
        let mut rest = &buf.filled()[before..];
        loop {
            let end = rest.iter().position(|&byte| byte == b'\n');
            let length = line + end.unwrap_or(rest.len());
            if length > self.limit {
                over = true;
                break;
            }
            let Some(end) = end else {
                line = length;
                break;
            };
            line = 0;
            line_start += end + 1;
            rest = &rest[end + 1..];
        }
        self.line = line;
        if over {
            self.oversized.store(true, Ordering::Relaxed);
            buf.set_filled(line_start);
        }
        Poll::Ready(Ok(()))
    }
}

async fn list_tools(service: &RunningService<RoleClient, Handler>) -> Result<Vec<Tool>, String> {
    match tokio::time::timeout(LIST_TOOLS_TIMEOUT, service.list_all_tools()).await {
        Ok(Ok(tools)) => Ok(tools),
        Ok(Err(error)) => Err(format!("tools/list failed: {error}")),
        Err(_) => Err(format!(
            "no answer to tools/list within {LIST_TOOLS_TIMEOUT:?}"
        )),
    }
}

/// Copies a server's stderr into our log until the pipe closes, so the
/// server never blocks on it: bytes that are not UTF-8 are replaced, lines
/// over [`STDERR_LINE_CAP`] are cut.
async fn log_stderr(server: String, stderr: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut cut = false;
    loop {
        let (taken, line_ended) = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(available) => {
                let end = available.iter().position(|&b| b == b'\n');
                let taken = end.map_or(available.len(), |i| i + 1);
                let room = STDERR_LINE_CAP.saturating_sub(line.len());
                line.extend_from_slice(&available[..taken.min(room)]);
                cut |= taken > room;
                (taken, end.is_some())
            }
        };
        reader.consume(taken);
        if line_ended {
            log_stderr_line(&server, &line, cut);
            line.clear();
            cut = false;
        }
    }
    if !line.is_empty() {
        log_stderr_line(&server, &line, cut);
    }
}

fn log_stderr_line(server: &str, line: &[u8], cut: bool) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if cut {
        tracing::info!(server, "{text} [line cut at {STDERR_LINE_CAP} bytes]");
    } else {
        tracing::info!(server, "{text}");
    }
}

/// Every configured server's client, by name.
#[derive(Debug)]
pub struct ClientHub {
    clients: HashMap<String, Arc<ServerClient>>,
    /// Names in discovery order.
    order: Vec<String>,
}

impl ClientHub {
    pub fn new(servers: Vec<ServerDefinition>) -> Self {
        let order = servers.iter().map(|s| s.name.clone()).collect();
        let clients = servers
            .into_iter()
            .map(|definition| {
                (
                    definition.name.clone(),
                    Arc::new(ServerClient::new(definition)),
                )
            })
            .collect();
        Self { clients, order }
    }

    pub fn names(&self) -> &[String] {
        &self.order
    }

    pub fn definitions(&self) -> impl Iterator<Item = &ServerDefinition> {
        self.order.iter().map(|name| &self.clients[name].definition)
    }

    pub fn get(&self, name: &str) -> Result<&Arc<ServerClient>, ProxyError> {
        self.clients
            .get(name)
            .ok_or_else(|| ProxyError::UnknownServer(name.to_owned()))
    }

    /// Stops every started server (their child processes exit).
    pub async fn shutdown(&self) {
        for client in self.clients.values() {
            client.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What rmcp would read through a bound of `limit` from `chunks` (each
    /// one read), and whether the bound tripped.
    async fn through(limit: usize, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut reader = chunked(chunks);
        let oversized = Arc::new(AtomicBool::new(false));
        let mut bound = MessageBound::new(&mut reader, limit, oversized.clone());
        let mut read = Vec::new();
        bound.read_to_end(&mut read).await.unwrap();
        (read, oversized.load(Ordering::Relaxed))
    }

    /// A reader that yields `chunks` one read each.
    fn chunked(chunks: &[&[u8]]) -> impl AsyncRead + Unpin {
        let chunks: Vec<std::io::Result<Vec<u8>>> =
            chunks.iter().map(|chunk| Ok(chunk.to_vec())).collect();
        tokio_util::io::StreamReader::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|chunk| chunk.map(bytes::Bytes::from)),
        ))
    }

    #[tokio::test]
    async fn lines_within_the_limit_pass_whole() {
        let (read, over) = through(4, &[b"ab\nabcd", b"\n", b"a", b"bc\n"]).await;
        assert_eq!((read.as_slice(), over), (&b"ab\nabcd\nabc\n"[..], false));
    }

    #[tokio::test]
    async fn the_stream_ends_before_a_line_over_the_limit() {
        // Over in the middle of a read: what came before it passes.
        let (read, over) = through(4, &[b"ab\nabcde\nab\n"]).await;
        assert_eq!((read.as_slice(), over), (&b"ab\n"[..], true));
        // Over across reads: the line's start passed already, then EOF.
        let (read, over) = through(4, &[b"abc", b"de", b"\nab\n"]).await;
        assert_eq!((read.as_slice(), over), (&b"abc"[..], true));
    }
}

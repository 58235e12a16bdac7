//! Host-side MCP clients of the user's servers, kept warm for the life of
//! the server and shared by every run.
//!
//! Owns each server's child process (rmcp client over stdio): start on first
//! use (two concurrent first uses start it once), `initialize` under a
//! timeout, restart with backoff after it died, tool metadata cached and
//! refreshed on `notifications/tools/list_changed` or restart, child stderr
//! to our log (never our stdout), and stopping them all at shutdown. It knows
//! nothing of sandboxes: it answers "call tool T of server S".

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

use super::discovery::ServerDefinition;
use crate::metrics;

const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest message accepted from a server.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
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

struct Connected {
    service: Arc<RunningService<RoleClient, Handler>>,
    /// Killed when dropped (a restart or shutdown).
    _child: tokio::process::Child,
    tools_changed: Arc<AtomicBool>,
    tools: Arc<Vec<Tool>>,
}

enum State {
    Idle,
    Connected(Connected),
    Failed {
        at: Instant,
        reason: String,
        attempts: u32,
    },
}

/// One configured server and its (lazily started) client.
pub struct ServerClient {
    pub definition: ServerDefinition,
    state: Mutex<State>,
}

impl ServerClient {
    fn new(definition: ServerDefinition) -> Self {
        Self {
            definition,
            state: Mutex::new(State::Idle),
        }
    }

    /// A live connection, starting (or restarting) the server if needed.
    /// The lock makes concurrent first uses share one start.
    async fn connection(
        &self,
    ) -> Result<(Arc<RunningService<RoleClient, Handler>>, Arc<Vec<Tool>>), ProxyError> {
        let mut state = self.state.lock().await;
        if let State::Connected(connected) = &mut *state {
            if !connected.service.is_transport_closed() {
                if connected.tools_changed.swap(false, Ordering::Relaxed) {
                    match connected.service.list_all_tools().await {
                        Ok(tools) => connected.tools = Arc::new(tools),
                        Err(error) => {
                            tracing::warn!(server = %self.definition.name, %error, "could not refresh tools")
                        }
                    }
                }
                return Ok((connected.service.clone(), connected.tools.clone()));
            }
            tracing::warn!(server = %self.definition.name, "MCP server exited; restarting");
            *state = State::Failed {
                at: Instant::now(),
                reason: "the server exited".into(),
                attempts: 0,
            };
        }
        if let State::Failed {
            at,
            reason,
            attempts,
        } = &*state
        {
            let backoff = (FIRST_RETRY * 2u32.saturating_pow(*attempts)).min(MAX_RETRY);
            let ago = at.elapsed();
            if *attempts > 0 && ago < backoff {
                return Err(ProxyError::BackingOff {
                    server: self.definition.name.clone(),
                    reason: reason.clone(),
                    ago,
                    retry_in: backoff - ago,
                });
            }
        }
        let attempts = match &*state {
            State::Failed { attempts, .. } => {
                metrics::observe_proxy_restart(&self.definition.name);
                attempts + 1
            }
            _ => 1,
        };
        match self.start().await {
            Ok(connected) => {
                let pair = (connected.service.clone(), connected.tools.clone());
                *state = State::Connected(connected);
                Ok(pair)
            }
            Err(reason) => {
                *state = State::Failed {
                    at: Instant::now(),
                    reason: reason.clone(),
                    attempts,
                };
                Err(ProxyError::Start {
                    server: self.definition.name.clone(),
                    reason,
                })
            }
        }
    }

    async fn start(&self) -> Result<Connected, String> {
        let definition = &self.definition;
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
        let name = definition.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(server = %name, "{line}");
            }
        });
        // rmcp drops incoming lines over 16 MiB by default; results that size
        // must pass intact, with room for JSON escaping.
        let transport =
            AsyncRwTransport::new_client(stdout, stdin).with_max_line_length(MAX_MESSAGE_BYTES);
        let handler = Handler::default();
        let tools_changed = handler.tools_changed.clone();
        let service = match tokio::time::timeout(INITIALIZE_TIMEOUT, handler.serve(transport)).await
        {
            Ok(Ok(service)) => service,
            Ok(Err(error)) => return Err(format!("initialize failed: {error}")),
            Err(_) => {
                return Err(format!(
                    "no answer to initialize within {INITIALIZE_TIMEOUT:?}"
                ));
            }
        };
        let tools = service
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"))?;
        tracing::info!(server = %definition.name, tools = tools.len(), "MCP server started");
        Ok(Connected {
            service: Arc::new(service),
            _child: child,
            tools_changed,
            tools: Arc::new(tools),
        })
    }

    /// The server's tools (starting it if needed).
    pub async fn tools(&self) -> Result<Arc<Vec<Tool>>, ProxyError> {
        self.connection().await.map(|(_, tools)| tools)
    }

    /// Calls a tool. Dropping the future cancels the call on the server.
    pub async fn call(
        &self,
        tool: &str,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<CallToolResult, ProxyError> {
        let (service, _) = self.connection().await?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        service
            .call_tool(params)
            .await
            .map_err(|error| ProxyError::Call {
                server: self.definition.name.clone(),
                tool: tool.to_owned(),
                reason: error.to_string(),
            })
    }

    async fn stop(&self) {
        let mut state = self.state.lock().await;
        if let State::Connected(connected) = std::mem::replace(&mut *state, State::Idle) {
            connected.service.cancellation_token().cancel();
        }
    }
}

/// Every configured server's client, by name.
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
        futures_util::future::join_all(self.clients.values().map(|client| client.stop())).await;
    }
}

//! Proxying: the user's MCP servers, warm on the host, callable from the
//! sandboxed Python.
//!
//! [`discovery`] finds the definitions, [`clients`] keeps one client per
//! server. This module turns them into what a run needs: the metadata the
//! sandbox builds its `mcp` modules from, and the answer to each tool call
//! the sandbox makes. It never touches containers.

pub mod clients;
pub mod discovery;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::metrics;
use crate::sandbox::ToolCalls;
use clients::{ClientHub, ProxyError};
use discovery::{SearchRoots, ServerDefinition, unique_identifiers};

/// Whether a tool's output schema is the wrapper that FastMCP-style servers
/// put around a primitive return: an object whose one property, `result`, is
/// required (the official SDK), or one marked `x-fastmcp-wrap-result`
/// (FastMCP 2). The sandbox then gives Python the value, not the wrapper.
fn wraps_result(output_schema: Option<&serde_json::Map<String, Value>>) -> bool {
    let Some(schema) = output_schema else {
        return false;
    };
    if schema.get("x-fastmcp-wrap-result") == Some(&Value::Bool(true)) {
        return true;
    }
    let only_result = schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|properties| properties.len() == 1 && properties.contains_key("result"));
    let required = schema.get("required") == Some(&json!(["result"]));
    only_result && required
}

/// The configured servers and their warm clients.
pub struct Proxy {
    hub: ClientHub,
    /// Every configured server as the sandbox lists it; fixed for the
    /// process's life, so built once rather than per run.
    discovered: Value,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("servers", &self.names())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Discovers the servers (warnings go to the log); starts none of them.
    pub fn discover(roots: &SearchRoots) -> Self {
        let (servers, warnings) = discovery::discover(roots);
        for warning in warnings {
            tracing::warn!(
                file = %warning.file.display(),
                reason = %warning.reason,
                "skipped MCP server configuration"
            );
        }
        if !servers.is_empty() {
            let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
            tracing::info!(servers = ?names, "MCP servers available to sandboxed code");
        }
        Self::new(servers)
    }

    pub fn new(servers: Vec<ServerDefinition>) -> Self {
        let discovered = servers
            .iter()
            .map(|d| json!({"name": d.name, "alias": d.alias, "description": d.description}))
            .collect();
        Self {
            hub: ClientHub::new(servers),
            discovered: Value::Array(discovered),
        }
    }

    pub fn names(&self) -> &[String] {
        self.hub.names()
    }

    pub fn definitions(&self) -> impl Iterator<Item = &ServerDefinition> {
        self.hub.definitions()
    }

    /// The tools of `servers` for one run; starts those servers (once, then
    /// they stay warm) to read their tools. `None` when nothing is configured.
    pub async fn tools_for(
        self: &Arc<Self>,
        servers: &[String],
    ) -> Result<Option<RunTools>, ProxyError> {
        if self.hub.names().is_empty() {
            return Ok(None);
        }
        let mut callable = Vec::with_capacity(servers.len());
        for name in servers {
            let client = self.hub.get(name)?;
            let tools = client.tools().await?;
            let aliases = unique_identifiers(tools.iter().map(|t| t.name.as_ref()));
            let tools: Vec<Value> = tools
                .iter()
                .zip(aliases)
                .map(|(tool, alias)| {
                    json!({
                        "name": tool.name,
                        "alias": alias,
                        "description": tool.description,
                        "input_schema": tool.input_schema,
                        "wraps_result": wraps_result(tool.output_schema.as_deref()),
                    })
                })
                .collect();
            let definition = &client.definition;
            callable.push(json!({
                "name": definition.name,
                "alias": definition.alias,
                "description": definition.description,
                "tools": tools,
            }));
        }
        Ok(Some(RunTools {
            metadata: json!({"servers": callable, "discovered": self.discovered}),
            proxy: self.clone(),
            allowed: servers.to_vec(),
            in_flight: Semaphore::new(MAX_CALLS_IN_FLIGHT),
        }))
    }

    /// Stops every server started so far.
    pub async fn shutdown(&self) {
        self.hub.shutdown().await;
    }
}

/// The tools one run may call: the metadata its sandbox builds the `mcp`
/// package from, and the answers to its calls, to the servers it asked for
/// only.
pub struct RunTools {
    metadata: Value,
    proxy: Arc<Proxy>,
    allowed: Vec<String>,
    /// Bounds the calls one run has in flight: user code cannot make the
    /// host (or the user's servers) hold an unbounded number of calls.
    in_flight: Semaphore,
}

impl std::fmt::Debug for RunTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTools")
            .field("allowed", &self.allowed)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// How a proxied tool call ended: a closed set, fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// The tool answered with `isError`.
    ToolError,
    /// The server could not be reached or the call broke.
    Failed,
}

impl CallOutcome {
    pub const ALL: [Self; 3] = [Self::Ok, Self::ToolError, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ToolError => "tool_error",
            Self::Failed => "failed",
        }
    }
}

/// Tool calls one run may have in flight at once.
pub const MAX_CALLS_IN_FLIGHT: usize = 64;

#[derive(Deserialize)]
struct CallRequest {
    id: Value,
    server: String,
    tool: String,
    #[serde(default)]
    arguments: Option<serde_json::Map<String, Value>>,
}

impl ToolCalls for RunTools {
    fn metadata(&self) -> &Value {
        &self.metadata
    }

    fn call(&self, request: Bytes) -> BoxFuture<'_, Value> {
        Box::pin(async move {
            let request: CallRequest = match serde_json::from_slice(&request) {
                Ok(request) => request,
                Err(error) => {
                    let error = format!("malformed call: {error}");
                    return json!({"id": null, "ok": false, "error": error});
                }
            };
            let id = request.id;
            if !self.allowed.contains(&request.server) {
                let error = format!(
                    "server {:?} is not available in this run; \
                     pass it in run_python(servers=[...])",
                    request.server
                );
                return json!({"id": id, "ok": false, "error": error});
            }
            let Ok(_permit) = self.in_flight.try_acquire() else {
                let error = format!(
                    "more than {MAX_CALLS_IN_FLIGHT} MCP calls in flight in one run; \
                     await some before starting more"
                );
                return json!({"id": id, "ok": false, "error": error});
            };
            let started = Instant::now();
            let outcome = match self.proxy.hub.get(&request.server) {
                Ok(client) => client.call(&request.tool, request.arguments).await,
                Err(error) => Err(error),
            };
            let observed = match &outcome {
                Ok(result) if result.is_error == Some(true) => CallOutcome::ToolError,
                Ok(_) => CallOutcome::Ok,
                Err(_) => CallOutcome::Failed,
            };
            metrics::observe_proxy_call(&request.server, observed.as_str(), started.elapsed());
            match outcome {
                Ok(result) => json!({"id": id, "ok": true, "result": result}),
                Err(error) => json!({"id": id, "ok": false, "error": error.to_string()}),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn only_the_result_wrapper_is_unwrapped() {
        // What the official SDK's FastMCP advertises for `def pid() -> int`.
        let sdk = schema(json!({
            "type": "object", "title": "pidOutput", "required": ["result"],
            "properties": {"result": {"type": "integer", "title": "Result"}},
        }));
        assert!(wraps_result(Some(&sdk)));
        let marked = schema(json!({"type": "object", "x-fastmcp-wrap-result": true,
            "properties": {"result": {"type": "string"}}}));
        assert!(wraps_result(Some(&marked)));

        assert!(!wraps_result(None), "no schema: the content as it is");
        let object = schema(json!({"type": "object", "required": ["greeting"],
            "properties": {"greeting": {"type": "string"}, "length": {"type": "integer"}}}));
        assert!(!wraps_result(Some(&object)));
        let optional = schema(json!({"type": "object",
            "properties": {"result": {"type": "string"}}}));
        assert!(!wraps_result(Some(&optional)), "an optional field is data");
        let two = schema(json!({"type": "object", "required": ["result"],
            "properties": {"result": {}, "more": {}}}));
        assert!(!wraps_result(Some(&two)));
    }
}

//! The MCP front end: a stdio server (rmcp) with one tool, `run_python`.
//!
//! Owns the tool's contract (arguments, description, output schema), client
//! cancellation, and the one mapping from a [`RunReport`] to an MCP result.
//! It never writes to stdout itself (that is the protocol channel) and knows
//! nothing of containers: it calls the [`Backend`].

use std::sync::Arc;

use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

use crate::backend::Backend;
use crate::config::OutputMode;
use crate::execution::RunRequest;
use crate::report::{RunReport, RunStatus};

/// Arguments of `run_python`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunPythonArgs {
    /// Python 3 source to run as a script. Top-level `await` is allowed.
    pub code: String,
    /// Names of configured MCP servers the code may call.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Time limit in seconds (default from MCP_BRIDGE_TIMEOUT, at most MCP_BRIDGE_MAX_TIMEOUT).
    #[serde(default)]
    pub timeout: Option<f64>,
}

#[derive(Clone)]
pub struct CodeExecServer {
    backend: Arc<Backend>,
    output_mode: OutputMode,
}

#[tool_router]
impl CodeExecServer {
    pub fn new(backend: Arc<Backend>, output_mode: OutputMode) -> Self {
        Self {
            backend,
            output_mode,
        }
    }

    #[tool(
        description = "Run Python 3 code in an isolated sandbox: no network, read-only system, writable /tmp and \
                       /workspace (the working directory), memory/process/time limits. Each call starts clean: \
                       nothing persists between calls. Print what you need; returns stdout, stderr and a status \
                       (success, error, timeout, oom, validation_error).",
        output_schema = schema_for_output::<RunReport>()
    )]
    async fn run_python(
        &self,
        Parameters(args): Parameters<RunPythonArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let request = RunRequest {
            code: args.code,
            servers: args.servers,
            timeout_secs: args.timeout,
        };
        tokio::select! {
            report = self.backend.execute(&request) => Ok(tool_result(&report, self.output_mode)),
            // Dropping the run destroys its sandbox: nothing of it lingers.
            _ = context.ct.cancelled() => Err(ErrorData::internal_error("run cancelled by the client", None)),
        }
    }
}

#[tool_handler]
impl ServerHandler for CodeExecServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Use run_python to compute, transform data or test code. Every call runs in a fresh sandbox; \
                 pass all state in the code.",
            )
    }
}

/// The one place a report becomes an MCP result: text for the model in the
/// configured mode, the report itself as `structuredContent`, and `isError`
/// whenever the run did not succeed.
pub fn tool_result(report: &RunReport, mode: OutputMode) -> CallToolResult {
    let structured = serde_json::to_value(report).expect("a report always serializes");
    let mut result = if report.status == RunStatus::Success {
        CallToolResult::structured(structured)
    } else {
        CallToolResult::structured_error(structured)
    };
    result.content = vec![ContentBlock::text(report.render(mode))];
    result
}

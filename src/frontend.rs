//! The MCP front end: an MCP server (rmcp) with one tool, `run_python`,
//! and resources: the sandbox API manual, and the files runs returned.
//! Served over stdio ([`transport`]) or streamable HTTP ([`crate::http`]);
//! each request is made for the principal the HTTP front door put in its
//! HTTP parts (over stdio: [`Principal::local`]), and sees only its files.
//!
//! Owns the tool's contract (arguments, description, output schema), client
//! cancellation, progress notes that never hold a run, and the context
//! budget of `tools/list` (small however many servers are configured: the
//! full manual is a resource). It never writes to stdout itself (that is
//! the protocol channel) and knows nothing of containers: it hands each
//! call to [`crate::call`] with the [`Service`]. [`result`] maps a report
//! to an MCP result and bounds every answer's size; [`transport`] is its
//! stdio transport, which answers every line a client sends.

mod envelope;
pub mod result;
pub mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, GetSkillRequestParams, GetSkillResult, Implementation, ListResourcesResult,
    ListSkillsResult, PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::json;

use crate::approval::ClientApprover;
use crate::artifacts;
use crate::call::{self, CallRequest};
use crate::config::{Config, HostRead, OutputMode};
use crate::hostfiles::{self, HostRequest, SaveRequest};
use crate::principals::Principal;
use crate::proxy::discovery::ServerDefinition;
use crate::report::RunStatus;
use crate::sandbox::protocol::{FileContent, InputFile};
use crate::service::Service;
use crate::skills;
pub use result::tool_result;

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
    /// Files written under /workspace before the code runs: relative path -> UTF-8 text, or {"base64": "..."}.
    #[serde(default)]
    pub files: BTreeMap<String, FileArg>,
    /// Keep state between the calls that pass this name ([A-Za-z0-9_-]{1,64}).
    #[serde(default)]
    pub session: Option<String>,
    /// End the session after this call (with empty code: just end it).
    #[serde(default)]
    pub end_session: bool,
    /// Requirements to pip-install first.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Files the run leaves under /workspace/out saved to the host: `out/...` -> path beneath MCP_BRIDGE_HOST_WRITE.
    #[serde(default)]
    pub save: BTreeMap<String, String>,
    /// A save may replace an existing file.
    #[serde(default)]
    pub overwrite: bool,
}

/// A file's content in `run_python(files=...)`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum FileArg {
    Text(String),
    Binary {
        base64: String,
    },
    /// A host file or folder beneath a read root (`MCP_BRIDGE_HOST_READ`).
    Host {
        host: String,
    },
}

/// The call's `files`: those it carries, and those read from the host.
fn split_files(files: BTreeMap<String, FileArg>) -> (Vec<InputFile>, Vec<HostRequest>) {
    let mut carried = Vec::new();
    let mut host = Vec::new();
    for (path, arg) in files {
        match arg {
            FileArg::Text(text) => carried.push(InputFile {
                path,
                content: FileContent::Text(text),
            }),
            FileArg::Binary { base64 } => carried.push(InputFile {
                path,
                content: FileContent::Base64(base64),
            }),
            FileArg::Host { host: from } => host.push(HostRequest {
                dest: path,
                host: from,
            }),
        }
    }
    (carried, host)
}

/// The manual of the sandbox's `mcp` API, with the configured servers.
pub const CAPABILITIES_URI: &str = "resource://mcp-code-exec/capabilities";
const MANUAL: &str = include_str!("sandbox/manual.md");
/// How often a run reports progress to a client that sent a progress token
/// (clients that reset their timeout on progress can then wait for long runs).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(4);
/// How much of the tool description may go to server names.
const SERVER_NAMES_BUDGET: usize = 100;
/// What the server names give up where host files or saves are enabled:
/// their arguments take about this much of `tools/list`.
const HOST_ARGUMENTS_BUDGET: usize = 60;
/// What `tools/list` may take with any number of servers: under the 2 KiB
/// of context it aims at, with room for parameters to come.
#[cfg(test)]
const TOOLS_LIST_BYTES: usize = 2000;

#[derive(Clone)]
pub struct CodeExecServer {
    service: Arc<Service>,
    output_mode: OutputMode,
    tool_router: ToolRouter<Self>,
    /// The client's roots as it last listed them (`MCP_BRIDGE_HOST_READ=roots`):
    /// asked at the first call that reads host files, forgotten when the
    /// client says they changed.
    roots: Arc<tokio::sync::Mutex<Option<Vec<PathBuf>>>>,
}

impl std::fmt::Debug for CodeExecServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeExecServer")
            .field("service", &self.service)
            .field("output_mode", &self.output_mode)
            .finish_non_exhaustive()
    }
}

#[tool_router]
impl CodeExecServer {
    pub fn new(service: Arc<Service>, output_mode: OutputMode) -> Self {
        let mut tool_router = Self::tool_router();
        let tool = &mut tool_router
            .map
            .get_mut("run_python")
            .expect("the tool is routed")
            .attr;
        let config = service.config();
        let budget = if config.host_read != HostRead::Off || config.host_write.is_some() {
            SERVER_NAMES_BUDGET - HOST_ARGUMENTS_BUDGET
        } else {
            SERVER_NAMES_BUDGET
        };
        tool.description = Some(tool_description(service.proxy().names(), budget).into());
        tool.input_schema = Arc::new(input_schema(service.config()));
        tool.output_schema = Some(Arc::new(output_schema(service.config())));
        Self {
            service,
            output_mode,
            tool_router,
            roots: Arc::default(),
        }
    }

    /// The client's roots, as local folders: listed once, then kept until
    /// the client says they changed. (MCP roots are deprecated upstream,
    /// SEP-2577, and still what clients send.)
    #[allow(deprecated)]
    async fn client_roots(&self, peer: &rmcp::Peer<RoleServer>) -> Result<Vec<PathBuf>, String> {
        let mut kept = self.roots.lock().await;
        if let Some(roots) = kept.as_ref() {
            return Ok(roots.clone());
        }
        let declared = peer
            .peer_info()
            .is_some_and(|info| info.capabilities.roots.is_some());
        if !declared {
            return Err("the client declares no roots capability".into());
        }
        let listed = tokio::time::timeout(ROOTS_TIMEOUT, peer.list_roots())
            .await
            .map_err(|_| format!("the client did not list its roots within {ROOTS_TIMEOUT:?}"))?
            .map_err(|error| format!("the client did not list its roots: {error}"))?;
        let roots: Vec<PathBuf> = listed
            .roots
            .iter()
            .filter_map(|root| hostfiles::file_uri_path(&root.uri))
            .collect();
        tracing::info!(roots = ?roots, "the client's roots are the read roots");
        *kept = Some(roots.clone());
        Ok(roots)
    }

    /// (Description and output schema are set in `new`: the description
    /// names the configured servers.)
    #[tool]
    async fn run_python(
        &self,
        Parameters(args): Parameters<RunPythonArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = principal_of(&context)?;
        // Over HTTP, counted against its principal until the answer is sent
        // (a cancelled call's seat drops with it); a call past the bound is
        // refused, and `call` observes the refusal. Stdio's one client is
        // bounded by the pool, as is the `run` subcommand.
        let (_seat, over_quota) = match context.extensions.get::<axum::http::request::Parts>() {
            None => (None, None),
            Some(_) => match self.service.calls().enter(&principal) {
                Ok(seat) => (Some(seat), None),
                Err(refused) => (None, Some(refused)),
            },
        };
        let (files, host_files) = split_files(args.files);
        let client_roots = match self.service.config().host_read {
            HostRead::ClientRoots if !host_files.is_empty() && over_quota.is_none() => {
                Some(self.client_roots(&context.peer).await)
            }
            _ => None,
        };
        let request = CallRequest {
            principal,
            code: args.code,
            servers: args.servers,
            timeout_secs: args.timeout,
            files,
            session: args.session,
            end_session: args.end_session,
            packages: args.packages,
            host_files,
            save: args
                .save
                .into_iter()
                .map(|(from, to)| SaveRequest { from, to })
                .collect(),
            overwrite: args.overwrite,
            client_roots,
            approver: ClientApprover::of(
                &context.peer,
                self.service.config().tool_approval_timeout,
            ),
            over_quota,
        };
        let Some(token) = context.meta.get_progress_token() else {
            // The usual case: no timer, no channel.
            return tokio::select! {
                report = call::call(&self.service, &request) => {
                    Ok(tool_result(&report, self.output_mode))
                }
                // Dropping the run destroys its sandbox: nothing of it lingers.
                _ = context.ct.cancelled() => Err(cancelled()),
            };
        };
        let (tail, last_line) = tokio::sync::watch::channel(String::new());
        let run = call::call_with_tail(&self.service, &request, Some(&tail));
        tokio::pin!(run);
        let started = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let total = request
            .timeout_secs
            .unwrap_or(self.service.config().default_timeout.as_secs_f64());
        // The notification being written, polled beside the run: a client
        // that reads slowly delays its notes (one at a time; ticks while one
        // is pending are skipped), never the run, its deadline or its cancel.
        let mut sending: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
        loop {
            tokio::select! {
                report = &mut run => {
                    if let Some(note) = sending.take() {
                        // No progress after the result: the pending note first.
                        tokio::select! {
                            () = note => {}
                            _ = context.ct.cancelled() => return Err(cancelled()),
                        }
                    }
                    return Ok(tool_result(&report, self.output_mode));
                }
                _ = context.ct.cancelled() => return Err(cancelled()),
                () = async { sending.as_mut().expect("guarded").await }, if sending.is_some() => {
                    sending = None;
                }
                _ = ticker.tick(), if sending.is_none() => {
                    let elapsed = started.elapsed().as_secs_f64();
                    let mut note = ProgressNotificationParam::new(token.clone(), elapsed)
                        .with_total(total);
                    let line = last_line.borrow().clone();
                    if !line.is_empty() {
                        note = note.with_message(line);
                    }
                    let peer = context.peer.clone();
                    sending = Some(Box::pin(async move {
                        // A client gone deaf is its own problem.
                        let _ = peer.notify_progress(note).await;
                    }));
                }
            }
        }
    }
}

/// Whom a request is for: the principal the HTTP front door authenticated
/// (in the request's HTTP parts), or the local one over stdio. An HTTP
/// request without one is refused, never served as `local`.
fn principal_of(context: &RequestContext<RoleServer>) -> Result<Principal, ErrorData> {
    match context.extensions.get::<axum::http::request::Parts>() {
        None => Ok(Principal::local()),
        Some(parts) => parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("the request has no principal", None)),
    }
}

fn cancelled() -> ErrorData {
    ErrorData::internal_error("run cancelled by the client", None)
}

/// How long the client may take to list its roots.
const ROOTS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CodeExecServer {
    async fn on_roots_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<RoleServer>,
    ) {
        // Listed again at the next call that reads host files.
        *self.roots.lock().await = None;
        tracing::info!("the client's roots changed");
    }

    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources();
        // The skills extension (SEP-2640), when the store is on.
        let capabilities = if self.service.skills().enabled() {
            capabilities.enable_skills().build()
        } else {
            capabilities.build()
        };
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Use run_python to compute, transform data or test code, and to call the \
             configured MCP servers from Python. Every call runs in a fresh sandbox, \
             unless calls name the same `session`: then variables, imports and files \
             persist between them (the result says whether the session is new, \
             continued or was lost).",
            )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let principal = principal_of(&context)?;
        let manual = Resource::new(CAPABILITIES_URI, "capabilities").with_description(
            "How sandboxed Python calls the configured MCP servers: the mcp API and the servers",
        );
        let artifacts = self.service.artifacts().list(&principal);
        let resources = std::iter::once(manual)
            .chain(artifacts.iter().map(artifact_resource))
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri.starts_with(artifacts::SCHEME) {
            let principal = principal_of(&context)?;
            let artifact = self
                .service
                .artifacts()
                .get(&principal, &request.uri)
                .map_err(|error| {
                    // SEP-2164: the error names the URI asked for, whoever's it is.
                    let uri = serde_json::json!({ "uri": request.uri });
                    ErrorData::resource_not_found(error.to_string(), Some(uri))
                })?;
            let contents = result::artifact_contents(&artifact)?;
            return Ok(ReadResourceResult::new(vec![contents]).into());
        }
        if request.uri.starts_with(skills::SCHEME) {
            let uri = request.uri.clone();
            let bytes = self
                .in_skills(&context, move |store, owner| store.read(owner, &uri))
                .await?
                .ok_or_else(|| {
                    ErrorData::resource_not_found(
                        format!("no skill file {}", request.uri),
                        Some(serde_json::json!({ "uri": request.uri })),
                    )
                })?;
            return Ok(ReadResourceResult::new(vec![skill_contents(&request.uri, bytes)]).into());
        }
        if request.uri != CAPABILITIES_URI {
            return Err(ErrorData::resource_not_found(
                format!(
                    "no resource {}; the resources are {CAPABILITIES_URI} and the \
                     {}<run>/<path> files runs return",
                    request.uri,
                    artifacts::SCHEME
                ),
                Some(serde_json::json!({ "uri": request.uri })),
            ));
        }
        let saved = self
            .in_skills(&context, |store, owner| store.list(owner))
            .await?;
        let mut text = capabilities_manual(self.service.proxy().definitions());
        skills_section(&mut text, self.service.skills().enabled(), &saved);
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, CAPABILITIES_URI)]).into())
    }

    async fn list_skills(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListSkillsResult, ErrorData> {
        let skills = self
            .in_skills(&context, |store, owner| store.manifests(owner))
            .await?;
        Ok(ListSkillsResult::with_all_items(skills))
    }

    async fn get_skill(
        &self,
        request: GetSkillRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetSkillResult, ErrorData> {
        let uri = request.uri.clone();
        let skill = self
            .in_skills(&context, move |store, owner| store.manifest_at(owner, &uri))
            .await?;
        match skill {
            Some(skill) => Ok(GetSkillResult::new(skill)),
            None => Err(ErrorData::invalid_params(
                format!("no skill at {}", request.uri),
                Some(serde_json::json!({ "uri": request.uri })),
            )),
        }
    }
}

impl CodeExecServer {
    /// `work` on the skill store as the request's principal, off the
    /// runtime's threads (the store reads files).
    async fn in_skills<T: Send + 'static>(
        &self,
        context: &RequestContext<RoleServer>,
        work: impl FnOnce(&skills::SkillStore, &Principal) -> T + Send + 'static,
    ) -> Result<T, ErrorData> {
        let principal = principal_of(context)?;
        let store = self.service.skills().clone();
        tokio::task::spawn_blocking(move || work(&store, &principal))
            .await
            .map_err(|_| ErrorData::internal_error("the skill store failed", None))
    }
}

/// A skill's file as `resources/read` gives it: text when it is UTF-8.
fn skill_contents(uri: &str, bytes: Vec<u8>) -> ResourceContents {
    let mime = if uri.ends_with(".md") {
        "text/markdown"
    } else if uri.ends_with(".py") {
        "text/x-python"
    } else {
        "text/plain"
    };
    match String::from_utf8(bytes) {
        Ok(text) => ResourceContents::text(text, uri).with_mime_type(mime),
        Err(error) => {
            use base64::Engine as _;
            let blob = base64::engine::general_purpose::STANDARD.encode(error.into_bytes());
            ResourceContents::blob(blob, uri).with_mime_type("application/octet-stream")
        }
    }
}

/// The manual's list of the asker's saved skills, bounded.
fn skills_section(text: &mut String, enabled: bool, saved: &[skills::SkillInfo]) {
    const LISTED: usize = 100;
    text.push_str(
        "
## Saved skills

",
    );
    if !enabled {
        text.push_str(
            "Skills are off (MCP_BRIDGE_SKILLS_DIR=off).
",
        );
        return;
    }
    if saved.is_empty() {
        text.push_str(
            "None yet: `runtime.save_skill(name, code, description)` saves one.
",
        );
        return;
    }
    for skill in saved.iter().take(LISTED) {
        text.push_str(&format!(
            "- `skills.{}`: {}\n",
            skill.name, skill.description
        ));
    }
    if saved.len() > LISTED {
        text.push_str(&format!(
            "- … and {} more (`runtime.list_skills()`)\n",
            saved.len() - LISTED
        ));
    }
}

/// The tool description: what it does, and the configured server names as
/// far as a fixed budget allows (the resource has them all).
fn tool_description(servers: &[String], budget: usize) -> String {
    let mut text = String::from(
        "Run Python 3 in an isolated sandbox (read-only system; /tmp and /workspace \
         writable; memory, process, time and network limits). Each call starts clean \
         unless calls share a `session`. \
         Top-level await works. Returns stdout, stderr, a status; plots and display() \
         as images; files left in /workspace/out as resources.",
    );
    if servers.is_empty() {
        return text;
    }
    text.push_str(" MCP servers for `servers` (API: ");
    text.push_str(CAPABILITIES_URI);
    text.push_str("): ");
    let mut used = 0;
    for (i, name) in servers.iter().enumerate() {
        if used + name.len() > budget {
            text.push_str(&format!("… and {} more", servers.len() - i));
            break;
        }
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(name);
        used += name.len() + 2;
    }
    text.push('.');
    text
}

/// The arguments' schema, written out compactly (what `RunPythonArgs`
/// accepts; the generated one costs twice the bytes of `tools/list`). Host
/// files and saves appear only where the operator enabled them (the manual
/// resource tells the rest).
fn input_schema(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    let mut schema = object(json!({
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Python 3 source, run as a script"},
            "servers": {"type": "array", "items": {"type": "string"}, "description": "configured MCP servers the code may call"},
            "timeout": {"type": "number", "description": "seconds (default MCP_BRIDGE_TIMEOUT)"},
            "session": {"type": "string", "description": "calls with the same name share state"},
            "end_session": {"type": "boolean", "description": "end the session after this call (code may be empty)"},
            "packages": {"type": "array", "items": {"type": "string"}, "description": "wheels to install first"},
            "files": {
                "type": "object",
                "description": "written under /workspace first: relative path -> text, or {\"base64\": ...}",
                "additionalProperties": {"anyOf": [
                    {"type": "string"},
                    {"type": "object", "properties": {"base64": {"type": "string"}}, "required": ["base64"]}
                ]}
            }
        },
        "required": ["code"]
    }));
    let properties = schema["properties"]
        .as_object_mut()
        .expect("the schema has properties");
    if config.host_read != HostRead::Off {
        // One object variant for both (the manual tells their use).
        properties["files"]["description"] =
            "written under /workspace first: path -> text, {\"base64\": ...} or {\"host\": path}"
                .into();
        properties["files"]["additionalProperties"]["anyOf"][1] = json!({"type": "object"});
    }
    if config.host_write.is_some() {
        properties.insert(
            "save".into(),
            json!({"type": "object", "description": "out/x -> host path"}),
        );
        properties.insert("overwrite".into(), json!({"type": "boolean"}));
    }
    schema
}

fn object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// The report's schema, written out compactly (the generated one, with every
/// doc comment, would cost more context than the rest of `tools/list`);
/// `saved` only where saves are enabled.
fn output_schema(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    let statuses: Vec<&str> = RunStatus::ALL
        .into_iter()
        .filter(|status| status.is_reported())
        .map(RunStatus::as_str)
        .collect();
    let schema = json!({
        "type": "object",
        "properties": {
            "status": {"enum": statuses},
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "exitCode": {"type": "integer"},
            "durationMs": {"type": "number"},
            "stdoutTruncated": {"type": "boolean"},
            "stderrTruncated": {"type": "boolean"},
            "error": {"type": "string"},
            "images": {"type": "array"},
            "files": {"type": "array"},
            "notes": {"type": "array"},
            "session": {"type": "object"},
            "egress": {"type": "array"},
            "packages": {"type": "object"}
        },
        "required": [
            "status", "stdout", "stderr", "durationMs", "stdoutTruncated", "stderrTruncated"
        ]
    });
    let mut schema = object(schema);
    if config.host_write.is_some() {
        schema["properties"]["saved"] = json!({"type": "array"});
    }
    schema
}

/// The resource text: the API manual, then every configured server.
fn capabilities_manual<'a>(servers: impl Iterator<Item = &'a ServerDefinition>) -> String {
    let mut text = String::from(MANUAL);
    text.push_str("\n## Configured servers\n\n");
    let mut any = false;
    for server in servers {
        any = true;
        let description = server.description.as_deref().unwrap_or("(no description)");
        // Where it came from: its command runs on the host.
        text.push_str(&format!(
            "- `{}` (`mcp_{}`): {description} (from `{}`)\n",
            server.name,
            server.alias,
            server.source.display()
        ));
    }
    if !any {
        text.push_str(
            "None. Add them to a file the server reads (see README.md, \"MCP servers\").\n",
        );
    }
    text
}

/// A kept file as `resources/list` shows it.
fn artifact_resource(artifact: &artifacts::Artifact) -> Resource {
    Resource::new(&artifact.uri, format!("out/{}", artifact.path))
        .with_mime_type(artifact.mime_type)
        .with_size(artifact.bytes.len() as u64)
        .with_description("a file a run_python call left under /workspace/out")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proxy::Proxy;
    use crate::proxy::discovery::identifier;

    /// Servers named like real ones (then `extra-server-NN`), each with a
    /// short description, as a user with many configured would have them.
    fn server_with(count: usize) -> CodeExecServer {
        server_configured(count, Config::default())
    }

    fn server_configured(count: usize, config: Config) -> CodeExecServer {
        const REAL: [&str; 16] = [
            "github",
            "google-drive",
            "slack",
            "postgres",
            "filesystem",
            "brave-search",
            "puppeteer",
            "memory",
            "sentry",
            "linear",
            "notion",
            "atlassian",
            "google-maps",
            "sqlite",
            "everything",
            "sequential-thinking",
        ];
        let servers = (0..count)
            .map(|i| {
                let name = REAL
                    .get(i)
                    .map_or_else(|| format!("extra-server-{i:02}"), |name| (*name).into());
                ServerDefinition {
                    alias: identifier(&name),
                    name,
                    command: "npx".into(),
                    args: vec!["-y".into(), "@example/server".into()],
                    env: Default::default(),
                    cwd: None,
                    description: Some("Search and edit the team's issues".into()),
                    source: "test".into(),
                    allow_tools: None,
                    deny_tools: Vec::new(),
                }
            })
            .collect();
        let service = Service::with_proxy(config, Arc::new(Proxy::new(servers)));
        CodeExecServer::new(Arc::new(service), OutputMode::Compact)
    }

    fn tools_list_bytes(server: &CodeExecServer) -> usize {
        let tools = server.tool_router.list_all();
        serde_json::to_string(&json!({ "tools": tools }))
            .unwrap()
            .len()
    }

    /// `tools/list` stays under 2 KiB with 20 servers, with room left for
    /// the parameters to come: the server names have a budget of their own
    /// (the manual resource lists them all).
    #[test]
    fn tools_list_stays_under_2_kb_with_0_or_20_servers() {
        let none = tools_list_bytes(&server_with(0));
        let twenty = tools_list_bytes(&server_with(20));
        eprintln!("tools/list result: {none} bytes with 0 servers, {twenty} with 20");
        assert!(
            twenty <= TOOLS_LIST_BYTES,
            "{twenty} bytes with 20 servers, over {TOOLS_LIST_BYTES}"
        );
        assert!(
            twenty - none <= SERVER_NAMES_BUDGET + 90,
            "the names cost {} bytes",
            twenty - none
        );
        let description =
            tool_description(server_with(20).service.proxy().names(), SERVER_NAMES_BUDGET);
        assert!(
            description.contains("github, google-drive") && description.contains("more"),
            "{description}"
        );
        assert!(
            !description.contains("extra-server-17"),
            "past the budget: {description}"
        );
    }

    /// Host files and saves, enabled, add their arguments (their use is in
    /// the manual) and stay within the bound with 20 servers; disabled, they
    /// cost nothing.
    #[test]
    fn host_files_fit_in_tools_list() {
        let config = Config {
            host_read: HostRead::ClientRoots,
            host_write: Some("/data".into()),
            ..Config::default()
        };
        let off = tools_list_bytes(&server_with(20));
        let on = tools_list_bytes(&server_configured(20, config));
        eprintln!("tools/list with 20 servers: {off} bytes, {on} with host files and saves");
        assert!(on <= TOOLS_LIST_BYTES, "{on} bytes with host files");
        let server = server_configured(0, Config::default());
        let tools = server.tool_router.list_all();
        let text = serde_json::to_string(&tools).unwrap();
        assert!(!text.contains("host") && !text.contains("saved"), "{text}");
    }

    #[test]
    fn output_schema_matches_the_report() {
        let report = crate::report::RunReport {
            exit_code: Some(1),
            error: Some("x".into()),
            images: vec![crate::report::Image::png(0, bytes::Bytes::new(), 1, 1)],
            files: vec![crate::report::OutputFile::new(
                "a.txt".into(),
                bytes::Bytes::new(),
            )],
            notes: vec!["n".into()],
            session: Some(crate::report::SessionReport {
                name: "s".into(),
                found: crate::report::Found::New,
                ended: None,
            }),
            egress: vec![crate::egress::Connection {
                host: "example.org".into(),
                port: 443,
                outcome: crate::egress::Outcome::Allowed,
                reason: None,
                bytes_sent: 1,
                bytes_received: 2,
            }],
            packages: Some(crate::sandbox::protocol::Installed::default()),
            saved: vec![crate::hostfiles::Saved {
                from: "out/a.txt".into(),
                to: "/data/a.txt".into(),
                bytes: 0,
            }],
            ..crate::report::RunReport::rejected(RunStatus::Error, "x")
        };
        let value = serde_json::to_value(&report).unwrap();
        let config = Config {
            host_write: Some("/data".into()),
            ..Config::default()
        };
        let schema = output_schema(&config);
        let properties = schema["properties"].as_object().unwrap();
        let mut fields: Vec<_> = value.as_object().unwrap().keys().collect();
        let mut declared: Vec<_> = properties.keys().collect();
        fields.sort();
        declared.sort();
        assert_eq!(fields, declared);
        for required in schema["required"].as_array().unwrap() {
            assert!(value.get(required.as_str().unwrap()).is_some());
        }
    }

    #[test]
    fn the_manual_lists_every_server() {
        let server = server_with(3);
        let manual = capabilities_manual(server.service.proxy().definitions());
        assert!(manual.contains("mcp.runtime") && manual.contains("search_tool_docs"));
        assert!(
            manual.contains("- `slack` (`mcp_slack`): Search and edit the team's issues"),
            "{manual}"
        );
    }
}

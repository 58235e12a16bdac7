//! Proxying: the user's MCP servers, warm on the host, callable from the
//! sandboxed Python.
//!
//! [`discovery`] finds the definitions, [`clients`] keeps one client per
//! server. This module turns them into what a run needs: the metadata the
//! sandbox builds its `mcp` modules from, and the answer to each tool call
//! the sandbox makes. It never touches containers. What the tool policy
//! ([`crate::policy`]) denies is left out of the metadata and refused when
//! called anyway; each run's calls are counted against its [`CallLimits`].

pub mod budget;
pub mod clients;
pub mod discovery;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use rmcp::model::{CallToolResult, ContentBlock};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::approval::{Approver, Question, Reply};
use crate::metrics;
use crate::policy::{Action, ToolPolicy};
use crate::report::{ToolCall, ToolCallList};
use crate::sandbox::protocol::encode_answer;
use crate::sandbox::{HostFrame, ToolCalls};
use budget::{Budget, Hold};
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
    /// The operator's rules (`MCP_BRIDGE_TOOL_POLICY`), fixed at start.
    policy: ToolPolicy,
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
            policy: ToolPolicy::default(),
        }
    }

    /// The same servers under the operator's rules.
    pub fn with_policy(mut self, policy: ToolPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> &ToolPolicy {
        &self.policy
    }

    /// Each configured server and how its client is (`not started`,
    /// `starting`, `running`, `failed: …`).
    pub fn states(&self) -> Vec<(String, String)> {
        self.hub
            .names()
            .iter()
            .filter_map(|name| Some((name.clone(), self.hub.get(name).ok()?.describe())))
            .collect()
    }

    pub fn names(&self) -> &[String] {
        self.hub.names()
    }

    pub fn definitions(&self) -> impl Iterator<Item = &ServerDefinition> {
        self.hub.definitions()
    }

    /// The tools of `servers` for one run, within `limits`; starts those
    /// servers (once, then they stay warm) to read their tools. `None` when
    /// nothing is configured.
    pub async fn tools_for(
        self: &Arc<Self>,
        servers: &[String],
        limits: CallLimits,
        approver: Option<Arc<dyn Approver>>,
        principal: &str,
    ) -> Result<Option<RunTools>, ProxyError> {
        if self.hub.names().is_empty() {
            return Ok(None);
        }
        let mut callable = Vec::with_capacity(servers.len());
        let mut tool_index = HashMap::new();
        for name in servers {
            let client = self.hub.get(name)?;
            let tools = client.tools().await?;
            let rules = client.definition.rules();
            // A denied tool does not exist for the run: no function, no docs.
            let tools: Vec<_> = tools
                .iter()
                .filter(|t| self.policy.decide(rules, &t.name, principal).action != Action::Deny)
                .collect();
            for tool in &tools {
                let next = tool_index.len();
                tool_index.insert((name.clone(), tool.name.to_string()), next);
            }
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
            budget: Budget::new(limits.bytes_in_flight),
            waiting: Budget::new(limits.bytes_in_flight / 4),
            parse_turn: tokio::sync::Mutex::new(()),
            usage: Mutex::new(Usage {
                per_tool: vec![0; tool_index.len()],
                ..Usage::default()
            }),
            tool_index,
            log: Arc::new(Mutex::new(ToolCallList::default())),
            limits,
            approver,
            principal: principal.to_owned(),
        }))
    }

    /// Stops every server started so far.
    pub async fn shutdown(&self) {
        self.hub.shutdown().await;
    }
}

/// What one run's tool calls may hold on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// The largest call (its JSON, arguments included).
    pub max_call_bytes: usize,
    /// The bytes of calls and answers in flight at once (a call's request
    /// until the server answered it, then its answer until the sandbox has
    /// it).
    pub bytes_in_flight: usize,
    /// Calls sent to servers in one run, all tools together
    /// (`MCP_BRIDGE_TOOL_CALLS_PER_RUN`).
    pub calls_per_run: u32,
    /// Calls sent to one tool in one run (`MCP_BRIDGE_TOOL_CALLS_PER_TOOL`).
    pub calls_per_tool: u32,
    /// The arguments' bytes of one run's calls, all together
    /// (`MCP_BRIDGE_TOOL_ARGUMENT_BYTES_PER_RUN`).
    pub argument_bytes_per_run: u64,
    /// The results' bytes one run's calls receive, all together
    /// (`MCP_BRIDGE_TOOL_RESULT_BYTES_PER_RUN`).
    pub result_bytes_per_run: u64,
}

/// What one run's calls used of its [`CallLimits`] budgets: counters only,
/// so a refused call adds nothing.
#[derive(Debug, Default)]
struct Usage {
    calls: u32,
    /// Calls per tool of the run's metadata, by [`RunTools::tool_index`].
    per_tool: Vec<u32>,
    argument_bytes: u64,
    result_bytes: u64,
}

/// The tools one run may call: the metadata its sandbox builds the `mcp`
/// package from, and the answers to its calls, to the servers it asked for
/// only, within the run's [`CallLimits`].
pub struct RunTools {
    metadata: Value,
    proxy: Arc<Proxy>,
    allowed: Vec<String>,
    /// Bounds the calls one run has in flight: user code cannot make the
    /// host (or the user's servers) hold an unbounded number of calls.
    in_flight: Semaphore,
    /// What the run's calls and answers hold.
    budget: Budget,
    /// What large calls waiting for their turn to be parsed hold (a
    /// quarter of the budget's size, apart from it, so that waiting calls
    /// never starve the one being parsed).
    waiting: Budget,
    /// Large calls are parsed one at a time (fair: in arrival order).
    parse_turn: tokio::sync::Mutex<()>,
    /// The run's tools (those it may see), each with its counter in `usage`.
    tool_index: HashMap<(String, String), usize>,
    /// Only held to count, never across an `.await`.
    usage: Mutex<Usage>,
    /// The calls for the result (bounded: [`ToolCallList::LISTED`]).
    log: Arc<Mutex<ToolCallList>>,
    limits: CallLimits,
    /// Who answers `ask` rules; `None`: their calls are refused.
    approver: Option<Arc<dyn Approver>>,
    /// Whom the run is for: rules may be scoped to principals.
    principal: String,
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
    /// The tool policy refused it (a `deny` rule, or an `ask` rule the
    /// client could not be asked about).
    Denied,
    /// An `ask` rule's question was declined, cancelled or not answered in time.
    Declined,
    /// A budget of the run's [`CallLimits`] refused it.
    OverBudget,
}

impl CallOutcome {
    pub const ALL: [Self; 6] = [
        Self::Ok,
        Self::ToolError,
        Self::Failed,
        Self::Denied,
        Self::Declined,
        Self::OverBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ToolError => "tool_error",
            Self::Failed => "failed",
            Self::Denied => "denied",
            Self::Declined => "declined",
            Self::OverBudget => "over_budget",
        }
    }
}

/// Tool calls one run may have in flight at once.
pub const MAX_CALLS_IN_FLIGHT: usize = 64;
/// A call or an answer larger than this is parsed or encoded on a blocking
/// thread, not on the runtime's workers.
const PARSE_INLINE_BYTES: usize = 64 * 1024;
/// A call as the sandbox sends it: the envelope is read first (no
/// allocation for the arguments), so a call is refused on its size, server
/// or the budget before its arguments are parsed.
#[derive(Deserialize)]
struct Envelope<'a> {
    id: Value,
    server: String,
    tool: String,
    #[serde(default, borrow)]
    arguments: Option<&'a RawValue>,
}

/// An answer as the agent reads it: `{id, ok, result | error}`.
#[derive(Serialize)]
struct Answer<'a> {
    id: &'a Value,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a CallToolResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// A successful answer to call `id`.
fn answer_of<'a>(id: &'a Value, result: &'a CallToolResult) -> Answer<'a> {
    Answer {
        id,
        ok: true,
        result: Some(result),
        error: None,
    }
}

/// An error answer to call `id`.
fn refusal(id: &Value, error: &str) -> HostFrame {
    let answer = Answer {
        id,
        ok: false,
        result: None,
        error: Some(error),
    };
    HostFrame::new(encode_answer(&answer, 64 + error.len()), None)
}

/// The length of `value`'s JSON, without writing it anywhere (the front
/// end bounds its answers with it too).
pub fn json_size(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("an answer always serializes");
    count.0
}

/// The bytes of a result's content, as an estimate of its JSON's size.
fn content_bytes(result: &CallToolResult) -> usize {
    result
        .content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(text) => text.text.len(),
            ContentBlock::Image(image) => image.data.len(),
            ContentBlock::Audio(audio) => audio.data.len(),
            _ => 256,
        })
        .sum()
}

/// The id a call starts with (the sandbox's `mcp` package writes
/// `{"id":N,` first), read without parsing the rest; null otherwise.
pub fn leading_id(request: &[u8]) -> Value {
    request
        .strip_prefix(br#"{"id":"#)
        .and_then(|rest| {
            serde_json::Deserializer::from_slice(&rest[..rest.len().min(64)])
                .into_iter::<Value>()
                .next()?
                .ok()
        })
        .unwrap_or(Value::Null)
}

/// A call's arguments, parsed, and the budget they hold while the call lasts.
struct Arguments {
    map: Option<serde_json::Map<String, Value>>,
    _hold: Hold,
}

impl RunTools {
    /// Parses a call's arguments (`raw`, a slice of the call's frame),
    /// charging the run's budget for what they parse into as it is built.
    /// Large ones are parsed on a blocking thread, one at a time; while they
    /// wait for their turn their raw bytes are charged to `waiting`.
    async fn arguments(&self, raw: Option<Bytes>) -> Result<Arguments, String> {
        let Some(raw) = raw else {
            return Ok(Arguments {
                map: None,
                _hold: Hold::default(),
            });
        };
        let budget = self.budget.clone();
        let parsed = if raw.len() <= PARSE_INLINE_BYTES {
            budget.parse_object(&raw)
        } else {
            let waiting = self.waiting.take(raw.len()).ok_or_else(|| {
                format!(
                    "large tool calls waiting to be sent hold more than {} bytes with this one \
                     (a quarter of MCP_BRIDGE_TOOL_BYTES_IN_FLIGHT); await some before \
                     starting more",
                    self.waiting.bytes()
                )
            })?;
            let _turn = self.parse_turn.lock().await;
            let parsed = tokio::task::spawn_blocking(move || budget.parse_object(&raw))
                .await
                .map_err(|error| format!("could not parse the call: {error}"))?;
            drop(waiting);
            parsed
        };
        match parsed {
            Ok((map, hold)) => Ok(Arguments { map, _hold: hold }),
            Err(Some(malformed)) => Err(malformed),
            Err(None) => Err(self.over_budget("the call's arguments, parsed,")),
        }
    }

    /// The answer frame for a server's result, holding its bytes of the
    /// run's budget from the moment the result is here, or a refusal when
    /// those bytes are not free (the result is then dropped at once, never
    /// encoded). Large results are measured and encoded on blocking threads.
    async fn answer(&self, id: &Value, result: CallToolResult) -> HostFrame {
        let large = content_bytes(&result) > PARSE_INLINE_BYTES;
        let answer_size = move |id: Value, result: CallToolResult| {
            let size = json_size(&answer_of(&id, &result));
            (id, result, size)
        };
        let measured = if large {
            tokio::task::spawn_blocking({
                let id = id.clone();
                move || answer_size(id, result)
            })
            .await
        } else {
            Ok(answer_size(id.clone(), result))
        };
        let Ok((owned, result, size)) = measured else {
            return refusal(id, "could not measure the answer");
        };
        if let Err(error) = self.charge_result(size) {
            drop(result);
            return refusal(id, &error);
        }
        let Some(hold) = self.budget.take(size) else {
            drop(result);
            return refusal(id, &self.over_budget(&format!("the result ({size} bytes)")));
        };
        let encode = move || encode_answer(&answer_of(&owned, &result), size);
        let frame = if large {
            match tokio::task::spawn_blocking(encode).await {
                Ok(frame) => frame,
                Err(error) => return refusal(id, &format!("could not encode the answer: {error}")),
            }
        } else {
            encode()
        };
        HostFrame::new(frame, hold.into_permit())
    }

    /// Why `what` cannot be taken in: the run's calls hold their budget.
    fn over_budget(&self, what: &str) -> String {
        format!(
            "{what} would take this run's tool calls and answers in flight past \
             MCP_BRIDGE_TOOL_BYTES_IN_FLIGHT ({} bytes); await some calls before starting more, \
             or pass and ask for less per call",
            self.budget.bytes()
        )
    }

    /// What the tool policy says of a call: `Err` names the rule that
    /// refuses it; `Ok(Some(rule))`: the human must be asked first.
    fn permitted(&self, server: &str, tool: &str) -> Result<Option<String>, String> {
        let Ok(client) = self.proxy.hub.get(server) else {
            return Ok(None); // The call itself says the server is unknown.
        };
        let decision = self
            .proxy
            .policy
            .decide(client.definition.rules(), tool, &self.principal);
        match decision.action {
            Action::Allow => Ok(None),
            Action::Deny => Err(format!(
                "tool {tool:?} of server {server:?} is denied by the tool policy ({})",
                decision.rule
            )),
            Action::Ask => Ok(Some(decision.rule)),
        }
    }

    /// Asks the human about a call an `ask` rule matched; `Err` says how
    /// that ended, naming the rule.
    async fn approved(
        &self,
        server: &str,
        tool: &str,
        rule: &str,
        arguments: &[u8],
    ) -> Result<(), (CallOutcome, String)> {
        let needs = format!("tool {tool:?} of server {server:?} needs a human's approval ({rule})");
        let Some(approver) = &self.approver else {
            return Err((
                CallOutcome::Denied,
                format!(
                    "{needs}, and this MCP client cannot be asked (it did not declare \
                     elicitation): the call is refused"
                ),
            ));
        };
        let question = Question {
            server,
            tool,
            rule,
            arguments,
        };
        match approver.ask(question).await {
            Reply::Accepted => Ok(()),
            Reply::Declined(why) => Err((
                CallOutcome::Declined,
                format!("{needs}: {why}; the call is refused"),
            )),
            Reply::Unavailable(why) => Err((
                CallOutcome::Denied,
                format!("{needs}, and asking the MCP client failed ({why}): the call is refused"),
            )),
        }
    }

    /// Counts a call against the run's budgets of calls and argument bytes,
    /// or names the budget it would go past (then nothing is counted).
    fn charge_call(&self, server: &str, tool: &str, argument_bytes: usize) -> Result<(), String> {
        let limits = &self.limits;
        let mut usage = self.usage.lock().expect("usage is only counted");
        if usage.calls >= limits.calls_per_run {
            return Err(format!(
                "this run made {} tool calls, its budget (MCP_BRIDGE_TOOL_CALLS_PER_RUN): \
                 the call is refused",
                limits.calls_per_run
            ));
        }
        let index = self
            .tool_index
            .get(&(server.to_owned(), tool.to_owned()))
            .copied();
        if let Some(index) = index
            && usage.per_tool[index] >= limits.calls_per_tool
        {
            return Err(format!(
                "this run called {server}.{tool} {} times, the budget per tool \
                 (MCP_BRIDGE_TOOL_CALLS_PER_TOOL): the call is refused",
                limits.calls_per_tool
            ));
        }
        let bytes = u64::try_from(argument_bytes).unwrap_or(u64::MAX);
        if usage.argument_bytes.saturating_add(bytes) > limits.argument_bytes_per_run {
            return Err(format!(
                "this call's {bytes} bytes of arguments would take the run's past {} bytes, \
                 its budget (MCP_BRIDGE_TOOL_ARGUMENT_BYTES_PER_RUN): the call is refused",
                limits.argument_bytes_per_run
            ));
        }
        usage.calls += 1;
        if let Some(index) = index {
            usage.per_tool[index] += 1;
        }
        usage.argument_bytes += bytes;
        Ok(())
    }

    /// Counts a result against the run's budget of result bytes, or names
    /// the budget it would go past (the result is then not given).
    fn charge_result(&self, bytes: usize) -> Result<(), String> {
        let budget = self.limits.result_bytes_per_run;
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let mut usage = self.usage.lock().expect("usage is only counted");
        if usage.result_bytes.saturating_add(bytes) > budget {
            return Err(format!(
                "the result's {bytes} bytes would take the run's results past {budget} bytes, \
                 their budget (MCP_BRIDGE_TOOL_RESULT_BYTES_PER_RUN): the result is refused"
            ));
        }
        usage.result_bytes += bytes;
        Ok(())
    }

    /// The metric's tool label: the tool's name when the run's view lists
    /// it (so the label set is bounded by what the servers list), else
    /// `(other)` (a denied tool, or a name the code made up).
    fn tool_label<'a>(&self, server: &str, tool: &'a str) -> &'a str {
        let listed = self
            .tool_index
            .contains_key(&(server.to_owned(), tool.to_owned()));
        if listed { tool } else { "(other)" }
    }

    /// Lists a call for the run's result.
    fn record(
        &self,
        server: &str,
        tool: &str,
        outcome: CallOutcome,
        started: Instant,
        bytes: usize,
        arguments: &[u8],
    ) {
        let outcome = match outcome {
            CallOutcome::Ok => "ok",
            CallOutcome::ToolError | CallOutcome::Failed => "error",
            CallOutcome::Denied => "denied",
            CallOutcome::Declined => "declined",
            CallOutcome::OverBudget => "over_budget",
        };
        let mut log = self.log.lock().expect("the log is only pushed to");
        log.push_with(|| ToolCall::new(server, tool, outcome, started, bytes, arguments));
    }

    /// The list the run's calls go into, as they are made: for the record
    /// of a call whose client goes away before its result.
    pub fn call_log(&self) -> Arc<Mutex<ToolCallList>> {
        self.log.clone()
    }

    /// Checks a call on its envelope alone (the server it names);
    /// returns the arguments' bytes, a slice of `request`.
    fn admit(&self, request: &Bytes, envelope: &Envelope<'_>) -> Result<Option<Bytes>, String> {
        if !self.allowed.contains(&envelope.server) {
            return Err(format!(
                "server {:?} is not available in this run; pass it in run_python(servers=[...])",
                envelope.server
            ));
        }
        Ok(envelope.arguments.map(|raw| {
            // The raw value is a slice of `request`: the same bytes, shared.
            let start = raw.get().as_ptr() as usize - request.as_ptr() as usize;
            request.slice(start..start + raw.get().len())
        }))
    }
}

impl ToolCalls for RunTools {
    fn metadata(&self) -> &Value {
        &self.metadata
    }

    fn call(&self, request: Bytes) -> BoxFuture<'_, HostFrame> {
        Box::pin(async move {
            if request.len() > self.limits.max_call_bytes {
                // Refused on its length: not parsed, only its leading id read.
                let error = format!(
                    "the call is {} bytes; a call may be at most {} bytes, arguments included \
                     (MCP_BRIDGE_MAX_TOOL_CALL_BYTES)",
                    request.len(),
                    self.limits.max_call_bytes
                );
                return refusal(&leading_id(&request), &error);
            }
            let envelope: Envelope<'_> = match serde_json::from_slice(&request) {
                Ok(envelope) => envelope,
                Err(error) => return refusal(&Value::Null, &format!("malformed call: {error}")),
            };
            let raw = match self.admit(&request, &envelope) {
                Ok(raw) => raw,
                Err(error) => return refusal(&envelope.id, &error),
            };
            let Envelope {
                id, server, tool, ..
            } = envelope;
            // From here the call is its slice of arguments, then their parse.
            drop(request);
            // A denied call costs no budget; an asked one does (the budgets
            // also bound how often a run can ask), before it is asked.
            let bytes = raw.as_ref().map_or(&[][..], |raw| &raw[..]);
            let checked = match self.permitted(&server, &tool) {
                Err(error) => Err((CallOutcome::Denied, error)),
                Ok(ask) => match self.charge_call(&server, &tool, bytes.len()) {
                    Err(error) => Err((CallOutcome::OverBudget, error)),
                    Ok(()) => match ask {
                        Some(rule) => self.approved(&server, &tool, &rule, bytes).await,
                        None => Ok(()),
                    },
                },
            };
            if let Err((outcome, error)) = checked {
                metrics::observe_proxy_refusal(
                    &server,
                    self.tool_label(&server, &tool),
                    outcome.as_str(),
                );
                self.record(&server, &tool, outcome, Instant::now(), 0, bytes);
                return refusal(&id, &error);
            }
            let argument_bytes = raw.as_ref().map_or(0, Bytes::len);
            // For the audit log: what the arguments began with.
            // A copy: a slice would hold the whole request while the call runs.
            let head = raw.as_ref().map_or_else(Vec::new, |raw| {
                raw[..raw.len().min(ToolCall::ARGUMENT_BYTES)].to_vec()
            });
            let Ok(_permit) = self.in_flight.try_acquire() else {
                let error = format!(
                    "more than {MAX_CALLS_IN_FLIGHT} MCP calls in flight in one run; \
                     await some before starting more"
                );
                return refusal(&id, &error);
            };
            let arguments = match self.arguments(raw).await {
                Ok(arguments) => arguments,
                Err(error) => return refusal(&id, &error),
            };
            let started = Instant::now();
            let Arguments { map, _hold } = arguments;
            let outcome = match self.proxy.hub.get(&server) {
                Ok(client) => client.call(&tool, map).await,
                Err(error) => Err(error),
            };
            // The arguments were the server's: their bytes are free.
            drop(_hold);
            let observed = match &outcome {
                Ok(result) if result.is_error == Some(true) => CallOutcome::ToolError,
                Ok(_) => CallOutcome::Ok,
                Err(_) => CallOutcome::Failed,
            };
            metrics::observe_proxy_call(
                &server,
                self.tool_label(&server, &tool),
                observed.as_str(),
                started.elapsed(),
            );
            let result_bytes = outcome.as_ref().map_or(0, content_bytes);
            let bytes = argument_bytes + result_bytes;
            self.record(&server, &tool, observed, started, bytes, &head);
            match outcome {
                Ok(result) => self.answer(&id, result).await,
                Err(error) => refusal(&id, &error.to_string()),
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

    #[test]
    fn an_oversized_call_is_answered_by_its_leading_id() {
        assert_eq!(
            leading_id(br#"{"id":17,"server":"s","tool":"t"}"#),
            json!(17)
        );
        assert_eq!(leading_id(br#"{"id":"a-1","server":"#), json!("a-1"));
        assert_eq!(leading_id(br#"{"server":"s","id":3}"#), Value::Null);
        assert_eq!(leading_id(b"not json"), Value::Null);
    }
}

//! One `run_python` call from request to report: the whole pipeline, in one
//! place.
//!
//! Owns request validation (every input limit, with a message a model can act
//! on), the tools the run may call, the lease of a sandbox (or the session's
//! turn) and its run, the classification of how the run ended (status, error
//! line, the pool [`Verdict`] for its sandbox, and whether a session ends
//! with it), the [`RunReport`], and the observation of every call exactly
//! once (a span and metrics, cancelled calls included). Shared by the MCP
//! front end and the `run` subcommand so both behave alike. It does not
//! render text (that is [`crate::report`]), start anything (that is
//! [`crate::service`]), keep sessions (that is [`crate::sessions`]) nor
//! speak to the engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tracing::Instrument;

use crate::approval::Approver;
use crate::artifacts::{self, ArtifactStore};
use crate::audit::{CallRecord, CallStart};
use crate::config::{Config, HostRead};
use crate::hostfiles::{self, HostFiles, HostRequest, ReadBounds, SaveRequest};
use crate::images;
use crate::metrics;
use crate::pool::{Lease, Pool, RecycleReason, Verdict};
use crate::principals::{Principal, QuotaError};
use crate::proxy::{CallLimits, RunTools};
use crate::report::{
    Found, Image, OutputFile, RunReport, RunStatus, SessionReport, ToolCallList, decode_output,
};
use crate::sandbox::protocol::{
    FileBounds, FileContent, ImageBounds, InputFile, RunDone, RunInput,
};
use crate::sandbox::{CapturedOutput, RunServices, SandboxFailure, ToolCalls};
use crate::service::Service;
use crate::sessions::{EndReason, Ended, Ending, SessionName, Sessions};
use crate::skills::SkillCalls;

/// How many files a call may bring.
pub const MAX_INPUT_FILES: usize = 256;
/// A returned text file up to this size also comes inline in the result.
const INLINE_TEXT_BYTES: usize = 16 * 1024;

/// A `run_python` call's arguments as the client sent them.
#[derive(Debug, Clone, Default)]
pub struct CallRequest {
    pub code: String,
    /// MCP servers the code may call (the proxy resolves them).
    pub servers: Vec<String>,
    /// Seconds; the configured default when absent.
    pub timeout_secs: Option<f64>,
    /// Written under `/workspace` before the code starts.
    pub files: Vec<InputFile>,
    /// Run in this session (its state kept between calls), not on a clean sandbox.
    pub session: Option<String>,
    /// End the session after this call (with no code: just end it).
    pub end_session: bool,
    /// Requirements (`tabulate==0.9.0`) installed before the code starts.
    pub packages: Vec<String>,
    /// Whom the call is for: its sessions and files are that principal's.
    pub principal: Principal,
    /// `files` entries read from the host (`{"host": path}`), beneath the
    /// read roots; written under `/workspace` before the code starts.
    pub host_files: Vec<HostRequest>,
    /// Files the run leaves under `/workspace/out`, saved beneath the write root.
    pub save: Vec<SaveRequest>,
    /// A save may replace an existing file.
    pub overwrite: bool,
    /// The client's MCP roots when they are the read roots
    /// (`MCP_BRIDGE_HOST_READ=roots`): as the front end got them, or why
    /// it could not; `None` when not asked.
    pub client_roots: Option<Result<Vec<PathBuf>, String>>,
    /// Who answers the tool policy's `ask` rules for this call: the MCP
    /// client, if it can be asked (elicitation); `None`: such calls are refused.
    pub approver: Option<Arc<dyn Approver>>,
    /// The front end found its principal at `MCP_BRIDGE_MAX_CALLS_PER_CLIENT`
    /// calls in flight (over HTTP, where it holds each call's seat until the
    /// answer is sent): the call is refused with this, and observed like any
    /// other (the console, the audit log).
    pub over_quota: Option<QuotaError>,
}

/// The longest session name.
pub const MAX_SESSION_NAME: usize = 64;

/// The limits a request is checked against, from [`Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_code_bytes: usize,
    pub max_output_bytes: u64,
    pub memory_bytes: u64,
    pub max_input_files_bytes: u64,
    pub images: ImageBounds,
    pub files_out: FileBounds,
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Self {
        Self {
            default_timeout: config.default_timeout,
            max_timeout: config.max_timeout,
            max_code_bytes: config.max_code_bytes,
            max_output_bytes: config.max_output_bytes,
            memory_bytes: config.memory_bytes,
            max_input_files_bytes: config.max_input_files_bytes,
            images: ImageBounds {
                max_pixels: config.max_image_pixels,
                max_bytes: config.max_image_bytes,
                max_images: config.max_images,
            },
            files_out: FileBounds {
                max_files: config.max_output_files,
                max_bytes: config.max_output_files_bytes,
            },
        }
    }
}

impl Limits {
    /// The run's timeout if the request is acceptable, else why not.
    pub fn validate(
        &self,
        request: &CallRequest,
        known_servers: &[String],
    ) -> Result<Duration, String> {
        validate_session(request)?;
        if request.code.trim().is_empty() && !request.end_session {
            return Err("code is empty: pass the Python source to run".into());
        }
        if request.code.len() > self.max_code_bytes {
            return Err(format!(
                "code is {} bytes; the limit is {} bytes (MCP_BRIDGE_MAX_CODE_BYTES)",
                request.code.len(),
                self.max_code_bytes
            ));
        }
        if request.files.len() + request.host_files.len() > MAX_INPUT_FILES {
            return Err(format!(
                "{} files; a call may bring at most {MAX_INPUT_FILES}",
                request.files.len() + request.host_files.len()
            ));
        }
        if let Some(unknown) = request.servers.iter().find(|s| !known_servers.contains(s)) {
            let known = if known_servers.is_empty() {
                "none are configured".to_owned()
            } else {
                format!("known servers: {}", known_servers.join(", "))
            };
            return Err(format!("unknown MCP server {unknown:?}; {known}"));
        }
        self.validate_files(&request.files)?;
        crate::packages::requirement::validate(&request.packages)?;
        let max = self.max_timeout.as_secs_f64();
        match request.timeout_secs {
            None => Ok(self.default_timeout),
            Some(secs) if secs.is_finite() && secs > 0.0 && secs <= max => {
                Ok(Duration::from_secs_f64(secs))
            }
            Some(secs) => Err(format!(
                "timeout must be more than 0 and at most {max} seconds (MCP_BRIDGE_MAX_TIMEOUT); \
                 got {secs}"
            )),
        }
    }
}

/// A session name is short and plain (`[A-Za-z0-9_-]{1,64}`: it is logged
/// and shown in errors); `end_session` needs one.
fn validate_session(request: &CallRequest) -> Result<(), String> {
    match &request.session {
        None if request.end_session => {
            Err("end_session needs the session to end: pass its name in `session`".into())
        }
        None => Ok(()),
        Some(name)
            if (1..=MAX_SESSION_NAME).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(())
        }
        Some(name) => Err(format!(
            "session name {name:?} must be 1 to {MAX_SESSION_NAME} letters, digits, '_' or '-'"
        )),
    }
}

impl Limits {
    /// A run of `code` (bringing `files`) within these limits.
    pub fn input<'a>(&self, code: &'a str, files: &'a [InputFile]) -> RunInput<'a> {
        RunInput {
            code,
            max_output_bytes: self.max_output_bytes,
            files,
            packages: &[],
            wheels: &[],
            display: self.images,
            files_out: self.files_out,
            session: false,
            host_files: &[],
            host_data: &[],
            resend: &[],
            skills: false,
        }
    }

    /// Each path plainly relative (it lands under `/workspace`), each
    /// base64 content decodable, and all of them within the byte bound.
    fn validate_files(&self, files: &[InputFile]) -> Result<(), String> {
        if files.len() > MAX_INPUT_FILES {
            return Err(format!(
                "{} files; a call may bring at most {MAX_INPUT_FILES}",
                files.len()
            ));
        }
        let mut total: u64 = 0;
        for file in files {
            let path = &file.path;
            // Part by part as written, not as `Path::components` reads it
            // (it drops `.` and empty parts: `a/./b` would pass as `a/b`,
            // and the file-or-folder check below compares the strings).
            let plain = !path.contains('\0')
                && path.len() <= 1024
                && path
                    .split('/')
                    .all(|part| !matches!(part, "" | "." | "..") && part.len() <= 255);
            if !plain {
                return Err(format!(
                    "file path {path:?} must be relative and stay inside /workspace \
                     (no absolute path, no '..', no '.' or empty part)"
                ));
            }
            total += match &file.content {
                FileContent::Text(text) => text.len() as u64,
                FileContent::Base64(data) => base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|error| format!("file {path:?}: its base64 does not decode: {error}"))?
                    .len() as u64,
            };
        }
        // "a" and "a/b" cannot both be files.
        let paths: std::collections::BTreeSet<&str> =
            files.iter().map(|f| f.path.as_str()).collect();
        if let Some(file) = paths.iter().find(|path| {
            paths
                .range(format!("{path}/").as_str()..)
                .next()
                .is_some_and(|next| next.starts_with(&format!("{path}/")))
        }) {
            return Err(format!(
                "file path {file:?} is also a folder of another file: a path is a file or a folder"
            ));
        }
        if total > self.max_input_files_bytes {
            return Err(format!(
                "the files are {total} bytes together; the limit is {} bytes \
                 (MCP_BRIDGE_MAX_INPUT_FILES_BYTES)",
                self.max_input_files_bytes
            ));
        }
        Ok(())
    }
}

/// Validates and runs one call. Never fails: a bad request, a service that
/// cannot start or a broken sandbox is a report like any other. Dropping the
/// future mid-run (client cancellation) destroys the sandbox, and is logged
/// and counted as `cancelled`. One span per call carries its id, servers,
/// status and duration.
pub async fn call(service: &Service, request: &CallRequest) -> RunReport {
    call_with_tail(service, request, None).await
}

/// Where a call keeps the last line of its output up to date while it runs
/// (for progress notifications to a client that asked for them).
pub type OutputTail = tokio::sync::watch::Sender<String>;

/// [`call`], keeping `tail` up to date with the last line of output.
pub async fn call_with_tail(
    service: &Service,
    request: &CallRequest,
    tail: Option<&OutputTail>,
) -> RunReport {
    let observer = CallObserver::new(service, request);
    if let Some(refused) = &request.over_quota {
        let report = RunReport::rejected(RunStatus::Error, refused.to_string());
        observer.finished(&report, false);
        return report;
    }
    let answer = unobserved(service, request, observer.id, tail, &observer.progress)
        .instrument(observer.span.clone())
        .await;
    observer.finished(&answer.report, answer.ran);
    answer.report
}

/// A call's report, and whether its code went to a sandbox (what the run
/// metrics count).
struct Answer {
    report: RunReport,
    ran: bool,
}

impl Answer {
    /// The report of a call that ran no code.
    fn nothing_ran(report: RunReport) -> Self {
        Self { report, ran: false }
    }

    fn refused(status: RunStatus, error: impl Into<String>) -> Self {
        Self::nothing_ran(RunReport::rejected(status, error))
    }
}

async fn unobserved(
    service: &Service,
    request: &CallRequest,
    call_id: u64,
    tail: Option<&OutputTail>,
    progress: &Progress,
) -> Answer {
    let limits = Limits::from(service.config());
    let timeout = match limits.validate(request, service.proxy().names()) {
        Ok(timeout) => timeout,
        Err(message) => return Answer::refused(RunStatus::ValidationError, message),
    };
    let session = request
        .session
        .as_deref()
        .map(|name| SessionName::new(request.principal.clone(), name));
    if let Some(name) = &session
        && request.end_session
        && request.code.trim().is_empty()
    {
        return Answer::nothing_ran(end_session(service.sessions(), name).await);
    }
    let pool = match service.pool().await {
        Ok(pool) => pool,
        Err(error) => {
            return Answer::refused(
                RunStatus::Error,
                format!("the sandbox service is unavailable: {error}"),
            );
        }
    };
    let config = service.config();
    let (host, save_targets) = match host_files(config, request).await {
        Ok(prepared) => prepared,
        Err(message) => return Answer::refused(RunStatus::ValidationError, message),
    };
    let call_limits = CallLimits {
        max_call_bytes: config.max_tool_call_bytes,
        bytes_in_flight: config.tool_bytes_in_flight,
        calls_per_run: config.tool_calls_per_run,
        calls_per_tool: config.tool_calls_per_tool,
        argument_bytes_per_run: config.tool_argument_bytes_per_run,
        result_bytes_per_run: config.tool_result_bytes_per_run,
    };
    let tools = match service
        .proxy()
        .tools_for(
            &request.servers,
            call_limits,
            request.approver.clone(),
            request.principal.as_str(),
        )
        .await
    {
        Ok(tools) => tools,
        Err(error) => return Answer::refused(RunStatus::Error, error.to_string()),
    };
    // The run's tool calls, its MCP tools' and its skill calls, as made.
    let call_log = tools
        .as_ref()
        .map_or_else(Default::default, RunTools::call_log);
    let _ = progress.tools.set(call_log.clone());
    // The run's network: its connections end with it.
    let egress = service.egress().run();
    let wheels = service.packages().plan(&config.image, &request.packages);
    let resend: Vec<String> = request
        .save
        .iter()
        .filter_map(|save| save.source().map(str::to_owned))
        .collect();
    // Skills' calls are answered beside the MCP tools' (as the principal's).
    let skills = service.skills();
    let calls = skills.enabled().then(|| {
        let tools = tools.as_ref().map(|tools| tools as &dyn ToolCalls);
        SkillCalls::new(
            skills.clone(),
            request.principal.clone(),
            tools,
            call_log.clone(),
        )
    });
    let run = Run {
        limits: &limits,
        input: RunInput {
            skills: calls.is_some(),
            session: request.session.is_some(),
            packages: &request.packages,
            wheels: &wheels,
            host_files: &host.entries,
            host_data: &host.frames,
            resend: &resend,
            ..limits.input(&request.code, &request.files)
        },
        timeout,
        services: RunServices {
            tools: match &calls {
                Some(calls) => Some(calls as &dyn ToolCalls),
                None => tools.as_ref().map(|tools| tools as &dyn ToolCalls),
            },
            streams: Some(&egress),
        },
        tail,
        progress,
    };
    let mut answer = match &session {
        None => run.stateless(pool, &request.principal).await,
        Some(name) => {
            let seat_wait = service.config().pool_wait_timeout;
            run.in_session(
                service.sessions(),
                name,
                request.end_session,
                pool,
                seat_wait,
            )
            .await
        }
    };
    let network = egress.finish();
    if let (None, Some(installed)) = (&request.session, &answer.report.packages) {
        // What pip chose in a fresh sandbox, as far as the host served it.
        let image = &config.image;
        service
            .packages()
            .remember(image, &request.packages, installed, &network.site_paths);
    }
    answer.report.notes.splice(0..0, host.notes);
    if !request.save.is_empty() {
        save_files(config, request, save_targets, &mut answer.report).await;
    }
    answer.report.notes.extend(network.notes());
    answer.report.egress = network.connections;
    if let Some(calls) = &calls {
        calls.settled().await;
    }
    answer.report.tool_calls = Some(lock(&call_log).clone()).filter(|c| c.total > 0);
    if !answer.report.files.is_empty() {
        // The process id keeps URIs of a restarted server apart.
        let run_id = format!("{}-{call_id}", std::process::id());
        answer
            .report
            .keep_files(service.artifacts(), &request.principal, &run_id);
    }
    answer
}

/// The call's host files read and its saves checked, before anything
/// runs: an error is the call's `validation_error`. Nothing is done (no
/// task, no root opened) for a call that names no host path.
async fn host_files(
    config: &Config,
    request: &CallRequest,
) -> Result<(HostFiles, Vec<Vec<String>>), String> {
    let targets = hostfiles::check_saves(&request.save, config.host_write.as_deref())?;
    if request.host_files.is_empty() {
        return Ok((HostFiles::default(), targets));
    }
    let roots = match (&config.host_read, &request.client_roots) {
        (HostRead::Off, _) => Vec::new(),
        (HostRead::Folders(folders), _) => folders.clone(),
        (HostRead::ClientRoots, Some(Ok(roots))) => roots.clone(),
        (HostRead::ClientRoots, Some(Err(why))) => {
            return Err(format!(
                "host files come from the client's roots (MCP_BRIDGE_HOST_READ=roots): {why}"
            ));
        }
        (HostRead::ClientRoots, None) => {
            return Err(
                "host files come from the client's roots (MCP_BRIDGE_HOST_READ=roots), \
                        and this call came with none"
                    .into(),
            );
        }
    };
    let requests = request.host_files.clone();
    let bounds = ReadBounds {
        max_bytes: config.max_host_files_bytes,
        max_entries: config.max_host_files,
    };
    let method = config.host_resolution;
    let read =
        tokio::task::spawn_blocking(move || hostfiles::read(&requests, &roots, bounds, method));
    let files = read
        .await
        .map_err(|error| format!("reading the host files failed: {error}"))??;
    Ok((files, targets))
}

/// Saves the files the call's `save` names from what the run returned
/// (only after a successful run: a failed one may have left them half
/// made); what was saved goes in the report, what was not in its notes.
async fn save_files(
    config: &Config,
    request: &CallRequest,
    targets: Vec<Vec<String>>,
    report: &mut RunReport,
) {
    let Some(root) = config.host_write.clone() else {
        return; // checked before the run
    };
    if report.status != RunStatus::Success {
        report
            .notes
            .push("nothing saved: the run did not succeed".into());
        return;
    }
    let out: Vec<(String, bytes::Bytes)> = report
        .files
        .iter()
        .filter(|file| {
            request
                .save
                .iter()
                .any(|save| save.source() == Some(file.path.as_str()))
        })
        .map(|file| (file.path.clone(), file.data.clone()))
        .collect();
    let saves = request.save.clone();
    let (overwrite, method) = (request.overwrite, config.host_resolution);
    let saved = tokio::task::spawn_blocking(move || {
        hostfiles::save(&root, &saves, &targets, &out, overwrite, method)
    })
    .await;
    match saved {
        Ok((saved, notes)) => {
            report.saved = saved;
            report.notes.extend(notes);
        }
        Err(error) => report.notes.push(format!("nothing saved: {error}")),
    }
}

/// `end_session` with no code: the session ends after the calls sent
/// before, if any; no sandbox is needed.
async fn end_session(sessions: &Sessions, name: &SessionName) -> RunReport {
    let ended = Ended::requested();
    let mut report = RunReport::nothing_ran(RunStatus::Success);
    match sessions.end(name, ended.clone()).await {
        Ending::Ended => {
            report.session = Some(SessionReport {
                name: name.to_string(),
                found: Found::Continued,
                ended: Some(ended.detail),
            });
        }
        Ending::AlreadyEnded(before) => report.notes.push(format!(
            "session {:?} had already ended ({}): nothing to end",
            name.name, before.detail
        )),
        Ending::NoSession => report.notes.push(format!(
            "no live session is named {:?}: nothing to end",
            name.name
        )),
    }
    report
}

/// Validated code, ready to run on a leased sandbox.
struct Run<'a> {
    limits: &'a Limits,
    input: RunInput<'a>,
    timeout: Duration,
    services: RunServices<'a>,
    tail: Option<&'a OutputTail>,
    progress: &'a Progress,
}

/// A run on a leased sandbox: the report, and what it means for the sandbox.
struct Ran {
    report: RunReport,
    verdict: Verdict,
    /// The agent's account of the run, when it gave one.
    done: Option<RunDone>,
}

impl Run<'_> {
    /// On a clean sandbox, reset or recycled after; `principal`'s turn at
    /// the pool when others wait too.
    async fn stateless(&self, pool: &Pool, principal: &Principal) -> Answer {
        let waiting = Instant::now();
        let acquired = pool.acquire_for(principal).await;
        metrics::observe_wait(waiting.elapsed());
        let mut lease = match acquired {
            Ok(lease) => lease,
            Err(error) => return Answer::refused(RunStatus::Error, error.to_string()),
        };
        let ran = self.on(&mut lease).await;
        lease.finish(ran.verdict);
        Answer {
            report: ran.report,
            ran: true,
        }
    }

    /// In the session `name`, after the calls before it (waiting at most
    /// `seat_wait` for them); the session ends with the call when its run
    /// failed, its interpreter died or `end_after`.
    async fn in_session(
        &self,
        sessions: &Sessions,
        name: &SessionName,
        end_after: bool,
        pool: &Pool,
        seat_wait: Duration,
    ) -> Answer {
        let mut turn = match sessions.enter(name, pool, seat_wait).await {
            Ok(turn) => turn,
            Err(error) => return Answer::refused(RunStatus::Error, error.to_string()),
        };
        let mut ran = self.on(turn.lease()).await;
        if let Some(done) = ran.done.as_ref().filter(|done| done.session_gone) {
            // Its interpreter had died between calls: the code did not run.
            // Once more on a new sandbox (the result says the state was lost).
            let ended = Ended {
                reason: EndReason::Exited,
                detail: format!(
                    "its interpreter exited between calls ({})",
                    describe_exit(done.exit_code)
                ),
            };
            if let Err(error) = turn.restart(ended, RecycleReason::SessionEnded, pool).await {
                return Answer::refused(RunStatus::Error, error.to_string());
            }
            ran = self.on(turn.lease()).await;
        }
        let end = session_end(&ran, end_after);
        let mut report = ran.report;
        report.session = Some(SessionReport {
            name: name.to_string(),
            found: turn.found().clone(),
            ended: end.as_ref().map(|(ended, _)| ended.detail.clone()),
        });
        match end {
            Some((ended, recycle)) => turn.end(ended, recycle),
            None => turn.keep(),
        }
        Answer { report, ran: true }
    }

    /// Runs on `lease`'s sandbox and classifies the outcome.
    async fn on(&self, lease: &mut Lease) -> Ran {
        let limits = self.limits;
        let mut output = CapturedOutput::default();
        output.tail = self.tail.cloned();
        *lock(&self.progress.sandbox) = Some(lease.sandbox().name().to_owned());
        let started = Instant::now();
        let result = lease
            .sandbox()
            .run(&self.input, self.timeout, self.services, &mut output)
            .await;
        let duration = started.elapsed();
        let mut notes = Vec::new();
        let (outcome, done) = match result {
            Ok(done) => {
                if !done.session_gone {
                    metrics::observe_agent(Duration::from_micros(done.agent_us));
                }
                notes = result_notes(&done, limits);
                (Outcome::from_done(&done, limits.memory_bytes), Some(done))
            }
            Err(failure) => {
                // The agent is PID 1: if the OOM killer took it, the engine knows.
                // The engine's word is a nicety: it may not hold the call up.
                let oom = matches!(failure, SandboxFailure::AgentDied { .. })
                    && tokio::time::timeout(Duration::from_secs(5), lease.engine_saw_oom())
                        .await
                        .unwrap_or(false);
                let session = self.input.session;
                (Outcome::from_failure(&failure, oom, limits, session), None)
            }
        };
        if let Verdict::Recycle(reason) = outcome.verdict {
            tracing::info!(
                sandbox = lease.sandbox().short_id(),
                reason = reason.as_str(),
                "sandbox will be recycled"
            );
        }
        let limit = limits.max_output_bytes;
        let report = RunReport {
            status: outcome.status,
            stdout: decode_output(output.stdout.bytes, output.stdout.dropped, "stdout", limit),
            stderr: decode_output(output.stderr.bytes, output.stderr.dropped, "stderr", limit),
            exit_code: outcome.exit_code,
            duration_ms: duration.as_secs_f64() * 1e3,
            stdout_truncated: output.stdout.dropped > 0,
            stderr_truncated: output.stderr.dropped > 0,
            error: outcome.error,
            images: images(output.images, limits.images.max_pixels, &mut notes),
            files: output
                .files
                .into_iter()
                .map(|(path, bytes)| OutputFile::new(path, bytes))
                .collect(),
            notes,
            session: None,
            egress: Vec::new(),
            tool_calls: None,
            packages: done.as_ref().and_then(|done| done.packages.clone()),
            saved: Vec::new(),
            sandbox: Some(lease.sandbox().name().to_owned()),
        };
        Ran {
            report,
            verdict: outcome.verdict,
            done,
        }
    }
}

/// Whether a session ends with this run, why, and (for a failed run) the
/// reason its sandbox is recycled.
fn session_end(ran: &Ran, end_after: bool) -> Option<(Ended, Option<RecycleReason>)> {
    if let Verdict::Recycle(recycle) = ran.verdict {
        let reason = EndReason::for_recycle(recycle);
        let detail = match reason {
            EndReason::Timeout => "a call timed out and its interpreter was killed".to_owned(),
            EndReason::Oom => "a call ran out of memory and its interpreter was killed".to_owned(),
            _ => format!(
                "its sandbox failed: {}",
                ran.report.error.as_deref().unwrap_or("unknown")
            ),
        };
        return Some((Ended { reason, detail }, Some(recycle)));
    }
    if !ran.done.as_ref().is_some_and(|done| done.kept) {
        let detail = format!(
            "its interpreter exited during a call ({})",
            describe_exit(ran.report.exit_code.unwrap_or_default())
        );
        return Some((
            Ended {
                reason: EndReason::Exited,
                detail,
            },
            None,
        ));
    }
    end_after.then(|| (Ended::requested(), None))
}

/// The run's PNGs as the host rebuilt them ([`images::check`]): what fails
/// is left out, with a note saying why.
fn images(pngs: Vec<bytes::Bytes>, max_pixels: u32, notes: &mut Vec<String>) -> Vec<Image> {
    let total = pngs.len();
    let mut kept = Vec::with_capacity(total);
    for (index, png) in pngs.iter().enumerate() {
        match images::check(png, max_pixels) {
            Ok(png) => kept.push(Image::png(kept.len(), png.data, png.width, png.height)),
            Err(why) => notes.push(format!("image {} of {total} dropped: {why}", index + 1)),
        }
    }
    kept
}

/// What the text should say about images and files the run made but that do
/// not come back.
fn result_notes(done: &RunDone, limits: &Limits) -> Vec<String> {
    let mut notes = done.image_notes.clone();
    let over_count = done
        .images_dropped
        .saturating_sub(done.image_notes.len() as u64);
    if over_count > 0 {
        notes.push(format!(
            "{over_count} more images not returned: at most {} per run (MCP_BRIDGE_MAX_IMAGES)",
            limits.images.max_images
        ));
    }
    if done.files_dropped > 0 {
        notes.push(format!(
            "{} files ({} bytes) under /workspace/out left behind: a run returns at most {} files \
             and {} bytes (MCP_BRIDGE_MAX_OUTPUT_FILES, MCP_BRIDGE_MAX_OUTPUT_FILES_BYTES)",
            done.files_dropped,
            done.files_dropped_bytes,
            limits.files_out.max_files,
            limits.files_out.max_bytes
        ));
    }
    notes
}

impl RunReport {
    /// Keeps the run's files as artifacts; a small text file also comes
    /// inline. One too large for the whole store is left out, with a note.
    fn keep_files(&mut self, store: &ArtifactStore, owner: &Principal, run_id: &str) {
        let mut refused = Vec::new();
        for file in &mut self.files {
            match store.put(owner, run_id, &file.path, file.data.clone()) {
                Some(artifact) => file.uri = Some(artifact.uri),
                None => {
                    refused.push(file.path.clone());
                    continue;
                }
            }
            if file.data.len() <= INLINE_TEXT_BYTES && artifacts::is_text_type(file.mime_type) {
                file.text = std::str::from_utf8(&file.data).ok().map(str::to_owned);
                file.inline = file.text.is_some();
            }
        }
        // Later files (this run's, or a concurrent run's) may have evicted earlier ones.
        for file in &mut self.files {
            if file.uri.as_deref().is_some_and(|uri| !store.contains(uri)) {
                file.uri = None;
                file.inline = false;
                file.text = None;
                self.notes.push(format!(
                    "out/{} was evicted by newer files before this result was sent \
                     (MCP_BRIDGE_ARTIFACT_BYTES, MCP_BRIDGE_ARTIFACT_BYTES_PER_CLIENT): not kept",
                    file.path
                ));
            }
        }
        for path in refused {
            self.notes.push(format!(
                "out/{path} is larger than the whole artifact store (MCP_BRIDGE_ARTIFACT_BYTES, \
                 or MCP_BRIDGE_ARTIFACT_BYTES_PER_CLIENT for one client): not kept"
            ));
        }
    }
}

/// Observes one call exactly once: [`CallObserver::finished`] with its
/// report, or, when the call's future is dropped first (the client
/// cancelled), as `cancelled` from `Drop`.
struct CallObserver<'a> {
    span: tracing::Span,
    /// Names the call's artifacts (`artifact://<pid>-<id>/<path>`).
    id: u64,
    started: Instant,
    finished: bool,
    /// The call as it started, for the console and the audit log.
    start: Arc<CallStart>,
    /// What it has done so far, for its record if it is cancelled.
    progress: Progress,
    service: &'a Service,
}

/// What a call has done so far: its run's tool calls and its sandbox, for
/// the record of a call whose client goes away before its result.
#[derive(Default)]
struct Progress {
    tools: std::sync::OnceLock<Arc<std::sync::Mutex<ToolCallList>>>,
    sandbox: std::sync::Mutex<Option<String>>,
}

/// A lock nothing panics while holding.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'a> CallObserver<'a> {
    fn new(service: &'a Service, request: &CallRequest) -> Self {
        static CALL_IDS: AtomicU64 = AtomicU64::new(1);
        let id = CALL_IDS.fetch_add(1, Ordering::Relaxed);
        let start = Arc::new(CallStart::new(
            id,
            request.principal.as_str(),
            request.session.as_deref(),
            &request.servers,
            &request.code,
        ));
        service.console().begin(&start);
        let span = tracing::info_span!(
            "run",
            id,
            servers = ?request.servers,
            principal = %request.principal,
            session = request.session.as_deref(),
            status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        Self {
            span,
            id,
            started: Instant::now(),
            finished: false,
            start,
            progress: Progress::default(),
            service,
        }
    }

    /// Keeps `record` (and its images' `pngs`) for the console, and queues
    /// the record for the audit log.
    fn keep(&self, record: CallRecord, pngs: Vec<bytes::Bytes>) {
        let record = self.service.console().finish(record, pngs);
        self.service.audit().record(record);
    }

    /// `ran`: the call's code went to a sandbox. Only runs are observed as
    /// runs; a request refused on its face counts as `validation_error`
    /// (no duration), and a call that ran nothing else (end_session alone,
    /// a session limit, no sandbox, a server that could not start) is only
    /// logged.
    fn finished(mut self, report: &RunReport, ran: bool) {
        self.finished = true;
        self.span.record("status", report.status.as_str());
        self.span.record("duration_ms", report.duration_ms);
        self.span.in_scope(|| match &report.error {
            None => tracing::info!("run finished"),
            // Debug-quoted: the run's own exception text (newlines and escape
            // sequences included) cannot forge lines of the log.
            Some(error) => tracing::info!(?error, "run finished"),
        });
        if ran || report.status == RunStatus::ValidationError {
            metrics::observe_run(
                report.status.as_str(),
                ran.then(|| Duration::from_secs_f64(report.duration_ms / 1e3)),
            );
        }
        if report.stdout_truncated {
            metrics::observe_truncated("stdout");
        }
        if report.stderr_truncated {
            metrics::observe_truncated("stderr");
        }
        let pngs = report
            .images
            .iter()
            .map(|image| image.data.clone())
            .collect();
        self.keep(CallRecord::finished(self.start.clone(), report), pngs);
    }
}

impl Drop for CallObserver<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let took = self.started.elapsed();
        let status = RunStatus::Cancelled.as_str();
        self.span.record("status", status);
        self.span.record("duration_ms", took.as_secs_f64() * 1e3);
        self.span
            .in_scope(|| tracing::info!("run cancelled by the client"));
        metrics::observe_run(status, Some(took));
        let so_far = self.progress.tools.get().map(|log| lock(log).clone());
        let sandbox = lock(&self.progress.sandbox).take();
        let record = CallRecord::cancelled(self.start.clone(), so_far.as_ref(), sandbox);
        self.keep(record, Vec::new());
    }
}

/// How a run ended, and what that means for its sandbox.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: RunStatus,
    exit_code: Option<i32>,
    error: Option<String>,
    verdict: Verdict,
}

impl Outcome {
    fn from_done(done: &RunDone, memory_bytes: u64) -> Self {
        let exit_code = Some(done.exit_code);
        if done.oom {
            return Self {
                status: RunStatus::Oom,
                exit_code,
                error: Some(oom_message(memory_bytes)),
                // The OOM killer may have hit more than the run; don't trust the rest.
                verdict: Verdict::Recycle(RecycleReason::Oom),
            };
        }
        let error = match done.exit_code {
            0 => None,
            code if code < 0 => Some(describe_exit(code)),
            code => Some(
                done.error
                    .clone()
                    .unwrap_or_else(|| format!("exited with code {code}")),
            ),
        };
        Self {
            status: if error.is_none() {
                RunStatus::Success
            } else {
                RunStatus::Error
            },
            exit_code,
            error,
            verdict: Verdict::Reuse,
        }
    }

    /// How a run that failed ended; `session` for a session's call, whose
    /// state goes with the sandbox.
    fn from_failure(failure: &SandboxFailure, oom: bool, limits: &Limits, session: bool) -> Self {
        let (status, error) = match failure {
            _ if oom => (RunStatus::Oom, oom_message(limits.memory_bytes)),
            SandboxFailure::Timeout(limit) => (
                RunStatus::Timeout,
                format!(
                    "timed out after {} and was killed (output printed before the deadline is \
                     kept); work that needs longer can pass a larger timeout, up to {} \
                     (MCP_BRIDGE_MAX_TIMEOUT)",
                    humantime::format_duration(*limit),
                    humantime::format_duration(limits.max_timeout)
                ),
            ),
            other if session => (
                RunStatus::Error,
                format!("{other}; the session's state is lost: its next call starts a new session"),
            ),
            other => (
                RunStatus::Error,
                format!("{other}; the sandbox was replaced, so running the code again is safe"),
            ),
        };
        Self {
            status,
            exit_code: None,
            error: Some(error),
            verdict: Verdict::Recycle(if oom {
                RecycleReason::Oom
            } else {
                RecycleReason::for_failure(failure)
            }),
        }
    }
}

fn oom_message(memory_bytes: u64) -> String {
    format!(
        "out of memory: the sandbox's limit is {} MiB (MCP_BRIDGE_MEMORY) and the run was killed",
        memory_bytes >> 20
    )
}

/// `exit code 3`, or `killed by SIGKILL (killed)` for a negative code.
fn describe_exit(code: i32) -> String {
    if code < 0 {
        format!("killed by {}", describe_signal(-code))
    } else {
        format!("exit code {code}")
    }
}

/// `SIGSEGV (segmentation fault)` for a signal number.
fn describe_signal(signal: i32) -> String {
    let (name, meaning) = match signal {
        1 => ("SIGHUP", "hangup"),
        2 => ("SIGINT", "interrupt"),
        3 => ("SIGQUIT", "quit"),
        4 => ("SIGILL", "illegal instruction"),
        5 => ("SIGTRAP", "trace trap"),
        6 => ("SIGABRT", "aborted"),
        7 => ("SIGBUS", "bus error"),
        8 => ("SIGFPE", "floating point exception"),
        9 => ("SIGKILL", "killed"),
        10 => ("SIGUSR1", "user signal 1"),
        11 => ("SIGSEGV", "segmentation fault"),
        12 => ("SIGUSR2", "user signal 2"),
        13 => ("SIGPIPE", "broken pipe"),
        14 => ("SIGALRM", "alarm clock"),
        15 => ("SIGTERM", "terminated"),
        24 => ("SIGXCPU", "CPU time limit exceeded"),
        25 => ("SIGXFSZ", "file size limit exceeded"),
        31 => ("SIGSYS", "bad system call"),
        _ => return format!("signal {signal}"),
    };
    format!("{name} ({meaning})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::from(&Config::default())
    }

    fn request(code: &str, timeout_secs: Option<f64>) -> CallRequest {
        CallRequest {
            code: code.into(),
            timeout_secs,
            ..CallRequest::default()
        }
    }

    #[test]
    fn validation_messages_name_the_limit() {
        let l = limits();
        assert!(
            l.validate(&request("  \n", None), &[])
                .unwrap_err()
                .contains("empty")
        );
        let big = "x".repeat(l.max_code_bytes + 1);
        assert!(
            l.validate(&request(&big, None), &[])
                .unwrap_err()
                .contains("MCP_BRIDGE_MAX_CODE_BYTES")
        );
        for bad in [0.0, -1.0, 121.0, f64::NAN, f64::INFINITY] {
            let error = l
                .validate(&request("print(1)", Some(bad)), &[])
                .unwrap_err();
            assert!(error.contains("MCP_BRIDGE_MAX_TIMEOUT"), "{bad}: {error}");
        }
        assert_eq!(
            l.validate(&request("print(1)", None), &[]),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            l.validate(&request("print(1)", Some(0.5)), &[]),
            Ok(Duration::from_millis(500))
        );
    }

    #[test]
    fn input_files_stay_in_the_workspace_and_within_the_bound() {
        let l = Limits {
            max_input_files_bytes: 4,
            ..limits()
        };
        let with = |path: &str, content: FileContent| CallRequest {
            files: vec![InputFile {
                path: path.into(),
                content,
            }],
            ..request("print(1)", None)
        };
        let text = |t: &str| FileContent::Text(t.into());
        assert!(l.validate(&with("data/a.csv", text("a,b")), &[]).is_ok());
        let long = "n".repeat(256);
        for bad in [
            "",
            "/etc/passwd",
            "../up",
            "a/../../b",
            "./x",
            "a/./b",
            "a//b",
            "a/",
            "a/.",
            "a\0b",
            long.as_str(),
        ] {
            let error = l.validate(&with(bad, text("x")), &[]).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{bad:?}: {error}");
        }
        let both = CallRequest {
            files: ["data", "data/x.csv"]
                .map(|path| InputFile {
                    path: path.into(),
                    content: text(""),
                })
                .to_vec(),
            ..request("print(1)", None)
        };
        let error = l.validate(&both, &[]).unwrap_err();
        assert!(error.contains("\"data\" is also a folder"), "{error}");
        // Spelled so that the components are the same, the strings not.
        for other in ["data/./x.csv", "data//x.csv"] {
            let both = CallRequest {
                files: ["data", other]
                    .map(|path| InputFile {
                        path: path.into(),
                        content: text(""),
                    })
                    .to_vec(),
                ..request("print(1)", None)
            };
            assert!(l.validate(&both, &[]).is_err(), "{other}");
        }
        let many = CallRequest {
            files: (0..=MAX_INPUT_FILES)
                .map(|i| InputFile {
                    path: format!("f{i}"),
                    content: text(""),
                })
                .collect(),
            ..request("print(1)", None)
        };
        let error = l.validate(&many, &[]).unwrap_err();
        assert!(error.contains("at most 256"), "{error}");
        let error = l.validate(&with("a", text("12345")), &[]).unwrap_err();
        assert!(
            error.contains("MCP_BRIDGE_MAX_INPUT_FILES_BYTES"),
            "{error}"
        );
        // Four bytes once decoded: within the bound, though its base64 is longer.
        let four = FileContent::Base64("AAECAw==".into());
        assert!(l.validate(&with("b.bin", four), &[]).is_ok());
        let error = l
            .validate(
                &with("c.bin", FileContent::Base64("not base64!".into())),
                &[],
            )
            .unwrap_err();
        assert!(error.contains("base64"), "{error}");
    }

    #[test]
    fn every_file_link_is_readable_or_explained() {
        let store = ArtifactStore::new(Duration::from_secs(60), 3000);
        let mut report = RunReport {
            files: ["a.bin", "b.bin", "small.txt", "huge.bin"]
                .iter()
                .zip([1200, 1200, 5, 9000])
                .map(|(path, size)| OutputFile::new((*path).into(), vec![b'x'; size].into()))
                .collect(),
            ..RunReport::rejected(RunStatus::Success, "x")
        };
        report.keep_files(&store, &Principal::local(), "1-1");
        let kept: Vec<_> = report.files.iter().map(|f| f.uri.is_some()).collect();
        assert_eq!(kept, [false, true, true, false], "{:?}", report.notes);
        assert!(report.files[2].inline && report.files[2].text.as_deref() == Some("xxxxx"));
        assert!(
            report
                .files
                .iter()
                .filter_map(|f| f.uri.as_deref())
                .all(|uri| store.contains(uri))
        );
        assert_eq!(report.notes.len(), 2, "{:?}", report.notes);
        assert!(report.notes[0].contains("out/a.bin was evicted"));
        assert!(report.notes[1].contains("out/huge.bin is larger than the whole artifact store"));
    }

    #[test]
    fn unknown_servers_are_listed() {
        let l = limits();
        let mut r = request("print(1)", None);
        r.servers = vec!["github".into()];
        assert!(
            l.validate(&r, &[])
                .unwrap_err()
                .contains("none are configured")
        );
        let error = l.validate(&r, &["time".into(), "fs".into()]).unwrap_err();
        assert!(error.contains("known servers: time, fs"), "{error}");
    }

    #[test]
    fn a_session_ends_when_its_run_failed_its_interpreter_died_or_the_client_asked() {
        let ran = |verdict, kept, exit_code| Ran {
            report: RunReport {
                exit_code: Some(exit_code),
                ..RunReport::rejected(RunStatus::Error, "the sandbox agent stopped")
            },
            verdict,
            done: Some(RunDone {
                kept,
                ..RunDone::default()
            }),
        };
        let reason = |ran: &Ran, end_after| {
            session_end(ran, end_after).map(|(ended, recycle)| (ended.reason, recycle))
        };
        let kept = ran(Verdict::Reuse, true, 0);
        assert_eq!(reason(&kept, false), None, "the session goes on");
        assert_eq!(reason(&kept, true), Some((EndReason::Requested, None)));
        let timeout = ran(Verdict::Recycle(RecycleReason::Timeout), false, 0);
        assert_eq!(
            reason(&timeout, false),
            Some((EndReason::Timeout, Some(RecycleReason::Timeout)))
        );
        let oom = ran(Verdict::Recycle(RecycleReason::Oom), false, 0);
        assert_eq!(
            reason(&oom, true),
            Some((EndReason::Oom, Some(RecycleReason::Oom)))
        );
        let broken = ran(Verdict::Recycle(RecycleReason::Protocol), false, 0);
        let (ended, _) = session_end(&broken, false).unwrap();
        assert_eq!(ended.reason, EndReason::SandboxFailed);
        assert!(
            ended.detail.contains("the sandbox agent stopped"),
            "{}",
            ended.detail
        );
        let (ended, recycle) = session_end(&ran(Verdict::Reuse, false, -11), false).unwrap();
        assert_eq!((ended.reason, recycle), (EndReason::Exited, None));
        assert_eq!(
            ended.detail,
            "its interpreter exited during a call (killed by SIGSEGV (segmentation fault))"
        );
    }

    /// A run's own error text (its exception message: newlines, escapes)
    /// stays on the one log line of its call.
    #[test]
    fn a_runs_error_cannot_forge_log_lines() {
        #[derive(Clone, Default)]
        struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let report = RunReport::rejected(
                RunStatus::Error,
                "ValueError: x\n2026-12-02T00:00:00Z  INFO forged: \u{1b}[31mred\r",
            );
            let config = Config {
                audit: crate::config::AuditSettings {
                    path: None,
                    ..Default::default()
                },
                ..Config::default()
            };
            let service = Service::new(config);
            CallObserver::new(&service, &request("1/0", None)).finished(&report, true);
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains(['\u{1b}', '\r']), "{text:?}");
        assert!(text.contains(r"ValueError: x\n2026-12-02"), "{text}");
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(describe_signal(11), "SIGSEGV (segmentation fault)");
        assert_eq!(describe_signal(64), "signal 64");
    }

    #[test]
    fn outcomes() {
        let done = |exit_code, oom, error: Option<&str>| RunDone {
            exit_code,
            oom,
            error: error.map(Into::into),
            ..RunDone::default()
        };
        let ok = Outcome::from_done(&done(0, false, None), 1 << 29);
        assert_eq!(
            (ok.status, ok.verdict),
            (RunStatus::Success, Verdict::Reuse)
        );

        let raised = Outcome::from_done(&done(1, false, Some("ValueError: x")), 1 << 29);
        assert_eq!(raised.status, RunStatus::Error);
        assert_eq!(raised.error.as_deref(), Some("ValueError: x"));

        let segv = Outcome::from_done(&done(-11, false, None), 1 << 29);
        assert_eq!(
            segv.error.as_deref(),
            Some("killed by SIGSEGV (segmentation fault)")
        );
        assert_eq!(segv.verdict, Verdict::Reuse);

        let exit3 = Outcome::from_done(&done(3, false, None), 1 << 29);
        assert_eq!(exit3.error.as_deref(), Some("exited with code 3"));

        let oom = Outcome::from_done(&done(-9, true, None), 1 << 29);
        assert_eq!(oom.status, RunStatus::Oom);
        assert!(oom.error.unwrap().contains("512 MiB"));
        assert_eq!(oom.verdict, Verdict::Recycle(RecycleReason::Oom));

        let timeout = Outcome::from_failure(
            &SandboxFailure::Timeout(Duration::from_secs(2)),
            false,
            &limits(),
            false,
        );
        assert_eq!(timeout.status, RunStatus::Timeout);
        let error = timeout.error.unwrap();
        assert!(
            error.contains("timed out after 2s")
                && error.contains("up to 2m (MCP_BRIDGE_MAX_TIMEOUT)"),
            "{error}"
        );
        assert_eq!(timeout.verdict, Verdict::Recycle(RecycleReason::Timeout));

        let died = SandboxFailure::AgentDied {
            agent_stderr: String::new(),
        };
        assert_eq!(
            Outcome::from_failure(&died, true, &limits(), false).status,
            RunStatus::Oom
        );
        let in_session = Outcome::from_failure(&died, false, &limits(), true);
        assert!(
            in_session
                .error
                .as_deref()
                .is_some_and(|e| e
                    .ends_with("the session's state is lost: its next call starts a new session")),
            "{in_session:?}"
        );
        let died = Outcome::from_failure(&died, false, &limits(), false);
        assert_eq!(died.status, RunStatus::Error);
        assert!(
            died.error
                .as_deref()
                .is_some_and(|e| e.ends_with("running the code again is safe"))
        );
        assert_eq!(died.verdict, Verdict::Recycle(RecycleReason::AgentDied));
    }
}

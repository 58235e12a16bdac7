//! One sandbox: a started container whose PID 1 is the agent (`agent.py`).
//!
//! Owns the host side of the agent protocol: send a run, collect its output
//! within bounds, wait for the agent's reset confirmation. It does not decide
//! whether a container is reused or recycled (the pool does, from the
//! [`SandboxFailure`] or [`RunDone`] returned here), and it never calls the
//! engine after start: a run is two pipes, no engine requests.
//!
//! A run is full duplex under one deadline: one loop reads the agent's
//! frames, answers tool calls, serves the run's streams ([`streams`]) and
//! writes host frames a piece at a time from an [`Outbox`], so a host write
//! never stops the draining of the agent's output (the agent may itself be
//! blocked writing it), and the deadline covers every read and write of the
//! run.

pub mod protocol;
pub mod streams;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant as Deadline;

use crate::config::Config;
use crate::engine::{InputSink, OutputChunk, OutputStream, StartedContainer};
use protocol::{
    AgentFrame, AgentFrameKind, FileBounds, FrameDecoder, ImageBounds, ProtocolError, Ready,
    ResetFailed, RunDone, RunFrame, RunInput, StreamFrame,
};
use streams::{StreamEvent, StreamService, Streams};

/// What the container runs, embedded in this binary: injected as arguments,
/// so sandboxes need no bind mount (remote engines and Docker Desktop work).
struct AgentSource {
    /// PID 1 of the container (`python3 -c`).
    agent: &'static str,
    /// The sandbox's `mcp` package, the agent's first argument.
    mcp_package: &'static str,
    /// The run's images (`display()`, matplotlib's backend), the second.
    display: &'static str,
    /// The agent's half of the run's network streams, the third.
    streams: &'static str,
    /// The run's package directory and installs, the fourth.
    packages: &'static str,
    /// Which zygote's spare serves a run, the fifth.
    spares: &'static str,
    /// Saved skills and their imports, the sixth.
    skills: &'static str,
}

const AGENT_SOURCE: AgentSource = AgentSource {
    agent: include_str!("agent.py"),
    mcp_package: include_str!("mcp_runtime.py"),
    display: include_str!("display.py"),
    streams: include_str!("streams.py"),
    packages: include_str!("packages.py"),
    spares: include_str!("spares.py"),
    skills: include_str!("skills.py"),
};

/// The port of the agent's HTTP proxy on the sandbox's loopback (runs see
/// it in `HTTP_PROXY` and the rest): each connection to it is a stream.
pub const PROXY_PORT: u16 = 3128;
/// The most bytes one argument may have (Linux's `MAX_ARG_STRLEN` is 128 KiB).
const MAX_ARGUMENT: usize = 120 * 1024;

/// The zygotes' comma-separated flags: `light` for a light zygote beside
/// the preloaded one, `huge-pages` for their memory in huge pages.
fn zygote_flags(config: &Config) -> String {
    let flags = [
        (config.light_spare, "light"),
        (config.huge_pages, "huge-pages"),
    ];
    let on: Vec<&str> = flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, flag)| *flag)
        .collect();
    on.join(",")
}

/// The container's command: `python3 -c AGENT MCP_PACKAGE DISPLAY STREAMS
/// PACKAGES SPARES SKILLS PRELOAD FLAGS PORT [TRUST...]`, where PRELOAD is the
/// comma-separated modules the zygote imports before any run, FLAGS the
/// zygotes' (see [`zygote_flags`]), PORT the proxy's, and TRUST the
/// sandbox's CA bundle (PEM; in parts, an argument being bounded), if any.
pub fn agent_command(config: &Config) -> Vec<String> {
    let mut command = vec![
        "python3".into(),
        "-c".into(),
        AGENT_SOURCE.agent.into(),
        AGENT_SOURCE.mcp_package.into(),
        AGENT_SOURCE.display.into(),
        AGENT_SOURCE.streams.into(),
        AGENT_SOURCE.packages.into(),
        AGENT_SOURCE.spares.into(),
        AGENT_SOURCE.skills.into(),
        config.preload.join(","),
        zygote_flags(config),
        PROXY_PORT.to_string(),
    ];
    if let Some(bundle) = &config.egress.ca_bundle {
        let mut rest = bundle.pem.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_ARGUMENT);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (part, after) = rest.split_at(cut);
            command.push(part.to_owned());
            rest = after;
        }
    }
    command
}

/// The MCP tools a run may call ([`crate::proxy`] implements it; the
/// sandbox only relays): the metadata the sandbox builds its `mcp` package
/// from, and the answers to the calls.
pub trait ToolCalls: Send + Sync {
    /// Sent with the run: the servers and tools the run may call.
    fn metadata(&self) -> &serde_json::Value;
    /// Takes the call's JSON as the agent sent it and returns the answer
    /// (an `A` frame carrying the call's `id`).
    fn call(&self, request: Bytes) -> BoxFuture<'_, HostFrame>;
}

/// What a run may use besides its code: the tools it may call and the
/// service its streams are handed to (egress). Without a stream service,
/// every stream the agent opens is aborted at once.
#[derive(Clone, Copy, Default)]
pub struct RunServices<'a> {
    pub tools: Option<&'a dyn ToolCalls>,
    pub streams: Option<&'a dyn StreamService>,
}

impl std::fmt::Debug for RunServices<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunServices")
            .field("tools", &self.tools.is_some())
            .field("streams", &self.streams.is_some())
            .finish()
    }
}

/// A whole frame for the agent, and what it holds of its run's budget (a
/// tool call's answer holds its bytes) until it has been written.
#[derive(Debug)]
pub struct HostFrame {
    bytes: Bytes,
    _hold: Option<OwnedSemaphorePermit>,
}

impl HostFrame {
    pub fn new(bytes: impl Into<Bytes>, hold: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            bytes: bytes.into(),
            _hold: hold,
        }
    }
}

/// How much of the agent's own stderr (its crash reports) we keep for logs.
const AGENT_STDERR_KEEP: usize = 4096;
/// The agent writes to stderr only when it crashes; more than this means
/// something else does (under gVisor user code can open the agent's fds):
/// the container is discarded rather than the host's log flooded.
const AGENT_STDERR_FLOOD: usize = 1024 * 1024;

/// Why a sandbox cannot be used again. Every variant means "destroy it".
#[derive(Debug, thiserror::Error)]
pub enum SandboxFailure {
    #[error("the run exceeded its {0:?} time limit")]
    Timeout(Duration),
    #[error("the sandbox agent stopped unexpectedly{}", agent_said(.agent_stderr))]
    AgentDied { agent_stderr: String },
    #[error("the sandbox agent broke protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the connection to the sandbox failed: {0}")]
    Transport(#[from] std::io::Error),
    #[error("the sandbox reset failed: {0}")]
    ResetFailed(String),
    #[error("the sandbox agent flooded its stderr ({0} bytes): discarded")]
    StderrFlood(usize),
}

fn agent_said(stderr: &str) -> String {
    let last = stderr.trim().lines().last().unwrap_or("");
    if last.is_empty() {
        String::new()
    } else {
        format!(" ({last})")
    }
}

/// One stream's captured output, bounded: bytes past the cap are counted, not kept.
#[derive(Debug, Default)]
pub struct CapturedStream {
    pub bytes: Vec<u8>,
    /// Bytes the host dropped, plus those the agent reported dropping.
    pub dropped: u64,
}

impl CapturedStream {
    fn push(&mut self, chunk: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.bytes.len());
        let kept = chunk.len().min(room);
        self.bytes.extend_from_slice(&chunk[..kept]);
        self.dropped += (chunk.len() - kept) as u64;
    }
}

/// What a run printed. Filled as frames arrive, so it holds the partial
/// output when the run ends in a [`SandboxFailure`].
#[derive(Debug, Default)]
pub struct CapturedOutput {
    pub stdout: CapturedStream,
    pub stderr: CapturedStream,
    /// PNGs, in the order the run made them.
    pub images: Vec<Bytes>,
    /// Files from `/workspace/out`: path (relative to it) and bytes.
    pub files: Vec<(String, Bytes)>,
    files_bytes: u64,
    /// Kept up to date with the last line of output, when someone watches.
    pub tail: Option<tokio::sync::watch::Sender<String>>,
}

/// How much of the last line a watcher gets.
const TAIL_CHARS: usize = 200;

impl CapturedOutput {
    fn note_tail(&self, chunk: &[u8]) {
        let Some(tail) = &self.tail else {
            return;
        };
        let text = String::from_utf8_lossy(chunk);
        if let Some(line) = text
            .trim_end()
            .rsplit('\n')
            .next()
            .filter(|l| !l.is_empty())
        {
            tail.send_replace(line.chars().take(TAIL_CHARS).collect());
        }
    }
}

impl CapturedOutput {
    /// The agent bounds what it sends; more than the bounds means it broke protocol.
    fn push_image(&mut self, png: Bytes, bounds: ImageBounds) -> Result<(), ProtocolError> {
        let count = u32::try_from(self.images.len()).unwrap_or(u32::MAX);
        if count >= bounds.max_images || png.len() as u64 > bounds.max_bytes {
            return Err(ProtocolError::BadPayload {
                what: "image",
                reason: "over the run's image bounds".into(),
            });
        }
        // A copy: the frame is a slice of the decoder's buffer, which may be
        // far larger, and the image outlives this run.
        self.images.push(Bytes::copy_from_slice(&png));
        Ok(())
    }

    fn push_file(&mut self, payload: &Bytes, bounds: FileBounds) -> Result<(), ProtocolError> {
        let (path, bytes) = protocol::parse_file(payload)?;
        let count = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        self.files_bytes += bytes.len() as u64;
        if count >= bounds.max_files || self.files_bytes > bounds.max_bytes {
            return Err(ProtocolError::BadPayload {
                what: "file",
                reason: "over the run's file bounds".into(),
            });
        }
        self.files.push((path, Bytes::copy_from_slice(&bytes)));
        Ok(())
    }
}

/// A started container with the agent idle in it.
pub struct Sandbox {
    id: String,
    name: String,
    input: InputSink,
    /// Host frames not yet written; empty between runs (kept for its capacity).
    outbox: Outbox,
    agent: AgentOutput,
    created: Instant,
    runs: u32,
    python_version: String,
    /// Why the agent cannot reset this container (see [`Ready::single_use`]).
    single_use: Option<String>,
    /// The agent's token, from its first `Ready` (see [`Ready::token`]).
    token: Option<String>,
    /// The highest stream id the agent opened in this container (ids are
    /// never reused, so a late frame of an earlier run's stream is known as such).
    last_stream_id: u32,
}

/// The agent's side of the attach stream, decoded into frames.
struct AgentOutput {
    stream: OutputStream,
    decoder: FrameDecoder,
    /// The agent's own stderr: only written when it crashes (the first
    /// [`AGENT_STDERR_KEEP`] bytes are kept and logged).
    stderr: String,
    /// Every byte the agent wrote to stderr, kept or not.
    stderr_bytes: usize,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.short_id())
            .field("runs", &self.runs)
            .finish()
    }
}

impl Sandbox {
    /// Wraps a started container and waits for the agent's first `Ready`.
    pub async fn attach(
        container: StartedContainer,
        timeout: Duration,
    ) -> Result<Self, SandboxFailure> {
        let mut sandbox = Self {
            id: container.id,
            name: container.name,
            input: container.input,
            outbox: Outbox::default(),
            agent: AgentOutput {
                stream: container.output,
                decoder: FrameDecoder::default(),
                stderr: String::new(),
                stderr_bytes: 0,
            },
            created: Instant::now(),
            runs: 0,
            python_version: String::new(),
            single_use: None,
            token: None,
            last_stream_id: 0,
        };
        let ready = sandbox.await_ready(timeout).await?;
        sandbox.token = ready.token;
        sandbox.python_version = ready.python.unwrap_or_default();
        if let Some(reason) = ready.single_use {
            sandbox.single_use = Some(reason.clone());
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    %reason,
                    "sandboxes serve one run each and are then replaced (slower under load)"
                );
            });
        }
        if !ready.preload_missing.is_empty() {
            // Every sandbox of an image says the same: once is enough.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    missing = ?ready.preload_missing,
                    "preloaded modules (MCP_BRIDGE_PRELOAD) missing from the sandbox image; \
                     runs go on without them"
                );
            });
        }
        Ok(sandbox)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's name, as the engine lists it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn short_id(&self) -> &str {
        short(&self.id)
    }

    pub fn python_version(&self) -> &str {
        &self.python_version
    }

    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// Why the agent said it cannot reset this container, if it did.
    pub fn single_use(&self) -> Option<&str> {
        self.single_use.as_deref()
    }

    /// A zero-cost liveness check of an idle sandbox: the agent says nothing
    /// while idle, so a closed stream or any output means it is not usable.
    pub fn is_idle_and_alive(&mut self) -> bool {
        match self.agent.stream.next().now_or_never() {
            None => true,
            Some(Some(Ok(OutputChunk::Stderr(bytes)))) => {
                let _ = self.agent.note_stderr(&self.id, &bytes);
                false
            }
            Some(_) => false,
        }
    }

    /// Runs `input`, collecting its output into `output` (text capped at
    /// `max_output_bytes` per stream; images and files within the input's
    /// bounds, or the agent broke protocol) until the agent reports it done
    /// or `timeout` passes. The deadline is the host's and covers the whole
    /// run, writes included: it holds whatever the code does to the agent.
    /// Tool calls are answered and streams served concurrently while output
    /// keeps draining; when the run ends (or the future is dropped), calls
    /// still in flight are dropped, which cancels them, and every stream is
    /// aborted, which closes its connections.
    pub async fn run(
        &mut self,
        input: &RunInput<'_>,
        timeout: Duration,
        services: RunServices<'_>,
        output: &mut CapturedOutput,
    ) -> Result<RunDone, SandboxFailure> {
        let deadline = tokio::time::sleep_until(Deadline::now() + timeout);
        tokio::pin!(deadline);
        self.runs += 1;
        let frame = RunFrame {
            input,
            proxy: services.tools.map(ToolCalls::metadata),
        }
        .encode();
        self.outbox.push_control(frame);
        // The host files' bytes, right behind the request: the agent reads
        // them all before the code starts (so before any other frame).
        for data in input.host_data {
            self.outbox
                .control
                .push_back(HostFrame::new(data.clone(), None));
        }
        let cap = usize::try_from(input.max_output_bytes).unwrap_or(usize::MAX);
        let mut calls = FuturesUnordered::new();
        // Made at the first stream: most runs open none.
        let mut streams: Option<Streams> = None;
        loop {
            // Every branch is cancel-safe: a frame read keeps its partial
            // bytes in the decoder, a write step loses nothing it did not do.
            let event = tokio::select! {
                frame = self.agent.next_frame(&self.id) => Event::Frame(frame),
                Some(answer) = calls.next(), if !calls.is_empty() => Event::Answer(answer),
                event = next_stream_event(&mut streams), if streams.is_some() => {
                    Event::Stream(event)
                }
                written = self.outbox.write_step(&mut self.input), if !self.outbox.is_idle() => {
                    Event::Written(written)
                }
                () = &mut deadline => Event::Deadline,
            };
            let frame = match event {
                Event::Deadline => return Err(SandboxFailure::Timeout(timeout)),
                Event::Written(written) => {
                    written?;
                    continue;
                }
                Event::Answer(answer) => {
                    self.outbox.push_data(answer);
                    continue;
                }
                Event::Stream(StreamEvent::Frame(frame)) => {
                    // A stream's end follows its data; credit need not
                    // wait behind other streams' bytes.
                    match frame {
                        StreamFrame::Window { .. } => self.outbox.push_control(frame.encode()),
                        _ => self.outbox.push_data(HostFrame::new(frame.encode(), None)),
                    }
                    continue;
                }
                Event::Stream(StreamEvent::Gone { id, abort }) => {
                    if let Some(streams) = streams.as_mut() {
                        streams.forget(id);
                    }
                    if abort {
                        self.outbox
                            .push_data(HostFrame::new(abort_stream(id), None));
                    }
                    continue;
                }
                Event::Frame(frame) => frame?,
            };
            match frame.kind {
                AgentFrameKind::Stdout => {
                    output.note_tail(&frame.payload);
                    output.stdout.push(&frame.payload, cap);
                }
                AgentFrameKind::Stderr => {
                    output.note_tail(&frame.payload);
                    output.stderr.push(&frame.payload, cap);
                }
                AgentFrameKind::Image => output.push_image(frame.payload, input.display)?,
                AgentFrameKind::File => output.push_file(&frame.payload, input.files_out)?,
                // Without servers, nothing in the sandbox is wired to call: a
                // hand-made request just gets no answer.
                AgentFrameKind::Call => {
                    if let Some(tools) = services.tools {
                        calls.push(tools.call(frame.payload));
                    }
                }
                AgentFrameKind::Stream(kind) => {
                    let frame = StreamFrame::parse(kind, frame.payload)?;
                    let opened = match &frame {
                        StreamFrame::Open { id, .. } => Some(*id),
                        _ => None,
                    };
                    let served = match services.streams {
                        Some(service) => streams.get_or_insert_with(Streams::default).receive(
                            frame,
                            &mut self.last_stream_id,
                            service,
                        )?,
                        None => match opened {
                            Some(id) if id > self.last_stream_id && id % 2 == 1 => {
                                self.last_stream_id = id;
                                false
                            }
                            Some(_) => {
                                return Err(ProtocolError::BadPayload {
                                    what: "stream",
                                    reason: "a stream id that is not new and odd".into(),
                                }
                                .into());
                            }
                            None => true, // a late frame of an aborted stream
                        },
                    };
                    if let (Some(id), false) = (opened, served) {
                        self.outbox.push_control(abort_stream(id));
                    }
                }
                AgentFrameKind::Done => {
                    let done: RunDone = protocol::parse_payload("done", &frame.payload)?;
                    output.stdout.dropped += done.dropped_stdout;
                    output.stderr.dropped += done.dropped_stderr;
                    // The run's streams end here (their tasks are aborted,
                    // their connections closed): the agent has closed its
                    // ends, and their frames not yet begun are dropped.
                    drop(streams);
                    // Answers not yet begun are late: drop them. One cut in
                    // the middle must be completed, or the next frame the
                    // agent reads would start inside it (the agent skips late
                    // answers and stream frames, so a whole one is harmless).
                    self.outbox.drop_unstarted();
                    while !self.outbox.is_idle() {
                        tokio::select! {
                            written = self.outbox.write_step(&mut self.input) => written?,
                            () = &mut deadline => return Err(SandboxFailure::Timeout(timeout)),
                        }
                    }
                    return Ok(done);
                }
                kind => return Err(ProtocolError::Unexpected(kind).into()),
            }
        }
    }

    /// Waits for the agent to confirm, after a run, that it is idle and
    /// clean again: its `Ready` with its token.
    pub async fn await_reset(&mut self, timeout: Duration) -> Result<(), SandboxFailure> {
        let ready = self.await_ready(timeout).await?;
        Ok(ready.check_token(self.token.as_deref())?)
    }

    /// Waits for the agent's next `Ready` (or its reset failure).
    async fn await_ready(&mut self, timeout: Duration) -> Result<Ready, SandboxFailure> {
        let frame = match tokio::time::timeout(timeout, self.agent.next_frame(&self.id)).await {
            Ok(frame) => frame?,
            Err(_) => {
                return Err(SandboxFailure::ResetFailed(format!(
                    "no answer within {timeout:?}"
                )));
            }
        };
        match frame.kind {
            AgentFrameKind::Ready => Ok(protocol::parse_payload("ready", &frame.payload)?),
            AgentFrameKind::ResetFailed => {
                let failed: ResetFailed = protocol::parse_payload("reset failure", &frame.payload)?;
                Err(SandboxFailure::ResetFailed(failed.reason))
            }
            kind => Err(ProtocolError::Unexpected(kind).into()),
        }
    }
}

impl AgentOutput {
    async fn next_frame(&mut self, sandbox: &str) -> Result<AgentFrame, SandboxFailure> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            match self.stream.next().await {
                Some(Ok(OutputChunk::Stdout(bytes))) => self.decoder.extend(&bytes),
                Some(Ok(OutputChunk::Stderr(bytes))) => self.note_stderr(sandbox, &bytes)?,
                Some(Err(error)) => return Err(error.into()),
                None => {
                    return Err(SandboxFailure::AgentDied {
                        agent_stderr: std::mem::take(&mut self.stderr),
                    });
                }
            }
        }
    }

    /// Keeps and logs the first [`AGENT_STDERR_KEEP`] bytes of the agent's
    /// stderr, counts the rest, and fails once it is a flood.
    fn note_stderr(&mut self, sandbox: &str, bytes: &[u8]) -> Result<(), SandboxFailure> {
        let room = AGENT_STDERR_KEEP.saturating_sub(self.stderr.len());
        let before = self.stderr_bytes;
        self.stderr_bytes += bytes.len();
        if room > 0 {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(room)]);
            tracing::warn!(
                sandbox = short(sandbox),
                agent_stderr = ?text.trim_end(),
                "sandbox agent wrote to stderr"
            );
            self.stderr.push_str(&text);
        } else if before <= AGENT_STDERR_KEEP {
            tracing::warn!(
                sandbox = short(sandbox),
                "sandbox agent wrote more than {AGENT_STDERR_KEEP} bytes to stderr; \
                 the rest is counted, not logged"
            );
        }
        if self.stderr_bytes > AGENT_STDERR_FLOOD {
            return Err(SandboxFailure::StderrFlood(self.stderr_bytes));
        }
        Ok(())
    }
}

/// A stream frame aborting stream `id`.
fn abort_stream(id: u32) -> Vec<u8> {
    StreamFrame::Close { id, abort: true }.encode()
}

async fn next_stream_event(streams: &mut Option<Streams>) -> StreamEvent {
    match streams {
        Some(streams) => streams.next_event().await,
        None => std::future::pending().await,
    }
}

/// Host frames on their way to the agent, written a step at a time from the
/// run loop (no task of its own: a run costs no spawn). Control frames (the
/// request, stream window updates and ends) go before data (answers,
/// stream bytes), so a download's bytes never hold up a window update.
#[derive(Default)]
struct Outbox {
    control: VecDeque<HostFrame>,
    data: VecDeque<HostFrame>,
    /// The frame being written, and how many of its bytes are.
    current: Option<(HostFrame, usize)>,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

impl Outbox {
    fn push_control(&mut self, frame: Vec<u8>) {
        self.control.push_back(HostFrame::new(frame, None));
    }

    fn push_data(&mut self, frame: HostFrame) {
        self.data.push_back(frame);
    }

    /// Nothing to write and nothing to flush.
    fn is_idle(&self) -> bool {
        self.current.is_none() && self.control.is_empty() && self.data.is_empty() && !self.unflushed
    }

    /// Keeps only a frame already partly written.
    fn drop_unstarted(&mut self) {
        self.control.clear();
        self.data.clear();
    }

    /// One write (or, once everything is written, the flush). Cancel-safe:
    /// a write that did not complete wrote nothing.
    async fn write_step(&mut self, sink: &mut InputSink) -> std::io::Result<()> {
        if self.current.is_none() {
            self.current = self
                .control
                .pop_front()
                .or_else(|| self.data.pop_front())
                .map(|frame| (frame, 0));
        }
        let Some((frame, written)) = &mut self.current else {
            sink.flush().await?;
            self.unflushed = false;
            return Ok(());
        };
        let n = sink.write(&frame.bytes[*written..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.unflushed = true;
        *written += n;
        if *written == frame.bytes.len() {
            // Its budget (a tool answer's bytes) is free from here.
            self.current = None;
        }
        Ok(())
    }
}

/// A container id as `docker ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

enum Event {
    Frame(Result<AgentFrame, SandboxFailure>),
    Answer(HostFrame),
    Stream(StreamEvent),
    Written(std::io::Result<()>),
    Deadline,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_stream_keeps_the_head_and_counts_the_rest() {
        let mut stream = CapturedStream::default();
        stream.push(b"hello ", 8);
        stream.push(b"world", 8);
        stream.push(b"!", 8);
        assert_eq!(stream.bytes, b"hello wo");
        assert_eq!(stream.dropped, 4);
    }

    #[test]
    fn agent_source_is_embedded_and_guards_pid_one() {
        let mut config = Config {
            preload: vec!["numpy".into(), "pandas".into()],
            ..Config::default()
        };
        let command = agent_command(&config);
        assert!(command[2].contains("os.getpid() != 1"));
        assert!(command[3].contains("def install("));
        assert!(command[4].contains("def register_backend("));
        assert!(command[5].contains("class Streams"));
        assert!(command[6].contains("def site_dir("));
        assert!(command[7].contains("def needs_preload("));
        assert!(command[8].contains("class _Finder("));
        assert_eq!(command[9], "numpy,pandas");
        assert_eq!(command[10], "light,huge-pages");
        assert_eq!(command[11], "3128");
        assert_eq!(command.len(), 12, "no trust: nothing more");
        let single = Config {
            light_spare: false,
            ..config.clone()
        };
        assert_eq!(agent_command(&single)[10], "huge-pages");
        let plain = Config {
            huge_pages: false,
            ..single
        };
        assert_eq!(agent_command(&plain)[10], "");
        // A trust of 300 KB travels in parts, whole, cut at characters.
        let pem = format!("-----BEGIN CERTIFICATE-----\n{}é\n", "A".repeat(300_000));
        config.egress.ca_bundle = Some(crate::config::CaBundle {
            path: "/ca.pem".into(),
            pem: pem.clone(),
        });
        let command = agent_command(&config);
        assert_eq!(command[12..].concat(), pem);
        assert!(command.len() > 13);
        // Each argv entry within MAX_ARG_STRLEN (128 KiB).
        assert!(command.iter().all(|arg| arg.len() < 128 * 1024));
    }
}

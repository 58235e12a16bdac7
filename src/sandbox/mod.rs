//! One sandbox: a started container whose PID 1 is the agent (`agent.py`).
//!
//! Owns the host side of the agent protocol: send a run, collect its output
//! within bounds, wait for the agent's reset confirmation. It does not decide
//! whether a container is reused or recycled (the pool does, from the
//! [`SandboxFailure`] or [`RunDone`] returned here), and it never calls the
//! engine after start: a run is two pipes, no engine requests.

pub mod protocol;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::runtime::{InputSink, OutputChunk, OutputStream, StartedContainer};
use protocol::{
    AgentFrame, AgentFrameKind, FrameDecoder, ProtocolError, Ready, ResetFailed, RunDone, RunFrame,
    encode_answer,
};

/// The agent's source and its one argument, the source of the sandbox's
/// `mcp` package: injected as `python3 -c AGENT RUNTIME` (no bind mounts).
pub const AGENT: [&str; 2] = [include_str!("agent.py"), include_str!("mcp_runtime.py")];

/// Answers the tool calls a run makes (the proxy implements it; the sandbox
/// only relays). Takes the call's JSON as the agent sent it and returns the
/// answer JSON, which carries the call's `id`.
pub trait ToolCalls: Send + Sync {
    fn call(&self, request: Bytes) -> BoxFuture<'_, serde_json::Value>;
}

/// What a run with MCP servers needs: the metadata the sandbox builds its
/// `mcp` package from, and who answers the calls.
#[derive(Clone, Copy)]
pub struct RunProxy<'a> {
    pub metadata: &'a serde_json::Value,
    pub calls: &'a dyn ToolCalls,
}

/// How much of the agent's own stderr (its crash reports) we keep for logs.
const AGENT_STDERR_KEEP: usize = 4096;

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
}

/// A started container with the agent idle in it.
pub struct Sandbox {
    id: String,
    input: InputSink,
    output: OutputStream,
    decoder: FrameDecoder,
    created: Instant,
    runs: u32,
    /// The agent's own stderr: only written when it crashes.
    agent_stderr: String,
    python_version: String,
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
            input: container.input,
            output: container.output,
            decoder: FrameDecoder::default(),
            created: Instant::now(),
            runs: 0,
            agent_stderr: String::new(),
            python_version: String::new(),
        };
        let ready = sandbox.await_ready(timeout).await?;
        sandbox.python_version = ready.python.unwrap_or_default();
        Ok(sandbox)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
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

    /// A zero-cost liveness check of an idle sandbox: the agent says nothing
    /// while idle, so a closed stream or any output means it is not usable.
    pub fn is_idle_and_alive(&mut self) -> bool {
        match self.output.next().now_or_never() {
            None => true,
            Some(Some(Ok(OutputChunk::Stderr(bytes)))) => {
                self.note_agent_stderr(&bytes);
                false
            }
            Some(_) => false,
        }
    }

    /// Runs `code`, collecting its output into `output` (capped at
    /// `max_output_bytes` per stream) until the agent reports it done or
    /// `timeout` passes. The deadline is the host's: it holds whatever the
    /// code does to the agent. Tool calls are answered concurrently while
    /// output keeps draining; when the run ends (or the future is dropped),
    /// calls still in flight are dropped, which cancels them.
    pub async fn run(
        &mut self,
        code: &str,
        max_output_bytes: u64,
        timeout: Duration,
        proxy: Option<RunProxy<'_>>,
        output: &mut CapturedOutput,
    ) -> Result<RunDone, SandboxFailure> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.runs += 1;
        let frame = RunFrame {
            code,
            max_output_bytes,
            proxy: proxy.map(|p| p.metadata),
        }
        .encode();
        self.input.write_all(&frame).await?;
        self.input.flush().await?;
        let cap = usize::try_from(max_output_bytes).unwrap_or(usize::MAX);
        let mut calls = FuturesUnordered::new();
        loop {
            let event = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    frame = self.next_frame() => Event::Frame(frame),
                    Some(answer) = calls.next(), if !calls.is_empty() => Event::Answer(answer),
                }
            });
            let frame = match event.await {
                Err(_) => return Err(SandboxFailure::Timeout(timeout)),
                Ok(Event::Answer(answer)) => {
                    self.input.write_all(&encode_answer(&answer)).await?;
                    self.input.flush().await?;
                    continue;
                }
                Ok(Event::Frame(frame)) => frame?,
            };
            match frame.kind {
                AgentFrameKind::Stdout => output.stdout.push(&frame.payload, cap),
                AgentFrameKind::Stderr => output.stderr.push(&frame.payload, cap),
                // Without servers, nothing in the sandbox is wired to call: a
                // hand-made request just gets no answer.
                AgentFrameKind::Call => {
                    if let Some(proxy) = proxy {
                        calls.push(proxy.calls.call(frame.payload));
                    }
                }
                AgentFrameKind::Done => {
                    let done: RunDone = protocol::parse_payload("done", &frame.payload)?;
                    output.stdout.dropped += done.dropped_stdout;
                    output.stderr.dropped += done.dropped_stderr;
                    return Ok(done);
                }
                kind => return Err(ProtocolError::Unexpected(kind).into()),
            }
        }
    }

    /// Waits for the agent to confirm it is idle and clean again.
    pub async fn await_ready(&mut self, timeout: Duration) -> Result<Ready, SandboxFailure> {
        let frame = match tokio::time::timeout(timeout, self.next_frame()).await {
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

    async fn next_frame(&mut self) -> Result<AgentFrame, SandboxFailure> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            match self.output.next().await {
                Some(Ok(OutputChunk::Stdout(bytes))) => self.decoder.extend(&bytes),
                Some(Ok(OutputChunk::Stderr(bytes))) => self.note_agent_stderr(&bytes),
                Some(Err(error)) => return Err(error.into()),
                None => {
                    return Err(SandboxFailure::AgentDied {
                        agent_stderr: std::mem::take(&mut self.agent_stderr),
                    });
                }
            }
        }
    }

    fn note_agent_stderr(&mut self, bytes: &[u8]) {
        let room = AGENT_STDERR_KEEP.saturating_sub(self.agent_stderr.len());
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(room)]);
        tracing::warn!(sandbox = self.short_id(), agent_stderr = %text.trim_end(), "sandbox agent wrote to stderr");
        self.agent_stderr.push_str(&text);
    }
}

enum Event {
    Frame(Result<AgentFrame, SandboxFailure>),
    Answer(serde_json::Value),
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
        assert!(AGENT[0].contains("os.getpid() != 1"));
        // Each source travels as one argv entry (MAX_ARG_STRLEN is 128 KiB).
        assert!(AGENT.iter().all(|source| source.len() < 128 * 1024));
    }
}

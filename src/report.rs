//! The result of a `run_python` call, and how it is shown to a model.
//!
//! Owns the report's shape (the tool's `structuredContent` and output schema),
//! the status vocabulary and the three text renderings (compact, TOON, JSON).
//! Pure: it never sees a container, only what the pool measured.

use bytes::Bytes;
use serde::Serialize;

use crate::artifacts;

use crate::config::OutputMode;

/// How a run ended, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The code ran to the end (or called `sys.exit(0)`).
    Success,
    /// The code raised, exited non-zero, was killed by a signal, or the
    /// sandbox failed underneath it.
    Error,
    /// The code was still running at its deadline and was killed.
    Timeout,
    /// The code exceeded the sandbox's memory limit.
    Oom,
    /// The request was rejected before anything ran.
    ValidationError,
    /// The client cancelled the call (`notifications/cancelled`) or went
    /// away before its result: a status for logs and metrics, never sent.
    Cancelled,
}

impl RunStatus {
    /// The whole status vocabulary: metrics, logs and the tool's output
    /// schema (through [`Self::is_reported`]) all derive from this list.
    pub const ALL: [Self; 6] = [
        Self::Success,
        Self::Error,
        Self::Timeout,
        Self::Oom,
        Self::ValidationError,
        Self::Cancelled,
    ];

    /// Whether a result can carry this status (all but `cancelled`).
    pub fn is_reported(self) -> bool {
        self != Self::Cancelled
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Oom => "oom",
            Self::ValidationError => "validation_error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The structured result of one `run_python` call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub status: RunStatus,
    /// Everything the code wrote to stdout (fd 1), decoded as UTF-8 with
    /// replacement characters; ends with a truncation marker when cut.
    pub stdout: String,
    /// Everything the code wrote to stderr (fd 2), tracebacks included.
    pub stderr: String,
    /// Process exit code; negative for a signal (-11: SIGSEGV); absent when
    /// the code did not run to an exit (validation, timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Wall time of the run inside the sandbox, as the host measured it.
    pub duration_ms: f64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// What went wrong, in one line, when status is not `success`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The images the run made (`display()`, `plt.show()`, figures left
    /// open): described here, their PNGs travel as image content.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    /// The files the run left under `/workspace/out`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<OutputFile>,
    /// What did not come back, and why (images or files over their bounds).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The session the call ran in, if it named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionReport>,
    /// The network connections the run asked for (the first of them), and
    /// how each went.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<crate::egress::Connection>,
    /// What the call's `packages` installed, and how long it took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<crate::sandbox::protocol::Installed>,
    /// The files the call's `save` wrote to the host, with their sizes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub saved: Vec<crate::hostfiles::Saved>,
    /// The MCP tool calls the run made (the first of them), when it made any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<ToolCallList>,
    /// The container the code ran in (for the audit log, not the result).
    #[serde(skip)]
    pub sandbox: Option<String>,
}

/// The tool calls of one run, as its result lists them: the first
/// [`ToolCallList::LISTED`], and how many there were.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolCallList {
    pub total: u64,
    pub calls: Vec<ToolCall>,
}

/// One tool call of a run and how it went.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCall {
    pub server: String,
    pub tool: String,
    /// `ok`, `error` (the tool's or the call's), `denied` (the tool policy),
    /// `declined` (an `ask` rule's question, declined or unanswered) or
    /// `over_budget` (a budget of the run).
    pub outcome: &'static str,
    pub duration_ms: f64,
    /// The call's argument bytes and its result's.
    pub bytes: u64,
    /// The arguments' JSON text, cut at [`ToolCall::ARGUMENT_BYTES`]:
    /// for the audit log and the console, not the result (the model wrote them).
    #[serde(skip)]
    pub arguments: String,
}

impl ToolCall {
    /// What a call keeps of its arguments (their JSON text), for the audit
    /// log and the console.
    pub const ARGUMENT_BYTES: usize = 1024;

    /// A call of `server`'s `tool` begun at `started`, with `bytes` in and
    /// out, its `arguments` kept up to [`Self::ARGUMENT_BYTES`].
    pub fn new(
        server: &str,
        tool: &str,
        outcome: &'static str,
        started: std::time::Instant,
        bytes: usize,
        arguments: &[u8],
    ) -> Self {
        let kept = &arguments[..arguments.len().min(Self::ARGUMENT_BYTES)];
        Self {
            server: server.to_owned(),
            tool: tool.to_owned(),
            outcome,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
            bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
            arguments: String::from_utf8_lossy(kept).into_owned(),
        }
    }
}

impl ToolCallList {
    /// Calls listed in a result; past them only the total grows.
    pub const LISTED: usize = 100;

    /// Counts a call, and lists it (made by `call`) while the list has room.
    pub fn push_with(&mut self, call: impl FnOnce() -> ToolCall) {
        self.total += 1;
        if self.calls.len() < Self::LISTED {
            self.calls.push(call());
        }
    }

    /// The compact text's line: `tool calls: 3 (2 ok, 1 denied)`.
    fn render(&self, text: &mut String) {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for call in &self.calls {
            match counts.iter_mut().find(|(o, _)| *o == call.outcome) {
                Some((_, n)) => *n += 1,
                None => counts.push((call.outcome, 1)),
            }
        }
        let listed: Vec<String> = counts.iter().map(|(o, n)| format!("{n} {o}")).collect();
        let more = self.total - self.calls.len() as u64;
        text.push_str(&format!(
            "tool calls: {} ({}",
            self.total,
            listed.join(", ")
        ));
        if more > 0 {
            text.push_str(&format!(", {more} more not listed"));
        }
        text.push(')');
    }
}

/// The session of a call: how the call found it, and whether it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionReport {
    pub name: String,
    #[serde(flatten)]
    pub found: Found,
    /// Why the session ended with this call (the next call starts it anew).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

/// How a call found its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "lost")]
pub enum Found {
    /// No session had this name: this call started it.
    New,
    /// The state of its earlier calls is there.
    Continued,
    /// It had ended (the text says why): this call started it anew, and
    /// nothing of the earlier calls is there.
    Lost(String),
}

/// An image of the run. Only its description is serialized: base64 in
/// structured content would be read by clients as text, into the context.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub index: usize,
    pub mime_type: &'static str,
    pub bytes: usize,
    pub width: u32,
    pub height: u32,
    #[serde(skip)]
    pub data: Bytes,
}

impl Image {
    pub fn png(index: usize, data: Bytes, width: u32, height: u32) -> Self {
        Self {
            index,
            mime_type: "image/png",
            bytes: data.len(),
            width,
            height,
            data,
        }
    }
}

/// A file the run left under `/workspace/out`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputFile {
    /// Relative to `/workspace/out`.
    pub path: String,
    pub bytes: usize,
    pub mime_type: &'static str,
    /// The `artifact://` resource that serves it, while it is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Whether its text also comes inline in the result.
    pub inline: bool,
    #[serde(skip)]
    pub data: Bytes,
    /// Its text, when small and text (then it also comes inline).
    #[serde(skip)]
    pub text: Option<String>,
}

impl OutputFile {
    pub fn new(path: String, data: Bytes) -> Self {
        Self {
            mime_type: artifacts::mime_type(&path),
            bytes: data.len(),
            path,
            uri: None,
            inline: false,
            data,
            text: None,
        }
    }
}

impl RunReport {
    /// A report for a request rejected before it ran.
    pub fn rejected(status: RunStatus, error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::nothing_ran(status)
        }
    }

    /// A report of a call that ran no code (and no error).
    pub fn nothing_ran(status: RunStatus) -> Self {
        Self {
            status,
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
            duration_ms: 0.0,
            stdout_truncated: false,
            stderr_truncated: false,
            error: None,
            images: Vec::new(),
            files: Vec::new(),
            notes: Vec::new(),
            session: None,
            egress: Vec::new(),
            packages: None,
            saved: Vec::new(),
            tool_calls: None,
            sandbox: None,
        }
    }

    /// The text content for the model, in the configured mode.
    pub fn render(&self, mode: OutputMode) -> String {
        match mode {
            OutputMode::Compact => self.render_compact(),
            OutputMode::Json => serde_json::to_string(self).expect("a report always serializes"),
            OutputMode::Toon => toon_format::encode_default(self).unwrap_or_else(|_| {
                serde_json::to_string(self).expect("a report always serializes")
            }),
        }
    }

    /// stdout; then a `stderr:` block; then `status:`, `exit:` and `error:`
    /// lines when the run did not succeed.
    fn render_compact(&self) -> String {
        let mut text = String::with_capacity(self.stdout.len() + self.stderr.len() + 64);
        text.push_str(&self.stdout);
        if !self.stderr.is_empty() {
            end_line(&mut text);
            text.push_str("stderr:\n");
            text.push_str(&self.stderr);
        }
        if self.status != RunStatus::Success {
            end_line(&mut text);
            text.push_str("status: ");
            text.push_str(self.status.as_str());
            if let Some(code) = self.exit_code {
                text.push_str(&format!("\nexit: {code}"));
            }
            // A traceback already ends with the exception line: don't repeat it.
            if let Some(error) = self
                .error
                .as_deref()
                .filter(|e| !self.stderr.trim_end().ends_with(e))
            {
                text.push_str("\nerror: ");
                text.push_str(error);
            }
        }
        for saved in &self.saved {
            end_line(&mut text);
            text.push_str(&format!(
                "saved {} to {} ({} bytes)",
                saved.from, saved.to, saved.bytes
            ));
        }
        for note in &self.notes {
            end_line(&mut text);
            text.push_str("note: ");
            text.push_str(note);
        }
        if let Some(session) = &self.session {
            end_line(&mut text);
            session.render(&mut text);
        }
        if let Some(packages) = &self.packages {
            end_line(&mut text);
            render_packages(packages, &mut text);
        }
        if let Some(calls) = self.tool_calls.as_ref().filter(|c| c.total > 0) {
            end_line(&mut text);
            calls.render(&mut text);
        }
        if text.is_empty() {
            text.push_str(if self.images.is_empty() && self.files.is_empty() {
                "(no output)"
            } else {
                "(no text output)"
            });
        }
        text
    }
}

impl SessionReport {
    /// `session NAME: continued`, `…: new`, `…: lost (why); …`, then `, ended (why)`.
    fn render(&self, text: &mut String) {
        text.push_str("session ");
        text.push_str(&self.name);
        match &self.found {
            Found::New => text.push_str(": new"),
            Found::Continued => text.push_str(": continued"),
            Found::Lost(why) => {
                text.push_str(": lost (");
                text.push_str(why);
                text.push_str("); this call started it anew, without the earlier calls' state");
            }
        }
        if let Some(why) = &self.ended {
            text.push_str("; ended (");
            text.push_str(why);
            text.push(')');
        }
    }
}

/// `installed: six 1.16.0, tabulate 0.9.0 (840 ms)`, or `installed:
/// nothing new (…)` when every requirement was there already.
fn render_packages(packages: &crate::sandbox::protocol::Installed, text: &mut String) {
    text.push_str("installed: ");
    if packages.installed.is_empty() {
        text.push_str("nothing new");
    }
    for (i, package) in packages.installed.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(&package.name);
        text.push(' ');
        text.push_str(&package.version);
    }
    text.push_str(&format!(" ({} ms)", packages.duration_ms));
}

fn end_line(text: &mut String) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
}

/// Decodes captured bytes for the report (reusing the buffer when it is
/// valid UTF-8, as it nearly always is), appending a marker when cut.
pub fn decode_output(bytes: Vec<u8>, dropped: u64, stream: &str, limit: u64) -> String {
    let mut text = String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
    if dropped > 0 {
        end_line(&mut text);
        text.push_str(&format!(
            "[{stream} truncated: {dropped} more bytes not shown \
             (limit {limit} bytes, MCP_BRIDGE_MAX_OUTPUT_BYTES)]"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: RunStatus) -> RunReport {
        RunReport {
            stdout: "42\n".into(),
            exit_code: Some(0),
            duration_ms: 1.25,
            ..RunReport::nothing_ran(status)
        }
    }

    #[test]
    fn compact_success_is_just_stdout() {
        assert_eq!(
            report(RunStatus::Success).render(OutputMode::Compact),
            "42\n"
        );
        let empty = RunReport {
            stdout: String::new(),
            ..report(RunStatus::Success)
        };
        assert_eq!(empty.render(OutputMode::Compact), "(no output)");
    }

    #[test]
    fn compact_error_has_stderr_block_and_status_lines() {
        let failed = RunReport {
            stdout: "partial".into(),
            stderr: "Traceback (most recent call last):\nZeroDivisionError: division by zero\n"
                .into(),
            exit_code: Some(1),
            error: Some("ZeroDivisionError: division by zero".into()),
            ..report(RunStatus::Error)
        };
        assert_eq!(
            failed.render(OutputMode::Compact),
            "partial\nstderr:\nTraceback (most recent call last):\n\
             ZeroDivisionError: division by zero\nstatus: error\nexit: 1"
        );
        let timeout = RunReport {
            stdout: String::new(),
            exit_code: None,
            error: Some("timed out after 1s".into()),
            ..report(RunStatus::Timeout)
        };
        assert_eq!(
            timeout.render(OutputMode::Compact),
            "status: timeout\nerror: timed out after 1s"
        );
    }

    #[test]
    fn json_and_toon_carry_the_structured_fields() {
        let r = report(RunStatus::Success);
        let json: serde_json::Value = serde_json::from_str(&r.render(OutputMode::Json)).unwrap();
        assert_eq!(json["status"], "success");
        assert_eq!(json["exitCode"], 0);
        assert_eq!(json["stdoutTruncated"], false);
        assert!(json.get("error").is_none());
        let toon = r.render(OutputMode::Toon);
        assert!(toon.contains("status: success"), "{toon}");
        assert!(toon.contains("exitCode: 0"), "{toon}");
    }

    #[test]
    fn truncation_marker_and_lossy_decoding() {
        let text = decode_output(b"abc\xff".to_vec(), 10, "stdout", 4);
        assert!(
            text.starts_with("abc\u{fffd}\n[stdout truncated: 10 more bytes"),
            "{text}"
        );
        assert_eq!(decode_output(b"ok".to_vec(), 0, "stdout", 4), "ok");
    }

    #[test]
    fn status_names_match_their_serialized_form() {
        for status in RunStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn the_session_says_how_the_call_found_it_and_whether_it_ended() {
        let session = |found, ended: Option<&str>| RunReport {
            session: Some(SessionReport {
                name: "eda".into(),
                found,
                ended: ended.map(Into::into),
            }),
            ..report(RunStatus::Success)
        };
        let continued = session(Found::Continued, None);
        assert_eq!(
            continued.render(OutputMode::Compact),
            "42\nsession eda: continued"
        );
        let json: serde_json::Value =
            serde_json::from_str(&continued.render(OutputMode::Json)).unwrap();
        assert_eq!(
            json["session"],
            serde_json::json!({"name": "eda", "state": "continued"})
        );
        let lost = session(
            Found::Lost("it was idle for 10m".into()),
            Some("ended as asked"),
        );
        assert_eq!(
            lost.render(OutputMode::Compact),
            "42\nsession eda: lost (it was idle for 10m); this call started it anew, without \
             the earlier calls' state; ended (ended as asked)"
        );
        let json: serde_json::Value = serde_json::from_str(&lost.render(OutputMode::Json)).unwrap();
        assert_eq!(
            json["session"],
            serde_json::json!({"name": "eda", "state": "lost", "lost": "it was idle for 10m",
                               "ended": "ended as asked"})
        );
        assert!(lost.render(OutputMode::Toon).contains("state: lost"));
    }
}

//! The audit log: every call as one JSON line, in a file that rotates by
//! size and stays within its bound.
//!
//! Owns the [`CallRecord`] (what one call was: whom it was for, its code cut
//! at a bound with its hash and full length, the heads of what it printed,
//! its images and files, each tool call with its arguments cut, its network
//! connections, its sandbox), the bounds of each field, and the log file:
//! written by a thread of its own from a bounded queue, so a slow or full
//! disk never holds a run, rotated at a quarter of `MCP_BRIDGE_AUDIT_LOG_BYTES`
//! (three rotated files kept; servers sharing the file rotate it one at a
//! time, under a lock beside it), reopened when something else moved it. A
//! record the queue has no room for is dropped and counted; a write that
//! fails (a full disk) is counted and warned of, at most once a minute: the
//! call's result is never touched. The log holds what the code sent,
//! secrets in tool arguments included: it is not the log's to judge them.
//!
//! It sees no container, request in flight or client: [`crate::call`]
//! builds the record, [`crate::console`] keeps recent ones in memory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::AuditSettings;
use crate::metrics;
#[cfg(doc)]
use crate::report::ToolCall;
use crate::report::{RunReport, RunStatus, ToolCallList};

/// The code a record keeps, from its start.
pub const CODE_BYTES: usize = 64 * 1024;
/// What a record keeps of stdout, and of stderr.
pub const OUTPUT_BYTES: usize = 8 * 1024;
/// The first line of the code, as a list shows it.
const HEAD_CHARS: usize = 120;
/// Records waiting for the writer; past this they are dropped. A record
/// holds at most ~200 KiB (code, output heads, tool arguments), so a writer
/// stalled for good (a FIFO nobody reads, a hung mount) pins at most ~50 MiB.
const QUEUE: usize = 256;
/// Rotated files kept beside the log (`audit.jsonl.1` … `.3`).
const ROTATED: u32 = 3;
/// How long a rotation waits for another server's to end.
const ROTATION_LOCK_WAIT: Duration = Duration::from_secs(2);
/// At most one warning about a failed write per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Text cut at a bound, with how long it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cut {
    pub text: String,
    /// The whole text's length in bytes.
    pub bytes: usize,
    pub truncated: bool,
}

impl Cut {
    /// The first `max` bytes of `text` (at a character boundary).
    pub fn new(text: &str, max: usize) -> Self {
        let head = head(text, max);
        Self {
            text: head.to_owned(),
            bytes: text.len(),
            truncated: head.len() < text.len(),
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a
/// character boundary.
pub fn head(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A call as it started: what is known before it runs. Made once per
/// call; the console lists it while it runs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallStart {
    pub id: u64,
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    #[serde(skip)]
    pub started_at: SystemTime,
    #[serde(skip)]
    pub started: Instant,
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub servers: Vec<String>,
    pub code: String,
    pub code_bytes: usize,
    pub code_sha256: String,
    pub code_truncated: bool,
    /// The code's first non-blank line, at most [`HEAD_CHARS`] characters.
    #[serde(skip)]
    pub head: String,
}

impl CallStart {
    pub fn new(
        id: u64,
        principal: &str,
        session: Option<&str>,
        servers: &[String],
        code: &str,
    ) -> Self {
        let started_at = SystemTime::now();
        let cut = Cut::new(code, CODE_BYTES);
        let first = code
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("");
        Self {
            id,
            time: humantime::format_rfc3339_millis(started_at).to_string(),
            started_at,
            started: Instant::now(),
            principal: principal.to_owned(),
            session: session.map(str::to_owned),
            servers: servers.to_vec(),
            code: cut.text,
            code_bytes: cut.bytes,
            code_sha256: hex::encode(Sha256::digest(code.as_bytes())),
            code_truncated: cut.truncated,
            head: first.trim_end().chars().take(HEAD_CHARS).collect(),
        }
    }

    /// Milliseconds since the Unix epoch, for a browser's clock.
    pub fn started_ms(&self) -> f64 {
        self.started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64() * 1e3)
    }
}

/// One image of a call, described (its PNG is the console's to keep, not
/// the record's: the log's queue holds records, never their images).
#[derive(Debug, Clone, Serialize)]
pub struct ImageEntry {
    pub index: usize,
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
}

/// One file the call returned.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// One tool call of the run, its arguments cut at [`ToolCall::ARGUMENT_BYTES`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallEntry {
    pub server: String,
    pub tool: String,
    pub outcome: &'static str,
    pub duration_ms: f64,
    pub bytes: u64,
    pub arguments: String,
}

/// A finished call: the audit log's line, the console's detail.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    #[serde(flatten)]
    pub start: Arc<CallStart>,
    pub status: RunStatus,
    /// From the call's start to its answer, as the host measured it.
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub stdout: Cut,
    pub stderr: Cut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallEntry>,
    /// Tool calls made, listed or not.
    pub tool_calls_total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<crate::egress::Connection>,
    /// The sandbox's container, when the code went to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl CallRecord {
    /// The record of a call that ended with `report`.
    pub fn finished(start: Arc<CallStart>, report: &RunReport) -> Self {
        let (tool_calls, tool_calls_total) = entries(report.tool_calls.as_ref());
        Self {
            duration_ms: start.started.elapsed().as_secs_f64() * 1e3,
            start,
            status: report.status,
            exit_code: report.exit_code,
            error: report.error.clone(),
            stdout: Cut::new(&report.stdout, OUTPUT_BYTES),
            stderr: Cut::new(&report.stderr, OUTPUT_BYTES),
            images: report
                .images
                .iter()
                .map(|image| ImageEntry {
                    index: image.index,
                    width: image.width,
                    height: image.height,
                    bytes: image.bytes,
                })
                .collect(),
            files: report
                .files
                .iter()
                .map(|file| FileEntry {
                    path: file.path.clone(),
                    bytes: file.bytes,
                    uri: file.uri.clone(),
                })
                .collect(),
            tool_calls,
            tool_calls_total,
            egress: report.egress.clone(),
            sandbox: report.sandbox.clone(),
            notes: report.notes.clone(),
        }
    }

    /// The record of a call whose client went away before its answer: the
    /// tool calls its run had made (`so_far`) and its sandbox, if it had one
    /// (its output and connections are not known).
    pub fn cancelled(
        start: Arc<CallStart>,
        so_far: Option<&ToolCallList>,
        sandbox: Option<String>,
    ) -> Self {
        let empty = || Cut::new("", 0);
        let (tool_calls, tool_calls_total) = entries(so_far);
        Self {
            duration_ms: start.started.elapsed().as_secs_f64() * 1e3,
            start,
            status: RunStatus::Cancelled,
            exit_code: None,
            error: Some("the client cancelled the call or went away".into()),
            stdout: empty(),
            stderr: empty(),
            images: Vec::new(),
            files: Vec::new(),
            tool_calls,
            tool_calls_total,
            egress: Vec::new(),
            sandbox,
            notes: Vec::new(),
        }
    }

    /// What the record holds in memory, roughly: its texts.
    pub fn weight(&self) -> usize {
        let start = &self.start;
        let texts = start.code.len() + start.head.len() + self.stdout.text.len();
        let calls: usize = self
            .tool_calls
            .iter()
            .map(|call| call.arguments.len() + call.server.len() + call.tool.len() + 64)
            .sum();
        let notes: usize = self.notes.iter().map(String::len).sum();
        let described = self.images.len() * 32 + self.files.len() * 64;
        512 + texts + self.stderr.text.len() + calls + notes + described
    }
}

/// A run's tool calls as records list them, and how many there were.
fn entries(list: Option<&ToolCallList>) -> (Vec<ToolCallEntry>, u64) {
    let Some(list) = list else {
        return (Vec::new(), 0);
    };
    let calls = list
        .calls
        .iter()
        .map(|call| ToolCallEntry {
            server: call.server.clone(),
            tool: call.tool.clone(),
            outcome: call.outcome,
            duration_ms: call.duration_ms,
            bytes: call.bytes,
            arguments: call.arguments.clone(),
        })
        .collect();
    (calls, list.total)
}

/// The audit log's writer: records go in through a bounded queue to a
/// thread of its own that writes them. Cheap to share.
#[derive(Debug)]
pub struct AuditLog {
    queue: Mutex<Option<SyncSender<Arc<CallRecord>>>>,
    /// Told when the writer has written everything it was sent.
    done: Mutex<Option<Receiver<()>>>,
    path: Option<PathBuf>,
}

impl AuditLog {
    /// No log (`MCP_BRIDGE_AUDIT_LOG=off`).
    pub fn off() -> Self {
        Self {
            queue: Mutex::new(None),
            done: Mutex::new(None),
            path: None,
        }
    }

    /// Starts the writer for `settings`. Never fails: a folder or file that
    /// cannot be made is a warning now and a failed write later.
    pub fn open(settings: &AuditSettings) -> Self {
        let Some(path) = settings.path.clone() else {
            return Self::off();
        };
        if let Some(dir) = path.parent()
            && let Err(error) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
        {
            tracing::warn!(dir = %dir.display(), %error, "audit log folder cannot be made (MCP_BRIDGE_AUDIT_LOG)");
        }
        let (queue, records) = std::sync::mpsc::sync_channel::<Arc<CallRecord>>(QUEUE);
        let (finished, done) = std::sync::mpsc::channel();
        let mut file = LogFile::new(path.clone(), settings.bytes);
        let spawned = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                for record in records {
                    file.append(&record);
                }
                let _ = finished.send(());
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "audit log writer not started: no audit log");
            return Self::off();
        }
        Self {
            queue: Mutex::new(Some(queue)),
            done: Mutex::new(Some(done)),
            path: Some(path),
        }
    }

    /// The log's file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Queues `record` for the log; never waits. A full queue drops it.
    pub fn record(&self, record: Arc<CallRecord>) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queue.as_ref() else {
            return;
        };
        match queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics::observe_audit("dropped"),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Takes no more records and waits (at most `within`) for the writer
    /// to write those it has.
    pub fn close(&self, within: Duration) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(done) = done {
            let _ = done.recv_timeout(within);
        }
    }
}

/// The log file as the writer thread holds it.
struct LogFile {
    path: PathBuf,
    /// A file is rotated before it would pass this size.
    file_bytes: u64,
    /// The open file and its inode (to see it moved or removed).
    open: Option<(File, u64)>,
    last_warning: Option<Instant>,
    line: Vec<u8>,
}

impl LogFile {
    fn new(path: PathBuf, total_bytes: u64) -> Self {
        Self {
            path,
            file_bytes: total_bytes / u64::from(ROTATED + 1),
            open: None,
            last_warning: None,
            line: Vec::new(),
        }
    }

    /// Writes one line for `record`, counted and, when it fails, warned of.
    fn append(&mut self, record: &CallRecord) {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).expect("a record serializes");
        self.line.push(b'\n');
        match self.write_line() {
            Ok(()) => metrics::observe_audit("written"),
            Err(error) => {
                metrics::observe_audit("failed");
                self.open = None;
                let now = Instant::now();
                if self
                    .last_warning
                    .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
                {
                    self.last_warning = Some(now);
                    tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        "audit log not written (this call's line is lost; runs go on)"
                    );
                }
            }
        }
    }

    fn write_line(&mut self) -> std::io::Result<()> {
        let line = std::mem::take(&mut self.line);
        let written = self.write_bytes(&line);
        self.line = line;
        written
    }

    fn write_bytes(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.reopen_if_moved()?;
        let (file, _) = self.open.as_mut().expect("reopened");
        let meta = file.metadata()?;
        // Only a regular file rotates: a FIFO or a device is a stream.
        if meta.is_file() && meta.len() > 0 && meta.len() + line.len() as u64 > self.file_bytes {
            self.rotate(meta.ino())?;
            self.reopen_if_moved()?;
        }
        let (file, _) = self.open.as_mut().expect("reopened");
        file.write_all(line)
    }

    /// Opens the path again when it is not the file held (never opened,
    /// rotated by another server, removed).
    fn reopen_if_moved(&mut self) -> std::io::Result<()> {
        let current = std::fs::metadata(&self.path).ok().map(|meta| meta.ino());
        if let Some((_, inode)) = &self.open
            && current == Some(*inode)
        {
            return Ok(());
        }
        // Not through a link planted where the log goes.
        let nofollow = rustix::fs::OFlags::NOFOLLOW.bits();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(i32::try_from(nofollow).expect("a flag bit"))
            .open(&self.path)?;
        let inode = file.metadata()?.ino();
        self.open = Some((file, inode));
        Ok(())
    }

    /// `audit.jsonl` becomes `.1`, `.1` becomes `.2`, …; the oldest goes;
    /// unless the file there is no longer `full` (the inode found too large).
    /// Servers sharing one log rotate one at a time, under a lock on
    /// `audit.jsonl.lock`: two that found it full at once would otherwise
    /// both rotate, and the second would push a generation out for a file
    /// that had just been started.
    fn rotate(&mut self, full: u64) -> std::io::Result<()> {
        self.open = None;
        let _lock = rotation_lock(&self.path);
        let current = std::fs::symlink_metadata(&self.path).map(|meta| meta.ino());
        if current.ok() != Some(full) {
            return Ok(()); // another server rotated it: write to the new one
        }
        for n in (1..ROTATED).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))
    }
}

/// The lock on `<log>.lock` while this server rotates, when it
/// can be had within [`ROTATION_LOCK_WAIT`]. Past that (a server stopped
/// mid-rotation, a process holding it for good), or where the file
/// system has no locks, the rotation goes on without it: a log that
/// never rotated would pass its bound. Opened without blocking (a FIFO
/// put there) or following a link.
fn rotation_lock(path: &Path) -> Option<std::os::fd::OwnedFd> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let lock = rustix::fs::open(
        with_suffix(path, ".lock"),
        flags | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    );
    let give_up = Instant::now() + ROTATION_LOCK_WAIT;
    let error = match lock {
        Err(error) => error,
        Ok(lock) => loop {
            match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Some(lock),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => break error,
            }
        },
    };
    tracing::warn!(path = %path.display(), %error,
            "audit log rotated without its lock (another server sharing it may rotate it too)");
    None
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    with_suffix(path, &format!(".{n}"))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Image, OutputFile, ToolCall};
    use bytes::Bytes;

    fn start(code: &str) -> Arc<CallStart> {
        Arc::new(CallStart::new(
            7,
            "alice",
            Some("eda"),
            &["time".into()],
            code,
        ))
    }

    fn report() -> RunReport {
        let mut report = RunReport::rejected(RunStatus::Success, "");
        report.error = None;
        report.stdout = "42\n".into();
        report.images = vec![Image::png(0, Bytes::from_static(b"\x89PNG"), 2, 3)];
        report.files = vec![OutputFile::new(
            "a.csv".into(),
            Bytes::from_static(b"x,y\n"),
        )];
        let mut calls = ToolCallList::default();
        calls.push_with(|| ToolCall {
            server: "time".into(),
            tool: "now".into(),
            outcome: "ok",
            duration_ms: 1.5,
            bytes: 30,
            arguments: r#"{"tz":"UTC"}"#.into(),
        });
        report.tool_calls = Some(calls);
        report.sandbox = Some("mcp-code-exec-1-2-3".into());
        report
    }

    fn line(record: &CallRecord) -> serde_json::Value {
        serde_json::from_str(&serde_json::to_string(record).unwrap()).unwrap()
    }

    #[test]
    fn a_line_says_who_ran_what_and_how_it_went() {
        let record = CallRecord::finished(start("print(6*7)\n"), &report());
        let line = line(&record);
        for key in [
            "time",
            "id",
            "principal",
            "session",
            "servers",
            "code",
            "codeBytes",
            "codeSha256",
            "codeTruncated",
            "status",
            "durationMs",
            "stdout",
            "stderr",
            "images",
            "files",
            "toolCalls",
            "toolCallsTotal",
            "sandbox",
        ] {
            assert!(line.get(key).is_some(), "{key} missing from {line}");
        }
        assert_eq!(line["principal"], "alice");
        assert_eq!(line["status"], "success");
        assert_eq!(line["stdout"]["text"], "42\n");
        assert_eq!(
            line["codeSha256"],
            hex::encode(Sha256::digest(b"print(6*7)\n"))
        );
        assert_eq!(line["toolCalls"][0]["arguments"], r#"{"tz":"UTC"}"#);
        assert_eq!(line["images"][0]["bytes"], 4);
        assert_eq!(line["files"][0]["path"], "a.csv");
        assert!(humantime::parse_rfc3339(line["time"].as_str().unwrap()).is_ok());
        let cancelled = line_of_cancelled();
        assert_eq!(cancelled["status"], "cancelled");
        assert_eq!(cancelled["toolCalls"][0]["arguments"], r#"{"tz":"UTC"}"#);
        assert_eq!(cancelled["sandbox"], "mcp-code-exec-1-2-3");
    }

    fn line_of_cancelled() -> serde_json::Value {
        let so_far = report().tool_calls;
        let cancelled = CallRecord::cancelled(
            start("while True: pass"),
            so_far.as_ref(),
            Some("mcp-code-exec-1-2-3".into()),
        );
        line(&cancelled)
    }

    #[test]
    fn every_field_is_bounded() {
        let code = "é".repeat(CODE_BYTES); // two bytes each: cut mid-way
        let start = start(&code);
        assert!(start.code_truncated && start.code.len() <= CODE_BYTES);
        assert_eq!(start.code_bytes, code.len());
        assert!(start.code.chars().all(|c| c == 'é'), "cut at a boundary");
        assert!(start.head.chars().count() <= HEAD_CHARS);
        let mut report = report();
        report.stdout = "x".repeat(1 << 20);
        report.stderr = "\u{fffd}".repeat(1 << 18);
        let record = CallRecord::finished(start, &report);
        assert!(record.stdout.truncated && record.stdout.text.len() == OUTPUT_BYTES);
        assert_eq!(record.stdout.bytes, 1 << 20);
        assert!(record.stderr.text.len() <= OUTPUT_BYTES);
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.len() < CODE_BYTES + 4 * OUTPUT_BYTES, "{}", line.len());
    }

    #[test]
    fn hostile_text_cannot_break_the_line() {
        let code = "print('\\n{\"status\":\"success\"}')\n</script>\u{0}\u{1b}[2J";
        let mut report = report();
        report.stdout = "\n{\"forged\":true}\n\u{2028}".into();
        let text = serde_json::to_string(&CallRecord::finished(start(code), &report)).unwrap();
        assert!(!text.contains('\n'), "one line: {text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["code"], code);
        assert_eq!(back["stdout"]["text"], report.stdout);
    }

    fn settings(path: PathBuf, bytes: u64) -> AuditSettings {
        AuditSettings {
            path: Some(path),
            bytes,
        }
    }

    #[test]
    fn the_log_rotates_and_stays_within_its_bound() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&settings(path.clone(), 1 << 20));
        let code = "y = 1\n".repeat(4000); // ~24 KiB a line
        for _ in 0..400 {
            log.record(Arc::new(CallRecord::finished(start(&code), &report())));
        }
        log.close(Duration::from_secs(10));
        let mut total = 0;
        for name in [
            "audit.jsonl",
            "audit.jsonl.1",
            "audit.jsonl.2",
            "audit.jsonl.3",
        ] {
            let file = dir.join(name);
            let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(meta.len() <= (1 << 20) / 4, "{name}: {}", meta.len());
            assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
            for line in std::fs::read_to_string(&file).unwrap().lines() {
                let line: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(line["codeBytes"], code.len());
            }
            total += meta.len();
        }
        assert!(!dir.join("audit.jsonl.4").exists());
        assert!(total <= 1 << 20 && total > (1 << 20) / 2, "{total}");
    }

    #[test]
    fn two_servers_finding_the_log_full_at_once_rotate_it_once() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let (mut a, mut b) = (
            LogFile::new(path.clone(), 64 << 20),
            LogFile::new(path.clone(), 64 << 20),
        );
        let record = CallRecord::finished(start("1"), &report());
        a.append(&record);
        b.append(&record);
        let full = std::fs::metadata(&path).unwrap().ino();
        // Both found it full; the first rotates and writes anew…
        a.rotate(full).unwrap();
        a.append(&record);
        // …and the second, rotating after it, leaves the new file be.
        b.rotate(full).unwrap();
        b.append(&record);
        let lines = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_or(0, |text| text.lines().count())
        };
        assert_eq!(
            [lines("audit.jsonl"), lines("audit.jsonl.1")],
            [2, 2],
            "the new file holds both servers' next lines, .1 their first"
        );
        assert!(!dir.join("audit.jsonl.2").exists(), "rotated once");
    }

    #[test]
    fn a_held_or_planted_lock_never_stops_the_rotation() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let mut file = LogFile::new(path.clone(), 64 << 20);
        let record = CallRecord::finished(start("1"), &report());
        let rotate = |file: &mut LogFile| {
            file.append(&record);
            let full = std::fs::metadata(&path).unwrap().ino();
            file.rotate(full).unwrap();
        };
        // Held for good by another process (a server stopped mid-rotation).
        let held = File::create(dir.join("audit.jsonl.lock")).unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
        rotate(&mut file);
        assert!(dir.join("audit.jsonl.1").exists());
        // A FIFO in its place: not a writer thread blocked on its open.
        drop(held);
        std::fs::remove_file(dir.join("audit.jsonl.lock")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("audit.jsonl.lock"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        rotate(&mut file);
        assert!(dir.join("audit.jsonl.2").exists());
    }

    #[test]
    fn a_log_moved_away_is_opened_again() {
        let dir = tempdir();
        let path = dir.join("audit.jsonl");
        let mut file = LogFile::new(path.clone(), 64 << 20);
        let record = CallRecord::finished(start("1"), &report());
        file.append(&record);
        std::fs::rename(&path, dir.join("elsewhere")).unwrap();
        file.append(&record);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_full_disk_loses_the_line_not_the_run() {
        // /dev/full answers every write with ENOSPC, as a full disk does;
        // a device is never rotated (nor renamed).
        let mut file = LogFile::new(PathBuf::from("/dev/full"), 1 << 20);
        let record = CallRecord::finished(start("1"), &report());
        for _ in 0..3 {
            file.append(&record);
            assert!(file.open.is_none(), "the failed file is let go");
        }
        assert!(file.last_warning.is_some());
        assert!(Path::new("/dev/full").exists());
        assert!(!Path::new("/dev/full.1").exists());
    }

    #[test]
    fn a_full_queue_drops_records_and_never_waits() {
        let (queue, _records) = std::sync::mpsc::sync_channel(1);
        let log = AuditLog {
            queue: Mutex::new(Some(queue)),
            done: Mutex::new(None),
            path: None,
        };
        // Nobody reads the queue: a record that waited for room would hang here.
        for _ in 0..10 {
            log.record(Arc::new(CallRecord::cancelled(start("1"), None, None)));
        }
    }

    fn tempdir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mcp-audit-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

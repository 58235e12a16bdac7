//! The console: the calls of the last while, kept in memory for a person to
//! look over the agent's shoulder, and the page that shows them.
//!
//! Owns the record of recent calls (the running ones, and the last
//! `MCP_BRIDGE_CONSOLE_CALLS` finished ones within [`CONSOLE_BYTES`], each
//! call's images within [`CALL_IMAGE_BYTES`]), who may see which (a
//! [`Viewer`]: a principal sees only its own calls), the live feed of calls
//! starting and finishing (a broadcast channel: a slow reader skips, it
//! never holds a call), their JSON views, and the server-rendered page with
//! its script and style (served from the binary: no build step, no
//! download). Everything shown is hostile text: the page escapes it, the
//! script only ever sets `textContent`. It does not serve HTTP nor check
//! tokens ([`crate::side_port`] does), nor read the pool or the sessions
//! (the side port hands it a [`Status`]).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::audit::{CallRecord, CallStart, FileEntry, ToolCallEntry};
use crate::egress::Connection;

/// The finished calls kept together stay under this many bytes (texts and images).
pub const CONSOLE_BYTES: usize = 64 << 20;
/// One call's images kept for the page, together.
pub const CALL_IMAGE_BYTES: usize = 1 << 20;
/// Events a slow page may fall behind by before it skips some.
const FEED: usize = 256;

/// The page's script and style, from the binary.
pub const SCRIPT: &str = include_str!("console/console.js");
pub const STYLE: &str = include_str!("console/console.css");

/// Who is looking: the operator (on loopback) sees every call, a principal
/// only its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Viewer {
    Operator,
    Principal(String),
}

impl Viewer {
    pub fn sees(&self, principal: &str) -> bool {
        match self {
            Self::Operator => true,
            Self::Principal(own) => own == principal,
        }
    }
}

/// A call started or finished, as the feed carries it.
#[derive(Debug, Clone)]
pub struct Event {
    principal: Arc<str>,
    /// The call's summary as JSON.
    pub json: Arc<str>,
}

/// What the live feed carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// A call's summary (JSON), as it started or finished.
    Call(Arc<str>),
    /// Events were skipped: the list is to be read again.
    Resync,
}

/// The recent calls.
#[derive(Debug)]
pub struct Console {
    capacity: usize,
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Event>,
}

#[derive(Debug, Default)]
struct Inner {
    running: BTreeMap<u64, Arc<CallStart>>,
    /// Newest first.
    finished: VecDeque<Kept>,
    /// What `finished` weighs ([`Kept::weight`]).
    bytes: usize,
}

/// A finished call as the console keeps it: its record (shared with the
/// audit log's queue) and the PNGs of its images kept for the page.
#[derive(Debug)]
struct Kept {
    record: Arc<CallRecord>,
    /// By image index; empty: not kept (past [`CALL_IMAGE_BYTES`]).
    pngs: Vec<bytes::Bytes>,
    weight: usize,
}

impl Console {
    /// Keeps the last `capacity` finished calls; 0: none, and no page.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
            feed: broadcast::channel(FEED).0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call started: listed as running until [`Self::finish`].
    pub fn begin(&self, start: &Arc<CallStart>) {
        if !self.enabled() {
            return;
        }
        self.inner().running.insert(start.id, start.clone());
        self.announce(&start.principal, &Summary::running(start));
    }

    /// A call finished: kept with its images' `pngs` (by index, within
    /// [`CALL_IMAGE_BYTES`]), the oldest let go past the bounds. Returns
    /// the record, for the audit log.
    pub fn finish(&self, record: CallRecord, pngs: Vec<bytes::Bytes>) -> Arc<CallRecord> {
        let record = Arc::new(record);
        if !self.enabled() {
            return record;
        }
        let mut kept_bytes = 0;
        let pngs: Vec<bytes::Bytes> = pngs
            .into_iter()
            .map(|png| {
                if kept_bytes + png.len() <= CALL_IMAGE_BYTES {
                    kept_bytes += png.len();
                    png
                } else {
                    bytes::Bytes::new()
                }
            })
            .collect();
        let kept = Kept {
            weight: record.weight() + kept_bytes,
            record: record.clone(),
            pngs,
        };
        {
            let mut inner = self.inner();
            inner.running.remove(&record.start.id);
            inner.bytes += kept.weight;
            inner.finished.push_front(kept);
            while inner.finished.len() > self.capacity || inner.bytes > CONSOLE_BYTES {
                let Some(oldest) = inner.finished.pop_back() else {
                    break;
                };
                inner.bytes -= oldest.weight;
            }
        }
        self.announce(&record.start.principal, &Summary::finished(&record));
        record
    }

    fn announce(&self, principal: &str, summary: &Summary<'_>) {
        if self.feed.receiver_count() == 0 {
            return;
        }
        let json = serde_json::to_string(summary).expect("a summary serializes");
        let _ = self.feed.send(Event {
            principal: principal.into(),
            json: json.into(),
        });
    }

    /// The calls `viewer` sees, running ones first, newest first, as JSON.
    pub fn calls_json(&self, viewer: &Viewer) -> String {
        let inner = self.inner();
        let summaries: Vec<Summary<'_>> = Self::visible(&inner, viewer).collect();
        serde_json::to_string(&serde_json::json!({ "calls": summaries }))
            .expect("summaries serialize")
    }

    fn visible<'a>(inner: &'a Inner, viewer: &'a Viewer) -> impl Iterator<Item = Summary<'a>> {
        let running = inner
            .running
            .values()
            .rev()
            .filter(|start| viewer.sees(&start.principal))
            .map(|start| Summary::running(start));
        let finished = inner
            .finished
            .iter()
            .filter(|kept| viewer.sees(&kept.record.start.principal))
            .map(|kept| Summary::finished(&kept.record));
        running.chain(finished)
    }

    /// One call as `viewer` may see it, as JSON; `None`: no such call (or
    /// another principal's: the same answer).
    pub fn call_json(&self, viewer: &Viewer, id: u64) -> Option<String> {
        let inner = self.inner();
        let detail = if let Some(start) = inner.running.get(&id) {
            viewer
                .sees(&start.principal)
                .then(|| Detail::new(Summary::running(start), start, None))
        } else {
            inner.find(viewer, id).map(|kept| {
                let record = &kept.record;
                Detail::new(Summary::finished(record), &record.start, Some(kept))
            })
        }?;
        Some(serde_json::to_string(&detail).expect("a detail serializes"))
    }

    /// A kept image of a call `viewer` sees, as PNG.
    pub fn image(&self, viewer: &Viewer, id: u64, index: usize) -> Option<bytes::Bytes> {
        let inner = self.inner();
        let png = inner.find(viewer, id)?.pngs.get(index)?;
        (!png.is_empty()).then(|| png.clone())
    }

    /// The calls as they start and finish, those `viewer` sees. A reader
    /// that falls behind skips what it missed and is told to read the list
    /// again ([`Feed::Resync`]).
    pub fn feed(&self, viewer: Viewer) -> impl Stream<Item = Feed> + Send + 'static {
        let receiver = self.feed.subscribe();
        futures_util::stream::unfold((receiver, viewer), |(mut receiver, viewer)| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) if viewer.sees(&event.principal) => {
                        return Some((Feed::Call(event.json), (receiver, viewer)));
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((Feed::Resync, (receiver, viewer)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// The page: the status and the calls `viewer` sees, rendered here
    /// (escaped); the script keeps them up to date.
    pub fn page(&self, viewer: &Viewer, status: &Status) -> String {
        let mut html = String::with_capacity(16 * 1024);
        html.push_str(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>mcp-code-exec console</title>\
             <link rel=\"stylesheet\" href=\"/console.css\">\
             <script src=\"/console.js\" defer></script></head><body>\
             <header><h1>mcp-code-exec</h1><span id=\"live\">loading</span></header><main>\
             <section id=\"status\"><h2>Sandboxes</h2><div id=\"pool\">",
        );
        status.render_pool(&mut html);
        html.push_str("</div><h2>Sessions</h2><ul id=\"sessions\">");
        for session in status.sessions.iter().filter(|s| viewer.sees(&s.principal)) {
            let idle = session
                .idle_secs
                .map_or_else(|| "in a call".to_owned(), |s| format!("idle {s:.0} s"));
            let _ = write!(
                html,
                "<li><span class=\"name\">{}</span> <span class=\"principal\">{}</span> {}</li>",
                escape(&session.name),
                escape(&session.principal),
                escape(&idle)
            );
        }
        html.push_str("</ul><h2>Servers</h2><ul id=\"servers\">");
        for server in &status.servers {
            let _ = write!(
                html,
                "<li><span class=\"name\">{}</span> {}</li>",
                escape(&server.name),
                escape(&server.state)
            );
        }
        html.push_str("</ul></section><section><h2>Calls</h2><ol id=\"calls\">");
        let inner = self.inner();
        for summary in Self::visible(&inner, viewer) {
            summary.render(&mut html);
        }
        drop(inner);
        html.push_str("</ol></section></main></body></html>");
        html
    }
}

impl Inner {
    /// The finished call `id`, if `viewer` sees it.
    fn find(&self, viewer: &Viewer, id: u64) -> Option<&Kept> {
        self.finished
            .iter()
            .find(|kept| kept.record.start.id == id && viewer.sees(&kept.record.start.principal))
    }
}

/// A call in a list.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    id: u64,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    principal: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    servers: &'a [String],
    started_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
    head: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl<'a> Summary<'a> {
    fn running(start: &'a CallStart) -> Self {
        Self {
            id: start.id,
            state: "running",
            status: None,
            principal: &start.principal,
            session: start.session.as_deref(),
            servers: &start.servers,
            started_ms: start.started_ms(),
            elapsed_ms: Some(start.started.elapsed().as_secs_f64() * 1e3),
            duration_ms: None,
            head: &start.head,
            error: None,
        }
    }

    fn finished(record: &'a CallRecord) -> Self {
        Self {
            state: "finished",
            status: Some(record.status.as_str()),
            elapsed_ms: None,
            duration_ms: Some(record.duration_ms),
            error: record.error.as_deref(),
            ..Self::running(&record.start)
        }
    }

    /// The list entry, as the script builds it too.
    fn render(&self, html: &mut String) {
        let (status, duration) = match (self.status, self.duration_ms) {
            (Some(status), Some(ms)) => (status, format!("{ms:.1} ms")),
            _ => ("running", "running".to_owned()),
        };
        let _ = write!(
            html,
            "<li class=\"call\" data-id=\"{}\" data-state=\"{}\" data-started=\"{:.0}\">\
             <div class=\"summary\"><span class=\"status status-{status}\">{status}</span> \
             <span class=\"id\">#{}</span> <span class=\"principal\">{}</span> ",
            self.id,
            self.state,
            self.started_ms,
            self.id,
            escape(self.principal),
        );
        if let Some(session) = self.session {
            let _ = write!(html, "<span class=\"session\">{}</span> ", escape(session));
        }
        let _ = write!(
            html,
            "<span class=\"duration\">{duration}</span> <code class=\"head\">{}</code></div></li>",
            escape(self.head)
        );
    }
}

/// One call in full, as the page expands it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Detail<'a> {
    #[serde(flatten)]
    summary: Summary<'a>,
    code: &'a str,
    code_bytes: usize,
    code_sha256: &'a str,
    code_truncated: bool,
    stdout: &'a str,
    stderr: &'a str,
    stdout_truncated: bool,
    stderr_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    images: Vec<ImageView>,
    files: &'a [FileEntry],
    tool_calls: &'a [ToolCallEntry],
    tool_calls_total: u64,
    egress: &'a [Connection],
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
    notes: &'a [String],
}

/// An image as the page shows it: its URL while its PNG is kept.
#[derive(Debug, Serialize)]
struct ImageView {
    index: usize,
    width: u32,
    height: u32,
    bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

impl<'a> Detail<'a> {
    fn new(summary: Summary<'a>, start: &'a CallStart, kept: Option<&'a Kept>) -> Self {
        let id = start.id;
        let record = kept.map(|kept| &*kept.record);
        Self {
            summary,
            code: &start.code,
            code_bytes: start.code_bytes,
            code_sha256: &start.code_sha256,
            code_truncated: start.code_truncated,
            stdout: record.map_or("", |r| &r.stdout.text),
            stderr: record.map_or("", |r| &r.stderr.text),
            stdout_truncated: record.is_some_and(|r| r.stdout.truncated),
            stderr_truncated: record.is_some_and(|r| r.stderr.truncated),
            exit_code: record.and_then(|r| r.exit_code),
            images: kept.map_or_else(Vec::new, |kept| {
                kept.record
                    .images
                    .iter()
                    .map(|image| ImageView {
                        index: image.index,
                        width: image.width,
                        height: image.height,
                        bytes: image.bytes,
                        url: kept
                            .pngs
                            .get(image.index)
                            .is_some_and(|png| !png.is_empty())
                            .then(|| format!("/api/calls/{id}/images/{}", image.index)),
                    })
                    .collect()
            }),
            files: record.map_or(&[], |r| &r.files),
            tool_calls: record.map_or(&[], |r| &r.tool_calls),
            tool_calls_total: record.map_or(0, |r| r.tool_calls_total),
            egress: record.map_or(&[], |r| &r.egress),
            sandbox: record.and_then(|r| r.sandbox.as_deref()),
            notes: record.map_or(&[], |r| &r.notes),
        }
    }
}

/// What the page shows beside the calls, as the side port read it.
#[derive(Debug, Default, Serialize)]
pub struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolView>,
    pub sessions: Vec<SessionView>,
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Serialize)]
pub struct PoolView {
    /// Sandboxes by state (`idle`, `busy`, …), and callers `waiting`.
    #[serde(flatten)]
    pub counts: BTreeMap<&'static str, usize>,
    pub max: usize,
    /// The idle ones (warmest last), then the busy ones.
    pub sandboxes: Vec<SandboxView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxView {
    pub id: String,
    /// `idle` or `busy`.
    pub state: &'static str,
    pub age_secs: f64,
    pub runs: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub name: String,
    pub principal: String,
    /// `None`: a call is in it now.
    pub idle_secs: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ServerView {
    pub name: String,
    pub state: String,
}

impl Status {
    fn render_pool(&self, html: &mut String) {
        let Some(pool) = &self.pool else {
            html.push_str("not started");
            return;
        };
        let counts: Vec<String> = pool
            .counts
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        let _ = write!(
            html,
            "{} (at most {})",
            escape(&counts.join(", ")),
            pool.max
        );
    }
}

/// `text` safe as HTML text and as a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{RunReport, RunStatus};

    fn start(id: u64, principal: &str, code: &str) -> Arc<CallStart> {
        Arc::new(CallStart::new(id, principal, None, &[], code))
    }

    fn pngs(report: &RunReport) -> Vec<bytes::Bytes> {
        report
            .images
            .iter()
            .map(|image| image.data.clone())
            .collect()
    }

    fn finished(id: u64, principal: &str, code: &str, stdout: &str) -> CallRecord {
        let mut report = RunReport::nothing_ran(RunStatus::Success);
        report.stdout = stdout.into();
        CallRecord::finished(start(id, principal, code), &report)
    }

    #[test]
    fn hostile_text_is_shown_as_text() {
        let hostile = "<script>alert(1)</script></textarea><img src=x onerror=\"alert(2)\">'";
        assert_eq!(
            escape(hostile),
            "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/textarea&gt;&lt;img src=x \
             onerror=&quot;alert(2)&quot;&gt;&#39;"
        );
        let console = Console::new(10);
        console.finish(finished(1, "p<b>", hostile, hostile), Vec::new());
        let page = console.page(&Viewer::Operator, &Status::default());
        assert!(!page.contains("<script>alert") && !page.contains("<img src=x"));
        assert!(
            page.contains("&lt;script&gt;alert(1)"),
            "the head is listed"
        );
        assert!(page.contains("p&lt;b&gt;"));
        // The only tags are the page's own.
        assert_eq!(page.matches("<script").count(), 1);
        // Invalid UTF-8 reached the report as replacement characters.
        let bytes = String::from_utf8_lossy(b"ok \xff\xfe </textarea>").into_owned();
        console.finish(finished(2, "local", &bytes, &bytes), Vec::new());
        let page = console.page(&Viewer::Operator, &Status::default());
        assert!(page.contains("ok \u{fffd}\u{fffd} &lt;/textarea&gt;"));
        // JSON views are JSON: the script sets them as text.
        let detail: serde_json::Value =
            serde_json::from_str(&console.call_json(&Viewer::Operator, 1).unwrap()).unwrap();
        assert_eq!(detail["stdout"], hostile);
    }

    #[test]
    fn a_megabyte_line_is_shown_cut() {
        let line = "x".repeat(1 << 20);
        let console = Console::new(10);
        console.finish(finished(1, "local", &line, &line), Vec::new());
        let detail: serde_json::Value =
            serde_json::from_str(&console.call_json(&Viewer::Operator, 1).unwrap()).unwrap();
        assert_eq!(detail["codeBytes"], 1 << 20);
        assert_eq!(detail["codeTruncated"], true);
        assert!(detail["code"].as_str().unwrap().len() <= crate::audit::CODE_BYTES);
        assert_eq!(detail["stdoutTruncated"], true);
        let page = console.page(&Viewer::Operator, &Status::default());
        assert!(
            page.len() < 16 * 1024,
            "the list shows heads: {}",
            page.len()
        );
    }

    #[test]
    fn a_principal_sees_only_its_own_calls() {
        let console = Console::new(10);
        console.finish(finished(1, "alice", "print('a')", "a"), Vec::new());
        console.finish(finished(2, "bob", "print('b')", "b"), Vec::new());
        console.begin(&start(3, "bob", "import time"));
        let alice = Viewer::Principal("alice".into());
        let list: serde_json::Value = serde_json::from_str(&console.calls_json(&alice)).unwrap();
        let ids: Vec<u64> = list["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [1]);
        assert!(console.call_json(&alice, 2).is_none());
        assert!(
            console.call_json(&alice, 3).is_none(),
            "nor bob's running call"
        );
        assert!(
            console.call_json(&alice, 99).is_none(),
            "the same answer as unknown"
        );
        let all: serde_json::Value =
            serde_json::from_str(&console.calls_json(&Viewer::Operator)).unwrap();
        let states: Vec<&str> = all["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["running", "finished", "finished"]);
        assert!(
            !console
                .page(&alice, &Status::default())
                .contains("print(&#39;b&#39;)")
        );
    }

    #[test]
    fn ten_thousand_calls_keep_memory_flat() {
        let console = Console::new(200);
        let code = "x = 1\n".repeat(2_000);
        // One PNG's bytes shared by every call: each record still counts them.
        let png = bytes::Bytes::from(vec![0u8; 600_000]);
        for id in 0..10_000 {
            let start = start(id, "local", &code);
            console.begin(&start);
            let mut report = RunReport::nothing_ran(RunStatus::Success);
            report.stdout = "y".repeat(100_000);
            report.images = vec![crate::report::Image::png(0, png.clone(), 10, 10)];
            console.finish(CallRecord::finished(start, &report), pngs(&report));
        }
        let inner = console.inner();
        assert!(inner.running.is_empty());
        assert!(inner.finished.len() <= 200);
        assert!(inner.bytes <= CONSOLE_BYTES, "{}", inner.bytes);
        let weighed: usize = inner.finished.iter().map(|kept| kept.weight).sum();
        assert_eq!(weighed, inner.bytes, "the count matches what is kept");
        assert_eq!(inner.finished.front().unwrap().record.start.id, 9_999);
    }

    #[test]
    fn images_past_a_calls_bound_are_described_not_kept() {
        let console = Console::new(10);
        let mut report = RunReport::nothing_ran(RunStatus::Success);
        report.images = (0..3)
            .map(|i| crate::report::Image::png(i, bytes::Bytes::from(vec![1u8; 400_000]), 10, 10))
            .collect();
        console.finish(
            CallRecord::finished(start(1, "local", "plot"), &report),
            pngs(&report),
        );
        assert!(console.image(&Viewer::Operator, 1, 1).is_some());
        assert!(
            console.image(&Viewer::Operator, 1, 2).is_none(),
            "past 1 MiB"
        );
        let detail: serde_json::Value =
            serde_json::from_str(&console.call_json(&Viewer::Operator, 1).unwrap()).unwrap();
        assert_eq!(detail["images"][1]["url"], "/api/calls/1/images/1");
        assert!(detail["images"][2].get("url").is_none());
        assert!(
            console
                .image(&Viewer::Principal("other".into()), 1, 0)
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_feed_carries_starts_and_ends_to_those_who_may_see_them() {
        use futures_util::StreamExt;
        let console = Console::new(10);
        let mut alice = Box::pin(console.feed(Viewer::Principal("alice".into())));
        console.begin(&start(1, "bob", "b"));
        console.begin(&start(2, "alice", "a"));
        console.finish(finished(2, "alice", "a", ""), Vec::new());
        let first = summary(alice.next().await);
        assert_eq!(
            (first["id"].as_u64(), first["state"].as_str()),
            (Some(2), Some("running"))
        );
        let second = summary(alice.next().await);
        assert_eq!(second["state"], "finished");
        assert_eq!(second["status"], "success");
        // A reader that falls behind is told to read the list again.
        let mut slow = Box::pin(console.feed(Viewer::Operator));
        for id in 0..(FEED as u64 + 10) {
            console.begin(&start(id + 100, "bob", "b"));
        }
        assert_eq!(slow.next().await, Some(Feed::Resync));
    }

    fn summary(item: Option<Feed>) -> serde_json::Value {
        match item {
            Some(Feed::Call(json)) => serde_json::from_str(&json).unwrap(),
            other => panic!("a call's summary, not {other:?}"),
        }
    }

    #[test]
    fn a_console_of_no_calls_keeps_nothing() {
        let console = Console::new(0);
        console.begin(&start(1, "local", "1"));
        let record = console.finish(finished(1, "local", "1", ""), Vec::new());
        assert_eq!(record.start.id, 1);
        assert!(console.inner().finished.is_empty() && console.inner().running.is_empty());
    }
}

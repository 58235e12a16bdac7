//! The frame protocol between the host and the in-container agent.
//!
//! Owns the wire format and nothing else: no I/O, no container knowledge.
//! Every frame is `kind: u8`, `len: u32` (big-endian), then `len` bytes of
//! payload. Control payloads are JSON; output chunks are raw bytes, so any
//! byte sequence and lines of any length pass untouched.
//!
//! Everything the agent sends is untrusted (it shares a container with the
//! code it runs): [`FrameDecoder`] never panics, bounds the frame size, and
//! turns anything unexpected into a [`ProtocolError`], after which the
//! container is discarded. Keep in sync with the header of `agent.py`.
//!
//! Byte streams (a connection the sandbox made to the agent's loopback
//! proxy port, for egress) travel in the same channel as [`StreamFrame`]s:
//! `N` opens one, `S` carries its bytes, `X` ends it, `W` grants the peer
//! more credit. Each side may send a stream only as many data bytes as the
//! other has granted ([`STREAM_WINDOW`] at open, then each `W`), so no stream
//! can make either side buffer more than one window, and none can hold up
//! the channel's other frames.
//!
//! Host files (`files` entries read from the host, [`crate::hostfiles`])
//! follow their run request as `H` frames of raw bytes: the request lists
//! them (`host_files`: path and size, or a folder), and the agent writes
//! each file from as many `H` frames as its size takes before the code
//! starts. Nothing else is sent between a request and its last `H`.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

const HEADER_LEN: usize = 5;

/// The largest frame the host accepts from the agent. The agent sends output
/// in chunks of at most 64 KiB and small JSON otherwise; anything bigger means
/// the stream is not what the agent wrote.
pub const MAX_AGENT_FRAME: usize = 256 * 1024;
/// Tool calls carry the caller's arguments, which may be large (the agent
/// applies the same bound).
pub const MAX_CALL_FRAME: usize = 16 * 1024 * 1024;
/// An image a run returns (`MCP_BRIDGE_MAX_IMAGE_BYTES` is at most 8 MiB;
/// each run's own bounds are checked by the sandbox).
pub const MAX_IMAGE_FRAME: usize = 8 * 1024 * 1024;
/// A file a run returns, with its path (`MCP_BRIDGE_MAX_OUTPUT_FILES_BYTES`
/// is at most 64 MiB; each run's own bounds are checked by the sandbox).
pub const MAX_FILE_FRAME: usize = 64 * 1024 * 1024 + 2 + MAX_PATH_BYTES;
/// The longest path of a returned file, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The most data bytes one `S` frame carries.
pub const MAX_STREAM_CHUNK: usize = 64 * 1024;
/// The credit each side grants a stream when it opens: bytes the peer may
/// send before the first window update.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The largest buffer the decoder keeps between frames: after a larger
/// frame (a tool call, an image, a file) the rest is moved to a fresh one,
/// so a sandbox does not hold its largest frame's memory for its life.
const KEEP_BUFFER: usize = 1024 * 1024;

/// A frame kind sent by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFrameKind {
    /// Idle and ready for a run (after start and after each reset).
    Ready,
    /// A chunk of the run's stdout.
    Stdout,
    /// A chunk of the run's stderr.
    Stderr,
    /// The run calls a tool; payload is the JSON request, answered by an `A` frame.
    Call,
    /// The run is over; payload is [`RunDone`].
    Done,
    /// The reset failed; payload is [`ResetFailed`]. The agent exits after it.
    ResetFailed,
    /// An image the run made: a PNG.
    Image,
    /// A file the run left under `/workspace/out`: see [`parse_file`].
    File,
    /// A stream frame (`N`, `S`, `X`, `W`): see [`StreamFrame::parse`].
    Stream(StreamKind),
}

/// The kinds of stream frames, both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `N`: the agent opened a stream (id and service).
    Open,
    /// `S`: a stream's bytes.
    Data,
    /// `X`: the sender has no more bytes for the stream, or aborts it.
    Close,
    /// `W`: the receiver may be sent more bytes.
    Window,
}

impl StreamKind {
    pub fn byte(self) -> u8 {
        match self {
            Self::Open => b'N',
            Self::Data => b'S',
            Self::Close => b'X',
            Self::Window => b'W',
        }
    }

    /// The largest payload of this kind.
    fn max_payload(self) -> usize {
        match self {
            Self::Open => 5,
            Self::Data => 4 + MAX_STREAM_CHUNK,
            Self::Close => 5,
            Self::Window => 8,
        }
    }
}

impl AgentFrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            b'Y' => Self::Ready,
            b'O' => Self::Stdout,
            b'E' => Self::Stderr,
            b'C' => Self::Call,
            b'D' => Self::Done,
            b'F' => Self::ResetFailed,
            b'I' => Self::Image,
            b'P' => Self::File,
            b'N' => Self::Stream(StreamKind::Open),
            b'S' => Self::Stream(StreamKind::Data),
            b'X' => Self::Stream(StreamKind::Close),
            b'W' => Self::Stream(StreamKind::Window),
            _ => return None,
        })
    }
}

/// One decoded frame from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFrame {
    pub kind: AgentFrameKind,
    pub payload: Bytes,
}

/// The agent sent something that is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("malformed {what} payload: {reason}")]
    BadPayload { what: &'static str, reason: String },
    #[error("unexpected {0:?} frame")]
    Unexpected(AgentFrameKind),
}

/// Incremental decoder: feed it the byte chunks of the attach stream in any
/// split, take whole frames out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    pub fn extend(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<AgentFrame>, ProtocolError> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind_byte = self.buffer[0];
        let kind =
            AgentFrameKind::from_byte(kind_byte).ok_or(ProtocolError::UnknownKind(kind_byte))?;
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        let max = match kind {
            AgentFrameKind::Call => MAX_CALL_FRAME,
            AgentFrameKind::Image => MAX_IMAGE_FRAME,
            AgentFrameKind::File => MAX_FILE_FRAME,
            AgentFrameKind::Stream(kind) => kind.max_payload(),
            _ => MAX_AGENT_FRAME,
        };
        if len > max {
            return Err(ProtocolError::Oversized { len, max });
        }
        if self.buffer.len() < HEADER_LEN + len {
            self.buffer.reserve(HEADER_LEN + len - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(HEADER_LEN);
        let payload = self.buffer.split_to(len).freeze();
        if len > KEEP_BUFFER {
            // The rest shares the large frame's allocation, and would keep
            // it alive (and reuse it) for the sandbox's life: what follows
            // is usually little, copied out, and the allocation goes with
            // the payload.
            self.buffer = BytesMut::from(&self.buffer[..]);
        }
        Ok(Some(AgentFrame { kind, payload }))
    }

    /// Where the decoder's buffer starts, to check it is not the tail of a
    /// large frame's allocation.
    #[cfg(test)]
    fn buffer_address(&self) -> usize {
        self.buffer.as_ptr() as usize
    }

    /// Bytes received but not yet part of a whole frame.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// What a run is asked to do, besides the tools it may call.
#[derive(Debug, Serialize)]
pub struct RunInput<'a> {
    pub code: &'a str,
    /// Per stream: bytes beyond this are counted by the agent, not sent.
    pub max_output_bytes: u64,
    /// Written under `/workspace` before the code starts (checked by the call).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub files: &'a [InputFile],
    /// Requirements installed before the code starts (checked by the call:
    /// names and versions only), from the host's package index.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub packages: &'a [String],
    /// The exact wheels the host's plan for `packages` names: installed
    /// without pip when the package directory holds no distribution yet.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub wheels: &'a [PlannedWheel],
    /// The bounds of the images the run returns.
    pub display: ImageBounds,
    /// The bounds of the files the run returns from `/workspace/out`.
    pub files_out: FileBounds,
    /// The run is a session's call: its interpreter lives on for the next
    /// (the agent then skips the reset; see [`RunDone::kept`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub session: bool,
    /// Host files the agent writes under `/workspace` before the code
    /// starts, in order; their bytes follow the request in `host_data`.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub host_files: &'a [HostEntry],
    /// The `H` frames carrying the host files' bytes (whole frames).
    #[serde(skip)]
    pub host_data: &'a [Bytes],
    /// Files of `/workspace/out` returned even when unchanged since a
    /// session's last call (what the call saves).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub resend: &'a [String],
    /// The run may save and import skills (`runtime.save_skill`,
    /// `from skills import …`): its `@skills` calls are answered.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skills: bool,
}

/// One file or folder the agent makes under `/workspace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostEntry {
    /// Relative to `/workspace`.
    pub path: String,
    /// A file's bytes (its frames' data, together).
    #[serde(skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The header before an `H` frame's data.
pub const HOST_DATA_HEADER: usize = HEADER_LEN;

/// Makes `frame` (its first [`HOST_DATA_HEADER`] bytes left for the header,
/// then the data) a whole `H` frame.
pub fn seal_host_data(frame: &mut [u8]) {
    frame[0] = b'H';
    set_length(frame);
}

/// A run request (`R`).
#[derive(Debug, Serialize)]
pub struct RunFrame<'a> {
    #[serde(flatten)]
    pub input: &'a RunInput<'a>,
    /// What the sandbox's `mcp` package is built from (see the proxy module):
    /// `servers` (callable in this run, with tools) and `discovered` (all).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<&'a serde_json::Value>,
}

impl RunFrame<'_> {
    /// The whole frame, header included, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(b'R', |frame| {
            serde_json::to_writer(frame, self).expect("strings and numbers always serialize")
        })
    }
}

/// An answer to a tool call (`A`): its JSON payload (of about `size`
/// bytes, so the frame is allocated once), framed.
pub fn encode_answer(answer: &impl Serialize, size: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + size);
    frame.extend_from_slice(&[b'A', 0, 0, 0, 0]);
    serde_json::to_writer(&mut frame, answer).expect("an answer always serializes");
    set_length(&mut frame);
    frame
}

/// The services a stream can be opened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamService {
    /// `h`: a connection to the agent's loopback proxy port; the host
    /// speaks HTTP proxy on it (egress).
    HttpProxy,
}

/// A stream frame, either direction. Payloads start with the stream's id
/// (4 bytes, big-endian): the agent numbers the streams it opens with odd,
/// increasing ids, never reused within a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// `N`: id, then one byte naming the service (`h`).
    Open { id: u32, service: StreamService },
    /// `S`: id, then up to [`MAX_STREAM_CHUNK`] bytes.
    Data { id: u32, data: Bytes },
    /// `X`: id, then 0 (no more data from the sender) or 1 (aborted).
    Close { id: u32, abort: bool },
    /// `W`: id, then 4 bytes: how many more data bytes the peer may send.
    Window { id: u32, credit: u32 },
}

impl StreamFrame {
    /// Parses the payload of a stream frame of `kind`.
    pub fn parse(kind: StreamKind, payload: Bytes) -> Result<Self, ProtocolError> {
        let bad = |reason: &str| ProtocolError::BadPayload {
            what: "stream",
            reason: reason.to_owned(),
        };
        if payload.len() < 4 {
            return Err(bad("shorter than a stream id"));
        }
        let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let rest = &payload[4..];
        Ok(match kind {
            StreamKind::Open => match rest {
                b"h" => Self::Open {
                    id,
                    service: StreamService::HttpProxy,
                },
                _ => return Err(bad("unknown stream service")),
            },
            StreamKind::Data => Self::Data {
                id,
                data: payload.slice(4..),
            },
            StreamKind::Close => match rest {
                [0] => Self::Close { id, abort: false },
                [1] => Self::Close { id, abort: true },
                _ => return Err(bad("a close is 0 or 1")),
            },
            StreamKind::Window => match <[u8; 4]>::try_from(rest) {
                Ok(credit) => Self::Window {
                    id,
                    credit: u32::from_be_bytes(credit),
                },
                Err(_) => return Err(bad("a window update is 4 bytes")),
            },
        })
    }

    /// The whole frame, header included, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, id) = match self {
            Self::Open { id, .. } => (StreamKind::Open, *id),
            Self::Data { id, .. } => (StreamKind::Data, *id),
            Self::Close { id, .. } => (StreamKind::Close, *id),
            Self::Window { id, .. } => (StreamKind::Window, *id),
        };
        encode_frame(kind.byte(), |frame| {
            frame.extend_from_slice(&id.to_be_bytes());
            match self {
                Self::Open { service, .. } => match service {
                    StreamService::HttpProxy => frame.push(b'h'),
                },
                Self::Data { data, .. } => frame.extend_from_slice(data),
                Self::Close { abort, .. } => frame.push(u8::from(*abort)),
                Self::Window { credit, .. } => frame.extend_from_slice(&credit.to_be_bytes()),
            }
        })
    }
}

/// A file a call brings: a path under `/workspace` and its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputFile {
    pub path: String,
    #[serde(flatten)]
    pub content: FileContent,
}

/// A file's content as the call sent it (base64 is passed on, checked, not decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileContent {
    Text(String),
    Base64(String),
}

/// Images a run may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImageBounds {
    pub max_pixels: u32,
    pub max_bytes: u64,
    pub max_images: u32,
}

/// Files a run may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileBounds {
    pub max_files: u32,
    pub max_bytes: u64,
}

/// A returned file's payload: 2 bytes of path length (big-endian), the path
/// (UTF-8, relative to `/workspace/out`), the file's bytes. The path must be
/// plainly relative: no empty, `.` or `..` component, no leading `/`.
pub fn parse_file(payload: &Bytes) -> Result<(String, Bytes), ProtocolError> {
    let bad = |reason: &str| ProtocolError::BadPayload {
        what: "file",
        reason: reason.to_owned(),
    };
    if payload.len() < 2 {
        return Err(bad("shorter than its path length"));
    }
    let length = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
    if length == 0 || length > MAX_PATH_BYTES || payload.len() < 2 + length {
        return Err(bad("path length out of bounds"));
    }
    let path = std::str::from_utf8(&payload[2..2 + length]).map_err(|_| bad("path not UTF-8"))?;
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
        || path.contains('\0')
    {
        return Err(bad("path not plainly relative"));
    }
    Ok((path.to_owned(), payload.slice(2 + length..)))
}

/// The (width, height) of a PNG, from its header.
pub fn png_size(png: &[u8]) -> Result<(u32, u32), ProtocolError> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 24 || !png.starts_with(SIGNATURE) || &png[12..16] != b"IHDR" {
        return Err(ProtocolError::BadPayload {
            what: "image",
            reason: "not a PNG".into(),
        });
    }
    let word = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    Ok((word(16), word(20)))
}

fn encode_frame(kind: u8, write_payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = vec![kind, 0, 0, 0, 0];
    write_payload(&mut frame);
    set_length(&mut frame);
    frame
}

/// Writes a frame's payload length into its header.
fn set_length(frame: &mut [u8]) {
    let len =
        u32::try_from(frame.len() - HEADER_LEN).expect("payloads are validated far below 4 GiB");
    frame[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Payload of a `Done` frame: how the run's process ended.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RunDone {
    /// Exit status as Python's `waitstatus_to_exitcode`: negative for a signal.
    pub exit_code: i32,
    /// The container's OOM-kill counter moved, or the code died of MemoryError.
    #[serde(default)]
    pub oom: bool,
    /// `Type: message` of an uncaught exception.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub dropped_stdout: u64,
    #[serde(default)]
    pub dropped_stderr: u64,
    /// Time inside the agent from the request to this frame (the
    /// `run_agent_seconds` metric).
    #[serde(default)]
    pub agent_us: u64,
    /// Images made but not returned (over the count, or too large).
    #[serde(default)]
    pub images_dropped: u64,
    /// Why images were dropped, for the text (the sandbox's own words).
    #[serde(default)]
    pub image_notes: Vec<String>,
    /// Files under `/workspace/out` left behind (over the count or bytes).
    #[serde(default)]
    pub files_dropped: u64,
    #[serde(default)]
    pub files_dropped_bytes: u64,
    /// A session's call: its interpreter lives on and waits for the next
    /// call (no reset, no `Y`). False for a session whose interpreter died
    /// in the call: the agent then resets as after a stateless run.
    #[serde(default)]
    pub kept: bool,
    /// A session's interpreter was found dead before the call (`exit_code`
    /// is then its own): the code did not run, and the agent resets.
    #[serde(default)]
    pub session_gone: bool,
    /// What `packages` installed (pip's report), when the call asked.
    #[serde(default)]
    pub packages: Option<Installed>,
}

/// What a call's `packages` installed, and how long it took.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Installed {
    /// Each distribution installed, dependencies included (those already
    /// there are not listed).
    pub installed: Vec<Package>,
    #[serde(rename(serialize = "durationMs"))]
    pub duration_ms: u64,
    /// The wheels pip chose, as the sandbox says (the host plans only
    /// those it served this run); never in the call's result.
    #[serde(default, skip_serializing)]
    pub wheels: Vec<ChosenWheel>,
}

/// A wheel pip chose: its file on the host's index.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ChosenWheel {
    pub filename: String,
    pub sha256: String,
}

/// A wheel of a plan, as the host names it to the sandbox.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlannedWheel {
    pub filename: String,
    pub sha256: String,
    /// The distribution and its version, from the file's name.
    pub name: String,
    pub version: String,
}

/// A distribution, as its metadata names it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// Payload of a `Ready` frame.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Ready {
    /// The sandbox's Python version; sent only in the first `Ready`.
    #[serde(default)]
    pub python: Option<String>,
    /// Preloaded modules the image lacks, with why; first `Ready` only.
    #[serde(default)]
    pub preload_missing: Vec<String>,
    /// Why this sandbox cannot be reset, so it serves one run (a session's
    /// calls count as one) and is then recycled; first `Ready` only.
    #[serde(default)]
    pub single_use: Option<String>,
    /// The agent's token: made at its start, the same in every `Ready`, so
    /// one user code forged (gVisor lets it write to the agent's stdout, and
    /// it never sees a real one) does not pass for the end of a reset.
    #[serde(default)]
    pub token: Option<String>,
}

impl Ready {
    /// Whether this `Ready` is the agent's: it carries the token of the
    /// agent's first one.
    pub fn check_token(&self, first: Option<&str>) -> Result<(), ProtocolError> {
        if first.is_some() && self.token.as_deref() == first {
            return Ok(());
        }
        Err(ProtocolError::BadPayload {
            what: "ready",
            reason: "not the agent's token (a ready frame written by user code?)".into(),
        })
    }
}

/// Payload of a `ResetFailed` frame.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ResetFailed {
    pub reason: String,
}

/// Parses a JSON payload of an agent frame, mapping failures to [`ProtocolError`].
pub fn parse_payload<'de, T: Deserialize<'de>>(
    what: &'static str,
    payload: &'de [u8],
) -> Result<T, ProtocolError> {
    serde_json::from_slice(payload).map_err(|error| ProtocolError::BadPayload {
        what,
        reason: error.to_string(),
    })
}

#[cfg(test)]
// The fuzzer's generator keeps the low bits of its random words on purpose,
// and its frame lengths are small or deliberately out of range.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn decodes_frames_split_at_every_byte() {
        let mut wire = frame(b'O', b"hello\n\xff\x00");
        wire.extend(frame(b'E', b""));
        wire.extend(frame(b'D', br#"{"exit_code":0}"#));
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        for byte in &wire {
            decoder.extend(std::slice::from_ref(byte));
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].kind, AgentFrameKind::Stdout);
        assert_eq!(&frames[0].payload[..], b"hello\n\xff\x00");
        assert_eq!(frames[1].kind, AgentFrameKind::Stderr);
        assert!(frames[1].payload.is_empty());
        let done: RunDone = parse_payload("done", &frames[2].payload).unwrap();
        assert_eq!(done.exit_code, 0);
        assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn rejects_unknown_kind_and_oversized_frames() {
        let mut decoder = FrameDecoder::default();
        decoder.extend(&frame(b'Z', b"x"));
        assert_eq!(decoder.next_frame(), Err(ProtocolError::UnknownKind(b'Z')));

        let mut decoder = FrameDecoder::default();
        decoder.extend(&[b'O', 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtocolError::Oversized { .. })
        ));
    }

    /// A cheap deterministic generator (xorshift64).
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A value in `0..bound`.
        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    /// Every kind the agent sends, as its byte.
    const KINDS: &[u8] = b"YOECDFIPNSXW";

    fn byte_of(kind: AgentFrameKind) -> u8 {
        *KINDS
            .iter()
            .find(|&&b| AgentFrameKind::from_byte(b) == Some(kind))
            .expect("every kind has a byte")
    }

    /// A valid frame the agent could send: a kind of its set and a payload
    /// of that kind (JSON where the host parses JSON, a PNG header, a file
    /// path, a stream id), mostly small, some near the kind's limit.
    fn valid_frame(random: &mut Xorshift) -> (u8, Vec<u8>) {
        let kind = KINDS[random.below(KINDS.len())];
        let noise = |random: &mut Xorshift, len: usize| -> Vec<u8> {
            (0..len).map(|_| random.next() as u8).collect()
        };
        let id = (random.below(1 << 16) as u32 * 2 + 1).to_be_bytes();
        let payload = match kind {
            b'Y' => br#"{"python":"3.13.5","preload_missing":["numpy (ModuleNotFoundError)"]}"#.to_vec(),
            b'D' => format!(
                r#"{{"exit_code":{},"oom":false,"error":null,"dropped_stdout":{},"agent_us":{}}}"#,
                random.below(256) as i64 - 128,
                random.below(1 << 20),
                random.below(1 << 30)
            )
            .into_bytes(),
            b'F' => br#"{"reason":"a process survived the reset"}"#.to_vec(),
            b'C' => format!(
                r#"{{"id":{},"server":"time","tool":"get_current_time","arguments":{{"timezone":"UTC"}}}}"#,
                random.below(1000)
            )
            .into_bytes(),
            b'I' => {
                let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
                png.extend_from_slice(&(random.below(2000) as u32).to_be_bytes());
                png.extend_from_slice(&(random.below(2000) as u32).to_be_bytes());
                let len = random.below(2000);
                png.extend(noise(random, len));
                png
            }
            b'P' => {
                let path = format!("dir{}/file{}.csv", random.below(10), random.below(100));
                let mut file = u16::try_from(path.len()).unwrap().to_be_bytes().to_vec();
                file.extend_from_slice(path.as_bytes());
                let len = random.below(3000);
                file.extend(noise(random, len));
                file
            }
            b'N' => [&id[..], b"h"].concat(),
            b'S' => {
                let len = if random.below(20) == 0 {
                    MAX_STREAM_CHUNK - random.below(3)
                } else {
                    random.below(300)
                };
                [id.to_vec(), noise(random, len)].concat()
            }
            b'X' => [&id[..], &[u8::from(random.below(2) == 0)]].concat(),
            b'W' => [id, (random.next() as u32).to_be_bytes()].concat(),
            _ => {
                let len = if random.below(20) == 0 {
                    MAX_AGENT_FRAME - random.below(3)
                } else {
                    random.below(300)
                };
                noise(random, len)
            }
        };
        (kind, payload)
    }

    /// What the host does with a frame's payload: every parser takes any
    /// bytes without panicking.
    fn parse_every_way(frame: &AgentFrame) {
        let _ = parse_payload::<RunDone>("done", &frame.payload);
        let _ = parse_payload::<Ready>("ready", &frame.payload);
        let _ = parse_payload::<ResetFailed>("reset", &frame.payload);
        let _ = parse_payload::<serde_json::Value>("call", &frame.payload);
        let _ = png_size(&frame.payload);
        let _ = parse_file(&frame.payload);
        for kind in [
            StreamKind::Open,
            StreamKind::Data,
            StreamKind::Close,
            StreamKind::Window,
        ] {
            let _ = StreamFrame::parse(kind, frame.payload.clone());
        }
    }

    /// Decodes `wire` fed in random chunks, as the host does: until the
    /// first error (the host then discards the container) or the end.
    fn decode_in_chunks(
        wire: &[u8],
        random: &mut Xorshift,
    ) -> (Vec<AgentFrame>, Option<ProtocolError>, usize) {
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        let mut rest = wire;
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at((1 + random.below(4096)).min(rest.len()));
            rest = after;
            decoder.extend(chunk);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        let max = match frame.kind {
                            AgentFrameKind::Call => MAX_CALL_FRAME,
                            AgentFrameKind::Image => MAX_IMAGE_FRAME,
                            AgentFrameKind::File => MAX_FILE_FRAME,
                            AgentFrameKind::Stream(kind) => kind.max_payload(),
                            _ => MAX_AGENT_FRAME,
                        };
                        assert!(frame.payload.len() <= max, "a frame over its limit");
                        parse_every_way(&frame);
                        frames.push(frame);
                    }
                    Ok(None) => break,
                    Err(error) => return (frames, Some(error), decoder.pending()),
                }
            }
            // Bounded: what waits is at most one frame in the making.
            assert!(decoder.pending() < HEADER_LEN + MAX_FILE_FRAME + 4096);
        }
        let pending = decoder.pending();
        (frames, None, pending)
    }

    /// Valid streams of frames, mutated (bit flips, truncation, a frame's
    /// length changed, bytes inserted or removed) and fed in random splits:
    /// no panic, every frame before the damage decoded exactly, nothing
    /// decoded from a partial frame, oversized lengths refused, and the
    /// frames really reach the parser (not just the header check).
    #[test]
    fn mutated_valid_frames_never_panic_and_decode_up_to_the_damage() {
        let mut random = Xorshift(0x2545_f491_4f6c_dd1d);
        let (mut generated, mut decoded) = (0, 0);
        for case in 0..3_000 {
            let frames: Vec<(u8, Vec<u8>)> = (0..1 + random.below(12))
                .map(|_| valid_frame(&mut random))
                .collect();
            let mut wire = Vec::new();
            let mut ends = Vec::new(); // where each frame ends in the stream
            for (kind, payload) in &frames {
                wire.extend(frame(*kind, payload));
                ends.push(wire.len());
            }
            generated += frames.len();

            // Undamaged, the stream decodes to exactly what was sent.
            let (whole, error, pending) = decode_in_chunks(&wire, &mut random);
            assert_eq!(error, None);
            assert_eq!(pending, 0);
            let sent: Vec<(u8, &[u8])> = frames.iter().map(|(k, p)| (*k, &p[..])).collect();
            let got: Vec<(u8, &[u8])> = whole
                .iter()
                .map(|f| (byte_of(f.kind), &f.payload[..]))
                .collect();
            assert_eq!(got, sent, "case {case}: round trip");

            // Damage it from one byte on.
            let mut damaged = wire.clone();
            let at = match case % 5 {
                0 => {
                    // Flip a bit.
                    let at = random.below(damaged.len());
                    damaged[at] ^= 1 << random.below(8);
                    at
                }
                1 => {
                    // Truncate: the frame cut short is never emitted.
                    let at = random.below(damaged.len());
                    damaged.truncate(at);
                    let (got, error, pending) = decode_in_chunks(&damaged, &mut random);
                    let complete = ends.iter().filter(|&&end| end <= at).count();
                    assert_eq!((got.len(), error), (complete, None), "case {case}");
                    let last_end = if complete == 0 { 0 } else { ends[complete - 1] };
                    assert_eq!(pending, at - last_end, "case {case}");
                    decoded += got.len();
                    continue;
                }
                2 => {
                    // Change one frame's length: by a little, or to anything.
                    let index = random.below(frames.len());
                    let start = if index == 0 { 0 } else { ends[index - 1] };
                    let old = frames[index].1.len() as u32;
                    let new = match random.below(4) {
                        0 => old.wrapping_add(1),
                        1 => old.saturating_sub(1),
                        2 => (MAX_AGENT_FRAME + 1 + random.below(MAX_CALL_FRAME)) as u32,
                        _ => random.next() as u32,
                    };
                    damaged[start + 1..start + 5].copy_from_slice(&new.to_be_bytes());
                    if new == old {
                        continue;
                    }
                    start + 1
                }
                3 => {
                    // Insert bytes.
                    let at = random.below(damaged.len() + 1);
                    let extra: Vec<u8> = (0..1 + random.below(8))
                        .map(|_| random.next() as u8)
                        .collect();
                    damaged.splice(at..at, extra);
                    at
                }
                _ => {
                    // Remove bytes.
                    let at = random.below(damaged.len());
                    let until = (at + 1 + random.below(8)).min(damaged.len());
                    damaged.drain(at..until);
                    at
                }
            };
            let (got, error, _) = decode_in_chunks(&damaged, &mut random);
            // Every frame that ended before the damage decodes as sent.
            let intact = ends.iter().filter(|&&end| end <= at).count();
            assert!(
                got.len() >= intact,
                "case {case}: frames before the damage lost"
            );
            for (frame, (kind, payload)) in got.iter().zip(&frames).take(intact) {
                assert_eq!(byte_of(frame.kind), *kind, "case {case}");
                assert_eq!(&frame.payload[..], &payload[..], "case {case}");
            }
            if let Some(ProtocolError::Oversized { len, max }) = error {
                assert!(len > max, "case {case}: refused a frame within its limit");
            }
            decoded += got.len();
        }
        // The fuzz reaches the parser: most frames are decoded whole.
        assert!(
            decoded * 2 > generated,
            "{decoded} of {generated} generated frames decoded"
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // Random bytes in random split sizes (mostly refused at the header;
        // the mutation fuzz above is the one that reaches payloads).
        let mut random = Xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..2_000 {
            let mut decoder = FrameDecoder::default();
            for _ in 0..random.below(16) {
                let len = random.below(64);
                let chunk: Vec<u8> = (0..len).map(|_| random.next() as u8).collect();
                decoder.extend(&chunk);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    parse_every_way(&frame);
                }
            }
        }
    }

    fn input(code: &str) -> RunInput<'_> {
        RunInput {
            code,
            max_output_bytes: 7,
            files: &[],
            packages: &[],
            wheels: &[],
            display: ImageBounds {
                max_pixels: 64,
                max_bytes: 1024,
                max_images: 2,
            },
            files_out: FileBounds {
                max_files: 3,
                max_bytes: 4096,
            },
            session: false,
            host_files: &[],
            host_data: &[],
            resend: &[],
            skills: false,
        }
    }

    #[test]
    fn run_frame_carries_any_code() {
        let code = "print('\\u00e9')\n\0\"quoted\"";
        let input = input(code);
        let bytes = RunFrame {
            input: &input,
            proxy: None,
        }
        .encode();
        assert_eq!(bytes[0], b'R');
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5);
        let value: serde_json::Value = serde_json::from_slice(&bytes[5..]).unwrap();
        assert_eq!(value["code"], code);
        assert_eq!(value["max_output_bytes"], 7);
        assert_eq!(value["display"]["max_images"], 2);
        assert_eq!(value["files_out"]["max_files"], 3);
        assert!(value.get("servers").is_none() && value.get("files").is_none());
        assert!(value.get("session").is_none(), "stateless: no key at all");

        let proxy = serde_json::json!({"servers": [{"name": "time"}], "discovered": []});
        let files = [InputFile {
            path: "in/a.csv".into(),
            content: FileContent::Base64("AAE=".into()),
        }];
        let with_files = RunInput {
            files: &files,
            session: true,
            ..input
        };
        let bytes = RunFrame {
            input: &with_files,
            proxy: Some(&proxy),
        }
        .encode();
        let value: serde_json::Value = serde_json::from_slice(&bytes[5..]).unwrap();
        assert_eq!(value["servers"][0]["name"], "time");
        assert_eq!(
            value["files"],
            serde_json::json!([{"path": "in/a.csv", "base64": "AAE="}]),
            "the shape agent.py reads"
        );
        assert_eq!(value["session"], true);
    }

    #[test]
    fn ready_says_when_a_sandbox_serves_one_run() {
        let ready: Ready = parse_payload("ready", br#"{"python": "3.13.5"}"#).unwrap();
        assert_eq!(ready.single_use, None);
        let gvisor = br#"{"python": "3.13.5", "single_use": "/proc/sysvipc missing"}"#;
        let ready: Ready = parse_payload("ready", gvisor).unwrap();
        assert_eq!(ready.single_use.as_deref(), Some("/proc/sysvipc missing"));
    }

    #[test]
    fn a_ready_counts_only_with_the_agents_token() {
        let first: Ready = parse_payload("ready", br#"{"token": "5eed"}"#).unwrap();
        let token = first.token.as_deref();
        let again: Ready = parse_payload("ready", br#"{"token": "5eed"}"#).unwrap();
        assert!(again.check_token(token).is_ok());
        for forged in [
            &br#"{}"#[..],
            br#"{"token": "5eee"}"#,
            br#"{"token": null}"#,
        ] {
            let ready: Ready = parse_payload("ready", forged).unwrap();
            let error = ready.check_token(token).unwrap_err();
            assert!(
                error.to_string().contains("not the agent's token"),
                "{error}"
            );
        }
        // An agent that sent none at start has no Ready that counts later.
        assert!(again.check_token(None).is_err());
    }

    #[test]
    fn done_says_whether_a_session_lives_on() {
        let done: RunDone = parse_payload("done", br#"{"exit_code": 0}"#).unwrap();
        assert!(!done.kept && !done.session_gone);
        let done: RunDone = parse_payload("done", br#"{"exit_code": 0, "kept": true}"#).unwrap();
        assert!(done.kept);
        let gone = br#"{"exit_code": -9, "session_gone": true}"#;
        let done: RunDone = parse_payload("done", gone).unwrap();
        assert!(done.session_gone && done.exit_code == -9);
    }

    #[test]
    fn returned_files_have_plain_relative_paths() {
        let payload = |path: &str, data: &[u8]| {
            let mut bytes = u16::try_from(path.len()).unwrap().to_be_bytes().to_vec();
            bytes.extend_from_slice(path.as_bytes());
            bytes.extend_from_slice(data);
            Bytes::from(bytes)
        };
        let (path, data) = parse_file(&payload("sub/r.csv", b"a,b")).unwrap();
        assert_eq!((path.as_str(), &data[..]), ("sub/r.csv", &b"a,b"[..]));
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a//b", "./a"] {
            assert!(parse_file(&payload(bad, b"x")).is_err(), "{bad:?}");
        }
        assert!(parse_file(&Bytes::from_static(b"\x00\x09short")).is_err());
    }

    #[test]
    fn png_sizes_come_from_the_header() {
        let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        assert_eq!(png_size(&png).unwrap(), (640, 480));
        assert!(png_size(b"GIF89a not a png at all....").is_err());
    }

    #[test]
    fn call_frames_may_be_larger_than_output_frames() {
        let mut decoder = FrameDecoder::default();
        let big = vec![b'x'; MAX_AGENT_FRAME + 1];
        decoder.extend(&frame(b'C', &big));
        assert_eq!(
            decoder.next_frame().unwrap().unwrap().payload.len(),
            big.len()
        );
        decoder.extend(&frame(b'O', &big));
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtocolError::Oversized { .. })
        ));
    }

    #[test]
    fn stream_frames_round_trip_and_malformed_ones_are_refused() {
        let frames = [
            StreamFrame::Open {
                id: 7,
                service: StreamService::HttpProxy,
            },
            StreamFrame::Data {
                id: u32::MAX,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n"),
            },
            StreamFrame::Close { id: 9, abort: true },
            StreamFrame::Close {
                id: 9,
                abort: false,
            },
            StreamFrame::Window {
                id: 3,
                credit: STREAM_WINDOW,
            },
        ];
        let mut decoder = FrameDecoder::default();
        for frame in &frames {
            decoder.extend(&frame.encode());
        }
        for sent in frames {
            let got = decoder.next_frame().unwrap().unwrap();
            let AgentFrameKind::Stream(kind) = got.kind else {
                panic!("{got:?}");
            };
            assert_eq!(StreamFrame::parse(kind, got.payload).unwrap(), sent);
        }
        let bad = |kind, payload: &'static [u8]| {
            StreamFrame::parse(kind, Bytes::from_static(payload)).is_err()
        };
        assert!(bad(StreamKind::Data, b"\0\0\0"), "no id");
        assert!(bad(StreamKind::Open, b"\0\0\0\x01z"), "unknown service");
        assert!(bad(StreamKind::Close, b"\0\0\0\x01\x02"));
        assert!(bad(StreamKind::Window, b"\0\0\0\x01\0\0"));
        let mut decoder = FrameDecoder::default();
        decoder.extend(&frame(b'S', &vec![0; 4 + MAX_STREAM_CHUNK + 1]));
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtocolError::Oversized { .. })
        ));
    }

    #[test]
    fn the_buffer_shrinks_after_a_large_frame() {
        let mut decoder = FrameDecoder::default();
        let big = vec![b'x'; 8 * KEEP_BUFFER];
        let mut wire = frame(b'C', &big);
        wire.extend(frame(b'O', b"after"));
        decoder.extend(&wire);
        let call = decoder.next_frame().unwrap().unwrap();
        assert_eq!(call.payload.len(), big.len());
        // Not in (or right after) the call's allocation.
        let call_at = call.payload.as_ptr() as usize;
        let buffer_at = decoder.buffer_address();
        assert!(
            !(call_at..call_at + big.len() + KEEP_BUFFER).contains(&buffer_at),
            "the decoder still holds the call's allocation"
        );
        drop(call);
        let after = decoder.next_frame().unwrap().unwrap();
        assert_eq!(&after.payload[..], b"after");
    }
}

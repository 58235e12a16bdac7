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
        let max = if kind == AgentFrameKind::Call {
            MAX_CALL_FRAME
        } else {
            MAX_AGENT_FRAME
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
        Ok(Some(AgentFrame { kind, payload }))
    }

    /// Bytes received but not yet part of a whole frame.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// A run request.
#[derive(Debug, Serialize)]
pub struct RunFrame<'a> {
    pub code: &'a str,
    /// Per stream: bytes beyond this are counted by the agent, not sent.
    pub max_output_bytes: u64,
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

/// An answer to a tool call (`A`): its JSON payload, framed.
pub fn encode_answer(answer: &serde_json::Value) -> Vec<u8> {
    encode_frame(b'A', |frame| {
        serde_json::to_writer(frame, answer).expect("a JSON value always serializes")
    })
}

fn encode_frame(kind: u8, write_payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = vec![kind, 0, 0, 0, 0];
    write_payload(&mut frame);
    let len =
        u32::try_from(frame.len() - HEADER_LEN).expect("payloads are validated far below 4 GiB");
    frame[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    frame
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
    /// Time inside the agent from request to exit, for latency accounting.
    #[serde(default)]
    pub agent_us: u64,
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

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: xorshift bytes in random split sizes.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let mut decoder = FrameDecoder::default();
            for _ in 0..(next() % 16) {
                let len = (next() % 64) as usize;
                let chunk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                decoder.extend(&chunk);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    let _ = parse_payload::<RunDone>("done", &frame.payload);
                }
            }
        }
    }

    #[test]
    fn run_frame_carries_any_code() {
        let code = "print('\\u00e9')\n\0\"quoted\"";
        let bytes = RunFrame {
            code,
            max_output_bytes: 7,
            proxy: None,
        }
        .encode();
        assert_eq!(bytes[0], b'R');
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5);
        let value: serde_json::Value = serde_json::from_slice(&bytes[5..]).unwrap();
        assert_eq!(value["code"], code);
        assert_eq!(value["max_output_bytes"], 7);
        assert!(value.get("servers").is_none());

        let proxy = serde_json::json!({"servers": [{"name": "time"}], "discovered": []});
        let bytes = RunFrame {
            code,
            max_output_bytes: 7,
            proxy: Some(&proxy),
        }
        .encode();
        let value: serde_json::Value = serde_json::from_slice(&bytes[5..]).unwrap();
        assert_eq!(value["servers"][0]["name"], "time");
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
}

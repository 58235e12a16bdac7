//! The front end's stdio transport: rmcp's line transport, with every
//! request answered, even one over the message size limit.
//!
//! Owns the size limit of a message on stdin. rmcp drops a line over its
//! limit with a log line, so the request in it would never be answered and
//! the client would wait forever. `LineWatch` sits in front of rmcp's
//! reader, sees the same bytes, applies the same limit and reports each
//! over-limit line with the request id read from its head (or its tail: some
//! clients write `id` last); [`StdioTransport`] answers it with an
//! invalid-request error naming the limit. Parsing, dispatch and writing stay
//! rmcp's, so stdout still carries only rmcp's framed messages. It keeps no
//! copy of a line that fits in one read, so the hot path gains a scan for
//! newlines and nothing else.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rmcp::RoleServer;
use rmcp::model::{ErrorData, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// The largest JSON-RPC message (one line, newline included) the server reads.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How much of a long line's start is kept to find its `id`.
const HEAD_KEEP: usize = 4096;
/// How much of a long line's end is kept to find an `id` written last.
const TAIL_KEEP: usize = 256;

/// The transport `serve` uses: stdin and stdout.
pub fn stdio() -> StdioTransport<tokio::io::Stdin, tokio::io::Stdout> {
    StdioTransport::new(tokio::io::stdin(), tokio::io::stdout(), MAX_MESSAGE_BYTES)
}

/// A line over the limit, as [`LineWatch`] saw it go by.
#[derive(Debug)]
struct Oversized {
    id: Option<RequestId>,
    bytes: usize,
}

/// rmcp's transport over a `LineWatch`ed reader, answering what it drops.
pub struct StdioTransport<R: AsyncRead + Unpin, W: AsyncWrite> {
    inner: AsyncRwTransport<RoleServer, LineWatch<R>, W>,
    oversized: mpsc::UnboundedReceiver<Oversized>,
    limit: usize,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite> std::fmt::Debug for StdioTransport<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioTransport")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<R, W> StdioTransport<R, W>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    /// Lines over `limit` bytes (newline included) are answered, not read.
    pub fn new(read: R, write: W, limit: usize) -> Self {
        let (reports, oversized) = mpsc::unbounded_channel();
        let watch = LineWatch {
            inner: read,
            limit,
            line: 0,
            head: Vec::new(),
            tail: Vec::new(),
            reports,
        };
        // The same limit on both sides: rmcp drops exactly the lines we answer.
        let inner = AsyncRwTransport::new_server(watch, write).with_max_line_length(limit);
        Self {
            inner,
            oversized,
            limit,
        }
    }

    fn answer(&mut self, oversized: Oversized) {
        let Oversized { id, bytes } = oversized;
        let limit = self.limit;
        tracing::warn!(bytes, limit, id = ?id, "JSON-RPC message over the size limit; not read");
        // A notification, or no id where we look for one: nothing to answer.
        let Some(id) = id else { return };
        let message = format!(
            "the message is {bytes} bytes, over this server's limit of {limit} bytes ({} MiB) per \
             JSON-RPC message; send less per request",
            limit >> 20
        );
        let error = TxJsonRpcMessage::<RoleServer>::error(
            ErrorData::invalid_request(message, None),
            Some(id),
        );
        // Rare, and must not wait inside `receive` (which rmcp may cancel):
        // rmcp's own writer orders it among the other responses.
        let send = self.inner.send(error);
        tokio::spawn(async move {
            if let Err(error) = send.await {
                tracing::warn!(%error, "could not answer an oversized message");
            }
        });
    }
}

impl<R, W> Transport<RoleServer> for StdioTransport<R, W>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            // rmcp's receive is cancel-safe (a partial line stays buffered).
            tokio::select! {
                biased;
                Some(oversized) = self.oversized.recv() => self.answer(oversized),
                message = self.inner.receive() => return message,
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inner.close().await
    }
}

/// A reader that passes bytes through untouched and reports every line over
/// `limit` bytes, newline included (how rmcp counts), with its request id.
struct LineWatch<R> {
    inner: R,
    limit: usize,
    /// Bytes of the current line read so far.
    line: usize,
    /// The current line's first bytes, kept only once it spans reads.
    head: Vec<u8>,
    /// The current line's last bytes, kept only once it spans reads.
    tail: Vec<u8>,
    reports: mpsc::UnboundedSender<Oversized>,
}

impl<R: AsyncRead + Unpin> AsyncRead for LineWatch<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.watch(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<R> LineWatch<R> {
    fn watch(&mut self, mut data: &[u8]) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            let bytes = self.line + end + 1;
            if bytes > self.limit {
                self.report(&data[..end], bytes);
            }
            self.line = 0;
            self.head.clear();
            self.tail.clear();
            data = &data[end + 1..];
        }
        if !data.is_empty() {
            self.line += data.len();
            keep_head(&mut self.head, data);
            keep_tail(&mut self.tail, data);
        }
    }

    /// `last` is the line's part in this read, newline excluded.
    fn report(&mut self, last: &[u8], bytes: usize) {
        keep_head(&mut self.head, last);
        keep_tail(&mut self.tail, last);
        let id = id_from_head(&self.head).or_else(|| id_from_tail(&self.tail));
        // The receiver lives as long as the transport that reads through us.
        let _ = self.reports.send(Oversized { id, bytes });
    }
}

fn keep_head(head: &mut Vec<u8>, data: &[u8]) {
    let room = HEAD_KEEP.saturating_sub(head.len());
    head.extend_from_slice(&data[..data.len().min(room)]);
}

fn keep_tail(tail: &mut Vec<u8>, data: &[u8]) {
    tail.extend_from_slice(&data[data.len().saturating_sub(TAIL_KEEP)..]);
    let excess = tail.len().saturating_sub(TAIL_KEEP);
    tail.drain(..excess);
}

/// The `id` of a JSON object whose start is `head`, if it comes before the
/// first value that does not fit in `head`: serde_json parses the prefix in
/// order, and the visitor stops at `id`.
fn id_from_head(head: &[u8]) -> Option<RequestId> {
    struct FindId<'a>(&'a mut Option<RequestId>);
    impl<'de> Visitor<'de> for FindId<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON-RPC message")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "id" {
                    *self.0 = map.next_value()?;
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut id = None;
    // The rest of the line is cut off: the parse ends in an error, after
    // the visitor has seen what there was.
    let _ = serde::Deserializer::deserialize_map(
        &mut serde_json::Deserializer::from_slice(head),
        FindId(&mut id),
    );
    id
}

/// The `id` among the last members of a JSON object that ends `tail`: the
/// shortest suffix after a comma that is itself a whole object with an `id`
/// (a comma inside a string or a nested value never yields a whole object).
fn id_from_tail(tail: &[u8]) -> Option<RequestId> {
    #[derive(serde::Deserialize)]
    struct Members {
        id: RequestId,
    }
    let mut candidate = Vec::with_capacity(tail.len() + 1);
    tail.iter()
        .enumerate()
        .rev()
        .filter(|&(_, &b)| b == b',')
        .find_map(|(comma, _)| {
            candidate.clear();
            candidate.push(b'{');
            candidate.extend_from_slice(&tail[comma + 1..]);
            serde_json::from_slice::<Members>(&candidate)
                .ok()
                .map(|m| m.id)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::NumberOrString;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[test]
    fn finds_the_id_at_either_end() {
        let number = |n| Some(NumberOrString::Number(n));
        assert_eq!(
            id_from_head(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"argu"#),
            number(7)
        );
        assert_eq!(
            id_from_head(br#"{"method":"x","params":{"a":[1,{"id":3}]},"id":"req-9","#),
            Some(NumberOrString::String("req-9".into())),
            "nested ids are skipped"
        );
        assert_eq!(
            id_from_head(br#"{"method":"x","params":{"code":"pri"#),
            None
        );
        assert_eq!(
            id_from_tail(br#"t(1)\n\",\"id\":5}"}},"jsonrpc":"2.0","id":12}"#),
            number(12)
        );
        assert_eq!(
            id_from_tail(br#"de":"x"}},"jsonrpc":"2.0","id":"abc"}"#),
            Some(NumberOrString::String("abc".into()))
        );
        assert_eq!(
            id_from_tail(br#""a":{"b":1,"id":4}}}"#),
            None,
            "a nested id is not the request's"
        );
        assert_eq!(
            id_from_tail(br#"x\",\"id\":4}"}"#),
            None,
            "nor one inside a string"
        );
        assert_eq!(id_from_tail(br#"ode":"x"}},"jsonrpc":"2.0"}"#), None);
    }

    /// A ping padded with spaces to `bytes` bytes, newline included.
    fn ping(id: i64, bytes: usize) -> Vec<u8> {
        let mut line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#).into_bytes();
        line.resize(bytes - 1, b' ');
        line.push(b'\n');
        line
    }

    /// Pins our limit to rmcp's count: a line of exactly the limit is read,
    /// one byte more is answered with an error, and the next line is read.
    #[tokio::test]
    async fn lines_over_the_limit_are_answered_and_the_rest_read() {
        const LIMIT: usize = 256;
        let (mut client, server_in) = tokio::io::duplex(64);
        let (server_out, client_out) = tokio::io::duplex(4096);
        let mut transport = StdioTransport::new(server_in, server_out, LIMIT);
        tokio::spawn(async move {
            for line in [
                ping(1, LIMIT),
                ping(2, LIMIT + 1),
                ping(3, 10 * LIMIT),
                ping(4, 100),
            ] {
                client.write_all(&line).await.unwrap();
            }
        });
        let id = |message: Option<RxJsonRpcMessage<RoleServer>>| match message {
            Some(rmcp::model::JsonRpcMessage::Request(request)) => request.id,
            other => panic!("expected a request: {other:?}"),
        };
        assert_eq!(id(transport.receive().await), NumberOrString::Number(1));
        assert_eq!(id(transport.receive().await), NumberOrString::Number(4));
        let mut answers = BufReader::new(client_out).lines();
        for expected in [2, 3] {
            let line = answers.next_line().await.unwrap().unwrap();
            let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(answer["id"], expected, "{answer}");
            assert_eq!(answer["error"]["code"], -32600, "{answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains("limit of 256 bytes"), "{message}");
        }
    }
}

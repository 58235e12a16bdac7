//! The front end's stdio transport: rmcp's line transport, with an answer
//! for every line a client sends.
//!
//! Owns what reaches rmcp's reader. rmcp drops, without an answer, a line
//! over its size limit, a line that is not JSON (invalid UTF-8, a lone
//! surrogate, cut short) and one nested past serde_json's depth limit; it
//! answers a line that is JSON but no message (params that are an array, a
//! method that is no string, a batch, ...) without the request's id; and of
//! two requests in flight with the same id it answers one. A client waiting
//! on an id would wait forever. So [`LineGate`] sits under rmcp's reader and
//! passes on only lines that parse as the very type rmcp parses; every other
//! line it reports, and [`StdioTransport`] answers it: `-32700` with no id
//! for a line that is not JSON, `-32600` with the request's id when its top
//! level can be read ([`envelope`]) for the rest, a line over the size
//! limit included (its id read from its head or its tail). A notification
//! that is not a valid one is logged, never answered (JSON-RPC). A request
//! reusing the id of one in flight is answered with an error and never
//! reaches rmcp. A notification before the lifecycle began (rmcp ends the
//! connection on one) is logged and dropped: it has nothing to act on yet.
//!
//! Parsing, dispatch and writing stay rmcp's: stdout carries only rmcp's
//! framed messages. The price is a second parse of each line (rmcp parses
//! it again) and one copy of it, held until its newline arrives; a line is
//! held only up to the limit, and a buffer grown by a large line is given
//! back once it has gone through.

use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rmcp::RoleServer;
use rmcp::model::{
    ClientNotification, ClientRequest, ErrorCode, ErrorData, GetMeta, JsonRpcMessage,
    ProtocolVersion, RequestId,
};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::envelope::{self, DEPTH_LIMIT, Shape};

/// The largest JSON-RPC message (one line, newline included) the server reads.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How much of a long line's start is kept to find its `id`.
const HEAD_KEEP: usize = 4096;
/// How much of a long line's end is kept to find an `id` written last.
const TAIL_KEEP: usize = 256;
/// How much is read from stdin at a time.
const READ_CHUNK: usize = 8 * 1024;
/// A line buffer grown past this is shrunk back to it once empty.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The transport `serve` uses: stdin and stdout.
pub fn stdio() -> StdioTransport<tokio::io::Stdin, tokio::io::Stdout> {
    StdioTransport::new(tokio::io::stdin(), tokio::io::stdout(), MAX_MESSAGE_BYTES)
}

/// A line [`LineGate`] kept from rmcp, to answer.
#[derive(Debug)]
struct Refused {
    /// `None`: answered without an id (JSON-RPC's `null`).
    id: Option<RequestId>,
    error: ErrorData,
}

/// rmcp's transport over a [`LineGate`]d reader, answering what the gate
/// keeps back and requests that reuse an id in flight.
pub struct StdioTransport<R: AsyncRead + Unpin, W: AsyncWrite> {
    inner: AsyncRwTransport<RoleServer, LineGate<R>, W>,
    refused: mpsc::UnboundedReceiver<Refused>,
    /// The ids of the client's requests rmcp has and has not answered yet.
    in_flight: HashSet<RequestId>,
    /// rmcp has begun a lifecycle: it read an `initialize`, or a request of
    /// the 2026-07-28 revision with its metadata inline (see [`begins_lifecycle`]).
    lifecycle: bool,
    limit: usize,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite> std::fmt::Debug for StdioTransport<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioTransport")
            .field("limit", &self.limit)
            .field("in_flight", &self.in_flight.len())
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
        let (reports, refused) = mpsc::unbounded_channel();
        let gate = LineGate {
            inner: read,
            limit,
            buf: Vec::new(),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            start: 0,
            passed: 0,
            scanned: 0,
            over: None,
            eof: false,
            reports,
        };
        // The gate passes no line over the limit; rmcp's own stays a backstop.
        let inner = AsyncRwTransport::new_server(gate, write).with_max_line_length(limit);
        Self {
            inner,
            refused,
            in_flight: HashSet::new(),
            lifecycle: false,
            limit,
        }
    }

    fn answer(&mut self, refused: Refused) {
        let Refused { id, error } = refused;
        tracing::warn!(id = ?id, code = error.code.0, message = %error.message, "JSON-RPC line refused");
        let error = TxJsonRpcMessage::<RoleServer>::error(error, id);
        // Rare, and must not wait inside `receive` (which rmcp may cancel):
        // rmcp's own writer orders it among the other responses.
        let send = self.inner.send(error);
        tokio::spawn(async move {
            if let Err(error) = send.await {
                tracing::warn!(%error, "could not answer a refused JSON-RPC line");
            }
        });
    }

    /// Whether `message` may go on to rmcp: not a request whose id is in
    /// flight (answered), nor a notification before the lifecycle (dropped).
    fn admit(&mut self, message: &RxJsonRpcMessage<RoleServer>) -> Admit {
        match message {
            JsonRpcMessage::Notification(_) if !self.lifecycle => {
                tracing::warn!(
                    "a notification before initialize (or a first request) has nothing to act on: dropped"
                );
                Admit::Drop
            }
            JsonRpcMessage::Request(request) => {
                if self.in_flight.insert(request.id.clone()) {
                    self.lifecycle |= begins_lifecycle(&request.request);
                    return Admit::Pass;
                }
                Admit::Answer(Refused {
                    id: Some(request.id.clone()),
                    error: ErrorData::invalid_request(
                        format!(
                            "a request with id {} is already in flight; give each request its own id",
                            request.id
                        ),
                        None,
                    ),
                })
            }
            // rmcp never answers a request it cancels: its id is free again.
            JsonRpcMessage::Notification(notification) => {
                if let ClientNotification::CancelledNotification(cancelled) =
                    &notification.notification
                    && let Some(id) = &cancelled.params.request_id
                {
                    self.in_flight.remove(id);
                }
                Admit::Pass
            }
            _ => Admit::Pass,
        }
    }
}

enum Admit {
    Pass,
    Answer(Refused),
    Drop,
}

/// Whether rmcp begins its lifecycle on reading `request` (after it, a
/// notification reaches the service; before it, rmcp ends the connection on
/// one): an `initialize`, or a request other than `ping` and
/// `server/discover` whose inline metadata names a supported revision (the
/// 2026-07-28 revision has no `initialize`). Mirrors rmcp's `serve_server`.
fn begins_lifecycle(request: &ClientRequest) -> bool {
    match request {
        ClientRequest::InitializeRequest(_) => true,
        ClientRequest::PingRequest(_) | ClientRequest::DiscoverRequest(_) => false,
        request => {
            let meta = request.get_meta();
            meta.missing_required_keys(&ProtocolVersion::V_2026_07_28)
                .is_empty()
                && meta
                    .protocol_version()
                    .is_some_and(|version| ProtocolVersion::KNOWN_VERSIONS.contains(&version))
        }
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
        match &item {
            JsonRpcMessage::Response(response) => {
                self.in_flight.remove(&response.id);
            }
            JsonRpcMessage::Error(error) => {
                if let Some(id) = &error.id {
                    self.in_flight.remove(id);
                }
            }
            _ => {}
        }
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            // rmcp's receive is cancel-safe (a partial line stays buffered).
            let message = tokio::select! {
                biased;
                Some(refused) = self.refused.recv() => {
                    self.answer(refused);
                    continue;
                }
                message = self.inner.receive() => message?,
            };
            match self.admit(&message) {
                Admit::Pass => return Some(message),
                Admit::Answer(refused) => self.answer(refused),
                Admit::Drop => {}
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inner.close().await
    }
}

/// A line over the limit, while its bytes still come: only its ends are kept.
#[derive(Debug, Default)]
struct Over {
    bytes: usize,
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// A reader that holds each line until its newline, then passes it on if it
/// parses as the message type rmcp reads, and otherwise reports it (with
/// what should answer it) instead.
struct LineGate<R> {
    inner: R,
    limit: usize,
    /// Bytes read and not yet passed on: lines passed, then lines not yet
    /// judged (the last one perhaps without its newline yet).
    buf: Vec<u8>,
    /// Where reads from `inner` land.
    chunk: Box<[u8]>,
    /// `buf[start..passed]` is judged and goes to rmcp next.
    start: usize,
    passed: usize,
    /// `buf[passed..scanned]` holds no newline.
    scanned: usize,
    /// The line in progress is over the limit: it is counted, not kept.
    over: Option<Over>,
    eof: bool,
    reports: mpsc::UnboundedSender<Refused>,
}

impl<R: AsyncRead + Unpin> AsyncRead for LineGate<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.start < this.passed {
                let n = (this.passed - this.start).min(out.remaining());
                out.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                return Poll::Ready(Ok(()));
            }
            if this.judge_next_line() {
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let data = read.filled();
            if data.is_empty() {
                this.eof = true;
                // A last line without its newline is judged like the others.
                if this.over.is_some() || this.buf.len() > this.passed {
                    this.buf.push(b'\n');
                }
            } else {
                this.buf.extend_from_slice(data);
            }
        }
    }
}

impl<R> LineGate<R> {
    /// Judges the next whole line, if `buf` holds one; false if it does not
    /// (then what there is of the line is counted against the limit).
    fn judge_next_line(&mut self) -> bool {
        // Everything passed is gone to rmcp: drop it.
        if self.start == self.passed && self.passed > 0 {
            self.buf.drain(..self.passed);
            self.scanned -= self.passed;
            (self.start, self.passed) = (0, 0);
            if self.buf.capacity() > KEEP_CAPACITY && self.buf.len() <= KEEP_CAPACITY {
                self.buf.shrink_to(KEEP_CAPACITY);
            }
        }
        let Some(newline) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.buf.len();
            self.count_long_line();
            return false;
        };
        let end = self.scanned + newline + 1;
        let line = &self.buf[self.passed..end];
        let verdict = if self.over.is_some() || line.len() > self.limit {
            let mut over = self.over.take().unwrap_or_default();
            over.bytes += line.len();
            keep_head(&mut over.head, line);
            keep_tail(&mut over.tail, &line[..line.len() - 1]);
            oversized(&over, self.limit)
        } else {
            judge(line)
        };
        match verdict {
            Verdict::Pass => self.passed = end,
            Verdict::Drop => drop(self.buf.drain(self.passed..end)),
            Verdict::Answer(refused) => {
                // The receiver lives as long as the transport reading us.
                let _ = self.reports.send(refused);
                self.buf.drain(self.passed..end);
            }
        }
        self.scanned = self.passed;
        true
    }

    /// A line without its newline yet, over the limit: kept no longer.
    fn count_long_line(&mut self) {
        let part = &self.buf[self.passed..];
        if self.over.is_none() && part.len() < self.limit {
            return;
        }
        let over = self.over.get_or_insert_with(Over::default);
        over.bytes += part.len();
        keep_head(&mut over.head, part);
        keep_tail(&mut over.tail, part);
        self.buf.truncate(self.passed);
        self.scanned = self.passed;
    }
}

/// What becomes of a whole line.
enum Verdict {
    /// On to rmcp.
    Pass,
    /// Kept from rmcp, unanswered: no message, or an invalid notification.
    Drop,
    /// Kept from rmcp and answered.
    Answer(Refused),
}

/// The verdict on a whole line (newline included).
fn judge(line: &[u8]) -> Verdict {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    if text.is_empty() {
        return Verdict::Pass; // rmcp skips it
    }
    let error = match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(text) {
        Ok(_) => return Verdict::Pass,
        Err(error) => error,
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Drop; // no message at all: nothing to answer
    }
    let envelope = envelope::read(text);
    let id = envelope.answer_id();
    let error = match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            if envelope.depth >= DEPTH_LIMIT =>
        {
            ErrorData::invalid_request(
                format!(
                    "the message nests {} levels deep; this server reads at most {} levels",
                    envelope.depth,
                    DEPTH_LIMIT - 1
                ),
                None,
            )
        }
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => {
            let error = ErrorData::new(
                ErrorCode::PARSE_ERROR,
                format!("the message is not valid JSON in UTF-8: {error}"),
                None,
            );
            // JSON-RPC: a parse error never carries an id.
            return Verdict::Answer(Refused { id: None, error });
        }
        serde_json::error::Category::Data if envelope.shape == Shape::Array => {
            ErrorData::invalid_request(
                "a batch (a JSON array) is not supported: send one message per line",
                None,
            )
        }
        serde_json::error::Category::Data if envelope.is_notification() => {
            tracing::warn!(%error, "invalid JSON-RPC notification ignored");
            return Verdict::Drop;
        }
        serde_json::error::Category::Data => ErrorData::invalid_request(
            format!("not a valid JSON-RPC 2.0 message of MCP: {error}"),
            None,
        ),
    };
    Verdict::Answer(Refused { id, error })
}

/// The verdict on a line over the limit: answered with the id read from
/// its ends, if one is there.
fn oversized(over: &Over, limit: usize) -> Verdict {
    let bytes = over.bytes;
    let id = envelope::read(&over.head)
        .answer_id()
        .or_else(|| id_from_tail(&over.tail));
    tracing::warn!(bytes, limit, id = ?id, "JSON-RPC message over the size limit; not read");
    // A notification, or no id where we look for one: nothing to answer.
    let Some(id) = id else {
        return Verdict::Drop;
    };
    let message = format!(
        "the message is {bytes} bytes, over this server's limit of {limit} bytes ({} MiB) per \
         JSON-RPC message; send less per request",
        limit >> 20
    );
    Verdict::Answer(Refused {
        id: Some(id),
        error: ErrorData::invalid_request(message, None),
    })
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
    fn finds_the_id_at_the_end() {
        let number = |n| Some(NumberOrString::Number(n));
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
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(1)
        );
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(4)
        );
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

    /// A transport over in-memory pipes: (transport, client's writer, the
    /// answers it reads).
    fn pipes(
        limit: usize,
    ) -> (
        StdioTransport<tokio::io::DuplexStream, tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        tokio::io::Lines<BufReader<tokio::io::DuplexStream>>,
    ) {
        // Room for every line a test writes before it reads.
        let (client, server_in) = tokio::io::duplex(1 << 16);
        let (server_out, client_out) = tokio::io::duplex(1 << 16);
        let transport = StdioTransport::new(server_in, server_out, limit);
        (transport, client, BufReader::new(client_out).lines())
    }

    fn request_id(message: Option<RxJsonRpcMessage<RoleServer>>) -> RequestId {
        match message {
            Some(JsonRpcMessage::Request(request)) => request.id,
            other => panic!("expected a request: {other:?}"),
        }
    }

    /// Every line that is no message rmcp reads is answered (`-32700` with no
    /// id when it is not JSON, `-32600` with its id when one can be read),
    /// except an invalid notification; rmcp sees only the valid request.
    #[tokio::test]
    async fn every_line_rmcp_cannot_read_is_answered_by_the_gate() {
        let (mut transport, mut client, mut answers) = pipes(MAX_MESSAGE_BYTES);
        let deep = format!(
            r#"{{"jsonrpc":"2.0","method":"tools/list","params":{{"_meta":{{"x":{}1{}}}}},"id":8}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        let lines: Vec<Vec<u8>> = vec![
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[]}"#.to_vec(),
            br#"{"jsonrpc":"2.0","id":2,"method":5}"#.to_vec(),
            br#"{"jsonrpc":"1.0","id":"three","method":"ping"}"#.to_vec(),
            br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#.to_vec(),
            br#"[{"jsonrpc":"2.0","id":4,"method":"ping"}]"#.to_vec(),
            b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"ping\",\"params\":{\"s\":\"\xff\"}}"
                .to_vec(),
            br#"{"jsonrpc":"2.0","id":6,"method":"ping","params":{"s":"\ud800"}}"#.to_vec(),
            br#"{"jsonrpc":"2.0","id":7,"method":"pi"#.to_vec(),
            deep.into_bytes(),
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":5}"#.to_vec(),
            b"   ".to_vec(),
            br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#.to_vec(),
        ];
        tokio::spawn(async move {
            for mut line in lines {
                line.push(b'\n');
                client.write_all(&line).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(9)
        );
        assert!(transport.receive().await.is_none(), "then EOF");
        let mut got = Vec::new();
        for _ in 0..9 {
            let line = answers.next_line().await.unwrap().unwrap();
            let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
            got.push((
                answer["id"].to_string(),
                answer["error"]["code"].as_i64().unwrap(),
            ));
        }
        got.sort();
        let want = [
            ("\"three\"", -32600),
            ("1", -32600),
            ("2", -32600),
            ("8", -32600),
            ("null", -32700),
            ("null", -32700),
            ("null", -32700),
            ("null", -32600),
            ("null", -32600),
        ];
        let mut want: Vec<_> = want
            .iter()
            .map(|(id, code)| (id.to_string(), *code))
            .collect();
        want.sort();
        assert_eq!(got, want);
    }

    /// A request that reuses the id of one in flight gets an error; once the
    /// first is answered (or cancelled) the id may be used again.
    #[tokio::test]
    async fn a_duplicate_id_in_flight_is_answered_with_an_error() {
        let (mut transport, mut client, mut answers) = pipes(MAX_MESSAGE_BYTES);
        let ping = |id: u32| format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n");
        // The lifecycle begins (notifications reach rmcp from here on).
        client.write_all(INITIALIZE.as_bytes()).await.unwrap();
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(0)
        );
        client.write_all(ping(1).as_bytes()).await.unwrap();
        client.write_all(ping(1).as_bytes()).await.unwrap();
        client.write_all(ping(2).as_bytes()).await.unwrap();
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(1)
        );
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(2)
        );
        let answer: serde_json::Value =
            serde_json::from_str(&answers.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(answer["id"], 1, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("already in flight"), "{message}");
        let done = TxJsonRpcMessage::<RoleServer>::response(
            rmcp::model::ServerResult::empty(()),
            NumberOrString::Number(1),
        );
        transport.send(done).await.unwrap();
        client.write_all(ping(1).as_bytes()).await.unwrap();
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(1)
        );
        let cancel =
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}"#;
        client
            .write_all(format!("{cancel}\n").as_bytes())
            .await
            .unwrap();
        client.write_all(ping(2).as_bytes()).await.unwrap();
        assert!(matches!(
            transport.receive().await,
            Some(JsonRpcMessage::Notification(_))
        ));
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(2)
        );
    }

    const INITIALIZE: &str = concat!(
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","#,
        r#""capabilities":{},"clientInfo":{"name":"test","version":"0"}}}"#,
        "\n"
    );

    #[tokio::test]
    async fn a_notification_before_the_lifecycle_is_dropped_and_one_after_passes() {
        let (mut transport, mut client, _answers) = pipes(MAX_MESSAGE_BYTES);
        let cancel = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":9}}\n";
        client.write_all(cancel.as_bytes()).await.unwrap();
        client.write_all(INITIALIZE.as_bytes()).await.unwrap();
        client.write_all(cancel.as_bytes()).await.unwrap();
        assert_eq!(
            request_id(transport.receive().await),
            NumberOrString::Number(0)
        );
        assert!(matches!(
            transport.receive().await,
            Some(JsonRpcMessage::Notification(_))
        ));
    }
}

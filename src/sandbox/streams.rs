//! Byte streams between the host and the agent, multiplexed over the
//! agent channel with per-stream credit (the yamux and SSH channel scheme).
//!
//! Owns the host's half of every stream a run's agent opens: the table of
//! open streams, the credit each side has left, the [`SandboxStream`] each
//! one is served through (an `AsyncRead + AsyncWrite` a service reads and
//! writes like a socket), and the tasks serving them, which end with the run.
//! It knows nothing of what a stream carries (that is the [`StreamService`]:
//! egress speaks HTTP proxy on it) and writes no frame itself: the run loop
//! in [`super`] turns each [`StreamEvent`] into a frame and hands each
//! agent's stream frame here.
//!
//! Bounds: the agent may send a stream only the bytes the host granted
//! ([`STREAM_WINDOW`], then one window update each time a service has read a
//! quarter of it), so a stream holds at most one window on the host however
//! fast the sandbox writes; a frame past its credit is a protocol error. The
//! host sends only what the agent granted in turn, so a service that writes
//! faster than the sandbox reads waits in `poll_write`. At most
//! [`MAX_OPEN_STREAMS`] are open at once (more are aborted at open).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::protocol::{
    MAX_STREAM_CHUNK, ProtocolError, STREAM_WINDOW, StreamFrame, StreamService as Service,
};

/// Streams one run may have open at once, whatever the services allow.
pub const MAX_OPEN_STREAMS: usize = 256;
/// A service has read this much since its last window update: grant it again.
const WINDOW_UPDATE_AT: u32 = STREAM_WINDOW / 4;

/// Serves the streams a run's agent opens (egress implements it).
pub trait StreamService: Send + Sync {
    /// Serves one stream until it ends; the future is dropped (and the
    /// stream aborted) when the run ends first.
    fn serve(&self, service: Service, stream: SandboxStream) -> BoxFuture<'static, ()>;
}

/// What the host sends the agent about a stream, in the order it happened.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Frame(StreamFrame),
    /// The service let go of the stream: forget it (and abort it, if it
    /// was not closed both ways).
    Gone {
        id: u32,
        abort: bool,
    },
}

/// The state both halves of one stream share.
#[derive(Debug, Default)]
struct State {
    /// Bytes from the agent a service has not read yet.
    inbound: VecDeque<Bytes>,
    /// Bytes the agent may still send (what the host granted, not yet used).
    receive_credit: u32,
    /// Bytes read since the last window update.
    consumed: u32,
    /// The agent will send nothing more.
    inbound_ended: bool,
    /// Bytes the host may still send the agent.
    send_credit: u32,
    /// The host sent its end of data.
    outbound_ended: bool,
    /// Either side aborted.
    aborted: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl State {
    fn wake_all(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // Each critical section is a few field updates that cannot panic.
    shared.lock().expect("stream state is never poisoned")
}

/// One stream as a service sees it: reads are what the sandbox sent, writes
/// go to the sandbox within the credit it granted. Dropping it ends the
/// stream (aborting it unless its end of data was sent).
#[derive(Debug)]
pub struct SandboxStream {
    id: u32,
    shared: Shared,
    events: mpsc::UnboundedSender<StreamEvent>,
}

impl SandboxStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    fn send(&self, frame: StreamFrame) {
        // The receiver lives as long as the run; after it, nothing listens.
        let _ = self.events.send(StreamEvent::Frame(frame));
    }
}

impl AsyncRead for SandboxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let mut state = lock(&this.shared);
        if state.aborted {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let mut read = 0;
        while buf.remaining() > 0 {
            let Some(front) = state.inbound.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                state.inbound.pop_front();
            }
            read += n;
        }
        if read == 0 {
            if state.inbound_ended {
                return Poll::Ready(Ok(())); // end of file
            }
            state.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let read = u32::try_from(read).expect("at most one window is buffered");
        state.consumed += read;
        if state.consumed >= WINDOW_UPDATE_AT && !state.inbound_ended {
            let credit = std::mem::take(&mut state.consumed);
            state.receive_credit += credit;
            drop(state);
            this.send(StreamFrame::Window {
                id: this.id,
                credit,
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SandboxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let mut state = lock(&this.shared);
        if state.aborted || state.outbound_ended {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf
            .len()
            .min(MAX_STREAM_CHUNK)
            .min(usize::try_from(state.send_credit).unwrap_or(usize::MAX));
        if n == 0 {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        state.send_credit -= u32::try_from(n).expect("at most one chunk");
        drop(state);
        this.send(StreamFrame::Data {
            id: this.id,
            data: Bytes::copy_from_slice(&buf[..n]),
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(())) // every write is already a frame on its way
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let mut state = lock(&this.shared);
        if !state.outbound_ended && !state.aborted {
            state.outbound_ended = true;
            drop(state);
            this.send(StreamFrame::Close {
                id: this.id,
                abort: false,
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for SandboxStream {
    fn drop(&mut self) {
        // Ended its data: the sandbox's side reads it all and closes; what
        // the sandbox still sends is dropped as late. Else it is aborted.
        let state = lock(&self.shared);
        let abort = !(state.aborted || state.outbound_ended);
        drop(state);
        let _ = self.events.send(StreamEvent::Gone { id: self.id, abort });
    }
}

/// The streams of one run: their table, their serving tasks, and the events
/// the run loop turns into frames. Dropping it aborts every task (their
/// connections close) and forgets every stream.
pub struct Streams {
    table: HashMap<u32, Shared>,
    tasks: JoinSet<()>,
    sender: mpsc::UnboundedSender<StreamEvent>,
    events: mpsc::UnboundedReceiver<StreamEvent>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("open", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl Default for Streams {
    fn default() -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        Self {
            table: HashMap::new(),
            tasks: JoinSet::new(),
            sender,
            events,
        }
    }
}

impl Streams {
    /// The next event to send the agent (reaping the serving tasks that
    /// ended meanwhile). Cancel-safe.
    pub async fn next_event(&mut self) -> StreamEvent {
        loop {
            tokio::select! {
                event = self.events.recv() => {
                    return event.expect("the table holds a sender: the channel never closes");
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
    }

    /// Forgets a stream its service let go of.
    pub fn forget(&mut self, id: u32) {
        self.table.remove(&id);
    }

    /// A stream frame from the agent. `last_id` is the highest id the
    /// agent has opened in this container (ids are never reused); an open
    /// returns false when the stream is refused (too many open: the caller
    /// aborts it).
    pub fn receive(
        &mut self,
        frame: StreamFrame,
        last_id: &mut u32,
        service: &dyn StreamService,
    ) -> Result<bool, ProtocolError> {
        let broke = |reason: &str| ProtocolError::BadPayload {
            what: "stream",
            reason: reason.to_owned(),
        };
        match frame {
            StreamFrame::Open { id, service: kind } => {
                if id <= *last_id || id % 2 == 0 {
                    return Err(broke("a stream id that is not new and odd"));
                }
                *last_id = id;
                if self.table.len() >= MAX_OPEN_STREAMS {
                    return Ok(false);
                }
                let shared = Arc::new(Mutex::new(State {
                    receive_credit: STREAM_WINDOW,
                    send_credit: STREAM_WINDOW,
                    ..State::default()
                }));
                self.table.insert(id, shared.clone());
                let stream = SandboxStream {
                    id,
                    shared,
                    events: self.sender.clone(),
                };
                self.tasks.spawn(service.serve(kind, stream));
            }
            StreamFrame::Data { id, data } => {
                // A stream the host already let go of: its late bytes are dropped.
                let Some(shared) = self.table.get(&id) else {
                    return Ok(true);
                };
                let mut state = lock(shared);
                let len = u32::try_from(data.len()).expect("a chunk is at most 64 KiB");
                if len > state.receive_credit || state.inbound_ended {
                    return Err(broke("data past the stream's credit or its end"));
                }
                state.receive_credit -= len;
                if !state.aborted && !data.is_empty() {
                    state.inbound.push_back(data);
                }
                if let Some(waker) = state.reader.take() {
                    waker.wake();
                }
            }
            StreamFrame::Close { id, abort } => {
                if let Some(shared) = self.table.get(&id) {
                    let mut state = lock(shared);
                    if abort {
                        state.aborted = true;
                        state.inbound.clear();
                    }
                    state.inbound_ended = true;
                    state.wake_all();
                }
            }
            StreamFrame::Window { id, credit } => {
                if let Some(shared) = self.table.get(&id) {
                    let mut state = lock(shared);
                    state.send_credit = state
                        .send_credit
                        .checked_add(credit)
                        .ok_or_else(|| broke("credit past 4 GiB"))?;
                    if let Some(waker) = state.writer.take() {
                        waker.wake();
                    }
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Echoes what it reads, then ends its data.
    struct Echo;

    impl StreamService for Echo {
        fn serve(&self, _: Service, mut stream: SandboxStream) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                let mut buf = vec![0; 100_000];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown().await;
            })
        }
    }

    fn open(id: u32) -> StreamFrame {
        StreamFrame::Open {
            id,
            service: Service::HttpProxy,
        }
    }

    fn data(id: u32, len: usize) -> StreamFrame {
        StreamFrame::Data {
            id,
            data: Bytes::from(vec![b'x'; len]),
        }
    }

    /// The frames the host sends, collected until the stream is gone.
    async fn frames_until_gone(streams: &mut Streams) -> Vec<StreamFrame> {
        let mut frames = Vec::new();
        loop {
            match streams.next_event().await {
                StreamEvent::Frame(frame) => frames.push(frame),
                StreamEvent::Gone { id, abort } => {
                    assert!(!abort, "an echo ends cleanly");
                    streams.forget(id);
                    return frames;
                }
            }
        }
    }

    #[tokio::test]
    async fn credit_bounds_both_directions_and_windows_reopen_it() {
        let mut streams = Streams::default();
        let mut last = 0;
        assert!(streams.receive(open(1), &mut last, &Echo).unwrap());
        // The agent sends one whole window in chunks: accepted.
        let chunks = usize::try_from(STREAM_WINDOW).unwrap() / MAX_STREAM_CHUNK;
        for _ in 0..chunks {
            streams
                .receive(data(1, MAX_STREAM_CHUNK), &mut last, &Echo)
                .unwrap();
        }
        // The echo reads it, grants it again and writes it back, within the
        // window the agent granted: it sends no more than that until the
        // agent grants more.
        let mut sent = 0;
        let mut granted = 0;
        while sent < STREAM_WINDOW as usize {
            match streams.next_event().await {
                StreamEvent::Frame(StreamFrame::Data { data, .. }) => sent += data.len(),
                StreamEvent::Frame(StreamFrame::Window { credit, .. }) => granted += credit,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sent, STREAM_WINDOW as usize);
        // (The echo runs only while the test awaits: what it granted is all
        // in the channel now.)
        while let Ok(event) = streams.events.try_recv() {
            if let StreamEvent::Frame(StreamFrame::Window { credit, .. }) = event {
                granted += credit;
            }
        }
        assert!(granted >= STREAM_WINDOW / 2, "granted {granted}");
        // The agent may send what it was granted, and not one byte more.
        let mut left = usize::try_from(granted).unwrap();
        while left > 0 {
            let chunk = left.min(MAX_STREAM_CHUNK);
            streams.receive(data(1, chunk), &mut last, &Echo).unwrap();
            left -= chunk;
        }
        assert!(
            streams.receive(data(1, 1), &mut last, &Echo).is_err(),
            "data past the credit was taken"
        );
    }

    #[tokio::test]
    async fn ids_are_new_and_odd_and_late_frames_are_dropped() {
        let mut streams = Streams::default();
        let mut last = 0;
        assert!(streams.receive(open(3), &mut last, &Echo).is_ok());
        assert!(
            streams.receive(open(3), &mut last, &Echo).is_err(),
            "reused"
        );
        assert!(streams.receive(open(1), &mut last, &Echo).is_err(), "older");
        assert!(streams.receive(open(4), &mut last, &Echo).is_err(), "even");
        // Frames for a stream never opened (or already forgotten) are late.
        assert!(streams.receive(data(99, 10), &mut last, &Echo).unwrap());
        streams
            .receive(
                StreamFrame::Close {
                    id: 3,
                    abort: false,
                },
                &mut last,
                &Echo,
            )
            .unwrap();
        let frames = frames_until_gone(&mut streams).await;
        assert_eq!(
            frames,
            [StreamFrame::Close {
                id: 3,
                abort: false
            }],
            "an empty echo only ends"
        );
        assert!(streams.receive(data(3, 10), &mut last, &Echo).unwrap());
    }

    #[tokio::test]
    async fn an_echo_round_trips_and_ends_cleanly() {
        let mut streams = Streams::default();
        let mut last = 0;
        streams.receive(open(5), &mut last, &Echo).unwrap();
        streams.receive(data(5, 1000), &mut last, &Echo).unwrap();
        streams
            .receive(
                StreamFrame::Close {
                    id: 5,
                    abort: false,
                },
                &mut last,
                &Echo,
            )
            .unwrap();
        let frames = frames_until_gone(&mut streams).await;
        let echoed: usize = frames
            .iter()
            .map(|frame| match frame {
                StreamFrame::Data { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(echoed, 1000);
        assert_eq!(
            frames.last(),
            Some(&StreamFrame::Close {
                id: 5,
                abort: false
            })
        );
    }

    #[tokio::test]
    async fn an_abort_ends_the_service_and_too_many_streams_are_refused() {
        let mut streams = Streams::default();
        let mut last = 0;
        streams.receive(open(1), &mut last, &Echo).unwrap();
        streams
            .receive(StreamFrame::Close { id: 1, abort: true }, &mut last, &Echo)
            .unwrap();
        match streams.next_event().await {
            StreamEvent::Gone { id: 1, abort } => assert!(!abort, "already aborted by the agent"),
            other => panic!("{other:?}"),
        }
        streams.forget(1);
        let mut id = 1;
        for _ in 0..MAX_OPEN_STREAMS {
            id += 2;
            assert!(streams.receive(open(id), &mut last, &Echo).unwrap());
        }
        assert!(!streams.receive(open(id + 2), &mut last, &Echo).unwrap());
    }
}

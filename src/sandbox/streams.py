# mcp-code-exec sandbox agent: the run's network streams (egress).
#
# Passed to the agent as an argument and run in a namespace of its own, like
# the mcp package. It owns the agent's half of the streams of
# src/sandbox/streams.rs: the connections user code makes to the proxy port
# on the sandbox's loopback, each relayed to the host as a stream of frames
# (N opens one, S carries its bytes, X ends it, W grants credit). The host
# speaks HTTP proxy on each stream and decides every connection; this side
# knows nothing of HTTP and never opens a connection itself. It owns no
# file or process: the agent calls it from its run loop and gives it the
# poller and the frame writer (`send(kind, *parts)`, which keeps the
# frames in order with the run's output).
#
# Credit both ways: the agent reads from a connection only what the host
# granted (STREAM_WINDOW at the start, then each W), and grants the host
# again each time it has written what the host sent to the connection, so a
# stream never makes either side buffer more than one window, and a slow
# connection never stops the channel.

import select
import socket
import struct

STREAM_WINDOW = 256 * 1024  # protocol.rs STREAM_WINDOW
MAX_CHUNK = 64 * 1024  # protocol.rs MAX_STREAM_CHUNK
WINDOW_UPDATE_AT = STREAM_WINDOW // 4
ID = struct.Struct(">I")
CREDIT = struct.Struct(">II")
OPEN, DATA, CLOSE, WINDOW = b"N", b"S", b"X", b"W"
HTTP_PROXY = b"h"
# A connection closed both ways, or broken: its stream is aborted.
GONE = select.POLLHUP | select.POLLERR


def listen(port):
    """The proxy port on the sandbox's loopback: bound by the agent before any
    run, kept for its life (so no run can take the port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    return listener


def refuse_waiting(listener):
    """Closes every connection waiting to be accepted: after a run, what its
    processes left queued goes with them, never into the next run."""
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        connection.close()


class Stream:
    __slots__ = ("ident", "sock", "credit", "out", "returned", "client_ended", "host_ended")

    def __init__(self, ident, sock):
        self.ident = ident
        self.sock = sock
        # Bytes the host may still be sent (it granted them).
        self.credit = STREAM_WINDOW
        # Bytes from the host not yet written to the connection.
        self.out = bytearray()
        # Bytes written to the connection since the last window update.
        self.returned = 0
        self.client_ended = False
        self.host_ended = False


class Streams:
    """The streams of one run. Stream ids are odd and increase for the
    container's life (never reused: a late frame of a run's stream is known
    as such in the next)."""

    next_ident = 1

    def __init__(self, listener, poller, send):
        self.listener = listener
        self.poller = poller
        self.send = send
        self.by_fd = {}
        self.by_ident = {}
        # Fds of streams closed since the poll: their events in the batch
        # being handled are stale (and the fd may not be open at all).
        self.retired = set()
        poller.register(listener, select.POLLIN)

    def new_batch(self):
        """A new batch of poll events begins: what closed before it is gone
        from the poller."""
        self.retired.clear()

    def owns(self, fd):
        """Whether `fd` is (or, in this batch, was) one of the streams'."""
        return fd in self.by_fd or fd in self.retired

    def accept(self):
        """Each waiting connection becomes a stream (announced with N)."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ident = Streams.next_ident
            Streams.next_ident += 2
            stream = Stream(ident, sock)
            self.by_fd[sock.fileno()] = stream
            self.by_ident[ident] = stream
            self.send(OPEN[0], ID.pack(ident), HTTP_PROXY)
            self.watch(stream, register=True)

    def event(self, fd, events):
        """The connection `fd` polled ready (a stream closed since the poll
        is not: its events are dropped)."""
        stream = self.by_fd.get(fd)
        if stream is None:
            return
        if events & select.POLLOUT:
            self.flush(stream)
            if stream.ident not in self.by_ident:
                return  # the write found the connection broken: aborted
        if events & select.POLLIN and stream.credit > 0 and not stream.client_ended:
            try:
                data = stream.sock.recv(min(MAX_CHUNK, stream.credit))
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                return self.abort(stream)
            if data:
                stream.credit -= len(data)
                self.send(DATA[0], ID.pack(stream.ident), data)
            elif data is not None:
                stream.client_ended = True
                self.send(CLOSE[0], ID.pack(stream.ident), b"\x00")
        elif events & GONE:
            # Nothing more can go either way (what it had sent is read first,
            # when the host has room for it).
            return self.abort(stream)
        if stream.ident in self.by_ident:
            self.settle(stream)

    def frame(self, kind, payload):
        """A stream frame from the host (one of a stream already gone is late: dropped)."""
        (ident,) = ID.unpack_from(payload)
        stream = self.by_ident.get(ident)
        if stream is None:
            return
        if kind == DATA[0]:
            stream.out += payload[4:]
            self.flush(stream)
        elif kind == WINDOW[0]:
            stream.credit += CREDIT.unpack(payload)[1]
        elif kind == CLOSE[0]:
            if payload[4:] == b"\x01":
                return self.forget(stream)
            stream.host_ended = True
        if stream.ident in self.by_ident:
            self.settle(stream)

    def flush(self, stream):
        """Writes what the host sent to the connection, as far as it takes it,
        and grants the host what was written."""
        if stream.out:
            try:
                written = stream.sock.send(stream.out)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError:
                return self.abort(stream)
            del stream.out[:written]
            stream.returned += written
        if stream.returned >= WINDOW_UPDATE_AT or (stream.returned and not stream.out):
            self.send(WINDOW[0], CREDIT.pack(stream.ident, stream.returned))
            stream.returned = 0

    def settle(self, stream):
        """After a change: half-close toward the client once the host ended
        and all is written, forget a stream ended both ways, else poll for
        what the stream can do now."""
        if stream.host_ended and not stream.out:
            try:
                stream.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if stream.client_ended:
                return self.forget(stream)
        self.watch(stream)

    def watch(self, stream, register=False):
        mask = 0
        if stream.credit > 0 and not stream.client_ended:
            mask |= select.POLLIN
        if stream.out:
            mask |= select.POLLOUT
        if register:
            self.poller.register(stream.sock, mask)
        else:
            self.poller.modify(stream.sock, mask)

    def abort(self, stream):
        self.send(CLOSE[0], ID.pack(stream.ident), b"\x01")
        self.forget(stream)

    def forget(self, stream):
        fd = stream.sock.fileno()
        self.poller.unregister(fd)
        del self.by_fd[fd]
        del self.by_ident[stream.ident]
        self.retired.add(fd)
        stream.sock.close()

    def close_all(self):
        """The run is over: every connection closes (the host ends its side
        of every stream at D), and the proxy port is no longer polled."""
        for stream in list(self.by_ident.values()):
            self.forget(stream)
        self.poller.unregister(self.listener)

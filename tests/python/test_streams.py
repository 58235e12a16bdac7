"""streams.py without a container: a stream the host closes while its
connection's event waits in the same poll batch is still known as the
streams' (its stale event is dropped, never read as another fd), and a
connection accepted after the batch cannot take over its events."""

import select
import socket


def test_a_stream_closed_mid_batch_keeps_its_fd_until_the_next_batch(streams_module):
    listener = streams_module.listen(0)
    port = listener.getsockname()[1]
    poller = select.poll()
    sent = []
    streams = streams_module.Streams(listener, poller, lambda kind, *parts: sent.append(kind))
    client = socket.create_connection(("127.0.0.1", port))
    select.select([listener], [], [], 5)
    streams.accept()
    ((fd, stream),) = streams.by_fd.items()
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    client.close()
    events = dict(poller.poll(5000))
    assert fd in events
    # The host aborts the stream while its event is in the batch.
    streams.frame(ord("X"), streams_module.ID.pack(stream.ident) + b"\x01")
    assert streams.owns(fd), "its stale event must not fall through to the agent's pipes"
    streams.event(fd, events[fd])  # dropped, never raises
    streams.new_batch()
    assert not streams.owns(fd)
    streams.close_all()
    listener.close()
    assert sent[0] == ord("N"), "the stream was announced to the host"

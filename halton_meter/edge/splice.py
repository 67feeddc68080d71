"""Byte-for-byte splicing of two connected sockets, at the protocol level.

After the handshake the edge swaps both transports' protocols for a pair of `_Pipe`s: each
``data_received`` is one ``transport.write`` on the peer, and flow control is the transports'
own (a full write buffer pauses reading on the other side). No coroutine wakes up per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from halton_meter.edge import zerocopy

# Large buffers: a tunnel moves up to this much before the reading side is paused.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024
# What selector transports read per recv() call.
READ_SIZE = 256 * 1024


class _Pipe(asyncio.Protocol):
    """Receives from one transport and writes to its peer."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self._done = done
        self.eof = False
        self.closed = False

    # -- our transport's events -------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.closed:
            return False
        if peer.eof:  # both halves closed: the tunnel is done
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # keep the other direction open (half-close)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()  # close() flushes what is buffered first
        elif not self._done.done():
            self._done.set_result(None)

    # -- flow control: our transport's write buffer is full, so stop reading the peer ----------
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            with contextlib.suppress(RuntimeError):
                self.peer.transport.resume_reading()


def _attach(transport: asyncio.Transport, pipe: _Pipe) -> None:
    pipe.transport = transport
    transport.set_protocol(pipe)
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
    # Selector transports read `max_size` bytes per recv; bigger reads, fewer callbacks.
    if hasattr(transport, "max_size"):
        transport.max_size = READ_SIZE


async def splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Move bytes both ways between a and b until both sides are closed.

    On Linux with ``splice(2)`` the bytes never enter user space (`zerocopy`); elsewhere the
    transports' protocols are swapped for a pair of `_Pipe`s.
    """
    if await zerocopy.splice_tunnel(a_reader, a_writer, b_reader, b_writer):
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    a_transport: Any = a_writer.transport
    b_transport: Any = b_writer.transport
    if a_transport.is_closing() or b_transport.is_closing():
        a_transport.close()
        b_transport.close()
        return
    pa, pb = _Pipe(done), _Pipe(done)
    pa.peer, pb.peer = pb, pa
    a_left, b_left = zerocopy.pending_bytes(a_reader), zerocopy.pending_bytes(b_reader)
    a_eof, b_eof = a_reader.at_eof(), b_reader.at_eof()
    _attach(a_transport, pa)
    _attach(b_transport, pb)
    if a_left:
        b_transport.write(a_left)
    if b_left:
        a_transport.write(b_left)
    # A StreamReader pauses its transport when its buffer is full; we take it from here.
    for t in (a_transport, b_transport):
        with contextlib.suppress(RuntimeError, AttributeError):
            if not t.is_reading():
                t.resume_reading()
    if a_eof:
        pa.eof_received() or a_transport.close()
    if b_eof:
        pb.eof_received() or b_transport.close()
    try:
        await done
    finally:
        a_transport.close()
        b_transport.close()

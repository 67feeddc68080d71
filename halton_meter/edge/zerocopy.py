"""Zero-copy tunnels on Linux: ``splice(2)`` socket -> pipe -> socket, driven by the event loop.

The bytes never enter user space: per readiness event the edge makes two system calls and
touches no data. Each direction owns a pipe (sized to 1 MiB); when the destination is full the
source is no longer polled (backpressure), and when the source reaches EOF the destination's
write side is shut down once the pipe is empty (half-close), so protocols that signal the end
of a request with EOF still work. Any error closes the whole tunnel.

`splice_tunnel` takes over two connected stream pairs after the handshake: it duplicates
their sockets, closes the asyncio transports (their write buffers must be empty), and moves
bytes until both directions are done. Unsupported (non-Linux, or a side already at EOF):
returns False and the caller uses the transport-level splice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys

_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
# HALTON_METER_EDGE_ZEROCOPY=0 is an escape hatch (and the benchmark's A/B switch).
AVAILABLE = (
    sys.platform.startswith("linux")
    and hasattr(os, "splice")
    and os.environ.get("HALTON_METER_EDGE_ZEROCOPY", "1") != "0"
)


def _pipe() -> tuple[int, int, int]:
    import fcntl

    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
    try:
        size = fcntl.fcntl(w, _F_GETPIPE_SZ)
    except OSError:
        size = 65536
    return r, w, int(size)


class _Direction:
    def __init__(self, tunnel: _Tunnel, src: socket.socket, dst: socket.socket) -> None:
        self.tunnel = tunnel
        self.loop = tunnel.loop
        self.src = src.fileno()
        self.dst = dst.fileno()
        self._dst_sock = dst
        self.r, self.w, self.capacity = _pipe()
        self.in_pipe = 0
        self.eof = False
        self.done = False
        self._reading = False
        self._writing = False

    def start(self) -> None:
        self._read_on()

    def _read_on(self) -> None:
        if not self._reading and not self.eof:
            self.loop.add_reader(self.src, self._readable)
            self._reading = True

    def _read_off(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.src)
            self._reading = False

    def _write_on(self) -> None:
        if not self._writing:
            self.loop.add_writer(self.dst, self._writable)
            self._writing = True

    def _write_off(self) -> None:
        if self._writing:
            self.loop.remove_writer(self.dst)
            self._writing = False

    def _readable(self) -> None:
        # Several rounds per readiness event while data keeps coming: fewer epoll round trips.
        for _ in range(16):
            try:
                n = os.splice(self.src, self.w, self.capacity, flags=_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                self.tunnel.fail()
                return
            if n == 0:
                self.eof = True
                self._read_off()
                self._drain()
                return
            self.in_pipe += n
            self._drain()
            if self.in_pipe or not self._reading or self.tunnel.done.done():
                return  # the destination is full, or the tunnel ended

    def _writable(self) -> None:
        self._drain()

    def _drain(self) -> None:
        while self.in_pipe:
            try:
                n = os.splice(self.r, self.dst, self.in_pipe, flags=_FLAGS)
            except BlockingIOError:
                self._read_off()  # backpressure: the destination is full
                self._write_on()
                return
            except OSError:
                self.tunnel.fail()
                return
            if n == 0:
                self.tunnel.fail()
                return
            self.in_pipe -= n
        self._write_off()
        if self.eof:
            self._finish()
        else:
            self._read_on()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._read_off()
        self._write_off()
        with contextlib.suppress(OSError):
            self._dst_sock.shutdown(socket.SHUT_WR)
        self.tunnel.direction_done()

    def close(self) -> None:
        self._read_off()
        self._write_off()
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Tunnel:
    def __init__(self, loop: asyncio.AbstractEventLoop, a: socket.socket, b: socket.socket) -> None:
        self.loop = loop
        self.socks = (a, b)
        self.done: asyncio.Future[None] = loop.create_future()
        self.a_to_b = _Direction(self, a, b)
        self.b_to_a = _Direction(self, b, a)

    def direction_done(self) -> None:
        if self.a_to_b.done and self.b_to_a.done:
            self.close()

    def fail(self) -> None:
        self.close()

    def close(self) -> None:
        if self.done.done():
            return
        self.a_to_b.close()
        self.b_to_a.close()
        for sock in self.socks:
            sock.close()
        self.done.set_result(None)


def _take_socket(writer: asyncio.StreamWriter) -> socket.socket | None:
    sock = writer.get_extra_info("socket")
    if sock is None or writer.transport.get_write_buffer_size():
        return None
    # A duplicate descriptor keeps the socket open when the transport closes its own.
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    dup.setblocking(False)
    return dup


def pending_bytes(reader: asyncio.StreamReader) -> bytes:
    """Bytes the StreamReader already holds (a pipelined ClientHello, say), taken out of it."""
    buf = getattr(reader, "_buffer", None)
    if not buf:
        return b""
    data = bytes(buf)
    buf.clear()
    return data


async def splice_tunnel(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> bool:
    """Move bytes between a and b with splice(2) until both sides are done.

    Returns False, with nothing taken over, when this cannot be done here.
    """
    if not AVAILABLE:
        return False
    if a_reader.at_eof() or b_reader.at_eof():
        return False  # rare (a side already closed): the transport-level splice handles it
    sock_a = _take_socket(a_writer)
    sock_b = _take_socket(b_writer) if sock_a is not None else None
    if sock_a is None or sock_b is None:
        if sock_a is not None:
            sock_a.close()
        return False
    loop = asyncio.get_running_loop()
    a_left, b_left = pending_bytes(a_reader), pending_bytes(b_reader)
    a_writer.transport.abort()
    b_writer.transport.abort()
    tunnel = _Tunnel(loop, sock_a, sock_b)
    try:
        # Bytes the handshake already read (a server that speaks first, a pipelined
        # ClientHello) go out before anything else.
        if a_left:
            await loop.sock_sendall(sock_b, a_left)
        if b_left:
            await loop.sock_sendall(sock_a, b_left)
        tunnel.a_to_b.start()
        tunnel.b_to_a.start()
        await tunnel.done
    finally:
        tunnel.close()
    return True

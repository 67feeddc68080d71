"""A small HTTP/1.1 server on raw asyncio + h11: keep-alive, TLS, chunk-by-chunk streaming.

Raw asyncio rather than a framework because the simulator must misbehave on purpose: close a
connection mid-stream, flush compressed output per event, stream a 200 MiB body without holding
it, upgrade to WebSocket. The application (``SimApp``) turns a ``SimRequest`` into a
``SimResponse``; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import brotli
import h11
import zstandard

from halton_meter.core.logging import get_logger

log = get_logger("halton_meter.sim")

_READ_SIZE = 65536
_BODY_KEEP = 64 * 1024 * 1024  # request bodies above this are hashed and counted, not kept
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class SimRequest:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: list[tuple[str, str]]
    body: bytes
    body_size: int
    body_sha256: str
    tls: bool
    sni: str | None
    peer: str

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    @property
    def host(self) -> str:
        """The Host header without a port (falls back to SNI, then 'localhost')."""
        raw = self.header("host") or self.sni or "localhost"
        if raw.startswith("["):
            return raw[1 : raw.index("]")] if "]" in raw else raw
        return raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw


@dataclass
class Progress:
    """What the server actually put on the wire for one response (read by the request log)."""

    events_sent: int = 0
    bytes_sent: int = 0  # body bytes before content-encoding
    first_event_at: float | None = None
    last_event_at: float | None = None
    completed: bool = False
    truncated: bool = False
    client_aborted: bool = False
    ws_messages_in: int = 0


WsHandler = Callable[["WebSocketSession"], Awaitable[None]]


@dataclass
class SimResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # A streaming body: one item per event (SSE event, JSON-array element, event-stream frame);
    # delays, truncation and per-event compression flushes apply between items.
    chunks: Iterable[bytes] | None = None
    content_length: int | None = None  # for a streamed body of known size
    delay_s: float = 0.0
    ttfb_s: float = 0.0  # pause before the status line
    truncate_after: int | None = None
    truncate_reset: bool = False  # abort (TCP RST) instead of a clean close
    encoding: str | None = None  # gzip | br | zstd | deflate
    progress: Progress = field(default_factory=Progress)
    websocket: WsHandler | None = None
    on_done: Callable[[], None] | None = None


class SimApp(Protocol):
    def handle(self, request: SimRequest) -> SimResponse: ...


class WebSocketSession:
    """Text/binary messages over an upgraded connection (wsproto underneath)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: SimRequest,
        progress: Progress,
        leftover: bytes,
    ) -> None:
        from wsproto import ConnectionType
        from wsproto.connection import Connection

        self.request = request
        self.progress = progress
        self._reader = reader
        self._writer = writer
        self._ws = Connection(ConnectionType.SERVER)
        self._pending: list[str | bytes] = []
        self._closed = False
        if leftover:
            self._ws.receive_data(leftover)

    async def receive(self) -> str | bytes | None:
        """The next complete message, or None once the peer closed."""
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

        text_buf: list[str] = []
        bytes_buf: list[bytes] = []
        while True:
            if self._pending:
                return self._pending.pop(0)
            for event in self._ws.events():
                if isinstance(event, TextMessage):
                    text_buf.append(event.data)
                    if event.message_finished:
                        self._pending.append("".join(text_buf))
                        text_buf = []
                elif isinstance(event, BytesMessage):
                    bytes_buf.append(bytes(event.data))
                    if event.message_finished:
                        self._pending.append(b"".join(bytes_buf))
                        bytes_buf = []
                elif isinstance(event, Ping):
                    await self._write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        await self._write(self._ws.send(event.response()))
                    self._closed = True
            if self._pending:
                self.progress.ws_messages_in += 1
                return self._pending.pop(0)
            if self._closed:
                return None
            data = await self._reader.read(_READ_SIZE)
            if not data:
                self._closed = True
                return None
            self._ws.receive_data(data)

    async def send_text(self, text: str) -> None:
        from wsproto.events import TextMessage

        await self._write(self._ws.send(TextMessage(data=text)))
        now = time.monotonic()
        self.progress.events_sent += 1
        self.progress.bytes_sent += len(text)
        if self.progress.first_event_at is None:
            self.progress.first_event_at = now
        self.progress.last_event_at = now

    async def close(self, code: int = 1000) -> None:
        from wsproto.events import CloseConnection

        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._write(self._ws.send(CloseConnection(code=code)))

    def abort(self) -> None:
        self._closed = True
        self._writer.transport.abort()

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()


class _Encoder:
    """Streaming compression with a flush per chunk, so each event decodes on arrival."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._gz: Any = None
        self._br: Any = None
        self._zs: Any = None
        if name == "gzip":
            self._gz = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif name == "deflate":
            self._gz = zlib.compressobj(6, zlib.DEFLATED, 15)
        elif name == "br":
            self._br = brotli.Compressor()
        elif name == "zstd":
            self._zs = zstandard.ZstdCompressor().compressobj()
        else:
            raise ValueError(f"unsupported encoding {name!r}")

    def chunk(self, data: bytes) -> bytes:
        if self._gz is not None:
            return bytes(self._gz.compress(data) + self._gz.flush(zlib.Z_SYNC_FLUSH))
        if self._br is not None:
            return bytes(self._br.process(data) + self._br.flush())
        return bytes(self._zs.compress(data) + self._zs.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))

    def finish(self) -> bytes:
        if self._gz is not None:
            return bytes(self._gz.flush(zlib.Z_FINISH))
        if self._br is not None:
            return bytes(self._br.finish())
        return bytes(self._zs.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))


class _Truncated(Exception):
    pass


class HttpServer:
    """One listening socket (TLS or plain) feeding requests to a ``SimApp``."""

    def __init__(self, app: SimApp, ssl_context: ssl.SSLContext | None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._sni: dict[int, str] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        if ssl_context is not None:
            ssl_context.sni_callback = self._on_sni

    def _on_sni(self, sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name:
            self._sni[id(sslobj)] = server_name

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(
            self._serve, host, port, ssl=self.ssl_context, backlog=1024, limit=_READ_SIZE * 4
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        sslobj = writer.get_extra_info("ssl_object")
        sni = self._sni.pop(id(sslobj), None) if sslobj is not None else None
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if peer else ""
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, reader, writer, sni, peer_s)
                if request is None:
                    return
                response = self._handle(request)
                try:
                    if response.websocket is not None and _is_ws_upgrade(request):
                        await self._upgrade(conn, reader, writer, request, response)
                        return
                    await self._send(conn, writer, request, response)
                finally:
                    if response.on_done is not None:
                        response.on_done()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (_Truncated, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        except h11.RemoteProtocolError:
            with contextlib.suppress(Exception):
                writer.write(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _handle(self, request: SimRequest) -> SimResponse:
        try:
            return self.app.handle(request)
        except Exception as exc:  # a simulator bug must show up as a 500, not a dropped socket
            log.exception("sim.handler_error", method=request.method, path=request.path)
            body = (
                f'{{"error": {{"type": "sim_internal_error", "message": "{type(exc).__name__}"}}}}'
            )
            return SimResponse(
                status=500, headers=[("content-type", "application/json")], body=body.encode()
            )

    async def _read_request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sni: str | None,
        peer: str,
    ) -> SimRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        size = 0
        digest = hashlib.sha256()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                data = await reader.read(_READ_SIZE)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                digest.update(event.data)
                if len(body) < _BODY_KEEP:
                    body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return self._make_request(head, bytes(body), size, digest, sni, peer)
            elif event is h11.PAUSED and head is not None:
                return self._make_request(head, bytes(body), size, digest, sni, peer)
            else:  # ConnectionClosed, PAUSED without a request
                return None

    def _make_request(
        self,
        head: h11.Request,
        body: bytes,
        size: int,
        digest: Any,
        sni: str | None,
        peer: str,
    ) -> SimRequest:
        target = head.target.decode("latin-1")
        parts = urlsplit(target)
        return SimRequest(
            method=head.method.decode("ascii"),
            target=target,
            path=parts.path or "/",
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers],
            body=body,
            body_size=size,
            body_sha256=digest.hexdigest(),
            tls=self.ssl_context is not None,
            sni=sni,
            peer=peer,
        )

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: SimRequest,
        response: SimResponse,
    ) -> None:
        progress = response.progress
        if response.ttfb_s:
            await asyncio.sleep(response.ttfb_s)
        headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
        encoder = _Encoder(response.encoding) if response.encoding else None
        if encoder is not None:
            headers.append(("content-encoding", encoder.name))
        streamed = response.chunks is not None
        if not streamed and encoder is None:
            headers.append(("content-length", str(len(response.body))))
        elif streamed and encoder is None and response.content_length is not None:
            headers.append(("content-length", str(response.content_length)))
        headers.append(("date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())))
        writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
        if request.method == "HEAD":
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            progress.completed = True
            return
        if not streamed:
            await self._send_whole(conn, writer, response, encoder)
        else:
            await self._send_stream(conn, writer, response, encoder)
        progress.completed = True

    async def _send_whole(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: SimResponse,
        encoder: _Encoder | None,
    ) -> None:
        progress = response.progress
        body = response.body
        if response.truncate_after is not None:
            # Half the promised body, then the connection goes away.
            part = body[: len(body) // 2]
            writer.write(conn.send(h11.Data(data=encoder.chunk(part) if encoder else part)))
            progress.bytes_sent = len(part)
            await self._truncate(writer, progress, response.truncate_reset)
        data = encoder.chunk(body) + encoder.finish() if encoder else body
        if data:
            writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        progress.bytes_sent = len(body)
        await writer.drain()

    async def _send_stream(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: SimResponse,
        encoder: _Encoder | None,
    ) -> None:
        progress = response.progress
        assert response.chunks is not None
        iterator: Iterator[bytes] = iter(response.chunks)
        try:
            for index, chunk in enumerate(iterator):
                if response.truncate_after is not None and index >= response.truncate_after:
                    await self._truncate(writer, progress, response.truncate_reset)
                if index and response.delay_s:
                    await asyncio.sleep(response.delay_s)
                payload = encoder.chunk(chunk) if encoder else chunk
                if payload:
                    writer.write(conn.send(h11.Data(data=payload)))
                await writer.drain()
                now = time.monotonic()
                progress.events_sent += 1
                progress.bytes_sent += len(chunk)
                if progress.first_event_at is None:
                    progress.first_event_at = now
                progress.last_event_at = now
        except (ConnectionError, ssl.SSLError):
            progress.client_aborted = True
            raise
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        if response.truncate_after is not None and progress.events_sent >= response.truncate_after:
            # Asked to cut after K events and the stream had exactly K: still cut before the end.
            await self._truncate(writer, progress, response.truncate_reset)
        if encoder is not None:
            tail = encoder.finish()
            if tail:
                writer.write(conn.send(h11.Data(data=tail)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _truncate(
        self, writer: asyncio.StreamWriter, progress: Progress, reset: bool = False
    ) -> None:
        progress.truncated = True
        with contextlib.suppress(Exception):
            await writer.drain()
        if reset:
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                # SO_LINGER 0: the kernel answers with RST, as a crashed upstream would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            # close() (not abort) so the events already written reach the client first.
            writer.close()
        raise _Truncated()

    async def _upgrade(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: SimRequest,
        response: SimResponse,
    ) -> None:
        assert response.websocket is not None
        key = request.header("sec-websocket-key") or ""
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        headers = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", accept),
            *response.headers,
        ]
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)))
        await writer.drain()
        leftover, _closed = conn.trailing_data
        session = WebSocketSession(reader, writer, request, response.progress, bytes(leftover))
        try:
            await response.websocket(session)
            await session.close()
            response.progress.completed = True
        except _Truncated:
            response.progress.truncated = True


def _is_ws_upgrade(request: SimRequest) -> bool:
    return (request.header("upgrade") or "").lower() == "websocket"

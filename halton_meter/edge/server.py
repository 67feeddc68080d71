"""The edge: an asyncio forward proxy in front of the daemon.

``CONNECT host:port``: connections to LLM hosts are handed to the daemon (our own CONNECT to it,
carrying the attribution), every other host is tunnelled straight to its destination. When the
daemon does not answer within ``daemon_timeout`` the LLM connection is tunnelled directly too
(fail-open, counted as unmetered). Absolute-form plain HTTP requests are rewritten to origin-form
and forwarded directly, with keep-alive; those for an LLM host (an OpenAI-compatible server on
plain http, say) go to the daemon as absolute-form requests carrying the attribution header,
failing open when it cannot be reached. After the handshake, bytes are spliced at the transport
level (see `splice`).

Client identification (pid, tool) runs once per new connection in a small thread pool, in
parallel with the upstream connect; project attribution only for LLM hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home
from halton_meter.edge import httpio
from halton_meter.edge.attribution import Attribution, Attributor, proxy_user
from halton_meter.edge.handover import (
    ATTRIBUTION_HEADER,
    EDGE_HEADER,
    encode_attribution,
    home_id,
    marker_home,
    new_marker,
)
from halton_meter.edge.httpio import Head, HttpError, read_head, serialize_head, simple_response
from halton_meter.edge.identify import ClientIdentity, Identifier
from halton_meter.edge.registry import Registry
from halton_meter.edge.splice import splice
from halton_meter.edge.stats import EdgeStats

log = get_logger("halton_meter.edge")

_CONNECTED = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: halton-meter-edge\r\n\r\n"
_STREAM_LIMIT = 256 * 1024
_IDLE_TIMEOUT_S = 300.0
_HOP_BY_HOP = ("proxy-connection", "proxy-authorization", "keep-alive", "x-halton-edge",
               "x-halton-attribution")  # fmt: skip


@dataclass
class EdgeSettings:
    home: Home
    listen_host: str = "127.0.0.1"
    port: int = 0
    daemon_port: Callable[[], int | None] = lambda: None
    daemon_host: str = "127.0.0.1"
    intercept: Callable[[str], bool] = lambda host: False
    resolve: dict[str, str] = field(default_factory=dict)
    scan_roots: list[Path] = field(default_factory=list)
    daemon_timeout: float = 1.5
    connect_timeout: float = 10.0
    # after a daemon timeout, LLM connections skip it (fail open at once) for this long
    breaker_s: float = 3.0


class _Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class EdgeServer:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.home_id = home_id(settings.home)
        self.marker = new_marker(settings.home)
        self.stats = EdgeStats(settings.home.edge_stats)
        self.registry = Registry(settings.home.registry)
        self.attributor = Attributor(self.registry, settings.scan_roots)
        self.identifier = Identifier(str(settings.home.root))
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edge-identify")
        self._server: asyncio.Server | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._breaker_until = 0.0
        self.port = settings.port
        self._own_hosts = {settings.listen_host.lower(), "127.0.0.1", "localhost", "::1"}

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._handle,
            self.settings.listen_host,
            self.settings.port,
            limit=_STREAM_LIMIT,
            backlog=1024,
            reuse_address=True,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        self._flusher = asyncio.create_task(self.stats.run_flusher())
        self.stats.flush()
        log.info("edge.listening", host=self.settings.listen_host, port=self.port)
        return self.port

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._flusher is not None:
            self._flusher.cancel()
        self.stats.flush()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one client connection ---------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connection()
        spliced = False
        try:
            head = await asyncio.wait_for(read_head(reader), _IDLE_TIMEOUT_S)
            if head is None:
                return
            if head.first[0].upper() == "CONNECT":
                spliced = await self._connect(head, reader, writer)
            else:
                spliced = await self._plain(head, reader, writer)
        except _Refused as exc:
            await _reply(writer, simple_response(exc.status, httpio.REASONS[exc.status], exc.body))
        except HttpError as exc:
            await _reply(writer, simple_response(exc.status, exc.reason.capitalize(), exc.reason))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("edge.error")
        finally:
            if not spliced:
                writer.close()

    # -- loop safety -------------------------------------------------------------------------------
    def _check_loop(self, head: Head, host: str, port: int) -> None:
        marker = head.get(EDGE_HEADER)
        reason = None
        if marker is not None and marker_home(marker) == self.home_id:
            reason = "edge_marker"
        elif port == self.port and host.lower().strip("[]") in self._own_hosts:
            reason = "self_target"
        if reason:
            self._refuse_loop(host, reason)

    def _refuse_loop(self, host: str, reason: str, **extra: object) -> None:
        self.stats.loop_refused()
        log.warning("edge.loop_refused", host=host, reason=reason, **extra)
        raise _Refused(
            508,
            f"halton-meter edge: proxy loop refused ({reason}). This request came back to the "
            f"edge from the meter itself; the meter's own processes must not use HTTPS_PROXY.\n",
        )

    def _check_client(self, ident: ClientIdentity, host: str) -> None:
        if ident.meter_program is not None:
            self._refuse_loop(
                host, "meter_process", meter_program=ident.meter_program, pid=ident.pid
            )

    async def _identify(self, writer: asyncio.StreamWriter) -> ClientIdentity:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        if not peer or not local:
            return ClientIdentity(pid=None)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._pool,
                self.identifier.identify,
                int(peer[1]),
                int(local[1]),
                str(peer[0]),
                str(local[0]),
            )
        except Exception:
            log.exception("edge.identify_failed")
            return ClientIdentity(pid=None)

    async def _attribute(self, ident: ClientIdentity, head: Head) -> Attribution:
        loop = asyncio.get_running_loop()
        user = proxy_user(head.get("proxy-authorization"))
        try:
            result = await loop.run_in_executor(self._pool, self.attributor.resolve, ident, user)
        except Exception:
            log.exception("edge.attribution_failed")
            result = Attribution("misc", "misc")
        self.stats.tier_hit(result.tier)
        log.info(
            "attribution.tier_hit",
            tier=result.tier,
            project=result.project,
            tool=ident.tool,
            pid=ident.pid,
        )
        return result

    # -- CONNECT -----------------------------------------------------------------------------------
    async def _connect(
        self, head: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        host, port = httpio.split_hostport(head.first[1], 443)
        self._check_loop(head, host, port)
        ident_task = asyncio.ensure_future(self._identify(writer))
        if self.settings.intercept(host):
            upstream = await self._via_daemon(head, host, port, ident_task)
        else:
            direct = asyncio.ensure_future(self._direct(host, port))
            try:
                self._check_client(await ident_task, host)
            except _Refused:
                await _discard(direct)
                raise
            upstream = await direct
        up_reader, up_writer = upstream
        writer.write(_CONNECTED)
        await splice(reader, writer, up_reader, up_writer)
        return True

    async def _via_daemon(
        self, head: Head, host: str, port: int, ident_task: asyncio.Future[ClientIdentity]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        daemon_port = self.settings.daemon_port()
        conn: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
        reason = None
        if daemon_port is None:
            reason = "no_daemon_port"
        elif time.monotonic() < self._breaker_until:
            reason = "daemon_unresponsive"
        else:  # connect while we identify the client
            conn = asyncio.ensure_future(
                asyncio.wait_for(
                    asyncio.open_connection(
                        self.settings.daemon_host, daemon_port, limit=_STREAM_LIMIT
                    ),
                    self.settings.daemon_timeout,
                )
            )
        try:
            ident = await ident_task
            self._check_client(ident, host)
        except _Refused:
            if conn is not None:
                await _discard(conn)
            raise
        attribution = await self._attribute(ident, head)
        if conn is not None:
            upstream, reason = await self._daemon_handshake(conn, host, port, ident, attribution)
            if upstream is not None:
                self.stats.metered()
                return upstream
        self.stats.unmetered(host, reason or "unknown")
        log.warning("edge.fail_open", host=host, reason=reason, port=port)
        return await self._direct(host, port)

    async def _daemon_handshake(
        self,
        conn: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
        host: str,
        port: int,
        ident: ClientIdentity,
        attribution: Attribution,
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, str]:
        try:
            d_reader, d_writer = await conn
        except TimeoutError:
            self._trip_breaker()
            return None, "daemon_connect_timeout"
        except OSError as exc:
            return None, "daemon_" + _os_reason(exc)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        request = serialize_head(
            ("CONNECT", authority, "HTTP/1.1"),
            [
                ("Host", authority),
                (
                    ATTRIBUTION_HEADER,
                    encode_attribution(
                        ident.tool, attribution.project, attribution.tier, ident.pid, ident.cwd
                    ),
                ),
                (EDGE_HEADER, self.marker),
            ],
        )
        try:
            d_writer.write(request)
            response = await asyncio.wait_for(read_head(d_reader), self.settings.daemon_timeout)
        except TimeoutError:
            d_writer.close()
            self._trip_breaker()
            return None, "daemon_no_answer"
        except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
            d_writer.close()
            return None, "daemon_" + (_os_reason(exc) if isinstance(exc, OSError) else "bad_answer")
        if response is None:
            d_writer.close()
            return None, "daemon_closed"
        status = response.first[1]
        if status != "200":
            d_writer.close()
            return None, f"daemon_status_{status}"
        return (d_reader, d_writer), ""

    def _trip_breaker(self) -> None:
        self._breaker_until = time.monotonic() + self.settings.breaker_s

    async def _direct(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addr, aport = self._resolve(host, port)
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(addr, aport, limit=_STREAM_LIMIT),
                self.settings.connect_timeout,
            )
        except TimeoutError as exc:
            log.info("edge.upstream_failed", host=host, port=port, reason="timeout")
            raise _Refused(504, f"halton-meter edge: {host}:{port} did not answer\n") from exc
        except OSError as exc:
            log.info("edge.upstream_failed", host=host, port=port, reason=_os_reason(exc))
            raise _Refused(502, f"halton-meter edge: cannot reach {host}:{port}: {exc}\n") from exc

    def _resolve(self, host: str, port: int) -> tuple[str, int]:
        key = f"{host.lower()}:{port}"
        target = self.settings.resolve.get(key)
        if not target:
            return host, port
        addr, aport = httpio.split_hostport(target, port)
        return addr, aport

    # -- plain HTTP (absolute-form) ----------------------------------------------------------------
    async def _plain(
        self, head: Head | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        upstream: _Upstream | None = None
        ident: ClientIdentity | None = None
        handover: str | None = None  # the attribution header, resolved once per connection
        try:
            while head is not None:
                method, target, version = head.first
                host, port, origin_target = _absolute_target(target)
                self._check_loop(head, host, port)
                if ident is None:
                    ident = await self._identify(writer)
                    self._check_client(ident, host)
                intercepted = self.settings.intercept(host)
                if intercepted and handover is None:
                    att = await self._attribute(ident, head)
                    handover = encode_attribution(
                        ident.tool, att.project, att.tier, ident.pid, ident.cwd
                    )
                if upstream is not None and (
                    upstream.reader.at_eof() or upstream.host != (host, port)
                ):
                    upstream.writer.close()  # idle connection closed, or another origin
                    upstream = None
                if upstream is None:
                    upstream = await self._plain_upstream(host, port, intercepted)
                if upstream.via_daemon:
                    # The daemon is an HTTP proxy too: absolute-form, attribution on the request.
                    request_target, extra = target, [(ATTRIBUTION_HEADER, handover or "")]
                else:
                    request_target, extra = origin_target, []
                keep = await _forward_one(
                    head, request_target, extra, (host, port), reader, writer, upstream
                )
                if keep == "spliced":
                    u, upstream = upstream, None
                    await splice(reader, writer, u.reader, u.writer)
                    return True
                if keep == "upstream_closed":
                    upstream.writer.close()
                    upstream = None
                elif keep == "close":
                    return False
                head = await asyncio.wait_for(read_head(reader), _IDLE_TIMEOUT_S)
            return False
        finally:
            if upstream is not None:
                upstream.writer.close()

    async def _plain_upstream(self, host: str, port: int, intercepted: bool) -> _Upstream:
        if intercepted:
            daemon_port = self.settings.daemon_port()
            if daemon_port is None:
                reason = "no_daemon_port"
            elif time.monotonic() < self._breaker_until:
                reason = "daemon_unresponsive"
            else:
                try:
                    d_reader, d_writer = await asyncio.wait_for(
                        asyncio.open_connection(
                            self.settings.daemon_host, daemon_port, limit=_STREAM_LIMIT
                        ),
                        self.settings.daemon_timeout,
                    )
                except TimeoutError:
                    self._trip_breaker()
                    reason = "daemon_connect_timeout"
                except OSError as exc:
                    reason = "daemon_" + _os_reason(exc)
                else:
                    self.stats.metered()
                    return _Upstream((host, port), d_reader, d_writer, via_daemon=True)
            self.stats.unmetered(host, reason)
            log.warning("edge.fail_open", host=host, reason=reason, port=port)
        u_reader, u_writer = await self._direct(host, port)
        return _Upstream((host, port), u_reader, u_writer, via_daemon=False)


@dataclass
class _Upstream:
    host: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    via_daemon: bool


def _absolute_target(target: str) -> tuple[str, int, str]:
    parsed = urllib.parse.urlsplit(target)
    if parsed.scheme.lower() != "http" or not parsed.netloc:
        if parsed.scheme.lower() == "https":
            raise HttpError(400, "use CONNECT for https")
        raise HttpError(400, "this is a forward proxy: send absolute-form requests or CONNECT")
    netloc = parsed.netloc.rsplit("@", 1)[-1]
    host, port = httpio.split_hostport(netloc, 80)
    origin = parsed.path or "/"
    if parsed.query:
        origin += "?" + parsed.query
    return host, port, origin


async def _forward_one(
    head: Head,
    request_target: str,
    extra_headers: list[tuple[str, str]],
    origin: tuple[str, int],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: _Upstream,
) -> str:
    """Forward one request and its response. Returns keep / close / upstream_closed / spliced."""
    u_reader, u_writer = upstream.reader, upstream.writer
    method, _, version = head.first
    host, port = origin
    headers = head.without(*_HOP_BY_HOP) + extra_headers
    if head.get("host") is None:
        headers.insert(0, ("Host", host if port == 80 else f"{host}:{port}"))
    client_close = "close" in head.tokens("connection") or (
        version == "HTTP/1.0" and "keep-alive" not in head.tokens("connection")
    )
    u_writer.write(serialize_head((method, request_target, version), headers))
    length = httpio.content_length(head)
    chunked = httpio.is_chunked(head)
    has_body = chunked or bool(length)
    expect = "100-continue" in head.tokens("expect") and has_body
    response: Head | None = None
    if expect:
        # Let the origin answer 100 (or refuse) before the client sends its body.
        await u_writer.drain()
        with contextlib.suppress(TimeoutError):
            response = await asyncio.wait_for(read_head(u_reader), 1.0)
        if response is not None and response.first[1] == "100":
            writer.write(serialize_head(response.first, response.headers))
            response = None
        elif response is not None:
            client_close = True  # the body (if the client sends it) is not ours to frame
            has_body = False
    if has_body:
        if chunked:
            await httpio.copy_chunked(reader, u_writer)
        else:
            await httpio.copy_exact(reader, u_writer, length or 0)
    await u_writer.drain()
    while True:
        if response is None:
            response = await read_head(u_reader)
        if response is None:
            await _reply(writer, simple_response(502, "Bad Gateway", "upstream closed\n"))
            return "close"
        status = int(response.first[1]) if response.first[1].isdigit() else 0
        writer.write(serialize_head(response.first, response.headers))
        if status == 101:
            await writer.drain()
            return "spliced"
        if 100 <= status < 200:
            response = None
            continue
        break
    upstream_close = "close" in response.tokens("connection") or response.first[0] == "HTTP/1.0"
    if method.upper() == "HEAD" or status in (204, 304):
        pass
    elif httpio.is_chunked(response):
        await httpio.copy_chunked(u_reader, writer)
    elif (n := httpio.content_length(response)) is not None:
        await httpio.copy_exact(u_reader, writer, n)
    else:
        await httpio.copy_until_eof(u_reader, writer)
        await writer.drain()
        return "close"
    await writer.drain()
    if client_close:
        return "close"
    return "upstream_closed" if upstream_close else "keep"


async def _reply(writer: asyncio.StreamWriter, payload: bytes) -> None:
    with contextlib.suppress(Exception):
        writer.write(payload)
        await asyncio.wait_for(writer.drain(), 5.0)


async def _discard(
    fut: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    fut.cancel()
    with contextlib.suppress(BaseException):
        _, w = await fut
        w.close()


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, socket.gaierror):
        return "dns"
    return type(exc).__name__.lower()

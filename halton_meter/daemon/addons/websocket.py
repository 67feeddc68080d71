"""Metering WebSocket model traffic: one row per response on an intercepted socket.

Codex CLI speaks the OpenAI Responses API over WebSocket (``GET /v1/responses`` upgraded):
``response.create`` messages go up, ``response.*`` events come down, usage arrives in the
terminal event. mitmproxy relays each message as soon as it is complete and calls
``websocket_message`` just before; this addon only notes the message (never modifies, drops
or holds it) and reads it on the next turn of the event loop, after the relay, following the
socket with a :class:`ResponsesSession`.

A row is written when a response ends (``response.completed`` / ``incomplete`` / ``failed``
/ ``error``), and a partial row when the socket closes or the daemon stops mid-response.
Rows are built, priced and submitted exactly as the HTTP :class:`Capture` addon does (its
attribution, pricer, writer and usage-to-row mapping are reused, not copied).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mitmproxy import http

from halton_meter.daemon._log import log
from halton_meter.daemon.addons import capture as capture_mod
from halton_meter.daemon.addons.capture import Capture
from halton_meter.daemon.guard import fail_open
from halton_meter.providers.base import Usage
from halton_meter.providers.endpoints import Endpoint, classify
from halton_meter.providers.hosts import provider_for_host
from halton_meter.providers.openai import ResponsesSession
from halton_meter.store.bodies import redact_query
from halton_meter.store.model import Row

# A client message is parsed whole only up to this size; above it (a long conversation
# resent in full) the type and model are read from its head, which is all a row needs.
CLIENT_PARSE_LIMIT = 1024 * 1024
_SNIFF_HEAD = 64 * 1024
_TYPE_RE = re.compile(rb'"type"\s*:\s*"([^"\\]{1,64})"')
_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


@dataclass
class _Pending:
    """One response in flight on a socket."""

    started: float  # time.time() of the response.create (or first event)
    model: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    first_event: float | None = None


@dataclass
class _Socket:
    flow: http.HTTPFlow
    endpoint: Endpoint
    host: str
    session: ResponsesSession
    pending: _Pending | None = None
    rows: int = 0


class WebSocketMeter:
    """Rows for model calls made over WebSocket on intercepted provider hosts."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.stats = capture.stats
        self._sockets: dict[str, _Socket] = {}
        self._work: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._drain_scheduled = False

    # -- hooks -------------------------------------------------------------------------------

    @fail_open("addon.websocket.error")
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host = req.host
        provider = provider_for_host(host, self.capture.extra_hosts)
        if provider is None and flow.client_conn.sni:
            host = flow.client_conn.sni
            provider = provider_for_host(host, self.capture.extra_hosts)
        if provider is None:
            return
        endpoint = classify(provider, req.method, req.path)
        if endpoint is None or not endpoint.websocket:
            return  # a socket that is not a model API: relayed, no row
        self._sockets[flow.id] = _Socket(
            flow=flow,
            endpoint=endpoint,
            host=host.lower(),
            session=ResponsesSession(endpoint.provider, endpoint.api),
        )
        log.info("addon.websocket.start", host=host.lower(), path=redact_query(req.path))

    @fail_open("addon.websocket.error")
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        sock = self._sockets.get(flow.id)
        if sock is None or flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        # mitmproxy keeps every message of a flow for its UI; a Codex session resends its
        # whole conversation each turn, so the history is trimmed to the message in hand
        # (the wire is untouched: the message itself is relayed after this hook).
        if len(flow.websocket.messages) > 1:
            del flow.websocket.messages[:-1]
        now = message.timestamp or time.time()
        handle = self._client_message if message.from_client else self._server_message
        self._schedule(handle, sock, message.content, now)

    @fail_open("addon.websocket.error")
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        sock = self._sockets.pop(flow.id, None)
        if sock is None:
            return
        ws = flow.websocket
        code = ws.close_code if ws is not None else None
        reason = (ws.close_reason if ws is not None else "") or ""
        error = flow.error.msg if flow.error else None
        text = (
            error or f"websocket closed mid-response (code {code}{': ' + reason if reason else ''})"
        )
        self._schedule(self._end, sock, text)

    def _end(self, sock: _Socket, error: str) -> None:
        if sock.pending is not None:
            self._write_partial(sock, error)
        log.info("addon.websocket.end", host=sock.host, rows=sock.rows)

    def _schedule(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` right after mitmproxy has relayed the message, never in front of it.

        Work is queued in order (one loop callback drains it), so a socket's messages are
        read in the order they crossed; ``done`` drains what is left at shutdown.
        """
        self._work.append((fn, args))
        if not self._drain_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._drain()
                return
            self._drain_scheduled = True
            loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        while self._work:
            fn, args = self._work.popleft()
            try:
                fn(*args)
            except Exception as exc:
                self.stats.metering_errors += 1
                log.error("addon.websocket.error", error=repr(exc), hook=fn.__name__)

    def done(self) -> None:
        """Daemon shutdown: responses still in flight become partial rows."""
        self._drain()
        for sock in list(self._sockets.values()):
            try:
                if sock.pending is not None:
                    self._write_partial(sock, "daemon shutdown")
            except Exception as exc:
                self.stats.metering_errors += 1
                log.error("addon.websocket.error", error=repr(exc), hook="done")
        self._sockets.clear()

    # -- internals ---------------------------------------------------------------------------

    def _client_message(self, sock: _Socket, content: bytes, now: float) -> None:
        kind, model = _request_of(content)
        if kind != "response.create":
            return
        if sock.pending is not None:
            # A new request while one is unanswered: the old one will never end now.
            self._write_partial(sock, "superseded by a new response.create")
        # The session only needs the type and model: hand it those, not the whole input.
        sock.session.on_message(json.dumps({"type": kind, "model": model}))
        sock.pending = _Pending(started=now, model=model, request_bytes=len(content))

    def _server_message(self, sock: _Socket, content: bytes, now: float) -> None:
        if sock.pending is None:
            sock.pending = _Pending(started=now)  # events with no request seen (mid-socket)
        pending = sock.pending
        pending.response_bytes += len(content)
        if pending.first_event is None:
            pending.first_event = now
        usage = sock.session.on_message(content)
        if usage is not None:
            sock.pending = None
            self._write(sock, pending, usage, partial=False, error=None, end=now)

    def _write_partial(self, sock: _Socket, error: str) -> None:
        pending = sock.pending
        if pending is None:
            return
        sock.pending = None
        usage = sock.session.partial()
        # The session keeps following the socket; the next response starts afresh.
        sock.session = ResponsesSession(sock.endpoint.provider, sock.endpoint.api)
        self._write(sock, pending, usage, partial=True, error=error, end=time.time())

    def _write(
        self,
        sock: _Socket,
        pending: _Pending,
        usage: Usage | None,
        *,
        partial: bool,
        error: str | None,
        end: float,
    ) -> None:
        flow = sock.flow
        who = self.capture.attribution.for_client(flow.client_conn)
        row = Row(
            ts=datetime.fromtimestamp(pending.started, UTC),
            tool=who.tool,
            project=who.project,
            tier=who.tier,
            client_pid=who.pid,
            client_cwd=who.cwd,
            provider=sock.endpoint.provider,
            api=sock.endpoint.api,
            host=sock.host,
            method=flow.request.method,
            path=redact_query(flow.request.path),
            model=pending.model,
            stream=True,
            status=flow.response.status_code if flow.response is not None else None,
            partial=partial,
            error=error,
            latency_ms=round((end - pending.started) * 1000, 3),
            ttfb_ms=(
                round((pending.first_event - pending.started) * 1000, 3)
                if pending.first_event is not None
                else None
            ),
            request_bytes=pending.request_bytes,
            response_bytes=pending.response_bytes,
        )
        if usage is not None:
            capture_mod._apply_usage(row, usage)
            row.model = usage.model or row.model
            usage.model = row.model  # price the model the row names
            if usage.error and not row.error:
                row.error = usage.error
            if not usage.complete:
                row.partial = True
            n = capture_mod.parser_error_count(usage)
            if n:
                self.stats.parse_errors += n
                log.warning("addon.websocket.parse_error", row_id=row.id, host=row.host, count=n)
        self.capture._price(row, usage)
        self.capture.writer.submit(row)
        self.stats.rows_submitted += 1
        sock.rows += 1


def _request_of(content: bytes) -> tuple[str | None, str | None]:
    """The type and model of a client message: parsed when small, sniffed from its head."""
    if len(content) <= CLIENT_PARSE_LIMIT:
        try:
            obj = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            return None, None
        if not isinstance(obj, dict):
            return None, None
        nested = obj.get("response")
        model = obj.get("model")
        if not isinstance(model, str) and isinstance(nested, dict):
            model = nested.get("model")
        kind = obj.get("type")
        return (
            kind if isinstance(kind, str) else None,
            model if isinstance(model, str) and model else None,
        )
    head = content[:_SNIFF_HEAD]
    kind = _TYPE_RE.search(head)
    model = _MODEL_RE.search(head)
    return (
        kind.group(1).decode("utf-8", "replace") if kind else None,
        model.group(1).decode("utf-8", "replace") if model else None,
    )

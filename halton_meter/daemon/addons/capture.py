"""The core addon: one row per model call, read on the side of a pass-through stream.

Non-model traffic on provider hosts (count_tokens, model lists, Claude Code's /api/* calls)
passes untouched and makes no row. For a model call:

- the request body: up to 4 MiB with a known length, mitmproxy buffers it and the
  ``request`` hook reads it (so the model is known even when the upstream is down); larger
  or of unknown length, it is streamed on through a :class:`Tee`, never held whole;
- the response body always goes through a :class:`Tee`: every chunk goes on to the client
  at once, a copy is decoded and parsed;
- all metering work (decode, parse, body files, pricing, the row) is queued with
  ``loop.call_soon``: it runs right after mitmproxy has forwarded the chunk, in order.

The row is written when the response ends (``b""`` to the tee, or the ``response`` hook),
when the flow errors (client abort or upstream cut: partial; upstream down: status None)
or, for flows still in flight, when the daemon shuts down (partial).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mitmproxy import http

from halton_meter.daemon._log import log
from halton_meter.daemon.addons.attribution import Attribution
from halton_meter.daemon.addons.stream_tee import Tee
from halton_meter.daemon.guard import fail_open
from halton_meter.daemon.live import LiveConfig
from halton_meter.daemon.metering import (
    BodyReader,
    new_response_reader,
    parser_error_count,
    sniff_model,
    sniff_stream,
    usage_of,
)
from halton_meter.daemon.stats import Stats
from halton_meter.providers.base import Usage, dump_raw_usage
from halton_meter.providers.bedrock import apply_token_headers
from halton_meter.providers.endpoints import Endpoint, classify
from halton_meter.providers.errors import extract_error
from halton_meter.providers.hosts import provider_for_host
from halton_meter.store.bodies import redact_query
from halton_meter.store.model import Row

# The request body is kept (decoded) up to this size to read its model and stream flag.
REQUEST_KEEP_LIMIT = 4 * 1024 * 1024
METADATA_KEY = "halton_meter"
API_EQUIVALENT_NOTE = "api-equivalent"
# Claude subscription (Claude Code logged in with claude.ai) sends an OAuth bearer token.
_OAUTH_TOKEN_PREFIX = "bearer sk-ant-oat"


class RowSink(Protocol):
    def submit(self, row: Row) -> None: ...


Pricer = Callable[..., Any]  # (usage, ts, host=) -> PriceResult(cost_usd, priced, note)


@dataclass
class FlowState:
    """What Capture knows about one model call while it is in flight."""

    row: Row
    endpoint: Endpoint
    started: float  # time.time() of the request's first byte
    request: BodyReader
    response: BodyReader | None = None
    # Called with the row just before it is written (body files close, paths are filled).
    closers: list[Callable[[Row], None]] = field(default_factory=list)
    request_streamed: bool = False
    # Set by the body store: runs the row's submission after its body files are closed,
    # so a stored row never names a file that is not on disk yet.
    submit_after_bodies: Callable[[Callable[[], None]], None] | None = None
    body_jobs: list[Callable[[], None]] = field(default_factory=list)
    error_type_header: str | None = None  # Bedrock names its error type in a header
    done: bool = False


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    state = flow.metadata.get(METADATA_KEY)
    return state if isinstance(state, FlowState) else None


class Capture:
    def __init__(
        self,
        *,
        live: LiveConfig,
        attribution: Attribution,
        writer: RowSink,
        pricer: Pricer,
        stats: Stats,
    ) -> None:
        self.live = live
        self.attribution = attribution
        self.writer = writer
        self.pricer = pricer
        self.stats = stats
        self._live: dict[str, tuple[http.HTTPFlow, FlowState]] = {}

    @property
    def extra_hosts(self) -> tuple[str, ...]:
        """`[capture] hosts` as the live config has them now (a reload changes them)."""
        return self.live.config.capture.hosts

    # -- hooks -------------------------------------------------------------------------------

    @fail_open("addon.capture.error")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host = req.host
        provider = provider_for_host(host, self.extra_hosts)
        if provider is None and flow.client_conn.sni:
            host = flow.client_conn.sni
            provider = provider_for_host(host, self.extra_hosts)
        if provider is None:
            return
        endpoint = classify(provider, req.method, req.path)
        if endpoint is None or endpoint.websocket:
            return  # not a model call: untouched, no row
        who = self.attribution.for_client(flow.client_conn)
        started = req.timestamp_start or time.time()
        row = Row(
            ts=datetime.fromtimestamp(started, UTC),
            tool=who.tool,
            project=who.project,
            tier=who.tier,
            client_pid=who.pid,
            client_cwd=who.cwd,
            provider=endpoint.provider,
            api=endpoint.api,
            host=host.lower(),
            method=req.method,
            path=redact_query(req.path),
            model=endpoint.path_model,
            stream=endpoint.path_stream,
        )
        row.api_equivalent = _is_subscription(endpoint.provider, req.headers)
        reader = BodyReader(
            content_encoding=req.headers.get("content-encoding", ""),
            keep_limit=REQUEST_KEEP_LIMIT,
        )
        state = FlowState(row=row, endpoint=endpoint, started=started, request=reader)
        flow.metadata[METADATA_KEY] = state
        self._live[flow.id] = (flow, state)
        self.stats.live_flows = len(self._live)
        declared = _content_length(req.headers)
        if declared is None or declared > REQUEST_KEEP_LIMIT:
            # Large or of unknown length: streamed on, never held whole (a 10 MiB upload).
            state.request_streamed = True
            req.stream = Tee(
                reader.feed, lambda: None, self._tee_error(state, "request"), self._later
            )
        # Otherwise mitmproxy buffers it (small) and the `request` hook reads it: the body
        # is then known even when the upstream cannot be reached.

    @fail_open("addon.capture.error")
    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.request_streamed:
            return
        raw = flow.request.raw_content
        if raw:
            self._later(state.request.feed, raw)

    @fail_open("addon.capture.error")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.done or flow.response is None:
            return
        resp = flow.response
        state.row.status = resp.status_code
        state.error_type_header = resp.headers.get("x-amzn-errortype")
        if resp.timestamp_start:
            state.row.ttfb_ms = round((resp.timestamp_start - state.started) * 1000, 3)
        state.response = new_response_reader(
            state.endpoint,
            resp.status_code,
            resp.headers.get("content-type", ""),
            resp.headers.get("content-encoding", ""),
        )

        def end() -> None:
            self._finalize(flow, state, error=None, partial=False, ended_at=tee.ended_at)

        tee = Tee(state.response.feed, end, self._tee_error(state, "response"), self._later)
        resp.stream = tee

    @fail_open("addon.capture.error")
    def response(self, flow: http.HTTPFlow) -> None:
        # After the tee's end-of-stream (then this finds the row done), or for a response
        # with no body at all. Queued behind any chunk still being read.
        state = state_of(flow)
        if state is not None and not state.done:
            ended = flow.response.timestamp_end if flow.response else None
            self._later(self._finalize, flow, state, None, False, ended)

    @fail_open("addon.capture.error")
    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.done:
            return
        message = flow.error.msg if flow.error else "unknown error"
        # A response had started: what was seen is kept, marked partial (client abort,
        # upstream cut). No response at all: the upstream could not be reached.
        started_response = flow.response is not None
        self._later(self._finalize, flow, state, message, started_response, time.time())

    def done(self) -> None:
        """Daemon shutdown: flows still in flight are written as partial rows."""
        for flow, state in list(self._live.values()):
            try:
                self._finalize(flow, state, error="daemon shutdown", partial=True)
            except Exception as exc:
                self.stats.metering_errors += 1
                log.error("addon.capture.error", error=repr(exc), hook="done")

    # -- internals ---------------------------------------------------------------------------

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` after the current hook or chunk, in order, off the forwarding path."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (direct use): run now
            self._guarded(fn, args)
            return
        loop.call_soon(self._guarded, fn, args)

    def _guarded(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.stats.metering_errors += 1
            log.error("addon.capture.error", error=repr(exc), hook=getattr(fn, "__name__", "?"))

    def _tee_error(self, state: FlowState, side: str) -> Callable[[BaseException], None]:
        def report(exc: BaseException) -> None:
            self.stats.parse_errors += 1
            log.warning(
                "addon.capture.parse_error",
                row_id=state.row.id,
                host=state.row.host,
                side=side,
                error=repr(exc),
            )

        return report

    def _finalize(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        error: str | None,
        partial: bool,
        ended_at: float | None = None,
    ) -> None:
        if state.done:
            return
        state.done = True
        state.request.finish()
        if state.response is not None:
            state.response.finish()
        self._live.pop(flow.id, None)
        self.stats.live_flows = len(self._live)
        row = state.row
        try:
            self._fill(flow, state, row, error=error, partial=partial, ended_at=ended_at)
        finally:
            for close in state.closers:
                try:
                    close(row)
                except Exception as exc:
                    self.stats.metering_errors += 1
                    log.error("addon.capture.error", error=repr(exc), hook="close_body")
            if state.submit_after_bodies is not None:
                state.submit_after_bodies(lambda: self.writer.submit(row))
            else:
                self.writer.submit(row)
            self.stats.rows_submitted += 1

    def _fill(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        row: Row,
        *,
        error: str | None,
        partial: bool,
        ended_at: float | None,
    ) -> None:
        row.latency_ms = round(((ended_at or time.time()) - state.started) * 1000, 3)
        req_reader, resp_reader = state.request, state.response
        row.request_bytes = req_reader.wire_bytes
        # Parsed once, reduced to the fields the endpoint helpers read (each of them would
        # otherwise parse a long conversation again, on the event loop).
        request_body = _request_essentials(req_reader.complete_body)
        head = bytes(req_reader.kept) if request_body is None else b""
        asked_stream = state.endpoint.request_stream(request_body) or (
            request_body is None and sniff_stream(head)
        )
        row.model = state.endpoint.request_model(request_body) or sniff_model(head) or row.model
        row.stream = bool(asked_stream)
        row.error = error
        row.partial = partial

        usage: Usage | None = None
        if resp_reader is not None:
            row.response_bytes = resp_reader.wire_bytes
            status = row.status or 0
            if status >= 400:
                body = resp_reader.complete_body or bytes(resp_reader.kept)
                row.error = (
                    extract_error(body, state.error_type_header).text()
                    if body
                    else (error or f"HTTP {status}")
                )
            else:
                usage = usage_of(state.endpoint, resp_reader)
                if state.endpoint.provider == "bedrock" and flow.response is not None:
                    usage = _with_bedrock_headers(usage, state.endpoint, flow.response.headers)
                if resp_reader.parser is not None:
                    row.stream = True
            self._count_parse_errors(row, req_reader, resp_reader, usage)

        if usage is not None:
            _apply_usage(row, usage)
            row.model = state.endpoint.resolve_model(request_body, usage.model) or row.model
            # Price the model the row names (Bedrock Converse reports none in its body).
            usage.model = row.model
            if usage.error and not row.error:
                row.error = usage.error
            if (row.status or 0) < 400 and not usage.complete:
                row.partial = True
        elif resp_reader is not None and (row.status or 0) < 400 and error is None:
            # A 2xx we could not read: the row is kept, flagged, never silently dropped.
            row.partial = row.partial or bool(resp_reader.errors)
        self._price(row, usage)

    def _price(self, row: Row, usage: Usage | None) -> None:
        if usage is None or (usage.input_tokens is None and usage.output_tokens is None):
            row.cost_usd, row.priced = None, False
            row.price_note = "no usage reported"
            return
        try:
            result = self.pricer(usage, row.ts, host=row.host)
        except Exception as exc:
            self.stats.metering_errors += 1
            log.error("addon.capture.pricing_error", row_id=row.id, error=repr(exc))
            row.cost_usd, row.priced, row.price_note = None, False, "pricing error"
            return
        row.cost_usd = result.cost_usd
        row.priced = bool(result.priced)
        row.price_note = result.note
        if row.priced and row.api_equivalent:
            # Subscription traffic: what it would cost on the API, not money spent.
            row.price_note = API_EQUIVALENT_NOTE

    def _count_parse_errors(
        self, row: Row, req: BodyReader, resp: BodyReader, usage: Usage | None
    ) -> None:
        errors = [*req.errors, *resp.errors]
        n = len(errors) + parser_error_count(usage)
        if n:
            self.stats.parse_errors += n
            log.warning(
                "addon.capture.parse_error",
                row_id=row.id,
                host=row.host,
                count=n,
                error=(errors or (usage.extra.get("parse_errors") if usage else None) or [""])[0],
            )


def _apply_usage(row: Row, usage: Usage) -> None:
    row.input_tokens = usage.input_tokens
    row.output_tokens = usage.output_tokens
    row.cache_read_tokens = usage.cache_read_tokens
    row.cache_write_tokens = usage.cache_write_tokens
    row.cache_write_5m_tokens = usage.cache_write_5m_tokens
    row.cache_write_1h_tokens = usage.cache_write_1h_tokens
    row.reasoning_tokens = usage.reasoning_tokens
    row.usage_json = dump_raw_usage(usage.raw_usage)
    row.billed_cost_usd = usage.billed_cost_usd
    # OpenAI prices flex/priority apart and reports the tier outside its usage object:
    # kept on the row so `reprice` prices it as the daemon did.
    tier = usage.extra.get("service_tier")
    row.service_tier = tier if isinstance(tier, str) and tier else None


def _with_bedrock_headers(
    usage: Usage | None, endpoint: Endpoint, headers: http.Headers
) -> Usage | None:
    """Counts Bedrock reports in ``X-Amzn-Bedrock-*-Token-Count`` headers, where the body had none.

    InvokeModel bodies are model-specific (Titan, Cohere, ... have no usage object we read);
    the headers are not. A count the body gave is never overwritten. A body we could not
    parse at all still gets the headers' counts (the row stays flagged for the parse error).
    """
    if usage is not None:
        apply_token_headers(usage, headers)
        return usage
    fallback = Usage(provider=endpoint.provider, api=endpoint.api)
    apply_token_headers(fallback, headers)
    if fallback.input_tokens is None and fallback.output_tokens is None:
        return None
    # Counts only: the body that would say whether the answer was whole was unreadable.
    fallback.complete = False
    return fallback


def _content_length(headers: http.Headers) -> int | None:
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _is_subscription(provider: str, headers: http.Headers) -> bool:
    """An Anthropic call authorised by a subscription's OAuth token rather than an API key."""
    if provider != "anthropic" or "x-api-key" in headers:
        return False
    return headers.get("authorization", "").lower().startswith(_OAUTH_TOKEN_PREFIX)


def _request_essentials(body: bytes | None) -> bytes | None:
    """``{"model", "stream"}`` of a JSON request body, re-encoded small; None if not JSON."""
    if body is None:
        return None
    if not body:
        return b""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return b""
    return json.dumps({k: obj[k] for k in ("model", "stream") if k in obj}).encode()

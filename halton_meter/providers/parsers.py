"""Choosing a parser for an endpoint: one-shot JSON, or incremental for a streamed body.

Stream parsers take decompressed bytes split anywhere (mid-line, mid-frame, mid-UTF-8
character), never raise out of ``feed`` (problems land in ``usage.extra["parse_errors"]``),
and answer ``result()`` at any time with what they have seen so far.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

from halton_meter.providers import anthropic, bedrock, gemini, openai
from halton_meter.providers._common import Handler
from halton_meter.providers.base import StreamParser, Usage, note_parse_error
from halton_meter.providers.endpoints import Endpoint
from halton_meter.providers.eventstream import EventStreamDecoder
from halton_meter.providers.jsonarray import JsonArraySplitter
from halton_meter.providers.sse import SseDecoder

# A non-streamed JSON body larger than this is not read for usage (it is still passed on).
MAX_JSON_BODY = 64 * 1024 * 1024

JsonParser = Callable[[bytes], Usage]


def json_parser_for(endpoint: Endpoint) -> JsonParser:
    """A one-shot parser for a complete, decompressed 2xx body. Raises ParseError."""
    p, api = endpoint.provider, endpoint.api
    if api == "messages":
        return partial(anthropic.parse_json, provider=p, api=api)
    if api in ("chat", "completions", "embeddings"):
        if p == "gemini" and api == "embeddings":
            return partial(gemini.parse_json, provider=p, api=api)
        return partial(openai.parse_chat_json, provider=p, api=api)
    if api == "responses":
        return partial(openai.parse_responses_json, provider=p, api=api)
    if api in ("generate_content", "stream_generate_content"):
        return partial(gemini.parse_json, provider=p, api=api)
    if api in ("bedrock_invoke", "bedrock_invoke_stream"):
        return partial(bedrock.parse_invoke_json, api=api)
    if api in ("bedrock_converse", "bedrock_converse_stream"):
        return partial(bedrock.parse_converse_json, api=api)
    raise ValueError(f"no parser for {p}/{api}")


def _handler_for(endpoint: Endpoint) -> Handler:
    p, api = endpoint.provider, endpoint.api
    if api == "messages":
        return anthropic.MessagesHandler(p, api)
    if api in ("chat", "completions", "embeddings"):
        return openai.ChatHandler(p, api)
    if api == "responses":
        return openai.ResponsesHandler(p, api)
    if api in ("generate_content", "stream_generate_content"):
        return gemini.GenerateContentHandler(p, api)
    if api == "bedrock_converse_stream":
        return bedrock.ConverseStreamHandler(p, api)
    if api == "bedrock_invoke_stream":
        return bedrock.InvokeStreamHandler(p, api)
    raise ValueError(f"no stream parser for {p}/{api}")


class SseStreamParser:
    def __init__(self, handler: Handler) -> None:
        self._h = handler
        self._sse = SseDecoder()

    def feed(self, chunk: bytes) -> None:
        try:
            events = self._sse.feed(chunk)
        except Exception as e:  # a parser must never break the stream it reads
            self._h.parse_error(f"{type(e).__name__}: {e}")
            return
        for ev in events:
            try:
                self._h.on_text(ev.data, ev.event)
            except Exception as e:
                self._h.parse_error(f"{type(e).__name__}: {e}")

    def result(self) -> Usage:
        h = self._h
        try:
            tail = self._sse.pending()
            if tail:
                h = _clone(h)
                for ev in tail:
                    h.on_text(ev.data, ev.event)
        except Exception as e:
            return _failed(self._h, e)
        return _snapshot(h)


class JsonArrayStreamParser:
    """Gemini's streamGenerateContent without ``alt=sse``: a JSON array sent piecewise."""

    def __init__(self, handler: Handler) -> None:
        self._h = handler
        self._split = JsonArraySplitter()

    def feed(self, chunk: bytes) -> None:
        try:
            for element in self._split.feed(chunk):
                self._safe(self._h.on_text, element.decode("utf-8", errors="replace"))
        except Exception as e:
            self._h.parse_error(f"{type(e).__name__}: {e}")

    def _safe(self, fn: Callable[[str], None], arg: str) -> None:
        try:
            fn(arg)
        except Exception as e:
            self._h.parse_error(f"{type(e).__name__}: {e}")

    def result(self) -> Usage:
        u = _snapshot(self._h)
        if self._split.closed and u.error is None:
            u.complete = True
        return u


class EventStreamParser:
    """Bedrock's ``application/vnd.amazon.eventstream`` bodies."""

    def __init__(self, handler: bedrock.EventStreamHandler) -> None:
        self._h = handler
        self._dec = EventStreamDecoder()

    def feed(self, chunk: bytes) -> None:
        try:
            for msg in self._dec.feed(chunk):
                try:
                    self._h.on_message(msg)
                except Exception as e:
                    self._h.parse_error(f"{type(e).__name__}: {e}")
        except Exception as e:  # broken framing: reported once, the rest is ignored
            self._h.parse_error(f"{type(e).__name__}: {e}")

    def result(self) -> Usage:
        u = _snapshot(self._h)
        if self._dec.buffered:
            u.extra["truncated_bytes"] = self._dec.buffered
        return u


class BufferedJsonParser:
    """A JSON body that arrives in chunks: kept (up to a cap) and parsed on ``result()``."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._parse = json_parser_for(endpoint)
        self._buf = bytearray()
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if self._overflow:
            return
        if len(self._buf) + len(chunk) > MAX_JSON_BODY:
            self._overflow = True
            self._buf.clear()
            return
        self._buf += chunk

    def result(self) -> Usage:
        u = Usage(provider=self._endpoint.provider, api=self._endpoint.api)
        if self._overflow:
            note_parse_error(u, f"JSON body larger than {MAX_JSON_BODY} bytes, not parsed")
            return u
        if not self._buf:
            return u
        try:
            return self._parse(bytes(self._buf))
        except Exception as e:  # incomplete body (abort) or not JSON
            note_parse_error(u, f"{type(e).__name__}: {e}")
            return u


def _snapshot(h: Handler) -> Usage:
    """The handler's usage; when even that fails, an empty Usage noting the parse error."""
    try:
        return h.snapshot()
    except Exception as e:
        return _failed(h, e)


def _failed(h: Handler, e: Exception) -> Usage:
    u = Usage(provider=h.u.provider, api=h.u.api)
    note_parse_error(u, f"{type(e).__name__}: {e}")
    return u


def _clone(h: Handler) -> Handler:
    return copy.deepcopy(h)


def stream_parser_for(endpoint: Endpoint, content_type: str | None) -> StreamParser:
    """An incremental parser for a response body, framed as its Content-Type says."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if ct == "text/event-stream":
        return SseStreamParser(_stream_handler(endpoint))
    if ct == "application/vnd.amazon.eventstream":
        handler = _stream_handler(endpoint)
        if isinstance(handler, bedrock.EventStreamHandler):
            return EventStreamParser(handler)
        return BufferedJsonParser(endpoint)
    if endpoint.api == "stream_generate_content":
        return JsonArrayStreamParser(_stream_handler(endpoint))
    return BufferedJsonParser(endpoint)


def _stream_handler(endpoint: Endpoint) -> Handler:
    # A non-streaming API answered with a stream content type: read it as its streaming twin
    twin = {
        "bedrock_invoke": "bedrock_invoke_stream",
        "bedrock_converse": "bedrock_converse_stream",
        "generate_content": "stream_generate_content",
    }.get(endpoint.api)
    if twin is not None:
        handler = _handler_for(Endpoint(endpoint.provider, twin, endpoint.path_model))
        handler.u.api = endpoint.api
        return handler
    return _handler_for(endpoint)

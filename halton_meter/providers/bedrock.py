"""Amazon Bedrock: InvokeModel (Claude bodies, with fallbacks for Nova and Llama), Converse,
and their streaming forms carried in the AWS binary event-stream framing.

Converse ``usage.inputTokens`` excludes cache reads and writes (``totalTokens`` adds them),
so the OTel input total adds them back. The model comes from the path's modelId.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from halton_meter.providers import anthropic
from halton_meter.providers._common import (
    Handler,
    add_counts,
    as_dict,
    as_int,
    error_text,
    loads,
    loads_body,
)
from halton_meter.providers.base import ParseError, Usage
from halton_meter.providers.eventstream import BAD_HEADERS, EventStreamMessage

_METRICS = "amazon-bedrock-invocationMetrics"


def apply_converse_usage(u: Usage, raw: dict[str, Any]) -> None:
    u.raw_usage = raw
    base_in = as_int(raw.get("inputTokens"))
    cache_read = as_int(raw.get("cacheReadInputTokens"))
    cache_write = as_int(raw.get("cacheWriteInputTokens"))
    u.input_tokens = add_counts(base_in, cache_read, cache_write) if base_in is not None else None
    u.output_tokens = as_int(raw.get("outputTokens"))
    u.cache_read_tokens = cache_read
    u.cache_write_tokens = cache_write
    details = raw.get("cacheDetails")
    if isinstance(details, list):
        for item in details:
            ttl = as_dict(item).get("ttl")
            count = as_int(as_dict(item).get("inputTokens"))
            if ttl == "5m":
                u.cache_write_5m_tokens = add_counts(u.cache_write_5m_tokens, count)
            elif ttl == "1h":
                u.cache_write_1h_tokens = add_counts(u.cache_write_1h_tokens, count)


def _apply_nova_usage(u: Usage, raw: dict[str, Any]) -> None:
    # Nova's InvokeModel usage: inputTokens excludes cache like Converse's
    u.raw_usage = raw
    base_in = as_int(raw.get("inputTokens"))
    cache_read = as_int(raw.get("cacheReadInputTokenCount"))
    cache_write = as_int(raw.get("cacheWriteInputTokenCount"))
    u.input_tokens = add_counts(base_in, cache_read, cache_write) if base_in is not None else None
    u.output_tokens = as_int(raw.get("outputTokens"))
    u.cache_read_tokens = cache_read
    u.cache_write_tokens = cache_write


def _apply_metrics_fallback(u: Usage, metrics: dict[str, Any]) -> None:
    u.extra["bedrock_invocation_metrics"] = metrics
    if u.input_tokens is None:
        u.input_tokens = as_int(metrics.get("inputTokenCount"))
    if u.output_tokens is None:
        u.output_tokens = as_int(metrics.get("outputTokenCount"))
    if u.raw_usage is None:
        u.raw_usage = metrics


def apply_token_headers(u: Usage, headers: Mapping[str, str]) -> None:
    """Fill counts a Bedrock body left out from its ``X-Amzn-Bedrock-*-Token-Count`` headers.

    InvokeModel bodies are model-specific (Titan, Cohere, ...); these headers are not.
    ``headers`` must look names up case-insensitively (mitmproxy's Headers do).
    """
    if u.input_tokens is None:
        u.input_tokens = _header_int(headers, "x-amzn-bedrock-input-token-count")
    if u.output_tokens is None:
        u.output_tokens = _header_int(headers, "x-amzn-bedrock-output-token-count")
    if u.cache_read_tokens is None:
        u.cache_read_tokens = _header_int(headers, "x-amzn-bedrock-cache-read-input-token-count")
    if u.cache_write_tokens is None:
        u.cache_write_tokens = _header_int(headers, "x-amzn-bedrock-cache-write-input-token-count")


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def converse_to_usage(obj: Any, api: str = "bedrock_converse") -> Usage:
    if not isinstance(obj, dict):
        raise ParseError("Converse response is not a JSON object")
    u = Usage(provider="bedrock", api=api)
    if isinstance(obj.get("stopReason"), str):
        u.finish = obj["stopReason"]
    if isinstance(obj.get("usage"), dict):
        apply_converse_usage(u, obj["usage"])
    elif "message" in obj and "output" not in obj:
        u.error = error_text(obj)
    u.complete = True
    return u


def parse_converse_json(body: bytes, api: str = "bedrock_converse") -> Usage:
    return converse_to_usage(loads_body(body), api)


def invoke_to_usage(obj: Any, api: str = "bedrock_invoke") -> Usage:
    """InvokeModel bodies differ per model family; Claude's is the Messages shape."""
    if not isinstance(obj, dict):
        raise ParseError("InvokeModel response is not a JSON object")
    usage = obj.get("usage")
    if obj.get("type") == "message" or (isinstance(usage, dict) and "input_tokens" in usage):
        return anthropic.message_to_usage(obj, "bedrock", api)
    u = Usage(provider="bedrock", api=api)
    if isinstance(usage, dict) and "inputTokens" in usage:  # Nova
        _apply_nova_usage(u, usage)
        if isinstance(obj.get("stopReason"), str):
            u.finish = obj["stopReason"]
    elif "prompt_token_count" in obj:  # Llama, Mistral-style
        raw = {k: obj[k] for k in ("prompt_token_count", "generation_token_count") if k in obj}
        u.raw_usage = raw
        u.input_tokens = as_int(raw.get("prompt_token_count"))
        u.output_tokens = as_int(raw.get("generation_token_count"))
        if isinstance(obj.get("stop_reason"), str):
            u.finish = obj["stop_reason"]
    elif "message" in obj and len(obj) <= 2:
        u.error = error_text(obj)
    if isinstance(obj.get(_METRICS), dict):
        _apply_metrics_fallback(u, obj[_METRICS])
    u.complete = True
    return u


def parse_invoke_json(body: bytes, api: str = "bedrock_invoke") -> Usage:
    return invoke_to_usage(loads_body(body), api)


def _exception_text(msg: EventStreamMessage) -> str:
    kind = msg.exception_type or msg.event_type or "exception"
    try:
        payload = loads(msg.payload) if msg.payload else {}
    except (ValueError, UnicodeDecodeError):
        payload = {}
    message = as_dict(payload).get("message") or as_dict(payload).get("Message")
    return f"{kind}: {message}" if message else kind


class EventStreamHandler(Handler):
    """Base for handlers fed decoded event-stream messages."""

    def on_message(self, msg: EventStreamMessage) -> None:
        if BAD_HEADERS in msg.headers:
            self.parse_error(f"event-stream message headers unreadable: {msg.headers[BAD_HEADERS]}")
            return
        if msg.message_type in ("exception", "error"):
            self.u.error = _exception_text(msg)
            return
        try:
            obj = loads(msg.payload) if msg.payload else {}
        except (ValueError, UnicodeDecodeError) as e:
            self.parse_error(f"bad JSON in event {msg.event_type}: {e}")
            return
        self.on_object(obj, msg.event_type)


class ConverseStreamHandler(EventStreamHandler):
    def on_object(self, obj: Any, event: str | None = None) -> None:
        if not isinstance(obj, dict):
            self.parse_error(f"event {event} is not a JSON object")
            return
        # events arrive as {"metadata": {...}} when unwrapped from a JSON transport
        if event is None and len(obj) == 1:
            event, inner = next(iter(obj.items()))
            obj = as_dict(inner)
        if event == "messageStop":
            if isinstance(obj.get("stopReason"), str):
                self.u.finish = obj["stopReason"]
        elif event == "metadata":
            if isinstance(obj.get("usage"), dict):
                apply_converse_usage(self.u, obj["usage"])
            self.u.complete = True
            if isinstance(obj.get("metrics"), dict):
                self.u.extra["bedrock_metrics"] = obj["metrics"]


class InvokeStreamHandler(EventStreamHandler):
    """``chunk`` events whose ``bytes`` is a base64 JSON event of the model's own stream."""

    def __init__(self, provider: str, api: str) -> None:
        super().__init__(provider, api)
        self._messages = anthropic.MessagesHandler(provider, api)
        self._is_anthropic = False
        self._nova_usage: dict[str, Any] | None = None
        self._metrics: dict[str, Any] | None = None
        self._finish: str | None = None

    def on_object(self, obj: Any, event: str | None = None) -> None:
        if not isinstance(obj, dict):
            self.parse_error(f"event {event} is not a JSON object")
            return
        b64 = obj.get("bytes")
        if not isinstance(b64, str):
            return
        try:
            inner = loads(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError, UnicodeDecodeError) as e:
            self.parse_error(f"bad chunk bytes: {e}")
            return
        if not isinstance(inner, dict):
            self.parse_error("chunk is not a JSON object")
            return
        if isinstance(inner.get(_METRICS), dict):
            self._metrics = inner[_METRICS]
        if isinstance(inner.get("type"), str):
            self._is_anthropic = True
            self._messages.on_object(inner)
            return
        # Nova: {"metadata": {"usage": {...}}}, {"messageStop": {"stopReason": ...}}
        meta = as_dict(inner.get("metadata"))
        if isinstance(meta.get("usage"), dict):
            self._nova_usage = meta["usage"]
        stop = as_dict(inner.get("messageStop")).get("stopReason")
        if isinstance(stop, str):
            self._finish = stop
        if isinstance(inner.get("stop_reason"), str):
            self._finish = inner["stop_reason"]

    def on_end(self) -> None:
        if self._is_anthropic:
            self._messages.on_end()
            m = self._messages.u
            parse_errors = self.u.extra.get("parse_errors")
            count = self.u.extra.get("parse_error_count")
            error = self.u.error
            self.u = m
            if parse_errors:
                m.extra["parse_errors"] = parse_errors + m.extra.get("parse_errors", [])
                m.extra["parse_error_count"] = count + m.extra.get("parse_error_count", 0)
            m.error = m.error or error
        else:
            if self._nova_usage is not None:
                _apply_nova_usage(self.u, self._nova_usage)
            if self._finish is not None:
                self.u.finish = self._finish
        if self._metrics is not None:
            _apply_metrics_fallback(self.u, self._metrics)
            self.u.complete = True

"""Anthropic Messages API: JSON and SSE. Also the body of Bedrock InvokeModel for Claude.

``usage.input_tokens`` excludes cache reads and writes, so the OTel total adds them. In a
stream, ``message_start`` carries the initial usage and every ``message_delta`` usage is
cumulative: its fields overwrite, never add.
"""

from __future__ import annotations

from typing import Any

from halton_meter.providers._common import (
    Handler,
    add_counts,
    as_dict,
    as_int,
    error_text,
    loads_body,
)
from halton_meter.providers.base import ParseError, Usage

# Bedrock adds this to the last event of an InvokeModelWithResponseStream
_BEDROCK_METRICS = "amazon-bedrock-invocationMetrics"


def apply_usage(u: Usage, raw: dict[str, Any]) -> None:
    """Normalise one (merged) Anthropic usage object onto ``u``."""
    u.raw_usage = raw
    base_in = as_int(raw.get("input_tokens"))
    cache_read = as_int(raw.get("cache_read_input_tokens"))
    cache_write = as_int(raw.get("cache_creation_input_tokens"))
    u.input_tokens = add_counts(base_in, cache_read, cache_write) if base_in is not None else None
    u.output_tokens = as_int(raw.get("output_tokens"))
    u.cache_read_tokens = cache_read
    u.cache_write_tokens = cache_write
    split = as_dict(raw.get("cache_creation"))
    u.cache_write_5m_tokens = as_int(split.get("ephemeral_5m_input_tokens"))
    u.cache_write_1h_tokens = as_int(split.get("ephemeral_1h_input_tokens"))
    details = as_dict(raw.get("output_tokens_details"))
    u.reasoning_tokens = as_int(details.get("thinking_tokens"))
    tools = {k: v for k, v in as_dict(raw.get("server_tool_use")).items() if as_int(v) is not None}
    u.server_tool_use = tools or None
    for key in ("service_tier", "speed", "inference_geo"):
        if isinstance(raw.get(key), str):
            u.extra[key] = raw[key]


def _apply_bedrock_metrics(u: Usage, metrics: dict[str, Any]) -> None:
    # Only used when the body carried no usage of its own
    if u.input_tokens is None:
        u.input_tokens = as_int(metrics.get("inputTokenCount"))
    if u.output_tokens is None:
        u.output_tokens = as_int(metrics.get("outputTokenCount"))
    u.extra["bedrock_invocation_metrics"] = metrics


def message_to_usage(obj: Any, provider: str, api: str) -> Usage:
    """A complete (non-streamed) Messages response object."""
    if not isinstance(obj, dict):
        raise ParseError("Messages response is not a JSON object")
    u = Usage(provider=provider, api=api)
    if obj.get("type") == "error" or "error" in obj and "content" not in obj:
        u.error = error_text(obj.get("error", obj))
        u.complete = True
        return u
    if isinstance(obj.get("model"), str):
        u.model = obj["model"]
    u.finish = obj.get("stop_reason") if isinstance(obj.get("stop_reason"), str) else None
    if isinstance(obj.get("usage"), dict):
        apply_usage(u, obj["usage"])
    if isinstance(obj.get(_BEDROCK_METRICS), dict):
        _apply_bedrock_metrics(u, obj[_BEDROCK_METRICS])
    u.complete = True
    return u


def parse_json(body: bytes, provider: str = "anthropic", api: str = "messages") -> Usage:
    return message_to_usage(loads_body(body), provider, api)


class MessagesHandler(Handler):
    """Anthropic stream events (SSE, or base64 chunks inside a Bedrock event stream)."""

    def __init__(self, provider: str, api: str) -> None:
        super().__init__(provider, api)
        self._merged: dict[str, Any] | None = None
        self._metrics: dict[str, Any] | None = None

    def on_object(self, obj: Any, event: str | None = None) -> None:
        if not isinstance(obj, dict):
            self.parse_error(f"event {event or ''} is not a JSON object")
            return
        kind = obj.get("type") or event
        if kind == "message_start":
            msg = as_dict(obj.get("message"))
            if isinstance(msg.get("model"), str):
                self.u.model = msg["model"]
            self._merged = dict(as_dict(msg.get("usage")))
        elif kind == "message_delta":
            delta = as_dict(obj.get("delta"))
            if isinstance(delta.get("stop_reason"), str):
                self.u.finish = delta["stop_reason"]
            usage = obj.get("usage")
            if isinstance(usage, dict):
                merged = self._merged if self._merged is not None else {}
                # cumulative totals: overwrite what is present, keep the rest
                merged.update({k: v for k, v in usage.items() if v is not None})
                self._merged = merged
        elif kind == "message_stop":
            self.u.complete = True
        elif kind == "error":
            self.u.error = error_text(obj.get("error", obj))
        if isinstance(obj.get(_BEDROCK_METRICS), dict):
            self._metrics = obj[_BEDROCK_METRICS]

    def on_end(self) -> None:
        if self._merged is not None:
            apply_usage(self.u, self._merged)
        if self._metrics is not None:
            _apply_bedrock_metrics(self.u, self._metrics)

"""Anthropic Messages API wire shapes (also the body of Bedrock's InvokeModel for Claude)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from halton_meter.sim.common import Call, Reply, dumps, json_reply, sse, sse_reply, text_placeholder

DEFAULT_MODEL = "claude-sonnet-4-5"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def wire_usage(call: Call, *, start: bool = False) -> dict[str, Any]:
    u = call.usage
    usage: dict[str, Any] = {
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_total,
        "cache_read_input_tokens": u.cache_read_tokens,
    }
    if start:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": u.cache_write_tokens,
            "ephemeral_1h_input_tokens": u.cache_write_1h_tokens,
        }
        usage["output_tokens"] = 1
        usage["service_tier"] = "standard"
    else:
        usage["output_tokens"] = u.output_tokens
    return usage


def _final_usage(call: Call) -> dict[str, Any]:
    usage = wire_usage(call, start=True)
    usage["output_tokens"] = call.usage.output_tokens
    return usage


def message_object(call: Call, text: str) -> dict[str, Any]:
    return {
        "id": f"msg_sim{call.request_id}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _final_usage(call),
    }


def messages(call: Call) -> Reply:
    headers = [("request-id", f"req_sim{call.request_id}")]
    if not call.stream:
        call.wire_usage = _final_usage(call)
        return json_reply(call, message_object(call, text_placeholder(call)), headers)
    call.wire_usage = {
        "message_start": wire_usage(call, start=True),
        "message_delta": wire_usage(call),
    }
    return sse_reply(stream_events_sse(call), headers)


def stream_events(call: Call) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a Messages stream."""
    start = message_object(call, "")
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = wire_usage(call, start=True)
    yield "message_start", {"type": "message_start", "message": start}
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield "ping", {"type": "ping"}
    for piece in call.deltas():
        yield (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
    if call.knobs.outcome in ("error", "failed"):
        yield (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
        return
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    stop_reason = "max_tokens" if call.knobs.outcome == "incomplete" else "end_turn"
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": wire_usage(call),
        },
    )
    yield "message_stop", {"type": "message_stop"}


def stream_events_sse(call: Call) -> Iterator[bytes]:
    for name, data in stream_events(call):
        yield sse(data, event=name)


def count_tokens(call: Call) -> Reply:
    return Reply(body=dumps({"input_tokens": call.usage.input_tokens}).encode())


def models() -> Reply:
    ids = ["claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805", "claude-haiku-4-5-20251001"]
    data = [
        {
            "type": "model",
            "id": m,
            "display_name": m.replace("-", " ").title(),
            "created_at": "2025-01-01T00:00:00Z",
        }
        for m in ids
    ]
    body = {"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}
    return Reply(body=dumps(body).encode())

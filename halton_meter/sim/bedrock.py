"""Bedrock runtime wire shapes: InvokeModel (Anthropic body), Converse, and the streaming
variants in AWS event-stream binary framing (application/vnd.amazon.eventstream)."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from halton_meter.sim import anthropic
from halton_meter.sim.common import Call, Reply, dumps, json_reply, text_placeholder

if TYPE_CHECKING:
    from halton_meter.sim.app import _Route
    from halton_meter.sim.server import SimRequest

DEFAULT_MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
EVENTSTREAM = "application/vnd.amazon.eventstream"

_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def error_body(status: int, message: str) -> tuple[dict[str, Any], str]:
    kind = _ERRORS.get(
        status, "InternalServerException" if status >= 500 else "ValidationException"
    )
    return {"message": message}, kind


def route(req: SimRequest, path: str) -> _Route | None:
    from halton_meter.sim.app import _Route

    parts = path.split("/")
    if len(parts) < 4:
        return None
    model = unquote("/".join(parts[2:-1]))
    action = parts[-1]
    if action == "invoke":
        return _Route("bedrock.invoke", "bedrock", invoke, model=model, stream=False)
    if action == "invoke-with-response-stream":
        return _Route("bedrock.invoke_stream", "bedrock", invoke, model=model, stream=True)
    if action == "converse":
        return _Route("bedrock.converse", "bedrock", converse, model=model, stream=False)
    if action == "converse-stream":
        return _Route("bedrock.converse_stream", "bedrock", converse, model=model, stream=True)
    return None


def _token_headers(call: Call) -> list[tuple[str, str]]:
    return [
        ("x-amzn-requestid", call.request_id),
        ("x-amzn-bedrock-input-token-count", str(call.usage.input_tokens)),
        ("x-amzn-bedrock-output-token-count", str(call.usage.output_tokens)),
    ]


def invoke(call: Call) -> Reply:
    if not call.stream:
        msg = anthropic.message_object(call, text_placeholder(call))
        call.wire_usage = msg["usage"]
        return json_reply(call, msg, _token_headers(call))
    call.wire_usage = {
        "message_start": anthropic.wire_usage(call, start=True),
        "message_delta": anthropic.wire_usage(call),
    }

    def frames() -> Iterator[bytes]:
        for _name, data in anthropic.stream_events(call):
            if data["type"] == "message_stop":
                data = {
                    **data,
                    "amazon-bedrock-invocationMetrics": {
                        "inputTokenCount": call.usage.input_tokens,
                        "outputTokenCount": call.usage.output_tokens,
                        "invocationLatency": 1,
                        "firstByteLatency": 1,
                    },
                }
            inner = base64.b64encode(dumps(data).encode()).decode()
            yield event_frame("chunk", {"bytes": inner})

    return Reply(
        content_type=EVENTSTREAM,
        chunks=frames(),
        headers=[("x-amzn-requestid", call.request_id)],
        bad_chunk=_bad_frame(),
    )


def converse_usage(call: Call) -> dict[str, Any]:
    u = call.usage
    usage = {
        "inputTokens": u.input_tokens,
        "outputTokens": u.output_tokens,
        "totalTokens": u.prompt_total + u.output_tokens,
    }
    if u.cache_read_tokens or u.cache_write_total:
        usage["cacheReadInputTokens"] = u.cache_read_tokens
        usage["cacheWriteInputTokens"] = u.cache_write_total
    return usage


def converse(call: Call) -> Reply:
    call.wire_usage = converse_usage(call)
    stop = "max_tokens" if call.knobs.outcome == "incomplete" else "end_turn"
    if not call.stream:
        body = {
            "output": {
                "message": {"role": "assistant", "content": [{"text": text_placeholder(call)}]}
            },
            "stopReason": stop,
            "usage": call.wire_usage,
            "metrics": {"latencyMs": 1},
        }
        return json_reply(call, body, [("x-amzn-requestid", call.request_id)])

    def frames() -> Iterator[bytes]:
        yield event_frame("messageStart", {"role": "assistant"})
        for piece in call.deltas():
            yield event_frame(
                "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}
            )
        yield event_frame("contentBlockStop", {"contentBlockIndex": 0})
        yield event_frame("messageStop", {"stopReason": stop})
        yield event_frame("metadata", {"usage": call.wire_usage, "metrics": {"latencyMs": 1}})

    return Reply(
        content_type=EVENTSTREAM,
        chunks=frames(),
        headers=[("x-amzn-requestid", call.request_id)],
        bad_chunk=_bad_frame(),
    )


def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return struct.pack("!B", len(n)) + n + b"\x07" + struct.pack("!H", len(v)) + v


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    """One AWS event-stream message: prelude, prelude CRC, headers, payload, message CRC."""
    headers = (
        _header(":event-type", event_type)
        + _header(":content-type", "application/json")
        + _header(":message-type", "event")
    )
    body = dumps(payload).encode()
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack("!II", total, len(headers))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    message = prelude + headers + body
    return message + struct.pack("!I", zlib.crc32(message))


def _bad_frame() -> bytes:
    frame = bytearray(
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "?"}})
    )
    frame[-1] ^= 0xFF  # a wrong message CRC
    return bytes(frame)


def decode_frames(data: bytes) -> Iterator[tuple[dict[str, str], bytes]]:
    """Parse event-stream messages (for tests and tools); raises ValueError on a bad CRC."""
    pos = 0
    while pos + 12 <= len(data):
        total, hlen = struct.unpack_from("!II", data, pos)
        if zlib.crc32(data[pos : pos + 8]) != struct.unpack_from("!I", data, pos + 8)[0]:
            raise ValueError("bad prelude crc")
        msg = data[pos : pos + total]
        if zlib.crc32(msg[:-4]) != struct.unpack_from("!I", msg, total - 4)[0]:
            raise ValueError("bad message crc")
        headers: dict[str, str] = {}
        h = 12
        while h < 12 + hlen:
            nlen = msg[h]
            name = msg[h + 1 : h + 1 + nlen].decode()
            h += 1 + nlen + 1  # name, type byte (7 = string)
            vlen = struct.unpack_from("!H", msg, h)[0]
            headers[name] = msg[h + 2 : h + 2 + vlen].decode()
            h += 2 + vlen
        yield headers, msg[12 + hlen : total - 4]
        pos += total

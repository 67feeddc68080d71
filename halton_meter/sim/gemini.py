"""Gemini (generativelanguage.googleapis.com) wire shapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from halton_meter.sim.common import Call, Reply, dumps, json_reply, sse, text_placeholder

if TYPE_CHECKING:
    from halton_meter.sim.app import _Route
    from halton_meter.sim.server import SimRequest

DEFAULT_MODEL = "gemini-2.5-flash"

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}


def route(req: SimRequest, path: str) -> _Route | None:
    from halton_meter.sim.app import _Route

    tail = path.split("/models/", 1)[1]
    if ":" not in tail:
        return None
    model, method = unquote(tail).rsplit(":", 1)
    if method == "generateContent":
        return _Route("gemini.generate", "gemini", generate, model=model, stream=False)
    if method == "streamGenerateContent":
        return _Route("gemini.stream", "gemini", generate, model=model, stream=True)
    if method == "countTokens":
        return _Route("gemini.count_tokens", "gemini", count_tokens, model=model, stream=False)
    return None


def usage_metadata(call: Call, candidates: int | None = None) -> dict[str, Any]:
    u = call.usage
    prompt = u.input_tokens + u.cache_read_tokens
    cand = u.output_tokens - u.reasoning_tokens if candidates is None else candidates
    meta: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": cand}
    if u.cache_read_tokens:
        meta["cachedContentTokenCount"] = u.cache_read_tokens
    if u.reasoning_tokens:
        meta["thoughtsTokenCount"] = u.reasoning_tokens
    meta["totalTokenCount"] = prompt + cand + u.reasoning_tokens
    meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return meta


def _candidate(text: str, finish: str | None) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return cand


def _finish(call: Call) -> str:
    return "MAX_TOKENS" if call.knobs.outcome == "incomplete" else "STOP"


def _schema_example(schema: Any) -> Any:
    """A minimal value satisfying a (JSON or Gemini-style) schema: first enum, every property."""
    if not isinstance(schema, dict):
        return "sim"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _schema_example(sub) for name, sub in props.items()}
    if kind == "array":
        return [_schema_example(schema.get("items"))]
    return {"integer": 0, "number": 0, "boolean": False}.get(kind, "sim")


def _structured_text(call: Call) -> str | None:
    """JSON mode (Gemini CLI's model router asks for it): answer with a conforming object."""
    config = call.body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if config.get("responseMimeType") != "application/json" or schema is None:
        return None
    return dumps(_schema_example(schema))


def generate(call: Call) -> Reply:
    call.wire_usage = usage_metadata(call)
    if not call.stream:
        text = _structured_text(call) or text_placeholder(call)
        body = {
            "candidates": [_candidate(text, _finish(call))],
            "usageMetadata": call.wire_usage,
            "modelVersion": call.model,
            "responseId": f"sim{call.request_id}",
        }
        return json_reply(call, body)
    if call.req.query.get("alt") == "sse":
        events = (sse(chunk, eol="\r\n") for chunk in _chunks(call))
        return Reply(
            content_type="text/event-stream", chunks=events, bad_chunk=b"data: {oops\r\n\r\n"
        )
    return Reply(
        content_type="application/json; charset=UTF-8",
        chunks=_json_array(call),
        bad_chunk=b",{oops",
    )


def _chunks(call: Call) -> Iterator[dict[str, Any]]:
    """Stream chunks; each carries cumulative usageMetadata, the last one the final counts."""
    n = call.n_deltas
    final = call.usage.output_tokens - call.usage.reasoning_tokens
    for i, piece in enumerate(call.deltas(), start=1):
        last = i == n
        yield {
            "candidates": [_candidate(piece, _finish(call) if last else None)],
            "usageMetadata": usage_metadata(call, final if last else (final * i) // n),
            "modelVersion": call.model,
            "responseId": f"sim{call.request_id}",
        }
    if n == 0:
        yield {
            "candidates": [_candidate("", _finish(call))],
            "usageMetadata": usage_metadata(call),
            "modelVersion": call.model,
            "responseId": f"sim{call.request_id}",
        }


def _json_array(call: Call) -> Iterator[bytes]:
    first = True
    for chunk in _chunks(call):
        yield (b"[" if first else b"\n,\r\n") + dumps(chunk).encode()
        first = False
    yield b"]"


def count_tokens(call: Call) -> Reply:
    n = call.usage.input_tokens
    body = {"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]}
    return Reply(body=dumps(body).encode())


def models() -> Reply:
    ids = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash"]
    data = [
        {
            "name": f"models/{m}",
            "displayName": m,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }
        for m in ids
    ]
    return Reply(body=dumps({"models": data}).encode())

"""OpenAI wire shapes: Chat Completions, Responses, Embeddings, Models (also OpenRouter, Azure)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from halton_meter.sim.common import (
    Call,
    Reply,
    dumps,
    json_reply,
    now_s,
    sse,
    sse_reply,
    text_placeholder,
)

DEFAULT_MODEL = "gpt-4o-mini"

_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def error_body(status: int, message: str) -> dict[str, Any]:
    kind, code = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# -- Chat Completions -------------------------------------------------------------------------


def chat_usage(call: Call, *, openrouter: bool = False) -> dict[str, Any]:
    u = call.usage
    usage: dict[str, Any] = {
        "prompt_tokens": u.prompt_total,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.prompt_total + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if openrouter:
        if u.cost is None:
            u.cost = str(
                Decimal(u.prompt_total) * Decimal("0.000001")
                + Decimal(u.output_tokens) * Decimal("0.000002")
            )
        # float() of a short decimal prints back as the same digits in JSON.
        usage["cost"] = float(u.cost)
        usage["is_byok"] = False
        usage["prompt_tokens_details"]["cache_write_tokens"] = u.cache_write_total
    return usage


def chat(call: Call, *, flavor: str = "openai") -> Reply:
    openrouter = flavor == "openrouter"
    created = now_s()
    cid = f"chatcmpl-sim{call.request_id}"
    headers = [("x-request-id", f"req_sim{call.request_id}")]
    if flavor == "azure":
        headers.append(("apim-request-id", call.request_id))
    finish = "length" if call.knobs.outcome == "incomplete" else "stop"
    if not call.stream:
        usage = chat_usage(call, openrouter=openrouter)
        call.wire_usage = usage
        body: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text_placeholder(call),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_sim",
        }
        if openrouter:
            body["provider"] = "SimProvider"
        if flavor == "azure":
            body["prompt_filter_results"] = []
        return json_reply(call, body, headers)
    opts = call.body.get("stream_options") or {}
    include = bool(isinstance(opts, dict) and opts.get("include_usage"))
    if openrouter:
        include = True  # OpenRouter always reports usage (and cost) at the end of a stream
    call.wire_usage = chat_usage(call, openrouter=openrouter) if include else None
    return sse_reply(_chat_events(call, cid, created, finish, include, openrouter), headers)


def _chat_events(
    call: Call, cid: str, created: int, finish: str, include: bool, openrouter: bool
) -> Iterator[bytes]:
    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        c: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": call.model,
            "system_fingerprint": "fp_sim",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include and not openrouter:
            c["usage"] = None
        if openrouter:
            c["provider"] = "SimProvider"
        return c

    if openrouter:
        yield b": OPENROUTER PROCESSING\n\n"
    yield sse(chunk({"role": "assistant", "content": "", "refusal": None}, None))
    for piece in call.deltas():
        yield sse(chunk({"content": piece}, None))
    if call.knobs.outcome in ("error", "failed"):
        yield sse(
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        return
    yield sse(chunk({}, finish))
    if include:
        final = chunk({}, None)
        final["choices"] = []
        final["usage"] = call.wire_usage
        yield sse(final)
    yield b"data: [DONE]\n\n"


# -- Responses --------------------------------------------------------------------------------


def responses_usage(call: Call) -> dict[str, Any]:
    u = call.usage
    return {
        "input_tokens": u.prompt_total,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_total + u.output_tokens,
    }


def _response_object(
    call: Call, status: str, text: str | None, usage: dict[str, Any] | None
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if text is not None:
        output.append(
            {
                "type": "message",
                "id": f"msg_sim{call.request_id}",
                "status": "completed" if status == "completed" else "incomplete",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        )
    return {
        "id": f"resp_sim{call.request_id}",
        "object": "response",
        "created_at": now_s(),
        "status": status,
        "background": False,
        "error": (
            {"code": "server_error", "message": "The model failed to generate a response."}
            if status == "failed"
            else None
        ),
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": call.body.get("instructions"),
        "max_output_tokens": call.body.get("max_output_tokens"),
        "model": call.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": call.body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _final_status(call: Call) -> str:
    return {"incomplete": "incomplete", "failed": "failed", "error": "failed"}.get(
        call.knobs.outcome, "completed"
    )


def responses(call: Call) -> Reply:
    headers = [("x-request-id", f"req_sim{call.request_id}")]
    call.wire_usage = responses_usage(call)
    if not call.stream:
        obj = _response_object(call, _final_status(call), text_placeholder(call), call.wire_usage)
        return json_reply(call, obj, headers)
    return sse_reply((sse(e, event=e["type"]) for e in response_events(call)), headers)


def response_events(call: Call) -> Iterator[dict[str, Any]]:
    """The event objects of a streamed response (SSE data, or WebSocket text messages)."""
    seq = 0
    item_id = f"msg_sim{call.request_id}"

    def ev(kind: str, **fields: Any) -> dict[str, Any]:
        nonlocal seq
        event = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return event

    yield ev("response.created", response=_response_object(call, "in_progress", None, None))
    yield ev("response.in_progress", response=_response_object(call, "in_progress", None, None))
    item = {
        "id": item_id,
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    yield ev("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    yield ev(
        "response.content_part.added", item_id=item_id, output_index=0, content_index=0, part=part
    )
    big = call.knobs.response_bytes is not None
    pieces: list[str] = []
    for piece in call.deltas():
        if not big:
            pieces.append(piece)
        yield ev(
            "response.output_text.delta",
            item_id=item_id,
            output_index=0,
            content_index=0,
            delta=piece,
            logprobs=[],
        )
    text = "" if big else "".join(pieces)
    status = _final_status(call)
    if status == "completed":
        yield ev(
            "response.output_text.done",
            item_id=item_id,
            output_index=0,
            content_index=0,
            text=text,
            logprobs=[],
        )
        done_part = {**part, "text": text}
        yield ev(
            "response.content_part.done",
            item_id=item_id,
            output_index=0,
            content_index=0,
            part=done_part,
        )
        done_item = {**item, "status": "completed", "content": [done_part]}
        yield ev("response.output_item.done", output_index=0, item=done_item)
    final = _response_object(call, status, text, call.wire_usage)
    yield ev(f"response.{status}", response=final)


# -- Embeddings, Models -----------------------------------------------------------------------


def embeddings(call: Call) -> Reply:
    raw = call.body.get("input", "")
    inputs = raw if isinstance(raw, list) else [raw]
    data = [
        {"object": "embedding", "index": i, "embedding": [((i + j) % 7) / 10 for j in range(8)]}
        for i in range(len(inputs))
    ]
    u = call.usage
    usage = {"prompt_tokens": u.prompt_total, "total_tokens": u.prompt_total}
    call.wire_usage = usage
    body = {"object": "list", "data": data, "model": call.model, "usage": usage}
    return Reply(body=dumps(body).encode(), headers=[("x-request-id", f"req_sim{call.request_id}")])


def models() -> Reply:
    ids = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "o3", "text-embedding-3-small"]
    data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"} for m in ids]
    return Reply(body=dumps({"object": "list", "data": data}).encode())

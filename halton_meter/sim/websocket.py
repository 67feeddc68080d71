"""OpenAI Responses over WebSocket, as Codex speaks it: the client sends
``{"type": "response.create", ...}`` text messages on ``GET /v1/responses`` (upgraded), the server
answers each with the same response.* event objects the SSE stream carries, one per message."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from halton_meter.sim import openai
from halton_meter.sim.common import Call, KnobError, Knobs, default_usage, dumps, split_model_knobs

if TYPE_CHECKING:
    from halton_meter.sim.app import SimRecord
    from halton_meter.sim.server import SimRequest, WebSocketSession


async def responses_ws(
    session: WebSocketSession, req: SimRequest, rec: SimRecord, defaults: dict[str, str]
) -> None:
    sent = 0
    while True:
        message = await session.receive()
        if message is None:
            return
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        error: dict[str, Any]
        if not isinstance(data, dict) or data.get("type") != "response.create":
            error = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "expected response.create"},
            }
            await session.send_text(dumps(error))
            continue
        nested = data.get("response")
        body: dict[str, Any] = (
            nested if isinstance(nested, dict) else {k: v for k, v in data.items() if k != "type"}
        )
        raw_model = body.get("model")
        model = raw_model if isinstance(raw_model, str) else openai.DEFAULT_MODEL
        model, model_knobs = split_model_knobs(model)
        try:
            knobs = Knobs.from_request(req, model_knobs, defaults)
        except KnobError as exc:
            error = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": str(exc)},
            }
            await session.send_text(dumps(error))
            continue
        if knobs.status is not None and knobs.status >= 400:
            error = {
                "type": "error",
                "status": knobs.status,
                **openai.error_body(knobs.status, "Simulated error."),
            }
            await session.send_text(dumps(error))
            rec.ws_calls.append(
                {"model": model, "status": knobs.status, "usage": None, "completed": True}
            )
            continue
        call = Call(
            req=session.request,
            knobs=knobs,
            api="openai.responses.ws",
            model=model,
            stream=True,
            body=body,
        )
        call.usage = default_usage(call, body_size=len(text.encode()))
        call.wire_usage = openai.responses_usage(call)
        entry: dict[str, Any] = {
            "model": model,
            "usage": call.wire_usage,
            "usage_canonical": call.usage.to_dict(),
            "status": 200,
            "completed": False,
        }
        rec.ws_calls.append(entry)
        rec.model, rec.usage, rec.usage_canonical = model, call.wire_usage, call.usage.to_dict()
        for index, event in enumerate(openai.response_events(call)):
            if knobs.truncate_after is not None and sent >= knobs.truncate_after:
                rec.progress.truncated = True
                session.abort()
                return
            if index and knobs.delay_s:
                await asyncio.sleep(knobs.delay_s)
            await session.send_text(dumps(event))
            sent += 1
        entry["completed"] = True

"""OpenAI Responses over WebSocket, as Codex speaks it: the client sends
``{"type": "response.create", ...}`` text messages on ``GET /v1/responses`` (upgraded), the server
answers each with the same response.* event objects the SSE stream carries, one per message."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from halton_meter.sim import openai
from halton_meter.sim.common import Call, Knobs, default_usage, dumps

if TYPE_CHECKING:
    from halton_meter.sim.app import SimRecord
    from halton_meter.sim.server import WebSocketSession


async def responses_ws(session: WebSocketSession, knobs: Knobs, rec: SimRecord) -> None:
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

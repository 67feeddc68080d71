"""OpenAI shapes: Chat Completions, legacy Completions, Embeddings, Responses.

Shared by OpenAI, Azure OpenAI, OpenRouter, Gemini's OpenAI surface and configured
OpenAI-compatible hosts. ``prompt_tokens``/``input_tokens`` already include cached tokens and
``completion_tokens``/``output_tokens`` include reasoning, so they are the OTel totals as is.
A chat stream carries usage only with ``stream_options.include_usage``; without it the counts
stay None, never 0.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from halton_meter.providers._common import (
    Handler,
    as_dict,
    as_int,
    error_text,
    loads,
    loads_body,
)
from halton_meter.providers.base import ParseError, Usage

RESPONSES_TERMINAL = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "response.cancelled"}
)


# -- Chat Completions / Completions / Embeddings ------------------------------------------


def apply_chat_usage(u: Usage, raw: dict[str, Any]) -> None:
    u.raw_usage = raw
    u.input_tokens = as_int(raw.get("prompt_tokens"))
    u.output_tokens = as_int(raw.get("completion_tokens"))
    prompt_details = as_dict(raw.get("prompt_tokens_details"))
    u.cache_read_tokens = as_int(prompt_details.get("cached_tokens"))
    # Some compatible servers report cache writes (e.g. Anthropic models via OpenRouter)
    u.cache_write_tokens = as_int(prompt_details.get("cache_write_tokens"))
    completion_details = as_dict(raw.get("completion_tokens_details"))
    u.reasoning_tokens = as_int(completion_details.get("reasoning_tokens"))
    cost = raw.get("cost")
    if isinstance(cost, Decimal | int) and not isinstance(cost, bool):
        # OpenRouter reports what it billed, in USD; parsed as Decimal, never a float
        u.billed_cost_usd = Decimal(cost)


def _chat_finish(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            reason = as_dict(choice).get("finish_reason")
            if isinstance(reason, str):
                return reason
    return None


def _chat_usage_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    # Groq puts stream usage under x_groq
    groq = as_dict(obj.get("x_groq")).get("usage")
    return groq if isinstance(groq, dict) else None


def chat_to_usage(obj: Any, provider: str, api: str) -> Usage:
    """A complete chat.completion / text_completion / embeddings list object."""
    if not isinstance(obj, dict):
        raise ParseError(f"{api} response is not a JSON object")
    u = Usage(provider=provider, api=api)
    if "error" in obj and obj.get("error") is not None and "choices" not in obj:
        u.error = error_text(obj["error"])
        u.complete = True
        return u
    if isinstance(obj.get("model"), str):
        u.model = obj["model"]
    u.finish = _chat_finish(obj)
    usage = _chat_usage_of(obj)
    if usage is not None:
        apply_chat_usage(u, usage)
    if isinstance(obj.get("service_tier"), str):
        u.extra["service_tier"] = obj["service_tier"]
    if isinstance(obj.get("provider"), str):  # OpenRouter names the upstream it routed to
        u.extra["upstream_provider"] = obj["provider"]
    u.complete = True
    return u


def parse_chat_json(body: bytes, provider: str = "openai", api: str = "chat") -> Usage:
    return chat_to_usage(loads_body(body), provider, api)


class ChatHandler(Handler):
    """``data: {chunk}`` lines ending with ``data: [DONE]``."""

    def on_text(self, text: str, event: str | None = None) -> None:
        if text.strip() == "[DONE]":
            self.u.complete = True
            return
        super().on_text(text, event)

    def on_object(self, obj: Any, event: str | None = None) -> None:
        if not isinstance(obj, dict):
            self.parse_error("chat chunk is not a JSON object")
            return
        if obj.get("error") is not None and "choices" not in obj:
            self.u.error = error_text(obj["error"])
            return
        if isinstance(obj.get("model"), str) and obj["model"]:
            self.u.model = obj["model"]
        finish = _chat_finish(obj)
        if finish is not None:
            self.u.finish = finish
            # Not every compatible server sends [DONE]; a finish reason ends the answer too
            # (an include_usage chunk may still follow, and is read if it does).
            self.u.complete = True
        usage = _chat_usage_of(obj)
        if usage is not None:
            # counts are totals for the whole response: the last report wins
            apply_chat_usage(self.u, usage)
        if isinstance(obj.get("service_tier"), str):
            self.u.extra["service_tier"] = obj["service_tier"]
        if isinstance(obj.get("provider"), str):
            self.u.extra["upstream_provider"] = obj["provider"]


# -- Responses -----------------------------------------------------------------------------


def apply_responses_usage(u: Usage, raw: dict[str, Any]) -> None:
    u.raw_usage = raw
    u.input_tokens = as_int(raw.get("input_tokens"))
    u.output_tokens = as_int(raw.get("output_tokens"))
    u.cache_read_tokens = as_int(as_dict(raw.get("input_tokens_details")).get("cached_tokens"))
    u.reasoning_tokens = as_int(as_dict(raw.get("output_tokens_details")).get("reasoning_tokens"))
    cost = raw.get("cost")
    if isinstance(cost, Decimal | int) and not isinstance(cost, bool):
        u.billed_cost_usd = Decimal(cost)


def _apply_response_object(u: Usage, resp: dict[str, Any]) -> None:
    if isinstance(resp.get("model"), str) and resp["model"]:
        u.model = resp["model"]
    if isinstance(resp.get("usage"), dict):
        apply_responses_usage(u, resp["usage"])
    if isinstance(resp.get("service_tier"), str):
        u.extra["service_tier"] = resp["service_tier"]
    status = resp.get("status")
    if isinstance(status, str) and status not in ("in_progress", "queued"):
        reason = as_dict(resp.get("incomplete_details")).get("reason")
        u.finish = f"{status}:{reason}" if status == "incomplete" and reason else status
        if reason:
            u.extra["incomplete_reason"] = reason
    if resp.get("error") is not None:
        u.error = error_text(resp["error"])
    elif status == "failed":
        u.error = "failed"


def response_to_usage(obj: Any, provider: str, api: str = "responses") -> Usage:
    """A complete (non-streamed) Responses API object."""
    if not isinstance(obj, dict):
        raise ParseError("Responses response is not a JSON object")
    u = Usage(provider=provider, api=api)
    if obj.get("object") != "response" and isinstance(obj.get("error"), dict):
        u.error = error_text(obj["error"])
        u.complete = True
        return u
    _apply_response_object(u, obj)
    u.complete = True
    return u


def parse_responses_json(body: bytes, provider: str = "openai", api: str = "responses") -> Usage:
    return response_to_usage(loads_body(body), provider, api)


class ResponsesHandler(Handler):
    """Responses streaming events, from SSE or WebSocket messages (same event objects)."""

    def on_object(self, obj: Any, event: str | None = None) -> None:
        if not isinstance(obj, dict):
            self.parse_error(f"event {event or ''} is not a JSON object")
            return
        kind = obj.get("type") or event
        resp = obj.get("response")
        if isinstance(resp, dict):
            _apply_response_object(self.u, resp)
        if kind in RESPONSES_TERMINAL:
            self.u.complete = True
            if kind == "response.failed" and self.u.error is None:
                self.u.error = "failed"
        elif kind == "error":
            self.u.error = error_text(obj.get("error", obj))
            self.u.complete = True

    @property
    def terminal(self) -> bool:
        return self.u.complete


def parse_responses_ws_message(
    message: bytes | str, provider: str = "openai", api: str = "responses"
) -> Usage | None:
    """One Responses WebSocket message (Codex). A Usage when it ends a response, else None.

    Non-terminal events (deltas, ``response.created``) return None; a message that is not
    JSON raises ParseError.
    """
    try:
        obj = loads(message)
    except (ValueError, UnicodeDecodeError) as e:
        raise ParseError(f"WebSocket message is not JSON: {e}") from e
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if kind not in RESPONSES_TERMINAL and kind not in ("error", "response.error"):
        return None
    h = ResponsesHandler(provider, api)
    h.on_object(obj)
    h.u.complete = True
    return h.u


class ResponsesSession:
    """Follows a WebSocket carrying several responses: one Usage per terminal event.

    Feed it server messages (and, optionally, client ones: ``response.create`` is noted).

    ``response.created`` names the model early, so a response that never terminates can
    still be reported with ``partial()``.
    """

    def __init__(self, provider: str = "openai", api: str = "responses") -> None:
        self._provider = provider
        self._api = api
        self._current: ResponsesHandler | None = None

    def on_message(self, message: bytes | str) -> Usage | None:
        try:
            obj = loads(message)
        except (ValueError, UnicodeDecodeError):
            if self._current is None:
                self._current = ResponsesHandler(self._provider, self._api)
            self._current.parse_error("WebSocket message is not JSON")
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            return None
        if obj["type"] == "response.create":
            # the client's request (if the caller feeds both directions): a new response
            # starts, and the model it asks for names a partial row until the server says
            self._current = ResponsesHandler(self._provider, self._api)
            model = obj.get("model") or as_dict(obj.get("response")).get("model")
            if isinstance(model, str) and model:
                self._current.u.model = model
            return None
        if not obj["type"].startswith("response.") and obj["type"] != "error":
            return None
        if self._current is None:
            self._current = ResponsesHandler(self._provider, self._api)
        self._current.on_object(obj)
        if self._current.terminal:
            done = self._current.u
            self._current = None
            return done
        return None

    def partial(self) -> Usage | None:
        """The response in flight, if any (for a row when the socket drops)."""
        return self._current.snapshot() if self._current is not None else None

"""Gemini generateContent / streamGenerateContent.

``usageMetadata`` counts in a stream are cumulative: the last chunk's win. The OTel output
total is candidates + thoughts (Gemini reports thinking separately); ``promptTokenCount``
already includes ``cachedContentTokenCount``, and tool-use prompt tokens are input too.
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


def apply_usage_metadata(u: Usage, raw: dict[str, Any]) -> None:
    u.raw_usage = raw
    prompt = as_int(raw.get("promptTokenCount"))
    tool_prompt = as_int(raw.get("toolUsePromptTokenCount"))
    candidates = as_int(raw.get("candidatesTokenCount"))
    thoughts = as_int(raw.get("thoughtsTokenCount"))
    u.input_tokens = add_counts(prompt, tool_prompt) if prompt is not None else None
    # Early stream chunks (and blocked prompts) carry no candidate count: not reported, None
    u.output_tokens = add_counts(candidates, thoughts)
    u.cache_read_tokens = as_int(raw.get("cachedContentTokenCount"))
    u.reasoning_tokens = thoughts


class GenerateContentHandler(Handler):
    """One GenerateContentResponse per call (JSON body, SSE event or array element)."""

    def on_object(self, obj: Any, event: str | None = None) -> None:
        if isinstance(obj, list):  # a whole streamed array handed over at once
            for item in obj:
                self.on_object(item, event)
            return
        if not isinstance(obj, dict):
            self.parse_error("Gemini chunk is not a JSON object")
            return
        if obj.get("error") is not None:
            self.u.error = error_text(obj["error"])
            return
        if isinstance(obj.get("modelVersion"), str) and obj["modelVersion"]:
            self.u.model = obj["modelVersion"]
        candidates = obj.get("candidates")
        if isinstance(candidates, list):
            for cand in candidates:
                reason = as_dict(cand).get("finishReason")
                if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
                    self.u.finish = reason
                    self.u.complete = True
        block = as_dict(obj.get("promptFeedback")).get("blockReason")
        if isinstance(block, str):
            self.u.finish = f"blocked:{block}"
            self.u.complete = True
        if isinstance(obj.get("usageMetadata"), dict):
            apply_usage_metadata(self.u, obj["usageMetadata"])
        if isinstance(obj.get("responseId"), str):
            self.u.extra["response_id"] = obj["responseId"]


def parse_json(body: bytes, provider: str = "gemini", api: str = "generate_content") -> Usage:
    obj = loads_body(body)
    if not isinstance(obj, dict | list):
        raise ParseError("Gemini response is not a JSON object or array")
    h = GenerateContentHandler(provider, api)
    h.on_object(obj)
    h.u.complete = h.u.complete or h.u.error is not None or isinstance(obj, dict)
    return h.u

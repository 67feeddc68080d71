"""The normalised usage every parser produces. Pure data: no mitmproxy, no I/O.

Token totals follow the OpenTelemetry GenAI convention: ``input_tokens`` includes cache
reads and writes, ``output_tokens`` includes reasoning. A count the provider did not
report is ``None``, never 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol


@dataclass
class Usage:
    provider: str  # anthropic, openai, gemini, openrouter, azure, bedrock, compatible
    api: str  # messages, chat, responses, generate_content, converse, ...
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    server_tool_use: dict[str, int] | None = None
    billed_cost_usd: Decimal | None = None  # a cost the provider reports itself (OpenRouter)
    # The provider's own usage object, kept verbatim (for a stream, the final one; Anthropic's
    # is message_start's usage with message_delta's cumulative fields written over it).
    # Non-integer numbers are Decimals: store it with dump_raw_usage().
    raw_usage: Any = None
    finish: str | None = None  # stop reason / terminal event (e.g. response.incomplete)
    error: str | None = None  # an error the provider reported in-band
    complete: bool = False  # the parser saw the end of the response
    extra: dict[str, Any] = field(default_factory=dict)


class StreamParser(Protocol):
    """Reads a decompressed response stream chunk by chunk, on the side."""

    def feed(self, chunk: bytes) -> None: ...

    def result(self) -> Usage: ...


class ParseError(ValueError):
    """A one-shot (non-streaming) parser could not read the body it was given."""


# Parse errors are counted by the daemon; keep a few messages for the log, not all of them.
_MAX_PARSE_ERROR_MESSAGES = 20


def note_parse_error(usage: Usage, message: str) -> None:
    """Record a problem a stream parser met instead of raising out of ``feed``.

    ``usage.extra["parse_errors"]`` holds up to 20 messages and
    ``usage.extra["parse_error_count"]`` the total.
    """
    errors: list[str] = usage.extra.setdefault("parse_errors", [])
    if len(errors) < _MAX_PARSE_ERROR_MESSAGES:
        errors.append(message[:300])
    usage.extra["parse_error_count"] = usage.extra.get("parse_error_count", 0) + 1


def parse_error_count(usage: Usage) -> int:
    return int(usage.extra.get("parse_error_count", 0))


def dump_raw_usage(raw: Any) -> str | None:
    """``raw_usage`` as JSON text for storage. Decimals (exact money) become strings."""
    if raw is None:
        return None
    return json.dumps(raw, default=_json_default, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

"""Helpers shared by the per-API parsers."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

from halton_meter.providers.base import ParseError, Usage, note_parse_error


def loads(data: bytes | str) -> Any:
    """JSON with every non-integer number as an exact Decimal: no float ever exists."""
    return json.loads(data, parse_float=Decimal)


def loads_body(body: bytes) -> Any:
    try:
        return loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ParseError(f"response body is not JSON: {e}") from e


def as_int(value: Any) -> int | None:
    """A token count, or None when absent or not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return None


def add_counts(*values: int | None) -> int | None:
    """Sum of the counts that were reported; None when none was."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def error_text(err: Any) -> str:
    """``type: message`` from a provider's error object (or whatever it sent)."""
    if isinstance(err, dict):
        kind = err.get("type")
        if kind in (None, "", "error"):  # a Responses "error" event names itself "error"
            kind = err.get("status") or err.get("code")
        message = err.get("message")
        if message is None and isinstance(err.get("error"), dict | str):
            return error_text(err["error"])
        parts = [str(p) for p in (kind, message) if p not in (None, "")]
        return ": ".join(parts) if parts else json.dumps(err, default=str)[:500]
    return str(err)[:500]


class Handler:
    """Per-API event logic: fed one decoded JSON object (an event or chunk) at a time."""

    def __init__(self, provider: str, api: str) -> None:
        self.u = Usage(provider=provider, api=api)

    def on_object(self, obj: Any, event: str | None = None) -> None:
        raise NotImplementedError

    def on_text(self, text: str, event: str | None = None) -> None:
        """One SSE ``data`` payload: JSON, except a few sentinels handled by subclasses."""
        try:
            obj = loads(text)
        except ValueError as e:
            self.parse_error(f"bad JSON in event {event or ''}: {e}")
            return
        self.on_object(obj, event)

    def on_end(self) -> None:
        """The stream ended (or result() was asked for): derive final fields."""

    def parse_error(self, message: str) -> None:
        note_parse_error(self.u, message)

    def snapshot(self) -> Usage:
        h = copy.deepcopy(self)
        h.on_end()
        return h.u

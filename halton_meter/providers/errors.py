"""Reading a provider's error body (non-2xx responses). The row gets the status, the error
and no tokens: a failed call reports no usage, so its counts stay None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from halton_meter.providers._common import loads
from halton_meter.providers.base import Usage
from halton_meter.providers.endpoints import Endpoint

_MAX_MESSAGE = 500


@dataclass(frozen=True)
class ProviderError:
    message: str | None
    type: str | None

    def text(self) -> str:
        parts = [p for p in (self.type, self.message) if p]
        return ": ".join(parts) if parts else "error"


def _str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)[:_MAX_MESSAGE]


def extract_error(body: bytes | None, error_type_header: str | None = None) -> ProviderError:
    """Message and type from any provider's error JSON; never raises.

    Shapes: Anthropic ``{"type":"error","error":{"type","message"}}``; OpenAI, Azure,
    OpenRouter ``{"error":{"message","type","code"}}``; Gemini ``{"error":{"code","message",
    "status"}}`` (or a one-element array of that); Bedrock ``{"message"}`` with the type in
    the ``x-amzn-ErrorType`` header. A body that is not JSON gives its first line as message.
    """
    header_type = error_type_header.split(":", 1)[0] if error_type_header else None
    if not body:
        return ProviderError(None, header_type)
    try:
        obj = loads(body)
    except (ValueError, UnicodeDecodeError):
        first = body[:_MAX_MESSAGE].decode("utf-8", errors="replace").strip().splitlines()
        return ProviderError(first[0] if first else None, header_type)
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if not isinstance(obj, dict):
        return ProviderError(_str(obj), header_type)
    err = obj.get("error")
    if isinstance(err, dict):
        kind = err.get("type") or err.get("status") or err.get("code")
        return ProviderError(_str(err.get("message")), _str(kind) or header_type)
    if isinstance(err, str):
        return ProviderError(_str(obj.get("message") or err), _str(obj.get("type")) or header_type)
    message = obj.get("message") or obj.get("Message")
    kind = obj.get("__type") or obj.get("code") or obj.get("type")
    if isinstance(kind, str) and "#" in kind:  # "com.amazon...#ValidationException"
        kind = kind.rsplit("#", 1)[1]
    return ProviderError(_str(message), header_type or _str(kind))


def error_usage(
    endpoint: Endpoint, body: bytes | None, error_type_header: str | None = None
) -> Usage:
    """The Usage for a non-2xx response: the provider's error, no token counts."""
    err = extract_error(body, error_type_header)
    u = Usage(provider=endpoint.provider, api=endpoint.api, error=err.text(), complete=True)
    u.extra["error_type"] = err.type
    u.extra["error_message"] = err.message
    return u

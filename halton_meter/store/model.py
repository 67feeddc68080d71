"""One row per request: what the daemon writes and `report` reads."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal


def new_row_id() -> str:
    """Time-ordered, unique id: 12 hex digits of milliseconds then 16 random hex digits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


@dataclass
class Row:
    id: str = field(default_factory=new_row_id)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))  # request start, UTC
    # attribution (filled from the edge's hand-over; defaults when the daemon is used bare)
    tool: str = "other"
    project: str = "misc"
    tier: str = "misc"
    client_pid: int | None = None
    client_cwd: str | None = None
    # request
    provider: str | None = None
    api: str | None = None
    host: str | None = None
    method: str | None = None
    path: str | None = None  # without credential query parameters
    model: str | None = None
    stream: bool = False
    status: int | None = None
    # usage (OTel GenAI totals; None = not reported)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_json: str | None = None
    # a pricing input some APIs report outside the usage object (OpenAI flex/priority);
    # kept so `reprice` prices like the daemon would have (schema v3)
    service_tier: str | None = None
    # money: exact, never a float
    cost_usd: Decimal | None = None
    priced: bool = False
    price_note: str | None = None  # why unpriced, or "api-equivalent"
    billed_cost_usd: Decimal | None = None
    api_equivalent: bool = False  # subscription (OAuth) traffic priced as API-equivalent
    # outcome
    partial: bool = False
    error: str | None = None
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    request_bytes: int | None = None
    response_bytes: int | None = None
    # bodies
    request_body_path: str | None = None
    response_body_path: str | None = None
    body_skip_reason: str | None = None

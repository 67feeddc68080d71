"""Report time bounds, shared by `halton-meter report` and `GET /v1/report`.

A time is either an age (``30m``, ``24h``, ``7d``, ``2w``: that long before now) or an ISO 8601
date or date-time (a date is midnight UTC; a naive time is UTC). One parser, so the CLI and the
API can never accept different things.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
TIME_FIX = (
    "use an ISO date (2026-12-01), an ISO datetime (2026-12-01T09:30; UTC unless it has an "
    "offset) or an age like 30m, 24h, 7d, 2w"
)


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """``7d`` -> now minus seven days; ``2026-12-01`` -> that midnight UTC; aware, in UTC.
    ValueError naming the fix otherwise."""
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a time: {TIME_FIX}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

"""Query parameters shared by `GET /v1/report` and `halton-meter report`.

``since`` is either a relative window (``30m``, ``24h``, ``7d``, ``2w``: that long before now)
or an ISO 8601 date or date-time (a date is midnight UTC; a naive time is UTC).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
GROUP_KEYS = ("day", "project", "model", "tool", "provider")


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``7d`` -> now minus seven days; ``2026-12-01`` -> that midnight UTC. ValueError else."""
    match = _RELATIVE.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since={text!r} is not a window like 24h or 7d, nor an ISO date like 2026-12-01"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

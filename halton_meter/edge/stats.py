"""Edge counters, persisted for ``status`` in ``edge-stats.json``.

Counting is a dict increment on the event loop; the file is written by a background task at
most once a second (atomic_write in a worker thread), never on the byte path. Totals carry over
restarts: the file is read back at start (a corrupt one is reported and started afresh).

Fields: ``unmetered_total``, ``unmetered_by_host``, ``loops_refused``, ``connections_total``,
``metered_total``, ``tier_hits`` ({tier: n}), ``last_fail_open`` ({host, reason, at} or null),
``daemon_reachable`` (the last hand-over attempt's outcome), ``pid``, ``started_at``,
``updated_at`` (ISO 8601 UTC).
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from halton_meter.core.fsutil import atomic_write
from halton_meter.core.logging import get_logger

log = get_logger("halton_meter.edge.stats")
FLUSH_INTERVAL_S = 1.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class EdgeStats:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.unmetered_total = 0
        self.unmetered_by_host: dict[str, int] = {}
        self.loops_refused = 0
        self.connections_total = 0
        self.metered_total = 0
        self.tier_hits: dict[str, int] = {}
        self.last_fail_open: dict[str, str] | None = None
        self.daemon_reachable: bool | None = None
        self.started_at = _now()
        self._dirty = True
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("edge.stats.corrupt", path=str(self.path), error=str(exc))
            return
        if not isinstance(data, dict):
            log.warning("edge.stats.corrupt", path=str(self.path), error="not an object")
            return
        for name in ("unmetered_total", "loops_refused", "connections_total", "metered_total"):
            value = data.get(name)
            if isinstance(value, int) and value >= 0:
                setattr(self, name, value)
        for name in ("unmetered_by_host", "tier_hits"):
            value = data.get(name)
            if isinstance(value, dict):
                setattr(self, name, {str(k): v for k, v in value.items() if isinstance(v, int)})

    # -- counting (event loop) -------------------------------------------------------------------
    def connection(self) -> None:
        self.connections_total += 1
        self._dirty = True

    def metered(self) -> None:
        self.metered_total += 1
        self.daemon_reachable = True
        self._dirty = True

    def unmetered(self, host: str, reason: str) -> None:
        self.unmetered_total += 1
        self.unmetered_by_host[host] = self.unmetered_by_host.get(host, 0) + 1
        self.last_fail_open = {"host": host, "reason": reason, "at": _now()}
        self.daemon_reachable = False
        self._dirty = True

    def loop_refused(self) -> None:
        self.loops_refused += 1
        self._dirty = True

    def tier_hit(self, tier: str) -> None:
        self.tier_hits[tier] = self.tier_hits.get(tier, 0) + 1
        self._dirty = True

    # -- persistence -----------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "unmetered_total": self.unmetered_total,
            "unmetered_by_host": dict(self.unmetered_by_host),
            "loops_refused": self.loops_refused,
            "connections_total": self.connections_total,
            "metered_total": self.metered_total,
            "tier_hits": dict(self.tier_hits),
            "last_fail_open": self.last_fail_open,
            "daemon_reachable": self.daemon_reachable,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": _now(),
        }

    def flush(self) -> None:
        """Write now if anything changed (blocking: at start and at shutdown)."""
        payload = self._take()
        if payload is not None:
            self._write(payload)

    def _take(self) -> str | None:
        # Runs on the event loop thread: the counters are never read while being mutated.
        if not self._dirty:
            return None
        self._dirty = False
        return json.dumps(self.as_dict(), indent=1)

    def _write(self, payload: str) -> None:
        try:
            atomic_write(self.path, payload, mode=0o644)
        except OSError as exc:
            self._dirty = True
            log.warning("edge.stats.write_failed", path=str(self.path), error=str(exc))

    async def run_flusher(self, interval: float = FLUSH_INTERVAL_S) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            payload = self._take()
            if payload is not None:
                await loop.run_in_executor(None, self._write, payload)

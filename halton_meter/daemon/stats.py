"""Counters the daemon publishes in ``run/daemon-stats.json`` for status and doctor."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halton_meter.core.fsutil import atomic_write


@dataclass
class Stats:
    rows_submitted: int = 0
    rows_written: int = 0
    parse_errors: int = 0
    metering_errors: int = 0
    body_skips: int = 0
    live_flows: int = 0
    started_at: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, float | int]:
        data: dict[str, float | int] = asdict(self)
        data["pid"] = os.getpid()
        data["updated_at"] = time.time()
        return data

    def write(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.snapshot(), sort_keys=True) + "\n", mode=0o600)

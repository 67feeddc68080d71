"""Helpers for the store's tests: rows with sensible defaults, written through the real writer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from hmtest import PYTHON, REPO, clean_env

from halton_meter.store.model import Row
from halton_meter.store.writer import RowWriter

BASE_TS = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def make_row(**overrides: Any) -> Row:
    values: dict[str, Any] = {
        "ts": BASE_TS,
        "tool": "curl",
        "project": "alpha",
        "tier": "explicit",
        "provider": "openai",
        "api": "chat",
        "host": "api.openai.com",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "gpt-4o",
        "status": 200,
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": Decimal("0.1"),
        "priced": True,
        "latency_ms": 12.5,
        "ttfb_ms": 3.25,
    }
    values.update(overrides)
    if "cost_usd" in overrides and overrides["cost_usd"] is None and "priced" not in overrides:
        values["priced"] = False
    return Row(**values)


def write_rows(db_path: Path, rows: Iterable[Row]) -> None:
    writer = RowWriter(db_path)
    try:
        for row in rows:
            writer.submit(row)
        assert writer.flush(30), "writer did not drain"
        assert writer.errors == 0
    finally:
        writer.close()


def run_cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`halton-meter <args>` in a child process against ``home``."""
    return subprocess.run(
        [PYTHON, "-m", "halton_meter", *args],
        cwd=REPO,
        env=clean_env(home, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )

"""Shared plumbing for the backfill scripts: arguments, the store, short write batches."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from halton_meter.core.paths import Home
from halton_meter.store import db

BATCH = 200


def parse_args(prog: str, description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m halton_meter.scripts.{prog}", description=description
    )
    parser.add_argument(
        "--apply", action="store_true", help="rewrite rows in place (default: dry-run)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser.parse_args(argv)


def open_store(home: Home) -> sqlite3.Connection | None:
    """The store, or None (with a message) when there is none yet. Never creates it."""
    if not home.db.exists():
        print(f"no database at {home.db}; nothing to do")
        return None
    try:
        conn = db.connect(home.db)
    except db.StoreError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    conn.row_factory = sqlite3.Row
    return conn


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def apply_updates(conn: sqlite3.Connection, sql: str, params: Iterable[Sequence[Any]]) -> int:
    """Run ``sql`` for each parameter set in short transactions (the daemon keeps writing)."""
    changed = 0
    batch: list[Sequence[Any]] = []

    def flush() -> None:
        nonlocal changed
        if not batch:
            return
        with db.transaction(conn):
            for p in batch:
                changed += conn.execute(sql, p).rowcount
        batch.clear()

    for p in params:
        batch.append(p)
        if len(batch) >= BATCH:
            flush()
    flush()
    return changed

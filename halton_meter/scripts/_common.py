"""Shared plumbing for the backfill scripts: arguments, the store, dry-run/apply, short write
batches, the summary line."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from halton_meter.core.paths import Home
from halton_meter.store import db

BATCH = 200
_Change = TypeVar("_Change")


def parse_args(prog: str, description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m halton_meter.scripts.{prog}", description=description
    )
    parser.add_argument(
        "--apply", action="store_true", help="rewrite rows in place (default: dry-run)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser.parse_args(argv)


def run(
    prog: str,
    description: str,
    argv: Sequence[str] | None,
    *,
    noun: str,
    plan: Callable[[sqlite3.Connection, Home], list[_Change]],
    describe: Callable[[_Change], str],
    write: Callable[[sqlite3.Connection, list[_Change], str], int],
) -> int:
    """A backfill's ``main``: plan the changes, print them (unless --quiet), then either say
    what would change (dry-run) or ``write`` them (with an updated_at stamp) and say how many
    did."""
    args = parse_args(prog, description, argv)
    home = Home.resolve()
    conn = open_store(home)
    if conn is None:
        return 0
    try:
        changes = plan(conn, home)
        if not args.quiet:
            for change in changes:
                print(describe(change))
        if not args.apply:
            print(
                f"{prog}: {len(changes)} {noun} would change "
                f"(dry-run; re-run with --apply to write)"
            )
            return 0
        changed = write(conn, changes, now_text())
        print(f"{prog}: {changed} {noun} changed")
        return 0
    finally:
        conn.close()


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

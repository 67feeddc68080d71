"""Correct rows whose body file paths are absolute, stale or point at files that moved.

    python -m halton_meter.scripts.backfill_body_paths           # dry-run: print changes
    python -m halton_meter.scripts.backfill_body_paths --apply   # rewrite rows in place

Body paths are stored relative to the home's ``bodies/`` directory
(``<YYYY-MM-DD>/<row id>.<request|response>``). For each stored path:

- relative and present: left alone;
- absolute under this home's ``bodies/``: made relative;
- absolute elsewhere (an old home) or relative but missing: the file is looked for under
  ``bodies/`` at its canonical place, at the same ``<day>/<name>``, flat as ``<name>``, and
  in any day directory; the first hit becomes the stored (relative) path;
- nowhere to be found: the path becomes NULL and the row's ``body_skip_reason`` notes
  ``body_missing`` (unless it already holds a reason).

A second ``--apply`` changes nothing. Safe while the daemon writes: short transactions, each
update guarded by the value it replaces.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath

from halton_meter.scripts._common import apply_updates, run

MISSING_NOTE = "body_missing"
_KINDS = ("request", "response")


@dataclass(frozen=True)
class Fix:
    row_id: str
    column: str
    old: str
    new: str | None  # None: the file is gone


def _row_day(row_id: str) -> str | None:
    try:
        when = datetime.fromtimestamp(int(row_id[:12], 16) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return when.strftime("%Y-%m-%d") if 2000 <= when.year <= 2200 else None


def _relative(root: Path, path: Path) -> str:
    return PurePath(os.path.relpath(path, root)).as_posix()


def locate(root: Path, row_id: str, kind: str, stored: str) -> str | None:
    """Where the body file is now, relative to ``root``; None when it cannot be found."""
    path = Path(stored)
    if not path.is_absolute():
        if (root / path).is_file():
            return stored
    else:
        try:
            inside = path.resolve().is_relative_to(root.resolve())
        except OSError:
            inside = False
        if inside and path.is_file():
            return _relative(root.resolve(), path.resolve())
    name = path.name or f"{row_id}.{kind}"
    candidates: list[Path] = []
    day = _row_day(row_id)
    if day:
        candidates.append(root / day / f"{row_id}.{kind}")
    if path.parent.name:
        candidates.append(root / path.parent.name / name)
    candidates.append(root / name)
    for candidate in candidates:
        if candidate.is_file():
            return _relative(root, candidate)
    if root.is_dir():
        for day_dir in sorted(root.iterdir()):
            candidate = day_dir / name
            if day_dir.is_dir() and candidate.is_file():
                return _relative(root, candidate)
    return None


def plan(conn: sqlite3.Connection, root: Path) -> list[Fix]:
    rows = conn.execute(
        "SELECT id, request_body_path, response_body_path FROM requests "
        "WHERE request_body_path IS NOT NULL OR response_body_path IS NOT NULL ORDER BY seq"
    ).fetchall()
    fixes = []
    for row in rows:
        for kind in _KINDS:
            column = f"{kind}_body_path"
            stored = row[column]
            if stored is None:
                continue
            found = locate(root, row["id"], kind, stored)
            if found != stored:
                fixes.append(Fix(row["id"], column, stored, found))
    return fixes


def _params(fixes: list[Fix], stamp: str) -> list[tuple[str, Sequence[object]]]:
    out: list[tuple[str, Sequence[object]]] = []
    for f in fixes:
        if f.new is not None:
            sql = f"UPDATE requests SET {f.column} = ?, updated_at = ? WHERE id = ? AND {f.column} = ?"
            out.append((sql, (f.new, stamp, f.row_id, f.old)))
        else:
            sql = (
                f"UPDATE requests SET {f.column} = NULL, "
                f"body_skip_reason = COALESCE(body_skip_reason, ?), updated_at = ? "
                f"WHERE id = ? AND {f.column} = ?"
            )
            out.append((sql, (MISSING_NOTE, stamp, f.row_id, f.old)))
    return out


def _describe(f: Fix) -> str:
    target = f.new if f.new is not None else f"NULL (note {MISSING_NOTE})"
    return f"{f.row_id} {f.column}: {f.old} -> {target}"


def _write(conn: sqlite3.Connection, fixes: list[Fix], stamp: str) -> int:
    by_sql: dict[str, list[Sequence[object]]] = {}
    for sql, params in _params(fixes, stamp):
        by_sql.setdefault(sql, []).append(params)
    return sum(apply_updates(conn, sql, batch) for sql, batch in by_sql.items())


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        "backfill_body_paths",
        "Correct stale, absolute or missing body file paths.",
        argv,
        noun="path(s)",
        plan=lambda conn, home: plan(conn, home.bodies),
        describe=_describe,
        write=_write,
    )


if __name__ == "__main__":
    raise SystemExit(main())

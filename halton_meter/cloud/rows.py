"""What the sync reads from the store: rows after the cursor, in insertion order.

Order is the store's ``seq`` (AUTOINCREMENT, assigned at insert, never reused), not ``ts``:
a row written late with an older ``ts`` still gets a higher ``seq`` than everything before
it, so a cursor on ``seq`` never skips it. SQLite admits one writer at a time, so a reader
never sees seq N+1 committed while seq N is still to come.

Rows go out in the ``report --json`` shape (codec.record) with their ids. The local body
file paths are left out; bodies themselves go only when ``[cloud] send_bodies = true``, then
as base64 in ``request_body_b64`` / ``response_body_b64``.
"""

from __future__ import annotations

import base64
import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halton_meter.core.paths import Home
from halton_meter.store import db
from halton_meter.store.codec import ROW_FIELDS, record

_LOCAL_ONLY = ("request_body_path", "response_body_path")
MAX_BODY_BYTES_PER_BATCH = 8 * 1024 * 1024


@dataclass(frozen=True)
class PendingRow:
    seq: int
    id: str
    payload: dict[str, Any]


@contextlib.contextmanager
def open_store(home: Home) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection, or None while the daemon has not created the store yet."""
    try:
        conn = db.connect(home.db, readonly=True)
    except FileNotFoundError:
        yield None
        return
    try:
        yield conn
    finally:
        conn.close()


def pending_count(conn: sqlite3.Connection | None, cursor: int) -> int:
    if conn is None or not db.has_requests_table(conn):
        return 0
    return int(conn.execute("SELECT count(*) FROM requests WHERE seq > ?", (cursor,)).fetchone()[0])


def cursor_is_stale(conn: sqlite3.Connection | None, cursor: int, cursor_id: str | None) -> bool:
    """True when the store is not the one the cursor was taken in (moved aside, recreated).

    A new database restarts ``seq`` at 1: its AUTOINCREMENT high-water mark is below the
    cursor, or the row at the cursor has another id. Rows pruned since are not a reason.
    """
    if cursor <= 0 or conn is None or not db.has_requests_table(conn):
        return cursor > 0 and conn is not None
    high = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'requests'").fetchone()
    if high is None or int(high[0]) < cursor:
        return True
    if cursor_id is None:
        return False
    at = conn.execute("SELECT id FROM requests WHERE seq = ?", (cursor,)).fetchone()
    return at is not None and str(at[0]) != cursor_id


def read_pending(
    conn: sqlite3.Connection | None,
    cursor: int,
    limit: int,
    *,
    home: Home,
    send_bodies: bool,
) -> list[PendingRow]:
    if conn is None or not db.has_requests_table(conn):
        return []
    columns = ", ".join(ROW_FIELDS)
    cur = conn.execute(
        f"SELECT seq, {columns} FROM requests WHERE seq > ? ORDER BY seq LIMIT ?",
        (cursor, limit),
    )
    out: list[PendingRow] = []
    size = 0
    for values in cur:
        payload = record(list(ROW_FIELDS), values[1:])
        if send_bodies:
            size += _attach_bodies(payload, home.bodies)
        for name in _LOCAL_ONLY:
            payload.pop(name, None)
        out.append(PendingRow(seq=int(values[0]), id=str(payload["id"]), payload=payload))
        if size >= MAX_BODY_BYTES_PER_BATCH:
            break  # bodies can be 4 MiB each: keep a request to a sane size (>= 1 row)
    return out


def _attach_bodies(payload: dict[str, Any], root: Path) -> int:
    """Add the body files as base64; returns the bytes added."""
    added = 0
    for kind in ("request", "response"):
        rel = payload.get(f"{kind}_body_path")
        if not rel:
            continue
        path = root / str(rel)
        try:
            data = path.read_bytes()
        except OSError:
            continue  # pruned or never completed: the row still goes
        encoded = base64.b64encode(data).decode("ascii")
        payload[f"{kind}_body_b64"] = encoded
        added += len(encoded)
    return added

"""Attribute historical ``misc`` rows that can be resolved now.

    python -m halton_meter.scripts.backfill_misc_attribution           # dry-run: print changes
    python -m halton_meter.scripts.backfill_misc_attribution --apply   # rewrite rows in place

A row with tier ``misc`` is looked at again from its ``client_cwd`` (or, when that is empty and
the client process still runs and is older than the row, that process's working directory):
a ``.haltonrc`` at or above it (tier ``haltonrc``), its git root (``git``), or a registered
project path containing it (``4b``, from the edge's registry). Rows that resolve get the
project and the tier that answered; nothing else on the row changes. A second ``--apply``
finds nothing left to change. Safe while the daemon writes: short transactions, each update
guarded by ``tier = 'misc'``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

import psutil

from halton_meter.core.paths import Home
from halton_meter.edge.attribution import Attribution, Attributor
from halton_meter.edge.registry import Registry
from halton_meter.scripts._common import apply_updates, run

_UPDATE = "UPDATE requests SET project = ?, tier = ?, updated_at = ? WHERE id = ? AND tier = 'misc'"
_Change = tuple[sqlite3.Row, Attribution]


def _live_cwd(pid: int | None, ts: str) -> str | None:
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
        row_time = datetime.fromisoformat(ts).timestamp()
        if started > row_time:
            return None  # the pid was reused by a later process
        return str(proc.cwd())
    except (psutil.Error, OSError, ValueError):
        return None


def plan(conn: sqlite3.Connection, attributor: Attributor) -> list[_Change]:
    rows = conn.execute(
        "SELECT id, ts, tool, project, tier, client_pid, client_cwd FROM requests "
        "WHERE tier = 'misc' ORDER BY seq"
    ).fetchall()
    changes = []
    for row in rows:
        cwd = row["client_cwd"] or _live_cwd(row["client_pid"], row["ts"])
        if not cwd:
            continue
        found = attributor.resolve_path(cwd)
        if found is not None and found.project != "misc":
            changes.append((row, found))
    return changes


def _plan(conn: sqlite3.Connection, home: Home) -> list[_Change]:
    return plan(conn, Attributor(Registry(home.registry), scan_roots=[]))


def _describe(change: _Change) -> str:
    row, found = change
    return (
        f"{row['id']} {row['ts']} {row['tool']}: misc -> {found.project} "
        f"(tier {found.tier}, from {row['client_cwd'] or 'pid ' + str(row['client_pid'])})"
    )


def _write(conn: sqlite3.Connection, changes: list[_Change], stamp: str) -> int:
    return apply_updates(
        conn, _UPDATE, ((f.project, f.tier, stamp, row["id"]) for row, f in changes)
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        "backfill_misc_attribution",
        "Attribute historical misc rows that resolve now.",
        argv,
        noun="row(s)",
        plan=_plan,
        describe=_describe,
        write=_write,
    )


if __name__ == "__main__":
    raise SystemExit(main())

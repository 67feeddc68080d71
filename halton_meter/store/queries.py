"""Read side: the rows and sums `report`, the API and the cloud sync show.

Rows come back in the ``report --json`` contract shape (every Row field; ts as ISO 8601 UTC
text, money as decimal strings, bools as JSON bools, unreported counts as None).

Totals semantics:
- They cover every row matching the filters, not only the rows a limit lets through.
- A token sum is None only when no matching row reported that count (SQL SUM semantics: a
  provider that never reports cache tokens shows null, not a made-up 0).
- ``cost_usd`` is the exact sum over priced rows as a decimal string ("0" when none is
  priced); ``unpriced`` counts the rows left out of it (repricing may fill them in later).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from halton_meter.store import db
from halton_meter.store.codec import (
    ROW_FIELDS,
    format_money,
    format_total,
    format_ts,
    from_pico,
    record,
    to_pico,
)

DEFAULT_LIMIT = 50
GROUP_KEYS: dict[str, str] = {
    "day": "substr(ts, 1, 10)",  # the UTC day
    "project": "project",
    "model": "model",
    "tool": "tool",
    "provider": "provider",
}
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)

_SELECT_ROWS = f"SELECT {', '.join(ROW_FIELDS)} FROM requests"
_AGGREGATES = ", ".join(
    [
        "count(*)",
        *(f"sum({t})" for t in TOKEN_FIELDS),
        "sum(CASE WHEN priced = 1 THEN cost_pico END)",
        # priced rows whose cost is not exact in pico-dollars: summed in Python
        "sum(CASE WHEN priced = 1 AND cost_usd IS NOT NULL AND cost_pico IS NULL"
        " THEN 1 ELSE 0 END)",
        "sum(CASE WHEN priced = 1 THEN 0 ELSE 1 END)",
        "sum(partial)",
    ]
)


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    project: str | None = None
    model: str | None = None
    provider: str | None = None
    tool: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.since is not None:
            clauses.append("ts >= ?")
            args.append(format_ts(self.since))
        if self.until is not None:
            clauses.append("ts < ?")
            args.append(format_ts(self.until))
        for column in ("project", "model", "provider", "tool"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _filters(
    since: datetime | None = None,
    until: datetime | None = None,
    project: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    tool: str | None = None,
) -> Filters:
    return Filters(since, until, project, model, provider, tool)


def query_rows(
    conn: sqlite3.Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    project: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    tool: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
) -> list[dict[str, Any]]:
    """Matching rows, newest first (ties in ts: the later-written first)."""
    if not db.has_requests_table(conn):
        return []
    where, args = _filters(since, until, project, model, provider, tool).where()
    sql = f"{_SELECT_ROWS}{where} ORDER BY ts DESC, seq DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(max(0, int(limit)))
    cursor = conn.execute(sql, args)
    return [record(list(ROW_FIELDS), values) for values in cursor]


def totals(
    conn: sqlite3.Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    project: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    tool: str | None = None,
) -> dict[str, Any]:
    """Sums over every matching row: one aggregate query (plus rare inexact-cost rows)."""
    filters = _filters(since, until, project, model, provider, tool)
    if not db.has_requests_table(conn):
        return _aggregate_dict((0, *([None] * len(TOKEN_FIELDS)), None, 0, 0, 0), Decimal(0))
    where, args = filters.where()
    values = conn.execute(f"SELECT {_AGGREGATES} FROM requests{where}", args).fetchone()
    extra = Decimal(0)
    if values[len(TOKEN_FIELDS) + 2]:
        for _key, cost in _inexact_costs(conn, "NULL", where, args):
            extra += cost
    return _aggregate_dict(values, extra)


def group_by(
    conn: sqlite3.Connection,
    key: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    project: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    tool: str | None = None,
) -> list[dict[str, Any]]:
    """One dict per distinct ``key`` value: ``{key: value, requests, <token sums>, cost_usd,
    unpriced, partial}``. Days newest first; other keys by cost, then requests, descending."""
    if key not in GROUP_KEYS:
        raise ValueError(f"cannot group by {key!r}; choose one of {', '.join(GROUP_KEYS)}")
    if not db.has_requests_table(conn):
        return []
    expr = GROUP_KEYS[key]
    where, args = _filters(since, until, project, model, provider, tool).where()
    rows = conn.execute(
        f"SELECT {expr}, {_AGGREGATES} FROM requests{where} GROUP BY {expr}", args
    ).fetchall()
    extras: dict[Any, Decimal] = {}
    if any(r[1 + len(TOKEN_FIELDS) + 2] for r in rows):
        for group_key, cost in _inexact_costs(conn, expr, where, args):
            extras[group_key] = extras.get(group_key, Decimal(0)) + cost
    groups = []
    for r in rows:
        entry = {key: r[0]}
        entry.update(_aggregate_dict(r[1:], extras.get(r[0], Decimal(0))))
        groups.append(entry)
    if key == "day":
        groups.sort(key=lambda g: g["day"] or "", reverse=True)
    else:
        groups.sort(key=lambda g: (Decimal(g["cost_usd"]), g["requests"]), reverse=True)
    return groups


def _inexact_costs(
    conn: sqlite3.Connection, expr: str, where: str, args: list[Any]
) -> Iterable[tuple[Any, Decimal]]:
    extra = "priced = 1 AND cost_usd IS NOT NULL AND cost_pico IS NULL"
    where = f"{where} AND {extra}" if where else f" WHERE {extra}"
    for key, cost in conn.execute(f"SELECT {expr}, cost_usd FROM requests{where}", args):
        yield key, Decimal(cost)


def _aggregate_dict(values: tuple[Any, ...] | sqlite3.Row, extra_cost: Decimal) -> dict[str, Any]:
    n_tokens = len(TOKEN_FIELDS)
    out: dict[str, Any] = {"requests": int(values[0] or 0)}
    for i, name in enumerate(TOKEN_FIELDS, start=1):
        out[name] = None if values[i] is None else int(values[i])
    pico = values[n_tokens + 1]
    cost = (from_pico(int(pico)) if pico is not None else Decimal(0)) + extra_cost
    out["cost_usd"] = format_total(cost)
    out["unpriced"] = int(values[n_tokens + 3] or 0)
    out["partial"] = int(values[n_tokens + 4] or 0)
    return out


# -- repricing -------------------------------------------------------------------------------


def unpriced_rows(conn: sqlite3.Connection, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows stored without a price, oldest first (uses the partial index on priced = 0)."""
    if not db.has_requests_table(conn):
        return []
    sql = f"{_SELECT_ROWS} WHERE priced = 0 ORDER BY ts"
    args: list[Any] = []
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [record(list(ROW_FIELDS), values) for values in conn.execute(sql, args)]


def set_price(
    conn: sqlite3.Connection,
    row_id: str,
    cost: Decimal | None,
    note: str | None,
    *,
    only_unpriced: bool = True,
) -> bool:
    """Store a price on one row (priced when ``cost`` is not None). Returns whether a row
    changed. With ``only_unpriced`` a row priced meanwhile is left alone (idempotent)."""
    sql = (
        "UPDATE requests SET cost_usd = ?, cost_pico = ?, priced = ?, price_note = ?, "
        "updated_at = ? WHERE id = ?"
    )
    if only_unpriced:
        sql += " AND priced = 0"
    cursor = conn.execute(
        sql,
        (
            format_money(cost),
            to_pico(cost),
            1 if cost is not None else 0,
            note,
            format_ts(datetime.now(UTC)),
            row_id,
        ),
    )
    return cursor.rowcount == 1

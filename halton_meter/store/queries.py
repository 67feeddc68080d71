"""Read side: the rows and sums `report`, the API and the cloud sync show.

Rows come back in the ``report --json`` contract shape (every Row field; ts as ISO 8601 UTC
text, money as decimal strings, bools as JSON bools, unreported counts as None).

Totals semantics:
- They cover every row matching the filters, not only the rows a limit lets through.
- A token sum is None only when no matching row reported that count (SQL SUM semantics: a
  provider that never reports cache tokens shows null, not a made-up 0).
- ``cost_usd`` is money spent: the exact sum over priced rows that are not API-equivalent,
  as a decimal string ("0" when none). ``api_equivalent_usd`` is the exact sum over priced
  subscription (OAuth) rows (``api_equivalent``): what that traffic would cost on the API,
  never spend and never part of ``cost_usd``. ``unpriced`` counts the rows left out of both
  (repricing may fill them in later).
- ``partial`` counts rows whose response was cut short (client abort, stream error).

Speed: sums come from ``rollup_daily`` (kept by triggers, see rollup.py) for whole UTC days
and from ``requests`` only for the part of a day a ``since``/``until`` cuts through, so
`report` costs the same over a million rows as over a thousand.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from halton_meter.store import db, rollup
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
_RAW_SUMS = ", ".join(f"sum({v})" for v in rollup.contributions("r"))
_ROLLUP_SUMS = ", ".join(f"sum({c})" for c in rollup.COUNTERS)
_ROLLUP_KEYS = {
    "day": "day",
    "project": "project",
    "model": "nullif(model, '')",
    "tool": "tool",
    "provider": "nullif(provider, '')",
}
_MIDNIGHT = "T00:00:00.000000Z"


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    project: str | None = None
    model: str | None = None
    provider: str | None = None
    tool: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        lo = format_ts(self.since) if self.since is not None else None
        hi = format_ts(self.until) if self.until is not None else None
        return _where(self, "ts", lo, hi)


def _filters(
    since: datetime | None = None,
    until: datetime | None = None,
    project: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    tool: str | None = None,
) -> Filters:
    return Filters(since, until, project, model, provider, tool)


def check_group_key(key: str) -> str:
    """``key`` if rows can be grouped by it; ValueError naming the choices otherwise."""
    if key not in GROUP_KEYS:
        raise ValueError(f"cannot group by {key!r}; choose one of: {', '.join(GROUP_KEYS)}")
    return key


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
    """Sums over every matching row (see the module docstring for null and money rules)."""
    filters = _filters(since, until, project, model, provider, tool)
    groups = _aggregate(conn, filters, None) if db.has_requests_table(conn) else {}
    return _finish(groups.get(None, _zero()))


def empty_totals() -> dict[str, Any]:
    """What ``totals`` answers for a store with no rows (or no store yet)."""
    return _finish(_zero())


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
    api_equivalent_usd, unpriced, partial}``. Days newest first; other keys by spend, then
    API-equivalent cost, then requests, descending."""
    check_group_key(key)
    if not db.has_requests_table(conn):
        return []
    filters = _filters(since, until, project, model, provider, tool)
    groups = []
    for value, sums in _aggregate(conn, filters, key).items():
        entry: dict[str, Any] = {key: value}
        entry.update(_finish(sums))
        groups.append(entry)
    if key == "day":
        groups.sort(key=lambda g: g["day"] or "", reverse=True)
    else:
        groups.sort(
            key=lambda g: (
                Decimal(g["cost_usd"]),
                Decimal(g["api_equivalent_usd"]),
                g["requests"],
            ),
            reverse=True,
        )
    return groups


# -- aggregation: whole days from rollup_daily, partial days from requests -------------------

# rollup.COUNTERS in order, then two Decimals: inexact spend, inexact API-equivalent cost
_Sums = list[Any]
_INEXACT_SPEND = len(rollup.COUNTERS)
_INEXACT_API_EQ = _INEXACT_SPEND + 1
_INEXACT_FLAGS = (rollup.COUNTERS.index("inexact"), rollup.COUNTERS.index("api_eq_inexact"))


def _zero() -> _Sums:
    return [0] * len(rollup.COUNTERS) + [Decimal(0), Decimal(0)]


def _aggregate(conn: sqlite3.Connection, filters: Filters, key: str | None) -> dict[Any, _Sums]:
    """Sums per group value (None when not grouping). Reads rollup_daily for whole days and
    requests (by the ts index) only for the ends of a range that cut through a day."""
    out: dict[Any, _Sums] = {}

    def _merge(rows: Iterable[Any]) -> None:
        for row in rows:
            acc = out.setdefault(row[0], _zero())
            for i, value in enumerate(row[1:]):
                acc[i] += value or 0

    raw_ranges, day_range = _split_range(filters.since, filters.until)
    if day_range is not None:
        where, args = _where(filters, "day", *day_range)
        expr = _ROLLUP_KEYS[key] if key else "NULL"
        _merge(
            conn.execute(f"SELECT {expr}, {_ROLLUP_SUMS} FROM rollup_daily{where} GROUP BY 1", args)
        )
    raw_expr = GROUP_KEYS[key] if key else "NULL"
    for lo, hi in raw_ranges:
        where, args = _where(filters, "ts", lo, hi)
        _merge(
            conn.execute(
                f"SELECT {raw_expr}, {_RAW_SUMS} FROM requests AS r{where} GROUP BY 1", args
            )
        )
    if any(acc[i] for acc in out.values() for i in _INEXACT_FLAGS):
        where, args = filters.where()
        extra = "priced = 1 AND cost_pico IS NULL AND cost_usd IS NOT NULL"
        where = f"{where} AND {extra}" if where else f" WHERE {extra}"
        sql = f"SELECT {raw_expr}, cost_usd, api_equivalent FROM requests{where}"
        for value, cost, api_eq in conn.execute(sql, args):
            slot = _INEXACT_API_EQ if api_eq else _INEXACT_SPEND
            out.setdefault(value, _zero())[slot] += Decimal(cost)
    return out


def _where(filters: Filters, column: str, lo: str | None, hi: str | None) -> tuple[str, list[Any]]:
    """`` WHERE ...`` (or "") and its arguments: the filters' key columns, and ``column``
    in [lo, hi) for the bounds given."""
    clauses: list[str] = []
    args: list[Any] = []
    for name in ("project", "model", "provider", "tool"):
        value = getattr(filters, name)
        if value is not None:
            clauses.append(f"{name} = ?")
            args.append(value)
    if lo is not None:
        clauses.append(f"{column} >= ?")
        args.append(lo)
    if hi is not None:
        clauses.append(f"{column} < ?")
        args.append(hi)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), args


_Range = tuple[str | None, str | None]


def _split_range(
    since: datetime | None, until: datetime | None
) -> tuple[list[_Range], _Range | None]:
    """[since, until) as raw ts ranges (cut days at the ends) and a [first, end) day range."""
    lo = format_ts(since) if since is not None else None
    hi = format_ts(until) if until is not None else None
    first_day: str | None = None
    end_day: str | None = None
    head: _Range | None = None
    tail: _Range | None = None
    if lo is not None:
        first_day = lo[:10] if lo.endswith(_MIDNIGHT) else _next_day(lo[:10])
        if not lo.endswith(_MIDNIGHT):
            head = (lo, first_day + _MIDNIGHT)
    if hi is not None:
        end_day = hi[:10]
        if not hi.endswith(_MIDNIGHT):
            tail = (end_day + _MIDNIGHT, hi)
    if first_day is not None and end_day is not None and first_day >= end_day:
        # no whole day inside: one scan of the rows in range
        return ([(lo, hi)] if lo is None or hi is None or lo < hi else []), None
    return [r for r in (head, tail) if r is not None], (first_day, end_day)


def _next_day(day: str) -> str:
    try:
        return (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    except (ValueError, OverflowError):
        return "9999-12-31"


def _finish(sums: _Sums) -> dict[str, Any]:
    values = dict(zip(rollup.COUNTERS, sums, strict=False))
    out: dict[str, Any] = {"requests": int(values["requests"])}
    for name, sum_column, count_column in rollup.TOKENS:
        out[name] = int(values[sum_column]) if values[count_column] else None
    spend = from_pico(int(values["cost_pico"])) + sums[_INEXACT_SPEND]
    api_eq = from_pico(int(values["api_eq_pico"])) + sums[_INEXACT_API_EQ]
    out["cost_usd"] = format_total(spend)
    out["api_equivalent_usd"] = format_total(api_eq)
    out["unpriced"] = int(values["unpriced"])
    out["partial"] = int(values["partial"])
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


def iter_unpriced(conn: sqlite3.Connection, *, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every unpriced row, oldest first, a batch at a time (memory stays flat).

    Keyset pagination on (ts, id), so rows priced while iterating never shift a page."""
    if not db.has_requests_table(conn):
        return
    last: tuple[str, str] | None = None
    while True:
        if last is None:
            cursor = conn.execute(
                f"{_SELECT_ROWS} WHERE priced = 0 ORDER BY ts, id LIMIT ?", (batch,)
            )
        else:
            cursor = conn.execute(
                f"{_SELECT_ROWS} WHERE priced = 0 AND (ts > ? OR (ts = ? AND id > ?)) "
                "ORDER BY ts, id LIMIT ?",
                (last[0], last[0], last[1], batch),
            )
        page = [record(list(ROW_FIELDS), values) for values in cursor]
        yield from page
        if len(page) < batch:
            return
        last = (page[-1]["ts"], page[-1]["id"])


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

"""Daily sums kept beside the rows by triggers, so totals never scan a million rows.

``rollup_daily`` holds one row per (UTC day, project, model, tool, provider) with the sums
``report`` shows. Triggers on ``requests`` keep it exact through every kind of write: the
writer's inserts and upserts, repricing, backfills that move a row to another project, and
deletes. A query for whole days reads only this table; a range that starts or ends inside
a day reads that day's remainder from ``requests`` through the ts index (see queries.py).

Nullable keys (model, provider) are stored as '' because a NULL never matches a UNIQUE
key; queries map '' back to None.
"""

from __future__ import annotations

import sqlite3

# (requests column, rollup sum column, rollup count-of-reported column)
TOKENS: tuple[tuple[str, str, str], ...] = (
    ("input_tokens", "in_sum", "in_n"),
    ("output_tokens", "out_sum", "out_n"),
    ("cache_read_tokens", "cr_sum", "cr_n"),
    ("cache_write_tokens", "cw_sum", "cw_n"),
    ("reasoning_tokens", "rs_sum", "rs_n"),
)
KEYS = ("day", "project", "model", "tool", "provider")
COUNTERS = ("requests", "unpriced", "partial", "cost_pico", "inexact") + tuple(
    c for _, s, n in TOKENS for c in (s, n)
)


def contributions(ref: str) -> list[str]:
    """What one row (NEW or OLD) adds to its group, in COUNTERS order."""
    values = [
        "1",
        f"CASE WHEN {ref}.priced = 1 THEN 0 ELSE 1 END",
        f"CASE WHEN {ref}.partial THEN 1 ELSE 0 END",
        f"CASE WHEN {ref}.priced = 1 THEN coalesce({ref}.cost_pico, 0) ELSE 0 END",
        # priced, but not exact in pico-dollars: queries add these from requests
        f"CASE WHEN {ref}.priced = 1 AND {ref}.cost_pico IS NULL THEN 1 ELSE 0 END",
    ]
    for column, _, _ in TOKENS:
        values += [
            f"coalesce({ref}.{column}, 0)",
            f"CASE WHEN {ref}.{column} IS NULL THEN 0 ELSE 1 END",
        ]
    return values


def key_values(ref: str) -> list[str]:
    return [
        f"substr({ref}.ts, 1, 10)",
        f"{ref}.project",
        f"coalesce({ref}.model, '')",
        f"{ref}.tool",
        f"coalesce({ref}.provider, '')",
    ]


def _add(ref: str) -> str:
    columns = ", ".join(KEYS + COUNTERS)
    values = ", ".join(key_values(ref) + contributions(ref))
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTERS)
    return (
        f"INSERT INTO rollup_daily ({columns}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET {updates};"
    )


def _subtract(ref: str) -> str:
    sets = ", ".join(
        f"{c} = {c} - ({v})" for c, v in zip(COUNTERS, contributions(ref), strict=True)
    )
    where = " AND ".join(f"{k} = {v}" for k, v in zip(KEYS, key_values(ref), strict=True))
    return (
        f"UPDATE rollup_daily SET {sets} WHERE {where}; "
        f"DELETE FROM rollup_daily WHERE {where} AND requests <= 0;"
    )


_WATCHED = ("ts", "project", "model", "tool", "provider", "priced", "partial", "cost_pico") + tuple(
    column for column, _, _ in TOKENS
)


def migrate_v4(conn: sqlite3.Connection) -> None:
    counters = ",\n".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COUNTERS)
    conn.execute(
        f"""
        CREATE TABLE rollup_daily (
            day TEXT NOT NULL,
            project TEXT NOT NULL,
            model TEXT NOT NULL,
            tool TEXT NOT NULL,
            provider TEXT NOT NULL,
            {counters},
            PRIMARY KEY (day, project, model, tool, provider)
        ) WITHOUT ROWID
        """
    )
    conn.execute(f"CREATE TRIGGER rollup_insert AFTER INSERT ON requests BEGIN {_add('NEW')} END")
    conn.execute(
        f"CREATE TRIGGER rollup_delete AFTER DELETE ON requests BEGIN {_subtract('OLD')} END"
    )
    conn.execute(
        f"CREATE TRIGGER rollup_update AFTER UPDATE OF {', '.join(_WATCHED)} ON requests "
        f"BEGIN {_subtract('OLD')} {_add('NEW')} END"
    )
    # Rows priced with a cost finer than a pico-dollar: few, found through this index.
    conn.execute(
        "CREATE INDEX idx_requests_inexact ON requests (ts) WHERE priced = 1 AND cost_pico IS NULL"
    )
    # Existing rows: one grouped pass.
    sums = ", ".join(f"sum({v})" for v in contributions("r"))
    keys = ", ".join(key_values("r"))
    conn.execute(
        f"INSERT INTO rollup_daily ({', '.join(KEYS + COUNTERS)}) "
        f"SELECT {keys}, {sums} FROM requests AS r GROUP BY 1, 2, 3, 4, 5"
    )

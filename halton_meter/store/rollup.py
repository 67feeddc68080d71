"""Daily sums kept beside the rows by triggers, so totals never scan a million rows.

``rollup_daily`` holds one row per (UTC day, project, model, tool, provider) with the sums
``report`` shows. Triggers on ``requests`` keep it exact through every kind of write: the
writer's inserts and upserts, repricing, backfills that move a row to another project, and
deletes. A query for whole days reads only this table; a range that starts or ends inside
a day reads that day's remainder from ``requests`` through the ts index (see queries.py).

Money is kept in two separate sums: spend (``cost_pico``/``inexact``) and the API-equivalent
price of subscription (OAuth) traffic (``api_eq_pico``/``api_eq_inexact``), which is never
money spent. A row's ``api_equivalent`` flag decides which sum it lands in, and the update
trigger watches it, so flipping the flag moves the money from one sum to the other.

Nullable keys (model, provider) are stored as '' because a NULL never matches a UNIQUE
key; queries map '' back to None.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

# (requests column, rollup sum column, rollup count-of-reported column)
TOKENS: tuple[tuple[str, str, str], ...] = (
    ("input_tokens", "in_sum", "in_n"),
    ("output_tokens", "out_sum", "out_n"),
    ("cache_read_tokens", "cr_sum", "cr_n"),
    ("cache_write_tokens", "cw_sum", "cw_n"),
    ("reasoning_tokens", "rs_sum", "rs_n"),
)
KEYS = ("day", "project", "model", "tool", "provider")
_TOKEN_COUNTERS = tuple(c for _, s, n in TOKENS for c in (s, n))
_TOKEN_WATCHED = tuple(column for column, _, _ in TOKENS)
_TRIGGERS = ("rollup_insert", "rollup_delete", "rollup_update")

_Contributions = Callable[[str], list[str]]


def _token_contributions(ref: str) -> list[str]:
    values: list[str] = []
    for column, _, _ in TOKENS:
        values += [
            f"coalesce({ref}.{column}, 0)",
            f"CASE WHEN {ref}.{column} IS NULL THEN 0 ELSE 1 END",
        ]
    return values


# -- schema v5 (current): spend and API-equivalent money in separate sums --------------------

COUNTERS = (
    "requests",
    "unpriced",
    "partial",
    "cost_pico",  # spend only
    "inexact",  # spend rows priced finer than a pico-dollar: added from requests
    "api_eq_pico",  # API-equivalent (subscription) price, never spend
    "api_eq_inexact",
) + _TOKEN_COUNTERS


def contributions(ref: str) -> list[str]:
    """What one row (NEW or OLD) adds to its group, in COUNTERS order."""
    spend = f"{ref}.priced = 1 AND NOT {ref}.api_equivalent"
    api_eq = f"{ref}.priced = 1 AND {ref}.api_equivalent"
    return [
        "1",
        f"CASE WHEN {ref}.priced = 1 THEN 0 ELSE 1 END",
        f"CASE WHEN {ref}.partial THEN 1 ELSE 0 END",
        f"CASE WHEN {spend} THEN coalesce({ref}.cost_pico, 0) ELSE 0 END",
        f"CASE WHEN {spend} AND {ref}.cost_pico IS NULL THEN 1 ELSE 0 END",
        f"CASE WHEN {api_eq} THEN coalesce({ref}.cost_pico, 0) ELSE 0 END",
        f"CASE WHEN {api_eq} AND {ref}.cost_pico IS NULL THEN 1 ELSE 0 END",
        *_token_contributions(ref),
    ]


_WATCHED = (
    ("ts", "project", "model", "tool", "provider", "priced", "partial", "cost_pico")
    + ("api_equivalent",)
    + _TOKEN_WATCHED
)


def migrate_v5(conn: sqlite3.Connection) -> None:
    """Split money into spend and API-equivalent: new table and triggers, rebuilt from rows."""
    for trigger in _TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute("DROP TABLE IF EXISTS rollup_daily")
    _create(conn, COUNTERS, contributions, _WATCHED)


# -- schema v4 (shipped): frozen, so a fresh or old file replays exactly what shipped --------

_V4_COUNTERS = ("requests", "unpriced", "partial", "cost_pico", "inexact") + _TOKEN_COUNTERS


def _v4_contributions(ref: str) -> list[str]:
    return [
        "1",
        f"CASE WHEN {ref}.priced = 1 THEN 0 ELSE 1 END",
        f"CASE WHEN {ref}.partial THEN 1 ELSE 0 END",
        f"CASE WHEN {ref}.priced = 1 THEN coalesce({ref}.cost_pico, 0) ELSE 0 END",
        # priced, but not exact in pico-dollars: queries add these from requests
        f"CASE WHEN {ref}.priced = 1 AND {ref}.cost_pico IS NULL THEN 1 ELSE 0 END",
        *_token_contributions(ref),
    ]


_V4_WATCHED = (
    "ts",
    "project",
    "model",
    "tool",
    "provider",
    "priced",
    "partial",
    "cost_pico",
) + _TOKEN_WATCHED


def migrate_v4(conn: sqlite3.Connection) -> None:
    _create(conn, _V4_COUNTERS, _v4_contributions, _V4_WATCHED)
    # Rows priced with a cost finer than a pico-dollar: few, found through this index.
    conn.execute(
        "CREATE INDEX idx_requests_inexact ON requests (ts) WHERE priced = 1 AND cost_pico IS NULL"
    )


# -- shared builders -------------------------------------------------------------------------


def key_values(ref: str) -> list[str]:
    return [
        f"substr({ref}.ts, 1, 10)",
        f"{ref}.project",
        f"coalesce({ref}.model, '')",
        f"{ref}.tool",
        f"coalesce({ref}.provider, '')",
    ]


def _add(ref: str, counters: Sequence[str], contrib: _Contributions) -> str:
    columns = ", ".join((*KEYS, *counters))
    values = ", ".join(key_values(ref) + contrib(ref))
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in counters)
    return (
        f"INSERT INTO rollup_daily ({columns}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(KEYS)}) DO UPDATE SET {updates};"
    )


def _subtract(ref: str, counters: Sequence[str], contrib: _Contributions) -> str:
    sets = ", ".join(f"{c} = {c} - ({v})" for c, v in zip(counters, contrib(ref), strict=True))
    where = " AND ".join(f"{k} = {v}" for k, v in zip(KEYS, key_values(ref), strict=True))
    return (
        f"UPDATE rollup_daily SET {sets} WHERE {where}; "
        f"DELETE FROM rollup_daily WHERE {where} AND requests <= 0;"
    )


def _create(
    conn: sqlite3.Connection,
    counters: Sequence[str],
    contrib: _Contributions,
    watched: Sequence[str],
) -> None:
    """The table, its three triggers, and its sums for the rows already stored."""
    columns = ",\n".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in counters)
    conn.execute(
        f"""
        CREATE TABLE rollup_daily (
            day TEXT NOT NULL,
            project TEXT NOT NULL,
            model TEXT NOT NULL,
            tool TEXT NOT NULL,
            provider TEXT NOT NULL,
            {columns},
            PRIMARY KEY (day, project, model, tool, provider)
        ) WITHOUT ROWID
        """
    )
    add_new = _add("NEW", counters, contrib)
    sub_old = _subtract("OLD", counters, contrib)
    conn.execute(f"CREATE TRIGGER rollup_insert AFTER INSERT ON requests BEGIN {add_new} END")
    conn.execute(f"CREATE TRIGGER rollup_delete AFTER DELETE ON requests BEGIN {sub_old} END")
    conn.execute(
        f"CREATE TRIGGER rollup_update AFTER UPDATE OF {', '.join(watched)} ON requests "
        f"BEGIN {sub_old} {add_new} END"
    )
    # Existing rows: one grouped pass.
    sums = ", ".join(f"sum({v})" for v in contrib("r"))
    keys = ", ".join(key_values("r"))
    conn.execute(
        f"INSERT INTO rollup_daily ({', '.join((*KEYS, *counters))}) "
        f"SELECT {keys}, {sums} FROM requests AS r GROUP BY 1, 2, 3, 4, 5"
    )

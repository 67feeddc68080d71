"""The trigger-kept daily sums agree with the rows, through every kind of write."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fixtures_store import make_row, write_rows

from halton_meter.core.paths import Home
from halton_meter.store import db, queries
from halton_meter.store.codec import format_total

START = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
TOKENS = queries.TOKEN_FIELDS


def _random_row(rng: random.Random, i: int) -> Any:
    priced = rng.random() < 0.8
    cost = None
    if priced:
        cost = rng.choice(
            [Decimal("0.1"), Decimal("0.2"), Decimal("0.000123"), Decimal("1E-13"), Decimal(3)]
        )
    return make_row(
        id=f"row{i:05d}",
        ts=START
        + timedelta(seconds=rng.randrange(0, 5 * 86400), microseconds=rng.randrange(10**6)),
        project=rng.choice(["alpha", "beta", "gamma"]),
        model=rng.choice(["gpt-4o", "claude-sonnet-4", None]),
        provider=rng.choice(["openai", "anthropic", None]),
        tool=rng.choice(["curl", "claude-code"]),
        cost_usd=cost,
        priced=priced,
        # subscription traffic: priced as API-equivalent, never spend
        api_equivalent=rng.random() < 0.3,
        partial=rng.random() < 0.1,
        **{t: rng.choice([None, rng.randrange(0, 5000)]) for t in TOKENS},
    )


def _oracle(rows: list[dict[str, Any]], key: str | None) -> dict[Any, dict[str, Any]]:
    """Sums computed in Python from the rows themselves: an independent answer."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        value = None if key is None else (r["ts"][:10] if key == "day" else r[key])
        groups.setdefault(value, []).append(r)
    out = {}
    for value, members in groups.items():
        entry: dict[str, Any] = {"requests": len(members)}
        for t in TOKENS:
            reported = [m[t] for m in members if m[t] is not None]
            entry[t] = sum(reported) if reported else None
        for name, api_eq in (("cost_usd", False), ("api_equivalent_usd", True)):
            entry[name] = format_total(
                sum(
                    (
                        Decimal(m["cost_usd"])
                        for m in members
                        if m["priced"] and m["api_equivalent"] == api_eq
                    ),
                    Decimal(0),
                )
            )
        entry["unpriced"] = sum(1 for m in members if not m["priced"])
        entry["partial"] = sum(1 for m in members if m["partial"])
        out[value] = entry
    return out


def _check(conn: sqlite3.Connection, filters: dict[str, Any]) -> None:
    rows = queries.query_rows(conn, limit=None, **filters)
    expected_total = _oracle(rows, None).get(None)
    total = queries.totals(conn, **filters)
    if expected_total is None:
        assert total["requests"] == 0 and total["cost_usd"] == "0", (filters, total)
    else:
        assert total == expected_total, filters
    for key in queries.GROUP_KEYS:
        got = {
            g[key]: {k: v for k, v in g.items() if k != key}
            for g in queries.group_by(conn, key, **filters)
        }
        assert got == _oracle(rows, key), (key, filters)


def _filter_cases(rng: random.Random) -> Iterator[dict[str, Any]]:
    yield {}
    yield {"since": START + timedelta(days=2)}  # exactly midnight: whole days only
    yield {"since": START + timedelta(days=1, hours=5, microseconds=7)}  # cuts a day
    yield {"until": START + timedelta(days=3, hours=1)}
    yield {"since": START + timedelta(days=1, hours=3), "until": START + timedelta(days=1, hours=9)}
    yield {"since": START + timedelta(days=1), "until": START + timedelta(days=2)}
    yield {"since": START + timedelta(days=9)}  # after everything
    for _ in range(12):
        lo = START + timedelta(seconds=rng.randrange(-86400, 6 * 86400))
        case: dict[str, Any] = {"since": lo}
        if rng.random() < 0.5:
            case["until"] = lo + timedelta(seconds=rng.randrange(0, 3 * 86400))
        for column, choices in (
            ("project", ["alpha", "beta"]),
            ("model", ["gpt-4o"]),
            ("provider", ["anthropic"]),
            ("tool", ["curl"]),
        ):
            if rng.random() < 0.3:
                case[column] = rng.choice(choices)
        yield case


@pytest.fixture
def store(hm_home: Path) -> Iterator[tuple[Path, random.Random]]:
    rng = random.Random(20261204)
    path = Home.resolve().db
    write_rows(path, [_random_row(rng, i) for i in range(600)])
    yield path, rng


def test_sums_match_the_rows_after_inserts(store: tuple[Path, random.Random]) -> None:
    path, rng = store
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        for case in _filter_cases(rng):
            _check(conn, case)


def test_sums_follow_upserts_reprices_moves_and_deletes(store: tuple[Path, random.Random]) -> None:
    path, rng = store
    # upserts: the writer re-submits rows with the same id and new contents
    write_rows(path, [_random_row(rng, i) for i in range(0, 600, 7)])
    with contextlib.closing(db.connect(path)) as conn:
        # repricing
        for rec in queries.unpriced_rows(conn, limit=20):
            queries.set_price(conn, rec["id"], Decimal("0.05"), None)
        # a backfill moving rows to another project and day
        conn.execute(
            "UPDATE requests SET project = 'moved', ts = '2026-11-30T23:59:59.999999Z' "
            "WHERE id IN ('row00001', 'row00002', 'row00003')"
        )
        # subscription flags corrected in place, both ways
        conn.execute("UPDATE requests SET api_equivalent = 1 - api_equivalent WHERE seq % 5 = 0")
        # a token count corrected in place; a row deleted
        conn.execute("UPDATE requests SET input_tokens = NULL WHERE id = 'row00010'")
        conn.execute("DELETE FROM requests WHERE id IN ('row00011', 'row00012')")
        for case in _filter_cases(rng):
            _check(conn, case)
        _check(conn, {"project": "moved"})
        # deleting everything leaves no empty groups behind
        conn.execute("DELETE FROM requests")
        assert conn.execute("SELECT count(*) FROM rollup_daily").fetchone()[0] == 0
        assert queries.group_by(conn, "project") == []


def test_migration_backfills_sums_for_existing_rows(hm_home: Path) -> None:
    path = Home.resolve().db
    conn = sqlite3.connect(path)
    for step in db.MIGRATIONS[:3]:  # the schema before the rollup existed
        step(conn)
    conn.execute("PRAGMA user_version = 3")
    for i, cost in enumerate(["0.1", "0.2", None]):
        conn.execute(
            "INSERT INTO requests (id, ts, project, cost_usd, cost_pico, priced, input_tokens, "
            "updated_at) VALUES (?, ?, 'p', ?, ?, ?, 10, 'x')",
            (
                f"old{i}",
                f"2026-12-0{i + 1}T10:00:00.000000Z",
                cost,
                None if cost is None else int(Decimal(cost) * 10**12),
                0 if cost is None else 1,
            ),
        )
    conn.commit()
    conn.close()
    with contextlib.closing(db.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM rollup_daily").fetchone()[0] == 3
        total = queries.totals(conn)
        assert total["requests"] == 3 and total["cost_usd"] == "0.3" and total["unpriced"] == 1
        assert total["input_tokens"] == 30
        _check(conn, {})


def _v4_store(path: Path) -> sqlite3.Connection:
    """A file at schema v4 (rollup with one money sum), as the last release left it."""
    conn = sqlite3.connect(path)
    for step in db.MIGRATIONS[:4]:
        step(conn)
    conn.execute("PRAGMA user_version = 4")
    return conn


def test_migration_v5_splits_existing_rows_into_spend_and_api_equivalent(hm_home: Path) -> None:
    path = Home.resolve().db
    conn = _v4_store(path)
    rows = [
        # (id, day, cost, priced, api_equivalent)
        ("key1", "2026-12-01", "1.5", 1, 0),
        ("sub1", "2026-12-01", "2", 1, 1),
        ("sub2", "2026-12-02", "0.25", 1, 1),
        ("fine", "2026-12-02", "1E-13", 1, 1),  # finer than a pico-dollar
        ("nopr", "2026-12-02", None, 0, 1),  # subscription, not priced yet
    ]
    for row_id, day, cost, priced, api_eq in rows:
        pico = None
        if cost is not None and Decimal(cost) * 10**12 == int(Decimal(cost) * 10**12):
            pico = int(Decimal(cost) * 10**12)
        conn.execute(
            "INSERT INTO requests (id, ts, project, model, cost_usd, cost_pico, priced, "
            "api_equivalent, input_tokens, updated_at) VALUES (?, ?, 'p', 'm', ?, ?, ?, ?, 10, 'x')",
            (row_id, f"{day}T10:00:00.000000Z", cost, pico, priced, api_eq),
        )
    conn.commit()
    # v4's rollup counted everything priced as one sum: the bug v5 fixes
    v4_pico = conn.execute("SELECT sum(cost_pico) FROM rollup_daily").fetchone()[0]
    assert v4_pico == int(Decimal("3.75") * 10**12)
    conn.close()

    with contextlib.closing(db.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.schema_version() >= 5
        columns = [r[1] for r in conn.execute("PRAGMA table_info(rollup_daily)")]
        assert {"cost_pico", "api_eq_pico", "inexact", "api_eq_inexact"} <= set(columns)
        total = queries.totals(conn)
        assert total["cost_usd"] == "1.5"
        assert total["api_equivalent_usd"] == "2.2500000000001"
        assert total["requests"] == 5 and total["unpriced"] == 1
        assert total["input_tokens"] == 50
        days = {g["day"]: g for g in queries.group_by(conn, "day")}
        assert (days["2026-12-01"]["cost_usd"], days["2026-12-01"]["api_equivalent_usd"]) == (
            "1.5",
            "2",
        )
        assert (days["2026-12-02"]["cost_usd"], days["2026-12-02"]["api_equivalent_usd"]) == (
            "0",
            "0.2500000000001",
        )
        _check(conn, {})
        # the rebuilt triggers keep it: a new subscription row lands in the right sum
        conn.execute(
            "INSERT INTO requests (id, ts, project, cost_usd, cost_pico, priced, api_equivalent, "
            "updated_at) VALUES ('sub3', '2026-12-03T00:00:00.000000Z', 'p', '1', ?, 1, 1, 'x')",
            (10**12,),
        )
        total = queries.totals(conn)
        assert (total["cost_usd"], total["api_equivalent_usd"]) == ("1.5", "3.2500000000001")
        _check(conn, {})


def test_flipping_api_equivalent_moves_the_money_between_sums(hm_home: Path) -> None:
    path = Home.resolve().db
    write_rows(
        path,
        [
            make_row(id="key", cost_usd=Decimal("1.5")),
            make_row(id="sub", cost_usd=Decimal("2"), api_equivalent=True),
            make_row(id="fine", cost_usd=Decimal("1E-13"), api_equivalent=True),
        ],
    )
    with contextlib.closing(db.connect(path)) as conn:

        def money() -> tuple[str, str]:
            t = queries.totals(conn)
            return t["cost_usd"], t["api_equivalent_usd"]

        assert money() == ("1.5", "2.0000000000001")
        conn.execute("UPDATE requests SET api_equivalent = 0 WHERE id IN ('sub', 'fine')")
        assert money() == ("3.5000000000001", "0")
        conn.execute("UPDATE requests SET api_equivalent = 1")
        assert money() == ("0", "3.5000000000001")
        # the rollup itself moved, not only the inexact correction read from requests
        spend, api_eq = conn.execute(
            "SELECT sum(cost_pico), sum(api_eq_pico) FROM rollup_daily"
        ).fetchone()
        assert (spend, api_eq) == (0, int(Decimal("3.5") * 10**12))
        _check(conn, {})

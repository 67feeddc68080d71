"""Read side: contract shape, order, filters, exact money, null-aware sums, repricing hooks."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from fixtures_store import BASE_TS, make_row, write_rows
from hmtest import REPORT_ROW_CONTRACT as CONTRACT

from halton_meter.core.paths import Home
from halton_meter.store import db, queries
from halton_meter.store.codec import ROW_FIELDS, row_from_record


@pytest.fixture
def conn(hm_home: Path) -> Iterator[db.sqlite3.Connection]:
    path = Home.resolve().db
    write_rows(
        path,
        [
            make_row(id="r1", ts=BASE_TS, project="alpha", model="gpt-4o", tool="curl"),
            make_row(
                id="r2",
                ts=BASE_TS + timedelta(hours=1),
                project="beta",
                model="claude-sonnet-4",
                provider="anthropic",
                tool="claude-code",
                cost_usd=Decimal("0.2"),
                cache_read_tokens=100,
            ),
            make_row(
                id="r3",
                ts=BASE_TS + timedelta(days=1),
                project="alpha",
                model="mystery-1",
                cost_usd=None,
                price_note="unknown model: mystery-1",
                output_tokens=None,
                partial=True,
            ),
        ],
    )
    with contextlib.closing(db.connect(path, readonly=True)) as c:
        yield c


def test_rows_have_the_contract_shape_newest_first(conn: db.sqlite3.Connection) -> None:
    rows = queries.query_rows(conn)
    assert [r["id"] for r in rows] == ["r3", "r2", "r1"]
    for r in rows:
        assert set(CONTRACT) <= set(r)
        assert set(r) == set(ROW_FIELDS)
        json.dumps(r)  # JSON-ready as is
    r1 = rows[2]
    assert r1["ts"] == "2026-12-01T12:00:00.000000Z"
    assert datetime.fromisoformat(r1["ts"]) == BASE_TS
    assert r1["cost_usd"] == "0.1" and r1["priced"] is True and r1["stream"] is False
    assert r1["cache_read_tokens"] is None  # not reported stays null, never 0
    assert r1["latency_ms"] == 12.5 and r1["ttfb_ms"] == 3.25
    r3 = rows[0]
    assert r3["cost_usd"] is None and r3["priced"] is False and r3["partial"] is True


def test_full_row_round_trips(hm_home: Path) -> None:
    path = Home.resolve().db
    original = make_row(
        id="full",
        ts=datetime(2026, 12, 3, 1, 2, 3, 456789, tzinfo=UTC),
        client_pid=4242,
        client_cwd="/home/u/proj",
        stream=True,
        cache_read_tokens=1,
        cache_write_tokens=2,
        cache_write_5m_tokens=1,
        cache_write_1h_tokens=1,
        reasoning_tokens=3,
        usage_json='{"input_tokens": 10}',
        cost_usd=Decimal("0.000012345"),
        price_note="api-equivalent",
        billed_cost_usd=Decimal("0.00002"),
        api_equivalent=True,
        error="overloaded",
        request_bytes=100,
        response_bytes=2000,
        request_body_path="2026-12-03/full.request",
        response_body_path=None,
        body_skip_reason="body_too_large",
    )
    write_rows(path, [original])
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        (rec,) = queries.query_rows(conn)
    assert row_from_record(rec) == original


def test_filters_and_limit(conn: db.sqlite3.Connection) -> None:
    ids = lambda **kw: [r["id"] for r in queries.query_rows(conn, **kw)]  # noqa: E731
    assert ids(project="alpha") == ["r3", "r1"]
    assert ids(model="claude-sonnet-4") == ["r2"]
    assert ids(provider="anthropic") == ["r2"]
    assert ids(tool="curl") == ["r3", "r1"]
    assert ids(since=BASE_TS + timedelta(minutes=30)) == ["r3", "r2"]
    # a since with another offset means the same instant
    since_local = (BASE_TS + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=5)))
    assert since_local.hour == 17
    assert ids(since=since_local) == ["r3", "r2"]
    assert ids(project="alpha", since=BASE_TS + timedelta(minutes=1)) == ["r3"]
    assert ids(limit=2) == ["r3", "r2"]
    assert ids(project="nobody") == []


def test_totals_sum_money_exactly_and_keep_null_semantics(conn: db.sqlite3.Connection) -> None:
    t = queries.totals(conn)
    assert t["requests"] == 3
    assert t["cost_usd"] == "0.3"  # 0.1 + 0.2, exactly; the unpriced row is left out
    assert t["unpriced"] == 1
    assert t["partial"] == 1
    assert t["input_tokens"] == 30
    assert t["output_tokens"] == 10  # r3 did not report: not counted as 0, just absent
    assert t["cache_read_tokens"] == 100  # one row reported it
    assert t["cache_write_tokens"] is None  # nobody reported it: null, not 0
    assert t["reasoning_tokens"] is None
    assert queries.totals(conn, project="beta")["cost_usd"] == "0.2"
    empty = queries.totals(conn, project="nobody")
    assert empty["requests"] == 0 and empty["cost_usd"] == "0" and empty["input_tokens"] is None
    assert t["api_equivalent_usd"] == "0" and empty["api_equivalent_usd"] == "0"
    assert empty == queries.empty_totals()


def _api_key_and_subscription(path: Path) -> None:
    # The same model on two days: $1.5 paid with an API key, $2 through a subscription.
    write_rows(
        path,
        [
            make_row(id="key", model="claude-sonnet-4", cost_usd=Decimal("1.5")),
            make_row(
                id="sub",
                model="claude-sonnet-4",
                cost_usd=Decimal("2"),
                api_equivalent=True,
                price_note="api-equivalent",
            ),
            make_row(
                id="sub-next-day",
                ts=BASE_TS + timedelta(days=1),
                model="claude-opus-4",
                cost_usd=Decimal("0.75"),
                api_equivalent=True,
                price_note="api-equivalent",
            ),
            make_row(
                id="sub-unpriced",
                ts=BASE_TS + timedelta(days=1),
                model="claude-opus-4",
                cost_usd=None,
                api_equivalent=True,
            ),
        ],
    )


def test_api_equivalent_is_never_spend(hm_home: Path) -> None:
    path = Home.resolve().db
    _api_key_and_subscription(path)
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        t = queries.totals(conn, until=BASE_TS + timedelta(days=1))
        assert (t["cost_usd"], t["api_equivalent_usd"]) == ("1.5", "2")
        assert t["requests"] == 2 and t["unpriced"] == 0
        t = queries.totals(conn)
        assert (t["cost_usd"], t["api_equivalent_usd"]) == ("1.5", "2.75")
        assert t["requests"] == 4 and t["unpriced"] == 1  # an unpriced row is in neither sum
        # a range cutting through a day reads the rows themselves: the same split
        t = queries.totals(conn, since=BASE_TS + timedelta(seconds=1))
        assert (t["cost_usd"], t["api_equivalent_usd"]) == ("0", "0.75")
        assert queries.totals(conn, model="claude-opus-4")["cost_usd"] == "0"

        models = {g["model"]: g for g in queries.group_by(conn, "model")}
        assert (
            models["claude-sonnet-4"]["cost_usd"],
            models["claude-sonnet-4"]["api_equivalent_usd"],
        ) == ("1.5", "2")
        assert (
            models["claude-opus-4"]["cost_usd"],
            models["claude-opus-4"]["api_equivalent_usd"],
        ) == ("0", "0.75")
        assert models["claude-opus-4"]["unpriced"] == 1
        # spend first, then API-equivalent cost
        assert [g["model"] for g in queries.group_by(conn, "model")] == [
            "claude-sonnet-4",
            "claude-opus-4",
        ]
        days = queries.group_by(conn, "day")
        assert [(g["day"], g["cost_usd"], g["api_equivalent_usd"]) for g in days] == [
            ("2026-12-02", "0", "0.75"),
            ("2026-12-01", "1.5", "2"),
        ]
        for g in days:
            assert isinstance(g["cost_usd"], str) and isinstance(g["api_equivalent_usd"], str)
        rows = {r["id"]: r for r in queries.query_rows(conn)}
        assert rows["sub"]["api_equivalent"] is True and rows["key"]["api_equivalent"] is False
        assert rows["sub"]["price_note"] == "api-equivalent"


def test_repricing_a_subscription_row_adds_api_equivalent_not_spend(hm_home: Path) -> None:
    path = Home.resolve().db
    _api_key_and_subscription(path)
    with contextlib.closing(db.connect(path)) as conn:
        assert queries.set_price(conn, "sub-unpriced", Decimal("0.5"), "api-equivalent")
        t = queries.totals(conn)
        assert (t["cost_usd"], t["api_equivalent_usd"], t["unpriced"]) == ("1.5", "3.25", 0)


def test_costs_finer_than_a_picodollar_still_sum_exactly(hm_home: Path) -> None:
    path = Home.resolve().db
    tiny = Decimal("0.0000000000001")  # 1e-13: no exact integer pico value
    write_rows(
        path,
        [
            make_row(id="a", cost_usd=tiny, project="p"),
            make_row(id="b", cost_usd=Decimal("0.1"), project="p"),
            make_row(id="c", cost_usd=Decimal("1E+2"), project="q"),
        ],
    )
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        assert queries.totals(conn)["cost_usd"] == "100.1000000000001"
        groups = {g["project"]: g["cost_usd"] for g in queries.group_by(conn, "project")}
        assert queries.query_rows(conn, project="q")[0]["cost_usd"] == "100"
    assert groups == {"p": "0.1000000000001", "q": "100"}


def test_group_by_each_key(conn: db.sqlite3.Connection) -> None:
    days = queries.group_by(conn, "day")
    assert [(g["day"], g["requests"], g["cost_usd"]) for g in days] == [
        ("2026-12-02", 1, "0"),
        ("2026-12-01", 2, "0.3"),
    ]
    assert days[0]["unpriced"] == 1
    projects = queries.group_by(conn, "project")
    assert [(g["project"], g["requests"], g["cost_usd"]) for g in projects] == [
        ("beta", 1, "0.2"),
        ("alpha", 2, "0.1"),
    ]
    models = {g["model"]: g["requests"] for g in queries.group_by(conn, "model")}
    assert models == {"gpt-4o": 1, "claude-sonnet-4": 1, "mystery-1": 1}
    tools = {g["tool"]: g["requests"] for g in queries.group_by(conn, "tool")}
    assert tools == {"curl": 2, "claude-code": 1}
    providers = queries.group_by(conn, "provider", project="alpha")
    assert [(g["provider"], g["requests"]) for g in providers] == [("openai", 2)]
    with pytest.raises(ValueError, match="cannot group by 'week'"):
        queries.group_by(conn, "week")


def test_unpriced_rows_and_set_price_are_idempotent(hm_home: Path) -> None:
    path = Home.resolve().db
    write_rows(path, [make_row(id="u1", cost_usd=None), make_row(id="p1")])
    with contextlib.closing(db.connect(path)) as conn:
        assert [r["id"] for r in queries.unpriced_rows(conn)] == ["u1"]
        assert queries.set_price(conn, "u1", Decimal("0.25"), None) is True
        assert queries.set_price(conn, "u1", Decimal("9"), None) is False  # already priced
        assert queries.set_price(conn, "p1", Decimal("9"), None) is False
        assert queries.unpriced_rows(conn) == []
        assert queries.totals(conn)["cost_usd"] == "0.35"
        (u1,) = queries.query_rows(conn, limit=None, since=BASE_TS, project="alpha")[1:]
    assert u1["id"] == "u1" and u1["cost_usd"] == "0.25" and u1["priced"] is True


def test_default_report_is_fast_on_a_large_store(hm_home: Path) -> None:
    # The plan is what matters: newest-first walks the ts index (no sort of the table),
    # filters use their (column, ts) index, totals is one aggregate pass.
    path = Home.resolve().db
    n = 100_000
    with contextlib.closing(db.connect(path)) as conn, db.transaction(conn):
        # generated inside SQLite (the rollup triggers fire as for any insert)
        conn.execute(
            """
            WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < ?)
            INSERT INTO requests (id, ts, project, cost_usd, cost_pico, priced, input_tokens,
                                  updated_at)
            SELECT printf('row%07d', i),
                   strftime('%Y-%m-%dT%H:%M:%f000Z', '2026-12-01 12:00:00', '+' || i || ' seconds'),
                   'p' || (i % 7), '0.001', 1000000000, 1, 10, '2026-12-01T00:00:00.000000Z'
            FROM seq
            """,
            (n - 1,),
        )
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM requests ORDER BY ts DESC, seq DESC LIMIT 50"
            )
        )
        assert "idx_requests_ts" in plan, plan
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM requests WHERE project = 'p1' "
                "ORDER BY ts DESC, seq DESC LIMIT 50"
            )
        )
        assert "idx_requests_project_ts" in plan, plan
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT sum(requests) FROM rollup_daily WHERE project = 'p1'"
            )
        )
        assert "rollup_daily" in plan and "requests" not in plan.replace("rollup_daily", "")
        started = time.monotonic()
        latest = queries.query_rows(conn)
        total = queries.totals(conn)
        elapsed = time.monotonic() - started
    assert len(latest) == 50 and latest[0]["id"] == f"row{n - 1:07d}"
    assert latest[0]["ts"] == "2026-12-02T15:46:39.000000Z"
    assert total["requests"] == n and total["cost_usd"] == "100" and total["input_tokens"] == 10 * n
    print(f"default report over {n} rows: {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0  # ~1 ms in practice; generous for a loaded machine


def test_iter_unpriced_pages_through_ties_and_concurrent_pricing(hm_home: Path) -> None:
    path = Home.resolve().db
    rows = [
        make_row(id=f"u{i:02d}", ts=BASE_TS + timedelta(seconds=i // 4), cost_usd=None)
        for i in range(11)
    ] + [make_row(id="priced")]
    write_rows(path, rows)
    with contextlib.closing(db.connect(path)) as conn:
        seen = []
        for rec in queries.iter_unpriced(conn, batch=3):
            seen.append(rec["id"])
            # pricing rows as we go must not make a later page skip anything
            queries.set_price(conn, rec["id"], Decimal("0.01"), None)
        assert seen == [f"u{i:02d}" for i in range(11)]
        assert list(queries.iter_unpriced(conn)) == []
        assert queries.totals(conn)["cost_usd"] == "0.21"

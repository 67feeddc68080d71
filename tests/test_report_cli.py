"""`halton-meter report` as a user runs it: a child process against a real home."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fixtures_store import BASE_TS, make_row, run_cli, write_rows
from hmtest import REPORT_ROW_CONTRACT as CONTRACT

from halton_meter.core.paths import Home
from halton_meter.store import db
from halton_meter.store.writer import RowWriter


def _seed(home: Path) -> None:
    write_rows(
        Home.resolve(home).db,
        [
            make_row(id="r1", ts=BASE_TS, project="alpha", cost_usd=Decimal("0.1")),
            make_row(
                id="r2",
                ts=BASE_TS + timedelta(hours=2),
                project="beta",
                model="claude-sonnet-4",
                provider="anthropic",
                api="messages",
                tool="claude-code",
                cost_usd=Decimal("0.2"),
            ),
            make_row(
                id="r3",
                ts=BASE_TS + timedelta(days=1),
                project="alpha",
                model="mystery-1",
                cost_usd=None,
                output_tokens=None,
            ),
        ],
    )


def _json(home: Path, *args: str) -> dict:
    result = run_cli(home, "report", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_empty_or_missing_store_says_no_captures_yet(hm_home: Path) -> None:
    result = run_cli(hm_home, "report")
    assert result.returncode == 0, result.stderr
    assert "No captures yet" in result.stdout
    assert not Home.resolve(hm_home).db.exists()  # a reader never creates the store
    data = _json(hm_home)
    assert data["rows"] == []
    assert data["totals"]["requests"] == 0 and data["totals"]["cost_usd"] == "0"
    assert data["totals"]["api_equivalent_usd"] == "0"  # no store yet: the same keys
    assert _json(hm_home, "--by", "day") == {"groups": [], "totals": data["totals"]}

    # an existing but empty store reads the same
    with contextlib.closing(db.connect(Home.resolve(hm_home).db)):
        pass
    result = run_cli(hm_home, "report")
    assert result.returncode == 0 and "No captures yet" in result.stdout


def test_json_shape_order_and_exact_totals(hm_home: Path) -> None:
    _seed(hm_home)
    data = _json(hm_home)
    assert set(data) == {"rows", "totals"}
    assert [r["id"] for r in data["rows"]] == ["r3", "r2", "r1"]  # newest first
    for row in data["rows"]:
        assert set(CONTRACT) <= set(row)
        ts = datetime.fromisoformat(row["ts"])
        assert ts.utcoffset() == timedelta(0)
    by_id = {r["id"]: r for r in data["rows"]}
    assert by_id["r1"]["cost_usd"] == "0.1" and by_id["r1"]["priced"] is True
    assert by_id["r3"]["cost_usd"] is None and by_id["r3"]["priced"] is False
    assert by_id["r3"]["output_tokens"] is None
    totals = data["totals"]
    assert totals["cost_usd"] == "0.3"  # 0.1 + 0.2 exactly: decimal, never float
    assert isinstance(totals["cost_usd"], str)
    assert totals["requests"] == 3 and totals["unpriced"] == 1
    assert totals["input_tokens"] == 30 and totals["output_tokens"] == 10
    assert totals["cache_read_tokens"] is None


def test_table_output(hm_home: Path) -> None:
    _seed(hm_home)
    result = run_cli(hm_home, "report")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "TOOL"]
    body = [line for line in lines[1:4]]
    assert "mystery-1" in body[0] and "unpriced" in body[0]
    assert "claude-sonnet-4" in body[1] and "0.2" in body[1]
    assert "2026-12-01 12:00:00" in body[2]
    assert "3 requests" in result.stdout and "cost $0.3" in result.stdout
    assert "1 unpriced" in result.stdout

    limited = run_cli(hm_home, "report", "--limit", "1")
    assert "mystery-1" in limited.stdout and "claude-sonnet-4" not in limited.stdout
    assert "showing 1 of 3" in limited.stdout


def _seed_subscription(home: Path) -> None:
    write_rows(
        Home.resolve(home).db,
        [
            make_row(
                id="key",
                model="claude-sonnet-4",
                provider="anthropic",
                tool="claude-code",
                cost_usd=Decimal("1.5"),
            ),
            make_row(
                id="sub",
                ts=BASE_TS + timedelta(hours=1),
                model="claude-opus-4",
                provider="anthropic",
                tool="claude-code",
                cost_usd=Decimal("2"),
                api_equivalent=True,
                price_note="api-equivalent",
            ),
        ],
    )


def test_api_equivalent_json_is_labelled_and_never_spend(hm_home: Path) -> None:
    _seed_subscription(hm_home)
    data = _json(hm_home)
    assert data["totals"]["cost_usd"] == "1.5"
    assert data["totals"]["api_equivalent_usd"] == "2"
    by_id = {r["id"]: r for r in data["rows"]}
    assert by_id["sub"]["api_equivalent"] is True and by_id["key"]["api_equivalent"] is False
    assert by_id["sub"]["price_note"] == "api-equivalent"
    grouped = _json(hm_home, "--by", "model")
    assert [(g["model"], g["cost_usd"], g["api_equivalent_usd"]) for g in grouped["groups"]] == [
        ("claude-sonnet-4", "1.5", "0"),
        ("claude-opus-4", "0", "2"),
    ]
    assert grouped["totals"] == data["totals"]
    # nothing matching: the same keys, zero
    empty = _json(hm_home, "--project", "nobody")["totals"]
    assert (empty["cost_usd"], empty["api_equivalent_usd"]) == ("0", "0")


def test_api_equivalent_text_is_marked_and_totalled_apart(hm_home: Path) -> None:
    _seed_subscription(hm_home)
    result = run_cli(hm_home, "report")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sub = next(line for line in lines if "claude-opus-4" in line)
    key = next(line for line in lines if "claude-sonnet-4" in line)
    assert "~2" in sub.split()  # marked: never to be read as spend
    assert "1.5" in key.split() and "~1.5" not in key
    assert "~ = API-equivalent price of subscription traffic, not spend" in lines
    assert "2 requests" in result.stdout and "cost $1.5" in result.stdout
    assert "cost $3.5" not in result.stdout
    assert "API-equivalent (subscription, not spend): $2" in lines

    table = run_cli(hm_home, "report", "--by", "model")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "MODEL",
        "REQUESTS",
        "IN",
        "OUT",
        "CACHE",
        "R",
        "CACHE",
        "W",
        "COST",
        "$",
        "~API-EQ",
        "$",
        "UNPRICED",
    ]
    opus = next(line for line in lines if line.startswith("claude-opus-4")).split()
    sonnet = next(line for line in lines if line.startswith("claude-sonnet-4")).split()
    assert opus[-3:] == ["0", "~2", "0"] and sonnet[-3:] == ["1.5", "-", "0"]
    assert "cost $1.5" in table.stdout
    assert "API-equivalent (subscription, not spend): $2" in lines


def test_text_without_subscription_traffic_has_no_api_equivalent_noise(hm_home: Path) -> None:
    _seed(hm_home)
    for args in ((), ("--by", "model")):
        result = run_cli(hm_home, "report", *args)
        assert result.returncode == 0, result.stderr
        assert "API-equivalent" not in result.stdout and "API-EQ" not in result.stdout
        assert "~" not in result.stdout


def test_filters(hm_home: Path) -> None:
    _seed(hm_home)
    ids = lambda *args: [r["id"] for r in _json(hm_home, *args)["rows"]]  # noqa: E731
    assert ids("--project", "alpha") == ["r3", "r1"]
    assert ids("--model", "claude-sonnet-4") == ["r2"]
    assert ids("--provider", "anthropic") == ["r2"]
    assert ids("--tool", "claude-code") == ["r2"]
    assert ids("--since", "2026-12-01T13:00:00") == ["r3", "r2"]
    assert ids("--since", "2026-12-01T13:00:00+01:00") == ["r3", "r2", "r1"]
    assert ids("--since", "2026-12-02") == ["r3"]
    assert ids("--limit", "2") == ["r3", "r2"]
    filtered = _json(hm_home, "--project", "alpha")
    assert filtered["totals"]["requests"] == 2 and filtered["totals"]["cost_usd"] == "0.1"

    result = run_cli(hm_home, "report", "--project", "nobody")
    assert result.returncode == 0 and "No captures match" in result.stdout


def test_relative_since(hm_home: Path) -> None:
    now = datetime.now(UTC)
    write_rows(
        Home.resolve(hm_home).db,
        [
            make_row(id="old", ts=now - timedelta(days=3)),
            make_row(id="recent", ts=now - timedelta(hours=2)),
            make_row(id="fresh", ts=now - timedelta(minutes=5)),
        ],
    )
    ids = lambda *args: [r["id"] for r in _json(hm_home, *args)["rows"]]  # noqa: E731
    assert ids("--since", "30m") == ["fresh"]
    assert ids("--since", "24h") == ["fresh", "recent"]
    assert ids("--since", "7d") == ["fresh", "recent", "old"]
    assert ids("--since", "1w") == ["fresh", "recent", "old"]


def test_group_by(hm_home: Path) -> None:
    _seed(hm_home)
    data = _json(hm_home, "--by", "project")
    assert set(data) == {"groups", "totals"}
    assert [(g["project"], g["requests"], g["cost_usd"]) for g in data["groups"]] == [
        ("beta", 1, "0.2"),
        ("alpha", 2, "0.1"),
    ]
    assert data["totals"]["cost_usd"] == "0.3"
    days = _json(hm_home, "--by", "day")["groups"]
    assert [(g["day"], g["requests"]) for g in days] == [("2026-12-02", 1), ("2026-12-01", 2)]
    models = _json(hm_home, "--by", "model", "--project", "alpha")["groups"]
    assert {g["model"] for g in models} == {"gpt-4o", "mystery-1"}
    for key in ("tool", "provider"):
        groups = _json(hm_home, "--by", key)["groups"]
        assert sum(g["requests"] for g in groups) == 3

    table = run_cli(hm_home, "report", "--by", "tool")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:2] == ["TOOL", "REQUESTS"]
    assert "claude-code" in table.stdout and "cost $0.3" in table.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--since", "yesterday-ish"], "'yesterday-ish' is not a time"),
        (["--since", "7x"], "'7x' is not a time"),
        (["--by", "week"], "cannot group by 'week'"),
    ],
)
def test_bad_input_is_a_usage_error(hm_home: Path, args: list[str], needle: str) -> None:
    _seed(hm_home)
    result = run_cli(hm_home, "report", *args)
    assert result.returncode == 2
    assert needle in " ".join(result.stderr.split())  # rich may wrap the box
    assert "Traceback" not in result.stderr


def test_corrupt_db_exits_3_names_the_file_and_leaves_it(hm_home: Path) -> None:
    path = Home.resolve(hm_home).db
    garbage = b"SQLite format 2\x00 definitely not a database " * 500
    path.write_bytes(garbage)
    for args in ([], ["--json"], ["--by", "model"]):
        result = run_cli(hm_home, "report", *args)
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert str(path) in result.stderr
        assert "not a readable SQLite database" in result.stderr
        assert f"mv {path} {path}.corrupt" in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in hm_home.iterdir()) == ["db.sqlite"]


def test_report_reads_while_the_writer_is_writing(hm_home: Path) -> None:
    path = Home.resolve(hm_home).db
    writer = RowWriter(path)
    try:
        for i in range(500):
            writer.submit(make_row(id=f"w{i:04d}", ts=BASE_TS + timedelta(seconds=i)))
        assert writer.flush(10)
        # the writer keeps its connection (and the WAL) open, as the daemon does
        data = _json(hm_home, "--limit", "1")
        assert data["rows"][0]["id"] == "w0499"
        assert data["totals"]["requests"] == 500
        writer.submit(make_row(id="w9999", ts=BASE_TS + timedelta(days=9)))
        assert writer.flush(10)
        assert _json(hm_home, "--limit", "1")["rows"][0]["id"] == "w9999"
    finally:
        writer.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 501


def test_a_truncated_db_is_reported_not_a_traceback(hm_home: Path) -> None:
    path = Home.resolve(hm_home).db
    write_rows(path, [make_row(id=f"t{i}", usage_json="x" * 3000) for i in range(1000)])
    with path.open("r+b") as fh:
        fh.truncate(40960)  # a valid header, most pages gone
    before = path.read_bytes()
    result = run_cli(hm_home, "report", "--json")
    assert result.returncode == 3, (result.stdout[:200], result.stderr)
    assert "malformed" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert path.read_bytes() == before


def test_until_bounds_the_range(hm_home: Path) -> None:
    _seed(hm_home)
    ids = lambda *args: [r["id"] for r in _json(hm_home, *args)["rows"]]  # noqa: E731
    assert ids("--until", "2026-12-01T14:00:00") == ["r1"]  # exclusive: r2 is at 14:00
    assert ids("--until", "2026-12-01T14:30") == ["r2", "r1"]
    assert ids("--since", "2026-12-01T13:00", "--until", "2026-12-02") == ["r2"]
    data = _json(hm_home, "--until", "2026-12-01T13:00", "--by", "day")
    assert [(g["day"], g["requests"], g["cost_usd"]) for g in data["groups"]] == [
        ("2026-12-01", 1, "0.1")
    ]
    bad = run_cli(hm_home, "report", "--until", "soon")
    assert bad.returncode == 2 and "'soon' is not a time" in " ".join(bad.stderr.split())

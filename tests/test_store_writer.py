"""The writer thread: durability across kill -9, batching, upserts, errors never raised."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from fixtures_store import make_row, write_rows
from hmtest import PYTHON, REPO, clean_env, wait_until

from halton_meter.core.paths import Home
from halton_meter.store import db, queries
from halton_meter.store.writer import RowWriter

_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from halton_meter.store.model import Row
    from halton_meter.store.writer import RowWriter

    db_path, n = Path(sys.argv[1]), int(sys.argv[2])
    writer = RowWriter(db_path)
    for burst in range(2):
        for i in range(n):
            writer.submit(Row(id=f"b{burst}r{i:05d}", model="m", input_tokens=i))
        # time.monotonic is CLOCK_MONOTONIC: comparable with the parent's on Linux
        print(f"SUBMITTED {burst} {time.monotonic()}", flush=True)
        time.sleep(0.2)
    print("IDLE", flush=True)
    time.sleep(3600)  # never flushes, never closes: only kill -9 ends it
    """
)


def _count(path: Path) -> int:
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


def test_rows_survive_kill_9_half_a_second_after_submit(hm_home: Path, tmp_path: Path) -> None:
    path = Home.resolve().db
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    n = 3000
    proc = subprocess.Popen(
        [PYTHON, str(script), str(path), str(n)],
        cwd=REPO,
        env=clean_env(hm_home),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []

        def _read_until_idle() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.strip())
                if line.startswith("IDLE"):
                    return

        reader = threading.Thread(target=_read_until_idle, daemon=True)
        reader.start()
        wait_until(lambda: any(x.startswith("IDLE") for x in lines), timeout=30, what="child")
        last_submit = max(float(x.split()[2]) for x in lines if x.startswith("SUBMITTED"))
        # The promise under test: 0.5 s after submit returned, the rows are committed.
        time.sleep(max(0.0, last_submit + 0.5 - time.monotonic()))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert _count(path) == 2 * n
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM requests")}
    assert "b0r00000" in ids and f"b1r{n - 1:05d}" in ids


def test_each_row_is_committed_promptly_without_flush(hm_home: Path) -> None:
    path = Home.resolve().db
    writer = RowWriter(path)
    try:
        writer.submit(make_row(id="prompt"))
        started = time.monotonic()
        wait_until(lambda: _count(path) == 1, timeout=5, interval=0.005, what="row committed")
        # generous for a loaded CI box; the design target is 100 ms
        assert time.monotonic() - started < 1.0
    finally:
        writer.close()


def test_throughput_batches_many_rows(hm_home: Path) -> None:
    path = Home.resolve().db
    n = 50_000
    rows = [make_row(input_tokens=i, cost_usd=Decimal("0.000001")) for i in range(n)]
    writer = RowWriter(path)
    try:
        started = time.monotonic()
        for row in rows:
            writer.submit(row)
        assert writer.flush(120)
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert writer.written == n and writer.errors == 0
    assert _count(path) == n
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        assert queries.totals(conn)["cost_usd"] == "0.05"
    print(f"{n} rows in {elapsed:.2f}s = {n / elapsed:.0f} rows/s")


def test_submit_is_an_upsert_by_id_and_keeps_seq(hm_home: Path) -> None:
    path = Home.resolve().db
    write_rows(path, [make_row(id="a", partial=True, output_tokens=None), make_row(id="b")])
    write_rows(path, [make_row(id="a", partial=False, output_tokens=42)])
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        got = conn.execute("SELECT id, seq, partial, output_tokens FROM requests ORDER BY seq")
        assert list(got) == [("a", 1, 0, 42), ("b", 2, 0, 5)]


def test_submit_copies_the_row_at_submit_time(hm_home: Path) -> None:
    path = Home.resolve().db
    writer = RowWriter(path)
    try:
        row = make_row(id="snap", model="before")
        writer.submit(row)
        row.model = "after"  # the caller reuses its object; the queued row must not change
        assert writer.flush(10)
    finally:
        writer.close()
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        assert queries.query_rows(conn)[0]["model"] == "before"


def test_a_bad_row_is_counted_and_logged_not_raised(
    hm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Home.resolve().db
    writer = RowWriter(path)
    try:
        good1 = make_row(id="good1")
        bad = make_row(id="bad")
        bad.ts = "not a datetime"  # type: ignore[assignment]
        unbindable = make_row(id="unbindable")
        unbindable.usage_json = {"not": "text"}  # type: ignore[assignment]  # sqlite can't bind
        good2 = make_row(id="good2")
        for row in (good1, bad, unbindable, good2):
            writer.submit(row)  # must not raise
        assert writer.flush(10)
        assert writer.errors == 2
    finally:
        writer.close()
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT id FROM requests"))
    assert ids == ["good1", "good2"]  # the bad rows did not take their batch-mates down
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if "store.write_error" in line]
    assert len(errors) == 2
    assert "row_id=bad" in errors[0] or '"row_id": "bad"' in errors[0]


def test_close_drains_the_queue_and_later_submits_are_errors(hm_home: Path) -> None:
    path = Home.resolve().db
    writer = RowWriter(path)
    for i in range(2000):
        writer.submit(make_row(id=f"r{i}"))
    writer.close()
    assert _count(path) == 2000
    writer.submit(make_row(id="late"))
    assert writer.errors == 1
    assert _count(path) == 2000


def test_concurrent_submitters(hm_home: Path) -> None:
    path = Home.resolve().db
    writer = RowWriter(path)
    try:

        def _submit_many(t: int) -> None:
            for i in range(500):
                writer.submit(make_row(id=f"t{t}-{i}"))

        threads = [threading.Thread(target=_submit_many, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert writer.flush(30)
    finally:
        writer.close()
    assert _count(path) == 2000


def test_writer_on_a_corrupt_file_raises_at_construction(hm_home: Path) -> None:
    path = Home.resolve().db
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(db.StoreCorruptError, match=str(path)):
        RowWriter(path)
    assert path.read_bytes() == b"garbage" * 1000


def test_submit_never_waits_for_a_held_write_lock(hm_home: Path) -> None:
    path = Home.resolve().db
    writer = RowWriter(path)
    other = db.connect(path)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        started = time.monotonic()
        for i in range(200):
            writer.submit(make_row(id=f"l{i}"))
        assert time.monotonic() - started < 0.5  # the caller never waited on SQLite
        assert not writer.flush(0.3)  # still queued behind the lock
        other.execute("COMMIT")
        assert writer.flush(15)
        assert writer.errors == 0
    finally:
        other.close()
        writer.close()
    assert _count(path) == 200


def test_a_broken_database_logs_one_event_per_batch(
    hm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Home.resolve().db
    writer = RowWriter(path)
    try:
        with contextlib.closing(db.connect(path)) as other:
            other.execute("ALTER TABLE requests RENAME TO requests_elsewhere")
        for i in range(300):
            writer.submit(make_row(id=f"x{i}"))
        assert writer.flush(15)
        assert writer.errors == 300
    finally:
        writer.close()
    events = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if "store.write_error" in line
    ]
    assert events and all(e["reason"] == "commit_failed" for e in events)
    assert sum(e["rows"] for e in events) == 300
    assert len(events) < 300  # batched, not a flood

"""The writer coalesces commits: paced rows share them, nothing waits past its bounds."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_store import make_row
from hmtest import PYTHON, REPO, clean_env, wait_until

from halton_meter.core.paths import Home
from halton_meter.store import db
from halton_meter.store import writer as writer_mod
from halton_meter.store.writer import RowWriter


def _count(path: Path) -> int:
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


class _CommitLog:
    """Wraps one writer's commit: when each batch finished, and which rows it carried."""

    def __init__(self, writer: RowWriter) -> None:
        self.batches: list[tuple[float, list[str]]] = []
        self._inner = writer._commit_with_retry
        writer._commit_with_retry = self._commit  # type: ignore[method-assign]

    def _commit(self, batch: list[tuple[Any, ...]]) -> None:
        self._inner(batch)
        self.batches.append((time.monotonic(), [str(params[0]) for params in batch]))


def test_paced_rows_share_commits_and_each_is_committed_promptly(hm_home: Path) -> None:
    path = Home.resolve().db
    writer = RowWriter(path)
    log = _CommitLog(writer)
    submitted: dict[str, float] = {}
    n, gap = 100, 0.004  # ~250 rows/s, one at a time, like a busy daemon
    try:
        start = time.monotonic()
        for i in range(n):
            due = start + i * gap
            time.sleep(max(0.0, due - time.monotonic()))
            row_id = f"p{i:03d}"
            submitted[row_id] = time.monotonic()
            writer.submit(make_row(id=row_id))
        wait_until(lambda: writer.written == n, timeout=10, interval=0.005, what="all rows")
    finally:
        writer.close()
    assert _count(path) == n
    # Coalesced: a commit per row would be n batches.
    assert len(log.batches) <= n // 2, f"{len(log.batches)} commits for {n} paced rows"
    delays = [done - submitted[row_id] for done, ids in log.batches for row_id in ids]
    assert len(delays) == n
    # The promise is 100 ms; a loaded box may stretch the tail, never to the kill -9 bound.
    assert statistics.median(delays) < 0.1
    assert max(delays) < 0.5


def test_a_lone_row_waits_for_company_but_only_up_to_the_window(
    hm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_mod, "COALESCE_S", 0.3)
    path = Home.resolve().db
    writer = RowWriter(path)
    log = _CommitLog(writer)
    try:
        started = time.monotonic()
        writer.submit(make_row(id="first"))
        time.sleep(0.05)
        writer.submit(make_row(id="second"))  # inside the first row's window
        wait_until(lambda: writer.written == 2, timeout=10, interval=0.005, what="both rows")
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert [ids for _, ids in log.batches] == [["first", "second"]]
    assert 0.25 <= elapsed < 5.0


def test_flush_close_and_a_crowd_cut_the_wait_short(
    hm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window far longer than any test: only the early exits can make these pass quickly.
    monkeypatch.setattr(writer_mod, "COALESCE_S", 30.0)
    path = Home.resolve().db
    writer = RowWriter(path)
    try:
        writer.submit(make_row(id="flushed"))
        started = time.monotonic()
        assert writer.flush(10)
        assert time.monotonic() - started < 5.0
        assert _count(path) == 1

        # Enough pending rows end the wait without anyone flushing.
        for i in range(writer_mod.COALESCE_ROWS):
            writer.submit(make_row(id=f"c{i}"))
        wait_until(lambda: _count(path) == 1 + writer_mod.COALESCE_ROWS, timeout=10, what="crowd")

        writer.submit(make_row(id="closed"))
        started = time.monotonic()
    finally:
        writer.close()
    assert time.monotonic() - started < 5.0
    assert _count(path) == 2 + writer_mod.COALESCE_ROWS
    assert writer.errors == 0


_PACED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from halton_meter.store.model import Row
    from halton_meter.store.writer import RowWriter

    db_path, n, gap = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    writer = RowWriter(db_path)
    start = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, start + i * gap - time.monotonic()))
        writer.submit(Row(id=f"paced{i:04d}", model="m", input_tokens=i))
    print(f"LAST {time.monotonic()}", flush=True)
    time.sleep(3600)  # never flushes, never closes: only kill -9 ends it
    """
)


def test_paced_rows_survive_kill_9_half_a_second_after_the_last(
    hm_home: Path, tmp_path: Path
) -> None:
    path = Home.resolve().db
    script = tmp_path / "paced.py"
    script.write_text(_PACED_CHILD)
    n = 200
    proc = subprocess.Popen(
        [PYTHON, str(script), str(path), str(n), "0.005"],
        cwd=REPO,
        env=clean_env(hm_home),
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:

        def _read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.strip())

        threading.Thread(target=_read, daemon=True).start()
        wait_until(lambda: bool(lines), timeout=30, what="child's last submit")
        last = float(lines[0].split()[1])
        # The daemon's promise: a row submitted 0.5 s before kill -9 is in the database.
        time.sleep(max(0.0, last + 0.5 - time.monotonic()))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert _count(path) == n

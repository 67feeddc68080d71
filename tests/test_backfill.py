"""The backfill scripts against a real store: dry-run, --apply, idempotent, concurrent writes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fixtures_edge import git_init
from hmtest import PYTHON, REPO, clean_env

from halton_meter.store.model import Row, new_row_id
from halton_meter.store.writer import RowWriter


def _run(home: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PYTHON, "-m", f"halton_meter.scripts.{script}", *args],
        cwd=REPO,
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result


def _rows(home: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(home / "db.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return {r["id"]: dict(r) for r in conn.execute("SELECT * FROM requests")}
    finally:
        conn.close()


def _write(home: Path, rows: list[Row]) -> None:
    with RowWriter(home / "db.sqlite") as writer:
        for row in rows:
            writer.submit(row)
        assert writer.flush()


def test_misc_attribution_dry_run_apply_idempotent(hm_home: Path, tmp_path: Path) -> None:
    repo = git_init(tmp_path / "widget-repo")
    (repo / "pkg").mkdir()
    rc_dir = tmp_path / "rc-dir"
    (rc_dir / "sub").mkdir(parents=True)
    (rc_dir / ".haltonrc").write_text("project: rc-slug\n")
    registered = tmp_path / "registered-dir"
    (registered / "inner").mkdir(parents=True)
    (hm_home / "project-registry.json").write_text(
        json.dumps({"version": 1, "projects": {"reg-slug": {"path": str(registered)}}})
    )
    # a live client process (in the repo) that started before its row was written
    sleeper = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"], cwd=repo)
    time.sleep(0.05)
    try:
        later = datetime.now(UTC) + timedelta(seconds=1)
        rows = {
            "git": Row(tool="curl", client_cwd=str(repo / "pkg")),
            "rc": Row(tool="python", client_cwd=str(rc_dir / "sub")),
            "reg": Row(tool="node", client_cwd=str(registered / "inner")),
            "pid": Row(tool="python", client_pid=sleeper.pid, ts=later),
            "gone": Row(tool="curl", client_cwd=str(tmp_path / "deleted")),
            "nothing": Row(tool="curl"),
            "done": Row(tool="curl", project="kept", tier="explicit", client_cwd=str(repo)),
        }
        _write(hm_home, list(rows.values()))
        before = _rows(hm_home)

        dry = _run(hm_home, "backfill_misc_attribution")
        assert "4 row(s) would change (dry-run" in dry.stdout
        assert f"{rows['git'].id} " in dry.stdout and "misc -> widget-repo (tier git" in dry.stdout
        assert _rows(hm_home) == before

        applied = _run(hm_home, "backfill_misc_attribution", "--apply")
        assert "4 row(s) changed" in applied.stdout
        after = _rows(hm_home)
        got = {k: (after[r.id]["project"], after[r.id]["tier"]) for k, r in rows.items()}
        assert got == {
            "git": ("widget-repo", "git"),
            "rc": ("rc-slug", "haltonrc"),
            "reg": ("reg-slug", "4b"),
            "pid": ("widget-repo", "git"),
            "gone": ("misc", "misc"),
            "nothing": ("misc", "misc"),
            "done": ("kept", "explicit"),
        }
        # nothing but attribution (and updated_at) changed
        for key in ("tool", "ts", "client_cwd", "cost_usd", "input_tokens"):
            assert all(after[i][key] == before[i][key] for i in before)

        again = _run(hm_home, "backfill_misc_attribution", "--apply")
        assert "0 row(s) changed" in again.stdout
        assert _rows(hm_home) == after
    finally:
        sleeper.kill()
        sleeper.wait(5)


def test_misc_attribution_is_safe_while_the_daemon_writes(hm_home: Path, tmp_path: Path) -> None:
    repo = git_init(tmp_path / "busy-repo")
    _write(hm_home, [Row(tool="curl", client_cwd=str(repo)) for _ in range(300)])
    done = threading.Event()
    writer = RowWriter(hm_home / "db.sqlite")

    def keep_writing() -> None:
        while not done.is_set():
            writer.submit(Row(tool="python", client_cwd=str(repo)))
            time.sleep(0.001)

    t = threading.Thread(target=keep_writing)
    t.start()
    try:
        result = _run(hm_home, "backfill_misc_attribution", "--apply")
    finally:
        done.set()
        t.join()
        assert writer.flush()
        writer.close()
    assert writer.errors == 0
    changed = int(result.stdout.strip().split()[-3])
    assert changed >= 300
    final = _run(hm_home, "backfill_misc_attribution", "--apply")
    # rows written after the scan are picked up by the next run; then nothing is left
    assert "row(s) changed" in final.stdout
    assert "0 row(s) changed" in _run(hm_home, "backfill_misc_attribution", "--apply").stdout
    assert {r["tier"] for r in _rows(hm_home).values()} == {"git"}


def test_body_paths_dry_run_apply_idempotent(hm_home: Path, tmp_path: Path) -> None:
    bodies = hm_home / "bodies"
    ids = {k: new_row_id() for k in ("ok", "abs", "old_home", "stale", "flat", "missing")}
    day = datetime.now(UTC).strftime("%Y-%m-%d")

    def put(rel: str) -> None:
        path = bodies / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}")

    put(f"{day}/{ids['ok']}.request")
    put(f"{day}/{ids['abs']}.request")
    put(f"{day}/{ids['old_home']}.response")
    put(f"{day}/{ids['stale']}.request")
    put(f"{ids['flat']}.response")
    rows = [
        Row(id=ids["ok"], request_body_path=f"{day}/{ids['ok']}.request"),
        Row(id=ids["abs"], request_body_path=str(bodies / day / f"{ids['abs']}.request")),
        Row(
            id=ids["old_home"],
            response_body_path=f"/old/home/.halton-meter/bodies/{day}/{ids['old_home']}.response",
        ),
        Row(id=ids["stale"], request_body_path=f"2001-01-01/{ids['stale']}.request"),
        Row(id=ids["flat"], response_body_path=f"{day}/{ids['flat']}.response"),
        Row(
            id=ids["missing"],
            request_body_path=f"{day}/{ids['missing']}.request",
            response_body_path=f"{day}/{ids['missing']}.response",
        ),
    ]
    _write(hm_home, rows)
    before = _rows(hm_home)

    dry = _run(hm_home, "backfill_body_paths")
    assert "6 path(s) would change (dry-run" in dry.stdout
    assert _rows(hm_home) == before

    assert "6 path(s) changed" in _run(hm_home, "backfill_body_paths", "--apply").stdout
    after = _rows(hm_home)
    assert after[ids["ok"]] == before[ids["ok"]]
    assert after[ids["abs"]]["request_body_path"] == f"{day}/{ids['abs']}.request"
    assert after[ids["old_home"]]["response_body_path"] == f"{day}/{ids['old_home']}.response"
    assert after[ids["stale"]]["request_body_path"] == f"{day}/{ids['stale']}.request"
    assert after[ids["flat"]]["response_body_path"] == f"{ids['flat']}.response"
    missing = after[ids["missing"]]
    assert missing["request_body_path"] is None and missing["response_body_path"] is None
    assert missing["body_skip_reason"] == "body_missing"
    for rid in ids.values():  # every remaining path resolves under bodies/
        for col in ("request_body_path", "response_body_path"):
            if after[rid][col]:
                assert (bodies / after[rid][col]).is_file()

    assert "0 path(s) changed" in _run(hm_home, "backfill_body_paths", "--apply").stdout
    assert _rows(hm_home) == after


def test_scripts_without_a_database_do_nothing(hm_home: Path) -> None:
    for script in ("backfill_misc_attribution", "backfill_body_paths"):
        assert "nothing to do" in _run(hm_home, script, "--apply").stdout
    assert not (hm_home / "db.sqlite").exists()

"""The database file: schema, migrations, modes, damaged and too-new files."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from fixtures_store import make_row, write_rows

from halton_meter.core.paths import Home
from halton_meter.store import db, queries
from halton_meter.store.codec import ROW_FIELDS


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _columns(conn: sqlite3.Connection) -> list[str]:
    return [r[1] for r in conn.execute("PRAGMA table_info(requests)")]


def _indexes(conn: sqlite3.Connection) -> set[str]:
    return {r[1] for r in conn.execute("PRAGMA index_list(requests)")}


def test_fresh_database_has_the_current_schema(hm_home: Path) -> None:
    path = Home.resolve().db
    with contextlib.closing(db.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.schema_version()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # synchronous=NORMAL is 1 (per connection)
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == db.BUSY_TIMEOUT_MS
        columns = _columns(conn)
        indexes = _indexes(conn)
    # every Row field has its column: adding a field without a migration fails here
    assert set(ROW_FIELDS) <= set(columns)
    for name in ("ts", "project_ts", "model_ts", "provider_ts", "tool_ts", "unpriced"):
        assert f"idx_requests_{name}" in indexes


def test_money_is_text_and_ts_is_sortable_iso_utc(hm_home: Path) -> None:
    path = Home.resolve().db
    write_rows(path, [make_row(cost_usd=Decimal("0.0000001"), billed_cost_usd=Decimal("1.50"))])
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        ts, cost, billed, kinds = conn.execute(
            "SELECT ts, cost_usd, billed_cost_usd, typeof(cost_usd) || typeof(stream) FROM requests"
        ).fetchone()
    assert ts == "2026-12-01T12:00:00.000000Z"
    assert cost == "0.0000001"  # plain decimal text, never 1E-7, never REAL
    assert billed == "1.50"
    assert kinds == "textinteger"


def test_db_wal_and_shm_are_0600_from_creation(hm_home: Path) -> None:
    path = Home.resolve().db
    old = os.umask(0o022)  # a typical, permissive umask must not leak into our files
    try:
        write_rows(path, [make_row()])
        conn = db.connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE requests SET tool = 'x'")
            conn.execute("COMMIT")
            wal = path.with_name(path.name + "-wal")
            shm = path.with_name(path.name + "-shm")
            assert wal.exists() and shm.exists()
            assert _mode(path) == 0o600
            assert _mode(wal) == 0o600
            assert _mode(shm) == 0o600
        finally:
            conn.close()
    finally:
        os.umask(old)


def test_db_in_a_new_home_dir_gets_a_0700_dir(tmp_path: Path) -> None:
    path = tmp_path / "new-home" / "db.sqlite"
    with contextlib.closing(db.connect(path)):
        pass
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o600


def test_migration_from_an_older_version_keeps_rows(hm_home: Path) -> None:
    path = Home.resolve().db
    # Build a version-1 database by hand, as an older halton-meter left it.
    conn = sqlite3.connect(path)
    db.MIGRATIONS[0](conn)
    conn.execute(
        "INSERT INTO requests (id, ts, cost_usd, cost_pico, priced, updated_at) "
        "VALUES ('old1', '2026-01-01T00:00:00.000000Z', '0.5', 500000000000, 1, "
        "'2026-01-01T00:00:00.000000Z')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    assert db.schema_version() > 1

    with contextlib.closing(db.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.schema_version()
        assert "idx_requests_unpriced" in _indexes(conn)
        assert "service_tier" in _columns(conn)
        rows = queries.query_rows(conn)
    assert [r["id"] for r in rows] == ["old1"]
    assert rows[0]["cost_usd"] == "0.5" and rows[0]["service_tier"] is None


def test_a_reader_upgrades_an_older_schema(hm_home: Path) -> None:
    # halton-meter upgraded while the daemon was stopped: `report` still works.
    path = Home.resolve().db
    conn = sqlite3.connect(path)
    for step in db.MIGRATIONS[:2]:
        step(conn)
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.schema_version()
        assert queries.query_rows(conn) == []


def test_migration_steps_run_once_and_in_order(
    hm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Home.resolve().db
    with contextlib.closing(db.connect(path)):
        pass
    calls: list[int] = []

    def _vnext(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE requests ADD COLUMN extra_field TEXT")

    monkeypatch.setattr(db, "MIGRATIONS", [*db.MIGRATIONS, _vnext])
    for _ in range(2):
        with contextlib.closing(db.connect(path)) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)
            assert "extra_field" in _columns(conn)
    assert calls == [1]


def test_failed_migration_rolls_back(hm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Home.resolve().db
    with contextlib.closing(db.connect(path)):
        pass

    def _broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE requests ADD COLUMN half_done TEXT")
        conn.execute("THIS IS NOT SQL")

    monkeypatch.setattr(db, "MIGRATIONS", [*db.MIGRATIONS, _broken])
    with pytest.raises(db.StoreError, match="cannot upgrade the schema"):
        db.connect(path)
    monkeypatch.undo()
    with contextlib.closing(db.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.schema_version()
        assert "half_done" not in _columns(conn)


def test_a_newer_database_is_refused_clearly(hm_home: Path) -> None:
    path = Home.resolve().db
    with contextlib.closing(db.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(db.StoreVersionError) as err:
            db.connect(path, readonly=readonly)
        message = str(err.value)
        assert str(path) in message and "99" in message and "Upgrade halton-meter" in message
    assert path.read_bytes() == before


def test_corrupt_file_is_reported_and_left_untouched(hm_home: Path) -> None:
    path = Home.resolve().db
    garbage = b"this is not a database, it is a grocery list\n" * 200
    path.write_bytes(garbage)
    for readonly in (False, True):
        with pytest.raises(db.StoreCorruptError) as err:
            db.connect(path, readonly=readonly)
        message = str(err.value)
        assert str(path) in message
        assert "not a readable SQLite database" in message
        assert f"mv {path} {path}.corrupt" in message
        assert err.value.exit_code == 3
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in path.parent.iterdir()) == ["db.sqlite"]


def test_readonly_never_creates_the_file(hm_home: Path) -> None:
    path = Home.resolve().db
    with pytest.raises(FileNotFoundError):
        db.connect(path, readonly=True)
    assert not path.exists()


def test_readonly_reads_a_cleanly_closed_wal_database(hm_home: Path) -> None:
    path = Home.resolve().db
    write_rows(path, [make_row(id="r1")])
    # the writer closed: SQLite checkpointed and removed -wal/-shm
    assert not path.with_name("db.sqlite-wal").exists()
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        assert [r["id"] for r in queries.query_rows(conn)] == ["r1"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM requests")


def test_readonly_sees_an_uncreated_schema_as_empty(hm_home: Path) -> None:
    # A writer created the file but has not migrated it yet: readers see an empty store.
    path = Home.resolve().db
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with contextlib.closing(db.connect(path, readonly=True)) as conn:
        assert queries.query_rows(conn) == []
        assert queries.totals(conn)["requests"] == 0
        assert queries.group_by(conn, "model") == []


def test_concurrent_connects_restore_the_umask(hm_home: Path) -> None:
    path = Home.resolve().db
    write_rows(path, [make_row()])
    old = os.umask(0o022)
    try:
        errors: list[BaseException] = []

        def _open_many() -> None:
            try:
                for _ in range(50):
                    db.connect(path, readonly=True).close()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=_open_many) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert os.umask(0o022) == 0o022  # the caller's umask came back
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    ("exc", "kind", "code", "needle"),
    [
        (sqlite3.DatabaseError("file is not a database"), db.StoreCorruptError, 3, "mv "),
        (sqlite3.DatabaseError("database disk image is malformed"), db.StoreCorruptError, 3, "mv "),
        (sqlite3.OperationalError("database is locked"), db.StoreError, 1, "try again"),
        (sqlite3.OperationalError("unable to open database file"), db.StoreError, 1, "ls -l"),
    ],
)
def test_errors_are_classified_with_their_fix(
    tmp_path: Path, exc: sqlite3.Error, kind: type, code: int, needle: str
) -> None:
    path = tmp_path / "db.sqlite"
    err = db.error_for(path, exc)
    assert type(err) is kind
    assert err.exit_code == code
    assert str(path) in str(err) and needle in str(err)


def test_files_a_reader_creates_are_0600_too(hm_home: Path) -> None:
    path = Home.resolve().db
    write_rows(path, [make_row()])
    assert sorted(p.name for p in path.parent.iterdir()) == ["db.sqlite"]  # closed cleanly
    old = os.umask(0o022)
    try:
        with contextlib.closing(db.connect(path, readonly=True)) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 1
            for name in ("db.sqlite-wal", "db.sqlite-shm"):
                assert _mode(path.with_name(name)) == 0o600, name
    finally:
        os.umask(old)

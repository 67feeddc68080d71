"""The SQLite file: opening it safely, its schema and the migrations that build it.

Durability: WAL with ``synchronous=NORMAL``. A commit appends the transaction to the -wal
file with ``write()`` before returning; only the checkpoint is fsynced. Data written with
``write()`` lives in the kernel's page cache, which survives the death of the process
(``kill -9``, a crash), so every committed row survives that. Only an OS crash or power loss
can roll back the last few commits, which is the trade we take for not fsyncing per batch.

Privacy: the database holds prompts' metadata, so it is created 0600 from its first byte
(``os.open`` before SQLite sees the path) and SQLite's -wal/-shm files inherit that mode
(SQLite copies the database file's permissions; the umask below is a second fence).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from halton_meter.core.errors import EXIT_BAD_FILE, EXIT_FAILURE, HaltonError
from halton_meter.core.fsutil import SECRET_FILE_MODE, ensure_dir
from halton_meter.store import rollup

BUSY_TIMEOUT_MS = 10_000
_UMASK_LOCK = threading.RLock()


class StoreError(HaltonError):
    """The database cannot be used. The message names the file and the fix."""

    exit_code = EXIT_BAD_FILE


class StoreCorruptError(StoreError):
    pass


class StoreVersionError(StoreError):
    pass


def _v1_requests(conn: sqlite3.Connection) -> None:
    # One column per Row field. ts is ISO 8601 UTC text with microseconds (sorts as time);
    # money is decimal text, never REAL. cost_pico is cost_usd in 1e-12 dollars when that is
    # exact (else NULL): it lets SUM() total money exactly in one aggregate query.
    # seq is the stable insertion order (a cursor for sync); an upsert keeps it.
    conn.execute(
        """
        CREATE TABLE requests (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            ts TEXT NOT NULL,
            tool TEXT NOT NULL DEFAULT 'other',
            project TEXT NOT NULL DEFAULT 'misc',
            tier TEXT NOT NULL DEFAULT 'misc',
            client_pid INTEGER,
            client_cwd TEXT,
            provider TEXT,
            api TEXT,
            host TEXT,
            method TEXT,
            path TEXT,
            model TEXT,
            stream INTEGER NOT NULL DEFAULT 0,
            status INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cache_read_tokens INTEGER,
            cache_write_tokens INTEGER,
            cache_write_5m_tokens INTEGER,
            cache_write_1h_tokens INTEGER,
            reasoning_tokens INTEGER,
            usage_json TEXT,
            cost_usd TEXT,
            cost_pico INTEGER,
            priced INTEGER NOT NULL DEFAULT 0,
            price_note TEXT,
            billed_cost_usd TEXT,
            api_equivalent INTEGER NOT NULL DEFAULT 0,
            partial INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            latency_ms REAL,
            ttfb_ms REAL,
            request_bytes INTEGER,
            response_bytes INTEGER,
            request_body_path TEXT,
            response_body_path TEXT,
            body_skip_reason TEXT,
            updated_at TEXT NOT NULL
        )
        """
    )


def _v2_indexes(conn: sqlite3.Connection) -> None:
    # (column, ts) pairs serve both "filter by X" and "newest first" for report's default view.
    conn.execute("CREATE INDEX idx_requests_ts ON requests (ts)")
    for column in ("project", "model", "provider", "tool"):
        conn.execute(f"CREATE INDEX idx_requests_{column}_ts ON requests ({column}, ts)")
    conn.execute("CREATE INDEX idx_requests_unpriced ON requests (ts) WHERE priced = 0")


def _v3_service_tier(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE requests ADD COLUMN service_tier TEXT")


# Append only: step N (1-based) takes user_version N-1 to N. Never edit a shipped step.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_requests,
    _v2_indexes,
    _v3_service_tier,
    rollup.migrate_v4,  # daily sums kept by triggers
    rollup.migrate_v5,  # spend and API-equivalent (subscription) money in separate sums
]


def schema_version() -> int:
    return len(MIGRATIONS)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the store. Writers create the file (0600) and migrate it to the current schema.

    Readers never create the file (FileNotFoundError when it is missing). Raises StoreError
    subclasses with a message naming the file and the fix; never recreates a damaged file.
    """
    path = Path(path)
    if readonly and not path.exists():
        raise FileNotFoundError(str(path))
    # The umask is process-wide: the lock keeps concurrent connects (API threads) from
    # restoring each other's value. RLock: a reader may open a writer to migrate.
    with _UMASK_LOCK:
        return _connect_private(path, readonly=readonly)


def _connect_private(path: Path, *, readonly: bool) -> sqlite3.Connection:
    old_umask = os.umask(0o077)
    try:
        if not readonly:
            ensure_dir(path.parent)
            _create_private(path)
        conn = _open(path, readonly=readonly)
        try:
            _configure(conn, path, readonly=readonly)
            _migrate(conn, path, readonly=readonly)
        except BaseException:
            conn.close()
            raise
    finally:
        os.umask(old_umask)
    return conn


def _create_private(path: Path) -> None:
    # O_EXCL: never truncate or re-mode an existing file.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE))


def _open(path: Path, *, readonly: bool) -> sqlite3.Connection:
    target = f"file:{urllib.parse.quote(str(path))}?mode={'ro' if readonly else 'rw'}"
    try:
        # autocommit via isolation_level=None: transactions are explicit (BEGIN IMMEDIATE).
        return sqlite3.connect(
            target,
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from exc


def _configure(conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch {path} to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Triggers make every insert keep a statement journal; in memory it costs half.
        conn.execute("PRAGMA temp_store = MEMORY")
        # Touch the header: a file that is not a database fails here, not mid-report.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise error_for(path, exc) from exc


def error_for(path: Path, exc: sqlite3.Error) -> StoreError:
    """The user-facing error for a failed query: busy (retry), damaged (move it aside), or
    unusable for another reason (permissions, a vanished directory), named as such."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StoreError(
            f"the database {path} is busy ({exc}); try again in a moment",
            exit_code=EXIT_FAILURE,
        )
    if any(word in text for word in ("not a database", "malformed", "corrupt")):
        return corrupt_error(path, exc)
    return StoreError(
        f"cannot use the database {path}: {exc}. Check that the file and its directory "
        f"belong to you and are readable (ls -l {path.parent}).",
        exit_code=EXIT_FAILURE,
    )


def corrupt_error(path: Path, exc: BaseException) -> StoreCorruptError:
    return StoreCorruptError(
        f"{path} is not a readable SQLite database ({exc}). It was left untouched. "
        f"To start a fresh store, stop the daemon (halton-meter stop), move the file aside "
        f"(mv {path} {path}.corrupt) and start again (halton-meter start); "
        f"`sqlite3 {path}.corrupt .recover` may salvage its rows."
    )


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _migrate(conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
    try:
        version = _user_version(conn)
    except sqlite3.DatabaseError as exc:
        raise error_for(path, exc) from exc
    latest = schema_version()
    if version > latest:
        raise StoreVersionError(
            f"{path} has schema version {version}, newer than this halton-meter understands "
            f"({latest}). Upgrade halton-meter (pipx upgrade halton-meter); the file was left "
            f"untouched."
        )
    if version == latest:
        return
    if readonly:
        if version == 0:
            return  # a writer created the file and is about to migrate it: an empty store
        # An older schema (halton-meter was upgraded while the daemon was stopped): upgrade
        # it with a short writer connection, so `report` works straight after an upgrade.
        with contextlib.closing(connect(path)):
            pass
        return
    _apply_migrations(conn, path)


def _apply_migrations(conn: sqlite3.Connection, path: Path) -> None:
    # BEGIN IMMEDIATE takes the write lock before reading user_version, so two processes
    # starting together cannot both apply the same step.
    try:
        with transaction(conn):
            version = _user_version(conn)
            for step in MIGRATIONS[version:]:
                step(conn)
            conn.execute(f"PRAGMA user_version = {schema_version()}")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot upgrade the schema of {path}: {exc}") from exc


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (disk full, I/O error): never mask the cause,
        # and never leave the connection inside a transaction the next batch would trip on.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def has_requests_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
    ).fetchone()
    return row is not None

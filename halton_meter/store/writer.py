"""The one writer thread: callers hand rows over a queue and never wait for SQLite.

mitmproxy runs every hook on one event loop; a hook that blocked on a busy database would
stall every stream in flight. ``submit`` only appends to a queue. The thread takes whatever
is queued (up to ``BATCH_MAX`` rows) and commits it in one transaction.

Commits are coalesced: a commit has a fixed CPU cost (BEGIN IMMEDIATE, appending every
touched page to the WAL, COMMIT) larger than a row's own, and at a steady 200 requests/s
rows arrive 5 ms apart, so committing each on arrival pays it per row. When the thread wakes for a row and nothing else is queued,
it waits up to ``COALESCE_S`` (or until ``COALESCE_ROWS`` are pending, or a ``flush`` or
``close`` asks) for more, then commits them together. When rows are already queued (a
backlog) it commits at once: they have waited long enough. A row therefore waits at most
``COALESCE_S`` plus one in-flight batch plus its own (tens of milliseconds at full load):
inside the 100 ms promise. Committed means durable against kill -9 (see db.py); a row is
committed well before the 0.5 s the daemon promises.

``submit`` is an upsert by ``Row.id``: submitting a row again with the same id overwrites
every column of the stored row (its ``seq`` is kept). A partial row written on a client
abort can therefore be completed later by submitting the full row with the same id.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from halton_meter.core.logging import get_logger
from halton_meter.store import db
from halton_meter.store.codec import WRITE_COLUMNS, row_params
from halton_meter.store.model import Row

# ~25 ms of work at ~40k rows/s: a row never waits behind a long batch
BATCH_MAX = 1000
# How long a lone row waits for company before its commit, and how many pending rows end
# the wait early. 10 ms + a batch stays far inside the 100 ms promise.
COALESCE_S = 0.010
COALESCE_ROWS = 64
_LOCK_RETRIES = 6
# Errors a single row can cause; anything else is the database's and fails the batch.
_ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    TypeError,
    ValueError,
)

UPSERT_SQL = (
    f"INSERT INTO requests ({', '.join(WRITE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in WRITE_COLUMNS)}) "
    f"ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in WRITE_COLUMNS if c != "id")
)

_STOP = object()


class RowWriter:
    """Owns the database's write connection. Thread-safe; errors are counted, never raised.

    The constructor opens (and migrates) the database and raises ``db.StoreError`` if that
    fails, so the caller decides at boot; after that nothing raises into the caller.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.errors = 0
        self.written = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._submitted = 0
        self._done = 0
        self._cond = threading.Condition()
        # Set to end the coalescing wait early: enough rows, a flush, or close.
        self._hurry = threading.Event()
        self._closed = False
        self._conn = db.connect(self.db_path)
        self._thread = threading.Thread(target=self._run, name="halton-store-writer", daemon=True)
        self._thread.start()

    # -- caller side -----------------------------------------------------------------------

    def submit(self, row: Row) -> None:
        """Queue ``row`` for writing. Never blocks, never raises."""
        try:
            if self._closed:
                self._count_error(1, "writer_closed", row_id=row.id)
                return
            # Encode now, in the caller's thread: the row object may be mutated afterwards.
            params = row_params(row)
        except Exception as exc:
            self._count_error(1, "encode_failed", row_id=getattr(row, "id", None), exc=exc)
            return
        with self._cond:
            self._submitted += 1
            crowded = self._submitted - self._done >= COALESCE_ROWS
        self._queue.put(params)
        if crowded and not self._hurry.is_set():
            self._hurry.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is committed (or failed). True on success."""
        with self._cond:
            target = self._submitted
            if self._done >= target:
                return True
        self._hurry.set()  # a caller is waiting: no point holding rows back for company
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= target, timeout=timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue, commit, stop the thread and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._hurry.set()
        self._thread.join(timeout)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        with self._cond:
            return self._submitted - self._done

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        try:
            while not stopping:
                item = self._queue.get()
                batch: list[tuple[Any, ...]] = []
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
                    self._coalesce()
                while len(batch) < BATCH_MAX:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        continue  # keep draining what was queued before close()
                    batch.append(item)
                if batch:
                    self._write(batch)
        finally:
            with contextlib.suppress(Exception):
                self._conn.close()

    def _coalesce(self) -> None:
        """After taking a lone row, give others a moment to join its commit."""
        if not self._queue.empty():
            return  # a backlog: those rows have waited already, commit now
        # Cleared after the wait, not before: a flush() that set it during the previous
        # commit must still cut this wait short.
        self._hurry.wait(COALESCE_S)
        self._hurry.clear()

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        try:
            self._commit_with_retry(batch)
            self.written += len(batch)
        except _ROW_ERRORS:
            # Something in one row (a value SQLite cannot bind, a constraint): retry the rows
            # one by one so the bad one does not take its batch-mates down.
            failures: list[tuple[str, BaseException]] = []
            for params in batch:
                try:
                    self._commit_with_retry([params])
                    self.written += 1
                except Exception as row_exc:
                    failures.append((str(params[0]), row_exc))
            for row_id, error in failures:
                self._count_error(1, "row_rejected", row_id=row_id, exc=error)
        except Exception as exc:
            # The database itself failed (locked for a minute, disk full, I/O error): one
            # event for the whole batch, not a flood of one per row.
            self._count_error(len(batch), "commit_failed", row_id=str(batch[0][0]), exc=exc)
        finally:
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _commit_with_retry(self, batch: list[tuple[Any, ...]]) -> None:
        for attempt in range(_LOCK_RETRIES):
            try:
                with db.transaction(self._conn):
                    self._conn.executemany(UPSERT_SQL, batch)
                return
            except sqlite3.OperationalError as exc:
                # busy_timeout already waited (10 s); another process holds the write lock
                # for long (a backfill): keep trying for about a minute before giving up.
                text = str(exc).lower()
                busy = "locked" in text or "busy" in text
                if not busy or attempt == _LOCK_RETRIES - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def _count_error(
        self, n: int, reason: str, *, row_id: str | None = None, exc: BaseException | None = None
    ) -> None:
        """Count ``n`` lost rows and log one ``store.write_error`` event for them."""
        with self._cond:
            self.errors += n
        with contextlib.suppress(Exception):
            get_logger(__name__).error(
                "store.write_error",
                reason=reason,
                rows=n,
                row_id=row_id,
                error=repr(exc) if exc else None,
                db=str(self.db_path),
            )

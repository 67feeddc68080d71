"""Request and response bodies as files beside the database, under a size gate.

Layout: ``<root>/<YYYY-MM-DD>/<row_id>.<kind>`` (the UTC day the row id was minted, so a
request and its response share a directory across midnight). Files are 0600, directories
0700, from creation. A body is streamed to disk chunk by chunk; once it passes ``max_bytes``
the partial file is deleted and the sink records ``skipped = "body_too_large"`` (logging
``addon.body_capture.skip`` is the caller's job: it knows the flow).

Cost: a stored body is three system calls, ``open(O_CREAT|O_EXCL)``, ``write``, ``close``.
The day directory is not checked per file: the create itself is the check (ENOENT only for
the first body of a day, or after someone removed the directory, and then it is made 0700
and the create retried), so nothing can go stale. Bodies are not fsynced: the promise of
durability is the row's (db.py); a body is a convenience copy, and the page cache keeps it
through a kill -9 anyway. No chmod or stat afterwards: the mode is right from the create.

Headers are never stored here, so credentials in them never reach disk; ``redact_query``
strips credential query parameters from a URL or path before it goes into a row.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from halton_meter.core.fsutil import SECRET_FILE_MODE, ensure_dir
from halton_meter.core.logging import get_logger

BodyKind = Literal["request", "response"]
SKIP_TOO_LARGE = "body_too_large"
SKIP_WRITE_ERROR = "write_error"

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_MS_PER_DAY = 86_400_000
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_CREDENTIAL_PARAMS = frozenset(
    {
        "key",
        "api-key",
        "api_key",
        "apikey",
        "x-api-key",
        "x-goog-api-key",
        "access_token",
        "token",
        "id_token",
        "refresh_token",
        "client_secret",
        "password",
        "sig",  # Azure SAS signatures
    }
)


class BodySink:
    """One body on its way to disk. Not thread-safe: one flow writes it."""

    def __init__(self, root: Path, relpath: str, max_bytes: int) -> None:
        self._root = root
        self._relpath = relpath
        # A str, built once: os.open on it skips pathlib on every body.
        self._file = os.path.join(root, relpath)
        self._max_bytes = max_bytes
        self._fd: int | None = None
        self._closed = False
        self._result: str | None = None
        self.bytes_seen = 0
        self.skipped: str | None = None

    @property
    def path(self) -> Path:
        return Path(self._file)

    @property
    def relpath(self) -> str:
        """The file's path relative to the store's root, as a row names it (``day/id.kind``)."""
        return self._relpath

    def write(self, chunk: bytes) -> None:
        self.bytes_seen += len(chunk)
        if self._closed or self.skipped is not None or not chunk:
            return
        if self.bytes_seen > self._max_bytes:
            self._discard(SKIP_TOO_LARGE)
            return
        try:
            if self._fd is None:
                self._fd = self._create()
            written = os.write(self._fd, chunk)
            if written < len(chunk):
                view = memoryview(chunk)[written:]
                while view:
                    view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # The sink sits inside a live stream: a full disk must never break the client's
            # response. Drop the body, keep the row.
            self._discard(SKIP_WRITE_ERROR)
            with contextlib.suppress(Exception):
                get_logger(__name__).error(
                    "store.body_write_error", path=self._file, error=repr(exc)
                )

    def _create(self) -> int:
        # O_EXCL: a row id is unique, so an existing file is never ours to overwrite.
        # The mode applies from the create (the umask can only narrow it).
        try:
            return os.open(self._file, _CREATE_FLAGS, SECRET_FILE_MODE)
        except FileNotFoundError:
            # No day directory yet (the day's first body, or it was removed): make it, once.
            ensure_dir(Path(self._file).parent)
            return os.open(self._file, _CREATE_FLAGS, SECRET_FILE_MODE)

    def close(self) -> str | None:
        """Finish the file. Returns its path relative to the store's root, or None when
        nothing was stored (empty body, skipped, or a write failed). Never raises."""
        if self._closed:
            return self._result
        self._closed = True
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                self._discard(SKIP_WRITE_ERROR)
            else:
                self._result = self._relpath
            self._fd = None
        return self._result

    def abort(self, reason: str = "aborted") -> None:
        """Drop whatever was written (e.g. the flow failed and the body is incomplete)."""
        self._discard(reason)
        self._closed = True

    def _discard(self, reason: str) -> None:
        self.skipped = reason
        created = self._fd is not None or self._result is not None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._result = None
        if created:
            with contextlib.suppress(OSError):
                os.unlink(self._file)


class BodyStore:
    def __init__(self, root_dir: Path, max_bytes: int) -> None:
        self.root = Path(root_dir)
        self.max_bytes = max_bytes

    def open(self, row_id: str, kind: BodyKind = "request") -> BodySink:
        if kind not in ("request", "response"):
            raise ValueError(f"body kind must be 'request' or 'response', not {kind!r}")
        if not _SAFE_ID.match(row_id):
            raise ValueError(f"unsafe row id for a file name: {row_id!r}")
        day = _row_day(row_id)
        return BodySink(self.root, f"{day}/{row_id}.{kind}", self.max_bytes)

    def resolve(self, relpath: str) -> Path:
        return self.root / relpath


def _row_day(row_id: str) -> str:
    # Row ids start with 12 hex digits of epoch milliseconds (model.new_row_id).
    try:
        return _day_name(int(row_id[:12], 16) // _MS_PER_DAY)
    except (ValueError, OverflowError, OSError):
        return datetime.now(UTC).strftime("%Y-%m-%d")


@functools.lru_cache(maxsize=8)
def _day_name(day: int) -> str:
    # Cached: every body of a day names the same directory; formatting a date per file is waste.
    when = datetime.fromtimestamp(day * 86_400, UTC)
    if not 2000 <= when.year <= 2200:
        raise ValueError(day)
    return when.strftime("%Y-%m-%d")


def redact_query(url_or_path: str) -> str:
    """Drop credential query parameters (key=, api-key=, token=, ...); keep the rest as sent."""
    parts = urlsplit(url_or_path)
    if not parts.query:
        return url_or_path
    kept = [
        param
        for param in parts.query.split("&")
        if param and unquote_plus(param.split("=", 1)[0]).strip().lower() not in _CREDENTIAL_PARAMS
    ]
    return urlunsplit(parts._replace(query="&".join(kept)))

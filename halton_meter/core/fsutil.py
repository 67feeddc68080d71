"""File helpers: secret files born 0600, directories 0700, atomic state writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

SECRET_FILE_MODE = 0o600
SECRET_DIR_MODE = 0o700


def ensure_dir(path: Path, mode: int = SECRET_DIR_MODE) -> Path:
    """Create ``path`` (and parents) with ``mode`` from the start; never chmod afterwards."""
    # os.makedirs applies the umask; set it so the directory is never wider than `mode`.
    old = os.umask(0o777 & ~mode)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    finally:
        os.umask(old)
    return path


def open_secret(path: Path, mode: str = "wb") -> int:
    """Open ``path`` for writing, created 0600 from the first byte. Returns a file descriptor."""
    flags = os.O_WRONLY | os.O_CREAT
    flags |= os.O_APPEND if "a" in mode else os.O_TRUNC
    return os.open(path, flags, SECRET_FILE_MODE)


def write_secret(path: Path, data: bytes | str) -> None:
    """Write a secret file atomically, 0600 from creation."""
    atomic_write(path, data, mode=SECRET_FILE_MODE)


def atomic_write(path: Path, data: bytes | str, mode: int = SECRET_FILE_MODE) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old or the new file."""
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600 already; widen only for public files
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

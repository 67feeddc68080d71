"""Count every exit of every program from supervisord's own log.

Polling getAllProcessInfo() every 0.5 s cannot see two exits that fall between two polls, and
event listeners' buffers drop events. supervisord writes one line per process end, in order,
before it respawns anything:

    2026-12-04 20:21:58,450 WARN exited: daemon (exit status 1; not expected)
    2026-12-04 20:22:04,460 INFO stopped: daemon (exit status 0)        <- a requested stop
    2026-12-04 20:22:09,001 INFO gave up: daemon entered FATAL state, too many start retries ...

so the watchdog tails that file from a persisted (inode, offset): an exit is never missed, and
never counted twice across watchdog restarts. When the log cannot be read, ``PollCounter``
falls back to pid/start changes seen in getAllProcessInfo() (at least one exit per change).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXITED = "exited"
STOPPED = "stopped"
GAVE_UP = "gave_up"

_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d+) \w+ "
    r"(?:(?P<kind>exited|stopped): (?P<name>[^\s(]+) \((?P<detail>.*)\)"
    r"|gave up: (?P<fatal>\S+) entered FATAL state.*)$"
)
_READ_MAX = 4 * 1024 * 1024


@dataclass(frozen=True)
class ExitEvent:
    kind: str  # exited | stopped | gave_up
    program: str
    at: float  # epoch seconds, from the log line
    detail: str = ""

    @property
    def expected(self) -> bool:
        return "; expected" in self.detail


def parse_line(line: str) -> ExitEvent | None:
    m = _LINE.match(line.rstrip("\n"))
    if not m:
        return None
    at = time.mktime(time.strptime(m["ts"], "%Y-%m-%d %H:%M:%S")) + int(m["ms"]) / 1000
    if m["fatal"]:
        return ExitEvent(GAVE_UP, m["fatal"], at)
    return ExitEvent(m["kind"], m["name"], at, m["detail"])


class LogTail:
    """New complete lines of a (rotating) log file since the last read."""

    def __init__(self, path: Path, inode: int | None = None, offset: int | None = None) -> None:
        self.path = path
        self.inode = inode
        self.offset = offset

    def start_after(self, marker: str) -> None:
        """Start just after the last line containing ``marker`` (this supervisord's start), so
        exits between its start and ours are counted; at the end when it is not found."""
        try:
            with self.path.open("rb") as fh:
                st = os.fstat(fh.fileno())
                base = max(0, st.st_size - _READ_MAX)
                fh.seek(base)
                data = fh.read(_READ_MAX)
        except OSError:
            return
        at = data.rfind(marker.encode())
        if at < 0:
            self.inode, self.offset = st.st_ino, st.st_size
            return
        end = data.find(b"\n", at)
        self.inode = st.st_ino
        self.offset = base + (end + 1 if end >= 0 else len(data))

    def start_at_end(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        self.inode, self.offset = st.st_ino, st.st_size

    def read_events(self) -> list[ExitEvent] | None:
        """Events since the last call; None when the log cannot be read."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_ino != self.inode or self.offset is None or st.st_size < self.offset:
                # rotated or truncated: the new file is read from its start
                self.inode, self.offset = st.st_ino, 0
            os.lseek(fd, self.offset, os.SEEK_SET)
            data = os.read(fd, _READ_MAX)
        finally:
            os.close(fd)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset = (self.offset or 0) + end + 1
        events = []
        for raw in data[: end + 1].decode("utf-8", "replace").splitlines():
            event = parse_line(raw)
            if event is not None:
                events.append(event)
        return events

    def position(self) -> dict[str, Any]:
        return {"inode": self.inode, "offset": self.offset}


class PollCounter:
    """Fallback when the log is unreadable: a new ``start`` (or pid) means one exit at least."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}

    def observe(self, infos: list[dict[str, Any]]) -> list[ExitEvent]:
        events = []
        for raw in infos:
            name, key = str(raw["name"]), (int(raw.get("start") or 0), int(raw.get("pid") or 0))
            before = self._seen.get(name)
            self._seen[name] = key
            if before is not None and before[0] and key[0] != before[0]:
                at = float(raw.get("stop") or raw.get("now") or time.time())
                events.append(ExitEvent(EXITED, name, at, "seen by polling; not expected"))
        return events

"""Small read-only probes of the machine: does a port accept, who listens on it, is it ours.

Nothing here writes a file or changes state: status and doctor may run as often as a
monitoring system likes.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from halton_meter.core.bindguard import connect_host

PROBE_TIMEOUT_S = 0.5


def accepts(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host:port`` is accepted."""
    try:
        with socket.create_connection((connect_host(host), port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Listener:
    """A process listening on a port. ``pid`` is None for another user's process."""

    port: int
    pid: int | None
    command: str

    def describe(self) -> str:
        if self.pid is None:
            return "a process of another user (pid not visible)"
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def _command(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        return " ".join(cmdline) if cmdline else proc.name()
    except (psutil.Error, OSError):
        return ""


def listeners(ports: Iterable[int]) -> dict[int, list[Listener]]:
    """Who listens on each of ``ports`` (TCP, any address). One scan for all ports."""
    wanted = set(ports)
    found: dict[int, list[Listener]] = {port: [] for port in wanted}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return found
    seen: set[tuple[int, int | None]] = set()
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr:
            continue
        port = conn.laddr.port
        if port not in wanted or (port, conn.pid) in seen:
            continue
        seen.add((port, conn.pid))
        command = _command(conn.pid) if conn.pid else ""
        found[port].append(Listener(port=port, pid=conn.pid, command=command))
    return found


def _home_of(proc: psutil.Process) -> Path | None:
    """The Halton Meter home a process of ours serves, or None when it is not ours."""
    try:
        cmdline = " ".join(proc.cmdline())
        if "halton" not in cmdline and "supervisord" not in cmdline:
            return None
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    root = env.get("HALTON_METER_HOME")
    if root:
        return Path(root).expanduser().absolute()
    home_dir = env.get("HOME")
    return Path(home_dir) / ".halton-meter" if home_dir else None


def is_ours(pid: int | None, our_pids: set[int], home_root: Path) -> bool:
    """A listener is ours when it is one of our pids, a child of one, or a process of this
    home by command line and ``HALTON_METER_HOME`` (an orphan left by a killed supervisord)."""
    if pid is None:
        return False
    if pid in our_pids:
        return True
    try:
        proc = psutil.Process(pid)
        if any(parent.pid in our_pids for parent in proc.parents()):
            return True
    except (psutil.Error, OSError):
        return False
    with contextlib.suppress(OSError):
        return _home_of(proc) == home_root
    return False


def read_pid_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""XML-RPC to this home's supervisord over its unix socket.

Shared with `status`/`doctor` and the watchdog: ``supervisor_proxy(home)`` and
``program_infos(home)`` (None when supervisord does not answer).
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from halton_meter.core.paths import Home
from halton_meter.service.watchdog_state import read_watchdog_state

PROGRAMS = ("daemon", "edge", "api", "watchdog")
RPC_TIMEOUT_S = 5.0


class _TimedUnixConnection(http.client.HTTPConnection):
    """supervisor's UnixStreamHTTPConnection, with a timeout: a hung supervisord must not hang us."""

    def __init__(self, socketfile: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socketfile = socketfile

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socketfile)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Transport(SupervisorTransport):
    def __init__(self, socketfile: str, timeout: float) -> None:
        super().__init__(None, None, f"unix://{socketfile}")
        self._get_connection = lambda: _TimedUnixConnection(socketfile, timeout)


def supervisor_proxy(home: Home | None = None, timeout: float = RPC_TIMEOUT_S) -> Any:
    """An XML-RPC proxy to this home's supervisord (``proxy.supervisor.getState()`` ...)."""
    home = home or Home.resolve()
    return xmlrpc.client.ServerProxy(
        "http://localhost", transport=_Transport(str(home.socket), timeout)
    )


@dataclass(frozen=True)
class ProgramInfo:
    state: str  # supervisor's statename: RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL ...
    pid: int | None
    uptime_s: float | None
    restarts: int | None  # exits counted by the watchdog, None when it has not counted yet
    exitstatus: int | None
    spawnerr: str = ""
    start: int = 0
    stop: int = 0


def to_program_info(raw: dict[str, Any], restarts: int | None = None) -> ProgramInfo:
    running = raw.get("statename") == "RUNNING" and raw.get("pid")
    uptime = float(raw["now"] - raw["start"]) if running and raw.get("start") else None
    return ProgramInfo(
        state=str(raw.get("statename", "UNKNOWN")),
        pid=int(raw["pid"]) if raw.get("pid") else None,
        uptime_s=uptime,
        restarts=restarts,
        exitstatus=raw.get("exitstatus") if raw.get("start") else None,
        spawnerr=str(raw.get("spawnerr") or ""),
        start=int(raw.get("start") or 0),
        stop=int(raw.get("stop") or 0),
    )


def raw_infos(
    home: Home | None = None, timeout: float = RPC_TIMEOUT_S
) -> list[dict[str, Any]] | None:
    """getAllProcessInfo(), or None when supervisord is unreachable."""
    try:
        return list(supervisor_proxy(home, timeout).supervisor.getAllProcessInfo())
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return None


def program_infos(home: Home | None = None) -> dict[str, ProgramInfo] | None:
    """Per program state; None when supervisord is unreachable. Restarts come from the watchdog."""
    home = home or Home.resolve()
    infos = raw_infos(home)
    if infos is None:
        return None
    exits = read_watchdog_state(home).get("exits", {})
    return {
        str(raw["name"]): to_program_info(raw, _int_or_none(exits.get(raw["name"])))
        for raw in infos
    }


def supervisord_pid(home: Home | None = None) -> int | None:
    try:
        return int(supervisor_proxy(home).supervisor.getPID())
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

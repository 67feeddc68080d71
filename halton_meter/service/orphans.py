"""Find and end OUR orphans: processes of this home left behind by a killed supervisord.

A process is ours only when BOTH hold:
- its command line is one of ours (``-m halton_meter.edge|daemon|api``, ``-m halton_watchdog``,
  the supervise entry, or supervisord with this home's config), or supervisord started it as one
  of our programs (SUPERVISOR_PROCESS_NAME + this home's socket in SUPERVISOR_SERVER_URL);
- its environment (``/proc/<pid>/environ``) names this home in HALTON_METER_HOME.
Never by a broad name; always ended by pid.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import psutil

from halton_meter.core.logging import get_logger
from halton_meter.core.paths import HOME_ENV, Home
from halton_meter.service.render import MODULES

_OUR_MODULES = set(MODULES.values()) | {"halton_meter.service.supervise"}


def _is_our_command(cmdline: list[str], home: Home) -> bool:
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-m" and cmdline[i + 1] in _OUR_MODULES:
            return True
    if any(a.endswith("supervisord") or a == "supervisor.supervisord" for a in cmdline):
        return str(home.supervisord_conf) in cmdline
    return any(
        a.endswith("halton-meter") and cmdline[i + 1 : i + 2] == ["supervise"]
        for i, a in enumerate(cmdline[:2])
    )


def _started_by_our_supervisord(env: dict[str, str], home: Home) -> bool:
    return (
        bool(env.get("SUPERVISOR_PROCESS_NAME"))
        and env.get("SUPERVISOR_SERVER_URL", "") == f"unix://{home.socket}"
    )


def our_processes(
    home: Home, exclude: Iterable[int] = (), children_of: int | None = None
) -> list[psutil.Process]:
    """Every live process of this home (programs, supervisord, supervise entries), except
    ``exclude`` and the children of ``children_of`` (a live supervisord's own programs)."""
    skip = set(exclude) | {os.getpid()}
    try:
        skip |= {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        pass
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid in skip:
            continue
        try:
            if children_of is not None and proc.ppid() == children_of:
                continue
            cmdline = proc.info["cmdline"] or []
            env = proc.environ()
            if env.get(HOME_ENV) != str(home.root):
                continue
            if _is_our_command(cmdline, home) or _started_by_our_supervisord(env, home):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def end_processes(procs: list[psutil.Process], timeout: float = 10.0) -> list[int]:
    """SIGTERM each by pid, SIGKILL what is left after ``timeout``. Returns the pids ended."""
    log = get_logger()
    pids = []
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
            pids.append(proc.pid)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs([p for p in procs if p.pid in pids], timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    if alive:
        psutil.wait_procs(alive, timeout=3)
    for pid in pids:
        log.warning("service.orphan_ended", pid=pid, forced=any(p.pid == pid for p in alive))
    return pids


def end_orphans(
    home: Home,
    exclude: Iterable[int] = (),
    timeout: float = 10.0,
    children_of: int | None = None,
) -> list[int]:
    """End every process of this home not in ``exclude`` (nor a child of ``children_of``)."""
    procs = our_processes(home, exclude, children_of)
    # Parents first (supervisord, then programs): a live supervisord would respawn a program.
    procs.sort(key=lambda p: 0 if _is_supervisor(p) else 1)
    return end_processes(procs, timeout) if procs else []


def _is_supervisor(proc: psutil.Process) -> bool:
    try:
        return any("supervisor" in a for a in proc.cmdline()[:3])
    except psutil.Error:
        return False


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    remaining = set(pids)
    while remaining and time.monotonic() < deadline:
        remaining = {p for p in remaining if psutil.pid_exists(p) and not _zombie(p)}
        if remaining:
            time.sleep(0.05)
    return not remaining


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True

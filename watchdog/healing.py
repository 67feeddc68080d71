"""Healing run before every (re)start: by the supervise entry before supervisord, and by the
watchdog before it restarts a program.

- the placeholder ``[cloud] base_url`` heal (config.base_url.healed, once);
- stale runtime files: a socket nobody answers on, a pid file of a dead supervisord,
  corrupt effective-ports.json / runtime.toml (rebuilt by core.runtime);
- our orphans (this home's programs that supervisord does not know) ended by pid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

from halton_meter.core.config import heal_placeholder_base_url
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home
from halton_meter.core.runtime import load_effective_ports
from halton_meter.service.orphans import end_orphans
from halton_meter.service.rpc import supervisord_pid


@dataclass
class HealReport:
    base_url_healed: bool = False
    removed: list[str] = field(default_factory=list)
    orphans_ended: list[int] = field(default_factory=list)

    def changed(self) -> bool:
        return self.base_url_healed or bool(self.removed) or bool(self.orphans_ended)


def heal_state_files(home: Home, report: HealReport) -> None:
    report.base_url_healed = heal_placeholder_base_url(home)
    load_effective_ports(home)  # detects, logs, quarantines and rebuilds corrupt state files


def clear_stale_supervisor_files(home: Home, report: HealReport) -> None:
    """Only when no supervisord answers: a stale socket would make the next one refuse to start."""
    if home.socket.exists() or home.socket.is_symlink():
        home.socket.unlink()
        report.removed.append(str(home.socket))
    pidfile = home.supervisord_pid
    if pidfile.exists():
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip() or 0)
            if pid and psutil.pid_exists(pid):
                return
        pidfile.unlink(missing_ok=True)
        report.removed.append(str(pidfile))


def prestart_heal(home: Home) -> HealReport:
    """Before supervisord starts (the supervise entry): everything, orphans included."""
    report = HealReport()
    home.ensure()
    heal_state_files(home, report)
    if supervisord_pid(home) is None:
        report.orphans_ended = end_orphans(home)
        clear_stale_supervisor_files(home, report)
    _log(report, "prestart")
    return report


def heal_before_restart(
    home: Home, supervisord: int | None, keep: Iterable[int] = ()
) -> HealReport:
    """Before the watchdog restarts a program: never touch supervisord or what it runs now."""
    report = HealReport()
    heal_state_files(home, report)
    keep = {*keep, *([supervisord] if supervisord else [])}
    report.orphans_ended = end_orphans(home, exclude=keep, timeout=5.0, children_of=supervisord)
    _log(report, "restart")
    return report


def _log(report: HealReport, when: str) -> None:
    if report.changed():
        get_logger().info(
            "watchdog.healed",
            when=when,
            base_url_healed=report.base_url_healed,
            removed=report.removed,
            orphans_ended=report.orphans_ended,
        )

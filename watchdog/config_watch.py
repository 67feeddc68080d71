"""Watch config.toml and effective-ports.json (watchfiles) from a thread; the main loop applies.

An edit is validated with load_config first: an invalid one is refused
(``config.reload_refused error=...``) and the running config kept. A valid one is applied live
where that is safe (capture hosts and body gate, upstream map, cloud: SIGHUP to the daemon,
which re-reads config.toml on SIGHUP) and by a restart otherwise (hosts and ports).

The SIGHUP contract: a program that catches SIGHUP re-reads config.toml. Whether it does is read
from the kernel (SigCgt in /proc/<pid>/status), so a program without a handler, which SIGHUP
would kill, is restarted cleanly instead.
"""

from __future__ import annotations

import queue
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from watchfiles import watch

from halton_meter.core.config import Config
from halton_meter.core.paths import Home

CONFIG = "config"
PORTS = "ports"


@dataclass(frozen=True)
class Plan:
    signal_hup: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    renegotiate: bool = False
    watchdog: bool = False


def plan_for(old: Config, new: Config) -> Plan:
    """What a config change needs: live reload (SIGHUP), restart, or new ports."""
    hup: list[str] = []
    restart: list[str] = []
    if (old.capture, old.upstream, old.cloud) != (new.capture, new.upstream, new.cloud):
        hup.append("daemon")
    if (old.edge, old.attribution) != (new.edge, new.attribution):
        hup.append("edge")
    if old.listen_host != new.listen_host:
        restart += ["daemon", "edge"]
    if old.api_host != new.api_host:
        restart.append("api")
    hup = [p for p in hup if p not in restart]
    return Plan(
        signal_hup=tuple(hup),
        restart=tuple(restart),
        renegotiate=old.ports != new.ports,
        watchdog=old.watchdog != new.watchdog,
    )


def catches_sighup(pid: int) -> bool:
    """Has process ``pid`` installed a SIGHUP handler? (False when it cannot be known.)"""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    except (OSError, ValueError, IndexError):
        pass
    return False


class Watcher:
    """Runs watchfiles.watch on the home in a daemon thread; changes land in ``changes``."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.changes: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._names = {home.config.name: CONFIG, home.effective_ports.name: PORTS}
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        def interesting(_change: object, path: str) -> bool:
            return Path(path).name in self._names

        for batch in watch(
            self.home.root,
            watch_filter=interesting,
            stop_event=self._stop,
            recursive=False,
            debounce=300,
            rust_timeout=1000,
            yield_on_timeout=False,
        ):
            for kind in {self._names[Path(path).name] for _, path in batch}:
                self.changes.put(kind)

    def drain(self) -> set[str]:
        kinds = set()
        while True:
            try:
                kinds.add(self.changes.get_nowait())
            except queue.Empty:
                return kinds

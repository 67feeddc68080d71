"""`start` and `stop`: through the service manager where one is installed for this home,
else the supervise entry directly (containers, CI)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from halton_meter.core.paths import HOME_ENV, Home
from halton_meter.core.runtime import EffectivePorts, load_effective_ports
from halton_meter.service import env as envmod
from halton_meter.service import launchd, systemd
from halton_meter.service.orphans import end_orphans, wait_gone
from halton_meter.service.render import PROGRAM_ORDER, log_paths
from halton_meter.service.rpc import ProgramInfo, program_infos, supervisor_proxy, supervisord_pid

START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 40.0
_POLL_S = 0.05


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    already: bool = False


def service_manager(home: Home) -> ModuleType | None:
    """The installed service manager that runs THIS home, if any."""
    for manager in (systemd, launchd):
        if manager.manages(home):
            return manager
    return None


# --- readiness ----------------------------------------------------------------------------


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _health_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def not_ready(ports: EffectivePorts) -> list[str]:
    """What does not answer yet: [] when edge and daemon accept and api /health is 200."""
    missing = []
    if not _accepts(ports.edge):
        missing.append(f"edge port {ports.edge} does not accept")
    if not _accepts(ports.daemon):
        missing.append(f"daemon port {ports.daemon} does not accept")
    if not _health_ok(ports.api):
        missing.append(f"api http://127.0.0.1:{ports.api}/health is not 200")
    return missing


def _tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _failed_program(infos: dict[str, ProgramInfo] | None) -> str | None:
    for name in PROGRAM_ORDER:
        info = (infos or {}).get(name)
        if info and info.state == "FATAL":
            return name
    return None


def _failure(home: Home, why: str, program: str | None) -> Outcome:
    log = log_paths(home, program)[1] if program else home.supervisord_log
    tail = _tail(log)
    message = f"halton-meter did not start: {why}.\nRead {log}"
    if tail:
        message += f" (last lines):\n{tail}"
    return Outcome(False, message)


def wait_ready(home: Home, deadline_s: float, entry: subprocess.Popen[bytes] | None) -> Outcome:
    deadline = time.monotonic() + deadline_s
    missing: list[str] = ["nothing checked yet"]
    infos: dict[str, ProgramInfo] | None = None
    while time.monotonic() < deadline:
        infos = program_infos(home)
        failed = _failed_program(infos)
        if failed:
            info = infos[failed] if infos else None
            detail = f" ({info.spawnerr})" if info and info.spawnerr else ""
            return _failure(home, f"the {failed} keeps exiting{detail}", failed)
        if infos is None and entry is not None and entry.poll() is not None:
            return _failure(
                home, f"the supervise entry exited with status {entry.returncode}", None
            )
        if infos is not None:
            missing = not_ready(load_effective_ports(home))
            if not missing:
                return Outcome(True, "")
        else:
            missing = ["supervisord does not answer on " + str(home.socket)]
        time.sleep(_POLL_S)
    why = f"not healthy after {deadline_s:.0f}s: " + "; ".join(missing)
    return _failure(home, why, _culprit(infos, missing))


def _culprit(infos: dict[str, ProgramInfo] | None, missing: list[str]) -> str | None:
    """The program whose log explains a start that timed out: one not RUNNING, else one that
    does not answer."""
    for name in PROGRAM_ORDER:
        info = (infos or {}).get(name)
        if info is not None and info.state != "RUNNING":
            return name
    for name in PROGRAM_ORDER:
        if any(m.startswith(f"{name} ") for m in missing):
            return name
    return None


# --- start / stop -------------------------------------------------------------------------


def spawn_entry(home: Home) -> subprocess.Popen[bytes]:
    """The supervise entry, detached (own session), stdio to supervisord.log, no proxy vars."""
    home.ensure()
    child_env = envmod.scrubbed(os.environ)
    child_env[HOME_ENV] = str(home.root)
    log_fd = os.open(home.supervisord_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "halton_meter.service.supervise"],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=child_env,
            cwd=str(home.root),
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)


def start(home: Home | None = None, deadline_s: float = START_DEADLINE_S) -> Outcome:
    home = home or Home.resolve()
    t0 = time.monotonic()
    infos = program_infos(home)
    if infos is not None:
        return _start_stopped(home, infos, deadline_s)
    manager = service_manager(home)
    entry = None
    if manager is not None:
        _sync_override(home, manager)
        result = manager.start()
        if not result.ok:
            return Outcome(False, f"{' '.join(result.argv)} failed: {result.stderr.strip()}")
    else:
        entry = spawn_entry(home)
    outcome = wait_ready(home, deadline_s, entry)
    if not outcome.ok:
        return outcome
    ports = load_effective_ports(home)
    return Outcome(
        True,
        f"halton-meter started in {time.monotonic() - t0:.1f}s: edge 127.0.0.1:{ports.edge}, "
        f"daemon 127.0.0.1:{ports.daemon}, api http://127.0.0.1:{ports.api}",
    )


_DOWN = ("STOPPED", "EXITED", "FATAL", "BACKOFF")


def _start_stopped(home: Home, infos: dict[str, ProgramInfo], deadline_s: float) -> Outcome:
    """Already running: start what is down (e.g. stopped by the watchdog's loop detector)."""
    down = [name for name in PROGRAM_ORDER if name in infos and infos[name].state in _DOWN]
    if not down:
        return Outcome(True, f"halton-meter is already running ({home.root})", already=True)
    rpc = supervisor_proxy(home, timeout=30).supervisor
    for name in down:
        try:
            if infos[name].state == "BACKOFF":  # BACKOFF answers ALREADY_STARTED: stop first
                rpc.stopProcess(name, True)
            rpc.startProcess(name, False)
        except xmlrpc.client.Fault:
            pass  # it changed state meanwhile (the watchdog retried it): wait_ready decides
    outcome = wait_ready(home, deadline_s, None)
    if not outcome.ok:
        return outcome
    return Outcome(
        True, f"halton-meter is already running ({home.root}); started {', '.join(down)}", True
    )


def _sync_override(home: Home, manager: ModuleType) -> None:
    """HALTON_METER_ALLOW_NON_LOOPBACK=1 given to start persists into the unit/plist."""
    if os.environ.get(envmod.ALLOW_NON_LOOPBACK) != "1":
        return
    if manager is systemd:
        if not systemd.unit_allows_non_loopback(systemd.unit_path().read_text()):
            systemd.install_unit(home, allow_non_loopback=True)
    else:
        launchd.install_unit(home, allow_non_loopback=True)


def stop(home: Home | None = None, deadline_s: float = STOP_DEADLINE_S) -> Outcome:
    """Stop supervisord and its programs; end orphans of a killed supervisord; leave nothing."""
    home = home or Home.resolve()
    manager = service_manager(home)
    was_running = False
    if manager is not None:
        was_running = program_infos(home) is not None
        manager.stop()
    pid = supervisord_pid(home)
    if pid is not None:
        was_running = True
        try:
            supervisor_proxy(home).supervisor.shutdown()
        except Exception:  # noqa: BLE001 - it may die mid-answer; the wait below decides
            pass
        wait_gone([pid], deadline_s)
    orphans = end_orphans(home)
    from halton_watchdog.healing import HealReport, clear_stale_supervisor_files

    clear_stale_supervisor_files(home, HealReport())
    if was_running:
        extra = f" (and {len(orphans)} leftover process(es))" if orphans else ""
        return Outcome(True, f"halton-meter stopped{extra}")
    if orphans:
        return Outcome(True, f"halton-meter was not running; ended {len(orphans)} orphan(s)")
    return Outcome(True, "halton-meter is not running", already=True)

"""Supervision against a real supervisord in a temporary home.

edge, daemon and api are stand-ins (tests/fixtures_supervision.py, via the test-only
HALTON_METER_TEST_CMD_<PROGRAM> override) that bind their effective ports like the real
programs; the watchdog is the real one. Every process is ended by pid in teardown, and the
teardown asserts that no process with this HALTON_METER_HOME remains.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from halton_watchdog.probes import probe
from hmtest import PYTHON, REPO, free_port, port_open, wait_until

from halton_meter.core.config import DEFAULT_BASE_URL
from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, load_effective_ports, save_effective_ports
from halton_meter.service import control
from halton_meter.service.orphans import end_processes, our_processes
from halton_meter.service.rpc import program_infos, supervisor_proxy, supervisord_pid
from halton_meter.service.watchdog_state import read_watchdog_state

FIXTURE = REPO / "tests" / "fixtures_supervision.py"
RECOVERY_BOUND_S = 5.0


def standin(program: str, *extra: str) -> str:
    return f"{PYTHON} {FIXTURE} {program} halton_meter-standin {' '.join(extra)}".strip()


class Meter:
    def __init__(self, home: Home) -> None:
        self.home = home

    def start(self) -> control.Outcome:
        outcome = control.start(self.home)
        assert outcome.ok, outcome.message
        return outcome

    def infos(self) -> dict[str, Any]:
        infos = program_infos(self.home)
        assert infos is not None
        return infos

    def pid(self, program: str) -> int:
        pid = self.infos()[program].pid
        assert pid
        return pid

    @property
    def ports(self) -> EffectivePorts:
        return load_effective_ports(self.home)

    def answers(self) -> bool:
        return not control.not_ready(self.ports)

    def all_running(self) -> bool:
        infos = program_infos(self.home)
        return infos is not None and all(i.state == "RUNNING" for i in infos.values())

    def state(self) -> dict[str, Any]:
        return read_watchdog_state(self.home)

    def watchdog_log(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in (self.home.root / "watchdog.out.log", self.home.watchdog_log)
            if p.exists()
        )


def alive(pid: int | None) -> bool:
    """A zombie is dead: only its parent (this test process) has not read its status yet."""
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _supervised(monkeypatch: pytest.MonkeyPatch) -> Iterator[Meter]:
    entries: list[subprocess.Popen[bytes]] = []
    spawn = control.spawn_entry

    def recording_spawn(home: Home) -> subprocess.Popen[bytes]:
        entries.append(spawn(home))
        return entries[-1]

    monkeypatch.setattr(control, "spawn_entry", recording_spawn)
    home = Home.resolve()
    yield Meter(home)
    control.stop(home)
    leftover = with_our_home(home)
    end_processes(leftover, timeout=3)
    for entry in entries:  # the supervise entries became supervisord: reap them
        entry.kill()
        entry.wait(5)
    assert not leftover, f"processes left behind: {[(p.pid, p.cmdline()) for p in leftover]}"


def with_our_home(home: Home) -> list[psutil.Process]:
    """Every live process whose environment names this home: stricter than the orphan finder."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                if proc.environ().get("HALTON_METER_HOME") == str(home.root):
                    found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.fixture
def meter(hm_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Meter]:
    """Stand-in edge, daemon and api; the real watchdog."""
    for program in ("edge", "daemon", "api"):
        monkeypatch.setenv(f"HALTON_METER_TEST_CMD_{program.upper()}", standin(program))
    yield from _supervised(monkeypatch)


@pytest.fixture
def real_meter(hm_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Meter]:
    """The real programs."""
    yield from _supervised(monkeypatch)


def pin_free_ports(home: Home, **extra: str) -> EffectivePorts:
    ports = EffectivePorts(free_port(), free_port(), free_port())
    lines = ["[ports]"] + [f"{k} = {v}" for k, v in ports.as_dict().items()]
    home.config.write_text("\n".join(lines) + "\n" + "".join(extra.values()))
    return ports


def previous_ports(home: Home) -> EffectivePorts:
    """Unpinned, but negotiated before: negotiation keeps them when they are free."""
    ports = EffectivePorts(free_port(), free_port(), free_port())
    save_effective_ports(home, ports)
    return ports


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


# --- start / stop -----------------------------------------------------------------------------


def test_start_runs_everything_second_start_is_a_no_op_stop_leaves_nothing(meter: Meter) -> None:
    ports = pin_free_ports(meter.home)
    t0 = time.monotonic()
    outcome = meter.start()
    assert time.monotonic() - t0 < 10
    assert "started" in outcome.message and not outcome.already
    assert meter.ports == ports
    wait_until(meter.all_running, timeout=10, what="all four programs RUNNING")
    assert set(meter.infos()) == {"daemon", "edge", "api", "watchdog"}
    assert port_open(ports.edge) and port_open(ports.daemon) and meter.answers()
    assert oct(meter.home.socket.stat().st_mode & 0o777) == "0o700"
    again = control.start(meter.home)
    assert again.ok and again.already and "already running" in again.message
    supervisord = supervisord_pid(meter.home)
    pids = [meter.pid(p) for p in ("daemon", "edge", "api", "watchdog")]
    stopped = control.stop(meter.home)
    assert stopped.ok and "stopped" in stopped.message
    assert not any(alive(p) for p in [supervisord, *pids])
    assert not port_open(ports.edge) and not meter.home.socket.exists()
    assert control.stop(meter.home).already


def test_cli_start_and_stop(meter: Meter) -> None:
    pin_free_ports(meter.home)
    cli = [PYTHON, "-m", "halton_meter"]
    done = subprocess.run([*cli, "start"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "started" in done.stdout
    done = subprocess.run([*cli, "start"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "already running" in done.stdout
    done = subprocess.run([*cli, "stop"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "stopped" in done.stdout
    assert not our_processes(meter.home)


@pytest.mark.parametrize(
    ("crash_after", "deadline_s", "why"),
    [("0", 25.0, "keeps exiting"), ("2.5", 8.0, "not healthy after 8s")],
    ids=["exits-at-once-fatal", "exits-after-startsecs-loops"],
)
def test_start_says_why_when_a_program_cannot_come_up(
    meter: Meter, monkeypatch: pytest.MonkeyPatch, crash_after: str, deadline_s: float, why: str
) -> None:
    pin_free_ports(meter.home)
    monkeypatch.setenv(
        "HALTON_METER_TEST_CMD_DAEMON", standin("daemon", "--crash-after", crash_after)
    )
    outcome = control.start(meter.home, deadline_s=deadline_s)
    assert not outcome.ok
    assert why in outcome.message
    assert "daemon.err.log" in outcome.message
    assert "crashing on purpose" in outcome.message


# --- kill -9 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("program", ["daemon", "edge", "api", "watchdog"])
def test_kill_9_of_a_program_recovers(meter: Meter, program: str) -> None:
    pin_free_ports(meter.home)
    meter.start()
    wait_until(meter.all_running, timeout=10, what="all RUNNING")
    victim = meter.pid(program)
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    wait_until(
        lambda: meter.infos()[program].pid not in (None, victim) and meter.answers(),
        timeout=RECOVERY_BOUND_S,
        what=f"{program} back after kill -9",
    )
    assert time.monotonic() - t0 < RECOVERY_BOUND_S
    if program != "watchdog":
        wait_until(
            lambda: meter.state().get("exits", {}).get(program, 0) >= 1,
            timeout=5,
            what="the watchdog counted the exit",
        )


def test_kill_9_of_supervisord_next_start_ends_orphans_and_comes_back(meter: Meter) -> None:
    ports = pin_free_ports(meter.home)
    meter.start()
    wait_until(meter.all_running, timeout=10, what="all RUNNING")
    old = {p: meter.pid(p) for p in ("daemon", "edge", "api", "watchdog")}
    sv = supervisord_pid(meter.home)
    assert sv
    os.kill(sv, signal.SIGKILL)
    wait_until(lambda: program_infos(meter.home) is None, timeout=5, what="supervisord gone")
    # its children are orphans that keep their ports
    assert all(alive(pid) for pid in old.values())
    assert port_open(ports.edge)
    t0 = time.monotonic()
    meter.start()
    assert time.monotonic() - t0 < 10
    assert not any(alive(pid) for pid in old.values())
    new = {p: meter.pid(p) for p in ("daemon", "edge", "api")}
    assert set(new.values()).isdisjoint(old.values())
    assert meter.ports == ports  # the orphans were ended: the ports did not move


# --- respawn loop -----------------------------------------------------------------------------


def test_respawn_loop_detected_stopped_and_retried_with_growing_backoff(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_free_ports(meter.home, watchdog="[watchdog]\nloop_exits = 3\nloop_window_s = 60\n")
    # crashes 2.5 s after start: past startsecs=2, so supervisord alone would respawn forever
    monkeypatch.setenv("HALTON_METER_TEST_CMD_DAEMON", standin("daemon", "--crash-after", "2.5"))
    control.spawn_entry(meter.home)

    def history(event: str) -> list[dict[str, Any]]:
        return [
            h
            for h in meter.state().get("history", [])
            if h["program"] == "daemon" and h["event"] == event
        ]

    wait_until(lambda: len(history("start")) >= 2, timeout=70, interval=0.5, what="two retries")
    stops = [h for h in history("stop") if h["cause"] == "watchdog.respawn_loop"]
    starts = history("start")
    assert len(stops) >= 2
    assert starts[0]["t"] - stops[0]["t"] >= 5.0 - 0.1
    assert starts[1]["t"] - stops[1]["t"] >= 10.0 - 0.1
    assert starts[1]["t"] - stops[1]["t"] < 10.0 + 3
    # between a stop and its retry supervisord spawned nothing: no endless restart
    spawns = [
        line
        for line in meter.home.supervisord_log.read_text().splitlines()
        if "spawned: 'daemon'" in line
    ]
    assert len(spawns) <= 3 * (len(stops) + 1) + 1
    log = meter.watchdog_log()
    assert '"event": "watchdog.respawn_loop"' in log
    assert "exits=3 window_s=60.0" in log
    cause = meter.state()["last_cause"]
    assert cause["program"] == "daemon"
    assert meter.state()["exits"]["daemon"] >= 6


# --- ports ------------------------------------------------------------------------------------


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4)
    return sock


def test_port_held_by_a_foreign_listener_at_start_is_renegotiated(meter: Meter) -> None:
    previous = previous_ports(meter.home)
    foreign = _listen(previous.edge)
    try:
        meter.start()
        ports = meter.ports
        assert ports.edge != previous.edge
        saved = json.loads(meter.home.effective_ports.read_text())["ports"]
        assert saved["edge"] == ports.edge
        assert tomllib.loads(meter.home.runtime.read_text())["ports"]["edge"] == ports.edge
        assert port_open(ports.edge)
    finally:
        foreign.close()


def test_port_taken_while_running_is_renegotiated_by_the_watchdog(meter: Meter) -> None:
    previous = previous_ports(meter.home)
    meter.start()
    wait_until(meter.all_running, timeout=10, what="all RUNNING")
    edge_pid = meter.pid("edge")
    proxy = supervisor_proxy(meter.home, timeout=30).supervisor
    proxy.stopProcess("daemon", True)
    foreign = _listen(previous.daemon)
    try:
        proxy.startProcess("daemon", False)  # cannot bind: exits, BACKOFF
        wait_until(
            lambda: meter.ports.daemon != previous.daemon,
            timeout=15,
            what="daemon port renegotiated",
        )
        new = meter.ports
        wait_until(meter.answers, timeout=10, what="everything answers on the new ports")
        assert json.loads(meter.home.effective_ports.read_text())["ports"]["daemon"] == new.daemon
        # the edge forwards to the daemon: it was restarted too
        wait_until(lambda: meter.infos()["edge"].pid not in (None, edge_pid), timeout=10)
        entry = meter.state()["ports_renegotiated"][-1]
        assert entry["old"]["daemon"] == previous.daemon and entry["new"]["daemon"] == new.daemon
        assert "ports.renegotiated" in meter.watchdog_log()
    finally:
        foreign.close()


# --- environment ------------------------------------------------------------------------------


def test_proxy_variables_are_scrubbed_from_every_program(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = pin_free_ports(meter.home)
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{ports.edge}")
        monkeypatch.setenv(var.lower(), f"http://127.0.0.1:{ports.edge}")
    meter.start()
    wait_until(meter.all_running, timeout=10, what="all RUNNING")
    pids = [supervisord_pid(meter.home)] + [
        meter.pid(p) for p in ("daemon", "edge", "api", "watchdog")
    ]
    for pid in pids:
        assert pid
        env = environ(pid)
        assert not {k for k in env if k.upper() in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")}
        assert env["HALTON_METER_HOME"] == str(meter.home.root)
    # the watchdog checked the programs' environments and found nothing to report
    wait_until(lambda: "recursion" in meter.state(), timeout=10, what="recursion checked")
    assert meter.state()["recursion"] == []


def test_injected_proxy_recursion_is_reported(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = pin_free_ports(meter.home)
    monkeypatch.setenv(
        "HALTON_METER_TEST_CMD_EDGE",
        f"/usr/bin/env HTTPS_PROXY=http://127.0.0.1:{ports.edge} " + standin("edge"),
    )
    meter.start()
    found: list[dict[str, Any]] = wait_until(
        lambda: meter.state().get("recursion") or [], timeout=15, what="recursion"
    )
    assert found[0]["program"] == "edge" and found[0]["var"] == "HTTPS_PROXY"
    assert "watchdog.proxy_recursion" in meter.watchdog_log()
    assert meter.state()["last_cause"]["cause"] == "watchdog.proxy_recursion"


def test_allow_non_loopback_given_to_start_reaches_the_programs(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_free_ports(meter.home)
    monkeypatch.setenv("HALTON_METER_ALLOW_NON_LOOPBACK", "1")
    meter.start()
    for program in ("daemon", "edge", "api"):
        assert environ(meter.pid(program)).get("HALTON_METER_ALLOW_NON_LOOPBACK") == "1"
    assert 'HALTON_METER_ALLOW_NON_LOOPBACK="1"' in meter.home.supervisord_conf.read_text()


# --- healing ----------------------------------------------------------------------------------


def test_placeholder_base_url_is_healed_once_before_start(meter: Meter) -> None:
    pin_free_ports(meter.home, cloud='[cloud]\nbase_url = "https://api.haltonmeter.test"\n')
    meter.start()
    assert f'base_url = "{DEFAULT_BASE_URL}"' in meter.home.config.read_text()
    control.stop(meter.home)
    meter.start()
    log = meter.home.supervisord_log.read_text()
    assert log.count('"event": "config.base_url.healed"') == 1
    assert "api.haltonmeter.test" in log


def test_corrupt_state_files_and_stale_socket_are_healed(meter: Meter) -> None:
    ports = pin_free_ports(meter.home)
    meter.home.ensure()
    meter.home.effective_ports.write_text('{"ports": {"edge": "nope"')
    meter.home.runtime.write_text("ports = [[[ not toml")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(meter.home.socket))
    stale.close()  # the file stays: nobody answers on it
    meter.home.supervisord_pid.write_text("999999\n")
    assert meter.home.socket.exists()
    meter.start()
    assert json.loads(meter.home.effective_ports.read_text())["ports"] == ports.as_dict()
    assert tomllib.loads(meter.home.runtime.read_text())["ports"] == ports.as_dict()
    assert supervisord_pid(meter.home) == int(meter.home.supervisord_pid.read_text())
    assert list(meter.home.root.glob("effective-ports.json.corrupt-*"))


def test_unattended_recovery_after_a_simulated_reboot(meter: Meter) -> None:
    ports = pin_free_ports(meter.home)
    meter.start()
    wait_until(meter.all_running, timeout=10, what="all RUNNING")
    for proc in our_processes(meter.home):  # power cut: everything gone at once
        proc.send_signal(signal.SIGKILL)
    wait_until(lambda: not our_processes(meter.home), timeout=5, what="all dead")
    for child in meter.home.run_dir.iterdir():  # tmpfs-like run dir: emptied by the reboot
        child.unlink()
    assert meter.home.effective_ports.exists() and meter.home.watchdog_state.exists()
    entry = control.spawn_entry(meter.home)  # what the unit runs at boot: no human step
    wait_until(meter.answers, timeout=15, what="everything answers after the reboot")
    assert meter.ports == ports
    assert entry.poll() is None  # it became supervisord (exec)
    assert supervisord_pid(meter.home) == entry.pid


# --- config reload ----------------------------------------------------------------------------


def test_config_edits_invalid_refused_valid_applied_live(meter: Meter) -> None:
    pin_free_ports(meter.home)
    meter.start()
    daemon_pid = meter.pid("daemon")
    original = meter.home.config.read_text()
    edits = iter(range(1000))

    def refused() -> bool:
        # rewritten until seen: the watcher arms a moment after the watchdog starts
        meter.home.config.write_text(
            original + f"# edit {next(edits)}\n[capture]\nbody_max_bytes = -5\n"
        )
        return "config.reload_refused" in meter.watchdog_log()

    wait_until(refused, timeout=15, interval=0.5, what="refusal logged")
    cause: dict[str, str] = wait_until(
        lambda: meter.state().get("last_cause") or {}, timeout=5, what="cause saved"
    )
    assert cause["cause"] == "config.reload_refused" and "body_max_bytes" in cause["error"]
    meter.home.config.write_text(original + "[capture]\nbody_max_bytes = 1024\n")
    hup = meter.home.root / "daemon.hup"
    wait_until(hup.exists, timeout=10, what="daemon got SIGHUP")
    assert meter.pid("daemon") == daemon_pid  # applied live, not restarted


# --- liveness ---------------------------------------------------------------------------------


def test_wedged_program_is_restarted_by_liveness_probes(
    meter: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_free_ports(meter.home)
    monkeypatch.setenv("HALTON_METER_TEST_CMD_API", standin("api", "--hang-after", "6"))
    meter.start()
    api_pid = meter.pid("api")
    wait_until(
        lambda: meter.state().get("last_action", {}).get("cause") == "watchdog.liveness_restart",
        timeout=30,
        interval=0.5,
        what="liveness restart",
    )
    assert meter.infos()["api"].pid != api_pid
    assert "watchdog.liveness_restart" in meter.watchdog_log()


# --- the real programs ------------------------------------------------------------------------


def test_real_programs_start_healthy_recover_from_kill_9_and_stop_clean(real_meter: Meter) -> None:
    meter = real_meter
    ports = pin_free_ports(meter.home)
    outcome = control.start(meter.home)
    assert outcome.ok, outcome.message
    assert meter.answers()
    wait_until(meter.all_running, timeout=15, what="all RUNNING")
    for program in ("daemon", "edge", "api"):
        info = meter.infos()[program]
        assert info.pid
        env = environ(info.pid)
        assert env["HALTON_METER_HOME"] == str(meter.home.root)
        assert not {k for k in env if k.upper() in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")}
    # the watchdog's liveness probes pass against the real programs (no restart of a healthy one)
    for program in ("daemon", "edge", "api"):
        result = probe(program, getattr(ports, program))
        assert result.ok, (program, result.detail)
    victim = meter.pid("daemon")
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: meter.infos()["daemon"].pid not in (None, victim) and meter.answers(),
        timeout=20,
        what="the daemon back after kill -9",
    )
    wait_until(lambda: meter.state().get("exits", {}).get("daemon") == 1, timeout=10)
    pids = [meter.pid(p) for p in ("daemon", "edge", "api", "watchdog")]
    assert control.stop(meter.home).ok
    assert not any(alive(p) for p in pids)
    assert not port_open(ports.edge) and not port_open(ports.daemon) and not port_open(ports.api)


# --- through a service manager ----------------------------------------------------------------

_FAKE_SYSTEMCTL = """#!/bin/sh
# Stand-in for `systemctl --user`: records its argv; `start` runs the unit's ExecStart detached
# (as systemd would), `stop` sends TERM to the main pid and waits.
echo "systemctl $*" >> "{record}"
unit="{unit}"
case "$2" in
  start)
    cmd=$(sed -n 's/^ExecStart=//p' "$unit")
    setsid sh -c "exec $cmd" >> "{log}" 2>&1 < /dev/null &
    echo $! > "{pidfile}"
    ;;
  stop)
    pid=$(cat "{pidfile}" 2>/dev/null) || exit 0
    kill -TERM "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    ;;
esac
exit 0
"""


def test_start_and_stop_go_through_the_service_manager_when_installed(
    meter: Meter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from halton_meter.service import systemd

    pin_free_ports(meter.home)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "systemctl.calls"
    fake = bindir / "systemctl"
    fake.write_text(
        _FAKE_SYSTEMCTL.format(
            record=record,
            unit=systemd.unit_path(),
            log=meter.home.root / "supervisord.log",
            pidfile=tmp_path / "main.pid",
        )
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    systemd.install_unit(meter.home)
    assert control.service_manager(meter.home) is systemd
    meter.start()
    assert "systemctl --user start halton-meter.service" in record.read_text().splitlines()
    main_pid = int((tmp_path / "main.pid").read_text())
    assert supervisord_pid(meter.home) == main_pid  # the unit's ExecStart became supervisord
    # the bind-guard override given to start persists into the unit
    monkeypatch.setenv("HALTON_METER_ALLOW_NON_LOOPBACK", "1")
    assert control.start(meter.home).already
    assert control.stop(meter.home).ok
    assert "systemctl --user stop halton-meter.service" in record.read_text().splitlines()
    assert not our_processes(meter.home)
    meter.start()
    assert "Environment=HALTON_METER_ALLOW_NON_LOOPBACK=1" in systemd.unit_path().read_text()
    assert environ(meter.pid("daemon")).get("HALTON_METER_ALLOW_NON_LOOPBACK") == "1"


def test_supervise_entry_refuses_a_second_supervisord(meter: Meter) -> None:
    pin_free_ports(meter.home)
    meter.start()
    done = subprocess.run(
        [PYTHON, "-m", "halton_meter", "supervise"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "already running" in done.stdout
    assert (
        len([p for p in our_processes(meter.home) if "supervisord" in " ".join(p.cmdline())]) == 1
    )


def test_start_while_running_starts_what_is_down(meter: Meter) -> None:
    pin_free_ports(meter.home)
    meter.start()
    supervisor_proxy(meter.home, timeout=30).supervisor.stopProcess("api", True)
    assert not meter.answers()
    outcome = control.start(meter.home)
    assert outcome.ok and outcome.already and "started api" in outcome.message
    assert meter.answers()


def test_start_with_an_invalid_config_says_why_at_once(meter: Meter) -> None:
    meter.home.config.write_text("listen_host = [1, 2\n")
    t0 = time.monotonic()
    outcome = control.start(meter.home)
    assert not outcome.ok and time.monotonic() - t0 < 15
    assert (
        "config.toml" in outcome.message
        and "supervise entry exited with status 3" in outcome.message
    )
    assert program_infos(meter.home) is None


def test_kill_9_of_supervisord_then_stop_leaves_no_orphan(meter: Meter) -> None:
    ports = pin_free_ports(meter.home)
    meter.start()
    wait_until(meter.all_running, timeout=10, what="all RUNNING")
    children = [meter.pid(p) for p in ("daemon", "edge", "api", "watchdog")]
    sv = supervisord_pid(meter.home)
    assert sv
    os.kill(sv, signal.SIGKILL)
    wait_until(lambda: program_infos(meter.home) is None, timeout=5, what="supervisord gone")
    outcome = control.stop(meter.home)
    assert outcome.ok and "orphan" in outcome.message
    assert not any(alive(pid) for pid in children)
    assert not our_processes(meter.home) and not port_open(ports.edge)

"""Watchdog pieces without supervisord: exit counting, the main step with a fake RPC,
recursion, registration, probes, config plans, port dependents."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from halton_watchdog import loop_detector as ld
from halton_watchdog.config_watch import catches_sighup, plan_for
from halton_watchdog.exits import EXITED, GAVE_UP, STOPPED, LogTail, PollCounter, parse_line
from halton_watchdog.main import Watchdog
from halton_watchdog.ports import to_restart
from halton_watchdog.probes import LivenessTracker, ProbeResult, probe_api, probe_proxy
from halton_watchdog.recursion import own_registration, points_at, proxy_recursion
from hmtest import free_port

from halton_meter.core.config import load_config
from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts
from halton_meter.service.watchdog_state import read_watchdog_state


def _line(name: str, kind: str = "exited", detail: str = "exit status 1; not expected") -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()) + ",123"
    return f"{stamp} WARN {kind}: {name} ({detail})\n"


# --- exit counting from supervisord's log ------------------------------------------------


def test_parse_line_kinds() -> None:
    exited = parse_line("2026-12-04 20:25:57,408 WARN exited: daemon (exit status 3; not expected)")
    assert exited and exited.kind == EXITED and exited.program == "daemon" and not exited.expected
    killed = parse_line(
        "2026-12-04 20:25:57,408 WARN exited: edge (terminated by SIGKILL; not expected)"
    )
    assert killed and killed.kind == EXITED and killed.program == "edge"
    stopped = parse_line("2026-12-04 20:26:02,882 INFO stopped: daemon (exit status 0)")
    assert stopped and stopped.kind == STOPPED
    fatal = parse_line(
        "2026-12-04 20:26:02,882 INFO gave up: api entered FATAL state, too many start retries too quickly"
    )
    assert fatal and fatal.kind == GAVE_UP and fatal.program == "api"
    assert parse_line("2026-12-04 20:21:57,378 INFO spawned: 'daemon' with pid 9652") is None
    assert exited.at == pytest.approx(time.mktime((2026, 12, 4, 20, 25, 57, 0, 0, -1)) + 0.408)


def test_log_tail_counts_every_exit_even_many_between_reads(tmp_path: Path) -> None:
    log = tmp_path / "supervisord.log"
    log.write_text("2026-12-04 20:21:57,378 INFO old line\n" + _line("daemon"))
    tail = LogTail(log)
    tail.start_at_end()
    assert tail.read_events() == []
    with log.open("a") as fh:
        for _ in range(7):  # seven exits between two polls
            fh.write(_line("daemon"))
        fh.write(_line("edge"))
        fh.write(_line("api")[:20])  # a half-written line is not read yet
    events = tail.read_events() or []
    assert [e.program for e in events] == ["daemon"] * 7 + ["edge"]
    with log.open("a") as fh:
        fh.write(_line("api")[20:])
    assert [e.program for e in tail.read_events() or []] == ["api"]


def test_log_tail_starts_after_this_supervisords_start(tmp_path: Path) -> None:
    log = tmp_path / "supervisord.log"
    start = "2026-12-04 20:21:56,375 INFO supervisord started with pid {}\n"
    log.write_text(start.format(7) + _line("edge") + start.format(9) + _line("api"))
    tail = LogTail(log)
    tail.start_after("supervisord started with pid 9")
    assert [e.program for e in tail.read_events() or []] == ["api"]
    other = LogTail(log)
    other.start_after("supervisord started with pid 12345")  # not found: from the end
    assert other.read_events() == []


def test_log_tail_follows_rotation_and_resumes_from_position(tmp_path: Path) -> None:
    log = tmp_path / "supervisord.log"
    log.write_text(_line("daemon"))
    tail = LogTail(log)
    assert len(tail.read_events() or []) == 1
    log.rename(tmp_path / "supervisord.log.1")
    log.write_text(_line("edge") + _line("edge"))
    assert [e.program for e in tail.read_events() or []] == ["edge", "edge"]
    resumed = LogTail(log, **tail.position())
    with log.open("a") as fh:
        fh.write(_line("api"))
    assert [e.program for e in resumed.read_events() or []] == ["api"]
    assert LogTail(tmp_path / "missing.log").read_events() is None


def test_poll_counter_sees_a_new_start_as_an_exit() -> None:
    counter = PollCounter()
    base = {"name": "daemon", "start": 100, "stop": 0, "pid": 10, "now": 101}
    assert counter.observe([base]) == []
    assert counter.observe([base]) == []
    events = counter.observe([{**base, "start": 105, "stop": 104, "pid": 11}])
    assert [(e.program, e.at) for e in events] == [("daemon", 104.0)]


# --- the main step against a fake supervisord ---------------------------------------------


class FakeRPC:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.states = {n: "RUNNING" for n in ("daemon", "edge", "api", "watchdog")}
        self.already_started_once = False
        self.pids: dict[str, int] = {}
        self.started = int(time.time()) - 100

    def getPID(self) -> int:  # noqa: N802 - XML-RPC name
        return 1

    def getAllProcessInfo(self) -> list[dict[str, Any]]:  # noqa: N802
        now = int(time.time())
        return [
            {
                "name": n,
                "statename": s,
                "pid": self.pids.get(n, 0),
                "start": self.started,
                "stop": 0,
                "now": now,
            }
            for n, s in self.states.items()
        ]

    def stopProcess(self, name: str, wait: bool) -> bool:  # noqa: N802
        self.calls.append(("stop", name))
        self.states[name] = "STOPPED"
        return True

    def startProcess(self, name: str, wait: bool) -> bool:  # noqa: N802
        self.calls.append(("start", name))
        if self.already_started_once:
            self.already_started_once = False
            raise xmlrpc.client.Fault(60, "ALREADY_STARTED: " + name)
        self.states[name] = "RUNNING"
        return True

    def signalProcess(self, name: str, sig: str) -> bool:  # noqa: N802
        self.calls.append(("signal", name, sig))
        return True


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _watchdog(hm_home: Path, rpc: FakeRPC, clock: Clock) -> Watchdog:
    (hm_home / "config.toml").write_text("[watchdog]\nloop_exits = 3\nloop_window_s = 60\n")
    home = Home.resolve()
    home.ensure()
    # an older session's exits, then this supervisord's start: counting begins after it
    home.supervisord_log.write_text(
        _line("daemon") * 4 + "2026-12-04 20:21:56,375 INFO supervisord started with pid 1\n"
    )
    return Watchdog(
        home, rpc=rpc, clock=clock, prober=lambda n, p: ProbeResult(True), watch_files=False
    )


def test_watchdog_counts_burst_of_exits_detects_loop_stops_and_retries_with_backoff(
    hm_home: Path,
) -> None:
    rpc, clock = FakeRPC(), Clock()
    dog = _watchdog(hm_home, rpc, clock)
    home = Home.resolve()
    with home.supervisord_log.open("a") as fh:
        fh.write(_line("daemon") + _line("daemon") + _line("edge") + _line("daemon"))
    dog.step()
    state = read_watchdog_state(home)
    assert state["exits"] == {"daemon": 3, "edge": 1}
    assert rpc.calls == [("stop", "daemon")]
    assert dog.detectors["daemon"].state == ld.COOLDOWN
    assert state["last_cause"]["cause"] == "watchdog.respawn_loop"
    assert state["last_cause"]["program"] == "daemon" and state["last_cause"]["exits"] == 3
    assert state["programs"]["daemon"]["loop_state"] == ld.COOLDOWN
    clock.t += 4.9
    dog.step()
    assert rpc.calls == [("stop", "daemon")]  # still cooling down: no spinning
    clock.t += 0.2
    rpc.already_started_once = True  # BACKOFF: ALREADY_STARTED -> stop, then start
    rpc.states["daemon"] = "BACKOFF"
    dog.step()
    assert rpc.calls[1:] == [("start", "daemon"), ("stop", "daemon"), ("start", "daemon")]
    assert read_watchdog_state(home)["last_action"]["action"] == "start"
    # it loops again: the second cooldown is twice as long
    with home.supervisord_log.open("a") as fh:
        fh.write(_line("daemon") * 3)
    dog.step()
    assert dog.detectors["daemon"].retry_at == pytest.approx(clock.t + 10.0)


def test_a_restarted_watchdog_still_retries_what_the_previous_one_stopped(hm_home: Path) -> None:
    rpc, clock = FakeRPC(), Clock()
    dog = _watchdog(hm_home, rpc, clock)
    with Home.resolve().supervisord_log.open("a") as fh:
        fh.write(_line("edge") * 3)
    dog.step()
    assert rpc.calls == [("stop", "edge")]
    dog = Watchdog(
        Home.resolve(),
        rpc=rpc,
        clock=clock,
        prober=lambda n, p: ProbeResult(True),
        watch_files=False,
    )
    assert dog.detectors["edge"].state == ld.COOLDOWN and dog.detectors["edge"].attempt == 1
    clock.t += 5.1
    dog.step()
    assert rpc.calls == [("stop", "edge"), ("start", "edge")]


def test_retry_leaves_a_program_someone_already_started_alone(hm_home: Path) -> None:
    rpc, clock = FakeRPC(), Clock()
    dog = _watchdog(hm_home, rpc, clock)
    with Home.resolve().supervisord_log.open("a") as fh:
        fh.write(_line("api") * 3)
    dog.step()
    rpc.states["api"] = "RUNNING"  # the user ran `halton-meter start` meanwhile
    rpc.already_started_once = True
    clock.t += 5.1
    dog.step()
    assert rpc.calls == [("stop", "api"), ("start", "api")]


def test_watchdog_requested_stops_are_not_crashes(hm_home: Path) -> None:
    rpc, clock = FakeRPC(), Clock()
    dog = _watchdog(hm_home, rpc, clock)
    with Home.resolve().supervisord_log.open("a") as fh:
        fh.write(_line("daemon", "stopped", "exit status 0") * 5)
    dog.step()
    state = read_watchdog_state(Home.resolve())
    assert state["stops"] == {"daemon": 5} and state["exits"] == {}
    assert rpc.calls == []


def test_watchdog_liveness_restart_after_three_failures(hm_home: Path) -> None:
    rpc, clock = FakeRPC(), Clock()
    dog = _watchdog(hm_home, rpc, clock)
    dog.prober = lambda name, port: ProbeResult(name != "api", "no answer")
    for _ in range(3):
        clock.t += 2.1
        dog.step()
    assert ("stop", "api") in rpc.calls and ("start", "api") in rpc.calls
    assert not any(c[1] in ("edge", "daemon") for c in rpc.calls)
    state = read_watchdog_state(Home.resolve())
    assert state["last_action"] == {
        **state["last_action"],
        "program": "api",
        "cause": "watchdog.liveness_restart",
    }


def _child(catch_hup: bool) -> subprocess.Popen[str]:
    code = (
        "import signal, sys, time\n"
        + ("signal.signal(signal.SIGHUP, lambda *a: None)\n" if catch_hup else "")
        + "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout and child.stdout.readline().strip() == "ready"
    return child


def test_catches_sighup_reads_the_kernel() -> None:
    with_handler, without = _child(True), _child(False)
    try:
        assert catches_sighup(with_handler.pid) is True
        assert catches_sighup(without.pid) is False
        assert catches_sighup(2**22 + 12345) is False
    finally:
        for child in (with_handler, without):
            child.kill()
            child.wait()


def test_watchdog_config_reload_refused_then_live_sighup_or_restart(hm_home: Path) -> None:
    rpc, clock = FakeRPC(), Clock()
    dog = _watchdog(hm_home, rpc, clock)
    home = Home.resolve()
    home.config.write_text("[capture]\nbody_max_bytes = 'huge'\n")
    dog._apply_changes({"config"})
    assert dog.state["last_cause"]["cause"] == "config.reload_refused"
    assert "body_max_bytes" in dog.state["last_cause"]["error"]
    assert dog.config.capture.body_max_bytes == 4194304  # running config kept
    assert rpc.calls == []
    daemon = _child(catch_hup=True)
    try:
        rpc.pids["daemon"] = daemon.pid
        home.config.write_text("[watchdog]\nloop_exits = 3\n[capture]\nbody_max_bytes = 1024\n")
        dog._apply_changes({"config"})
        assert rpc.calls == [("signal", "daemon", "HUP")]
        assert dog.config.capture.body_max_bytes == 1024
    finally:
        daemon.kill()
        daemon.wait()
    daemon = _child(catch_hup=False)  # SIGHUP would kill this one: restarted instead
    try:
        rpc.pids["daemon"] = daemon.pid
        rpc.calls.clear()
        home.config.write_text("[watchdog]\nloop_exits = 3\n[capture]\nbody_max_bytes = 2048\n")
        dog._apply_changes({"config"})
        assert rpc.calls == [("stop", "daemon"), ("start", "daemon")]
        assert daemon.poll() is None
    finally:
        daemon.kill()
        daemon.wait()


# --- recursion and registration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "hit"),
    [
        ("http://127.0.0.1:8081", True),
        ("http://localhost:8081/", True),
        ("127.0.0.1:8081", True),
        ("http://[::1]:8081", True),
        ("http://127.0.0.2:8081", True),
        ("http://127.0.0.1:8090", False),
        ("http://proxy.corp:8081", False),
        ("not a url at all", False),
    ],
)
def test_points_at_edge(value: str, hit: bool) -> None:
    assert points_at(value, 8081) is hit


def test_proxy_recursion_both_cases() -> None:
    env = {"https_proxy": "http://127.0.0.1:8081", "HTTP_PROXY": "http://10.0.0.1:3128", "X": "y"}
    assert proxy_recursion(env, 8081) == [("https_proxy", "http://127.0.0.1:8081")]


def test_own_registration_recognised() -> None:
    assert own_registration({"XPC_SERVICE_NAME": "com.haltonlabs.meter"}) == "launchd"
    assert own_registration({"XPC_SERVICE_NAME": "com.other.thing"}, cgroup="") is None
    assert (
        own_registration({"SUPERVISOR_ENABLED": "1", "SUPERVISOR_PROCESS_NAME": "daemon"})
        == "supervisord"
    )
    cgroup = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/halton-meter.service\n"
    assert own_registration({"INVOCATION_ID": "abc"}, cgroup=cgroup) == "systemd"
    assert own_registration({"INVOCATION_ID": "abc"}, cgroup="0::/other.service") is None


# --- probes against real sockets ----------------------------------------------------------


def _server(handler: Any) -> tuple[int, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def loop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1], srv


def test_probe_proxy_alive_dead_and_wedged() -> None:
    def answer(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    def wedged(conn: socket.socket) -> None:
        time.sleep(5)

    port, srv = _server(answer)
    assert probe_proxy(port).ok
    srv.close()
    assert not probe_proxy(free_port()).ok
    port2, srv2 = _server(wedged)
    result = probe_proxy(port2, timeout=0.5)
    assert not result.ok and "no answer" in result.detail
    srv2.close()


def test_probe_api_health() -> None:
    def health(conn: socket.socket) -> None:
        request = conn.recv(1024)
        status = b"200 OK" if request.startswith(b"GET /health ") else b"404 Not Found"
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
        conn.close()

    port, srv = _server(health)
    assert probe_api(port).ok
    srv.close()
    assert not probe_api(free_port()).ok


def test_liveness_tracker_needs_consecutive_failures() -> None:
    tracker = LivenessTracker(threshold=3)
    bad, good = ProbeResult(False), ProbeResult(True)
    assert [tracker.record("edge", r) for r in (bad, bad, good, bad, bad)] == [False] * 5
    assert tracker.record("edge", bad) is True


# --- plans ---------------------------------------------------------------------------------


def test_config_plan(hm_home: Path) -> None:
    home = Home.resolve()
    base = load_config(home)
    home.config.write_text('[upstream]\nresolve = { "api.anthropic.com:443" = "127.0.0.1:9443" }\n')
    assert plan_for(base, load_config(home)).signal_hup == ("daemon",)
    home.config.write_text('listen_host = "localhost"\n')
    plan = plan_for(base, load_config(home))
    assert plan.restart == ("daemon", "edge") and plan.signal_hup == ()
    home.config.write_text(f"[ports]\napi = {free_port()}\n")
    assert plan_for(base, load_config(home)).renegotiate


def test_restart_dependents() -> None:
    old = EffectivePorts(8081, 8090, 8765)
    assert to_restart(old, EffectivePorts(8081, 8091, 8765)) == ("daemon", "edge")
    assert to_restart(old, EffectivePorts(8082, 8090, 8765)) == ("edge",)
    assert to_restart(old, EffectivePorts(8081, 8090, 8766)) == ("api",)
    assert to_restart(old, old) == ()


def test_watchdog_state_reader_tolerates_corruption(hm_home: Path) -> None:
    home = Home.resolve()
    assert read_watchdog_state(home) == {}
    home.watchdog_state.write_text("{not json")
    assert read_watchdog_state(home) == {}
    home.watchdog_state.write_text(json.dumps({"exits": {"edge": 2}}))
    assert read_watchdog_state(home)["exits"] == {"edge": 2}
    assert os.environ["HALTON_METER_HOME"] == str(hm_home)


def test_old_exits_from_a_previous_session_are_counted_but_never_loop(hm_home: Path) -> None:
    rpc, clock = FakeRPC(), Clock()
    dog = _watchdog(hm_home, rpc, clock)
    old = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 3600))
    with Home.resolve().supervisord_log.open("a") as fh:
        for i in range(6):
            fh.write(f"{old},{i:03d} WARN exited: daemon (exit status 1; not expected)\n")
    dog.step()
    assert dog.state["exits"]["daemon"] == 6
    assert rpc.calls == [] and dog.detectors["daemon"].state == ld.STABLE


def test_watchdog_falls_back_to_polling_when_the_log_is_unreadable(hm_home: Path) -> None:
    rpc, clock = FakeRPC(), Clock()
    dog = _watchdog(hm_home, rpc, clock)
    dog.step()
    Home.resolve().supervisord_log.unlink()
    base = rpc.getAllProcessInfo

    def restarted() -> list[dict[str, Any]]:
        return [{**i, "start": i["start"] + 50} if i["name"] == "edge" else i for i in base()]

    rpc.getAllProcessInfo = restarted  # type: ignore[method-assign]
    dog.step()
    assert dog.state["exits"] == {"edge": 1}

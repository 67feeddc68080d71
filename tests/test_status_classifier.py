"""The status classifier, one real situation per reason.

Sockets, files, processes and environments are real; only supervisord's answer
(``program_infos``) is a stand-in here: end-to-end status with a real supervisord lives with
the supervision tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hmtest import free_port

from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, save_effective_ports, update_runtime
from halton_meter.doctor import report
from halton_meter.doctor.status import (
    BROKEN,
    HEALTHY,
    INCONSISTENT,
    Reason,
    exit_code,
    fold,
)
from halton_meter.service.rpc import ProgramInfo

PROGRAMS = ("daemon", "edge", "api", "watchdog")


# A pid no process has: supervisord's answer names programs that are no ancestors of ours.
_NO_SUCH_PID = 4_194_303


def _running(pid: int = _NO_SUCH_PID, **states: str) -> Callable[[Home], dict[str, ProgramInfo]]:
    def infos(_home: Home) -> dict[str, ProgramInfo]:
        return {
            name: ProgramInfo(
                state=states.get(name, "RUNNING"),
                pid=pid if states.get(name, "RUNNING") == "RUNNING" else None,
                uptime_s=12.0 if states.get(name, "RUNNING") == "RUNNING" else None,
                restarts=0,
                exitstatus=1 if states.get(name, "RUNNING") != "RUNNING" else None,
            )
            for name in PROGRAMS
        }

    return infos


def _unreachable(_home: Home) -> None:
    return None


@pytest.fixture(autouse=True)
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's HOME (rc files, environment.d) is a fresh directory: never the real one."""
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home


class Setup:
    """A started home: negotiated ports, real listeners held by this (our) process."""

    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        self.ports = EffectivePorts(edge=free_port(), daemon=free_port(), api=free_port())
        save_effective_ports(self.home, self.ports)
        self.sockets: dict[str, socket.socket] = {}

    def listen(self, *roles: str) -> Setup:
        for role in roles:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", getattr(self.ports, role)))
            s.listen(16)
            self.sockets[role] = s
        return self

    def close(self, role: str) -> None:
        self.sockets.pop(role).close()

    def status(
        self,
        infos: Callable[[Home], dict[str, ProgramInfo] | None] | None = None,
        env: dict[str, str] | None = None,
    ) -> dict:
        return report.build_status(
            self.home,
            client_env=env if env is not None else {"HOME": str(self.home.root)},
            program_infos=infos or _running(),
        )


@pytest.fixture
def setup(hm_home: Path) -> Iterator[Setup]:
    s = Setup(hm_home)
    try:
        yield s
    finally:
        for sock in s.sockets.values():
            sock.close()


def _ids(doc: dict) -> list[str]:
    return [r["id"] for r in doc["reasons"]]


def _reason(doc: dict, rid: str) -> dict:
    return next(r for r in doc["reasons"] if r["id"] == rid)


# -- the fold ------------------------------------------------------------------------------


def test_fold_takes_the_most_severe_reason() -> None:
    inc = Reason("a", "drift", INCONSISTENT)
    brk = Reason("b", "down", BROKEN)
    assert fold([]) == HEALTHY
    assert fold([inc]) == INCONSISTENT
    assert fold([inc, brk, inc]) == BROKEN
    assert [exit_code(s) for s in (HEALTHY, INCONSISTENT, BROKEN)] == [0, 1, 2]
    with pytest.raises(ValueError):
        Reason("c", "healthy is not a reason", HEALTHY)
    # A reason from the API we cannot read never makes things look healthier.
    assert Reason.from_dict({"id": "x", "message": "m", "severity": "weird"}).severity == BROKEN


# -- HEALTHY -------------------------------------------------------------------------------


def test_started_without_init_is_a_healthy_env_only_setup(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    doc = setup.status()
    assert doc["state"] == HEALTHY, doc["reasons"]
    assert doc["reasons"] == []
    assert doc["install_mode"] == "env-only"
    assert doc["ports"] == setup.ports.as_dict()
    assert doc["programs"]["daemon"] == {
        "state": "RUNNING",
        "pid": _NO_SUCH_PID,
        "uptime_s": 12.0,
        "restarts": 0,
    }
    assert doc["unmetered"] == 0


def test_an_env_only_sentinel_is_healthy(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    setup.home.install_mode.write_text("env-only\n")
    doc = setup.status()
    assert doc["state"] == HEALTHY and doc["install_mode"] == "env-only"


def test_apps_mode_with_its_surfaces_in_place_is_healthy(setup: Setup, user_home: Path) -> None:
    from halton_meter.core.config import load_config
    from halton_meter.install.env import client_env
    from halton_meter.platform.session_env import EnvironmentDSessionEnv

    setup.listen("edge", "daemon", "api")
    setup.home.install_mode.write_text("apps\n")
    _write_rc_block(setup.home, user_home, setup.ports.edge)
    EnvironmentDSessionEnv().apply(client_env(setup.home, load_config(setup.home), setup.ports))
    doc = setup.status()
    assert doc["state"] == HEALTHY, doc["reasons"]
    assert doc["install_mode"] == "apps"
    # The same home with the session environment gone: the sentinel disagrees with a surface.
    EnvironmentDSessionEnv().clear()
    drifted = setup.status()
    assert drifted["state"] == INCONSISTENT
    assert _ids(drifted) == ["mode_drift.session-env"]


# -- BROKEN --------------------------------------------------------------------------------


def test_never_started(hm_home: Path) -> None:
    doc = report.build_status(Home(hm_home), client_env={}, program_infos=_unreachable)
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["not_running"]
    assert "never started" in doc["reasons"][0]["message"]
    assert doc["reasons"][0]["fix"] == "halton-meter start"
    assert doc["programs"] == {}
    assert not (hm_home / "runtime.toml").exists()  # status writes nothing


def test_stopped_by_the_user_is_not_running(setup: Setup) -> None:
    update_runtime(setup.home, state="stopped")
    doc = setup.status(_unreachable)
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["not_running"]
    assert "stopped" in doc["reasons"][0]["message"]
    assert doc["reasons"][0]["fix"] == "halton-meter start"


def test_supervisord_gone_while_started(setup: Setup) -> None:
    setup.home.run_dir.mkdir(parents=True, exist_ok=True)
    # kill -9 of supervisord leaves its socket file behind; nothing answers on it.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(setup.home.socket))
    stale.close()
    doc = setup.status(_unreachable)
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["supervisord_unreachable"]
    assert str(setup.home.socket) in doc["reasons"][0]["message"]


def test_supervisord_gone_while_runtime_says_started(setup: Setup) -> None:
    update_runtime(setup.home, state="started")
    doc = setup.status(_unreachable)
    assert _ids(doc) == ["supervisord_unreachable"]


def test_program_down(setup: Setup) -> None:
    setup.listen("edge", "api")
    doc = setup.status(_running(daemon="BACKOFF"))
    assert doc["state"] == BROKEN
    assert "program_down.daemon" in _ids(doc)
    reason = _reason(doc, "program_down.daemon")
    assert "BACKOFF" in reason["message"] and "exit status 1" in reason["message"]
    assert "daemon.err.log" in reason["fix"]
    assert doc["programs"]["daemon"]["state"] == "BACKOFF"


def test_respawn_loop_from_the_watchdog(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    setup.home.watchdog_state.write_text(
        json.dumps(
            {
                "programs": {
                    "daemon": {"loop_state": "LOOPING", "window_exits": 6},
                    "edge": {"loop_state": "SUSPECT", "window_exits": 2},
                },
                "last_cause": {"program": "daemon", "cause": "bind_failed"},
                "last_action": {
                    "at": "2026-12-04T20:00:00Z",
                    "program": "daemon",
                    "action": "stop",
                },
            }
        )
    )
    doc = setup.status()
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["respawn_loop.daemon"]  # SUSPECT is not a loop yet
    assert (
        "6 exits" in doc["reasons"][0]["message"] and "bind_failed" in doc["reasons"][0]["message"]
    )
    assert doc["last_watchdog_action"]["action"] == "stop"


def test_proxy_recursion_from_the_watchdog(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    url = f"http://127.0.0.1:{setup.ports.edge}"
    setup.home.watchdog_state.write_text(
        json.dumps(
            {"recursion": [{"program": "daemon", "pid": 4242, "var": "HTTPS_PROXY", "value": url}]}
        )
    )
    doc = setup.status()
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["proxy_recursion"]
    assert f"HTTPS_PROXY={url}" in doc["reasons"][0]["message"]


@pytest.fixture
def foreign_listener() -> Iterator[Callable[[int], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(port: int) -> subprocess.Popen[str]:
        code = (
            "import socket, time\n"
            "s = socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('127.0.0.1', {port}))\n"
            "s.listen()\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_foreign_process_holds_the_edge_port(
    setup: Setup, foreign_listener: Callable[[int], subprocess.Popen[str]]
) -> None:
    setup.listen("daemon", "api")
    intruder = foreign_listener(setup.ports.edge)
    doc = setup.status()
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["port_foreign.edge"]  # it accepts, so clients connect: to the wrong thing
    reason = doc["reasons"][0]
    assert f"pid {intruder.pid}" in reason["message"]
    assert sys.executable in reason["message"]  # the command line is named
    assert f"kill {intruder.pid}" in reason["fix"]


def test_our_own_listeners_are_not_foreign(setup: Setup) -> None:
    # A child of one of our programs (the pid supervisord reports) is ours too.
    code = (
        "import socket, time\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {setup.ports.daemon}))\n"
        "s.listen()\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        setup.listen("edge", "api")
        doc = setup.status(_running(pid=os.getpid()))  # the child's parent is "a program"
        assert doc["state"] == HEALTHY, doc["reasons"]
    finally:
        child.kill()
        child.wait()


def test_clients_cannot_connect_to_the_edge(setup: Setup) -> None:
    setup.listen("daemon", "api")
    doc = setup.status()
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["edge_unreachable"]
    assert str(setup.ports.edge) in doc["reasons"][0]["message"]


def test_config_invalid_is_broken(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    setup.home.config.write_text("listen_host = [\n")
    doc = setup.status()
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["config_invalid"]
    assert "config.toml" in doc["reasons"][0]["message"]


# -- INCONSISTENT --------------------------------------------------------------------------


def test_daemon_down_and_edge_failing_open(setup: Setup) -> None:
    setup.listen("edge", "api")
    setup.home.edge_stats.write_text(json.dumps({"unmetered_total": 3, "unmetered_by_host": {}}))
    doc = setup.status()  # supervisord says RUNNING, but the daemon does not accept
    assert doc["state"] == INCONSISTENT
    assert _ids(doc) == ["failing_open"]
    assert "3 unmetered" in doc["reasons"][0]["message"]
    assert doc["unmetered"] == 3


def _edge_stats(setup: Setup, at: datetime, reachable: bool | None) -> None:
    setup.home.edge_stats.write_text(
        json.dumps(
            {
                "unmetered_total": 7,
                "last_fail_open": {
                    "host": "api.anthropic.com",
                    "reason": "daemon_unreachable",
                    "at": at.isoformat(timespec="milliseconds"),
                },
                "daemon_reachable": reachable,
            }
        )
    )


def _started(seconds_ago: float) -> Callable[[Home], dict[str, ProgramInfo]]:
    base = _running()

    def infos(home: Home) -> dict[str, ProgramInfo]:
        out = base(home)
        out["daemon"] = dataclasses.replace(out["daemon"], start=int(time.time() - seconds_ago))
        return out

    return infos


def test_edge_failing_open_while_the_daemon_looks_up(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    _edge_stats(setup, datetime.now(UTC), reachable=False)
    doc = setup.status(_started(60))
    assert doc["state"] == INCONSISTENT
    assert _ids(doc) == ["failing_open"]
    assert "api.anthropic.com" in doc["reasons"][0]["message"]
    assert "7 unmetered" in doc["reasons"][0]["message"]


def test_fail_open_before_the_daemon_restarted_is_history(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    _edge_stats(setup, datetime.now(UTC) - timedelta(hours=1), reachable=False)
    doc = setup.status(_started(60))
    assert doc["state"] == HEALTHY, doc["reasons"]
    assert doc["unmetered"] == 7  # still shown as a count
    _edge_stats(setup, datetime.now(UTC), reachable=True)  # a hand-over succeeded since
    assert setup.status(_started(60))["state"] == HEALTHY


def test_daemon_program_down_is_broken_and_also_says_failing_open(setup: Setup) -> None:
    setup.listen("edge", "api")
    doc = setup.status(_running(daemon="FATAL"))
    assert doc["state"] == BROKEN
    assert _ids(doc) == ["program_down.daemon", "failing_open"]


def test_gui_sentinel_is_inconsistent_and_init_migrates_it(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    setup.home.install_mode.write_text("gui\n")
    doc = setup.status()
    assert doc["state"] == INCONSISTENT
    assert doc["install_mode"] == "gui"
    legacy = _reason(doc, "install_mode_legacy")
    assert "migrates it to `full`" in legacy["message"]
    assert legacy["fix"].startswith("halton-meter init --full")
    # gui means full: its surfaces (none here) are drift too.
    assert all(r["severity"] == INCONSISTENT for r in doc["reasons"])


def test_garbage_sentinel_is_inconsistent(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    setup.home.install_mode.write_text("everything\n")
    doc = setup.status()
    assert doc["state"] == INCONSISTENT
    assert _ids(doc) == ["install_mode_unknown"]


def test_clients_given_a_port_the_edge_no_longer_listens_on(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    old = free_port()
    doc = setup.status(env={"HTTPS_PROXY": f"http://127.0.0.1:{old}", "HOME": str(setup.home.root)})
    assert doc["state"] == INCONSISTENT
    assert _ids(doc) == ["client_port_stale"]
    assert f"port {old}" in doc["reasons"][0]["message"]
    # The right port, or a corporate proxy elsewhere, is not drift.
    for value in (f"http://127.0.0.1:{setup.ports.edge}", "http://proxy.corp.example:3128"):
        assert setup.status(env={"https_proxy": value})["state"] == HEALTHY


def _write_rc_block(home: Home, user_home: Path, edge_port: int) -> Path:
    from halton_meter.core.config import load_config
    from halton_meter.install import rcblock
    from halton_meter.install.env import client_env

    ports = EffectivePorts(edge=edge_port, daemon=1, api=2)
    rc = user_home / ".bashrc"
    rc.write_text("alias ll='ls -l'\n")
    assert rcblock.write_block(
        rc, rcblock.render_block("bash", client_env(home, load_config(home), ports))
    )
    return rc


def test_rc_block_names_an_old_port(setup: Setup, user_home: Path) -> None:
    setup.listen("edge", "daemon", "api")
    setup.home.install_mode.write_text("apps\n")
    old = free_port()
    rc = _write_rc_block(setup.home, user_home, old)
    doc = setup.status()
    assert doc["state"] == INCONSISTENT
    ids = _ids(doc)
    assert "mode_drift.shell-rc" in ids
    messages = " ".join(r["message"] for r in doc["reasons"])
    assert f"127.0.0.1:{old}" in messages and f"127.0.0.1:{setup.ports.edge}" in messages
    assert _reason(doc, "mode_drift.shell-rc")["fix"].startswith("halton-meter init --apps")
    assert rc.read_text().startswith("alias ll")  # status only reads


def test_rc_block_left_in_env_only_mode_is_drift(setup: Setup, user_home: Path) -> None:
    setup.listen("edge", "daemon", "api")
    _write_rc_block(setup.home, user_home, setup.ports.edge)  # right port, wrong mode
    doc = setup.status()
    assert doc["state"] == INCONSISTENT
    assert _ids(doc) == ["mode_drift.shell-rc"]
    assert "env-only" in doc["reasons"][0]["message"]


def test_stale_ca_variable(setup: Setup, tmp_path: Path) -> None:
    setup.listen("edge", "daemon", "api")
    gone = tmp_path / "deleted-venv" / "lib" / "certifi" / "cacert.pem"
    present = tmp_path / "bundle.pem"
    present.write_text("-----BEGIN CERTIFICATE-----\n")
    doc = setup.status(env={"SSL_CERT_FILE": str(gone), "REQUESTS_CA_BUNDLE": str(present)})
    assert doc["state"] == INCONSISTENT
    assert _ids(doc) == ["stale_ca_variable"]
    reason = doc["reasons"][0]
    assert f"SSL_CERT_FILE={gone}" in reason["message"]
    assert "REQUESTS_CA_BUNDLE" not in reason["message"]
    assert reason["fix"].startswith("unset CURL_CA_BUNDLE SSL_CERT_FILE REQUESTS_CA_BUNDLE")


def test_cloud_paused(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    setup.home.cloud_state.write_text(json.dumps({"paused_reason": "paused_forbidden"}))
    doc = setup.status()
    assert doc["state"] == INCONSISTENT
    assert _ids(doc) == ["cloud_paused"]
    assert "do not cloud connect" in doc["reasons"][0]["fix"]


def test_corrupt_state_files_never_crash_status(setup: Setup) -> None:
    setup.listen("edge", "daemon", "api")
    for path in (setup.home.edge_stats, setup.home.cloud_state, setup.home.watchdog_state):
        path.write_bytes(b"{\x00 truncated")
    doc = setup.status()
    assert doc["state"] == HEALTHY and doc["unmetered"] == 0


# -- the API view plus the caller's checks -------------------------------------------------


def test_client_checks_are_added_to_the_api_view_and_refolded(setup: Setup, tmp_path: Path) -> None:
    setup.listen("edge", "daemon", "api")
    service_only = report.build_status(setup.home, client_env=None, program_infos=_running())
    assert service_only["state"] == HEALTHY
    env = {"CURL_CA_BUNDLE": str(tmp_path / "gone.pem")}
    merged = report.with_client_checks(setup.home, service_only, env)
    assert merged["state"] == INCONSISTENT
    assert _ids(merged) == ["stale_ca_variable"]
    assert merged["ports"] == service_only["ports"]


def test_human_rendering_names_the_reference_rows(setup: Setup) -> None:
    setup.listen("edge", "api")
    setup.home.install_mode.write_text("gui\n")
    text = report.render(setup.status(_running(daemon="BACKOFF")))
    lines = text.splitlines()
    assert lines[0].split() == ["state:", "BROKEN"]
    assert any(line.split()[:2] == ["daemon:", "BACKOFF"] for line in lines)
    assert any(line.split() == ["proxy-port:", str(setup.ports.edge)] for line in lines)
    assert any(line.split() == ["api-port:", str(setup.ports.api)] for line in lines)
    assert any(line.split() == ["install-mode:", "gui"] for line in lines)
    assert any(line.split() == ["unmetered:", "0"] for line in lines)
    assert any(line.startswith("last-watchdog-action:") for line in lines)
    assert any(line.strip().startswith("fix: halton-meter init --full") for line in lines)


def test_every_check_has_a_distinct_stable_name() -> None:
    from halton_meter.doctor.checks import CLIENT_CHECKS, SERVICE_CHECKS, check_name

    names = [check_name(c) for c in (*SERVICE_CHECKS, *CLIENT_CHECKS)]
    assert len(set(names)) == len(names)
    assert "supervisor" in names and "stale_ca" in names

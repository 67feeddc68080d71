"""Rendering (supervisord.conf, the systemd unit, the launchd plist), the unit installers
against stand-in executables, environment scrubbing and orphan matching."""

from __future__ import annotations

import configparser
import os
import plistlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hmtest import PYTHON, REPO, clean_env, wait_until

from halton_meter.core.paths import Home
from halton_meter.service import env as envmod
from halton_meter.service import launchd, systemd
from halton_meter.service.orphans import end_orphans, our_processes
from halton_meter.service.render import RenderOptions, render


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_render_absolute_paths_logs_socket_and_environment(hm_home: Path) -> None:
    home = Home.resolve()
    conf = _parse(render(home, RenderOptions(python="/opt/py/bin/python3", extra_env={})))
    assert conf["unix_http_server"]["file"] == str(hm_home / "run" / "sv.sock")
    assert conf["unix_http_server"]["chmod"] == "0700"
    assert conf["supervisord"]["logfile"] == str(hm_home / "supervisord.log")
    assert conf["supervisord"]["nodaemon"] == "true"
    expected_logs = {
        "daemon": ("daemon.out.log", "daemon.err.log"),
        "edge": ("edge.out.log", "edge.err.log"),
        "api": ("api.out.log", "api.err.log"),
        "watchdog": ("watchdog.out.log", "watchdog.err.log"),
    }
    modules = {
        "daemon": "halton_meter.daemon",
        "edge": "halton_meter.edge",
        "api": "halton_meter.api",
        "watchdog": "halton_watchdog",
    }
    for name, (out, err) in expected_logs.items():
        section = conf[f"program:{name}"]
        assert section["command"] == f"/opt/py/bin/python3 -m {modules[name]}"
        assert section["stdout_logfile"] == str(hm_home / out)
        assert section["stderr_logfile"] == str(hm_home / err)
        assert section["stdout_logfile_maxbytes"].endswith("MB")
        assert int(section["stderr_logfile_backups"]) >= 3
        assert section["stopsignal"] == "TERM"
        assert section["environment"].startswith(f'HALTON_METER_HOME="{hm_home}"')
        assert "PROXY" not in section["environment"].upper()
    assert int(conf["program:daemon"]["stopwaitsecs"]) >= 10
    assert int(conf["program:daemon"]["startsecs"]) == 2


def test_render_override_and_test_commands_from_environ(hm_home: Path) -> None:
    options = RenderOptions.from_environ(
        {
            "HALTON_METER_ALLOW_NON_LOOPBACK": "1",
            "HALTON_METER_TEST_CMD_DAEMON": "/bin/false",
            "HTTPS_PROXY": "http://127.0.0.1:8081",
        }
    )
    conf = _parse(render(Home.resolve(), options))
    for name in ("daemon", "edge", "api", "watchdog"):
        assert 'HALTON_METER_ALLOW_NON_LOOPBACK="1"' in conf[f"program:{name}"]["environment"]
    assert conf["program:daemon"]["command"] == "/bin/false"
    assert conf["program:edge"]["command"].endswith("-m halton_meter.edge")
    plain = _parse(render(Home.resolve(), RenderOptions.from_environ({})))
    assert "ALLOW_NON_LOOPBACK" not in plain["program:daemon"]["environment"]


def test_render_escapes_percent_and_quotes(tmp_path: Path) -> None:
    home = Home(tmp_path / 'we"ird%home')
    text = render(home, RenderOptions(python="/p/python"))
    assert "%%" in text
    assert r"we\"ird%%home" in text


def test_scrub_removes_both_cases_only_proxy_variables() -> None:
    env = {
        "HTTPS_PROXY": "a",
        "http_proxy": "b",
        "ALL_PROXY": "c",
        "all_proxy": "d",
        "NO_PROXY": "localhost",
        "PATH": "/bin",
    }
    assert sorted(envmod.scrub(env)) == ["ALL_PROXY", "HTTPS_PROXY", "all_proxy", "http_proxy"]
    assert env == {"NO_PROXY": "localhost", "PATH": "/bin"}


# --- systemd --------------------------------------------------------------------------------


def test_systemd_unit_exact(hm_home: Path) -> None:
    text = systemd.render_unit(
        Home.resolve(), allow_non_loopback=True, python="/opt/py/bin/python3"
    )
    assert text == textwrap.dedent(
        f"""\
        # Written by halton-meter. Runs the supervise entry (supervisord and its programs).
        [Unit]
        Description=Halton Meter: meters LLM API calls on this machine
        After=network.target

        [Service]
        Type=simple
        ExecStart=/opt/py/bin/python3 -m halton_meter.service.supervise
        Restart=always
        RestartSec=2
        KillMode=mixed
        TimeoutStopSec=40
        Environment=HALTON_METER_HOME={hm_home}
        Environment=HALTON_METER_ALLOW_NON_LOOPBACK=1
        UnsetEnvironment=HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy

        [Install]
        WantedBy=default.target
        """
    )
    assert systemd.unit_home(text) == hm_home
    assert systemd.unit_allows_non_loopback(text)


def test_systemd_unit_default_home_has_no_home_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALTON_METER_HOME", raising=False)
    text = systemd.render_unit(Home.resolve(), python="/usr/bin/python3")
    assert "HALTON_METER_HOME" not in text and "ALLOW_NON_LOOPBACK" not in text
    assert systemd.unit_home(text) is None


def _stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *names: str) -> Path:
    """Executables on PATH that record their argv (one line each) and succeed."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "calls.txt"
    for name in names:
        script = bindir / name
        script.write_text(
            f'#!/bin/sh\necho "{name} $*" >> {record}\n'
            'if [ "$1" = "show-user" ]; then echo Linger=yes; fi\nexit 0\n'
        )
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_systemd_install_and_uninstall_run_the_real_commands(
    hm_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    record = _stand_ins(tmp_path, monkeypatch, "systemctl", "loginctl")
    results = systemd.install_unit(Home.resolve(), enable_linger=True)
    assert all(r.ok for r in results)
    unit = tmp_path / "xdg" / "systemd" / "user" / "halton-meter.service"
    assert unit.read_text() == systemd.render_unit(Home.resolve())
    user = __import__("getpass").getuser()
    assert record.read_text().splitlines() == [
        "systemctl --user daemon-reload",
        "systemctl --user enable halton-meter.service",
        f"loginctl enable-linger {user}",
    ]
    assert systemd.manages(Home.resolve()) is sys.platform.startswith("linux")
    assert systemd.linger_enabled()
    assert record.read_text().splitlines()[-2:] == [
        "systemctl --user show-environment",
        f"loginctl show-user {user} --property=Linger",
    ]
    record.unlink()
    systemd.uninstall_unit()
    assert not unit.exists()
    assert record.read_text().splitlines() == [
        "systemctl --user disable --now halton-meter.service",
        "systemctl --user daemon-reload",
    ]


def test_systemd_unit_for_another_home_is_not_ours(
    hm_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    _stand_ins(tmp_path, monkeypatch, "systemctl")
    other = Home(tmp_path / "elsewhere")
    monkeypatch.setenv("HALTON_METER_HOME", str(other.root))
    systemd.install_unit(other)
    monkeypatch.setenv("HALTON_METER_HOME", str(hm_home))
    assert not systemd.manages(Home.resolve())


# --- launchd --------------------------------------------------------------------------------


def test_launchd_plist_exact(hm_home: Path) -> None:
    data = launchd.render_plist(
        Home.resolve(), allow_non_loopback=True, python="/opt/py/bin/python3"
    )
    assert plistlib.loads(data) == {
        "Label": "com.haltonlabs.meter",
        "ProgramArguments": ["/opt/py/bin/python3", "-m", "halton_meter.service.supervise"],
        "RunAtLoad": True,
        "KeepAlive": True,
        "EnvironmentVariables": {
            "HALTON_METER_HOME": str(hm_home),
            "HALTON_METER_ALLOW_NON_LOOPBACK": "1",
        },
        "WorkingDirectory": str(hm_home),
        "StandardOutPath": str(hm_home / "supervisord.log"),
        "StandardErrorPath": str(hm_home / "supervisord.log"),
    }
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist')


def test_launchd_install_start_stop_commands(
    hm_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    record = _stand_ins(tmp_path, monkeypatch, "launchctl")
    launchd.install_unit(Home.resolve())
    plist = tmp_path / "user" / "Library" / "LaunchAgents" / "com.haltonlabs.meter.plist"
    assert plistlib.loads(plist.read_bytes())["Label"] == "com.haltonlabs.meter"
    uid = os.getuid()
    launchd.start()
    launchd.stop()
    launchd.uninstall_unit()
    assert not plist.exists()
    assert record.read_text().splitlines() == [
        f"launchctl bootout gui/{uid}/com.haltonlabs.meter",
        f"launchctl bootstrap gui/{uid} {plist}",
        f"launchctl print gui/{uid}/com.haltonlabs.meter",
        f"launchctl kickstart gui/{uid}/com.haltonlabs.meter",
        f"launchctl bootout gui/{uid}/com.haltonlabs.meter",
        f"launchctl bootout gui/{uid}/com.haltonlabs.meter",
    ]


# --- orphans ---------------------------------------------------------------------------------


def test_orphans_match_command_line_and_home_only(hm_home: Path, tmp_path: Path) -> None:
    """Only our module command lines WITH our HALTON_METER_HOME are ours; ended by pid."""
    stub = tmp_path / "stub"
    (stub / "halton_meter").mkdir(parents=True)
    # A decoy package so `-m halton_meter.edge` runs a harmless sleeper, not the real edge.
    (stub / "halton_meter" / "__init__.py").write_text("")
    (stub / "halton_meter" / "edge.py").write_text("import time\ntime.sleep(60)\n")
    env_ours = clean_env(hm_home, PYTHONPATH=str(stub))
    env_other = clean_env(tmp_path / "other-home", PYTHONPATH=str(stub))
    ours = subprocess.Popen([PYTHON, "-m", "halton_meter.edge"], env=env_ours, cwd=stub)
    other_home = subprocess.Popen([PYTHON, "-m", "halton_meter.edge"], env=env_other, cwd=stub)
    unrelated = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"], env=env_ours)
    try:
        home = Home.resolve()
        wait_until(lambda: ours.pid in {p.pid for p in our_processes(home)}, what="orphan seen")
        found = {p.pid for p in our_processes(home)}
        assert other_home.pid not in found and unrelated.pid not in found
        assert end_orphans(home) == [ours.pid]
        assert ours.wait(5) is not None
        assert other_home.poll() is None and unrelated.poll() is None
    finally:
        for proc in (ours, other_home, unrelated):
            proc.kill()
            proc.wait()
    assert REPO.exists()

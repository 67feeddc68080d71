"""`halton-meter doctor` against the real supervised stack and a ProviderSim (one per module):
a healthy stack, `--curl` through all three hops (curl and the httpx fallback), an upstream
that is down, a daemon that is down (the edge fails open), and `stop && start` healing a
placeholder cloud URL."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures_daemon import sim_config
from fixtures_doctor import CA_VARS, VENV_BIN, row
from hmtest import PYTHON, REPO, clean_env, free_port, wait_until

from halton_meter.core.paths import Home
from halton_meter.sim import ProviderSim

DOWN_HOST = "down.example.org"


@dataclass
class Stack:
    home: Path
    user: Path
    root: Path
    sim: ProviderSim
    ports: dict[str, int]

    def env(self, **extra: str) -> dict[str, str]:
        env = clean_env(
            self.home,
            HOME=str(self.user),
            XDG_CONFIG_HOME=str(self.user / ".config"),
            HALTON_METER_PORTS_LOCK_DIR=str(self.root / "locks"),
        )
        for key in CA_VARS:
            env.pop(key, None)
        env.update(extra)
        return env

    def hm(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "halton_meter", *args],
            cwd=REPO,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def doctor(self, *args: str, **extra: str) -> tuple[int, dict[str, Any]]:
        out = self.hm("doctor", "--json", *args, **extra)
        assert out.stdout.startswith("{"), out.stdout + out.stderr
        return out.returncode, json.loads(out.stdout)

    def rows(self) -> int:
        db = self.home / "db.sqlite"
        if not db.exists():
            return 0
        conn = sqlite3.connect(db)
        try:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
        finally:
            conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from halton_meter.service.orphans import end_processes, our_processes

    root = tmp_path_factory.mktemp("doctor-stack")
    home, user = root / "hm", root / "user"
    home.mkdir(mode=0o700)
    user.mkdir()
    sim = ProviderSim(root / "sim").start()
    ports = {"edge": free_port(), "daemon": free_port(), "api": free_port()}
    config = sim_config(
        sim,
        extra_toml=f'[capture]\nhosts = ["{DOWN_HOST}"]\n',
        resolve_extra={f"{DOWN_HOST}:443": f"127.0.0.1:{free_port()}"},  # nothing listens
    )
    config += "\n[ports]\n" + "".join(f"{k} = {v}\n" for k, v in ports.items())
    (home / "config.toml").write_text(config)
    s = Stack(home, user, root, sim, ports)
    try:
        started = s.hm("start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield s
    finally:
        s.hm("stop")
        left = our_processes(Home(home))  # this home's pids only, never by name
        end_processes(left)
        sim.stop()
        assert not left, [p.pid for p in left]


def _healthy(stack: Stack) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ok() -> bool:
        code, doc = stack.doctor()
        found.update(doc)
        return code == 0

    wait_until(ok, timeout=30, interval=0.5, what="doctor HEALTHY")
    return found


def test_running_stack_is_healthy_and_agrees_with_status(stack: Stack) -> None:
    doc = _healthy(stack)
    assert doc["state"] == "HEALTHY"
    assert row(doc, "supervisor")["status"] == "ok"
    programs = row(doc, "programs")
    assert programs["status"] == "ok"
    assert "daemon RUNNING" in programs["summary"] and "edge RUNNING" in programs["summary"]
    assert row(doc, "edge_accepts")["status"] == "ok"
    assert row(doc, "failing_open")["status"] == "ok"
    assert row(doc, "session_env")["status"] == "ok"  # the programs' own environments are clean
    assert not any(r["status"] == "fail" for r in doc["checks"]), doc["checks"]
    status = stack.hm("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "HEALTHY"


def _hop(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return row(doc, f"curl.{name}")


def test_curl_reports_edge_daemon_upstream_ok(stack: Stack) -> None:
    _healthy(stack)
    before = stack.rows()
    code, doc = stack.doctor("--curl")
    assert code == 0
    edge, daemon, upstream = (_hop(doc, h) for h in ("edge", "daemon", "upstream"))
    assert edge["status"] == "ok", edge
    assert re.search(
        rf"edge 127\.0\.0\.1:{stack.ports['edge']} accepted in [\d.]+ ms \(curl\)", edge["summary"]
    )
    assert daemon["status"] == "ok", daemon
    assert "intercepted: TLS with the meter's CA for api.anthropic.com" in daemon["summary"]
    assert upstream["status"] == "ok", upstream
    assert "api.anthropic.com answered HTTP 200" in upstream["summary"]
    assert re.search(r"first byte after [\d.]+ ms", upstream["summary"])
    assert stack.rows() == before  # /v1/models is not a model call: never a row
    human = stack.hm("doctor", "--curl")
    assert re.search(
        r"^ok\s+curl\.upstream\s+api\.anthropic\.com answered HTTP 200", human.stdout, re.M
    )


def test_curl_falls_back_to_httpx_without_curl(stack: Stack, tmp_path: Path) -> None:
    _healthy(stack)
    empty = tmp_path / "no-curl"
    empty.mkdir()
    code, doc = stack.doctor("--curl", PATH=str(empty))
    assert code == 0
    for hop in ("edge", "daemon", "upstream"):
        assert _hop(doc, hop)["status"] == "ok", _hop(doc, hop)
    assert "(httpx)" in _hop(doc, "edge")["summary"]
    assert "answered HTTP 200" in _hop(doc, "upstream")["summary"]


def test_curl_upstream_down_is_a_warning_from_the_daemon(stack: Stack) -> None:
    _healthy(stack)
    code, doc = stack.doctor("--curl-url", f"https://{DOWN_HOST}/v1/models")
    assert _hop(doc, "edge")["status"] == "ok"
    assert _hop(doc, "daemon")["status"] == "ok"  # intercepted: our CA
    upstream = _hop(doc, "upstream")
    assert upstream["status"] == "warn"
    assert f"the daemon answered 502 itself: it could not reach {DOWN_HOST}" in upstream["summary"]
    assert upstream["fix"].startswith(f"tail -n 100 {stack.home / 'daemon.err.log'}")
    assert code == 0  # advice: an unreachable provider is not the meter's state


def test_daemon_down_the_edge_fails_open_and_curl_sees_it(stack: Stack) -> None:
    from halton_meter.service.rpc import supervisor_proxy

    _healthy(stack)
    proxy = supervisor_proxy(Home(stack.home))
    proxy.supervisor.stopProcess("daemon")
    try:
        code, doc = stack.doctor("--curl")
        assert _hop(doc, "edge")["status"] == "ok"  # the edge still accepts and tunnels
        daemon = _hop(doc, "daemon")
        assert daemon["status"] == "fail"
        assert "not from the meter's CA: the edge tunnelled straight through" in daemon["summary"]
        assert daemon["fix"].endswith("halton-meter stop && halton-meter start")
        assert _hop(doc, "upstream")["status"] == "skip"
        assert row(doc, "programs")["status"] == "fail"
        assert code == 2
    finally:
        proxy.supervisor.startProcess("daemon")
    # The edge reports failing open until a hand-over succeeds again: --curl makes one.
    wait_until(lambda: stack.doctor("--curl")[0] == 0, timeout=30, interval=0.5, what="hand-over")
    _healthy(stack)


def test_placeholder_base_url_healed_by_stop_and_start(stack: Stack) -> None:
    _healthy(stack)
    config = stack.home / "config.toml"
    original = config.read_text()
    config.write_text(original + '\n[cloud]\nbase_url = "https://api.haltonmeter.example"\n')
    _, doc = stack.doctor()
    placeholder = row(doc, "base_url")
    assert placeholder["status"] == "warn"
    assert placeholder["fix"].startswith("halton-meter stop && halton-meter start   # ")
    fixed = subprocess.run(
        ["/bin/sh", "-c", placeholder["fix"]],
        cwd=REPO,
        env=stack.env(PATH=f"{VENV_BIN}:/usr/bin:/bin"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert 'base_url = "https://api.haltonmeter.com"' in config.read_text()
    doc = _healthy(stack)
    assert row(doc, "base_url")["status"] == "ok"

"""`halton-meter status` as a subprocess: exit codes, the JSON contract, API or local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from hmtest import PYTHON, REPO, clean_env, free_port, wait_until

from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, save_effective_ports

CONTRACT_KEYS = {"state", "reasons", "ports", "programs", "install_mode", "unmetered"}


def _status(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    user = home.parent / "user"  # rc files and environment.d: never the real user's
    user.mkdir(exist_ok=True)
    env = {"HOME": str(user), "XDG_CONFIG_HOME": str(user / ".config"), **env}
    return subprocess.run(
        [PYTHON, "-m", "halton_meter", "status", *args],
        cwd=REPO,
        env=clean_env(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_never_started_home_is_broken_with_the_fix(hm_home: Path) -> None:
    out = _status(hm_home)
    assert out.returncode == 2, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["state:", "BROKEN"]
    assert any(line.split() == ["daemon:", "not", "running"] for line in lines)
    assert any(line.split() == ["proxy-port:", "8081"] for line in lines)
    assert any(line.split() == ["api-port:", "8765"] for line in lines)
    assert any(line.split() == ["install-mode:", "env-only"] for line in lines)
    assert any(line.strip() == "fix: halton-meter start" for line in lines)


def test_never_started_json_contract(hm_home: Path) -> None:
    out = _status(hm_home, "--json")
    assert out.returncode == 2, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) >= CONTRACT_KEYS
    assert doc["state"] == "BROKEN"
    assert doc["reasons"][0]["id"] == "not_running"
    assert {"id", "message"} <= set(doc["reasons"][0])
    assert doc["ports"] == {"edge": 8081, "daemon": 8090, "api": 8765}
    assert doc["programs"] == {}
    assert doc["install_mode"] == "env-only"
    assert doc["unmetered"] == 0
    assert doc["source"] == "local"
    assert sorted(p.name for p in hm_home.iterdir()) == []  # status wrote nothing


def test_inconsistent_exit_code_is_1_only_when_nothing_is_broken(hm_home: Path) -> None:
    # A gui sentinel alone would be INCONSISTENT; with the meter not running it is BROKEN.
    (hm_home / "install-mode").write_text("gui\n")
    out = _status(hm_home, "--json")
    doc = json.loads(out.stdout)
    assert out.returncode == 2
    assert [r["id"] for r in doc["reasons"]][:2] == ["not_running", "install_mode_legacy"]
    assert doc["install_mode"] == "gui"


@pytest.fixture
def api_home(hm_home: Path) -> Iterator[tuple[Path, int]]:
    ports = EffectivePorts(edge=free_port(), daemon=free_port(), api=free_port())
    save_effective_ports(Home(hm_home), ports)
    proc = subprocess.Popen(
        [PYTHON, "-m", "halton_meter.api"],  # the effective api port, as under supervisord
        cwd=REPO,
        env=clean_env(hm_home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def up() -> bool:
        with httpx.Client(trust_env=False, timeout=1) as client:
            return client.get(f"http://127.0.0.1:{ports.api}/health").status_code == 200

    try:
        wait_until(lambda: proc.poll() is not None or up(), timeout=20, what="api")
        assert proc.poll() is None
        yield hm_home, ports.edge
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_status_asks_the_api_and_adds_this_shells_checks(
    api_home: tuple[Path, int], tmp_path: Path
) -> None:
    home, edge = api_home
    stale = tmp_path / "removed-venv" / "cacert.pem"
    out = _status(
        home, "--json", SSL_CERT_FILE=str(stale), HTTPS_PROXY=f"http://127.0.0.1:{edge + 1}"
    )
    doc = json.loads(out.stdout)
    assert doc["source"] == "api"
    ids = [r["id"] for r in doc["reasons"]]
    # From the API: supervisord was never started here. From this shell: its variables.
    assert ids[0] == "not_running"
    assert {"stale_ca_variable", "client_port_stale"} <= set(ids)
    assert out.returncode == 2 and doc["state"] == "BROKEN"


def test_status_falls_back_to_local_when_the_api_refuses_the_token(
    api_home: tuple[Path, int],
) -> None:
    home, _ = api_home
    # Another home whose state names the same api port, with its own token: the API there
    # answers 401, so status must compute from its own files instead of trusting it.
    other = home.parent / "other"
    other.mkdir(mode=0o700)
    for name in ("effective-ports.json", "runtime.toml"):
        (other / name).write_bytes((home / name).read_bytes())
    (other / "api-token").write_text("not-the-api-token\n")
    out = _status(other, "--json")
    doc = json.loads(out.stdout)
    assert doc["source"] == "local"
    assert out.returncode == 2
    assert _status(home, "--json").stdout.count('"source": "api"') == 1


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _hm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    user = home.parent / "user"
    user.mkdir(exist_ok=True)
    return subprocess.run(
        [PYTHON, "-m", "halton_meter", *args],
        cwd=REPO,
        env=clean_env(home, HOME=str(user), XDG_CONFIG_HOME=str(user / ".config")),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def started_home(hm_home: Path) -> Iterator[Path]:
    """The real stack (supervisord and its four programs) on pinned free ports."""
    from halton_meter.service.orphans import end_processes, our_processes

    edge, daemon, api = free_port(), free_port(), free_port()
    (hm_home / "config.toml").write_text(
        f"[ports]\nedge = {edge}\ndaemon = {daemon}\napi = {api}\n"
    )
    started = _hm(hm_home, "start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield hm_home
    finally:
        _hm(hm_home, "stop")
        leftovers = our_processes(Home(hm_home))  # never by name: this home's pids only
        end_processes(leftovers)
        assert not leftovers, [p.pid for p in leftovers]


def test_started_stack_is_healthy_killed_or_stopped_is_broken(started_home: Path) -> None:
    home = started_home
    doc: dict = {}

    def healthy() -> bool:
        nonlocal doc
        out = _status(home, "--json")
        doc = json.loads(out.stdout)
        return out.returncode == 0 and doc["state"] == "HEALTHY"

    wait_until(healthy, timeout=30, interval=0.5, what="HEALTHY after start")
    assert doc["source"] == "api"
    assert doc["reasons"] == []
    assert {name: p["state"] for name, p in doc["programs"].items()} == {
        "api": "RUNNING",
        "daemon": "RUNNING",
        "edge": "RUNNING",
        "watchdog": "RUNNING",
    }
    ports = json.loads((home / "effective-ports.json").read_text())["ports"]
    assert doc["ports"] == ports
    human = _status(home)
    assert human.returncode == 0
    assert f"proxy-port:           {ports['edge']}" in human.stdout

    # kill -9 of supervisord: the meter was started and not stopped, nothing supervises it.
    supervisord = int((home / "run" / "supervisord.pid").read_text())
    os.kill(supervisord, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(supervisord) or _zombie(supervisord), what="kill")
    killed = _status(home, "--json")
    assert killed.returncode == 2
    assert "supervisord_unreachable" in [r["id"] for r in json.loads(killed.stdout)["reasons"]]

    assert _hm(home, "stop").returncode == 0  # also ends the orphans
    after = _status(home, "--json")
    stopped = json.loads(after.stdout)
    assert after.returncode == 2
    assert stopped["source"] == "local"  # the API went with the rest
    assert [r["id"] for r in stopped["reasons"]] == ["not_running"]
    assert stopped["reasons"][0]["fix"] == "halton-meter start"


def test_an_unreadable_api_answer_falls_back_to_local(hm_home: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Garbled(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
            body = json.dumps({"state": "HEALTHY", "ports": {}, "reasons": [{"nope": 1}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbled)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        save_effective_ports(
            Home(hm_home),
            EffectivePorts(edge=free_port(), daemon=free_port(), api=server.server_address[1]),
        )
        (hm_home / "api-token").write_text("t\n")
        out = _status(hm_home, "--json")
    finally:
        server.shutdown()
        server.server_close()
    doc = json.loads(out.stdout)
    assert doc["source"] == "local"
    assert doc["state"] == "BROKEN" and out.returncode == 2  # never "HEALTHY" from garbage

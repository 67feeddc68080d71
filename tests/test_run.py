"""`halton-meter run`: the nine variables, exit status, signals, --project, --shell."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from hmtest import clean_env

HM = [sys.executable, "-m", "halton_meter"]
_DUMP = "import json, os; print(json.dumps(dict(os.environ)))"
NINE = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
)


def _listening_edge(home: Path) -> socket.socket:
    """Stand in for a running edge on a bind(0) port recorded as the effective port."""
    from halton_meter.core.paths import Home
    from halton_meter.core.runtime import EffectivePorts, save_effective_ports

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    save_effective_ports(Home(home), EffectivePorts(s.getsockname()[1], 1, 2))
    return s


def test_injects_all_nine_variables_from_the_effective_ports(hm_home: Path) -> None:
    edge = _listening_edge(hm_home)
    port = edge.getsockname()[1]
    try:
        out = subprocess.run(
            [*HM, "run", "--", sys.executable, "-c", _DUMP],
            env=clean_env(hm_home),
            capture_output=True,
            text=True,
        )
    finally:
        edge.close()
    assert out.returncode == 0, out.stderr
    env = json.loads(out.stdout)
    assert all(var in env for var in NINE)
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == f"http://127.0.0.1:{port}"
    assert env["SSL_CERT_FILE"] == str(hm_home / "ca-bundle.pem")
    assert env["GIT_SSL_CAINFO"] == env["CURL_CA_BUNDLE"] == env["SSL_CERT_FILE"]
    assert env["NODE_EXTRA_CA_CERTS"].endswith("mitmproxy-ca-cert.pem")
    bundle = Path(env["SSL_CERT_FILE"]).read_text()
    ca = Path(env["NODE_EXTRA_CA_CERTS"]).read_text().strip()
    assert ca in bundle and bundle.count("BEGIN CERTIFICATE") > 1  # system roots + ours
    assert "the meter is not running" not in out.stderr


def test_project_goes_into_the_proxy_url_and_env(hm_home: Path) -> None:
    edge = _listening_edge(hm_home)
    try:
        out = subprocess.run(
            [*HM, "run", "--project", "billing-api", sys.executable, "-c", _DUMP],
            env=clean_env(hm_home),
            capture_output=True,
            text=True,
        )
    finally:
        edge.close()
    env = json.loads(out.stdout)
    assert env["HALTON_PROJECT"] == "billing-api"
    assert env["HTTPS_PROXY"].startswith("http://billing-api@127.0.0.1:")


def test_exit_status_passes_through(hm_home: Path) -> None:
    out = subprocess.run(
        [*HM, "run", sys.executable, "-c", "raise SystemExit(7)"],
        env=clean_env(hm_home),
        capture_output=True,
    )
    assert out.returncode == 7


def test_signals_reach_the_command(hm_home: Path) -> None:
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(42)); print('up', flush=True); time.sleep(30)"
    proc = subprocess.Popen(
        [*HM, "run", sys.executable, "-c", code],
        env=clean_env(hm_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 42
    finally:
        if proc.poll() is None:
            proc.kill()


def test_service_down_runs_unmetered_and_says_so_once(hm_home: Path) -> None:
    out = subprocess.run(
        [*HM, "run", sys.executable, "-c", _DUMP],
        env=clean_env(hm_home),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    env = json.loads(out.stdout)
    assert "HTTPS_PROXY" not in env and "https_proxy" not in env
    assert env["SSL_CERT_FILE"] == str(hm_home / "ca-bundle.pem")
    assert out.stderr.count("the meter is not running") == 1


def test_shell_flag_and_unknown_command(hm_home: Path) -> None:
    out = subprocess.run(
        [*HM, "run", "--shell", "-c", "exit 3"],
        env=clean_env(hm_home, SHELL="/bin/sh"),
        capture_output=True,
    )
    assert out.returncode == 3
    missing = subprocess.run(
        [*HM, "run", "no-such-command-xyz"], env=clean_env(hm_home), capture_output=True, text=True
    )
    assert missing.returncode == 127 and "command not found" in missing.stderr

# ruff: noqa: F811  (pytest fixtures imported by name)
"""Fail-open: whatever the daemon does (down, killed, stuck, moved), clients keep working."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

from fixtures_daemon import provider_sim as sim  # noqa: F401  (the `sim` fixture)
from fixtures_daemon import sim_config, start_daemon
from fixtures_edge import client_env, run_curl, run_python_sdk, start_edge, trust_bundle
from hmtest import PYTHON, free_port, wait_until

from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, save_effective_ports
from halton_meter.sim import ProviderSim

MESSAGES = "https://api.anthropic.com/v1/messages"
CURL_ARGS = (
    "-X", "POST", "-H", "x-api-key: sk-ant-curl", "-H", "anthropic-version: 2023-06-01",
    "-H", "content-type: application/json",
    "--data", '{"model":"claude-haiku-4-5","max_tokens":5,"messages":[]}',
)  # fmt: skip

# One long-lived SDK client: a request per line on stdin, the same client (and pool) throughout.
_SESSION = r"""
import sys, anthropic
c = anthropic.Anthropic(api_key="sk-ant-session", max_retries=3)
for line in sys.stdin:
    m = c.messages.create(model="claude-haiku-4-5", max_tokens=5,
                          messages=[{"role": "user", "content": line.strip()}])
    print("OK", m.usage.output_tokens, flush=True)
"""


def _ask(proc: subprocess.Popen[str], text: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_daemon_killed_mid_session_then_back_on_another_port(
    hm_home: Path, sim: ProviderSim, tmp_path: Path
) -> None:
    home = Home(hm_home)
    (hm_home / "config.toml").write_text(sim_config(sim))
    first_port = free_port()
    save_effective_ports(home, EffectivePorts(edge=free_port(), daemon=first_port, api=1))
    daemon = start_daemon(hm_home, sim, port=first_port)
    edge = start_edge(hm_home)  # no --daemon-port: it follows effective-ports.json
    session = None
    try:
        bundle = trust_bundle(tmp_path / "bundle.pem", sim.ca_path, daemon.ca_cert)
        env = client_env(hm_home, edge.url, bundle)
        session = subprocess.Popen(
            [PYTHON, "-c", _SESSION],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert _ask(session, "metered").startswith("OK")
        assert len(daemon.wait_rows(1)) == 1

        daemon.kill9()
        # The same client keeps working (its retry opens a new connection; the edge fails open).
        assert _ask(session, "while down").startswith("OK")
        assert run_curl(MESSAGES, cwd=tmp_path, env=env, args=CURL_ARGS).returncode == 0
        assert run_python_sdk("openai", cwd=tmp_path, env=env).returncode == 0
        stats = wait_until(
            lambda: (s := edge.stats())["unmetered_total"] >= 3 and s,
            what="unmetered count persisted",
        )
        assert stats["unmetered_by_host"]["api.anthropic.com"] >= 2
        assert stats["unmetered_by_host"]["api.openai.com"] >= 1
        assert stats["daemon_reachable"] is False
        assert stats["last_fail_open"]["reason"] == "daemon_refused"
        fails = edge.events("edge.fail_open")
        assert fails and all(f["level"] == "warning" for f in fails)
        assert (
            "edge.fail_open host=api.anthropic.com reason=daemon_refused"
            in edge.err_log.read_text()
        )

        # The watchdog brings the daemon back on another port and records it.
        second_port = free_port()
        daemon = start_daemon(hm_home, sim, port=second_port)
        save_effective_ports(home, EffectivePorts(edge=edge.port, daemon=second_port, api=1))
        mark = daemon.mark()
        wait_until(
            lambda: (
                run_curl(MESSAGES, cwd=tmp_path, env=env, args=CURL_ARGS).returncode == 0
                and len(daemon.rows_since(mark)) >= 1
            ),
            timeout=20,
            interval=0.3,
            what="metering resumed",
        )
        assert _ask(session, "metered again").startswith("OK")
        wait_until(lambda: edge.stats()["daemon_reachable"] is True, what="reachable again")
    finally:
        if session is not None:
            session.kill()
            session.wait(5)
        edge.stop()
        daemon.stop()


def _silent_listener() -> tuple[socket.socket, list[socket.socket], threading.Thread]:
    """A 'daemon' that accepts connections and never answers (stuck)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    return srv, held, t


def test_stuck_daemon_fails_open_within_the_deadline(
    hm_home: Path, sim: ProviderSim, tmp_path: Path
) -> None:
    (hm_home / "config.toml").write_text(sim_config(sim))
    srv, held, _ = _silent_listener()
    edge = start_edge(hm_home, daemon_port=srv.getsockname()[1], daemon_timeout=1.5)
    try:
        env = client_env(hm_home, edge.url, trust_bundle(tmp_path / "b.pem", sim.ca_path))
        t0 = time.monotonic()
        assert run_curl(MESSAGES, cwd=tmp_path, env=env, args=CURL_ARGS).returncode == 0
        first = time.monotonic() - t0
        assert 1.5 <= first < 5.0, first
        # The breaker: while the daemon stays stuck, connections fail open without waiting.
        t0 = time.monotonic()
        assert run_curl(MESSAGES, cwd=tmp_path, env=env, args=CURL_ARGS).returncode == 0
        assert time.monotonic() - t0 < 1.0
        reasons = [e["reason"] for e in edge.events("edge.fail_open")]
        assert reasons[:2] == ["daemon_no_answer", "daemon_unresponsive"]
        assert len(held) >= 1  # the edge did try the daemon first
        wait_until(lambda: edge.stats()["unmetered_total"] == 2, what="both counted")
    finally:
        edge.stop()
        srv.close()
        for c in held:
            c.close()


def test_no_daemon_at_all_still_serves_every_client(
    hm_home: Path, sim: ProviderSim, tmp_path: Path
) -> None:
    (hm_home / "config.toml").write_text(
        sim_config(
            sim,
            extra_toml='[capture]\nhosts = ["llm.internal"]\n',
            resolve_extra={"llm.internal:80": f"127.0.0.1:{sim.http_port}"},
        )
    )
    edge = start_edge(hm_home, daemon_port=free_port())
    try:
        env = client_env(hm_home, edge.url, trust_bundle(tmp_path / "b.pem", sim.ca_path))
        for kind in ("anthropic", "openai"):
            result = run_python_sdk(kind, cwd=tmp_path, env=env)
            assert result.returncode == 0 and result.stdout.startswith("OK"), result.stderr
        # an LLM host on plain http fails open too
        plain = run_curl(
            "http://llm.internal/v1/chat/completions",
            cwd=tmp_path,
            env=env,
            args=("--data", '{"model":"m","messages":[]}', "-H", "content-type: application/json"),
        )
        assert plain.returncode == 0, plain.stderr
        stats = wait_until(lambda: (s := edge.stats())["unmetered_total"] == 3 and s)
        assert stats["unmetered_by_host"]["llm.internal"] == 1
        assert stats["connections_total"] >= 3 and stats["metered_total"] == 0
        assert {r.path for r in sim.requests} == {"/v1/messages", "/v1/chat/completions"}
    finally:
        edge.stop()

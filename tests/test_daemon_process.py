# ruff: noqa: F811  (pytest fixtures imported by name)
"""The daemon as a process: tunnelling, attribution hand-over, start-up failures, shutdown,
kill -9 durability, its health files and CA."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
from fixtures_daemon import (  # noqa: F401
    DaemonHandle,
    daemon,
    provider_sim,
    sim_config,
    start_daemon,
)
from hmtest import free_port

from halton_meter.sim import ProviderSim

ANTHROPIC = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": "sk-ant-proc", "anthropic-version": "2023-06-01"}


def body(stream: bool = False) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }


# -- tunnelling ------------------------------------------------------------------------------


def test_non_llm_host_is_tunnelled_with_the_origins_certificate(daemon: DaemonHandle) -> None:
    d = daemon
    sim_only = ssl.create_default_context(cafile=str(d.sim.ca_path))
    with httpx.Client(proxy=d.proxy_url, verify=sim_only, trust_env=False, timeout=10) as http:
        resp = http.get("https://example.com/some/page")
    # Trusting only the origin's CA works: the daemon never presented its own certificate.
    assert resp.status_code == 200 and "Hello from example.com" in resp.text
    rec = d.sim.requests[-1]
    assert rec.sni == "example.com" and rec.api == "site"

    # And a client trusting only the meter's CA cannot talk to it: nothing was intercepted.
    with (
        httpx.Client(
            proxy=d.proxy_url, verify=d.ssl_context(), trust_env=False, timeout=10
        ) as http,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        http.get("https://example.com/")

    # The peer certificate, read directly through a CONNECT, is the sim's leaf.
    issuer = _peer_issuer_via_connect(d.port, "example.com", d.sim.ca_path)
    assert "mitmproxy" not in issuer.lower()
    # No row for any of it: after one model call (rows come in completion order) there is
    # exactly that call's row.
    with d.client() as http:
        assert http.post(ANTHROPIC, json=body(), headers=HEADERS).status_code == 200
    assert [r["host"] for r in d.wait_rows(1)] == ["api.anthropic.com"]


def test_provider_host_is_intercepted_with_the_meters_certificate(daemon: DaemonHandle) -> None:
    issuer = _peer_issuer_via_connect(daemon.port, "api.anthropic.com", daemon.ca_cert)
    assert "mitmproxy" in issuer.lower()


def _peer_issuer_via_connect(port: int, host: str, cafile: Path) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += raw.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        ctx = ssl.create_default_context(cafile=str(cafile))
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            cert = tls.getpeercert()
    assert cert is not None
    return " ".join(v for rdn in cert["issuer"] for (_, v) in rdn)


# -- attribution -----------------------------------------------------------------------------


def _attribution(**fields: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")


def test_attribution_from_the_connect_header(daemon: DaemonHandle) -> None:
    d = daemon
    who = {"tool": "claude-code", "project": "halton", "tier": "git", "pid": 4242, "cwd": "/src/x"}
    proxy = httpx.Proxy(d.proxy_url, headers={"X-Halton-Attribution": _attribution(**who)})
    with httpx.Client(proxy=proxy, verify=d.ssl_context(), trust_env=False, timeout=10) as http:
        # Two requests on one connection: both carry the connection's attribution.
        for _ in range(2):
            assert http.post(ANTHROPIC, json=body(), headers=HEADERS).status_code == 200
    with d.client() as http:  # a connection without the header
        assert http.post(ANTHROPIC, json=body(), headers=HEADERS).status_code == 200
    rows = d.wait_rows(3)
    for row in rows[:2]:
        assert (row["tool"], row["project"], row["tier"]) == ("claude-code", "halton", "git")
        assert (row["client_pid"], row["client_cwd"]) == (4242, "/src/x")
    assert (rows[2]["tool"], rows[2]["project"], rows[2]["tier"]) == ("other", "misc", "misc")
    assert rows[2]["client_pid"] is None
    # The hand-over header is ours: the provider never sees it.
    for rec in d.sim.requests:
        assert rec.header("x-halton-attribution") is None


def test_bad_attribution_header_falls_back_to_defaults(daemon: DaemonHandle) -> None:
    d = daemon
    proxy = httpx.Proxy(d.proxy_url, headers={"X-Halton-Attribution": "not base64 json!"})
    with httpx.Client(proxy=proxy, verify=d.ssl_context(), trust_env=False, timeout=10) as http:
        assert http.post(ANTHROPIC, json=body(), headers=HEADERS).status_code == 200
    [row] = d.wait_rows(1)
    assert (row["tool"], row["project"], row["tier"]) == ("other", "misc", "misc")


# -- start-up ----------------------------------------------------------------------------------


def test_health_files_and_ca(daemon: DaemonHandle) -> None:
    d = daemon
    info = json.loads((d.home / "run" / "daemon.json").read_text())
    assert info["pid"] == d.proc.pid and info["port"] == d.port
    assert info["started_at"].endswith("+00:00")
    ca_dir = d.home / "mitmproxy"
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "mitmproxy-ca.pem").stat().st_mode) == 0o600
    assert d.ca_cert.exists()
    # Upstream roots: certifi's plus the configured bundle (mitmproxy would replace, not add).
    bundle = (d.home / "run" / "upstream-roots.pem").read_text()
    assert d.sim.ca_path.read_text().strip() in bundle
    assert Path(certifi.where()).read_text().strip()[:2000] in bundle
    # stats appear within a few seconds
    deadline = time.monotonic() + 10
    while not (d.home / "run" / "daemon-stats.json").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert d.stats()["pid"] == d.proc.pid


def test_failed_bind_exits_nonzero_with_a_clear_message(
    hm_home: Path, provider_sim: ProviderSim
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        handle = start_daemon(hm_home, provider_sim, port=port, wait=False)
        try:
            rc = handle.proc.wait(30)
        finally:
            handle.stop()
    assert rc == 1
    assert f"cannot listen on 127.0.0.1:{port}" in handle.stderr()
    assert not (hm_home / "run" / "daemon.json").exists()


def test_non_loopback_listen_host_is_refused(hm_home: Path, provider_sim: ProviderSim) -> None:
    config = sim_config(provider_sim).replace(
        'listen_host = "127.0.0.1"', 'listen_host = "0.0.0.0"'
    )
    handle = start_daemon(hm_home, provider_sim, config_text=config, wait=False)
    try:
        rc = handle.proc.wait(30)
    finally:
        handle.stop()
    assert rc == 1
    assert "listen_host=0.0.0.0 is not a loopback address (refusing to bind)" in handle.stderr()


def test_unreadable_upstream_ca_bundle_is_a_clear_error(
    hm_home: Path, provider_sim: ProviderSim
) -> None:
    config = sim_config(provider_sim).replace(str(provider_sim.ca_path), "/nonexistent/roots.pem")
    handle = start_daemon(hm_home, provider_sim, config_text=config, wait=False)
    try:
        rc = handle.proc.wait(30)
    finally:
        handle.stop()
    assert rc != 0
    assert "/nonexistent/roots.pem" in handle.stderr()


def test_upstream_not_trusted_without_the_bundle(hm_home: Path, provider_sim: ProviderSim) -> None:
    # No ca_bundle: the sim's certificate is not trusted upstream; the client gets a 502 and
    # the call is still a row (status None, the TLS error).
    config = "\n".join(
        line for line in sim_config(provider_sim).splitlines() if not line.startswith("ca_bundle")
    )
    handle = start_daemon(hm_home, provider_sim, config_text=config)
    try:
        with handle.client() as http:
            resp = http.post(ANTHROPIC, json=body(), headers=HEADERS)
        assert resp.status_code == 502
        [row] = handle.wait_rows(1)
        assert row["status"] is None and "certificate" in row["error"].lower()
    finally:
        assert handle.stop() == 0


# -- shutdown and durability ----------------------------------------------------------------------


def test_sigterm_flushes_and_exits_zero(daemon: DaemonHandle) -> None:
    d = daemon
    got_first = threading.Event()
    outcome: dict[str, Any] = {}

    def stream_slowly() -> None:
        try:
            with (
                d.client() as http,
                http.stream(
                    "POST",
                    ANTHROPIC,
                    json=body(stream=True),
                    headers={**HEADERS, "x-sim-events": "200", "x-sim-delay-ms": "50"},
                ) as resp,
            ):
                for chunk in resp.iter_raw():
                    if b"message_start" in chunk:
                        got_first.set()
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    with d.client() as http:
        for _ in range(3):
            assert http.post(ANTHROPIC, json=body(), headers=HEADERS).status_code == 200
    worker = threading.Thread(target=stream_slowly)
    worker.start()
    assert got_first.wait(10)
    assert d.stop() == 0
    worker.join(10)
    rows = d.rows()
    assert len(rows) == 4
    # The call cut by the shutdown is kept, marked partial.
    assert rows[3]["partial"] == 1 and rows[3]["input_tokens"] is not None
    assert "error" in outcome  # the client saw its stream cut
    assert not (d.home / "run" / "daemon.json").exists()
    assert '"daemon.stopped"' in d.stdout()


def test_kill_9_after_a_burst_loses_no_rows(daemon: DaemonHandle) -> None:
    d = daemon
    n = 40
    with d.client() as http:
        for i in range(n):
            resp = http.post(
                ANTHROPIC,
                json=body(stream=bool(i % 2)),
                headers={**HEADERS, "x-sim-usage": json.dumps({"input_tokens": i + 1})},
            )
            assert resp.status_code == 200
            resp.read()
    time.sleep(0.5)  # the promise under test: committed within 0.5 s of completion
    d.kill9()
    rows = d.rows()
    assert len(rows) == n
    assert sorted(r["input_tokens"] for r in rows) == list(range(1, n + 1))


def test_port_override_and_two_homes_side_by_side(
    tmp_path: Path, provider_sim: ProviderSim
) -> None:
    a = start_daemon(tmp_path / "a", provider_sim, port=free_port())
    b = start_daemon(tmp_path / "b", provider_sim, port=free_port())
    try:
        for h in (a, b):
            with h.client() as http:
                assert http.post(ANTHROPIC, json=body(), headers=HEADERS).status_code == 200
        assert len(a.wait_rows(1)) == 1 and len(b.wait_rows(1)) == 1
        assert a.ca_cert.read_bytes() != b.ca_cert.read_bytes()  # each home its own CA
    finally:
        assert a.stop() == 0 and b.stop() == 0


# -- cloud sync ------------------------------------------------------------------------------


def test_daemon_runs_the_cloud_sync_loop(tmp_path: Path, provider_sim: ProviderSim) -> None:
    from cloud_sim import CloudSim

    cloud = CloudSim(tmp_path / "cloud-certs").start()
    handle: DaemonHandle | None = None
    try:
        cloud.add_key("hm-cloud-key")
        roots = tmp_path / "roots.pem"  # trust both simulators upstream
        roots.write_text(provider_sim.ca_path.read_text() + cloud.ca_path.read_text())
        config = sim_config(provider_sim).replace(str(provider_sim.ca_path), str(roots))
        config += f'[cloud]\nbase_url = "{cloud.base_url}"\n'
        home = tmp_path / "hm"
        home.mkdir(mode=0o700)
        token = home / "cloud-token"
        token.touch(mode=0o600)
        token.write_text("hm-cloud-key\n")
        handle = start_daemon(home, provider_sim, config_text=config)
        with handle.client() as http:
            assert http.post(ANTHROPIC, json=body(), headers=HEADERS).status_code == 200
        [row] = handle.wait_rows(1)
        deadline = time.monotonic() + 30
        while row["id"] not in cloud.accepted:
            assert time.monotonic() < deadline, (cloud.requests, handle.stdout()[-2000:])
            time.sleep(0.1)
        assert cloud.rows[row["id"]]["model"] == "claude-sonnet-4-5"
        assert '"cloud.sync_started"' in handle.stdout()
    finally:
        if handle is not None:
            assert handle.stop() == 0
            assert '"cloud.sync_stopped"' in handle.stdout()
        cloud.stop()


def test_proxy_variables_are_not_honoured(hm_home: Path, provider_sim: ProviderSim) -> None:
    # A daemon that inherited HTTPS_PROXY (a stale launchctl env) must not send its own
    # upstream traffic there: that is how proxy loops start.
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"HTTPS_PROXY": dead, "HTTP_PROXY": dead, "ALL_PROXY": dead, "https_proxy": dead}
    handle = start_daemon(hm_home, provider_sim, env_extra=env)
    try:
        with handle.client() as http:
            assert http.post(ANTHROPIC, json=body(), headers=HEADERS).status_code == 200
        [row] = handle.wait_rows(1)
        assert row["status"] == 200 and row["error"] is None
    finally:
        assert handle.stop() == 0


def test_invalid_config_exits_with_the_bad_file_code(
    hm_home: Path, provider_sim: ProviderSim
) -> None:
    handle = start_daemon(
        hm_home, provider_sim, config_text="[capture]\nbody_max_bytes = -5\n", wait=False
    )
    try:
        rc = handle.proc.wait(30)
    finally:
        handle.stop()
    assert rc == 3
    err = handle.stderr()
    assert "body_max_bytes" in err and "Traceback" not in err


def test_corrupt_database_exits_with_a_clear_message(
    hm_home: Path, provider_sim: ProviderSim
) -> None:
    db = hm_home / "db.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    handle = start_daemon(hm_home, provider_sim, wait=False)
    try:
        rc = handle.proc.wait(30)
    finally:
        handle.stop()
    assert rc == 3
    err = handle.stderr()
    assert str(db) in err and "Traceback" not in err
    assert db.read_bytes().startswith(b"this is not a database")  # never recreated


def test_placeholder_cloud_base_url_is_healed_at_boot(
    hm_home: Path, provider_sim: ProviderSim
) -> None:
    config = (
        sim_config(provider_sim) + '[cloud]\n# keep me\nbase_url = "https://api.haltonmeter.test"\n'
    )
    handle = start_daemon(hm_home, provider_sim, config_text=config)
    try:
        text = (hm_home / "config.toml").read_text()
        assert 'base_url = "https://api.haltonmeter.com"' in text and "# keep me" in text
        assert handle.stderr().count('"config.base_url.healed"') == 1
    finally:
        assert handle.stop() == 0
    # The next boot finds nothing to heal and says nothing.
    again = start_daemon(hm_home, provider_sim, config_text=(hm_home / "config.toml").read_text())
    try:
        assert again.stderr().count('"config.base_url.healed"') == 1
    finally:
        assert again.stop() == 0


def test_unreadable_ca_is_refused_not_run_broken(hm_home: Path, provider_sim: ProviderSim) -> None:
    # mitmproxy alone would log the error and run on, unable to intercept anything.
    ca_dir = hm_home / "mitmproxy"
    ca_dir.mkdir(mode=0o700)
    (ca_dir / "mitmproxy-ca.pem").write_text("not a key\n")
    handle = start_daemon(hm_home, provider_sim, wait=False)
    try:
        rc = handle.proc.wait(30)
    finally:
        handle.stop()
    assert rc == 3
    err = handle.stderr()
    assert f"{ca_dir}/mitmproxy-ca.pem" in err and "Traceback" not in err

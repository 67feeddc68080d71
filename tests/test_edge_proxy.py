# ruff: noqa: F811  (pytest fixtures imported by name)
"""The edge on its own (no daemon): tunnels, plain HTTP, loop refusal, concurrency, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_daemon import provider_sim as sim  # noqa: F401  (the `sim` fixture)
from fixtures_daemon import sim_config
from fixtures_edge import EdgeHandle, client_env, run_curl, start_edge
from hmtest import PYTHON, REPO, clean_env, free_port, wait_until

from halton_meter.core.paths import Home
from halton_meter.edge.handover import home_id
from halton_meter.sim import ProviderSim


@pytest.fixture
def edge(hm_home: Path, sim: ProviderSim) -> Iterator[EdgeHandle]:
    (hm_home / "config.toml").write_text(
        sim_config(sim, resolve_extra={"example.com:80": f"127.0.0.1:{sim.http_port}"})
    )
    handle = start_edge(hm_home, daemon_port=free_port())
    try:
        yield handle
    finally:
        handle.stop()


def _raw(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


# -- loops -------------------------------------------------------------------------------------


def test_connect_carrying_our_marker_is_refused_508(edge: EdgeHandle, hm_home: Path) -> None:
    marker = f"{home_id(Home(hm_home))}.1234.abcd"
    reply = _raw(
        edge.port,
        f"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: x\r\nX-Halton-Edge: {marker}\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 508 Loop Detected\r\n"), reply
    assert b"proxy loop refused (edge_marker)" in reply
    events = edge.events("edge.loop_refused")
    assert events and events[0]["reason"] == "edge_marker"
    wait_until(lambda: edge.stats()["loops_refused"] == 1)


def test_another_homes_marker_is_not_a_loop(edge: EdgeHandle) -> None:
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as s:
        s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nX-Halton-Edge: 000000000000.1.ab\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert edge.events("edge.loop_refused") == []


def test_connect_to_the_edge_itself_is_refused(edge: EdgeHandle) -> None:
    for target in (f"127.0.0.1:{edge.port}", f"localhost:{edge.port}"):
        reply = _raw(edge.port, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 508 "), reply
    plain = _raw(edge.port, f"GET http://127.0.0.1:{edge.port}/ HTTP/1.1\r\n\r\n".encode())
    assert plain.startswith(b"HTTP/1.1 508 "), plain
    assert [e["reason"] for e in edge.events("edge.loop_refused")] == ["self_target"] * 3


_FAKE_DAEMON = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[-1])))
s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
print(s.recv(4096).split(b"\r\n")[0].decode(), flush=True)
"""


def _from_fake_meter_process(edge: EdgeHandle, meter_home: Path) -> str:
    # argv names the daemon module (-m halton_meter.daemon), as supervisord starts it.
    result = subprocess.run(
        [PYTHON, "-c", _FAKE_DAEMON, "-m", "halton_meter.daemon", str(edge.port)],
        env=clean_env(meter_home),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_meter_process_of_this_home_is_refused(edge: EdgeHandle, hm_home: Path) -> None:
    assert _from_fake_meter_process(edge, hm_home) == "HTTP/1.1 508 Loop Detected"
    (event,) = edge.events("edge.loop_refused")
    assert event["reason"] == "meter_process" and event["meter_program"] == "daemon"


def test_meter_process_of_another_home_is_served(edge: EdgeHandle, tmp_path: Path) -> None:
    other = tmp_path / "other-home"
    other.mkdir()
    assert _from_fake_meter_process(edge, other).startswith("HTTP/1.1 200 ")
    assert edge.events("edge.loop_refused") == []


# -- tunnels and plain HTTP ------------------------------------------------------------------------


def test_https_tunnel_shows_the_origin_certificate(
    edge: EdgeHandle, sim: ProviderSim, tmp_path: Path, hm_home: Path
) -> None:
    env = client_env(hm_home, edge.url, sim.ca_path)
    result = run_curl("https://example.com/x", cwd=tmp_path, env=env, args=("-v",))
    assert result.returncode == 0, result.stderr
    assert "Hello from example.com" in result.stdout
    assert (
        "issuer:" in result.stderr and "Halton" in result.stderr.split("issuer:")[1].split("\n")[0]
    )


def test_plain_http_chunked_post_and_connection_close(edge: EdgeHandle, sim: ProviderSim) -> None:
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    req = (
        b"POST http://example.com/upload?q=1 HTTP/1.1\r\nHost: example.com\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic dTpw\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body
    )
    get = b"GET http://example.com/after HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    reply = _raw(edge.port, req + get)
    assert reply.count(b"Hello from example.com") == 2, reply
    recs = sim.requests[-2:]
    assert [r.path for r in recs] == ["/upload?q=1", "/after"] or [
        r.path.split("?")[0] for r in recs
    ] == ["/upload", "/after"]
    # hop-by-hop proxy headers never reach the origin
    assert recs[0].header("proxy-authorization") is None
    assert recs[0].header("proxy-connection") is None


def test_origin_form_request_to_the_edge_is_a_400(edge: EdgeHandle) -> None:
    reply = _raw(edge.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 "), reply


def test_unreachable_destination_is_a_502(edge: EdgeHandle) -> None:
    dead = free_port()
    reply = _raw(edge.port, f"CONNECT 127.0.0.1:{dead} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 502 Bad Gateway"), reply


def test_two_hundred_concurrent_connections_all_complete(
    edge: EdgeHandle, sim: ProviderSim
) -> None:
    ctx = ssl.create_default_context(cafile=str(sim.ca_path))

    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        await writer.start_tls(ctx, server_hostname="example.com")
        writer.write(
            f"GET /c/{i} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".encode()
        )
        data = await reader.read()
        writer.close()
        return data

    async def main() -> list[bytes]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 60)

    results = asyncio.run(main())
    assert len(results) == 200
    assert all(b"Hello from example.com" in r for r in results)
    wait_until(lambda: edge.stats()["connections_total"] >= 200, what="connections counted")


SPLICE_MODES = pytest.mark.parametrize("zerocopy", ["1", "0"], ids=["splice2", "transport-pipes"])


@SPLICE_MODES
def test_big_download_and_upload_through_a_tunnel_are_byte_exact(
    hm_home: Path, zerocopy: str
) -> None:
    # A local echo-ish origin: reads N bytes, answers with sha256 and then N bytes of its own.
    import hashlib
    import threading

    payload = bytes(range(256)) * 40000  # ~10 MB
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            got = b""
            while len(got) < len(payload):
                got += conn.recv(1 << 20)
            conn.sendall(hashlib.sha256(got).hexdigest().encode() + payload)
            conn.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    edge = start_edge(
        hm_home, daemon_port=free_port(), env_extra={"HALTON_METER_EDGE_ZEROCOPY": zerocopy}
    )
    try:
        with socket.create_connection(("127.0.0.1", edge.port), timeout=20) as s:
            s.sendall(f"CONNECT 127.0.0.1:{srv.getsockname()[1]} HTTP/1.1\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            assert head.startswith(b"HTTP/1.1 200 ")
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # half-close: the answer must still arrive
            data = b""
            while chunk := s.recv(1 << 20):
                data += chunk
        assert data[:64] == hashlib.sha256(payload).hexdigest().encode()
        assert data[64:] == payload
    finally:
        edge.stop()
        srv.close()


# -- boot ----------------------------------------------------------------------------------------


def test_non_loopback_listen_host_is_refused_at_boot(hm_home: Path) -> None:
    (hm_home / "config.toml").write_text('listen_host = "0.0.0.0"\n')
    result = subprocess.run(
        [PYTHON, "-m", "halton_meter.edge", "--port", str(free_port())],
        cwd=REPO,
        env=clean_env(hm_home),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1
    assert "listen_host=0.0.0.0 is not a loopback address (refusing to bind)" in (
        result.stdout + result.stderr
    )


def test_corrupt_stats_and_registry_are_rebuilt(hm_home: Path) -> None:
    (hm_home / "edge-stats.json").write_text("{not json")
    (hm_home / "project-registry.json").write_text("[]")
    edge = start_edge(hm_home, daemon_port=free_port())
    try:
        stats = wait_until(lambda: json.loads((hm_home / "edge-stats.json").read_text()))
        assert stats["unmetered_total"] == 0 and stats["pid"] == edge.proc.pid
        for key in ("unmetered_by_host", "loops_refused", "connections_total", "updated_at"):
            assert key in stats
        assert edge.events("edge.stats.corrupt") and edge.events("edge.registry.corrupt")
    finally:
        assert edge.stop() == 0


@SPLICE_MODES
def test_server_that_speaks_first_and_echoes(hm_home: Path, zerocopy: str) -> None:
    # A banner sent before the client says anything (SSH/SMTP-like) must not be lost, whether
    # the edge has already read it during the handshake or not.
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"BANNER " + b"x" * 200_000 + b"\n")
                while data := conn.recv(65536):
                    conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    edge = start_edge(
        hm_home, daemon_port=free_port(), env_extra={"HALTON_METER_EDGE_ZEROCOPY": zerocopy}
    )
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
                s.sendall(f"CONNECT 127.0.0.1:{srv.getsockname()[1]} HTTP/1.1\r\n\r\n".encode())
                f = s.makefile("rb")
                assert f.readline().startswith(b"HTTP/1.1 200 ")
                while f.readline() != b"\r\n":
                    pass
                assert f.readline() == b"BANNER " + b"x" * 200_000 + b"\n"
                s.sendall(b"ping\n")
                assert f.readline() == b"PING\n"
    finally:
        edge.stop()
        srv.close()


def test_listens_on_the_effective_edge_port(hm_home: Path) -> None:
    from hmtest import port_open

    from halton_meter.core.runtime import EffectivePorts, save_effective_ports

    edge_port = free_port()
    save_effective_ports(Home(hm_home), EffectivePorts(edge=edge_port, daemon=free_port(), api=1))
    with open(hm_home / "edge.err.log", "ab") as err:
        proc = subprocess.Popen(
            [PYTHON, "-m", "halton_meter.edge"],
            cwd=REPO,
            env=clean_env(hm_home),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(lambda: port_open(edge_port), what="edge on the effective port")
        reply = _raw(edge_port, f"CONNECT 127.0.0.1:{edge_port} HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 508 ")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0

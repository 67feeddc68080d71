"""Benchmark the edge: what it adds in front of the daemon, and tunnel throughput.

    .venv/bin/python scripts/bench/bench_edge.py [--requests 400] [--connections 100] [--mib 256]

Starts a provider simulator, the real daemon and the real edge (subprocesses, a throwaway
HALTON_METER_HOME) and measures, from one synchronous client:

- keep-alive: HTTPS requests on one open connection to api.anthropic.com (GET /v1/models: not
  a model call, so no row is written), through the bare daemon vs through edge + daemon.
  Target: the edge adds < 0.3 ms at the median.
- new connection: CONNECT + TLS handshake + one request + close, bare daemon vs edge + daemon
  (the edge identifies the client's process and resolves its project on each new connection).
  Target: the edge adds < 5 ms at the median.
- throughput: a bulk download from a local TCP source, direct vs tunnelled through the edge
  (a non-LLM host: byte for byte, never touching the daemon). Target: >= 80% of direct.

Writes scripts/bench/out/edge.json. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "scripts" / "bench" / "out" / "edge.json"
PYTHON = sys.executable
HOST = "api.anthropic.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env["HALTON_METER_HOME"] = str(home)
    return env


def stats_ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median": round(statistics.median(s) * 1000, 4),
        "p90": round(s[int(len(s) * 0.9) - 1] * 1000, 4),
        "mean": round(statistics.fmean(s) * 1000, 4),
        "n": len(s),
    }


# -- clients -----------------------------------------------------------------------------------


def _conn(proxy_port: int, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, context=ctx, timeout=30)
    conn.set_tunnel(HOST, 443)
    return conn


def _request(conn: http.client.HTTPSConnection) -> None:
    conn.request("GET", "/v1/models", headers={"x-api-key": "sk-ant-bench"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise SystemExit(f"unexpected status {resp.status}")


def keepalive(proxy_port: int, ctx: ssl.SSLContext, n: int) -> list[float]:
    conn = _conn(proxy_port, ctx)
    for _ in range(20):  # warm up: handshake, caches
        _request(conn)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        _request(conn)
        out.append(time.perf_counter() - t0)
    conn.close()
    return out


def new_connections(proxy_port: int, ctx: ssl.SSLContext, n: int) -> list[float]:
    for _ in range(5):
        c = _conn(proxy_port, ctx)
        _request(c)
        c.close()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = _conn(proxy_port, ctx)
        _request(c)
        c.close()
        out.append(time.perf_counter() - t0)
    return out


_SOURCE = r"""
import os, socket, sys
total = int(sys.argv[1])
block = os.urandom(1 << 20)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        sent = 0
        while sent < total:
            n = min(len(block), total - sent)
            conn.sendall(block[:n])
            sent += n
"""


def _source(total: int) -> tuple[subprocess.Popen[str], int]:
    """A TCP server process (its own GIL) that sends ``total`` bytes to each client."""
    proc = subprocess.Popen([PYTHON, "-c", _SOURCE, str(total)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _download(sock: socket.socket, total: int) -> float:
    got = 0
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    while got < total:
        n = sock.recv_into(buf)
        if not n:
            raise SystemExit(f"short download: {got} of {total}")
        got += n
    return time.perf_counter() - t0


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(
    edge_port: int, mib: int, rounds: int = 3, edge_pid: int | None = None
) -> dict[str, Any]:
    total = mib << 20
    src, port = _source(total)
    direct, tunnelled = [], []
    cpu = 0.0
    for _ in range(rounds):
        with socket.create_connection(("127.0.0.1", port)) as s:
            direct.append(_download(s, total))
        with socket.create_connection(("127.0.0.1", edge_port)) as s:
            s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"tunnel refused: {head!r}")
            c0 = _cpu_s(edge_pid) if sys.platform.startswith("linux") else 0.0
            tunnelled.append(_download(s, total))
            cpu += (_cpu_s(edge_pid) if sys.platform.startswith("linux") else 0.0) - c0
    src.kill()
    src.wait()
    d = mib / min(direct)
    e = mib / min(tunnelled)
    return {
        "mib": mib,
        "direct_mib_s": round(d, 1),
        "edge_mib_s": round(e, 1),
        "ratio": round(e / d, 3),
        "target_ratio": 0.8,
        "ok": e / d >= 0.8,
        # load-independent: what the edge itself spends per GiB tunnelled (user + system)
        "edge_cpu_s_per_gib": round(cpu / (rounds * mib / 1024), 3) if edge_pid else None,
    }


# -- the stack -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from halton_meter.sim import ProviderSim

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        base = Path(tmp)
        home = base / "hm"
        home.mkdir(mode=0o700)
        sim = ProviderSim(base / "sim").start()
        try:
            (home / "config.toml").write_text(
                'listen_host = "127.0.0.1"\n[upstream]\n'
                f'resolve = {{ "{HOST}:443" = "127.0.0.1:{sim.port}" }}\n'
                f'ca_bundle = "{sim.ca_path}"\n'
            )
            dport, eport = free_port(), free_port()
            with (
                open(home / "daemon.out.log", "ab") as out,
                open(home / "daemon.err.log", "ab") as err,
            ):
                procs.append(
                    subprocess.Popen(
                        [PYTHON, "-m", "halton_meter.daemon", "--port", str(dport)],
                        cwd=REPO,
                        env=env_for(home),
                        stdout=out,
                        stderr=err,
                    )
                )
            wait_port(dport, procs[-1])
            with open(home / "edge.out.log", "ab") as out, open(home / "edge.err.log", "ab") as err:
                procs.append(
                    subprocess.Popen(
                        [PYTHON, "-m", "halton_meter.edge", "--port", str(eport),
                         "--daemon-port", str(dport)],
                        cwd=REPO, env=env_for(home), stdout=out, stderr=err,
                    )
                )  # fmt: skip
            wait_port(eport, procs[-1])
            ca = home / "mitmproxy" / "mitmproxy-ca-cert.pem"
            deadline = time.monotonic() + 20
            while not ca.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            ctx = ssl.create_default_context(cafile=str(ca))

            # interleave bare/edge rounds so drift (GC, caches, the sim) hits both alike
            ka_bare: list[float] = []
            ka_edge: list[float] = []
            nc_bare: list[float] = []
            nc_edge: list[float] = []
            for _ in range(4):
                ka_bare += keepalive(dport, ctx, args.requests // 4)
                ka_edge += keepalive(eport, ctx, args.requests // 4)
                nc_bare += new_connections(dport, ctx, args.connections // 4)
                nc_edge += new_connections(eport, ctx, args.connections // 4)
            ka: dict[str, Any] = {
                "bare_daemon_ms": stats_ms(ka_bare),
                "edge_daemon_ms": stats_ms(ka_edge),
            }
            ka["added_median_ms"] = round(
                ka["edge_daemon_ms"]["median"] - ka["bare_daemon_ms"]["median"], 4
            )
            ka["target_added_ms"] = 0.3
            ka["ok"] = ka["added_median_ms"] < 0.3
            nc: dict[str, Any] = {
                "bare_daemon_ms": stats_ms(nc_bare),
                "edge_daemon_ms": stats_ms(nc_edge),
            }
            nc["added_median_ms"] = round(
                nc["edge_daemon_ms"]["median"] - nc["bare_daemon_ms"]["median"], 4
            )
            nc["target_added_ms"] = 5.0
            nc["ok"] = nc["added_median_ms"] < 5.0
            tp = throughput(eport, args.mib, edge_pid=procs[-1].pid)
            stats = json.loads((home / "edge-stats.json").read_text())
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
            sim.stop()

    result = {
        "keepalive": ka,
        "new_connection": nc,
        "throughput": tp,
        "edge_connections_total": stats.get("connections_total"),
        "edge_unmetered_total": stats.get("unmetered_total"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        # other work on the machine skews every ratio here; record it with the numbers
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

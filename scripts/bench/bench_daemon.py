"""Benchmark the daemon against the same requests direct and through bare mitmproxy.

    .venv/bin/python scripts/bench/bench_daemon.py [--requests 400] [--streams 40]
        [--big-mib 200] [--soak 10000] [--quick]

Starts a provider simulator (subprocess), the real daemon (``python -m halton_meter.daemon``
in a throwaway HALTON_METER_HOME) and bare ``mitmdump`` with no addons and the same options
(lazy connections, stream_large_bodies, the same upstream roots). Measures, in one run:

- keep-alive overhead: small non-streamed Messages calls on one open HTTPS connection,
  direct / bare mitmproxy / daemon (the daemon meters, prices and writes a row for each).
  Target: the daemon's added latency within 1.2x of bare mitmproxy's.
- SSE per-event lag: streamed calls with a pause between events; for the first and the last
  event of each stream, client arrival time minus the simulator's send time (one machine,
  one monotonic clock). Added lag = median(via) - median(direct). Target: < 1 ms (daemon).
  Bare mitmproxy with the same options buffers small SSE bodies to their end (that is why
  the daemon tees); a second bare instance streaming every body is the fair baseline.
- RSS: the daemon's peak RSS (psutil) through one 200 MiB streamed response and one 200 MiB
  JSON response; and RSS sampled over 10,000 metered requests (4 client threads).
  Targets: peak < 150 MiB; flat over the soak.

Prints a table; writes scripts/bench/out/daemon.json. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "scripts" / "bench" / "out" / "daemon.json"
PYTHON = sys.executable
HOST = "api.anthropic.com"
MIB = 1024 * 1024

BODY = json.dumps(
    {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
).encode()
HEADERS = {
    "x-api-key": "sk-ant-bench",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


# -- processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}: {proc.args!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(extra)
    return env


class Procs:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[subprocess.Popen[Any]] = []

    def start_sim(self) -> tuple[int, Path]:
        proc = subprocess.Popen(
            [PYTHON, "-m", "halton_meter.sim", "--port", "0", "--dir", str(self.base / "sim")],
            cwd=REPO,
            env=_clean_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        return int(info["port"]), Path(info["ca"])

    def start_daemon(self, sim_port: int, sim_ca: Path) -> tuple[int, Path, subprocess.Popen[Any]]:
        home = self.base / "hm"
        home.mkdir(mode=0o700)
        (home / "config.toml").write_text(
            'listen_host = "127.0.0.1"\n[upstream]\n'
            f'resolve = {{ "{HOST}:443" = "127.0.0.1:{sim_port}" }}\n'
            f'ca_bundle = "{sim_ca}"\n'
        )
        port = _free_port()
        proc = subprocess.Popen(
            [PYTHON, "-m", "halton_meter.daemon", "--port", str(port)],
            cwd=REPO,
            env=_clean_env(HALTON_METER_HOME=str(home)),
            stdout=open(home / "daemon.out.log", "ab"),  # noqa: SIM115 - owned by the process
            stderr=open(home / "daemon.err.log", "ab"),  # noqa: SIM115
        )
        self.procs.append(proc)
        _wait_port(port, proc)
        while not (home / "run" / "daemon.json").exists():
            time.sleep(0.05)
        return port, home, proc

    def start_mitmdump(
        self, bundle: Path, name: str = "bare", stream_large_bodies: str = "256k"
    ) -> tuple[int, Path, subprocess.Popen[Any]]:
        confdir = self.base / name
        confdir.mkdir(mode=0o700)
        port = _free_port()
        mitmdump = Path(PYTHON).parent / "mitmdump"
        proc = subprocess.Popen(
            [
                str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port),
                "--set", f"confdir={confdir}",
                "--set", "connection_strategy=lazy",
                "--set", f"stream_large_bodies={stream_large_bodies}",
                "--set", f"ssl_verify_upstream_trusted_ca={bundle}",
            ],
            env=_clean_env(),
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.procs.append(proc)
        _wait_port(port, proc)
        return port, confdir / "mitmproxy-ca-cert.pem", proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


# -- clients -----------------------------------------------------------------------------


class Target:
    """Where requests go: direct to the sim, or through a proxy with a CONNECT tunnel."""

    def __init__(
        self, name: str, ca: Path, sim_port: int, proxy_port: int | None, pid: int | None = None
    ) -> None:
        self.name = name
        self.pid = pid  # the proxy's process, for its CPU time
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.sim_port = sim_port
        self.proxy_port = proxy_port

    def connect(self) -> http.client.HTTPSConnection:
        if self.proxy_port is None:
            conn = http.client.HTTPSConnection("localhost", self.sim_port, context=self.ctx)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.proxy_port, context=self.ctx)
            # The daemon sees api.anthropic.com (a metered host); bare mitmproxy is sent to
            # the sim under the name its certificate also covers.
            conn.set_tunnel(
                HOST if self.name == "daemon" else "localhost",
                443 if self.name == "daemon" else self.sim_port,
            )
        conn.connect()
        return conn


def _post(
    conn: http.client.HTTPSConnection, body: bytes, extra: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    conn.request("POST", "/v1/messages", body=body, headers={**HEADERS, **(extra or {})})
    return conn.getresponse()


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def keepalive(target: Target, n: int, cpu: dict[str, float] | None = None) -> list[float]:
    conn = target.connect()
    times: list[float] = []
    try:
        for _ in range(20):  # warm-up: TLS, upstream connection, caches
            _post(conn, BODY).read()
        cpu0 = _cpu_s(target.pid)
        for _ in range(n):
            t0 = time.perf_counter()
            resp = _post(conn, BODY)
            resp.read()
            times.append((time.perf_counter() - t0) * 1000)
            assert resp.status == 200, resp.status
        if cpu is not None:
            cpu[target.name] = cpu.get(target.name, 0.0) + _cpu_s(target.pid) - cpu0
    finally:
        conn.close()
    return times


def stream_arrivals(
    target: Target, n: int, events: int, delay_ms: int
) -> list[tuple[float, float]]:
    """(first event arrival, last event arrival) monotonic times, one pair per stream."""
    conn = target.connect()
    out: list[tuple[float, float]] = []
    knobs = {"x-sim-events": str(events), "x-sim-delay-ms": str(delay_ms)}
    try:
        _post(conn, STREAM_BODY, knobs).read()  # warm-up
        for _ in range(n):
            resp = _post(conn, STREAM_BODY, knobs)
            first = last = 0.0
            buf = b""
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                now = time.monotonic()
                buf += chunk
                if not first and b"message_start" in buf:
                    first = now
                if b"message_stop" in buf:
                    last = now
            out.append((first, last))
    finally:
        conn.close()
    return out


def sim_log(sim_port: int, ca: Path) -> list[dict[str, Any]]:
    conn = http.client.HTTPSConnection(
        "localhost", sim_port, context=ssl.create_default_context(cafile=str(ca))
    )
    conn.request("GET", "/_sim/log")
    data = json.loads(conn.getresponse().read())
    conn.close()
    return list(data["requests"])


def sim_reset(sim_port: int, ca: Path) -> None:
    conn = http.client.HTTPSConnection(
        "localhost", sim_port, context=ssl.create_default_context(cafile=str(ca))
    )
    conn.request("POST", "/_sim/reset")
    conn.getresponse().read()
    conn.close()


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def big_response(target: Target, nbytes: int, stream: bool) -> int:
    conn = target.connect()
    got = 0
    try:
        resp = _post(conn, STREAM_BODY if stream else BODY, {"x-sim-response-bytes": str(nbytes)})
        while chunk := resp.read1(1 << 20):
            got += len(chunk)
    finally:
        conn.close()
    return got


def soak(target: Target, pid: int, total: int, threads: int = 4) -> list[dict[str, float]]:
    proc = psutil.Process(pid)
    done = 0
    lock = threading.Lock()
    samples: list[dict[str, float]] = []
    step = max(total // 10, 1)

    def worker(count: int) -> None:
        nonlocal done
        conn = target.connect()
        try:
            for _ in range(count):
                resp = _post(conn, BODY)
                resp.read()
                with lock:
                    done += 1
                    if done % step == 0:
                        samples.append({"requests": done, "rss_mib": proc.memory_info().rss / MIB})
        finally:
            conn.close()

    per = total // threads
    workers = [threading.Thread(target=worker, args=(per,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return samples


# -- report ------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "p95": round(_pct(values, 0.95), 4),
        "n": len(values),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--delay-ms", type=int, default=10)
    ap.add_argument("--big-mib", type=int, default=200)
    ap.add_argument("--soak", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.streams, args.big_mib, args.soak = 100, 10, 20, 1000

    base = Path(tempfile.mkdtemp(prefix="hm-bench-daemon-"))
    procs = Procs(base)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "params": vars(args),
    }  # fmt: skip
    try:
        sim_port, sim_ca = procs.start_sim()
        d_port, home, d_proc = procs.start_daemon(sim_port, sim_ca)
        bundle = home / "run" / "upstream-roots.pem"
        b_port, bare_ca, b_proc = procs.start_mitmdump(bundle)
        # Bare mitmproxy with the same options buffers an SSE body under 256k to its end;
        # this one streams every body, the fair baseline for per-event lag.
        s_port, stream_ca, _ = procs.start_mitmdump(bundle, "bare-stream", "1")
        targets = {
            "direct": Target("direct", sim_ca, sim_port, None),
            "mitmproxy": Target("mitmproxy", bare_ca, sim_port, b_port, b_proc.pid),
            "daemon": Target(
                "daemon", home / "mitmproxy" / "mitmproxy-ca-cert.pem", sim_port, d_port, d_proc.pid
            ),
        }

        stream_target = Target("mitmproxy", stream_ca, sim_port, s_port)

        # keep-alive request latency, interleaved rounds so drift hits every target alike
        lat: dict[str, list[float]] = {k: [] for k in targets}
        cpu: dict[str, float] = {}
        rounds = 4
        for _ in range(rounds):
            for name, t in targets.items():
                lat[name] += keepalive(t, args.requests // rounds, cpu)
        ka: dict[str, Any] = {k: _summary(v) for k, v in lat.items()}
        direct_med = ka["direct"]["median"]
        for k in ("mitmproxy", "daemon"):
            ka[k]["added_ms"] = round(ka[k]["median"] - direct_med, 4)
        ka["daemon_vs_mitmproxy_added_ratio"] = round(
            ka["daemon"]["added_ms"] / ka["mitmproxy"]["added_ms"], 3
        ) if ka["mitmproxy"]["added_ms"] > 0 else None  # fmt: skip
        n_req = rounds * (args.requests // rounds)
        for k in ("mitmproxy", "daemon"):
            # CPU time of the proxy process per request: steadier than latency on a busy box.
            ka[k]["proxy_cpu_ms_per_request"] = round(cpu.get(k, 0.0) / n_req * 1000, 4)
        result["keepalive_ms"] = ka

        # SSE per-event lag
        lags: dict[str, list[float]] = {}
        for name, t in [*targets.items(), ("mitmproxy_streaming", stream_target)]:
            sim_reset(sim_port, sim_ca)
            arrivals = stream_arrivals(t, args.streams, args.events, args.delay_ms)
            log = [r for r in sim_log(sim_port, sim_ca) if r.get("stream")][1:]  # drop warm-up
            samples = []
            for (first, last), rec in zip(arrivals, log, strict=False):
                if rec.get("first_event_at") and first:
                    samples.append((first - rec["first_event_at"]) * 1000)
                if rec.get("last_event_at") and last:
                    samples.append((last - rec["last_event_at"]) * 1000)
            lags[name] = samples
        sse: dict[str, Any] = {k: _summary(v) for k, v in lags.items()}
        for k in ("mitmproxy", "mitmproxy_streaming", "daemon"):
            sse[k]["added_ms"] = round(sse[k]["median"] - sse["direct"]["median"], 4)
        result["sse_event_lag_ms"] = sse

        # RSS through big responses
        rss: dict[str, Any] = {
            "idle_mib": round(psutil.Process(d_proc.pid).memory_info().rss / MIB, 1)
        }
        for stream in (True, False):
            with RssSampler(d_proc.pid) as sampler:
                got = big_response(targets["daemon"], args.big_mib * MIB, stream)
            key = "sse" if stream else "json"
            rss[f"peak_{key}_{args.big_mib}mib_mib"] = round(sampler.peak / MIB, 1)
            rss[f"bytes_{key}"] = got
        soak_samples = soak(targets["daemon"], d_proc.pid, args.soak)
        rss["soak"] = soak_samples
        if len(soak_samples) >= 2:
            rss["soak_growth_mib"] = round(
                soak_samples[-1]["rss_mib"] - soak_samples[0]["rss_mib"], 1
            )
        result["rss"] = rss
        stats = json.loads((home / "run" / "daemon-stats.json").read_text())
        result["daemon_stats"] = stats
    finally:
        procs.stop()
        shutil.rmtree(base, ignore_errors=True)

    targets_met = {
        "keepalive_within_1.2x_of_mitmproxy": (ka["daemon_vs_mitmproxy_added_ratio"] or 0) <= 1.2,
        "sse_added_lag_below_1ms": sse["daemon"]["added_ms"] < 1.0,
        "rss_peak_below_150mib": max(v for k, v in result["rss"].items() if k.startswith("peak_"))
        < 150,
        "rss_flat_over_soak": abs(result["rss"].get("soak_growth_mib", 0)) < 10,
    }
    result["targets_met"] = targets_met
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)
    print(f"\nwritten: {OUT.relative_to(REPO)}")
    return 0


def _print_table(r: dict[str, Any]) -> None:
    ka, sse, rss = r["keepalive_ms"], r["sse_event_lag_ms"], r["rss"]
    print(f"{'keep-alive request (ms)':28} {'median':>8} {'p95':>8} {'added':>8}")
    for k in ("direct", "mitmproxy", "daemon"):
        print(
            f"  {k:26} {ka[k]['median']:8.3f} {ka[k]['p95']:8.3f} {ka[k].get('added_ms', 0):8.3f}"
        )
    print(
        f"  daemon added / mitmproxy added = {ka['daemon_vs_mitmproxy_added_ratio']}  (target <= 1.2)"
    )
    print(
        f"  proxy CPU per request (ms): mitmproxy {ka['mitmproxy']['proxy_cpu_ms_per_request']}"
        f", daemon {ka['daemon']['proxy_cpu_ms_per_request']}"
    )
    print(f"{'SSE event lag (ms)':28} {'median':>8} {'p95':>8} {'added':>8}")
    for k in ("direct", "mitmproxy", "mitmproxy_streaming", "daemon"):
        print(
            f"  {k:26} {sse[k]['median']:8.3f} {sse[k]['p95']:8.3f} {sse[k].get('added_ms', 0):8.3f}"
        )
    print("daemon RSS (MiB)")
    for k, v in rss.items():
        if k != "soak":
            print(f"  {k:40} {v}")
    for s in rss.get("soak", []):
        print(f"  after {int(s['requests']):6d} requests: {s['rss_mib']:.1f}")
    print("targets:", json.dumps(r["targets_met"]))


if __name__ == "__main__":
    raise SystemExit(main())

"""`doctor --curl`: one real request through the edge, trusting ONLY the meter's CA.

Three hops, each with its timing:
- edge: the TCP connection to the edge (curl's ``time_connect``);
- daemon: the CONNECT and a TLS handshake that verifies against the meter's CA alone: it
  succeeds only when the daemon intercepted (``time_appconnect``). A certificate from any
  other CA means the edge tunnelled straight through (failing open);
- upstream: an HTTP status came back from the provider (``time_starttransfer``). A 502/504
  written by mitmproxy itself (``Server: mitmproxy``) means the daemon could not reach it.

The default target is ``GET https://api.anthropic.com/v1/models``: an intercepted provider
host, and not a model call, so it never becomes a row. With ``[upstream] resolve`` it
reaches whatever the config maps the host to. Uses the real ``curl`` when present, httpx
otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from halton_meter.core.paths import Home
from halton_meter.doctor.checks import RESTART
from halton_meter.doctor.deep_checks import FAIL, OK, SKIP, WARN, Finding
from halton_meter.doctor.status import BROKEN, INCONSISTENT

DEFAULT_URL = "https://api.anthropic.com/v1/models"
TIMEOUT_S = 20.0
_PROXY_ENV = {"HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"}


@dataclass(frozen=True)
class Probe:
    """What one request saw. Times are seconds from the start (0.0: not reached)."""

    tool: str  # "curl" or "httpx"
    connect: float
    tls: float
    first_byte: float
    status: int  # 0: no HTTP status
    from_mitmproxy: bool  # the status was written by mitmproxy, not the provider
    error: str  # "" when the request completed
    exit_code: int = 0  # curl's


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.upper() not in _PROXY_ENV}


def _parse_headers(text: str) -> tuple[int, bool]:
    """The last response's status and whether mitmproxy wrote it (curl -D output)."""
    status, server = 0, ""
    for line in text.splitlines():
        if line.startswith("HTTP/"):
            parts = line.split()
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            server = ""
        elif line.lower().startswith("server:"):
            server = line.split(":", 1)[1].strip().lower()
    return status, server.startswith("mitmproxy")


def probe_with_curl(curl: str, proxy: str, ca_cert: Path, url: str, timeout: float) -> Probe:
    with tempfile.TemporaryDirectory(prefix="hm-doctor-") as tmp:
        headers = Path(tmp) / "headers"
        argv = [
            curl,
            "-sS",
            "--http1.1",
            "-o",
            os.devnull,
            "-D",
            str(headers),
            "-w",
            "%{time_connect} %{time_appconnect} %{time_starttransfer} %{http_code}",
            "--max-time",
            str(int(timeout)),
            "-x",
            proxy,
            "--cacert",
            str(ca_cert),
            url,
        ]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout + 5,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Probe("curl", 0.0, 0.0, 0.0, 0, False, f"curl timed out after {timeout}s", 28)
        try:
            head = headers.read_text(errors="replace")
        except OSError:
            head = ""
    fields = done.stdout.split()
    times = [float(f) if f.replace(".", "", 1).isdigit() else 0.0 for f in fields[:3]]
    times += [0.0] * (3 - len(times))
    status, from_mitm = _parse_headers(head)
    if not status and len(fields) > 3 and fields[3].isdigit():
        status = int(fields[3])
    error = next((ln for ln in done.stderr.splitlines() if ln.startswith("curl: (")), "")
    if done.returncode and not error:
        error = f"curl exited {done.returncode}"
    connect = times[0]
    if done.returncode and not connect and done.returncode not in _NO_PROXY_CONNECT:
        # curl reports no times for a failed transfer; it did get past the edge's accept.
        connect = _time_connect(proxy)
    return Probe("curl", connect, times[1], times[2], status, from_mitm, error, done.returncode)


# curl exit codes that mean the proxy itself was not reached: resolve, connect, timeout.
_NO_PROXY_CONNECT = (5, 7, 28)


def _time_connect(proxy: str) -> float:
    """Seconds a TCP connection to the proxy takes (0.0 when it is refused)."""
    parts = urlsplit(proxy)
    t0 = time.monotonic()
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=2):
            return max(time.monotonic() - t0, 1e-6)
    except OSError:
        return 0.0


def probe_with_httpx(proxy: str, ca_cert: Path, url: str, timeout: float) -> Probe:
    import httpx

    events: dict[str, float] = {}
    t0 = time.monotonic()

    def trace(name: str, info: object) -> None:
        events[name] = time.monotonic() - t0

    try:
        context = ssl.create_default_context(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        return Probe("httpx", 0.0, 0.0, 0.0, 0, False, f"cannot read {ca_cert}: {exc}")
    error, status, from_mitm = "", 0, False
    try:
        with httpx.Client(proxy=proxy, verify=context, trust_env=False, timeout=timeout) as client:
            response = client.get(url, extensions={"trace": trace})
            status = response.status_code
            from_mitm = response.headers.get("server", "").lower().startswith("mitmproxy")
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    connect = events.get("connection.connect_tcp.complete", 0.0)
    # Through a proxy httpcore names it "proxy.start_tls"; the last response headers are
    # the provider's (the first are the CONNECT's).
    tls = max((v for k, v in events.items() if k.endswith("start_tls.complete")), default=0.0)
    first = max(
        (v for k, v in events.items() if k.endswith("receive_response_headers.complete")),
        default=0.0,
    )
    return Probe("httpx", connect, tls, first if status else 0.0, status, from_mitm, error)


def run_probe(
    home: Home, edge_port: int, url: str = DEFAULT_URL, timeout: float = TIMEOUT_S
) -> Probe:
    proxy = f"http://127.0.0.1:{edge_port}"
    curl = shutil.which("curl")
    if curl:
        return probe_with_curl(curl, proxy, home.ca_cert, url, timeout)
    return probe_with_httpx(proxy, home.ca_cert, url, timeout)


def hops(home: Home, edge_port: int, probe: Probe, url: str) -> list[tuple[str, Finding]]:
    """The three rows: ``curl.edge``, ``curl.daemon``, ``curl.upstream``."""
    host = urlsplit(url).hostname or url
    via = f"({probe.tool})"
    if not home.ca_cert.is_file():
        skip = Finding(
            SKIP, f"no CA at {home.ca_cert}: start the meter first.", "halton-meter start"
        )
        return [("curl.edge", skip), ("curl.daemon", skip), ("curl.upstream", skip)]
    rows: list[tuple[str, Finding]] = []
    if probe.connect <= 0:
        rows.append(
            (
                "curl.edge",
                Finding(
                    FAIL,
                    f"cannot connect to the edge at 127.0.0.1:{edge_port} {via}: {probe.error}.",
                    f"tail -n 100 {home.edge_err_log}; {RESTART}",
                    BROKEN,
                ),
            )
        )
        not_reached = Finding(SKIP, "not reached: the edge did not accept.")
        return rows + [("curl.daemon", not_reached), ("curl.upstream", not_reached)]
    rows.append(
        (
            "curl.edge",
            Finding(OK, f"edge 127.0.0.1:{edge_port} accepted in {_ms(probe.connect)} {via}."),
        )
    )
    if probe.tls <= 0:
        tunnelled = probe.exit_code == 60 or "certificate" in probe.error.lower()
        why = (
            "the TLS certificate is not from the meter's CA: the edge tunnelled straight "
            "through (the daemon is down or unreachable: failing open)"
            if tunnelled
            else "no TLS handshake with the meter's CA through the edge"
        )
        rows.append(
            (
                "curl.daemon",
                Finding(
                    FAIL,
                    f"{why}: {probe.error}.",
                    f"tail -n 100 {home.daemon_err_log}; {RESTART}",
                    INCONSISTENT,
                ),
            )
        )
        rows.append(("curl.upstream", Finding(SKIP, "not reached: not intercepted.")))
        return rows
    rows.append(
        (
            "curl.daemon",
            Finding(
                OK,
                f"intercepted: TLS with the meter's CA for {host} in "
                f"{_ms(probe.tls - probe.connect)} (CONNECT + handshake).",
            ),
        )
    )
    if not probe.status or probe.from_mitmproxy:
        detail = (
            f"the daemon answered {probe.status} itself: it could not reach {host}"
            if probe.status
            else f"no HTTP status came back from {host}: {probe.error}"
        )
        rows.append(
            (
                "curl.upstream",
                Finding(
                    WARN,
                    f"{detail} (offline, DNS, a firewall, or [upstream] resolve).",
                    f"tail -n 100 {home.daemon_err_log}   # then check the network and "
                    "[upstream] in config.toml",
                ),
            )
        )
        return rows
    rows.append(
        (
            "curl.upstream",
            Finding(
                OK,
                f"{host} answered HTTP {probe.status}; first byte after "
                f"{_ms(probe.first_byte - probe.tls)} (total {_ms(probe.first_byte)}).",
            ),
        )
    )
    return rows

"""Liveness probes: does each program still answer, not merely exist?

edge and daemon: TCP accept, then one request a proxy answers without leaving loopback. The
edge answers ``OPTIONS *`` itself (400: origin-form to a forward proxy); the daemon (mitmproxy)
answers ``CONNECT 127.0.0.1:9`` (200, or 502 at worst; never a DNS lookup, unlike a made-up
host name). Any HTTP status line, or the peer closing the connection, is alive; a refused
connect or silence until the timeout is a failure (a wedged event loop still accepts through
the kernel backlog, and never answers). api: ``GET /health`` must be 200.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass

PROBE_TIMEOUT_S = 2.0
FAILURES_BEFORE_RESTART = 3
_EDGE_PROBE = b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: halton-watchdog\r\n\r\n"
_DAEMON_PROBE = (
    b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUser-Agent: halton-watchdog\r\n\r\n"
)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str = ""


def probe_proxy(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = PROBE_TIMEOUT_S,
    request: bytes = _EDGE_PROBE,
) -> ProbeResult:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            first = sock.recv(64)
    except TimeoutError:
        return ProbeResult(False, f"no answer from {host}:{port} within {timeout}s")
    except ConnectionResetError:
        return ProbeResult(True, "reset")  # answered, by closing: the loop runs
    except OSError as exc:
        return ProbeResult(False, f"{host}:{port}: {exc}")
    if not first or first.startswith(b"HTTP/"):
        return ProbeResult(True, first.split(b"\r\n", 1)[0].decode("latin-1"))
    return ProbeResult(True, "answered")


def probe_api(port: int, host: str = "127.0.0.1", timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health", headers={"User-Agent": "halton-watchdog"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, f"GET http://{host}:{port}/health: {exc or type(exc).__name__}")
    finally:
        conn.close()
    return ProbeResult(status == 200, f"/health {status}")


def probe(program: str, port: int) -> ProbeResult:
    if program == "api":
        return probe_api(port)
    return probe_proxy(port, request=_DAEMON_PROBE if program == "daemon" else _EDGE_PROBE)


class LivenessTracker:
    """Consecutive failures per program; a success resets the count."""

    def __init__(self, threshold: int = FAILURES_BEFORE_RESTART) -> None:
        self.threshold = threshold
        self.failures: dict[str, int] = {}

    def record(self, program: str, result: ProbeResult) -> bool:
        """Record one probe; True when the program must be restarted now."""
        if result.ok:
            self.failures[program] = 0
            return False
        self.failures[program] = self.failures.get(program, 0) + 1
        if self.failures[program] >= self.threshold:
            self.failures[program] = 0
            return True
        return False

    def reset(self, program: str) -> None:
        self.failures[program] = 0

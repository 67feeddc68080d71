"""Shared test helpers: importable from any test module as `hmtest`."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# The keys every `report --json` row has at least (DESIGN.md, Contracts).
REPORT_ROW_CONTRACT = [
    "id",
    "ts",
    "tool",
    "project",
    "tier",
    "provider",
    "api",
    "model",
    "stream",
    "status",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "priced",
    "partial",
    "latency_ms",
    "ttfb_ms",
]


def free_port() -> int:
    """A port from bind(0) on loopback; the socket is closed again before returning."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # the thing may not exist yet
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}"
        + (f" (last error: {last_exc!r})" if last_exc else "")
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for a child process: our home, no proxy variables inherited."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper()
        not in {
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
        }
    }
    env["HALTON_METER_HOME"] = str(home)
    env.update(extra)
    return env

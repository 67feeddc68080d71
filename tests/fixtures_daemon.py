"""Run the real daemon (`python -m halton_meter.daemon`) against a ProviderSim, over TLS.

Reusable by any test (edge, supervision, CLI):

    from fixtures_daemon import DaemonHandle, start_daemon, sim_config   # helpers
    pytest_plugins = ["fixtures_daemon"]   # or import the fixtures by name below

Fixtures:
- ``provider_sim``: a started :class:`ProviderSim` (TLS, plus a plain HTTP port), stopped at
  the end of the test.
- ``daemon``: given ``hm_home`` and ``provider_sim``, writes ``config.toml`` (``[upstream]
  resolve`` sends every provider host name, and example.com, to the sim; ``ca_bundle`` is the
  sim's CA), starts the daemon as a real subprocess on a free port with
  ``HALTON_METER_HOME=hm_home``, waits until it listens and yields a :class:`DaemonHandle`.
  Teardown: SIGTERM by pid, SIGKILL after a deadline.
- ``shared_daemon``: the same, one per test module (own home under tmp_path_factory), for
  suites that make many requests; use ``handle.mark()`` / ``handle.rows_since(mark)``.

The daemon's stdout/stderr go to ``<home>/daemon.out.log`` / ``daemon.err.log`` like under
supervisord. Clients reach providers with the daemon as their HTTP proxy and trust the
daemon's CA: ``handle.proxy_url`` and ``handle.ca_cert``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fixtures_process import ProcessHandle, spawn
from hmtest import PYTHON, clean_env, free_port

from halton_meter.sim import ProviderSim

# Every host the sim plays that a test may address, on 443.
SIM_HOSTS: tuple[str, ...] = (
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
    "openrouter.ai",
    "myres.openai.azure.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
    "api.groq.com",
    "example.com",
)

# An OpenAI-compatible host users list in `[capture] hosts`, and one whose upstream is down.
COMPATIBLE_HOST = "api.groq.com"
DOWN_HOST = "down.example.org"

START_TIMEOUT_S = 30.0


def sim_config(
    sim: ProviderSim,
    *,
    hosts: tuple[str, ...] = SIM_HOSTS,
    extra_toml: str = "",
    resolve_extra: Mapping[str, str] | None = None,
) -> str:
    """config.toml text sending ``hosts`` (port 443) to the sim and trusting its CA."""
    entries = {f"{h}:443": f"127.0.0.1:{sim.port}" for h in hosts}
    entries.update(resolve_extra or {})
    resolve = ", ".join(f'"{k}" = "{v}"' for k, v in entries.items())
    return (
        'listen_host = "127.0.0.1"\n'
        f"{extra_toml}\n"
        "[upstream]\n"
        f"resolve = {{ {resolve} }}\n"
        f'ca_bundle = "{sim.ca_path}"\n'
    )


@dataclass
class DaemonHandle(ProcessHandle):
    sim: ProviderSim

    program: ClassVar[str] = "daemon"

    @property
    def proxy_url(self) -> str:
        return self.url

    @property
    def ca_cert(self) -> Path:
        """mitmproxy's CA certificate in this home: what clients must trust."""
        return self.home / "mitmproxy" / "mitmproxy-ca-cert.pem"

    @property
    def db(self) -> Path:
        return self.home / "db.sqlite"

    def stdout(self) -> str:
        return self.out_log.read_text(errors="replace") if self.out_log.exists() else ""

    def stderr(self) -> str:
        return self.err_log.read_text(errors="replace") if self.err_log.exists() else ""

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the daemon's CA only (what a metered client is given)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client using the daemon as its proxy (never the environment's)."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(
            proxy=self.proxy_url, verify=self.ssl_context(), trust_env=False, **kwargs
        )

    def stats(self) -> dict[str, Any]:
        return dict(json.loads((self.home / "run" / "daemon-stats.json").read_text()))

    # -- rows -------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first, as dicts of the stored columns."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            try:
                cur = conn.execute("SELECT * FROM requests ORDER BY seq")
            except sqlite3.OperationalError:
                return []  # schema not created yet
            return [dict(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def mark(self) -> int:
        """The newest row's seq now: pass it to ``rows_since`` to see only later rows."""
        rows = self.rows()
        return int(rows[-1]["seq"]) if rows else 0

    def rows_since(self, mark: int) -> list[dict[str, Any]]:
        return [r for r in self.rows() if int(r["seq"]) > mark]

    def wait_rows(self, n: int, since: int = 0, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least ``n`` rows newer than ``since`` exist; returns them."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self.rows_since(since)
            if len(rows) >= n:
                return rows
            self.check_alive()
            time.sleep(0.02)
        raise AssertionError(
            f"expected {n} rows, found {len(rows)}: {rows!r}\nstderr: {self.stderr()[-2000:]}"
        )

    # -- process ----------------------------------------------------------------------------

    def kill9(self) -> None:
        self._stopped = True
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def start_daemon(
    home: Path,
    sim: ProviderSim,
    *,
    port: int | None = None,
    config_text: str | None = None,
    env_extra: Mapping[str, str] | None = None,
    wait: bool = True,
) -> DaemonHandle:
    """Write config.toml (unless ``config_text`` is given, then that), start the daemon."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "config.toml").write_text(config_text if config_text is not None else sim_config(sim))
    port = port or free_port()
    args = [PYTHON, "-m", "halton_meter.daemon", "--port", str(port)]
    proc = spawn("daemon", args, home, clean_env(home, **dict(env_extra or {})))
    handle = DaemonHandle(port=port, home=home, sim=sim, proc=proc)
    if wait:
        health = home / "run" / "daemon.json"
        handle.wait_listening(START_TIMEOUT_S, ready=health.exists)
    return handle


@pytest.fixture
def provider_sim(tmp_path: Path) -> Iterator[ProviderSim]:
    sim = ProviderSim(tmp_path / "sim").start(http_port=0)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def daemon(hm_home: Path, provider_sim: ProviderSim) -> Iterator[DaemonHandle]:
    handle = start_daemon(hm_home, provider_sim)
    try:
        yield handle
    finally:
        handle.stop()


def rich_config(sim: ProviderSim) -> str:
    """sim_config plus an extra intercepted host (the sim) and one whose upstream is down."""
    return sim_config(
        sim,
        extra_toml=f'[capture]\nhosts = ["{COMPATIBLE_HOST}", "{DOWN_HOST}"]\n',
        resolve_extra={f"{DOWN_HOST}:443": f"127.0.0.1:{free_port()}"},
    )


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonHandle]:
    base = tmp_path_factory.mktemp("shared-daemon")
    sim = ProviderSim(base / "sim").start(http_port=0)
    try:
        handle = start_daemon(base / "hm", sim, config_text=rich_config(sim))
        try:
            yield handle
        finally:
            handle.stop()
    finally:
        sim.stop()

"""Everything status looks at, gathered once into one value the checks read.

Two parts: :class:`ServiceFacts` (files in the home, sockets, supervisord) are the same for
every caller, so the API can gather them; :class:`ClientFacts` (the caller's environment and
shell rc files) only the CLI in the user's shell can see.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts
from halton_meter.doctor import probes
from halton_meter.install.modes import ENV_ONLY as DEFAULT_MODE  # no sentinel means env-only
from halton_meter.install.modes import read_sentinel
from halton_meter.service.rpc import ProgramInfo

PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY")
# The CA variables, in the order of the reference's `unset` line.
CA_VARS = (
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "CODEX_CA_CERTIFICATE",  # not in the reference's list; `run` sets it for Codex
)

ProgramInfosFn = Callable[[Home], "dict[str, ProgramInfo] | None"]


@dataclass(frozen=True)
class ServiceFacts:
    home: Home
    ports: EffectivePorts
    listen_host: str
    config_error: str | None
    runtime: dict[str, Any]
    programs: dict[str, ProgramInfo] | None  # None: supervisord did not answer
    watchdog: dict[str, Any]
    edge_stats: dict[str, Any]
    daemon_stats: dict[str, Any]
    cloud_state: dict[str, Any]
    install_mode: str | None  # the sentinel's raw value; None when there is none
    accepting: dict[str, bool]  # edge/daemon/api -> a TCP connect succeeds
    foreign: dict[str, list[probes.Listener]]  # edge/daemon/api -> listeners not ours

    @property
    def mode(self) -> str:
        return self.install_mode or DEFAULT_MODE

    @property
    def unmetered(self) -> int:
        value = self.edge_stats.get("unmetered_total")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _read_json(path: Path) -> dict[str, Any]:
    """A state file as a dict; missing, unreadable or corrupt reads as {} (never a crash)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_sentinel(home: Home) -> str | None:
    return read_sentinel(home).raw or None


def _our_pids(
    home: Home, runtime: Mapping[str, Any], programs: Mapping[str, ProgramInfo] | None
) -> set[int]:
    # Not this process: the CLI or API computing status is no parent of our listeners, and
    # counting its children would hide a foreign listener started from the same shell.
    pids: set[int] = set()
    for info in (programs or {}).values():
        if info.pid:
            pids.add(info.pid)
    pid = probes.read_pid_file(home.supervisord_pid)
    if pid:
        pids.add(pid)
    for key, value in runtime.items():
        if key.endswith("pid") and isinstance(value, int):
            pids.add(value)
    recorded = runtime.get("pids")
    if isinstance(recorded, dict):
        pids |= {v for v in recorded.values() if isinstance(v, int)}
    return pids


def gather_service(home: Home, *, program_infos: ProgramInfosFn | None = None) -> ServiceFacts:
    from halton_meter.core.config import ConfigError, load_config
    from halton_meter.core.runtime import load_effective_ports, read_runtime
    from halton_meter.service.watchdog_state import read_watchdog_state

    listen_host = "127.0.0.1"
    config_error = None
    try:
        listen_host = load_config(home).listen_host
    except ConfigError as exc:
        config_error = str(exc)
    ports = load_effective_ports(home)
    runtime = read_runtime(home)
    if program_infos is None:
        from halton_meter.service.rpc import program_infos as rpc_program_infos

        program_infos = rpc_program_infos
    programs = program_infos(home)
    roles = ports.as_dict()
    holders = probes.listeners(roles.values())
    ours = _our_pids(home, runtime, programs)
    foreign = {
        role: [
            listener
            for listener in holders.get(port, [])
            if listener.pid != os.getpid() and not probes.is_ours(listener.pid, ours, home.root)
        ]
        for role, port in roles.items()
    }
    return ServiceFacts(
        home=home,
        ports=ports,
        listen_host=listen_host,
        config_error=config_error,
        runtime=runtime,
        programs=programs,
        watchdog=read_watchdog_state(home),
        edge_stats=_read_json(home.edge_stats),
        daemon_stats=_read_json(home.run_dir / "daemon-stats.json"),
        cloud_state=_read_json(home.cloud_state),
        install_mode=_read_sentinel(home),
        accepting={role: probes.accepts(listen_host, port) for role, port in roles.items()},
        foreign=foreign,
    )


# -- the caller's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class SurfaceDrift:
    """A surface (shell rc block, session env, system proxy) that disagrees with the
    sentinel or gives clients another port: the install reconciler's ``drift``."""

    surface: str
    message: str


@dataclass(frozen=True)
class ClientFacts:
    edge_port: int
    env: Mapping[str, str]
    mode: str = DEFAULT_MODE
    drift: list[SurfaceDrift] = field(default_factory=list)


def _surface_drift(home: Home) -> tuple[str, list[SurfaceDrift]]:
    """The install reconciler's view of the surfaces. Never raises: a surface we cannot
    read (no gsettings, odd rc file) must not take status down."""
    from halton_meter.core.config import load_config
    from halton_meter.core.logging import get_logger
    from halton_meter.core.runtime import load_effective_ports
    from halton_meter.install import modes
    from halton_meter.install.env import edge_url

    try:
        mode = modes.read_sentinel(home).mode
        ports = load_effective_ports(home)
        # Only the proxy URL is compared; client_env() would also write files into the home,
        # and status never writes.
        expected = {"HTTPS_PROXY": edge_url(load_config(home), ports)}
        found = modes.drift(home, ports, expected)
    except Exception as exc:  # noqa: BLE001 - status reports what it can
        get_logger().info("status.drift_unavailable", error=f"{type(exc).__name__}: {exc}")
        return DEFAULT_MODE, []
    # The sentinel's own value is a service check (it needs no surface to judge).
    return mode, [SurfaceDrift(d.surface, d.message) for d in found if d.surface != "sentinel"]


def gather_client(home: Home, edge_port: int, env: Mapping[str, str]) -> ClientFacts:
    mode, drift = _surface_drift(home)
    return ClientFacts(edge_port=edge_port, env=dict(env), mode=mode, drift=drift)

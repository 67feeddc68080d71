"""Port negotiation: the effective (edge, daemon, api) ports.

Defaults 8081, 8090, 8765. A port held by another process moves to a nearby free one
(edge 8081-8089, daemon 8090-8099, api 8765-8774); a port pinned in config.toml never
moves (a busy pin is an error naming the holder). The chosen tuple is persisted to
effective-ports.json and runtime.toml.

Two negotiations racing, in two processes or two homes, never hand out the same port:
they serialise on a per-user lock file and leave short-lived claims, so a port chosen a
moment ago but not yet bound is not chosen again by another home.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from halton_meter.core.config import Config, load_config
from halton_meter.core.errors import EXIT_PORTS, HaltonError
from halton_meter.core.fsutil import atomic_write, ensure_dir
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import HOME_ENV, Home
from halton_meter.core.runtime import (
    DEFAULT_PORTS,
    PROGRAMS,
    EffectivePorts,
    load_effective_ports,
    save_effective_ports,
)

RANGE_SIZE = {"edge": 9, "daemon": 10, "api": 10}
# Long enough to cover negotiation-to-bind; short so a stopped home frees its ports soon.
CLAIM_TTL_S = 20.0
LOCK_DIR_ENV = "HALTON_METER_PORTS_LOCK_DIR"


class PortError(HaltonError):
    exit_code = EXIT_PORTS


@dataclass(frozen=True)
class PortHolder:
    pid: int | None
    name: str
    cmdline: str

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "an unknown process"
        return f"{who} ({self.cmdline or self.name})" if (self.cmdline or self.name) else who


def port_range(program: str) -> range:
    start = DEFAULT_PORTS[program]
    return range(start, start + RANGE_SIZE[program])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can a server bind ``host:port`` now? (SO_REUSEADDR, as our servers set it.)"""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if host.strip("[]") not in ("127.0.0.1", "::1"):
                # Not an address of this machine (yet): judge the port on loopback; the
                # program's own bind reports the address problem.
                return port_is_free(port, "::1" if family == socket.AF_INET6 else "127.0.0.1")
            raise
    return True


def port_holder(port: int) -> PortHolder | None:
    """Who listens on ``port`` (any address), or None."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return PortHolder(None, "", "")
            try:
                proc = psutil.Process(conn.pid)
                return PortHolder(conn.pid, proc.name(), " ".join(proc.cmdline())[:200])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return PortHolder(conn.pid, "", "")
    return None


def is_ours(pid: int | None, home: Home) -> bool:
    """A process of this home's meter: its HALTON_METER_HOME (or default home) is ours."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
        if "halton_meter" not in cmdline and "halton_watchdog" not in cmdline:
            return False
        env = proc.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return False
    their_home = Home.resolve(env.get(HOME_ENV) or Path(env.get("HOME", "~")) / ".halton-meter")
    return their_home.root == home.root


# --- the cross-process lock and claims --------------------------------------------------


def _lock_dir() -> Path:
    base = os.environ.get(LOCK_DIR_ENV) or os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "halton-meter" if base else Path.home() / ".cache" / "halton-meter"
    return ensure_dir(path)


@contextlib.contextmanager
def _negotiation_lock() -> Iterator[Path]:
    directory = _lock_dir()
    fd = os.open(directory / "ports.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield directory / "port-claims.json"
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_claims(path: Path, now: float) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        port: claim
        for port, claim in data.items()
        if isinstance(claim, dict) and now - float(str(claim.get("at", 0))) < CLAIM_TTL_S
    }


# --- negotiation ------------------------------------------------------------------------


def negotiate(home: Home | None = None, config: Config | None = None) -> EffectivePorts:
    """Choose, persist and return the effective ports for this home."""
    home = home or Home.resolve()
    config = config or load_config(home)
    log = get_logger()
    previous = load_effective_ports(home)
    pins = {"edge": config.ports.edge, "daemon": config.ports.daemon, "api": config.ports.api}
    hosts = {"edge": config.listen_host, "daemon": config.listen_host, "api": config.api_host}

    with _negotiation_lock() as claims_path:
        now = time.time()
        claims = _read_claims(claims_path, now)
        foreign_claims = {int(p) for p, c in claims.items() if c.get("home") != str(home.root)}
        chosen: dict[str, int] = {}

        def usable(port: int, host: str) -> bool:
            if port in chosen.values() or port in foreign_claims:
                return False
            if port_is_free(port, host):
                return True
            holder = port_holder(port)
            return holder is not None and is_ours(holder.pid, home)

        for program in PROGRAMS:
            host = _bindable(hosts[program])
            pin = pins[program]
            if pin is not None:
                if not usable(pin, host):
                    holder = port_holder(pin)
                    raise PortError(
                        f"port {pin} is pinned for the {program} in {config.path} ([ports] "
                        f"{program} = {pin}) but is held by "
                        f"{holder.describe() if holder else 'another process'}.\n"
                        f"Fix: stop that process (lsof -nP -iTCP:{pin} -sTCP:LISTEN, then kill "
                        f"<PID>), or remove the pin to let Halton Meter pick a free port."
                    )
                chosen[program] = pin
                continue
            candidates = [getattr(previous, program), *port_range(program)]
            for port in dict.fromkeys(candidates):
                if usable(port, host):
                    chosen[program] = port
                    break
            else:
                rng = port_range(program)
                raise PortError(
                    f"no free port for the {program}: every port in {rng.start}-{rng.stop - 1} "
                    "is busy.\nFix: free one (lsof -nP -iTCP:<port> -sTCP:LISTEN, then kill "
                    f"<PID>), or pin a free port in {config.path} under [ports]."
                )

        ports = EffectivePorts(**chosen)
        for program, port in chosen.items():
            claims[str(port)] = {"home": str(home.root), "program": program, "at": now}
        atomic_write(claims_path, json.dumps(claims), mode=0o600)

    if ports != previous:
        log.info("ports.renegotiated", old=previous.as_dict(), new=ports.as_dict())
    save_effective_ports(home, ports)
    return ports


def _bindable(host: str) -> str:
    """The address to test-bind: the configured host, or loopback for a name."""
    literal = host.strip("[]")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in literal else socket.AF_INET, literal)
        return literal
    except OSError:
        return "127.0.0.1"

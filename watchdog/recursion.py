"""Proxy self-recursion: a program whose environment sends its own traffic back to the edge.

The reference's stale launchctl env: HTTPS_PROXY pointing at our own edge in the service's
environment makes the meter connect to itself. Also: recognise our OWN service registration
(launchd XPC_SERVICE_NAME, supervisord's SUPERVISOR_* variables, the systemd unit) so a
preflight never refuses to run as the service it is (the reference's v0.1.5 loop).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from halton_meter.service.env import SCRUBBED

LAUNCHD_LABEL = "com.haltonlabs.meter"
SYSTEMD_UNIT = "halton-meter.service"


@dataclass(frozen=True)
class Recursion:
    program: str
    pid: int
    var: str
    value: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def points_at(value: str, port: int) -> bool:
    """Does a proxy URL (``http://127.0.0.1:8081``, ``localhost:8081``) name our edge port?"""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        host, their_port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return False
    return _this_machine(host) and their_port == port


def _this_machine(host: str) -> bool:
    """Loopback, or the unspecified address (a connect to it lands on this machine too)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def proxy_recursion(env: Mapping[str, str], edge_port: int) -> list[tuple[str, str]]:
    return [(k, env[k]) for k in SCRUBBED if k in env and points_at(env[k], edge_port)]


def check_processes(pids: Mapping[str, int], edge_port: int) -> list[Recursion]:
    """Read each running program's environment (/proc/<pid>/environ) for proxy recursion."""
    found = []
    for program, pid in pids.items():
        try:
            env = psutil.Process(pid).environ()
        except (psutil.Error, OSError):
            continue
        found += [Recursion(program, pid, k, v) for k, v in proxy_recursion(env, edge_port)]
    return found


def own_registration(env: Mapping[str, str], cgroup: str | None = None) -> str | None:
    """Which of OUR service registrations this environment runs under, if any."""
    if env.get("XPC_SERVICE_NAME") == LAUNCHD_LABEL:
        return "launchd"
    if env.get("SUPERVISOR_ENABLED") == "1" and env.get("SUPERVISOR_PROCESS_NAME"):
        return "supervisord"
    if env.get("INVOCATION_ID"):
        if cgroup is None:
            try:
                cgroup = Path("/proc/self/cgroup").read_text()
            except OSError:
                cgroup = ""
        if SYSTEMD_UNIT in cgroup:
            return "systemd"
    return None

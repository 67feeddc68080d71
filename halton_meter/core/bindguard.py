"""The loopback bind guard: every listener's host is checked at boot.

A non-loopback host exits with status 1 and the reference's message, unless
``HALTON_METER_ALLOW_NON_LOOPBACK=1``, which logs a warning on every boot. ``::``,
``[::]``, ``0.0.0.0``, a LAN address, and a name that resolves to any non-loopback
address are all non-loopback.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

from halton_meter.core.logging import get_logger

OVERRIDE_ENV = "HALTON_METER_ALLOW_NON_LOOPBACK"
OVERRIDE_MESSAGE = "⚠ bind-guard override active — daemon is reachable from non-loopback addresses"


def _addresses(host: str) -> list[str]:
    literal = host.strip().strip("[]")
    try:
        return [str(ipaddress.ip_address(literal))]
    except ValueError:
        pass
    if not literal or literal == "*":
        return ["0.0.0.0"]
    try:
        infos = socket.getaddrinfo(literal, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({str(info[4][0]).split("%")[0] for info in infos})


def is_loopback_host(host: str) -> bool:
    addresses = _addresses(host)
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_bind_host(host: str, key: str) -> None:
    """Refuse (SystemExit(1)) to bind ``host`` unless it is loopback or the override is set."""
    log = get_logger()
    if is_loopback_host(host):
        return
    if os.environ.get(OVERRIDE_ENV) == "1":
        print(OVERRIDE_MESSAGE, file=sys.stderr, flush=True)
        log.warning("bindguard.override_active", key=key, host=host, message=OVERRIDE_MESSAGE)
        return
    message = f"SystemExit(1) — {key}={host} is not a loopback address (refusing to bind)"
    log.error("bindguard.refused", key=key, host=host, message=message)
    print(message, file=sys.stderr, flush=True)
    print(
        f'Fix: set {key} = "127.0.0.1" in the config.toml of your Halton Meter home, then '
        f"halton-meter start. A container or VPN topology that needs it: {OVERRIDE_ENV}=1 "
        "halton-meter start",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(1)


_WILDCARDS = {"", "*", "0.0.0.0", "::"}


def connect_host(listen_host: str) -> str:
    """Where a client on this machine reaches a listener bound to ``listen_host``: a wildcard
    bind (override active) still answers on loopback."""
    host = listen_host.strip().strip("[]")
    return "127.0.0.1" if host in _WILDCARDS else host


def url_host(listen_host: str) -> str:
    """``connect_host`` in URL form: an IPv6 address in brackets."""
    host = connect_host(listen_host)
    return f"[{host}]" if ":" in host else host

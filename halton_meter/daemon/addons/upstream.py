"""`[upstream] resolve`: like curl --resolve, for every upstream connection the daemon makes.

Resolution happens where the name is looked up (the event loop's ``getaddrinfo``), not by
rewriting ``server.address`` in ``server_connect``: mitmproxy reuses an upstream connection
only when its address equals the request's, and allows 5 parallel connections per address,
so a rewritten address means a new TLS connection per request and a stall on the sixth.
The connection keeps the real host name: SNI and certificate verification use it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

from halton_meter.daemon._log import log
from halton_meter.daemon.stats import Stats


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]").lower(), int(port)


class UpstreamResolve:
    def __init__(self, resolve: Mapping[str, str], stats: Stats) -> None:
        self.stats = stats
        self.table: dict[tuple[str, int], tuple[str, int]] = {}
        self._installed_on: asyncio.AbstractEventLoop | None = None
        for src, dst in resolve.items():
            try:
                self.table[_parse_hostport(src)] = _parse_hostport(dst)
            except ValueError as exc:
                log.warning("addon.upstream.bad_resolve", entry=src, error=str(exc))

    def lookup(
        self, host: str | bytes | None, port: str | int | bytes | None
    ) -> tuple[str, int] | None:
        if host is None or port is None:
            return None
        h = host.decode() if isinstance(host, bytes) else host
        text = port.decode() if isinstance(port, bytes) else str(port)
        p = int(text) if text.isdigit() else socket.getservbyname(text)
        return self.table.get((h.lower().rstrip("."), p))

    def load(self, _loader: Any) -> None:
        if self.table:
            self.install(asyncio.get_running_loop())

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._installed_on is loop:
            return
        self._installed_on = loop
        original = loop.getaddrinfo

        async def getaddrinfo(
            host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
        ) -> Any:
            try:
                target = self.lookup(host, port)
            except Exception as exc:  # never let the table break name resolution
                self.stats.metering_errors += 1
                log.error("addon.upstream.error", error=repr(exc))
                target = None
            if target is not None:
                host, port = target
            return await original(host, port, family=family, type=type, proto=proto, flags=flags)

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]

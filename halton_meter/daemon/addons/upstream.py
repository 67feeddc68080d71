"""`[upstream] resolve`: like curl --resolve, for every upstream connection the daemon makes.

Resolution happens where the name is looked up (the event loop's ``getaddrinfo``), not by
rewriting ``server.address`` in ``server_connect``: mitmproxy reuses an upstream connection
only when its address equals the request's, and allows 5 parallel connections per address,
so a rewritten address means a new TLS connection per request and a stall on the sixth.
The connection keeps the real host name: SNI and certificate verification use it. The table
is read from the live config at each lookup, so a reload applies to every new connection
(an upstream connection already open is reused until it closes).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from halton_meter.daemon._log import log
from halton_meter.daemon.live import LiveConfig
from halton_meter.daemon.stats import Stats


class UpstreamResolve:
    def __init__(self, live: LiveConfig, stats: Stats) -> None:
        self.live = live
        self.stats = stats
        self._installed_on: asyncio.AbstractEventLoop | None = None

    def lookup(
        self, host: str | bytes | None, port: str | int | bytes | None
    ) -> tuple[str, int] | None:
        if host is None or port is None:
            return None
        h = host.decode() if isinstance(host, bytes) else host
        text = port.decode() if isinstance(port, bytes) else str(port)
        p = int(text) if text.isdigit() else socket.getservbyname(text)
        return self.live.resolve.get((h.lower().rstrip("."), p))

    def load(self, _loader: Any) -> None:
        # Installed even with an empty table: a reload may fill it later.
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

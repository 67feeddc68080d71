"""`[upstream] resolve`: like curl --resolve, for every upstream connection the daemon makes."""

from __future__ import annotations

from collections.abc import Mapping

from mitmproxy.proxy import server_hooks

from halton_meter.daemon._log import log
from halton_meter.daemon.guard import fail_open
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
        for src, dst in resolve.items():
            try:
                self.table[_parse_hostport(src)] = _parse_hostport(dst)
            except ValueError as exc:
                log.warning("addon.upstream.bad_resolve", entry=src, error=str(exc))

    @fail_open("addon.upstream.error")
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.table or data.server.address is None:
            return
        host, port = str(data.server.address[0]), int(data.server.address[1])
        target = self.table.get((host.lower(), port))
        if target is None:
            return
        # TLS verification (and the SNI the origin sees) stays against the real name.
        if data.server.tls and data.server.sni is None:
            data.server.sni = host
        data.server.address = target

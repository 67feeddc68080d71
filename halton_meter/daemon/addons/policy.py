"""Which connections get TLS-intercepted: provider hosts only; everything else is tunnelled."""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import tls

from halton_meter.daemon.guard import fail_open
from halton_meter.daemon.stats import Stats
from halton_meter.providers.hosts import is_intercepted


class InterceptPolicy:
    def __init__(self, extra_hosts: Sequence[str], stats: Stats) -> None:
        self.extra_hosts = tuple(extra_hosts)
        self.stats = stats

    def intercepts(self, *hosts: str | None) -> bool:
        return any(h and is_intercepted(h, self.extra_hosts) for h in hosts)

    @fail_open("addon.policy.error")
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        # Either name may be the real one: the CONNECT authority (what the edge asked for)
        # or the SNI (a client that connected by address). Anything else keeps the origin's
        # own certificate: mitmproxy relays the bytes untouched.
        address = data.context.server.address
        connect_host = str(address[0]) if address else None
        if not self.intercepts(connect_host, data.client_hello.sni):
            data.ignore_connection = True

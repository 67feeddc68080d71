"""Which connections get TLS-intercepted: provider hosts only; everything else is tunnelled.

The extra hosts (`[capture] hosts`) are read from the live config at each handshake, so a
reload applies to every new connection.
"""

from __future__ import annotations

from mitmproxy import tls

from halton_meter.daemon.guard import fail_open
from halton_meter.daemon.live import LiveConfig
from halton_meter.daemon.stats import Stats
from halton_meter.providers.hosts import is_intercepted


class InterceptPolicy:
    def __init__(self, live: LiveConfig, stats: Stats) -> None:
        self.live = live
        self.stats = stats

    def intercepts(self, *hosts: str | None) -> bool:
        extra = self.live.config.capture.hosts
        return any(h and is_intercepted(h, extra) for h in hosts)

    @fail_open("addon.policy.error")
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        # Either name may be the real one: the CONNECT authority (what the edge asked for)
        # or the SNI (a client that connected by address). Anything else keeps the origin's
        # own certificate: mitmproxy relays the bytes untouched.
        address = data.context.server.address
        connect_host = str(address[0]) if address else None
        if not self.intercepts(connect_host, data.client_hello.sni):
            data.ignore_connection = True

"""Attribution handed over by the edge on the CONNECT (`X-Halton-Attribution`)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from mitmproxy import connection, http

from halton_meter.daemon._log import log
from halton_meter.daemon.guard import fail_open
from halton_meter.daemon.stats import Stats

HEADER = "X-Halton-Attribution"
# The edge's loop marker travels on the same CONNECT; like the attribution it is ours alone.
EDGE_HEADER = "X-Halton-Edge"


@dataclass(frozen=True)
class ClientAttribution:
    tool: str = "other"
    project: str = "misc"
    tier: str = "misc"
    pid: int | None = None
    cwd: str | None = None


DEFAULT = ClientAttribution()


def decode_header(value: str) -> ClientAttribution:
    """base64url (padding optional) of a JSON object {"tool","project","tier","pid","cwd"}."""
    raw = base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))
    obj: Any = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("attribution is not a JSON object")

    def text(key: str, default: str | None) -> str | None:
        v = obj.get(key)
        return str(v)[:200] if isinstance(v, str) and v else default

    pid = obj.get("pid")
    return ClientAttribution(
        tool=text("tool", DEFAULT.tool) or DEFAULT.tool,
        project=text("project", DEFAULT.project) or DEFAULT.project,
        tier=text("tier", DEFAULT.tier) or DEFAULT.tier,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        cwd=text("cwd", None),
    )


class Attribution:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._by_client: dict[str, ClientAttribution] = {}

    def for_client(self, client: connection.Client) -> ClientAttribution:
        return self._by_client.get(client.id, DEFAULT)

    def _take(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        if EDGE_HEADER in headers:
            del headers[EDGE_HEADER]
        value = headers.get(HEADER)
        if value is None:
            return
        # The header is ours alone: it never travels upstream.
        del headers[HEADER]
        try:
            self._by_client[flow.client_conn.id] = decode_header(value)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("addon.attribution.bad_header", error=str(exc))

    @fail_open("addon.attribution.error")
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._take(flow)

    @fail_open("addon.attribution.error")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Absolute-form requests (plain http://) carry it on the request itself.
        if HEADER in flow.request.headers or EDGE_HEADER in flow.request.headers:
            self._take(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        self._by_client.pop(client.id, None)

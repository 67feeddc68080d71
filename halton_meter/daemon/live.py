"""The daemon's running config: one holder every addon reads, swapped whole on reload.

Addons never keep their own copy of a setting: they read ``live.config`` (and the parsed
``live.resolve`` table) when they need it, so a SIGHUP reload reaches every one of them at
once. Everything that reads or swaps it runs on mitmproxy's event loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from halton_meter.core.config import Config
from halton_meter.daemon._log import log

ResolveTable = dict[tuple[str, int], tuple[str, int]]


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]").lower(), int(port)


def resolve_table(resolve: Mapping[str, str]) -> ResolveTable:
    """`[upstream] resolve` as ``(host, port) -> (address, port)``; bad entries are logged."""
    table: ResolveTable = {}
    for src, dst in resolve.items():
        try:
            table[parse_hostport(src)] = parse_hostport(dst)
        except ValueError as exc:
            log.warning("addon.upstream.bad_resolve", entry=src, error=str(exc))
    return table


class LiveConfig:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.resolve = resolve_table(config.upstream.resolve)

    def replace(self, config: Config) -> None:
        self.resolve = resolve_table(config.upstream.resolve)
        self.config = config

"""SIGHUP: re-read config.toml and apply what can change under a running proxy.

Applied live (the watchdog sends SIGHUP for these): `[capture] hosts` (interception),
`[capture] body_max_bytes` and `store_bodies` (the body gate), `[upstream] resolve` (the
upstream map), `[upstream] ca_bundle` (the combined upstream roots, rebuilt) and `[cloud]`
(read by the sync loop at its next cycle). They reach the addons through the one
:class:`LiveConfig` they all read. ``listen_host`` and the daemon's port need a new listener:
logged as ``config.reload_needs_restart`` (the watchdog restarts the daemon for those).

An edit that does not load (bad TOML, a bad value, an unreadable CA file) is refused with
``config.reload_refused error=...`` and the running config is kept whole: nothing is half
applied. New settings apply to new connections and new bodies; a call in flight finishes
under the settings it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from pathlib import Path
from typing import Any

from mitmproxy.master import Master
from mitmproxy.net import tls as mitm_tls

from halton_meter.core.config import Config, load_config
from halton_meter.core.fsutil import atomic_write
from halton_meter.core.paths import Home
from halton_meter.daemon._log import log
from halton_meter.daemon.live import LiveConfig
from halton_meter.daemon.roots import upstream_bundle_bytes

# Sections whose every key the daemon applies live.
_LIVE_SECTIONS = ("capture", "upstream", "cloud")


class ConfigReloader:
    def __init__(
        self, home: Home, live: LiveConfig, master: Master, cloud_sync: Any | None = None
    ) -> None:
        self.home = home
        self.live = live
        self.master = master
        self.cloud_sync = cloud_sync  # reads .config at each sync cycle
        # What the listener was started with: a change there needs a restart, every time.
        self._boot = live.config
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        # A handler the kernel can see (SigCgt): the watchdog signals only programs that
        # catch SIGHUP and restarts the others.
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup, loop)

    def _on_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.stopping:
            return
        log.info("daemon.signal", signal="SIGHUP")
        task = loop.create_task(self.reload())
        self._tasks.add(task)  # a reference until it is done (the loop keeps only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> None:
        async with self._lock:  # two quick SIGHUPs apply one after the other, never mixed
            try:
                new = await asyncio.to_thread(load_config, self.home)
                bundle = await asyncio.to_thread(
                    upstream_bundle_bytes, self.home, new.upstream.ca_bundle
                )
            except Exception as exc:
                log.warning("config.reload_refused", error=str(exc) or repr(exc))
                return
            try:
                changed = await self._apply(new, bundle)
            except Exception as exc:
                log.error("config.reload_refused", error=repr(exc), exc_info=True)
                return
            log.info("config.reloaded", changed=changed)
            restart = _restart_keys(self._boot, new)
            if restart:
                log.warning("config.reload_needs_restart", keys=restart)

    async def _apply(self, new: Config, bundle: bytes) -> list[str]:
        old = self.live.config
        changed = _changed_keys(old, new)
        path = self.home.upstream_bundle
        if bundle != await asyncio.to_thread(_read_or_empty, path):
            await asyncio.to_thread(atomic_write, path, bundle, mode=0o644)
            _forget_upstream_contexts()
            self.master.options.update(ssl_verify_upstream_trusted_ca=str(path))
            if "upstream.ca_bundle" not in changed:
                changed.append("upstream.ca_bundle")  # same path, new content
        self.live.replace(new)
        if self.cloud_sync is not None:
            self.cloud_sync.config = new
        return changed


def _changed_keys(old: Config, new: Config) -> list[str]:
    keys: list[str] = []
    for section in _LIVE_SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(after):
            if getattr(before, f.name) != getattr(after, f.name):
                keys.append(f"{section}.{f.name}")
    return keys


def _restart_keys(boot: Config, new: Config) -> list[str]:
    keys: list[str] = []
    if boot.listen_host != new.listen_host:
        keys.append("listen_host")
    if boot.ports.daemon != new.ports.daemon:
        keys.append("ports.daemon")
    return keys


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _forget_upstream_contexts() -> None:
    # mitmproxy caches upstream SSL contexts by the roots file's *path*; the path is the
    # same, the content is new: drop the cache so the next handshake loads the new roots.
    with contextlib.suppress(AttributeError):
        mitm_tls.create_proxy_server_context.cache_clear()

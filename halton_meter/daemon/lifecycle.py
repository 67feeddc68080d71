"""The daemon's own addon: health files while it runs, a clean flush when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime
from typing import Any

from mitmproxy import ctx

from halton_meter.core.fsutil import atomic_write
from halton_meter.core.paths import Home
from halton_meter.daemon._log import log
from halton_meter.daemon.addons.capture import Capture
from halton_meter.daemon.stats import Stats

STATS_INTERVAL_S = 2.0


class Lifecycle:
    def __init__(
        self, home: Home, host: str, port: int, stats: Stats, writer: Any, capture: Capture
    ) -> None:
        self.home = home
        self.host = host
        self.port = port
        self.stats = stats
        self.writer = writer
        self.capture = capture
        self.bind_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def health_path(self) -> Any:
        return self.home.run_dir / "daemon.json"

    @property
    def stats_path(self) -> Any:
        return self.home.run_dir / "daemon-stats.json"

    def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        addrs = proxyserver.listen_addrs() if proxyserver else []
        if not addrs:
            # mitmproxy carries on without a listener after a failed bind: we do not.
            self.bind_error = _bind_error(self.host, self.port)
            log.error("daemon.bind_failed", host=self.host, port=self.port, error=self.bind_error)
            ctx.master.shutdown()
            return
        port = int(addrs[0][1])
        info = {
            "pid": os.getpid(),
            "port": port,
            "listen_host": self.host,
            "listen": [list(a[:2]) for a in addrs],
            "started_at": datetime.now(UTC).isoformat(),
            "home": str(self.home.root),
        }
        atomic_write(self.health_path, json.dumps(info, sort_keys=True) + "\n", mode=0o600)
        self._publish()
        self._task = asyncio.get_running_loop().create_task(self._stats_loop())
        log.info("daemon.listening", host=self.host, port=port, pid=os.getpid())

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            try:
                await asyncio.to_thread(self._publish)
            except Exception as exc:
                log.warning("daemon.stats_write_failed", error=repr(exc))

    def _publish(self) -> None:
        self.stats.rows_written = int(getattr(self.writer, "written", 0))
        self.stats.write(self.stats_path)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.capture.done()
        flushed = self.writer.flush(timeout=10.0)
        self.writer.close()
        with contextlib.suppress(Exception):
            self._publish()
        if self.bind_error is None:
            with contextlib.suppress(FileNotFoundError):
                self.health_path.unlink()
        log.info(
            "daemon.stopped",
            flushed=flushed,
            rows_written=self.stats.rows_written,
            pending=getattr(self.writer, "pending", None),
        )


def _bind_error(host: str, port: int) -> str:
    """Why the listener could not come up, in the OS's words."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return f"cannot listen on {host}:{port}"

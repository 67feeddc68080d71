"""The daemon's own addon: health files while it runs, a clean flush when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
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
        self,
        home: Home,
        host: str,
        port: int,
        stats: Stats,
        writer: Any,
        capture: Capture,
        cloud_sync: Any | None = None,
    ) -> None:
        self.home = home
        self.host = host
        self.port = port
        self.stats = stats
        self.writer = writer
        self.capture = capture
        self.cloud_sync = cloud_sync  # has run_forever(stop_event): runs in a thread
        self.bind_error: str | None = None
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._cloud_stop = threading.Event()
        self._cloud_thread: threading.Thread | None = None

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
        self._listening = True
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
        self._start_cloud_sync()
        log.info("daemon.listening", host=self.host, port=port, pid=os.getpid())

    def _start_cloud_sync(self) -> None:
        if self.cloud_sync is None:
            return
        # Its own thread: the sync's HTTP and SQLite reads never touch the proxy's loop.
        self._cloud_thread = threading.Thread(
            target=self.cloud_sync.run_forever,
            args=(self._cloud_stop,),
            name="halton-cloud-sync",
            daemon=True,
        )
        self._cloud_thread.start()

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
        self._cloud_stop.set()
        if self._cloud_thread is not None:
            self._cloud_thread.join(timeout=5)
        self.capture.done()
        flushed = self.writer.flush(timeout=10.0)
        self.writer.close()
        if self._listening:
            with contextlib.suppress(Exception):
                self._publish()
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

"""``python -m halton_meter.edge``: the edge program (supervisord runs it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
from pathlib import Path

from halton_meter.core.bindguard import check_bind_host
from halton_meter.core.config import ConfigError, load_config
from halton_meter.core.logging import configure_logging, get_logger
from halton_meter.core.paths import Home
from halton_meter.core.runtime import load_effective_ports
from halton_meter.edge.server import EdgeServer, EdgeSettings
from halton_meter.providers.hosts import is_intercepted


class _DaemonPort:
    """The daemon's effective port, re-read when effective-ports.json changes (at most 1/s)."""

    def __init__(self, home: Home, pinned: int | None) -> None:
        self._home = home
        self._pinned = pinned
        self._port: int | None = None
        self._mtime: float | None = None
        self._checked = 0.0

    def __call__(self) -> int | None:
        if self._pinned is not None:
            return self._pinned
        now = time.monotonic()
        if self._port is None or now - self._checked >= 1.0:
            self._checked = now
            try:
                mtime: float | None = self._home.effective_ports.stat().st_mtime
            except OSError:
                mtime = None
            if self._port is None or mtime != self._mtime:
                self._mtime = mtime
                self._port = load_effective_ports(self._home).daemon
        return self._port


def _raise_fd_limit() -> None:
    # Every tunnel holds two sockets; hundreds of clients need more than the usual 1024.
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 65536), hard))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m halton_meter.edge")
    parser.add_argument("--port", type=int, default=None, help="listen port (tests)")
    parser.add_argument("--daemon-port", type=int, default=None, help="daemon port (tests)")
    parser.add_argument(
        "--daemon-timeout", type=float, default=None, help="seconds before failing open"
    )
    return parser.parse_args(argv)


async def _serve(settings: EdgeSettings) -> int:
    # Handlers first: a stop that arrives while we bind is still a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = EdgeServer(settings)
    try:
        await server.start()
    except OSError as exc:
        get_logger().error(
            "edge.bind_failed", host=settings.listen_host, port=settings.port, error=str(exc)
        )
        return 1
    serving = asyncio.ensure_future(server.serve_forever())
    await stop.wait()
    get_logger().info("edge.stopping")
    serving.cancel()
    await server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    configure_logging("edge")
    home = Home.resolve()
    try:
        config = load_config(home)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return int(getattr(exc, "exit_code", 1))
    check_bind_host(config.listen_host, "listen_host")
    _raise_fd_limit()
    port = args.port if args.port is not None else load_effective_ports(home).edge
    extra_hosts = tuple(config.capture.hosts)
    scan_roots = [Path(p).expanduser() for p in config.attribution.scan_roots] or [
        Path.home() / "Documents",
        Path.home(),
    ]
    timeout = args.daemon_timeout
    if timeout is None:
        timeout = float(os.environ.get("HALTON_METER_EDGE_DAEMON_TIMEOUT") or 0) or (
            config.edge.daemon_timeout_s
        )
    settings = EdgeSettings(
        home=home,
        listen_host=config.listen_host,
        port=port,
        daemon_port=_DaemonPort(home, args.daemon_port),
        intercept=lambda host: is_intercepted(host, extra_hosts),
        resolve=dict(config.upstream.resolve),
        scan_roots=scan_roots,
        daemon_timeout=timeout,
    )
    return asyncio.run(_serve(settings))


if __name__ == "__main__":
    raise SystemExit(main())

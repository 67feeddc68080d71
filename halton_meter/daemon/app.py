"""`python -m halton_meter.daemon`: mitmproxy embedded as a library, with our addons.

Runs in the foreground (supervisord owns it). Listens on ``listen_host`` and the effective
daemon port, intercepts provider hosts only, writes one row per model call. SIGTERM or
SIGINT: listeners close, in-flight calls are written as partial rows, the row writer is
flushed, exit 0. SIGHUP: config.toml is re-read and applied live where that is safe
(see reload.py). A failed bind exits 1 with the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from mitmproxy import addons as mitm_addons
from mitmproxy import certs
from mitmproxy import options as mitm_options
from mitmproxy.master import Master

from halton_meter.core.bindguard import check_bind_host
from halton_meter.core.config import Config, heal_placeholder_base_url, load_config
from halton_meter.core.errors import EXIT_BAD_FILE, EXIT_FAILURE, HaltonError
from halton_meter.core.fsutil import ensure_dir
from halton_meter.core.logging import configure_logging
from halton_meter.core.paths import Home
from halton_meter.core.runtime import load_effective_ports
from halton_meter.daemon._log import log
from halton_meter.daemon.addons.attribution import Attribution
from halton_meter.daemon.addons.body_store import BodyCapture
from halton_meter.daemon.addons.capture import Capture
from halton_meter.daemon.addons.policy import InterceptPolicy
from halton_meter.daemon.addons.upstream import UpstreamResolve
from halton_meter.daemon.addons.websocket import WebSocketMeter
from halton_meter.daemon.lifecycle import Lifecycle
from halton_meter.daemon.live import LiveConfig
from halton_meter.daemon.reload import ConfigReloader
from halton_meter.daemon.roots import build_upstream_bundle
from halton_meter.daemon.stats import Stats
from halton_meter.store.db import StoreError
from halton_meter.store.writer import RowWriter

# Bodies above this are streamed by mitmproxy itself (non-model calls on provider hosts);
# model calls are always streamed through our tee.
STREAM_LARGE_BODIES = "256k"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m halton_meter.daemon")
    parser.add_argument("--port", type=int, default=None, help="listen port (tests)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_logging("daemon")
    _quiet_mitmproxy_logging()
    try:
        return asyncio.run(_serve(args.port))
    except (HaltonError, StoreError) as exc:
        # A clear message and the documented exit code, never a traceback.
        log.error("daemon.start_failed", error=str(exc))
        print(str(exc), file=sys.stderr, flush=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 0


async def _serve(port_override: int | None) -> int:
    home = Home.resolve().ensure()
    # A placeholder [cloud] base_url (.test, .example, ...) never resolves: heal it at boot
    # (logged once, idempotent) so a daemon started without the watchdog heals too.
    heal_placeholder_base_url(home)
    config = load_config(home)
    check_bind_host(config.listen_host, "listen_host")
    port = port_override if port_override is not None else load_effective_ports(home).daemon
    # mitmproxy writes its CA key 0600 but creates the directory with the umask: make it
    # 0700 before it gets there.
    ensure_dir(home.ca_dir)
    _check_ca(home)
    bundle = build_upstream_bundle(home, config.upstream.ca_bundle)

    stats = Stats()
    writer = RowWriter(home.db)
    live = LiveConfig(config)
    master, lifecycle = _build_master(home, live, port, stats, writer)
    try:
        master.options.update(
            stream_large_bodies=STREAM_LARGE_BODIES,
            connection_strategy="lazy",
            ssl_verify_upstream_trusted_ca=str(bundle),
            store_streamed_bodies=False,
        )
    except Exception as exc:
        writer.close()
        raise HaltonError(f"daemon options rejected: {exc}") from exc

    _install_signals(master, ConfigReloader(home, live, master, lifecycle.cloud_sync))
    log.info("daemon.starting", host=config.listen_host, port=port, home=str(home.root))
    await master.run()
    if lifecycle.bind_error is not None:
        print(f"halton-meter daemon: {lifecycle.bind_error}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    return 0


def _build_master(
    home: Home, live: LiveConfig, port: int, stats: Stats, writer: RowWriter
) -> tuple[Master, Lifecycle]:
    config = live.config
    opts = mitm_options.Options(
        confdir=str(home.ca_dir), listen_host=config.listen_host, listen_port=port
    )
    master = Master(opts)
    master.addons.add(*mitm_addons.default_addons())

    attribution = Attribution(stats)
    capture = Capture(
        live=live,
        attribution=attribution,
        writer=writer,
        pricer=_pricer(),
        stats=stats,
    )
    lifecycle = Lifecycle(
        home, config.listen_host, port, stats, writer, capture, cloud_sync=_cloud_sync(home, config)
    )
    master.addons.add(
        attribution,
        InterceptPolicy(live, stats),
        UpstreamResolve(live, stats),
        capture,
        BodyCapture(home.bodies, live, stats),
        WebSocketMeter(capture),  # before lifecycle: its done() writes before the flush
        lifecycle,
    )
    return master, lifecycle


def _check_ca(home: Home) -> None:
    """Refuse a CA mitmproxy cannot load: it would log it and run on, intercepting nothing."""
    if not home.ca_key.exists():
        return  # mitmproxy creates it
    try:
        certs.CertStore.from_store(home.ca_dir, "mitmproxy", 2048)
    except Exception as exc:
        raise HaltonError(
            f"the meter's CA in {home.ca_dir} cannot be loaded ({exc or type(exc).__name__}). "
            f"Fix: move {home.ca_key} aside and start again to generate a new CA (clients "
            "must then trust the new certificate: re-run halton-meter init).",
            exit_code=EXIT_BAD_FILE,
        ) from exc


def _cloud_sync(home: Home, config: Config) -> Any | None:
    """The cloud sync loop (idle while disconnected); a failure here never stops metering."""
    try:
        from halton_meter.cloud.sync import CloudSync

        return CloudSync(home, config)
    except Exception as exc:
        log.error("daemon.cloud_sync_unavailable", error=repr(exc))
        return None


def _pricer() -> Any:
    try:
        from halton_meter.pricing import price
    except ImportError:  # pricing lands in parallel: rows stay unpriced until it does
        return _unpriced
    return price


@dataclass(frozen=True)
class _Unpriced:
    cost_usd: Decimal | None = None
    priced: bool = False
    note: str = "pricing unavailable"


def _unpriced(_usage: Any, _ts: Any, **_kw: Any) -> _Unpriced:
    return _Unpriced()


def _install_signals(master: Master, reloader: ConfigReloader) -> None:
    loop = asyncio.get_running_loop()

    async def stop() -> None:
        # Close the listeners first: after shutdown() mitmproxy still accepts until its
        # servers are cleared, and a new connection now would be cut mid-request.
        proxyserver = master.addons.get("proxyserver")
        if proxyserver is not None:
            try:
                await proxyserver.servers.update([])
            except Exception as exc:
                log.warning("daemon.listener_close_failed", error=repr(exc))
        master.shutdown()

    def on_signal(signum: int) -> None:
        _ToStructlog.stopping = True
        reloader.stopping = True
        log.info("daemon.signal", signal=signal.Signals(signum).name)
        loop.create_task(stop())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    reloader.install(loop)
    # A client hanging up mid-write must not kill the process.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


class _ToStructlog(logging.Handler):
    """mitmproxy's own warnings and errors, as structured events on stderr."""

    stopping = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.stopping and record.name == "asyncio":
            return  # connection tasks cancelled at exit: expected, not worth a line each
        with contextlib.suppress(Exception):
            log.warning(
                "mitmproxy.log",
                logger=record.name,
                level=record.levelname,
                message=record.getMessage(),
            )


def _quiet_mitmproxy_logging() -> None:
    # mitmproxy logs every connection at info; only its warnings matter to an operator.
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    handler = _ToStructlog(logging.WARNING)
    root.addHandler(handler)

"""``ProviderSim``: the simulator's TLS server (and optional plain HTTP server) on a thread."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from halton_meter.sim.app import SimApp, SimRecord
from halton_meter.sim.ca import SimCerts, ensure_sim_certs
from halton_meter.sim.server import HttpServer


class ProviderSim:
    """Start with ``start()`` or ``with ProviderSim() as sim:``; see the package docstring."""

    def __init__(
        self,
        directory: Path | str | None = None,
        extra_names: Iterable[str] = (),
        defaults: Mapping[str, str] | None = None,
    ) -> None:
        """``directory`` holds the certificates (a temporary one when None); ``extra_names`` are
        added to the leaf's SANs; ``defaults`` are x-sim-* knob values for requests that set
        none (e.g. ``{"x-sim-delay-ms": "20"}`` for a demo that streams visibly)."""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="halton-sim-")
            directory = self._tmp.name
        self.directory = Path(directory)
        self.extra_names = list(extra_names)
        self.app = SimApp()
        self.app.defaults.update({k.lower(): v for k, v in (defaults or {}).items()})
        self.certs: SimCerts | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.http_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[HttpServer] = []

    # -- lifecycle --------------------------------------------------------------------------

    def start(
        self, host: str = "127.0.0.1", port: int = 0, http_port: int | None = None
    ) -> ProviderSim:
        """Listen with TLS on ``port`` (0 = any free); ``http_port`` adds a plain HTTP listener
        (0 = any free). Returns once both accept connections."""
        self.certs = ensure_sim_certs(self.directory, self.extra_names)
        self.host = host
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_servers(host, port, http_port))
            except BaseException as exc:  # reported to the caller of start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._stop_servers())
                _cancel_all(loop)
                loop.close()

        self._thread = threading.Thread(target=run, name="halton-provider-sim", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    async def _start_servers(self, host: str, port: int, http_port: int | None) -> None:
        tls = HttpServer(self.app, self.server_ssl_context())
        self.port = await tls.start(host, port)
        self._servers.append(tls)
        if http_port is not None:
            plain = HttpServer(self.app, None)
            self.http_port = await plain.start(host, http_port)
            self._servers.append(plain)

    async def _stop_servers(self) -> None:
        for server in self._servers:
            await server.stop()
        self._servers.clear()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._loop = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ProviderSim:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- TLS --------------------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        """The CA to trust (``[upstream] ca_bundle``, ``curl --cacert``, httpx ``verify=``)."""
        assert self.certs is not None, "start() first"
        return self.certs.ca_cert

    def server_ssl_context(self) -> ssl.SSLContext:
        assert self.certs is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certs.leaf_cert, self.certs.leaf_key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the simulator's CA."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def resolve_entry(self, host: str = "api.anthropic.com", port: int = 443) -> dict[str, str]:
        """A ``[upstream] resolve`` mapping sending ``host:port`` here."""
        return {f"{host}:{port}": f"{self.host}:{self.port}"}

    # -- request log ------------------------------------------------------------------------

    @property
    def requests(self) -> list[SimRecord]:
        """Every request received so far (not /_sim/ control calls), oldest first."""
        return list(self.app.requests)

    def clear(self) -> None:
        self.app.clear()

    def wait_for_requests(
        self, n: int, timeout: float = 10.0, completed: bool = True
    ) -> list[SimRecord]:
        """Block until ``n`` requests arrived (and their responses ended, unless told not to)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = self.requests
            if len(recs) >= n and (
                not completed
                or all(
                    r.progress.completed or r.progress.truncated or r.progress.client_aborted
                    for r in recs[:n]
                )
            ):
                return recs
            time.sleep(0.01)
        done = sum(r.progress.completed or r.progress.truncated for r in self.requests)
        raise AssertionError(
            f"simulator saw {len(self.requests)} requests ({done} finished), expected {n}"
        )

    def log(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.requests]


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and reap connection tasks so a stopped simulator leaves no pending task behind."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

"""Request and response bodies as 0600 files, under the `[capture] body_max_bytes` gate.

Over the gate the row keeps its metadata, ``body_skip_reason = "body_too_large"``, and the
log says ``addon.body_capture.skip reason=body_too_large``. Headers are never stored (they
carry the credentials); bodies are stored decoded, as the tee sees them.

The file system calls (create, write, close: ~0.1 ms a file here) run on one background
thread, in order; the event loop only counts bytes and queues chunks. Whether a body is kept
or skipped is decided from that count, so the row knows its body path at once; the row is
handed to the writer from the same thread after its files are closed, so a stored row never
names a file that is not on disk yet.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from halton_meter.daemon._log import log
from halton_meter.daemon.addons.capture import FlowState, state_of
from halton_meter.daemon.guard import fail_open
from halton_meter.daemon.stats import Stats
from halton_meter.store.bodies import BodySink, BodyStore
from halton_meter.store.model import Row

SKIP_TOO_LARGE = "body_too_large"
_STOP = object()


class BodyIO:
    """One thread running body-file operations in submission order."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="halton-body-io", daemon=True
                    )
                    self._thread.start()
        self._queue.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception as exc:  # a full disk loses a body, never a row
                self.stats.metering_errors += 1
                log.error("addon.body_capture.io_error", error=repr(exc))

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None


class _QueuedSink:
    """The loop's side of one body file: counts bytes, queues the writes."""

    def __init__(self, sink: BodySink, relpath: str, io: BodyIO, max_bytes: int) -> None:
        self._sink = sink
        self._io = io
        self._max_bytes = max_bytes
        self.relpath = relpath
        self.seen = 0

    def write(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen <= self._max_bytes:
            self._io.submit(self._sink.write, chunk)
        elif self.seen - len(chunk) <= self._max_bytes:
            self._io.submit(self._sink.write, chunk)  # the sink drops what it had kept

    @property
    def skipped(self) -> bool:
        return self.seen > self._max_bytes

    def close(self) -> str | None:
        """The stored file's path relative to the bodies root, or None (empty or skipped)."""
        self._io.submit(self._sink.close)
        return None if self.skipped or self.seen == 0 else self.relpath


class BodyCapture:
    def __init__(self, store: BodyStore | None, max_bytes: int, stats: Stats) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.stats = stats
        self.io = BodyIO(stats)

    @fail_open("addon.body_capture.error")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None:
            self._attach(state, "request", flow.request.headers, state.request.observers)

    @fail_open("addon.body_capture.error")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None and state.response is not None and flow.response is not None:
            self._attach(state, "response", flow.response.headers, state.response.observers)

    def done(self) -> None:
        # After Capture's done() (addon order): every body of every last row is on disk.
        self.io.close()

    def _attach(
        self,
        state: FlowState,
        kind: str,
        headers: http.Headers,
        observers: list[Callable[[bytes], None]],
    ) -> None:
        if self.store is None:
            return
        declared = _content_length(headers)
        if declared is not None and declared > self.max_bytes:
            # Known too large from the headers alone: never open a file for it.
            state.closers.append(lambda row: self._skipped(row, kind, declared))
            return
        sink = self.store.open(state.row.id, "request" if kind == "request" else "response")
        relpath = sink.path.relative_to(self.store.root).as_posix()
        queued = _QueuedSink(sink, relpath, self.io, self.max_bytes)
        observers.append(queued.write)
        state.submit_after_bodies = self.io.submit

        def close(row: Row) -> None:
            path = queued.close()
            if queued.skipped:
                self._skipped(row, kind, None)
            elif path is not None:
                if kind == "request":
                    row.request_body_path = path
                else:
                    row.response_body_path = path

        state.closers.append(close)

    def _skipped(self, row: Row, kind: str, declared: int | None) -> None:
        if row.body_skip_reason != SKIP_TOO_LARGE:
            # One count per row, one log line per body that was over the gate.
            row.body_skip_reason = SKIP_TOO_LARGE
            self.stats.body_skips += 1
        log.info(
            "addon.body_capture.skip",
            reason=SKIP_TOO_LARGE,
            row_id=row.id,
            host=row.host,
            kind=kind,
            declared_bytes=declared,
            limit=self.max_bytes,
        )


def _content_length(headers: http.Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)

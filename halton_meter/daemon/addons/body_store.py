"""Request and response bodies as 0600 files, under the `[capture] body_max_bytes` gate.

Over the gate the row keeps its metadata, ``body_skip_reason = "body_too_large"``, and the
log says ``addon.body_capture.skip reason=body_too_large``. Headers are never stored (they
carry the credentials); bodies are stored decoded, as the tee sees them.

The file system calls (create, write, close: ~0.1 ms a file here) run on one background
thread. The event loop counts and buffers a body's bytes (handing over 256 KiB pieces, so a
large body is never held whole); when the row is written, one job on that thread writes the
tails, closes the files and then hands the row to the writer: a stored row never names a
file that is not on disk yet, and a small call costs the thread a single wake-up. Whether a
body is kept or skipped is decided from the byte count, so the row knows its paths at once.

The gate (``body_max_bytes``, ``store_bodies``) is read from the live config when a body
starts: a reload applies to the next body, a body already under way keeps its gate.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mitmproxy import http

from halton_meter.daemon._log import log
from halton_meter.daemon.addons.capture import FlowState, state_of
from halton_meter.daemon.guard import fail_open
from halton_meter.daemon.live import LiveConfig
from halton_meter.daemon.stats import Stats
from halton_meter.store.bodies import BodySink, BodyStore
from halton_meter.store.model import Row

SKIP_TOO_LARGE = "body_too_large"
FLUSH_BYTES = 256 * 1024
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
    """The loop's side of one body file: counts bytes and buffers them.

    A body is handed to the I/O thread in pieces of ``FLUSH_BYTES`` (a large body is never
    held whole) and the rest, with the close, in one job when the row is written: a small
    body costs the thread one wake-up, shared with its row.
    """

    def __init__(self, sink: BodySink, relpath: str, io: BodyIO, max_bytes: int) -> None:
        self._sink = sink
        self._io = io
        self._max_bytes = max_bytes
        self._buf = bytearray()
        self._flushed = False
        self.relpath = relpath
        self.seen = 0

    def write(self, chunk: bytes) -> None:
        before = self.seen
        self.seen += len(chunk)
        if before > self._max_bytes:
            return  # already over the gate
        if self.seen > self._max_bytes:
            self._buf.clear()
            if self._flushed:  # drop the partial file
                self._io.submit(self._sink.abort, SKIP_TOO_LARGE)
            return
        self._buf += chunk
        if len(self._buf) >= FLUSH_BYTES:
            self._io.submit(self._sink.write, bytes(self._buf))
            self._buf.clear()
            self._flushed = True

    @property
    def skipped(self) -> bool:
        return self.seen > self._max_bytes

    @property
    def path(self) -> str | None:
        """The stored file's path relative to the bodies root, or None (empty or skipped)."""
        return None if self.skipped or self.seen == 0 else self.relpath

    def finish_job(self) -> Callable[[], None] | None:
        """What is left for the I/O thread: the buffered tail, then the close."""
        if self.skipped:
            return None
        tail, sink = bytes(self._buf), self._sink
        self._buf.clear()

        def finish() -> None:
            if tail:
                sink.write(tail)
            sink.close()

        return finish


def _run_all(jobs: list[Callable[[], None]], stats: Stats) -> None:
    # Each job on its own: a body that cannot be written never holds its row back.
    for job in jobs:
        try:
            job()
        except Exception as exc:
            stats.metering_errors += 1
            log.error("addon.body_capture.io_error", error=repr(exc))


class BodyCapture:
    def __init__(self, root: Path, live: LiveConfig, stats: Stats) -> None:
        self.root = root
        self.live = live
        self.stats = stats
        self.io = BodyIO(stats)
        self._store: BodyStore | None = None

    def _current_store(self) -> BodyStore | None:
        """The store under the live gate, or None when bodies are not stored."""
        capture = self.live.config.capture
        if not capture.store_bodies:
            return None
        if self._store is None or self._store.max_bytes != capture.body_max_bytes:
            self._store = BodyStore(self.root, capture.body_max_bytes)
        return self._store

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
        store = self._current_store()
        if store is None:
            return
        limit = store.max_bytes
        declared = _content_length(headers)
        if declared is not None and declared > limit:
            # Known too large from the headers alone: never open a file for it.
            state.closers.append(lambda row: self._skipped(row, kind, declared, limit))
            return
        sink = store.open(state.row.id, "request" if kind == "request" else "response")
        relpath = sink.relpath
        queued = _QueuedSink(sink, relpath, self.io, limit)
        observers.append(queued.write)
        state.submit_after_bodies = partial(self._submit_after_bodies, state)

        def close(row: Row) -> None:
            job = queued.finish_job()
            if job is not None:
                state.body_jobs.append(job)
            if queued.skipped:
                self._skipped(row, kind, None, limit)
            elif queued.path is not None:
                if kind == "request":
                    row.request_body_path = queued.path
                else:
                    row.response_body_path = queued.path

        state.closers.append(close)

    def _submit_after_bodies(self, state: FlowState, submit_row: Callable[[], None]) -> None:
        # One job: the bodies' tails and closes, then the row (never before its files).
        jobs, state.body_jobs = [*state.body_jobs, submit_row], []
        self.io.submit(_run_all, jobs, self.stats)

    def _skipped(self, row: Row, kind: str, declared: int | None, limit: int) -> None:
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
            limit=limit,
        )


def _content_length(headers: http.Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)

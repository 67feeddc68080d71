"""The callable mitmproxy calls for every body chunk of a streamed request or response.

Each chunk is returned at once and unchanged (the client must see every SSE event as it
arrives). A copy goes to ``on_chunk`` through ``schedule``: the daemon passes
``loop.call_soon``, so decoding, parsing and body writes run right after mitmproxy has
forwarded the chunk, never in front of it, and in order (the loop's queue is FIFO).
mitmproxy calls the tee with ``b""`` at the end of the body: ``on_end`` is scheduled after
every chunk. Observer failures go to ``on_error`` and never stop the stream; after the first
failure ``on_chunk`` is no longer called.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

Schedule = Callable[..., None]  # schedule(fn, *args)


def run_now(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


class Tee:
    __slots__ = ("_on_chunk", "_on_end", "_on_error", "_schedule", "_broken", "ended_at")

    def __init__(
        self,
        on_chunk: Callable[[bytes], None],
        on_end: Callable[[], None],
        on_error: Callable[[BaseException], None],
        schedule: Schedule = run_now,
    ) -> None:
        self._on_chunk = on_chunk
        self._on_end = on_end
        self._on_error = on_error
        self._schedule = schedule
        self._broken = False
        self.ended_at: float | None = None

    def __call__(self, data: bytes) -> bytes:
        if data:
            self._schedule(self._chunk, data)
            return data
        if self.ended_at is None:
            self.ended_at = time.time()
            self._schedule(self._end)
        return b""

    def _chunk(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._on_chunk(data)
        except Exception as exc:
            self._broken = True
            self._report(exc)

    def _end(self) -> None:
        try:
            self._on_end()
        except Exception as exc:
            self._report(exc)

    def _report(self, exc: BaseException) -> None:
        # The stream matters more than the report.
        with contextlib.suppress(Exception):
            self._on_error(exc)

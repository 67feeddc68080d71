"""The callable mitmproxy calls for every body chunk of a streamed request or response.

Each chunk is returned at once and unchanged (the client must see every SSE event as it
arrives); a copy is shown to ``on_chunk``. mitmproxy calls it with ``b""`` at the end of the
body. Observer failures are reported to ``on_error`` and never stop the stream: after the
first failure the observer is no longer called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable


class Tee:
    __slots__ = ("_on_chunk", "_on_end", "_on_error", "_broken", "ended")

    def __init__(
        self,
        on_chunk: Callable[[bytes], None],
        on_end: Callable[[], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._on_chunk = on_chunk
        self._on_end = on_end
        self._on_error = on_error
        self._broken = False
        self.ended = False

    def __call__(self, data: bytes) -> bytes:
        if data:
            if not self._broken:
                try:
                    self._on_chunk(data)
                except Exception as exc:
                    self._broken = True
                    self._report(exc)
            return data
        if not self.ended:
            self.ended = True
            try:
                self._on_end()
            except Exception as exc:
                self._report(exc)
        return b""

    def _report(self, exc: BaseException) -> None:
        # The stream matters more than the report.
        with contextlib.suppress(Exception):
            self._on_error(exc)

"""Request and response bodies as 0600 files, under the `[capture] body_max_bytes` gate.

Over the gate the row keeps its metadata, ``body_skip_reason = "body_too_large"``, and the
log says ``addon.body_capture.skip reason=body_too_large``. Headers are never stored (they
carry the credentials); bodies are stored decoded, as the tee sees them.
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http

from halton_meter.daemon._log import log
from halton_meter.daemon.addons.capture import FlowState, state_of
from halton_meter.daemon.guard import fail_open
from halton_meter.daemon.stats import Stats
from halton_meter.store.bodies import BodyStore
from halton_meter.store.model import Row

SKIP_TOO_LARGE = "body_too_large"


class BodyCapture:
    def __init__(self, store: BodyStore | None, max_bytes: int, stats: Stats) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.stats = stats

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
        observers.append(sink.write)

        def close(row: Row) -> None:
            path = sink.close()
            if getattr(sink, "skipped", False):
                self._skipped(row, kind, None)
            elif path is not None:
                if kind == "request":
                    row.request_body_path = str(path)
                else:
                    row.response_body_path = str(path)

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

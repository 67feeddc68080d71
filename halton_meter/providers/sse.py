"""One incremental Server-Sent Events decoder shared by every streaming parser.

Follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; ``data`` lines of one
event are joined with newlines; lines starting with ``:`` are comments; a blank line
dispatches. Bytes are split into lines before decoding, so a chunk that ends in the middle of
a UTF-8 character is harmless.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# A line longer than this without a newline is not an event stream we can read.
MAX_LINE_BYTES = 16 * 1024 * 1024


class SseLineTooLong(ValueError):
    pass


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" when the stream gave no event name
    data: str
    id: str | None = None


class SseDecoder:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip_lf = False  # last chunk ended with CR: a leading LF belongs to it
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._first_line = True

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Events completed by this chunk, in order (all consumed before returning)."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        self._buf += chunk
        events = self._drain_lines()
        if len(self._buf) > MAX_LINE_BYTES:
            self._buf.clear()
            raise SseLineTooLong(f"event-stream line longer than {MAX_LINE_BYTES} bytes")
        return events

    def close(self) -> Iterator[SseEvent]:
        """End of stream: the last line and event even without their terminators."""
        if self._buf:
            line = bytes(self._buf)
            self._buf.clear()
            self._line(line)
        event = self._dispatch()
        if event is not None:
            yield event

    def pending(self) -> list[SseEvent]:
        """What ``close()`` would still yield, without consuming it."""
        saved = (bytes(self._buf), self._event, list(self._data), self._id, self._first_line)
        try:
            return list(self.close())
        finally:
            buf, self._event, self._data, self._id, self._first_line = saved
            self._buf = bytearray(buf)

    def _drain_lines(self) -> list[SseEvent]:
        events: list[SseEvent] = []
        buf = self._buf
        start = 0
        n = len(buf)
        # Each terminator is searched for again only once passed, so a chunk of many lines
        # without a single CR is scanned once, not once per line.
        cr = lf = -2
        while start < n:
            if cr != -1 and cr < start:
                cr = buf.find(b"\r", start)
            if lf != -1 and lf < start:
                lf = buf.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, nxt = lf, lf + 1
            elif cr + 1 < n:
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:
                # CR at the end of what we have: its LF may come in the next chunk
                end, nxt = cr, cr + 1
                self._skip_lf = True
            line = bytes(buf[start:end])
            start = nxt
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            else:
                self._line(line)
        del buf[:start]
        return events

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            text = text.removeprefix("\ufeff")
        if text.startswith(":"):
            return
        name, sep, value = text.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        # "retry" and unknown fields are ignored, as the spec says

    def _dispatch(self) -> SseEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
        self._event = ""
        self._data = []
        return event

"""Incremental splitter for a streamed JSON array of objects.

Gemini's ``streamGenerateContent`` without ``alt=sse`` sends ``[{...},\\r\\n{...}]`` a piece
at a time. This yields each top-level element's bytes as soon as it closes. A body that is a
single object (an error, say) is yielded as one element. Only ASCII bytes are structural, so
chunks split inside a UTF-8 character are harmless.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_STRUCTURAL = re.compile(rb'["\\\[\]{}]')
_IN_STRING = re.compile(rb'["\\]')
MAX_ELEMENT_BYTES = 64 * 1024 * 1024


class JsonArrayError(ValueError):
    pass


class JsonArraySplitter:
    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._array = False  # the top level is an array (else a single value)
        self._started = False
        self._closed = False
        self._elem = bytearray()  # bytes of the element being read
        self._in_elem = False

    @property
    def closed(self) -> bool:
        """The top-level value ended (``]`` seen, or a single object closed)."""
        return self._closed

    def partial(self) -> bytes:
        return bytes(self._elem)

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        i = 0
        n = len(chunk)
        while i < n:
            if not self._started:
                while i < n and chunk[i] in b" \t\r\n\xef\xbb\xbf":
                    i += 1
                if i == n:
                    return
                self._started = True
                if chunk[i] == 0x5B:  # [
                    self._array = True
                    self._depth = 1
                    i += 1
                    continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                    i = self._take(chunk, i, i + 1)
                    continue
                m = _IN_STRING.search(chunk, i)
                if m is None:
                    i = self._take(chunk, i, n)
                    continue
                j = m.start()
                if chunk[j] == 0x5C:  # backslash
                    self._escape = True
                else:
                    self._in_string = False
                i = self._take(chunk, i, j + 1)
                continue
            m = _STRUCTURAL.search(chunk, i)
            if m is None:
                i = self._take(chunk, i, n)
                continue
            j = m.start()
            c = chunk[j]
            base = 1 if self._array else 0
            if c == 0x22:  # "
                self._in_string = True
                i = self._take(chunk, i, j + 1)
            elif c in (0x7B, 0x5B):  # { [
                if self._depth == base and not self._in_elem:
                    self._in_elem = True
                    self._elem.clear()
                    i = j
                self._depth += 1
                i = self._take(chunk, i, j + 1)
            elif c in (0x7D, 0x5D):  # } ]
                self._depth -= 1
                i = self._take(chunk, i, j + 1)
                if self._depth == base and self._in_elem:
                    self._in_elem = False
                    element = bytes(self._elem)
                    self._elem.clear()
                    if not self._array:
                        self._closed = True
                    yield element
                elif self._depth < base or (self._array and self._depth == 0):
                    self._closed = True
                    self._depth = max(self._depth, 0)
            else:  # backslash outside a string: not JSON, keep going
                i = self._take(chunk, i, j + 1)
            if len(self._elem) > MAX_ELEMENT_BYTES:
                self._elem.clear()
                self._in_elem = False
                raise JsonArrayError(f"JSON element longer than {MAX_ELEMENT_BYTES} bytes")

    def _take(self, chunk: bytes, start: int, end: int) -> int:
        if self._in_elem:
            self._elem += chunk[start:end]
        return end

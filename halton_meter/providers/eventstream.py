"""Incremental decoder for the AWS binary event-stream framing (Bedrock streaming).

A message is: total length (u32), headers length (u32), prelude CRC32 (of the first 8
bytes); headers; payload; message CRC32 (of everything before it). All big-endian.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_PRELUDE = 12
_MIN_MESSAGE = 16
# AWS caps a message at 16 MiB; a larger length means we lost the framing.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024 + 1024


# Header key set on a message whose headers could not be read.
BAD_HEADERS = "__bad_headers__"


class EventStreamError(ValueError):
    """The framing is broken (bad CRC or length); nothing after it can be trusted."""


@dataclass(frozen=True)
class EventStreamMessage:
    headers: dict[str, Any]
    payload: bytes

    @property
    def event_type(self) -> str | None:
        v = self.headers.get(":event-type")
        return v if isinstance(v, str) else None

    @property
    def message_type(self) -> str | None:
        v = self.headers.get(":message-type")
        return v if isinstance(v, str) else None

    @property
    def exception_type(self) -> str | None:
        v = self.headers.get(":exception-type")
        return v if isinstance(v, str) else None


class EventStreamDecoder:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: str | None = None

    @property
    def broken(self) -> str | None:
        return self._broken

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> Iterator[EventStreamMessage]:
        """Messages completed by this chunk. Raises EventStreamError once, then ignores input."""
        if self._broken is not None:
            return
        self._buf += chunk
        while len(self._buf) >= _PRELUDE:
            total, headers_len, prelude_crc = struct.unpack_from(">III", self._buf, 0)
            if zlib.crc32(bytes(self._buf[:8])) != prelude_crc:
                self._fail("event-stream prelude CRC mismatch")
            if (
                total < _MIN_MESSAGE
                or total > MAX_MESSAGE_BYTES
                or headers_len > total - _MIN_MESSAGE
            ):
                self._fail(f"event-stream bad lengths total={total} headers={headers_len}")
            if len(self._buf) < total:
                return
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            (message_crc,) = struct.unpack_from(">I", frame, total - 4)
            if zlib.crc32(frame[:-4]) != message_crc:
                self._fail("event-stream message CRC mismatch")
            headers = _parse_headers(frame[_PRELUDE : _PRELUDE + headers_len])
            yield EventStreamMessage(headers, frame[_PRELUDE + headers_len : total - 4])

    def _fail(self, reason: str) -> None:
        self._broken = reason
        self._buf.clear()
        raise EventStreamError(reason)


def _parse_headers(raw: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    i = 0
    try:
        while i < len(raw):
            name_len = raw[i]
            name = raw[i + 1 : i + 1 + name_len].decode("utf-8", errors="replace")
            i += 1 + name_len
            kind = raw[i]
            i += 1
            value: Any
            if kind == 0:
                value = True
            elif kind == 1:
                value = False
            elif kind == 2:
                (value,) = struct.unpack_from(">b", raw, i)
                i += 1
            elif kind == 3:
                (value,) = struct.unpack_from(">h", raw, i)
                i += 2
            elif kind == 4:
                (value,) = struct.unpack_from(">i", raw, i)
                i += 4
            elif kind in (5, 8):  # long, timestamp (ms since epoch)
                (value,) = struct.unpack_from(">q", raw, i)
                i += 8
            elif kind in (6, 7):  # bytes, string
                (length,) = struct.unpack_from(">H", raw, i)
                data = raw[i + 2 : i + 2 + length]
                value = data.decode("utf-8", errors="replace") if kind == 7 else data
                i += 2 + length
            elif kind == 9:
                value = str(uuid.UUID(bytes=raw[i : i + 16]))
                i += 16
            else:
                raise ValueError(f"unknown header type {kind}")
            headers[name] = value
    except (struct.error, IndexError, ValueError) as e:
        # The frame's CRC held, so the next frame is still readable: flag this one only
        headers[BAD_HEADERS] = str(e)
    return headers


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """Build one message with string headers (tests and simulators use this)."""
    hdr = bytearray()
    for name, value in headers.items():
        n = name.encode()
        v = value.encode()
        hdr += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = _MIN_MESSAGE + len(hdr) + len(payload)
    prelude = struct.pack(">II", total, len(hdr))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + bytes(hdr) + payload
    return body + struct.pack(">I", zlib.crc32(body))

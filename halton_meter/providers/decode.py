"""Incremental Content-Encoding decoding for the stream tee.

Streamed chunks reach us still encoded; the parser reads the decoded bytes while the client
gets the original ones. Nothing here holds the whole body: each codec keeps only its own
window. An encoding we cannot decode raises ``UnsupportedEncoding`` up front so the caller
skips parsing and leaves the stream alone.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard


class UnsupportedEncoding(ValueError):
    """A Content-Encoding we do not decode; the caller should pass the stream through unparsed."""


class DecodeError(ValueError):
    """The body is corrupt for its declared encoding."""


class _Codec(Protocol):
    def decompress(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def decompress(self, chunk: bytes) -> bytes:
        return chunk

    def flush(self) -> bytes:
        return b""


class _Gzip:
    """gzip, including bodies of several concatenated members."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def decompress(self, chunk: bytes) -> bytes:
        out = []
        data = chunk
        while data:
            out.append(self._d.decompress(data))
            if not self._d.eof:
                break
            data = self._d.unused_data
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            # trailing padding after the last member is tolerated, as browsers do
            if not data.strip(b"\0"):
                break
        return b"".join(out)

    def flush(self) -> bytes:
        return self._d.flush()


class _Deflate:
    """HTTP "deflate" is meant to be zlib-wrapped, but raw deflate is common: sniff it."""

    def __init__(self) -> None:
        self._d: zlib._Decompress | None = None  # type: ignore[name-defined]
        self._head = b""

    def decompress(self, chunk: bytes) -> bytes:
        if self._d is None:
            self._head += chunk
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            is_zlib = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS)
            chunk, self._head = self._head, b""
        return self._d.decompress(chunk)

    def flush(self) -> bytes:
        if self._d is None:
            if self._head:
                raise DecodeError("deflate body shorter than its header")
            return b""
        return self._d.flush()


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decompress(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        return bytes(self._d.process(chunk))

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def decompress(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        return bytes(self._d.decompress(chunk))

    def flush(self) -> bytes:
        return b""


_CODECS: dict[str, type[_Codec]] = {
    "identity": _Identity,
    "gzip": _Gzip,
    "x-gzip": _Gzip,
    "deflate": _Deflate,
    "br": _Brotli,
    "zstd": _Zstd,
}


def parse_encodings(content_encoding: str | None) -> list[str]:
    """Encodings in the order they were applied; identity dropped. Raises UnsupportedEncoding."""
    names = [e.strip().lower() for e in (content_encoding or "").split(",")]
    names = [n for n in names if n and n != "identity"]
    for n in names:
        if n not in _CODECS:
            raise UnsupportedEncoding(f"unsupported Content-Encoding: {n}")
    return names


class IncrementalDecoder:
    """Decodes a body chunk by chunk. ``"gzip, br"`` was gzipped first, so br comes off first."""

    def __init__(self, content_encoding: str | None) -> None:
        self.encodings = parse_encodings(content_encoding)
        self._codecs: list[_Codec] = [_CODECS[n]() for n in reversed(self.encodings)]

    def decompress(self, chunk: bytes) -> bytes:
        data = chunk
        try:
            for codec in self._codecs:
                data = codec.decompress(data)
        except (zlib.error, brotli.error, zstandard.ZstdError) as e:
            raise DecodeError(f"cannot decode {','.join(self.encodings)} body: {e}") from e
        return data

    def flush(self) -> bytes:
        """What is left at the end of the body."""
        out = b""
        try:
            for codec in self._codecs:
                # what an outer layer still held goes through the inner layers before they flush
                out = (codec.decompress(out) if out else b"") + codec.flush()
        except (zlib.error, brotli.error, zstandard.ZstdError) as e:
            raise DecodeError(f"cannot decode {','.join(self.encodings)} body: {e}") from e
        return out

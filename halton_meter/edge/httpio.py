"""Just enough HTTP/1.1 for a forward proxy: heads, targets, body framing, canned replies."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
_COPY_CHUNK = 256 * 1024


class HttpError(Exception):
    """A malformed message: answer with ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Head:
    """A request or response head. ``first`` is the request or status line's three parts."""

    first: tuple[str, str, str]
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def without(self, *names: str) -> list[tuple[str, str]]:
        drop = {n.lower() for n in names}
        return [(k, v) for k, v in self.headers if k.lower() not in drop]

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next head, or None on a clean EOF before any byte of it."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpError(400, "incomplete request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, "request head too large") from exc
    return parse_head(raw)


def parse_head(raw: bytes) -> Head:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    # Tolerate stray CRLFs between keep-alive messages (RFC 9112 2.2).
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(" ", 2)
    if len(parts) == 2 and parts[0].startswith("HTTP/"):
        parts.append("")  # a status line without a reason phrase
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers.append((name, value.strip()))
    return Head((parts[0], parts[1], parts[2]), headers)


def serialize_head(first: tuple[str, str, str], headers: list[tuple[str, str]]) -> bytes:
    lines = [" ".join(first)] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def split_hostport(authority: str, default_port: int) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``host`` -> (host, port). Raises HttpError."""
    a = authority.strip()
    if a.startswith("["):
        end = a.find("]")
        if end == -1:
            raise HttpError(400, "malformed authority")
        host, rest = a[1:end], a[end + 1 :]
        port_s = rest[1:] if rest.startswith(":") else ""
    elif a.count(":") == 1:
        host, port_s = a.split(":", 1)
    else:
        host, port_s = a, ""
    if not host:
        raise HttpError(400, "missing host")
    if not port_s:
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise HttpError(400, "bad port")
    return host, int(port_s)


def simple_response(status: int, reason: str, body: str, *, close: bool = True) -> bytes:
    payload = body.encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(payload))),
        ("Proxy-Agent", "halton-meter-edge"),
    ]
    if close:
        headers.append(("Connection", "close"))
    return serialize_head(("HTTP/1.1", str(status), reason), headers) + payload


REASONS = {
    400: "Bad Request",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    508: "Loop Detected",
}


# -- body framing ----------------------------------------------------------------------------


async def copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        chunk = await reader.read(min(n, _COPY_CHUNK))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", n)
        writer.write(chunk)
        n -= len(chunk)
        await writer.drain()


async def copy_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(_COPY_CHUNK):
        writer.write(chunk)
        await writer.drain()


async def copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Relay a chunked body verbatim, trailers included, stopping right after it."""
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size_s = line.split(b";", 1)[0].strip()
        try:
            size = int(size_s, 16)
        except ValueError as exc:
            raise HttpError(400, "malformed chunk size") from exc
        if size == 0:
            while True:  # trailers, then the empty line
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    await writer.drain()
                    return
        await copy_exact(reader, writer, size + 2)


def content_length(head: Head) -> int | None:
    values = {v.strip() for v in head.get_all("content-length")}
    if not values:
        return None
    if len(values) != 1:
        raise HttpError(400, "conflicting content-length")
    value = values.pop()
    if not value.isdigit():
        raise HttpError(400, "bad content-length")
    return int(value)


def is_chunked(head: Head) -> bool:
    return "chunked" in head.tokens("transfer-encoding")

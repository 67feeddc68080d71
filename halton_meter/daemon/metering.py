"""Reading usage on the side of a stream: decode, parse, bound memory. No mitmproxy here.

A :class:`BodyReader` is fed the body bytes exactly as they crossed the wire (still gzip,
br or zstd encoded). It decodes incrementally and hands the decoded bytes to a stream
parser (SSE, AWS event stream) or, for a one-shot JSON body, keeps them up to a bound for
the JSON parser at the end. Body observers (the body store) see the decoded bytes too.
Nothing here ever raises into the stream: problems are counted in ``parse_errors``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from halton_meter.providers.base import ParseError, StreamParser, Usage, parse_error_count
from halton_meter.providers.decode import IncrementalDecoder, UnsupportedEncoding
from halton_meter.providers.endpoints import Endpoint
from halton_meter.providers.parsers import json_parser_for, stream_parser_for

# A one-shot JSON body is kept for its parser up to this size; model responses are far
# smaller, and a bound keeps a 200 MiB download from living in memory.
JSON_PARSE_LIMIT = 16 * 1024 * 1024
# Error bodies only need their message.
ERROR_BODY_LIMIT = 64 * 1024

_STREAM_TYPES = ("text/event-stream", "application/vnd.amazon.eventstream")
_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_STREAM_TRUE_RE = re.compile(rb'"stream"\s*:\s*true')


def is_stream_type(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct in _STREAM_TYPES


@dataclass
class BodyReader:
    """One body (request or response): counts wire bytes, decodes, parses or keeps a head."""

    content_encoding: str
    keep_limit: int
    parser: StreamParser | None = None
    observers: list[Callable[[bytes], None]] = field(default_factory=list)
    wire_bytes: int = 0
    decoded_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    kept: bytearray = field(default_factory=bytearray)
    overflowed: bool = False
    _decoder: IncrementalDecoder | None = None
    _decode_failed: bool = False
    _finished: bool = False

    def __post_init__(self) -> None:
        enc = self.content_encoding.strip().lower()
        if enc and enc != "identity":
            try:
                self._decoder = IncrementalDecoder(enc)
            except UnsupportedEncoding as exc:
                self._fail(f"unsupported content-encoding {enc!r}: {exc}")
                self._decode_failed = True

    def _fail(self, message: str) -> None:
        self.errors.append(message)

    def feed(self, chunk: bytes) -> None:
        self.wire_bytes += len(chunk)
        if self._decode_failed:
            return
        if self._decoder is not None:
            try:
                chunk = self._decoder.decompress(chunk)
            except Exception as exc:
                self._decode_failed = True
                self._fail(f"decode failed: {exc!r}")
                return
        self._consume(chunk)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._decoder is not None and not self._decode_failed:
            try:
                self._consume(self._decoder.flush())
            except Exception as exc:
                self._decode_failed = True
                self._fail(f"decode failed at end: {exc!r}")

    def _consume(self, data: bytes) -> None:
        if not data:
            return
        self.decoded_bytes += len(data)
        for observer in list(self.observers):
            try:
                observer(data)
            except Exception as exc:
                # A failing observer (the body store) is dropped; metering carries on.
                self.observers.remove(observer)
                self._fail(f"body observer failed: {exc!r}")
        if self.parser is not None:
            try:
                self.parser.feed(data)
            except Exception as exc:
                self.parser = None
                self._fail(f"stream parser failed: {exc!r}")
            return
        if self.overflowed:
            return
        if len(self.kept) + len(data) > self.keep_limit:
            room = self.keep_limit - len(self.kept)
            self.kept += data[: max(room, 0)]
            self.overflowed = True
            return
        self.kept += data

    @property
    def complete_body(self) -> bytes | None:
        """The whole decoded body when it was kept in full, else None."""
        if self.overflowed or self._decode_failed:
            return None
        return bytes(self.kept)


def sniff_model(head: bytes) -> str | None:
    """The model named in a request body we could not keep (or parse) in full."""
    m = _MODEL_RE.search(head)
    return m.group(1).decode("utf-8", "replace") if m else None


def sniff_stream(head: bytes) -> bool:
    return _STREAM_TRUE_RE.search(head) is not None


def new_response_reader(
    endpoint: Endpoint, status: int, content_type: str, content_encoding: str
) -> BodyReader:
    """A reader for a response: a stream parser for event streams, a bounded head otherwise."""
    parser: StreamParser | None = None
    limit = ERROR_BODY_LIMIT if status >= 400 else JSON_PARSE_LIMIT
    if status < 400 and (is_stream_type(content_type) or endpoint.path_stream):
        parser = stream_parser_for(endpoint, content_type)
    return BodyReader(content_encoding=content_encoding, keep_limit=limit, parser=parser)


def usage_of(endpoint: Endpoint, reader: BodyReader) -> Usage | None:
    """The usage the response reported, or None when there is none to read.

    Raises nothing; a body that does not parse is recorded in ``reader.errors``.
    """
    if reader.parser is not None:
        try:
            return reader.parser.result()
        except Exception as exc:
            reader.errors.append(f"stream parser result failed: {exc!r}")
            return None
    body = reader.complete_body
    if body is None:
        if reader.overflowed:
            reader.errors.append(f"response body over {reader.keep_limit} bytes: not parsed")
        return None
    if not body:
        return None
    try:
        return json_parser_for(endpoint)(body)
    except ParseError as exc:
        reader.errors.append(str(exc))
    except Exception as exc:
        reader.errors.append(f"json parser failed: {exc!r}")
    return None


def parser_error_count(usage: Usage | None) -> int:
    return parse_error_count(usage) if usage is not None else 0

"""Helpers for the provider-layer tests: wire captures and split-invariant feeding."""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from halton_meter.providers.base import StreamParser, Usage

DATA = Path(__file__).parent / "data" / "providers"


def capture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def splits(data: bytes, seeds: int = 6) -> Iterator[list[bytes]]:
    """The same bytes cut every way we care about: whole, byte by byte, random pieces."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for seed in range(seeds):
        rnd = random.Random(seed)
        pieces, i = [], 0
        while i < len(data):
            n = rnd.randint(1, 64)
            pieces.append(data[i : i + n])
            i += n
        yield pieces


def as_dict(u: Usage) -> dict[str, Any]:
    return dataclasses.asdict(u)


def feed_all_ways(make: Callable[[], StreamParser], data: bytes) -> Usage:
    """Feed ``data`` in every split; assert each gives the identical Usage, and return it."""
    results = []
    for pieces in splits(data):
        parser = make()
        for piece in pieces:
            parser.feed(piece)
        results.append(parser.result())
    first = as_dict(results[0])
    for other in results[1:]:
        assert as_dict(other) == first
    return results[0]


def es_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """An AWS event-stream message, written out here independently of the decoder."""
    hdr = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hdr += struct.pack("B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 4 + 4 + 4 + len(hdr) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hdr))
    head = prelude + struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF) + hdr + payload
    return head + struct.pack(">I", zlib.crc32(head) & 0xFFFFFFFF)


def es_event(event_type: str, payload: bytes) -> bytes:
    return es_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        payload,
    )

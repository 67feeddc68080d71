"""Framing layers: SSE, AWS event stream, streamed JSON arrays, Content-Encoding decoding."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
import zstandard
from fixtures_providers import capture, es_event, es_frame, splits

from halton_meter.providers.decode import (
    DecodeError,
    IncrementalDecoder,
    UnsupportedEncoding,
)
from halton_meter.providers.eventstream import (
    BAD_HEADERS,
    EventStreamDecoder,
    EventStreamError,
    encode_message,
)
from halton_meter.providers.jsonarray import JsonArraySplitter
from halton_meter.providers.sse import SseDecoder, SseEvent

# -- SSE -----------------------------------------------------------------------------------


def _sse_all(pieces: list[bytes]) -> list[SseEvent]:
    dec = SseDecoder()
    out: list[SseEvent] = []
    for p in pieces:
        out.extend(dec.feed(p))
    out.extend(dec.close())
    return out


SSE_MIXED = (
    b"\xef\xbb\xbf: a comment first\r\n"
    b'event: one\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'  # multi-line data, CRLF
    b"data: caf\xc3\xa9 \xf0\x9f\x98\x80\n\n"  # LF only, multi-byte UTF-8
    b"retry: 100\nid: 7\nevent: three\rdata:no-space\r\r"  # CR only
    b"event: empty-is-dropped\n\n"
    b"data: last without blank line"  # EOF in the middle of an event
)

SSE_EXPECTED = [
    SseEvent("one", '{"a":\n1}'),
    SseEvent("message", "café 😀"),
    SseEvent("three", "no-space", "7"),
    SseEvent("message", "last without blank line", "7"),
]


def test_sse_decoder_any_split() -> None:
    for pieces in splits(SSE_MIXED, seeds=20):
        assert _sse_all(pieces) == SSE_EXPECTED


def test_sse_crlf_split_between_cr_and_lf() -> None:
    dec = SseDecoder()
    events = list(dec.feed(b"data: x\r"))
    events += list(dec.feed(b"\ndata: y\r"))
    events += list(dec.feed(b"\n\r\n"))
    # one event with two data lines: the split CRLF must not look like a blank line
    assert events == [SseEvent("message", "x\ny")]


def test_sse_pending_does_not_consume() -> None:
    dec = SseDecoder()
    assert list(dec.feed(b"event: e\ndata: partial")) == []
    assert dec.pending() == [SseEvent("e", "partial")]
    assert dec.pending() == [SseEvent("e", "partial")]
    assert list(dec.feed(b" more\n\n")) == [SseEvent("e", "partial more")]
    assert dec.pending() == []


# -- AWS event stream ---------------------------------------------------------------------


def test_eventstream_frames_any_split() -> None:
    frames = [
        es_event("messageStart", b'{"p":"abcd","role":"assistant"}'),
        es_event("contentBlockDelta", '{"delta":{"text":"Grüß Gott"}}'.encode()),
        es_frame({":message-type": "exception", ":exception-type": "throttlingException"}, b"{}"),
        es_event("metadata", b'{"usage":{"inputTokens":5,"outputTokens":6}}'),
    ]
    data = b"".join(frames)
    for pieces in splits(data):
        dec = EventStreamDecoder()
        msgs = [m for p in pieces for m in dec.feed(p)]
        assert [m.event_type for m in msgs] == [
            "messageStart",
            "contentBlockDelta",
            None,
            "metadata",
        ]
        assert msgs[1].payload.decode() == '{"delta":{"text":"Grüß Gott"}}'
        assert msgs[2].message_type == "exception"
        assert msgs[2].exception_type == "throttlingException"
        assert dec.buffered == 0


def test_eventstream_encoder_matches_independent_builder() -> None:
    h = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
    assert encode_message(h, b'{"bytes":"e30="}') == es_frame(h, b'{"bytes":"e30="}')


def test_eventstream_bad_crc_is_reported_once_then_ignored() -> None:
    good = es_event("metadata", b"{}")
    bad = bytearray(es_event("metadata", b'{"x":1}'))
    bad[-1] ^= 0xFF  # message CRC
    dec = EventStreamDecoder()
    assert len(list(dec.feed(good))) == 1
    with pytest.raises(EventStreamError, match="message CRC"):
        list(dec.feed(bytes(bad)))
    assert dec.broken is not None
    assert list(dec.feed(good)) == []  # framing lost: nothing after it is trusted

    prelude_bad = bytearray(good)
    prelude_bad[9] ^= 0x01
    with pytest.raises(EventStreamError, match="prelude CRC"):
        list(EventStreamDecoder().feed(bytes(prelude_bad)))


def test_eventstream_unreadable_headers_flag_only_that_frame() -> None:
    # header type 42 does not exist; the CRCs are right so the next frame still decodes
    hdr = b"\x03abc\x2a"
    total = 16 + len(hdr)
    import struct

    prelude = struct.pack(">II", total, len(hdr))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + hdr
    weird = head + struct.pack(">I", zlib.crc32(head))
    msgs = list(EventStreamDecoder().feed(weird + es_event("metadata", b"{}")))
    assert BAD_HEADERS in msgs[0].headers
    assert msgs[1].event_type == "metadata"


# -- streamed JSON arrays -------------------------------------------------------------------


def test_json_array_splitter_any_split() -> None:
    data = capture("gemini_stream_array.json")
    expected = json.loads(data)
    for pieces in splits(data):
        sp = JsonArraySplitter()
        elements = [json.loads(e) for p in pieces for e in sp.feed(p)]
        assert elements == expected
        assert sp.closed


def test_json_array_single_object_and_partial() -> None:
    sp = JsonArraySplitter()
    assert list(sp.feed(b'{"error": {"code": 429, "message": "quota ]}"')) == []
    assert not sp.closed
    assert list(sp.feed(b"}}")) == [b'{"error": {"code": 429, "message": "quota ]}"}}']
    assert sp.closed

    sp2 = JsonArraySplitter()
    assert list(sp2.feed(b'[{"a": "\\"}"}, {"b": [1, {"c": 2}]')) == [b'{"a": "\\"}"}']
    assert not sp2.closed


# -- Content-Encoding ----------------------------------------------------------------------

BODY = ('data: {"text": "héllo wörld 🌍"}\n\n' * 400).encode()


def _decode_in_chunks(encoding: str | None, encoded: bytes, size: int) -> bytes:
    dec = IncrementalDecoder(encoding)
    out = b"".join(dec.decompress(encoded[i : i + size]) for i in range(0, len(encoded), size))
    return out + dec.flush()


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        (None, lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", _raw_deflate),
        ("br", brotli.compress),
        ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
        ("br, zstd", lambda b: zstandard.ZstdCompressor().compress(brotli.compress(b))),
    ],
)
@pytest.mark.parametrize("size", [1, 7, 4096])
def test_incremental_decode(encoding: str | None, encode, size: int) -> None:  # type: ignore[no-untyped-def]
    encoded = encode(BODY)
    assert _decode_in_chunks(encoding, encoded, size) == BODY


def test_gzip_multi_member_and_zstd_multi_frame() -> None:
    two = gzip.compress(b"first ") + gzip.compress(b"second")
    assert _decode_in_chunks("gzip", two, 3) == b"first second"
    z = zstandard.ZstdCompressor()
    frames = z.compress(b"one ") + z.compress(b"two")
    assert _decode_in_chunks("zstd", frames, 5) == b"one two"


def test_decoder_never_holds_the_whole_body() -> None:
    # output comes out as input goes in: the decoder is not buffering everything to the end
    dec = IncrementalDecoder("gzip")
    encoded = gzip.compress(BODY)
    first_half = dec.decompress(encoded[: len(encoded) // 2])
    assert len(first_half) > 0


def test_unsupported_and_corrupt_encodings() -> None:
    with pytest.raises(UnsupportedEncoding, match="compress"):
        IncrementalDecoder("compress")
    with pytest.raises(UnsupportedEncoding):
        IncrementalDecoder("gzip, snappy")
    dec = IncrementalDecoder("gzip")
    with pytest.raises(DecodeError):
        dec.decompress(b"this is not gzip at all")

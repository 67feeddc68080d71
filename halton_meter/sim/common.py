"""Knobs, deterministic usage, and the framing helpers every simulated API shares."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from halton_meter.sim.server import SimRequest

ENCODINGS = ("gzip", "br", "zstd", "deflate")
OUTCOMES = ("completed", "incomplete", "failed", "error")
PAD_CHUNK = 64 * 1024  # size of each generated text piece for x-sim-response-bytes
_WORDS = ("Hello", " from", " the", " Halton", " Meter", " provider", " simulator", ".")


class KnobError(ValueError):
    """A malformed x-sim-* header: answered with 400 so test mistakes are loud."""


@dataclass
class SimUsage:
    """Canonical usage; each API maps it to its own wire fields (see the package docstring)."""

    input_tokens: int = 0  # uncached, non-cache-write input (Anthropic semantics)
    output_tokens: int = 0  # all output, reasoning included
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # 5-minute cache writes
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    cost: str | None = None  # OpenRouter usage.cost, decimal text

    @property
    def cache_write_total(self) -> int:
        return self.cache_write_tokens + self.cache_write_1h_tokens

    @property
    def prompt_total(self) -> int:
        """Input including cache reads and writes (OpenAI prompt_tokens semantics)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_total

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_USAGE_KEYS = {f for f in SimUsage.__dataclass_fields__}


@dataclass
class Knobs:
    status: int | None = None
    retry_after: str = "1"
    encoding: str | None = None
    events: int = 5
    delay_s: float = 0.0
    ttfb_s: float = 0.0
    truncate_after: int | None = None
    truncate_reset: bool = False
    malformed: bool = False
    response_bytes: int | None = None
    usage: dict[str, Any] | None = None
    outcome: str = "completed"

    @classmethod
    def from_request(cls, req: SimRequest, *fallbacks: Mapping[str, str]) -> Knobs:
        """Knobs from the request's x-sim-* headers, else from each of ``fallbacks`` in turn
        (knobs carried by the model name, the simulator's defaults)."""

        def header(name: str) -> str | None:
            value = req.header(name)
            for more in fallbacks:
                if value is not None:
                    break
                value = more.get(name)
            return value

        return cls.from_lookup(header)

    @classmethod
    def from_lookup(cls, header: Callable[[str], str | None]) -> Knobs:
        k = cls()
        raw = header("x-sim-status")
        if raw:
            k.status = _int(raw, "x-sim-status", 100, 599)
        k.retry_after = header("x-sim-retry-after") or "1"
        raw = header("x-sim-encoding")
        if raw:
            if raw.strip().lower() not in ENCODINGS:
                raise KnobError(f"x-sim-encoding must be one of {ENCODINGS}, got {raw!r}")
            k.encoding = raw.strip().lower()
        raw = header("x-sim-events")
        if raw:
            k.events = _int(raw, "x-sim-events", 0, 1_000_000)
        raw = header("x-sim-delay-ms")
        if raw:
            k.delay_s = _int(raw, "x-sim-delay-ms", 0, 600_000) / 1000
        raw = header("x-sim-ttfb-ms")
        if raw:
            k.ttfb_s = _int(raw, "x-sim-ttfb-ms", 0, 600_000) / 1000
        raw = header("x-sim-truncate")
        if raw:
            parts = [p.strip() for p in raw.replace(";", ",").split(",") if p.strip()]
            value = parts[0].removeprefix("after=") if parts else ""
            k.truncate_after = _int(value, "x-sim-truncate", 0, 10_000_000)
            k.truncate_reset = "reset" in parts[1:]
        raw = header("x-sim-malformed")
        k.malformed = raw is not None and raw.strip().lower() not in ("", "0", "false", "no")
        raw = header("x-sim-response-bytes")
        if raw:
            k.response_bytes = _int(raw, "x-sim-response-bytes", 0, 1 << 40)
        raw = header("x-sim-usage")
        if raw:
            try:
                usage = json.loads(raw)
            except ValueError as exc:
                raise KnobError(f"x-sim-usage is not JSON: {exc}") from exc
            if not isinstance(usage, dict) or not set(usage) <= _USAGE_KEYS:
                raise KnobError(f"x-sim-usage keys must be among {sorted(_USAGE_KEYS)}")
            k.usage = usage
        raw = header("x-sim-outcome")
        if raw:
            if raw.strip() not in OUTCOMES:
                raise KnobError(f"x-sim-outcome must be one of {OUTCOMES}, got {raw!r}")
            k.outcome = raw.strip()
        return k


MODEL_KNOB_MARK = "@sim:"


def split_model_knobs(model: str) -> tuple[str, dict[str, str]]:
    """``"gpt-4o@sim:status=429,events=3"`` -> ``("gpt-4o", {"x-sim-status": "429", ...})``:
    knobs for clients that cannot set headers (a CLI, a WebSocket message)."""
    if MODEL_KNOB_MARK not in model:
        return model, {}
    name, _, spec = model.partition(MODEL_KNOB_MARK)
    knobs: dict[str, str] = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if key.strip():
            knobs[f"x-sim-{key.strip().lower()}"] = value.strip() if sep else "1"
    return name, knobs


def _int(raw: str, name: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError as exc:
        raise KnobError(f"{name} must be an integer, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise KnobError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


@dataclass
class Call:
    """One model call being simulated: the request, its knobs, and what will be reported."""

    req: SimRequest
    knobs: Knobs
    api: str
    model: str
    stream: bool
    body: dict[str, Any]
    usage: SimUsage = field(default_factory=SimUsage)
    wire_usage: dict[str, Any] | None = None  # set by the API module: the exact usage sent
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])

    @property
    def n_deltas(self) -> int:
        if self.knobs.response_bytes is not None:
            return max(1, -(-self.knobs.response_bytes // PAD_CHUNK))
        return self.knobs.events

    def deltas(self) -> Iterator[str]:
        """The text pieces, lazily: a 200 MiB response is never held in memory."""
        if self.knobs.response_bytes is not None:
            left = self.knobs.response_bytes
            while left > 0:
                n = min(PAD_CHUNK, left)
                left -= n
                yield "x" * n
            return
        for i, word in zip(range(self.knobs.events), itertools.cycle(_WORDS), strict=False):
            yield word if i else word.lstrip()

    def text(self) -> str:
        return "".join(self.deltas())


def default_usage(call: Call, body_size: int | None = None) -> SimUsage:
    """Deterministic counts from the request, overridden by x-sim-usage values."""
    size = call.req.body_size if body_size is None else body_size
    if call.knobs.response_bytes is not None:
        output = max(1, call.knobs.response_bytes // 4)
    else:
        output = call.n_deltas
    usage = SimUsage(input_tokens=max(1, size // 4), output_tokens=output)
    for key, value in (call.knobs.usage or {}).items():
        if key == "cost":
            setattr(usage, key, None if value is None else str(Decimal(str(value))))
        else:
            setattr(usage, key, int(value))
    return usage


def now_s() -> int:
    return int(time.time())


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(data: Any, event: str | None = None, eol: str = "\n") -> bytes:
    """One SSE event; ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else dumps(data)
    head = f"event: {event}{eol}" if event else ""
    return f"{head}data: {payload}{eol}{eol}".encode()


_PAD_MARK = "\x00SIMPAD\x00"


def text_placeholder(call: Call) -> str:
    """The text to put in a non-streamed JSON body: the real text, or a marker for padding."""
    return _PAD_MARK if call.knobs.response_bytes is not None else call.text()


def json_body(call: Call, obj: Any) -> tuple[bytes, Iterable[bytes] | None, int | None]:
    """Encode a JSON response; with x-sim-response-bytes the text is streamed in, never built."""
    encoded = dumps(obj)
    if call.knobs.response_bytes is None:
        return encoded.encode(), None, None
    mark = dumps(_PAD_MARK)[1:-1]
    prefix, suffix = encoded.split(mark, 1)
    head, tail = prefix.encode(), suffix.encode()
    total = len(head) + call.knobs.response_bytes + len(tail)

    def chunks() -> Iterator[bytes]:
        yield head
        for piece in call.deltas():
            yield piece.encode()
        yield tail

    return b"", chunks(), total


def once(fn: Callable[[], None]) -> Callable[[], None]:
    done = False

    def wrapper() -> None:
        nonlocal done
        if not done:
            done = True
            fn()

    return wrapper


@dataclass
class Reply:
    """What an API module answers; the app adds knobs (delay, truncation, encoding) on top."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    chunks: Iterable[bytes] | None = None
    content_length: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Inserted after the first event by x-sim-malformed on a stream.
    bad_chunk: bytes = b'data: {"type": "content_block_delta", "delta": {oops\n\n'


def json_reply(call: Call, obj: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
    body, chunks, length = json_body(call, obj)
    return Reply(body=body, chunks=chunks, content_length=length, headers=headers or [])


def sse_reply(events: Iterable[bytes], headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(
        content_type="text/event-stream; charset=utf-8",
        chunks=events,
        headers=[("cache-control", "no-cache"), *(headers or [])],
    )

"""Simulator knobs: encodings, incremental streaming, truncation, malformed bodies, big bodies,
errors, and many concurrent keep-alive connections."""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Iterator

import brotli
import httpx
import pytest
import zstandard

from halton_meter.sim import ProviderSim


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSim]:
    with ProviderSim() as s:
        yield s


@pytest.fixture
def client(sim: ProviderSim) -> Iterator[httpx.Client]:
    sim.clear()
    with httpx.Client(
        base_url=sim.base_url, verify=sim.client_ssl_context(), trust_env=False, timeout=30
    ) as c:
        yield c


def _sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


MSG = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "deflate"])
def test_encoded_json_decodes(client: httpx.Client, encoding: str) -> None:
    r = client.post(
        "/v1/chat/completions", json={"model": "m"}, headers={"x-sim-encoding": encoding}
    )
    assert r.headers["content-encoding"] == encoding
    assert r.json()["usage"]["completion_tokens"] == 5


def _decoder(encoding: str) -> object:
    if encoding == "gzip":
        return zlib.decompressobj(31)
    if encoding == "br":
        return brotli.Decompressor()
    return zstandard.ZstdDecompressor().decompressobj()


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_encoded_stream_flushes_each_event(
    client: httpx.Client, sim: ProviderSim, encoding: str
) -> None:
    """Each compressed chunk decodes to whole events on arrival (flush per event)."""
    headers = {"x-sim-encoding": encoding, "x-sim-events": "2", "x-sim-delay-ms": "60"}
    with client.stream("POST", "/v1/messages", json={**MSG, "stream": True}, headers=headers) as r:
        assert r.headers["content-encoding"] == encoding
        dec = _decoder(encoding)
        first = b""
        raw_chunks = r.iter_raw()
        for raw in raw_chunks:
            out = dec.process(raw) if encoding == "br" else dec.decompress(raw)  # type: ignore[attr-defined]
            if out:
                first = out
                break
        got_first_at = time.monotonic()
        rest = b"".join(raw_chunks)
    assert first.startswith(b"event: message_start\n") and first.endswith(b"\n\n")
    (rec,) = sim.wait_for_requests(1)
    assert rec.progress.last_event_at is not None and got_first_at < rec.progress.last_event_at
    assert rest  # and the remainder still arrived


def test_sse_arrives_incrementally(client: httpx.Client, sim: ProviderSim) -> None:
    headers = {"x-sim-events": "4", "x-sim-delay-ms": "100"}
    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}}
    arrivals: list[float] = []
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    (rec,) = sim.wait_for_requests(1)
    assert rec.progress.first_event_at is not None and rec.progress.last_event_at is not None
    assert arrivals[0] < rec.progress.last_event_at, (
        "first event only arrived after the last was sent"
    )
    assert arrivals[-1] - arrivals[0] >= 0.5  # 8 events, 100 ms apart
    # role chunk, 4 deltas, finish chunk, usage chunk, [DONE]
    assert rec.progress.events_sent == 8 and rec.completed


def test_truncate_cuts_the_stream(client: httpx.Client, sim: ProviderSim) -> None:
    seen: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream(
            "POST",
            "/v1/messages",
            json={**MSG, "stream": True},
            headers={"x-sim-truncate": "after=4"},
        ) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
    assert seen == ["message_start", "content_block_start", "ping", "content_block_delta"]
    (rec,) = sim.wait_for_requests(1)
    assert rec.truncated and not rec.completed and rec.progress.events_sent == 4


def test_truncate_json_body(client: httpx.Client, sim: ProviderSim) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/messages", json=MSG, headers={"x-sim-truncate": "after=0"})
    (rec,) = sim.wait_for_requests(1)
    assert rec.truncated


def test_truncate_with_encoding(client: httpx.Client, sim: ProviderSim) -> None:
    headers = {"x-sim-truncate": "after=2", "x-sim-encoding": "gzip"}
    got = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/v1/responses", json={"stream": True}, headers=headers) as r,
    ):
        for chunk in r.iter_bytes():
            got += chunk
    assert got.count(b"event: ") == 2 and b"response.completed" not in got


def test_malformed(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "m"}, headers={"x-sim-malformed": "1"})
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)
    r = client.post("/v1/messages", json={**MSG, "stream": True}, headers={"x-sim-malformed": "1"})
    bad = 0
    for data in _sse_data(r.text):
        try:
            json.loads(data)
        except json.JSONDecodeError:
            bad += 1
    assert bad == 1
    assert "message_stop" in r.text


def test_response_bytes_json(client: httpx.Client, sim: ProviderSim) -> None:
    n = 3 * 1024 * 1024 + 17
    r = client.post("/v1/messages", json=MSG, headers={"x-sim-response-bytes": str(n)})
    assert int(r.headers["content-length"]) == len(r.content)
    body = r.json()
    assert len(body["content"][0]["text"]) == n
    assert body["usage"]["output_tokens"] == n // 4
    (rec,) = sim.wait_for_requests(1)
    assert rec.progress.bytes_sent == len(r.content)


def test_response_bytes_stream(client: httpx.Client) -> None:
    n = 1024 * 1024
    r = client.post(
        "/v1/responses", json={"stream": True}, headers={"x-sim-response-bytes": str(n)}
    )
    events = [json.loads(d) for d in _sse_data(r.text)]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert sum(map(len, deltas)) == n and len(deltas) == 16
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["output_tokens"] == n // 4


def test_usage_knob_and_defaults(client: httpx.Client, sim: ProviderSim) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "y" * 400}]})
    r = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.json()["usage"]["prompt_tokens"] == len(body) // 4
    r = client.post(
        "/v1/chat/completions",
        json={},
        headers={"x-sim-usage": json.dumps({"input_tokens": 9, "output_tokens": 4})},
    )
    assert r.json()["usage"]["prompt_tokens"] == 9
    assert r.json()["usage"]["completion_tokens"] == 4
    r = client.post("/v1/chat/completions", json={}, headers={"x-sim-usage": '{"bogus": 1}'})
    assert r.status_code == 400 and "x-sim-usage" in r.json()["error"]["message"]
    recs = sim.wait_for_requests(3)
    assert recs[1].usage_canonical is not None and recs[1].usage_canonical["input_tokens"] == 9


def test_unknown_model_echoed(client: httpx.Client) -> None:
    r = client.post("/v1/messages", json={**MSG, "model": "claude-from-the-future-9"})
    assert r.json()["model"] == "claude-from-the-future-9"


@pytest.mark.parametrize(
    ("path", "status", "check"),
    [
        ("/v1/messages", 529, lambda b: b["error"]["type"] == "overloaded_error"),
        ("/v1/chat/completions", 429, lambda b: b["error"]["code"] == "rate_limit_exceeded"),
        (
            "/v1beta/models/gemini-2.5-pro:generateContent",
            429,
            lambda b: b["error"]["status"] == "RESOURCE_EXHAUSTED",
        ),
        ("/model/anthropic.claude-v2/converse", 429, lambda b: "message" in b),
    ],
)
def test_error_shapes(client: httpx.Client, path: str, status: int, check: object) -> None:
    r = client.post(path, json={}, headers={"x-sim-status": str(status), "x-sim-retry-after": "7"})
    assert r.status_code == status
    assert r.headers["retry-after"] == "7"
    assert check(r.json())  # type: ignore[operator]
    if path.startswith("/model/"):
        assert r.headers["x-amzn-errortype"] == "ThrottlingException"


async def _raw_stream_requests(sim: ProviderSim, count: int) -> list[int]:
    """One TLS connection making ``count`` streaming requests in turn (raw asyncio: httpx's pool
    gets slow with hundreds of idle connections, which is not what is measured here)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", sim.port, ssl=sim.client_ssl_context(), server_hostname="api.anthropic.com"
    )
    body = json.dumps({**MSG, "stream": True}).encode()
    head = (
        "POST /v1/messages HTTP/1.1\r\nhost: api.anthropic.com\r\ncontent-type: application/json\r\n"
        f"x-sim-events: 3\r\nx-sim-delay-ms: 100\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    stops = []
    try:
        for _ in range(count):
            writer.write(head + body)
            data = await reader.readuntil(b"\r\n0\r\n\r\n")  # end of the chunked body
            stops.append(data.count(b"event: message_stop"))
    finally:
        writer.close()
    return stops


def test_hundreds_of_concurrent_keepalive_streams(sim: ProviderSim) -> None:
    sim.clear()
    n = 300

    async def run() -> list[list[int]]:
        return await asyncio.gather(*(_raw_stream_requests(sim, 2) for _ in range(n)))

    started = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert results == [[1, 1]] * n
    recs = sim.wait_for_requests(2 * n)
    by_peer: dict[str, int] = {}
    for r in recs:
        by_peer[r.peer] = by_peer.get(r.peer, 0) + 1
    assert len(by_peer) == n and set(by_peer.values()) == {2}  # two requests per connection
    assert all(r.sni == "api.anthropic.com" for r in recs)
    # Streams of 8 x 100 ms delays each, twice: concurrent service keeps this far below n * 1.6 s.
    assert elapsed < 20


def test_ttfb_delays_the_status_line(client: httpx.Client) -> None:
    started = time.monotonic()
    r = client.post("/v1/messages", json=MSG, headers={"x-sim-ttfb-ms": "300"})
    assert r.status_code == 200 and time.monotonic() - started >= 0.3


def test_handler_crash_is_a_500(
    client: httpx.Client, sim: ProviderSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(_call: object) -> object:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("halton_meter.sim.anthropic.count_tokens", boom)
    r = client.post("/v1/messages/count_tokens", json={})
    assert r.status_code == 500 and r.json()["error"]["type"] == "sim_internal_error"
    # and the connection still serves
    assert client.post("/v1/messages", json=MSG).status_code == 200
    crashed, _ok = sim.wait_for_requests(2)
    assert crashed.status == 500 and crashed.completed


def test_unknown_paths(client: httpx.Client, sim: ProviderSim) -> None:
    r = client.get("/api/oauth/profile", headers={"host": "api.anthropic.com"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = client.get("/", headers={"host": "api.openai.com"})
    assert r.status_code == 200
    recs = sim.wait_for_requests(2)
    assert [r.api for r in recs] == ["site", "site"] and recs[0].usage is None


def test_knobs_in_the_model_name(client: httpx.Client, sim: ProviderSim) -> None:
    r = client.post("/v1/chat/completions", json={"model": "gpt-4o@sim:status=429"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    r = client.post(
        "/v1/messages", json={**MSG, "model": "claude-x@sim:events=2,encoding=gzip", "stream": True}
    )
    assert r.headers["content-encoding"] == "gzip"
    assert r.text.count("event: content_block_delta") == 2
    assert '"model":"claude-x"' in r.text  # echoed without the knobs
    r = client.post(
        "/v1beta/models/gemini-2.5-flash@sim:events=1:generateContent",
        json={},
        headers={"x-sim-events": "3"},  # the header wins
    )
    assert r.json()["modelVersion"] == "gemini-2.5-flash"
    assert r.json()["usageMetadata"]["candidatesTokenCount"] == 3
    r = client.post("/v1/chat/completions", json={"model": "m@sim:events=lots"})
    assert r.status_code == 400
    recs = sim.wait_for_requests(4)
    assert [rec.model for rec in recs] == ["gpt-4o", "claude-x", "gemini-2.5-flash", "m"]


def test_simulator_defaults() -> None:
    with ProviderSim(defaults={"x-sim-events": "1", "X-Sim-Encoding": "br"}) as sim:
        ctx = sim.client_ssl_context()
        with httpx.Client(base_url=sim.base_url, verify=ctx, trust_env=False) as c:
            r = c.post("/v1/chat/completions", json={})
            assert r.headers["content-encoding"] == "br"
            assert r.json()["choices"][0]["message"]["content"] == "Hello"
            r = c.post("/v1/chat/completions", json={}, headers={"x-sim-events": "2"})
            assert r.json()["choices"][0]["message"]["content"] == "Hello from"
            r = c.post("/v1/chat/completions", json={"model": "gpt-4o@sim:events=0"})
            assert r.json()["choices"][0]["message"]["content"] == ""


def test_expect_100_continue_upload(client: httpx.Client, sim: ProviderSim) -> None:
    """A large upload with Expect: 100-continue is not stalled waiting for the interim answer."""
    import socket

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "z" * 2_000_000}]})
    ctx = sim.client_ssl_context()
    with (
        socket.create_connection(("127.0.0.1", sim.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="api.openai.com") as tls,
    ):
        tls.sendall(
            (
                "POST /v1/chat/completions HTTP/1.1\r\nhost: api.openai.com\r\n"
                f"content-length: {len(body)}\r\nexpect: 100-continue\r\n\r\n"
            ).encode()
        )
        interim = tls.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100")
        tls.sendall(body.encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += tls.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200")
    (rec,) = sim.wait_for_requests(1)
    assert rec.body_size == len(body) and rec.usage is not None
    assert rec.usage["prompt_tokens"] == len(body) // 4


def test_truncate_with_reset(client: httpx.Client, sim: ProviderSim) -> None:
    with (
        pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)),
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={"stream": True},
            headers={"x-sim-truncate": "after=2,reset"},
        ) as r,
    ):
        for _ in r.iter_lines():
            pass
    (rec,) = sim.wait_for_requests(1)
    assert rec.truncated and rec.knobs["truncate_reset"] is True

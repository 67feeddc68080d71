"""Simulator wire shapes beyond Anthropic/OpenAI: Gemini, OpenRouter, Azure, Bedrock, and the
Responses API over WebSocket."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from halton_meter.sim import ProviderSim
from halton_meter.sim.bedrock import decode_frames


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


GEMINI_USAGE = {
    "input_tokens": 50,
    "output_tokens": 12,
    "cache_read_tokens": 8,
    "reasoning_tokens": 4,
}


def test_gemini_generate(client: httpx.Client, sim: ProviderSim) -> None:
    r = client.post(
        "/v1beta/models/gemini-2.5-pro:generateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": "AIza-test", "x-sim-usage": json.dumps(GEMINI_USAGE)},
    )
    body = r.json()
    assert body["candidates"][0]["content"]["parts"][0]["text"] == "Hello from the Halton Meter"
    assert body["modelVersion"] == "gemini-2.5-pro"
    meta = body["usageMetadata"]
    assert meta["promptTokenCount"] == 58 and meta["cachedContentTokenCount"] == 8
    assert meta["candidatesTokenCount"] == 8 and meta["thoughtsTokenCount"] == 4
    assert meta["totalTokenCount"] == 70
    (rec,) = sim.wait_for_requests(1)
    assert rec.api == "gemini.generate" and rec.headers["x-goog-api-key"] == "AIza-test"


def test_gemini_stream_sse_cumulative(client: httpx.Client) -> None:
    r = client.post(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        json={},
        headers={"x-sim-usage": json.dumps(GEMINI_USAGE), "x-sim-events": "4"},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "\r\n\r\n" in r.text
    chunks = [json.loads(line[6:]) for line in r.text.split("\r\n") if line.startswith("data: ")]
    assert len(chunks) == 4
    counts = [c["usageMetadata"]["candidatesTokenCount"] for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 8
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert all(c["usageMetadata"]["promptTokenCount"] == 58 for c in chunks)


def test_gemini_stream_json_array(client: httpx.Client, sim: ProviderSim) -> None:
    r = client.post("/v1beta/models/gemini-2.5-flash:streamGenerateContent", json={})
    arr = json.loads(r.text)
    assert isinstance(arr, list) and len(arr) == 5
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in arr) == (
        "Hello from the Halton Meter"
    )
    (rec,) = sim.wait_for_requests(1)
    assert rec.stream and rec.api == "gemini.stream"


def test_gemini_count_tokens_and_models(client: httpx.Client) -> None:
    r = client.post("/v1beta/models/gemini-2.5-flash:countTokens", json={"contents": []})
    assert r.json()["totalTokens"] >= 1
    r = client.get("/v1beta/models", headers={"host": "generativelanguage.googleapis.com"})
    assert any(m["name"] == "models/gemini-2.5-pro" for m in r.json()["models"])


def test_openrouter_cost(client: httpx.Client, sim: ProviderSim) -> None:
    r = client.post(
        "/api/v1/chat/completions",
        json={"model": "anthropic/claude-sonnet-4.5"},
        headers={
            "x-sim-usage": json.dumps({"input_tokens": 10, "output_tokens": 2, "cost": "0.000123"})
        },
    )
    usage = r.json()["usage"]
    assert '"cost":0.000123' in r.text  # the exact digits on the wire
    assert usage["prompt_tokens"] == 10 and usage["completion_tokens"] == 2
    r = client.post("/api/v1/chat/completions", json={"model": "x", "stream": True})
    assert r.text.startswith(": OPENROUTER PROCESSING")
    datas = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    final = json.loads(datas[-2])
    assert final["usage"]["cost"] > 0 and datas[-1] == "[DONE]"
    recs = sim.wait_for_requests(2)
    assert recs[0].usage_canonical is not None and recs[0].usage_canonical["cost"] == "0.000123"


def test_azure_with_sdk(sim: ProviderSim) -> None:
    sim.clear()
    with httpx2.Client(verify=sim.client_ssl_context(), trust_env=False) as http:
        az = openai.AzureOpenAI(
            azure_endpoint=sim.base_url,
            api_key="azure-key",
            api_version="2024-10-21",
            http_client=http,
            max_retries=0,
        )
        resp = az.chat.completions.create(model="my-gpt4o-deployment", messages=[])
        emb = az.embeddings.create(model="emb-deployment", input="x")
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert emb.model == "emb-deployment"
    rec, emb_rec = sim.wait_for_requests(2)
    assert emb_rec.api == "azure.embeddings" and emb_rec.model == "emb-deployment"
    assert rec.api == "azure.chat"
    assert rec.path == "/openai/deployments/my-gpt4o-deployment/chat/completions"
    assert rec.query == {"api-version": "2024-10-21"} and rec.headers["api-key"] == "azure-key"


def test_bedrock_invoke(client: httpx.Client) -> None:
    model = "anthropic.claude-3-5-sonnet-20241022-v2:0"
    r = client.post(
        f"/model/{model.replace(':', '%3A')}/invoke",
        json={"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": []},
    )
    body = r.json()
    assert body["type"] == "message" and body["model"] == model
    assert r.headers["x-amzn-bedrock-output-token-count"] == str(body["usage"]["output_tokens"])


def test_bedrock_converse(client: httpx.Client) -> None:
    r = client.post(
        "/model/amazon.nova-pro-v1%3A0/converse",
        json={"messages": []},
        headers={
            "x-sim-usage": json.dumps(
                {"input_tokens": 7, "output_tokens": 3, "cache_read_tokens": 2}
            )
        },
    )
    usage = r.json()["usage"]
    assert usage == {
        "inputTokens": 7,
        "outputTokens": 3,
        "totalTokens": 12,
        "cacheReadInputTokens": 2,
        "cacheWriteInputTokens": 0,
    }


def test_bedrock_converse_stream_eventstream(client: httpx.Client) -> None:
    r = client.post(
        "/model/amazon.nova-pro-v1%3A0/converse-stream", json={}, headers={"x-sim-events": "2"}
    )
    assert r.headers["content-type"] == "application/vnd.amazon.eventstream"
    frames = list(decode_frames(r.content))
    kinds = [h[":event-type"] for h, _ in frames]
    assert kinds == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert json.loads(frames[-1][1])["usage"]["outputTokens"] == 2
    bad = client.post("/model/m/converse-stream", json={}, headers={"x-sim-malformed": "1"})
    with pytest.raises(ValueError, match="crc"):
        list(decode_frames(bad.content))


def test_bedrock_invoke_stream_eventstream(client: httpx.Client) -> None:
    r = client.post("/model/anthropic.claude-v2/invoke-with-response-stream", json={})
    events = [
        json.loads(base64.b64decode(json.loads(p)["bytes"])) for _h, p in decode_frames(r.content)
    ]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 5


def _ws_roundtrip(
    sim: ProviderSim, messages: list[dict[str, Any]], headers: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    ctx = sim.client_ssl_context()
    received: list[dict[str, Any]] = []
    with (
        socket.create_connection(("127.0.0.1", sim.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="api.openai.com") as tls,
    ):
        ws = WSConnection(ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in headers]
        tls.sendall(
            ws.send(Request(host="api.openai.com", target="/v1/responses", extra_headers=extra))
        )
        expected_done = len(messages)
        sent = False
        while expected_done:
            data = tls.recv(65536)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection) and not sent:
                    for m in messages:
                        tls.sendall(ws.send(TextMessage(data=json.dumps(m))))
                    sent = True
                elif isinstance(event, TextMessage):
                    obj = json.loads(event.data)
                    received.append(obj)
                    if obj["type"] in (
                        "response.completed",
                        "response.failed",
                        "response.incomplete",
                        "error",
                    ):
                        expected_done -= 1
                elif isinstance(event, CloseConnection):
                    expected_done = 0
        tls.sendall(ws.send(CloseConnection(code=1000)))
    return received


def test_responses_over_websocket(sim: ProviderSim) -> None:
    sim.clear()
    msgs: list[dict[str, Any]] = [
        {
            "type": "response.create",
            "model": "gpt-5-codex",
            "input": [{"role": "user", "content": "a"}],
        },
        {"type": "response.create", "model": "gpt-5", "input": "b"},
    ]
    usage = json.dumps({"input_tokens": 40, "output_tokens": 6})
    events = _ws_roundtrip(
        sim,
        msgs,
        [("authorization", "Bearer sk-ws"), ("x-sim-usage", usage), ("x-sim-events", "2")],
    )
    done = [e for e in events if e["type"] == "response.completed"]
    assert [d["response"]["model"] for d in done] == ["gpt-5-codex", "gpt-5"]
    assert all(d["response"]["usage"]["input_tokens"] == 40 for d in done)
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 4
    (rec,) = sim.wait_for_requests(1)
    assert rec.api == "openai.responses.ws" and rec.headers["authorization"] == "Bearer sk-ws"
    assert [c["model"] for c in rec.ws_calls] == ["gpt-5-codex", "gpt-5"]
    assert all(c["completed"] and c["usage"]["output_tokens"] == 6 for c in rec.ws_calls)


def test_websocket_handshake_error(sim: ProviderSim) -> None:
    ctx = sim.client_ssl_context()
    with (
        socket.create_connection(("127.0.0.1", sim.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="api.openai.com") as tls,
    ):
        ws = WSConnection(ConnectionType.CLIENT)
        tls.sendall(
            ws.send(
                Request(
                    host="api.openai.com",
                    target="/v1/responses",
                    extra_headers=[(b"x-sim-status", b"429")],
                )
            )
        )
        head = tls.recv(65536)
    assert head.startswith(b"HTTP/1.1 429")


def test_websocket_model_name_error(sim: ProviderSim) -> None:
    sim.clear()
    msgs: list[dict[str, Any]] = [
        {"type": "response.create", "model": "gpt-5@sim:status=429", "input": "a"},
        {"type": "response.create", "model": "gpt-5", "input": "b"},
    ]
    events = _ws_roundtrip(sim, msgs, [])
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["status"] == 429
    assert errors[0]["error"]["code"] == "rate_limit_exceeded"
    assert events[-1]["type"] == "response.completed"
    (rec,) = sim.wait_for_requests(1)
    assert [c["status"] for c in rec.ws_calls] == [429, 200]
    assert rec.ws_calls[0]["usage"] is None

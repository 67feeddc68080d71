"""The provider simulator, hit directly (no proxy) with the official anthropic and openai SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx2
import openai
import pytest

from halton_meter.sim import ProviderSim


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSim]:
    with ProviderSim() as s:
        yield s


@pytest.fixture
def fresh(sim: ProviderSim) -> ProviderSim:
    sim.clear()
    return sim


def _http(sim: ProviderSim) -> httpx2.Client:
    # The SDKs are built on httpx2 (they reject httpx objects).
    return httpx2.Client(verify=sim.client_ssl_context(), trust_env=False)


@pytest.fixture
def claude(fresh: ProviderSim) -> Iterator[anthropic.Anthropic]:
    with _http(fresh) as http:
        yield anthropic.Anthropic(
            base_url=fresh.base_url, api_key="sk-ant-test-key", http_client=http, max_retries=0
        )


@pytest.fixture
def oai(fresh: ProviderSim) -> Iterator[openai.OpenAI]:
    with _http(fresh) as http:
        yield openai.OpenAI(
            base_url=f"{fresh.base_url}/v1",
            api_key="sk-openai-test",
            http_client=http,
            max_retries=0,
        )


USAGE = {
    "input_tokens": 100,
    "output_tokens": 20,
    "cache_read_tokens": 30,
    "cache_write_tokens": 5,
    "cache_write_1h_tokens": 2,
    "reasoning_tokens": 7,
}
USAGE_HEADER = {"x-sim-usage": json.dumps(USAGE)}


def test_anthropic_messages_json(claude: anthropic.Anthropic, fresh: ProviderSim) -> None:
    msg = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers=USAGE_HEADER,
    )
    assert msg.model == "claude-sonnet-4-5"
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from the Halton Meter"
    assert msg.usage.input_tokens == 100
    assert msg.usage.output_tokens == 20
    assert msg.usage.cache_read_input_tokens == 30
    assert msg.usage.cache_creation_input_tokens == 7
    assert msg.usage.cache_creation is not None
    assert msg.usage.cache_creation.ephemeral_5m_input_tokens == 5
    assert msg.usage.cache_creation.ephemeral_1h_input_tokens == 2
    (rec,) = fresh.wait_for_requests(1)
    assert rec.api == "anthropic.messages" and rec.method == "POST" and rec.path == "/v1/messages"
    # This SDK generation sends the key as a bearer token; older ones used x-api-key.
    assert "sk-ant-test-key" in (rec.header("x-api-key") or rec.header("authorization") or "")
    assert rec.headers["anthropic-version"]
    assert rec.body_size == int(rec.headers["content-length"])
    assert rec.json_body()["messages"][0]["content"] == "hi"
    assert rec.usage is not None and rec.usage["cache_read_input_tokens"] == 30
    assert rec.status == 200 and rec.completed and not rec.stream


def test_anthropic_messages_stream(claude: anthropic.Anthropic, fresh: ProviderSim) -> None:
    with claude.messages.stream(
        model="claude-opus-4-1",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={**USAGE_HEADER, "x-sim-events": "4"},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds.count("content_block_delta") + kinds.count("text") >= 4
    assert final.content[0].type == "text" and final.content[0].text == "Hello from the Halton"
    assert final.usage.input_tokens == 100
    assert final.usage.output_tokens == 20
    assert final.usage.cache_read_input_tokens == 30
    assert final.stop_reason == "end_turn"
    (rec,) = fresh.wait_for_requests(1)
    assert rec.stream and rec.model == "claude-opus-4-1"
    assert rec.usage is not None
    assert rec.usage["message_start"]["output_tokens"] == 1
    assert rec.usage["message_start"]["cache_creation"] == {
        "ephemeral_5m_input_tokens": 5,
        "ephemeral_1h_input_tokens": 2,
    }
    assert rec.usage["message_delta"]["output_tokens"] == 20
    # message_start, content_block_start, ping, 4 deltas, block stop, message_delta, message_stop
    assert rec.progress.events_sent == 10


def test_anthropic_count_tokens_and_models(claude: anthropic.Anthropic, fresh: ProviderSim) -> None:
    counted = claude.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hello"}]
    )
    assert counted.input_tokens >= 1
    models = claude.models.list()
    assert any(m.id.startswith("claude-") for m in models.data)
    recs = fresh.wait_for_requests(2)
    assert [r.api for r in recs] == ["anthropic.count_tokens", "anthropic.models"]


def test_openai_chat_json(oai: openai.OpenAI, fresh: ProviderSim) -> None:
    resp = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers=USAGE_HEADER,
    )
    assert resp.model == "gpt-4o-mini"
    assert resp.choices[0].message.content == "Hello from the Halton Meter"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 137  # input + cache read + cache writes
    assert resp.usage.completion_tokens == 20
    assert resp.usage.total_tokens == 157
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 30
    assert resp.usage.completion_tokens_details is not None
    assert resp.usage.completion_tokens_details.reasoning_tokens == 7
    (rec,) = fresh.wait_for_requests(1)
    assert rec.headers["authorization"] == "Bearer sk-openai-test"
    assert rec.api == "openai.chat"


def test_openai_chat_stream_without_usage(oai: openai.OpenAI, fresh: ProviderSim) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the Halton Meter"
    assert all(c.usage is None for c in chunks)
    (rec,) = fresh.wait_for_requests(1)
    assert rec.stream and rec.usage is None


def test_openai_chat_stream_include_usage(oai: openai.OpenAI, fresh: ProviderSim) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4.1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-sim-events": "3"},
    )
    chunks = list(stream)
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    (rec,) = fresh.wait_for_requests(1)
    assert rec.usage is not None and rec.usage["completion_tokens"] == 3
    assert rec.usage["prompt_tokens"] == max(1, rec.body_size // 4)


def test_openai_responses_json(oai: openai.OpenAI, fresh: ProviderSim) -> None:
    resp = oai.responses.create(model="gpt-5", input="hi", extra_headers=USAGE_HEADER)
    assert resp.status == "completed"
    assert resp.output_text == "Hello from the Halton Meter"
    assert resp.usage is not None
    assert resp.usage.input_tokens == 137
    assert resp.usage.input_tokens_details.cached_tokens == 30
    assert resp.usage.output_tokens == 20
    assert resp.usage.output_tokens_details.reasoning_tokens == 7
    (rec,) = fresh.wait_for_requests(1)
    assert rec.api == "openai.responses" and rec.model == "gpt-5"


def test_openai_responses_stream(oai: openai.OpenAI, fresh: ProviderSim) -> None:
    stream = oai.responses.create(
        model="gpt-5", input="hi", stream=True, extra_headers={"x-sim-events": "2"}
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds.count("response.output_text.delta") == 2
    assert kinds[-1] == "response.completed"
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.usage is not None and final.response.usage.output_tokens == 2
    assert final.response.output_text == "Hello from"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_openai_responses_stream_incomplete(oai: openai.OpenAI, fresh: ProviderSim) -> None:
    stream = oai.responses.create(
        model="gpt-5", input="hi", stream=True, extra_headers={"x-sim-outcome": "incomplete"}
    )
    events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage is not None
    assert events[-1].response.incomplete_details is not None


def test_openai_embeddings_and_models(oai: openai.OpenAI, fresh: ProviderSim) -> None:
    emb = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and emb.usage.prompt_tokens >= 1
    assert any(m.id == "gpt-4o" for m in oai.models.list())
    recs = fresh.wait_for_requests(2)
    assert [r.api for r in recs] == ["openai.embeddings", "openai.models"]


def test_sdk_sees_real_error_shapes(
    claude: anthropic.Anthropic, oai: openai.OpenAI, fresh: ProviderSim
) -> None:
    with pytest.raises(anthropic.RateLimitError) as a_err:
        claude.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-sim-status": "429"},
        )
    assert a_err.value.response.headers["retry-after"] == "1"
    assert a_err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as o_err:
        oai.chat.completions.create(
            model="gpt-4o", messages=[], extra_headers={"x-sim-status": "500"}
        )
    assert o_err.value.body["type"] == "server_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="gpt-5", input="x", extra_headers={"x-sim-status": "400"})
    recs = fresh.wait_for_requests(3)
    assert [r.status for r in recs] == [429, 500, 400]
    assert all(r.usage is None for r in recs)

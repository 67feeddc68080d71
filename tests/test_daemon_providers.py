# ruff: noqa: F811  (pytest fixtures imported by name)
"""Every provider's real wire shape through the real daemon over TLS: rows match the sim.

Clients keep the real provider URLs (https://api.anthropic.com ...); the daemon's
`[upstream] resolve` sends them to the simulator, which reports exactly what usage it put
on the wire (``SimRecord.usage_canonical``).
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from fixtures_daemon import COMPATIBLE_HOST, DaemonHandle, shared_daemon  # noqa: F401

from halton_meter.sim import SimRecord

USAGE = {"input_tokens": 100, "cache_read_tokens": 40, "output_tokens": 30, "reasoning_tokens": 10}
# Anthropic-shaped APIs also report cache writes (5-minute and 1-hour).
USAGE_CACHE = {
    "input_tokens": 120,
    "cache_read_tokens": 40,
    "cache_write_tokens": 20,
    "cache_write_1h_tokens": 5,
    "output_tokens": 33,
}


def usage_header(usage: dict[str, int]) -> dict[str, str]:
    return {"x-sim-usage": json.dumps(usage)}


def assert_tokens(row: dict[str, Any], rec: SimRecord, *, reasoning: bool = False) -> None:
    """Row tokens follow OTel: input includes cache reads and writes; output includes reasoning."""
    u = rec.usage_canonical
    assert u is not None, rec
    prompt_total = (
        u["input_tokens"]
        + u["cache_read_tokens"]
        + u["cache_write_tokens"]
        + u["cache_write_1h_tokens"]
    )
    assert row["input_tokens"] == prompt_total, (row, u)
    assert row["output_tokens"] == u["output_tokens"], (row, u)
    if u["cache_read_tokens"]:
        assert row["cache_read_tokens"] == u["cache_read_tokens"], (row, u)
    if u["cache_write_tokens"] or u["cache_write_1h_tokens"]:
        assert row["cache_write_tokens"] == u["cache_write_tokens"] + u["cache_write_1h_tokens"]
    if reasoning:
        assert row["reasoning_tokens"] == u["reasoning_tokens"], (row, u)
    assert row["status"] == 200
    assert not row["partial"], row
    assert row["error"] is None, row


def one_call(
    d: DaemonHandle, do: Any, *, n_rows: int = 1
) -> tuple[list[dict[str, Any]], list[SimRecord], Any]:
    """Run ``do()``; return the rows and sim records it produced, and its result."""
    mark, before = d.mark(), len(d.sim.requests)
    result = do()
    rows = d.wait_rows(n_rows, since=mark)
    recs = d.sim.requests[before:]
    assert len(rows) == n_rows, rows
    return rows, recs, result


def anthropic_sdk(d: DaemonHandle) -> anthropic.Anthropic:
    http = anthropic.DefaultHttpxClient(proxy=d.proxy_url, verify=d.ssl_context())
    return anthropic.Anthropic(api_key="sk-ant-test", http_client=http, max_retries=0)


def openai_sdk(d: DaemonHandle) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(proxy=d.proxy_url, verify=d.ssl_context())
    return openai.OpenAI(api_key="sk-test", http_client=http, max_retries=0)


# -- Anthropic SDK ------------------------------------------------------------------------


def test_anthropic_sdk_messages(shared_daemon: DaemonHandle) -> None:
    client = anthropic_sdk(shared_daemon)

    def call() -> Any:
        return client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "hello"}],
            extra_headers=usage_header(USAGE_CACHE),
        )

    rows, recs, msg = one_call(shared_daemon, call)
    row = rows[0]
    assert_tokens(row, recs[0])
    assert msg.usage.output_tokens == USAGE_CACHE["output_tokens"]  # the client got it intact
    assert (row["provider"], row["api"], row["model"], row["stream"]) == (
        "anthropic",
        "messages",
        "claude-sonnet-4-5",
        0,
    )
    assert row["host"] == "api.anthropic.com" and row["path"] == "/v1/messages"
    assert row["priced"] == 1 and row["cost_usd"] is not None
    assert float(row["ttfb_ms"]) > 0 and float(row["latency_ms"]) >= float(row["ttfb_ms"])
    assert (row["tool"], row["project"], row["tier"]) == ("other", "misc", "misc")


def test_anthropic_sdk_messages_stream(shared_daemon: DaemonHandle) -> None:
    client = anthropic_sdk(shared_daemon)

    def call() -> Any:
        with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "hello"}],
            extra_headers=usage_header(USAGE_CACHE),
        ) as stream:
            text = "".join(stream.text_stream)
            return text, stream.get_final_message()

    rows, recs, (text, final) = one_call(shared_daemon, call)
    assert text.startswith("Hello")
    assert final.usage.output_tokens == USAGE_CACHE["output_tokens"]
    assert_tokens(rows[0], recs[0])
    assert rows[0]["stream"] == 1 and rows[0]["priced"] == 1


# -- OpenAI SDK ---------------------------------------------------------------------------


def test_openai_sdk_chat(shared_daemon: DaemonHandle) -> None:
    client = openai_sdk(shared_daemon)

    def call() -> Any:
        return client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hello"}],
            extra_headers=usage_header(USAGE),
        )

    rows, recs, resp = one_call(shared_daemon, call)
    assert resp.usage is not None and resp.usage.completion_tokens == USAGE["output_tokens"]
    assert_tokens(rows[0], recs[0], reasoning=True)
    assert (rows[0]["provider"], rows[0]["api"], rows[0]["model"]) == ("openai", "chat", "gpt-4o")
    assert rows[0]["stream"] == 0


def test_openai_sdk_chat_stream_with_include_usage(shared_daemon: DaemonHandle) -> None:
    client = openai_sdk(shared_daemon)

    def call() -> Any:
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=usage_header(USAGE),
        )
        return [chunk for chunk in stream]

    rows, recs, chunks = one_call(shared_daemon, call)
    assert chunks[-1].usage is not None
    assert_tokens(rows[0], recs[0], reasoning=True)
    assert rows[0]["stream"] == 1


def test_openai_sdk_chat_stream_without_usage_is_a_row_with_no_tokens(
    shared_daemon: DaemonHandle,
) -> None:
    client = openai_sdk(shared_daemon)

    def call() -> Any:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        return [chunk for chunk in stream]

    rows, recs, chunks = one_call(shared_daemon, call)
    assert len(chunks) > 3 and recs[0].usage is None  # the provider sent no usage
    row = rows[0]
    assert row["stream"] == 1 and row["status"] == 200 and row["model"] == "gpt-4o"
    # Not reported is null, never 0; and nothing was guessed.
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert row["priced"] == 0 and row["cost_usd"] is None
    assert not row["partial"]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_responses(shared_daemon: DaemonHandle, stream: bool) -> None:
    client = openai_sdk(shared_daemon)

    def call() -> Any:
        if not stream:
            return client.responses.create(
                model="gpt-5", input="hello", extra_headers=usage_header(USAGE)
            )
        events = list(
            client.responses.create(
                model="gpt-5", input="hello", stream=True, extra_headers=usage_header(USAGE)
            )
        )
        return events

    rows, recs, result = one_call(shared_daemon, call)
    if stream:
        assert result[-1].type == "response.completed"
    else:
        assert result.usage is not None and result.usage.output_tokens == USAGE["output_tokens"]
    assert_tokens(rows[0], recs[0], reasoning=True)
    assert (rows[0]["api"], rows[0]["model"], rows[0]["stream"]) == ("responses", "gpt-5", stream)
    assert rows[0]["priced"] == 1


# -- curl ---------------------------------------------------------------------------------


def test_curl_through_the_daemon(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    body = json.dumps(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )

    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "curl", "-sS", "--fail", "--noproxy", "", "-x", d.proxy_url,
                "--cacert", str(d.ca_cert),
                "https://api.anthropic.com/v1/messages",
                "-H", "x-api-key: sk-ant-curl",
                "-H", "anthropic-version: 2023-06-01",
                "-H", "content-type: application/json",
                "-H", f"x-sim-usage: {json.dumps(USAGE_CACHE)}",
                "-d", body,
            ],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    rows, recs, proc = one_call(d, call)
    assert proc.returncode == 0, proc.stderr
    assert "event: message_stop" in proc.stdout
    assert_tokens(rows[0], recs[0])
    assert rows[0]["model"] == "claude-haiku-4-5" and rows[0]["stream"] == 1


# -- raw wire shapes: Gemini, OpenRouter, Azure OpenAI, Bedrock, an OpenAI-compatible host -

GEMINI = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
BEDROCK = "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0"
BEDROCK_MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
AZURE = "https://myres.openai.azure.com/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
CHAT_BODY = {"messages": [{"role": "user", "content": "hi"}]}
AWS_AUTH = {"authorization": "AWS4-HMAC-SHA256 Credential=AKIATEST/20260101/us-east-1/bedrock"}
ANTHROPIC_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
CONVERSE_BODY = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}

WIRE_CASES: list[tuple[str, str, dict[str, Any], dict[str, str], dict[str, int], tuple[Any, ...]]] = [
    # id, url, body, headers, usage, (provider, api, model, stream, reasoning?)
    ("gemini", f"{GEMINI}:generateContent", GEMINI_BODY, {"x-goog-api-key": "AIzaTEST"}, USAGE,
     ("gemini", "generate_content", "gemini-2.5-flash", 0, True)),
    ("gemini-sse", f"{GEMINI}:streamGenerateContent?alt=sse", GEMINI_BODY,
     {"x-goog-api-key": "AIzaTEST"}, USAGE,
     ("gemini", "stream_generate_content", "gemini-2.5-flash", 1, True)),
    ("gemini-json-array", f"{GEMINI}:streamGenerateContent", GEMINI_BODY,
     {"x-goog-api-key": "AIzaTEST"}, USAGE,
     ("gemini", "stream_generate_content", "gemini-2.5-flash", 1, True)),
    ("openrouter", "https://openrouter.ai/api/v1/chat/completions",
     {**CHAT_BODY, "model": "anthropic/claude-sonnet-4.5"}, {"authorization": "Bearer sk-or-test"},
     USAGE, ("openrouter", "chat", "anthropic/claude-sonnet-4.5", 0, True)),
    ("openrouter-stream", "https://openrouter.ai/api/v1/chat/completions",
     {**CHAT_BODY, "model": "anthropic/claude-sonnet-4.5", "stream": True},
     {"authorization": "Bearer sk-or-test"}, USAGE,
     ("openrouter", "chat", "anthropic/claude-sonnet-4.5", 1, True)),
    ("azure", AZURE, CHAT_BODY, {"api-key": "azure-test"}, USAGE,
     ("azure", "chat", None, 0, True)),
    ("azure-stream", AZURE,
     {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}},
     {"api-key": "azure-test"}, USAGE, ("azure", "chat", None, 1, True)),
    ("bedrock-invoke", f"{BEDROCK}/invoke", ANTHROPIC_BODY, AWS_AUTH, USAGE_CACHE,
     ("bedrock", "bedrock_invoke", BEDROCK_MODEL, 0, False)),
    ("bedrock-invoke-stream", f"{BEDROCK}/invoke-with-response-stream", ANTHROPIC_BODY,
     AWS_AUTH, USAGE_CACHE, ("bedrock", "bedrock_invoke_stream", BEDROCK_MODEL, 1, False)),
    ("bedrock-converse", f"{BEDROCK}/converse", CONVERSE_BODY, AWS_AUTH, USAGE_CACHE,
     ("bedrock", "bedrock_converse", BEDROCK_MODEL, 0, False)),
    ("bedrock-converse-stream", f"{BEDROCK}/converse-stream", CONVERSE_BODY, AWS_AUTH,
     USAGE_CACHE, ("bedrock", "bedrock_converse_stream", BEDROCK_MODEL, 1, False)),
    ("compatible", f"https://{COMPATIBLE_HOST}/openai/v1/chat/completions",
     {**CHAT_BODY, "model": "llama-3.3-70b-versatile", "stream": True,
      "stream_options": {"include_usage": True}},
     {"authorization": "Bearer gsk-test"}, USAGE,
     ("compatible", "chat", "llama-3.3-70b-versatile", 1, True)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "body", "headers", "usage", "expect"),
    [pytest.param(*case[1:], id=case[0]) for case in WIRE_CASES],
)
def test_wire_shapes(
    shared_daemon: DaemonHandle,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    usage: dict[str, int],
    expect: tuple[Any, ...],
) -> None:
    provider, api, model, stream, reasoning = expect
    with shared_daemon.client() as http:
        rows, recs, resp = one_call(
            shared_daemon,
            lambda: http.post(url, json=body, headers={**headers, **usage_header(usage)}),
        )
    assert resp.status_code == 200, resp.text
    row, rec = rows[0], recs[0]
    assert_tokens(row, rec, reasoning=reasoning)
    assert (row["provider"], row["api"], row["stream"]) == (provider, api, stream)
    assert row["model"] == (model or rec.model or row["model"])
    assert row["model"], row
    if provider in ("bedrock", "compatible"):
        # Converse names no model: priced by the path's id; a compatible host by its URL.
        assert row["priced"] == 1, row
    if provider == "openrouter":
        assert rec.usage_canonical is not None
        assert Decimal(row["billed_cost_usd"]) == Decimal(rec.usage_canonical["cost"])

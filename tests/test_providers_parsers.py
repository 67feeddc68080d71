"""Usage parsers, JSON and streamed, against wire captures fed in every split."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest
from fixtures_providers import capture, es_event, es_frame, feed_all_ways

from halton_meter.providers.base import ParseError, Usage, dump_raw_usage, parse_error_count
from halton_meter.providers.endpoints import Endpoint, classify
from halton_meter.providers.errors import error_usage, extract_error
from halton_meter.providers.openai import ResponsesSession, parse_responses_ws_message
from halton_meter.providers.parsers import json_parser_for, stream_parser_for

SSE = "text/event-stream; charset=utf-8"


def _ep(provider: str, method: str, path: str) -> Endpoint:
    ep = classify(provider, method, path)
    assert ep is not None
    return ep


ANTHROPIC = _ep("anthropic", "POST", "/v1/messages?beta=true")
OPENAI_CHAT = _ep("openai", "POST", "/v1/chat/completions")
OPENAI_RESPONSES = _ep("openai", "POST", "/v1/responses")
GEMINI_STREAM = _ep(
    "gemini", "POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
)
GEMINI = _ep("gemini", "POST", "/v1beta/models/gemini-2.5-pro:generateContent")
OPENROUTER = _ep("openrouter", "POST", "/api/v1/chat/completions")
AZURE = _ep("azure", "POST", "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21")
COMPATIBLE = _ep("compatible", "POST", "/v1/chat/completions")


def _stream(ep: Endpoint, data: bytes, content_type: str = SSE) -> Usage:
    return feed_all_ways(lambda: stream_parser_for(ep, content_type), data)


# -- Anthropic -----------------------------------------------------------------------------


def test_anthropic_stream_cumulative_overwrite() -> None:
    u = _stream(ANTHROPIC, capture("anthropic_messages_stream.sse"))
    assert u.provider == "anthropic" and u.api == "messages"
    assert u.model == "claude-sonnet-4-5-20250929"
    # the last message_delta overwrote input_tokens (5310) and output (512); cache fields
    # it left out keep their message_start values; nothing was added up
    assert u.input_tokens == 5310 + 10240 + 2051
    assert u.output_tokens == 512
    assert u.cache_read_tokens == 10240
    assert u.cache_write_tokens == 2051
    assert u.cache_write_5m_tokens == 51
    assert u.cache_write_1h_tokens == 2000
    assert u.server_tool_use == {"web_search_requests": 1}
    assert u.reasoning_tokens is None  # not reported: None, never 0
    assert u.finish == "end_turn"
    assert u.complete and u.error is None
    assert u.raw_usage["output_tokens"] == 512
    assert u.extra["service_tier"] == "standard"
    assert parse_error_count(u) == 0


def test_anthropic_stream_partial_result_midway() -> None:
    data = capture("anthropic_messages_stream.sse")
    cut = data.index(b"event: message_delta")
    p = stream_parser_for(ANTHROPIC, SSE)
    p.feed(data[:cut])
    u = p.result()  # a client abort after message_start: what we saw so far
    assert u.model == "claude-sonnet-4-5-20250929"
    assert u.input_tokens == 472 + 10240 + 2051
    assert u.output_tokens == 3
    assert not u.complete
    # result() does not disturb the parser: the rest still lands
    p.feed(data[cut:])
    assert p.result().output_tokens == 512 and p.result().complete


def test_anthropic_stream_error_event_and_garbage() -> None:
    data = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-3-5-haiku-20241022",'
        b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
        b"event: content_block_delta\ndata: {not json at all\n\n"
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    u = _stream(ANTHROPIC, data)
    assert u.error == "overloaded_error: Overloaded"
    assert u.input_tokens == 10 and u.output_tokens == 1
    assert not u.complete
    assert parse_error_count(u) == 1
    assert "bad JSON" in u.extra["parse_errors"][0]


def test_anthropic_json() -> None:
    u = json_parser_for(ANTHROPIC)(capture("anthropic_messages.json"))
    assert u.model == "claude-sonnet-4-20250514"
    assert u.input_tokens == 2095 + 20000 + 1000
    assert u.output_tokens == 503
    assert (u.cache_read_tokens, u.cache_write_tokens) == (20000, 1000)
    assert (u.cache_write_5m_tokens, u.cache_write_1h_tokens) == (1000, 0)
    assert u.server_tool_use == {"web_search_requests": 0}
    assert u.finish == "end_turn" and u.complete
    assert u.raw_usage == json.loads(capture("anthropic_messages.json"))["usage"]


def test_json_parser_raises_parse_error() -> None:
    with pytest.raises(ParseError):
        json_parser_for(ANTHROPIC)(b'{"truncated": ')
    with pytest.raises(ParseError):
        json_parser_for(OPENAI_CHAT)(b"[1, 2]")


# -- OpenAI Chat Completions ----------------------------------------------------------------


def test_openai_chat_stream_with_include_usage() -> None:
    u = _stream(OPENAI_CHAT, capture("openai_chat_stream_usage.sse"))
    assert u.model == "gpt-4o-2024-08-06"
    assert u.input_tokens == 1817  # already includes the cached tokens
    assert u.cache_read_tokens == 1536
    assert u.output_tokens == 9
    assert u.reasoning_tokens == 0  # reported as 0: stays 0
    assert u.finish == "stop" and u.complete
    assert u.extra["service_tier"] == "default"


def test_openai_chat_stream_without_usage_is_none_not_zero() -> None:
    u = _stream(OPENAI_CHAT, capture("openai_chat_stream_no_usage.sse"))
    assert u.model == "gpt-4o-mini-2024-07-18"
    for field in ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens"):
        assert getattr(u, field) is None, field
    assert u.raw_usage is None
    assert u.finish == "length" and u.complete


def test_openai_chat_stream_in_band_error() -> None:
    data = b'data: {"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}\n\n'
    u = _stream(OPENAI_CHAT, data)
    assert u.error == "server_error: The server had an error"
    assert u.input_tokens is None and not u.complete


def test_openai_chat_json_reasoning() -> None:
    u = json_parser_for(OPENAI_CHAT)(capture("openai_chat.json"))
    assert u.model == "o4-mini-2025-04-16"
    assert (u.input_tokens, u.cache_read_tokens) == (1117, 1024)
    assert (u.output_tokens, u.reasoning_tokens) == (846, 768)
    assert u.cache_write_tokens is None
    assert u.finish == "stop" and u.complete


def test_chat_buffered_json_via_stream_parser() -> None:
    # a non-streamed body still arrives in chunks when the daemon streams everything
    u = _stream(OPENAI_CHAT, capture("openai_chat.json"), "application/json")
    assert (u.input_tokens, u.output_tokens) == (1117, 846)
    p = stream_parser_for(OPENAI_CHAT, "application/json")
    p.feed(capture("openai_chat.json")[:100])  # aborted mid-body: no usage, no exception
    partial = p.result()
    assert partial.input_tokens is None and parse_error_count(partial) == 1


# -- OpenAI Responses ----------------------------------------------------------------------


def test_responses_stream_completed() -> None:
    u = _stream(OPENAI_RESPONSES, capture("openai_responses_stream.sse"))
    assert u.model == "gpt-5-2025-08-07"
    assert (u.input_tokens, u.cache_read_tokens) == (2048, 1920)
    assert (u.output_tokens, u.reasoning_tokens) == (466, 448)
    assert u.finish == "completed" and u.complete and u.error is None
    assert u.extra["service_tier"] == "default"


def test_responses_stream_incomplete() -> None:
    u = _stream(OPENAI_RESPONSES, capture("openai_responses_incomplete.sse"))
    assert u.finish == "incomplete:max_output_tokens"
    assert u.extra["incomplete_reason"] == "max_output_tokens"
    assert (u.input_tokens, u.output_tokens, u.reasoning_tokens) == (21, 16, 12)
    assert u.complete and u.error is None


def test_responses_stream_failed() -> None:
    u = _stream(OPENAI_RESPONSES, capture("openai_responses_failed.sse"))
    assert u.finish == "failed" and u.complete
    assert u.error == "server_error: The model failed to generate a response."
    assert u.input_tokens is None and u.output_tokens is None
    assert u.model == "gpt-4.1-2025-04-14"


def test_responses_json() -> None:
    u = json_parser_for(OPENAI_RESPONSES)(capture("openai_responses.json"))
    assert u.model == "gpt-4o-2024-08-06"
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens, u.reasoning_tokens) == (
        328,
        128,
        52,
        0,
    )
    assert u.finish == "completed" and u.complete


def _sse_events(name: str) -> list[str]:
    return [
        line[len("data: ") :]
        for line in capture(name).decode().splitlines()
        if line.startswith("data: ")
    ]


def test_responses_websocket_messages() -> None:
    messages = _sse_events("openai_responses_stream.sse")
    # non-terminal events give nothing; the terminal one gives the same usage as SSE
    assert [parse_responses_ws_message(m) for m in messages[:-1]] == [None] * (len(messages) - 1)
    u = parse_responses_ws_message(messages[-1].encode())
    assert u is not None
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens) == (2048, 466, 1920)
    assert u.complete and u.model == "gpt-5-2025-08-07"
    with pytest.raises(ParseError):
        parse_responses_ws_message("not json")


def test_responses_websocket_session_several_responses() -> None:
    session = ResponsesSession()
    done: list[Usage] = []
    for name in ("openai_responses_stream.sse", "openai_responses_incomplete.sse"):
        for m in _sse_events(name):
            r = session.on_message(m)
            if r is not None:
                done.append(r)
    assert [d.finish for d in done] == ["completed", "incomplete:max_output_tokens"]
    assert session.partial() is None
    session.on_message(_sse_events("openai_responses_failed.sse")[0])
    partial = session.partial()
    assert partial is not None and partial.model == "gpt-4.1-2025-04-14" and not partial.complete


# -- Gemini --------------------------------------------------------------------------------


def test_gemini_sse_last_wins() -> None:
    u = _stream(GEMINI_STREAM, capture("gemini_stream.sse"))
    assert u.model == "gemini-2.5-flash"
    # the final chunk's counts, not a sum over chunks
    assert u.input_tokens == 1043
    assert u.cache_read_tokens == 1024
    assert u.output_tokens == 12 + 136
    assert u.reasoning_tokens == 136
    assert u.raw_usage["totalTokenCount"] == 1191
    assert u.finish == "STOP" and u.complete


def test_gemini_json_array_stream() -> None:
    u = _stream(
        GEMINI_STREAM, capture("gemini_stream_array.json"), "application/json; charset=UTF-8"
    )
    assert u.model == "gemini-2.0-flash"
    assert (u.input_tokens, u.output_tokens) == (9, 31)
    assert u.reasoning_tokens is None and u.cache_read_tokens is None
    assert u.complete


def test_gemini_json_thoughts_are_output() -> None:
    u = json_parser_for(GEMINI)(capture("gemini.json"))
    assert u.model == "gemini-2.5-pro"
    assert (u.input_tokens, u.output_tokens, u.reasoning_tokens) == (8, 1006, 1000)
    assert u.finish == "STOP" and u.complete


def test_gemini_stream_error_chunk() -> None:
    data = b'[{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}]'
    u = _stream(GEMINI_STREAM, data, "application/json")
    assert u.error == "UNAVAILABLE: The model is overloaded."
    assert u.input_tokens is None


# -- OpenRouter, Azure, compatible ----------------------------------------------------------


def test_openrouter_stream_cost_exact_decimal() -> None:
    u = _stream(OPENROUTER, capture("openrouter_chat_stream.sse"))
    assert u.provider == "openrouter"
    assert u.model == "anthropic/claude-sonnet-4"
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (1423, 1024, 37)
    assert isinstance(u.billed_cost_usd, Decimal)
    # every digit as sent: a float would have lost them
    assert u.billed_cost_usd == Decimal("0.0048240000000000001")
    assert u.extra["upstream_provider"] == "Anthropic"
    assert u.complete and u.finish == "stop"
    # stored usage JSON keeps the money exact too
    assert '"cost":"0.0048240000000000001"' in (dump_raw_usage(u.raw_usage) or "")


def test_openrouter_json_cost_with_exponent() -> None:
    u = json_parser_for(OPENROUTER)(capture("openrouter_chat.json"))
    assert u.billed_cost_usd == Decimal("0.000015")
    assert isinstance(u.billed_cost_usd, Decimal)
    assert u.model == "google/gemini-2.5-flash"


def test_azure_chat_json() -> None:
    u = json_parser_for(AZURE)(capture("azure_chat.json"))
    assert u.provider == "azure" and u.api == "chat"
    assert u.model == "gpt-4o-2024-11-20"
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens) == (33, 11, 0)
    assert AZURE.resolve_model(None, u.model) == "gpt-4o-2024-11-20"


def test_compatible_host_chat_stream() -> None:
    u = _stream(COMPATIBLE, capture("openai_chat_stream_usage.sse"))
    assert u.provider == "compatible" and u.input_tokens == 1817


# -- Bedrock -------------------------------------------------------------------------------

BEDROCK_CONVERSE = _ep(
    "bedrock", "POST", "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse"
)
BEDROCK_CONVERSE_STREAM = _ep(
    "bedrock", "POST", "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream"
)
BEDROCK_INVOKE = _ep("bedrock", "POST", "/model/anthropic.claude-sonnet-4-20250514-v1:0/invoke")
BEDROCK_INVOKE_STREAM = _ep(
    "bedrock", "POST", "/model/anthropic.claude-sonnet-4-20250514-v1:0/invoke-with-response-stream"
)
EVENTSTREAM = "application/vnd.amazon.eventstream"


def test_bedrock_converse_json() -> None:
    u = json_parser_for(BEDROCK_CONVERSE)(capture("bedrock_converse.json"))
    assert u.provider == "bedrock" and u.api == "bedrock_converse"
    assert u.input_tokens == 42 + 1200 + 300  # inputTokens excludes cache
    assert (u.cache_read_tokens, u.cache_write_tokens, u.output_tokens) == (1200, 300, 117)
    assert u.finish == "end_turn" and u.complete


def test_bedrock_invoke_claude_json() -> None:
    u = json_parser_for(BEDROCK_INVOKE)(capture("bedrock_invoke_claude.json"))
    assert (u.provider, u.api) == ("bedrock", "bedrock_invoke")
    assert (u.input_tokens, u.output_tokens) == (12, 8)
    assert BEDROCK_INVOKE.resolve_model(None, u.model) == "anthropic.claude-sonnet-4-20250514-v1:0"


def test_bedrock_converse_stream_frames() -> None:
    data = b"".join(
        [
            es_event("messageStart", b'{"p":"abcdefghijkl","role":"assistant"}'),
            es_event(
                "contentBlockDelta",
                '{"contentBlockIndex":0,"delta":{"text":"Olá, tudo bem? 😊"},"p":"abc"}'.encode(),
            ),
            es_event("contentBlockStop", b'{"contentBlockIndex":0,"p":"abcdefgh"}'),
            es_event("messageStop", b'{"p":"abcdefghijklmnopq","stopReason":"end_turn"}'),
            es_event(
                "metadata",
                b'{"metrics":{"latencyMs":812},"p":"abc","usage":{"cacheDetails":[{"inputTokens":100,'
                b'"ttl":"1h"},{"inputTokens":50,"ttl":"5m"}],"cacheReadInputTokens":2048,'
                b'"cacheWriteInputTokens":150,"inputTokens":19,"outputTokens":64,"totalTokens":2281}}',
            ),
        ]
    )
    u = _stream(BEDROCK_CONVERSE_STREAM, data, EVENTSTREAM)
    assert (u.provider, u.api) == ("bedrock", "bedrock_converse_stream")
    assert u.input_tokens == 19 + 2048 + 150
    assert (u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (64, 2048, 150)
    assert (u.cache_write_5m_tokens, u.cache_write_1h_tokens) == (50, 100)
    assert u.finish == "end_turn" and u.complete
    assert u.extra["bedrock_metrics"] == {"latencyMs": 812}


def _chunk(event: dict) -> bytes:  # type: ignore[type-arg]
    b64 = base64.b64encode(json.dumps(event).encode()).decode()
    return es_event("chunk", json.dumps({"bytes": b64, "p": "abcd"}).encode())


def test_bedrock_invoke_stream_claude_events() -> None:
    data = b"".join(
        [
            _chunk(
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_bdrk_1",
                        "type": "message",
                        "role": "assistant",
                        "model": "claude-sonnet-4-20250514",
                        "content": [],
                        "stop_reason": None,
                        "usage": {
                            "input_tokens": 30,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 900,
                            "output_tokens": 1,
                        },
                    },
                }
            ),
            _chunk(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            ),
            _chunk(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Hé"},
                }
            ),
            _chunk({"type": "content_block_stop", "index": 0}),
            _chunk(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                    "usage": {"output_tokens": 40},
                }
            ),
            _chunk(
                {
                    "type": "message_stop",
                    "amazon-bedrock-invocationMetrics": {
                        "inputTokenCount": 30,
                        "outputTokenCount": 40,
                        "invocationLatency": 1500,
                        "firstByteLatency": 400,
                    },
                }
            ),
        ]
    )
    u = _stream(BEDROCK_INVOKE_STREAM, data, EVENTSTREAM)
    assert (u.provider, u.api) == ("bedrock", "bedrock_invoke_stream")
    assert u.input_tokens == 930 and u.cache_read_tokens == 900
    assert u.output_tokens == 40
    assert u.finish == "max_tokens" and u.complete
    assert u.extra["bedrock_invocation_metrics"]["firstByteLatency"] == 400


def test_bedrock_stream_exception_and_bad_crc() -> None:
    exc = es_frame(
        {
            ":message-type": "exception",
            ":exception-type": "throttlingException",
            ":content-type": "application/json",
        },
        b'{"message":"Too many requests, please wait before trying again."}',
    )
    start = es_event("messageStart", b'{"role":"assistant"}')
    u = _stream(BEDROCK_CONVERSE_STREAM, start + exc, EVENTSTREAM)
    assert u.error == "throttlingException: Too many requests, please wait before trying again."
    assert u.input_tokens is None

    corrupt = bytearray(es_event("metadata", b'{"usage":{"inputTokens":1,"outputTokens":2}}'))
    corrupt[20] ^= 0x55
    p = stream_parser_for(BEDROCK_CONVERSE_STREAM, EVENTSTREAM)
    p.feed(start)
    p.feed(bytes(corrupt))  # must not raise
    p.feed(start)
    r = p.result()
    assert parse_error_count(r) == 1 and "CRC" in r.extra["parse_errors"][0]
    assert r.input_tokens is None


# -- error bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "header", "message", "kind"),
    [
        (
            b'{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}',
            None,
            "Number of request tokens has exceeded your per-minute rate limit",
            "rate_limit_error",
        ),
        (
            b'{"error":{"message":"Incorrect API key provided: sk-proj-****.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}',
            None,
            "Incorrect API key provided: sk-proj-****.",
            "invalid_request_error",
        ),
        (
            b'[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}]',
            None,
            "Resource has been exhausted (e.g. check quota).",
            "RESOURCE_EXHAUSTED",
        ),
        (
            b'{"error":{"code":402,"message":"Insufficient credits","metadata":{}}}',
            None,
            "Insufficient credits",
            "402",
        ),
        (
            b'{"message":"The provided model identifier is invalid."}',
            "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "The provided model identifier is invalid.",
            "ValidationException",
        ),
        (
            b"<html><body>502 Bad Gateway</body></html>",
            None,
            "<html><body>502 Bad Gateway</body></html>",
            None,
        ),
        (b"", None, None, None),
    ],
)
def test_extract_error(
    body: bytes, header: str | None, message: str | None, kind: str | None
) -> None:
    err = extract_error(body, header)
    assert (err.message, err.type) == (message, kind)


def test_error_usage_has_no_tokens() -> None:
    u = error_usage(
        ANTHROPIC, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    )
    assert u.error == "overloaded_error: Overloaded"
    assert all(
        getattr(u, f) is None
        for f in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
    )


def test_stream_parsers_never_raise_on_garbage() -> None:
    garbage = bytes(range(256)) * 20 + b"\n\ndata: {]\n\n\r\r\x00"
    for ep, ct in [
        (ANTHROPIC, SSE),
        (OPENAI_CHAT, SSE),
        (OPENAI_RESPONSES, SSE),
        (GEMINI_STREAM, SSE),
        (GEMINI_STREAM, "application/json"),
        (BEDROCK_CONVERSE_STREAM, EVENTSTREAM),
        (BEDROCK_INVOKE_STREAM, EVENTSTREAM),
        (OPENAI_CHAT, "application/json"),
    ]:
        p = stream_parser_for(ep, ct)
        for i in range(0, len(garbage), 13):
            p.feed(garbage[i : i + 13])
        u = p.result()
        assert u.input_tokens is None and u.output_tokens is None
        assert parse_error_count(u) >= 1, (ep.api, ct)


def test_responses_stream_error_event() -> None:
    data = (
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":'
        b'{"id":"resp_e","object":"response","status":"in_progress","model":"gpt-4.1-mini-2025-04-14","usage":null}}\n\n'
        b'event: error\ndata: {"type":"error","code":"rate_limit_exceeded","message":"Rate limit reached","param":null,"sequence_number":1}\n\n'
    )
    u = _stream(OPENAI_RESPONSES, data)
    assert u.error == "rate_limit_exceeded: Rate limit reached"
    assert u.model == "gpt-4.1-mini-2025-04-14" and u.input_tokens is None


def test_bedrock_token_headers_fill_what_the_body_left_out() -> None:
    from halton_meter.providers.bedrock import apply_token_headers

    ep = _ep("bedrock", "POST", "/model/cohere.command-r-plus-v1:0/invoke")
    u = json_parser_for(ep)(b'{"generation_id":"g1","text":"Hallo","finish_reason":"COMPLETE"}')
    assert u.input_tokens is None and u.output_tokens is None
    apply_token_headers(
        u,
        {"x-amzn-bedrock-input-token-count": "17", "x-amzn-bedrock-output-token-count": "4"},
    )
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens) == (17, 4, None)
    # counts the body did report are not overwritten
    claude = json_parser_for(BEDROCK_INVOKE)(capture("bedrock_invoke_claude.json"))
    apply_token_headers(claude, {"x-amzn-bedrock-input-token-count": "999"})
    assert claude.input_tokens == 12


def test_azure_chat_stream_filter_chunk_first() -> None:
    # Azure opens with a prompt-filter chunk whose model is "": the model comes from later chunks
    u = _stream(AZURE, capture("azure_chat_stream.sse"))
    assert (u.provider, u.api, u.model) == ("azure", "chat", "gpt-4o-2024-11-20")
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (1290, 1152, 6)
    assert u.finish == "stop" and u.complete


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "deflate"])
def test_encoded_stream_decoded_then_parsed_in_small_chunks(encoding: str) -> None:
    import gzip
    import zlib

    import brotli
    import zstandard

    from halton_meter.providers.decode import IncrementalDecoder

    raw = capture("anthropic_messages_stream.sse")
    encoded = {
        "gzip": gzip.compress,
        "br": brotli.compress,
        "zstd": zstandard.ZstdCompressor().compress,
        "deflate": zlib.compress,
    }[encoding](raw)
    dec = IncrementalDecoder(encoding)
    p = stream_parser_for(ANTHROPIC, SSE)
    for i in range(0, len(encoded), 5):
        p.feed(dec.decompress(encoded[i : i + 5]))
    p.feed(dec.flush())
    u = p.result()
    assert (u.input_tokens, u.output_tokens) == (5310 + 10240 + 2051, 512)
    assert u.complete and parse_error_count(u) == 0


@pytest.mark.parametrize(
    ("name", "ep"),
    [
        ("anthropic_messages_stream.sse", ANTHROPIC),
        ("openai_chat_stream_usage.sse", OPENAI_CHAT),
        ("openai_responses_stream.sse", OPENAI_RESPONSES),
        ("gemini_stream.sse", GEMINI_STREAM),
        ("openrouter_chat_stream.sse", OPENROUTER),
        ("azure_chat_stream.sse", AZURE),
    ],
)
def test_last_event_without_trailing_blank_line(name: str, ep: Endpoint) -> None:
    data = capture(name)
    full = _stream(ep, data)
    cut = _stream(ep, data.rstrip(b"\r\n"))
    assert cut == full
    assert cut.complete


def test_responses_session_notes_client_request_model() -> None:
    session = ResponsesSession()
    assert session.on_message('{"type":"response.create","model":"gpt-5-codex","input":[]}') is None
    partial = session.partial()
    assert partial is not None and partial.model == "gpt-5-codex" and partial.input_tokens is None
    done = None
    for m in _sse_events("openai_responses_stream.sse"):
        done = session.on_message(m) or done
    assert done is not None and done.model == "gpt-5-2025-08-07" and done.input_tokens == 2048


def test_chat_stream_complete_without_done_marker() -> None:
    # some OpenAI-compatible servers end with the finish_reason chunk and no [DONE]
    data = capture("openai_chat_stream_usage.sse").replace(b"data: [DONE]\n\n", b"")
    u = _stream(COMPATIBLE, data)
    assert u.complete and u.input_tokens == 1817
    cut = capture("openai_chat_stream_usage.sse").split(b'"finish_reason":"stop"')[0]
    assert not _stream(COMPATIBLE, cut).complete


def test_stream_parsers_survive_mutated_captures() -> None:
    import random

    cases = [
        ("anthropic_messages_stream.sse", ANTHROPIC, SSE),
        ("openai_chat_stream_usage.sse", OPENAI_CHAT, SSE),
        ("openai_responses_stream.sse", OPENAI_RESPONSES, SSE),
        ("gemini_stream.sse", GEMINI_STREAM, SSE),
        ("gemini_stream_array.json", GEMINI_STREAM, "application/json"),
        ("openrouter_chat_stream.sse", OPENROUTER, SSE),
    ]
    # structurally valid JSON with the wrong types where numbers and objects belong
    odd = (
        b'data: {"type":"message_start","message":{"model":5,"usage":{"input_tokens":"9","cache_creation":[1]}}}\n\n'
        b'data: {"type":"message_delta","delta":null,"usage":{"output_tokens":true,"server_tool_use":"x"}}\n\n'
        b'data: {"choices":5,"usage":{"prompt_tokens":1.5,"prompt_tokens_details":[]},"model":null}\n\n'
        b'data: {"type":"response.completed","response":{"usage":[],"status":7,"incomplete_details":"x"}}\n\n'
        b'data: {"candidates":[null,1,{"finishReason":3}],"usageMetadata":{"promptTokenCount":{}}}\n\n'
        b"data: [1, 2, 3]\n\n"
    )
    for name, ep, ct in cases:
        data = capture(name)
        for seed in range(30):
            rnd = random.Random(seed)
            mutated = bytearray(data)
            for _ in range(rnd.randint(1, 12)):
                mutated[rnd.randrange(len(mutated))] = rnd.randrange(256)
            p = stream_parser_for(ep, ct)
            for i in range(0, len(mutated), 17):
                p.feed(bytes(mutated[i : i + 17]))
            assert isinstance(p.result(), Usage)
        p = stream_parser_for(ep, SSE)
        p.feed(odd)
        u = p.result()
        assert u.input_tokens is None or isinstance(u.input_tokens, int)


def test_a_failing_event_handler_neither_breaks_nor_replays_the_stream() -> None:
    from halton_meter.providers._common import Handler
    from halton_meter.providers.parsers import SseStreamParser

    seen: list[object] = []

    class Flaky(Handler):
        def on_object(self, obj: object, event: str | None = None) -> None:
            seen.append(obj)
            if obj == 2:
                raise RuntimeError("boom")

    p = SseStreamParser(Flaky("openai", "chat"))
    p.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n")
    p.feed(b"data: 4\n\n")
    assert seen == [1, 2, 3, 4]  # each event once, the ones after the failure too
    u = p.result()
    assert parse_error_count(u) == 1 and "boom" in u.extra["parse_errors"][0]


def test_gemini_partial_after_first_chunk_has_no_output_count() -> None:
    data = capture("gemini_stream.sse")
    p = stream_parser_for(GEMINI_STREAM, SSE)
    p.feed(data[: data.index(b"\r\n\r\n") + 4])
    u = p.result()
    assert u.input_tokens == 11 and u.output_tokens is None and not u.complete

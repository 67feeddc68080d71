"""Interception policy (hosts) and endpoint classification (which requests are model calls)."""

from __future__ import annotations

import json

import pytest

from halton_meter.providers.endpoints import classify
from halton_meter.providers.hosts import is_intercepted, provider_for_host


@pytest.mark.parametrize(
    ("host", "provider"),
    [
        ("api.anthropic.com", "anthropic"),
        ("API.Anthropic.COM", "anthropic"),
        ("api.anthropic.com.", "anthropic"),
        ("api.anthropic.com:443", "anthropic"),
        ("api.openai.com", "openai"),
        ("generativelanguage.googleapis.com:443", "gemini"),
        ("openrouter.ai", "openrouter"),
        ("myres.openai.azure.com", "azure"),
        ("myres.cognitiveservices.azure.com", "azure"),
        ("proj.services.ai.azure.com", "azure"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
        ("bedrock-runtime-fips.us-gov-west-1.amazonaws.com", "bedrock"),
        ("bedrock-runtime.eu-central-1.amazonaws.com.:443", "bedrock"),
    ],
)
def test_known_provider_hosts(host: str, provider: str) -> None:
    assert provider_for_host(host) == provider
    assert is_intercepted(host)


@pytest.mark.parametrize(
    "host",
    [
        "github.com",
        "anthropic.com",
        "statsig.anthropic.com",
        "api.anthropic.com.evil.example",
        "openai.azure.com",  # the suffix alone is not a resource
        "evilopenai.azure.com",
        "bedrock.us-east-1.amazonaws.com",  # control plane, not runtime
        "bedrock-runtime.us-east-1.amazonaws.com.evil.example",
        "googleapis.com",
        "",
    ],
)
def test_other_hosts_are_tunnelled(host: str) -> None:
    assert provider_for_host(host) is None
    assert not is_intercepted(host)


def test_configured_extra_hosts_exact_and_wildcard() -> None:
    extra = ["llm.corp.example", "*.inference.example.org"]
    assert provider_for_host("llm.corp.example", extra) == "compatible"
    assert provider_for_host("LLM.corp.example.:8443", extra) == "compatible"
    assert provider_for_host("a.inference.example.org", extra) == "compatible"
    assert provider_for_host("a.b.inference.example.org", extra) == "compatible"
    assert provider_for_host("inference.example.org", extra) is None
    assert provider_for_host("xinference.example.org", extra) is None
    assert provider_for_host("other.corp.example", extra) is None
    # a known provider keeps its own name even when listed
    assert provider_for_host("api.openai.com", ["api.openai.com"]) == "openai"


# -- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "method", "path", "api"),
    [
        ("anthropic", "POST", "/v1/messages", "messages"),
        ("anthropic", "POST", "/v1/messages?beta=true", "messages"),
        ("openai", "POST", "/v1/chat/completions", "chat"),
        ("openai", "POST", "/v1/responses", "responses"),
        ("openai", "POST", "/v1/completions", "completions"),
        ("openai", "POST", "/v1/embeddings", "embeddings"),
        ("openrouter", "POST", "/api/v1/chat/completions", "chat"),
        ("openrouter", "POST", "/api/v1/responses", "responses"),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:generateContent", "generate_content"),
        (
            "gemini",
            "POST",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "stream_generate_content",
        ),
        ("gemini", "POST", "/v1beta/openai/chat/completions", "chat"),
        (
            "azure",
            "POST",
            "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
            "chat",
        ),
        ("azure", "POST", "/openai/v1/chat/completions", "chat"),
        ("azure", "POST", "/openai/responses?api-version=2025-04-01-preview", "responses"),
        ("azure", "POST", "/openai/v1/responses", "responses"),
        ("azure", "POST", "/anthropic/v1/messages", "messages"),
        (
            "bedrock",
            "POST",
            "/model/anthropic.claude-3-5-sonnet-20241022-v2:0/invoke",
            "bedrock_invoke",
        ),
        (
            "bedrock",
            "POST",
            "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke-with-response-stream",
            "bedrock_invoke_stream",
        ),
        ("bedrock", "POST", "/model/amazon.nova-pro-v1:0/converse", "bedrock_converse"),
        (
            "bedrock",
            "POST",
            "/model/amazon.nova-pro-v1:0/converse-stream",
            "bedrock_converse_stream",
        ),
        ("compatible", "POST", "/v1/chat/completions", "chat"),
        ("compatible", "POST", "/api/openai/v1/responses", "responses"),
        ("compatible", "POST", "/v1/completions", "completions"),
    ],
)
def test_model_calls(provider: str, method: str, path: str, api: str) -> None:
    ep = classify(provider, method, path)
    assert ep is not None
    assert (ep.provider, ep.api) == (provider, api)


@pytest.mark.parametrize(
    ("provider", "method", "path"),
    [
        ("anthropic", "POST", "/v1/messages/count_tokens"),
        ("anthropic", "POST", "/v1/messages/count_tokens?beta=true"),
        ("anthropic", "GET", "/v1/models"),
        ("anthropic", "GET", "/v1/models/claude-sonnet-4-20250514"),
        ("anthropic", "GET", "/api/claude_code/settings"),
        ("anthropic", "POST", "/api/event_logging/batch"),
        ("anthropic", "GET", "/mcp-registry/v0/servers"),
        ("anthropic", "POST", "/api/oauth/claude_cli/create_api_key"),
        ("anthropic", "GET", "/api/oauth/profile"),
        ("anthropic", "GET", "/v1/messages"),
        ("anthropic", "POST", "/v1/messages/batches"),
        ("anthropic", "POST", "/v1/unknown"),
        ("openai", "GET", "/v1/models"),
        ("openai", "GET", "/v1/responses/resp_123"),
        ("openai", "POST", "/v1/responses/resp_123/cancel"),
        ("openai", "POST", "/v1/files"),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:countTokens"),
        ("gemini", "GET", "/v1beta/models"),
        ("gemini", "GET", "/v1beta/models/gemini-2.5-flash"),
        ("openrouter", "GET", "/api/v1/models"),
        ("openrouter", "GET", "/api/v1/generation?id=gen-1"),
        ("azure", "GET", "/openai/deployments/x/chat/completions"),
        ("bedrock", "GET", "/model/amazon.nova-pro-v1:0/converse"),
        ("bedrock", "POST", "/guardrail/abc/version/1/apply"),
        ("compatible", "GET", "/v1/models"),
        ("nobody", "POST", "/v1/chat/completions"),
    ],
)
def test_not_model_calls(provider: str, method: str, path: str) -> None:
    assert classify(provider, method, path) is None


def test_path_models() -> None:
    g = classify("gemini", "POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert g is not None and g.path_model == "gemini-2.5-pro" and g.path_stream
    assert g.request_model(b'{"contents": []}') == "gemini-2.5-pro"
    assert g.request_stream(b'{"contents": []}') is True

    b = classify("bedrock", "POST", "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse")
    assert b is not None and b.path_model == "us.anthropic.claude-sonnet-4-20250514-v1:0"
    assert not b.path_stream
    # Bedrock's modelId beats the short name a Claude body echoes back
    assert b.resolve_model(None, "claude-sonnet-4-20250514") == b.path_model

    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0"
    from urllib.parse import quote

    b2 = classify("bedrock", "POST", f"/model/{quote(arn, safe='')}/invoke")
    assert b2 is not None and b2.path_model == "us.anthropic.claude-3-7-sonnet-20250219-v1:0"

    a = classify("azure", "POST", "/openai/deployments/prod-4o/chat/completions?api-version=x")
    assert a is not None and a.path_model == "prod-4o" and a.path_model_is_deployment
    # the response's model is better than the deployment name, which is the fallback
    assert a.resolve_model(b'{"messages": []}', "gpt-4o-2024-11-20") == "gpt-4o-2024-11-20"
    assert a.resolve_model(b'{"messages": []}', None) == "prod-4o"


def test_request_body_model_and_stream() -> None:
    ep = classify("anthropic", "POST", "/v1/messages?beta=true")
    assert ep is not None
    body = json.dumps(
        {"model": "claude-opus-4-1-20250805", "stream": True, "messages": []}
    ).encode()
    assert ep.request_model(body) == "claude-opus-4-1-20250805"
    assert ep.request_stream(body) is True
    assert ep.request_stream(b'{"model": "x", "stream": false}') is False
    assert ep.request_stream(b"not json") is False
    assert ep.request_model(None) is None
    assert ep.resolve_model(body, "claude-opus-4-1-20250805") == "claude-opus-4-1-20250805"
    assert ep.resolve_model(body, None) == "claude-opus-4-1-20250805"


def test_websocket_responses_upgrade() -> None:
    ep = classify("openai", "GET", "/v1/responses")
    assert ep is not None and ep.api == "responses" and ep.websocket
    post = classify("openai", "POST", "/v1/responses")
    assert post is not None and not post.websocket

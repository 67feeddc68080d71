"""Cross-check: every wire shape the simulator sends, read by the meter's own provider parsers,
gives back the canonical usage the simulator was told to report (halton_meter.providers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from halton_meter.providers.endpoints import classify
from halton_meter.providers.hosts import provider_for_host
from halton_meter.providers.parsers import stream_parser_for
from halton_meter.sim import ProviderSim

USAGE = {
    "input_tokens": 100,
    "output_tokens": 20,
    "cache_read_tokens": 30,
    "cache_write_tokens": 5,
    "cache_write_1h_tokens": 2,
    "reasoning_tokens": 7,
}


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSim]:
    with ProviderSim() as s:
        yield s


@pytest.fixture(scope="module")
def client(sim: ProviderSim) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sim.base_url, verify=sim.client_ssl_context(), trust_env=False, timeout=30
    ) as c:
        yield c


# (host, path, body, what the API can express: keys of the expected normalised usage)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("api.anthropic.com", "/v1/messages", {"model": "claude-sonnet-4-5"}),
    ("api.anthropic.com", "/v1/messages", {"model": "claude-sonnet-4-5", "stream": True}),
    ("api.openai.com", "/v1/chat/completions", {"model": "gpt-4o"}),
    (
        "api.openai.com",
        "/v1/chat/completions",
        {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}},
    ),
    ("api.openai.com", "/v1/responses", {"model": "gpt-5"}),
    ("api.openai.com", "/v1/responses", {"model": "gpt-5", "stream": True}),
    ("openrouter.ai", "/api/v1/chat/completions", {"model": "openai/gpt-4o", "stream": True}),
    (
        "myres.openai.azure.com",
        "/openai/deployments/dep/chat/completions",
        {"model": "gpt-4o"},
    ),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pro:generateContent", {}),
    (
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        {},
    ),
    (
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        {},
    ),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-v2/invoke", {}),
    (
        "bedrock-runtime.us-east-1.amazonaws.com",
        "/model/anthropic.claude-v2/invoke-with-response-stream",
        {},
    ),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/amazon.nova-pro-v1%3A0/converse", {}),
    (
        "bedrock-runtime.us-east-1.amazonaws.com",
        "/model/amazon.nova-pro-v1%3A0/converse-stream",
        {},
    ),
]


def _expected(host: str, path: str) -> dict[str, int | None]:
    """Normalised usage (OTel totals) each API can express for USAGE."""
    cache_write = USAGE["cache_write_tokens"] + USAGE["cache_write_1h_tokens"]
    full_input = USAGE["input_tokens"] + USAGE["cache_read_tokens"] + cache_write
    if "anthropic" in host or path.endswith(("/invoke", "invoke-with-response-stream")):
        return {
            "input_tokens": full_input,
            "output_tokens": USAGE["output_tokens"],
            "cache_read_tokens": USAGE["cache_read_tokens"],
            "cache_write_tokens": cache_write,
        }
    if "googleapis" in host:
        # Gemini has no cache writes: promptTokenCount = input + cache read.
        return {
            "input_tokens": USAGE["input_tokens"] + USAGE["cache_read_tokens"],
            "output_tokens": USAGE["output_tokens"],
            "cache_read_tokens": USAGE["cache_read_tokens"],
            "reasoning_tokens": USAGE["reasoning_tokens"],
        }
    if "amazonaws" in host:
        return {
            "input_tokens": full_input,
            "output_tokens": USAGE["output_tokens"],
            "cache_read_tokens": USAGE["cache_read_tokens"],
            "cache_write_tokens": cache_write,
        }
    return {
        "input_tokens": full_input,
        "output_tokens": USAGE["output_tokens"],
        "cache_read_tokens": USAGE["cache_read_tokens"],
        "reasoning_tokens": USAGE["reasoning_tokens"],
    }


@pytest.mark.parametrize(
    ("host", "path", "body"), CASES, ids=[f"{c[1]}{c[2].get('stream', '')}" for c in CASES]
)
def test_meter_parsers_read_what_the_sim_reports(
    client: httpx.Client, host: str, path: str, body: dict[str, Any]
) -> None:
    r = client.post(
        path,
        json=body,
        headers={"host": host, "x-sim-usage": json.dumps(USAGE), "x-sim-events": "3"},
    )
    assert r.status_code == 200, r.text
    provider = provider_for_host(host)
    assert provider is not None
    endpoint = classify(provider, "POST", path.split("?", 1)[0])
    assert endpoint is not None, path
    parser = stream_parser_for(endpoint, r.headers["content-type"])
    content = r.content
    for i in range(0, len(content), 7):  # split anywhere, as the network would
        parser.feed(content[i : i + 7])
    usage = parser.result()
    assert not usage.extra.get("parse_errors"), usage.extra
    got = {k: getattr(usage, k) for k in _expected(host, path)}
    assert got == _expected(host, path)

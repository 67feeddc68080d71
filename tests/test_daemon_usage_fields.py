# ruff: noqa: F811  (pytest fixtures imported by name)
"""Usage the daemon reads outside the usage object: OpenAI's service_tier (priced apart) and
Bedrock's X-Amzn-Bedrock-*-Token-Count headers (models whose bodies report no counts).

End to end through the real daemon and ProviderSim where the sim shows it; the shapes the sim
never sends (a flex tier, a Titan body, headers that disagree with the body) through the real
Capture addon with real mitmproxy flow objects.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from fixtures_daemon import DaemonHandle, shared_daemon  # noqa: F401
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from halton_meter.core.config import Config
from halton_meter.daemon.addons.attribution import Attribution
from halton_meter.daemon.addons.capture import Capture
from halton_meter.daemon.live import LiveConfig
from halton_meter.daemon.stats import Stats
from halton_meter.pricing import price
from halton_meter.store.model import Row

OPENAI_CHAT = "https://api.openai.com/v1/chat/completions"
OPENAI_RESPONSES = "https://api.openai.com/v1/responses"
ANTHROPIC = "https://api.anthropic.com/v1/messages"
BEDROCK_HOST = "bedrock-runtime.us-east-1.amazonaws.com"
TITAN = "amazon.titan-text-express-v1"
AWS_AUTH = {"authorization": "AWS4-HMAC-SHA256 Credential=AKIATEST/20260101/us-east-1/bedrock"}


# -- end to end -------------------------------------------------------------------------------


def test_service_tier_is_stored_from_the_response(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as h:
        chat = h.post(
            OPENAI_CHAT,
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": "Bearer sk-tier"},
        )
        responses = h.post(
            OPENAI_RESPONSES,
            json={"model": "gpt-4o-mini", "input": "hi"},
            headers={"authorization": "Bearer sk-tier"},
        )
        messages = h.post(
            ANTHROPIC,
            json={
                "model": "claude-haiku-4-5",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
            },
            headers={"x-api-key": "sk-ant-tier", "anthropic-version": "2023-06-01"},
        )
    # The sim answers the tier it served in the body, as the providers do.
    assert chat.json()["service_tier"] == "default"
    assert responses.json()["service_tier"] == "default"
    assert messages.json()["usage"]["service_tier"] == "standard"
    rows = d.wait_rows(3, since=mark)
    tiers = {(r["api"], r["service_tier"]) for r in rows}
    assert tiers == {("chat", "default"), ("responses", "default"), ("messages", "standard")}


def test_bedrock_token_headers_fill_counts_an_unreadable_body_lacks(
    shared_daemon: DaemonHandle,
) -> None:
    d = shared_daemon
    url = f"https://{BEDROCK_HOST}/model/{TITAN}/invoke"
    body = {"inputText": "hello", "textGenerationConfig": {"maxTokenCount": 16}}
    usage = {"input_tokens": 21, "output_tokens": 9}
    mark = d.mark()
    with d.client() as h:
        # A whole body: its counts. A body cut short (x-sim-malformed): nothing to parse,
        # but Bedrock's headers still carry the counts it billed.
        whole = h.post(url, json=body, headers={**AWS_AUTH, "x-sim-usage": json.dumps(usage)})
        cut = h.post(
            url,
            json=body,
            headers={**AWS_AUTH, "x-sim-usage": json.dumps(usage), "x-sim-malformed": "1"},
        )
    assert whole.status_code == 200 and cut.status_code == 200
    assert cut.headers["x-amzn-bedrock-input-token-count"] == "21"
    rows = d.wait_rows(2, since=mark)
    for row in rows:
        assert (row["provider"], row["api"], row["model"]) == ("bedrock", "bedrock_invoke", TITAN)
        assert (row["input_tokens"], row["output_tokens"]) == (21, 9), row
    by_partial = sorted(rows, key=lambda r: r["partial"])
    assert by_partial[0]["partial"] == 0
    assert by_partial[1]["partial"] == 1  # the body could not be read: still flagged


# -- through the Capture addon with real mitmproxy flows ---------------------------------------


class _Rows:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def submit(self, row: Row) -> None:
        self.rows.append(row)


def _run(
    tmp_path: Path, host: str, path: str, request: dict[str, Any], response: bytes, **headers: str
) -> Row:
    """One call through Capture's hooks, as mitmproxy drives them (no loop: work runs now)."""
    stats, sink = Stats(), _Rows()
    capture = Capture(
        live=LiveConfig(Config(path=tmp_path / "config.toml")),
        attribution=Attribution(stats),
        writer=sink,
        pricer=price,
        stats=stats,
    )
    raw = json.dumps(request).encode()
    req = tutils.treq(
        host=host,
        port=443,
        scheme=b"https",
        authority=host.encode(),
        method=b"POST",
        path=path.encode(),
        headers=http.Headers(content_type="application/json", content_length=str(len(raw))),
        content=raw,
    )
    req.timestamp_start = time.time()  # prices are dated: the test request's 1999 has none
    flow = tflow.tflow(req=req)
    capture.requestheaders(flow)
    capture.request(flow)
    flow.response = tutils.tresp(
        status_code=200,
        headers=http.Headers(content_type="application/json", **headers),
        content=b"",
    )
    capture.responseheaders(flow)
    stream = flow.response.stream
    assert callable(stream)
    assert stream(response) == response and stream(b"") == b""
    [row] = sink.rows
    return row


def _chat_response(tier: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "o4-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
            "service_tier": tier,
        }
    ).encode()


def test_flex_tier_is_stored_and_priced_as_flex(tmp_path: Path) -> None:
    request = {"model": "o4-mini", "service_tier": "flex", "messages": []}
    flex = _run(tmp_path, "api.openai.com", "/v1/chat/completions", request, _chat_response("flex"))
    default = _run(
        tmp_path, "api.openai.com", "/v1/chat/completions", request, _chat_response("default")
    )
    assert flex.service_tier == "flex" and default.service_tier == "default"
    assert flex.priced and default.priced
    assert isinstance(flex.cost_usd, Decimal) and isinstance(default.cost_usd, Decimal)
    assert flex.cost_usd * 2 == default.cost_usd  # flex is half price for o4-mini


def test_bedrock_headers_fill_a_titan_body(tmp_path: Path) -> None:
    titan = json.dumps(
        {
            "inputTextTokenCount": 12,
            "results": [{"tokenCount": 4, "outputText": "hi", "completionReason": "FINISH"}],
        }
    ).encode()
    row = _run(
        tmp_path,
        BEDROCK_HOST,
        f"/model/{TITAN}/invoke",
        {"inputText": "hello"},
        titan,
        x_amzn_bedrock_input_token_count="12",
        x_amzn_bedrock_output_token_count="4",
    )
    assert (row.input_tokens, row.output_tokens) == (12, 4)
    assert row.model == TITAN and not row.partial and row.error is None


def test_bedrock_headers_never_overwrite_the_bodys_counts(tmp_path: Path) -> None:
    claude = json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "x"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
    ).encode()
    row = _run(
        tmp_path,
        BEDROCK_HOST,
        "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
        {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8, "messages": []},
        claude,
        x_amzn_bedrock_input_token_count="999",
        x_amzn_bedrock_output_token_count="888",
        x_amzn_bedrock_cache_read_input_token_count="7",
    )
    assert (row.input_tokens, row.output_tokens) == (10, 5)
    assert row.cache_read_tokens == 7  # a count the body left out is still taken

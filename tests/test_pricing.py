"""Pricing with genai-prices' bundled data: exact Decimals, cache-aware, offline."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices.update_prices
import pytest
from genai_prices.data import providers as gp_providers

from halton_meter.pricing import PriceResult, format_usd, price
from halton_meter.providers.base import Usage

TS = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
MTOK = Decimal(1_000_000)


def _model_price(provider_id: str, model_id: str, ts: datetime = TS) -> Any:
    provider = next(p for p in gp_providers if p.id == provider_id)
    model = next(m for m in provider.models if m.id == model_id)
    return model.get_prices(ts)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pricing must never reach for the network (no price auto-update)."""

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("pricing tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_anthropic_known_model_matches_genai_prices_data() -> None:
    p = _model_price("anthropic", "claude-sonnet-4-0")
    u = Usage(
        "anthropic",
        "messages",
        "claude-sonnet-4-20250514",
        input_tokens=1200,
        output_tokens=345,
    )
    r = price(u, TS)
    assert r.priced and r.note is None
    assert isinstance(r.cost_usd, Decimal)
    assert r.cost_usd == (1200 * p.input_mtok + 345 * p.output_mtok) / MTOK
    assert r.model_id == "claude-sonnet-4-0" and r.provider_id == "anthropic"


def test_anthropic_cache_tokens_priced_at_their_rates() -> None:
    p = _model_price("anthropic", "claude-sonnet-4-0")
    # OTel totals: input includes cache reads and writes (both halves of the write split)
    u = Usage(
        "anthropic",
        "messages",
        "claude-sonnet-4-20250514",
        input_tokens=500 + 20000 + 3000,
        output_tokens=800,
        cache_read_tokens=20000,
        cache_write_tokens=3000,
        cache_write_5m_tokens=1000,
        cache_write_1h_tokens=2000,
        server_tool_use={"web_search_requests": 2},
    )
    r = price(u, TS)
    expected = (
        500 * p.input_mtok
        + 20000 * p.cache_read_mtok
        + 1000 * p.cache_write_mtok
        + 2000 * p.cache_write_1h_mtok
        + 800 * p.output_mtok
    ) / MTOK + 2 * p.web_searches_kcount / 1000
    assert r.cost_usd == expected
    # and cached input really is cheaper than the same count of fresh input
    fresh = price(
        Usage(
            "anthropic",
            "messages",
            "claude-sonnet-4-20250514",
            input_tokens=23500,
            output_tokens=800,
        ),
        TS,
    )
    assert fresh.cost_usd is not None and r.cost_usd is not None
    assert r.cost_usd < fresh.cost_usd


def test_openai_known_model_with_cached_input() -> None:
    p = _model_price("openai", "gpt-4o")
    u = Usage(
        "openai",
        "chat",
        "gpt-4o-2024-08-06",
        input_tokens=1817,
        output_tokens=9,
        cache_read_tokens=1536,
        reasoning_tokens=0,
    )
    r = price(u, TS)
    expected = ((1817 - 1536) * p.input_mtok + 1536 * p.cache_read_mtok + 9 * p.output_mtok) / MTOK
    assert r.priced and r.cost_usd == expected
    assert isinstance(r.cost_usd, Decimal)


def test_price_depends_on_request_time() -> None:
    # o3's list price dropped on 2025-06-10; a request is priced at its own timestamp
    u = Usage("openai", "responses", "o3-2025-04-16", input_tokens=1_000_000, output_tokens=0)
    before = price(u, datetime(2025, 6, 1, tzinfo=UTC))
    after = price(u, datetime(2025, 6, 20, tzinfo=UTC))
    assert (
        before.cost_usd == _model_price("openai", "o3", datetime(2025, 6, 1, tzinfo=UTC)).input_mtok
    )
    assert (
        after.cost_usd == _model_price("openai", "o3", datetime(2025, 6, 20, tzinfo=UTC)).input_mtok
    )
    assert before.cost_usd != after.cost_usd


def test_unknown_model_is_unpriced_with_reason() -> None:
    r = price(Usage("openai", "chat", "foo-1", input_tokens=10, output_tokens=5), TS)
    assert r == PriceResult(None, False, "unknown model: foo-1")


def test_no_usage_or_no_model_is_unpriced() -> None:
    r = price(Usage("openai", "chat", "gpt-4o", input_tokens=None, output_tokens=None), TS)
    assert (r.cost_usd, r.priced, r.note) == (None, False, "no usage reported")
    r2 = price(Usage("openai", "chat", None, input_tokens=1, output_tokens=1), TS)
    assert not r2.priced and r2.note == "no model reported"
    r3 = price(Usage("mystery", "chat", "gpt-4o", input_tokens=1, output_tokens=1), TS)
    assert not r3.priced and r3.note == "unknown provider: mystery"


def test_openrouter_list_price_kept_apart_from_billed_cost() -> None:
    u = Usage(
        "openrouter",
        "chat",
        "anthropic/claude-sonnet-4",
        input_tokens=1000,
        output_tokens=100,
        billed_cost_usd=Decimal("0.0048240000000000001"),
    )
    r = price(u, TS)
    assert r.priced and r.provider_id == "openrouter"
    assert r.cost_usd != u.billed_cost_usd
    assert u.billed_cost_usd == Decimal("0.0048240000000000001")  # untouched


def test_gemini_bedrock_azure_provider_mapping() -> None:
    g = price(
        Usage(
            "gemini",
            "generate_content",
            "gemini-2.5-flash",
            input_tokens=1000,
            output_tokens=300,
            reasoning_tokens=200,
        ),
        TS,
    )
    pg = _model_price("google", "gemini-2.5-flash")
    assert g.provider_id == "google"
    assert g.cost_usd == (1000 * pg.input_mtok + 300 * pg.output_mtok) / MTOK

    b = price(
        Usage(
            "bedrock",
            "bedrock_converse",
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            input_tokens=10,
            output_tokens=10,
        ),
        TS,
    )
    assert b.priced and b.provider_id == "aws"

    a = price(Usage("azure", "chat", "gpt-4o-2024-11-20", input_tokens=33, output_tokens=11), TS)
    assert a.priced and a.provider_id == "azure"


def test_compatible_host_priced_only_when_known() -> None:
    u = Usage("compatible", "chat", "llama-3.1-8b-instant", input_tokens=1000, output_tokens=100)
    known = price(u, TS, host="api.groq.com")
    assert known.priced and known.provider_id == "groq"
    unknown = price(u, TS, host="llm.corp.example")
    assert not unknown.priced and unknown.note == "unknown provider: llm.corp.example"
    assert not price(u, TS).priced


def test_nothing_starts_the_price_updater() -> None:
    price(
        Usage(
            "anthropic", "messages", "claude-3-5-haiku-20241022", input_tokens=5, output_tokens=5
        ),
        TS,
    )
    assert genai_prices.update_prices._shared_updater.thread is None
    assert genai_prices.update_prices._shared_updater.ref_count == 0


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("0.000123"), "0.000123"),
        (Decimal("1.23E-7"), "0.000000123"),
        (Decimal("0.0105000"), "0.0105"),
        (Decimal("1E+2"), "100"),
        (Decimal("0"), "0"),
        (Decimal("0E-12"), "0"),
        (Decimal("12.5"), "12.5"),
    ],
)
def test_format_usd(amount: Decimal, text: str) -> None:
    assert format_usd(amount) == text


def test_format_usd_rejects_non_finite() -> None:
    with pytest.raises(ValueError):
        format_usd(Decimal("NaN"))

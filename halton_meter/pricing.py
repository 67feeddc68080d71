"""List price of a Usage at the request's time, from genai-prices' bundled (offline) data.

genai-prices convention (checked in its units registry): ``input_tokens`` is the total and
*includes* cache reads and writes, which it prices as more specific sub-units; likewise
``cache_write_tokens`` includes the 5m/1h split and ``output_tokens`` includes reasoning.
That is exactly our OTel convention, so counts go across unchanged.

Offline: only ``genai_prices.UpdatePrices`` fetches from the network, and nothing here starts
it; ``calc_price`` reads the data snapshot bundled with the package. An unknown model is
unpriced with the reason and repriced later, never guessed. Money stays Decimal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
from genai_prices import types as gp_types

from halton_meter.providers.base import Usage

# Our provider names -> genai-prices provider ids
PROVIDER_IDS: dict[str, str] = {
    "anthropic": "anthropic",
    "openai": "openai",
    "gemini": "google",
    "openrouter": "openrouter",
    "azure": "azure",
    "bedrock": "aws",
}

# Request context genai-prices selects price variants by, and which of our providers report it
_OPENAI_SHAPED = frozenset({"openai", "azure"})


@dataclass(frozen=True)
class PriceResult:
    cost_usd: Decimal | None
    priced: bool
    note: str | None = None  # why unpriced
    model_id: str | None = None  # the genai-prices model the name matched
    provider_id: str | None = None  # the genai-prices provider used


def format_usd(amount: Decimal) -> str:
    """A decimal string with no exponent and no trailing zeros: ``0.000123``."""
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {amount}")
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _usage_for_genai(usage: Usage) -> dict[str, int]:
    values: dict[str, int] = {}
    for key in (
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
    ):
        value = getattr(usage, key)
        if value is not None:
            values[key] = value
    if usage.reasoning_tokens is not None and usage.output_tokens is not None:
        values["output_reasoning_tokens"] = usage.reasoning_tokens
    if usage.server_tool_use:
        searches = usage.server_tool_use.get("web_search_requests")
        if isinstance(searches, int) and searches > 0:
            values["web_searches"] = searches
    return values


def _price_context(usage: Usage) -> dict[str, str] | None:
    ctx: dict[str, str] = {}
    tier = usage.extra.get("service_tier")
    if usage.provider in _OPENAI_SHAPED and isinstance(tier, str):
        ctx["service_tier"] = tier
    speed = usage.extra.get("speed")
    if usage.provider in ("anthropic", "bedrock", "azure") and speed == "fast":
        ctx["speed"] = "fast"
    return ctx or None


def price(usage: Usage, ts: datetime, *, host: str | None = None) -> PriceResult:
    """List price of ``usage`` for a request made at ``ts``.

    ``host`` is needed only for the "compatible" provider: its prices are looked up by the
    host's API URL, and a host genai-prices does not know stays unpriced.
    """
    if not usage.model:
        return PriceResult(None, False, "no model reported")
    if usage.input_tokens is None and usage.output_tokens is None:
        return PriceResult(None, False, "no usage reported")

    kwargs: dict[str, Any] = {}
    if usage.provider == "compatible":
        if not host:
            return PriceResult(None, False, "unknown provider: compatible host not given")
        kwargs["provider_api_url"] = f"https://{host}"
    elif usage.provider in PROVIDER_IDS:
        kwargs["provider_id"] = PROVIDER_IDS[usage.provider]
    else:
        return PriceResult(None, False, f"unknown provider: {usage.provider}")

    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    try:
        gp_usage = gp_types.Usage(**_usage_for_genai(usage))
        calc = genai_prices.calc_price(
            gp_usage,
            usage.model,
            genai_request_timestamp=ts,
            price_context=_price_context(usage),
            **kwargs,
        )
    except LookupError as e:
        if str(e).startswith("Unable to find provider"):
            return PriceResult(None, False, f"unknown provider: {host or usage.provider}")
        return PriceResult(None, False, f"unknown model: {usage.model}")
    except ValueError as e:
        return PriceResult(None, False, f"invalid usage: {e}")
    total = calc.total_price
    if not isinstance(total, Decimal):  # genai-prices promises Decimal; never store a float
        return PriceResult(None, False, f"non-decimal price: {type(total).__name__}")
    return PriceResult(total, True, None, calc.model.id, calc.provider.id)

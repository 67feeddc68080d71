"""Row <-> SQLite values: ISO 8601 UTC text for time, decimal text for money, 0/1 for bools."""

from __future__ import annotations

import dataclasses
import operator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from halton_meter.store.model import Row

ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Row))
_BOOL_FIELDS = frozenset({"stream", "priced", "api_equivalent", "partial"})
_MONEY_FIELDS = frozenset({"cost_usd", "billed_cost_usd"})
# Stored beside the Row fields; derived, never part of the report contract.
DERIVED_COLUMNS: tuple[str, ...] = ("cost_pico", "updated_at")
WRITE_COLUMNS: tuple[str, ...] = ROW_FIELDS + DERIVED_COLUMNS

_PICO = Decimal(10) ** 12


def format_ts(ts: datetime) -> str:
    """Fixed-width ISO 8601 UTC with microseconds, e.g. 2026-12-04T20:17:14.123456Z.

    Fixed width makes text order equal time order, so indexes on ts serve range queries.
    """
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # naive means UTC throughout the store
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def format_money(value: Decimal | None) -> str | None:
    """Plain decimal text, never an exponent (1E-7 -> 0.0000001)."""
    if value is None:
        return None
    return format(value, "f")


def format_total(value: Decimal) -> str:
    """A computed sum: exact, trailing zeros dropped (0.1 + 0.2 -> "0.3")."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


def to_pico(value: Decimal | None) -> int | None:
    """The amount in 1e-12 dollars when that is exact, else None (summed in Python instead)."""
    if value is None or not value.is_finite():
        return None
    try:
        scaled = value * _PICO
    except InvalidOperation:
        return None
    if scaled != scaled.to_integral_value():
        return None
    result = int(scaled)
    # SQLite integers are 64-bit; SUM() over huge values would overflow.
    return result if abs(result) < 2**62 else None


def from_pico(value: int) -> Decimal:
    return Decimal(value) / _PICO


_GET_FIELDS = operator.attrgetter(*ROW_FIELDS)
_TS_INDEX = ROW_FIELDS.index("ts")
_BOOL_INDEXES = tuple(i for i, name in enumerate(ROW_FIELDS) if name in _BOOL_FIELDS)
_MONEY_INDEXES = tuple(i for i, name in enumerate(ROW_FIELDS) if name in _MONEY_FIELDS)


def row_params(row: Row, *, now: datetime | None = None) -> tuple[Any, ...]:
    """Values for WRITE_COLUMNS, in that order. On the daemon's hot path: kept lean."""
    values = list(_GET_FIELDS(row))
    values[_TS_INDEX] = format_ts(values[_TS_INDEX])
    for i in _BOOL_INDEXES:
        values[i] = 1 if values[i] else 0
    for i in _MONEY_INDEXES:
        values[i] = format_money(values[i])
    values.append(to_pico(row.cost_usd))
    values.append(format_ts(now or datetime.now(UTC)))
    return tuple(values)


def record(columns: list[str], values: tuple[Any, ...]) -> dict[str, Any]:
    """A stored row as the report/JSON contract shape: Row fields only, JSON-ready values."""
    raw = dict(zip(columns, values, strict=True))
    out: dict[str, Any] = {}
    for name in ROW_FIELDS:
        value = raw.get(name)
        if name in _BOOL_FIELDS:
            value = bool(value)
        out[name] = value
    return out


def row_from_record(rec: dict[str, Any]) -> Row:
    """Back to a Row (for repricing and tests)."""
    kwargs: dict[str, Any] = {}
    for name in ROW_FIELDS:
        if name not in rec:
            continue
        value = rec[name]
        if name == "ts" and isinstance(value, str):
            value = parse_ts(value)
        elif name in _MONEY_FIELDS and value is not None:
            value = Decimal(value)
        kwargs[name] = value
    return Row(**kwargs)

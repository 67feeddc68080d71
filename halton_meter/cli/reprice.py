"""`halton-meter reprice`: price rows stored unpriced, now that the price data may know them.

Only rows with ``priced = 0`` are considered and a row is written only when it gets a price,
so a second run changes nothing (idempotent). Runs safely while the daemon writes: short
transactions, WAL, busy_timeout.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import typer

from halton_meter.core.paths import Home
from halton_meter.providers.base import Usage
from halton_meter.store import db, queries
from halton_meter.store.codec import format_money, format_total, parse_ts

_BATCH = 500
_ROW_LINES = 50  # more changes than this: one line per model (or --verbose)
API_EQUIVALENT_NOTE = "api-equivalent"


@dataclass(frozen=True)
class Change:
    row_id: str
    ts: str
    model: str | None
    cost_usd: Decimal
    note: str | None


def usage_from_record(rec: dict[str, Any]) -> Usage:
    """The Usage a row was priced from, rebuilt from its columns."""
    raw: Any = None
    if rec.get("usage_json"):
        with contextlib.suppress(ValueError):
            raw = json.loads(rec["usage_json"])
    billed = rec.get("billed_cost_usd")
    fields = raw if isinstance(raw, dict) else {}
    extra: dict[str, Any] = {}
    # Pricing context the daemon passed to the pricer: the row's column, else the raw usage
    # (Anthropic reports service_tier and speed inside its usage object).
    tier = rec.get("service_tier") or fields.get("service_tier")
    if isinstance(tier, str):
        extra["service_tier"] = tier
    if isinstance(fields.get("speed"), str):
        extra["speed"] = fields["speed"]
    tools = fields.get("server_tool_use")
    server_tool_use = (
        {k: v for k, v in tools.items() if isinstance(v, int) and not isinstance(v, bool)}
        if isinstance(tools, dict)
        else None
    )
    return Usage(
        provider=rec.get("provider") or "",
        api=rec.get("api") or "",
        model=rec.get("model"),
        input_tokens=rec.get("input_tokens"),
        output_tokens=rec.get("output_tokens"),
        cache_read_tokens=rec.get("cache_read_tokens"),
        cache_write_tokens=rec.get("cache_write_tokens"),
        cache_write_5m_tokens=rec.get("cache_write_5m_tokens"),
        cache_write_1h_tokens=rec.get("cache_write_1h_tokens"),
        reasoning_tokens=rec.get("reasoning_tokens"),
        billed_cost_usd=Decimal(billed) if billed is not None else None,
        raw_usage=raw,
        server_tool_use=server_tool_use or None,
        complete=not rec.get("partial", False),
        extra=extra,
    )


def plan(conn: sqlite3.Connection) -> tuple[int, list[Change]]:
    """(unpriced rows seen, the changes pricing them would make)."""
    from halton_meter import pricing  # lazy: genai-prices' data loads only when repricing

    seen = 0
    changes: list[Change] = []
    # A model or provider the price data does not know stays unknown for every row that
    # names it: ask once per (provider, model, host), not once per row.
    unknown: set[tuple[Any, Any, Any]] = set()
    for rec in queries.iter_unpriced(conn):
        seen += 1
        key = (rec.get("provider"), rec.get("model"), rec.get("host"))
        if key in unknown:
            continue
        result = pricing.price(usage_from_record(rec), parse_ts(rec["ts"]), host=rec.get("host"))
        if not result.priced or result.cost_usd is None:
            if (result.note or "").startswith("unknown"):
                unknown.add(key)
            continue
        note = API_EQUIVALENT_NOTE if rec.get("api_equivalent") else None
        changes.append(Change(rec["id"], rec["ts"], rec.get("model"), result.cost_usd, note))
    return seen, changes


def apply(conn: sqlite3.Connection, changes: list[Change]) -> int:
    written = 0
    for start in range(0, len(changes), _BATCH):
        with db.transaction(conn):
            for change in changes[start : start + _BATCH]:
                written += queries.set_price(conn, change.row_id, change.cost_usd, change.note)
    return written


def reprice(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; write nothing."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="One line per row."),
) -> None:
    """Price rows stored unpriced (a model the price data learned later). Safe to re-run."""
    path = Home.resolve().db
    if not path.exists():
        typer.echo("No captures yet")
        return
    try:
        conn = db.connect(path, readonly=dry_run)
    except db.StoreError as exc:
        _fail(str(exc), exc.exit_code)
    try:
        seen, changes = plan(conn)
        _show(changes, verbose=verbose or len(changes) <= _ROW_LINES)
        if dry_run:
            typer.echo(
                f"Would price {len(changes)} of {seen} unpriced rows (dry run: nothing written)."
            )
            return
        written = apply(conn, changes)
        typer.echo(f"Priced {written} of {seen} unpriced rows.")
    except sqlite3.DatabaseError as exc:
        error = db.error_for(path, exc)
        _fail(str(error), error.exit_code)
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def _show(changes: list[Change], *, verbose: bool) -> None:
    if verbose:
        for change in changes:
            typer.echo(
                f"{change.ts}  {change.row_id}  {change.model or '-'}: "
                f"unpriced -> ${format_money(change.cost_usd)}"
            )
        return
    by_model: dict[str, tuple[int, Decimal]] = {}
    for change in changes:
        count, cost = by_model.get(change.model or "-", (0, Decimal(0)))
        by_model[change.model or "-"] = (count + 1, cost + change.cost_usd)
    for model, (count, cost) in sorted(by_model.items()):
        typer.echo(f"{model}: {count} rows, ${format_total(cost)}")


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("reprice")(reprice)

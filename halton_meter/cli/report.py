"""`halton-meter report`: the captured rows, newest first, or sums grouped by a key.

Reads ``db.sqlite`` directly through a read-only connection (WAL lets it read while the
daemon writes). Times are UTC throughout.

Subscription (OAuth) traffic is priced as API-equivalent: what it would cost on the API,
never money spent. The text report marks such costs with ``~`` and totals them on a line of
their own; ``cost $`` in the totals is spend only.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from typing import Any, NoReturn

import typer

from halton_meter.core.paths import Home
from halton_meter.store import db, queries
from halton_meter.store.timefilter import parse_time

_NO_CAPTURES = "No captures yet"
API_EQ_MARK = "~"
_API_EQ_LEGEND = f"{API_EQ_MARK} = API-equivalent price of subscription traffic, not spend"


def _time_option(value: str | None) -> str | None:
    # Validation only (typer then names the option in its usage error, exit 2).
    if value is not None:
        try:
            parse_time(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def _by_option(value: str | None) -> str | None:
    if value is not None:
        try:
            queries.check_group_key(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def report(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    limit: int = typer.Option(queries.DEFAULT_LIMIT, "--limit", "-n", min=0, help="Rows shown."),
    since: str | None = typer.Option(
        None,
        "--since",
        callback=_time_option,
        help="Start time: 2026-12-01, 2026-12-01T09:30 (UTC), or 30m/24h/7d/2w.",
    ),
    until: str | None = typer.Option(
        None,
        "--until",
        callback=_time_option,
        help="End time (exclusive), same forms as --since.",
    ),
    project: str | None = typer.Option(None, "--project", help="Only this project."),
    model: str | None = typer.Option(None, "--model", help="Only this model."),
    provider: str | None = typer.Option(None, "--provider", help="Only this provider."),
    tool: str | None = typer.Option(None, "--tool", help="Only this tool."),
    by: str | None = typer.Option(
        None,
        "--by",
        callback=_by_option,
        help="Group and sum by: day, project, model, tool, provider.",
    ),
) -> None:
    """Show captured requests, newest first (or sums with --by)."""
    since_dt = parse_time(since) if since is not None else None
    until_dt = parse_time(until) if until is not None else None
    filters: dict[str, Any] = {
        "since": since_dt,
        "until": until_dt,
        "project": project,
        "model": model,
        "provider": provider,
        "tool": tool,
    }
    path = Home.resolve().db
    try:
        conn = db.connect(path, readonly=True)
    except FileNotFoundError:
        conn = None
    except db.StoreError as exc:
        _fail(str(exc), exc.exit_code)
    try:
        if by is not None:
            _report_groups(conn, by, filters, as_json=as_json)
        else:
            _report_rows(conn, limit, filters, as_json=as_json)
    except sqlite3.DatabaseError as exc:
        error = db.error_for(path, exc)
        _fail(str(error), error.exit_code)
    finally:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _report_rows(
    conn: sqlite3.Connection | None, limit: int, filters: dict[str, Any], *, as_json: bool
) -> None:
    rows = queries.query_rows(conn, limit=limit, **filters) if conn else []
    total = queries.totals(conn, **filters) if conn else queries.empty_totals()
    if as_json:
        typer.echo(json.dumps({"rows": rows, "totals": total}, indent=2))
        return
    if not rows:
        typer.echo(_empty_message(conn, filters))
        return
    headers = ["TIME (UTC)", "TOOL", "PROJECT", "PROVIDER", "MODEL", "IN", "OUT"]
    headers += ["CACHE R", "CACHE W", "COST $", "STATUS", "MS"]
    table = [headers] + [_row_cells(r) for r in rows]
    _print_table(table, numeric={5, 6, 7, 8, 9, 11})
    shown = f"showing {len(rows)} of {total['requests']}" if total["requests"] > len(rows) else ""
    typer.echo("")
    if any(_is_api_equivalent(r) for r in rows):
        typer.echo(_API_EQ_LEGEND)
    typer.echo(_totals_line(total) + (f"  ({shown})" if shown else ""))
    _echo_api_equivalent(total)


def _report_groups(
    conn: sqlite3.Connection | None, by: str, filters: dict[str, Any], *, as_json: bool
) -> None:
    groups = queries.group_by(conn, by, **filters) if conn else []
    total = queries.totals(conn, **filters) if conn else queries.empty_totals()
    if as_json:
        typer.echo(json.dumps({"groups": groups, "totals": total}, indent=2))
        return
    if not groups:
        typer.echo(_empty_message(conn, filters))
        return
    # The API-equivalent column appears only when there is some: most users have none.
    api_eq = total["api_equivalent_usd"] != "0"
    headers = [by.upper(), "REQUESTS", "IN", "OUT", "CACHE R", "CACHE W", "COST $"]
    headers += (["~API-EQ $"] if api_eq else []) + ["UNPRICED"]
    table = [headers]
    for g in groups:
        cells = [
            _cell(g[by]),
            str(g["requests"]),
            _cell(g["input_tokens"]),
            _cell(g["output_tokens"]),
            _cell(g["cache_read_tokens"]),
            _cell(g["cache_write_tokens"]),
            g["cost_usd"],
        ]
        if api_eq:
            cells.append(_api_eq_cell(g["api_equivalent_usd"]))
        table.append([*cells, str(g["unpriced"])])
    _print_table(table, numeric=set(range(1, len(headers))))
    typer.echo("")
    if api_eq:
        typer.echo(_API_EQ_LEGEND)
    typer.echo(_totals_line(total))
    _echo_api_equivalent(total)


def _empty_message(conn: sqlite3.Connection | None, filters: dict[str, Any]) -> str:
    if conn is None or not any(v is not None for v in filters.values()):
        return _NO_CAPTURES
    if queries.totals(conn)["requests"] == 0:
        return _NO_CAPTURES
    return "No captures match these filters."


def _row_cells(r: dict[str, Any]) -> list[str]:
    status = _cell(r["status"]) + (" partial" if r["partial"] else "")
    if r["priced"] and r["cost_usd"] is not None:
        cost = API_EQ_MARK + r["cost_usd"] if _is_api_equivalent(r) else r["cost_usd"]
    else:
        cost = "unpriced"
    return [
        r["ts"][:19].replace("T", " "),
        _cell(r["tool"]),
        _cell(r["project"]),
        _cell(r["provider"]),
        _cell(r["model"]),
        _cell(r["input_tokens"]),
        _cell(r["output_tokens"]),
        _cell(r["cache_read_tokens"]),
        _cell(r["cache_write_tokens"]),
        cost,
        status,
        "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f}",
    ]


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _is_api_equivalent(r: dict[str, Any]) -> bool:
    return bool(r["api_equivalent"]) and bool(r["priced"]) and r["cost_usd"] is not None


def _api_eq_cell(amount: str) -> str:
    return "-" if amount == "0" else API_EQ_MARK + amount


def _echo_api_equivalent(total: dict[str, Any]) -> None:
    if total["api_equivalent_usd"] != "0":
        typer.echo(f"API-equivalent (subscription, not spend): ${total['api_equivalent_usd']}")


def _totals_line(total: dict[str, Any]) -> str:
    line = (
        f"{total['requests']} requests  in {_cell(total['input_tokens'])}  "
        f"out {_cell(total['output_tokens'])}  cost ${total['cost_usd']}"
    )
    if total["unpriced"]:
        line += f" + {total['unpriced']} unpriced (halton-meter reprice)"
    return line


def _print_table(table: list[list[str]], numeric: set[int]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        typer.echo("  ".join(cells).rstrip())


def register(app: typer.Typer) -> None:
    app.command("report")(report)

"""`halton-meter doctor` (`--json`, `--curl`): every check as a row with a copy-paste fix.

Shares its checks and exit codes with `status`: 0 HEALTHY, 1 INCONSISTENT, 2 BROKEN.
"""

from __future__ import annotations

import json
import os
import sys

import typer

from halton_meter.core.paths import Home


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    curl: bool = typer.Option(
        False, "--curl", help="Also send a real request through the edge and time each hop."
    ),
    curl_url: str = typer.Option(
        "",
        "--curl-url",
        help="The URL --curl requests (default: https://api.anthropic.com/v1/models).",
    ),
) -> None:
    """Diagnose the meter: one row per check (ok, warn, fail, skip) and the fix to paste."""
    from halton_meter.doctor.doctor import build_doctor, render
    from halton_meter.doctor.status import exit_code

    document = build_doctor(
        Home.resolve(), dict(os.environ), curl=curl or bool(curl_url), curl_url=curl_url or None
    )
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(render(document, color=sys.stdout.isatty()))
    raise typer.Exit(exit_code(str(document["state"])))


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)

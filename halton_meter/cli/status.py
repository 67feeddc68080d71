"""`halton-meter status` (and `--json`): HEALTHY, INCONSISTENT or BROKEN, with the reasons.

Asks the API when it runs (the same classifier, behind the token) and adds the checks only
this shell can answer (its environment, its rc files); computes everything from the files
when the API is not running. Exit 0 HEALTHY, 1 INCONSISTENT, 2 BROKEN.
"""

from __future__ import annotations

import json
import os

import typer

from halton_meter.core.paths import Home

# The API asks supervisord over RPC before it answers; give it that long before computing here.
STATUS_TIMEOUT_S = 6.0


def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Is the meter HEALTHY, INCONSISTENT or BROKEN (exit 0, 1, 2)?"""
    from halton_meter.api.client import api_get
    from halton_meter.doctor.report import build_status, render, with_client_checks
    from halton_meter.doctor.status import exit_code

    home = Home.resolve()
    env = dict(os.environ)
    document = None
    remote = api_get(home, "/v1/status", timeout=STATUS_TIMEOUT_S)
    if remote is not None:
        try:
            document = with_client_checks(home, {**remote, "source": "api"}, env)
        except (KeyError, TypeError, ValueError):
            document = None  # an answer we cannot read (another version?): look ourselves
    if document is None:
        document = build_status(home, client_env=env)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(render(document))
    raise typer.Exit(exit_code(str(document["state"])))


def register(app: typer.Typer) -> None:
    app.command("status")(status)

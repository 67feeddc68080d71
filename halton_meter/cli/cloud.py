"""`halton-meter cloud ...`: connect, status, pause, resume. Thin: parse, call, render."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from halton_meter.cloud import TOKEN_ENV
from halton_meter.core.paths import Home

# The cloud modules (httpx, the config parser) are imported inside the commands: every other
# `halton-meter` command would pay for them at start otherwise.

cloud_app = typer.Typer(help="Sync rows to Halton Meter Cloud.", no_args_is_help=True)


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _interactive() -> bool:
    return sys.stdin.isatty()


@cloud_app.command("connect")
def connect(
    code: str | None = typer.Option(None, "--code", help="Pairing code from the workspace."),
    token: str | None = typer.Option(
        None,
        "--token",
        help=f"A key for fleets: skips pairing (or set {TOKEN_ENV}).",
        show_default=False,
    ),
    machine_name: str | None = typer.Option(
        None, "--machine-name", help="Defaults to the host name."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Revoke a still-valid key (paused_forbidden) without asking."
    ),
) -> None:
    """Pair this machine (or store a fleet key). Re-connecting revokes the previous key."""
    from halton_meter.cloud import account
    from halton_meter.core.config import load_config

    home = Home.resolve()
    config = load_config(home)

    def _code() -> str:
        return str(typer.prompt("Pairing code"))

    def _confirm(question: str) -> bool:
        # Without a terminal nobody can answer: refuse rather than guess.
        return _interactive() and bool(typer.confirm(question, default=False))

    result = account.connect(
        home,
        config,
        token=token,
        code=code if code else _code,
        machine_name=machine_name,
        yes=yes,
        confirm=_confirm,
        warn=_err,
    )
    where = f" as machine {result.machine_id}" if result.machine_id else ""
    workspace = f" in workspace {result.workspace}" if result.workspace else ""
    typer.echo(f"Connected to {config.cloud.base_url}{where}{workspace}.")
    if result.revoked_previous:
        typer.echo("The previous key was revoked.")
    elif result.revoke_error:
        _err(f"warning: the previous key could not be revoked: {result.revoke_error}")


@cloud_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """Show the sync state: active, paused (with the reason and the fix) or disconnected."""
    from halton_meter.cloud import account
    from halton_meter.core.config import load_config

    home = Home.resolve()
    data = account.status(home, load_config(home))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    _render_status(data)


def _render_status(data: dict[str, Any]) -> None:
    from halton_meter.cloud import account
    from halton_meter.cloud import state as cs

    state = str(data["state"])
    if state == cs.PAUSED:
        reason = str(data["paused_reason"])
        typer.echo(f"cloud: PAUSED ({reason})")
        meaning, recover = account.PAUSE_TABLE.get(reason, ("", "halton-meter cloud resume"))
        typer.echo(f"  what it means: {meaning}")
        typer.echo(f"  recover with:  {recover}")
    elif state == cs.DISCONNECTED:
        typer.echo("cloud: DISCONNECTED")
        typer.echo("  connect with:  halton-meter cloud connect")
    else:
        typer.echo("cloud: ACTIVE")
    typer.echo(f"base_url:      {data['base_url']}")
    typer.echo(f"pending:       {data['pending']} rows")
    typer.echo(f"last_success:  {data['last_success'] or '-'}")
    if data["last_error"]:
        typer.echo(f"last_error:    {data['last_error']}")
        if state == cs.ACTIVE:
            meaning, recover = account.TRANSIENT_ROW
            typer.echo(f"  {meaning} {recover}")
    if data["retry_at"] and state == cs.ACTIVE:
        typer.echo(f"next retry:    {data['retry_at']}")
    if data["quarantined"]:
        typer.echo(
            f"quarantined:   {len(data['quarantined'])} rows refused by the cloud "
            f"(ids and reasons: halton-meter cloud status --json)"
        )


@cloud_app.command("pause")
def pause() -> None:
    """Stop syncing until `cloud resume` (paused_manual). Rows keep being recorded."""
    from halton_meter.cloud import account
    from halton_meter.cloud import state as cs

    new = account.pause(Home.resolve())
    if new.paused_reason == cs.PAUSED_MANUAL:
        typer.echo("Cloud sync paused (paused_manual). Resume with: halton-meter cloud resume")
    else:
        typer.echo(f"Cloud sync is already paused ({new.paused_reason}).")


@cloud_app.command("resume")
def resume() -> None:
    """Probe the stored key once (whoami); 200 clears the pause, counters and last_error."""
    from halton_meter.cloud import account
    from halton_meter.core.config import load_config

    home = Home.resolve()
    config = load_config(home)
    new = account.resume(home, config)
    where = f" (machine {new.machine_id})" if new.machine_id else ""
    typer.echo(
        f"Cloud sync resumed{where}: the key is valid; pause, counters and last_error cleared."
    )


def register(app: typer.Typer) -> None:
    app.add_typer(cloud_app, name="cloud")

"""`start`, `stop`, `supervise`."""

from __future__ import annotations

import typer

from halton_meter.core.paths import Home


def start() -> None:
    """Start the meter (through the service manager when installed) and wait until it answers."""
    from halton_meter.service.control import start as do_start

    outcome = do_start(Home.resolve())
    typer.echo(outcome.message, err=not outcome.ok)
    raise typer.Exit(0 if outcome.ok else 1)


def stop() -> None:
    """Stop the meter; no process is left behind."""
    from halton_meter.service.control import stop as do_stop

    outcome = do_stop(Home.resolve())
    typer.echo(outcome.message, err=not outcome.ok)
    raise typer.Exit(0 if outcome.ok else 1)


def supervise() -> None:
    """Heal, negotiate ports, render the config and exec supervisord (what the service runs)."""
    from halton_meter.service.supervise import main

    main()


def register(app: typer.Typer) -> None:
    app.command("start")(start)
    app.command("stop")(stop)
    app.command("supervise")(supervise)

"""The `halton-meter` command line. One module per command group; each registers itself."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from halton_meter import __version__
from halton_meter.core.errors import HaltonError

app = typer.Typer(
    name="halton-meter",
    help="Meter every LLM API call on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"halton-meter {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Halton Meter."""


def _register_commands() -> None:
    # Each module in this package (except this one) exposes `register(app)`.
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main() -> None:
    # A HaltonError is a message for the user with a documented exit code, never a traceback.
    try:
        app()
    except HaltonError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)

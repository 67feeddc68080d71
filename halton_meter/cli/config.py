"""`halton-meter config`: check and show the effective configuration."""

from __future__ import annotations

import json
import sys

import typer

from halton_meter.core.paths import Home

# core.config (tomlkit, structlog) is imported inside the commands: every other command would
# pay for it at start.

config_app = typer.Typer(help="Check and show the configuration.", no_args_is_help=True)


@config_app.command("check")
def check() -> None:
    """Validate config.toml; exit 3 with the file, key, line and fix when it is bad."""
    from halton_meter.core.config import load_config

    home = Home.resolve()
    cfg = load_config(home)
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    where = cfg.path if cfg.path.exists() else f"{cfg.path} (absent: shipped defaults)"
    typer.echo(f"ok: {where}")


@config_app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """Print the effective configuration (defaults merged with config.toml)."""
    from halton_meter.core.config import load_config

    cfg = load_config(Home.resolve())
    data = {
        "path": str(cfg.path),
        "listen_host": cfg.listen_host,
        "api_host": cfg.api_host,
        "ports": vars(cfg.ports),
        "capture": {**vars(cfg.capture), "hosts": list(cfg.capture.hosts)},
        "upstream": {
            "resolve": cfg.upstream.resolve,
            "ca_bundle": str(cfg.upstream.ca_bundle) if cfg.upstream.ca_bundle else None,
        },
        "cloud": vars(cfg.cloud),
        "attribution": {"scan_roots": [str(p) for p in cfg.attribution.scan_roots]},
        "watchdog": vars(cfg.watchdog),
        "edge": vars(cfg.edge),
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        typer.echo(f"{key}: {value}")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")

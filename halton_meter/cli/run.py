"""`halton-meter run`: exec a command with the client variables injected.

The nine of the reference, ``CODEX_CA_CERTIFICATE``, and the Node fetch preload appended to
any ``NODE_OPTIONS`` the user already has.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys

import typer

from halton_meter.core.errors import EXIT_USAGE
from halton_meter.core.paths import Home

_PROXY_TWINS = ("https_proxy", "http_proxy", "no_proxy")


def _edge_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def run(
    ctx: typer.Context,
    shell: bool = typer.Option(False, "--shell", help="Start an interactive metered subshell."),
    project: str | None = typer.Option(
        None, "--project", help="Attribute this command's requests to PROJECT."
    ),
) -> None:
    """Run CMD [ARGS...] with all proxy and CA variables injected (use -- before flags)."""
    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if shell:
        argv = [os.environ.get("SHELL") or "/bin/sh", *argv]
    if not argv:
        print("usage: halton-meter run <cmd> [args...] | run --shell", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE)

    # Imported here, not at module level: every other command would pay for them at start.
    from halton_meter.core.config import load_config
    from halton_meter.core.runtime import load_effective_ports
    from halton_meter.install.ca import build_combined_bundle
    from halton_meter.install.env import NODE_OPTIONS_VAR, client_env, merge_node_options

    home = Home.resolve()
    config = load_config(home)
    ports = load_effective_ports(home)
    build_combined_bundle(home)
    env = dict(os.environ)
    injected = client_env(home, config, ports, project)
    user_node_options = env.get(NODE_OPTIONS_VAR)
    env.update(injected)
    env[NODE_OPTIONS_VAR] = merge_node_options(user_node_options, injected[NODE_OPTIONS_VAR])
    for twin in _PROXY_TWINS:
        env[twin] = injected[twin.upper()]
    if project:
        env["HALTON_PROJECT"] = project
    if not _edge_listening(ports.edge):
        # A proxy variable pointing at a dead port would break the tool: run it unmetered.
        for var in (*_PROXY_TWINS, "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
            env.pop(var, None)
        if user_node_options is None:
            env.pop(NODE_OPTIONS_VAR, None)
        else:
            env[NODE_OPTIONS_VAR] = user_node_options
        print(
            f"halton-meter: the meter is not running (nothing on port {ports.edge}); "
            "running unmetered. Start it with: halton-meter start",
            file=sys.stderr,
        )
    program = shutil.which(argv[0], path=env.get("PATH"))
    if program is None:
        print(f"halton-meter run: command not found: {argv[0]}", file=sys.stderr)
        raise typer.Exit(127)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec: the command's exit status and signals are its own, with no process in between.
    os.execve(program, argv, env)


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(run)

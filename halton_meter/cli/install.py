"""`init`, `uninstall`, `reset-proxy`: install modes and the way back."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TYPE_CHECKING

import typer

from halton_meter.core.errors import EXIT_FAILURE
from halton_meter.core.paths import Home

if TYPE_CHECKING:
    from halton_meter.core.runtime import EffectivePorts

# The install, platform and config modules (cryptography, the config parser) are imported
# inside the commands: every other `halton-meter` command would pay for them at start.

SELF_TEST_INTERVAL_S = 0.5
SELF_TEST_DEADLINE_S = 30.0


def self_test(ports: EffectivePorts, deadline_s: float = SELF_TEST_DEADLINE_S) -> tuple[bool, str]:
    """A request through the edge (to the api's /health), every 500 ms for up to 30 s."""
    import http.client  # here: only init needs it, every command would pay for it at start

    t0 = time.monotonic()
    last = "no attempt"
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", ports.edge, timeout=2)
        try:
            conn.request("GET", f"http://127.0.0.1:{ports.api}/health")
            status = conn.getresponse().status
            if status == 200:
                return (
                    True,
                    f"a request through the edge (port {ports.edge}) succeeded in {time.monotonic() - t0:.1f}s",
                )
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc) or type(exc).__name__
        finally:
            conn.close()
        if time.monotonic() - t0 >= deadline_s:
            return False, last
        time.sleep(SELF_TEST_INTERVAL_S)


def _service_manager_available() -> bool:
    if sys.platform == "darwin":
        return shutil.which("launchctl") is not None
    from halton_meter.service import runner

    return runner.run(["systemctl", "--user", "show-environment"], timeout=5).ok


def init(
    apps: bool = typer.Option(
        False, "--apps", help="Meter terminals and IDEs (shell rc + session env)."
    ),
    full: bool = typer.Option(False, "--full", help="apps, plus the system proxy."),
    no_shell_rc: bool = typer.Option(False, "--no-shell-rc", help="Do not touch shell rc files."),
    non_interactive: bool = typer.Option(
        False, "--non-interactive", help="No GUI dialog; needs sudo pre-cached."
    ),
    regenerate_ca_flag: bool = typer.Option(
        False,
        "--regenerate-ca",
        help="Replace a CA with a non-positive serial (clients must trust the new one).",
    ),
    no_start: bool = typer.Option(False, "--no-start", help="Set up the surfaces only."),
) -> None:
    """Install Halton Meter in a mode: env-only (default), --apps or --full."""
    from halton_meter.core.config import load_config
    from halton_meter.core.runtime import load_effective_ports
    from halton_meter.install import modes
    from halton_meter.install.ca import (
        build_combined_bundle,
        ca_serial_is_valid,
        ensure_ca,
        regenerate_ca,
    )
    from halton_meter.platform.elevate import elevated_argv
    from halton_meter.platform.trust import trust_store

    if apps and full:
        typer.echo("choose one of --apps and --full", err=True)
        raise typer.Exit(2)
    mode = modes.FULL if full else modes.APPS if apps else modes.ENV_ONLY
    home = Home.resolve().ensure()
    config = load_config(home)
    interactive = not non_interactive and sys.stdin.isatty()
    if mode != modes.ENV_ONLY and not non_interactive:
        interactive = True

    # Fail fast, before any change, when elevation is impossible (exit 2, reference message).
    if mode != modes.ENV_ONLY:
        elevated_argv(["true"], interactive=interactive, reason="Halton Meter init")

    ensure_ca(home)
    if not ca_serial_is_valid(home):
        if regenerate_ca_flag:
            regenerate_ca(home)
            typer.echo("regenerated the CA (the old one had a non-positive serial)")
        else:
            typer.echo(
                "warning: the CA has a non-positive serial (RFC 5280). Fix: halton-meter stop && "
                "halton-meter init --regenerate-ca",
                err=True,
            )
    build_combined_bundle(home)

    if mode != modes.ENV_ONLY:
        trusted = trust_store().install(home.ca_cert, interactive=interactive)
        typer.echo(f"CA trust: {'ok' if trusted.trusted else 'NOT trusted'} ({trusted.detail})")

    ports = load_effective_ports(home)
    if not no_start:
        from halton_meter.service import systemd
        from halton_meter.service.control import start

        if sys.platform.startswith("linux") and _service_manager_available():
            systemd.install_unit(home, enable_linger=True)
        elif sys.platform == "darwin" and _service_manager_available():
            from halton_meter.service import launchd

            launchd.install_unit(home)
        outcome = start(home)
        typer.echo(outcome.message, err=not outcome.ok)
        if not outcome.ok:
            raise typer.Exit(EXIT_FAILURE)
        ports = load_effective_ports(home)

    result = modes.reconcile(home, config, ports, mode, shell_rc=not no_shell_rc)
    for change in result.changed:
        typer.echo(f"  {change}")
    for note in result.notes:
        typer.echo(f"  note: {note}", err=True)
    typer.echo(f"install-mode: {mode}")

    if not no_start:
        ok, detail = self_test(ports)
        if not ok:
            typer.echo(
                f"self-test FAILED after {SELF_TEST_DEADLINE_S:.0f}s: {detail}\n"
                "Fix: halton-meter doctor --curl; tail -n 100 "
                f"{home.daemon_err_log}",
                err=True,
            )
            raise typer.Exit(EXIT_FAILURE)
        typer.echo(f"self-test: ok ({detail})")
    if mode == modes.ENV_ONLY:
        typer.echo("env-only: meter a command with `halton-meter run <cmd>`.")
    else:
        typer.echo(f"{mode}: open a new terminal (and restart IDEs) to pick up HTTPS_PROXY.")


def uninstall(
    purge: bool = typer.Option(False, "--purge", help="Also delete config and sentinels."),
    include_logs: bool = typer.Option(
        False, "--include-logs", help="With --purge: also delete db.sqlite and the logs."
    ),
) -> None:
    """Remove the service, restore proxy state and session env, remove rc blocks (keeps db.sqlite)."""
    if include_logs and not purge:
        typer.echo("--include-logs needs --purge", err=True)
        raise typer.Exit(2)
    home = Home.resolve()
    from halton_meter.core.runtime import load_effective_ports
    from halton_meter.install import modes
    from halton_meter.platform.trust import trust_store
    from halton_meter.service import launchd, systemd
    from halton_meter.service.control import stop

    typer.echo(stop(home).message)
    if systemd.unit_path().exists():
        systemd.uninstall_unit()
        typer.echo(f"  removed {systemd.unit_path()}")
    if launchd.plist_path().exists():
        launchd.uninstall_unit()
        typer.echo(f"  removed {launchd.plist_path()}")
    ports = load_effective_ports(home)
    for change in modes.unwind(home, ports):
        typer.echo(f"  {change}")
    if home.ca_cert.exists():
        store = trust_store()
        if store.verify(home.ca_cert).trusted:
            try:
                store.remove(home.ca_cert, interactive=sys.stdin.isatty())
                typer.echo("  CA removed from the system trust store")
            except Exception as exc:  # noqa: BLE001 - cannot elevate: say so, keep going
                typer.echo(f"  note: CA left in the system trust store ({exc})", err=True)
    removed: list[str] = []
    if purge:
        for path in (
            home.config,
            home.install_mode,
            home.runtime,
            home.effective_ports,
            home.api_token,
            home.cloud_token,
            home.cloud_state,
            home.registry,
            home.watchdog_state,
            home.edge_stats,
            home.ca_bundle,
        ):
            if path.exists():
                path.unlink()
                removed.append(path.name)
        shutil.rmtree(home.run_dir, ignore_errors=True)
    if purge and include_logs:
        for path in [home.db, *home.root.glob("db.sqlite-*"), *home.root.glob("*.log*")]:
            if path.exists():
                path.unlink()
                removed.append(path.name)
        shutil.rmtree(home.bodies, ignore_errors=True)
    if removed:
        typer.echo(f"  deleted: {', '.join(sorted(set(removed)))}")
    if home.db.exists():
        typer.echo(f"kept {home.db}")
    typer.echo("uninstalled")


def reset_proxy() -> None:
    """Emergency: turn the system proxy off at once; touch nothing else."""
    from halton_meter.platform.system_proxy import system_proxy

    results = system_proxy().disable()
    failed = [r for r in results if not r.ok]
    for r in failed:
        typer.echo(f"{' '.join(r.argv)}: {r.stderr.strip()}", err=True)
    typer.echo("system proxy disabled" if not failed else "system proxy: some services failed")
    raise typer.Exit(1 if failed else 0)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("uninstall")(uninstall)
    app.command("reset-proxy")(reset_proxy)

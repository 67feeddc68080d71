"""The one supervise entry: heal, scrub, negotiate ports, render, exec supervisord.

What a systemd user unit or launchd agent runs, and what `halton-meter start` spawns where
there is no service manager. ``python -m halton_meter.service.supervise`` or
``halton-meter supervise``.
"""

from __future__ import annotations

import os
import sys

from halton_meter.core.config import load_config
from halton_meter.core.errors import HaltonError
from halton_meter.core.logging import configure_logging, get_logger
from halton_meter.core.paths import HOME_ENV, Home
from halton_meter.port_alloc import negotiate
from halton_meter.service import env as envmod
from halton_meter.service.render import RenderOptions, write_config
from halton_meter.service.rpc import supervisord_pid


def supervisord_argv(conf: str) -> list[str]:
    return [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", conf]


def prepare(home: Home) -> list[str]:
    """Everything before the exec; returns supervisord's argv. Raises HaltonError."""
    from halton_watchdog.healing import prestart_heal  # shared with the watchdog

    log = get_logger()
    gone = envmod.scrub()
    if gone:
        log.warning("supervise.proxy_env_scrubbed", variables=gone)
    # Children must know their home even when it is the default one.
    os.environ[HOME_ENV] = str(home.root)
    prestart_heal(home)
    config = load_config(home)
    ports = negotiate(home, config)
    conf = write_config(home, RenderOptions.from_environ())
    log.info("supervise.exec", conf=str(conf), ports=ports.as_dict())
    return supervisord_argv(str(conf))


def main() -> None:
    configure_logging("supervise")
    home = Home.resolve()
    pid = supervisord_pid(home)
    if pid is not None:
        print(f"halton-meter: supervisord is already running for {home.root} (pid {pid})")
        raise SystemExit(0)
    try:
        argv = prepare(home)
    except HaltonError as exc:
        print(f"halton-meter supervise: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()

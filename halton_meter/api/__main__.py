"""`python -m halton_meter.api`: the API program supervisord runs.

Boot order: config, bind guard (before anything listens), token, then uvicorn on
``api_host`` and the effective api port (``--port`` overrides it, for tests).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from halton_meter.core.paths import Home

# Nothing here makes outbound calls through a proxy; scrub them anyway so no library that
# honours the environment can route a request back through our own edge.
_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m halton_meter.api")
    parser.add_argument("--port", type=int, default=None, help="override the effective api port")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    for var in _PROXY_VARS:
        os.environ.pop(var, None)

    from halton_meter.core.bindguard import check_bind_host
    from halton_meter.core.config import ConfigError, load_config
    from halton_meter.core.logging import configure_logging, get_logger

    configure_logging("api")
    log = get_logger()
    home = Home.resolve()
    try:
        config = load_config(home)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return exc.exit_code
    check_bind_host(config.api_host, "api_host")

    import uvicorn

    from halton_meter.api.app import create_app
    from halton_meter.core.runtime import load_effective_ports

    home.ensure()
    port = args.port if args.port is not None else load_effective_ports(home).api
    app = create_app(home)
    log.info("api.start", host=config.api_host, port=port, pid=os.getpid(), home=str(home.root))
    try:
        _serve(uvicorn, app, config.api_host, port)
    except SystemExit as exc:
        # uvicorn exits 3 when it cannot start (typically: the port is taken); its own message
        # is on stderr already, this is the event tests and the watchdog can match.
        if exc.code not in (0, None):
            log.error("api.startup_failed", host=config.api_host, port=port, exit_code=exc.code)
        raise
    log.info("api.stop", pid=os.getpid())
    return 0


def _serve(uvicorn: Any, app: Any, host: str, port: int) -> None:
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=port,
        access_log=False,
        log_config=None,  # our structlog setup owns the output; no uvicorn banner noise
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        lifespan="off",
    )


if __name__ == "__main__":
    sys.exit(main())

"""``python -m halton_meter.sim --port N --dir D [--http-port M] [--name HOST ...]
[--default x-sim-delay-ms=20 ...]``.

Prints one JSON line on stdout once listening: {"port", "http_port", "ca", "pid", "dir"}; then
serves until SIGTERM/SIGINT. The request log is at ``GET /_sim/log``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from halton_meter.core.bindguard import OVERRIDE_ENV, is_loopback_host
from halton_meter.core.logging import configure_logging
from halton_meter.sim.provider import ProviderSim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halton_meter.sim")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="where the CA and leaf live")
    parser.add_argument("--name", action="append", default=[], help="extra SAN (repeatable)")
    parser.add_argument(
        "--default",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="default knob for requests that set none, e.g. x-sim-delay-ms=20 (repeatable)",
    )
    args = parser.parse_args(argv)
    configure_logging("sim")  # the simulator logs only errors (stderr); stdout is the JSON line
    if not is_loopback_host(args.host) and os.environ.get(OVERRIDE_ENV) != "1":
        print(f"the simulator binds loopback only, not {args.host}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    defaults: dict[str, str] = {}
    for item in args.default:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--default needs KNOB=VALUE, got {item!r}")
        key = key.strip().lower()
        defaults[key if key.startswith("x-sim-") else f"x-sim-{key}"] = value
    sim = ProviderSim(args.dir, extra_names=args.name, defaults=defaults)
    sim.start(args.host, args.port, http_port=args.http_port)
    info = {
        "port": sim.port,
        "http_port": sim.http_port,
        "ca": str(sim.ca_path),
        "pid": os.getpid(),
        "dir": str(sim.directory),
    }
    print(json.dumps(info), flush=True)
    try:
        stop.wait()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

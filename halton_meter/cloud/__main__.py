"""`python -m halton_meter.cloud`: run the sync loop alone, until SIGTERM or SIGINT.

The daemon runs the same loop in a thread; this entry is for debugging and for tests that
need the loop in a process of its own (to kill it mid-batch).
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from halton_meter.cloud.sync import IDLE_INTERVAL_S, CloudSync
from halton_meter.core.config import load_config
from halton_meter.core.logging import configure_logging
from halton_meter.core.paths import Home


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m halton_meter.cloud")
    parser.add_argument(
        "--interval", type=float, default=IDLE_INTERVAL_S, help="seconds between idle passes"
    )
    args = parser.parse_args(argv)
    configure_logging("cloud")
    home = Home.resolve()
    sync = CloudSync(
        home, load_config(home), idle_interval_s=args.interval, paused_interval_s=args.interval
    )
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sync.run_forever(stop)


if __name__ == "__main__":
    main()

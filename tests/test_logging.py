"""structlog in one place: JSON lines split by level, with a grep-able k=v rendering."""

from __future__ import annotations

import json
import subprocess

from hmtest import PYTHON

_EMIT = """
from halton_meter.core.logging import configure_logging, get_logger
configure_logging("daemon", json_lines=True)
log = get_logger()
log.info("addon.body_capture.skip", reason="body_too_large", row_id="abc")
log.warning("cloud.transport_error", error="timed out", url="https://x y")
log.warning("watchdog.respawn_loop", program="edge", exits=5)
"""


def test_info_to_stdout_warnings_to_stderr_one_json_object_a_line() -> None:
    out = subprocess.run([PYTHON, "-c", _EMIT], capture_output=True, text=True, check=True)
    (info,) = [json.loads(line) for line in out.stdout.splitlines()]
    warn, loop = [json.loads(line) for line in out.stderr.splitlines()]
    assert info["event"] == "addon.body_capture.skip" and info["reason"] == "body_too_large"
    assert info["program"] == "daemon" and info["level"] == "info" and "timestamp" in info
    # the reference's grep works on the raw line
    assert "addon.body_capture.skip reason=body_too_large" in out.stdout
    assert warn["event"] == "cloud.transport_error"
    assert warn["msg"] == 'cloud.transport_error error="timed out" url="https://x y"'
    # an event about another program keeps it, and says who wrote the line
    assert loop["program"] == "edge" and loop["emitter"] == "daemon"
    assert loop["msg"] == "watchdog.respawn_loop program=edge exits=5"

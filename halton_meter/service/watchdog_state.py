"""The watchdog's persisted state (``watchdog-state.json``), readable by status and doctor.

Shape (every key optional to a reader; a missing or corrupt file reads as ``{}``):

    {
      "version": 1, "updated_at": ISO-8601, "pid": watchdog pid,
      "exits": {program: total exits counted since the home was created},
      "programs": {program: {"loop_state": "STABLE|SUSPECT|LOOPING|COOLDOWN",
                             "window_exits": n, "attempt": n, "retry_at": epoch|null,
                             "liveness_failures": n}},
      "last_action": {"at", "program", "action", "cause"},
      "last_cause": {"at", "program", "cause", ...detail},
      "ports_renegotiated": [{"at", "old", "new", "program", "holder"}],
      "recursion": [{"program", "pid", "var", "value"}],   # now, empty when clean
      "history": [{"at", "program", "event", ...}],        # the last 100 events
      "log": {"inode", "offset"}                          # where exit counting stopped
    }
"""

from __future__ import annotations

import json
from typing import Any

from halton_meter.core.fsutil import atomic_write
from halton_meter.core.paths import Home

STATE_VERSION = 1
HISTORY_MAX = 100


def read_watchdog_state(home: Home | None = None) -> dict[str, Any]:
    """The watchdog's last persisted state; ``{}`` when there is none or it is unreadable."""
    home = home or Home.resolve()
    try:
        data = json.loads(home.watchdog_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_watchdog_state(home: Home, state: dict[str, Any]) -> None:
    state["version"] = STATE_VERSION
    state["history"] = list(state.get("history", []))[-HISTORY_MAX:]
    atomic_write(
        home.watchdog_state, json.dumps(state, indent=1, sort_keys=True) + "\n", mode=0o600
    )

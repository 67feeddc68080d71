"""The status classifier: HEALTHY, INCONSISTENT or BROKEN, and why.

Written like supervisor's ``process.py``: the states are named constants, every check (in
``checks.py``) returns :class:`Reason` objects, and ONE function, :func:`fold`, turns the
reasons into the state. Nothing else decides a state.

- BROKEN: a user would notice. Clients cannot connect to the edge, a program is down or in
  a respawn loop, proxy recursion, a port held by a foreign process, supervisord
  unreachable while the meter was started, or the meter is not running at all.
- INCONSISTENT: traffic flows but something drifted: the daemon is down and the edge fails
  open (unmetered traffic), the install-mode sentinel disagrees with the surfaces (or holds a
  legacy value such as ``gui``), clients were given a port the edge no longer listens on, a
  CA variable names a file that is gone, the cloud sync is paused.
- HEALTHY: none of the above.

Decision, "not running" (no supervisord answering), always BROKEN with the fix
``halton-meter start``; the reason names the cause:
- ``not_running``: never started (no runtime.toml), or stopped with ``halton-meter stop``
  (runtime ``state = "stopped"``, or a clean shutdown that left no socket behind). This is
  the reference's "Cause 1: Daemon is not running". Even in env-only mode, where a stopped
  meter breaks no tool, nothing is metered and ``halton-meter run <cmd>`` cannot reach the
  edge: a monitoring health check must not call that healthy.
- ``supervisord_unreachable``: the meter was started and not stopped (runtime
  ``state = "started"``, or supervisord's socket or pid file is still there, which a clean
  shutdown removes): it died, was killed, or hangs. That is "supervisord unreachable while
  the mode expects it".
No install-mode sentinel means env-only, the default: a home where ``start`` ran without
``init`` is a valid setup and can be HEALTHY.

Exit codes follow monitoring conventions: 0 HEALTHY, 1 INCONSISTENT, 2 BROKEN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HEALTHY = "HEALTHY"
INCONSISTENT = "INCONSISTENT"
BROKEN = "BROKEN"

STATES = (HEALTHY, INCONSISTENT, BROKEN)  # in order of severity
_RANK = {state: rank for rank, state in enumerate(STATES)}
EXIT_CODES = {HEALTHY: 0, INCONSISTENT: 1, BROKEN: 2}


@dataclass(frozen=True)
class Reason:
    """One problem: a stable id, a sentence for the user, its severity and the fix."""

    id: str
    message: str
    severity: str  # INCONSISTENT or BROKEN
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in (INCONSISTENT, BROKEN):
            raise ValueError(
                f"a reason's severity is INCONSISTENT or BROKEN, not {self.severity!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "message": self.message, "severity": self.severity, "fix": self.fix}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reason:
        severity = str(data.get("severity") or BROKEN)
        if severity not in (INCONSISTENT, BROKEN):
            severity = BROKEN  # an answer we cannot read is not a reason to look healthy
        fix = data.get("fix")
        return cls(str(data["id"]), str(data["message"]), severity, str(fix) if fix else None)


def fold(reasons: Iterable[Reason]) -> str:
    """The state: the most severe reason's severity, HEALTHY when there is none."""
    state = HEALTHY
    for reason in reasons:
        if _RANK[reason.severity] > _RANK[state]:
            state = reason.severity
    return state


def exit_code(state: str) -> int:
    return EXIT_CODES.get(state, EXIT_CODES[BROKEN])

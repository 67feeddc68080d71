"""The respawn-loop detector: one explicit state machine per program.

supervisord restarts a program that has been RUNNING for ``startsecs`` forever, with no delay;
this machine notices the loop and turns it into spaced retries.

    STABLE   --exit-->                         SUSPECT   (1 .. threshold-1 exits in the window)
    SUSPECT  --exit, threshold reached-->      LOOPING   action STOP
    STABLE/SUSPECT --gave_up (FATAL)-->        LOOPING   action STOP
    SUSPECT  --tick, window empty-->           STABLE    (attempt reset once calm for a window)
    LOOPING  --stopped-->                      COOLDOWN  retry_at = now + backoff(attempt)
    LOOPING  --tick-->                         LOOPING   action STOP (the stop did not happen)
    COOLDOWN --tick, now >= retry_at-->        SUSPECT   action START (window cleared)
    COOLDOWN --exit-->                         COOLDOWN  (ignored: we stopped it)

Backoff grows 5, 10, 20, 40 ... seconds, capped. All transitions are in ``_transition``;
the clock is injectable (wall-clock seconds, so exits carry supervisord's log timestamps).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STABLE = "STABLE"
SUSPECT = "SUSPECT"
LOOPING = "LOOPING"
COOLDOWN = "COOLDOWN"
STATES = (STABLE, SUSPECT, LOOPING, COOLDOWN)

# events
EXIT = "exit"
GAVE_UP = "gave_up"
STOPPED = "stopped"
TICK = "tick"

# actions
NONE = "none"
STOP = "stop"
START = "start"

BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 300.0


@dataclass(frozen=True)
class Action:
    kind: str = NONE
    exits: int = 0
    window_s: float = 0.0
    backoff_s: float = 0.0
    attempt: int = 0


NO_ACTION = Action()


class LoopDetector:
    def __init__(
        self,
        program: str,
        threshold: int = 5,
        window_s: float = 120.0,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.program = program
        self.threshold = threshold
        self.window_s = window_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.clock = clock
        self.state = STABLE
        self.exits: deque[float] = deque()
        self.attempt = 0  # loops detected since the program was last calm for a window
        self.retry_at: float | None = None
        self.calm_since: float = clock()

    # --- inputs -------------------------------------------------------------------------

    def on_exit(self, at: float | None = None) -> Action:
        return self._transition(EXIT, self.clock() if at is None else at)

    def on_gave_up(self, at: float | None = None) -> Action:
        return self._transition(GAVE_UP, self.clock() if at is None else at)

    def on_stopped(self, at: float | None = None) -> Action:
        return self._transition(STOPPED, self.clock() if at is None else at)

    def tick(self, now: float | None = None) -> Action:
        return self._transition(TICK, self.clock() if now is None else now)

    def backoff_for(self, attempt: int) -> float:
        return float(min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, attempt - 1)))

    def reconfigure(self, threshold: int, window_s: float) -> None:
        self.threshold, self.window_s = threshold, window_s

    def reset(self) -> None:
        """The cause was found and fixed (e.g. ports renegotiated): forget this loop."""
        self.state, self.attempt, self.retry_at = STABLE, 0, None
        self.exits.clear()

    # --- the one place transitions happen -----------------------------------------------

    def _transition(self, event: str, now: float) -> Action:
        state = self.state
        if event == EXIT:
            if state == COOLDOWN:
                return NO_ACTION
            self.exits.append(now)
            self._prune(now)
            if state == LOOPING:
                return self._stop_action()
            if len(self.exits) >= self.threshold:
                return self._enter_looping()
            self.state = SUSPECT
            return NO_ACTION
        if event == GAVE_UP:
            if state in (LOOPING, COOLDOWN):
                return NO_ACTION if state == COOLDOWN else self._stop_action()
            return self._enter_looping()
        if event == STOPPED:
            if state != LOOPING:
                return NO_ACTION
            self.state = COOLDOWN
            self.retry_at = now + self.backoff_for(self.attempt)
            return NO_ACTION
        # TICK
        if state == LOOPING:
            return self._stop_action()
        if state == COOLDOWN:
            if self.retry_at is not None and now >= self.retry_at:
                self.state = SUSPECT
                self.exits.clear()
                self.retry_at = None
                self.calm_since = now
                return Action(START, attempt=self.attempt)
            return NO_ACTION
        self._prune(now)
        if state == SUSPECT and not self.exits:
            self.state = STABLE
            self.calm_since = now
        if self.state == STABLE and self.attempt and now - self.calm_since >= self.window_s:
            self.attempt = 0
        return NO_ACTION

    def _enter_looping(self) -> Action:
        self.state = LOOPING
        self.attempt += 1
        return self._stop_action()

    def _stop_action(self) -> Action:
        return Action(
            STOP,
            exits=len(self.exits),
            window_s=self.window_s,
            backoff_s=self.backoff_for(self.attempt),
            attempt=self.attempt,
        )

    def _prune(self, now: float) -> None:
        while self.exits and now - self.exits[0] > self.window_s:
            self.exits.popleft()

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Resume from a persisted snapshot: a restarted watchdog must still retry what the
        previous one stopped. (A repeated stop in LOOPING is harmless.)"""
        self.attempt = int(snapshot.get("attempt") or 0)
        if snapshot.get("loop_state") in (LOOPING, COOLDOWN):
            self.state = str(snapshot["loop_state"])
            retry_at = snapshot.get("retry_at")
            self.retry_at = float(retry_at) if retry_at is not None else self.clock()

    def snapshot(self) -> dict[str, Any]:
        return {
            "loop_state": self.state,
            "window_exits": len(self.exits),
            "attempt": self.attempt,
            "retry_at": self.retry_at,
        }

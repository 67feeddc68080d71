"""The respawn-loop state machine, driven by a fake clock."""

from __future__ import annotations

from halton_watchdog import loop_detector as ld


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


def _detector(clock: FakeClock, threshold: int = 5, window_s: float = 120.0) -> ld.LoopDetector:
    return ld.LoopDetector("daemon", threshold=threshold, window_s=window_s, clock=clock)


def test_exits_below_threshold_are_suspect_then_stable_again() -> None:
    clock = FakeClock()
    det = _detector(clock)
    for _ in range(4):
        assert det.on_exit().kind == ld.NONE
        clock.advance(10)
    assert det.state == ld.SUSPECT
    clock.advance(121)
    assert det.tick().kind == ld.NONE
    assert det.state == ld.STABLE


def test_threshold_within_window_loops_and_stops() -> None:
    clock = FakeClock()
    det = _detector(clock)
    actions = []
    for _ in range(5):
        actions.append(det.on_exit())
        clock.advance(2)
    assert [a.kind for a in actions] == [ld.NONE] * 4 + [ld.STOP]
    assert det.state == ld.LOOPING
    assert actions[-1].exits == 5 and actions[-1].window_s == 120.0
    assert actions[-1].backoff_s == 5.0


def test_exits_spread_wider_than_window_never_loop() -> None:
    clock = FakeClock()
    det = _detector(clock, threshold=3, window_s=10)
    for _ in range(20):
        assert det.on_exit().kind == ld.NONE
        clock.advance(6)
    assert det.state == ld.SUSPECT


def test_exit_timestamps_not_clock_decide_the_window() -> None:
    """Exits read late from supervisord's log count at the time they happened."""
    clock = FakeClock(5000)
    det = _detector(clock, threshold=3, window_s=10)
    assert det.on_exit(at=4000).kind == ld.NONE
    assert det.on_exit(at=4020).kind == ld.NONE
    assert det.on_exit(at=4040).kind == ld.NONE  # 3 exits but over 40 s: no loop
    assert det.on_exit(at=4041).kind == ld.NONE
    assert det.on_exit(at=4042).kind == ld.STOP


def test_looping_repeats_stop_until_stopped_then_cooldown_then_start() -> None:
    clock = FakeClock()
    det = _detector(clock, threshold=2)
    det.on_exit()
    assert det.on_exit().kind == ld.STOP
    assert det.tick().kind == ld.STOP  # the stop did not happen yet: ask again
    det.on_stopped()
    assert det.state == ld.COOLDOWN
    assert det.retry_at == clock.t + 5.0
    clock.advance(4.9)
    assert det.tick().kind == ld.NONE
    assert det.on_exit().kind == ld.NONE  # exits while stopped are ignored
    clock.advance(0.2)
    action = det.tick()
    assert action.kind == ld.START and action.attempt == 1
    assert det.state == ld.SUSPECT and not det.exits


def test_backoff_grows_and_is_capped() -> None:
    clock = FakeClock()
    det = _detector(clock, threshold=2)
    waits = []
    for _ in range(9):
        det.on_exit()
        assert det.on_exit().kind == ld.STOP
        det.on_stopped()
        waits.append(det.retry_at - clock.t)
        clock.t = det.retry_at
        assert det.tick().kind == ld.START
        clock.advance(1)
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300, 300]


def test_attempts_reset_after_a_calm_window() -> None:
    clock = FakeClock()
    det = _detector(clock, threshold=2, window_s=30)
    det.on_exit()
    det.on_exit()
    det.on_stopped()
    clock.t = det.retry_at or 0
    det.tick()
    assert det.attempt == 1
    clock.advance(31)
    det.tick()
    assert det.state == ld.STABLE
    clock.advance(31)
    det.tick()
    assert det.attempt == 0
    det.on_exit()
    assert det.on_exit().backoff_s == 5.0


def test_gave_up_fatal_is_a_loop_once() -> None:
    clock = FakeClock()
    det = _detector(clock)
    assert det.on_gave_up().kind == ld.STOP
    det.on_stopped()
    assert det.on_gave_up().kind == ld.NONE  # already cooling down
    assert det.state == ld.COOLDOWN


def test_reset_forgets_the_loop() -> None:
    clock = FakeClock()
    det = _detector(clock, threshold=1)
    assert det.on_exit().kind == ld.STOP
    det.reset()
    assert det.state == ld.STABLE and det.attempt == 0 and det.tick().kind == ld.NONE


def test_reconfigure_changes_threshold() -> None:
    clock = FakeClock()
    det = _detector(clock)
    det.reconfigure(2, 60)
    det.on_exit()
    assert det.on_exit().kind == ld.STOP
    assert det.snapshot()["loop_state"] == ld.LOOPING


def test_states_are_named_constants() -> None:
    assert ld.STATES == ("STABLE", "SUSPECT", "LOOPING", "COOLDOWN")

"""The cloud state machine (pure transitions) and its file (locked, atomic, rebuilt)."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path

import pytest

from halton_meter.cloud import state as cs
from halton_meter.core.paths import Home

ACTIVE = cs.CloudState(state=cs.ACTIVE, key_id="kid-1", machine_id="m-1")


@pytest.mark.parametrize(
    ("event", "state", "reason"),
    [
        (cs.UNAUTHORISED, cs.PAUSED, cs.PAUSED_UNAUTHORISED),
        (cs.FORBIDDEN, cs.PAUSED, cs.PAUSED_FORBIDDEN),
        (cs.MANUAL_PAUSE, cs.PAUSED, cs.PAUSED_MANUAL),
        (cs.TRANSIENT_ERROR, cs.ACTIVE, None),
        (cs.BATCH_REJECTED, cs.ACTIVE, None),
    ],
)
def test_classification_table(event: str, state: str, reason: str | None) -> None:
    new = cs.transition(ACTIVE, cs.Event(event, error="e", key_id="kid-1"))
    assert (new.state, new.paused_reason) == (state, reason)
    if event != cs.MANUAL_PAUSE:
        assert new.last_error == "e"


def test_transient_errors_count_and_never_pause() -> None:
    st = ACTIVE
    for n in range(1, 6):
        st = cs.transition(st, cs.Event(cs.TRANSIENT_ERROR, error=f"e{n}", retry_at="x"))
        assert st.state == cs.ACTIVE and st.consecutive_failures == n and st.last_error == f"e{n}"
    st = cs.transition(st, cs.Event(cs.BATCH_ACCEPTED, cursor=9, at="t", accepted=3))
    assert st.consecutive_failures == 0 and st.retry_at is None and st.cursor == 9
    assert st.last_success == "t" and st.accepted_total == 3


def test_resume_clears_pause_counters_and_last_error() -> None:
    st = cs.transition(ACTIVE, cs.Event(cs.TRANSIENT_ERROR, error="boom", retry_at="later"))
    st = cs.transition(st, cs.Event(cs.UNAUTHORISED, error="401", key_id="kid-1"))
    assert st.paused_reason == cs.PAUSED_UNAUTHORISED
    st = cs.transition(st, cs.Event(cs.RESUMED, key_id="kid-1"))
    assert st.state == cs.ACTIVE and st.paused_reason is None
    assert st.last_error is None and st.consecutive_failures == 0 and st.retry_at is None
    assert st.cursor == ACTIVE.cursor and st.machine_id == "m-1"


def test_a_stale_401_does_not_pause_a_new_key() -> None:
    st = cs.transition(ACTIVE, cs.Event(cs.UNAUTHORISED, key_id="old-key"))
    assert st.state == cs.ACTIVE


def test_manual_pause_keeps_a_stronger_reason() -> None:
    st = cs.transition(ACTIVE, cs.Event(cs.FORBIDDEN, key_id="kid-1"))
    st = cs.transition(st, cs.Event(cs.MANUAL_PAUSE))
    assert st.paused_reason == cs.PAUSED_FORBIDDEN


def test_delivery_during_a_pause_moves_the_cursor_and_keeps_the_pause() -> None:
    st = cs.transition(ACTIVE, cs.Event(cs.MANUAL_PAUSE))
    st = cs.transition(st, cs.Event(cs.BATCH_ACCEPTED, cursor=5))
    assert st.cursor == 5 and st.paused_reason == cs.PAUSED_MANUAL


def test_quarantine_records_id_and_reason_and_moves_the_cursor() -> None:
    st = cs.transition(ACTIVE, cs.Event(cs.ROW_QUARANTINED, row_id="r1", error="bad", cursor=4))
    assert st.cursor == 4 and st.quarantined[0]["id"] == "r1"
    assert st.quarantined[0]["reason"] == "bad"


def test_unknown_event_is_a_bug() -> None:
    with pytest.raises(ValueError):
        cs.transition(ACTIVE, cs.Event("nonsense"))


def test_state_file_is_private_and_round_trips(hm_home: Path) -> None:
    home = Home.resolve(hm_home)
    st = cs.apply(home, cs.Event(cs.CONNECTED, machine_id="m", key_id="k"))
    assert stat.S_IMODE(home.cloud_state.stat().st_mode) == 0o600
    assert cs.load_state(home) == st
    data = json.loads(home.cloud_state.read_text())
    assert data["state"] == "active" and data["paused_reason"] is None  # doctor reads this


@pytest.mark.parametrize(
    "text", ["{not json", "[]", '{"state": "weird"}', '{"state": "paused"}', ""]
)
def test_a_corrupt_state_file_is_rebuilt(hm_home: Path, text: str) -> None:
    home = Home.resolve(hm_home)
    home.cloud_state.write_text(text)
    st = cs.load_state(home)
    assert st == cs.CloudState()
    cs.apply(home, cs.Event(cs.CONNECTED, key_id="k"))
    assert cs.load_state(home).state == cs.ACTIVE


def _bump(root: str, n: int) -> None:
    home = Home.resolve(root)
    for _ in range(n):
        cs.update_state(
            home,
            lambda s: cs.transition(s, cs.Event(cs.BATCH_ACCEPTED, accepted=1, cursor=s.cursor)),
        )


def test_concurrent_updates_from_processes_lose_nothing(hm_home: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump, args=(str(hm_home), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert cs.load_state(Home.resolve(hm_home)).accepted_total == 100


def test_a_missing_home_is_created_private(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "fresh-home")
    assert cs.load_state(home).state == cs.DISCONNECTED
    assert stat.S_IMODE(home.root.stat().st_mode) == 0o700

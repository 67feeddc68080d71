"""The cloud sync's state machine, in one place, and its durable file (cloud-state.json).

States: ACTIVE (syncing, or retrying a transient error), PAUSED (with a reason from the
reference's table), DISCONNECTED (no key). Every change of state goes through
:func:`transition`; callers describe what happened as an :class:`Event` and never set
fields themselves. Like supervisor's ``process.py``, the rules are readable top to bottom.

Strict classification (reference, "cloud status shows PAUSED"):

- 401 on /v1/requests/batch -> PAUSED ``paused_unauthorised``
- 403 -> PAUSED ``paused_forbidden`` (the key is kept, never revoked)
- ``cloud pause`` -> PAUSED ``paused_manual``
- anything transient (5xx, timeout, DNS, 429, 400/422) -> ``last_error`` set, no pause

The file is flat JSON (``doctor`` reads ``paused_reason`` from it). The daemon's sync thread
and the CLI both change it, so every read-modify-write holds an exclusive ``flock`` on a
lock file beside it (:func:`update_state`); writes are atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from halton_meter.core.fsutil import SECRET_FILE_MODE, atomic_write, ensure_dir
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home

ACTIVE = "active"
PAUSED = "paused"
DISCONNECTED = "disconnected"
STATES = (ACTIVE, PAUSED, DISCONNECTED)

PAUSED_UNAUTHORISED = "paused_unauthorised"
PAUSED_FORBIDDEN = "paused_forbidden"
PAUSED_MANUAL = "paused_manual"
PAUSE_REASONS = (PAUSED_UNAUTHORISED, PAUSED_FORBIDDEN, PAUSED_MANUAL)

# Event kinds: what happened, never what to do.
CONNECTED = "connected"  # a new key is stored (connect: pairing or --token)
DISCONNECT = "disconnect"  # the key is gone
BATCH_ACCEPTED = "batch_accepted"  # 200 on a batch: the cursor moves
ROW_QUARANTINED = "row_quarantined"  # one row refused alone with 400/422: set aside
TRANSIENT_ERROR = "transient_error"  # 5xx, timeout, DNS, 429: retried after a backoff
BATCH_REJECTED = "batch_rejected"  # 400/422 on a batch: recorded, then bisected at once
UNAUTHORISED = "unauthorised"  # a real HTTP 401
FORBIDDEN = "forbidden"  # a real HTTP 403
MANUAL_PAUSE = "manual_pause"  # `cloud pause`
CURSOR_RESET = "cursor_reset"  # the database was replaced: start over (the server dedups)
RESUMED = "resumed"  # `cloud resume`: whoami answered 200

_MAX_QUARANTINE_KEPT = 1000


def key_id(key: str) -> str:
    """A short fingerprint of a key: lets an event say which key it was about, safely."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CloudState:
    state: str = DISCONNECTED
    paused_reason: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    last_success: str | None = None
    consecutive_failures: int = 0
    retry_at: str | None = None  # ISO 8601 UTC: no batch before this (backoff, Retry-After)
    cursor: int = 0  # the highest store `seq` delivered (or quarantined); all below it done
    cursor_id: str | None = None  # the row id at `cursor`: detects a replaced database
    machine_id: str | None = None
    workspace: str | None = None
    key_id: str | None = None  # fingerprint of the key these fields belong to
    accepted_total: int = 0
    duplicates_total: int = 0
    consecutive_quarantined: int = 0  # rows set aside since the last accepted batch
    quarantined: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["quarantined"] = [dict(q) for q in self.quarantined]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CloudState:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["quarantined"] = tuple(
            dict(q) for q in kwargs.get("quarantined") or () if isinstance(q, dict)
        )
        state = cls(**kwargs)
        _validate(state)
        return state


@dataclass(frozen=True)
class Event:
    kind: str
    at: str | None = None  # ISO 8601 UTC
    error: str | None = None
    retry_at: str | None = None
    cursor: int | None = None
    accepted: int = 0
    duplicates: int = 0
    row_id: str | None = None  # the last row the event covers
    machine_id: str | None = None
    workspace: str | None = None
    key_id: str | None = None  # the key the request used; stale events are ignored


def _validate(state: CloudState) -> None:
    if state.state not in STATES:
        raise ValueError(f"unknown state {state.state!r}")
    if state.state == PAUSED and state.paused_reason not in PAUSE_REASONS:
        raise ValueError(f"paused without a known reason ({state.paused_reason!r})")
    if state.state != PAUSED and state.paused_reason is not None:
        raise ValueError("a pause reason outside the paused state")
    if not isinstance(state.cursor, int) or state.cursor < 0:
        raise ValueError(f"bad cursor {state.cursor!r}")


def _cleared(state: CloudState) -> CloudState:
    """ACTIVE with the pause, the counters and last_error cleared."""
    return replace(
        state,
        state=ACTIVE,
        paused_reason=None,
        last_error=None,
        last_error_at=None,
        consecutive_failures=0,
        retry_at=None,
    )


def _is_stale(state: CloudState, event: Event) -> bool:
    # A response to a request made with a key that has since been replaced (connect ran
    # meanwhile) must not pause the new key.
    return event.key_id is not None and state.key_id is not None and event.key_id != state.key_id


def _advanced(state: CloudState, event: Event) -> dict[str, Any]:
    if event.cursor is None or event.cursor <= state.cursor:
        return {}
    return {"cursor": event.cursor, "cursor_id": event.row_id}


def transition(state: CloudState, event: Event) -> CloudState:
    """The one place where the cloud state changes. Pure: returns the new state."""
    kind = event.kind
    if kind == CONNECTED:
        new = _cleared(state)
        return replace(
            new, machine_id=event.machine_id, workspace=event.workspace, key_id=event.key_id
        )
    if kind == DISCONNECT:
        return replace(_cleared(state), state=DISCONNECTED, key_id=None)
    if kind == BATCH_ACCEPTED:
        # Delivery is a fact whatever the state: the cursor moves even if a pause landed
        # while the batch was in flight (the pause itself stays).
        return replace(
            state,
            **_advanced(state, event),
            last_success=event.at,
            consecutive_failures=0,
            consecutive_quarantined=0,
            retry_at=None,
            accepted_total=state.accepted_total + event.accepted,
            duplicates_total=state.duplicates_total + event.duplicates,
        )
    if kind == ROW_QUARANTINED:
        entry = {"id": event.row_id, "reason": event.error, "at": event.at}
        kept = (*state.quarantined, entry)[-_MAX_QUARANTINE_KEPT:]
        return replace(
            state,
            **_advanced(state, event),
            quarantined=kept,
            consecutive_quarantined=state.consecutive_quarantined + 1,
        )
    if kind == TRANSIENT_ERROR:
        return replace(
            state,
            last_error=event.error,
            last_error_at=event.at,
            consecutive_failures=state.consecutive_failures + 1,
            retry_at=event.retry_at,
        )
    if kind == CURSOR_RESET:
        return replace(state, cursor=0, cursor_id=None)
    if kind == BATCH_REJECTED:
        # Splitting the batch is progress: no failure counted, no backoff.
        return replace(state, last_error=event.error, last_error_at=event.at)
    if kind in (UNAUTHORISED, FORBIDDEN):
        if _is_stale(state, event):
            return state
        reason = PAUSED_UNAUTHORISED if kind == UNAUTHORISED else PAUSED_FORBIDDEN
        return replace(
            state,
            state=PAUSED,
            key_id=state.key_id or event.key_id,
            paused_reason=reason,
            last_error=event.error,
            last_error_at=event.at,
            retry_at=None,
        )
    if kind == MANUAL_PAUSE:
        if state.state == PAUSED:
            return state  # keep the stronger reason: resume probes the key anyway
        if state.state == DISCONNECTED:
            return state
        return replace(state, state=PAUSED, paused_reason=PAUSED_MANUAL, retry_at=None)
    if kind == RESUMED:
        if _is_stale(state, event):
            return state
        new = _cleared(state)
        return replace(
            new,
            machine_id=event.machine_id or state.machine_id,
            workspace=event.workspace or state.workspace,
        )
    raise ValueError(f"unknown cloud event {kind!r}")


# --- the file -----------------------------------------------------------------------------


def _lock_path(home: Home) -> Path:
    return home.cloud_state.with_name(home.cloud_state.name + ".lock")


@contextlib.contextmanager
def _locked(home: Home) -> Iterator[None]:
    ensure_dir(home.root)  # 0700 from creation, like every home directory
    fd = os.open(_lock_path(home), os.O_RDWR | os.O_CREAT, SECRET_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read(home: Home) -> CloudState:
    path = home.cloud_state
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return CloudState()
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return CloudState.from_json(data)
    except (ValueError, TypeError) as exc:
        # Corrupt: report and rebuild. Losing the cursor only means re-sending rows, which
        # the server's idempotency by row id absorbs.
        get_logger().warning("cloud.state_rebuilt", path=str(path), error=str(exc))
        return CloudState()


def load_state(home: Home) -> CloudState:
    with _locked(home):
        return _read(home)


def _write(home: Home, state: CloudState) -> None:
    atomic_write(home.cloud_state, json.dumps(state.to_json(), indent=2) + "\n")


def update_state(home: Home, change: Callable[[CloudState], CloudState]) -> CloudState:
    """Read, change and write the state under the lock; returns the new state."""
    with _locked(home):
        old = _read(home)
        new = change(old)
        if new != old or not home.cloud_state.exists():
            _write(home, new)
        return new


def apply(home: Home, event: Event) -> CloudState:
    """Apply one event to the stored state (under the lock)."""
    return update_state(home, lambda s: transition(s, event))

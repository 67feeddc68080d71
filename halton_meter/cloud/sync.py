"""The sync loop: store rows -> POST /v1/requests/batch, at least once, in seq order.

Delivery: rows after the durable cursor (``cloud-state.json``) go out in batches of
``[cloud] batch_size``. The cursor moves only after the server's 200, so a crash or a
``kill -9`` mid-batch re-sends that batch on the next start; the server de-duplicates by row
id (and the ``Idempotency-Key``, a hash of the batch's row ids, is the same on the retry):
at-least-once here plus idempotency there is exactly once on the server.

Failures (classified in client.py, applied through state.transition):
- 401 / 403: pause (paused_unauthorised / paused_forbidden); the key is kept.
- 400 / 422: the batch is bisected until the refused row is alone; that row is quarantined
  (its id and reason kept in the state, shown by ``cloud status --json``), the rest flows.
- 5xx, 429, timeouts, DNS, refused connections, a placeholder base URL: ``last_error`` set,
  retried with exponential backoff and jitter (at least ``Retry-After`` when given).

The daemon runs :meth:`CloudSync.run_forever` in a thread; ``python -m halton_meter.cloud``
runs it alone.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from halton_meter.cloud import client as cc
from halton_meter.cloud import state as cs
from halton_meter.cloud.account import read_token
from halton_meter.cloud.rows import (
    PendingRow,
    cursor_is_stale,
    open_store,
    pending_count,
    read_pending,
)
from halton_meter.core.config import Config, PlaceholderBaseURL
from halton_meter.core.errors import HaltonError
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home

BASE_BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0
MAX_RETRY_AFTER_S = 3600.0
# A server that refuses everything (a bad deploy, a schema change) must not make us set every
# row aside: after this many rows refused alone with no batch accepted in between, the sync
# holds (last_error, backoff) instead of quarantining more, until a batch goes through.
MAX_CONSECUTIVE_QUARANTINE = 20
IDLE_INTERVAL_S = 5.0  # caught up: look for new rows this often
PAUSED_INTERVAL_S = 5.0  # paused or disconnected: re-read the state this often


def _log() -> Any:
    # Looked up per use: the program configures logging after importing this module.
    return get_logger("halton_meter.cloud")


def backoff_delay(
    failures: int, retry_after_s: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1 = the first).

    Exponential (1, 2, 4, ... capped at MAX_BACKOFF_S) with "equal jitter": a uniform draw
    in [half, full] of that step, so many machines do not retry in lockstep. A server's
    Retry-After is honoured as a minimum.
    """
    step = min(MAX_BACKOFF_S, BASE_BACKOFF_S * 2 ** max(0, failures - 1))
    delay = step / 2 + (rng or random).uniform(0, step / 2)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def idempotency_key(rows: list[PendingRow]) -> str:
    """Deterministic per batch: the same rows give the same key on every retry."""
    digest = hashlib.sha256("\n".join(r.id for r in rows).encode()).hexdigest()
    return f"hm-batch-{digest[:40]}"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass
class SyncResult:
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: list[str] = field(default_factory=list)
    skipped: str | None = None  # disconnected | paused | backoff | stopped
    error: str | None = None
    pending: int = 0
    next_delay_s: float = IDLE_INTERVAL_S

    @property
    def delivered(self) -> int:
        return self.accepted + self.duplicates


class _Stop(Exception):
    """A batch could not go: paused, backing off, or asked to stop."""


class CloudSync:
    """One sync loop for one home. ``sync_once`` is one pass; ``run_forever`` is the thread.

    Integration (the daemon)::

        stop = threading.Event()
        sync = CloudSync(home, config)
        thread = threading.Thread(target=sync.run_forever, args=(stop,),
                                  name="halton-cloud-sync", daemon=True)
        thread.start()
        ...
        stop.set(); thread.join(timeout=5)
    """

    def __init__(
        self,
        home: Home,
        config: Config,
        *,
        idle_interval_s: float = IDLE_INTERVAL_S,
        paused_interval_s: float = PAUSED_INTERVAL_S,
        rng: random.Random | None = None,
        http_timeout: httpx.Timeout | None = None,
    ) -> None:
        self.home = home
        self._http_timeout = http_timeout
        self.config = config
        self.idle_interval_s = idle_interval_s
        self.paused_interval_s = paused_interval_s
        self._rng = rng or random.Random()
        self._stop: threading.Event | None = None
        self._seen_paused: str | None = None  # the pause reason this loop last saw

    # -- the thread ------------------------------------------------------------------------

    def run_forever(self, stop_event: threading.Event) -> None:
        """Sync until ``stop_event`` is set. Never raises: a failed pass is logged and retried."""
        self._stop = stop_event
        _log().info("cloud.sync_started", base_url=self.config.cloud.base_url)
        while not stop_event.is_set():
            try:
                result = self.sync_once()
                delay = result.next_delay_s
            except Exception as exc:  # a bug or a broken store must not end the thread
                _log().error(
                    "cloud.sync_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True
                )
                delay = self.paused_interval_s
            stop_event.wait(max(0.05, delay))
        _log().info("cloud.sync_stopped")

    # -- one pass ------------------------------------------------------------------------

    def sync_once(self) -> SyncResult:
        """Send everything pending now (unless paused, disconnected or backing off)."""
        result = SyncResult()
        token = read_token(self.home)
        st = cs.load_state(self.home)
        if token is None:
            if st.state != cs.DISCONNECTED:
                cs.apply(self.home, cs.Event(cs.DISCONNECT, at=_iso(datetime.now(UTC))))
            return self._finish(result, skipped="disconnected", delay=self.paused_interval_s)
        if st.state == cs.PAUSED:
            self._seen_paused = st.paused_reason
            return self._finish(result, skipped="paused", delay=self.paused_interval_s)
        if self._seen_paused is not None:
            # `cloud resume` ran in another process: say so in the daemon's log too.
            _log().info("cloud.resumed", was=self._seen_paused)
            self._seen_paused = None
        retry_at = _parse_iso(st.retry_at)
        now = datetime.now(UTC)
        if retry_at is not None and retry_at > now:
            return self._finish(result, skipped="backoff", delay=(retry_at - now).total_seconds())
        try:
            client = cc.CloudClient(self.config, timeout=self._http_timeout)
        except PlaceholderBaseURL as exc:
            # Raised before any network: the message names the URL and the config path.
            self._transient(
                cc.Outcome(cc.TRANSIENT, error=str(exc), url=self.config.cloud.base_url), result
            )
            return self._finish(result)
        kid = cs.key_id(token)
        with client:
            try:
                st = self._ensure_identity(client, token, kid, st, result)
                self._drain(client, token, kid, result)
            except _Stop:
                pass
        return self._finish(result)

    def _finish(
        self, result: SyncResult, *, skipped: str | None = None, delay: float | None = None
    ) -> SyncResult:
        if skipped is not None:
            result.skipped = skipped
        st = cs.load_state(self.home)
        try:
            with open_store(self.home) as conn:
                result.pending = pending_count(conn, st.cursor)
        except HaltonError:
            result.pending = -1
        if delay is None:
            retry_at = _parse_iso(st.retry_at)
            now = datetime.now(UTC)
            if st.state == cs.PAUSED:
                delay = self.paused_interval_s
            elif retry_at is not None and retry_at > now:
                delay = (retry_at - now).total_seconds()
            elif result.pending > 0 and result.error is None:
                delay = 0.0  # stopped by a pause that has since cleared, or new rows
            else:
                delay = self.idle_interval_s
        result.next_delay_s = delay
        return result

    def _ensure_identity(
        self,
        client: cc.CloudClient,
        token: str,
        kid: str,
        st: cs.CloudState,
        result: SyncResult,
    ) -> cs.CloudState:
        """The batch body names the machine: learn it (whoami) if the state lacks it."""
        if st.machine_id and st.key_id == kid and st.state != cs.DISCONNECTED:
            return st
        outcome = client.whoami(token)
        if outcome.kind != cc.OK:
            self._failed(outcome, kid, result)
            raise _Stop
        data = outcome.data or {}
        return cs.apply(
            self.home,
            cs.Event(
                cs.CONNECTED,
                at=_iso(datetime.now(UTC)),
                machine_id=None if data.get("machine_id") is None else str(data["machine_id"]),
                workspace=None if data.get("workspace") is None else str(data["workspace"]),
                key_id=kid,
            ),
        )

    def _drain(self, client: cc.CloudClient, token: str, kid: str, result: SyncResult) -> None:
        batch_size = max(1, self.config.cloud.batch_size)
        while True:
            if self._stop is not None and self._stop.is_set():
                result.skipped = "stopped"
                return
            st = cs.load_state(self.home)  # a `cloud pause` from the CLI lands between batches
            if st.state != cs.ACTIVE or st.key_id != kid:
                result.skipped = "paused" if st.state == cs.PAUSED else "stopped"
                return
            with open_store(self.home) as conn:
                if cursor_is_stale(conn, st.cursor, st.cursor_id):
                    # A new database (the old one moved aside): its seqs restart at 1.
                    # Start over; rows the server already has come back as duplicates.
                    _log().warning("cloud.cursor_reset", old_cursor=st.cursor, db=str(self.home.db))
                    st = cs.apply(self.home, cs.Event(cs.CURSOR_RESET))
                rows = read_pending(
                    conn,
                    st.cursor,
                    batch_size,
                    home=self.home,
                    send_bodies=self.config.cloud.send_bodies,
                )
            if not rows:
                return
            self._deliver(client, token, kid, st.machine_id, rows, result)

    def _deliver(
        self,
        client: cc.CloudClient,
        token: str,
        kid: str,
        machine_id: str | None,
        rows: list[PendingRow],
        result: SyncResult,
    ) -> None:
        """Send ``rows``; on 400/422 bisect until the refused row is alone, then set it aside.

        Halves go left first, so every success extends the delivered prefix and the cursor
        can move to its last seq. Raises _Stop when the batch cannot go now.
        """
        body = json.dumps(
            {"machine_id": machine_id, "requests": [r.payload for r in rows]},
            separators=(",", ":"),
            default=str,
        ).encode()
        outcome = client.send_batch(token, body, idempotency_key(rows))
        now = _iso(datetime.now(UTC))
        if outcome.kind == cc.OK:
            data = outcome.data or {}
            accepted = _int(data.get("accepted"))
            duplicates = _int(data.get("duplicates"))
            cs.apply(
                self.home,
                cs.Event(
                    cs.BATCH_ACCEPTED,
                    at=now,
                    cursor=rows[-1].seq,
                    row_id=rows[-1].id,
                    accepted=accepted,
                    duplicates=duplicates,
                    key_id=kid,
                ),
            )
            result.batches += 1
            result.accepted += accepted
            result.duplicates += duplicates
            _log().info(
                "cloud.batch_sent", count=len(rows), accepted=accepted, duplicates=duplicates
            )
            return
        if outcome.kind == cc.REJECTED:
            if len(rows) == 1:
                reason = _rejection_reason(outcome)
                if cs.load_state(self.home).consecutive_quarantined >= MAX_CONSECUTIVE_QUARANTINE:
                    held = cc.Outcome(
                        cc.TRANSIENT,
                        outcome.status,
                        error=(
                            f"cloud.rejected: {MAX_CONSECUTIVE_QUARANTINE} rows in a row were "
                            f"refused and none accepted; holding row {rows[0].id} instead of "
                            f"setting it aside ({reason})"
                        ),
                        url=outcome.url,
                    )
                    self._transient(held, result)
                    raise _Stop
                cs.apply(
                    self.home,
                    cs.Event(
                        cs.ROW_QUARANTINED,
                        at=now,
                        row_id=rows[0].id,
                        error=reason,
                        cursor=rows[0].seq,
                    ),
                )
                result.quarantined.append(rows[0].id)
                _log().warning("cloud.row_quarantined", id=rows[0].id, reason=reason)
                return
            # last_error records the refusal; no backoff: splitting is progress.
            cs.apply(self.home, cs.Event(cs.BATCH_REJECTED, at=now, error=outcome.error))
            _log().warning(
                "cloud.batch_rejected", status=outcome.status, count=len(rows), error=outcome.error
            )
            mid = len(rows) // 2
            self._deliver(client, token, kid, machine_id, rows[:mid], result)
            self._deliver(client, token, kid, machine_id, rows[mid:], result)
            return
        self._failed(outcome, kid, result)
        raise _Stop

    def _failed(self, outcome: cc.Outcome, kid: str, result: SyncResult) -> None:
        now = _iso(datetime.now(UTC))
        if outcome.kind in (cc.UNAUTHORISED, cc.FORBIDDEN):
            kind = cs.UNAUTHORISED if outcome.kind == cc.UNAUTHORISED else cs.FORBIDDEN
            new = cs.apply(self.home, cs.Event(kind, at=now, error=outcome.error, key_id=kid))
            result.error = outcome.error
            if new.state == cs.PAUSED:
                _log().warning("cloud.paused", reason=new.paused_reason, error=outcome.error)
            return
        self._transient(outcome, result)

    def _transient(self, outcome: cc.Outcome, result: SyncResult) -> None:
        now = datetime.now(UTC)
        failures = cs.load_state(self.home).consecutive_failures + 1
        delay = backoff_delay(failures, outcome.retry_after_s, self._rng)
        cs.apply(
            self.home,
            cs.Event(
                cs.TRANSIENT_ERROR,
                at=_iso(now),
                error=outcome.error,
                retry_at=_iso(now + timedelta(seconds=delay)),
            ),
        )
        result.error = outcome.error
        _log().warning(
            "cloud.transport_error",
            url=outcome.url,
            error=outcome.error,
            status=outcome.status,
            retry_in_s=round(delay, 3),
        )


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def _rejection_reason(outcome: cc.Outcome) -> str:
    data = outcome.data or {}
    for key in ("error", "detail", "reason", "message"):
        if data.get(key):
            return f"HTTP {outcome.status}: {data[key]}"
    return outcome.error or f"HTTP {outcome.status}"

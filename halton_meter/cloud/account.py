"""What the `cloud` commands do: connect (pair or --token), pause, resume, status.

Texts follow the reference's "cloud status shows PAUSED" table. The CLI module only parses
and renders; every decision is here, so the daemon, tests and the CLI share it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from halton_meter.cloud import TOKEN_ENV
from halton_meter.cloud import client as cc
from halton_meter.cloud import state as cs
from halton_meter.cloud.rows import cursor_is_stale, open_store, pending_count
from halton_meter.core.config import Config, PlaceholderBaseURL, require_real_base_url
from halton_meter.core.errors import EXIT_FAILURE, HaltonError
from halton_meter.core.fsutil import write_secret
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home

# The reference's table: paused_reason -> (what it means, recover with).
PAUSE_TABLE: dict[str, tuple[str, str]] = {
    cs.PAUSED_UNAUTHORISED: (
        "A real HTTP 401 on /v1/requests/batch. The token is genuinely invalid.",
        "halton-meter cloud resume. If resume reports the token is still bad, then cloud "
        "connect to re-pair.",
    ),
    cs.PAUSED_FORBIDDEN: (
        "HTTP 403 — the workspace owner removed this machine.",
        "Ask the workspace owner to re-invite this machine, then halton-meter cloud resume. "
        "Do not cloud connect — that revokes the still-valid existing key.",
    ),
    cs.PAUSED_MANUAL: (
        "You ran halton-meter cloud pause.",
        "halton-meter cloud resume clears it.",
    ),
}
TRANSIENT_ROW = (
    "A transient error (5xx, timeout, DNS, 429, 422/400). Sync keeps retrying.",
    "No action needed. Check ~/.halton-meter/daemon.err.log if it persists.",
)

FORBIDDEN_CONNECT_WARNING = (
    "Warning: cloud sync is paused_forbidden: the workspace owner removed this machine, "
    "but its key is still valid.\n"
    "Do not cloud connect — that revokes the still-valid existing key. Ask the workspace "
    "owner to re-invite this machine, then run: halton-meter cloud resume\n"
    "Connecting now will REVOKE the still-valid existing key."
)
FORBIDDEN_CONNECT_PROMPT = "Revoke the still-valid existing key and connect anyway?"


class CloudCommandError(HaltonError):
    exit_code = EXIT_FAILURE


# --- the key file ------------------------------------------------------------------------


def read_token(home: Home) -> str | None:
    try:
        token = home.cloud_token.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return token or None


def write_token(home: Home, token: str) -> None:
    home.ensure()
    write_secret(home.cloud_token, token.strip() + "\n")  # 0600 from creation


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- connect ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectResult:
    machine_id: str | None
    workspace: str | None
    revoked_previous: bool
    revoke_error: str | None


def connect_needs_confirmation(home: Home) -> bool:
    """True when connecting would revoke a key that is still valid (paused_forbidden)."""
    state = cs.load_state(home)
    return (
        read_token(home) is not None
        and state.state == cs.PAUSED
        and state.paused_reason == cs.PAUSED_FORBIDDEN
    )


def connect(
    home: Home,
    config: Config,
    *,
    token: str | None = None,
    code: Callable[[], str] | str | None = None,
    machine_name: str | None = None,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    warn: Callable[[str], None] | None = None,
) -> ConnectResult:
    """Store a new key (pairing code or ``token``), then revoke the previous one.

    In paused_forbidden the stored key is still valid: without ``yes`` the user must confirm
    (``confirm``); otherwise nothing changes and CloudCommandError is raised.
    """
    require_real_base_url(config)  # placeholder: raise at once, before any prompt
    token = (token or os.environ.get(TOKEN_ENV) or "").strip() or None
    # Re-storing the key already held revokes nothing, so there is nothing to confirm.
    if connect_needs_confirmation(home) and token != read_token(home):
        if warn is not None:
            warn(FORBIDDEN_CONNECT_WARNING)
        if not yes and not (confirm is not None and confirm(FORBIDDEN_CONNECT_PROMPT)):
            raise CloudCommandError(
                "Not connected; the existing key was kept (nothing was revoked).\n"
                "Ask the workspace owner to re-invite this machine, then run: "
                "halton-meter cloud resume\n"
                "(To revoke it and connect anyway: halton-meter cloud connect --yes ...)"
            )
    old = read_token(home)
    with cc.CloudClient(config) as client:
        if token:
            new = token.strip()
        else:
            the_code = code() if callable(code) else code
            if not the_code:
                raise CloudCommandError(
                    "A pairing code is needed: halton-meter cloud connect --code CODE"
                )
            paired = client.pair(the_code.strip(), machine_name or socket.gethostname())
            if paired.kind != cc.OK or not isinstance((paired.data or {}).get("key"), str):
                raise CloudCommandError(_pair_failure(paired))
            new = str((paired.data or {})["key"])
        who = client.whoami(new)
        if who.kind != cc.OK:
            raise CloudCommandError(_whoami_failure(who, during="connect"))
        data = who.data or {}
        write_token(home, new)
        cs.apply(
            home,
            cs.Event(
                cs.CONNECTED,
                at=_now(),
                machine_id=_str_or_none(data.get("machine_id")),
                workspace=_str_or_none(data.get("workspace")),
                key_id=cs.key_id(new),
            ),
        )
        revoked, revoke_error = False, None
        if old and old != new:
            # The new key is stored first: we never end up holding no valid key.
            outcome = client.revoke(old)
            revoked = outcome.kind == cc.OK
            if not revoked:
                revoke_error = outcome.error or f"HTTP {outcome.status}"
                get_logger().warning("cloud.revoke_failed", error=revoke_error)
    get_logger().info("cloud.connected", machine_id=data.get("machine_id"))
    return ConnectResult(
        machine_id=_str_or_none(data.get("machine_id")),
        workspace=_str_or_none(data.get("workspace")),
        revoked_previous=revoked,
        revoke_error=revoke_error,
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _pair_failure(outcome: cc.Outcome) -> str:
    if outcome.kind in (cc.REJECTED, cc.UNAUTHORISED, cc.FORBIDDEN) or outcome.status == 404:
        return (
            f"Pairing failed: the code was refused (HTTP {outcome.status}). Get a fresh code "
            "from the workspace and run halton-meter cloud connect again."
        )
    return f"Pairing failed: {outcome.error or f'HTTP {outcome.status}'}"


def _whoami_failure(outcome: cc.Outcome, *, during: str) -> str:
    if outcome.kind == cc.UNAUTHORISED:
        if during == "resume":
            return (
                "The cloud key is genuinely revoked (HTTP 401 from GET /v1/daemon/whoami).\n"
                "Next step: halton-meter cloud connect   # re-pair this machine"
            )
        return "The cloud key was refused (HTTP 401 from GET /v1/daemon/whoami): check the token."
    if outcome.kind == cc.FORBIDDEN:
        return (
            "This machine is still removed from the workspace (HTTP 403 from GET "
            "/v1/daemon/whoami).\n"
            "Ask the workspace owner to re-invite this machine, then run: "
            "halton-meter cloud resume\n"
            "Do not cloud connect — that revokes the still-valid existing key."
        )
    return f"Could not check the key with the cloud: {outcome.error}"


# --- pause / resume -----------------------------------------------------------------------


def pause(home: Home) -> cs.CloudState:
    if read_token(home) is None:
        raise CloudCommandError("Not connected: nothing to pause (halton-meter cloud connect).")
    new = cs.apply(home, cs.Event(cs.MANUAL_PAUSE, at=_now()))
    get_logger().info("cloud.paused", reason=new.paused_reason)
    return new


def resume(home: Home, config: Config) -> cs.CloudState:
    """ONE whoami with the stored key. 200 clears the pause, counters and last_error."""
    token = read_token(home)
    if token is None:
        raise CloudCommandError("Not connected: run halton-meter cloud connect.")
    require_real_base_url(config)
    kid = cs.key_id(token)
    with cc.CloudClient(config) as client:
        who = client.whoami(token)
    if who.kind == cc.OK:
        data = who.data or {}
        new = cs.apply(
            home,
            cs.Event(
                cs.RESUMED,
                at=_now(),
                machine_id=_str_or_none(data.get("machine_id")),
                workspace=_str_or_none(data.get("workspace")),
                key_id=kid,
            ),
        )
        get_logger().info("cloud.resumed", machine_id=new.machine_id)
        return new
    if who.kind in (cc.UNAUTHORISED, cc.FORBIDDEN):
        kind = cs.UNAUTHORISED if who.kind == cc.UNAUTHORISED else cs.FORBIDDEN
        new = cs.apply(home, cs.Event(kind, at=_now(), error=who.error, key_id=kid))
        get_logger().warning("cloud.paused", reason=new.paused_reason)
    raise CloudCommandError(_whoami_failure(who, during="resume"))


# --- status -------------------------------------------------------------------------------


def status(home: Home, config: Config) -> dict[str, Any]:
    """The `cloud status --json` contract (plus extra keys; none renamed)."""
    st = cs.load_state(home)
    token = read_token(home)
    if token is None:
        state = cs.DISCONNECTED
    elif st.state == cs.DISCONNECTED:
        state = cs.ACTIVE  # a key without state (file lost): the sync re-establishes it
    else:
        state = st.state
    with open_store(home) as conn:
        stale = cursor_is_stale(conn, st.cursor, st.cursor_id)
        pending = pending_count(conn, 0 if stale else st.cursor)
    last_error = st.last_error
    try:
        require_real_base_url(config)
    except PlaceholderBaseURL as exc:
        last_error = str(exc)  # visible at once, even before the daemon has tried
    return {
        "state": state,
        "paused_reason": st.paused_reason if state == cs.PAUSED else None,
        "last_error": last_error,
        "last_error_at": st.last_error_at,
        "last_success": st.last_success,
        "pending": pending,
        "base_url": config.cloud.base_url,
        "retry_at": st.retry_at,
        "consecutive_failures": st.consecutive_failures,
        "machine_id": st.machine_id,
        "workspace": st.workspace,
        "accepted_total": st.accepted_total,
        "duplicates_total": st.duplicates_total,
        "quarantined": [{"id": q.get("id"), "reason": q.get("reason")} for q in st.quarantined],
    }

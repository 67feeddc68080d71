"""The status report: facts -> checks -> fold -> the `status --json` contract, and its
human rendering.

Contract: ``{"state", "reasons": [{"id", "message", ...}], "ports": {"edge", "daemon",
"api"}, "programs": {name: {"state", "pid", "uptime_s", "restarts"}}, "install_mode",
"unmetered"}``; extra keys: ``last_watchdog_action``, ``metering_errors``, ``source``, and
``severity``/``fix`` on each reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from halton_meter.core.paths import Home
from halton_meter.doctor.checks import run_client_checks, run_service_checks
from halton_meter.doctor.facts import (
    ProgramInfosFn,
    ServiceFacts,
    gather_client,
    gather_service,
)
from halton_meter.doctor.status import Reason, fold


def _programs(facts: ServiceFacts) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "state": info.state,
            "pid": info.pid,
            "uptime_s": None if info.uptime_s is None else round(info.uptime_s, 1),
            "restarts": info.restarts,
        }
        for name, info in sorted((facts.programs or {}).items())
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _document(facts: ServiceFacts, reasons: list[Reason], source: str) -> dict[str, Any]:
    action = facts.watchdog.get("last_action")
    return {
        "state": fold(reasons),
        "reasons": [r.as_dict() for r in reasons],
        "ports": facts.ports.as_dict(),
        "programs": _programs(facts),
        "install_mode": facts.mode,
        "unmetered": facts.unmetered,
        "last_watchdog_action": action if isinstance(action, dict) else None,
        "metering_errors": _int(facts.daemon_stats.get("metering_errors")),
        "source": source,
    }


def build_status(
    home: Home,
    *,
    client_env: Mapping[str, str] | None,
    program_infos: ProgramInfosFn | None = None,
    source: str = "local",
) -> dict[str, Any]:
    """The status document. ``client_env`` None: service checks only (the API's view)."""
    facts = gather_service(home, program_infos=program_infos)
    reasons = run_service_checks(facts)
    if client_env is not None:
        reasons += run_client_checks(gather_client(home, facts.ports.edge, client_env))
    return _document(facts, reasons, source)


def with_client_checks(
    home: Home, document: dict[str, Any], env: Mapping[str, str]
) -> dict[str, Any]:
    """Add the caller's client checks to a service-only document (from the API); re-fold."""
    edge_port = int(document["ports"]["edge"])
    reasons = [Reason.from_dict(r) for r in document.get("reasons", [])]
    reasons += run_client_checks(gather_client(home, edge_port, env))
    return {**document, "state": fold(reasons), "reasons": [r.as_dict() for r in reasons]}


# -- the human rendering -----------------------------------------------------------------------


def _uptime(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{s}s" if minutes else f"{s}s"


def _program_row(info: Mapping[str, Any] | None) -> str:
    if info is None:
        return "not running"
    details = []
    if info.get("pid"):
        details.append(f"pid {info['pid']}")
    up = _uptime(info.get("uptime_s"))
    if up:
        details.append(f"up {up}")
    if isinstance(info.get("restarts"), int):
        details.append(f"restarts {info['restarts']}")
    text = str(info.get("state"))
    return f"{text} ({', '.join(details)})" if details else text


def _action(action: Any) -> str:
    if not isinstance(action, Mapping):
        return "none"
    parts = [str(action.get(k)) for k in ("at", "program", "action") if action.get(k)]
    if action.get("cause"):
        parts.append(f"({action['cause']})")
    return " ".join(parts) or "none"


def render(document: Mapping[str, Any]) -> str:
    programs = document.get("programs") or {}
    ports = document.get("ports") or {}
    rows: list[tuple[str, str]] = [
        ("state", str(document.get("state"))),
        ("daemon", _program_row(programs.get("daemon"))),
    ]
    rows += [(name, _program_row(programs[name])) for name in sorted(programs) if name != "daemon"]
    rows += [
        ("proxy-port", str(ports.get("edge"))),
        ("daemon-port", str(ports.get("daemon"))),
        ("api-port", str(ports.get("api"))),
        ("install-mode", str(document.get("install_mode"))),
        ("unmetered", str(document.get("unmetered", 0))),
    ]
    if document.get("metering_errors") is not None:
        rows.append(("metering-errors", str(document["metering_errors"])))
    rows.append(("last-watchdog-action", _action(document.get("last_watchdog_action"))))
    width = max(len(key) for key, _ in rows) + 1
    lines = [f"{key + ':':<{width}} {value}" for key, value in rows]
    reasons = document.get("reasons") or []
    if reasons:
        lines.append("")
        for reason in reasons:
            lines.append(f"{reason.get('severity', '?')}: {reason['message']}  [{reason['id']}]")
            if reason.get("fix"):
                lines.append(f"  fix: {reason['fix']}")
    return "\n".join(lines)

"""The doctor report: every check as one row (ok, warn, fail, skip), with its fix.

Rows come from status's checks (the same functions, ``checks.SERVICE_CHECKS`` and
``CLIENT_CHECKS``: a row fails for a BROKEN reason, warns for an INCONSISTENT one), then
doctor's own (``deep_checks.DOCTOR_CHECKS``), then, with ``--curl``, the three hops of a
real request. The state folds status's reasons plus the findings that carry a severity,
with status's one :func:`~halton_meter.doctor.status.fold`; findings that are advice never
change it. Exit codes are status's: 0 HEALTHY, 1 INCONSISTENT, 2 BROKEN.

Contract: ``{"state", "checks": [{"id", "status": "ok|warn|fail|skip", "summary",
"fix"}]}``; extra keys: ``reasons`` (status reason ids behind a row), ``install_mode``,
``ports``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from halton_meter.core.paths import Home
from halton_meter.doctor.checks import CLIENT_CHECKS, SERVICE_CHECKS, check_name
from halton_meter.doctor.deep_checks import (
    DOCTOR_CHECKS,
    FAIL,
    OK,
    SKIP,
    WARN,
    Finding,
)
from halton_meter.doctor.deep_facts import DoctorFacts, gather_doctor
from halton_meter.doctor.facts import (
    ClientFacts,
    ProgramInfosFn,
    ServiceFacts,
    gather_client,
    gather_service,
)
from halton_meter.doctor.status import BROKEN, Reason, fold

# Status checks that only have something to say while supervisord answers.
_NEEDS_SUPERVISOR = {"programs", "respawn_loops", "recursion", "edge_accepts", "failing_open"}


def _ok_summary(name: str, service: ServiceFacts, client: ClientFacts) -> str:
    ports = service.ports
    texts: dict[str, Callable[[], str]] = {
        "config": lambda: (
            f"{service.home.config} is valid."
            if service.home.config.exists()
            else "no config.toml: the shipped defaults apply."
        ),
        "supervisor": lambda: "supervisord answers: the meter is running.",
        "programs": lambda: (
            "programs "
            + ", ".join(f"{n} {i.state}" for n, i in sorted((service.programs or {}).items()))
            + "."
        ),
        "respawn_loops": lambda: "no program is in a respawn loop.",
        "recursion": lambda: "the watchdog found no program routing through its own edge.",
        "foreign_ports": lambda: (
            f"ports edge {ports.edge}, daemon {ports.daemon}, api "
            f"{ports.api} are held by Halton Meter or free."
        ),
        "edge_accepts": lambda: f"the edge accepts on {service.listen_host}:{ports.edge}.",
        "failing_open": lambda: (
            f"the edge hands LLM hosts to the daemon ({service.unmetered} unmetered so far)."
        ),
        "sentinel": lambda: f"install-mode is {service.mode}.",
        "cloud_paused": lambda: "cloud sync is not paused.",
        "surface_drift": lambda: (
            f"the surfaces (rc blocks, session env, system proxy) match install-mode {client.mode}."
        ),
        "client_proxy_port": lambda: (
            f"this shell's proxy variables, if any, name the edge's port {client.edge_port}."
        ),
        "stale_ca": lambda: "every CA variable in this shell names a file that exists.",
    }
    return texts.get(name, lambda: "ok.")()


def _one_line(text: str) -> str:
    # A command line in a message (a listener's argv) may hold newlines: a row is one line.
    return " ".join(text.split())


def _reason_row(
    name: str, reasons: list[Reason], service: ServiceFacts, client: ClientFacts
) -> dict[str, Any]:
    if not reasons:
        if name in _NEEDS_SUPERVISOR and service.programs is None:
            status, summary = SKIP, "the meter is not running (see the supervisor row)."
        else:
            status, summary = OK, _ok_summary(name, service, client)
        return {"id": name, "status": status, "summary": summary, "fix": None, "reasons": []}
    fixes: list[str] = []
    for reason in reasons:
        if reason.fix and reason.fix not in fixes:
            fixes.append(reason.fix)
    return {
        "id": name,
        "status": FAIL if fold(reasons) == BROKEN else WARN,
        "summary": _one_line(" ".join(r.message for r in reasons)),
        "fix": "\n".join(fixes) or None,
        "reasons": [r.id for r in reasons],
    }


def _finding_row(row_id: str, finding: Finding) -> tuple[dict[str, Any], list[Reason]]:
    reasons = (
        [Reason(f"doctor.{row_id}", finding.summary, finding.severity, finding.fix)]
        if finding.severity
        else []
    )
    row = {
        "id": row_id,
        "status": finding.status,
        "summary": _one_line(finding.summary),
        "fix": finding.fix,
        "reasons": [r.id for r in reasons],
    }
    return row, reasons


def build_doctor(
    home: Home,
    env: Mapping[str, str],
    *,
    curl: bool = False,
    curl_url: str | None = None,
    program_infos: ProgramInfosFn | None = None,
) -> dict[str, Any]:
    service = gather_service(home, program_infos=program_infos)
    client = gather_client(home, service.ports.edge, env)
    facts: DoctorFacts = gather_doctor(service, client)
    rows: list[dict[str, Any]] = []
    reasons: list[Reason] = []
    for check in SERVICE_CHECKS:
        found = check(service)
        reasons += found
        rows.append(_reason_row(check_name(check), found, service, client))
    for client_check in CLIENT_CHECKS:
        found = client_check(client)
        reasons += found
        rows.append(_reason_row(check_name(client_check), found, service, client))
    for doctor_check in DOCTOR_CHECKS:
        row, found = _finding_row(check_name(doctor_check), doctor_check(facts))
        rows.append(row)
        reasons += found
    if curl:
        from halton_meter.doctor import curl as curl_probe

        url = curl_url or curl_probe.DEFAULT_URL
        probe = curl_probe.run_probe(home, service.ports.edge, url)
        for row_id, finding in curl_probe.hops(home, service.ports.edge, probe, url):
            row, found = _finding_row(row_id, finding)
            rows.append(row)
            reasons += found
    return {
        "state": fold(reasons),
        "checks": rows,
        "install_mode": service.mode,
        "ports": service.ports.as_dict(),
    }


# -- the human rendering -----------------------------------------------------------------------

_LABELS = {OK: "ok", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}


_COLORS = {OK: "green", WARN: "yellow", FAIL: "red", SKIP: "bright_black"}


def render(document: Mapping[str, Any], *, color: bool = False) -> str:
    """One line per row (ok, WARN, FAIL, skip), its fix under it; amber and red on a TTY."""
    import typer

    checks = document.get("checks") or []
    width = max((len(str(c["id"])) for c in checks), default=10)
    lines = [f"state: {document.get('state')}", ""]
    for check in checks:
        status = str(check["status"])
        label = f"{_LABELS.get(status, status):<4}"
        if color and status in _COLORS:
            label = typer.style(label, fg=_COLORS[status], bold=status in (WARN, FAIL))
        lines.append(f"{label}  {check['id']:<{width}}  {check['summary']}")
        if check.get("fix"):
            for i, fix in enumerate(str(check["fix"]).splitlines()):
                prefix = "fix: " if i == 0 else "     "
                lines.append(f"{'':<4}  {'':<{width}}  {prefix}{fix}")
    return "\n".join(lines)

"""The checks shared by `status` and `doctor`. Each reads facts and returns Reasons.

A check never decides the state (``status.fold`` does) and never touches the machine
(``facts`` gathered everything). Service checks see the home, its sockets and supervisord;
client checks see the environment and rc files of the shell that runs the command.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from halton_meter.doctor.facts import (
    CA_VARS,
    PROXY_VARS,
    ClientFacts,
    ServiceFacts,
)
from halton_meter.doctor.status import BROKEN, INCONSISTENT, Reason
from halton_meter.install.modes import LEGACY_MODES
from halton_meter.install.modes import MODES as KNOWN_MODES
from halton_meter.service.render import log_paths

START = "halton-meter start"
RESTART = "halton-meter stop && halton-meter start"
UNSET_ALL = (
    "unset CURL_CA_BUNDLE SSL_CERT_FILE REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS "
    "GIT_SSL_CAINFO AWS_CA_BUNDLE HTTPS_PROXY HTTP_PROXY NO_PROXY"
)
# The variables a stale session environment leaves behind (the reference's unsetenv list).
SESSION_VARS = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "CURL_CA_BUNDLE",
    "AWS_CA_BUNDLE",
)
# The watchdog's loop detector: LOOPING (stopping it) and COOLDOWN (waiting to retry).
_LOOPING = ("LOOPING", "COOLDOWN")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def clear_service_env_fix() -> str:
    """Shell commands that clear proxy/CA variables from the service manager's environment
    (what programs it starts inherit): launchctl's user domain on macOS, the systemd user
    manager on Linux."""
    from halton_meter.platform import is_macos

    if is_macos():
        return "; ".join(f"launchctl unsetenv {var}" for var in SESSION_VARS)
    return "systemctl --user unset-environment " + " ".join((*SESSION_VARS, "ALL_PROXY"))


def _supervised(facts: ServiceFacts) -> bool:
    return facts.programs is not None


# -- service checks ----------------------------------------------------------------------------


def check_config(facts: ServiceFacts) -> list[Reason]:
    if facts.config_error is None:
        return []
    first = facts.config_error.splitlines()[0]
    fix = next(
        (
            line[len("Fix: ") :]
            for line in facts.config_error.splitlines()
            if line.startswith("Fix: ")
        ),
        f"correct {facts.home.config}",
    )
    return [Reason("config_invalid", first, BROKEN, fix)]


def _runtime_state(facts: ServiceFacts) -> str:
    """runtime.toml's ``state``: "started" after `start`, "stopped" after `stop` ("" when
    the service side does not record it)."""
    return str(facts.runtime.get("state") or "").lower()


def _ever_started(facts: ServiceFacts) -> bool:
    # runtime.toml is written when ports are negotiated, i.e. by the first start.
    return bool(facts.runtime)


def _left_behind(facts: ServiceFacts) -> list[str]:
    """A clean supervisord shutdown removes its socket and pid file; a killed one leaves them."""
    return [str(p) for p in (facts.home.socket, facts.home.supervisord_pid) if p.exists()]


def check_supervisor(facts: ServiceFacts) -> list[Reason]:
    if _supervised(facts):
        return []
    state = _runtime_state(facts)
    leftovers = _left_behind(facts)
    if state != "stopped" and (state == "started" or leftovers):
        evidence = f" (left behind: {', '.join(leftovers)})" if leftovers else ""
        return [
            Reason(
                "supervisord_unreachable",
                f"supervisord does not answer on {facts.home.socket}, but the meter was started "
                f"and not stopped: it died or was killed{evidence}.",
                BROKEN,
                START,
            )
        ]
    if not _ever_started(facts):
        message = "Halton Meter is not running (never started in this home)."
    elif state == "stopped":
        message = "Halton Meter is not running: it was stopped with `halton-meter stop`."
    else:
        message = "Halton Meter is not running."
    return [Reason("not_running", message + " Nothing is being metered.", BROKEN, START)]


def _program_down(facts: ServiceFacts) -> list[str]:
    return [
        name for name, info in sorted((facts.programs or {}).items()) if info.state != "RUNNING"
    ]


def _err_log(facts: ServiceFacts, program: str) -> Path:
    try:
        return log_paths(facts.home, program)[1]
    except KeyError:
        return facts.home.root / f"{program}.err.log"


def check_programs(facts: ServiceFacts) -> list[Reason]:
    reasons = []
    for name in _program_down(facts):
        info = (facts.programs or {})[name]
        detail = f"state {info.state}"
        if info.exitstatus is not None and info.state in ("EXITED", "BACKOFF", "FATAL"):
            detail += f", exit status {info.exitstatus}"
        if info.spawnerr:
            detail += f", {info.spawnerr}"
        log = _err_log(facts, name)
        reasons.append(
            Reason(
                f"program_down.{name}",
                f"the {name} program is not running ({detail}).",
                BROKEN,
                f"tail -n 100 {log}; {RESTART}",
            )
        )
    return reasons


def check_respawn_loops(facts: ServiceFacts) -> list[Reason]:
    if not _supervised(facts):
        return []  # a stopped meter has no loop; the state file may be from the last run
    reasons = []
    programs = facts.watchdog.get("programs")
    for name, entry in sorted((programs if isinstance(programs, dict) else {}).items()):
        if not isinstance(entry, dict) or entry.get("loop_state") not in _LOOPING:
            continue
        cause = ""
        last = facts.watchdog.get("last_cause")
        if isinstance(last, dict) and last.get("program") == name and last.get("cause"):
            cause = f"; last cause: {last['cause']}"
        exits = entry.get("window_exits")
        count = f" ({exits} exits in the window)" if isinstance(exits, int) else ""
        reasons.append(
            Reason(
                f"respawn_loop.{name}",
                f"the {name} program is in a respawn loop{count}{cause}.",
                BROKEN,
                f"tail -n 100 {_err_log(facts, name)}   # fix the cause, then: {RESTART}",
            )
        )
    return reasons


def check_recursion(facts: ServiceFacts) -> list[Reason]:
    if not _supervised(facts):
        return []
    found = facts.watchdog.get("recursion")
    if not isinstance(found, list) or not found:
        return []
    parts = []
    for item in found:
        if isinstance(item, dict):
            parts.append(
                f"{item.get('program', '?')} (pid {item.get('pid', '?')}) has "
                f"{item.get('var', '?')}={item.get('value', '?')}"
            )
    return [
        Reason(
            "proxy_recursion",
            "proxy recursion: a program of the meter routes its own traffic through the edge: "
            + "; ".join(parts)
            + ".",
            BROKEN,
            clear_service_env_fix() + "; " + RESTART,
        )
    ]


def check_foreign_ports(facts: ServiceFacts) -> list[Reason]:
    if not _supervised(facts) and not _ever_started(facts):
        return []  # nothing negotiated yet: `start` picks free ports, these are only defaults
    reasons = []
    for role, port in facts.ports.as_dict().items():
        holders = facts.foreign.get(role) or []
        if not holders:
            continue
        who = ", ".join(h.describe() for h in holders)
        pids = " ".join(str(h.pid) for h in holders if h.pid)
        fix = f"lsof -nP -iTCP:{port} -sTCP:LISTEN"
        fix += f"; kill {pids}" if pids else ""
        fix += f"; {RESTART}"
        reasons.append(
            Reason(
                f"port_foreign.{role}",
                f"port {port} ({role}) is held by {who}, not by Halton Meter.",
                BROKEN,
                fix,
            )
        )
    return reasons


def check_edge_accepts(facts: ServiceFacts) -> list[Reason]:
    if not _supervised(facts) or facts.accepting.get("edge"):
        return []
    if "edge" in _program_down(facts):
        return []  # program_down.edge already says it
    port = facts.ports.edge
    return [
        Reason(
            "edge_unreachable",
            f"clients cannot connect to the edge: nothing accepts on {facts.listen_host}:{port}.",
            BROKEN,
            f"tail -n 100 {facts.home.edge_err_log}; {RESTART}",
        )
    ]


def _fail_open_since_daemon_start(facts: ServiceFacts) -> dict[str, Any] | None:
    """The edge's last fail-open, when it happened after the running daemon started and no
    hand-over has succeeded since: the count is rising while the daemon looks up."""
    last = facts.edge_stats.get("last_fail_open")
    if facts.edge_stats.get("daemon_reachable") is not False or not isinstance(last, dict):
        return None
    try:
        at = datetime.fromisoformat(str(last.get("at"))).timestamp()
    except ValueError:
        return None
    daemon = (facts.programs or {}).get("daemon")
    started = daemon.start if daemon is not None and daemon.start else None
    return last if started is None or at >= started else None


def check_failing_open(facts: ServiceFacts) -> list[Reason]:
    if not _supervised(facts) or not facts.accepting.get("edge"):
        return []
    daemon = (facts.programs or {}).get("daemon")
    fix = f"tail -n 100 {facts.home.daemon_err_log}; {RESTART}"
    if not facts.accepting.get("daemon") or (daemon is not None and daemon.state != "RUNNING"):
        return [
            Reason(
                "failing_open",
                f"the daemon does not accept on port {facts.ports.daemon}; the edge is failing "
                f"open: LLM traffic flows but is not metered ({facts.unmetered} unmetered so far).",
                INCONSISTENT,
                fix,
            )
        ]
    last = _fail_open_since_daemon_start(facts)
    if last is None:
        return []
    return [
        Reason(
            "failing_open",
            f"the edge could not hand {last.get('host')} to the daemon at {last.get('at')} "
            f"({last.get('reason')}) and has not since; it is failing open: LLM traffic is not "
            f"metered ({facts.unmetered} unmetered so far).",
            INCONSISTENT,
            f"tail -n 100 {facts.home.edge_err_log}; {fix}",
        )
    ]


def check_sentinel(facts: ServiceFacts) -> list[Reason]:
    value = facts.install_mode
    if value is None or value in KNOWN_MODES:
        return []
    if value in LEGACY_MODES:
        target = LEGACY_MODES[value]
        return [
            Reason(
                "install_mode_legacy",
                f"install-mode is `{value}`, a legacy value; init migrates it to `{target}`.",
                INCONSISTENT,
                f"halton-meter init --{target}   # or the mode you want",
            )
        ]
    return [
        Reason(
            "install_mode_unknown",
            f"install-mode sentinel {facts.home.install_mode} holds {value!r}, which is not a mode "
            f"({', '.join(KNOWN_MODES)}).",
            INCONSISTENT,
            "halton-meter init --apps   # or your preferred mode",
        )
    ]


_CLOUD_FIXES = {
    "paused_unauthorised": "halton-meter cloud resume   # if the token is still bad: halton-meter cloud connect",
    "paused_forbidden": "halton-meter cloud resume   # after the workspace owner re-invites this "
    "machine; do not cloud connect: it revokes the still-valid key",
    "paused_manual": "halton-meter cloud resume",
}


def check_cloud_paused(facts: ServiceFacts) -> list[Reason]:
    reason = facts.cloud_state.get("paused_reason")
    if not reason:
        return []
    return [
        Reason(
            "cloud_paused",
            f"cloud sync is paused ({reason}); rows stay local until it resumes.",
            INCONSISTENT,
            _CLOUD_FIXES.get(str(reason), "halton-meter cloud status --json"),
        )
    ]


SERVICE_CHECKS: tuple[Callable[[ServiceFacts], list[Reason]], ...] = (
    check_config,
    check_supervisor,
    check_programs,
    check_respawn_loops,
    check_recursion,
    check_foreign_ports,
    check_edge_accepts,
    check_failing_open,
    check_sentinel,
    check_cloud_paused,
)


# -- client checks -----------------------------------------------------------------------------


def loopback_port(url: str) -> int | None:
    """The port of a proxy URL on this machine; None for a remote proxy or garbage."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if host is None or host.lower() not in _LOOPBACK_NAMES:
        return None
    return port or 80


def check_client_proxy_port(client: ClientFacts) -> list[Reason]:
    """This shell's proxy variables name a loopback port the edge is not on (one reason)."""
    for name in (v for var in PROXY_VARS for v in (var, var.lower())):
        value = client.env.get(name)
        port = loopback_port(value) if value else None
        if port is None or port == client.edge_port:
            continue
        return [
            Reason(
                "client_port_stale",
                f"{name}={value} in this shell names port {port}, but the edge listens on "
                f"{client.edge_port}.",
                INCONSISTENT,
                "exec $SHELL   # or open a new terminal, or use halton-meter run <cmd>; if "
                f"new shells still show it: {_init_for(client.mode)}",
            )
        ]
    return []


def _init_for(mode: str) -> str:
    flag = {"apps": " --apps", "full": " --full"}.get(mode, "")
    return f"halton-meter init{flag}   # or the mode you want: rewrites every surface"


def check_surface_drift(client: ClientFacts) -> list[Reason]:
    return [
        Reason(f"mode_drift.{d.surface}", d.message + ".", INCONSISTENT, _init_for(client.mode))
        for d in client.drift
    ]


def check_stale_ca(client: ClientFacts) -> list[Reason]:
    stale = [
        f"{var}={client.env[var]}"
        for var in CA_VARS
        if client.env.get(var) and not Path(client.env[var]).expanduser().is_file()
    ]
    if not stale:
        return []
    return [
        Reason(
            "stale_ca_variable",
            "CA variables in this shell point at files that do not exist: "
            + ", ".join(stale)
            + ".",
            INCONSISTENT,
            f"{UNSET_ALL}   # then: halton-meter run <cmd>, or halton-meter init to rewrite the rc block",
        )
    ]


CLIENT_CHECKS: tuple[Callable[[ClientFacts], list[Reason]], ...] = (
    check_surface_drift,
    check_client_proxy_port,
    check_stale_ca,
)


def run_service_checks(facts: ServiceFacts) -> list[Reason]:
    return [reason for check in SERVICE_CHECKS for reason in check(facts)]


def run_client_checks(client: ClientFacts) -> list[Reason]:
    return [reason for check in CLIENT_CHECKS for reason in check(client)]


def check_name(check: Callable[..., object]) -> str:
    """A check's stable name (a `doctor` row id): its function name without ``check_``."""
    return check.__name__.removeprefix("check_")

"""The checks only `doctor` runs: one :class:`Finding` each, from :class:`DoctorFacts`.

Status's checks (``checks.py``) answer "is something wrong?"; these also give advice, so a
finding has a row status (ok, warn, fail, skip) and, separately, the severity it folds into
the state with. Most are advice (severity None: they never change the state, so `doctor`
and `status` agree on a machine where only advice applies); the few that are problems by
the design's definition fold like status's reasons: the bind guard refusing to start the
meter (BROKEN), a program of the meter routing through its own edge (BROKEN), a stale
session environment, an untrusted, replaced or invalid CA, a placeholder cloud URL while
connected (INCONSISTENT).

Every fix is a command line to paste; prose after it is a shell comment (``# ...``).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

from halton_meter.doctor.checks import RESTART, SESSION_VARS, clear_service_env_fix, loopback_port
from halton_meter.doctor.deep_facts import BODY_SKIP_EVENT, DoctorFacts
from halton_meter.doctor.status import BROKEN, INCONSISTENT
from halton_meter.install.modes import APPS, ENV_ONLY, FULL
from halton_meter.platform import is_macos

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
ROW_STATUSES = (OK, WARN, FAIL, SKIP)


@dataclass(frozen=True)
class Finding:
    status: str  # ok, warn, fail, skip
    summary: str
    fix: str | None = None
    severity: str | None = None  # INCONSISTENT or BROKEN when it changes the state

    def __post_init__(self) -> None:
        if self.status not in ROW_STATUSES:
            raise ValueError(f"a row status is one of {ROW_STATUSES}, not {self.status!r}")


def _q(path: object) -> str:
    return shlex.quote(str(path))


def _init(mode: str) -> str:
    flag = {APPS: " --apps", FULL: " --full"}.get(mode, "")
    return f"halton-meter init{flag}"


# -- the bind guard ------------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    from halton_meter.core.bindguard import is_loopback_host

    return is_loopback_host(host)


def check_loopback_guard(facts: DoctorFacts) -> Finding:
    config = facts.config
    bad = [
        f"{key}={host}"
        for key, host in (("listen_host", config.listen_host), ("api_host", config.api_host))
        if not _loopback(host)
    ]
    hits = facts.guard_hits
    seen = f" (seen in {', '.join(str(h.log) for h in hits)})" if hits else ""
    fix = (
        "sed -i.bak -E 's/^(listen_host|api_host)[[:space:]]*=.*/\\1 = \"127.0.0.1\"/' "
        f"{_q(config.path)} && halton-meter start"
        "   # a container or VPN that needs it: HALTON_METER_ALLOW_NON_LOOPBACK=1 halton-meter start"
    )
    if bad and facts.override_env:
        return Finding(
            WARN,
            f"{', '.join(bad)}: bind-guard override active (HALTON_METER_ALLOW_NON_LOOPBACK=1); "
            "the meter is reachable from non-loopback addresses.",
            fix,
        )
    if bad:
        return Finding(
            FAIL,
            f"{', '.join(bad)} is not a loopback address: the loopback bind guard refuses to "
            f"start the meter{seen}.",
            fix,
            BROKEN,
        )
    if hits:
        last = max(hits, key=lambda h: h.mtime)
        return Finding(
            OK,
            f"an earlier bind-guard refusal ({last.key}={last.host} in {last.log}); "
            "config.toml is loopback-only now.",
        )
    return Finding(OK, "listen_host and api_host are loopback; no bind-guard refusal in the logs.")


# -- cloud ---------------------------------------------------------------------------------------


def check_base_url(facts: DoctorFacts) -> Finding:
    from halton_meter.core.config import DEFAULT_BASE_URL, placeholder_tld

    url = facts.config.base_url
    tld = placeholder_tld(url) if url else None
    if not tld:
        return Finding(OK, f"[cloud] base_url is {url or DEFAULT_BASE_URL}.")
    connected = str(facts.service.cloud_state.get("state") or "disconnected") != "disconnected"
    return Finding(
        WARN,
        f"[cloud] base_url = {url} uses the placeholder TLD {tld}: it never resolves "
        "(cloud.transport_error on every retry).",
        f"{RESTART}   # the daemon heals it to {DEFAULT_BASE_URL} at start; or set "
        f'base_url = "{DEFAULT_BASE_URL}" in {facts.config.path}',
        INCONSISTENT if connected else None,
    )


def check_cloud_sync(facts: DoctorFacts) -> Finding:
    state = facts.service.cloud_state
    current = str(state.get("state") or "disconnected")
    if current == "disconnected" or not state:
        return Finding(OK, "not connected to Halton Cloud: rows stay on this machine.")
    if current == "paused":
        return Finding(SKIP, f"paused ({state.get('paused_reason')}): see the cloud_paused row.")
    error = state.get("last_error")
    if error:
        failures = state.get("consecutive_failures")
        count = f", {failures} failure(s) in a row" if isinstance(failures, int) else ""
        return Finding(
            OK,
            f"last_error {error} at {state.get('last_error_at')}{count}: transient (5xx, timeout, "
            "DNS, 429, 400/422); sync keeps retrying. No action needed.",
            f"tail -n 100 {_q(facts.home.daemon_err_log)}   # only if it persists",
        )
    return Finding(OK, f"syncing; last success {state.get('last_success') or 'not yet'}.")


# -- capture -------------------------------------------------------------------------------------


def check_body_gate(facts: DoctorFacts) -> Finding:
    log = facts.home.daemon_out_log
    count = facts.body_skips
    if not count:
        return Finding(OK, "no bodies skipped by the 4 MiB gate.")
    return Finding(
        OK,
        f"{count} bodies skipped (4 MiB gate) — not a problem: model, tokens, cost and "
        f"attribution were captured; only the raw bytes were not stored "
        f"(grep -c '{BODY_SKIP_EVENT}' {log}).",
    )


def _backfill(script: str, apply: bool) -> str:
    cmd = f"{_q(sys.executable)} -m halton_meter.scripts.{script}"
    return cmd + (" --apply" if apply else "")


def check_unattributed(facts: DoctorFacts) -> Finding:
    count = facts.misc_rows
    if count is None:
        return Finding(OK, "no database yet: nothing to attribute.")
    if isinstance(count, str):
        return Finding(
            SKIP,
            f"cannot read {facts.home.db}: {count}.",
            f"{_q(sys.executable)} -m halton_meter report   # says what is wrong with the store",
        )
    if count == 0:
        return Finding(OK, "every row is attributed to a project.")
    scripts = ("backfill_misc_attribution", "backfill_body_paths")
    dry = "; ".join(_backfill(s, False) for s in scripts)
    apply = " && ".join(_backfill(s, True) for s in scripts)
    return Finding(
        WARN,
        f"{count} unattributed row(s) (tier misc), e.g. the first request of a freshly "
        "launched IDE window.",
        f"{dry}   # dry-run; then apply: {apply}   # new rows: add a .haltonrc "
        "(project: <slug>) to the project root, or set HALTON_PROJECT=<slug> in the IDE's "
        "launch env",
    )


# -- modes and this shell ---------------------------------------------------------------------


def check_full_mode(facts: DoctorFacts) -> Finding:
    if facts.mode != FULL:
        return Finding(
            OK, f"install-mode {facts.mode}: the system proxy is off; browsers are not proxied."
        )
    return Finding(
        WARN,
        "--full mode: the system proxy sends browsers through the meter; Chrome rejects "
        "CT-pinned sites (NET::ERR_CERT_AUTHORITY_INVALID) and Node/Electron apps ignore it.",
        "halton-meter init --apps   # then restart the browser; emergency: halton-meter reset-proxy",
    )


def check_env_only(facts: DoctorFacts) -> Finding:
    if facts.mode == ENV_ONLY:
        return Finding(
            OK,
            "env-only: only `halton-meter run <cmd>` is metered; a bare command (claude, "
            "curl) is not.",
            "halton-meter run <cmd>   # or meter bare commands too: halton-meter init --apps",
        )
    return Finding(
        OK, f"install-mode {facts.mode}: commands in terminals opened after init are metered."
    )


def _our_proxy(facts: DoctorFacts) -> str | None:
    for name in ("HTTPS_PROXY", "https_proxy"):
        value = facts.client.env.get(name)
        if value and loopback_port(value) == facts.client.edge_port:
            return value
    return None


def _edge_url(facts: DoctorFacts) -> str:
    return f"http://127.0.0.1:{facts.client.edge_port}"


def check_new_terminal(facts: DoctorFacts) -> Finding:
    if facts.mode not in (APPS, FULL):
        return Finding(SKIP, "env-only: shells are not given the proxy (use halton-meter run).")
    env = facts.client.env
    proxy = env.get("HTTPS_PROXY") or env.get("https_proxy")
    if proxy and loopback_port(proxy) is not None:
        # Another loopback port is the client_proxy_port row's finding.
        return Finding(OK, f"this shell has HTTPS_PROXY={proxy}.")
    if proxy:
        return Finding(
            WARN,
            f"this shell's HTTPS_PROXY={proxy} is another proxy, not the meter's edge: "
            "its traffic is not metered.",
            f"exec {os.path.basename(env.get('SHELL') or 'bash') or 'bash'}   # a new shell "
            f"reads the rc block (HTTPS_PROXY={_edge_url(facts)}); or: halton-meter run <cmd>",
        )
    shell = os.path.basename(env.get("SHELL") or "bash") or "bash"
    ide = (
        "quit it completely (Cmd-Q) and relaunch from Spotlight or the Dock, not with `code .`"
        if is_macos()
        else "log out and back in (environment.d is read at login), then relaunch it"
    )
    return Finding(
        WARN,
        f"install-mode is {facts.mode} but this shell has no HTTPS_PROXY: it was opened before "
        "init (the rc block is read by new shells only); IDEs started before init lack it too.",
        f"exec {shell}   # or open a new terminal; echo $HTTPS_PROXY should print "
        f"{_edge_url(facts)}. An IDE started before init: {ide}",
    )


def check_git_cainfo(facts: DoctorFacts) -> Finding:
    env = facts.client.env
    ours = _our_proxy(facts) is not None or (env.get("SSL_CERT_FILE") == str(facts.home.ca_bundle))
    if not ours:
        return Finding(SKIP, "this shell does not route through the meter.")
    if env.get("GIT_SSL_CAINFO"):
        return Finding(OK, f"GIT_SSL_CAINFO={env['GIT_SSL_CAINFO']}: git trusts the meter's CA.")
    return Finding(
        WARN,
        "this shell has the meter's SSL_CERT_FILE/HTTPS_PROXY but no GIT_SSL_CAINFO: "
        "git push/fetch fail with 'unable to get local issuer certificate'.",
        f"{_init(facts.mode)}   # rewrites the rc block, then open a new terminal; right now: "
        'halton-meter run git push (or GIT_SSL_CAINFO="$SSL_CERT_FILE" git push)',
    )


# -- the session environment (the reference's stale launchctl env) ----------------------------


def _session_fix(facts: DoctorFacts) -> str:
    if is_macos():
        clear = "; ".join(f"launchctl unsetenv {var}" for var in SESSION_VARS)
    else:
        from halton_meter.platform.session_env import EnvironmentDSessionEnv

        clear = f"rm -f {_q(EnvironmentDSessionEnv.path())}; {clear_service_env_fix()}"
    return f"{clear}; halton-meter stop; halton-meter init; halton-meter status"


def check_session_env(facts: DoctorFacts) -> Finding:
    if facts.recursion:
        parts = "; ".join(
            f"{h.program} (pid {h.pid}) has {h.var}={h.value}" for h in facts.recursion
        )
        return Finding(
            FAIL,
            f"proxy loop: a program of the meter routes its own traffic through the edge: {parts}.",
            _session_fix(facts),
            BROKEN,
        )
    proxy = facts.session_env.get("HTTPS_PROXY")
    points = proxy is not None and loopback_port(proxy) == facts.client.edge_port
    if points and facts.mode == ENV_ONLY:
        return Finding(
            WARN,
            f"stale session environment: {facts.session_env_source} gives every app "
            f"HTTPS_PROXY={proxy} (our edge) but install-mode is env-only; a meter started "
            "from it would proxy through itself.",
            _session_fix(facts),
            INCONSISTENT,
        )
    if proxy:
        return Finding(
            OK,
            f"{facts.session_env_source} gives apps HTTPS_PROXY={proxy}; the meter's own "
            "programs do not inherit it.",
        )
    return Finding(
        OK, f"no proxy variables in the session environment ({facts.session_env_source})."
    )


# -- the CA ------------------------------------------------------------------------------------


def check_ca_trust(facts: DoctorFacts) -> Finding:
    trust = facts.trust
    cert = facts.home.ca_cert
    init = _init(facts.mode if facts.mode != ENV_ONLY else APPS)
    if facts.mode == ENV_ONLY:
        return Finding(
            SKIP,
            "env-only: the CA is not installed system-wide; clients get it through "
            "halton-meter run.",
        )
    if not trust.cert_exists:
        return Finding(
            FAIL, f"install-mode is {facts.mode} but the CA {cert} is missing.", init, INCONSISTENT
        )
    if trust.trusted:
        return Finding(OK, f"the CA is trusted ({trust.detail}).")
    if trust.replaced:
        fix = (
            f"security delete-certificate -c mitmproxy; {init}"
            if is_macos()
            else f"{init}   # replaces the old CA in the trust store"
        )
        return Finding(
            FAIL,
            f"the trust store holds a different (old) CA than {cert}: the CA was regenerated "
            f"and the new one is not trusted ({trust.detail}).",
            fix,
            INCONSISTENT,
        )
    verify = (
        f"   # then: security verify-cert -c {_q(cert)} -p ssl (exit 0 = trusted)"
        if is_macos()
        else ""
    )
    return Finding(
        FAIL,
        f"the CA {cert} is not trusted ({trust.detail}).",
        init + verify,
        INCONSISTENT,
    )


def check_ca_serial(facts: DoctorFacts) -> Finding:
    serial = facts.trust.serial
    if serial is None:
        return Finding(SKIP, "no CA yet: halton-meter start or init creates it.")
    if serial > 0:
        return Finding(OK, "the CA serial number is positive (RFC 5280).")
    ca_dir = facts.home.ca_dir
    try:
        owned = ca_dir.stat().st_uid == os.geteuid()
    except OSError:
        owned = True
    rm = f"{'' if owned else 'sudo '}rm -rf {_q(ca_dir)}"
    return Finding(
        WARN,
        f"the CA serial number is {serial} (RFC 5280 wants a positive one: "
        "CryptographyDeprecationWarning).",
        f"halton-meter stop; {rm}; {_init(facts.mode if facts.mode != ENV_ONLY else APPS)}"
        "   # or: halton-meter stop && halton-meter init --regenerate-ca",
        INCONSISTENT,
    )


# -- privileges and persistence -----------------------------------------------------------------


def check_elevation(facts: DoctorFacts) -> Finding:
    how = facts.elevation
    if how.how is not None:
        return Finding(OK, f"init can elevate without a prompt: {how.detail}.")
    return Finding(
        OK,
        f"--non-interactive cannot elevate: {how.detail} (interactive init asks for the password).",
        "sudo -v && halton-meter init --apps --non-interactive",
    )


def check_persistence(facts: DoctorFacts) -> Finding:
    view = facts.persistence
    if view.manager is None:
        return Finding(
            SKIP,
            f"{view.detail}: no service manager here, so nothing starts the meter after a "
            "reboot; start it with halton-meter start.",
        )
    reinstall = f"halton-meter uninstall && {_init(facts.mode if facts.mode != ENV_ONLY else APPS)}"
    if view.manager == "launchd":
        if not view.unit_ok:
            return Finding(WARN, f"no launchd agent for this home at {view.unit}.", reinstall)
        if not view.enabled:
            from halton_meter.service import launchd

            return Finding(
                WARN,
                f"{view.unit} is installed but not loaded: the meter will not start at login.",
                f"launchctl bootstrap {launchd.domain()} {_q(view.unit)}",
            )
        return Finding(OK, f"launchd agent {view.unit} is loaded: starts at login.")
    if not view.unit_ok:
        return Finding(
            WARN,
            f"no systemd user unit for this home at {view.unit}: the meter does not come back "
            "after a reboot.",
            reinstall,
        )
    if not view.enabled:
        return Finding(
            WARN,
            f"the systemd user unit is installed but not enabled ({view.detail}).",
            "systemctl --user enable halton-meter.service",
        )
    if not view.linger:
        user = facts.client.env.get("USER") or "$USER"
        return Finding(
            WARN,
            "the systemd user unit is enabled, but linger is off: it starts at login, not at boot.",
            f"loginctl enable-linger {user}",
        )
    return Finding(
        OK, f"systemd user unit {view.unit} is enabled and linger is on: starts at boot."
    )


DOCTOR_CHECKS: tuple[Callable[[DoctorFacts], Finding], ...] = (
    check_loopback_guard,
    check_session_env,
    check_ca_trust,
    check_ca_serial,
    check_base_url,
    check_cloud_sync,
    check_env_only,
    check_new_terminal,
    check_git_cainfo,
    check_full_mode,
    check_body_gate,
    check_unattributed,
    check_elevation,
    check_persistence,
)

"""What only `doctor` looks at, gathered once: logs, the store, the trust store, elevation,
persistence, the session environment and the programs' own environments.

Like ``facts``: read-only (doctor may run as often as a user likes), and never raises for a
surface it cannot read; each fact says what it could not see instead.
"""

from __future__ import annotations

import getpass
import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from halton_meter.core.paths import Home
from halton_meter.doctor.facts import ClientFacts, ServiceFacts
from halton_meter.platform import is_macos
from halton_meter.service import runner

BODY_SKIP_EVENT = "body_capture.skip"
GUARD_TEXT = "is not a loopback address"
_GUARD_RE = re.compile(r"(\w+)=(\S+) is not a loopback address")


@dataclass(frozen=True)
class GuardHit:
    """The last bind-guard refusal found in a program log."""

    log: Path
    key: str
    host: str
    mtime: float


@dataclass(frozen=True)
class ConfigView:
    path: Path
    listen_host: str
    api_host: str
    base_url: str
    loaded: bool  # False: config.toml does not parse (the config check says why)


@dataclass(frozen=True)
class TrustView:
    cert_exists: bool
    trusted: bool | None  # None: not looked at (no CA yet)
    detail: str
    replaced: bool  # the trust store holds another CA than the one in the CA directory
    serial: int | None


@dataclass(frozen=True)
class ElevationView:
    how: str | None  # "root", "sudo", "osascript"; None: no way without a prompt
    detail: str


@dataclass(frozen=True)
class PersistenceView:
    manager: str | None  # "systemd", "launchd"; None: no service manager here
    detail: str
    unit: Path | None = None
    unit_ok: bool = False  # installed, for this home
    enabled: bool = False  # systemd is-enabled / launchd loaded
    linger: bool | None = None  # Linux only


@dataclass(frozen=True)
class RecursionHit:
    program: str
    pid: int
    var: str
    value: str


@dataclass(frozen=True)
class DoctorFacts:
    service: ServiceFacts
    client: ClientFacts
    config: ConfigView
    guard_hits: list[GuardHit]
    body_skips: int
    misc_rows: int | str | None  # None: no database; str: why it cannot be read
    trust: TrustView
    elevation: ElevationView
    persistence: PersistenceView
    session_env: dict[str, str]
    session_env_source: str
    recursion: list[RecursionHit] = field(default_factory=list)
    override_env: bool = False  # HALTON_METER_ALLOW_NON_LOOPBACK=1 here or in the unit

    @property
    def home(self) -> Home:
        return self.service.home

    @property
    def mode(self) -> str:
        return self.client.mode


# -- logs -----------------------------------------------------------------------------------


def count_in_log(path: Path, needle: str) -> int:
    """`grep -c needle path`, streaming (logs can be large); 0 for a missing file."""
    count = 0
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if needle in line:
                    count += 1
    except OSError:
        return 0
    return count


def guard_hits(home: Home) -> list[GuardHit]:
    """The last bind-guard refusal in each program's error log."""
    from halton_meter.service.render import log_paths

    hits = []
    for program in ("daemon", "edge", "api"):
        log = log_paths(home, program)[1]
        last = None
        try:
            with log.open("r", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if GUARD_TEXT in line:
                        match = _GUARD_RE.search(line)
                        if match:
                            last = match
            mtime = log.stat().st_mtime
        except OSError:
            continue
        if last is not None:
            hits.append(GuardHit(log, last.group(1), last.group(2).rstrip("\\\",'"), mtime))
    return hits


# -- the store -------------------------------------------------------------------------------


def misc_rows(home: Home) -> int | str | None:
    """Rows with tier misc; None without a database; the error text when it cannot be read."""
    if not home.db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{home.db}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        return int(conn.execute("SELECT count(*) FROM requests WHERE tier = 'misc'").fetchone()[0])
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()


# -- config ----------------------------------------------------------------------------------


def config_view(home: Home) -> ConfigView:
    from halton_meter.core.config import ConfigError, load_config

    try:
        config = load_config(home)
    except ConfigError:
        return ConfigView(home.config, "127.0.0.1", "127.0.0.1", "", loaded=False)
    return ConfigView(
        config.path, config.listen_host, config.api_host, config.cloud.base_url, loaded=True
    )


# -- the CA and the trust store ----------------------------------------------------------------


def _pem_blocks(text: str) -> list[bytes]:
    return [
        m.group(0).encode()
        for m in re.finditer(
            r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.DOTALL
        )
    ]


def _same_cert(a: bytes, b: bytes) -> bool:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(a) == x509.load_pem_x509_certificate(b)
    except ValueError:
        return False


def _keychain_replaced(cert: Path) -> bool:
    """macOS: mitmproxy certificates in the keychain, none of them ours."""
    found = runner.run(["security", "find-certificate", "-a", "-c", "mitmproxy", "-p"])
    blocks = _pem_blocks(found.stdout) if found.ok else []
    ours = cert.read_bytes()
    return bool(blocks) and not any(_same_cert(block, ours) for block in blocks)


def _serial(cert: Path) -> int | None:
    from cryptography import x509

    try:
        return int(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)
    except (OSError, ValueError):
        return None


def trust_view(home: Home, mode: str) -> TrustView:
    from halton_meter.install.modes import ENV_ONLY
    from halton_meter.platform.trust import trust_store

    cert = home.ca_cert
    if not cert.is_file():
        return TrustView(False, None, f"{cert} does not exist", False, None)
    serial = _serial(cert)
    if mode == ENV_ONLY:
        return TrustView(True, None, "env-only: not installed system-wide", False, serial)
    result = trust_store().verify(cert)
    replaced = "different" in result.detail
    if not result.trusted and is_macos():
        replaced = _keychain_replaced(cert)
    return TrustView(True, result.trusted, result.detail, replaced, serial)


# -- elevation -------------------------------------------------------------------------------


def elevation_view() -> ElevationView:
    if os.geteuid() == 0:
        return ElevationView("root", "running as root")
    if runner.run(["sudo", "-n", "true"], timeout=5).ok:
        return ElevationView("sudo", "sudo credentials are cached (sudo -n true succeeds)")
    if is_macos() and runner.available("osascript"):
        return ElevationView("osascript", "osascript can show the admin dialog (interactive)")
    return ElevationView(None, "osascript unavailable and sudo not pre-cached")


# -- persistence across reboot -------------------------------------------------------------------


def persistence_view(home: Home) -> PersistenceView:
    return _launchd_view(home) if is_macos() else _systemd_view(home)


def _systemd_view(home: Home) -> PersistenceView:
    from halton_meter.service import systemd

    if not runner.run(["systemctl", "--user", "show-environment"], timeout=5).ok:
        return PersistenceView(None, "no systemd user manager answers (a container?)")
    path = systemd.unit_path()
    unit_ok = False
    if path.is_file():
        named = systemd.unit_home(path.read_text(encoding="utf-8", errors="replace"))
        unit_ok = named == (home.root if home.is_custom else None)
    enabled = runner.run(["systemctl", "--user", "is-enabled", systemd.UNIT_NAME], timeout=5)
    linger = runner.run(
        ["loginctl", "show-user", getpass.getuser(), "--property=Linger"], timeout=5
    )
    return PersistenceView(
        "systemd",
        enabled.stdout.strip() or enabled.stderr.strip(),
        unit=path,
        unit_ok=unit_ok,
        enabled=enabled.ok and enabled.stdout.strip() == "enabled",
        linger=linger.ok and linger.stdout.strip() == "Linger=yes",
    )


def _launchd_view(home: Home) -> PersistenceView:
    import plistlib

    from halton_meter.core.paths import HOME_ENV
    from halton_meter.service import launchd

    if not runner.available("launchctl"):
        return PersistenceView(None, "launchctl not found")
    path = launchd.plist_path()
    unit_ok = False
    try:
        doc = plistlib.loads(path.read_bytes())
        named = doc.get("EnvironmentVariables", {}).get(HOME_ENV)
        unit_ok = named == (str(home.root) if home.is_custom else None)
    except (OSError, ValueError, plistlib.InvalidFileException, AttributeError):
        unit_ok = False
    loaded = runner.run(["launchctl", "print", f"{launchd.domain()}/{launchd.LABEL}"], timeout=5)
    return PersistenceView(
        "launchd",
        "loaded" if loaded.ok else "not loaded",
        unit=path,
        unit_ok=unit_ok,
        enabled=loaded.ok,
    )


# -- the session environment and the programs' environments ------------------------------------


def session_env_view() -> tuple[dict[str, str], str]:
    """The GUI session environment and where it was read. Linux: the environment.d file,
    else the systemd user manager's environment (it keeps what environment.d gave it at
    login until the next login, or until `systemctl --user unset-environment`)."""
    from halton_meter.install.env import CLIENT_VARS
    from halton_meter.platform.session_env import EnvironmentDSessionEnv, session_env

    source = "launchctl user domain" if is_macos() else str(EnvironmentDSessionEnv.path())
    try:
        found = session_env().current()
    except OSError:
        found = {}
    if is_macos() or found.get("HTTPS_PROXY"):
        return found, source
    manager = runner.run(["systemctl", "--user", "show-environment"], timeout=5)
    if manager.ok:
        pairs = (line.split("=", 1) for line in manager.stdout.splitlines() if "=" in line)
        env = {k: v for k, v in pairs if k in CLIENT_VARS}
        if env.get("HTTPS_PROXY"):
            return env, "the systemd user manager (systemctl --user show-environment)"
    return found, source


def program_recursion(service: ServiceFacts) -> list[RecursionHit]:
    """Our running programs (and supervisord) whose environment sends traffic to our edge."""
    import psutil

    from halton_meter.doctor.checks import loopback_port
    from halton_meter.doctor.probes import read_pid_file
    from halton_meter.service.env import SCRUBBED

    pids = {name: info.pid for name, info in (service.programs or {}).items() if info.pid}
    supervisord = read_pid_file(service.home.supervisord_pid)
    if supervisord and service.programs is not None:
        pids["supervisord"] = supervisord
    hits = []
    for program, pid in sorted(pids.items()):
        try:
            env = psutil.Process(pid).environ()
        except (psutil.Error, OSError):
            continue  # another user's process, or gone: the watchdog's state still counts
        hits += [
            RecursionHit(program, pid, var, env[var])
            for var in SCRUBBED
            if var in env and loopback_port(env[var]) == service.ports.edge
        ]
    recorded = service.watchdog.get("recursion")
    if service.programs is not None and isinstance(recorded, list):
        seen = {(h.program, h.var) for h in hits}
        for item in recorded:
            if isinstance(item, dict) and (item.get("program"), item.get("var")) not in seen:
                hits.append(
                    RecursionHit(
                        str(item.get("program", "?")),
                        int(item.get("pid") or 0),
                        str(item.get("var", "?")),
                        str(item.get("value", "?")),
                    )
                )
    return hits


def _override_set(env: Mapping[str, str], persistence: PersistenceView) -> bool:
    from halton_meter.service.env import ALLOW_NON_LOOPBACK

    if env.get(ALLOW_NON_LOOPBACK) == "1":
        return True
    if persistence.unit is not None and persistence.unit.is_file():
        try:
            return f"{ALLOW_NON_LOOPBACK}" in persistence.unit.read_text(errors="replace")
        except OSError:
            return False
    return False


def gather_doctor(service: ServiceFacts, client: ClientFacts) -> DoctorFacts:
    home = service.home
    persistence = persistence_view(home)
    session, source = session_env_view()
    return DoctorFacts(
        service=service,
        client=client,
        config=config_view(home),
        guard_hits=guard_hits(home),
        body_skips=count_in_log(home.daemon_out_log, BODY_SKIP_EVENT),
        misc_rows=misc_rows(home),
        trust=trust_view(home, client.mode),
        elevation=elevation_view(),
        persistence=persistence,
        session_env=session,
        session_env_source=source,
        recursion=program_recursion(service),
        override_env=_override_set(client.env, persistence),
    )

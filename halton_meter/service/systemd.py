"""The systemd user unit ``halton-meter.service`` (Linux).

``loginctl enable-linger`` lets the unit start at boot without a login session.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from pathlib import Path

from halton_meter.core.fsutil import atomic_write, ensure_dir
from halton_meter.core.paths import HOME_ENV, Home
from halton_meter.service import runner
from halton_meter.service.env import ALLOW_NON_LOOPBACK, SCRUBBED

UNIT_NAME = "halton-meter.service"


def unit_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT_NAME


def supervise_argv(python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "halton_meter.service.supervise"]


def _quote(arg: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(home: Home, allow_non_loopback: bool = False, python: str | None = None) -> str:
    env_lines = []
    if home.is_custom:
        env_lines.append(f"Environment={_quote(f'{HOME_ENV}={home.root}')}")
    if allow_non_loopback:
        env_lines.append(f"Environment={ALLOW_NON_LOOPBACK}=1")
    lines = [
        "# Written by halton-meter. Runs the supervise entry (supervisord and its programs).",
        "[Unit]",
        "Description=Halton Meter: meters LLM API calls on this machine",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_quote(a) for a in supervise_argv(python)),
        "Restart=always",
        "RestartSec=2",
        # supervisord gets TERM and stops its programs itself; leftovers are killed after.
        "KillMode=mixed",
        "TimeoutStopSec=40",
        *env_lines,
        "UnsetEnvironment=" + " ".join(SCRUBBED),
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def unit_home(text: str) -> Path | None:
    """The HALTON_METER_HOME a rendered unit names (None: the default home)."""
    match = re.search(rf'^Environment="?{HOME_ENV}=(.*?)"?$', text, re.MULTILINE)
    return Path(match.group(1).replace('\\"', '"').replace("\\\\", "\\")) if match else None


def unit_allows_non_loopback(text: str) -> bool:
    return f"Environment={ALLOW_NON_LOOPBACK}=1" in text


def manages(home: Home) -> bool:
    """Is there an installed unit for THIS home and does ``systemctl --user`` work?"""
    path = unit_path()
    if not sys.platform.startswith("linux") or not path.exists():
        return False
    named = unit_home(path.read_text(encoding="utf-8"))
    expected = home.root if home.is_custom else None
    if named != expected:
        return False
    return runner.run(["systemctl", "--user", "show-environment"], timeout=5).ok


def install_unit(
    home: Home, allow_non_loopback: bool = False, enable_linger: bool = False
) -> list[runner.Result]:
    """Write the unit, daemon-reload, enable it (and linger when asked). Returns what ran."""
    path = unit_path()
    ensure_dir(path.parent, 0o755)
    atomic_write(path, render_unit(home, allow_non_loopback), mode=0o644)
    results = [
        runner.run(["systemctl", "--user", "daemon-reload"]),
        runner.run(["systemctl", "--user", "enable", UNIT_NAME]),
    ]
    if enable_linger:
        results.append(runner.run(["loginctl", "enable-linger", getpass.getuser()]))
    return results


def uninstall_unit() -> list[runner.Result]:
    results = [runner.run(["systemctl", "--user", "disable", "--now", UNIT_NAME])]
    unit_path().unlink(missing_ok=True)
    results.append(runner.run(["systemctl", "--user", "daemon-reload"]))
    return results


def linger_enabled() -> bool:
    result = runner.run(["loginctl", "show-user", getpass.getuser(), "--property=Linger"])
    return result.ok and result.stdout.strip() == "Linger=yes"


def start() -> runner.Result:
    return runner.run(["systemctl", "--user", "start", UNIT_NAME])


def stop() -> runner.Result:
    return runner.run(["systemctl", "--user", "stop", UNIT_NAME], timeout=60)

"""The launchd agent ``com.haltonlabs.meter`` (macOS), tested against stand-in executables."""

from __future__ import annotations

import os
import plistlib
import sys
from pathlib import Path

from halton_meter.core.fsutil import atomic_write, ensure_dir
from halton_meter.core.paths import HOME_ENV, Home
from halton_meter.service import runner
from halton_meter.service.env import ALLOW_NON_LOOPBACK
from halton_meter.service.systemd import supervise_argv

LABEL = "com.haltonlabs.meter"


def plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def domain() -> str:
    return f"gui/{os.getuid()}"


def render_plist(home: Home, allow_non_loopback: bool = False, python: str | None = None) -> bytes:
    env: dict[str, str] = {}
    if home.is_custom:
        env[HOME_ENV] = str(home.root)
    if allow_non_loopback:
        env[ALLOW_NON_LOOPBACK] = "1"
    doc = {
        "Label": LABEL,
        "ProgramArguments": supervise_argv(python),
        "RunAtLoad": True,
        "KeepAlive": True,
        "EnvironmentVariables": env,
        "WorkingDirectory": str(home.root),
        "StandardOutPath": str(home.supervisord_log),
        "StandardErrorPath": str(home.supervisord_log),
    }
    return plistlib.dumps(doc, sort_keys=False)


def manages(home: Home) -> bool:
    path = plist_path()
    if sys.platform != "darwin" or not path.exists():
        return False
    try:
        doc = plistlib.loads(path.read_bytes())
    except (plistlib.InvalidFileException, ValueError, OSError):
        return False
    named = doc.get("EnvironmentVariables", {}).get(HOME_ENV)
    return named == (str(home.root) if home.is_custom else None)


def install_unit(home: Home, allow_non_loopback: bool = False) -> list[runner.Result]:
    path = plist_path()
    ensure_dir(path.parent, 0o755)
    atomic_write(path, render_plist(home, allow_non_loopback), mode=0o644)
    # bootout first: bootstrap of an already-loaded label fails.
    return [
        runner.run(["launchctl", "bootout", f"{domain()}/{LABEL}"]),
        runner.run(["launchctl", "bootstrap", domain(), str(path)]),
    ]


def uninstall_unit() -> list[runner.Result]:
    results = [runner.run(["launchctl", "bootout", f"{domain()}/{LABEL}"])]
    plist_path().unlink(missing_ok=True)
    return results


def start() -> runner.Result:
    loaded = runner.run(["launchctl", "print", f"{domain()}/{LABEL}"])
    if not loaded.ok:
        boot = runner.run(["launchctl", "bootstrap", domain(), str(plist_path())])
        if not boot.ok:
            return boot
    return runner.run(["launchctl", "kickstart", f"{domain()}/{LABEL}"])


def stop() -> runner.Result:
    # bootout, not kill: KeepAlive would bring it straight back.
    return runner.run(["launchctl", "bootout", f"{domain()}/{LABEL}"], timeout=60)

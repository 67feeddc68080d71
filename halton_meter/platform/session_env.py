"""The GUI session environment: what apps launched from the desktop inherit.

macOS: the launchctl user domain (``launchctl setenv``). Linux: systemd ``environment.d``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from halton_meter.core.fsutil import atomic_write, ensure_dir
from halton_meter.install.env import SESSION_VARS
from halton_meter.platform import is_macos
from halton_meter.service import runner


class SessionEnv(Protocol):
    def apply(self, env: dict[str, str]) -> None: ...

    def clear(self) -> None: ...

    def current(self) -> dict[str, str]: ...


class LaunchctlSessionEnv:
    def apply(self, env: dict[str, str]) -> None:
        for key in SESSION_VARS:
            runner.run(["launchctl", "setenv", key, env[key]])

    def clear(self) -> None:
        for key in SESSION_VARS:
            runner.run(["launchctl", "unsetenv", key])

    def current(self) -> dict[str, str]:
        found = {}
        for key in SESSION_VARS:
            result = runner.run(["launchctl", "getenv", key])
            if result.ok and result.stdout.strip():
                found[key] = result.stdout.strip()
        return found


class EnvironmentDSessionEnv:
    """``~/.config/environment.d/60-halton-meter.conf``, read by systemd --user at login."""

    @staticmethod
    def path() -> Path:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "environment.d" / "60-halton-meter.conf"

    def apply(self, env: dict[str, str]) -> None:
        lines = ["# Written by halton-meter init; removed by halton-meter uninstall."]
        lines += [f"{key}={env[key]}" for key in SESSION_VARS]
        ensure_dir(self.path().parent, 0o755)
        atomic_write(self.path(), "\n".join(lines) + "\n", mode=0o644)

    def clear(self) -> None:
        self.path().unlink(missing_ok=True)

    def current(self) -> dict[str, str]:
        try:
            text = self.path().read_text()
        except OSError:
            return {}
        pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
        return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


def session_env() -> SessionEnv:
    return LaunchctlSessionEnv() if is_macos() else EnvironmentDSessionEnv()

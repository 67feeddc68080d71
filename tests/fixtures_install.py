"""An isolated user for install-mode tests: its own HOME, config dirs, trust anchors."""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from hmtest import clean_env

HM = [sys.executable, "-m", "halton_meter"]

# A stand-in records its argv (one line, NUL-separated args) and answers like the real tool.
_STANDIN = """#!/bin/sh
log="{log}"
printf '%s' "$(basename "$0")" >> "$log"
for a in "$@"; do printf '\\0%s' "$a" >> "$log"; done
printf '\\n' >> "$log"
{body}
"""

STANDIN_BODIES = {
    "launchctl": 'case "$1" in getenv) exit 1;; esac; exit 0',
    "networksetup": """case "$1" in
  -listallnetworkservices) printf 'An asterisk (*) denotes that a network service is disabled.\\nWi-Fi\\nThunderbolt Bridge\\n*Old VPN\\n';;
  -getsecurewebproxy) printf 'Enabled: No\\nServer: \\nPort: 0\\n';;
esac
exit 0""",
    "security": 'case "$1" in verify-cert) exit 0;; esac; exit 0',
    "osascript": "exit 0",
    "sudo": 'if [ "$1" = "-n" ] && [ "$2" = "true" ]; then exit 1; fi; exit 1',
    "systemctl": "exit 1",
    "gsettings": "exit 0",
}


@dataclass
class Machine:
    root: Path
    home: Path  # the user's HOME
    meter: Path  # HALTON_METER_HOME
    anchors: Path
    bin: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = clean_env(
            self.meter,
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            GSETTINGS_BACKEND="keyfile",
            HALTON_METER_CA_STORE_DIR=str(self.anchors),
            HALTON_METER_CA_UPDATE_CMD="true",
            HALTON_METER_PORTS_LOCK_DIR=str(self.root / "locks"),
            SHELL="/bin/bash",
        )
        env.update(extra)
        return env

    def standins(self, *names: str) -> dict[str, str]:
        """Put recording stand-ins for ``names`` first on PATH; returns the env to use."""
        self.bin.mkdir(exist_ok=True)
        for name in names:
            path = self.bin / name
            path.write_text(_STANDIN.format(log=self.log, body=STANDIN_BODIES[name]))
            path.chmod(path.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split("\0") for line in self.log.read_text().splitlines()]


def make_machine(tmp_path: Path) -> Machine:
    m = Machine(
        root=tmp_path,
        home=tmp_path / "user",
        meter=tmp_path / "user" / ".halton-meter-test",
        anchors=tmp_path / "anchors",
        bin=tmp_path / "bin",
        log=tmp_path / "calls.log",
    )
    m.home.mkdir()
    m.anchors.mkdir()
    return m

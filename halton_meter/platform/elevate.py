"""Elevation for the few steps that need it (system trust store)."""

from __future__ import annotations

import os
import shlex

from halton_meter.core.errors import EXIT_USAGE, HaltonError
from halton_meter.platform import is_macos
from halton_meter.service import runner


class CannotElevate(HaltonError):
    exit_code = EXIT_USAGE


NON_INTERACTIVE_MESSAGE = (
    "--non-interactive cannot elevate: osascript unavailable and sudo not pre-cached"
)


def elevated_argv(argv: list[str], *, interactive: bool, reason: str) -> list[str]:
    """``argv`` wrapped so it runs as root, or CannotElevate when that is impossible."""
    if os.geteuid() == 0:
        return argv
    if interactive and is_macos() and runner.available("osascript"):
        script = (
            f"do shell script {_applescript_quote(shlex.join(argv))} "
            f"with prompt {_applescript_quote(reason)} with administrator privileges"
        )
        return ["osascript", "-e", script]
    if runner.run(["sudo", "-n", "true"], timeout=5).ok:
        return ["sudo", "-n", *argv]
    if interactive and runner.available("sudo"):
        return ["sudo", *argv]
    raise CannotElevate(
        f"{NON_INTERACTIVE_MESSAGE}.\n"
        "Fix: run interactively (halton-meter init --apps), or cache sudo first: "
        "sudo -v && halton-meter init --apps --non-interactive"
    )


def _applescript_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

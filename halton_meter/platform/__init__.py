"""Adapters for OS surfaces: session environment, system proxy, trust store, elevation.

Each surface has a Linux and a macOS adapter behind the same small interface. macOS
adapters only run commands (launchctl, networksetup, security, osascript): tests put
stand-in executables on PATH and assert the exact command lines.
"""

from __future__ import annotations

import os
import sys

PLATFORM_ENV = "HALTON_METER_PLATFORM"  # tests: run the darwin adapters against stand-ins


def platform_name() -> str:
    return os.environ.get(PLATFORM_ENV) or ("darwin" if sys.platform == "darwin" else "linux")


def is_macos() -> bool:
    return platform_name() == "darwin"

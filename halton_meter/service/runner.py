"""Run the service manager's commands (systemctl, loginctl, launchctl).

One small seam: the executable is looked up on PATH at call time, so tests put stand-in
executables first on PATH that record their arguments; the exact command lines are the contract.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from halton_meter.core.logging import get_logger


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def available(name: str) -> bool:
    return shutil.which(name) is not None


def run(argv: list[str], timeout: float = 30.0) -> Result:
    """Run ``argv``; a missing executable is returncode 127, a timeout 124 (never raises)."""
    exe = shutil.which(argv[0])
    if exe is None:
        return Result(tuple(argv), 127, "", f"{argv[0]}: command not found")
    try:
        done = subprocess.run(
            [exe, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Result(tuple(argv), 124, "", f"{argv[0]}: timed out after {timeout}s")
    result = Result(tuple(argv), done.returncode, done.stdout, done.stderr)
    get_logger().debug("service.command", argv=argv, returncode=done.returncode)
    return result

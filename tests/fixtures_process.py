"""One of our programs (daemon, edge) run by a test as a real subprocess on a loopback port.

Shared by fixtures_daemon and fixtures_edge: logs go to ``<home>/<program>.out.log`` and
``.err.log`` like under supervisord; the process is stopped by its pid (SIGTERM, then SIGKILL
after a deadline).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from hmtest import REPO, port_open

STOP_TIMEOUT_S = 10.0


@dataclass
class ProcessHandle:
    port: int
    home: Path
    proc: subprocess.Popen[bytes]
    _stopped: bool = field(default=False, repr=False, kw_only=True)

    program: ClassVar[str] = "process"  # names the log files and the failure messages

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def out_log(self) -> Path:
        return self.home / f"{self.program}.out.log"

    @property
    def err_log(self) -> Path:
        return self.home / f"{self.program}.err.log"

    def failure_details(self) -> str:
        """What a failure message shows of the process's output."""
        return self.err_log.read_text(errors="replace") if self.err_log.exists() else ""

    def check_alive(self) -> None:
        rc = self.proc.poll()
        if rc is not None and not self._stopped:
            raise AssertionError(
                f"{self.program} exited with {rc}\n{self.failure_details()[-4000:]}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM by pid; SIGKILL after ``timeout``. Returns the exit code."""
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def wait_listening(self, timeout: float, ready: Callable[[], bool] = lambda: True) -> None:
        """Until the port accepts and ``ready()`` holds; stops the process and fails if it
        exits or the deadline passes first."""
        deadline = time.monotonic() + timeout
        try:
            while not (ready() and port_open(self.port)):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.program} did not listen within {timeout}s:\n"
                        f"{self.failure_details()}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise


def spawn(
    program: str, args: Sequence[str], home: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``args`` from the repo with its output appended to the home's program logs."""
    with (
        open(home / f"{program}.out.log", "ab") as out,
        open(home / f"{program}.err.log", "ab") as err,
    ):
        return subprocess.Popen(
            list(args),
            cwd=REPO,
            env=dict(env),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )

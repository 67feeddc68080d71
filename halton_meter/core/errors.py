"""Exit codes, documented in the README. `status` and `doctor` use 0/1/2 (monitoring)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: bind guard refused, start did not come up
EXIT_USAGE = 2  # bad command-line use; also `init --non-interactive` that cannot elevate
EXIT_BAD_FILE = 3  # a file we read is invalid: config.toml, a corrupt db.sqlite
EXIT_PORTS = 4  # port negotiation failed: pinned port busy, or the whole range busy


class HaltonError(Exception):
    """An error with a message for the user and an exit code; never shown as a traceback."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

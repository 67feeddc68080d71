"""structlog, configured in one place.

Program logs: one JSON object a line (plus a ``msg`` field rendering ``event k=v ...`` so the
reference's ``grep 'addon.body_capture.skip reason=body_too_large'`` finds it); a readable
rendering on a terminal. Info and below go to stdout, warnings and above to stderr: under
supervisord that is ``<program>.out.log`` and ``<program>.err.log``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import structlog

_STDERR_LEVELS = {"warning", "warn", "error", "critical", "exception", "fatal"}
_configured_program: str | None = None


class _SplitLogger:
    """Writes each rendered line to stdout or stderr by level."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err

    def _write(self, level: str, line: str) -> None:
        stream = (self._err or sys.stderr) if level in _STDERR_LEVELS else (self._out or sys.stdout)
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe must never take a program down

    def __getattr__(self, level: str) -> Any:
        return lambda line: self._write(level, line)


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


def _add_msg(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    skip = {"event", "timestamp", "level", "msg", "emitter"}
    if event_dict.get("program") == event_dict.get("emitter"):
        skip.add("program")  # the emitting program itself: not part of the event's context
    parts = [str(event_dict.get("event", ""))]
    parts += [f"{k}={_logfmt_value(v)}" for k, v in event_dict.items() if k not in skip]
    event_dict["msg"] = " ".join(parts)
    return event_dict


def configure_logging(
    program: str, *, level: int = logging.INFO, json_lines: bool | None = None
) -> None:
    """Configure structlog for ``program`` (edge, daemon, api, watchdog, cli)."""
    global _configured_program
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: Any
    if json_lines:
        # An event about another program (watchdog.respawn_loop program=daemon) keeps its own
        # `program`; `emitter` always names the program that wrote the line.
        shared.insert(0, lambda _l, _m, ed: {"program": program, **ed, "emitter": program})
        renderer = [_add_msg, structlog.processors.JSONRenderer(default=str)]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: _SplitLogger(),
        cache_logger_on_first_use=False,
    )
    _configured_program = program


def get_logger(name: str | None = None) -> Any:
    if _configured_program is None:
        configure_logging("cli", level=logging.WARNING)
    return structlog.get_logger(name) if name else structlog.get_logger()

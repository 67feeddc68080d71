"""Fail-open wrapper for addon hooks: a metering bug must never break the user's traffic."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from halton_meter.daemon._log import log
from halton_meter.daemon.stats import Stats

F = TypeVar("F", bound=Callable[..., Any])


def fail_open(event: str) -> Callable[[F], F]:
    """Catch, count (``metering_errors``) and log any exception a hook raises.

    The addon instance must carry a ``stats: Stats`` attribute.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:
                stats: Stats | None = getattr(self, "stats", None)
                if stats is not None:
                    stats.metering_errors += 1
                log.error(event, error=repr(exc), hook=fn.__name__, exc_info=True)
                return None

        return hook  # type: ignore[return-value]

    return wrap

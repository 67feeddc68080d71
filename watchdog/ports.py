"""Port renegotiation when a foreign process takes one of our ports.

A program that cannot bind exits and loops; when the port's holder is not one of this
home's processes, the watchdog renegotiates (port_alloc), persists the new tuple, and restarts
what depends on it: the edge forwards to the daemon, so a new daemon port restarts the edge too.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from halton_meter.core.config import Config
from halton_meter.core.paths import HOME_ENV, Home
from halton_meter.core.runtime import PROGRAMS, EffectivePorts
from halton_meter.port_alloc import PortHolder, negotiate, port_holder

DEPENDENTS = {"daemon": ("edge",), "edge": (), "api": ()}


def foreign_holder(home: Home, port: int) -> PortHolder | None:
    """Who holds ``port`` when it is not this home's process; None when free or ours."""
    holder = port_holder(port)
    if holder is None:
        return None
    if holder.pid is not None:
        try:
            if psutil.Process(holder.pid).environ().get(HOME_ENV) == str(home.root):
                return None
        except (psutil.Error, OSError):
            pass
    return holder


@dataclass(frozen=True)
class Renegotiation:
    old: EffectivePorts
    new: EffectivePorts
    restart: tuple[str, ...]


def to_restart(old: EffectivePorts, new: EffectivePorts) -> tuple[str, ...]:
    changed = [p for p in PROGRAMS if getattr(old, p) != getattr(new, p)]
    ordered: list[str] = []
    for program in changed:
        for name in (program, *DEPENDENTS[program]):
            if name not in ordered:
                ordered.append(name)
    # the daemon before the edge that forwards to it
    return tuple(sorted(ordered, key=("daemon", "edge", "api").index))


def renegotiate(home: Home, config: Config, old: EffectivePorts) -> Renegotiation:
    """Choose and persist new ports (raises port_alloc.PortError when none is free)."""
    new = negotiate(home, config)
    return Renegotiation(old, new, to_restart(old, new))

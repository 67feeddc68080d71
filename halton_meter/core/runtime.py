"""Runtime state: what runs now. `effective-ports.json` and `runtime.toml`.

They are the single source of truth every command reads. Both are written atomically
(temp file, fsync, rename). A missing, truncated or corrupt file is detected, logged
(``state.corrupt``), moved aside, and rebuilt from the other file or the defaults;
never a traceback.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from halton_meter import __version__
from halton_meter.core.fsutil import atomic_write
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home

PROGRAMS = ("edge", "daemon", "api")
DEFAULT_PORTS = {"edge": 8081, "daemon": 8090, "api": 8765}
STATE_VERSION = 1


@dataclass(frozen=True)
class EffectivePorts:
    edge: int = DEFAULT_PORTS["edge"]
    daemon: int = DEFAULT_PORTS["daemon"]
    api: int = DEFAULT_PORTS["api"]

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Any) -> EffectivePorts:
        """Validated construction: raises ValueError on anything that is not a port."""
        if not isinstance(data, dict):
            raise ValueError("not a table of ports")
        values: dict[str, int] = {}
        for name in PROGRAMS:
            port = data.get(name)
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"{name} port is {port!r}")
            values[name] = port
        return cls(**values)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _quarantine(path: Path, error: str) -> None:
    """Keep the bad bytes for a bug report; never delete what we cannot read."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    try:
        path.replace(aside)
    except OSError:
        aside = path
    get_logger().warning("state.corrupt", file=str(path), error=error, moved_to=str(aside))


def _read_state(path: Path) -> bytes | None:
    """The file's bytes; None when it is missing or unreadable (logged: never fatal)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        get_logger().warning("state.unreadable", file=str(path), error=str(exc))
        return None


def _read_ports_json(path: Path) -> EffectivePorts | None:
    raw = _read_state(path)
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
        return EffectivePorts.from_mapping(data.get("ports", data))
    except (ValueError, AttributeError) as exc:
        _quarantine(path, f"{type(exc).__name__}: {exc}")
        return None


def _read_runtime(path: Path) -> dict[str, Any] | None:
    raw = _read_state(path)
    if raw is None:
        return None
    try:
        data = tomlkit.parse(raw.decode("utf-8")).unwrap()
        EffectivePorts.from_mapping(data.get("ports"))
        return data
    except (tomlkit.exceptions.TOMLKitError, ValueError, AttributeError) as exc:
        _quarantine(path, f"{type(exc).__name__}: {exc}")
        return None


def save_effective_ports(home: Home, ports: EffectivePorts, **runtime: Any) -> None:
    """Persist the chosen tuple to both state files (and any runtime fields given)."""
    home.ensure()
    doc = {
        "version": STATE_VERSION,
        "ports": ports.as_dict(),
        "updated_at": _now(),
    }
    atomic_write(home.effective_ports, json.dumps(doc, indent=2) + "\n", mode=0o644)
    update_runtime(home, ports=ports.as_dict(), **runtime)


def load_effective_ports(home: Home | None = None) -> EffectivePorts:
    """The ports that run now. Rebuilt (and re-persisted) when a state file is bad."""
    home = home or Home.resolve()
    from_json = _read_ports_json(home.effective_ports)
    runtime = _read_runtime(home.runtime)
    from_runtime = EffectivePorts.from_mapping(runtime["ports"]) if runtime else None
    ports = from_json or from_runtime
    if ports is None:
        return EffectivePorts()  # nothing negotiated yet: the defaults, not persisted
    if from_json is None or from_runtime is None or from_json != from_runtime:
        # One file lost or drifted: effective-ports.json wins when it is valid.
        get_logger().info("state.rebuilt", ports=ports.as_dict())
        save_effective_ports(home, ports)
    return ports


def read_runtime(home: Home | None = None) -> dict[str, Any]:
    home = home or Home.resolve()
    return _read_runtime(home.runtime) or {}


def update_runtime(home: Home, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into runtime.toml (None removes a key) and write it atomically."""
    data = _read_runtime(home.runtime) or {}
    for key, value in fields.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    data["version"] = __version__
    data.setdefault("ports", EffectivePorts().as_dict())
    data["updated_at"] = _now()
    doc = tomlkit.document()
    doc.add(tomlkit.comment("What runs now. Written by halton-meter; do not edit."))
    for key in sorted(data):
        doc[key] = data[key]
    home.ensure()
    atomic_write(home.runtime, tomlkit.dumps(doc), mode=0o644)
    return data

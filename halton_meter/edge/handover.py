"""What the edge tells the daemon about a connection: two headers on its CONNECT.

``X-Halton-Attribution: base64url(JSON {"tool", "project", "tier", "pid", "cwd"})`` (with
``=`` padding; `decode_attribution` accepts it with or without) and ``X-Halton-Edge: <marker>``,
where the marker is ``<home id>.<edge pid>.<nonce>``. The home id lets any edge of the same home
recognise its own marker coming back (a proxy loop) while two homes never collide.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from typing import Any

from halton_meter.core.paths import Home

ATTRIBUTION_HEADER = "X-Halton-Attribution"
EDGE_HEADER = "X-Halton-Edge"
_FIELDS = ("tool", "project", "tier", "pid", "cwd")


def home_id(home: Home) -> str:
    return hashlib.sha256(os.path.realpath(home.root).encode()).hexdigest()[:12]


def new_marker(home: Home) -> str:
    return f"{home_id(home)}.{os.getpid()}.{secrets.token_hex(4)}"


def marker_home(marker: str) -> str:
    return marker.strip().split(".", 1)[0]


def encode_attribution(tool: str, project: str, tier: str, pid: int | None, cwd: str | None) -> str:
    payload = {"tool": tool, "project": project, "tier": tier, "pid": pid, "cwd": cwd}
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_attribution(value: str | None) -> dict[str, Any] | None:
    """The hand-over as a dict with exactly the five fields, or None when absent/malformed."""
    if not value:
        return None
    text = value.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = {}
    for key in ("tool", "project", "tier", "cwd"):
        v = data.get(key)
        out[key] = v if isinstance(v, str) and v else None
    pid = data.get("pid")
    out["pid"] = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    out["tool"] = out["tool"] or "other"
    out["project"] = out["project"] or "misc"
    out["tier"] = out["tier"] or "misc"
    return {k: out[k] for k in _FIELDS}

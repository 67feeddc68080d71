"""Proxy variables never reach supervisord or its programs.

Children inherit supervisord's environment and ``environment=`` cannot unset a variable,
so the supervise entry scrubs its own environment before it execs supervisord.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
SCRUBBED = tuple(v for name in PROXY_VARS for v in (name, name.lower()))
ALLOW_NON_LOOPBACK = "HALTON_METER_ALLOW_NON_LOOPBACK"


def scrubbed(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without any proxy variable (both cases)."""
    return {k: v for k, v in env.items() if k not in SCRUBBED}


def scrub(env: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove proxy variables from ``env`` (default: this process); returns what went."""
    target = os.environ if env is None else env
    gone = [k for k in SCRUBBED if k in target]
    for key in gone:
        del target[key]
    return gone

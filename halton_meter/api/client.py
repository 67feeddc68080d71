"""Talk to the local API from the CLI (`status`, `report`), or learn that it is not running.

Never through a proxy: the user's shell may point ``HTTPS_PROXY`` at our own edge, so the
client ignores the environment (``trust_env=False``). A refused connection, a timeout, a 401
(another home's API on this port, or a rotated token) or any non-JSON answer all mean "not
our API right now": callers fall back to reading the files themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from halton_meter.api.token import read_api_token
from halton_meter.core.bindguard import url_host
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home

TIMEOUT_S = 2.0

Params = Mapping[str, str | int | float | bool | None]


def api_base_url(home: Home) -> str | None:
    """``http://host:port`` of this home's API, from config and the effective ports."""
    from halton_meter.core.config import ConfigError, load_config
    from halton_meter.core.runtime import load_effective_ports

    try:
        host = load_config(home).api_host
    except ConfigError:
        return None
    return f"http://{url_host(host)}:{load_effective_ports(home).api}"


def api_get(
    home: Home, path: str, params: Params | None = None, *, timeout: float = TIMEOUT_S
) -> dict[str, Any] | None:
    """GET ``path`` from this home's API with its token; the JSON object, or None."""
    token = read_api_token(home)
    base = api_base_url(home)
    if token is None or base is None:
        return None
    clean = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        with httpx.Client(base_url=base, trust_env=False, timeout=timeout) as client:
            response = client.get(path, params=clean, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        get_logger().debug("api.client.unreachable", url=base + path, error=type(exc).__name__)
        return None
    if response.status_code != 200:
        get_logger().debug("api.client.refused", url=base + path, status=response.status_code)
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None

"""The client variables, from the effective ports and the combined bundle.

The nine of the reference, plus two that make clients the nine do not reach use the meter:
``CODEX_CA_CERTIFICATE`` (Codex CLI's rustls trusts it first) and ``NODE_OPTIONS``, which
preloads ``node/preload.cjs`` so Node's built-in fetch (Node 20/22 ignore ``HTTPS_PROXY``)
goes through the edge. The preload is copied into the home: a variable must never point
into a virtualenv that can be deleted, and a missing ``--require`` file stops every node
process from starting.
"""

from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from halton_meter.core.bindguard import url_host
from halton_meter.core.config import Config
from halton_meter.core.fsutil import atomic_write
from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts

PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")
CA_VARS = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
)
NODE_CA_VAR = "NODE_EXTRA_CA_CERTS"
CODEX_CA_VAR = "CODEX_CA_CERTIFICATE"
NODE_OPTIONS_VAR = "NODE_OPTIONS"
CLIENT_VARS = (*PROXY_VARS, *CA_VARS, NODE_CA_VAR, CODEX_CA_VAR, NODE_OPTIONS_VAR)
# What the GUI session environment gets: not NODE_OPTIONS, which cannot be guarded there
# (a home deleted without `uninstall` would leave every desktop-launched node unable to start).
SESSION_VARS = tuple(v for v in CLIENT_VARS if v != NODE_OPTIONS_VAR)
NO_PROXY = "localhost,127.0.0.1,::1"
NODE_PRELOAD_NAME = "node-preload.cjs"


def node_preload_path(home: Home) -> Path:
    return home.root / NODE_PRELOAD_NAME


def node_require_option(home: Home) -> str:
    """``--require <preload>``, quoted the way Node parses NODE_OPTIONS when needed."""
    path = str(node_preload_path(home))
    if any(ch.isspace() or ch in "\\\"'" for ch in path):
        path = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"--require {path}"


def merge_node_options(existing: str | None, ours: str) -> str:
    """The user's NODE_OPTIONS with ours appended, once."""
    kept = (existing or "").strip()
    if ours in kept:
        return kept
    return f"{kept} {ours}" if kept else ours


def ensure_node_preload(home: Home) -> Path:
    """Copy the packaged preload into the home when it is missing or out of date."""
    target = node_preload_path(home)
    data = resources.files("halton_meter.install").joinpath("node", "preload.cjs").read_bytes()
    with contextlib.suppress(FileNotFoundError):
        if target.read_bytes() == data:
            return target
    atomic_write(target, data, mode=0o644)  # node runs as the user; readable is enough
    return target


def edge_url(config: Config, ports: EffectivePorts, project: str | None = None) -> str:
    host = url_host(config.listen_host)
    # A project in the proxy URL's user part is attribution tier "explicit" at the edge.
    user = f"{quote(project, safe='')}@" if project else ""
    return f"http://{user}{host}:{ports.edge}"


def client_env(
    home: Home, config: Config, ports: EffectivePorts, project: str | None = None
) -> dict[str, str]:
    """The variables `run` injects and `init --apps` exports.

    Writes the Node preload into the home when the home exists (every caller that hands
    these variables to clients passes through here), so ``NODE_OPTIONS`` never names a
    missing file.
    """
    proxy = edge_url(config, ports, project)
    env = {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "NO_PROXY": NO_PROXY}
    env.update({var: str(home.ca_bundle) for var in CA_VARS})
    env[NODE_CA_VAR] = str(home.ca_cert)
    env[CODEX_CA_VAR] = str(home.ca_bundle)
    if home.root.is_dir():
        with contextlib.suppress(OSError):
            ensure_node_preload(home)
    env[NODE_OPTIONS_VAR] = node_require_option(home)
    return env


def node_require_option_path(option: str) -> str:
    """The preload path inside a ``--require <path>`` option (quotes removed)."""
    path = option.removeprefix("--require ").strip()
    if path.startswith('"') and path.endswith('"'):
        path = path[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return path

"""The nine client variables, from the effective ports and the combined bundle."""

from __future__ import annotations

from urllib.parse import quote

from halton_meter.core.config import Config
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
CLIENT_VARS = (*PROXY_VARS, *CA_VARS, NODE_CA_VAR)
NO_PROXY = "localhost,127.0.0.1,::1"


def edge_url(config: Config, ports: EffectivePorts, project: str | None = None) -> str:
    host = (
        config.listen_host if config.listen_host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
    )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    # A project in the proxy URL's user part is attribution tier "explicit" at the edge.
    user = f"{quote(project, safe='')}@" if project else ""
    return f"http://{user}{host}:{ports.edge}"


def client_env(
    home: Home, config: Config, ports: EffectivePorts, project: str | None = None
) -> dict[str, str]:
    """The nine variables `run` injects and `init --apps` exports."""
    proxy = edge_url(config, ports, project)
    env = {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "NO_PROXY": NO_PROXY}
    env.update({var: str(home.ca_bundle) for var in CA_VARS})
    env[NODE_CA_VAR] = str(home.ca_cert)
    return env

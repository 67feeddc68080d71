"""Interception policy data: which hosts are LLM providers (and so get TLS-intercepted).

Everything else is tunnelled byte for byte, so this list errs on the side of exact names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_EXACT_HOSTS: dict[str, str] = {
    "api.anthropic.com": "anthropic",
    "api.openai.com": "openai",
    "generativelanguage.googleapis.com": "gemini",
    "openrouter.ai": "openrouter",
}

_AZURE_SUFFIXES = (
    ".openai.azure.com",
    ".cognitiveservices.azure.com",
    ".services.ai.azure.com",
)

# bedrock-runtime.us-east-1.amazonaws.com, bedrock-runtime-fips.us-gov-west-1.amazonaws.com
_BEDROCK_RE = re.compile(r"^bedrock-runtime(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com$")


def normalize_host(host: str) -> str:
    """Lower-case, without port, brackets or a trailing dot."""
    h = host.strip().lower()
    if h.startswith("["):  # [::1]:443
        end = h.find("]")
        return h[1:end] if end != -1 else h[1:]
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _matches_extra(host: str, pattern: str) -> bool:
    p = normalize_host(pattern)
    if not p:
        return False
    if p.startswith("*."):
        # "*.example.org" covers sub.example.org at any depth, not example.org itself
        return host.endswith(p[1:]) and len(host) > len(p) - 1
    return host == p


def provider_for_host(host: str, extra_hosts: Iterable[str] = ()) -> str | None:
    """The provider name for a host we intercept, else None.

    Known providers win over a configured extra host with the same name.
    """
    h = normalize_host(host)
    if not h:
        return None
    known = _EXACT_HOSTS.get(h)
    if known is not None:
        return known
    if any(h.endswith(suffix) and len(h) > len(suffix) for suffix in _AZURE_SUFFIXES):
        return "azure"
    if _BEDROCK_RE.match(h):
        return "bedrock"
    if any(_matches_extra(h, pattern) for pattern in extra_hosts):
        return "compatible"
    return None


def is_intercepted(host: str, extra_hosts: Iterable[str] = ()) -> bool:
    return provider_for_host(host, extra_hosts) is not None

"""The API's local bearer token: a 0600 file in the home, created once.

Other local users can reach loopback ports too, so everything but ``/health`` needs this
token. The file is born 0600 (``write_secret``: a private temp file renamed into place), so no
reader ever sees it with a wider mode or half written.
"""

from __future__ import annotations

import secrets

from halton_meter.core.fsutil import ensure_dir, write_secret
from halton_meter.core.paths import Home

_TOKEN_BYTES = 32


def read_api_token(home: Home) -> str | None:
    """The token on disk, or None when there is none (or it is empty or unreadable)."""
    try:
        token = home.api_token.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def ensure_api_token(home: Home) -> str:
    """Return the home's API token, creating the file (0600 from its first byte) if missing."""
    existing = read_api_token(home)
    if existing:
        return existing
    ensure_dir(home.root)
    write_secret(home.api_token, secrets.token_urlsafe(_TOKEN_BYTES) + "\n")
    # Two creators racing both rename into place; the last one wins, so return what is on
    # disk rather than what we generated.
    token = read_api_token(home)
    if token is None:  # pragma: no cover - we just wrote it
        raise OSError(f"cannot read back {home.api_token}")
    return token

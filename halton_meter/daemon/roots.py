"""The upstream trust bundle: certifi's roots plus `[upstream] ca_bundle`.

mitmproxy's ``ssl_verify_upstream_trusted_ca`` replaces its default roots instead of adding
to them, so an extra CA (a corporate gateway, the test simulator) means a combined file,
rebuilt at every start (and on a config reload).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi

from halton_meter.core.errors import EXIT_BAD_FILE, HaltonError
from halton_meter.core.fsutil import atomic_write
from halton_meter.core.paths import Home


def upstream_bundle_bytes(home: Home, extra: Path | None) -> bytes:
    """The combined roots; raises HaltonError (naming the key and the fix) if unreadable."""
    parts = [Path(certifi.where()).read_bytes().rstrip(b"\n")]
    if extra is not None:
        try:
            parts.append(extra.expanduser().read_bytes().rstrip(b"\n"))
        except OSError as exc:
            raise HaltonError(
                f"[upstream] ca_bundle = {str(extra)!r} in {home.config} cannot be read "
                f"({exc.strerror or exc}). Fix the path or remove the key.",
                exit_code=EXIT_BAD_FILE,
            ) from exc
    bundle = b"\n".join(parts) + b"\n"
    try:
        # What mitmproxy would fail on at every handshake: find out now, name the file.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=bundle.decode("ascii", "replace")
        )
    except (ssl.SSLError, ValueError) as exc:
        raise HaltonError(
            f"[upstream] ca_bundle = {str(extra)!r} in {home.config} is not a PEM "
            f"certificate file ({exc}). Fix the file or remove the key.",
            exit_code=EXIT_BAD_FILE,
        ) from exc
    return bundle


def build_upstream_bundle(home: Home, extra: Path | None) -> Path:
    atomic_write(home.upstream_bundle, upstream_bundle_bytes(home, extra), mode=0o644)
    return home.upstream_bundle

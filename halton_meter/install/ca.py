"""The meter's CA (mitmproxy's) and the combined bundle clients are pointed at.

The CA lives in the CA directory (``~/.mitmproxy``, or inside the home when
``HALTON_METER_HOME`` is set). The combined bundle (system roots plus our CA) lives in the
home, so the CA variables never point into a virtualenv that can be deleted.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from halton_meter.core.fsutil import atomic_write, ensure_dir
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home

_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, BSD
)


@dataclass(frozen=True)
class CAInfo:
    cert: Path
    serial: int
    subject: str


def ensure_ca(home: Home) -> CAInfo:
    """Create the CA with mitmproxy's CertStore if missing (private key 0600 from birth)."""
    from mitmproxy.certs import CertStore  # heavy import: only where a CA is needed

    ensure_dir(home.ca_dir)
    if not home.ca_cert.exists():
        CertStore.from_store(home.ca_dir, "mitmproxy", 2048)
        get_logger().info("ca.created", path=str(home.ca_cert))
    return read_ca(home)


def read_ca(home: Home) -> CAInfo:
    cert = x509.load_pem_x509_certificate(home.ca_cert.read_bytes())
    return CAInfo(home.ca_cert, cert.serial_number, cert.subject.rfc4514_string())


def ca_serial_is_valid(home: Home) -> bool:
    """RFC 5280 wants a positive serial; very old mitmproxy CAs had zero or negative ones."""
    return read_ca(home).serial > 0


def regenerate_ca(home: Home) -> CAInfo:
    """Move the old CA files aside and create a fresh CA (clients must trust it again)."""
    for path in home.ca_dir.glob("mitmproxy-*"):
        path.replace(path.with_name(path.name + ".old"))
    get_logger().warning("ca.regenerated", dir=str(home.ca_dir))
    return ensure_ca(home)


def system_roots() -> Path | None:
    candidates = [ssl.get_default_verify_paths().cafile, *_SYSTEM_BUNDLES]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _certifi_roots() -> Path | None:
    try:
        import certifi
    except ImportError:
        return None
    return Path(certifi.where())


def build_combined_bundle(home: Home) -> Path:
    """System roots (certifi where the system has none) plus our CA, in the home."""
    info = ensure_ca(home)
    roots = system_roots() or _certifi_roots()
    parts = [roots.read_bytes().rstrip() + b"\n"] if roots else []
    parts.append(b"# Halton Meter CA\n" + info.cert.read_bytes().rstrip() + b"\n")
    new = b"".join(parts)
    if not home.ca_bundle.exists() or home.ca_bundle.read_bytes() != new:
        home.ensure()
        atomic_write(home.ca_bundle, new, mode=0o644)  # public roots: readable by tools
    return home.ca_bundle

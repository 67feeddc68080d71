"""A throwaway test CA and one leaf certificate for the provider simulator.

``ensure_sim_certs(directory, extra_names)`` writes, or reuses when still valid:

- ``ca.pem``        the CA certificate (give it to the meter as ``[upstream] ca_bundle``,
                    to curl as ``--cacert``, to httpx as ``verify=``)
- ``ca-key.pem``    the CA private key (0600)
- ``leaf.pem``      the server certificate, SANs cover every provider host the simulator plays
- ``leaf-key.pem``  its private key (0600)

EC P-256 keys: generation takes milliseconds, so tests can make fresh ones freely.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from halton_meter.core.fsutil import atomic_write, ensure_dir, write_secret

# Hosts the simulator answers for out of the box. Wildcards cover exactly one label, so Bedrock
# regions get their own `*.<region>.amazonaws.com` entries (`*.amazonaws.com` alone would not
# match `bedrock-runtime.us-east-1.amazonaws.com`).
DEFAULT_DNS_NAMES: tuple[str, ...] = (
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
    "openrouter.ai",
    "*.openai.azure.com",
    "*.cognitiveservices.azure.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
    "bedrock-runtime.us-west-2.amazonaws.com",
    "*.us-east-1.amazonaws.com",
    "*.us-east-2.amazonaws.com",
    "*.us-west-2.amazonaws.com",
    "*.eu-west-1.amazonaws.com",
    "*.eu-central-1.amazonaws.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.deepseek.com",
    "api.together.xyz",
    "api.x.ai",
    "example.com",
    "www.example.com",
    "*.example.com",
    "example.org",
    "example.net",
    "localhost",
)
DEFAULT_IP_ADDRESSES: tuple[str, ...] = ("127.0.0.1", "::1")

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
LEAF_CERT = "leaf.pem"
LEAF_KEY = "leaf-key.pem"

_MIN_REMAINING = _dt.timedelta(days=7)


@dataclass(frozen=True)
class SimCerts:
    """Paths of the simulator's certificate files."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    leaf_cert: Path
    leaf_key: Path


def ensure_sim_certs(directory: Path, extra_names: Iterable[str] = ()) -> SimCerts:
    """Create (or reuse when valid) the CA and a leaf covering the defaults plus ``extra_names``.

    ``extra_names`` may hold DNS names (wildcards allowed) and IP addresses.
    """
    ensure_dir(directory)
    certs = SimCerts(
        directory=directory,
        ca_cert=directory / CA_CERT,
        ca_key=directory / CA_KEY,
        leaf_cert=directory / LEAF_CERT,
        leaf_key=directory / LEAF_KEY,
    )
    dns, ips = _split_names([*DEFAULT_DNS_NAMES, *DEFAULT_IP_ADDRESSES, *extra_names])
    ca = _load_valid_ca(certs)
    if ca is None:
        ca = _write_ca(certs)
    if not _leaf_is_valid(certs, ca[0], dns, ips):
        _write_leaf(certs, ca, dns, ips)
    return certs


def _split_names(
    names: Iterable[str],
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        try:
            ip = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if name not in dns:
                dns.append(name)
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _still_valid(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > _MIN_REMAINING


def _load_valid_ca(certs: SimCerts) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _still_valid(cert):
        return None
    if cert.public_key() != key.public_key():
        return None
    return cert, key


def _leaf_is_valid(
    certs: SimCerts,
    ca_cert: x509.Certificate,
    dns: list[str],
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(certs.leaf_cert.read_bytes())
        key = serialization.load_pem_private_key(certs.leaf_key.read_bytes(), password=None)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        return False
    if not _still_valid(cert) or cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, Exception):
        return False
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    return set(dns) <= have_dns and set(ips) <= have_ips


def _serial() -> int:
    # Positive and below 2**159: some verifiers reject negative or over-long serials.
    return x509.random_serial_number() >> 1 or 1


def _key_usage(*, signs_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certs,
        crl_sign=signs_certs,
        encipher_only=False,
        decipher_only=False,
    )


def _write_pair(
    cert_path: Path, cert: x509.Certificate, key_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    """The private key first (0600), then the certificate (0644): a cert never stands without
    its key."""
    write_secret(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_ca(certs: SimCerts) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Halton Meter provider simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Halton Meter Sim CA"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=730))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certs=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(certs.ca_cert, cert, certs.ca_key, key)
    return cert, key


def _write_leaf(
    certs: SimCerts,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    dns: list[str],
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=730))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(certs.leaf_cert, cert, certs.leaf_key, key)

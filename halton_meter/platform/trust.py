"""System-wide trust for the meter's CA (`init --apps` / `--full`).

Linux: the CA goes into the distribution's anchor directory, then its update command runs
(``update-ca-certificates`` on Debian/Ubuntu, ``update-ca-trust`` on Fedora/RHEL), elevated.
macOS: ``security add-trusted-cert`` into the System keychain, checked with
``security verify-cert -c <cert> -p ssl`` (a real SecTrust evaluation, no override flags).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from halton_meter.platform import is_macos
from halton_meter.platform.elevate import elevated_argv
from halton_meter.service import runner

STORE_DIR_ENV = "HALTON_METER_CA_STORE_DIR"  # an isolated anchor directory (tests, images)
UPDATE_CMD_ENV = "HALTON_METER_CA_UPDATE_CMD"
ANCHOR_NAME = "halton-meter-ca.crt"
SYSTEM_KEYCHAIN = "/Library/Keychains/System.keychain"


@dataclass(frozen=True)
class TrustResult:
    trusted: bool
    detail: str


class TrustStore(Protocol):
    def install(self, cert: Path, *, interactive: bool) -> TrustResult: ...

    def remove(self, cert: Path, *, interactive: bool) -> TrustResult: ...

    def verify(self, cert: Path) -> TrustResult: ...


def _linux_layout() -> tuple[Path, list[str]]:
    if os.environ.get(STORE_DIR_ENV):
        update = shlex.split(os.environ.get(UPDATE_CMD_ENV, "update-ca-certificates"))
        return Path(os.environ[STORE_DIR_ENV]), update
    if Path("/etc/pki/ca-trust/source/anchors").is_dir():
        return Path("/etc/pki/ca-trust/source/anchors"), ["update-ca-trust", "extract"]
    return Path("/usr/local/share/ca-certificates"), ["update-ca-certificates"]


class LinuxTrustStore:
    def install(self, cert: Path, *, interactive: bool) -> TrustResult:
        anchors, update = _linux_layout()
        target = anchors / ANCHOR_NAME
        if target.exists() and target.read_bytes() == cert.read_bytes():
            return TrustResult(True, f"already in {anchors}")
        copy = elevated_argv(
            ["install", "-m", "0644", str(cert), str(target)],
            interactive=interactive,
            reason="Halton Meter needs to trust its CA",
        )
        for argv in (copy, elevated_argv(update, interactive=interactive, reason="")):
            result = runner.run(argv, timeout=120)
            if not result.ok:
                return TrustResult(False, f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return self.verify(cert)

    def remove(self, cert: Path, *, interactive: bool) -> TrustResult:
        anchors, update = _linux_layout()
        target = anchors / ANCHOR_NAME
        if not target.exists():
            return TrustResult(False, "not installed")
        runner.run(elevated_argv(["rm", "-f", str(target)], interactive=interactive, reason=""))
        runner.run(
            elevated_argv(
                [*update, "--fresh"][: len(update) + 1], interactive=interactive, reason=""
            )
        )
        return TrustResult(False, f"removed from {anchors}")

    def verify(self, cert: Path) -> TrustResult:
        anchors, _ = _linux_layout()
        target = anchors / ANCHOR_NAME
        if not target.exists():
            return TrustResult(False, f"{target} missing")
        if target.read_bytes() != cert.read_bytes():
            return TrustResult(False, f"{target} holds a different (old) CA")
        return TrustResult(True, f"trusted via {target}")


class KeychainTrustStore:
    def install(self, cert: Path, *, interactive: bool) -> TrustResult:
        argv = elevated_argv(
            [
                "security",
                "add-trusted-cert",
                "-d",
                "-r",
                "trustRoot",
                "-k",
                SYSTEM_KEYCHAIN,
                str(cert),
            ],
            interactive=interactive,
            reason="Halton Meter needs to trust its CA",
        )
        result = runner.run(argv, timeout=300)
        if not result.ok:
            return TrustResult(False, f"security add-trusted-cert failed: {result.stderr.strip()}")
        return self.verify(cert)

    def remove(self, cert: Path, *, interactive: bool) -> TrustResult:
        runner.run(
            elevated_argv(
                ["security", "delete-certificate", "-c", "mitmproxy", SYSTEM_KEYCHAIN],
                interactive=interactive,
                reason="Halton Meter removes its CA",
            )
        )
        return TrustResult(False, "removed from the System keychain")

    def verify(self, cert: Path) -> TrustResult:
        result = runner.run(["security", "verify-cert", "-c", str(cert), "-p", "ssl"])
        if result.ok:
            return TrustResult(True, "security verify-cert: trusted")
        return TrustResult(False, f"security verify-cert exited {result.returncode}")


def trust_store() -> TrustStore:
    return KeychainTrustStore() if is_macos() else LinuxTrustStore()

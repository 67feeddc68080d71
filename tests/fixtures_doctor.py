"""Helpers for doctor tests: run `doctor --json` in an isolated machine, find rows, run fixes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from fixtures_install import HM, Machine
from hmtest import REPO

ROW_KEYS = {"id", "status", "summary", "fix"}
VENV_BIN = str(Path(sys.executable).parent)  # where the real `halton-meter` lives
# CA variables this test runner may have exported: never let them leak into a machine.
CA_VARS = (
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "CODEX_CA_CERTIFICATE",
)


def machine_env(machine: Machine, **env: str) -> dict[str, str]:
    full = machine.env()
    for key in CA_VARS:
        full.pop(key, None)
    full.update(env)
    return full


def doctor(machine: Machine, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    """`halton-meter doctor --json` as a subprocess in ``machine``; (exit code, document)."""
    full = machine_env(machine, **env)
    out = subprocess.run(
        [*HM, "doctor", "--json", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.stdout.startswith("{"), out.stdout + out.stderr
    doc = json.loads(out.stdout)
    check_contract(doc, out.returncode)
    return out.returncode, doc


def check_contract(doc: dict[str, Any], returncode: int) -> None:
    assert doc["state"] in ("HEALTHY", "INCONSISTENT", "BROKEN")
    assert returncode == {"HEALTHY": 0, "INCONSISTENT": 1, "BROKEN": 2}[doc["state"]]
    ids = [row["id"] for row in doc["checks"]]
    assert len(ids) == len(set(ids)), ids
    for row in doc["checks"]:
        assert set(row) >= ROW_KEYS, row
        assert row["status"] in ("ok", "warn", "fail", "skip"), row
        assert isinstance(row["summary"], str) and row["summary"]
        assert "\n" not in row["summary"], row  # one line
        assert row["fix"] is None or isinstance(row["fix"], str)


def row(doc: dict[str, Any], row_id: str) -> dict[str, Any]:
    for item in doc["checks"]:
        if item["id"] == row_id:
            return dict(item)
    raise AssertionError(f"no row {row_id!r} in {[r['id'] for r in doc['checks']]}")


def run_fix(
    machine: Machine, script: str, *, real_meter: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a printed fix with /bin/sh in ``machine``: stand-ins first on PATH; the real
    `halton-meter` next when ``real_meter`` (else a stand-in that records its arguments)."""
    full = machine_env(machine, **env)
    path = [str(machine.bin)]
    if real_meter:
        (machine.bin / "halton-meter").unlink(missing_ok=True)
        path.append(VENV_BIN)
    else:
        standin_meter(machine)
    full["PATH"] = os.pathsep.join([*path, full["PATH"]])
    return subprocess.run(
        ["/bin/sh", "-c", script],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_exe(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def standin_meter(machine: Machine) -> Path:
    """A `halton-meter` that only records its arguments (for fixes that end in a restart)."""
    return write_exe(
        machine.bin / "halton-meter",
        f'echo "halton-meter $*" >> "{machine.root / "meter-calls.log"}"',
    )


def meter_calls(machine: Machine) -> list[str]:
    log = machine.root / "meter-calls.log"
    return log.read_text().splitlines() if log.exists() else []

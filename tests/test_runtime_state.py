"""Runtime state files: atomic writes; missing, truncated or corrupt files rebuilt."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from hmtest import PYTHON

from halton_meter.core.fsutil import atomic_write, ensure_dir, write_secret
from halton_meter.core.paths import Home
from halton_meter.core.runtime import (
    EffectivePorts,
    load_effective_ports,
    read_runtime,
    save_effective_ports,
    update_runtime,
)


def test_missing_state_gives_defaults(hm_home: Path) -> None:
    assert load_effective_ports(Home.resolve()) == EffectivePorts(8081, 8090, 8765)


def test_save_writes_both_files(hm_home: Path) -> None:
    home = Home.resolve()
    save_effective_ports(home, EffectivePorts(9001, 9002, 9003), mode="env-only")
    assert json.loads(home.effective_ports.read_text())["ports"] == {
        "edge": 9001,
        "daemon": 9002,
        "api": 9003,
    }
    runtime = read_runtime(home)
    assert runtime["ports"] == {"edge": 9001, "daemon": 9002, "api": 9003}
    assert runtime["mode"] == "env-only" and runtime["version"] == "0.3.0"
    assert load_effective_ports(home) == EffectivePorts(9001, 9002, 9003)


@pytest.mark.parametrize(
    "garbage",
    [b"", b'{"ports": {"edge": 9001, "dae', b"\x00\xff\xfe", b'{"ports": {"edge": "x"}}', b"[]"],
    ids=["empty", "truncated", "binary", "wrong-type", "wrong-shape"],
)
def test_corrupt_effective_ports_rebuilt_from_runtime(hm_home: Path, garbage: bytes) -> None:
    home = Home.resolve()
    save_effective_ports(home, EffectivePorts(9001, 9002, 9003))
    home.effective_ports.write_bytes(garbage)
    assert load_effective_ports(home) == EffectivePorts(9001, 9002, 9003)
    # rebuilt on disk, and the bad bytes kept aside for a bug report
    assert json.loads(home.effective_ports.read_text())["ports"]["edge"] == 9001
    aside = list(hm_home.glob("effective-ports.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage


def test_corrupt_runtime_toml_rebuilt_from_effective_ports(hm_home: Path) -> None:
    home = Home.resolve()
    save_effective_ports(home, EffectivePorts(9001, 9002, 9003))
    home.runtime.write_text('ports = { edge = 9001, daemon = "')
    assert load_effective_ports(home) == EffectivePorts(9001, 9002, 9003)
    assert read_runtime(home)["ports"]["daemon"] == 9002


def test_both_corrupt_falls_back_to_defaults_without_traceback(hm_home: Path) -> None:
    home = Home.resolve()
    home.ensure()
    home.effective_ports.write_text("{{{")
    home.runtime.write_text("[[[")
    out = subprocess.run(
        [
            PYTHON,
            "-c",
            "from halton_meter.core.runtime import load_effective_ports as l; print(l().edge)",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8081"
    assert "Traceback" not in out.stderr
    assert "state.corrupt" in out.stderr


def test_update_runtime_merges_and_removes(hm_home: Path) -> None:
    home = Home.resolve()
    update_runtime(home, mode="apps", supervisord_pid=123)
    update_runtime(home, supervisord_pid=None)
    data = read_runtime(home)
    assert data["mode"] == "apps" and "supervisord_pid" not in data


def test_atomic_write_never_leaves_a_partial_file(hm_home: Path, monkeypatch) -> None:
    target = hm_home / "state.json"
    atomic_write(target, b"old")

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new-but-failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in hm_home.iterdir() if p.name.startswith(".state")] == []


def test_secret_files_and_dirs_are_born_private(hm_home: Path) -> None:
    # A wide umask must not widen anything secret, even for an instant.
    import os

    old = os.umask(0)
    try:
        d = ensure_dir(hm_home / "deep" / "secrets")
        write_secret(d / "token", "s3cret")
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "token").stat().st_mode) == 0o600
    home = Home.resolve().ensure()
    assert stat.S_IMODE(home.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.run_dir.stat().st_mode) == 0o700


def test_home_names_and_socket_path(hm_home: Path, monkeypatch, tmp_path: Path) -> None:
    home = Home.resolve()
    assert home.root == hm_home
    assert home.config.name == "config.toml" and home.db.name == "db.sqlite"
    assert home.daemon_out_log.name == "daemon.out.log"
    assert home.daemon_err_log.name == "daemon.err.log"
    assert home.edge_err_log.name == "edge.err.log"
    assert home.ca_cert.name == "mitmproxy-ca-cert.pem" and home.ca_dir.is_relative_to(hm_home)
    # the socket lives in the home's own 0700 run dir, never loose in /tmp
    assert len(str(home.socket)) < 100 and home.socket.parent == home.run_dir
    deep = tmp_path / ("x" * 120)
    monkeypatch.setenv("HALTON_METER_HOME", str(deep))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(hm_home))
    assert len(str(Home.resolve().socket)) < 100
    monkeypatch.delenv("HALTON_METER_HOME")
    assert Home.resolve().root == Path.home() / ".halton-meter"
    assert Home.resolve().ca_dir == Path.home() / ".mitmproxy"

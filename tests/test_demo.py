"""The README's first command: `halton-meter demo` end to end, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
from hmtest import clean_env


def test_demo_meters_the_sdks_and_leaves_no_process(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.process_iter()}
    out = subprocess.run(
        [sys.executable, "-m", "halton_meter", "demo"],
        env=clean_env(tmp_path / "unused", TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo: ok" in out.stdout
    assert "5 rows; expected 5" in out.stdout
    assert "state:                HEALTHY" in out.stdout
    assert "no process left behind" in out.stdout
    # the temporary home is gone, and no process of it survives
    assert not list(tmp_path.glob("halton-demo-*"))
    survivors = [
        p
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.pid not in before and "halton-demo-" in " ".join(p.info["cmdline"] or [])
    ]
    assert survivors == []

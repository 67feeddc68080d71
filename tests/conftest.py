from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Fixture modules are imported by name from test modules: let pytest rewrite their asserts.
pytest.register_assert_rewrite("fixtures_daemon", "fixtures_install", "hmtest")


@pytest.fixture
def hm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh HALTON_METER_HOME for this test; proxy variables scrubbed."""
    home = tmp_path / "hm"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HALTON_METER_HOME", str(home))
    # Port claims are per user and machine-wide; each test gets its own so tests stay
    # independent (the race test shares one explicitly).
    monkeypatch.setenv("HALTON_METER_PORTS_LOCK_DIR", str(tmp_path / "port-locks"))
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    yield home

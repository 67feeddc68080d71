"""`halton-meter cloud ...` as a user runs it: real processes against the TLS simulator."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloud_sim import CloudSim, write_config
from hmtest import PYTHON, REPO, clean_env

from halton_meter.cloud import account
from halton_meter.cloud import state as cs
from halton_meter.core.paths import Home
from halton_meter.store.model import Row
from halton_meter.store.writer import RowWriter

DO_NOT_CONNECT = "Do not cloud connect — that revokes the still-valid existing key"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[CloudSim]:
    server = CloudSim(tmp_path / "sim-certs").start()
    yield server
    server.stop()


def cli(
    home: Path, *args: str, input: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "halton_meter", "cloud", *args],
        cwd=REPO,
        env=clean_env(home, **env),
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def status_json(home: Path) -> dict:
    # In-process (same command code, no interpreter start): most tests only read the state.
    from typer.testing import CliRunner

    from halton_meter.cli import app

    result = CliRunner().invoke(
        app, ["cloud", "status", "--json"], env={"HALTON_METER_HOME": str(home)}
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_connect_with_a_pairing_code_prompt_stores_a_0600_key(hm_home: Path, sim: CloudSim) -> None:
    write_config(hm_home, sim)
    sim.add_code("ABC-123", machine_id="m-42")
    proc = cli(hm_home, "connect", input="ABC-123\n")
    assert proc.returncode == 0, proc.stderr
    assert "Pairing code" in proc.stdout and "m-42" in proc.stdout
    token_file = Home.resolve(hm_home).cloud_token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    key = token_file.read_text().strip()
    assert key.startswith("key-m-42")
    proc = cli(hm_home, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["state"] == "active" and data["paused_reason"] is None
    assert set(data) >= {
        "state",
        "paused_reason",
        "last_error",
        "last_success",
        "pending",
        "base_url",
    }
    assert data["base_url"] == sim.base_url and data["machine_id"] == "m-42"


def test_connect_with_a_bad_code_fails_and_stores_nothing(hm_home: Path, sim: CloudSim) -> None:
    write_config(hm_home, sim)
    proc = cli(hm_home, "connect", "--code", "nope")
    assert proc.returncode == 1 and "Pairing failed" in proc.stderr
    assert not Home.resolve(hm_home).cloud_token.exists()
    assert status_json(hm_home)["state"] == "disconnected"


@pytest.mark.parametrize("via_env", [False, True])
def test_connect_with_a_token_skips_pairing_and_verifies_it(
    hm_home: Path, sim: CloudSim, via_env: bool
) -> None:
    write_config(hm_home, sim)
    sim.add_key("fleet-key", machine_id="m-fleet")
    if via_env:
        proc = cli(hm_home, "connect", HALTON_METER_CLOUD_TOKEN="fleet-key")
    else:
        proc = cli(hm_home, "connect", "--token", "fleet-key")
    assert proc.returncode == 0, proc.stderr
    assert sim.count("POST", "/v1/daemon/pair") == 0
    assert sim.count("GET", "/v1/daemon/whoami") == 1
    token_file = Home.resolve(hm_home).cloud_token
    assert token_file.read_text().strip() == "fleet-key"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_connect_with_an_invalid_token_fails(hm_home: Path, sim: CloudSim) -> None:
    write_config(hm_home, sim)
    proc = cli(hm_home, "connect", "--token", "unknown")
    assert proc.returncode == 1 and "401" in proc.stderr
    assert not Home.resolve(hm_home).cloud_token.exists()


def test_reconnecting_revokes_the_previous_key(hm_home: Path, sim: CloudSim) -> None:
    write_config(hm_home, sim)
    sim.add_key("k1")
    sim.add_key("k2")
    assert cli(hm_home, "connect", "--token", "k1").returncode == 0
    proc = cli(hm_home, "connect", "--token", "k2")
    assert proc.returncode == 0, proc.stderr
    assert "previous key was revoked" in proc.stdout
    assert sim.revoked == ["k1"]
    # The revoke went out with the OLD key as the bearer.
    assert ("POST", "/v1/daemon/revoke", "k1") in sim.requests
    # Re-connecting with the key already stored never revokes it.
    assert cli(hm_home, "connect", "--token", "k2").returncode == 0
    assert sim.revoked == ["k1"]


def _paused_forbidden(hm_home: Path, sim: CloudSim) -> Home:
    write_config(hm_home, sim)
    sim.add_key("k1")
    sim.add_key("k2", machine_id="m-2")
    assert cli(hm_home, "connect", "--token", "k1").returncode == 0
    home = Home.resolve(hm_home)
    cs.apply(home, cs.Event(cs.FORBIDDEN, error="cloud.forbidden: HTTP 403"))
    return home


def test_connect_when_paused_forbidden_warns_and_keeps_the_key(
    hm_home: Path, sim: CloudSim
) -> None:
    home = _paused_forbidden(hm_home, sim)
    proc = cli(hm_home, "connect", "--token", "k2")  # no terminal, no --yes
    assert proc.returncode == 1
    assert DO_NOT_CONNECT in proc.stderr and "REVOKE" in proc.stderr
    assert "halton-meter cloud resume" in proc.stderr
    assert sim.revoked == [] and sim.count("POST", "/v1/daemon/revoke") == 0
    assert account.read_token(home) == "k1"
    assert status_json(hm_home)["paused_reason"] == "paused_forbidden"


def test_connect_when_paused_forbidden_revokes_only_with_yes(hm_home: Path, sim: CloudSim) -> None:
    home = _paused_forbidden(hm_home, sim)
    proc = cli(hm_home, "connect", "--token", "k2", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert DO_NOT_CONNECT in proc.stderr  # still warned
    assert sim.revoked == ["k1"]
    assert account.read_token(home) == "k2"
    data = status_json(hm_home)
    assert data["state"] == "active" and data["machine_id"] == "m-2"


def test_connect_when_paused_forbidden_accepts_an_interactive_yes(
    hm_home: Path, sim: CloudSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _paused_forbidden(hm_home, sim)
    from halton_meter.cloud.account import connect
    from halton_meter.core.config import load_config

    asked: list[str] = []
    warned: list[str] = []
    result = connect(
        home,
        load_config(home),
        token="k2",
        confirm=lambda q: asked.append(q) or True,
        warn=warned.append,
    )
    assert asked and warned and DO_NOT_CONNECT in warned[0]
    assert result.revoked_previous and sim.revoked == ["k1"]


def test_status_paused_shows_the_reference_table(hm_home: Path, sim: CloudSim) -> None:
    home = _paused_forbidden(hm_home, sim)
    proc = cli(hm_home, "status")
    assert proc.returncode == 0
    assert "PAUSED (paused_forbidden)" in proc.stdout
    assert "HTTP 403 — the workspace owner removed this machine." in proc.stdout
    assert DO_NOT_CONNECT in proc.stdout
    assert account.read_token(home) == "k1"


def test_pause_then_resume_200_clears_pause_counters_and_last_error(
    hm_home: Path, sim: CloudSim
) -> None:
    write_config(hm_home, sim)
    sim.add_key("k1")
    assert cli(hm_home, "connect", "--token", "k1").returncode == 0
    home = Home.resolve(hm_home)
    cs.apply(
        home,
        cs.Event(
            cs.TRANSIENT_ERROR, error="cloud.transport_error: boom", retry_at="2999-01-01T00:00:00Z"
        ),
    )
    proc = cli(hm_home, "pause")
    assert proc.returncode == 0 and "paused_manual" in proc.stdout
    data = status_json(hm_home)
    assert (data["state"], data["paused_reason"]) == ("paused", "paused_manual")
    assert "You ran halton-meter cloud pause." in cli(hm_home, "status").stdout
    whoami_before = sim.count("GET", "/v1/daemon/whoami")
    proc = cli(hm_home, "resume")
    assert proc.returncode == 0, proc.stderr
    assert sim.count("GET", "/v1/daemon/whoami") == whoami_before + 1  # exactly one probe
    data = status_json(hm_home)
    assert data["state"] == "active" and data["paused_reason"] is None
    assert data["last_error"] is None and data["consecutive_failures"] == 0
    assert data["retry_at"] is None


def test_resume_401_says_the_key_is_revoked_and_connect_is_next(
    hm_home: Path, sim: CloudSim
) -> None:
    write_config(hm_home, sim)
    sim.add_key("k1")
    assert cli(hm_home, "connect", "--token", "k1").returncode == 0
    home = Home.resolve(hm_home)
    cs.apply(home, cs.Event(cs.UNAUTHORISED, error="cloud.unauthorised: HTTP 401"))
    sim.set_key_status("k1", "revoked")
    proc = cli(hm_home, "resume")
    assert proc.returncode == 1
    assert "genuinely revoked" in proc.stderr and "halton-meter cloud connect" in proc.stderr
    assert sim.count("GET", "/v1/daemon/whoami") == 2  # connect's and resume's one probe
    assert status_json(hm_home)["paused_reason"] == "paused_unauthorised"


def test_resume_403_says_still_removed_and_not_to_connect(hm_home: Path, sim: CloudSim) -> None:
    home = _paused_forbidden(hm_home, sim)
    sim.set_key_status("k1", "forbidden")
    proc = cli(hm_home, "resume")
    assert proc.returncode == 1
    assert "still removed from the workspace" in proc.stderr
    assert "re-invite" in proc.stderr and DO_NOT_CONNECT in proc.stderr
    assert account.read_token(home) == "k1" and sim.revoked == []
    # Re-invited: resume now clears it.
    sim.set_key_status("k1", "ok")
    assert cli(hm_home, "resume").returncode == 0
    assert status_json(hm_home)["state"] == "active"


def test_pending_counts_rows_not_yet_synced(hm_home: Path, sim: CloudSim) -> None:
    write_config(hm_home, sim)
    sim.add_key("k1")
    assert cli(hm_home, "connect", "--token", "k1").returncode == 0
    with RowWriter(Home.resolve(hm_home).db) as writer:
        for _ in range(7):
            writer.submit(Row())
        assert writer.flush()
    assert status_json(hm_home)["pending"] == 7


def test_disconnected_status_and_resume(hm_home: Path) -> None:
    data = status_json(hm_home)
    assert data["state"] == "disconnected" and data["pending"] == 0
    proc = cli(hm_home, "resume")
    assert proc.returncode == 1 and "cloud connect" in proc.stderr


def test_placeholder_base_url_fails_at_once_naming_url_and_config(hm_home: Path) -> None:
    (hm_home / "config.toml").write_text('[cloud]\nbase_url = "https://cloud.example"\n')
    began = time.monotonic()
    proc = cli(hm_home, "connect", "--token", "k1")
    assert time.monotonic() - began < 15  # a process start, never a resolver timeout
    assert proc.returncode == 3
    assert "https://cloud.example" in proc.stderr and str(hm_home / "config.toml") in proc.stderr
    assert "cloud.transport_error" in proc.stderr
    data = status_json(hm_home)
    assert "https://cloud.example" in data["last_error"]
    assert str(hm_home / "config.toml") in data["last_error"]


def test_connect_with_the_same_key_when_paused_forbidden_needs_no_confirmation(
    hm_home: Path, sim: CloudSim
) -> None:
    home = _paused_forbidden(hm_home, sim)
    from halton_meter.cloud.account import connect
    from halton_meter.core.config import load_config

    connect(home, load_config(home), token="k1", confirm=lambda q: False)
    assert sim.revoked == [] and account.read_token(home) == "k1"
    assert status_json(hm_home)["state"] == "active"

"""The API program as a real uvicorn subprocess in a fresh home."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from hmtest import PYTHON, REPO, clean_env, free_port, wait_until

from halton_meter.api import token as token_mod
from halton_meter.api.client import api_get
from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, save_effective_ports
from halton_meter.store.model import Row
from halton_meter.store.writer import RowWriter


@dataclass
class Api:
    proc: subprocess.Popen[bytes]
    port: int
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        return (self.home / "api-token").read_text().strip()

    def get(self, path: str, token: str | None = None, **params: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        with httpx.Client(trust_env=False, timeout=10) as client:
            return client.get(self.url + path, headers=headers, params=params)


def _start_api(home: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "halton_meter.api", "--port", str(port)],
        cwd=REPO,
        env=clean_env(home, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _healthy(url: str) -> bool:
    with httpx.Client(trust_env=False, timeout=1) as client:
        return client.get(url + "/health").status_code == 200


def _running_api(home: Path) -> Iterator[Api]:
    port = free_port()
    proc = _start_api(home, port)
    running = Api(proc, port, home)
    try:
        wait_until(
            lambda: proc.poll() is not None or _healthy(running.url), timeout=20, what="api /health"
        )
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield running
    finally:
        _stop(proc)


@pytest.fixture
def api(hm_home: Path) -> Iterator[Api]:
    yield from _running_api(hm_home)


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API for the read-only tests (its boot costs a second or two)."""
    home = tmp_path_factory.mktemp("shared") / "hm"
    home.mkdir(mode=0o700)
    yield from _running_api(home)


def test_health_is_open_and_names_the_version(shared_api: Api) -> None:
    from halton_meter import __version__

    response = shared_api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}


@pytest.mark.parametrize("path", ["/v1/status", "/v1/report"])
def test_everything_else_needs_the_token(shared_api: Api, path: str) -> None:
    assert shared_api.get(path).status_code == 401
    wrong = shared_api.get(path, token="not-the-token")
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    # Same length, one character off: still refused.
    good = shared_api.token()
    almost = good[:-1] + ("A" if good[-1] != "A" else "B")
    assert shared_api.get(path, token=almost).status_code == 401
    assert shared_api.get(path, token=good).status_code == 200


def test_token_file_is_0600_and_stable_across_restarts(api: Api) -> None:
    path = api.home / "api-token"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    first = api.token()
    assert len(first) >= 40
    _stop(api.proc)
    port = free_port()
    proc = _start_api(api.home, port)
    try:
        wait_until(lambda: _healthy(f"http://127.0.0.1:{port}"), timeout=20, what="api restart")
        assert api.token() == first  # not regenerated when present
    finally:
        _stop(proc)


def test_token_is_born_0600_with_no_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path / "h")
    seen: list[tuple[str, int]] = []
    real_replace = os.replace

    def spying_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # The moment the token appears under its name: the temp file must already be 0600.
        seen.append((str(dst), stat.S_IMODE(os.stat(src).st_mode)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spying_replace)
    old_umask = os.umask(0)  # a careless umask must not widen it
    try:
        token = token_mod.ensure_api_token(home)
    finally:
        os.umask(old_umask)
    assert (str(home.api_token), 0o600) in seen
    assert all(mode == 0o600 for _, mode in seen)
    assert stat.S_IMODE(os.stat(home.api_token).st_mode) == 0o600
    assert token_mod.ensure_api_token(home) == token


def _row(**kw: object) -> Row:
    base: dict[str, object] = {
        "provider": "anthropic",
        "api": "messages",
        "model": "claude-sonnet-4-5",
        "status": 200,
        "input_tokens": 100,
        "output_tokens": 20,
        "cost_usd": Decimal("0.000600"),
        "priced": True,
    }
    base.update(kw)
    return Row(**base)  # type: ignore[arg-type]


def test_report_returns_rows_written_to_the_real_store(api: Api) -> None:
    now = datetime.now(UTC)
    old = _row(ts=now - timedelta(days=3), project="alpha", tool="curl")
    new = _row(ts=now - timedelta(minutes=5), project="beta", tool="claude-code", model="m2")
    with RowWriter(api.home / "db.sqlite") as writer:
        writer.submit(old)
        writer.submit(new)
        assert writer.flush()
    token = api.token()

    body = api.get("/v1/report", token=token).json()
    assert [r["id"] for r in body["rows"]] == [new.id, old.id]  # newest first
    assert body["rows"][0]["cost_usd"] == "0.000600"
    assert body["totals"]["requests"] == 2
    assert body["totals"]["cost_usd"] == "0.0012"

    recent = api.get("/v1/report", token=token, since="1d").json()
    assert [r["id"] for r in recent["rows"]] == [new.id]
    assert recent["totals"]["requests"] == 1

    only = api.get("/v1/report", token=token, project="alpha", limit=1).json()
    assert [r["project"] for r in only["rows"]] == ["alpha"]

    grouped = api.get("/v1/report", token=token, by="tool").json()
    assert set(grouped) == {"groups", "totals"}  # as `report --by tool --json`
    assert sorted(g["tool"] for g in grouped["groups"]) == ["claude-code", "curl"]

    bad = api.get("/v1/report", token=token, since="yesterday-ish")
    assert bad.status_code == 400
    assert api.get("/v1/report", token=token, by="colour").status_code == 400

    # The client the CLI uses finds this API by the home's effective ports and token.
    save_effective_ports(
        Home(api.home), EffectivePorts(edge=free_port(), daemon=free_port(), api=api.port)
    )
    via_client = api_get(Home(api.home), "/v1/report", {"tool": "curl", "since": None})
    assert via_client is not None
    assert [r["id"] for r in via_client["rows"]] == [old.id]


def test_report_on_an_empty_home_is_empty_not_an_error(api: Api) -> None:
    body = api.get("/v1/report", token=api.token()).json()
    assert body["rows"] == []
    assert body["totals"]["requests"] == 0
    assert not (api.home / "db.sqlite").exists()  # a reader never creates the store


def test_status_has_the_contract_shape(shared_api: Api) -> None:
    body = shared_api.get("/v1/status", token=shared_api.token()).json()
    assert set(body) >= {"state", "reasons", "ports", "programs", "install_mode", "unmetered"}
    assert body["state"] in ("HEALTHY", "INCONSISTENT", "BROKEN")
    assert set(body["ports"]) == {"edge", "daemon", "api"}
    assert body["install_mode"] == "env-only"
    assert isinstance(body["unmetered"], int)
    for reason in body["reasons"]:
        assert {"id", "message"} <= set(reason)
    # Never started (no supervisord): BROKEN, with the fix.
    assert body["state"] == "BROKEN"
    assert [r["id"] for r in body["reasons"]] == ["not_running"]
    assert body["reasons"][0]["fix"] == "halton-meter start"


def test_api_client_is_none_when_no_api_runs(hm_home: Path) -> None:
    home = Home(hm_home)
    token_mod.ensure_api_token(home)
    save_effective_ports(
        home, EffectivePorts(edge=free_port(), daemon=free_port(), api=free_port())
    )
    assert api_get(home, "/v1/status") is None


def test_api_client_ignores_proxy_variables(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # A dead proxy in the environment must not be used for loopback API calls.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{free_port()}")
    save_effective_ports(
        Home(api.home), EffectivePorts(edge=free_port(), daemon=free_port(), api=api.port)
    )
    body = api_get(Home(api.home), "/v1/status")
    assert body is not None and body["state"] == "BROKEN"


def test_api_client_is_none_against_another_homes_api(api: Api, tmp_path: Path) -> None:
    other = Home(tmp_path / "other")
    token_mod.ensure_api_token(other)  # a different token
    save_effective_ports(other, EffectivePorts(edge=free_port(), daemon=free_port(), api=api.port))
    assert api_get(other, "/v1/status") is None


def test_bind_guard_refuses_a_non_loopback_api_host(hm_home: Path) -> None:
    (hm_home / "config.toml").write_text('api_host = "0.0.0.0"\n')
    port = free_port()
    proc = _start_api(hm_home, port)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        _stop(proc)
    assert proc.returncode == 1
    assert "api_host=0.0.0.0 is not a loopback address (refusing to bind)" in err.decode()
    assert not (hm_home / "api-token").exists()  # refused before anything else happened


def test_no_access_log_noise_on_stdout(api: Api) -> None:
    for _ in range(3):
        api.get("/health")
    api.get("/v1/status", token=api.token())
    _stop(api.proc)
    out = api.proc.stdout.read().decode() if api.proc.stdout else ""
    assert "GET /health" not in out
    assert "api.start" in out  # our own structured start event, nothing else per request


def test_a_taken_port_fails_with_an_event_not_a_hang(hm_home: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        proc = _start_api(hm_home, holder.getsockname()[1])
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            _stop(proc)
    assert proc.returncode != 0
    assert "address already in use" in err.decode()
    assert '"event": "api.startup_failed"' in err.decode()


def test_an_invalid_config_exits_with_the_message(hm_home: Path) -> None:
    (hm_home / "config.toml").write_text("api_host = \n")
    proc = _start_api(hm_home, free_port())
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        _stop(proc)
    assert proc.returncode == 3
    assert "config.toml" in err.decode() and "Fix:" in err.decode()


def test_a_replaced_token_file_takes_effect_without_a_restart(api: Api) -> None:
    from halton_meter.core.fsutil import write_secret

    old = api.token()
    assert api.get("/v1/status", token=old).status_code == 200
    write_secret(api.home / "api-token", "rotated-token-value\n")
    assert api.get("/v1/status", token=old).status_code == 401
    assert api.get("/v1/status", token="rotated-token-value").status_code == 200


def test_a_damaged_store_is_a_503_with_the_fix(api: Api) -> None:
    (api.home / "db.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    response = api.get("/v1/report", token=api.token())
    assert response.status_code == 503
    assert "db.sqlite" in response.json()["detail"]
    assert api.get("/health").status_code == 200  # the API itself stays up


def test_report_answers_exactly_what_report_json_prints(api: Api) -> None:
    now = datetime.now(UTC)
    with RowWriter(api.home / "db.sqlite") as writer:
        for i in range(4):
            writer.submit(
                _row(
                    ts=now - timedelta(hours=i), tool=("curl", "python")[i % 2], project=f"p{i % 3}"
                )
            )
        writer.submit(_row(ts=now, model="unknown-model", cost_usd=None, priced=False))
        assert writer.flush()
    for args, params in (
        ([], {}),
        (["--tool", "curl", "--limit", "1"], {"tool": "curl", "limit": 1}),
        (["--since", "90m"], {"since": "90m"}),
        (["--by", "project"], {"by": "project"}),
    ):
        cli = subprocess.run(
            [PYTHON, "-m", "halton_meter", "report", "--json", *args],
            cwd=REPO,
            env=clean_env(api.home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert api.get("/v1/report", token=api.token(), **params).json() == json.loads(cli.stdout)

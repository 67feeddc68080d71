"""The loopback bind guard for each kind of host, and the override."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from hmtest import PYTHON, clean_env

from halton_meter.core.bindguard import OVERRIDE_MESSAGE, check_bind_host, is_loopback_host

_GUARD = "from halton_meter.core.bindguard import check_bind_host as c; import sys; c(sys.argv[1], sys.argv[2]); print('bound')"


def _lan_address() -> str:
    # Any non-loopback literal works: the guard judges the address, it binds nothing.
    return "192.168.1.20"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_hosts_pass(host: str) -> None:
    assert is_loopback_host(host)
    check_bind_host(host, "listen_host")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "*", _lan_address(), "10.0.0.1"])
def test_non_loopback_hosts_are_refused(host: str) -> None:
    assert not is_loopback_host(host)


def test_a_name_resolving_to_non_loopback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        assert host == "meter.corp"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert not is_loopback_host("meter.corp")


def test_an_unresolvable_name_is_refused() -> None:
    assert not is_loopback_host("no-such-host.invalid")


@pytest.mark.parametrize(("host", "key"), [("0.0.0.0", "listen_host"), ("[::]", "api_host")])
def test_refusal_exits_1_with_the_reference_message(tmp_path: Path, host: str, key: str) -> None:
    out = subprocess.run(
        [PYTHON, "-c", _GUARD, host, key], env=clean_env(tmp_path), capture_output=True, text=True
    )
    assert out.returncode == 1
    assert (
        f"SystemExit(1) — {key}={host} is not a loopback address (refusing to bind)" in out.stderr
    )
    assert "bound" not in out.stdout


def test_override_allows_and_warns_on_every_boot(tmp_path: Path) -> None:
    env = clean_env(tmp_path, HALTON_METER_ALLOW_NON_LOOPBACK="1")
    for _ in range(2):
        out = subprocess.run(
            [PYTHON, "-c", _GUARD, "0.0.0.0", "listen_host"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0 and out.stdout.strip() == "bound"
        assert OVERRIDE_MESSAGE in out.stderr
        assert "bindguard.override_active" in out.stderr

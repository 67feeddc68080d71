"""Port negotiation against ports really held by listening sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hmtest import PYTHON, clean_env

from halton_meter.core.config import load_config
from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, load_effective_ports, read_runtime
from halton_meter.port_alloc import PortError, negotiate, port_holder, port_range


@pytest.fixture
def hold() -> Iterator:
    held: list[socket.socket] = []

    def _hold(port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        held.append(s)
        return s

    yield _hold
    for s in held:
        s.close()


def test_defaults_when_free_and_persisted_to_both_files(hm_home: Path) -> None:
    home = Home.resolve()
    ports = negotiate(home)
    assert ports == EffectivePorts(8081, 8090, 8765)
    assert json.loads(home.effective_ports.read_text())["ports"] == ports.as_dict()
    assert read_runtime(home)["ports"] == ports.as_dict()


def test_busy_default_moves_to_a_nearby_free_port(hm_home: Path, hold) -> None:
    hold(8081)
    hold(8765)
    ports = negotiate(Home.resolve())
    assert ports.edge == 8082 and ports.daemon == 8090 and ports.api == 8766
    assert load_effective_ports(Home.resolve()) == ports


def test_negotiation_is_sticky_to_the_previous_port(hm_home: Path, hold) -> None:
    home = Home.resolve()
    hold(8081)
    assert negotiate(home).edge == 8082
    # 8081 is free again, but clients were given 8082: keep it
    assert negotiate(home).edge == 8082


def test_pinned_port_never_moves_and_a_busy_pin_names_the_holder(hm_home: Path, hold) -> None:
    (hm_home / "config.toml").write_text("[ports]\nedge = 8083\n")
    home = Home.resolve()
    assert negotiate(home).edge == 8083
    hold(8083)
    with pytest.raises(PortError) as exc:
        negotiate(Home.resolve())
    message = str(exc.value)
    assert "8083" in message and "pinned" in message and "[ports] edge" in message
    assert f"pid {__import__('os').getpid()}" in message
    assert exc.value.exit_code == 4


def test_whole_range_busy_names_the_range(hm_home: Path, hold) -> None:
    for port in port_range("daemon"):
        hold(port)
    with pytest.raises(PortError, match=r"8090-8099"):
        negotiate(Home.resolve())


def test_port_holder_identifies_the_listener() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        holder = port_holder(sock.getsockname()[1])
        assert holder is not None and holder.pid == __import__("os").getpid()
    finally:
        sock.close()


_RACER = textwrap.dedent(
    """
    import json, sys, time
    from halton_meter.core.paths import Home
    from halton_meter.port_alloc import negotiate
    while time.time() < float(sys.argv[1]):
        pass
    print(json.dumps(negotiate(Home.resolve()).as_dict()))
    """
)


def test_two_negotiations_racing_in_two_processes_never_share_a_port(tmp_path: Path) -> None:
    import time

    lock_dir = tmp_path / "shared-locks"
    start_at = str(time.time() + 1.0)
    procs = []
    for name in ("a", "b", "c"):
        home = tmp_path / name
        env = clean_env(home, HALTON_METER_PORTS_LOCK_DIR=str(lock_dir))
        procs.append(
            subprocess.Popen(
                [PYTHON, "-c", _RACER, start_at], env=env, stdout=subprocess.PIPE, text=True
            )
        )
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        results.append(json.loads(out))
    every_port = [p for r in results for p in r.values()]
    assert len(every_port) == len(set(every_port)), results


def test_config_hosts_are_honoured_for_the_bind_test(hm_home: Path) -> None:
    cfg = load_config(Home.resolve())
    assert negotiate(Home.resolve(), cfg).api == 8765


def test_a_listen_host_not_on_this_machine_does_not_crash_negotiation(hm_home: Path) -> None:
    (hm_home / "config.toml").write_text('listen_host = "192.0.2.10"\n')  # TEST-NET-1
    ports = negotiate(Home.resolve())
    assert ports.edge in port_range("edge")

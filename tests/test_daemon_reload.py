# ruff: noqa: F811  (pytest fixtures imported by name)
"""SIGHUP: the real daemon re-reads config.toml and applies capture hosts, the body gate,
the upstream map and the upstream CA live; an invalid edit is refused and the running config
kept. Proven with real requests through the daemon to two ProviderSims (own CAs each)."""

from __future__ import annotations

import json
import os
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures_daemon import SIM_HOSTS, DaemonHandle, sim_config, start_daemon
from halton_watchdog.config_watch import catches_sighup, plan_for
from hmtest import free_port, wait_until

from halton_meter.core.config import load_config
from halton_meter.core.paths import Home
from halton_meter.sim import ProviderSim

ANTHROPIC = "https://api.anthropic.com/v1/messages"
OPENAI_CHAT = "https://api.openai.com/v1/chat/completions"
GROQ_CHAT = "https://api.groq.com/openai/v1/chat/completions"
# SIM_HOSTS without the compatible host: it is intercepted only once `[capture] hosts` names it.
BASE_HOSTS = tuple(h for h in SIM_HOSTS if h != "api.groq.com")
SMALL_GATE = 200


def chat_body(padding: int = 0) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi" + "x" * padding}],
    }


def events(text: str, name: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if name in line:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                out.append(event)
    return out


@pytest.fixture
def two_sims(tmp_path: Path) -> Iterator[tuple[ProviderSim, ProviderSim]]:
    a = ProviderSim(tmp_path / "sim-a").start(http_port=0)
    b = ProviderSim(tmp_path / "sim-b").start(http_port=0)
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _client(d: DaemonHandle, *cafiles: Path) -> httpx.Client:
    """Through the daemon; trusts the meter's CA and ``cafiles`` (a tunnelled origin's)."""
    ctx = ssl.create_default_context(cafile=str(d.ca_cert))
    for extra in cafiles:
        ctx.load_verify_locations(cafile=str(extra))
    return httpx.Client(proxy=d.proxy_url, verify=ctx, trust_env=False, timeout=30)


def _sighup_and_wait(d: DaemonHandle, event: str, log: str = "out") -> dict[str, Any]:
    read = d.stdout if log == "out" else d.stderr
    before = len(events(read(), event))
    os.kill(d.proc.pid, signal.SIGHUP)
    found: list[dict[str, Any]] = wait_until(
        lambda: events(read(), event)[before:], timeout=15, what=event
    )
    d.check_alive()
    return found[0]


def _sentinel_rows(d: DaemonHandle, mark: int) -> list[dict[str, Any]]:
    """Rows since ``mark`` once a sentinel call's row is in (rows come in completion order)."""
    with d.client() as http:
        assert (
            http.post(
                ANTHROPIC,
                json={
                    "model": "claude-haiku-4-5",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"x-api-key": "sk-ant-reload", "anthropic-version": "2023-06-01"},
            )
        ).status_code == 200
    wait_until(
        lambda: any(r["host"] == "api.anthropic.com" for r in d.rows_since(mark)),
        what="sentinel row",
    )
    return [r for r in d.rows_since(mark) if r["host"] != "api.anthropic.com"]


def test_sighup_applies_hosts_body_gate_resolve_and_ca_live(
    hm_home: Path, two_sims: tuple[ProviderSim, ProviderSim]
) -> None:
    a, b = two_sims
    d = start_daemon(hm_home, a, config_text=sim_config(a, hosts=SIM_HOSTS))
    try:
        # The kernel shows the handler: the watchdog will signal, not restart.
        assert catches_sighup(d.proc.pid)
        pid = d.proc.pid

        # Before: the compatible host is tunnelled (no row), a 1 KiB body is stored, and
        # api.openai.com goes to sim A.
        mark = d.mark()
        with _client(d, a.ca_path) as http:
            assert http.post(GROQ_CHAT, json=chat_body()).status_code == 200
            assert http.post(OPENAI_CHAT, json=chat_body(1024)).status_code == 200
        rows = _sentinel_rows(d, mark)
        assert [r["host"] for r in rows] == ["api.openai.com"]
        assert rows[0]["request_body_path"] and rows[0]["body_skip_reason"] is None
        assert {r.host for r in a.requests} == {
            "api.groq.com",
            "api.openai.com",
            "api.anthropic.com",
        }
        served_by_a, served_by_b = len(a.requests), len(b.requests)

        # The edit: the compatible host listed, a small body gate, every host sent to sim B
        # (whose CA only the new ca_bundle trusts), and a port pin (needs a restart).
        old_config = load_config(Home.resolve())
        new_text = sim_config(
            b,
            hosts=SIM_HOSTS,
            extra_toml=(
                f'[capture]\nhosts = ["api.groq.com"]\nbody_max_bytes = {SMALL_GATE}\n'
                f"[ports]\ndaemon = {d.port + 1 if d.port < 65535 else d.port - 1}\n"
            ),
        )
        (hm_home / "config.toml").write_text(new_text)
        plan = plan_for(old_config, load_config(Home.resolve()))
        assert "daemon" in plan.signal_hup  # what the watchdog does for this edit
        reloaded = _sighup_and_wait(d, "config.reloaded")
        assert {
            "capture.hosts",
            "capture.body_max_bytes",
            "upstream.resolve",
            "upstream.ca_bundle",
        } <= set(reloaded["changed"]), reloaded
        restart = wait_until(
            lambda: events(d.stderr() + d.stdout(), "config.reload_needs_restart"),
            timeout=5,
            what="needs_restart logged",
        )
        assert restart[0]["keys"] == ["ports.daemon"]

        # After: same process, new behaviour.
        assert d.proc.pid == pid and d.proc.poll() is None
        mark = d.mark()
        with d.client() as http:  # the meter's CA only: groq is intercepted now
            groq = http.post(GROQ_CHAT, json=chat_body())
            big = http.post(OPENAI_CHAT, json=chat_body(1024))
        assert groq.status_code == 200 and big.status_code == 200, (groq.text, big.text)
        rows = _sentinel_rows(d, mark)
        by_host = {r["host"]: r for r in rows}
        assert set(by_host) == {"api.groq.com", "api.openai.com"}, rows
        assert by_host["api.groq.com"]["provider"] == "compatible"
        openai_row = by_host["api.openai.com"]
        assert openai_row["body_skip_reason"] == "body_too_large"
        assert openai_row["request_body_path"] is None
        assert openai_row["input_tokens"] is not None  # metered as before, body not kept
        # Sim B served them (the new map, verified with the new roots); A saw none.
        assert {r.host for r in b.requests[served_by_b:]} >= {"api.groq.com", "api.openai.com"}
        assert len(a.requests) == served_by_a

        # An invalid edit is refused; the running config (sim B, small gate) is kept.
        (hm_home / "config.toml").write_text(
            sim_config(a, extra_toml='[capture]\nbody_max_bytes = "lots"\n')
        )
        refused = _sighup_and_wait(d, "config.reload_refused", log="err")
        assert "body_max_bytes" in refused["error"]
        served_by_a, served_by_b = len(a.requests), len(b.requests)
        mark = d.mark()
        with d.client() as http:
            assert http.post(OPENAI_CHAT, json=chat_body(1024)).status_code == 200
            assert http.post(GROQ_CHAT, json=chat_body()).status_code == 200
        rows = _sentinel_rows(d, mark)
        assert {r["host"] for r in rows} == {"api.openai.com", "api.groq.com"}
        openai_row = next(r for r in rows if r["host"] == "api.openai.com")
        assert openai_row["body_skip_reason"] == "body_too_large"  # the small gate is kept
        assert openai_row["request_body_path"] is None
        assert len(b.requests) - served_by_b >= 3 and len(a.requests) == served_by_a
    finally:
        d.stop()
    assert d.proc.returncode == 0


def test_sighup_with_an_unreadable_ca_bundle_is_refused_whole(
    hm_home: Path, two_sims: tuple[ProviderSim, ProviderSim], tmp_path: Path
) -> None:
    """A config that loads but whose CA file is not PEM: nothing of it is applied."""
    a, b = two_sims
    d = start_daemon(hm_home, a)
    try:
        bad = tmp_path / "not-a-ca.pem"
        bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        text = sim_config(b, extra_toml=f"[capture]\nbody_max_bytes = {SMALL_GATE}\n")
        text = text.replace(str(b.ca_path), str(bad))
        (hm_home / "config.toml").write_text(text)
        refused = _sighup_and_wait(d, "config.reload_refused", log="err")
        assert "ca_bundle" in refused["error"] and "PEM" in refused["error"]
        before_a = len(a.requests)
        mark = d.mark()
        with d.client() as http:
            assert http.post(OPENAI_CHAT, json=chat_body(1024)).status_code == 200
        [row] = d.wait_rows(1, since=mark)
        assert row["body_skip_reason"] is None and row["request_body_path"]  # old gate
        assert len(a.requests) == before_a + 1  # old map
    finally:
        d.stop()


# -- the real watchdog path ---------------------------------------------------------------------


def test_watchdog_applies_a_capture_edit_by_sighup_not_restart(
    hm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`halton-meter start` (real supervisord, watchdog and daemon): a `[capture]` edit reaches
    the running daemon as SIGHUP (the kernel shows its handler), same pid, applied live."""
    from halton_meter.service import control
    from halton_meter.service.orphans import end_processes, our_processes
    from halton_meter.service.rpc import program_infos

    entries: list[Any] = []
    spawn = control.spawn_entry

    def recording_spawn(home: Home) -> Any:
        entries.append(spawn(home))
        return entries[-1]

    monkeypatch.setattr(control, "spawn_entry", recording_spawn)
    home = Home.resolve()
    pins = "[ports]\n" + "".join(f"{k} = {free_port()}\n" for k in ("edge", "daemon", "api"))
    home.config.write_text(pins)
    try:
        outcome = control.start(home)
        assert outcome.ok, outcome.message

        def daemon_pid() -> int | None:
            infos = program_infos(home) or {}
            info = infos.get("daemon")
            return info.pid if info is not None and info.state == "RUNNING" else None

        pid = wait_until(daemon_pid, timeout=30, what="daemon running")
        wait_until(lambda: catches_sighup(pid), timeout=10, what="SIGHUP handler installed")
        out_log = home.daemon_out_log

        gates = iter(range(SMALL_GATE, SMALL_GATE + 1000))

        def reloaded() -> list[dict[str, Any]]:
            # Rewritten (a new value each time) until seen: the watchdog's watcher arms a
            # moment after it starts, and it compares with the config it loaded then.
            if not events(out_log.read_text(errors="replace"), "config.reloaded"):
                home.config.write_text(pins + f"[capture]\nbody_max_bytes = {next(gates)}\n")
            return events(out_log.read_text(errors="replace"), "config.reloaded")

        found = wait_until(reloaded, timeout=30, interval=0.5, what="daemon reloaded")
        assert "capture.body_max_bytes" in found[0]["changed"]
        assert daemon_pid() == pid  # applied live, not restarted
        watchdog_log = (home.root / "watchdog.out.log").read_text(errors="replace")
        assert any(
            e.get("program") == "daemon" and e.get("mode") == "sighup"
            for e in events(watchdog_log, "config.reloaded")
        ), watchdog_log[-2000:]
    finally:
        control.stop(home)
        end_processes(our_processes(home), timeout=3)
        for entry in entries:
            entry.kill()
            entry.wait(5)

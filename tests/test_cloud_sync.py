"""Cloud sync against a real HTTPS simulator: delivery, ordering, classification, recovery."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cloud_sim import CloudSim, write_config
from freezegun import freeze_time
from hmtest import PYTHON, REPO, clean_env, wait_until

from halton_meter.cloud import account
from halton_meter.cloud import state as cs
from halton_meter.cloud.client import CloudClient, classify_exception
from halton_meter.cloud.sync import CloudSync, backoff_delay
from halton_meter.core.config import PlaceholderBaseURL, load_config
from halton_meter.core.paths import Home
from halton_meter.store.model import Row
from halton_meter.store.writer import RowWriter

# The simulator's event loop and the HTTP stack keep real time under freezegun.
REAL_TIME_MODULES = [
    "asyncio",
    "uvicorn",
    "anyio",
    "starlette",
    "fastapi",
    "httpx",
    "httpcore",
    "h11",
    "ssl",
    "cloud_sim",
]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[CloudSim]:
    server = CloudSim(tmp_path / "sim-certs").start()
    yield server
    server.stop()


def _home(hm_home: Path, sim: CloudSim, **cloud: object) -> Home:
    write_config(hm_home, sim, **cloud)
    sim.add_key("k1", machine_id="m-1", workspace="ws-1")
    home = Home.resolve(hm_home)
    account.connect(home, load_config(home), token="k1")
    return home


def _sync(home: Home, **kw: object) -> CloudSync:
    return CloudSync(home, load_config(home), **kw)  # type: ignore[arg-type]


def add_rows(home: Home, n: int, **fields: object) -> list[str]:
    rows = [Row(**fields) for _ in range(n)]  # type: ignore[arg-type]
    with RowWriter(home.db) as writer:
        for row in rows:
            writer.submit(row)
        assert writer.flush(30)
    return [r.id for r in rows]


def test_rows_go_in_batches_with_a_deterministic_idempotency_key(
    hm_home: Path, sim: CloudSim
) -> None:
    home = _home(hm_home, sim, batch_size=50)
    ids = add_rows(home, 120, model="claude-x", input_tokens=3, request_body_path="x/y.request")
    result = _sync(home).sync_once()
    assert (result.batches, result.accepted, result.duplicates, result.pending) == (3, 120, 0, 0)
    assert set(sim.rows) == set(ids)
    # Insertion order, batch by batch; the key is the hash of exactly those ids.
    sent = [i for b in sim.batches for i in b["ids"]]
    assert sent == ids
    first = sim.batches[0]
    assert first["idempotency_key"].endswith(
        hashlib.sha256("\n".join(ids[:50]).encode()).hexdigest()[:40]
    )
    # Rows as report --json has them; no local body paths, no bodies.
    row = sim.rows[ids[0]]
    assert row["model"] == "claude-x" and row["input_tokens"] == 3 and row["id"] == ids[0]
    assert "request_body_path" not in row and "request_body_b64" not in row
    st = cs.load_state(home)
    assert st.state == cs.ACTIVE and st.last_success and st.accepted_total == 120
    # Nothing left: a second pass sends nothing.
    assert _sync(home).sync_once().batches == 0
    assert sim.batch_calls() == 3


def test_bodies_go_only_when_send_bodies(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim, send_bodies=True)
    (home.bodies / "2026-12-04").mkdir(parents=True)
    (home.bodies / "2026-12-04" / "r.request").write_bytes(b'{"prompt": "hi"}')
    [rid] = add_rows(home, 1, request_body_path="2026-12-04/r.request")
    _sync(home).sync_once()
    import base64

    assert base64.b64decode(sim.rows[rid]["request_body_b64"]) == b'{"prompt": "hi"}'


def test_batches_with_bodies_are_capped_in_size(
    hm_home: Path, sim: CloudSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    from halton_meter.cloud import rows

    monkeypatch.setattr(rows, "MAX_BODY_BYTES_PER_BATCH", 3000)
    home = _home(hm_home, sim, send_bodies=True, batch_size=100)
    (home.bodies / "d").mkdir(parents=True)
    (home.bodies / "d" / "big.request").write_bytes(b"x" * 1500)  # 2000 base64 chars
    ids = add_rows(home, 6, request_body_path="d/big.request")
    result = _sync(home).sync_once()
    assert result.accepted == 6 and set(sim.rows) == set(ids)
    assert [len(b["ids"]) for b in sim.batches] == [2, 2, 2]


def test_ten_thousand_rows_arrive_exactly_once(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim, batch_size=500)
    ids = add_rows(home, 10_000, model="m")
    result = _sync(home).sync_once()
    assert result.accepted == 10_000 and result.duplicates == 0 and result.pending == 0
    assert len(sim.rows) == 10_000 and set(sim.rows) == set(ids)
    assert max(sim.accepted.values()) == 1
    assert sum(len(b["ids"]) for b in sim.batches) == 10_000  # none sent twice either
    assert not sim.idempotency_conflicts


def test_a_late_row_with_an_older_ts_is_not_skipped(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 5)
    _sync(home).sync_once()
    [late] = add_rows(home, 1, ts=datetime.now(UTC) - timedelta(days=2))
    result = _sync(home).sync_once()
    assert result.accepted == 1 and late in sim.rows


def test_401_on_batch_pauses_unauthorised(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 3)
    sim.set_key_status("k1", "revoked")
    result = _sync(home).sync_once()
    st = cs.load_state(home)
    assert (st.state, st.paused_reason) == (cs.PAUSED, cs.PAUSED_UNAUTHORISED)
    assert result.error and "401" in result.error and not sim.rows
    calls = sim.batch_calls()
    assert _sync(home).sync_once().skipped == "paused"
    assert sim.batch_calls() == calls  # paused: nothing more goes out
    assert account.read_token(home) == "k1"


def test_403_pauses_forbidden_and_keeps_the_key(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 3)
    sim.set_key_status("k1", "forbidden")
    _sync(home).sync_once()
    st = cs.load_state(home)
    assert (st.state, st.paused_reason) == (cs.PAUSED, cs.PAUSED_FORBIDDEN)
    assert account.read_token(home) == "k1"
    assert sim.revoked == []
    assert sim.count("POST", "/v1/daemon/revoke") == 0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_status_sets_last_error_and_retries_without_pausing(
    hm_home: Path, sim: CloudSim, status: int
) -> None:
    home = _home(hm_home, sim)
    ids = add_rows(home, 4)
    sim.fail_next(status)
    start = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with freeze_time(start, ignore=REAL_TIME_MODULES) as frozen:
        result = _sync(home).sync_once()
        st = cs.load_state(home)
        assert st.state == cs.ACTIVE and st.paused_reason is None
        assert st.last_error and f"HTTP {status}" in st.last_error
        assert st.last_error.startswith("cloud.transport_error")
        assert st.consecutive_failures == 1 and result.error
        assert not sim.rows
        frozen.move_to(start + timedelta(seconds=2))  # past the first backoff step (<= 1 s)
        result = _sync(home).sync_once()
    assert result.accepted == 4 and set(sim.rows) == set(ids)
    st = cs.load_state(home)
    assert st.consecutive_failures == 0 and st.retry_at is None


def test_429_retry_after_is_honoured(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 2)
    sim.fail_next(429, headers={"Retry-After": "30"})
    start = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with freeze_time(start, ignore=REAL_TIME_MODULES) as frozen:
        result = _sync(home).sync_once()
        assert 29.9 <= result.next_delay_s <= 30.1
        retry_at = datetime.fromisoformat(str(cs.load_state(home).retry_at))
        assert retry_at == start + timedelta(seconds=30)
        frozen.move_to(start + timedelta(seconds=29))
        assert _sync(home).sync_once().skipped == "backoff"
        assert sim.batch_calls() == 1  # nothing sent before Retry-After
        frozen.move_to(start + timedelta(seconds=31))
        assert _sync(home).sync_once().accepted == 2
    assert sim.batch_calls() == 2


def test_backoff_schedule_is_exponential_with_jitter(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 1)
    sim.fail_next(503, times=6)
    start = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    delays = []
    with freeze_time(start, ignore=REAL_TIME_MODULES) as frozen:
        now = start
        for _ in range(6):
            _sync(home).sync_once()
            retry_at = datetime.fromisoformat(str(cs.load_state(home).retry_at))
            delays.append((retry_at - now).total_seconds())
            now = retry_at + timedelta(milliseconds=1)
            frozen.move_to(now)
        assert _sync(home).sync_once().accepted == 1
    for n, delay in enumerate(delays):
        step = 2.0**n
        assert step / 2 <= delay <= step, (n, delays)
    assert sim.batch_calls() == 7


def test_backoff_delay_caps_and_honours_retry_after() -> None:
    import random

    rng = random.Random(1)
    assert 150 <= backoff_delay(30, None, rng) <= 300
    assert backoff_delay(1, 120.0, rng) == 120.0
    assert backoff_delay(1, 10**9, rng) == 3600.0
    draws = {round(backoff_delay(4, None, rng), 6) for _ in range(20)}
    assert len(draws) > 1  # jitter


def test_timeout_is_transient(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 1)
    sim.batch_delay_s = 2.0
    sync = _sync(home, http_timeout=httpx.Timeout(5.0, read=0.3))
    result = sync.sync_once()
    st = cs.load_state(home)
    assert st.state == cs.ACTIVE and st.last_error and "Timeout" in st.last_error
    assert result.error and result.pending == 1


def test_dns_failure_is_classified_transient() -> None:
    outcome = classify_exception(
        httpx.ConnectError("[Errno -2] Name or service not known"), "https://api.example"
    )
    assert outcome.kind == "transient" and "cloud.transport_error" in str(outcome.error)


@pytest.mark.parametrize("status", [422, 400])
def test_a_refused_batch_is_bisected_and_the_poisoned_row_set_aside(
    hm_home: Path, sim: CloudSim, status: int
) -> None:
    home = _home(hm_home, sim, batch_size=16)
    ids = add_rows(home, 16)
    poisoned = ids[11]
    sim.poisoned[poisoned] = "cost_usd is not a decimal"
    if status == 400:
        # The simulator answers 422 for poisoned rows; make the first refusal a 400.
        sim.fail_next(400)
    result = _sync(home).sync_once()
    assert result.quarantined == [poisoned]
    assert set(sim.rows) == set(ids) - {poisoned}
    st = cs.load_state(home)
    assert st.state == cs.ACTIVE and st.paused_reason is None
    assert [q["id"] for q in st.quarantined] == [poisoned]
    assert "cost_usd is not a decimal" in st.quarantined[0]["reason"] or status == 400
    assert st.last_error and "cloud.rejected" in st.last_error
    data = account.status(home, load_config(home))
    assert data["pending"] == 0
    assert data["quarantined"][0]["id"] == poisoned and data["quarantined"][0]["reason"]
    # The rest keeps flowing afterwards.
    more = add_rows(home, 3)
    _sync(home).sync_once()
    assert set(more) <= set(sim.rows)


def test_server_down_then_back_everything_arrives(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    first = add_rows(home, 10)
    sim.stop()
    stop = threading.Event()
    sync = _sync(home, idle_interval_s=0.1, paused_interval_s=0.1)
    thread = threading.Thread(target=sync.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: cs.load_state(home).last_error, what="a transport error")
        st = cs.load_state(home)
        assert st.last_error and st.last_error.startswith("cloud.transport_error")
        assert st.state == cs.ACTIVE
        second = add_rows(home, 10)
        sim.start()  # same port
        wait_until(lambda: len(sim.rows) == 20, timeout=20, what="every row after the outage")
        assert set(sim.rows) == set(first + second)
        assert max(sim.accepted.values()) == 1
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_manual_pause_stops_the_sync(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 2)
    account.pause(home)
    assert _sync(home).sync_once().skipped == "paused"
    assert sim.batch_calls() == 0


def test_proxy_variables_are_ignored(
    hm_home: Path, sim: CloudSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 2)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens: would fail
    assert _sync(home).sync_once().accepted == 2


def test_untrusted_server_certificate_is_refused(hm_home: Path, sim: CloudSim) -> None:
    (hm_home / "config.toml").write_text(f'[cloud]\nbase_url = "{sim.base_url}"\n')
    home = Home.resolve(hm_home)
    account.write_token(home, "k1")
    sim.add_key("k1")
    add_rows(home, 1)
    result = _sync(home).sync_once()
    assert result.error and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert not sim.rows


def test_placeholder_base_url_raises_at_once(hm_home: Path) -> None:
    (hm_home / "config.toml").write_text('[cloud]\nbase_url = "https://api.haltonmeter.test"\n')
    home = Home.resolve(hm_home)
    account.write_token(home, "k1")
    add_rows(home, 1)
    config = load_config(home)
    began = time.monotonic()
    with pytest.raises(PlaceholderBaseURL):
        CloudClient(config)
    result = _sync(home).sync_once()
    assert time.monotonic() - began < 1.0  # never waited on a resolver or a timeout
    st = cs.load_state(home)
    assert st.last_error and st.last_error.startswith("cloud.transport_error")
    assert "https://api.haltonmeter.test" in st.last_error and str(home.config) in st.last_error
    assert result.error == st.last_error and st.state != cs.PAUSED
    status = account.status(home, config)
    assert str(home.config) in str(status["last_error"])


def test_a_pass_over_a_missing_store_sends_nothing(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    result = _sync(home).sync_once()
    assert result.pending == 0 and result.batches == 0 and sim.batch_calls() == 0


def test_kill_9_mid_batch_then_restart_delivers_each_row_exactly_once(
    hm_home: Path, sim: CloudSim
) -> None:
    home = _home(hm_home, sim, batch_size=100)
    ids = add_rows(home, 250)
    sim.batch_delay_s = 30.0  # the server stores the first batch, then holds the answer
    env = clean_env(hm_home)
    cmd = [PYTHON, "-m", "halton_meter.cloud", "--interval", "0.1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert sim.batch_received.wait(20), "the sync never sent a batch"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(sim.rows) == 100  # the server has the first batch ...
    assert cs.load_state(home).cursor == 0  # ... the client never heard back
    sim.batch_delay_s = 0.0
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(sim.rows) == 250, timeout=30, what="every row after restart")
        wait_until(lambda: cs.load_state(home).cursor > 0 and _pending(home) == 0, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert set(sim.rows) == set(ids)
    assert max(sim.accepted.values()) == 1  # exactly once on the server
    # The re-sent first batch came back as duplicates, under the same Idempotency-Key.
    assert cs.load_state(home).duplicates_total == 100
    assert not sim.idempotency_conflicts
    first_key = sim.batches[0]["idempotency_key"]
    assert sum(1 for b in sim.batches if b["idempotency_key"] == first_key) == 2
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in err


def _pending(home: Home) -> int:
    return int(account.status(home, load_config(home))["pending"])


def test_batch_sent_is_logged(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 3)
    env = clean_env(hm_home)
    proc = subprocess.Popen(
        [PYTHON, "-m", "halton_meter.cloud", "--interval", "0.1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: len(sim.rows) == 3, what="rows")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    sent = [e for e in events if e["event"] == "cloud.batch_sent"]
    assert sent and sent[0]["count"] == 3 and sent[0]["accepted"] == 3
    assert sent[0]["duplicates"] == 0


def test_an_explicit_cloud_proxy_is_used(hm_home: Path, sim: CloudSim) -> None:
    from cloud_sim import ConnectProxy

    proxy = ConnectProxy()
    try:
        home = _home(hm_home, sim, proxy=proxy.url)
        add_rows(home, 2)
        assert _sync(home).sync_once().accepted == 2
        assert f"127.0.0.1:{sim.port}" in proxy.targets
    finally:
        proxy.close()


def test_a_server_refusing_everything_does_not_quarantine_everything(
    hm_home: Path, sim: CloudSim
) -> None:
    from halton_meter.cloud.sync import MAX_CONSECUTIVE_QUARANTINE

    home = _home(hm_home, sim, batch_size=64)
    ids = add_rows(home, MAX_CONSECUTIVE_QUARANTINE + 10)
    for rid in ids:
        sim.poisoned[rid] = "schema v9 required"
    start = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with freeze_time(start, ignore=REAL_TIME_MODULES) as frozen:
        result = _sync(home).sync_once()
        assert len(result.quarantined) == MAX_CONSECUTIVE_QUARANTINE
        st = cs.load_state(home)
        assert st.state == cs.ACTIVE and st.retry_at is not None
        assert st.last_error and "holding row" in st.last_error
        assert result.pending == 10
        sim.poisoned.clear()  # the server is fixed
        frozen.move_to(start + timedelta(seconds=5))
        result = _sync(home).sync_once()
    assert result.accepted == 10 and result.pending == 0
    assert cs.load_state(home).consecutive_quarantined == 0


def test_a_replaced_database_is_synced_from_its_start(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim)
    old = add_rows(home, 30)
    assert _sync(home).sync_once().accepted == 30
    # The user moves a damaged store aside; the daemon starts a fresh one (seq from 1).
    for suffix in ("", "-wal", "-shm"):
        Path(f"{home.db}{suffix}").unlink(missing_ok=True)
    new = add_rows(home, 5)
    assert account.status(home, load_config(home))["pending"] == 5
    result = _sync(home).sync_once()
    assert result.accepted == 5 and set(new) <= set(sim.rows)
    assert len(sim.rows) == len(old) + len(new)


def test_a_database_with_a_different_row_at_the_cursor_is_synced_again(
    hm_home: Path, sim: CloudSim
) -> None:
    home = _home(hm_home, sim)
    add_rows(home, 3)
    _sync(home).sync_once()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{home.db}{suffix}").unlink(missing_ok=True)
    fresh = add_rows(home, 10)  # grown past the old cursor before the sync looked
    result = _sync(home).sync_once()
    assert result.accepted == 10 and set(fresh) <= set(sim.rows)


def test_the_loop_notices_a_resume_and_logs_it(
    hm_home: Path, sim: CloudSim, capsys: pytest.CaptureFixture[str]
) -> None:
    from halton_meter.core.logging import configure_logging

    configure_logging("daemon", json_lines=True)
    try:
        home = _home(hm_home, sim)
        add_rows(home, 2)
        account.pause(home)
        sync = _sync(home)
        assert sync.sync_once().skipped == "paused"
        account.resume(home, load_config(home))
        assert sync.sync_once().accepted == 2
    finally:
        configure_logging("cli", level=logging.WARNING)
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    resumed = [e for e in events if e["event"] == "cloud.resumed"]
    assert resumed and resumed[-1]["was"] == "paused_manual"
    sent = [e for e in events if e["event"] == "cloud.batch_sent"]
    assert sent and sent[-1]["accepted"] == 2


def test_a_413_batch_is_split_and_delivered(hm_home: Path, sim: CloudSim) -> None:
    home = _home(hm_home, sim, batch_size=8)
    ids = add_rows(home, 8)
    sim.fail_next(413)
    result = _sync(home).sync_once()
    assert result.accepted == 8 and not result.quarantined and set(sim.rows) == set(ids)
    assert [len(b["ids"]) for b in sim.batches] == [4, 4]

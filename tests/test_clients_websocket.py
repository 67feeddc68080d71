"""Responses over WebSocket (Codex's transport) metered by the real daemon against the sim:
one row per response, exact tokens, messages relayed as they come, partial rows when the
socket drops, the client aborts or the daemon stops mid-response."""

from __future__ import annotations

import json
import time

from fixtures_clients import WsClient, create
from fixtures_daemon import DaemonHandle
from hmtest import wait_until

pytest_plugins = ["fixtures_daemon"]

USAGE = {"input_tokens": 1200, "output_tokens": 37, "cache_read_tokens": 800, "reasoning_tokens": 9}
# On the Responses wire (sim mapping): input includes the cache reads.
WIRE_INPUT = 1200 + 800


def _usage_header(**over: int) -> tuple[str, str]:
    return ("x-sim-usage", json.dumps({**USAGE, **over}))


def test_one_row_per_response_with_exact_tokens(daemon: DaemonHandle) -> None:
    with WsClient.open(
        daemon.port, daemon.ca_cert, headers=[("authorization", "Bearer sk-ws"), _usage_header()]
    ) as ws:
        assert ws.status == 101
        ws.send(create("gpt-5-codex"))
        ws.receive_until(["response.completed"])
        ws.send(create("gpt-5", "second"))
        ws.receive_until(["response.completed"])
        ws.close()
    rows = daemon.wait_rows(2)
    assert [r["model"] for r in rows] == ["gpt-5-codex", "gpt-5"]
    for r in rows:
        assert (r["provider"], r["api"], r["host"], r["method"], r["path"]) == (
            "openai",
            "responses",
            "api.openai.com",
            "GET",
            "/v1/responses",
        )
        assert r["input_tokens"] == WIRE_INPUT and r["output_tokens"] == 37
        assert r["cache_read_tokens"] == 800 and r["reasoning_tokens"] == 9
        assert r["stream"] == 1 and r["partial"] == 0 and r["error"] is None
        assert r["priced"] == 1 and r["cost_usd"] not in (None, "", "0")
        assert json.loads(r["usage_json"])["input_tokens"] == WIRE_INPUT
        assert "sk-ws" not in json.dumps(r)
    (rec,) = daemon.sim.wait_for_requests(1)
    assert [c["model"] for c in rec.ws_calls] == ["gpt-5-codex", "gpt-5"]
    assert rec.headers["authorization"] == "Bearer sk-ws"  # reached upstream, never stored
    time.sleep(0.3)  # no further row appears for the closed socket
    assert len(daemon.rows()) == 2


def test_messages_are_relayed_as_they_come(daemon: DaemonHandle) -> None:
    # 6 deltas 250 ms apart: if the daemon held messages until the end, the first delta would
    # arrive with the last; relayed one by one, the gap between them is ~1.25 s.
    headers = [("x-sim-events", "6"), ("x-sim-delay-ms", "250")]
    with WsClient.open(daemon.port, daemon.ca_cert, headers=headers) as ws:
        ws.send(create("gpt-5-codex"))
        events = ws.receive_until(["response.completed"])
        ws.close()
    deltas = [e for e in events if e.obj["type"] == "response.output_text.delta"]
    assert len(deltas) == 6
    assert events[-1].at - deltas[0].at >= 1.0
    (row,) = daemon.wait_rows(1)
    assert row["output_tokens"] == 6 and row["partial"] == 0
    assert row["latency_ms"] >= 1000 and row["ttfb_ms"] is not None and row["ttfb_ms"] < 1000


def test_socket_dropped_mid_response_is_a_partial_row(daemon: DaemonHandle) -> None:
    # The upstream drops the socket after 3 messages: created, in_progress, one delta.
    headers = [("x-sim-truncate", "after=3"), ("x-sim-events", "5")]
    with WsClient.open(daemon.port, daemon.ca_cert, headers=headers) as ws:
        ws.send(create("gpt-5-codex"))
        ws.read_to_eof()
    assert [e.obj["type"] for e in ws.events][0] == "response.created"
    (row,) = daemon.wait_rows(1)
    assert row["partial"] == 1 and row["model"] == "gpt-5-codex"
    assert row["error"] and "mid-response" in row["error"], row["error"]
    assert row["output_tokens"] is None and row["cost_usd"] is None
    assert daemon.sim.requests[-1].truncated


def test_client_abort_still_meters_what_the_upstream_sends(daemon: DaemonHandle) -> None:
    # The client hangs up without a close frame (a killed process). The daemon closes its
    # side to the upstream; what the upstream still sends (here: the whole response, the sim
    # ignores close frames) is read and billed: the provider charges for it.
    headers = [("x-sim-events", "20"), ("x-sim-delay-ms", "50")]
    with WsClient.open(daemon.port, daemon.ca_cert, headers=headers) as ws:
        ws.send(create("gpt-5-codex"))
        ws.receive_until(["response.output_text.delta"])
    (row,) = daemon.wait_rows(1)
    assert row["model"] == "gpt-5-codex" and row["output_tokens"] == 20
    assert row["partial"] == 0 and row["priced"] == 1


def test_incomplete_and_failed_responses(daemon: DaemonHandle) -> None:
    for outcome in ("incomplete", "failed"):
        headers = [("x-sim-outcome", outcome), _usage_header()]
        with WsClient.open(daemon.port, daemon.ca_cert, headers=headers) as ws:
            ws.send(create("gpt-5"))
            ws.receive_until([f"response.{outcome}"])
            ws.close()
    rows = daemon.wait_rows(2)
    incomplete, failed = rows
    assert incomplete["output_tokens"] == 37 and incomplete["error"] is None
    assert failed["output_tokens"] == 37 and failed["error"]


def test_daemon_stop_mid_response_writes_a_partial_row(daemon: DaemonHandle) -> None:
    headers = [("x-sim-events", "50"), ("x-sim-delay-ms", "200")]
    with WsClient.open(daemon.port, daemon.ca_cert, headers=headers) as ws:
        ws.send(create("gpt-5-codex"))
        ws.receive_until(["response.output_text.delta"])
        assert daemon.stop() == 0
    rows = daemon.rows()
    assert len(rows) == 1 and rows[0]["partial"] == 1 and rows[0]["model"] == "gpt-5-codex"


def test_non_model_socket_on_provider_host_makes_no_row(daemon: DaemonHandle) -> None:
    # A handshake the upstream refuses is no model call: relayed, no row.
    with WsClient.open(daemon.port, daemon.ca_cert, headers=[("x-sim-status", "429")]) as ws:
        assert ws.status == 429
    wait_until(lambda: daemon.sim.requests, what="handshake reached the sim")
    time.sleep(0.3)
    assert daemon.rows() == []


def test_large_request_message_is_read_from_its_head(daemon: DaemonHandle) -> None:
    # A long conversation resent in full (2 MiB): relayed whole, its model sniffed, not parsed.
    big = {"type": "response.create", "model": "gpt-5-codex", "input": "x" * (2 * 1024 * 1024)}
    with WsClient.open(daemon.port, daemon.ca_cert, headers=[_usage_header()]) as ws:
        ws.send(big)
        ws.receive_until(["response.completed"])
        ws.close()
    (row,) = daemon.wait_rows(1)
    assert row["model"] == "gpt-5-codex" and row["output_tokens"] == 37
    assert row["request_bytes"] > 2 * 1024 * 1024
    (rec,) = daemon.sim.wait_for_requests(1)
    assert rec.ws_calls[0]["model"] == "gpt-5-codex"  # the upstream got the message intact

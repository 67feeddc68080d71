# ruff: noqa: F811  (pytest fixtures imported by name)
"""Capture behaviour through the real daemon: encodings, errors, partial rows, the body gate,
pass-through streaming, non-model calls, credentials. One daemon for the module."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures_daemon import DOWN_HOST, DaemonHandle, shared_daemon  # noqa: F401

ANTHROPIC = "https://api.anthropic.com/v1/messages"
OPENAI_CHAT = "https://api.openai.com/v1/chat/completions"
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-capture", "anthropic-version": "2023-06-01"}
USAGE = {"input_tokens": 50, "output_tokens": 7}


def messages_body(
    stream: bool, model: str = "claude-sonnet-4-5", text: str = "hi"
) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


def knobs(**values: Any) -> dict[str, str]:
    out = {f"x-sim-{k.replace('_', '-')}": str(v) for k, v in values.items()}
    return {**ANTHROPIC_HEADERS, **out}


def body_file(d: DaemonHandle, relpath: str | None) -> Path:
    assert relpath, "no body file recorded"
    path = d.home / "bodies" / relpath
    assert path.exists(), path
    return path


# -- content encodings ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("stream", [True, False])
def test_compressed_responses_are_metered_and_passed_through(
    shared_daemon: DaemonHandle, encoding: str, stream: bool
) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        resp = http.post(
            ANTHROPIC,
            json=messages_body(stream),
            headers=knobs(encoding=encoding, usage=json.dumps(USAGE)),
        )
    assert resp.status_code == 200
    # Still encoded on the wire to the client (the daemon did not rewrite it) ...
    assert resp.headers["content-encoding"] == encoding
    # ... and the client decodes it intact.
    assert ("message_stop" in resp.text) if stream else (resp.json()["usage"]["output_tokens"] == 7)
    [row] = d.wait_rows(1, since=mark)
    assert (row["input_tokens"], row["output_tokens"], row["status"]) == (50, 7, 200)
    assert not row["partial"] and row["stream"] == int(stream)
    # The stored body is the decoded one.
    stored = body_file(d, row["response_body_path"]).read_bytes()
    assert (
        (b"message_stop" in stored)
        if stream
        else (json.loads(stored)["usage"]["output_tokens"] == 7)
    )


# -- errors and partial rows ---------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500])
def test_upstream_error_is_a_row_with_status_and_message(
    shared_daemon: DaemonHandle, status: int
) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        resp = http.post(ANTHROPIC, json=messages_body(False), headers=knobs(status=status))
    assert resp.status_code == status
    expected = resp.json()["error"]["message"]
    [row] = d.wait_rows(1, since=mark)
    assert row["status"] == status
    assert expected in row["error"], row
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert row["cost_usd"] is None and row["priced"] == 0
    assert not row["partial"]


def test_openai_error_row(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        resp = http.post(
            OPENAI_CHAT,
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": "Bearer sk-x", "x-sim-status": "429"},
        )
    assert resp.status_code == 429
    [row] = d.wait_rows(1, since=mark)
    assert row["status"] == 429 and resp.json()["error"]["message"] in row["error"]
    assert row["model"] == "gpt-4o"


def test_upstream_unreachable_is_a_row_with_no_status(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        resp = http.post(
            f"https://{DOWN_HOST}/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        )
    assert resp.status_code == 502  # mitmproxy tells the client the upstream is down
    [row] = d.wait_rows(1, since=mark)
    assert row["status"] is None and row["error"], row
    assert row["host"] == DOWN_HOST and row["model"] == "gpt-4o"
    assert row["input_tokens"] is None


def test_client_abort_mid_stream_writes_a_partial_row(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark, before = d.mark(), len(d.sim.requests)
    usage = {"input_tokens": 80, "output_tokens": 500}
    with (
        d.client() as http,
        http.stream(
            "POST",
            ANTHROPIC,
            json=messages_body(True),
            headers=knobs(events=500, delay_ms=20, usage=json.dumps(usage)),
        ) as resp,
    ):
        assert resp.status_code == 200
        seen = b""
        for chunk in resp.iter_raw():
            seen += chunk
            if b"content_block_delta" in seen:
                break  # hang up with the stream still running
    [row] = d.wait_rows(1, since=mark)
    rec = d.sim.wait_for_requests(before + 1, completed=False)[before]
    assert row["partial"] == 1, row
    assert row["error"], row
    # What was seen is kept: message_start reported the input side.
    assert row["input_tokens"] == 80
    assert row["status"] == 200 and row["stream"] == 1
    assert not rec.progress.completed


def test_truncated_stream_is_partial(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as http, pytest.raises(httpx.HTTPError):
        # The upstream closes after 3 events without ending the chunked body: the client
        # sees a broken stream, exactly as it would without the meter.
        http.post(
            ANTHROPIC,
            json=messages_body(True),
            headers=knobs(truncate="after=3", usage=json.dumps(USAGE)),
        ).read()
    [row] = d.wait_rows(1, since=mark)
    assert row["partial"] == 1 and row["input_tokens"] == 50
    assert row["output_tokens"] in (None, 1)  # message_start's placeholder at most, never 7


def test_malformed_json_body_keeps_the_row(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    errors_before = _parse_errors(d)
    with d.client() as http:
        resp = http.post(ANTHROPIC, json=messages_body(False), headers=knobs(malformed=1))
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        json.loads(resp.content)  # the client got the same broken bytes
    [row] = d.wait_rows(1, since=mark)
    assert row["status"] == 200 and row["input_tokens"] is None
    assert row["model"] == "claude-sonnet-4-5"  # from the request
    assert row["partial"] == 1
    _wait_stat(d, "parse_errors", errors_before + 1)


def test_malformed_stream_event_does_not_stop_metering(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    errors_before = _parse_errors(d)
    with d.client() as http:
        resp = http.post(
            ANTHROPIC, json=messages_body(True), headers=knobs(malformed=1, usage=json.dumps(USAGE))
        )
    assert resp.status_code == 200 and "{oops" in resp.text
    [row] = d.wait_rows(1, since=mark)
    assert (row["input_tokens"], row["output_tokens"]) == (50, 7)
    _wait_stat(d, "parse_errors", errors_before + 1)


def test_unknown_model_is_stored_unpriced(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        resp = http.post(
            ANTHROPIC,
            json=messages_body(False, model="claude-imaginary-9"),
            headers=knobs(usage=json.dumps(USAGE)),
        )
    assert resp.status_code == 200
    [row] = d.wait_rows(1, since=mark)
    assert row["model"] == "claude-imaginary-9"
    assert (row["input_tokens"], row["output_tokens"]) == (50, 7)
    assert row["priced"] == 0 and row["cost_usd"] is None and row["price_note"]


# -- non-model calls ---------------------------------------------------------------------------


def test_count_tokens_and_models_make_no_row(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark, before = d.mark(), len(d.sim.requests)
    with d.client() as http:
        r1 = http.post(
            "https://api.anthropic.com/v1/messages/count_tokens",
            json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]},
            headers=ANTHROPIC_HEADERS,
        )
        r2 = http.get("https://api.anthropic.com/v1/models", headers=ANTHROPIC_HEADERS)
        r3 = http.get("https://api.openai.com/v1/models", headers={"authorization": "Bearer x"})
        r4 = http.get("https://api.anthropic.com/api/oauth/profile", headers=ANTHROPIC_HEADERS)
        # then one model call, so "no row" is not just "not yet"
        r5 = http.post(ANTHROPIC, json=messages_body(False), headers=ANTHROPIC_HEADERS)
    assert [r.status_code for r in (r1, r2, r3, r5)] == [200, 200, 200, 200]
    assert r1.json()["input_tokens"] > 0  # the answer passed through untouched
    assert r4.status_code < 500  # whatever the provider answered, passed through
    assert len(d.sim.requests) - before == 5  # every call reached upstream
    # Rows are written in completion order: once the model call's row is there, a row for
    # any earlier call would be too.
    rows = d.wait_rows(1, since=mark)
    assert [(r["api"], r["path"]) for r in rows] == [("messages", "/v1/messages")]


# -- bodies --------------------------------------------------------------------------------


def test_bodies_are_stored_0600(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        http.post(
            ANTHROPIC, json=messages_body(False, text="body-marker-123"), headers=ANTHROPIC_HEADERS
        )
    [row] = d.wait_rows(1, since=mark)
    req = body_file(d, row["request_body_path"])
    resp = body_file(d, row["response_body_path"])
    assert b"body-marker-123" in req.read_bytes()
    assert json.loads(resp.read_bytes())["type"] == "message"
    for path in (req, resp):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(req.parent.stat().st_mode) == 0o700
    assert row["body_skip_reason"] is None


def test_large_request_body_is_streamed_row_kept_body_skipped(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark, before = d.mark(), len(d.sim.requests)
    big = "x" * (10 * 1024 * 1024)
    with d.client() as http:
        resp = http.post(ANTHROPIC, json=messages_body(False, text=big), headers=ANTHROPIC_HEADERS)
    assert resp.status_code == 200
    rec = d.sim.wait_for_requests(before + 1, completed=False)[before]
    assert rec.body_size > 10 * 1024 * 1024  # the whole upload reached the provider
    [row] = d.wait_rows(1, since=mark)
    assert row["body_skip_reason"] == "body_too_large"
    assert row["request_body_path"] is None
    assert row["request_bytes"] == rec.body_size
    assert row["model"] == "claude-sonnet-4-5" and row["status"] == 200
    u = rec.usage_canonical
    assert u is not None and row["input_tokens"] == u["input_tokens"]
    # The small response body is still kept.
    assert body_file(d, row["response_body_path"]).stat().st_size > 0
    assert not list((d.home / "bodies").rglob(f"{row['id']}.request"))

    def skip_logged() -> bool:
        for line in d.stdout().splitlines():
            if "addon.body_capture.skip" in line and row["id"] in line:
                event = json.loads(line)
                return (
                    event["reason"] == "body_too_large" and "reason=body_too_large" in event["msg"]
                )
        return False

    deadline = time.monotonic() + 5
    while not skip_logged():
        assert time.monotonic() < deadline, d.stdout()[-2000:]
        time.sleep(0.05)


def test_large_streamed_response_body_is_skipped(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        resp = http.post(
            ANTHROPIC,
            json=messages_body(True),
            headers=knobs(response_bytes=5 * 1024 * 1024),
        )
    assert resp.status_code == 200 and len(resp.content) > 5 * 1024 * 1024
    [row] = d.wait_rows(1, since=mark)
    assert row["body_skip_reason"] == "body_too_large"
    assert row["response_body_path"] is None and row["request_body_path"]
    assert row["output_tokens"] == (5 * 1024 * 1024) // 4
    assert not row["partial"]


# -- streaming pass-through ------------------------------------------------------------------


def test_stream_events_reach_the_client_before_the_stream_ends(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark, before = d.mark(), len(d.sim.requests)
    first_event_at: float | None = None
    with (
        d.client() as http,
        http.stream(
            "POST", ANTHROPIC, json=messages_body(True), headers=knobs(events=6, delay_ms=150)
        ) as resp,
    ):
        for chunk in resp.iter_raw():
            if first_event_at is None and b"content_block_delta" in chunk:
                first_event_at = time.monotonic()
    rec = d.sim.wait_for_requests(before + 1, completed=False)[before]
    # The sim runs in this process: its clock is ours. The client had a text delta in hand
    # before the provider sent its last event: nothing was buffered to the end.
    assert first_event_at is not None
    assert rec.progress.last_event_at is not None
    assert first_event_at < rec.progress.last_event_at
    [row] = d.wait_rows(1, since=mark)
    assert row["stream"] == 1 and not row["partial"] and row["output_tokens"] == 6


# -- credentials -------------------------------------------------------------------------------

SECRETS = {
    "anthropic": "sk-ant-SECRET-a1b2c3",
    "openai": "sk-proj-SECRET-d4e5f6",
    "gemini_header": "AIzaSECRET-g7h8i9",
    "gemini_query": "AIzaSECRET-query-j0k1",
    "azure": "azSECRET-l2m3n4",
    "cookie": "session=SECRET-cookie-o5p6",
}


def test_credentials_are_stored_nowhere(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    mark, before = d.mark(), len(d.sim.requests)
    with d.client() as http:
        http.post(
            ANTHROPIC,
            json=messages_body(True),
            headers={
                **ANTHROPIC_HEADERS,
                "x-api-key": SECRETS["anthropic"],
                "cookie": SECRETS["cookie"],
            },
        )
        http.post(
            OPENAI_CHAT,
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {SECRETS['openai']}"},
        )
        http.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
            f"?key={SECRETS['gemini_query']}&alt=json",
            json={"contents": [{"parts": [{"text": "x"}]}]},
            headers={"x-goog-api-key": SECRETS["gemini_header"]},
        )
        http.post(
            "https://myres.openai.azure.com/openai/deployments/dep/chat/completions?api-version=1",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers={"api-key": SECRETS["azure"]},
        )
    rows = {r["provider"]: r for r in d.wait_rows(4, since=mark)}
    recs = d.sim.wait_for_requests(before + 4, completed=False)[before:]
    # The credentials did reach the provider (the meter must not strip them) ...
    assert recs[0].header("x-api-key") == SECRETS["anthropic"]
    assert recs[2].query.get("key") == SECRETS["gemini_query"]
    # ... and the stored path lost only the key.
    assert rows["gemini"]["path"] == "/v1beta/models/gemini-2.5-flash:generateContent?alt=json"
    files = [d.db, *d.home.glob("db.sqlite*"), *d.home.rglob("bodies/**/*"), d.out_log, d.err_log]
    files += list((d.home / "run").glob("*"))
    scanned = 0
    for path in files:
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            for name, secret in SECRETS.items():
                assert secret.encode() not in data, f"{name} credential found in {path}"
    assert scanned >= 5


# -- helpers -----------------------------------------------------------------------------------


def _parse_errors(d: DaemonHandle) -> int:
    return int(d.stats()["parse_errors"])


def _wait_stat(d: DaemonHandle, key: str, at_least: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while int(d.stats()[key]) < at_least:
        assert time.monotonic() < deadline, d.stats()
        time.sleep(0.1)


def test_stats_file_counts_rows(shared_daemon: DaemonHandle) -> None:
    d = shared_daemon
    n = len(d.rows())
    assert n > 0
    _wait_stat(d, "rows_written", n)
    stats = d.stats()
    assert stats["pid"] == d.proc.pid and stats["metering_errors"] == 0
    assert stat.S_IMODE(os.stat(d.home / "run" / "daemon-stats.json").st_mode) == 0o600


def test_subscription_oauth_traffic_is_priced_as_api_equivalent(
    shared_daemon: DaemonHandle,
) -> None:
    d = shared_daemon
    mark = d.mark()
    token = "sk-ant-oat01-SECRET-subscription"
    with d.client() as http:
        sub = http.post(
            ANTHROPIC,
            json=messages_body(False),
            headers={
                "authorization": f"Bearer {token}",
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "oauth-2025-04-20",
                "x-sim-usage": json.dumps(USAGE),
            },
        )
        key = http.post(
            ANTHROPIC, json=messages_body(False), headers=knobs(usage=json.dumps(USAGE))
        )
    assert sub.status_code == 200 and key.status_code == 200
    sub_row, key_row = d.wait_rows(2, since=mark)
    assert sub_row["api_equivalent"] == 1 and sub_row["priced"] == 1
    assert sub_row["price_note"] == "api-equivalent" and sub_row["cost_usd"] == key_row["cost_usd"]
    assert key_row["api_equivalent"] == 0 and key_row["price_note"] is None
    assert token not in json.dumps(sub_row)


def test_client_offering_http2_is_metered(shared_daemon: DaemonHandle) -> None:
    # A client offering h2 in ALPN (Node, curl do). With lazy upstream connections mitmproxy
    # answers with what the upstream will speak; either way the call is metered.
    d = shared_daemon
    mark = d.mark()
    with d.client(http2=True) as http:
        replies = [
            http.post(ANTHROPIC, json=messages_body(stream), headers=knobs(usage=json.dumps(USAGE)))
            for stream in (True, False)
        ]
    assert all(r.http_version in ("HTTP/1.1", "HTTP/2") for r in replies)
    assert "message_stop" in replies[0].text and replies[1].json()["usage"]["output_tokens"] == 7
    rows = d.wait_rows(2, since=mark)
    assert [(r["stream"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        (1, 50, 7),
        (0, 50, 7),
    ]


def test_undecodable_body_never_breaks_the_call(shared_daemon: DaemonHandle) -> None:
    # The request claims gzip but is plain JSON: our decoder fails, the bytes still reach the
    # provider unchanged, the row is written and the failure counted.
    d = shared_daemon
    mark, before = d.mark(), len(d.sim.requests)
    errors_before = _parse_errors(d)
    raw = json.dumps(messages_body(False)).encode()
    with d.client() as http:
        resp = http.post(
            ANTHROPIC,
            content=raw,
            headers={**knobs(usage=json.dumps(USAGE)), "content-encoding": "gzip",
                     "content-type": "application/json"},
        )  # fmt: skip
    assert resp.status_code == 200
    rec = d.sim.wait_for_requests(before + 1, completed=False)[before]
    assert rec.body_size == len(raw)
    [row] = d.wait_rows(1, since=mark)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, 50, 7)
    _wait_stat(d, "parse_errors", errors_before + 1)


def test_in_band_stream_error_is_recorded(shared_daemon: DaemonHandle) -> None:
    # HTTP 200, then `event: error` (overloaded) instead of message_delta/message_stop.
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        resp = http.post(
            ANTHROPIC,
            json=messages_body(True),
            headers=knobs(outcome="error", usage=json.dumps(USAGE)),
        )
    assert resp.status_code == 200 and "overloaded_error" in resp.text
    [row] = d.wait_rows(1, since=mark)
    assert row["status"] == 200 and row["partial"] == 1
    assert "overloaded_error" in row["error"]
    assert row["input_tokens"] == 50  # what message_start reported is kept


def test_body_under_the_gate_is_stored_whole(shared_daemon: DaemonHandle) -> None:
    # 1 MiB of text: handed to the disk in pieces, stored byte for byte.
    d = shared_daemon
    mark = d.mark()
    with d.client() as http:
        resp = http.post(
            ANTHROPIC, json=messages_body(False), headers=knobs(response_bytes=1024 * 1024)
        )
    assert resp.status_code == 200
    [row] = d.wait_rows(1, since=mark)
    assert row["body_skip_reason"] is None
    assert body_file(d, row["response_body_path"]).read_bytes() == resp.content

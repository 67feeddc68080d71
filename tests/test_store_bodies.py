"""Body files: the size gate at its exact boundary, private modes, credential-free paths."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from halton_meter.core.paths import Home
from halton_meter.store.bodies import BodyStore, redact_query
from halton_meter.store.model import new_row_id


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_in_chunks(store: BodyStore, row_id: str, total: int, chunk: int = 1000) -> object:
    sink = store.open(row_id, "response")
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        sink.write(b"x" * n)
        sent += n
    return sink


def test_body_at_the_limit_is_stored_one_byte_more_is_skipped(hm_home: Path) -> None:
    limit = 10_000
    store = BodyStore(Home.resolve().bodies, max_bytes=limit)

    at_limit = store.open(new_row_id(), "response")
    for _ in range(10):
        at_limit.write(b"a" * 1000)
    rel = at_limit.close()
    assert rel is not None and at_limit.skipped is None
    assert store.resolve(rel).read_bytes() == b"a" * limit

    over_id = new_row_id()
    over = store.open(over_id, "response")
    for _ in range(10):
        over.write(b"b" * 1000)
    partial_file = over.path
    assert partial_file.exists()  # streamed to disk as it came, not buffered
    over.write(b"b")  # limit + 1
    assert over.skipped == "body_too_large"
    assert not partial_file.exists()  # the partial file is deleted at once
    over.write(b"more after the gate")  # ignored, nothing recreated
    assert over.close() is None
    assert not partial_file.exists()
    assert over.bytes_seen == limit + 1 + len(b"more after the gate")


def test_a_single_oversized_chunk_never_touches_disk(hm_home: Path) -> None:
    store = BodyStore(Home.resolve().bodies, max_bytes=100)
    sink = store.open(new_row_id(), "request")
    sink.write(b"z" * 101)
    assert sink.skipped == "body_too_large"
    assert sink.close() is None
    assert not sink.path.exists()


def test_body_files_are_0600_in_0700_dirs_by_row_day(hm_home: Path) -> None:
    old = os.umask(0o022)
    try:
        store = BodyStore(Home.resolve().bodies, max_bytes=1 << 20)
        row_id = new_row_id()
        req = store.open(row_id, "request")
        req.write(b'{"model": "gpt-4o"}')
        resp = store.open(row_id, "response")
        resp.write(b"data: {}\n\n")
        req_rel, resp_rel = req.close(), resp.close()
    finally:
        os.umask(old)
    assert req_rel is not None and resp_rel is not None
    day = req_rel.split("/")[0]
    assert req_rel == f"{day}/{row_id}.request" and resp_rel == f"{day}/{row_id}.response"
    assert len(day) == 10 and day[4] == "-"
    root = Home.resolve().bodies
    assert _mode(root) == 0o700
    assert _mode(root / day) == 0o700
    assert _mode(root / req_rel) == 0o600
    assert _mode(root / resp_rel) == 0o600
    assert (root / req_rel).read_bytes() == b'{"model": "gpt-4o"}'


def test_empty_body_stores_nothing_and_abort_deletes(hm_home: Path) -> None:
    store = BodyStore(Home.resolve().bodies, max_bytes=1000)
    empty = store.open(new_row_id(), "request")
    assert empty.close() is None
    assert not empty.path.exists()

    aborted = store.open(new_row_id(), "response")
    aborted.write(b"half a stream")
    assert aborted.path.exists()
    aborted.abort("client_aborted")
    assert not aborted.path.exists()
    assert aborted.skipped == "client_aborted"
    assert aborted.close() is None


def test_unsafe_ids_and_kinds_are_refused(hm_home: Path) -> None:
    store = BodyStore(Home.resolve().bodies, max_bytes=1000)
    with pytest.raises(ValueError):
        store.open("../../etc/passwd", "request")
    with pytest.raises(ValueError):
        store.open(new_row_id(), "headers")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "/v1beta/models/gemini:generateContent?key=AIzaSECRET",
            "/v1beta/models/gemini:generateContent",
        ),
        ("/v1/x?alt=sse&key=SECRET", "/v1/x?alt=sse"),
        ("/v1/x?api-key=S1&a=1&API_KEY=S2&b=2", "/v1/x?a=1&b=2"),
        ("/v1/x?access_token=S&token=T&Key=K", "/v1/x"),
        ("/v1/x?api%2Dkey=S&keep=1", "/v1/x?keep=1"),
        ("https://h.example/v1/x?key=S#frag", "https://h.example/v1/x#frag"),
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/x?monkey=1&keyword=2", "/v1/x?monkey=1&keyword=2"),
        ("/v1/x?api-version=2024-06-01", "/v1/x?api-version=2024-06-01"),
    ],
)
def test_redact_query(given: str, expected: str) -> None:
    assert redact_query(given) == expected
    for secret in ("SECRET", "S1", "S2", "AIza"):
        if secret not in expected:
            assert secret not in redact_query(given)


def test_a_failing_disk_drops_the_body_and_never_raises(
    hm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Home.resolve().bodies
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("a file where the bodies directory should be")  # mkdir will fail
    store = BodyStore(root, max_bytes=1000)
    sink = store.open(new_row_id(), "response")
    sink.write(b"chunk")  # must not raise into the stream
    sink.write(b"more")
    assert sink.skipped == "write_error"
    assert sink.close() is None
    assert "store.body_write_error" in capsys.readouterr().err


def test_abort_after_close_removes_the_file(hm_home: Path) -> None:
    store = BodyStore(Home.resolve().bodies, max_bytes=1000)
    sink = store.open(new_row_id(), "request")
    sink.write(b"complete body")
    assert sink.close() is not None
    sink.abort("flow_error")
    assert not sink.path.exists()
    assert sink.close() is None


def test_a_body_in_an_existing_day_directory_is_create_write_close_only(
    hm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BodyStore(Home.resolve().bodies, max_bytes=1 << 20)
    row_id = new_row_id()
    first = store.open(row_id, "request")
    first.write(b"makes the day directory")
    assert first.close() is not None

    # Anything beyond open/write/close on the per-body path is a cost the daemon pays per
    # request: directory checks, mode fixes and fsyncs must not happen once the day exists.
    extra: list[str] = []
    for name in ("mkdir", "makedirs", "stat", "lstat", "chmod", "fchmod", "umask", "fsync"):
        real = getattr(os, name)

        def _spy(*args: object, _name: str = name, _real: object = real, **kw: object) -> object:
            extra.append(_name)
            return _real(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(os, name, _spy)
    second = store.open(row_id, "response")
    second.write(b"the response")
    rel = second.close()
    monkeypatch.undo()
    assert extra == []
    assert rel == second.relpath
    assert store.resolve(rel).read_bytes() == b"the response"
    assert _mode(store.resolve(rel)) == 0o600


def test_a_removed_day_directory_is_made_again_private(hm_home: Path) -> None:
    root = Home.resolve().bodies
    store = BodyStore(root, max_bytes=1000)
    row_id = new_row_id()
    first = store.open(row_id, "request")
    first.write(b"one")
    rel = first.close()
    assert rel is not None
    (root / rel).unlink()
    (root / rel).parent.rmdir()  # someone pruned the day (or the whole tree) under us
    root.rmdir()

    old = os.umask(0)  # the widest umask: modes must come from the create, not from luck
    try:
        again = store.open(row_id, "response")
        again.write(b"two")
        rel2 = again.close()
    finally:
        os.umask(old)
    assert rel2 is not None and again.skipped is None
    assert store.resolve(rel2).read_bytes() == b"two"
    assert _mode(root) == 0o700
    assert _mode(store.resolve(rel2).parent) == 0o700
    assert _mode(store.resolve(rel2)) == 0o600


def test_day_directory_is_the_row_ids_utc_day_at_midnight(hm_home: Path) -> None:
    store = BodyStore(Home.resolve().bodies, max_bytes=1000)
    last_ms = 1_796_428_799_999  # 2026-12-04T23:59:59.999Z
    before = f"{last_ms:012x}{'0' * 16}"
    after = f"{last_ms + 1:012x}{'0' * 16}"
    assert store.open(before, "request").relpath == f"2026-12-04/{before}.request"
    assert store.open(after, "response").relpath == f"2026-12-05/{after}.response"
    # A name that is not a time-ordered id still lands in a dated directory (today's).
    odd = store.open("zz-not-hex", "request").relpath
    assert odd.endswith("/zz-not-hex.request") and len(odd.split("/")[0]) == 10

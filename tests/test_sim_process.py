"""The simulator as a process (``python -m halton_meter.sim``), reached with curl by real host
name, its certificates, the plain HTTP listener and the non-LLM site mode."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from cryptography import x509
from hmtest import PYTHON, REPO, clean_env, port_open

from halton_meter.sim.ca import ensure_sim_certs


@pytest.fixture(scope="module")
def simproc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("simproc")
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "halton_meter.sim",
            "--port",
            "0",
            "--http-port",
            "0",
            "--dir",
            str(d / "certs"),
        ],
        cwd=REPO,
        env=clean_env(d / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "no output"
        info = json.loads(line)
        info["proc"] = proc
        yield info
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


def _log(info: dict[str, Any], since: int = 0) -> list[dict[str, Any]]:
    r = httpx.get(
        f"https://127.0.0.1:{info['port']}/_sim/log?since={since}",
        verify=ssl.create_default_context(cafile=info["ca"]),
        trust_env=False,
    )
    return list(r.json()["requests"])


def _reset(info: dict[str, Any]) -> None:
    ctx = ssl.create_default_context(cafile=info["ca"])
    httpx.post(f"https://127.0.0.1:{info['port']}/_sim/reset", verify=ctx, trust_env=False)


def _curl(
    info: dict[str, Any], host: str, path: str, *args: str
) -> subprocess.CompletedProcess[str]:
    cmd = [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--connect-to",
        f"{host}:443:127.0.0.1:{info['port']}",
        "--cacert",
        info["ca"],
        *args,
        f"https://{host}{path}",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_process_prints_port_and_ca(simproc: dict[str, Any]) -> None:
    assert set(simproc) >= {"port", "http_port", "ca", "pid", "dir"}
    assert simproc["pid"] == simproc["proc"].pid
    assert port_open(simproc["port"]) and port_open(simproc["http_port"])
    assert Path(simproc["ca"]).read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_curl_by_real_host_name_and_log(simproc: dict[str, Any]) -> None:
    _reset(simproc)
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []})
    r = _curl(
        simproc,
        "api.anthropic.com",
        "/v1/messages",
        "-H",
        "x-api-key: sk-ant-curl",
        "-H",
        "content-type: application/json",
        "-H",
        'x-sim-usage: {"input_tokens": 11, "output_tokens": 3}',
        "-d",
        body,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["usage"]["input_tokens"] == 11
    (rec,) = _log(simproc)
    assert _log(simproc, since=rec["id"]) == []
    assert rec["host"] == "api.anthropic.com" and rec["sni"] == "api.anthropic.com"
    assert rec["headers"]["x-api-key"] == "sk-ant-curl"
    assert rec["api"] == "anthropic.messages" and rec["body_size"] == len(body)
    assert rec["usage"]["output_tokens"] == 3 and rec["completed"] is True


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("api.openai.com", "/v1/chat/completions"),
        ("openrouter.ai", "/api/v1/chat/completions"),
        (
            "myres.openai.azure.com",
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
        ),
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent"),
        (
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        ),
    ],
)
def test_cert_covers_provider_hosts(simproc: dict[str, Any], host: str, path: str) -> None:
    r = _curl(
        simproc,
        host,
        path,
        "-d",
        "{}",
        "-H",
        "content-type: application/json",
        "-w",
        "\n%{http_code}",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.rsplit("\n", 1)[1] == "200"


def test_curl_compressed_stream(simproc: dict[str, Any]) -> None:
    for enc in ("gzip", "br", "zstd"):
        r = _curl(
            simproc,
            "api.openai.com",
            "/v1/chat/completions",
            "--compressed",
            "-H",
            f"x-sim-encoding: {enc}",
            "-d",
            '{"stream": true}',
        )
        assert r.returncode == 0, (enc, r.stderr)
        assert r.stdout.rstrip().endswith("data: [DONE]"), enc


def test_curl_sees_truncation(simproc: dict[str, Any]) -> None:
    r = _curl(
        simproc,
        "api.openai.com",
        "/v1/responses",
        "-H",
        "x-sim-truncate: after=3",
        "-d",
        '{"stream": true}',
    )
    assert r.returncode == 18  # CURLE_PARTIAL_FILE: the chunked body never ended
    assert r.stdout.count("event: ") == 3


def test_site_mode_serves_origin_cert(simproc: dict[str, Any]) -> None:
    """Any other host answers GET / with the leaf cert, as an origin behind a tunnel would."""
    ctx = ssl.create_default_context(cafile=simproc["ca"])
    with (
        socket.create_connection(("127.0.0.1", simproc["port"]), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="example.com") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        tls.sendall(b"GET / HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert b"Hello from example.com" in data
    issuer = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert issuer == "Halton Meter Sim CA"
    r = _curl(simproc, "www.example.com", "/anything")
    assert "Hello from www.example.com" in r.stdout


def test_plain_http_listener(simproc: dict[str, Any]) -> None:
    r = httpx.post(
        f"http://127.0.0.1:{simproc['http_port']}/v1/chat/completions",
        json={"model": "llama-3"},
        trust_env=False,
    )
    assert r.json()["model"] == "llama-3"
    assert any(rec["tls"] is False and rec["model"] == "llama-3" for rec in _log(simproc))


def test_huge_response_is_streamed_not_held(simproc: dict[str, Any]) -> None:
    n = 96 * 1024 * 1024
    proc = psutil.Process(simproc["pid"])
    before = proc.memory_info().rss
    total = 0
    ctx = ssl.create_default_context(cafile=simproc["ca"])
    with (
        httpx.Client(verify=ctx, trust_env=False, timeout=60) as c,
        c.stream(
            "POST",
            f"https://127.0.0.1:{simproc['port']}/v1/messages",
            json={},
            headers={"x-sim-response-bytes": str(n)},
        ) as r,
    ):
        expected = int(r.headers["content-length"])
        for chunk in r.iter_raw():
            total += len(chunk)
    assert total == expected and total > n
    assert proc.memory_info().rss - before < 40 * 1024 * 1024


def test_defaults_and_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [PYTHON, "-m", "halton_meter.sim", "--dir", str(tmp_path / "c"), "--default", "events=1"],
        cwd=REPO,
        env=clean_env(tmp_path / "home"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    port = info["port"]
    ctx = ssl.create_default_context(cafile=info["ca"])
    r = httpx.post(
        f"https://127.0.0.1:{port}/v1/chat/completions", json={}, verify=ctx, trust_env=False
    )
    assert r.json()["choices"][0]["message"]["content"] == "Hello"  # --default events=1
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not port_open(port)


def test_certs_are_reused_and_extended(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    first = ensure_sim_certs(d)
    ca_bytes, leaf_bytes = first.ca_cert.read_bytes(), first.leaf_cert.read_bytes()
    for key in (first.ca_key, first.leaf_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = ensure_sim_certs(d)
    assert again.ca_cert.read_bytes() == ca_bytes and again.leaf_cert.read_bytes() == leaf_bytes
    extended = ensure_sim_certs(d, ["llm.internal.test", "10.9.8.7"])
    assert extended.ca_cert.read_bytes() == ca_bytes  # same CA, new leaf
    leaf = x509.load_pem_x509_certificate(extended.leaf_cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName)
    assert {"llm.internal.test", "api.anthropic.com", "*.openai.azure.com", "localhost"} <= set(
        names
    )
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    ca = x509.load_pem_x509_certificate(ca_bytes)
    assert ca.serial_number > 0 and leaf.serial_number > 0
    now = dt.datetime.now(dt.UTC)
    assert ca.not_valid_before_utc < now - dt.timedelta(hours=23)
    assert ca.not_valid_after_utc > now + dt.timedelta(days=700)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    leaf.verify_directly_issued_by(ca)
    # A corrupt leaf is replaced, not trusted.
    extended.leaf_cert.write_text("garbage")
    healed = ensure_sim_certs(d)
    assert x509.load_pem_x509_certificate(healed.leaf_cert.read_bytes()).issuer == ca.subject


def test_refuses_non_loopback(tmp_path: Path) -> None:
    r = subprocess.run(
        [PYTHON, "-m", "halton_meter.sim", "--host", "0.0.0.0", "--dir", str(tmp_path / "c")],
        cwd=REPO,
        env=clean_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "loopback" in r.stderr and r.stdout == ""

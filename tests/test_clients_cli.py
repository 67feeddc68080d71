"""Real AI clients under `halton-meter run`, at their default hosts, through the real
supervised stack (supervisord, edge, daemon, api) in a temporary home; provider hosts are
resolved to the ProviderSim. Each test asserts the exact rows and the tool name.

Clients are installed once into .cache/clients/ (npm, pip) on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_clients import (
    MeterStack,
    aider_venv,
    codex_bin,
    heavy_node_modules,
    meter_stack,
    node_modules,
    py_clients_venv,
)

SECRETS = (
    "sk-ant-api03-cli",
    "sk-cli-openai",
    "AIza-cli-gemini",
    "sk-codex-cli",
    "sk-ant-oat01-cli",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeterStack]:
    with meter_stack(tmp_path_factory.mktemp("clients")) as s:
        yield s


def _no_secrets(rows: list[dict[str, Any]]) -> None:
    text = json.dumps(rows, default=str)
    assert not any(secret in text for secret in SECRETS)


def _model_records(stack: MeterStack, before: int, host: str) -> list[Any]:
    return [
        r
        for r in stack.sim.requests[before:]
        if r.host == host
        and r.api
        and r.api.split(".")[-1] not in ("other", "models")
        and r.api != "site"
    ]


def test_codex_cli_over_websocket(stack: MeterStack) -> None:
    codex = codex_bin()
    mark, before = stack.mark(), len(stack.sim.requests)
    codex_home = stack.user_home / ".codex"
    codex_home.mkdir(exist_ok=True)
    out = stack.run(
        [str(codex), "exec", "--skip-git-repo-check", "-m", "gpt-5-codex", "say hi"],
        CODEX_HOME=str(codex_home),
        CODEX_API_KEY="sk-codex-cli",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Hello" in out.stdout
    (ws,) = [r for r in stack.sim.requests[before:] if r.api == "openai.responses.ws"]
    calls = ws.ws_calls
    assert calls and all(c["completed"] for c in calls)
    rows = stack.rows_since(mark, len(calls))
    assert len(rows) == len(calls)  # one row per response, nothing for the rest
    for row, call in zip(rows, calls, strict=True):
        assert (row["tool"], row["provider"], row["api"], row["method"]) == (
            "codex",
            "openai",
            "responses",
            "GET",
        )
        assert row["model"] == call["model"] == "gpt-5-codex"
        assert row["input_tokens"] == call["usage"]["input_tokens"]
        assert row["output_tokens"] == call["usage"]["output_tokens"]
        assert row["partial"] == 0 and row["priced"] == 1
    _no_secrets(rows)


NODE_SDK_SCRIPT = """
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
const a = new Anthropic({ apiKey: 'sk-ant-api03-cli', maxRetries: 0 });
const m = await a.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 20,
  messages: [{ role: 'user', content: 'hello from node' }] });
const o = new OpenAI({ apiKey: 'sk-cli-openai', maxRetries: 0 });
const st = await o.chat.completions.create({ model: 'gpt-4o-mini', stream: true,
  stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'hi' }] });
let u = null;
for await (const c of st) { if (c.usage) u = c.usage; }
console.log(JSON.stringify({ a: m.usage, o: u }));
"""


def test_node_sdks_unchanged_script(stack: MeterStack) -> None:
    modules = node_modules()
    script = modules.parent / f"cli-sdk-{os.getpid()}.mjs"
    script.write_text(NODE_SDK_SCRIPT)
    mark = stack.mark()
    try:
        out = stack.run(["node", str(script)], cwd=modules.parent)
    finally:
        script.unlink()
    assert out.returncode == 0, out.stderr
    usage = json.loads(out.stdout.strip().splitlines()[-1])
    rows = stack.rows_since(mark, 2)
    assert [(r["tool"], r["provider"], r["model"]) for r in rows] == [
        ("node", "anthropic", "claude-sonnet-4-5"),
        ("node", "openai", "gpt-4o-mini"),
    ]
    assert rows[0]["input_tokens"] == usage["a"]["input_tokens"]
    assert rows[0]["output_tokens"] == usage["a"]["output_tokens"]
    assert rows[1]["input_tokens"] == usage["o"]["prompt_tokens"]
    assert rows[1]["output_tokens"] == usage["o"]["completion_tokens"]
    _no_secrets(rows)


def test_node_fetch_carries_run_project(stack: MeterStack) -> None:
    # `run --project` puts the project in the proxy URL's user part; the preload sends it as
    # Proxy-Authorization on its CONNECT, which the edge reads as tier "explicit".
    code = (
        "fetch('https://api.openai.com/v1/chat/completions',{method:'POST',"
        "headers:{'content-type':'application/json',authorization:'Bearer sk-cli-openai'},"
        "body:JSON.stringify({model:'gpt-4o-mini',messages:[{role:'user',content:'p'}]})})"
        ".then(r=>r.json()).then(j=>console.log(j.usage.completion_tokens))"
    )
    mark = stack.mark()
    # HALTON_PROJECT removed from node's environment: only the proxy URL carries the project.
    out = stack.run(
        ["env", "-u", "HALTON_PROJECT", "node", "-e", code], run_args=["--project", "billing-api"]
    )
    assert out.returncode == 0, out.stderr
    (row,) = stack.rows_since(mark, 1)
    assert (row["tool"], row["project"], row["tier"]) == ("node", "billing-api", "explicit")
    assert row["output_tokens"] == int(out.stdout)


PY_SDK_SCRIPT = """
import anthropic, json
c = anthropic.Anthropic(api_key="sk-ant-api03-cli", max_retries=0)
m = c.messages.create(model="claude-haiku-4-5", max_tokens=20,
    messages=[{"role": "user", "content": "hello from python"}])
print(json.dumps(m.usage.model_dump()))
"""


def test_python_sdk(stack: MeterStack) -> None:
    mark = stack.mark()
    out = stack.run([sys.executable, "-c", PY_SDK_SCRIPT])
    assert out.returncode == 0, out.stderr
    usage = json.loads(out.stdout)
    (row,) = stack.rows_since(mark, 1)
    assert (row["tool"], row["model"]) == ("python", "claude-haiku-4-5")
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )


def test_curl(stack: MeterStack) -> None:
    mark = stack.mark()
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    out = stack.run(
        [
            "curl",
            "-sS",
            "--fail",
            "https://api.openai.com/v1/chat/completions",
            "-H",
            "authorization: Bearer sk-cli-openai",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ]  # fmt: skip
    )
    assert out.returncode == 0, out.stderr
    usage = json.loads(out.stdout)["usage"]
    (row,) = stack.rows_since(mark, 1)
    assert (row["tool"], row["api"], row["model"]) == ("curl", "chat", "gpt-4o-mini")
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    _no_secrets([row])


def test_llm_cli(stack: MeterStack) -> None:
    venv = py_clients_venv()
    mark = stack.mark()
    out = stack.run(
        [str(venv / "bin" / "llm"), "-m", "gpt-4o-mini", "--no-log", "say hi"],
        OPENAI_API_KEY="sk-cli-openai",
        LLM_USER_PATH=str(stack.user_home / "llm"),
    )
    assert out.returncode == 0, out.stderr
    assert "Hello" in out.stdout
    (row,) = stack.rows_since(mark, 1)
    rec = stack.sim.requests[-1]
    assert (row["tool"], row["api"], row["model"]) == ("llm", "chat", "gpt-4o-mini")
    assert row["output_tokens"] == rec.usage["completion_tokens"]
    assert row["input_tokens"] == rec.usage["prompt_tokens"]


def test_aider_cli(stack: MeterStack, tmp_path: Path) -> None:
    """The real aider (litellm), one non-interactive message, no git, offline."""
    venv = aider_venv()
    project = tmp_path / "proj"
    project.mkdir()
    mark, before = stack.mark(), len(stack.sim.requests)
    out = stack.run(
        [
            str(venv / "bin" / "aider"),
            "--model",
            "gpt-4o-mini",
            "--message",
            "say hi",
            "--yes-always",
            "--no-git",
            "--no-check-update",
            "--analytics-disable",
            "--no-show-model-warnings",
            "--no-pretty",
            "--no-fancy-input",
            "--map-tokens",
            "0",
            "--no-show-release-notes",
        ],
        cwd=project,
        OPENAI_API_KEY="sk-cli-openai",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    calls = [r for r in stack.sim.requests[before:] if r.api.startswith("openai.chat")]
    assert calls, [r.api for r in stack.sim.requests[before:]]
    rows = stack.rows_since(mark, len(calls))
    assert len(rows) == len(calls)
    for row, rec in zip(rows, calls, strict=True):
        assert (row["tool"], row["api"], row["model"]) == ("aider", "chat", "gpt-4o-mini")
        expected = rec.usage["completion_tokens"] if rec.usage else None
        assert row["output_tokens"] == expected
    _no_secrets(rows)


def test_claude_code_only_model_calls_are_rows(stack: MeterStack) -> None:
    claude = heavy_node_modules() / ".bin" / "claude"
    mark, before = stack.mark(), len(stack.sim.requests)
    out = stack.run(
        [str(claude), "-p", "say hi", "--model", "claude-sonnet-4-5"],
        ANTHROPIC_API_KEY="sk-ant-api03-cli",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = stack.sim.requests[before:]
    model_calls = [r for r in seen if r.api == "anthropic.messages"]
    others = [r for r in seen if r.api != "anthropic.messages"]
    assert len(model_calls) >= 1 and len(others) >= 3  # settings, telemetry, mcp-registry...
    assert any(r.path.startswith("/api/") for r in others)
    rows = stack.rows_since(mark, len(model_calls))
    assert len(rows) == len(model_calls)
    for row, rec in zip(rows, model_calls, strict=True):
        assert (row["tool"], row["api"], row["path"]) == (
            "claude-code",
            "messages",
            "/v1/messages?beta=true",
        )
        assert row["model"] == rec.model and row["stream"] == 1
        assert row["output_tokens"] == rec.usage["message_delta"]["output_tokens"]
        assert row["api_equivalent"] == 0  # an API key: real spend
    _no_secrets(rows)


def test_claude_code_subscription_is_api_equivalent(stack: MeterStack) -> None:
    # Logged in with a subscription: an OAuth bearer token (sk-ant-oat...) and an
    # anthropic-beta oauth-... header instead of x-api-key.
    claude = heavy_node_modules() / ".bin" / "claude"
    mark, before = stack.mark(), len(stack.sim.requests)
    out = stack.run(
        [str(claude), "-p", "say hi", "--model", "claude-sonnet-4-5"],
        CLAUDE_CODE_OAUTH_TOKEN="sk-ant-oat01-cli",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    model_calls = [r for r in stack.sim.requests[before:] if r.api == "anthropic.messages"]
    assert model_calls
    assert all(r.headers["authorization"] == "Bearer sk-ant-oat01-cli" for r in model_calls)
    assert all("oauth-" in r.headers.get("anthropic-beta", "") for r in model_calls)
    assert all("x-api-key" not in r.headers for r in model_calls)
    rows = stack.rows_since(mark, len(model_calls))
    assert len(rows) == len(model_calls)
    for row in rows:
        assert (row["tool"], row["api_equivalent"], row["priced"]) == ("claude-code", 1, 1)
        assert row["price_note"] == "api-equivalent" and row["cost_usd"] is not None
    _no_secrets(rows)


def test_gemini_cli(stack: MeterStack) -> None:
    gemini = heavy_node_modules() / ".bin" / "gemini"
    mark, before = stack.mark(), len(stack.sim.requests)
    out = stack.run(
        [str(gemini), "-m", "gemini-2.5-flash", "-p", "say hi"],
        GEMINI_API_KEY="AIza-cli-gemini",
        GEMINI_CLI_TRUST_WORKSPACE="true",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    calls = [
        r for r in stack.sim.requests[before:] if r.api in ("gemini.generate", "gemini.stream")
    ]
    assert calls
    rows = stack.rows_since(mark, len(calls))
    assert len(rows) == len(calls)
    for row, rec in zip(rows, calls, strict=True):
        assert row["tool"] == "gemini-cli" and row["model"] == rec.model
        assert row["output_tokens"] == rec.usage["candidatesTokenCount"]
        assert row["input_tokens"] == rec.usage["promptTokenCount"]
        assert rec.headers.get("x-goog-api-key") == "AIza-cli-gemini"  # reached upstream
    _no_secrets(rows)


def test_gemini_cli_auto_router_calls_are_their_own_rows(stack: MeterStack) -> None:
    """Without -m, Gemini CLI's router asks a small model (non-streaming generateContent,
    JSON mode) before the answer: each call is its own row, tokens exact."""
    gemini = heavy_node_modules() / ".bin" / "gemini"
    mark, before = stack.mark(), len(stack.sim.requests)
    out = stack.run(
        [str(gemini), "-p", "say hi"],
        GEMINI_API_KEY="AIza-cli-gemini",
        GEMINI_CLI_TRUST_WORKSPACE="true",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    calls = [
        r for r in stack.sim.requests[before:] if r.api in ("gemini.generate", "gemini.stream")
    ]
    router = [r for r in calls if r.api == "gemini.generate"]
    answer = [r for r in calls if r.api == "gemini.stream"]
    assert router and answer and router[0].model != answer[-1].model
    rows = stack.rows_since(mark, len(calls))
    assert len(rows) == len(calls)
    for row, rec in zip(rows, calls, strict=True):
        assert (row["tool"], row["model"]) == ("gemini-cli", rec.model)
        assert row["stream"] == (1 if rec.api == "gemini.stream" else 0)
        assert row["output_tokens"] == rec.usage["candidatesTokenCount"]
        assert row["input_tokens"] == rec.usage["promptTokenCount"]
    _no_secrets(rows)


def test_report_json_shows_the_tool_and_exact_cost(stack: MeterStack) -> None:
    test_curl(stack)
    out = stack.meter("report", "--json")
    assert out.returncode == 0, out.stderr
    newest = json.loads(out.stdout)["rows"][0]
    assert (newest["tool"], newest["model"], newest["priced"]) == ("curl", "gpt-4o-mini", True)
    assert isinstance(newest["cost_usd"], str) and float(newest["cost_usd"]) > 0


LOGIN_SCRIPT = textwrap.dedent(
    """
    set -e
    curl -sS --fail https://api.openai.com/v1/chat/completions \\
      -H 'authorization: Bearer sk-cli-openai' -H 'content-type: application/json' \\
      -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "rc"}]}' >/dev/null
    @PYTHON@ -c 'import anthropic; anthropic.Anthropic(api_key="sk-ant-api03-cli", max_retries=0).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "rc"}])'
    cd @NODE_DIR@ && node -e "import('openai').then(async ({default: O}) => { await new O({apiKey: 'sk-cli-openai', maxRetries: 0}).responses.create({model: 'gpt-4.1-mini', input: 'rc'}); })"
    """
)


@pytest.mark.parametrize("flag", ["-l", "-i"])
def test_apps_rc_block_in_a_new_shell(
    stack: MeterStack, tmp_path: Path, flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`init --apps` writes the block; a new login/interactive shell meters curl, the Python
    SDK and a Node SDK with no `run` at all."""
    from halton_meter.core.config import load_config
    from halton_meter.core.paths import Home
    from halton_meter.core.runtime import load_effective_ports
    from halton_meter.install import rcblock
    from halton_meter.install.ca import build_combined_bundle
    from halton_meter.install.env import client_env

    user = tmp_path / "home"
    user.mkdir()
    monkeypatch.setenv("HALTON_METER_HOME", str(stack.home))  # the CA lives in this home
    home = Home.resolve()
    build_combined_bundle(home)  # as init does
    env_vars = client_env(home, load_config(home), load_effective_ports(home))
    (user / ".bashrc").write_text(
        "# the user's own line\n" + rcblock.render_block("bash", env_vars)
    )
    (user / ".bash_profile").write_text(". ~/.bashrc\n")
    node_dir = node_modules().parent
    script = LOGIN_SCRIPT.replace("@PYTHON@", sys.executable).replace("@NODE_DIR@", str(node_dir))
    env = stack.env(HOME=str(user))
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE", "NODE_OPTIONS"):
        env.pop(var, None)
    mark = stack.mark()
    import subprocess

    out = subprocess.run(
        ["bash", flag, "-c", script],
        env=env,
        cwd=user,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = stack.rows_since(mark, 3)
    assert [(r["tool"], r["model"]) for r in rows] == [
        ("curl", "gpt-4o-mini"),
        ("python", "claude-haiku-4-5"),
        ("node", "gpt-4.1-mini"),
    ]
    assert all(r["output_tokens"] and r["input_tokens"] for r in rows)


def test_coding_agents_in_an_apps_login_shell(
    stack: MeterStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codex, Claude Code and Gemini CLI typed bare into a new login shell after `init --apps`
    (the rc block only, no `run`)."""
    from halton_meter.core.config import load_config
    from halton_meter.core.paths import Home
    from halton_meter.core.runtime import load_effective_ports
    from halton_meter.install import rcblock
    from halton_meter.install.ca import build_combined_bundle
    from halton_meter.install.env import client_env

    codex, heavy = codex_bin(), heavy_node_modules() / ".bin"
    user = tmp_path / "home"
    (user / ".codex").mkdir(parents=True)
    monkeypatch.setenv("HALTON_METER_HOME", str(stack.home))
    home = Home.resolve()
    build_combined_bundle(home)
    block = rcblock.render_block(
        "bash", client_env(home, load_config(home), load_effective_ports(home))
    )
    (user / ".bashrc").write_text(block)
    (user / ".bash_profile").write_text(". ~/.bashrc\n")
    script = " && ".join(
        [
            f"{codex} exec --skip-git-repo-check -m gpt-5-codex hi >/dev/null",
            f"{heavy / 'claude'} -p hi --model claude-haiku-4-5 >/dev/null",
            f"{heavy / 'gemini'} -m gemini-2.5-flash -p hi >/dev/null",
        ]
    )
    env = stack.env(
        HOME=str(user),
        CODEX_HOME=str(user / ".codex"),
        CODEX_API_KEY="sk-codex-cli",
        ANTHROPIC_API_KEY="sk-ant-api03-cli",
        GEMINI_API_KEY="AIza-cli-gemini",
        GEMINI_CLI_TRUST_WORKSPACE="true",
    )
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE", "NODE_OPTIONS"):
        env.pop(var, None)
    mark, before = stack.mark(), len(stack.sim.requests)
    import subprocess

    out = subprocess.run(
        ["bash", "-l", "-c", script],
        env=env,
        cwd=user,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = stack.sim.requests[before:]
    ws_calls = sum(len(r.ws_calls) for r in seen if r.api == "openai.responses.ws")
    messages = sum(r.api == "anthropic.messages" for r in seen)
    gemini = sum(r.api in ("gemini.generate", "gemini.stream") for r in seen)
    assert ws_calls and messages and gemini
    rows = stack.rows_since(mark, ws_calls + messages + gemini)
    tools = [r["tool"] for r in rows]
    assert sorted(tools) == sorted(
        ["codex"] * ws_calls + ["claude-code"] * messages + ["gemini-cli"] * gemini
    )
    _no_secrets(rows)


def test_node_options_preserved_under_run(stack: MeterStack) -> None:
    out = stack.run(
        ["node", "-e", "console.log(process.env.NODE_OPTIONS)"],
        NODE_OPTIONS="--max-old-space-size=2048",
    )
    assert out.returncode == 0, out.stderr
    opts = out.stdout.strip()
    assert opts.startswith("--max-old-space-size=2048 --require ")
    assert opts.endswith(str(stack.home / "node-preload.cjs"))
    assert shutil.which("node")


def test_no_credential_is_written_anywhere_in_the_home(stack: MeterStack) -> None:
    # A Gemini key in x-goog-api-key and one in ?key=, an Anthropic key: after the calls,
    # no file of the home (db, WAL, logs, bodies) holds any of them.
    mark = stack.mark()
    body = json.dumps({"contents": [{"parts": [{"text": "k"}]}]})
    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
    for extra in (
        ["-H", "x-goog-api-key: AIza-cli-gemini", f"{url}:generateContent"],
        [f"{url}:generateContent?key=AIza-cli-gemini"],
    ):
        out = stack.run(["curl", "-sS", "--fail", "-H", "content-type: application/json",
                         "-d", body, *extra])  # fmt: skip
        assert out.returncode == 0, out.stderr
    rows = stack.rows_since(mark, 2)
    assert [(r["tool"], r["api"], r["model"]) for r in rows] == [
        ("curl", "generate_content", "gemini-2.5-flash")
    ] * 2
    assert stack.sim.requests[-1].query.get("key") == "AIza-cli-gemini"  # reached upstream
    stack.meter("stop")  # flush and close every file before reading them
    try:
        for path in stack.home.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in SECRETS:
                    assert secret.encode() not in data, f"{secret} found in {path}"
    finally:
        out = stack.meter("start")
        assert out.returncode == 0, out.stdout + out.stderr


def _leaf_signed_by_meter_ca(home: Path, ip: str, out: Path) -> tuple[Path, Path]:
    """A server certificate for ``ip`` issued by the meter's CA: a stand-in for a public git
    host whose roots are in the combined bundle (system roots + our CA)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pem = (home / "mitmproxy" / "mitmproxy-ca.pem").read_bytes()
    ca_key = serialization.load_pem_private_key(pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path, key_path = out / "leaf.pem", out / "leaf-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_git_over_https_is_tunnelled_untouched(stack: MeterStack, tmp_path: Path) -> None:
    """git trusts only GIT_SSL_CAINFO; its host is no LLM host, so the edge tunnels it to the
    destination byte for byte (no interception, no row) and the clone works."""
    import functools
    import http.server
    import ssl
    import subprocess
    import threading

    from hmtest import free_port, wait_until

    ip = "127.0.0.2"  # not in NO_PROXY: git must go through the edge
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "README").write_text("metered machine, unmetered git\n")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", "-C", str(work), "add", "."], check=True, env=git_env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "one"], check=True, env=git_env)
    served = tmp_path / "srv"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(served / "r.git")], check=True)
    subprocess.run(["git", "-C", str(served / "r.git"), "update-server-info"], check=True)

    cert, key = _leaf_signed_by_meter_ca(stack.home, ip, tmp_path)
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            hits.append(self.path)

    port = free_port()
    server = http.server.ThreadingHTTPServer(
        (ip, port), functools.partial(Handler, directory=str(served))
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stats_path = stack.home / "edge-stats.json"

    def connections() -> int:
        return int(json.loads(stats_path.read_text())["connections_total"])

    before_conns, mark = connections(), stack.mark()
    try:
        out = stack.run(["git", "clone", "-q", f"https://{ip}:{port}/r.git", str(tmp_path / "c")])
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c" / "README").read_text() == "metered machine, unmetered git\n"
    assert any(h.endswith("info/refs") or "info/refs" in h for h in hits)
    wait_until(lambda: connections() > before_conns, timeout=5, what="edge counted the tunnel")
    assert stack.rows_since(mark, 0) == []

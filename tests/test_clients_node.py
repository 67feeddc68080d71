"""The Node fetch preload (halton_meter/install/node/preload.cjs) on this machine's Node:
unmodified SDK scripts reach the meter, NO_PROXY is honoured, programs that manage their own
dispatcher or proxy are left alone, and where it cannot apply it says so in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from fixtures_clients import node_modules
from fixtures_daemon import DaemonHandle

from halton_meter.core.paths import Home
from halton_meter.install.env import ensure_node_preload, merge_node_options, node_require_option

pytest_plugins = ["fixtures_daemon"]

PRELOAD = (
    Path(__file__).resolve().parent.parent / "halton_meter" / "install" / "node" / "preload.cjs"
)
MARK = "Symbol.for('halton-meter.fetch-preload')"
DISPATCHER = "Symbol.for('undici.globalDispatcher.1')"

SDK_SCRIPT = """
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
const usage = JSON.stringify({input_tokens: 321, output_tokens: 12});
const a = new Anthropic({ apiKey: 'sk-ant-node', maxRetries: 0,
  defaultHeaders: { 'x-sim-usage': usage } });
const m = await a.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 20,
  messages: [{ role: 'user', content: 'hi' }] });
const s = a.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 20,
  messages: [{ role: 'user', content: 'stream' }] });
const fin = await s.finalMessage();
const o = new OpenAI({ apiKey: 'sk-node', maxRetries: 0, defaultHeaders: { 'x-sim-usage': usage } });
const st = await o.chat.completions.create({ model: 'gpt-4o-mini', stream: true,
  stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'hi' }] });
let last = null;
for await (const c of st) { if (c.usage) last = c.usage; }
const r = await o.responses.create({ model: 'gpt-4.1-mini', input: 'hi' });
console.log(JSON.stringify([m.usage.output_tokens, fin.usage.output_tokens,
  last.completion_tokens, r.usage.output_tokens]));
"""


def _node(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is required"
    return subprocess.run(
        [node, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _env(proxy: str | None, ca: Path | None = None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k not in ("NODE_OPTIONS", "NODE_EXTRA_CA_CERTS")
    }
    env["NODE_OPTIONS"] = f"--require {PRELOAD}"
    if proxy:
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = proxy
        env["NO_PROXY"] = "localhost,127.0.0.1,::1"
    if ca:
        env["NODE_EXTRA_CA_CERTS"] = str(ca)
    env.update(extra)
    return env


def test_unmodified_sdk_scripts_are_metered(daemon: DaemonHandle, tmp_path: Path) -> None:
    modules = node_modules()
    script = modules.parent / f"sdk-{os.getpid()}-{tmp_path.name}.mjs"  # resolves node_modules
    script.write_text(SDK_SCRIPT)
    try:
        out = _node([str(script)], _env(daemon.proxy_url, daemon.ca_cert))
    finally:
        script.unlink()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [12, 12, 12, 12]
    assert "halton-meter" not in out.stderr
    rows = daemon.wait_rows(4)
    assert [(r["provider"], r["api"], r["model"], r["stream"]) for r in rows] == [
        ("anthropic", "messages", "claude-sonnet-4-5", 0),
        ("anthropic", "messages", "claude-haiku-4-5", 1),
        ("openai", "chat", "gpt-4o-mini", 1),
        ("openai", "responses", "gpt-4.1-mini", 0),
    ]
    assert [r["output_tokens"] for r in rows] == [12, 12, 12, 12]
    assert [r["input_tokens"] for r in rows] == [321, 321, 321, 321]


def test_without_the_preload_node_20_fetch_bypasses_the_proxy(
    daemon: DaemonHandle, tmp_path: Path
) -> None:
    # The reason the preload exists: the same fetch, no preload, never reaches the proxy.
    env = _env(daemon.proxy_url, daemon.ca_cert)
    del env["NODE_OPTIONS"]
    code = "fetch('https://api.openai.com/v1/models').then(()=>console.log('ok'),e=>console.log('err',e.cause&&e.cause.code))"
    out = _node(["-e", code], env)
    assert out.stdout.startswith("err"), out.stdout
    assert daemon.rows() == [] and daemon.sim.requests == []


def test_no_proxy_hosts_connect_directly(daemon: DaemonHandle) -> None:
    # The sim's plain-HTTP port on 127.0.0.1 (in NO_PROXY); the proxy is a dead port, so a
    # request that went through it would fail.
    env = _env("http://127.0.0.1:9", None)
    code = (
        f"fetch('http://127.0.0.1:{daemon.sim.http_port}/_sim/health')"
        ".then(r=>r.json()).then(j=>console.log(JSON.stringify(j)))"
    )
    out = _node(["-e", code], env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ok": True}


def test_a_program_that_sets_its_own_dispatcher_keeps_it(daemon: DaemonHandle) -> None:
    code = f"""
const k = {DISPATCHER};
void Headers;  // Node's undici loaded: its default Agent is in place
const Agent = globalThis[k].constructor;
const seen = [];
const mine = new Agent({{ connect: (opts, cb) => {{ seen.push(opts.hostname);
  cb(new Error('blocked by the program')); }} }});
globalThis[k] = mine;
fetch('https://api.openai.com/v1/models').catch(() => {{
  console.log(JSON.stringify({{ kept: globalThis[k] === mine, seen }}));
}});
"""
    out = _node(["-e", code], _env(daemon.proxy_url, daemon.ca_cert))
    assert json.loads(out.stdout) == {"kept": True, "seen": ["api.openai.com"]}
    assert daemon.sim.requests == []


def test_self_proxied_tools_are_left_alone(tmp_path: Path) -> None:
    probe = (
        f"console.log(JSON.stringify({{loaded: !!globalThis[{MARK}],"
        " wrapped: Function.prototype.toString.call(fetch).includes('install()')}))"
    )
    results = {}
    for name in ("@google/gemini-cli", "@anthropic-ai/claude-code", "@openai/codex", "plain"):
        script = tmp_path / "node_modules" / name / "cli.js"
        script.parent.mkdir(parents=True)
        script.write_text(probe)
        out = _node([str(script)], _env("http://127.0.0.1:9"))
        assert out.returncode == 0 and out.stderr == "", out.stderr
        results[name] = json.loads(out.stdout)
    assert results.pop("plain") == {"loaded": True, "wrapped": True}
    assert all(r == {"loaded": True, "wrapped": False} for r in results.values()), results


def test_no_proxy_variable_means_nothing_changes() -> None:
    code = "console.log(Function.prototype.toString.call(fetch).includes('install()'))"
    out = _node(["-e", code], _env(None))
    assert out.stdout.strip() == "false" and out.stderr == ""


def test_lazy_a_process_that_never_fetches_does_not_load_undici() -> None:
    code = f"console.log(typeof globalThis[{DISPATCHER}])"
    out = _node(["-e", code], _env("http://127.0.0.1:9"))
    assert out.stdout.strip() == "undefined" and out.stderr == ""


def test_where_it_cannot_apply_one_line_notice_and_the_program_runs() -> None:
    out = _node(["--no-experimental-fetch", "-e", "console.log('ran')"], _env("http://127.0.0.1:9"))
    assert out.returncode == 0 and out.stdout.strip() == "ran"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("halton-meter: Node fetch is not routed")


def test_required_twice_installs_once(daemon: DaemonHandle) -> None:
    env = _env(daemon.proxy_url, daemon.ca_cert)
    env["NODE_OPTIONS"] = f"--require {PRELOAD} --require {PRELOAD}"
    code = (
        "fetch('https://api.openai.com/v1/chat/completions',{method:'POST',"
        "headers:{'content-type':'application/json',authorization:'Bearer sk'},"
        "body:JSON.stringify({model:'gpt-4o-mini',messages:[{role:'user',content:'x'}]})})"
        ".then(r=>r.json()).then(j=>console.log(j.usage.completion_tokens))"
    )
    out = _node(["-e", code], env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"
    (row,) = daemon.wait_rows(1)
    assert row["model"] == "gpt-4o-mini" and row["output_tokens"] == 5


def test_node_options_helpers(tmp_path: Path) -> None:
    home = Home(tmp_path / "h m")
    home.root.mkdir()
    path = ensure_node_preload(home)
    assert path.read_bytes() == PRELOAD.read_bytes() and path.parent == home.root
    opt = node_require_option(home)
    assert opt == f'--require "{path}"'  # a space in the path: quoted as Node parses it
    assert merge_node_options(None, opt) == opt
    assert (
        merge_node_options("--max-old-space-size=4096", opt) == f"--max-old-space-size=4096 {opt}"
    )
    assert merge_node_options(f"--inspect {opt}", opt) == f"--inspect {opt}"
    # Node itself accepts the quoted form
    out = _node(
        ["-e", "console.log(!!globalThis[Symbol.for('halton-meter.fetch-preload')])"],
        {**_env(None), "NODE_OPTIONS": opt},
    )
    assert out.stdout.strip() == "true", out.stderr

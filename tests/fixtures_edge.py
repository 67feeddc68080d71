"""Run the real edge (`python -m halton_meter.edge`) as a subprocess, and real clients through it.

    from fixtures_edge import EdgeHandle, start_edge, run_curl, run_python_sdk, run_node

The edge reads the home's config.toml (the daemon fixture's `sim_config` sends provider hosts
and example.com to the simulator, which the edge's direct connections use too). Clients trust
a bundle with both the simulator's CA (what a tunnelled connection shows) and the daemon's CA
(what a metered one shows), so the same client works whether the edge hands over or fails open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fixtures_process import ProcessHandle, spawn
from hmtest import PYTHON, clean_env, free_port

START_TIMEOUT_S = 20.0


@dataclass
class EdgeHandle(ProcessHandle):
    program: ClassVar[str] = "edge"

    def logs(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.out_log, self.err_log) if p.exists()]
        return "".join(parts)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == name:
                out.append(obj)
        return out

    def stats(self) -> dict[str, Any]:
        return dict(json.loads((self.home / "edge-stats.json").read_text()))

    def failure_details(self) -> str:
        return self.logs()


def start_edge(
    home: Path,
    *,
    port: int | None = None,
    daemon_port: int | None = None,
    daemon_timeout: float | None = None,
    env_extra: dict[str, str] | None = None,
    wait: bool = True,
) -> EdgeHandle:
    port = port or free_port()
    args = [PYTHON, "-m", "halton_meter.edge", "--port", str(port)]
    if daemon_port is not None:
        args += ["--daemon-port", str(daemon_port)]
    if daemon_timeout is not None:
        args += ["--daemon-timeout", str(daemon_timeout)]
    proc = spawn("edge", args, home, clean_env(home, **(env_extra or {})))
    handle = EdgeHandle(port=port, home=home, proc=proc)
    if wait:
        handle.wait_listening(START_TIMEOUT_S)
    return handle


def trust_bundle(path: Path, *cas: Path) -> Path:
    path.write_text("".join(c.read_text() for c in cas if c.exists()))
    return path


def client_env(home: Path, proxy: str, bundle: Path, **extra: str) -> dict[str, str]:
    """What `halton-meter run` gives a client: the proxy and a CA bundle; no HALTON_METER_HOME."""
    env = {k: v for k, v in clean_env(home).items() if k != "HALTON_METER_HOME"}
    env.pop("HALTON_PROJECT", None)
    env.update(
        HTTPS_PROXY=proxy,
        HTTP_PROXY=proxy,
        http_proxy=proxy,  # curl reads only the lower-case name for http://
        SSL_CERT_FILE=str(bundle),
        REQUESTS_CA_BUNDLE=str(bundle),
        CURL_CA_BUNDLE=str(bundle),
        NODE_EXTRA_CA_CERTS=str(bundle),
    )
    env.update(extra)
    return env


def run_curl(
    url: str, *, cwd: Path, env: dict[str, str], args: tuple[str, ...] = (), timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--fail", "--noproxy", "", *args, url],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_SDK_SCRIPT = r"""
import sys, anthropic, openai
kind = sys.argv[1]
if kind == "anthropic":
    c = anthropic.Anthropic(api_key="sk-ant-test", max_retries=0)
    m = c.messages.create(model="claude-sonnet-4-5", max_tokens=20,
                          messages=[{"role": "user", "content": "hi"}])
    print("OK", m.usage.output_tokens)
else:
    c = openai.OpenAI(api_key="sk-test", max_retries=0)
    r = c.chat.completions.create(model="gpt-4o-mini",
                                  messages=[{"role": "user", "content": "hi"}])
    print("OK", r.usage.completion_tokens)
"""


def run_python_sdk(
    kind: str, *, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", _SDK_SCRIPT, kind],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Node 20's fetch ignores HTTPS_PROXY: speak CONNECT by hand, then TLS and HTTP/1.1.
_NODE_SCRIPT = r"""
const http = require('http'), tls = require('tls');
const proxy = new URL(process.env.HTTPS_PROXY);
const headers = {};
if (proxy.username) {
  headers['Proxy-Authorization'] = 'Basic ' +
    Buffer.from(decodeURIComponent(proxy.username) + ':' + decodeURIComponent(proxy.password)).toString('base64');
}
const host = 'api.anthropic.com';
const req = http.request({host: proxy.hostname, port: proxy.port, method: 'CONNECT',
                          path: host + ':443', headers});
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.log('CONNECT ' + res.statusCode); process.exit(2); }
  const s = tls.connect({socket, servername: host}, () => {
    const body = JSON.stringify({model: 'claude-haiku-4-5', max_tokens: 10,
                                 messages: [{role: 'user', content: 'hi from node'}]});
    s.write('POST /v1/messages HTTP/1.1\r\nHost: ' + host + '\r\nx-api-key: sk-ant-node\r\n' +
            'anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n' +
            'content-length: ' + Buffer.byteLength(body) + '\r\nconnection: close\r\n\r\n' + body);
  });
  let out = '';
  s.on('data', d => out += d);
  s.on('end', () => { console.log(out.split('\r\n')[0]); process.exit(out.startsWith('HTTP/1.1 200') ? 0 : 3); });
  s.on('error', e => { console.log('ERR ' + e.message); process.exit(4); });
});
req.on('error', e => { console.log('ERR ' + e.message); process.exit(5); });
req.end();
"""


def run_node(
    *, cwd: Path, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", "-e", _NODE_SCRIPT],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def git_init(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True, capture_output=True)
    return path


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

"""`halton-meter demo`: the whole product, end to end, on this machine, with no internet.

In a temporary home: start the supervised stack, start a local provider simulator serving
the real provider host names (through ``[upstream] resolve``), run the official Anthropic
and OpenAI SDKs (streaming and not) through ``halton-meter run``, print the report and the
status, then stop everything and check that no process is left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import typer

from halton_meter.core.paths import HOME_ENV, Home

# Each client is a separate process under `halton-meter run`: exactly how a user meters a tool.
_ANTHROPIC = """
import anthropic
client = anthropic.Anthropic(api_key="sk-ant-demo")
msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
    messages=[{"role": "user", "content": "Say hello in five words."}])
print("anthropic (json):", msg.usage.input_tokens, "in,", msg.usage.output_tokens, "out")
with client.messages.stream(model="claude-haiku-4-5", max_tokens=64,
        messages=[{"role": "user", "content": "Stream a haiku."}]) as stream:
    for _ in stream.text_stream:
        pass
    final = stream.get_final_message()
print("anthropic (sse): ", final.usage.input_tokens, "in,", final.usage.output_tokens, "out")
"""

_OPENAI = """
import openai
client = openai.OpenAI(api_key="sk-demo")
chat = client.chat.completions.create(model="gpt-4o-mini",
    messages=[{"role": "user", "content": "hello"}])
print("openai chat (json):", chat.usage.prompt_tokens, "in,", chat.usage.completion_tokens, "out")
stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
    stream_options={"include_usage": True}, messages=[{"role": "user", "content": "count to 5"}])
usage = [c.usage for c in stream if c.usage][-1]
print("openai chat (sse): ", usage.prompt_tokens, "in,", usage.completion_tokens, "out")
resp = client.responses.create(model="gpt-4.1-mini", input="one line about meters")
print("openai responses:  ", resp.usage.input_tokens, "in,", resp.usage.output_tokens, "out")
"""

_RAW = """
import json, os, ssl, urllib.request
# No SDK installed: the same calls with the standard library, through the same proxy.
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
opener = urllib.request.build_opener(urllib.request.ProxyHandler(), urllib.request.HTTPSHandler(context=ctx))
def post(url, body, headers):
    req = urllib.request.Request(url, json.dumps(body).encode(), {**headers, "content-type": "application/json"})
    return json.loads(opener.open(req, timeout=30).read())
a = post("https://api.anthropic.com/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}]}, {"x-api-key": "sk-ant-demo", "anthropic-version": "2023-06-01"})
print("anthropic (raw):", a["usage"])
o = post("https://api.openai.com/v1/chat/completions", {"model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}]}, {"authorization": "Bearer sk-demo"})
print("openai (raw):   ", o["usage"])
"""


def _sdk_available() -> bool:
    try:
        import anthropic  # noqa: F401
        import openai  # noqa: F401
    except ImportError:
        return False
    return True


def _config_text(sim_port: int, ca: Path) -> str:
    hosts = ("api.anthropic.com", "api.openai.com", "generativelanguage.googleapis.com")
    resolve = ", ".join(f'"{h}:443" = "127.0.0.1:{sim_port}"' for h in hosts)
    return textwrap.dedent(
        f"""\
        # Written by `halton-meter demo`: provider hosts go to the local simulator.
        [upstream]
        resolve = {{ {resolve} }}
        ca_bundle = "{ca}"
        """
    )


def _meter(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env[HOME_ENV] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "halton_meter", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def demo(keep: bool = typer.Option(False, "--keep", help="Keep the temporary home.")) -> None:
    """Run the whole meter end to end in a temporary home (no internet needed)."""
    from halton_meter.service.control import start, stop
    from halton_meter.service.orphans import our_processes
    from halton_meter.sim import ProviderSim

    root = Path(tempfile.mkdtemp(prefix="halton-demo-"))
    home_dir = root / "home"
    home_dir.mkdir(mode=0o700)
    home = Home(home_dir)
    os.environ[HOME_ENV] = str(home_dir)
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        os.environ.pop(var, None)
    ok = True
    sim = ProviderSim(root / "sim").start()
    try:
        typer.echo(
            f"== provider simulator on 127.0.0.1:{sim.port} (serving api.anthropic.com, api.openai.com)"
        )
        (home_dir / "config.toml").write_text(_config_text(sim.port, sim.ca_path))
        typer.echo(f"== starting the supervised stack in {home_dir}")
        outcome = start(home)
        typer.echo(outcome.message)
        if not outcome.ok:
            raise typer.Exit(1)

        script = _ANTHROPIC + _OPENAI if _sdk_available() else _RAW
        if script is _RAW:
            typer.echo(
                "(anthropic/openai SDKs not installed: using raw requests; pip install 'halton-meter[test]')"
            )
        typer.echo("== clients, through `halton-meter run --project demo`")
        client = _meter(home_dir, "run", "--project", "demo", "--", sys.executable, "-c", script)
        typer.echo(client.stdout.rstrip())
        if client.returncode != 0:
            ok = False
            typer.echo(f"client failed ({client.returncode}):\n{client.stderr}", err=True)

        from halton_meter.store.db import connect

        expected = 5 if script is not _RAW else 2
        rows = _count_rows(home, expected, connect)
        typer.echo(f"\n== halton-meter report ({rows} rows; expected {expected})")
        typer.echo(_meter(home_dir, "report").stdout.rstrip())
        typer.echo("\n== halton-meter status")
        typer.echo(_meter(home_dir, "status").stdout.rstrip())
        ok = ok and rows == expected
    finally:
        typer.echo("\n== stopping")
        typer.echo(stop(home).message)
        sim.stop()
        left = our_processes(home)
        if left:
            ok = False
            typer.echo(f"processes left behind: {[p.pid for p in left]}", err=True)
        else:
            typer.echo("no process left behind")
        if keep:
            typer.echo(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    typer.echo("demo: ok" if ok else "demo: FAILED")
    raise typer.Exit(0 if ok else 1)


def _count_rows(home: Home, expected: int, connect) -> int:  # type: ignore[no-untyped-def]
    import time

    # The daemon commits each row within 100 ms of the response; allow a little slack.
    deadline = time.monotonic() + 5
    count = 0
    while time.monotonic() < deadline:
        if home.db.exists():
            conn = connect(home.db, readonly=True)
            try:
                count = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
            finally:
                conn.close()
            if count >= expected:
                break
        time.sleep(0.1)
    return count


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

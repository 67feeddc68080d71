"""Helpers for client-compatibility tests: a WebSocket client through a proxy, cached client
installs (npm, pip) and the real supervised stack in a temporary home.

Installs are cached under ``<repo>/.cache/clients/`` (git-ignored) and happen on first use, so
a fresh CI machine with node, npm and the registries gets them automatically; later runs
reuse them.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmtest import REPO
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

CACHE = REPO / ".cache" / "clients"
NODE_DIR = CACHE / "node"
# Pinned so a test run is reproducible; bump deliberately.
NODE_PACKAGES = ("@openai/codex@0.171.0", "@anthropic-ai/sdk@1.17.0", "openai@6.49.0")
INSTALL_TIMEOUT_S = 600


# -- WebSocket through an HTTP proxy (CONNECT), as Codex does it --------------------------------


@dataclass
class WsEvent:
    at: float  # time.monotonic() when the message arrived
    obj: dict[str, Any]


@dataclass
class WsClient:
    """A Responses-over-WebSocket client: CONNECT through ``proxy``, TLS, upgrade."""

    tls: ssl.SSLSocket
    ws: WSConnection
    events: list[WsEvent] = field(default_factory=list)
    status: int | None = None

    @classmethod
    @contextmanager
    def open(
        cls,
        proxy_port: int,
        ca: Path,
        *,
        host: str = "api.openai.com",
        path: str = "/v1/responses",
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = 20.0,
    ) -> Iterator[WsClient]:
        raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
        try:
            raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = raw.recv(4096)
                if not chunk:
                    raise AssertionError(f"proxy closed during CONNECT: {head!r}")
                head += chunk
            assert head.split(b" ", 2)[1] == b"200", head
            ctx = ssl.create_default_context(cafile=str(ca))
            tls = ctx.wrap_socket(raw, server_hostname=host)
            ws = WSConnection(ConnectionType.CLIENT)
            extra = [(k.encode(), v.encode()) for k, v in headers]
            tls.sendall(ws.send(Request(host=host, target=path, extra_headers=extra)))
            client = cls(tls=tls, ws=ws)
            client._handshake()
            yield client
        finally:
            raw.close()

    def _handshake(self) -> None:
        while self.status is None:
            data = self.tls.recv(65536)
            if not data:
                raise AssertionError("connection closed during the WebSocket handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.status = 101
                elif isinstance(event, RejectConnection):
                    self.status = event.status_code

    def send(self, obj: dict[str, Any]) -> None:
        self.tls.sendall(self.ws.send(TextMessage(data=json.dumps(obj))))

    def receive_until(self, types: Sequence[str], count: int = 1) -> list[WsEvent]:
        """Read events until ``count`` events whose type is in ``types`` arrived."""
        seen = 0
        start = len(self.events)
        while seen < count:
            data = self.tls.recv(65536)
            if not data:
                raise AssertionError(f"socket closed; got {[e.obj for e in self.events]}")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    ev = WsEvent(time.monotonic(), json.loads(event.data))
                    self.events.append(ev)
                    if ev.obj.get("type") in types:
                        seen += 1
                elif isinstance(event, CloseConnection):
                    raise AssertionError(f"server closed: {event.code} {event.reason}")
        return self.events[start:]

    def read_to_eof(self) -> None:
        """Read until the peer drops the connection (a truncated socket)."""
        while True:
            try:
                data = self.tls.recv(65536)
            except (ssl.SSLError, OSError):
                return
            if not data:
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.events.append(WsEvent(time.monotonic(), json.loads(event.data)))

    def close(self) -> None:
        self.tls.sendall(self.ws.send(CloseConnection(code=1000)))


def create(model: str, text: str = "hi") -> dict[str, Any]:
    return {"type": "response.create", "model": model, "input": text}


# -- cached installs --------------------------------------------------------------------------


@contextmanager
def _install_lock(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def node_modules() -> Path:
    """``.cache/clients/node/node_modules`` with NODE_PACKAGES installed (npm, first use)."""
    marker = NODE_DIR / ".installed"
    want = "\n".join(NODE_PACKAGES)
    with _install_lock("node"):
        if not (marker.exists() and marker.read_text() == want):
            NODE_DIR.mkdir(parents=True, exist_ok=True)
            (NODE_DIR / "package.json").write_text('{"name": "hm-clients", "private": true}\n')
            env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
            proc = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", *NODE_PACKAGES],
                cwd=NODE_DIR,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
            if proc.returncode != 0:
                raise AssertionError(f"npm install failed:\n{proc.stdout}\n{proc.stderr}")
            marker.write_text(want)
    return NODE_DIR / "node_modules"


def codex_bin() -> Path:
    return node_modules() / ".bin" / "codex"


HEAVY_DIR = CACHE / "node-heavy"
# The coding agents: big downloads (native binaries), cached like the SDKs.
HEAVY_PACKAGES = ("@anthropic-ai/claude-code@2.1.197", "@google/gemini-cli@0.61.0")
PY_DIR = CACHE / "pyvenv"
PY_PACKAGES = ("llm==0.36",)


def _npm_install(where: Path, packages: Sequence[str], name: str) -> Path:
    marker = where / ".installed"
    want = "\n".join(packages)
    with _install_lock(name):
        if not (marker.exists() and marker.read_text() == want):
            where.mkdir(parents=True, exist_ok=True)
            (where / "package.json").write_text(f'{{"name": "hm-{name}", "private": true}}\n')
            env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
            proc = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", *packages],
                cwd=where,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
            if proc.returncode != 0:
                raise AssertionError(f"npm install failed:\n{proc.stdout}\n{proc.stderr}")
            marker.write_text(want)
    return where / "node_modules"


def heavy_node_modules() -> Path:
    return _npm_install(HEAVY_DIR, HEAVY_PACKAGES, "node-heavy")


def _pip_venv(where: Path, packages: Sequence[str], name: str) -> Path:
    """A separate virtualenv with ``packages``, created on first use and cached."""
    marker = where / ".installed"
    want = "\n".join(packages)
    with _install_lock(name):
        if not (marker.exists() and marker.read_text() == want):
            import sys

            subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
            env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
            proc = subprocess.run(
                [str(where / "bin" / "pip"), "install", "-q", *packages],
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
            if proc.returncode != 0:
                raise AssertionError(f"pip install failed:\n{proc.stdout}\n{proc.stderr}")
            marker.write_text(want)
    return where


def py_clients_venv() -> Path:
    """A separate virtualenv with the Python CLIs (llm), created on first use."""
    return _pip_venv(PY_DIR, PY_PACKAGES, "pyvenv")


AIDER_DIR = CACHE / "aider-venv"
AIDER_PACKAGES = ("aider-chat==0.86.2",)


def aider_venv() -> Path:
    """aider (litellm) in its own virtualenv: its many pins must not meet llm's."""
    return _pip_venv(AIDER_DIR, AIDER_PACKAGES, "aider")


# -- the real supervised stack in a temporary home --------------------------------------------

STACK_HOSTS = ("api.anthropic.com", "api.openai.com", "generativelanguage.googleapis.com")


@dataclass
class MeterStack:
    """``halton-meter start`` in a temporary home, provider hosts resolved to a ProviderSim."""

    root: Path
    home: Path  # HALTON_METER_HOME
    user_home: Path  # HOME for clients (their config dirs land here, never in the real one)
    sim: Any
    edge_port: int

    def env(self, **extra: str) -> dict[str, str]:
        from hmtest import clean_env

        env = clean_env(self.home, HOME=str(self.user_home))
        for var in ("NODE_OPTIONS", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE"):
            env.pop(var, None)
        env.update(extra)
        return env

    def meter(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        import sys

        return subprocess.run(
            [sys.executable, "-m", "halton_meter", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        timeout: float = 180,
        run_args: Sequence[str] = (),
        **extra: str,
    ) -> subprocess.CompletedProcess[str]:
        """``halton-meter run -- argv`` from a shell, as a user types it (the shell is the
        client's parent, which ends the edge's ancestry walk exactly as in a terminal)."""
        import shlex
        import sys

        cmd = " ".join(
            shlex.quote(a)
            for a in [sys.executable, "-m", "halton_meter", "run", *run_args, "--", *argv]
        )
        return subprocess.run(
            ["bash", "-c", f"{cmd}; exit $?"],
            env=self.env(**extra),
            cwd=cwd or self.user_home,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def rows(self) -> list[dict[str, Any]]:
        import sqlite3

        db = self.home / "db.sqlite"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY seq")]
            except sqlite3.OperationalError:
                return []
        finally:
            conn.close()

    def mark(self) -> int:
        rows = self.rows()
        return int(rows[-1]["seq"]) if rows else 0

    def rows_since(self, mark: int, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait for ``n`` rows after ``mark``; then a short settle proves no extra row came."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = [r for r in self.rows() if int(r["seq"]) > mark]
            if len(rows) >= n:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        return [r for r in self.rows() if int(r["seq"]) > mark]


def stack_config(sim: Any, ports: tuple[int, int, int]) -> str:
    resolve = ", ".join(f'"{h}:443" = "127.0.0.1:{sim.port}"' for h in STACK_HOSTS)
    edge, daemon, api = ports
    return (
        'listen_host = "127.0.0.1"\n'
        "[ports]\n"
        f"edge = {edge}\ndaemon = {daemon}\napi = {api}\n"
        "[upstream]\n"
        f"resolve = {{ {resolve} }}\n"
        f'ca_bundle = "{sim.ca_path}"\n'
    )


@contextmanager
def meter_stack(root: Path) -> Iterator[MeterStack]:
    from hmtest import free_port

    from halton_meter.sim import ProviderSim

    home = root / "meter"
    home.mkdir(mode=0o700, parents=True)
    user_home = root / "user"
    user_home.mkdir()
    sim = ProviderSim(root / "sim").start(http_port=0)
    ports = (free_port(), free_port(), free_port())
    (home / "config.toml").write_text(stack_config(sim, ports))
    stack = MeterStack(root=root, home=home, user_home=user_home, sim=sim, edge_port=ports[0])
    try:
        out = stack.meter("start")
        assert out.returncode == 0, out.stdout + out.stderr
        yield stack
    finally:
        stack.meter("stop")
        sim.stop()

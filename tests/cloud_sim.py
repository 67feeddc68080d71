"""A simulator of the Halton Meter Cloud API, for tests: a REAL HTTPS server on loopback.

FastAPI on uvicorn in a thread, TLS from halton_meter.sim.ca's throwaway CA (the client trusts
it through ``[upstream] ca_bundle``). Implements whoami, pair, revoke and the batch endpoint, records
every request and every accepted row id, and has knobs for each failure the sync classifies:

- ``add_key(key, status="ok"|"revoked"|"forbidden")``: whoami and batch answer 200/401/403
- ``fail_next(status, times, headers)``: the next batch calls answer ``status`` (5xx, 429 +
  Retry-After, ...)
- ``poisoned[row_id] = reason``: any batch holding that row answers 422
- ``batch_delay_s``: the batch endpoint records the rows, then sleeps before answering
- ``stop()`` / ``start()``: the server goes away (connection refused) and comes back on the
  same port
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from halton_meter.sim.ca import ensure_sim_certs


@dataclass
class KeyInfo:
    machine_id: str
    workspace: str
    status: str = "ok"  # ok | revoked | forbidden


@dataclass
class Forced:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=lambda: {"error": "simulated failure"})


class CloudSim:
    def __init__(self, cert_dir: Path) -> None:
        # The provider simulator's CA and leaf (its SANs cover 127.0.0.1 and localhost).
        certs = ensure_sim_certs(cert_dir)
        self.ca_path, self._leaf, self._leaf_key = certs.ca_cert, certs.leaf_cert, certs.leaf_key
        self.lock = threading.Lock()
        self.keys: dict[str, KeyInfo] = {}
        self.pair_codes: dict[str, str] = {}  # code -> machine_id
        self.accepted: collections.Counter[str] = collections.Counter()  # id -> times accepted
        self.rows: dict[str, dict[str, Any]] = {}
        self.batches: list[dict[str, Any]] = []  # every batch request that got past auth
        self.idempotency: dict[str, tuple[str, ...]] = {}
        self.idempotency_conflicts: list[str] = []
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, bearer
        self.revoked: list[str] = []
        self.poisoned: dict[str, str] = {}
        self.forced: collections.deque[Forced] = collections.deque()
        self.batch_delay_s = 0.0
        self.batch_received = threading.Event()
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- knobs --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def add_key(
        self, key: str, machine_id: str = "m-1", workspace: str = "ws-1", status: str = "ok"
    ) -> None:
        with self.lock:
            self.keys[key] = KeyInfo(machine_id, workspace, status)

    def set_key_status(self, key: str, status: str) -> None:
        with self.lock:
            self.keys[key].status = status

    def add_code(self, code: str, machine_id: str = "m-paired") -> None:
        with self.lock:
            self.pair_codes[code] = machine_id

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            for _ in range(times):
                self.forced.append(Forced(status, dict(headers or {})))

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and p == path)

    def batch_calls(self) -> int:
        return self.count("POST", "/v1/requests/batch")

    # -- the app ------------------------------------------------------------------------

    def _auth(self, request: Request) -> tuple[str | None, KeyInfo | None]:
        header = request.headers.get("authorization", "")
        key = header[7:] if header.lower().startswith("bearer ") else None
        with self.lock:
            self.requests.append((request.method, request.url.path, key))
            return key, (self.keys.get(key) if key else None)

    @staticmethod
    def _denied(info: KeyInfo | None) -> JSONResponse | None:
        if info is None or info.status == "revoked":
            return JSONResponse({"error": "invalid key"}, status_code=401)
        if info.status == "forbidden":
            return JSONResponse({"error": "machine removed from workspace"}, status_code=403)
        return None

    def _build_app(self) -> FastAPI:
        app = FastAPI()
        sim = self

        @app.get("/v1/daemon/whoami")
        async def whoami(request: Request) -> JSONResponse:
            _, info = sim._auth(request)
            denied = sim._denied(info)
            if denied is not None:
                return denied
            assert info is not None
            return JSONResponse({"machine_id": info.machine_id, "workspace": info.workspace})

        @app.post("/v1/daemon/pair")
        async def pair(request: Request) -> JSONResponse:
            sim._auth(request)
            body = await request.json()
            with sim.lock:
                machine = sim.pair_codes.pop(str(body.get("code")), None)
                if machine is None:
                    return JSONResponse({"error": "unknown or used code"}, status_code=400)
                key = f"key-{machine}-{len(sim.keys) + 1}"
                sim.keys[key] = KeyInfo(machine, f"ws-for-{body.get('machine_name')}")
            return JSONResponse({"key": key})

        @app.post("/v1/daemon/revoke")
        async def revoke(request: Request) -> JSONResponse:
            key, info = sim._auth(request)
            if info is None or info.status == "revoked":
                return JSONResponse({"error": "invalid key"}, status_code=401)
            with sim.lock:
                info.status = "revoked"
                assert key is not None
                sim.revoked.append(key)
            return JSONResponse({"revoked": True})

        @app.post("/v1/requests/batch")
        async def batch(request: Request) -> JSONResponse:
            _, info = sim._auth(request)
            denied = sim._denied(info)
            if denied is not None:
                return denied
            assert info is not None
            with sim.lock:
                forced = sim.forced.popleft() if sim.forced else None
            if forced is not None:
                return JSONResponse(forced.body, status_code=forced.status, headers=forced.headers)
            body = await request.json()
            rows = body.get("requests")
            if body.get("machine_id") != info.machine_id or not isinstance(rows, list):
                return JSONResponse({"error": "bad machine_id or requests"}, status_code=400)
            ids = tuple(str(r["id"]) for r in rows)
            idem = request.headers.get("idempotency-key", "")
            with sim.lock:
                sim.batches.append({"idempotency_key": idem, "ids": ids})
                if idem in sim.idempotency and sim.idempotency[idem] != ids:
                    sim.idempotency_conflicts.append(idem)
                sim.idempotency.setdefault(idem, ids)
                bad = [i for i in ids if i in sim.poisoned]
                if bad:
                    reason = sim.poisoned[bad[0]]
                    return JSONResponse({"error": f"row {bad[0]}: {reason}"}, status_code=422)
                accepted = duplicates = 0
                for row in rows:
                    if row["id"] in sim.rows:
                        duplicates += 1
                        continue
                    sim.rows[row["id"]] = row
                    sim.accepted[row["id"]] += 1
                    accepted += 1
                delay = sim.batch_delay_s
            sim.batch_received.set()
            if delay:
                await asyncio.sleep(delay)
            return JSONResponse({"accepted": accepted, "duplicates": duplicates})

        return app

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> CloudSim:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            ssl_certfile=str(self._leaf),
            ssl_keyfile=str(self._leaf_key),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="cloud-sim", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("cloud simulator did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None


def write_config(home: Path, sim: CloudSim, **cloud: Any) -> None:
    """A config.toml pointing the cloud sync at ``sim`` and trusting its CA."""
    lines = [
        "[upstream]",
        f'ca_bundle = "{sim.ca_path}"',
        "[cloud]",
        f'base_url = "{sim.base_url}"',
    ]
    for key, value in cloud.items():
        text = str(value).lower() if isinstance(value, bool) else repr(value)
        lines.append(f"{key} = {text}")
    (home / "config.toml").write_text("\n".join(lines) + "\n")


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on loopback that records every tunnel's target."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="connect-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pump = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                pump.start()
                _pipe(client, upstream)
                pump.join(5)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

"""A stand-in program for supervision tests: binds its effective port and answers HTTP.

    python fixtures_supervision.py <edge|daemon|api> [--crash-after S | --hang-after S]

The command line carries a ``halton_meter-standin`` marker so port_alloc counts it as ours.
Reads the ports from effective-ports.json like the real programs; exits 1 when the bind
fails (a foreign holder); exits 0 on SIGTERM; appends "hup" to <home>/<program>.hup on SIGHUP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path


def _serve(sock: socket.socket, program: str) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_answer, args=(conn, program), daemon=True).start()


_HUNG = threading.Event()


def _answer(conn: socket.socket, program: str) -> None:
    if _HUNG.is_set():  # accepted by the kernel, never answered: a wedged event loop
        time.sleep(3600)
    with conn:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
        except OSError:
            return
        body = json.dumps({"ok": True, "program": program}).encode()
        status = b"200 OK" if program != "api" or data.startswith(b"GET /health") else b"404 NF"
        conn.sendall(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )


def main() -> None:
    program = sys.argv[1]
    args = sys.argv[2:]
    crash_after = float(args[args.index("--crash-after") + 1]) if "--crash-after" in args else None
    if "--hang-after" in args:
        threading.Timer(float(args[args.index("--hang-after") + 1]), _HUNG.set).start()
    home = Path(os.environ["HALTON_METER_HOME"])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    hup = home / f"{program}.hup"
    signal.signal(signal.SIGHUP, lambda *_: hup.open("a").write("hup\n"))
    if crash_after is not None:
        time.sleep(crash_after)
        print(f"{program}: crashing on purpose", file=sys.stderr, flush=True)
        raise SystemExit(3)
    if program == "watchdog":
        while True:
            time.sleep(3600)
    ports = json.loads((home / "effective-ports.json").read_text())["ports"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", ports[program]))
    except OSError as exc:
        print(f"{program}: bind {ports[program]} failed: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    sock.listen(64)
    print(f"{program}: listening on {ports[program]}", flush=True)
    _serve(sock, program)


if __name__ == "__main__":
    main()

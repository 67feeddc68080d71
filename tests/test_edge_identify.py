"""Client identification (pid from the source port, tool from the process chain) and the
attribution tiers, against real processes started in real directories."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_edge import git_init
from hmtest import PYTHON, clean_env

from halton_meter.edge.attribution import Attributor, parse_haltonrc, proxy_user
from halton_meter.edge.handover import decode_attribution, encode_attribution
from halton_meter.edge.identify import Identifier, ProcSnapshot, classify, tool_for_chain
from halton_meter.edge.registry import Registry

_HOLD = (
    "import socket, sys, time\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "time.sleep(30)\n"
)
# A parent that starts the client (a child python) with cwd=/ and waits: an "IDE".
_PARENT = (
    "import subprocess, sys\n"
    "code = sys.argv[1]; port = sys.argv[2]\n"
    f"subprocess.run([{PYTHON!r}, '-c', code, port], cwd='/')\n"
)


class Listener:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(20)
        self.port = int(self.sock.getsockname()[1])
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conns: list[socket.socket] = []

    def client(self, args: list[str], **kw: object) -> int:
        """Start a process that connects to us; returns the client's source port."""
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        conn, addr = self.sock.accept()
        self.conns.append(conn)
        return int(addr[1])

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    try:
        yield lst
    finally:
        lst.close()


@pytest.fixture
def identifier(hm_home: Path) -> Identifier:
    return Identifier(str(hm_home))


def test_pid_and_tool_of_a_real_python_client(
    listener: Listener, identifier: Identifier, tmp_path: Path
) -> None:
    port = listener.client([PYTHON, "-c", _HOLD, str(listener.port)], cwd=tmp_path)
    t0 = time.perf_counter()
    ident = identifier.identify(port, listener.port)
    elapsed = time.perf_counter() - t0
    assert ident.pid == listener.procs[0].pid
    assert ident.tool == "python" and ident.cwd == str(tmp_path)
    assert ident.meter_program is None
    assert elapsed < 1.0
    # cached by (pid, start time): the second lookup reuses the chain
    again = identifier.identify(port, listener.port)
    assert again.chain is ident.chain


def test_unknown_port_gives_no_pid(identifier: Identifier) -> None:
    ident = identifier.identify(1, 2)
    assert ident.pid is None and ident.tool == "other"


def test_node_running_claude_code_package_is_claude_code(
    listener: Listener, identifier: Identifier, tmp_path: Path
) -> None:
    pkg = tmp_path / "node_modules" / "@anthropic-ai" / "claude-code"
    pkg.mkdir(parents=True)
    cli = pkg / "cli.js"
    cli.write_text(
        "const net = require('net');\n"
        "const s = net.connect(Number(process.argv[2]), '127.0.0.1');\n"
        "setTimeout(() => {}, 30000);\n"
    )
    port = listener.client(["node", str(cli), str(listener.port)], cwd=tmp_path)
    assert identifier.identify(port, listener.port).tool == "claude-code"


def test_binary_named_codex_is_codex(
    listener: Listener, identifier: Identifier, tmp_path: Path
) -> None:
    codex = tmp_path / "bin" / "codex"
    codex.parent.mkdir()
    codex.symlink_to(PYTHON)
    port = listener.client([str(codex), "-c", _HOLD, str(listener.port)], cwd=tmp_path)
    assert identifier.identify(port, listener.port).tool == "codex"


def test_curl_is_curl(listener: Listener, identifier: Identifier, tmp_path: Path) -> None:
    port = listener.client(
        ["curl", "-s", "--max-time", "30", f"http://127.0.0.1:{listener.port}/"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    assert identifier.identify(port, listener.port).tool == "curl"


def _snap(*cmd: str, exe: str = "") -> ProcSnapshot:
    return ProcSnapshot(pid=1, start=0.0, exe=exe, cmdline=tuple(cmd), cwd=None)


@pytest.mark.parametrize(
    ("exe", "cmd", "tool"),
    [
        (
            "/usr/bin/node",
            ("node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"),
            "claude-code",
        ),
        ("/home/u/.local/share/claude/versions/1.0/claude", ("claude",), "claude-code"),
        ("/usr/bin/node", ("node", "/usr/lib/node_modules/@openai/codex/bin/codex.js"), "codex"),
        ("/opt/codex/codex-x86_64-unknown-linux-musl", ("codex",), "codex"),
        (
            "/usr/bin/node",
            ("node", "/usr/lib/node_modules/@google/gemini-cli/dist/index.js"),
            "gemini-cli",
        ),
        ("/usr/bin/python3.12", ("python3", "/home/u/.local/bin/aider", "--model", "x"), "aider"),
        ("/usr/bin/python3.12", ("python3", "-m", "aider"), "aider"),
        ("/usr/bin/python3.12", ("/home/u/.local/bin/llm", "prompt"), "llm"),
        ("/Applications/Cursor.app/Contents/MacOS/Cursor", ("Cursor",), "cursor"),
        ("/home/u/.cursor-server/bin/abc/node", ("node", "--type=extensionHost"), "cursor"),
        ("/usr/share/windsurf/windsurf", ("windsurf",), "windsurf"),
        ("/usr/share/code/code", ("/usr/share/code/code", "--type=utility"), "vscode"),
        ("/home/u/.vscode-server/bin/abc/node", ("node", "server-main.js"), "vscode"),
        ("/Applications/Zed.app/Contents/MacOS/zed", ("zed",), "zed"),
        ("/opt/idea/jbr/bin/java", ("/opt/idea/bin/idea.sh",), "intellij"),
        ("/usr/bin/curl", ("curl", "https://x"), "curl"),
        ("/usr/lib/git-core/git-remote-https", ("git-remote-https", "origin"), "git"),
        ("/usr/bin/git", ("git", "push"), "git"),
        ("/usr/bin/python3.12", ("python3", "app.py"), "python"),
        ("/home/u/code/proj/.venv/bin/python", ("python", "app.py"), "python"),
        ("/usr/bin/node", ("node", "server.js"), "node"),
        ("/usr/bin/wget", ("wget", "x"), "other"),
    ],
)
def test_classify(exe: str, cmd: tuple[str, ...], tool: str) -> None:
    assert classify(_snap(*cmd, exe=exe)) == tool


def test_generic_runtime_inherits_an_ide_parent_but_not_through_a_shell() -> None:
    ext_host = _snap("node", "ext.js", exe="/usr/bin/node")
    ide = _snap("/usr/share/code/code", exe="/usr/share/code/code")
    shell = _snap("bash", exe="/usr/bin/bash")
    assert tool_for_chain([ext_host, ide]) == "vscode"
    assert (
        tool_for_chain([_snap("python3", "x.py", exe="/usr/bin/python3"), shell, ide]) == "python"
    )
    assert tool_for_chain([_snap("curl", exe="/usr/bin/curl"), ide]) == "curl"


# -- attribution tiers ----------------------------------------------------------------------------


@pytest.fixture
def attributor(tmp_path: Path) -> Attributor:
    scan = tmp_path / "scan"
    scan.mkdir()
    return Attributor(Registry(tmp_path / "registry.json"), [scan])


def _ident(listener: Listener, identifier: Identifier, args: list[str], **kw: object):  # type: ignore[no-untyped-def]
    port = listener.client(args, **kw)
    return identifier.identify(port, listener.port)


def test_tiers_explicit_haltonrc_git_misc(
    listener: Listener, identifier: Identifier, attributor: Attributor, tmp_path: Path
) -> None:
    hold = [PYTHON, "-c", _HOLD, str(listener.port)]
    repo = git_init(tmp_path / "repo-one")
    (tmp_path / "rc").mkdir()
    (tmp_path / "rc" / ".haltonrc").write_text('project = "from-rc"\n')
    (tmp_path / "rc" / "sub").mkdir()
    (tmp_path / "none").mkdir()
    env = clean_env(tmp_path)

    explicit = _ident(listener, identifier, hold, cwd=repo, env={**env, "HALTON_PROJECT": "x1"})
    assert attributor.resolve(explicit) == attributor.resolve(explicit)
    assert (attributor.resolve(explicit).project, attributor.resolve(explicit).tier) == (
        "x1",
        "explicit",
    )
    # proxy credentials beat the environment
    assert attributor.resolve(explicit, "via-proxy").project == "via-proxy"

    rc = attributor.resolve(
        _ident(listener, identifier, hold, cwd=tmp_path / "rc" / "sub", env=env)
    )
    assert (rc.project, rc.tier, rc.root) == ("from-rc", "haltonrc", str(tmp_path / "rc"))

    git = attributor.resolve(_ident(listener, identifier, hold, cwd=repo, env=env))
    assert (git.project, git.tier) == ("repo-one", "git")

    misc = attributor.resolve(_ident(listener, identifier, hold, cwd=tmp_path / "none", env=env))
    assert (misc.project, misc.tier) == ("misc", "misc")
    assert set(attributor.registry.snapshot()) >= {"x1", "from-rc", "repo-one"}


def test_tier_4a_ide_parent_names_the_folder(
    listener: Listener, identifier: Identifier, attributor: Attributor, tmp_path: Path
) -> None:
    workspace = git_init(tmp_path / "ws" / "shop-frontend")
    # argv[0] "code" + a folder argument, like `code ~/src/shop-frontend`; the client runs in /
    ident = _ident(
        listener,
        identifier,
        ["code", "-c", _PARENT, _HOLD, str(listener.port), str(workspace)],
        executable=PYTHON,
        cwd="/",
        env=clean_env(tmp_path),
    )
    assert ident.tool == "vscode" and ident.cwd == "/"
    result = attributor.resolve(ident)
    assert (result.project, result.tier, result.root) == ("shop-frontend", "4a", str(workspace))
    assert attributor.registry.get("shop-frontend") == str(workspace)


def test_tier_4c_and_4c_lenient_from_a_window_title(
    listener: Listener, identifier: Identifier, attributor: Attributor, tmp_path: Path
) -> None:
    args = [PYTHON, "-c", _HOLD, str(listener.port), "--window-title", "Garden-Planner — Cursor"]
    ident = _ident(listener, identifier, args, cwd="/", env=clean_env(tmp_path))
    assert attributor.resolve(ident).tier == "misc"
    folder = attributor.scan_roots[0] / "garden_planner"
    folder.mkdir()
    # a fresh resolver (the scan-root listing is cached for 2 s), same registry
    attributor = Attributor(attributor.registry, attributor.scan_roots)
    lenient = attributor.resolve(ident)
    assert (lenient.project, lenient.tier) == ("garden_planner", "4c_lenient")
    warm = attributor.resolve(ident)
    assert (warm.project, warm.tier, warm.root) == ("garden_planner", "4c", str(folder))


def test_home_directory_is_never_a_project(tmp_path: Path) -> None:
    home = git_init(tmp_path / "home")  # a dotfiles repo in ~
    reg = Registry(tmp_path / "r.json")
    att = Attributor(reg, [], home_dir=home)
    ident_chain = [ProcSnapshot(os.getpid(), 0.0, sys.executable, ("python",), str(home))]
    from halton_meter.edge.identify import ClientIdentity

    result = att.resolve(ClientIdentity(pid=None, tool="python", chain=ident_chain))
    assert result.tier == "misc"


def test_registry_file_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "reg.json"
    reg = Registry(path)
    reg.record("alpha", "/src/alpha", "git")
    mtime = path.stat().st_mtime_ns
    reg.record("alpha", "/src/alpha", "git")  # unchanged: no write
    assert path.stat().st_mtime_ns == mtime
    assert Registry(path).containing("/src/alpha/lib") == ("alpha", "/src/alpha")
    assert Registry(path).containing("/src/alphabet") is None
    path.write_text("garbage")
    assert Registry(path).snapshot() == {}


def test_parsers() -> None:
    assert parse_haltonrc("# c\nproject: my-slug  # trailing\n") == "my-slug"
    assert parse_haltonrc('project = "quoted"\n') == "quoted"
    assert parse_haltonrc("name: x\n") is None
    token = base64.b64encode(b"my-proj:s3cret").decode()
    assert proxy_user(f"Basic {token}") == "my-proj"
    assert proxy_user("Bearer abc") is None
    assert proxy_user(None) is None
    value = encode_attribution("curl", "p", "git", 12, "/w")
    assert "=" not in value.rstrip("=") and "+" not in value and "/" not in value
    assert decode_attribution(value) == {
        "tool": "curl",
        "project": "p",
        "tier": "git",
        "pid": 12,
        "cwd": "/w",
    }
    assert decode_attribution(value.rstrip("=")) == decode_attribution(value)
    assert decode_attribution("!!!") is None

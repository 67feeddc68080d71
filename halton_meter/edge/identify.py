"""Which process is behind a client connection, and which tool it is.

The client's source port leads to its pid: on Linux an exact ``sock_diag`` netlink lookup of
the 4-tuple (falling back to a scan of ``/proc/net/tcp{,6}``, which costs time per socket on
the machine) gives the client socket's inode, and the process holding ``socket:[inode]`` in
``/proc/*/fd`` owns it (a few ms for the full scan; pids seen recently are checked first,
which makes a repeat client ~0.2 ms). On macOS psutil's per-process
``net_connections`` answers the same question without root.

The tool comes from the process and its ancestors' executables and arguments, most specific
first: a coding agent or IDE named by the process itself wins; a generic runtime (python,
node) or an unknown binary inherits an agent/IDE ancestor only when no shell stands between
them (an extension host under VS Code is ``vscode``; ``python`` typed into VS Code's terminal
stays ``python``).

This runs once per new connection, in a worker thread, cached by (pid, start time).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import PurePath

import psutil

AGENT_TOOLS = ("claude-code", "codex", "gemini-cli", "aider", "llm")
IDE_TOOLS = ("cursor", "windsurf", "vscode", "zed", "intellij")
GENERIC_TOOLS = ("python", "node", "other")
_MAX_ANCESTORS = 12

_SHELLS = {
    "sh", "bash", "zsh", "fish", "dash", "ksh", "mksh", "tcsh", "csh", "nu", "xonsh",
    "pwsh", "powershell", "cmd", "login", "su", "sudo", "doas", "tmux", "screen",
    "sshd", "systemd", "launchd", "init", "supervisord", "mosh-server",
}  # fmt: skip
_VSCODE_BASES = {"code", "code-insiders", "code-oss", "codium", "vscodium", "code-server",
                 "code-tunnel"}  # fmt: skip
_VSCODE_COMPONENTS = (".vscode-server", ".vscode-server-insiders", "visual studio code.app",
                      "visual studio code - insiders.app", ".vscode", "vscode", "code helper",
                      "vscodium.app")  # fmt: skip
_JETBRAINS_BASES = {"idea", "idea64", "idea.sh", "pycharm", "pycharm64", "pycharm.sh",
                    "webstorm", "webstorm.sh", "goland", "goland.sh", "clion", "clion.sh",
                    "rider", "phpstorm", "rubymine", "datagrip", "studio", "studio.sh"}  # fmt: skip
_METER_MODULES = ("halton_meter.daemon", "halton_meter.api", "halton_meter.edge",
                  "halton_meter.watchdog", "halton_watchdog")  # fmt: skip


@dataclass(frozen=True)
class ProcSnapshot:
    pid: int
    start: float
    exe: str
    cmdline: tuple[str, ...]
    cwd: str | None

    @property
    def base(self) -> str:
        return _strip_ext(PurePath(self.exe or (self.cmdline[0] if self.cmdline else "")).name)


@dataclass
class ClientIdentity:
    pid: int | None
    tool: str = "other"
    chain: list[ProcSnapshot] = field(default_factory=list)  # the client first, then ancestors
    meter_program: str | None = None  # set when the client is one of this home's programs

    @property
    def cwd(self) -> str | None:
        return self.chain[0].cwd if self.chain else None


# -- pid from the client's source port --------------------------------------------------------


class PidFinder:
    """Maps a client's source port to the pid that owns the socket."""

    def __init__(self, recent: int = 64) -> None:
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._size = recent
        self._lock = threading.Lock()

    def find(
        self,
        client_port: int,
        server_port: int,
        client_ip: str = "127.0.0.1",
        server_ip: str = "127.0.0.1",
    ) -> int | None:
        if sys.platform.startswith("linux"):
            pid = self._find_linux(client_port, server_port, client_ip, server_ip)
        else:
            pid = self._find_psutil(client_port, server_port)
        if pid is not None:
            with self._lock:
                self._recent[pid] = None
                self._recent.move_to_end(pid)
                while len(self._recent) > self._size:
                    self._recent.popitem(last=False)
        return pid

    def _recent_pids(self) -> list[int]:
        with self._lock:
            return list(reversed(self._recent))

    def _find_linux(
        self, client_port: int, server_port: int, client_ip: str, server_ip: str
    ) -> int | None:
        inode = _diag_inode(client_ip, client_port, server_ip, server_port)
        if inode is None:
            inode = _socket_inode(client_port, server_port)
        if inode is None:
            return None
        target = f"socket:[{inode}]"
        seen: set[int] = set()
        for pid in self._recent_pids():
            seen.add(pid)
            if _pid_holds(pid, target):
                return pid
        try:
            pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
        except OSError:
            return None
        # Newest first: a client we have not seen yet was most likely started just now.
        for pid in sorted(pids, reverse=True):
            if pid not in seen and _pid_holds(pid, target):
                return pid
        return None

    def _find_psutil(self, client_port: int, server_port: int) -> int | None:
        def owns(proc: psutil.Process) -> bool:
            with contextlib.suppress(psutil.Error, OSError):
                # psutil < 6 names it connections()
                conns = getattr(proc, "net_connections", None) or proc.connections
                for c in conns(kind="tcp"):
                    if c.laddr and c.raddr and c.laddr.port == client_port:
                        if c.raddr.port == server_port:
                            return True
            return False

        seen = self._recent_pids()
        for pid in seen:
            with contextlib.suppress(psutil.Error):
                if owns(psutil.Process(pid)):
                    return pid
        for proc in psutil.process_iter():
            if proc.pid not in seen and owns(proc):
                return proc.pid
        return None


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF


def _diag_inode(src_ip: str, sport: int, dst_ip: str, dport: int) -> int | None:
    """The inode of the TCP socket (src_ip:sport -> dst_ip:dport), by an exact sock_diag lookup.

    O(1) in the kernel, where reading /proc/net/tcp costs time per socket on the machine
    (~5 ms with a thousand sockets in TIME_WAIT). None when netlink is unavailable.
    """
    try:
        family = socket.AF_INET6 if ":" in src_ip else socket.AF_INET
        src = socket.inet_pton(family, src_ip).ljust(16, b"\0")
        dst = socket.inet_pton(family, dst_ip).ljust(16, b"\0")
        sockid = struct.pack("!HH", sport, dport) + src + dst
        sockid += struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)
        req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
        msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(msg + req)
            data = nl.recv(65536)
    except (OSError, AttributeError, ValueError):
        return None
    # nlmsghdr (16) + inet_diag_msg: family, state, timer, retrans (4), sockid (48),
    # expires, rqueue, wqueue, uid, inode
    if len(data) < 16 + 72:
        return None
    _, msg_type = struct.unpack_from("=IH", data, 0)
    if msg_type != _SOCK_DIAG_BY_FAMILY:
        return None
    inode = struct.unpack_from("=I", data, 16 + 4 + 48 + 16)[0]
    return int(inode) or None


def _socket_inode(client_port: int, server_port: int) -> int | None:
    local = f":{client_port:04X} "
    remote = f":{server_port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                text = fh.read()
        except OSError:
            continue
        start = 0
        while (i := text.find(local, start)) != -1:
            start = i + 1
            line_start = text.rfind("\n", 0, i) + 1
            line_end = text.find("\n", i)
            fields = text[line_start : line_end if line_end != -1 else None].split()
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) < 10:
                continue
            if fields[1].endswith(local.strip()) and fields[2].endswith(remote.strip()):
                inode = int(fields[9])
                if inode:
                    return inode
    return None


def _pid_holds(pid: int, target: str) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") == target:
                return True
        except OSError:
            continue
    return False


# -- the process and its ancestors ---------------------------------------------------------------


def _strip_ext(name: str) -> str:
    low = name.lower()
    for ext in (".exe", ".cmd", ".js", ".mjs", ".cjs"):
        if low.endswith(ext):
            return low[: -len(ext)]
    return low


def snapshot(proc: psutil.Process) -> ProcSnapshot | None:
    try:
        with proc.oneshot():
            start = proc.create_time()
            try:
                cmdline = tuple(proc.cmdline())
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cmdline = ()
            try:
                exe = proc.exe()
            except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                exe = ""
            if not exe and not cmdline:
                exe = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    cwd: str | None
    try:
        cwd = proc.cwd()
    except (psutil.Error, OSError):
        cwd = None
    return ProcSnapshot(proc.pid, start, exe, cmdline, cwd)


def ancestors(pid: int) -> list[ProcSnapshot]:
    """The process itself, then its parents up to (not including) pid 1."""
    chain: list[ProcSnapshot] = []
    try:
        proc: psutil.Process | None = psutil.Process(pid)
    except psutil.Error:
        return chain
    while proc is not None and proc.pid > 1 and len(chain) < _MAX_ANCESTORS:
        snap = snapshot(proc)
        if snap is None:
            break
        chain.append(snap)
        try:
            proc = proc.parent()
        except psutil.Error:
            break
    return chain


def _bases(p: ProcSnapshot) -> list[str]:
    """Names a process goes by: its executable, argv[0], and the script an interpreter runs."""
    names = [p.base]
    if p.cmdline:
        names.append(_strip_ext(PurePath(p.cmdline[0]).name))
        rest = [a for a in p.cmdline[1:4] if not a.startswith("-")]
        if rest:
            names.append(_strip_ext(PurePath(rest[0]).name))
        if "-m" in p.cmdline[:-1]:
            names.append(p.cmdline[p.cmdline.index("-m") + 1].split(".")[0].lower())
    return names


def _components(p: ProcSnapshot) -> list[str]:
    paths = [p.exe] + list(p.cmdline[:2])
    return [c.lower() for path in paths if path for c in PurePath(path).parts]


def classify(p: ProcSnapshot) -> str:
    """One process on its own: a specific tool, or python/node/other."""
    bases = _bases(p)
    head_args = " ".join(p.cmdline[:4]).lower()
    comps = _components(p)

    if "@anthropic-ai/claude-code" in head_args or {"claude", "claude-code"} & set(bases):
        return "claude-code"
    if "@openai/codex" in head_args or any(b == "codex" or b.startswith("codex-") for b in bases):
        return "codex"
    if "@google/gemini-cli" in head_args or {"gemini", "gemini-cli"} & set(bases):
        return "gemini-cli"
    if "aider" in bases:
        return "aider"
    if "llm" in bases:
        return "llm"
    if any(c in ("cursor", ".cursor", ".cursor-server") or c.startswith("cursor") for c in comps):
        return "cursor"
    if any("windsurf" in c for c in comps):
        return "windsurf"
    if _VSCODE_BASES & set(bases) or any(
        c in _VSCODE_COMPONENTS or c.startswith("code helper") for c in comps
    ):
        return "vscode"
    if {"zed", "zed-editor"} & set(bases) or "zed.app" in comps:
        return "zed"
    if _JETBRAINS_BASES & set(bases) or any("jetbrains" in c or "intellij" in c for c in comps):
        return "intellij"
    if "curl" in bases[:2]:
        return "curl"
    if bases[0] == "git" or bases[0].startswith("git-remote-") or bases[1:2] == ["git"]:
        return "git"
    if bases[0].startswith(("python", "pypy")):
        return "python"
    if bases[0] in ("node", "nodejs", "bun", "deno"):
        return "node"
    return "other"


def is_shell(p: ProcSnapshot) -> bool:
    return p.base in _SHELLS or (p.base.startswith("-") and p.base[1:] in _SHELLS)


def tool_for_chain(chain: list[ProcSnapshot]) -> str:
    if not chain:
        return "other"
    own = classify(chain[0])
    if own not in GENERIC_TOOLS:
        return own
    for parent in chain[1:]:
        if is_shell(parent):
            break
        tool = classify(parent)
        if tool not in GENERIC_TOOLS:
            return tool
    return own


def meter_program(p: ProcSnapshot, home_root: str) -> str | None:
    """'daemon'/'api'/'edge'/'watchdog' when ``p`` is one of this home's own programs."""
    program: str | None = None
    args = p.cmdline
    for i, arg in enumerate(args):
        candidate = args[i + 1] if arg == "-m" and i + 1 < len(args) else arg
        for module in _METER_MODULES:
            if candidate == module or candidate.startswith(module + "."):
                program = module.rsplit(".", 1)[-1].replace("halton_", "")
            elif PurePath(candidate).name in ("halton_watchdog", "halton-meter-watchdog"):
                program = "watchdog"
        if program:
            break
    if program is None:
        return None
    try:
        env = psutil.Process(p.pid).environ()
    except psutil.Error:
        return None
    theirs = env.get("HALTON_METER_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".halton-meter"
    )
    if os.path.realpath(theirs) != os.path.realpath(home_root):
        return None
    return program


class Identifier:
    """pid + tool for a client connection, cached by (pid, start time)."""

    def __init__(self, home_root: str, cache_size: int = 512) -> None:
        self._home_root = home_root
        self._pids = PidFinder()
        self._cache: OrderedDict[tuple[int, float], ClientIdentity] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def identify(
        self,
        client_port: int,
        server_port: int,
        client_ip: str = "127.0.0.1",
        server_ip: str = "127.0.0.1",
    ) -> ClientIdentity:
        pid = self._pids.find(client_port, server_port, client_ip, server_ip)
        if pid is None:
            return ClientIdentity(pid=None)
        try:
            start = psutil.Process(pid).create_time()
        except psutil.Error:
            return ClientIdentity(pid=pid)
        key = (pid, start)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            return _refresh_cwd(cached)
        chain = ancestors(pid)
        ident = ClientIdentity(
            pid=pid,
            tool=tool_for_chain(chain),
            chain=chain,
            meter_program=meter_program(chain[0], self._home_root) if chain else None,
        )
        with self._lock:
            self._cache[key] = ident
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return ident


def _refresh_cwd(ident: ClientIdentity) -> ClientIdentity:
    """A cached identity with the client's current working directory (it may have chdir'd)."""
    if not ident.chain or ident.pid is None:
        return ident
    try:
        cwd: str | None = psutil.Process(ident.pid).cwd()
    except (psutil.Error, OSError):
        cwd = None
    first = ident.chain[0]
    if cwd == first.cwd:
        return ident
    chain = [ProcSnapshot(first.pid, first.start, first.exe, first.cmdline, cwd), *ident.chain[1:]]
    return ClientIdentity(ident.pid, ident.tool, chain, ident.meter_program)

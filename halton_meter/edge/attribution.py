"""Project attribution: which project a client connection belongs to, in tiers.

Every answer names the tier that produced it (stored on the row, logged as
``attribution.tier_hit tier=<tier>``, counted in edge-stats.json):

``explicit``
    The connection's proxy credentials (``http://<slug>@127.0.0.1:8081`` arrives as
    ``Proxy-Authorization: Basic``; only the username is read, the password is dropped), else
    ``HALTON_PROJECT`` in the client process's environment (what ``run --project`` sets).
``haltonrc``
    A ``.haltonrc`` with a ``project: <slug>`` (or ``project = "<slug>"``) line in the client's
    working directory or any directory above it (so it wins over a git root below it: put it
    at the project root).
``git``
    The nearest directory at or above the working directory holding ``.git`` (a directory or
    a worktree's file): the slug is its basename.
``4a``
    IDE heuristics from the process chain. For each ancestor that is an IDE (VS Code, Cursor,
    Windsurf, Zed, JetBrains) the folders its arguments name (positional directories,
    ``--folder-uri file://...``) and its own working directory; and the client's launch
    directory from its environment (``INIT_CWD``, ``VSCODE_CWD``; not ``PWD``, which a parent
    that sets ``cwd=`` leaves stale) when it differs
    from its current one. Each folder goes through ``.haltonrc`` and git, else its basename.
``4b``
    The slug -> path registry: a registered path containing the working directory (or one of
    the folders above), or a registered slug equal to one of their basenames (exactly, else loosely as in 4c).
``4c``
    The registry again, matched loosely (case, ``-``/``_``/space/dot) against weaker guesses:
    values of ``--title``/``--window-title``/``--project``/``--workspace``/``--folder``/
    ``--dir``/``--add-dir``/``-C`` in the process chain's arguments (a title such as
    ``myproj — Cursor`` gives ``myproj``).
``4b_lenient`` / ``4c_lenient``
    On a registry miss, a one-level scan of the scan roots (``[attribution] scan_roots``,
    default ``~/Documents`` and ``~``) for a folder named like a 4b (resp. 4c) guess. A hit is
    resolved through ``.haltonrc``/git inside that folder, else named after it, and warms the
    registry so the next request is a plain ``4b``.
``misc``
    Nothing matched; the project is ``misc``.

Tiers 1-4a and the lenient scans record slug -> path in the registry. ``/`` and the user's
home directory never count as a project folder, so a tool started from ``~`` is not "the
home project".
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from halton_meter.edge.identify import IDE_TOOLS, ClientIdentity, ProcSnapshot, classify
from halton_meter.edge.registry import Registry, normalize_slug

TIERS = ("explicit", "haltonrc", "git", "4a", "4b", "4c", "4b_lenient", "4c_lenient", "misc")
MISC = "misc"
_MAX_SLUG = 200
_CACHE_TTL_S = 2.0
_RC_NAME = ".haltonrc"
_LAUNCH_ENV = ("INIT_CWD", "VSCODE_CWD")  # not PWD: Popen(cwd=...) leaves it stale
_WEAK_FLAGS = ("--title", "--window-title", "--project", "--workspace", "--folder", "--dir",
               "--add-dir", "-C")  # fmt: skip


@dataclass(frozen=True)
class Attribution:
    project: str
    tier: str
    root: str | None = None


def clean_slug(value: str | None) -> str | None:
    if value is None:
        return None
    slug = "".join(ch for ch in value.strip() if ch.isprintable()).strip().strip("'\"")
    return slug[:_MAX_SLUG] or None


def proxy_user(header: str | None) -> str | None:
    """The username of ``Proxy-Authorization: Basic``; the password is never kept."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=False).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
    user = decoded.split(":", 1)[0]
    return clean_slug(urllib.parse.unquote(user))


def parse_haltonrc(text: str) -> str | None:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        for sep in (":", "="):
            key, found, value = line.partition(sep)
            if found and key.strip().lower() == "project":
                return clean_slug(value)
    return None


class _TtlCache:
    def __init__(self) -> None:
        self._data: dict[object, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: object) -> tuple[bool, object]:
        with self._lock:
            hit = self._data.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, key: object, value: object) -> None:
        with self._lock:
            if len(self._data) > 4096:
                self._data.clear()
            self._data[key] = (time.monotonic() + _CACHE_TTL_S, value)


class Attributor:
    def __init__(
        self, registry: Registry, scan_roots: Iterable[Path], home_dir: Path | None = None
    ) -> None:
        self.registry = registry
        self.scan_roots = [Path(p).expanduser() for p in scan_roots]
        self._home_dir = os.path.realpath(home_dir or Path.home())
        self._cache = _TtlCache()

    # -- public ------------------------------------------------------------------------------
    def resolve(self, ident: ClientIdentity, proxy_auth_user: str | None = None) -> Attribution:
        cwd = ident.cwd
        meaningful_cwd = cwd if cwd and self._meaningful(cwd) else None
        env = _environ(ident.pid)

        explicit = clean_slug(proxy_auth_user) or clean_slug(env.get("HALTON_PROJECT"))
        if explicit:
            return self._remember(Attribution(explicit, "explicit", meaningful_cwd))

        if cwd:
            found = self._by_folder(cwd)
            if found is not None:
                return self._remember(found)

        folders = self._ide_folders(ident.chain) + self._launch_dirs(env, cwd)
        for folder in folders:
            found = self._by_folder(folder)
            if found is not None:
                return self._remember(Attribution(found.project, "4a", found.root))
        for folder in self._ide_folders(ident.chain):
            return self._remember(Attribution(os.path.basename(folder), "4a", folder))

        strong_paths: list[str] = [p for p in [meaningful_cwd, *folders] if p]
        for path in strong_paths:
            hit = self.registry.containing(path)
            if hit is not None:
                return Attribution(hit[0], "4b", hit[1])
        strong_slugs = _unique(os.path.basename(p.rstrip(os.sep)) for p in strong_paths)
        for slug in strong_slugs:
            registered = self.registry.get(slug)
            if registered is not None:
                return Attribution(slug, "4b", registered)
            loose = self.registry.lookup_normalized(slug)
            if loose is not None:
                return Attribution(loose[0], "4b", loose[1])

        weak_slugs = _unique(_weak_guesses(ident.chain))
        for slug in weak_slugs:
            hit = self.registry.lookup_normalized(slug)
            if hit is not None:
                return Attribution(hit[0], "4c", hit[1])

        for slugs, tier in ((strong_slugs, "4b_lenient"), (weak_slugs, "4c_lenient")):
            for slug in slugs:
                scanned = self._scan(slug)
                if scanned is not None:
                    found = self._by_folder(scanned)
                    project = found.project if found else os.path.basename(scanned)
                    return self._remember(Attribution(project, tier, scanned))
        return Attribution(MISC, MISC, None)

    def resolve_path(self, path: str) -> Attribution | None:
        """Tiers that need only a directory (for backfills): .haltonrc, git, the registry.

        Never writes the registry.
        """
        if not os.path.isabs(path):
            return None
        if os.path.isdir(path):
            found = self._by_folder(path)
            if found is not None:
                return found
        hit = self.registry.containing(os.path.normpath(path))
        if hit is not None:
            return Attribution(hit[0], "4b", hit[1])
        return None

    # -- tiers 2 and 3 -------------------------------------------------------------------------
    def _by_folder(self, start: str) -> Attribution | None:
        """``.haltonrc`` at or above ``start``, else the git root at or above it."""
        hit, value = self._cache.get(("folder", start))
        if hit:
            return value  # type: ignore[return-value]
        found = _find_haltonrc(start) or self._find_git(start)
        self._cache.put(("folder", start), found)
        return found

    def _find_git(self, start: str) -> Attribution | None:
        for directory in _upwards(start):
            if os.path.exists(os.path.join(directory, ".git")):
                if not self._meaningful(directory):
                    return None  # a dotfiles repo in ~ is not every tool's project
                return Attribution(os.path.basename(directory), "git", directory)
        return None

    # -- tier 4 helpers ------------------------------------------------------------------------
    def _meaningful(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real not in ("/", self._home_dir) and os.path.isdir(real)

    def _ide_folders(self, chain: list[ProcSnapshot]) -> list[str]:
        out: list[str] = []
        for proc in chain:
            if classify(proc) not in IDE_TOOLS:
                continue
            for candidate in _folder_args(proc):
                if self._meaningful(candidate):
                    out.append(candidate)
            if proc.cwd and self._meaningful(proc.cwd):
                out.append(proc.cwd)
        return _unique(out)

    def _launch_dirs(self, env: dict[str, str], cwd: str | None) -> list[str]:
        out = []
        for name in _LAUNCH_ENV:
            value = env.get(name)
            if value and value != cwd and os.path.isabs(value) and self._meaningful(value):
                out.append(value)
        return _unique(out)

    def _scan(self, slug: str) -> str | None:
        want = normalize_slug(slug)
        if not want:
            return None
        for root in self.scan_roots:
            for name, path in self._listing(root):
                if normalize_slug(name) == want and self._meaningful(path):
                    return path
        return None

    def _listing(self, root: Path) -> list[tuple[str, str]]:
        hit, value = self._cache.get(("ls", str(root)))
        if hit:
            return value  # type: ignore[return-value]
        entries: list[tuple[str, str]] = []
        try:
            with os.scandir(root) as it:
                for entry in it:
                    if not entry.name.startswith(".") and entry.is_dir():
                        entries.append((entry.name, entry.path))
        except OSError:
            pass
        self._cache.put(("ls", str(root)), entries)
        return entries

    def _remember(self, attribution: Attribution) -> Attribution:
        if attribution.root and attribution.project != MISC:
            self.registry.record(attribution.project, attribution.root, attribution.tier)
        return attribution


def _environ(pid: int | None) -> dict[str, str]:
    if pid is None:
        return {}
    try:
        return dict(psutil.Process(pid).environ())
    except (psutil.Error, OSError):
        return {}


def _upwards(start: str) -> Iterable[str]:
    directory = os.path.abspath(start)
    while True:
        yield directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return
        directory = parent


def _find_haltonrc(start: str) -> Attribution | None:
    for directory in _upwards(start):
        rc = os.path.join(directory, _RC_NAME)
        try:
            with open(rc, encoding="utf-8", errors="replace") as fh:
                slug = parse_haltonrc(fh.read(65536))
        except OSError:
            continue
        if slug:
            return Attribution(slug, "haltonrc", directory)
    return None


def _folder_args(proc: ProcSnapshot) -> list[str]:
    out: list[str] = []
    args = list(proc.cmdline[1:])
    for i, arg in enumerate(args):
        value: str | None = None
        if arg.startswith("--folder-uri="):
            value = arg.split("=", 1)[1]
        elif arg == "--folder-uri" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None:
            parsed = urllib.parse.urlparse(value)
            if parsed.scheme == "file":
                out.append(urllib.parse.unquote(parsed.path))
            continue
        if arg.startswith("-") or (i > 0 and args[i - 1] == "--folder-uri"):
            continue
        path = arg if os.path.isabs(arg) else os.path.join(proc.cwd or "/", arg)
        if os.path.isdir(path):
            out.append(os.path.normpath(path))
    return out


def _weak_guesses(chain: list[ProcSnapshot]) -> list[str]:
    out: list[str] = []
    for proc in chain:
        args = list(proc.cmdline)
        for i, arg in enumerate(args):
            value: str | None = None
            for flag in _WEAK_FLAGS:
                if arg == flag and i + 1 < len(args):
                    value = args[i + 1]
                elif flag.startswith("--") and arg.startswith(flag + "="):
                    value = arg.split("=", 1)[1]
            if not value:
                continue
            for sep in (" — ", " - ", " | "):
                value = value.split(sep, 1)[0]
            guess = os.path.basename(value.rstrip("/")) if "/" in value else value
            if clean_slug(guess):
                out.append(guess.strip())
    return out


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out

"""The marked block in shell rc files (bash, zsh, fish).

Idempotent: written once, updated in place, never duplicated; the user's content around it
is kept byte for byte. Exports the nine client variables.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from halton_meter.core.fsutil import atomic_write
from halton_meter.install.env import CLIENT_VARS, NODE_OPTIONS_VAR, node_require_option_path

BEGIN = "# >>> halton-meter >>>"
END = "# <<< halton-meter <<<"
_BLOCK = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)


def rc_files(home_dir: Path | None = None) -> dict[str, Path]:
    home_dir = home_dir or Path.home()
    return {
        "bash": home_dir / ".bashrc",
        "zsh": home_dir / ".zshrc",
        "fish": home_dir / ".config" / "fish" / "conf.d" / "halton-meter.fish",
    }


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def render_block(shell: str, env: dict[str, str]) -> str:
    lines = [BEGIN, "# Managed by halton-meter init; removed by halton-meter uninstall."]
    for key in CLIENT_VARS:
        if key == NODE_OPTIONS_VAR:
            lines.append(_node_options_line(shell, env[key]))
            continue
        if shell == "fish":
            lines.append(f"set -gx {key} {_quote(env[key])}")
        else:
            lines.append(f"export {key}={_quote(env[key])}")
    lines.append(END)
    return "\n".join(lines) + "\n"


def _node_options_line(shell: str, option: str) -> str:
    """Appended to the user's NODE_OPTIONS, and only while the preload file exists: a
    ``--require`` of a missing file stops every node process from starting."""
    preload = node_require_option_path(option)
    if shell == "fish":
        return (
            f"test -r {_quote(preload)}; and set -gx NODE_OPTIONS "
            f'(string trim -- "$NODE_OPTIONS {option}")'
        )
    return (
        f'if [ -r {_quote(preload)} ]; then case " $NODE_OPTIONS " in *{_quote(option)}*) ;; '
        f'*) export NODE_OPTIONS="${{NODE_OPTIONS:+$NODE_OPTIONS }}"{_quote(option)} ;; esac; fi'
    )


def _mode_of(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o644


def write_block(path: Path, block: str) -> bool:
    """Insert or replace our block; returns True when the file changed."""
    text = path.read_text() if path.exists() else ""
    first = _BLOCK.search(text)
    if first:
        # Replace in place; a duplicate left by an older tool is dropped.
        new = text[: first.start()] + block + _BLOCK.sub("", text[first.end() :])
    else:
        sep = "" if not text or text.endswith("\n") else "\n"
        new = text + sep + block
    if new == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, new, mode=_mode_of(path))
    return True


def remove_block(path: Path) -> bool:
    if not path.exists():
        return False
    text = path.read_text()
    new = _BLOCK.sub("", text)
    if new == text:
        return False
    if path.name == "halton-meter.fish" and not new.strip():
        path.unlink()
        return True
    atomic_write(path, new, mode=_mode_of(path))
    return True


def read_block(path: Path) -> dict[str, str] | None:
    """The variables our block exports, or None when there is no block."""
    try:
        match = _BLOCK.search(path.read_text())
    except OSError:
        return None
    if not match:
        return None
    found = {}
    for line in match.group(0).splitlines():
        m = re.match(r"^(?:export|set -gx) (\w+)[= ]'(.*)'$", line)
        if m:
            found[m.group(1)] = m.group(2).replace("'\\''", "'")
    return found


def present_in(home_dir: Path | None = None) -> dict[str, bool]:
    return {shell: read_block(path) is not None for shell, path in rc_files(home_dir).items()}


def user_shells() -> list[str]:
    """Shells to write for: those whose rc file exists, plus the login shell's."""
    shells = [
        s for s, p in rc_files().items() if p.exists() or (s == "fish" and p.parent.parent.exists())
    ]
    login = Path(os.environ.get("SHELL", "")).name
    if login in ("bash", "zsh", "fish") and login not in shells:
        shells.append(login)
    return shells or ["bash"]

"""Render supervisor.d/*.tmpl into the home's run dir: absolute paths, explicit log files."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

from halton_meter.core.fsutil import atomic_write, ensure_dir
from halton_meter.core.paths import HOME_ENV, Home
from halton_meter.service.env import ALLOW_NON_LOOPBACK

# supervisor.d/ at the repository root (a checkout, an editable install). A wheel needs it mapped
# as a package (setup.py: package_dir "halton_meter.supervisor_templates" -> "supervisor.d").
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "supervisor.d"
TEMPLATE_PACKAGE = "halton_meter.supervisor_templates"
PROGRAM_ORDER = ("daemon", "edge", "api", "watchdog")
MODULES = {
    "daemon": "halton_meter.daemon",
    "edge": "halton_meter.edge",
    "api": "halton_meter.api",
    "watchdog": "halton_watchdog",
}
# Test-only: HALTON_METER_TEST_CMD_<PROGRAM>="<command line>" replaces one program's command
# (a crashing stand-in, a program that inherits a proxy variable...). Never set by users.
TEST_CMD_PREFIX = "HALTON_METER_TEST_CMD_"
STARTSECS = 2
STARTRETRIES = 3


@dataclass(frozen=True)
class RenderOptions:
    python: str = sys.executable
    startsecs: int = STARTSECS
    startretries: int = STARTRETRIES
    extra_env: Mapping[str, str] = field(default_factory=dict)
    commands: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RenderOptions:
        environ = os.environ if environ is None else environ
        extra = {ALLOW_NON_LOOPBACK: "1"} if environ.get(ALLOW_NON_LOOPBACK) == "1" else {}
        commands = {
            name: environ[TEST_CMD_PREFIX + name.upper()]
            for name in PROGRAM_ORDER
            if environ.get(TEST_CMD_PREFIX + name.upper())
        }
        return cls(extra_env=extra, commands=commands)


def log_paths(home: Home, program: str) -> tuple[Path, Path]:
    """(stdout, stderr) log files of a program, named as the troubleshooting guide names them."""
    known = {
        "daemon": (home.daemon_out_log, home.daemon_err_log),
        "edge": (home.edge_out_log, home.edge_err_log),
        "api": (home.root / "api.out.log", home.api_log),
        "watchdog": (home.root / "watchdog.out.log", home.watchdog_log),
    }
    return known[program]


def program_environment(home: Home, program: str, options: RenderOptions) -> dict[str, str]:
    env = {
        HOME_ENV: str(home.root),
        "HALTON_METER_PROGRAM": program,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(options.extra_env)
    return env


def program_command(program: str, options: RenderOptions) -> str:
    override = options.commands.get(program)
    if override:
        return override
    return shlex.join([options.python, "-m", MODULES[program]])


def render(home: Home, options: RenderOptions | None = None) -> str:
    """The whole supervisord.conf for ``home`` as text."""
    options = options or RenderOptions.from_environ()
    parts = [
        _fill(
            "supervisord.conf.tmpl",
            socket=str(home.socket),
            supervisord_log=str(home.supervisord_log),
            pidfile=str(home.supervisord_pid),
            root=str(home.root),
            run_dir=str(home.run_dir),
        )
    ]
    for program in PROGRAM_ORDER:
        out_log, err_log = log_paths(home, program)
        parts.append(
            _fill(
                f"{program}.conf.tmpl",
                command=program_command(program, options),
                root=str(home.root),
                startsecs=str(options.startsecs),
                startretries=str(options.startretries),
                stdout_log=str(out_log),
                stderr_log=str(err_log),
                environment=_env_value(program_environment(home, program, options)),
            )
        )
    return "\n".join(parts)


def write_config(home: Home, options: RenderOptions | None = None) -> Path:
    """Render and write ``home.supervisord_conf`` (0600); make sure the socket's dir is 0700."""
    home.ensure()
    ensure_dir(home.socket.parent)
    atomic_write(home.supervisord_conf, render(home, options), mode=0o600)
    return home.supervisord_conf


def _template(name: str) -> str:
    if (TEMPLATE_DIR / name).exists():
        return (TEMPLATE_DIR / name).read_text(encoding="utf-8")
    return resources.files(TEMPLATE_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def _fill(name: str, **values: str) -> str:
    text = _template(name)
    # supervisor interpolates %(...)s in values: a literal % must be doubled.
    return Template(text).substitute({k: v.replace("%", "%%") for k, v in values.items()})


def _env_value(env: Mapping[str, str]) -> str:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return ",".join(f"{key}={quote(value)}" for key, value in env.items())

"""The mode sentinel (`install-mode`) and the reconciler over the four surfaces.

Surfaces: the system proxy, the GUI session environment, the shell rc block, the sentinel.
Each mode wants each surface on or off; `reconcile` moves every surface to what the mode
wants, in every direction (turning on what is missing and off what is left over), and
`drift` reports where they disagree. No sentinel means env-only, the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from halton_meter.core.config import Config
from halton_meter.core.fsutil import atomic_write
from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, read_runtime, update_runtime
from halton_meter.install import rcblock
from halton_meter.install.env import client_env
from halton_meter.platform.session_env import session_env
from halton_meter.platform.system_proxy import system_proxy

ENV_ONLY, APPS, FULL = "env-only", "apps", "full"
MODES = (ENV_ONLY, APPS, FULL)
LEGACY_MODES = {"gui": FULL}

SYSTEM_PROXY, SESSION_ENV, SHELL_RC = "system-proxy", "session-env", "shell-rc"


@dataclass(frozen=True)
class Sentinel:
    mode: str  # effective mode
    raw: str | None  # what the file says (None: no file)

    @property
    def legacy(self) -> bool:
        return self.raw in LEGACY_MODES

    @property
    def valid(self) -> bool:
        return self.raw is None or self.raw in MODES


def read_sentinel(home: Home) -> Sentinel:
    try:
        raw = home.install_mode.read_text().strip()
    except FileNotFoundError:
        return Sentinel(ENV_ONLY, None)
    except OSError:
        return Sentinel(ENV_ONLY, "")
    return Sentinel(LEGACY_MODES.get(raw, raw if raw in MODES else ENV_ONLY), raw)


def write_sentinel(home: Home, mode: str) -> None:
    home.ensure()
    atomic_write(home.install_mode, mode + "\n", mode=0o644)


def wanted(mode: str, shell_rc: bool = True) -> dict[str, bool]:
    return {
        SYSTEM_PROXY: mode == FULL,
        SESSION_ENV: mode in (APPS, FULL),
        SHELL_RC: mode in (APPS, FULL) and shell_rc,
    }


@dataclass
class Observed:
    system_proxy: bool
    session_env: dict[str, str]
    shell_rc: dict[str, dict[str, str] | None]

    def on(self) -> dict[str, bool]:
        return {
            SYSTEM_PROXY: self.system_proxy,
            SESSION_ENV: bool(self.session_env),
            SHELL_RC: any(v is not None for v in self.shell_rc.values()),
        }


def observe(ports: EffectivePorts) -> Observed:
    proxy = system_proxy().state()
    ours = proxy.enabled and proxy.port == ports.edge
    return Observed(
        system_proxy=ours,
        session_env=session_env().current(),
        shell_rc={shell: rcblock.read_block(path) for shell, path in rcblock.rc_files().items()},
    )


@dataclass
class Drift:
    surface: str
    message: str


@dataclass
class Reconciled:
    mode: str
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def shell_rc_wanted(home: Home) -> bool:
    return bool(read_runtime(home).get("shell_rc", True))


def drift(home: Home, ports: EffectivePorts, expected: dict[str, str]) -> list[Drift]:
    """Where the surfaces disagree with the sentinel (or carry stale values)."""
    sentinel = read_sentinel(home)
    found: list[Drift] = []
    if sentinel.legacy:
        found.append(
            Drift(
                "sentinel",
                f"install-mode says {sentinel.raw!r}; `halton-meter init --full` migrates it to full",
            )
        )
    elif not sentinel.valid:
        found.append(Drift("sentinel", f"install-mode holds an unknown value {sentinel.raw!r}"))
    seen = observe(ports)
    want = wanted(sentinel.mode, shell_rc_wanted(home))
    for surface, on in seen.on().items():
        if on != want[surface]:
            state = "on" if on else "off"
            found.append(
                Drift(surface, f"{surface} is {state} but install-mode is {sentinel.mode}")
            )
    for shell, block in seen.shell_rc.items():
        if block and block.get("HTTPS_PROXY") != expected["HTTPS_PROXY"]:
            found.append(
                Drift(
                    SHELL_RC,
                    f"the {shell} rc block gives clients {block.get('HTTPS_PROXY')} but the edge "
                    f"is at {expected['HTTPS_PROXY']}",
                )
            )
    if seen.session_env and seen.session_env.get("HTTPS_PROXY") != expected["HTTPS_PROXY"]:
        found.append(
            Drift(
                SESSION_ENV,
                f"the session environment gives clients {seen.session_env.get('HTTPS_PROXY')} "
                f"but the edge is at {expected['HTTPS_PROXY']}",
            )
        )
    return found


def reconcile(
    home: Home, config: Config, ports: EffectivePorts, mode: str, *, shell_rc: bool = True
) -> Reconciled:
    """Move all four surfaces to what ``mode`` wants; the sentinel last."""
    if mode not in MODES:
        mode = LEGACY_MODES.get(mode, mode)
    env = client_env(home, config, ports)
    want = wanted(mode, shell_rc)
    out = Reconciled(mode)

    proxy = system_proxy()
    if want[SYSTEM_PROXY]:
        results = proxy.enable("127.0.0.1", ports.edge)
        out.changed.append("system proxy on")
        out.notes += [f"{' '.join(r.argv)}: {r.stderr.strip()}" for r in results if not r.ok]
    elif proxy.state().enabled and proxy.state().port == ports.edge:
        proxy.disable()
        out.changed.append("system proxy off")

    session = session_env()
    if want[SESSION_ENV]:
        if session.current() != {k: env[k] for k in env}:
            session.apply(env)
            out.changed.append("session environment set")
    elif session.current():
        session.clear()
        out.changed.append("session environment cleared")

    for shell, path in rcblock.rc_files().items():
        if want[SHELL_RC] and shell in rcblock.user_shells():
            if rcblock.write_block(path, rcblock.render_block(shell, env)):
                out.changed.append(f"{shell} rc block written ({path})")
        elif rcblock.remove_block(path):
            out.changed.append(f"{shell} rc block removed ({path})")

    before = read_sentinel(home)
    if before.raw != mode:
        write_sentinel(home, mode)
        out.changed.append(f"install-mode {before.raw or '(none)'} -> {mode}")
    update_runtime(home, mode=mode, shell_rc=shell_rc)
    return out


def unwind(home: Home, ports: EffectivePorts) -> list[str]:
    """Turn every surface off (uninstall); the sentinel is left for --purge."""
    changed = []
    proxy = system_proxy()
    state = proxy.state()
    if state.enabled and state.port == ports.edge:
        proxy.disable()
        changed.append("system proxy off")
    session = session_env()
    if session.current():
        session.clear()
        changed.append("session environment cleared")
    for shell, path in rcblock.rc_files().items():
        if rcblock.remove_block(path):
            changed.append(f"{shell} rc block removed ({path})")
    return changed

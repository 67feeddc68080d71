"""Every name under the home directory, in one place.

The home is ``~/.halton-meter``, or ``$HALTON_METER_HOME`` when set. Two homes can run
side by side: nothing here is shared between homes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from halton_meter.core.fsutil import ensure_dir

HOME_ENV = "HALTON_METER_HOME"
# The supervisor socket path must stay under ~100 bytes (macOS limit 104) and out of /tmp.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, root: str | os.PathLike[str] | None = None) -> Home:
        if root is None:
            root = os.environ.get(HOME_ENV) or Path.home() / ".halton-meter"
        return cls(Path(root).expanduser().absolute())

    @property
    def is_custom(self) -> bool:
        return os.environ.get(HOME_ENV) is not None

    # user-owned
    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    # runtime state: the single source of truth for what runs now
    @property
    def runtime(self) -> Path:
        return self.root / "runtime.toml"

    @property
    def effective_ports(self) -> Path:
        return self.root / "effective-ports.json"

    @property
    def install_mode(self) -> Path:
        return self.root / "install-mode"

    @property
    def db(self) -> Path:
        return self.root / "db.sqlite"

    @property
    def bodies(self) -> Path:
        return self.root / "bodies"

    @property
    def registry(self) -> Path:
        """The edge's slug -> project path registry."""
        return self.root / "project-registry.json"

    @property
    def api_token(self) -> Path:
        return self.root / "api-token"

    @property
    def cloud_token(self) -> Path:
        return self.root / "cloud-token"

    @property
    def cloud_state(self) -> Path:
        return self.root / "cloud-state.json"

    @property
    def watchdog_state(self) -> Path:
        return self.root / "watchdog-state.json"

    @property
    def edge_stats(self) -> Path:
        return self.root / "edge-stats.json"

    @property
    def ca_bundle(self) -> Path:
        """System roots plus our CA: what the CA variables point at."""
        return self.root / "ca-bundle.pem"

    @property
    def upstream_bundle(self) -> Path:
        """certifi roots plus `[upstream] ca_bundle`, built at daemon start."""
        return self.root / "run" / "upstream-roots.pem"

    # logs (names from the troubleshooting guide)
    @property
    def daemon_out_log(self) -> Path:
        return self.root / "daemon.out.log"

    @property
    def daemon_err_log(self) -> Path:
        return self.root / "daemon.err.log"

    @property
    def edge_err_log(self) -> Path:
        return self.root / "edge.err.log"

    @property
    def edge_out_log(self) -> Path:
        return self.root / "edge.out.log"

    @property
    def api_log(self) -> Path:
        return self.root / "api.err.log"

    @property
    def watchdog_log(self) -> Path:
        return self.root / "watchdog.err.log"

    @property
    def supervisord_log(self) -> Path:
        return self.root / "supervisord.log"

    # the CA is mitmproxy's; inside the home when HALTON_METER_HOME is set
    @property
    def ca_dir(self) -> Path:
        if self.is_custom:
            return self.root / "mitmproxy"
        return Path.home() / ".mitmproxy"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "mitmproxy-ca-cert.pem"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "mitmproxy-ca.pem"

    # supervisord
    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def supervisord_conf(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def supervisord_pid(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def socket(self) -> Path:
        """The supervisor socket: the singleton lock. Short, outside /tmp, in a 0700 dir."""
        candidate = self.run_dir / "sv.sock"
        if len(str(candidate)) < _MAX_SOCKET_PATH:
            return candidate
        # A deep home: fall back to a per-home directory under the user's runtime dir.
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache")
        return base / f"hm-{digest}" / "sv.sock"

    def ensure(self) -> Home:
        ensure_dir(self.root)
        ensure_dir(self.run_dir)
        return self


def home() -> Home:
    return Home.resolve()

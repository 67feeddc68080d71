"""config.toml: shipped defaults (config/defaults.toml) overridden by the user's file.

Loading validates every key's type and value. A bad file raises :class:`ConfigError`
naming the file, the key, the line and the fix (exit code ``EXIT_BAD_FILE``), never a
traceback. Writes go through tomlkit so the user's comments and order survive.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomlkit
import tomlkit.exceptions
from tomlkit.toml_document import TOMLDocument

from halton_meter.core.errors import EXIT_BAD_FILE, HaltonError
from halton_meter.core.fsutil import atomic_write
from halton_meter.core.logging import get_logger
from halton_meter.core.paths import Home

DEFAULT_BASE_URL = "https://api.haltonmeter.com"
PLACEHOLDER_TLDS = (".test", ".example", ".invalid", ".local")


class ConfigError(HaltonError):
    exit_code = EXIT_BAD_FILE


class PlaceholderBaseURL(HaltonError):
    """`[cloud] base_url` names a host that can never resolve."""

    exit_code = EXIT_BAD_FILE


@dataclass(frozen=True)
class PortsConfig:
    edge: int | None = None
    daemon: int | None = None
    api: int | None = None


@dataclass(frozen=True)
class CaptureConfig:
    body_max_bytes: int = 4 * 1024 * 1024
    store_bodies: bool = True
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpstreamConfig:
    resolve: dict[str, str] = field(default_factory=dict)
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class CloudConfig:
    base_url: str = DEFAULT_BASE_URL
    proxy: str | None = None
    send_bodies: bool = False
    batch_size: int = 500


@dataclass(frozen=True)
class AttributionConfig:
    scan_roots: tuple[Path, ...] = ()


@dataclass(frozen=True)
class WatchdogConfig:
    loop_exits: int = 5
    loop_window_s: float = 120.0


@dataclass(frozen=True)
class EdgeConfig:
    daemon_timeout_s: float = 1.5


@dataclass(frozen=True)
class Config:
    path: Path
    listen_host: str = "127.0.0.1"
    api_host: str = "127.0.0.1"
    ports: PortsConfig = PortsConfig()
    capture: CaptureConfig = CaptureConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    cloud: CloudConfig = CloudConfig()
    attribution: AttributionConfig = AttributionConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    edge: EdgeConfig = EdgeConfig()
    warnings: tuple[str, ...] = ()


# --- validation -------------------------------------------------------------------------

_Check = Callable[[Any], Any]  # returns the converted value or raises ValueError(fix)


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError('a host name or address, for example "127.0.0.1"')
    return value.strip()


def _port_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("a port number between 1 and 65535 (or remove the key to negotiate)")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("a positive whole number")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError("a positive number")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _host_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(h, str) and h for h in value):
        raise ValueError('a list of host names, for example ["llm.example.org"]')
    return tuple(h.strip().lower().rstrip(".") for h in value)


_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[^:\s\[\]]+):(\d{1,5})$")


def _resolve_map(value: Any) -> dict[str, str]:
    fix = 'a table of "host:port" = "address:port", for example { "api.anthropic.com:443" = "127.0.0.1:9443" }'
    if not isinstance(value, dict):
        raise ValueError(fix)
    out: dict[str, str] = {}
    for key, target in value.items():
        if (
            not isinstance(target, str)
            or not _HOSTPORT.match(str(key))
            or not _HOSTPORT.match(target)
        ):
            raise ValueError(f"{fix}; got {key!r} = {target!r}")
        out[str(key).lower()] = target
    return out


def _existing_file(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError('a path to a PEM file, for example "/etc/ssl/corp-roots.pem"')
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"an existing PEM file; {path} does not exist")
    return path


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'a URL, for example "{DEFAULT_BASE_URL}"')
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'an http(s) URL, for example "{DEFAULT_BASE_URL}"')
    return value.rstrip("/")


def _optional_url(value: Any) -> str | None:
    return _url(value) if value not in (None, "") else None


def _paths(value: Any) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ValueError('a list of directories, for example ["~/Documents", "~"]')
    return tuple(Path(p).expanduser() for p in value)


# section -> key -> check. "" is the top level.
_SCHEMA: dict[str, dict[str, _Check]] = {
    "": {"listen_host": _host, "api_host": _host},
    "ports": {"edge": _port_or_none, "daemon": _port_or_none, "api": _port_or_none},
    "capture": {"body_max_bytes": _positive_int, "store_bodies": _bool, "hosts": _host_list},
    "upstream": {"resolve": _resolve_map, "ca_bundle": _existing_file},
    "cloud": {
        "base_url": _url,
        "proxy": _optional_url,
        "send_bodies": _bool,
        "batch_size": _positive_int,
    },
    "attribution": {"scan_roots": _paths},
    "watchdog": {"loop_exits": _positive_int, "loop_window_s": _positive_number},
    "edge": {"daemon_timeout_s": _positive_number},
}


def shipped_defaults_text() -> str:
    return resources.files("halton_meter.shipped_config").joinpath("defaults.toml").read_text()


def _line_of(text: str, section: str, key: str) -> int | None:
    """The 1-based line where ``key`` is set inside ``[section]`` (or top level)."""
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = header.group(1)
            continue
        if current == section and re.match(rf"^[\"']?{re.escape(key)}[\"']?\s*=", stripped):
            return number
    return None


def _parse(text: str, path: Path) -> TOMLDocument:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(
            f"{path}:{exc.line}: config.toml is not valid TOML ({exc}).\n"
            f"Fix: correct line {exc.line} of {path}, or move the file aside to use the defaults."
        ) from None


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def load_config(home: Home | None = None) -> Config:
    home = home or Home.resolve()
    path = home.config
    merged: dict[str, dict[str, Any]] = {s: {} for s in _SCHEMA}
    defaults = tomlkit.parse(shipped_defaults_text()).unwrap()
    for section, keys in _SCHEMA.items():
        source = defaults if section == "" else defaults.get(section, {})
        merged[section].update({k: source[k] for k in keys if k in source})

    warnings: list[str] = []
    text = ""
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{path}: cannot read config.toml ({exc}).\n"
                f"Fix: make it a readable UTF-8 text file, or move it aside to use the defaults."
            ) from None
        user = _parse(text, path).unwrap()
        for key, value in user.items():
            if key in _SCHEMA and key != "" and isinstance(value, dict):
                for sub, subvalue in value.items():
                    if sub in _SCHEMA[key]:
                        merged[key][sub] = subvalue
                    else:
                        warnings.append(f"{path}: unknown key [{key}] {sub} (ignored)")
            elif key in _SCHEMA[""]:
                merged[""][key] = value
            elif key in _SCHEMA:
                line = _line_of(text, "", key)
                raise ConfigError(
                    f"{path}:{line or '?'}: `{key}` must be a table ([{key}]), got {value!r}.\n"
                    f"Fix: write it as a [{key}] section; see the shipped defaults."
                )
            else:
                warnings.append(f"{path}: unknown key {key} (ignored)")

    converted: dict[str, dict[str, Any]] = {s: {} for s in _SCHEMA}
    for section, values in merged.items():
        for key, value in values.items():
            try:
                converted[section][key] = _SCHEMA[section][key](_plain(value))
            except ValueError as exc:
                line = _line_of(text, section, key) if text else None
                where = f"[{section}] {key}" if section else key
                raise ConfigError(
                    f"{path}:{line or '?'}: {where} = {value!r} is invalid.\n"
                    f"Fix: set {where} to {exc}."
                ) from None

    top = converted[""]
    scan_roots = converted["attribution"].get("scan_roots", ())
    return Config(
        path=path,
        listen_host=top.get("listen_host", "127.0.0.1"),
        api_host=top.get("api_host", "127.0.0.1"),
        ports=PortsConfig(**converted["ports"]),
        capture=CaptureConfig(**converted["capture"]),
        upstream=UpstreamConfig(**converted["upstream"]),
        cloud=CloudConfig(**converted["cloud"]),
        attribution=AttributionConfig(scan_roots=scan_roots),
        watchdog=WatchdogConfig(**converted["watchdog"]),
        edge=EdgeConfig(**converted["edge"]),
        warnings=tuple(warnings),
    )


# --- writes (tomlkit: comments and order survive) -----------------------------------------


def read_document(home: Home) -> TOMLDocument:
    if not home.config.exists():
        return tomlkit.document()
    return _parse(home.config.read_text(encoding="utf-8"), home.config)


def write_document(home: Home, doc: TOMLDocument) -> None:
    home.ensure()
    atomic_write(home.config, tomlkit.dumps(doc), mode=0o600)


def set_value(home: Home, section: str, key: str, value: Any) -> None:
    """Set one key, validated first; every other byte of the file is kept."""
    check = _SCHEMA.get(section, {}).get(key)
    if check is None:
        raise ConfigError(f"{home.config}: unknown key [{section}] {key}")
    try:
        check(value)
    except ValueError as exc:
        raise ConfigError(
            f"{home.config}: [{section}] {key} = {value!r} is invalid: {exc}"
        ) from None
    doc = read_document(home)
    if section:
        table = doc.get(section)
        if table is None:
            table = tomlkit.table()
            doc[section] = table
        table[key] = value
    else:
        doc[key] = value
    write_document(home, doc)


# --- placeholder base URL --------------------------------------------------------------


def placeholder_tld(url: str) -> str | None:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    for tld in PLACEHOLDER_TLDS:
        if host.endswith(tld) or host == tld[1:]:
            return tld
    return None


def require_real_base_url(config: Config) -> str:
    """The cloud base URL, or :class:`PlaceholderBaseURL` at once: it would never resolve."""
    url = config.cloud.base_url
    tld = placeholder_tld(url)
    if tld:
        raise PlaceholderBaseURL(
            f"cloud.transport_error: [cloud] base_url = {url} uses the placeholder TLD {tld}, "
            f"which never resolves (config: {config.path}).\n"
            f'Fix: set base_url = "{DEFAULT_BASE_URL}" in {config.path}, or restart the '
            f"daemon to heal it: halton-meter stop && halton-meter start"
        )
    return url


def heal_placeholder_base_url(home: Home | None = None) -> bool:
    """Rewrite a placeholder `[cloud] base_url` to the real one, in place, comments kept.

    Logs ``config.base_url.healed`` once; returns True when it changed the file. Running it
    again changes nothing. A config.toml that does not parse is left alone (load_config
    reports it).
    """
    home = home or Home.resolve()
    if not home.config.exists():
        return False
    try:
        doc = read_document(home)
    except ConfigError:
        return False
    cloud = doc.get("cloud")
    if not isinstance(cloud, dict) or not isinstance(cloud.get("base_url"), str):
        return False
    old = str(cloud["base_url"])
    if not placeholder_tld(old):
        return False
    cloud["base_url"] = DEFAULT_BASE_URL
    write_document(home, doc)
    get_logger().warning(
        "config.base_url.healed", old=old, new=DEFAULT_BASE_URL, path=str(home.config)
    )
    return True


def is_loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

"""The system proxy (`--full` mode only; `reset-proxy` turns it off at once).

macOS: ``networksetup`` on every network service. Linux: GNOME ``gsettings``, and KDE's
``kwriteconfig5/6`` where present. Node and Electron apps ignore it (the reference's
Cause 5): it only helps apps that read the system proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from halton_meter.platform import is_macos
from halton_meter.service import runner


@dataclass(frozen=True)
class ProxyState:
    enabled: bool
    host: str | None = None
    port: int | None = None
    detail: str = ""


class SystemProxy(Protocol):
    def enable(self, host: str, port: int) -> list[runner.Result]: ...

    def disable(self) -> list[runner.Result]: ...

    def state(self) -> ProxyState: ...


class NetworksetupProxy:
    def services(self) -> list[str]:
        out = runner.run(["networksetup", "-listallnetworkservices"])
        if not out.ok:
            return []
        # first line is a notice; disabled services start with '*'
        return [s for s in out.stdout.splitlines()[1:] if s.strip() and not s.startswith("*")]

    def enable(self, host: str, port: int) -> list[runner.Result]:
        results = []
        for svc in self.services():
            results.append(runner.run(["networksetup", "-setwebproxy", svc, host, str(port)]))
            results.append(runner.run(["networksetup", "-setsecurewebproxy", svc, host, str(port)]))
        return results

    def disable(self) -> list[runner.Result]:
        results = []
        for svc in self.services():
            results.append(runner.run(["networksetup", "-setwebproxystate", svc, "off"]))
            results.append(runner.run(["networksetup", "-setsecurewebproxystate", svc, "off"]))
        return results

    def state(self) -> ProxyState:
        for svc in self.services():
            out = runner.run(["networksetup", "-getsecurewebproxy", svc])
            fields = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
            if fields.get("Enabled", "").strip() == "Yes":
                port = fields.get("Port", "").strip()
                return ProxyState(
                    True, fields.get("Server", "").strip(), int(port) if port.isdigit() else None
                )
        return ProxyState(False)


class GnomeKdeProxy:
    _KDE = ("kwriteconfig6", "kwriteconfig5")

    def _gsettings(self, *args: str) -> runner.Result:
        return runner.run(["gsettings", *args])

    def _kde(self, key: str, value: str) -> runner.Result | None:
        for tool in self._KDE:
            if runner.available(tool):
                return runner.run(
                    [tool, "--file", "kioslaverc", "--group", "Proxy Settings", "--key", key, value]
                )
        return None

    def enable(self, host: str, port: int) -> list[runner.Result]:
        results = []
        if runner.available("gsettings"):
            for scheme in ("http", "https"):
                results.append(
                    self._gsettings("set", f"org.gnome.system.proxy.{scheme}", "host", host)
                )
                results.append(
                    self._gsettings("set", f"org.gnome.system.proxy.{scheme}", "port", str(port))
                )
            results.append(
                self._gsettings(
                    "set",
                    "org.gnome.system.proxy",
                    "ignore-hosts",
                    "['localhost', '127.0.0.0/8', '::1']",
                )
            )
            results.append(self._gsettings("set", "org.gnome.system.proxy", "mode", "manual"))
        for key, value in (
            ("ProxyType", "1"),
            ("httpProxy", f"http://{host} {port}"),
            ("httpsProxy", f"http://{host} {port}"),
        ):
            kde = self._kde(key, value)
            if kde is not None:
                results.append(kde)
        return results

    def disable(self) -> list[runner.Result]:
        results = []
        if runner.available("gsettings"):
            results.append(self._gsettings("set", "org.gnome.system.proxy", "mode", "none"))
        kde = self._kde("ProxyType", "0")
        if kde is not None:
            results.append(kde)
        return results

    def state(self) -> ProxyState:
        if not runner.available("gsettings"):
            return ProxyState(False, detail="gsettings not found")
        mode = self._gsettings("get", "org.gnome.system.proxy", "mode").stdout.strip().strip("'")
        if mode != "manual":
            return ProxyState(False)
        host = self._gsettings("get", "org.gnome.system.proxy.https", "host").stdout.strip()
        port = self._gsettings("get", "org.gnome.system.proxy.https", "port").stdout.strip()
        return ProxyState(True, host.strip("'"), int(port) if port.isdigit() else None)


def system_proxy() -> SystemProxy:
    return NetworksetupProxy() if is_macos() else GnomeKdeProxy()

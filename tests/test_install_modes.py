"""init modes, rc blocks, the sentinel reconciler, uninstall levels, reset-proxy."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from fixtures_install import HM, Machine, make_machine

from halton_meter.install import rcblock


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return make_machine(tmp_path)


def _hm(machine: Machine, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HM, *args], env=machine.env(**env), capture_output=True, text=True, timeout=120
    )


USER_BASHRC = "# my aliases\nalias ll='ls -l'\nexport EDITOR=vim"  # no trailing newline
USER_ZSHRC = "setopt autocd\n\n# end of my stuff\n"


def _surfaces(machine: Machine) -> dict[str, bool]:
    envd = machine.home / ".config" / "environment.d" / "60-halton-meter.conf"
    return {
        "bash": rcblock.read_block(machine.home / ".bashrc") is not None,
        "zsh": rcblock.read_block(machine.home / ".zshrc") is not None,
        "session": envd.exists(),
    }


def _sentinel(machine: Machine) -> str | None:
    path = machine.meter / "install-mode"
    return path.read_text().strip() if path.exists() else None


def test_switching_every_mode_both_ways_keeps_user_content_byte_for_byte(
    machine: Machine,
) -> None:
    (machine.home / ".bashrc").write_text(USER_BASHRC)
    (machine.home / ".zshrc").write_text(USER_ZSHRC)
    sequence = ["", "--apps", "--full", "--apps", "", "--full", ""]
    for flag in sequence:
        out = _hm(machine, "init", *([flag] if flag else []), "--no-start")
        assert out.returncode == 0, out.stderr
        mode = {"": "env-only", "--apps": "apps", "--full": "full"}[flag]
        assert _sentinel(machine) == mode
        on = mode != "env-only"
        assert _surfaces(machine) == {"bash": on, "zsh": on, "session": on}, (flag, out.stdout)
        for name, original in ((".bashrc", USER_BASHRC), (".zshrc", USER_ZSHRC)):
            text = (machine.home / name).read_text()
            assert text.count(rcblock.BEGIN) == (1 if on else 0)
            if on:
                before, _, rest = text.partition(rcblock.BEGIN)
                after = rest.partition(rcblock.END)[2]
                assert (before + after.lstrip("\n")).rstrip("\n") == original.rstrip("\n")
            else:
                # back to env-only: the user's bytes, exactly (a newline we added is ours)
                assert text in (original, original + "\n")


def test_rc_block_is_updated_in_place_never_duplicated(machine: Machine, tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    rc.write_text("a\n")
    env = {k: f"v-{k}" for k in rcblock.CLIENT_VARS}
    assert rcblock.write_block(rc, rcblock.render_block("bash", env)) is True
    rc.write_text(rc.read_text() + "b\n")
    assert rcblock.write_block(rc, rcblock.render_block("bash", env)) is False
    env["HTTPS_PROXY"] = "http://127.0.0.1:8082"
    assert rcblock.write_block(rc, rcblock.render_block("bash", env)) is True
    text = rc.read_text()
    assert text.count(rcblock.BEGIN) == 1
    assert text.startswith("a\n" + rcblock.BEGIN) and text.endswith(rcblock.END + "\nb\n")
    assert rcblock.read_block(rc)["HTTPS_PROXY"] == "http://127.0.0.1:8082"
    fish = rcblock.render_block("fish", env)
    assert "set -gx HTTPS_PROXY 'http://127.0.0.1:8082'" in fish


def test_no_shell_rc_leaves_rc_files_alone(machine: Machine) -> None:
    (machine.home / ".bashrc").write_text(USER_BASHRC)
    out = _hm(machine, "init", "--apps", "--no-shell-rc", "--no-start")
    assert out.returncode == 0, out.stderr
    assert (machine.home / ".bashrc").read_text() == USER_BASHRC
    assert _surfaces(machine)["session"] is True


def test_gui_sentinel_migrates_to_full(machine: Machine) -> None:
    machine.meter.mkdir(parents=True)
    (machine.meter / "install-mode").write_text("gui\n")
    out = _hm(machine, "init", "--full", "--no-start")
    assert out.returncode == 0, out.stderr
    assert _sentinel(machine) == "full"
    assert "install-mode gui -> full" in out.stdout


def test_full_mode_sets_the_gnome_proxy_and_reset_proxy_turns_it_off(machine: Machine) -> None:
    out = _hm(machine, "init", "--full", "--no-start")
    assert out.returncode == 0, out.stderr
    keyfile = machine.home / ".config" / "glib-2.0" / "settings" / "keyfile"
    text = keyfile.read_text()
    assert "mode='manual'" in text and "port=8081" in text
    bashrc_before = (machine.home / ".bashrc").read_text()
    out = _hm(machine, "reset-proxy")
    assert out.returncode == 0, out.stderr
    assert "mode='none'" in keyfile.read_text()
    # touches nothing else
    assert (machine.home / ".bashrc").read_text() == bashrc_before
    assert _sentinel(machine) == "full"


def test_uninstall_levels_leave_exactly_what_the_reference_says(machine: Machine) -> None:
    (machine.home / ".bashrc").write_text(USER_BASHRC)
    assert _hm(machine, "init", "--apps", "--no-start").returncode == 0
    (machine.meter / "config.toml").write_text("# mine\n")
    (machine.meter / "db.sqlite").write_bytes(b"rows")
    (machine.meter / "daemon.out.log").write_text("log\n")

    out = _hm(machine, "uninstall")
    assert out.returncode == 0, out.stderr
    assert _surfaces(machine) == {"bash": False, "zsh": False, "session": False}
    assert (machine.home / ".bashrc").read_text() in (USER_BASHRC, USER_BASHRC + "\n")
    assert (machine.meter / "config.toml").exists() and (machine.meter / "db.sqlite").exists()
    assert not (machine.anchors / "halton-meter-ca.crt").exists()

    out = _hm(machine, "uninstall", "--purge")
    assert out.returncode == 0, out.stderr
    assert not (machine.meter / "config.toml").exists()
    assert not (machine.meter / "install-mode").exists()
    assert (machine.meter / "db.sqlite").exists() and (machine.meter / "daemon.out.log").exists()

    out = _hm(machine, "uninstall", "--purge", "--include-logs")
    assert out.returncode == 0, out.stderr
    assert not (machine.meter / "db.sqlite").exists()
    assert not (machine.meter / "daemon.out.log").exists()


def test_non_interactive_cannot_elevate_exits_2_with_the_reference_message(
    machine: Machine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An unprivileged user (the euid is the one thing faked), no osascript, sudo not cached:
    # the real elevation logic runs against a recording `sudo` stand-in.
    for key, value in machine.env(**machine.standins("sudo")).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(
        "sys.argv", ["halton-meter", "init", "--apps", "--non-interactive", "--no-start"]
    )
    from halton_meter.cli import main

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--non-interactive cannot elevate: osascript unavailable and sudo not pre-cached" in err
    assert "sudo -v" in err
    assert ["sudo", "-n", "true"] in machine.calls()
    assert _sentinel(machine) is None  # nothing was changed


def test_macos_adapters_run_the_exact_command_lines(machine: Machine) -> None:
    path_env = machine.standins("launchctl", "networksetup", "security", "osascript")
    env = {"HALTON_METER_PLATFORM": "darwin", **path_env}
    out = _hm(machine, "init", "--full", "--no-start", **env)
    assert out.returncode == 0, out.stderr
    calls = machine.calls()
    cert = str(machine.meter / "mitmproxy" / "mitmproxy-ca-cert.pem")
    bundle = str(machine.meter / "ca-bundle.pem")
    # running as root: the trust step needs no dialog
    assert [
        "security",
        "add-trusted-cert",
        "-d",
        "-r",
        "trustRoot",
        "-k",
        "/Library/Keychains/System.keychain",
        cert,
    ] in calls
    assert ["security", "verify-cert", "-c", cert, "-p", "ssl"] in calls
    for svc in ("Wi-Fi", "Thunderbolt Bridge"):
        assert ["networksetup", "-setwebproxy", svc, "127.0.0.1", "8081"] in calls
        assert ["networksetup", "-setsecurewebproxy", svc, "127.0.0.1", "8081"] in calls
    assert not any("*Old VPN" in c for c in calls)
    assert ["launchctl", "setenv", "HTTPS_PROXY", "http://127.0.0.1:8081"] in calls
    assert ["launchctl", "setenv", "SSL_CERT_FILE", bundle] in calls
    assert ["launchctl", "setenv", "NODE_EXTRA_CA_CERTS", cert] in calls

    machine.log.unlink()
    out = _hm(machine, "reset-proxy", **env)
    assert out.returncode == 0, out.stderr
    assert machine.calls() == [
        ["networksetup", "-listallnetworkservices"],
        ["networksetup", "-setwebproxystate", "Wi-Fi", "off"],
        ["networksetup", "-setsecurewebproxystate", "Wi-Fi", "off"],
        ["networksetup", "-setwebproxystate", "Thunderbolt Bridge", "off"],
        ["networksetup", "-setsecurewebproxystate", "Thunderbolt Bridge", "off"],
    ]


_METERED_CLIENTS = """
set -e
curl -sS -o /dev/null -w '%{http_code}\\n' https://api.anthropic.com/v1/messages \\
  -H 'x-api-key: sk-ant-test' -H 'anthropic-version: 2023-06-01' \\
  -H 'content-type: application/json' \\
  -d '{"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}'
@PYTHON@ -c '
import anthropic
m = anthropic.Anthropic(api_key="sk-ant-test").messages.create(
    model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
print(m.usage.output_tokens)
'
"""


def test_init_apps_then_a_fresh_login_shell_meters_curl_and_the_python_sdk(
    machine: Machine,
) -> None:
    """The real `init --apps` (service start and self-test included); then a new login shell,
    with nothing but the user's dotfiles, is metered without `run`."""
    import sqlite3
    import sys

    from hmtest import wait_until

    from halton_meter.sim import ProviderSim

    # Debian's skeleton: a login shell reads ~/.profile, which sources ~/.bashrc.
    (machine.home / ".profile").write_text('[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"\n')
    (machine.home / ".bashrc").write_text(USER_BASHRC + "\n")
    with ProviderSim(machine.root / "sim") as sim:
        machine.meter.mkdir(parents=True)
        (machine.meter / "config.toml").write_text(
            "[upstream]\n"
            f'resolve = {{ "api.anthropic.com:443" = "127.0.0.1:{sim.port}" }}\n'
            f'ca_bundle = "{sim.ca_path}"\n'
        )
        env = machine.env(**machine.standins("systemctl"))
        try:
            init = subprocess.run(
                [*HM, "init", "--apps"], env=env, capture_output=True, text=True, timeout=120
            )
            assert init.returncode == 0, init.stdout + init.stderr
            assert "self-test: ok" in init.stdout
            shell_env = {
                k: v
                for k, v in env.items()
                if k not in ("HTTPS_PROXY", "HTTP_PROXY", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
            }
            shell = subprocess.run(
                ["bash", "-l", "-c", _METERED_CLIENTS.replace("@PYTHON@", sys.executable)],
                env=shell_env,
                cwd=machine.home,
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
            )
            assert shell.returncode == 0, shell.stderr
            assert shell.stdout.split()[0] == "200"

            def rows() -> list[tuple[str, str, int]]:
                db = machine.meter / "db.sqlite"
                if not db.exists():
                    return []
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    return conn.execute(
                        "SELECT tool, model, output_tokens FROM requests ORDER BY ts"
                    ).fetchall()

            found = wait_until(lambda: len(rows()) >= 2 and rows(), timeout=15, what="2 rows")
            assert [(t, m) for t, m, _ in found] == [
                ("curl", "claude-sonnet-4-5"),
                ("python", "claude-haiku-4-5"),
            ]
            assert found[1][2] == int(shell.stdout.split()[1])
        finally:
            stop = subprocess.run([*HM, "stop"], env=env, capture_output=True, text=True)
            assert stop.returncode == 0, stop.stderr

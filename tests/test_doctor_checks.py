"""`halton-meter doctor`: for each check, a home where it fails and one where it passes,
produced by really breaking the thing; several printed fixes are run and turn the row ok."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fixtures_doctor import (
    doctor,
    machine_env,
    meter_calls,
    row,
    run_fix,
    write_exe,
)
from fixtures_edge import git_init
from fixtures_install import HM, Machine, make_machine
from hmtest import PYTHON, REPO, free_port, port_open, wait_until

from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, save_effective_ports
from halton_meter.store.model import Row
from halton_meter.store.writer import RowWriter

UNSET = (
    "unset CURL_CA_BUNDLE SSL_CERT_FILE REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS "
    "GIT_SSL_CAINFO AWS_CA_BUNDLE HTTPS_PROXY HTTP_PROXY NO_PROXY"
)
DOCTOR_JSON = f"{PYTHON} -m halton_meter doctor --json"


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    m = make_machine(tmp_path)
    m.meter.mkdir(mode=0o700)
    return m


def _hm(machine: Machine, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [*HM, *args],
        cwd=REPO,
        env=machine_env(machine, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _ports(machine: Machine) -> EffectivePorts:
    """Negotiated ports in runtime state, as after a first start (all free)."""
    ports = EffectivePorts(edge=free_port(), daemon=free_port(), api=free_port())
    save_effective_ports(Home(machine.meter), ports)
    return ports


def _fix_then_doctor(machine: Machine, fix: str, **kw: object) -> dict:
    out = run_fix(machine, f"{fix}\n{DOCTOR_JSON}", **kw)  # type: ignore[arg-type]
    start = out.stdout.index("{\n")
    return json.loads(out.stdout[start:])


# -- never started: the supervisor row, the contract, agreement with status -----------------


def test_never_started_fails_with_start_and_agrees_with_status(machine: Machine) -> None:
    code, doc = doctor(machine)
    assert code == 2 and doc["state"] == "BROKEN"
    sup = row(doc, "supervisor")
    assert sup["status"] == "fail" and sup["fix"] == "halton-meter start"
    assert sup["reasons"] == ["not_running"]
    assert row(doc, "programs")["status"] == "skip"
    assert sorted(machine.meter.iterdir()) == []  # doctor never writes into the home
    status = subprocess.run(
        [*HM, "status", "--json"],
        cwd=REPO,
        env=machine_env(machine),
        capture_output=True,
        text=True,
    )
    assert status.returncode == code
    assert json.loads(status.stdout)["state"] == doc["state"]
    human = subprocess.run(
        [*HM, "doctor"], cwd=REPO, env=machine_env(machine), capture_output=True, text=True
    )
    assert human.returncode == 2
    lines = human.stdout.splitlines()
    assert lines[0] == "state: BROKEN"
    assert any(re.match(r"^FAIL\s+supervisor\s+Halton Meter is not running", ln) for ln in lines)
    assert any(ln.strip() == "fix: halton-meter start" for ln in lines)


# -- CA variables pointing at missing files (the reference's first entry) -------------------


def test_stale_ca_variables_and_the_unset_line(machine: Machine, tmp_path: Path) -> None:
    bundle = tmp_path / "old-venv" / "certifi" / "cacert.pem"
    bundle.parent.mkdir(parents=True)
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"SSL_CERT_FILE": str(bundle), "REQUESTS_CA_BUNDLE": str(bundle)}
    _, doc = doctor(machine, **env)
    assert row(doc, "stale_ca")["status"] == "ok"

    bundle.unlink()  # the virtualenv was deleted
    _, doc = doctor(machine, **env)
    stale = row(doc, "stale_ca")
    assert stale["status"] == "warn"
    assert f"SSL_CERT_FILE={bundle}" in stale["summary"]
    assert stale["fix"].startswith(UNSET)
    assert stale["reasons"] == ["stale_ca_variable"]

    after = _fix_then_doctor(machine, stale["fix"], **env)
    assert row(after, "stale_ca")["status"] == "ok"


# -- a port held by another process ------------------------------------------------------------


def test_port_held_by_another_process_named_and_killed_by_the_fix(machine: Machine) -> None:
    ports = _ports(machine)
    _, doc = doctor(machine)
    assert row(doc, "foreign_ports")["status"] == "ok"

    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import socket, time\n"
            f"s = socket.socket(); s.bind(('127.0.0.1', {ports.edge})); s.listen()\n"
            "time.sleep(120)",
        ]
    )
    try:
        wait_until(lambda: port_open(ports.edge), what="holder listening")
        code, doc = doctor(machine)
        held = row(doc, "foreign_ports")
        assert code == 2 and held["status"] == "fail"
        assert (
            f"port {ports.edge} (edge) is held by pid {holder.pid} ({PYTHON} -c" in held["summary"]
        )
        assert held["fix"] == (
            f"lsof -nP -iTCP:{ports.edge} -sTCP:LISTEN; kill {holder.pid}; "
            "halton-meter stop && halton-meter start"
        )
        after = _fix_then_doctor(machine, held["fix"])
        holder.wait(timeout=10)  # the fix's kill ended it
        assert row(after, "foreign_ports")["status"] == "ok"
        assert meter_calls(machine) == ["halton-meter stop", "halton-meter start"]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# -- the loopback bind guard ---------------------------------------------------------------------


def test_loopback_guard_really_refused_and_the_fix(machine: Machine) -> None:
    api = free_port()
    config = machine.meter / "config.toml"
    config.write_text(f'listen_host = "127.0.0.1"\napi_host = "0.0.0.0"\n\n[ports]\napi = {api}\n')
    save_effective_ports(Home(machine.meter), EffectivePorts(free_port(), free_port(), api))
    with (machine.meter / "api.err.log").open("w") as err:
        refused = subprocess.run(
            [PYTHON, "-m", "halton_meter.api"],
            cwd=REPO,
            env=machine_env(machine),
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=60,
        )
    assert refused.returncode == 1  # the real guard refused to bind 0.0.0.0

    code, doc = doctor(machine)
    guard = row(doc, "loopback_guard")
    assert code == 2 and guard["status"] == "fail"
    assert "api_host=0.0.0.0 is not a loopback address" in guard["summary"]
    assert str(machine.meter / "api.err.log") in guard["summary"]
    assert "HALTON_METER_ALLOW_NON_LOOPBACK=1 halton-meter start" in guard["fix"]
    assert guard["reasons"] == ["doctor.loopback_guard"]

    _, overridden = doctor(machine, HALTON_METER_ALLOW_NON_LOOPBACK="1")
    assert row(overridden, "loopback_guard")["status"] == "warn"
    assert "override active" in row(overridden, "loopback_guard")["summary"]

    after = _fix_then_doctor(machine, guard["fix"])
    fixed = row(after, "loopback_guard")
    assert fixed["status"] == "ok" and "earlier bind-guard refusal" in fixed["summary"]
    assert 'api_host = "127.0.0.1"' in config.read_text()
    assert f"api = {api}" in config.read_text()  # the rest of the user's file kept
    assert meter_calls(machine) == ["halton-meter start"]


# -- placeholder base_url -------------------------------------------------------------------------


def test_placeholder_base_url_row(machine: Machine) -> None:
    _, doc = doctor(machine)
    assert row(doc, "base_url")["status"] == "ok"
    (machine.meter / "config.toml").write_text(
        '[cloud]\nbase_url = "https://api.haltonmeter.test"\n'
    )
    _, doc = doctor(machine)
    placeholder = row(doc, "base_url")
    assert placeholder["status"] == "warn"
    assert "placeholder TLD .test" in placeholder["summary"]
    assert placeholder["fix"].startswith("halton-meter stop && halton-meter start   # ")
    assert 'base_url = "https://api.haltonmeter.com"' in placeholder["fix"]


# -- bodies over the gate --------------------------------------------------------------------------


_LOG_SKIPS = """
from halton_meter.core.logging import configure_logging, get_logger
configure_logging("daemon", json_lines=True)
log = get_logger()
for i in range(3):
    log.info("addon.body_capture.skip", reason="body_too_large", row_id=f"r{i}", limit=4194304)
log.info("addon.capture.row", row_id="r9")
"""


def test_bodies_skipped_by_the_gate_are_counted_not_a_problem(machine: Machine) -> None:
    _, doc = doctor(machine)
    assert row(doc, "body_gate")["summary"] == "no bodies skipped by the 4 MiB gate."
    with (machine.meter / "daemon.out.log").open("w") as out:
        subprocess.run(
            [PYTHON, "-c", _LOG_SKIPS], cwd=REPO, env=machine_env(machine), stdout=out, check=True
        )
    _, doc = doctor(machine)
    gate = row(doc, "body_gate")
    assert gate["status"] == "ok"
    assert gate["summary"].startswith("3 bodies skipped (4 MiB gate) — not a problem")
    assert gate["reasons"] == []


# -- cold-start unattributed rows -------------------------------------------------------------------


def test_unattributed_rows_and_the_backfill(machine: Machine, tmp_path: Path) -> None:
    repo = git_init(tmp_path / "widget")
    with RowWriter(machine.meter / "db.sqlite") as writer:
        writer.submit(Row(tool="cursor", project="kept", tier="explicit", client_cwd=str(repo)))
        assert writer.flush()
    _, doc = doctor(machine)
    assert row(doc, "unattributed")["status"] == "ok"

    with RowWriter(machine.meter / "db.sqlite") as writer:
        for _ in range(2):
            writer.submit(Row(tool="cursor", client_cwd=str(repo)))  # tier misc
        assert writer.flush()
    code, doc = doctor(machine)
    misc = row(doc, "unattributed")
    assert misc["status"] == "warn" and misc["summary"].startswith("2 unattributed row(s)")
    assert misc["reasons"] == []  # advice: the state is status's
    dry, _, rest = misc["fix"].partition("   # dry-run; then apply: ")
    apply = rest.split("   #")[0]
    assert dry.endswith("-m halton_meter.scripts.backfill_body_paths")
    assert apply.count("--apply") == 2 and ".haltonrc" in misc["fix"]
    assert "HALTON_PROJECT=<slug>" in misc["fix"]

    still = _fix_then_doctor(machine, dry)  # a dry-run changes nothing
    assert row(still, "unattributed")["status"] == "warn"
    after = _fix_then_doctor(machine, apply)
    assert row(after, "unattributed")["status"] == "ok"


# -- modes: env-only, a shell opened before init, git, --full ----------------------------------------


def test_env_only_info_row(machine: Machine) -> None:
    _, doc = doctor(machine)
    info = row(doc, "env_only")
    assert info["status"] == "ok"
    assert info["summary"].startswith("env-only: only `halton-meter run <cmd>` is metered")
    assert info["fix"].startswith("halton-meter run <cmd>")
    assert row(doc, "new_terminal")["status"] == "skip"


def test_shell_opened_before_init_and_a_new_terminal(machine: Machine) -> None:
    _hm(machine, "init", "--apps", "--no-start")
    code, doc = doctor(machine)
    old = row(doc, "new_terminal")
    assert old["status"] == "warn"
    assert "this shell has no HTTPS_PROXY" in old["summary"]
    assert old["fix"].startswith("exec bash   # or open a new terminal")
    assert "IDE" in old["fix"]
    # A new terminal: an interactive bash reads the rc block init wrote.
    out = run_fix(machine, f"bash -i -c '{DOCTOR_JSON}'")
    new = json.loads(out.stdout[out.stdout.index("{\n") :])
    assert row(new, "new_terminal")["status"] == "ok"
    assert row(new, "git_cainfo")["status"] == "ok"
    assert row(new, "stale_ca")["status"] == "ok"
    _, doc = doctor(machine, HTTPS_PROXY="http://proxy.corp.example:3128")
    corp = row(doc, "new_terminal")
    assert corp["status"] == "warn" and "is another proxy" in corp["summary"]


def test_git_without_git_ssl_cainfo(machine: Machine) -> None:
    ports = _ports(machine)
    bundle = machine.meter / "ca-bundle.pem"
    bundle.write_text("roots\n")
    ours = {"HTTPS_PROXY": f"http://127.0.0.1:{ports.edge}", "SSL_CERT_FILE": str(bundle)}
    _, doc = doctor(machine, **ours)
    git = row(doc, "git_cainfo")
    assert git["status"] == "warn" and "no GIT_SSL_CAINFO" in git["summary"]
    assert git["fix"].startswith("halton-meter init   # rewrites the rc block")
    assert "halton-meter run git push" in git["fix"]
    _, doc = doctor(machine, GIT_SSL_CAINFO=str(bundle), **ours)
    assert row(doc, "git_cainfo")["status"] == "ok"
    _, doc = doctor(machine)
    assert row(doc, "git_cainfo")["status"] == "skip"


def test_full_mode_warns_and_init_apps_fixes_it(machine: Machine) -> None:
    edge, daemon, api = free_port(), free_port(), free_port()
    (machine.meter / "config.toml").write_text(
        f"[ports]\nedge = {edge}\ndaemon = {daemon}\napi = {api}\n"
    )
    _hm(machine, "init", "--full", "--no-start")
    _, doc = doctor(machine)
    full = row(doc, "full_mode")
    assert full["status"] == "warn" and "CT-pinned" in full["summary"]
    assert full["fix"].startswith("halton-meter init --apps   # then restart the browser")
    assert "halton-meter reset-proxy" in full["fix"]
    try:
        after = _fix_then_doctor(machine, full["fix"], real_meter=True)  # the real init --apps
        assert row(after, "full_mode")["status"] == "ok"
        assert (machine.meter / "install-mode").read_text().strip() == "apps"
        assert row(after, "supervisor")["status"] == "ok"  # init started the meter
        assert row(after, "ca_trust")["status"] == "ok"
    finally:
        run_fix(machine, "halton-meter stop", real_meter=True)
        from halton_meter.service.orphans import end_processes, our_processes

        left = our_processes(Home(machine.meter))
        end_processes(left)
        assert not left


# -- the session environment (stale launchctl env / environment.d) ----------------------------------


def test_stale_session_environment_linux(machine: Machine) -> None:
    from halton_meter.install.modes import write_sentinel

    _hm(machine, "init", "--apps", "--no-start")
    _, doc = doctor(machine)
    assert row(doc, "session_env")["status"] == "ok"
    write_sentinel(Home(machine.meter), "env-only")  # an uninstall that never finished
    code, doc = doctor(machine)
    stale = row(doc, "session_env")
    envd = machine.home / ".config" / "environment.d" / "60-halton-meter.conf"
    assert stale["status"] == "warn" and code >= 1
    assert f"stale session environment: {envd}" in stale["summary"]
    assert stale["fix"].startswith(f"rm -f {envd}; systemctl --user unset-environment HTTPS_PROXY")
    assert stale["fix"].endswith("halton-meter stop; halton-meter init; halton-meter status")
    after = _fix_then_doctor(machine, stale["fix"])
    assert not envd.exists()
    assert row(after, "session_env")["status"] == "ok"
    assert meter_calls(machine) == ["halton-meter stop", "halton-meter init", "halton-meter status"]


def test_stale_systemd_user_manager_environment(machine: Machine) -> None:
    """environment.d is gone, but the user manager still holds what it gave at login."""
    ports = _ports(machine)
    state = machine.root / "systemd-state"
    state.mkdir()
    write_exe(machine.bin / "systemctl", _SYSTEMCTL.format(state=state))
    path = {"PATH": f"{machine.bin}{os.pathsep}{os.environ['PATH']}"}
    _, doc = doctor(machine, **path)
    assert row(doc, "session_env")["status"] == "ok"
    (state / "env").write_text(f"LANG=C\nHTTPS_PROXY=http://127.0.0.1:{ports.edge}\n")
    _, doc = doctor(machine, **path)
    stale = row(doc, "session_env")
    assert stale["status"] == "warn"
    assert "the systemd user manager (systemctl --user show-environment)" in stale["summary"]
    assert "systemctl --user unset-environment HTTPS_PROXY HTTP_PROXY NO_PROXY" in stale["fix"]
    after = _fix_then_doctor(machine, stale["fix"], **path)
    assert row(after, "session_env")["status"] == "ok"


# launchctl with state: setenv/getenv/unsetenv on files in a directory.
_LAUNCHCTL = """d="{state}"; mkdir -p "$d"
case "$1" in
  setenv) printf '%s' "$3" > "$d/$2";;
  unsetenv) rm -f "$d/$2";;
  getenv) [ -f "$d/$2" ] && cat "$d/$2" && exit 0; exit 1;;
  print) [ -f "$d/.loaded" ] && exit 0; exit 113;;
  bootstrap) touch "$d/.loaded";;
  bootout) rm -f "$d/.loaded";;
esac
exit 0"""

SESSION_ORDER = [
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "CURL_CA_BUNDLE",
    "AWS_CA_BUNDLE",
]


def test_stale_launchctl_environment_macos_fix_is_the_references(machine: Machine) -> None:
    state = machine.root / "launchd-env"
    write_exe(machine.bin / "launchctl", _LAUNCHCTL.format(state=state))
    write_exe(machine.bin / "security", "exit 0")
    mac = {
        "HALTON_METER_PLATFORM": "darwin",
        "PATH": f"{machine.bin}{os.pathsep}{os.environ['PATH']}",
    }
    ports = _ports(machine)
    state.mkdir()
    (state / "HTTPS_PROXY").write_text(f"http://127.0.0.1:{ports.edge}")
    (state / "NODE_EXTRA_CA_CERTS").write_text("/gone/ca.pem")
    _, doc = doctor(machine, **mac)
    stale = row(doc, "session_env")
    assert stale["status"] == "warn" and "launchctl user domain" in stale["summary"]
    expected = "; ".join(f"launchctl unsetenv {var}" for var in SESSION_ORDER)
    assert stale["fix"] == expected + "; halton-meter stop; halton-meter init; halton-meter status"
    after = _fix_then_doctor(machine, stale["fix"], **mac)
    assert sorted(p.name for p in state.iterdir()) == []
    assert row(after, "session_env")["status"] == "ok"


def test_programs_routing_through_their_own_edge(machine: Machine) -> None:
    """A program of the meter (its real environment, read from /proc) with HTTPS_PROXY at the
    edge: a proxy loop, BROKEN; the watchdog's recorded state says so too."""
    from halton_meter.doctor.doctor import build_doctor
    from halton_meter.service.rpc import ProgramInfo
    from halton_meter.service.watchdog_state import write_watchdog_state

    ports = _ports(machine)
    looped = subprocess.Popen(
        [PYTHON, "-c", "import time; time.sleep(60)"],
        env={**machine_env(machine), "HTTPS_PROXY": f"http://127.0.0.1:{ports.edge}"},
    )
    try:
        home = Home(machine.meter)
        write_watchdog_state(
            home,
            {
                "programs": {"daemon": {"loop_state": "LOOPING", "window_exits": 6}},
                "last_cause": {"program": "daemon", "cause": "recursion"},
            },
        )

        def infos(_home: Home) -> dict[str, ProgramInfo]:
            return {
                name: ProgramInfo("RUNNING", looped.pid if name == "daemon" else None, 5.0, 0, None)
                for name in ("daemon", "edge", "api", "watchdog")
            }

        env = {"HOME": str(machine.home), "XDG_CONFIG_HOME": str(machine.home / ".config")}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            doc = build_doctor(home, {}, program_infos=infos)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        loop = row(doc, "session_env")
        assert loop["status"] == "fail"
        assert (
            f"daemon (pid {looped.pid}) has HTTPS_PROXY=http://127.0.0.1:{ports.edge}"
            in loop["summary"]
        )
        assert "unset-environment HTTPS_PROXY" in loop["fix"]
        respawn = row(doc, "respawn_loops")
        assert respawn["status"] == "fail" and "6 exits" in respawn["summary"]
        assert respawn["fix"] == (
            f"tail -n 100 {machine.meter / 'daemon.err.log'}   # fix the cause, then: "
            "halton-meter stop && halton-meter start"
        )
        assert doc["state"] == "BROKEN"
    finally:
        looped.kill()
        looped.wait()


# -- the CA: trust, replaced, serial ------------------------------------------------------------------


def test_ca_untrusted_and_replaced_then_init_apps(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hm(machine, "init", "--apps", "--no-start")
    _, doc = doctor(machine)
    trust = row(doc, "ca_trust")
    assert trust["status"] == "ok" and str(machine.anchors) in trust["summary"]

    anchor = machine.anchors / "halton-meter-ca.crt"
    anchor.unlink()  # removed from the trust store
    code, doc = doctor(machine)
    untrusted = row(doc, "ca_trust")
    assert untrusted["status"] == "fail" and "is not trusted" in untrusted["summary"]
    assert untrusted["fix"] == "halton-meter init --apps"
    assert code >= 1

    from halton_meter.install.ca import regenerate_ca

    run_fix(machine, untrusted["fix"] + " --no-start", real_meter=True)  # trust it again
    monkeypatch.setenv("HALTON_METER_HOME", str(machine.meter))
    old = anchor.read_bytes()
    regenerate_ca(Home(machine.meter))  # a new CA; the store still trusts the old one
    assert anchor.read_bytes() == old
    _, doc = doctor(machine)
    replaced = row(doc, "ca_trust")
    assert replaced["status"] == "fail"
    assert "holds a different (old) CA" in replaced["summary"]
    assert replaced["fix"].startswith("halton-meter init --apps")
    after = _fix_then_doctor(
        machine, replaced["fix"].replace("init --apps", "init --apps --no-start"), real_meter=True
    )
    assert row(after, "ca_trust")["status"] == "ok"


def _zero_serial_ca(path: Path) -> None:
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mitmproxy")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    # What an old mitmproxy wrote: serial 0 (the signature no longer matters to a parser).
    der = der.replace(b"\xa0\x03\x02\x01\x02\x02\x01\x01", b"\xa0\x03\x02\x01\x02\x02\x01\x00", 1)
    import base64

    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
    )


def test_ca_with_a_non_positive_serial(machine: Machine) -> None:
    ca_dir = machine.meter / "mitmproxy"
    _zero_serial_ca(ca_dir / "mitmproxy-ca-cert.pem")
    code, doc = doctor(machine)
    serial = row(doc, "ca_serial")
    assert serial["status"] == "warn" and "serial number is 0" in serial["summary"]
    assert serial["fix"] == (
        f"halton-meter stop; rm -rf {ca_dir}; halton-meter init --apps"
        "   # or: halton-meter stop && halton-meter init --regenerate-ca"
    )
    after = _fix_then_doctor(machine, serial["fix"])
    assert not ca_dir.exists()
    assert meter_calls(machine) == ["halton-meter stop", "halton-meter init --apps"]
    assert row(after, "ca_serial")["status"] != "warn"
    _hm(machine, "init", "--no-start")  # a fresh CA from mitmproxy
    _, doc = doctor(machine)
    assert row(doc, "ca_serial")["status"] == "ok"


# -- elevation and persistence ---------------------------------------------------------------------


def test_non_interactive_elevation_info(machine: Machine) -> None:
    _, doc = doctor(machine, **machine.standins("sudo"))
    elevation = row(doc, "elevation")
    assert elevation["status"] == "ok"
    if os.geteuid() == 0:
        assert elevation["summary"] == "init can elevate without a prompt: running as root."
    else:  # the stand-in sudo has no cached credentials
        assert elevation["summary"].startswith("--non-interactive cannot elevate")
        assert elevation["fix"] == "sudo -v && halton-meter init --apps --non-interactive"


_SYSTEMCTL = """d="{state}"
case "$2" in
  show-environment) [ -f "$d/env" ] && cat "$d/env"; exit 0;;
  unset-environment) rm -f "$d/env";;
  is-enabled) s=$(cat "$d/enabled" 2>/dev/null || echo disabled); echo "$s"; [ "$s" = enabled ];;
  enable) echo enabled > "$d/enabled";;
  *) exit 0;;
esac"""
_LOGINCTL = """d="{state}"
case "$1" in
  show-user) echo "Linger=$(cat "$d/linger" 2>/dev/null || echo no)";;
  enable-linger) echo yes > "$d/linger";;
esac"""


def test_persistence_across_reboot_systemd(machine: Machine) -> None:
    _, doc = doctor(machine, **machine.standins("systemctl"))  # no user manager answers
    none = row(doc, "persistence")
    assert none["status"] == "skip" and "no systemd user manager" in none["summary"]

    state = machine.root / "systemd-state"
    state.mkdir()
    write_exe(machine.bin / "systemctl", _SYSTEMCTL.format(state=state))
    write_exe(machine.bin / "loginctl", _LOGINCTL.format(state=state))
    path = {"PATH": f"{machine.bin}{os.pathsep}{os.environ['PATH']}"}
    _, doc = doctor(machine, **path)
    missing = row(doc, "persistence")
    assert (
        missing["status"] == "warn" and "no systemd user unit for this home" in missing["summary"]
    )
    assert missing["fix"] == "halton-meter uninstall && halton-meter init --apps"

    # The real install code writes the unit and enables it (through the stand-in).
    subprocess.run(
        [
            PYTHON,
            "-c",
            "from halton_meter.service import systemd; from halton_meter.core.paths "
            "import Home; systemd.install_unit(Home.resolve())",
        ],
        cwd=REPO,
        env=machine_env(machine, **path),
        check=True,
    )
    _, doc = doctor(machine, **path)
    linger = row(doc, "persistence")
    assert linger["status"] == "warn" and "linger is off" in linger["summary"]
    assert re.fullmatch(r"loginctl enable-linger \S+", linger["fix"])
    after = _fix_then_doctor(machine, linger["fix"], **path)
    assert row(after, "persistence")["status"] == "ok"

    (state / "enabled").write_text("disabled\n")
    _, doc = doctor(machine, **path)
    disabled = row(doc, "persistence")
    assert disabled["fix"] == "systemctl --user enable halton-meter.service"
    after = _fix_then_doctor(machine, disabled["fix"], **path)
    ok = row(after, "persistence")
    assert ok["status"] == "ok" and "enabled and linger is on" in ok["summary"]


# -- cloud ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason", "fix_start"),
    [
        ("unauthorised", "paused_unauthorised", "halton-meter cloud resume   # if the token"),
        (
            "forbidden",
            "paused_forbidden",
            "halton-meter cloud resume   # after the workspace owner",
        ),
        ("manual_pause", "paused_manual", "halton-meter cloud resume"),
    ],
)
def test_cloud_pause_classification(
    machine: Machine, kind: str, reason: str, fix_start: str
) -> None:
    from halton_meter.cloud import state as cloud

    home = Home(machine.meter)
    cloud.apply(home, cloud.Event(cloud.CONNECTED, machine_id="m1", key_id="k1"))
    _, doc = doctor(machine)
    assert row(doc, "cloud_paused")["status"] == "ok"
    cloud.apply(home, cloud.Event(kind, error="HTTP error", key_id="k1"))
    _, doc = doctor(machine)
    paused = row(doc, "cloud_paused")
    assert paused["status"] == "warn" and reason in paused["summary"]
    assert paused["fix"].startswith(fix_start)
    if reason == "paused_forbidden":
        assert "do not cloud connect" in paused["fix"]
    assert row(doc, "cloud_sync")["status"] == "skip"


def test_cloud_transient_error_needs_no_action(machine: Machine) -> None:
    from halton_meter.cloud import state as cloud

    home = Home(machine.meter)
    cloud.apply(home, cloud.Event(cloud.CONNECTED, machine_id="m1", key_id="k1"))
    cloud.apply(
        home,
        cloud.Event(cloud.TRANSIENT_ERROR, error="cloud.http_503", at="2026-01-01T00:00:00+00:00"),
    )
    _, doc = doctor(machine)
    sync = row(doc, "cloud_sync")
    assert sync["status"] == "ok"
    assert "last_error cloud.http_503" in sync["summary"] and "No action needed" in sync["summary"]
    assert row(doc, "cloud_paused")["status"] == "ok"


# -- sentinel drift ---------------------------------------------------------------------------------


def test_legacy_gui_sentinel(machine: Machine) -> None:
    (machine.meter / "install-mode").write_text("gui\n")
    _, doc = doctor(machine)
    legacy = row(doc, "sentinel")
    assert legacy["status"] == "warn" and "gui" in legacy["summary"]
    assert legacy["fix"].startswith("halton-meter init --full")
    (machine.meter / "install-mode").write_text("apps\n")
    _, doc = doctor(machine)
    assert row(doc, "sentinel")["status"] == "ok"
    drift = row(doc, "surface_drift")  # apps, but no rc block or session env written
    assert drift["status"] == "warn" and drift["fix"].startswith("halton-meter init --apps")


def _mac(machine: Machine) -> dict[str, str]:
    return {
        "HALTON_METER_PLATFORM": "darwin",
        "PATH": f"{machine.bin}{os.pathsep}{os.environ['PATH']}",
    }


def test_persistence_across_reboot_launchd(machine: Machine) -> None:
    state = machine.root / "launchd-env"
    write_exe(machine.bin / "launchctl", _LAUNCHCTL.format(state=state))
    mac = _mac(machine)
    _, doc = doctor(machine, **mac)
    missing = row(doc, "persistence")
    plist = machine.home / "Library" / "LaunchAgents" / "com.haltonlabs.meter.plist"
    assert missing["status"] == "warn" and str(plist) in missing["summary"]
    assert missing["fix"] == "halton-meter uninstall && halton-meter init --apps"

    subprocess.run(  # the real install code (bootout + bootstrap through the stand-in)
        [
            PYTHON,
            "-c",
            "from halton_meter.service import launchd; from halton_meter.core.paths import Home; "
            "launchd.install_unit(Home.resolve())",
        ],
        cwd=REPO,
        env=machine_env(machine, **mac),
        check=True,
    )
    _, doc = doctor(machine, **mac)
    assert row(doc, "persistence")["status"] == "ok"

    (state / ".loaded").unlink()  # booted out
    _, doc = doctor(machine, **mac)
    unloaded = row(doc, "persistence")
    assert unloaded["status"] == "warn" and "not loaded" in unloaded["summary"]
    assert unloaded["fix"] == f"launchctl bootstrap gui/{os.getuid()} {plist}"
    after = _fix_then_doctor(machine, unloaded["fix"], **mac)
    assert row(after, "persistence")["status"] == "ok"


_SECURITY = """d="{state}"
case "$1" in
  verify-cert) exit "$(cat "$d/verify")";;
  find-certificate) cat "$d/found.pem";;
esac
exit 0"""


def test_keychain_untrusted_and_replaced_macos(machine: Machine, tmp_path: Path) -> None:
    from halton_meter.install.modes import write_sentinel

    _hm(machine, "init", "--no-start")  # the CA and the bundle
    write_sentinel(Home(machine.meter), "apps")
    cert = machine.meter / "mitmproxy" / "mitmproxy-ca-cert.pem"
    state = tmp_path / "keychain"
    state.mkdir()
    write_exe(machine.bin / "security", _SECURITY.format(state=state))
    mac = _mac(machine)

    old = tmp_path / "old-ca.pem"
    _zero_serial_ca(old)
    (state / "found.pem").write_text(old.read_text())  # only an old mitmproxy CA in there
    (state / "verify").write_text("1")
    _, doc = doctor(machine, **mac)
    replaced = row(doc, "ca_trust")
    assert replaced["status"] == "fail" and "holds a different (old) CA" in replaced["summary"]
    assert replaced["fix"] == "security delete-certificate -c mitmproxy; halton-meter init --apps"

    (state / "found.pem").write_text(cert.read_text())  # ours, but marked "Never Trust"
    _, doc = doctor(machine, **mac)
    untrusted = row(doc, "ca_trust")
    assert untrusted["status"] == "fail"
    assert "not trusted (security verify-cert exited 1)" in untrusted["summary"]
    assert untrusted["fix"] == (
        f"halton-meter init --apps   # then: security verify-cert -c {cert} -p ssl "
        "(exit 0 = trusted)"
    )
    (state / "verify").write_text("0")
    _, doc = doctor(machine, **mac)
    assert row(doc, "ca_trust")["status"] == "ok"


def test_elevation_without_root(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: the real sudo stand-in (no cached credentials) answers `sudo -n true`."""
    from halton_meter.doctor import deep_checks, deep_facts

    for key, value in machine.standins("sudo").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(deep_facts.os, "geteuid", lambda: 1000)
    view = deep_facts.elevation_view()
    assert view.how is None
    assert ["sudo", "-n", "true"] in machine.calls()
    finding = deep_checks.check_elevation(_with_elevation(view))  # type: ignore[arg-type]
    assert finding.status == "ok"
    assert finding.summary.startswith(
        "--non-interactive cannot elevate: osascript unavailable and sudo not pre-cached"
    )
    assert finding.fix == "sudo -v && halton-meter init --apps --non-interactive"
    write_exe(machine.bin / "sudo", 'if [ "$1" = "-n" ]; then exit 0; fi; exit 1')  # sudo -v ran
    cached = deep_facts.elevation_view()
    assert cached.how == "sudo"


def _with_elevation(view: object) -> object:
    class _Facts:
        elevation = view

    return _Facts()


def test_render_colours_rows_on_a_terminal() -> None:
    from halton_meter.doctor.doctor import render

    doc = {
        "state": "INCONSISTENT",
        "checks": [
            {"id": "a", "status": "ok", "summary": "fine", "fix": None},
            {"id": "bb", "status": "warn", "summary": "amber", "fix": "do x\ndo y"},
            {"id": "c", "status": "fail", "summary": "red", "fix": "do z"},
        ],
    }
    plain = render(doc).splitlines()
    assert plain[0] == "state: INCONSISTENT"
    assert plain[2:] == [
        "ok    a   fine",
        "WARN  bb  amber",
        "          fix: do x",
        "               do y",
        "FAIL  c   red",
        "          fix: do z",
    ]
    coloured = render(doc, color=True)
    assert "\x1b[33m" in coloured and "\x1b[31m" in coloured and "\x1b[32m" in coloured


def test_corrupt_config_and_store_are_rows_not_crashes(machine: Machine) -> None:
    (machine.meter / "config.toml").write_text("listen_host = [unclosed\n")
    (machine.meter / "db.sqlite").write_bytes(b"not a database" * 100)
    code, doc = doctor(machine)
    config = row(doc, "config")
    assert config["status"] == "fail" and config["reasons"] == ["config_invalid"]
    store = row(doc, "unattributed")
    assert store["status"] == "skip" and "cannot read" in store["summary"]
    assert code == 2

"""config.toml: validation messages, comment-preserving writes, the placeholder heal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hmtest import PYTHON

from halton_meter.core.config import (
    DEFAULT_BASE_URL,
    ConfigError,
    PlaceholderBaseURL,
    heal_placeholder_base_url,
    load_config,
    require_real_base_url,
    set_value,
    shipped_defaults_text,
)
from halton_meter.core.errors import EXIT_BAD_FILE
from halton_meter.core.paths import Home


def _write(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_config_file(hm_home: Path) -> None:
    cfg = load_config(Home.resolve())
    assert cfg.listen_host == "127.0.0.1" and cfg.api_host == "127.0.0.1"
    assert cfg.capture.body_max_bytes == 4 * 1024 * 1024
    assert cfg.cloud.base_url == DEFAULT_BASE_URL
    assert cfg.ports.edge is None and cfg.upstream.resolve == {}
    assert cfg.watchdog.loop_exits == 5 and cfg.watchdog.loop_window_s == 120


def test_shipped_defaults_are_commented_and_cover_every_section() -> None:
    text = shipped_defaults_text()
    for section in ("[ports]", "[capture]", "[upstream]", "[cloud]", "[watchdog]"):
        assert section in text
    assert text.count("#") > 20


def test_contract_keys_load(hm_home: Path) -> None:
    bundle = hm_home / "extra.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    _write(
        hm_home,
        f"""listen_host = "127.0.0.1"
api_host = "localhost"
[ports]
edge = 18081
[capture]
body_max_bytes = 1024
hosts = ["LLM.Example.org."]
[upstream]
resolve = {{ "api.anthropic.com:443" = "127.0.0.1:9443" }}
ca_bundle = "{bundle}"
[cloud]
base_url = "https://cloud.example.com/"
""",
    )
    cfg = load_config(Home.resolve())
    assert cfg.ports.edge == 18081 and cfg.ports.daemon is None
    assert cfg.capture.hosts == ("llm.example.org",)
    assert cfg.upstream.resolve == {"api.anthropic.com:443": "127.0.0.1:9443"}
    assert cfg.upstream.ca_bundle == bundle
    assert cfg.cloud.base_url == "https://cloud.example.com"


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [
        ("listen_host = \n", "not valid TOML", 1),
        ('[ports]\n# pin\nedge = "8081"\n', "[ports] edge", 3),
        ("[ports]\nedge = 70000\n", "between 1 and 65535", 2),
        ("[capture]\nbody_max_bytes = -1\n", "positive whole number", 2),
        ("[capture]\nstore_bodies = 1\n", "true or false", 2),
        ('[upstream]\nresolve = { "api.anthropic.com" = "x" }\n', "host:port", 2),
        ('[upstream]\nca_bundle = "/nonexistent/roots.pem"\n', "does not exist", 2),
        ('[cloud]\nbase_url = "ftp://x"\n', "http(s) URL", 2),
        ("listen_host = 5\n", "listen_host", 1),
        ('ports = "8081"\n', "must be a table", 1),
    ],
)
def test_each_kind_of_mistake_names_file_key_line_and_fix(
    hm_home: Path, text: str, needle: str, line: int
) -> None:
    path = _write(hm_home, text)
    with pytest.raises(ConfigError) as exc:
        load_config(Home.resolve())
    message = str(exc.value)
    assert f"{path}:{line}:" in message
    assert needle in message
    assert "Fix:" in message
    assert exc.value.exit_code == EXIT_BAD_FILE


def test_bad_config_from_the_cli_is_a_message_and_exit_code_not_a_traceback(
    hm_home: Path,
) -> None:
    _write(hm_home, "[ports]\nedge = 0\n")
    out = subprocess.run(
        [PYTHON, "-c", "from halton_meter.core.config import load_config; load_config()"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0  # a library call may raise; the CLI wraps it (below)
    cli = subprocess.run(
        [PYTHON, "-m", "halton_meter", "config", "check"], capture_output=True, text=True
    )
    assert cli.returncode == EXIT_BAD_FILE
    assert "Traceback" not in cli.stderr
    assert "[ports] edge" in cli.stderr and "config.toml:2" in cli.stderr


def test_unknown_keys_warn_but_load(hm_home: Path) -> None:
    _write(hm_home, 'listen_hots = "x"\n[capture]\nbody_max = 3\n')
    cfg = load_config(Home.resolve())
    assert any("listen_hots" in w for w in cfg.warnings)
    assert any("body_max" in w for w in cfg.warnings)


def test_set_value_keeps_comments_and_order_byte_for_byte(hm_home: Path) -> None:
    original = (
        '# my meter\nlisten_host = "127.0.0.1"  # keep loopback\n\n'
        "[capture]\n# big bodies are fine\nbody_max_bytes = 1024\n\n[cloud]\n"
        'base_url = "https://api.haltonmeter.com" # prod\n'
    )
    path = _write(hm_home, original)
    set_value(Home.resolve(), "capture", "body_max_bytes", 2048)
    assert path.read_text() == original.replace("= 1024", "= 2048")
    with pytest.raises(ConfigError, match="body_max_bytes"):
        set_value(Home.resolve(), "capture", "body_max_bytes", "big")
    assert path.read_text() == original.replace("= 1024", "= 2048")


@pytest.mark.parametrize("tld", [".test", ".example", ".invalid", ".local"])
def test_placeholder_base_url_refused_at_once_with_url_and_path(hm_home: Path, tld: str) -> None:
    path = _write(hm_home, f'[cloud]\nbase_url = "https://api.halton{tld}"\n')
    cfg = load_config(Home.resolve())
    with pytest.raises(PlaceholderBaseURL) as exc:
        require_real_base_url(cfg)
    assert f"https://api.halton{tld}" in str(exc.value)
    assert str(path) in str(exc.value)


def test_heal_rewrites_in_place_keeps_comments_logs_once_and_is_idempotent(
    hm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = (
        "# fleet config\n[cloud]\n# staging, do not ship\n"
        'base_url = "https://staging.halton.test"  # placeholder\nbatch_size = 10\n'
    )
    path = _write(hm_home, original)
    from halton_meter.core.logging import configure_logging

    configure_logging("test", json_lines=True)
    assert heal_placeholder_base_url(Home.resolve()) is True
    healed = path.read_text()
    assert healed == original.replace("https://staging.halton.test", DEFAULT_BASE_URL)
    assert heal_placeholder_base_url(Home.resolve()) is False
    assert path.read_text() == healed
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    healed_events = [e for e in events if e["event"] == "config.base_url.healed"]
    assert len(healed_events) == 1
    assert healed_events[0]["old"] == "https://staging.halton.test"
    assert healed_events[0]["path"] == str(path)
    require_real_base_url(load_config(Home.resolve()))  # no longer raises


def test_heal_leaves_a_real_url_and_a_missing_file_alone(hm_home: Path) -> None:
    assert heal_placeholder_base_url(Home.resolve()) is False
    assert not (hm_home / "config.toml").exists()
    path = _write(hm_home, '[cloud]\nbase_url = "https://eu.haltonmeter.com"\n')
    before = path.read_bytes()
    assert heal_placeholder_base_url(Home.resolve()) is False
    assert path.read_bytes() == before

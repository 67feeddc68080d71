"""The package installs from a wheel into a fresh virtualenv and runs from there.

Catches what an editable checkout hides: templates, shipped defaults and the Node preload
missing from the wheel, or the watchdog shadowing PyPI's `watchdog`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hmtest import REPO, clean_env


def _purelib(python: Path) -> str:
    return subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("halton_meter-*.whl")
    venv = tmp_path / "venv"
    # Dependencies come from the test environment; only our wheel is new in the venv.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (
        Path(
            subprocess.run(
                [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        / "deps.pth"
    ).write_text(site + "\n")
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        check=True,
        capture_output=True,
    )
    home = tmp_path / "home"
    env = clean_env(home)
    env.pop("PYTHONPATH", None)
    code = (
        "import halton_meter, halton_watchdog, importlib.util\n"
        "from importlib import resources\n"
        "from pathlib import Path\n"
        "assert 'site-packages' in halton_meter.__file__, halton_meter.__file__\n"
        "assert 'site-packages' in halton_watchdog.__file__\n"
        "spec = importlib.util.find_spec('watchdog')\n"
        "assert spec is None or spec.origin != halton_watchdog.__file__\n"
        "from halton_meter.core.config import shipped_defaults_text\n"
        "assert '[capture]' in shipped_defaults_text()\n"
        "from halton_meter.core.paths import Home\n"
        "from halton_meter.service.render import write_config\n"
        "conf = write_config(Home.resolve().ensure())\n"
        "text = Path(conf).read_text()\n"
        "assert 'halton_meter.daemon' in text and 'daemon.out.log' in text, text\n"
        "from halton_meter.install.env import ensure_node_preload\n"
        "assert ensure_node_preload(Home.resolve()).read_text().strip()\n"
        "print('ok')\n"
    )
    out = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr
    version = subprocess.run(
        [venv / "bin" / "halton-meter", "--version"], env=env, capture_output=True, text=True
    )
    assert version.stdout.strip() == "halton-meter 0.3.0", version.stderr

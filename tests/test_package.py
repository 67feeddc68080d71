import subprocess
import sys
from pathlib import Path

from hmtest import PYTHON

import halton_meter


def test_version_flag_prints_version() -> None:
    out = subprocess.run(
        [PYTHON, "-m", "halton_meter", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"halton-meter {halton_meter.__version__}"
    assert halton_meter.__version__ == "0.3.0"


def test_watchdog_ships_under_a_name_that_cannot_shadow_pypi_watchdog(tmp_path: Path) -> None:
    # From a neutral cwd, `halton_watchdog` is ours and `watchdog` is not.
    code = (
        "import importlib.util, halton_watchdog;"
        "spec = importlib.util.find_spec('watchdog');"
        "print(halton_watchdog.__name__);"
        "print(spec is None or spec.origin != halton_watchdog.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.split() == ["halton_watchdog", "True"], out.stderr

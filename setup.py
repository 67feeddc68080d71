"""Package list lives here only because the watchdog/ folder ships as `halton_watchdog`.

That import name cannot shadow the PyPI `watchdog` library; pyproject.toml holds the rest.
"""

from setuptools import find_packages, setup

_meter = find_packages(include=["halton_meter", "halton_meter.*"])
_watchdog = ["halton_watchdog"] + [
    f"halton_watchdog.{name}" for name in find_packages(where="watchdog")
]

setup(
    packages=_meter + _watchdog,
    package_dir={"halton_watchdog": "watchdog"},
)

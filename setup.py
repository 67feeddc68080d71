"""Package list lives here only because two folders ship under other import names.

watchdog/ ships as `halton_watchdog` (that name cannot shadow the PyPI `watchdog` library)
and config/ (the shipped, commented defaults) as `halton_meter.shipped_config`.
pyproject.toml holds the rest.
"""

from setuptools import find_packages, setup

_meter = find_packages(include=["halton_meter", "halton_meter.*"])
_watchdog = ["halton_watchdog"] + [
    f"halton_watchdog.{name}" for name in find_packages(where="watchdog")
]

setup(
    packages=[*_meter, *_watchdog, "halton_meter.shipped_config"],
    package_dir={"halton_watchdog": "watchdog", "halton_meter.shipped_config": "config"},
    package_data={"halton_meter.shipped_config": ["*.toml"]},
)

"""Package list and data live here because three folders ship under other import names.

watchdog/ ships as `halton_watchdog` (that name cannot shadow the PyPI `watchdog` library),
config/ (the shipped, commented defaults) as `halton_meter.shipped_config`, and
supervisor.d/ (program templates) as `halton_meter.supervisor_templates`.
pyproject.toml holds the rest.
"""

from setuptools import find_packages, setup

_meter = find_packages(include=["halton_meter", "halton_meter.*"])
_watchdog = ["halton_watchdog"] + [
    f"halton_watchdog.{name}" for name in find_packages(where="watchdog")
]

setup(
    packages=[
        *_meter,
        *_watchdog,
        "halton_meter.shipped_config",
        "halton_meter.supervisor_templates",
    ],
    package_dir={
        "halton_watchdog": "watchdog",
        "halton_meter.shipped_config": "config",
        "halton_meter.supervisor_templates": "supervisor.d",
    },
    package_data={
        "halton_meter": ["py.typed", "install/node/*.cjs"],
        "halton_meter.shipped_config": ["*.toml"],
        "halton_meter.supervisor_templates": ["*.tmpl"],
    },
)

"""Run every benchmark and write one table of ratios against same-run baselines.

    .venv/bin/python scripts/bench/run_all.py [--quick] [--only daemon,edge,...]

Each ``bench_<name>.py`` writes ``out/<name>.json``; this script runs them one after the
other (never in parallel: they share two cores), then flattens their numbers into
``results/latest.md`` and ``results/latest.json``, which the README links.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
OUT = HERE / "out"
RESULTS = HERE / "results"

# Smaller runs for a smoke check; the defaults are the real measurements.
QUICK_ARGS = {
    "daemon": ["--quick"],
    "edge": ["--requests", "100", "--connections", "20", "--mib", "32"],
    "store": ["--rows", "100000", "--ingest-rows", "20000"],
    "supervision": ["--runs", "2"],
}


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, into)
    elif isinstance(value, int | float | str | bool) or value is None:
        into[prefix] = value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    OUT.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        extra = QUICK_ARGS.get(name, []) if args.quick else []
        print(f"== bench_{name} {' '.join(extra)}", flush=True)
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, str(HERE / f"bench_{name}.py"), *extra])
        elapsed = time.monotonic() - t0
        result_file = OUT / f"{name}.json"
        numbers: dict[str, Any] = {}
        if done.returncode == 0 and result_file.exists():
            _flatten("", json.loads(result_file.read_text()), numbers)
        runs[name] = {"returncode": done.returncode, "seconds": elapsed, "results": numbers}

    meta = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "quick": args.quick,
    }
    (RESULTS / "latest.json").write_text(json.dumps({"meta": meta, "benchmarks": runs}, indent=2))
    lines = [
        "# Benchmarks: latest run",
        "",
        f"{meta['when']} on {meta['machine']}, Python {meta['python']}"
        + (" (quick run)" if args.quick else ""),
        "",
        "Ratios compare against baselines measured in the same run (direct connection, bare",
        "mitmproxy, raw SQLite); absolute numbers depend on the machine.",
        "",
    ]
    for name, run in runs.items():
        lines += [f"## {name}", ""]
        if run["returncode"] != 0:
            lines += [f"FAILED (exit {run['returncode']})", ""]
            continue
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in run["results"].items()]
        lines.append("")
    (RESULTS / "latest.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'latest.md'}")
    return 0 if all(r["returncode"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# The test command (README, CI): set up, lint, type-check, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy halton_meter watchdog
exec .venv/bin/pytest "$@"

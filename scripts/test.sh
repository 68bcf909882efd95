#!/usr/bin/env bash
# Set up everything, then run the whole test suite (real Temporal, real Docker).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
.venv/bin/pytest -m "not own_process" --durations=25 "$@"
# Tests that need a process of their own (OpenTelemetry's global tracer provider is
# set once per process); exit code 5 means the arguments selected none of them.
.venv/bin/pytest -m own_process "$@" || [ $? -eq 5 ]

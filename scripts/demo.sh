#!/usr/bin/env bash
# Set up everything, start the embedded stack, and run a real agent end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m cli.devstack demo

#!/usr/bin/env bash
# The whole default test suite (slow tests excluded; run them with: scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/python -m ruff check src tests benchmarks
exec .venv/bin/python -m pytest "$@"

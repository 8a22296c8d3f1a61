#!/usr/bin/env bash
# The whole default test suite (slow tests excluded; run them with: scripts/test.sh -m slow).
# Two pytest workers with one torch thread each: on 2 cores that is faster than one process with
# two threads, and it stays fast when the machine is busy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m ruff check src tests benchmarks
exec .venv/bin/python -m pytest -n "${TESTTIME_TEST_WORKERS:-2}" "$@"

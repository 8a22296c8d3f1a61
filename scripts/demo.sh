#!/usr/bin/env bash
# The project's main job on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/testtime demo "$@"

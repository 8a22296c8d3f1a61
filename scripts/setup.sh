#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv, the CPU build of torch, the project in
# editable mode (with the test extras), and the Fashion-MNIST Debian package when apt is there.
# A second run checks a stamp and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.testtime-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        # torch 2.13.0 is a CPU wheel on this kind of machine; on other machines pip picks a build.
        .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
    fi
    .venv/bin/python -m pip install -q -e ".[test]"
    # Frost textures of the original corruption release ship as data files inside the
    # imagecorruptions wheel; its Python code is never imported (it fails on numpy 2).
    .venv/bin/python -m pip install -q --no-deps "imagecorruptions==1.1.2"
    echo "$want" > "$stamp"
fi
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
      || echo "setup: could not install dataset-fashion-mnist with apt; Fashion-MNIST tests will skip" >&2
fi

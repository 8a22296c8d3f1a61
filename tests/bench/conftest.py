"""Loading the scripts of benchmarks/ as modules (they import their sibling ``common``); a tiny bench config."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def benchmark_script():
    """``load(name)``: the module of ``benchmarks/<name>.py``."""

    def load(name: str):
        sys.path.insert(0, str(BENCHMARKS))  # its `from common import ...`
        try:
            spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        finally:
            sys.path.remove(str(BENCHMARKS))
        return mod

    return load


@pytest.fixture
def tiny_bench(tmp_path):
    """``write(name, protocols, tent_lrs)``: the path of a bench config of a few Fashion-MNIST images (preset
    ``demo``, 1 epoch) with rows ``source`` and ``tent`` (its lr candidates ``tent_lrs``), in ``tmp_path``."""

    def write(name: str, protocols: str, tent_lrs: str):
        path = tmp_path / f"{name}.yaml"
        path.write_text(TINY.format(name=name, protocols=protocols, tent_lrs=tent_lrs))
        return path

    return write


TINY = """
name: {name}
preset: demo
source:
  name: tiny
  threads: 1
  data: {{train_per_class: 12, test_per_class: 3, heldout_per_class: 2}}
  supervised: {{epochs: 1, batch_size: 32}}
corruptions: [gaussian_noise]
severities: [5]
eval_seeds: [0]
heldout: [spatter]
batch_size: 10
protocols: [{protocols}]
methods:
  source: {{}}
  tent:
    candidates: {{lr: [{tent_lrs}]}}
"""

"""benchmarks/bench_kernels.py: the supervised stage trained twice on the same kernels gives the same bits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) missing")
def test_same_kernels_same_weights(tmp_path, benchmark_script):
    mod = benchmark_script("bench_kernels")
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        out.mkdir()
        mod.worker("demo", 13, 1.0, out)  # 130 Fashion-MNIST images: 1 step of batch 128 (the rest dropped)
    a, b = (json.loads((r / "result.json").read_text()) for r in runs)
    assert a["steps"] == b["steps"] == 1 and a["weights_sha256"] == b["weights_sha256"]
    assert a["images_sha256"] == b["images_sha256"] and len(a["weights_sha256"]) == 64
    assert mod.distance(runs[0], runs[1]) == (0.0, 0.0)


def test_bad_arguments_fail_before_any_training(benchmark_script, capsys):
    mod = benchmark_script("bench_kernels")
    for bad, name in ((["--per-class", "0"], "--per-class"), (["--epochs", "0"], "--epochs")):
        with pytest.raises(SystemExit):
            mod.main(bad)
        assert name in capsys.readouterr().err

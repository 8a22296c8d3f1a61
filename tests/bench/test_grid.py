"""The baselines grid on a tiny Fashion-MNIST preset (real data from the Debian package)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testtime.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
TINY = [
    "--preset", "demo", "--set", "data.train_per_class=12", "--set", "data.test_per_class=3",
    "--set", "supervised.epochs=1", "--set", "supervised.batch_size=32",
    "--set", "eval.corruptions=[gaussian_noise]", "--set", "threads=1",
]


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (Debian package dataset-fashion-mnist) not installed")
def test_bench_runs_baselines_on_the_same_subset_and_protocol(tmp_path, capsys):
    rc = main(["bench", *TINY, "--run-dir", str(tmp_path), "--methods", "source,bn,tent", "--batch-size", "10",
               "--method-set", "tent.lr=1e-4", "--quiet"])
    assert rc == 0
    out = json.loads((tmp_path / "bench-episodic.json").read_text())
    assert set(out["rows"]) == {"source", "bn", "tent"}
    for row in out["rows"].values():
        assert row["total"] == {"gaussian_noise": 30}
        assert 0 <= row["mean_accuracy"] <= 100
    assert out["rows"]["tent"]["settings"] == {"lr": 1e-4}
    # cost, measured by hooks: TENT one forward and one backward pass per image, the source model no backward
    assert out["rows"]["tent"]["cost"]["forward_per_image"] == 1.0
    assert out["rows"]["tent"]["cost"]["backward_per_image"] == 1.0
    assert out["rows"]["source"]["cost"]["backward_per_image"] == 0.0
    assert out["rows"]["source"]["cost"]["images_per_s"] > 0
    assert "protocol=episodic" in out["protocol"] and "batch_size=10" in out["protocol"]
    assert (tmp_path / "supervised.safetensors").exists()  # trained once, then reused
    printed = capsys.readouterr().out
    assert "| tent |" in printed
    # episodic + one step predicted before the update is exactly test-batch BN; "after" is not
    assert out["rows"]["tent"]["correct"] == out["rows"]["bn"]["correct"]
    rc = main(["bench", *TINY, "--run-dir", str(tmp_path), "--methods", "tent", "--batch-size", "10",
               "--method-set", "tent.lr=0.5", "--order", "after", "--quiet"])
    after = json.loads((tmp_path / "bench-episodic-after.json").read_text())
    assert rc == 0 and "predict=after update" in after["protocol"]
    assert after["rows"]["tent"]["order"] == "after"
    # a later run under the same protocol adds its rows to the file instead of replacing it
    rc = main(["bench", *TINY, "--run-dir", str(tmp_path), "--methods", "source", "--batch-size", "10", "--quiet"])
    merged = json.loads((tmp_path / "bench-episodic.json").read_text())
    assert rc == 0 and set(merged["rows"]) == {"source", "bn", "tent"}
    assert merged["rows"]["tent"]["settings"] == {"lr": 1e-4}
    assert "--methods source" in merged["rows"]["source"]["command"]


@pytest.mark.parametrize("argv,match", [
    (["--methods", "tentt"], "unknown method 'tentt'"),
    (["--methods", "tent", "--method-set", "tent-lr=1"], "METHOD.FIELD=VALUE"),
    (["--methods", "tent", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--methods", "cta"], "evaluated by `testtime cta`"),
])
def test_bench_bad_input_fails_before_work(tmp_path, capsys, argv, match):
    if argv == ["--methods", "cta"] and not FMNIST.exists():
        pytest.skip("this check runs once the data is found: needs Fashion-MNIST (dataset-fashion-mnist)")
    rc = main(["bench", *TINY, "--run-dir", str(tmp_path), *argv])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "supervised.safetensors").exists()

"""Long loops print progress lines (issue 9, must-fix 7): training, evaluation, the first decode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import testtime.bench.runner as runner
from testtime.bench import Domain, evaluate, get_protocol
from testtime.data import imagefolder, load_dataset
from testtime.data.split import ImageSplit
from testtime.methods import create_method
from testtime.models import create_model
from testtime.train.pipeline import PipelineConfig, config_from_dict, run_stages


@pytest.fixture
def every_call(monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.0)


def test_evaluation_prints_progress(every_call):
    rng = np.random.default_rng(0)
    d = Domain("fog", rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), np.arange(12) % 4)
    lines: list[str] = []
    evaluate(create_method("bn", create_model("resnet8", 4)), [d], get_protocol("episodic", batch_size=4),
             log=lines.append)
    assert [line.split(" (")[0] for line in lines] == ["[bn] batch 0/3", "[bn] batch 1/3", "[bn] batch 2/3"]
    assert "running accuracy" in lines[-1]


def test_training_prints_progress_between_log_every_lines(every_call, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(48, dtype=np.int64) % 2
    split = ImageSplit(rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8), labels, ("a", "b"), "toy")
    tiny = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "log_every": 1000}
    cfg = config_from_dict(PipelineConfig, {"supervised": tiny})
    lines: list[str] = []
    run_stages(cfg, tmp_path, split, stages=("supervised",), log=lines.append)
    steps = [line for line in lines if line.startswith("[supervised] step")]
    assert any(s.startswith("[supervised] step 1/3 ") for s in steps) and any("step 2/3" in s for s in steps)


def test_first_decode_of_a_large_folder_shows_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(imagefolder, "PROGRESS_MIN", 4)
    for c in range(2):
        (tmp_path / "test" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / "test" / f"c{c}" / f"{i}.png")
    load_dataset("imagefolder", root=tmp_path)
    assert "decoding images" in capsys.readouterr().err


FMNIST = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
TINY = ["--set", "data.train_per_class=12", "--set", "data.test_per_class=3", "--set", "supervised.epochs=1",
        "--set", "supervised.batch_size=32", "--set", "eval.corruptions=[gaussian_noise]", "--set", "threads=1"]


@pytest.mark.skipif(not __import__("os").path.exists(FMNIST), reason="Fashion-MNIST (Debian package) not installed")
def test_train_with_the_demo_preset_prints_steps(every_call, tmp_path, capsys):
    from testtime.cli import main

    assert main(["train", "supervised", "--preset", "demo", *TINY, "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[supervised] step 1/3 " in out and "[supervised] step 2/3 " in out

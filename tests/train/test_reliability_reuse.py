"""A stage's checkpoint is reused only with the settings that produced it (issue 9, must-fix 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from testtime.commands.train import write_run_config
from testtime.data.split import ImageSplit
from testtime.train.checkpoint import save_checkpoint
from testtime.train.pipeline import PipelineConfig, config_from_dict, run_stages

TINY = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "log_every": 100}


def _split(n: int = 32) -> ImageSplit:
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int64) % 2
    imgs = (rng.integers(0, 60, (n, 8, 8, 3)) + labels[:, None, None, None] * 150).astype(np.uint8)
    return ImageSplit(imgs, labels, ("dark", "light"), f"toy{n}")


def _cfg(**data) -> PipelineConfig:
    return config_from_dict(PipelineConfig, {"supervised": TINY, "threads": 1, "data": data})


def test_finished_checkpoint_of_other_data_settings_is_refused(tmp_path):
    run_stages(_cfg(train_per_class=16), tmp_path, _split(), stages=("supervised",), log=None)
    msgs = []
    run_stages(_cfg(train_per_class=16), tmp_path, _split(), stages=("supervised",), log=msgs.append)
    assert any("final checkpoint exists, loaded" in m for m in msgs)  # same settings: reused
    changed = r"supervised.safetensors was trained with other settings: data_config.train_per_class was 16, now 8"
    with pytest.raises(ValueError, match=changed):
        run_stages(_cfg(train_per_class=8), tmp_path, _split(), stages=("supervised",), log=None)
    with pytest.raises(ValueError, match="train_set"):  # the same config, another training set
        run_stages(_cfg(train_per_class=16), tmp_path, _split(48), stages=("supervised",), log=None)
    with pytest.raises(ValueError, match="model_config"):
        cfg = config_from_dict(PipelineConfig, {"supervised": TINY, "data": {"train_per_class": 16},
                                                "model": {"norm": "group"}})
        run_stages(cfg, tmp_path, _split(), stages=("supervised",), log=None)


def test_resume_with_another_thread_count_is_refused(tmp_path):
    save_checkpoint(tmp_path / "supervised.resume", {"x": torch.zeros(1)}, {"threads": 3, "step": 1})
    with pytest.raises(ValueError, match="written with 3 CPU threads and this run uses 1"):
        run_stages(_cfg(), tmp_path, _split(), stages=("supervised",), log=None)


def test_resume_written_on_other_cpu_kernels_is_refused(tmp_path):
    """A .resume from a CPU whose torch kernels differ (another instruction set) is refused before any
    training, not resumed into weights that no uninterrupted run gives."""
    save_checkpoint(tmp_path / "supervised.resume", {"x": torch.zeros(1)}, {"threads": 1, "step": 1})
    side_path = tmp_path / "supervised.resume.json"
    side = json.loads(side_path.read_text())
    here = str(torch.backends.cpu.get_cpu_capability())
    assert side["environment"]["cpu_capability"] == here
    other = "AVX512" if here != "AVX512" else "AVX2"
    side["environment"]["cpu_capability"] = other
    side_path.write_text(json.dumps(side))
    with pytest.raises(ValueError, match=f"torch kernels are {other} and this one's are {here}"):
        run_stages(_cfg(), tmp_path, _split(), stages=("supervised",), log=None)


def test_preset_threads_overriding_omp_num_threads_is_said(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    msgs: list[str] = []
    before = torch.get_num_threads()
    try:
        run_stages(_cfg(), tmp_path, _split(), stages=("supervised",), log=msgs.append)
    finally:
        torch.set_num_threads(before)
    assert any("threads=1 from the config overrides OMP_NUM_THREADS=2" in m for m in msgs)
    side = json.loads((tmp_path / "supervised.json").read_text())
    assert side["meta"]["threads"] == 1


def test_config_json_is_not_overwritten_by_another_config(tmp_path):
    first = write_run_config(tmp_path, _cfg(train_per_class=16), ["train"])
    text = first.read_text()
    assert write_run_config(tmp_path, _cfg(train_per_class=16), ["train"]) == first and first.read_text() == text
    other = write_run_config(tmp_path, _cfg(train_per_class=8), ["train"])
    assert other != first and other.name.startswith("config-") and first.read_text() == text
    assert json.loads(other.read_text())["config"]["data"]["train_per_class"] == 8


FMNIST = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
CLI_TINY = ["--preset", "demo", "--set", "data.test_per_class=3", "--set", "supervised.epochs=1",
        "--set", "supervised.batch_size=32", "--set", "threads=1", "--quiet"]


@pytest.mark.skipif(not __import__("os").path.exists(FMNIST), reason="Fashion-MNIST (Debian package) not installed")
def test_cli_rerun_with_other_data_fails_before_writing_anything(tmp_path, capsys):
    from testtime.cli import main

    run = ["train", "supervised", *CLI_TINY, "--run-dir", str(tmp_path)]
    assert main([*run, "--set", "data.train_per_class=12"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main([*run, "--set", "data.train_per_class=13"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data_config.train_per_class was 12, now 13" in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # config.json untouched too

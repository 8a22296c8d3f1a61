"""Presets, typed configs and overrides; a tiny end-to-end stage run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testtime.commands.train import list_presets, load_config
from testtime.data.split import ImageSplit
from testtime.train.pipeline import PipelineConfig, PipelineData, config_from_dict, per_class_rows, run_stages


@pytest.mark.parametrize("preset", ["cifar10-cpu", "cifar10-cpu-small", "fmnist-cpu", "paper", "demo"])
def test_every_shipped_preset_builds_a_typed_config(preset):
    assert preset in list_presets()
    cfg = load_config(preset, None, [])
    assert isinstance(cfg, PipelineConfig) and cfg.name == preset
    assert cfg.ssl.tau == 0.01 and cfg.align.weights.tau == 0.5  # the paper's temperatures


def test_paper_preset_has_table3_settings():
    cfg = load_config("paper", None, [])
    assert cfg.model.arch == "resnet50"
    for t in (cfg.supervised, cfg.ssl.train, cfg.align.train):
        assert (t.epochs, t.batch_size, t.lr, t.final_lr, t.warmup_epochs) == (50, 256, 5e-4, 1e-6, 2)
    assert (cfg.ttt.lr, cfg.ttt.steps, cfg.ttt.batch_size) == (1e-6, 20, 128)


def test_overrides_and_bad_keys():
    cfg = load_config("cifar10-cpu", None, ["ssl.train.epochs=7", "ttt.lr=1e-4", "align.weights.con_weight=1"])
    assert cfg.ssl.train.epochs == 7 and cfg.ttt.lr == 1e-4 and cfg.align.weights.con_weight == 1.0
    with pytest.raises(ValueError, match="unknown key.*ssl.bogus"):
        load_config("cifar10-cpu", None, ["ssl.bogus=1"])
    with pytest.raises(ValueError, match="ttt.steps: expected an integer"):
        load_config("cifar10-cpu", None, ["ttt.steps=abc"])
    with pytest.raises(ValueError, match="ssl.init"):
        config_from_dict(PipelineConfig, {"ssl": {"init": "imagenet"}})
    from testtime.cli import UserError

    with pytest.raises(UserError, match="unknown preset 'nope'; valid: cifar10-cpu"):
        load_config("nope", None, [])


def test_per_class_rows_are_seeded_and_disjoint():
    labels = np.repeat(np.arange(3), 10)
    a = per_class_rows(labels, 4, seed=0)
    b = per_class_rows(labels, 4, seed=1, exclude=a)
    assert len(a) == 12 and len(b) == 12 and not set(a) & set(b)
    assert np.array_equal(a, per_class_rows(labels, 4, seed=0))


def test_tiny_pipeline_runs_every_stage_and_writes_the_bundle(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(64, dtype=np.int64) % 2
    imgs = (rng.integers(0, 60, (64, 16, 16, 3)) + labels[:, None, None, None] * 150).astype(np.uint8)
    split = ImageSplit(imgs, labels, ("dark", "light"), "toy")
    tiny = {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "log_every": 100}
    cfg = config_from_dict(
        PipelineConfig,
        {
            "supervised": tiny,
            "ssl": {"train": tiny},
            "align": {"train": tiny},
            "probe": {"train": tiny},
            "joint": {"train": tiny},
        },
    )
    m = run_stages(cfg, tmp_path, PipelineData(split, split, split), log=None)
    assert m.aligned is not None and m.probe is not None and m.joint is not None
    for stage in ("supervised", "ssl", "align", "probe", "joint", "cta"):
        assert (tmp_path / f"{stage}.safetensors").is_file() and (tmp_path / f"{stage}.json").is_file()
    from testtime.api import load_bundle

    assert load_bundle(tmp_path / "cta").head.out_features == 2


def test_cli_bad_input_is_one_line_before_any_work(tmp_path, capsys):
    from testtime.cli import main

    assert main(["train", "supervised", "--preset", "nope", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset 'nope'" in err[0]
    assert main(["cta", "--preset", "cifar10-cpu", "--set", "ssl.tau=-", "--run-dir", str(tmp_path / "r")]) == 2
    assert "ssl.tau: expected a number" in capsys.readouterr().err
    assert (
        main(["cta", "--preset", "cifar10-cpu", "--set", "data.root_env=null", "--run-dir", str(tmp_path / "r")]) == 2
    )
    assert "data.root" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_input(tmp_path, capsys):
    """The shipped demo (its bench config and preset), shrunk by --set: table printed, report written."""
    from testtime.cli import main

    tiny = ["supervised.epochs=1", "ssl.train.epochs=1", "align.train.epochs=1", "data.train_per_class=20",
            "data.test_per_class=5", "corruptions=[gaussian_noise,fog]", "methods.cta.settings.steps=1"]
    run = tmp_path / "demo"
    assert main(["demo", "--run-dir", str(run), "--quiet"] + [a for t in tiny for a in ("--set", t)]) == 0
    out = capsys.readouterr().out
    for col in ("source", "bn", "tent", "eata", "sar", "shot-im", "lame", "cta"):
        assert f" {col} |" in out.split("| corruption |")[1].split("\n")[0] + " |"
    assert f"report: {run / 'report' / 'report.md'}" in out
    md = (run / "report" / "report.md").read_text()
    assert "| gaussian_noise |" in md and "Δ (cta − other)" in md and "![accuracy per corruption]" in md
    assert "![iterations]" in md and (run / "report" / "iterations-0.png").is_file()  # the paper's Fig. 3
    assert (run / "align.safetensors").is_file() and (run / "results.sqlite").is_file()
    from testtime.store import ResultStore

    with ResultStore.open(run) as store:
        curves = store.curves(label="cta")
    assert sorted(c["corruption"] for c in curves) == ["fog", "gaussian_noise"]
    assert all(len(c["accuracies"]) == 11 and all(0 <= a <= 100 for a in c["accuracies"]) for c in curves)


def test_bad_key_names_the_closest_valid_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) ttt.stpes; valid: .*\(did you mean 'ttt.steps'\?\)"):
        load_config("demo", None, ["ttt.stpes=3"])
    with pytest.raises(ValueError, match="supervised.epochs: expected a number, got 'many'"):
        load_config("demo", None, ["supervised.epochs=many"])


def test_eval_seed_draws_a_new_test_subset_disjoint_from_the_heldout_one():
    from testtime.config import DataConfig
    from testtime.data.experiment import _subsets

    labels = np.repeat(np.arange(3), 20)
    images = np.broadcast_to(np.arange(60, dtype=np.uint8)[:, None, None, None], (60, 4, 4, 3)).copy()  # row ids
    pool = ImageSplit(images, labels, ("a", "b", "c"), "pool")
    cfg = DataConfig(test_per_class=5, heldout_per_class=4)

    def rows(split):
        return set(split.images[:, 0, 0, 0].tolist())

    test0, held = _subsets(pool, cfg, None)
    assert rows(test0) == rows(_subsets(pool, cfg, 0)[0])  # eval seed = data.seed: the subset of earlier runs
    assert not rows(test0) & rows(held)
    for s in (1, 2):
        test_s, held_s = _subsets(pool, cfg, s)
        assert rows(held_s) == rows(held)  # the held-out subset does not move with the eval seed
        assert not rows(test_s) & rows(held) and len(rows(test_s)) == 15
        assert rows(test_s) != rows(test0)


_FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


@pytest.mark.slow
@pytest.mark.skipif(not _FMNIST.exists(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) missing")
def test_train_eval_clean_prints_every_models_accuracy_on_the_whole_test_split(tmp_path, capsys):
    import re

    from testtime.cli import main

    argv = ["train", "supervised", "--preset", "demo", "--run-dir", str(tmp_path / "r"), "--quiet", "--eval-clean",
            "--set", "threads=1", "--set", "data.train_per_class=12", "--set", "supervised.epochs=1",
            "--set", "supervised.batch_size=32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(10000 images)" in out
    rows = re.findall(r"^\| supervised \| (\d+\.\d\d) \| (\d+\.\d\d) \|$", out, flags=re.M)
    assert len(rows) == 1 and all(0 <= float(v) <= 100 for v in rows[0])

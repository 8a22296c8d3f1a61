"""Bench settings that used to give silently wrong results (issue 9)."""

from __future__ import annotations

import pytest

from testtime.bench.grid import resolve_protocol
from testtime.bench.protocols import get_protocol
from testtime.commands.train import load_config


def test_single_sample_keeps_batch_size_1_whatever_the_preset():
    cfg = load_config("demo", None, [])
    assert cfg.ttt.batch_size == 125
    proto = resolve_protocol(cfg, "single-sample", None, None)
    assert proto.batch_size == 1 and "batch_size=1," in proto.describe()
    assert resolve_protocol(cfg, None, None, None).batch_size == 125  # the preset's own protocol keeps its size
    assert resolve_protocol(cfg, "continual", 7, None).batch_size == 7


def test_single_sample_with_another_batch_size_is_an_error():
    with pytest.raises(ValueError, match="'single-sample' has batch_size 1 by definition, got batch_size=125"):
        get_protocol("single-sample", batch_size=125)
    cfg = load_config("demo", None, [])
    with pytest.raises(ValueError, match="single-sample"):
        resolve_protocol(cfg, "single-sample", 10, None)


@pytest.mark.parametrize("items,match", [
    (["tent.lr=abc"], "tent.lr: expected a number, got 'abc'"),
    (["tent.lr=0"], "tent.lr must be > 0"),
    (["tent.steps=-1"], "tent.steps must be >= 1"),
    (["tent.bogus=1"], "unknown key.*tent.bogus"),
    (["tent.momentum=3"], "tent.momentum must be >= 0 and <= 1"),
    (["eata.lr=1e-3"], "--method-set for eata, which is not in the methods run"),
])  # fmt: skip
def test_method_set_is_checked_before_any_work(tmp_path, monkeypatch, capsys, items, match):
    from testtime.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--preset", "demo", "--methods", "tent", "--run-dir", str(tmp_path / "r")]
    for it in items:
        argv += ["--method-set", it]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("testtime bench: error:")
    import re

    assert re.search(match, err[0]), err
    assert not (tmp_path / "r").exists()


def test_bench_single_sample_with_a_batch_size_is_one_line(tmp_path, capsys):
    from testtime.cli import main

    rc = main(["bench", "--preset", "demo", "--methods", "bn", "--protocol", "single-sample", "--batch-size", "8",
               "--run-dir", str(tmp_path / "r")])
    assert rc == 2 and "batch_size 1 by definition" in capsys.readouterr().err

"""benchmarks/bench_heldout_length.py: held-out choices made again on a longer held-out stream (real Fashion-MNIST)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testtime.bench.spec import load_bench_config
from testtime.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")

ARGS = ("tiny-length", "reset-per-domain, episodic", "1.0e-4, 1.0e-3, 1.0e-2")


def test_longer_sets_only_the_heldout_size(benchmark_script, tiny_bench):
    bench = load_bench_config(str(tiny_bench(*ARGS)))
    long = benchmark_script("bench_heldout_length").longer(bench, 7)
    assert long.source["data"] == {"train_per_class": 12, "test_per_class": 3, "heldout_per_class": 7}
    assert long.source["supervised"] == bench.source["supervised"] and long.methods == bench.methods
    assert bench.source["data"]["heldout_per_class"] == 2  # the grid's config is left as it was


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) missing")
@pytest.mark.slow
def test_choices_on_the_grid_and_the_longer_heldout(tmp_path, capsys, benchmark_script, tiny_bench):
    cfg, run = tiny_bench(*ARGS), tmp_path / "run"
    assert main(["bench", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    cached = json.loads((run / "selection.json").read_text())
    capsys.readouterr()
    mod = benchmark_script("bench_heldout_length")
    assert mod.main([str(run), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    # the default length is the test subset's: 3 per class, against the grid's 2 (10 classes)
    assert any(x.startswith("held-out images per corruption: grid 20, longer 30") for x in out)
    (line,) = [x for x in out if x.startswith("tent")]  # episodic is not a stream protocol: left out
    assert "reset-per-domain" in line and line.split()[-2] in ("moves", "stays")
    assert [x.split(":")[0].strip() for x in out if x.startswith("    ")] == ["2/class", "3/class"]
    # the three candidates at the longer length are cached beside the grid's (whose key holds the size)
    assert len(json.loads((run / "selection.json").read_text())) == len(cached) + 3
    assert mod.main([str(tmp_path / "nowhere"), "--config", str(cfg)]) == 2
    assert "run_dir:" in capsys.readouterr().err
    (tmp_path / "untrained").mkdir()  # a run dir without the supervised model that tent adapts: refused
    assert mod.main([str(tmp_path / "untrained"), "--config", str(cfg)]) == 2
    assert "--only: tent needs supervised in" in capsys.readouterr().err
    assert mod.main([str(run), "--config", str(cfg), "--only", "nope"]) == 2
    assert "--only: ['nope'] not labels of tiny-length" in capsys.readouterr().err
    assert mod.main([str(run), "--config", str(cfg), "--protocols", "weekly"]) == 2
    assert "--protocols: ['weekly']; valid:" in capsys.readouterr().err
    assert mod.main([str(run), "--config", str(cfg), "--per-class", "0"]) == 2
    assert "--per-class: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(("init", "label", "needs"), [
    ("scratch", "clust3", []),  # the papers' joint training: its own checkpoint is all it loads
    ("supervised", "clust3", ["supervised"]),  # fine-tuned from the supervised model: that is loaded too
    ("scratch", "rec-ttt", ["supervised"]),  # ReC-TTT always starts from the supervised model
    ("supervised", "tent", ["supervised"]),
])
def test_untrained_names_the_supervised_model_a_peer_starts_from(tmp_path, benchmark_script, tiny_bench,
                                                                  init, label, needs):
    path = tiny_bench(*ARGS)
    text = path.read_text().replace("  supervised: {", f"  peer_train: {{init: {init}}}\n  supervised: {{")
    path.write_text(text + "  clust3: {}\n  rec-ttt: {}\n")
    for kind in ("clust3", "rec-ttt"):  # the peers' own checkpoints exist; the supervised one does not
        (tmp_path / f"{kind}.safetensors").write_bytes(b"")
        (tmp_path / f"{kind}.json").write_text("{}")
    mod = benchmark_script("bench_heldout_length")
    assert mod.untrained(tmp_path, load_bench_config(str(path)), label) == needs

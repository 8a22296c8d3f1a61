"""benchmarks/bench_heldout_edges.py: one candidate beyond a held-out choice at the edge (real Fashion-MNIST)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testtime.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


def test_beyond_steps_past_the_edge_at_the_ratio_of_the_edge_pair(benchmark_script):
    beyond = benchmark_script("bench_heldout_edges").beyond
    assert beyond([1e-4, 1e-3, 1e-2], 1e-2) == pytest.approx(1e-1)
    assert beyond([1e-5, 1e-4, 1e-3, 1e-2], 1e-5) == pytest.approx(1e-6)
    assert beyond([2.5e-2, 2.5e-4, 2.5e-3], 2.5e-2) == pytest.approx(2.5e-1)  # order of the list does not matter
    assert beyond([1, 2, 4], 4) == 8 and beyond([0, 1, 2], 0) == -1  # a zero edge: the arithmetic step


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) missing")
@pytest.mark.slow
def test_a_choice_at_the_edge_gets_one_candidate_more(tmp_path, capsys, benchmark_script, tiny_bench):
    cfg, run = tiny_bench("tiny-edges", "episodic", "1.0e-9, 1.0e-8, 1.0e-7"), tmp_path / "run"
    assert main(["bench", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    cached = json.loads((run / "selection.json").read_text())
    capsys.readouterr()
    mod = benchmark_script("bench_heldout_edges")
    assert mod.main([str(run), "--config", str(cfg)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("tent")]
    # lrs of 1e-9..1e-7 leave the model as it is: a tie, the first listed (1e-9, the lower edge) wins; 1e-10 is
    # added, ties again and the choice stays; its held-out mean is cached beside the grid's three
    assert '{"lr":1e-09}' in line and "lr=1e-10" in line and line.endswith("s)") and "stays" in line
    assert len(json.loads((run / "selection.json").read_text())) == len(cached) + 1
    assert mod.main([str(tmp_path / "nowhere")]) == 2
    assert mod.main([str(run), "--config", str(cfg), "--only", "nope"]) == 2
    assert "--only: ['nope'] not labels of tiny-edges" in capsys.readouterr().err

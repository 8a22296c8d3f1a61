"""``testtime report RUN_DIR``: files written, plots valid, bad input refused in one line."""

from __future__ import annotations

import json
import sqlite3

import pytest
from report_fixtures import cell, hand_store

from testtime.cli import main
from testtime.store import ResultStore

PNG = b"\x89PNG\r\n\x1a\n"


def run_dir_with_store(tmp_path):
    run = tmp_path / "run"
    store = ResultStore.open(run, create=True)
    for r in hand_store().cells():
        store.put(r)
    for lr in (1e-6, 1e-5):
        for c, base in (("spatter", 30.0), ("saturate", 60.0)):
            store.put_curve(cell("cta", "cta", {"lr": lr}, c, 0, 0.0,
                                 accuracies=[base + k * lr * 1e5 for k in range(6)]))
    store.close()
    return run


def test_report_writes_tables_and_plots(tmp_path, capsys):
    run = run_dir_with_store(tmp_path)
    before = (run / "results.sqlite").read_bytes()
    assert main(["report", str(run), "--latex"]) == 0
    out = run / "report"
    names = sorted(p.name for p in out.iterdir())
    for stem in ("accuracy-table0", "accuracy-table1", "iterations-0", "severity-0"):
        assert f"{stem}.png" in names and f"{stem}.svg" in names
        assert (out / f"{stem}.png").read_bytes().startswith(PNG)
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    assert {"report.md", "table0.csv", "table1.csv", "table0.tex", "table1.tex"} <= set(names)
    md = (out / "report.md").read_text()
    assert "| Mean | 36.00 ± 1.41 | 46.00 ± 1.41 | **57.00 ± 2.83** |" in md
    assert "![iterations](iterations-0.png)" in md and "![severity](severity-0.png)" in md
    assert "wrote" in capsys.readouterr().out
    assert (run / "results.sqlite").read_bytes() == before  # the run's store is only read


def test_report_imports_json_results(tmp_path):
    cfg = {"seed": 0, "model": {"arch": "resnet26"}, "data": {"dataset": "cifar10", "root": "/d/cifar"}}
    line = "protocol=continual, reset=never, batch_size=8, predict={} update"
    bench = {"config": cfg, "protocol": line.format("method default"), "seed": 0,
             "rows": {m: {"method": m, "settings": {}, "accuracy": {"fog": a, "snow": a + 10}, "total": {"fog": 10},
                          "protocol": line.format("before")} for m, a in (("bn", 40.0), ("cta", 45.5))}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "bench-continual.json").write_text(json.dumps(bench))
    assert main(["report", str(run), "--no-plots", "--quiet", "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| corruption | bn | cta |" in md and "| Δ (cta − other) | +5.50 | — |" in md
    assert "- protocol: protocol=continual, reset=never, batch_size=8\n" in md and "- backbone: resnet26" in md
    assert "- dataset: cifar10 (cifar)" in md and "`bn` (bn): order=before" in md
    assert not (run / "results.sqlite").exists()


def test_report_bad_input(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results.sqlite, results.json or bench-*.json" in capsys.readouterr().err
    run = run_dir_with_store(tmp_path)
    conn = sqlite3.connect(run / "results.sqlite")
    with conn:
        conn.execute("UPDATE meta SET value = '2' WHERE name = 'schema_version'")
    conn.close()
    before = (run / "results.sqlite").read_bytes()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schema version 2; this testtime reads version 1" in err
    assert (run / "results.sqlite").read_bytes() == before and not (run / "report").exists()
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps({"rows": {}}))
    assert main(["report", str(bad)]) == 2
    assert "no 'config'" in capsys.readouterr().err
    (bad / "results.json").write_text(json.dumps({"config": {}, "clean": {}}))  # started, nothing measured yet
    assert main(["report", str(bad)]) == 2
    assert "the results hold no cells" in capsys.readouterr().err


@pytest.mark.parametrize("ref", ["", "  "])
def test_report_empty_ref(tmp_path, ref, capsys):
    run = run_dir_with_store(tmp_path)
    assert main(["report", str(run), "--ref", ref, "--no-plots"]) == 2
    assert "--ref" in capsys.readouterr().err


@pytest.mark.slow
def test_report_of_real_pipeline_and_bench_output(tmp_path):
    """The JSON that evaluate_pipeline and run_methods really write (tiny toy run), imported and reported."""
    import numpy as np

    from testtime.bench.grid import run_methods
    from testtime.data import ImageSplit
    from testtime.train.pipeline import (
        PipelineConfig,
        PipelineData,
        config_from_dict,
        config_to_dict,
        evaluate_pipeline,
        run_stages,
    )

    rng = np.random.default_rng(0)
    labels = np.arange(64, dtype=np.int64) % 2
    imgs = (rng.integers(0, 60, (64, 16, 16, 3)) + labels[:, None, None, None] * 150).astype(np.uint8)
    split = ImageSplit(imgs, labels, ("dark", "light"), "toy")
    tiny = {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "log_every": 100}
    cfg = config_from_dict(PipelineConfig, {
        "supervised": tiny, "ssl": {"train": tiny}, "align": {"train": tiny}, "probe": {"train": tiny},
        "joint": {"train": tiny}, "ttt": {"batch_size": 16, "steps": 2, "max_steps": 3, "lr_candidates": [1e-4, 1e-3]},
        "eval": {"corruptions": ["gaussian_noise", "fog"], "heldout": ["spatter"], "params": "cifar",
                 "rows": ["supervised+bn", "cta"]},
    })
    data = PipelineData(split, split, split)
    run = tmp_path / "run"
    results = evaluate_pipeline(cfg, run_stages(cfg, run, data, log=None), data, run, log=None)
    bench = run_methods(cfg, run, data, ["tent"], log=None)
    bench.update(config=config_to_dict(cfg), seed=cfg.seed)
    (run / "bench-episodic.json").write_text(json.dumps(bench, default=str))

    assert main(["report", str(run), "--quiet"]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "| corruption | supervised+bn | cta | tent |" in md
    cta = results["rows"]["cta"]
    acc = [cta["accuracy"][c] for c in ("gaussian_noise", "fog")]
    assert f"| gaussian_noise | {results['rows']['supervised+bn']['accuracy']['gaussian_noise']:.2f}" in md
    assert f"{np.mean(acc):.2f}" in md.split("| Mean |")[1].split("\n")[0]
    assert "- protocol: protocol=episodic, reset=batch, batch_size=16, shuffle=True, seed=0" in md
    assert (run / "report" / "iterations-0.png").is_file()


def test_report_only_and_seeds_slice_the_cells(tmp_path, capsys):
    run = run_dir_with_store(tmp_path)
    before = (run / "results.sqlite").read_bytes()
    out = tmp_path / "r"
    assert main(["report", str(run), "--no-plots", "--quiet", "--out", str(out), "--only", "source,cta",
                 "--seeds", "1"]) == 0
    md = (out / "report.md").read_text()
    # severity 5, seed 1 only: source 22 / 52, cta 44 / 74; tent left out everywhere
    assert "| corruption | source | cta |" in md and "tent" not in md
    assert "| Mean | 37.00 | **59.00** |" in md
    assert (run / "results.sqlite").read_bytes() == before
    assert main(["report", str(run), "--no-plots", "--quiet", "--out", str(out), "--only", "cta,memo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only: memo not in" in err and "it holds: cta, source, tent" in err
    assert main(["report", str(run), "--no-plots", "--out", str(out), "--seeds", "7"]) == 2
    assert "--seeds: 7 not in" in capsys.readouterr().err
    assert main(["report", str(run), "--no-plots", "--out", str(out), "--seeds", "x"]) == 2
    assert "--seeds: expected comma-separated integers" in capsys.readouterr().err
    # one severity's tables: the severity-3 cells only (tent's two settings, cta's one corruption)
    assert main(["report", str(run), "--no-plots", "--quiet", "--out", str(out), "--severities", "3"]) == 0
    md = (out / "report.md").read_text()
    assert "severity 3" in md and "severity 5" not in md
    assert main(["report", str(run), "--no-plots", "--out", str(out), "--severities", "4"]) == 2
    assert "--severities: 4 not in" in (err := capsys.readouterr().err) and "it holds: 3, 5" in err
    assert main(["report", str(run), "--no-plots", "--out", str(out), "--severities", "5,x"]) == 2
    assert "--severities: expected comma-separated integers, e.g. 5; got '5,x'" in capsys.readouterr().err
    # a pair whose side the slice leaves out is refused, nothing written
    assert main(["report", str(run), "--no-plots", "--out", str(tmp_path / "r2"), "--only", "cta",
                 "--pair", "cta,tent"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "r2").exists()


def test_report_default_reference_only_when_held(tmp_path):
    """The Δ row's default reference is ``cta`` when the (sliced) results hold it; a report without any
    cta cell gets neither a Δ row nor a note per table that the column is missing; an explicit --ref does."""
    run = run_dir_with_store(tmp_path)
    out = tmp_path / "r"
    assert main(["report", str(run), "--no-plots", "--quiet", "--out", str(out), "--severities", "5"]) == 0
    assert "| Δ (cta − other) |" in (out / "report.md").read_text()
    assert main(["report", str(run), "--no-plots", "--quiet", "--out", str(out), "--only", "source,tent"]) == 0
    md = (out / "report.md").read_text()
    assert "| corruption | source | tent |" in md and "Δ (" not in md and "reference column" not in md
    assert main(["report", str(run), "--no-plots", "--quiet", "--out", str(out), "--only", "source,tent",
                 "--ref", "cta"]) == 0
    assert "reference column 'cta' is not in this table: no Δ row" in (out / "report.md").read_text()

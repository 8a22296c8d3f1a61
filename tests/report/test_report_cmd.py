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


@pytest.mark.parametrize("ref", ["", "  "])
def test_report_empty_ref(tmp_path, ref, capsys):
    run = run_dir_with_store(tmp_path)
    assert main(["report", str(run), "--ref", ref, "--no-plots"]) == 2
    assert "--ref" in capsys.readouterr().err

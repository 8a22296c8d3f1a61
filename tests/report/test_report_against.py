"""Each row of one store against the same row of another: exact differences, the stream check, notes, CLI."""

from __future__ import annotations

import pytest
from report_fixtures import cell

from testtime.cli import main
from testtime.report.against import against, config_differences
from testtime.report.paired import Side, paired_markdown
from testtime.store import ResultStore

RPD = "reset-per-domain"
CORRS = ("gaussian_noise", "snow", "fog")


def config(epochs=27.0, per_class=200, lr=1e-3):
    return {"source": {"data": {"seed": 0, "test_per_class": per_class}, "supervised": {"epochs": epochs}},
            "test_per_class": per_class, "method_config": {"lr": lr}, "batch_size": 128}


def put(store, label, accs, severity=5, **cfg):
    """accs: {seed: (accuracy per corruption of CORRS)}."""
    for seed, row in accs.items():
        for corr, a in zip(CORRS, row):
            store.put(cell(label, label, {}, corr, seed, a, severity=severity, protocol=RPD, config=config(**cfg)))


def stores():
    here, there = ResultStore.memory(), ResultStore.memory()
    put(here, "bn", {0: (51.0, 62.0, 70.0), 1: (54.0, 61.0, 73.0)})
    put(there, "bn", {0: (50.0, 60.0, 70.0), 1: (52.0, 62.0, 72.0)}, epochs=18.0)
    put(here, "tent", {0: (60.0, 60.0, 60.0)}, lr=1e-4)
    put(there, "tent", {0: (59.0, 58.0, 57.0)}, epochs=18.0, lr=1e-3)
    put(here, "only-here", {0: (1.0, 2.0, 3.0)})
    return here, there


def test_each_shared_row_paired_with_exact_differences_and_the_differing_config_named():
    here, there = stores()
    bn, tent = against(here, there, "runs/v9")
    assert (bn.a, bn.b) == (Side("bn", RPD), Side("bn", RPD, store="runs/v9"))
    # per seed: seed 0 (+1, +2, 0) -> 1.0; seed 1 (+2, -1, +1) -> 2/3
    assert bn.by_seed == pytest.approx({0: 1.0, 1: 2 / 3})
    assert bn.by_corruption == pytest.approx({"gaussian_noise": 1.5, "snow": 0.5, "fog": 0.5})
    assert (bn.above, bn.below) == (3, 0)
    assert bn.notes == ["the cells' configs differ in source.supervised.epochs: 27.0 here, 18.0 there"]
    assert tent.mean == pytest.approx(2.0)
    assert tent.notes == ["the cells' configs differ in method_config.lr: 0.0001 here, 0.001 there; "
                          "source.supervised.epochs: 27.0 here, 18.0 there"]
    md = paired_markdown(bn)
    assert "### Paired: bn@reset-per-domain − bn@reset-per-domain (in runs/v9) · cifar10 · resnet8 · severity 5" in md
    assert "**+0.83 ± 0.24**" in md


def test_only_labels_and_unknown_labels():
    here, there = stores()
    (bn,) = against(here, there, "v9", labels=["bn"])
    assert bn.a.label == "bn"
    with pytest.raises(ValueError, match=r"--against-only: 'only-here' not measured in both stores \(labels in "
                                         r"both: bn, tent\)"):
        against(here, there, "v9", labels=["bn", "only-here"])


def test_other_test_images_are_not_paired():
    here, there = ResultStore.memory(), ResultStore.memory()
    put(here, "bn", {0: (51.0, 62.0, 70.0)})
    put(there, "bn", {0: (50.0, 60.0, 70.0)}, per_class=100)
    with pytest.raises(ValueError, match=r"--against v9: no cells to pair \(bn@reset-per-domain · cifar10 · "
                                         r"resnet8 · severity 5: not the same test images or stream "
                                         r"\(source.data, test_per_class differ\)\)"):
        against(here, there, "v9")
    put(here, "tent", {0: (1.0, 2.0, 3.0)})
    put(there, "tent", {0: (1.0, 2.0, 2.0)})
    (p,) = against(here, there, "v9")
    assert p.a.label == "tent" and p.mean == pytest.approx(1 / 3)
    assert any(n.startswith("not paired: bn@reset-per-domain") for n in p.notes)


def test_nothing_in_common_is_refused():
    here, there = ResultStore.memory(), ResultStore.memory()
    put(here, "bn", {0: (51.0, 62.0, 70.0)})
    put(there, "bn", {0: (50.0, 60.0, 70.0)}, severity=3)
    with pytest.raises(ValueError, match="--against v9: no cells to pair .no label measured in both stores"):
        against(here, there, "v9")


def test_config_differences_reports_values_that_vary():
    a = [{"config": {"x": 1, "seed": 0}}, {"config": {"x": 2, "seed": 1}}]
    b = [{"config": {"x": 3, "seed": 0}}, {"config": {"x": 3, "seed": 1}}]
    assert config_differences(a, b) == ["x differs from cell to cell"]
    assert config_differences(a, a) == []
    assert config_differences([{"config": {"y": {"z": 1}}}], [{"config": {}}]) == ["y.z: 1 here, absent there"]


def _run(tmp_path, name, store):
    run = tmp_path / name
    s = ResultStore.open(run, create=True)
    for r in store.cells():
        s.put(r)
    s.close()
    return run


def test_report_cli_against(tmp_path):
    here, there = stores()
    a, b, out = _run(tmp_path, "a", here), _run(tmp_path, "b", there), tmp_path / "rep"
    assert main(["report", str(a), "--no-plots", "--quiet", "--out", str(out), "--against", str(b),
                 "--against-only", "tent"]) == 0
    md = (out / "report.md").read_text()
    assert f"### Paired: tent@reset-per-domain − tent@reset-per-domain (in {b})" in md
    assert "### Paired: bn" not in md and (out / "pair0.csv").is_file()


@pytest.mark.parametrize("args, msg", [
    (["--against-only", "bn"], "--against-only: give --against OTHER_RUN_DIR too"),
    (["--against", "MISSING"], "--against: run dir"),
    (["--against", "B", "--against-only", " , "], "--against-only: give labels"),
    (["--against", "B", "--against-only", "nope"], "--against-only: 'nope' not measured in both stores"),
])
def test_report_cli_against_bad_input_writes_nothing(tmp_path, capsys, args, msg):
    here, there = stores()
    a, b, out = _run(tmp_path, "a", here), _run(tmp_path, "b", there), tmp_path / "rep"
    args = [str(b) if x == "B" else str(tmp_path / "missing") if x == "MISSING" else x for x in args]
    assert main(["report", str(a), "--no-plots", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err
    assert not out.exists()

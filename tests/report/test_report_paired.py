"""Paired comparison A − B: exact differences by hand, protocol resolution, partial seeds, bad input."""

from __future__ import annotations

import csv
import io
import math

import pytest
from report_fixtures import cell

from testtime.cli import main
from testtime.report.paired import Side, paired, paired_csv, paired_markdown, parse_pair, parse_side
from testtime.store import ResultStore

RPD, CONT = "reset-per-domain", "continual"
CORRS = ("gaussian_noise", "snow", "fog")  # the benchmark's order


def put(store, label, protocol, accs, severity=3, hparams=None):
    """accs: {seed: {corruption: accuracy}}."""
    for seed, by_corr in accs.items():
        for corr, a in by_corr.items():
            store.put(cell(label, label.split("-")[0], hparams or {}, corr, seed, a, severity=severity,
                           protocol=protocol))


def pair_store() -> ResultStore:
    store = ResultStore.memory()
    put(store, "bn", RPD, {0: dict(zip(CORRS, (50.0, 60.0, 70.0))), 1: dict(zip(CORRS, (52.0, 62.0, 72.0)))})
    # A − B per seed: seed 0 (+1, +2, -0), seed 1 (+3, -1, +1)
    put(store, "cotta-x", RPD, {0: dict(zip(CORRS, (51.0, 62.0, 70.0))), 1: dict(zip(CORRS, (55.0, 61.0, 73.0)))})
    put(store, "cotta-x", CONT, {0: dict(zip(CORRS, (40.0, 40.0, 40.0)))})
    put(store, "tent", CONT, {0: dict(zip(CORRS, (49.0, 59.0, 69.0))), 1: dict(zip(CORRS, (52.0, 61.0, 71.0)))})
    return store


def test_paired_exact_differences():
    (p,) = paired(pair_store(), "cotta-x@reset-per-domain", "bn")
    assert (p.a, p.b) == (Side("cotta-x", RPD), Side("bn", RPD))
    assert p.corruptions == list(CORRS)
    assert p.diffs[(0, "snow")] == 2.0 and p.diffs[(1, "gaussian_noise")] == 3.0
    assert p.by_seed == pytest.approx({0: 1.0, 1: 1.0})
    assert p.by_corruption == pytest.approx({"gaussian_noise": 2.0, "snow": 0.5, "fog": 0.5})
    assert p.mean == pytest.approx(1.0) and p.std == pytest.approx(0.0)
    assert (p.above, p.below, p.ties) == (3, 0, 0)
    assert p.sign_p == pytest.approx(0.25)  # 2 * (1/2)^3
    md = paired_markdown(p)
    assert "### Paired: cotta-x@reset-per-domain − bn@reset-per-domain · cifar10 · resnet8 · severity 3" in md
    assert "**+1.00 ± 0.00**" in md and "per seed 0: +1.00, 1: +1.00" in md
    assert "cotta-x above on 3 of 3 corruptions, below on 0, tied on 0" in md and "p = 0.25" in md
    assert "| gaussian_noise | +2.00 |" in md and "| **Mean** | **+1.00** |" in md
    rows = list(csv.DictReader(io.StringIO(paired_csv(p))))
    assert [r["corruption"] for r in rows] == ["gaussian_noise", "snow", "fog", "mean"]
    assert rows[1]["seed_0"] == "2.0000" and rows[1]["seed_1"] == "-1.0000" and rows[1]["mean"] == "0.5000"
    assert rows[3]["mean"] == "1.0000"


def test_sign_test_and_ties():
    store = ResultStore.memory()
    accs_b = {0: {c: 50.0 for c in CORRS}}
    put(store, "bn", RPD, accs_b)
    put(store, "a", RPD, {0: dict(zip(CORRS, (50.0, 49.0, 51.0)))})
    (p,) = paired(store, "a", "bn")
    assert (p.above, p.below, p.ties) == (1, 1, 1) and p.sign_p == 1.0
    put(store, "same", RPD, accs_b)
    (q,) = paired(store, "same", "bn")
    assert q.ties == 3 and q.sign_p is None and "p = —" in paired_markdown(q)
    # 14 above, 1 below of 15: p = 2 * (1 + 15) / 2^15
    store2 = ResultStore.memory()
    corrs = [f"c{i:02d}" for i in range(15)]
    put(store2, "bn", RPD, {0: {c: 50.0 for c in corrs}})
    put(store2, "a", RPD, {0: {c: (49.0 if c == "c00" else 51.0) for c in corrs}})
    (r,) = paired(store2, "a", "bn")
    assert r.sign_p == pytest.approx(2 * 16 / 2 ** 15) and math.isclose(r.mean, 13 / 15)


def test_protocol_resolution():
    store = pair_store()
    # A with one protocol (tent: continual); B has no continual: its only protocol
    (p,) = paired(store, "tent", "bn")
    assert (p.a.protocol, p.b.protocol) == (CONT, RPD) and p.by_seed == pytest.approx({0: -1.0, 1: -2 / 3})
    # B follows A's protocol when it has it
    (q,) = paired(store, "tent", "cotta-x")
    assert q.b.protocol == CONT and q.by_seed == pytest.approx({0: 19.0})  # seed 1: cotta-x continual lacks it
    (r,) = paired(store, "cotta-x@continual", "cotta-x@reset-per-domain")
    assert r.mean == pytest.approx(40.0 - 61.0)
    with pytest.raises(ValueError, match=r"cotta-x has several protocols \(continual, reset-per-domain\); "
                                         r"write cotta-x@PROTOCOL"):
        paired(store, "cotta-x", "bn")
    with pytest.raises(ValueError, match="tent@reset-per-domain not measured there"):
        paired(store, "tent@reset-per-domain", "bn")
    with pytest.raises(ValueError, match=r"no label 'nope' in the store \(labels: bn, cotta-x, tent\)"):
        paired(store, "bn", "nope")


def test_partial_seed_and_missing_corruption_are_left_out_and_named():
    store = ResultStore.memory()
    put(store, "bn", RPD, {s: {c: 50.0 for c in CORRS} for s in (0, 1, 2)})
    # seed 2 partial (one corruption): left out; seeds 0 and 1 complete
    put(store, "a", RPD, {0: {c: 51.0 for c in CORRS}, 1: {c: 52.0 for c in CORRS}, 2: {"gaussian_noise": 90.0}})
    (p,) = paired(store, "a", "bn")
    assert p.seeds == [0, 1] and p.mean == pytest.approx(1.5)
    assert any("seed(s) 2 left out" in n for n in p.notes)
    # two seeds with as many corruptions but not the same ones: only the common ones count, the rest named
    store2 = ResultStore.memory()
    put(store2, "bn", RPD, {s: {c: 50.0 for c in CORRS} for s in (0, 1)})
    put(store2, "a", RPD, {0: {"gaussian_noise": 51.0, "fog": 53.0}, 1: {"gaussian_noise": 52.0, "snow": 60.0}})
    (q,) = paired(store2, "a", "bn")
    assert q.corruptions == ["gaussian_noise"] and q.by_seed == pytest.approx({0: 1.0, 1: 2.0})
    assert "fog (seed 0), snow (seed 1)" in q.notes[0]


def test_pairs_only_within_one_dataset_backbone_severity():
    store = pair_store()
    put(store, "bn", RPD, {0: {"fog": 10.0}}, severity=5)
    put(store, "a5", RPD, {0: {"fog": 12.0}}, severity=5)
    (p,) = paired(store, "a5", "bn")
    assert p.severity == 5 and p.mean == pytest.approx(2.0)
    put(store, "only3", RPD, {0: {"fog": 1.0}})
    with pytest.raises(ValueError, match="no cells to pair .*never measured at the same"):
        paired(store, "only3", "a5")


def test_several_hyperparameter_sets_refused():
    store = pair_store()
    put(store, "tent", RPD, {0: {"fog": 61.0}}, hparams={"lr": 1e-3})
    put(store, "tent", RPD, {0: {"fog": 62.0}}, hparams={"lr": 1e-2})
    with pytest.raises(ValueError, match="tent@reset-per-domain has 2 sets of hyperparameters"):
        paired(store, "tent@reset-per-domain", "bn")


@pytest.mark.parametrize("text", ["a", "a,b,c", ",b", "a,", "a@,b", "@x,b", "a@x@y,b"])
def test_parse_pair_refuses(text):
    with pytest.raises(ValueError, match="--pair"):
        parse_pair(text)


def test_parse_pair():
    assert parse_pair(" tent@continual , bn ") == (Side("tent", CONT), Side("bn"))
    assert parse_side("bn").text == "bn" and Side("tent", CONT).text == "tent@continual"


def _run_dir(tmp_path):
    run = tmp_path / "run"
    store = ResultStore.open(run, create=True)
    for r in pair_store().cells():
        store.put(r)
    store.close()
    return run


def test_report_cli_pair(tmp_path, capsys):
    run = _run_dir(tmp_path)
    out = tmp_path / "rep"
    assert main(["report", str(run), "--no-plots", "--quiet", "--out", str(out),
                 "--pair", "cotta-x@reset-per-domain,bn", "--pair", "tent,bn"]) == 0
    md = (out / "report.md").read_text()
    assert md.index("### Summary") < md.index("### Paired: cotta-x@reset-per-domain − bn@reset-per-domain")
    assert "### Paired: tent@continual − bn@reset-per-domain" in md
    assert (out / "pair0.csv").is_file() and (out / "pair1.csv").is_file()


@pytest.mark.parametrize("pair, msg", [("a,b,c", "expected A,B"), ("nope,bn", "no label 'nope'"),
                                       ("cotta-x,bn", "write cotta-x@PROTOCOL")])
def test_report_cli_bad_pair_writes_nothing(tmp_path, capsys, pair, msg):
    run = _run_dir(tmp_path)
    out = tmp_path / "rep"
    assert main(["report", str(run), "--no-plots", "--out", str(out), "--pair", pair]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err and "--pair" in err
    assert not out.exists()


def test_a_severity_that_cannot_be_paired_is_named_in_the_notes():
    store = pair_store()  # severity 3: tent continual only
    put(store, "bn", RPD, {0: {"fog": 10.0}}, severity=5)
    put(store, "tent", RPD, {0: {"fog": 11.0}}, severity=5)
    put(store, "tent", CONT, {0: {"fog": 12.0}}, severity=5)  # severity 5: two protocols, so ambiguous
    (p,) = paired(store, "tent", "bn")
    assert p.severity == 3
    assert p.notes == ["not paired at cifar10 · resnet8 · severity 5: tent has several protocols "
                       "(continual, reset-per-domain); write tent@PROTOCOL"]

"""The report's summary table: exact means, std, Δ vs bn, order, CSV, and its place in report.md."""

from __future__ import annotations

import csv
import io

import pytest
from report_fixtures import PROTO, cell

from testtime.report import write_report
from testtime.report.summary import build_summaries, edge_params, selection_text, summary_csv, summary_markdown
from testtime.store import ResultStore
from testtime.store.db import canonical_json

CONT = "protocol=continual, reset=never, batch_size=4"
SELECTION = {"on": ["spatter", "saturate"], "severity": 5, "per_class": 26, "chosen": {"lr": 0.001},
             "means": {'{"lr":0.0001}': 55.0, '{"lr":0.001}': 61.25}, "mean_accuracy": 61.25}
# (label, protocol, hparams, selection, {seed: {corruption: accuracy}}, images/s per seed)
ROWS = [
    ("bn", PROTO, {}, None, {0: {"gaussian_noise": 40.0, "fog": 60.0}, 1: {"gaussian_noise": 42.0, "fog": 62.0}},
     {0: 100.0, 1: 120.0}),
    ("tent", PROTO, {"lr": 0.001}, SELECTION,
     {0: {"gaussian_noise": 44.0, "fog": 66.0}, 1: {"gaussian_noise": 50.0, "fog": 70.0}}, {0: 80.0, 1: 80.0}),
    ("tent", CONT, {"lr": 0.001}, None,
     {0: {"gaussian_noise": 30.0, "fog": 50.0}, 1: {"gaussian_noise": 36.0, "fog": 54.0}}, {0: 90.0, 1: 70.0}),
    # seed 2 lacks gaussian_noise: left out
    ("cta", PROTO, {"lr": 1e-06}, None,
     {0: {"gaussian_noise": 60.0, "fog": 70.0}, 1: {"gaussian_noise": 64.0, "fog": 80.0}, 2: {"fog": 90.0}},
     {0: 10.0, 1: 10.0, 2: 10.0}),
    # seeds 1 and 5: Δ vs bn only over seed 1
    ("sar", PROTO, {}, None, {1: {"gaussian_noise": 50.0, "fog": 60.0}, 5: {"gaussian_noise": 20.0, "fog": 20.0}},
     {1: 40.0, 5: 40.0}),
]


def summary_store() -> ResultStore:
    store = ResultStore.memory()
    for label, proto, hp, sel, by_seed, ips in ROWS:
        for seed, accs in by_seed.items():
            for corr, a in accs.items():
                store.put(cell(label, label, hp, corr, seed, a, protocol=proto, images_per_s=ips[seed],
                               config={"selection": sel}))
    return store


def md_rows(text: str) -> list[list[str]]:
    lines = [x for x in text.splitlines() if x.startswith("| ") and not x.startswith("|---")]
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines]


def test_summary_numbers_order_and_delta():
    (s,) = build_summaries(summary_store())
    assert (s.dataset, s.backbone, s.severity) == ("cifar10", "resnet8", 5)
    rows = md_rows(summary_markdown(s))
    assert rows[0] == ["label", "method", "protocol", "hyperparameters", "chosen by", "corruptions", "seeds",
                       "mean ± std over seeds", "Δ vs bn", "images / s"]
    chosen = "held-out on spatter, saturate: lr=0.001 of [lr=0.0001: 55.00, lr=0.001: 61.25]"
    # per-seed means over (gaussian_noise, fog): cta (65, 72), tent (55, 60), bn (50, 52), tent cont. (40, 45),
    # sar (55, 20); sample std of two values = |a - b| / sqrt(2); Δ's std is that of the paired per-seed
    # differences: cta (15, 20), tent (5, 8), tent cont. (-10, -7)
    assert rows[1:] == [
        ["cta", "cta", PROTO, "lr=1e-06", "defaults", "2", "2", "**68.50 ± 4.95**", "+17.50 ± 3.54", "10"],
        ["tent", "tent", PROTO, "lr=0.001", chosen, "2", "2", "57.50 ± 3.54", "+6.50 ± 2.12", "80"],
        ["bn", "bn", PROTO, "defaults", "defaults", "2", "2", "51.00 ± 1.41", "+0.00 ± 0.00", "110"],
        # bn has no continual row: compared with bn's only protocol (episodic)
        ["tent", "tent", CONT, "lr=0.001", "defaults", "2", "2", "42.50 ± 3.54", "-8.50 ± 2.12", "80"],
        # only seed 1 shared with bn: 55 - 52
        ["sar", "sar", PROTO, "defaults", "defaults", "2", "2", "37.50 ± 24.75", "+3.00", "40"],
    ]
    assert s.notes == [f"sar ({PROTO}): Δ vs bn over seed(s) 1 only, the mean over 1, 5",
                       f"cta ({PROTO}): seed 2 lacks gaussian_noise (left out of the mean)"]  # only what it lacks


def test_summary_csv():
    (s,) = build_summaries(summary_store())
    got = list(csv.reader(io.StringIO(summary_csv(s))))
    assert got[0] == ["label", "method", "protocol", "hparams", "chosen_by", "n_corruptions", "n_seeds", "mean",
                      "std", "delta_vs_bn", "delta_vs_bn_std", "images_per_s"]
    assert [(r[0], r[2], r[5], r[6], r[7], r[8], r[9], r[10], r[11]) for r in got[1:]] == [
        ("cta", PROTO, "2", "2", "68.5000", "4.9497", "17.5000", "3.5355", "10.0000"),
        ("tent", PROTO, "2", "2", "57.5000", "3.5355", "6.5000", "2.1213", "80.0000"),
        ("bn", PROTO, "2", "2", "51.0000", "1.4142", "0.0000", "0.0000", "110.0000"),
        ("tent", CONT, "2", "2", "42.5000", "3.5355", "-8.5000", "2.1213", "80.0000"),
        ("sar", PROTO, "2", "2", "37.5000", "24.7487", "3.0000", "", "40.0000"),
    ]
    assert got[2][4].startswith("held-out on spatter, saturate: lr=0.001 of [")


def test_summary_without_a_usable_bn():
    store = ResultStore.memory()
    for label, proto, hp, a in (("bn", PROTO, {}, 50.0), ("bn", CONT, {}, 40.0), ("tent", "other", {"lr": 0.1}, 45.0),
                                ("tent", "other", {"lr": 0.2}, 47.0)):
        store.put(cell(label, label, hp, "fog", 0, a, protocol=proto))
    store.put(cell("cta", "cta", {}, "fog", 0, 70.0, severity=3))
    s5, s3 = build_summaries(store)
    rows = md_rows(summary_markdown(s5))[1:]
    # one seed: the mean alone; a label with two sets of hyperparameters under one protocol: two rows
    assert [(r[0], r[3], r[7], r[8]) for r in rows] == [
        ("bn", "defaults", "**50.00**", "+0.00"), ("tent (2)", "lr=0.2", "47.00", "—"),
        ("tent (1)", "lr=0.1", "45.00", "—"), ("bn", "defaults", "40.00", "+0.00")]
    assert "Note: tent (1) (other): no Δ vs bn: no bn row under its protocol" in summary_markdown(s5)
    assert md_rows(summary_markdown(s3))[1][7:9] == ["70.00", "—"]  # one row: nothing in bold
    assert s3.notes == ["no 'bn' row at this severity: no Δ"]
    with pytest.raises(ValueError, match="baseline must be a non-empty label"):
        build_summaries(store, baseline="")


def test_report_md_starts_with_the_summary(tmp_path):
    files = write_report(summary_store(), tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Results\n\n### Summary: cifar10 · resnet8 · severity 5\n")
    assert md.index("| label | method |") < md.index("| corruption |")
    assert "CSV: [summary0.csv](summary0.csv)" in md
    assert tmp_path / "summary0.csv" in files
    assert (tmp_path / "summary0.csv").read_text() == summary_csv(build_summaries(summary_store())[0])


def test_selection_text_flags_a_choice_at_the_edge_of_three_or_more_candidates():
    def rec(chosen, cands):
        means = {canonical_json(c): 50.0 + i for i, c in enumerate(cands)}
        return {"on": ["fog"], "means": means, "chosen": chosen}

    three = [{"lr": 1e-4}, {"lr": 1e-3}, {"lr": 1e-2}]
    assert selection_text(rec({"lr": 1e-2}, three)).endswith(
        "[lr=0.0001: 50.00, lr=0.001: 51.00, lr=0.01: 52.00]; lr=0.01 at the edge of its candidates")
    assert selection_text(rec({"lr": 1e-4}, three)).endswith("; lr=0.0001 at the edge of its candidates")
    assert "edge" not in selection_text(rec({"lr": 1e-3}, three))  # bracketed
    assert "edge" not in selection_text(rec({"lr": 1e-3}, three[1:]))  # 2 candidates: every choice is an edge
    grid = [{"lr": a, "steps": s} for a in (1e-4, 1e-3, 1e-2) for s in (1, 3, 10)]
    assert selection_text(rec({"lr": 1e-3, "steps": 10}, grid)).endswith("; steps=10 at the edge of its candidates")
    assert selection_text(None) == "defaults"
    assert edge_params({"lr": 1e-5, "bn": "source"}, [{"lr": v, "bn": "source"} for v in (1e-5, 1e-4, 1e-3)]) == ["lr"]
    assert edge_params({"steps": True}, [{"steps": v} for v in (True, False, 2)]) == []  # booleans are not numbers


def test_a_row_on_fewer_corruptions_is_not_bolded_as_best():
    store = summary_store()
    for seed in (0, 1):  # measured on fog only (an easy corruption here), so its mean is the highest
        store.put(cell("partial", "partial", {}, "fog", seed, 95.0, protocol=PROTO))
    (s,) = build_summaries(store)
    rows = md_rows(summary_markdown(s))
    assert rows[1][0] == "partial" and rows[1][7] == "95.00 ± 0.00"  # sorted first, not bold
    assert [r[0] for r in rows if r[7].startswith("**")] == ["cta"]  # the best of the rows on both corruptions


def test_selection_text_lists_numeric_candidates_by_value():
    """Stored candidate keys are JSON text, so a sorted store lists lr=0.0001 before lr=1e-05: the summary lists
    them by value; candidates that are not all numbers keep their stored order."""
    cands = [{"lr": 1e-4}, {"lr": 1e-3}, {"lr": 1e-2}, {"lr": 1e-5}]  # the text order of the keys
    means = {canonical_json(c): m for c, m in zip(cands, (78.45, 76.65, 26.65, 78.30))}
    text = selection_text({"on": ["fog"], "means": means, "chosen": {"lr": 1e-4}})
    assert text.endswith("of [lr=1e-05: 78.30, lr=0.0001: 78.45, lr=0.001: 76.65, lr=0.01: 26.65]")
    mixed = [{"bn": "source"}, {"bn": "batch"}]
    means = {canonical_json(c): 50.0 for c in mixed}
    assert "of [bn=source: 50.00, bn=batch: 50.00]" in selection_text({"means": means, "chosen": {"bn": "source"}})

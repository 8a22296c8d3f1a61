"""Report tables against a hand-made store: exact Markdown cells, CSV, LaTeX."""

from __future__ import annotations

import csv
import io

import pytest
from report_fixtures import PROTO, hand_store

from testtime.report.tables import build_tables, fmt_delta, protocol_name, to_csv, to_latex, to_markdown


def md_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_markdown_matches_hand_computed_table():
    t5, t3 = build_tables(hand_store())
    assert (t5.severity, t3.severity) == (5, 3)
    md = to_markdown(t5)
    rows = md_rows(md)
    assert rows["corruption"] == ["source", "tent", "cta"]
    assert list(rows)[1:5] == ["gaussian_noise", "fog", "Mean", "Δ (cta − other)"]  # benchmark order
    # sample std (ddof=1): std(20, 22) = 1.41, std(30, 34) = 2.83; best mean in bold
    assert rows["gaussian_noise"] == ["21.00 ± 1.41", "32.00 ± 2.83", "**42.00 ± 2.83**"]
    assert rows["fog"] == ["51.00 ± 1.41", "60.00 ± 0.00", "**72.00 ± 2.83**"]
    # Mean: per-seed means over corruptions (35, 37), (45, 47), (55, 59), then mean ± std over seeds
    assert rows["Mean"] == ["36.00 ± 1.41", "46.00 ± 1.41", "**57.00 ± 2.83**"]
    assert rows["Δ (cta − other)"] == ["+21.00", "+11.00", "—"]
    # settings above the table
    head = md.split("| corruption |")[0]
    assert f"- protocol: {PROTO}" in head and "- backbone: resnet8" in head
    assert "- seeds: 0, 1 (mean ± sample std over seeds)" in head
    assert "  - `cta` (cta): lr=1e-06, steps=20" in head and "  - `source` (source): defaults" in head
    assert rows["wall time per cell (s)"] == ["2", "2", "2"] and rows["images / s"] == ["50", "50", "50"]


def test_variants_single_seed_and_incomplete_columns():
    _, t3 = build_tables(hand_store())
    md = to_markdown(t3)
    rows = md_rows(md)
    assert rows["corruption"] == ["tent (1)", "tent (2)", "cta"]
    assert rows["gaussian_noise"] == ["70.00", "69.25", "**75.00**"]  # one seed: no ± part
    assert rows["fog"] == ["80.00", "**81.50**", "—"]
    assert rows["Mean"] == ["75.00", "**75.38**", "—"]  # cta lacks fog: no Mean
    assert rows["Δ (cta − other)"] == ["—", "—", "—"]
    assert "Note: cta: no result for fog (Mean left out)" in md
    assert "`tent (1)` (tent): lr=0.001" in md and "`tent (2)` (tent): lr=0.0001" in md
    assert "- seeds: 0 (one seed)" in md
    assert "wall time" not in md  # no cost measured in this table


def test_reference_choice():
    t5 = build_tables(hand_store(), reference="tent")[0]
    assert md_rows(to_markdown(t5))["Δ (tent − other)"] == ["+10.00", "—", "-11.00"]
    t5 = build_tables(hand_store(), reference="nope")[0]
    md = to_markdown(t5)
    assert "Δ" not in md_rows(md).get("Mean", []) and "reference column 'nope' is not in this table" in md


def test_csv_and_latex():
    t5 = build_tables(hand_store())[0]
    rows = list(csv.reader(io.StringIO(to_csv(t5))))
    assert rows[0] == ["corruption", "source", "source std", "source n", "tent", "tent std", "tent n",
                       "cta", "cta std", "cta n"]
    assert rows[1][:4] == ["gaussian_noise", "21.0000", "1.4142", "2"]
    assert rows[3][0] == "Mean" and float(rows[3][7]) == pytest.approx(57.0)
    assert rows[4][0] == "delta (cta - other)" and float(rows[4][1]) == pytest.approx(21.0)
    tex = to_latex(t5)
    assert r"Gaussian Noise & 21.00 $\pm$ 1.41 & 32.00 $\pm$ 2.83 & \textbf{42.00 $\pm$ 2.83} \\" in tex
    assert r"$\Delta$(cta $-$ other) & +21.00 & +11.00 & --- \\" in tex
    tent = build_tables(hand_store(), reference="tent")[0]
    assert r"$\Delta$(tent $-$ other) & +10.00 & --- & $-$11.00 \\" in to_latex(tent)
    assert r"\toprule" in tex and "batch\\_size=4" in tex


def test_severity_series_follows_a_setting_across_tables():
    from testtime.report.plots import severity_series

    series = severity_series(build_tables(hand_store()))
    assert series["tent [lr=0.001]"] == {5: [45.0, 47.0], 3: [75.0]}
    assert series["tent [lr=0.0001]"] == {3: [75.375]}
    assert series["source"] == {5: [35.0, 37.0]}
    # cta's severity-3 column lacks fog (no mean), so cta has one series and needs no hyperparameters in its name
    assert series["cta"] == {5: [55.0, 59.0]} and len(series) == 4


def test_seed_missing_a_corruption_is_left_out_of_the_mean():
    from report_fixtures import cell

    store = hand_store()
    store.put(cell("source", "source", {}, "fog", 2, 90.0))  # seed 2 has fog but no gaussian_noise
    t5 = build_tables(store)[0]
    rows = md_rows(to_markdown(t5))
    assert rows["fog"][0] == "64.00 ± 22.54"  # (50, 52, 90)
    assert rows["Mean"][0] == "36.00 ± 1.41"  # seeds 0 and 1 only
    assert "Note: source: seed 2 lacks gaussian_noise (left out of Mean)" in to_markdown(t5)


def test_lacking_text_names_what_each_seed_lacks():
    from testtime.report.tables import lacking_text

    got = lacking_text({2: ["fog"], 0: ["pixelate", "jpeg_compression"]})
    assert got == "seed 0 lacks pixelate, jpeg_compression; seed 2 lacks fog"


def test_reference_with_several_hyperparameter_sets_is_not_called_absent():
    from report_fixtures import cell

    from testtime.store import ResultStore

    store = ResultStore.memory()
    for label, hp, a in (("cta", {"lr": 1e-3}, 50.0), ("cta", {"lr": 1e-2}, 55.0), ("bn", {}, 40.0)):
        store.put(cell(label, label, hp, "fog", 0, a))
    (t,) = build_tables(store, reference="cta")
    md = to_markdown(t)
    assert "Δ (cta − other)" not in md  # no single cta column to subtract from
    assert "is not in this table" not in md  # it is, twice
    assert "Note: reference 'cta' has several columns in this table (cta (1), cta (2))" in md


@pytest.mark.parametrize("d, text", [(-0.004, "+0.00"), (0.004, "+0.00"), (0.0, "+0.00"), (-0.006, "-0.01"),
                                     (1.234, "+1.23"), (-2.5, "-2.50"), (None, "—")])
def test_fmt_delta_never_prints_minus_zero(d, text):
    assert fmt_delta(d) == text


@pytest.mark.parametrize("protocol, name", [("reset-per-domain", "reset-per-domain"),
                                            ("protocol=episodic, reset=batch, batch_size=4", "episodic"),
                                            (" continual ", "continual")])
def test_protocol_name_in_each_table_title(protocol, name):
    assert protocol_name(protocol) == name
    t5 = build_tables(hand_store())[0]  # the fixture's protocol line: episodic
    assert to_markdown(t5).startswith("### cifar10 · resnet8 · episodic · severity 5\n")

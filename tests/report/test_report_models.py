"""The report's "Source models: clean accuracy" section and models.csv (only when the store has model rows)."""

from __future__ import annotations

import csv
import io
import sqlite3

from report_fixtures import hand_store

from testtime.cli import main
from testtime.report import load_run, write_report
from testtime.store import ResultStore
from testtime.store.db import _SCHEMA

ROWS = [("supervised", "fashion-mnist/test", 10000, 81.234, 79.5),
        ("aligned", "fashion-mnist/test", 10000, 74.0, 75.125)]


def put_models(store: ResultStore) -> None:
    for kind, split, n, acc, bn in ROWS:
        store.put_model({"kind": kind, "backbone": "resnet8", "dataset": "fashion-mnist", "split": split,
                         "n_images": n, "seed": 0, "identity": {"kind": kind}, "accuracy_eval": acc,
                         "accuracy_test_bn": bn, "wall_s": 2.0, "weights": None if kind == "aligned" else "f" * 64})


def test_report_opens_with_the_models_table_and_writes_models_csv(tmp_path):
    store = hand_store()
    put_models(store)
    files = write_report(store, tmp_path, plots=False, title="T")
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# T\n\n### Source models: clean accuracy\n\n"
                         "| model kind | backbone | dataset | split (n images) | eval mode % | test-batch BN % | "
                         "weights |\n|---|---|---|---|---:|---:|---|\n"
                         "| supervised | resnet8 | fashion-mnist | fashion-mnist/test (10,000) | 81.23 | 79.50 | "
                         "ffffffffffffffff |\n"
                         "| aligned | resnet8 | fashion-mnist | fashion-mnist/test (10,000) | 74.00 | 75.12 |  |\n"
                         "CSV: [models.csv](models.csv)\n\n### Summary: ")
    assert tmp_path / "models.csv" in files
    got = list(csv.DictReader(io.StringIO((tmp_path / "models.csv").read_text())))
    assert [(r["kind"], float(r["accuracy_eval"]), float(r["accuracy_test_bn"]), int(r["n_images"])) for r in got] == [
        (k, a, b, n) for k, _, n, a, b in ROWS]
    assert all(len(r["key"]) == 64 and r["seed"] == "0" and r["wall_s"] == "2.0" for r in got)
    assert [r["weights"] for r in got] == ["f" * 64, ""]


def test_no_model_rows_no_section_and_the_rest_unchanged(tmp_path):
    without = write_report(hand_store(), tmp_path / "a", plots=False)
    store = hand_store()
    put_models(store)
    write_report(store, tmp_path / "b", plots=False)
    md_a = (tmp_path / "a" / "report.md").read_text()
    assert "Source models" not in md_a and not (tmp_path / "a" / "models.csv").exists()
    assert all(f.name != "models.csv" for f in without)
    md_b = (tmp_path / "b" / "report.md").read_text()
    assert md_b[md_b.index("### Summary"):] == md_a[md_a.index("### Summary"):]


def test_report_of_a_store_written_before_the_models_table(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    conn = sqlite3.connect(run / "results.sqlite")
    conn.executescript(_SCHEMA + "INSERT INTO meta VALUES ('schema_version', '1');")
    conn.close()
    with ResultStore.open(run) as store:
        for r in hand_store().cells():
            store.put(r)
    before = (run / "results.sqlite").read_bytes()
    assert main(["report", str(run), "--no-plots"]) == 0
    assert "Source models" not in capsys.readouterr().out
    assert (run / "results.sqlite").read_bytes() == before
    with ResultStore.open(run) as store:
        put_models(store)
    with load_run(run) as mem:
        assert [r["kind"] for r in mem.models()] == ["supervised", "aligned"]
    assert main(["report", str(run), "--no-plots"]) == 0
    assert "| supervised | resnet8 | fashion-mnist | fashion-mnist/test (10,000) | 81.23 | 79.50 |" in (
        capsys.readouterr().out)
    assert (run / "report" / "models.csv").is_file()

"""The stores committed under results/ (``testtime export`` files) read back whole: every line valid,
every key its row's, and each file exactly what exporting its own import gives (so nobody hand-edited a
figure into it)."""

from pathlib import Path

import pytest

from testtime.store.archive import SUFFIXES, export_jsonl, import_jsonl, read_jsonl

RESULTS = Path(__file__).resolve().parents[2] / "results"
FILES = sorted(p for p in RESULTS.glob("*") if p.name.endswith(SUFFIXES)) if RESULTS.is_dir() else []


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_committed_export_reads_back_and_round_trips(path, tmp_path):
    tables = read_jsonl(path)
    assert tables["cells"], f"{path.name}: no cells"
    for row in tables["cells"]:
        assert 0.0 <= row["accuracy"] <= 100.0 and row["n_images"] and row["device"]
    added = import_jsonl(path, tmp_path / "results.sqlite")
    assert added["cells"] == len(tables["cells"]) and added["held"] == 0
    export_jsonl(tmp_path / "results.sqlite", tmp_path / path.name)
    assert (tmp_path / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_readme_names_each_exports_weights(path):
    """results/README.md lists the file and the weights fingerprint of each of its source models, so a
    reader can tell on which weights its cells were measured before merging them."""
    readme = (RESULTS / "README.md").read_text()
    assert f"`{path.name}`" in readme
    weights = {row["weights"][:16] for row in read_jsonl(path)["models"]}
    assert weights and all(w in readme for w in weights), weights


def test_results_folder_holds_exports():
    assert FILES, f"no *.jsonl export under {RESULTS}"

"""`testtime merge DEST SOURCE...`: shards' cells into one store, slices, conflicts, bad input."""

from __future__ import annotations

from testtime.cli import main
from testtime.store import ResultStore


def cell(**kw):
    base = {"method": "ttt", "label": "ttt", "corruption": "fog", "severity": 5, "seed": 0, "protocol": "episodic",
            "backbone": "airbench", "dataset": "cifar10", "hparams": {"lr": 1e-3}, "accuracy": 60.0}
    return {**base, **kw}


def store(path, *rows):
    with ResultStore.open(path, create=True) as s:
        for r in rows:
            s.put(r)
    return path


def test_merge_copies_missing_cells_keeps_held_ones_and_counts_conflicts(tmp_path, capsys):
    cpu = store(tmp_path / "cpu", cell(seed=0, accuracy=65.35, device="cpu (X, AVX512, 2 threads)"))
    gpu = store(tmp_path / "gpu", cell(seed=0, accuracy=65.30, device="cuda (NVIDIA H200)"),
                cell(seed=1, accuracy=67.0, device="cuda (NVIDIA H200)"),
                cell(seed=2, accuracy=66.7, device="cuda (NVIDIA H200)"), cell(label="bn", method="bn", seed=1))
    assert main(["merge", str(cpu), str(gpu), "--only", "ttt", "--seeds", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "2 cells added" in out and "0 held there already" in out
    with ResultStore.open(cpu) as s:
        assert sorted((r["seed"], r["accuracy"], r["device"]) for r in s.cells()) == [
            (0, 65.35, "cpu (X, AVX512, 2 threads)"), (1, 67.0, "cuda (NVIDIA H200)"), (2, 66.7, "cuda (NVIDIA H200)")]
    assert main(["merge", str(cpu), str(gpu / "results.sqlite")]) == 0  # the rest: seed 0 is held, measured otherwise
    out = capsys.readouterr().out
    assert "1 cells added" in out and "3 held there already (kept), 1 of them measured there with another" in out
    with ResultStore.open(cpu) as s:
        assert s.count() == 4 and s.cells(seed=0, label="ttt")[0]["accuracy"] == 65.35


def test_merge_into_a_new_store_from_several_shards(tmp_path, capsys):
    a = store(tmp_path / "a", cell(corruption="fog"))
    b = store(tmp_path / "b", cell(corruption="snow"))
    assert main(["merge", str(tmp_path / "all"), str(a), str(b)]) == 0
    assert "2 cells added in all" in capsys.readouterr().out
    with ResultStore.open(tmp_path / "all") as s:
        assert sorted(r["corruption"] for r in s.cells()) == ["fog", "snow"]


def test_bad_input_fails_in_one_line_before_writing(tmp_path, capsys):
    good = store(tmp_path / "good", cell())
    dest = tmp_path / "dest"
    assert main(["merge", str(dest), str(good), str(tmp_path / "missing")]) == 2
    assert "SOURCE" in capsys.readouterr().err and not dest.exists()  # the first source was not copied either
    (tmp_path / "junk.sqlite").write_text("not a store")
    assert main(["merge", str(dest), str(tmp_path / "junk.sqlite")]) == 2
    assert "not a testtime results store" in capsys.readouterr().err
    assert main(["merge", str(good), str(good)]) == 2
    assert "the same store as DEST" in capsys.readouterr().err
    assert main(["merge", str(dest), str(good), "--seeds", "one"]) == 2
    assert "--seeds: expected comma-separated integers" in capsys.readouterr().err
    assert main(["merge", str(dest), str(good), "--only", ","]) == 2
    assert not dest.exists()

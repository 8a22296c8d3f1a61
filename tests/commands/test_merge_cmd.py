"""`testtime merge DEST SOURCE...`: shards' cells into one store, slices, conflicts, bad input; `testtime export
STORE OUT.jsonl[.gz]`: a store as text, a slice of it, back with `testtime merge` (exports among the sources)."""

from __future__ import annotations

import gzip
import json

from testtime.cli import main
from testtime.store import ResultStore
from testtime.store.archive import export_jsonl


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


def test_merge_an_export_with_stores_and_a_slice_of_it(tmp_path, capsys):
    gpu = store(tmp_path / "gpu", cell(seed=0, accuracy=65.30, device="cuda (NVIDIA H200)"),
                cell(seed=1, accuracy=67.0, device="cuda (NVIDIA H200)"), cell(label="bn", method="bn", seed=1))
    export_jsonl(gpu, tmp_path / "gpu.jsonl")
    cpu = store(tmp_path / "cpu", cell(seed=0, accuracy=65.35))
    other = store(tmp_path / "other", cell(corruption="snow"))
    assert main(["merge", str(cpu), str(tmp_path / "gpu.jsonl"), str(other), "--only", "ttt"]) == 0
    out = capsys.readouterr().out  # the same line as a store's
    assert (f"{tmp_path / 'gpu.jsonl'}: 1 cells added to {cpu / 'results.sqlite'}; 1 held there already (kept), "
            "1 of them measured there with another accuracy") in out
    assert f"{other / 'results.sqlite'}: 1 cells added" in out and "2 cells added in all" in out
    with ResultStore.open(cpu) as s:
        assert sorted((r["seed"], r["corruption"], r["device"]) for r in s.cells()) == [
            (0, "fog", None), (0, "snow", None), (1, "fog", "cuda (NVIDIA H200)")]


def test_a_bad_export_is_refused_before_any_source_is_copied(tmp_path, capsys):
    good = store(tmp_path / "good", cell())
    export_jsonl(good, tmp_path / "good.jsonl")
    text = (tmp_path / "good.jsonl").read_text()
    (tmp_path / "bad.jsonl").write_text(text.replace('"seed":0', '"seed":1'))  # an identity column changed
    dest = tmp_path / "dest"
    assert main(["merge", str(dest), str(good), str(tmp_path / "bad.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "SOURCE" in err and "bad.jsonl: line 2: cells: seed 1 does not match its config" in err
    assert err.count("\n") == 1 and not dest.exists()
    assert main(["merge", str(dest), str(tmp_path / "missing.jsonl.gz")]) == 2
    assert "SOURCE" in capsys.readouterr().err and not dest.exists()


def test_export_then_merge_rebuilds_the_store(tmp_path, capsys):
    run = store(tmp_path / "run", cell(seed=0, device="cpu (X)"), cell(seed=1, wall_s=90.0),
                cell(label="bn", method="bn"))
    out = tmp_path / "run.jsonl.gz"
    assert main(["export", str(run), str(out)]) == 0
    assert f"3 cells, 0 curves and 0 model rows written to {out}" in capsys.readouterr().out
    assert len(gzip.decompress(out.read_bytes()).decode().splitlines()) == 4  # the header and 3 cells
    assert main(["merge", str(tmp_path / "new"), str(out)]) == 0
    assert f"{out}: 3 cells added to " in capsys.readouterr().out
    with ResultStore.open(run) as a, ResultStore.open(tmp_path / "new") as b:
        assert {r["key"]: r for r in a.cells()} == {r["key"]: r for r in b.cells()}  # every column


def test_export_a_slice(tmp_path, capsys):
    run = store(tmp_path / "run", cell(seed=0), cell(seed=1), cell(seed=2), cell(label="bn", method="bn", seed=1))
    out = tmp_path / "slice.jsonl"
    assert main(["export", str(run / "results.sqlite"), str(out), "--only", "ttt", "--seeds", "1,2"]) == 0
    rows = [json.loads(r) for r in out.read_text().splitlines()[1:]]
    assert sorted((r["label"], r["seed"]) for r in rows) == [("ttt", 1), ("ttt", 2)]
    store(run, cell(seed=1, severity=3))
    assert main(["export", str(run), str(out), "--severities", "3"]) == 0
    rows = [json.loads(r) for r in out.read_text().splitlines()[1:]]
    assert [(r["seed"], r["severity"]) for r in rows] == [(1, 3)]
    assert main(["merge", str(tmp_path / "dest"), str(run), "--severities", "5", "--seeds", "1"]) == 0
    with ResultStore.open(tmp_path / "dest") as s:
        assert sorted((r["label"], r["seed"], r["severity"]) for r in s.cells()) == [("bn", 1, 5), ("ttt", 1, 5)]


def test_export_bad_input_fails_in_one_line_before_writing(tmp_path, capsys):
    run = store(tmp_path / "run", cell())
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "a.jsonl")], "RUN_DIR_OR_SQLITE"),
        ([str(run), str(tmp_path / "a.json")], "OUT"),
        ([str(run), str(tmp_path / "no" / "a.jsonl")], "OUT"),
        ([str(run), str(tmp_path / "a.jsonl"), "--seeds", "one"], "--seeds: expected comma-separated integers"),
        ([str(run), str(tmp_path / "a.jsonl"), "--only", ","], "--only: give at least one method label"),
    ]
    (tmp_path / "junk.sqlite").write_text("not a store")
    cases.append(([str(tmp_path / "junk.sqlite"), str(tmp_path / "a.jsonl")], "not a testtime results store"))
    for argv, match in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.sqlite", "run"]  # nothing written


def test_a_source_measured_on_other_weights_is_refused_in_one_line_before_writing(tmp_path, capsys):
    ident = {"kind": "supervised", "seed": 0}
    model = {"kind": "supervised", "backbone": "airbench", "dataset": "cifar10", "split": "test", "n_images": 10000,
             "seed": 0, "identity": ident, "accuracy_eval": 90.2, "accuracy_test_bn": 89.3}
    here = store(tmp_path / "here", cell(seed=0))
    with ResultStore.open(here) as s:
        s.put_model({**model, "weights": "a" * 64})
    same = store(tmp_path / "same", cell(seed=1))
    with ResultStore.open(same) as s:
        s.put_model({**model, "weights": "a" * 64})
    other = store(tmp_path / "other", cell(seed=2))  # the same settings, retrained on another CPU
    with ResultStore.open(other) as s:
        s.put_model({**model, "weights": "b" * 64})
    assert main(["merge", str(here), str(same), str(other)]) == 2
    err = capsys.readouterr().err
    assert f"SOURCE {other / 'results.sqlite'}: measured on other weights" in err and "aaaaaaaaaaaaaaaa..." in err
    assert len(err.strip().splitlines()) == 1
    with ResultStore.open(here) as s:  # the good source before it was not copied either
        assert [r["seed"] for r in s.cells()] == [0]
    assert main(["merge", str(tmp_path / "new"), str(other), str(here)]) == 2  # two sources that disagree
    assert "an earlier SOURCE" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert main(["merge", str(here), str(same)]) == 0
    with ResultStore.open(here) as s:
        assert sorted(r["seed"] for r in s.cells()) == [0, 1]

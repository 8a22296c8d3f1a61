"""`testtime bench CONFIG.yaml` on the shipped tiny config: resume, shards, bad input (real Fashion-MNIST)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from testtime.bench.cells import BenchRun
from testtime.cli import main
from testtime.store import ResultStore
from testtime.train.checkpoint import device_description

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) missing")


def cells_of(run_dir: Path) -> dict[str, tuple]:
    with ResultStore.open(run_dir) as store:
        return {c["key"]: (c["label"], c["protocol"], c["corruption"], c["seed"], c["accuracy"], c["hparams"],
                           c["forward_per_image"], c["backward_per_image"]) for c in store.cells()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the tiny grid; its checkpoint is copied into the other runs' dirs."""
    run = tmp_path_factory.mktemp("ref")
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) == 0
    return run


def _with_checkpoint(reference: Path, run: Path) -> Path:
    run.mkdir()
    for f in ("supervised.safetensors", "supervised.json"):
        (run / f).write_bytes((reference / f).read_bytes())  # trained once, reused (checked against settings)
    return run


@needs_fmnist
@pytest.mark.slow
def test_grid_has_every_cell_with_its_cost_and_heldout_choice(reference):
    cells = cells_of(reference)
    assert len(cells) == 2 * 2 * (1 + 1 + 2)  # seeds x corruptions x (source, bn, tent x 2 protocols)
    with ResultStore.open(reference) as store:
        rows = store.cells(label="tent")
    assert all(r["config"]["selection"]["on"] == ["spatter"] for r in rows)  # chosen on held-out only
    chosen = rows[0]["config"]["selection"]["chosen"]["lr"]
    assert all(r["hparams"] == {"lr": chosen} for r in rows)
    means = rows[0]["config"]["selection"]["means"]
    assert rows[0]["config"]["selection"]["mean_accuracy"] == max(means.values()) and len(means) == 2
    for r in rows:  # TENT: one forward and one backward pass per image, measured by hooks
        assert r["forward_per_image"] == 1.0 and r["backward_per_image"] == 1.0
        assert r["wall_s"] > 0 and r["images_per_s"] > 0 and r["peak_mem_mb"] is not None
        assert r["device"] == device_description("cpu")  # where it was measured, beside the result
    for r in ResultStore.open(reference).cells(label="source"):
        assert r["forward_per_image"] == 1.0 and r["backward_per_image"] == 0.0
    assert (reference / "grid.log").read_text().count("done:") == 16
    assert "[select] tent" in (reference / "bench.log").read_text()


@needs_fmnist
@pytest.mark.slow
def test_killed_mid_grid_then_rerun_gives_exactly_the_uninterrupted_cells(reference, tmp_path, monkeypatch):
    run = _with_checkpoint(reference, tmp_path / "run")
    real = BenchRun.evaluate_cell
    calls = []

    def dies_at_the_7th(self, cell):
        calls.append(cell["label"])
        if len(calls) == 7:  # a continual cell's stream is then replayed on resume
            raise KeyboardInterrupt
        return real(self, cell)

    monkeypatch.setattr(BenchRun, "evaluate_cell", dies_at_the_7th)
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) != 0
    assert len(cells_of(run)) == 6  # what was measured before the kill is kept
    monkeypatch.setattr(BenchRun, "evaluate_cell", real)
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) == 0
    assert cells_of(run) == cells_of(reference)
    assert "6 already stored, 10 to run" in (run / "grid.log").read_text()


@needs_fmnist
@pytest.mark.slow
def test_a_continual_stream_stopped_between_corruptions_resumes_from_its_checkpoint(reference, tmp_path, monkeypatch):
    run = _with_checkpoint(reference, tmp_path / "run")
    real = BenchRun.evaluate_cell

    def dies_at_the_second_corruption_of_a_stream(self, cell):
        if cell["protocol"] == "continual" and cell["corruption"] == "contrast":
            raise KeyboardInterrupt
        return real(self, cell)

    monkeypatch.setattr(BenchRun, "evaluate_cell", dies_at_the_second_corruption_of_a_stream)
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) != 0
    saved = sorted(p.name for p in (run / "streams").iterdir())
    assert len(saved) == 2 and saved[0].startswith("tent-sev5-seed") and saved[0].endswith(".json")
    monkeypatch.setattr(BenchRun, "evaluate_cell", real)
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) == 0
    assert cells_of(run) == cells_of(reference)  # bit for bit the uninterrupted run's cells
    assert "resumed at contrast" in (run / "bench.log").read_text()
    assert not list((run / "streams").iterdir())  # each stream's checkpoint goes when its last cell is in


@needs_fmnist
@pytest.mark.slow
def test_two_shards_fill_the_same_store_as_one_run(reference, tmp_path):
    run = _with_checkpoint(reference, tmp_path / "run")
    assert main(["bench", "tiny", "--run-dir", str(run), "--shard", "1/2", "--quiet"]) == 0
    assert len(cells_of(run)) == 8
    assert main(["bench", "tiny", "--run-dir", str(run), "--shard", "0/2", "--quiet"]) == 0
    assert cells_of(run) == cells_of(reference)


@pytest.mark.parametrize("sets,match", [
    (["methods.tent.candidatez.lr=[1]"], r"methods.tent.candidatez.*did you mean 'methods.tent.candidates'"),
    (["eval_seedz=[1]"], r"unknown key\(s\) eval_seedz; valid: .*did you mean 'eval_seeds'"),
    (["source.supervised.epoch=1"], r"source.supervised.epoch.*did you mean 'source.supervised.epochs'"),
    (["methods.tent.settings.lrr=1"], r"methods.tent.settings.lrr.*did you mean 'methods.tent.settings.lr'"),
    (["batch_size=big"], "batch_size: expected an integer, got 'big'"),
    (["severities=[7]"], "each severity must be 1..5"),
    (["methods={}"], "zero cells"),
    (["eval_seeds=[]"], "zero cells"),
    (["heldout=[contrast]"], r"\['contrast'\] are test corruptions"),
    (["methods.tent.method=tentt"], "unknown method 'tentt'"),
])
def test_bad_bench_config_fails_before_any_work(tmp_path, capsys, sets, match):
    argv = ["bench", "tiny", "--run-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(match, err), err
    assert not (tmp_path / "run").exists()


def test_grid_refuses_a_store_of_another_version_and_leaves_it(tmp_path, capsys):
    run = tmp_path / "run"
    ResultStore.open(run, create=True).close()
    con = sqlite3.connect(run / "results.sqlite")
    with con:
        con.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    con.close()
    before = (run / "results.sqlite").read_bytes()
    assert main(["bench", "tiny", "--run-dir", str(run)]) == 2
    assert "schema version 99" in capsys.readouterr().err
    assert (run / "results.sqlite").read_bytes() == before
    assert not (run / "supervised.safetensors").exists()


def test_flags_of_the_preset_mode_are_refused_with_a_config(tmp_path, capsys):
    assert main(["bench", "tiny", "--methods", "tent", "--run-dir", str(tmp_path)]) == 2
    assert "--methods: not with a bench CONFIG" in capsys.readouterr().err
    assert main(["bench", "no-such-grid.yaml", "--run-dir", str(tmp_path)]) == 2
    assert "no such file, nor a shipped bench config" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny", "demo", "cifar10-cpu-bench"])
def test_every_shipped_bench_config_builds(name):
    from testtime.bench.spec import expand, list_bench_configs, load_bench_config, source_config

    assert name in list_bench_configs()
    bench = load_bench_config(name)
    assert expand(bench) and source_config(bench).name
    assert not set(bench.heldout) & set(bench.corruptions)


def test_cpu_bench_config_has_the_protocol_of_docs_benchmark_md():
    from testtime.bench.spec import expand, load_bench_config, source_config
    from testtime.data.names import CORRUPTIONS_15, CORRUPTIONS_EXTRA

    bench = load_bench_config("cifar10-cpu-bench")
    pairs = expand(bench)
    assert bench.corruptions == CORRUPTIONS_15 and bench.heldout == CORRUPTIONS_EXTRA
    assert bench.severities == (5, 3) and bench.eval_seeds == (0, 1, 2)
    assert source_config(bench).data.test_per_class == 200
    assert len(pairs) * 15 * 2 * 3 == 3150
    for m, protocols in (("tent-paper", {"continual"}), ("cotta-paper", {"continual", "reset-per-domain"})):
        assert {p for label, p in pairs if label == m} == protocols  # the papers' own lr, no held-out choice
        assert not bench.methods[m].candidates and not bench.methods[m].settings
    # CoTTA without its augmentation averaging (item 6: where its gain comes from), both protocols, paper lr
    assert {p for label, p in pairs if label == "cotta-ap0"} == {"continual", "reset-per-domain"}
    assert bench.methods["cotta-ap0"].settings == {"ap": 0.0} and not bench.methods["cotta-ap0"].candidates
    for m in ("tent", "eata", "sar", "cotta"):
        assert {p for label, p in pairs if label == m} == {"reset-per-domain", "continual"}
        assert bench.methods[m].candidates["lr"]
    for m in ("cta-c", "y-model", "ttt", "ttt-0-steps", "ttt++", "clust3", "nc-ttt", "rec-ttt", "cta-0-steps",
              "cta-bn-source", "cta-lineage"):
        assert {p for label, p in pairs if label == m} == {"episodic"}
    assert {p for label, p in pairs if label == "cta"} == {"episodic", "reset-per-domain"}
    assert bench.methods["cta-0-steps"].settings == {"steps": 0}
    assert bench.methods["ttt-0-steps"].method == "ttt" and bench.methods["ttt-0-steps"].settings == {"steps": 0}
    assert bench.methods["cta-bn-source"].settings == {"steps": 1, "bn": "source"}
    assert bench.methods["cta-lineage"].settings == {"steps": 1, "bn": "lineage"}
    assert bench.methods["eata"].settings == {"d_margin": 0.4, "fisher_alpha": 1.0}  # EATA's CIFAR settings
    assert {p for label, p in pairs if label == "rdumb"} == {"continual"}
    # the same candidate budget as CTA's (4 decades) for every lr-chosen BN-based baseline that chose an edge
    for m in ("eata", "sar", "rdumb", "deyo"):
        assert bench.methods[m].candidates["lr"] == (2.5e-4, 2.5e-3, 2.5e-2, 2.5e-1), m
    assert bench.methods["cotta"].candidates["lr"] == (1e-4, 1e-3, 1e-2, 1e-1)
    assert len(bench.methods["cta"].candidates["lr"]) == 4
    # at least 3 lr candidates for every chosen lr, so a choice at an edge is told apart (the summary flags it)
    for label, spec in bench.methods.items():
        if "lr" in spec.candidates:
            assert len(spec.candidates["lr"]) >= 3, label
    assert bench.methods["memo"].candidates["lr"] == (5e-4, 5e-3, 5e-2)  # MEMO's 5e-3 in the middle


def test_method_settings_are_range_checked(tmp_path, capsys):
    assert main(["bench", "tiny", "--run-dir", str(tmp_path / "r"), "--set", "methods.bn.settings.momentum=2"]) == 2
    assert "methods.bn.settings.momentum must be >= 0 and <= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    # a bad candidate is named as a candidate, not as a setting
    bad = "methods.tent.candidates={lr: [1e-3, -1]}"
    assert main(["bench", "tiny", "--run-dir", str(tmp_path / "r"), "--set", bad]) == 2
    assert "methods.tent.candidates.lr must be > 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("sets,match", [
    (["eval_seeds=[0,0]"], r"eval_seeds: listed twice: \[0\]"),
    (["name=../x"], "name must be a plain name"),
    (["eval_seeds=[-1]"], "eval_seeds"),
])
def test_grid_lists_are_checked(tmp_path, capsys, sets, match):
    argv = ["bench", "tiny", "--run-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 2
    assert re.search(match, capsys.readouterr().err)


@needs_fmnist
@pytest.mark.slow
def test_only_runs_a_slice_whose_cells_are_the_whole_grids(reference, tmp_path):
    run = _with_checkpoint(reference, tmp_path / "run")
    assert main(["bench", "tiny", "--run-dir", str(run), "--only", "bn,tent", "--quiet"]) == 0
    sliced = cells_of(run)
    assert {v[0] for v in sliced.values()} == {"bn", "tent"}
    assert sliced == {k: v for k, v in cells_of(reference).items() if v[0] in ("bn", "tent")}


@needs_fmnist
@pytest.mark.slow
def test_fewer_eval_seeds_or_more_severities_keep_the_cells_of_the_whole_grid(reference, tmp_path):
    """`--set eval_seeds=[1]` (or severities) runs a slice whose cells are the whole grid's, so a
    later full run skips them; a severity the reference never had adds cells of its own."""
    run = _with_checkpoint(reference, tmp_path / "run")
    argv = ["bench", "tiny", "--run-dir", str(run), "--only", "bn", "--quiet"]
    assert main(argv + ["--set", "eval_seeds=[1]"]) == 0
    ref = cells_of(reference)
    assert cells_of(run) == {k: v for k, v in ref.items() if v[0] == "bn" and v[3] == 1}
    assert main(argv + ["--set", "severities=[3,5]"]) == 0
    with ResultStore.open(run) as store:
        rows = store.cells(label="bn")
    assert len(rows) == 2 * 2 * 2  # 2 severities x 2 eval seeds x 2 corruptions
    assert (run / "grid.log").read_text().count("done:") == 2 + 6  # the first run's 2 cells not rerun
    assert {k: v for k, v in cells_of(run).items() if k in ref} == {k: v for k, v in ref.items() if v[0] == "bn"}
    assert sorted({r["severity"] for r in rows}) == [3, 5]


def test_only_names_the_valid_labels(tmp_path, capsys):
    assert main(["bench", "tiny", "--run-dir", str(tmp_path / "r"), "--only", "bn,tentt"]) == 2
    err = capsys.readouterr().err
    assert "--only: tentt: not a method label of tiny; valid: source, bn, tent" in err
    assert not (tmp_path / "r").exists()
    assert main(["bench", "--preset", "demo", "--only", "bn", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--only: only with a bench CONFIG" in capsys.readouterr().err


@needs_fmnist
@pytest.mark.slow
def test_grid_stores_its_source_models_clean_accuracy_on_the_whole_test_split(reference):
    import numpy as np
    import torch

    from testtime.bench.evaluation import clean_accuracy
    from testtime.bench.runner import to_float_batch
    from testtime.bench.spec import load_bench_config

    with ResultStore.open(reference) as store:
        rows = store.models()
    assert [r["kind"] for r in rows] == ["supervised"]  # source, bn and tent share the supervised model
    row = rows[0]
    run = BenchRun(load_bench_config("tiny"), reference, log=None, progress=False)  # loads the checkpoint
    model, pool = run.model("supervised"), run.data.pool
    assert (row["split"], row["n_images"], row["dataset"], row["backbone"]) == ("fashion-mnist/test", 10000,
                                                                                  "fashion-mnist", "resnet8")
    assert row["identity"] == run.source_identity("supervised") and row["seed"] == run.cfg.seed
    model.eval()
    with torch.no_grad():  # eval mode: every test image once, in file order
        pred = np.concatenate([model(to_float_batch(pool.images[s:s + 500], "cpu")).argmax(1).numpy()
                               for s in range(0, len(pool), 500)])
    assert row["accuracy_eval"] == pytest.approx(100.0 * np.mean(pred == pool.labels), abs=0.011)  # 1 image
    assert row["accuracy_test_bn"] == clean_accuracy(model, pool, seed=run.cfg.seed, test_batch_bn=True)
    assert row["accuracy_eval"] == clean_accuracy(model, pool, seed=run.cfg.seed)
    assert "[clean] supervised: eval mode" in (reference / "bench.log").read_text()


@needs_fmnist
@pytest.mark.slow
def test_clean_accuracy_changes_no_cell_and_is_measured_once(reference, tmp_path, monkeypatch):
    import testtime.bench.evaluation as evaluation
    import testtime.bench.experiment as experiment

    run = _with_checkpoint(reference, tmp_path / "run")
    real_record = experiment.record_clean_accuracy
    monkeypatch.setattr(experiment, "record_clean_accuracy", lambda *a, **k: 0)  # the grid before the feature
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) == 0
    assert cells_of(run) == cells_of(reference)  # same keys and results with the rows recorded (reference)
    with ResultStore.open(run) as store:
        assert store.models() == []
    monkeypatch.setattr(experiment, "record_clean_accuracy", real_record)
    calls = []
    real_clean = evaluation.clean_accuracy
    monkeypatch.setattr(evaluation, "clean_accuracy", lambda *a, **k: calls.append(k) or real_clean(*a, **k))
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) == 0  # resume: only the model row is new
    assert [k.get("test_batch_bn", False) for k in calls] == [False, True]
    assert cells_of(run) == cells_of(reference)
    with ResultStore.open(run) as store, ResultStore.open(reference) as ref:
        first = store.models()
        drop = ("wall_s", "created_utc")
        assert [{k: v for k, v in r.items() if k not in drop} for r in first] == [
            {k: v for k, v in r.items() if k not in drop} for r in ref.models()]
    calls.clear()
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) == 0  # stored: recomputes nothing
    assert calls == []
    with ResultStore.open(run) as store:
        assert store.models() == first
    assert "[clean] stored already: supervised" in (run / "bench.log").read_text()


def test_load_models_loads_each_kind_once_in_order_of_first_use():
    from types import SimpleNamespace

    from testtime.bench.source_models import load_models
    from testtime.bench.spec import load_bench_config

    sets = ["methods.cta={method: cta}", "methods.y={method: tent, model: joint}", "methods.c2={method: cta}"]
    bench = load_bench_config("tiny", sets)
    loaded = []
    run = SimpleNamespace(bench=bench, model=loaded.append)
    assert load_models(run) == ["supervised", "aligned", "joint"]
    assert loaded == ["supervised", "aligned", "joint"]


@needs_fmnist
@pytest.mark.slow
def test_a_store_beside_retrained_weights_is_refused_before_any_cell(reference, tmp_path, capsys):
    import json

    from testtime.train.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.sqlite").write_bytes((reference / "results.sqlite").read_bytes())  # kept, or merged back
    tensors, meta = load_checkpoint(reference / "supervised")
    name = next(k for k, v in tensors.items() if v.is_floating_point() and k.endswith("weight"))
    tensors[name] = tensors[name] + 1e-6  # the same command on another CPU: other rounding, other weights
    save_checkpoint(run / "supervised", tensors, meta)
    assert json.loads((run / "supervised.json").read_text())["meta"] == meta
    before = cells_of(run)
    with ResultStore.open(run) as store:
        store.conn.execute("DELETE FROM cells WHERE rowid IN (SELECT rowid FROM cells LIMIT 2)")
        store.conn.commit()
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its cells were measured on other weights than the run dir holds now" in err
    assert "source model 'supervised'" in err and "move the store away or give another run dir" in err
    assert len(cells_of(run)) == len(before) - 2  # no cell measured on the retrained weights
    (run / "results.sqlite").rename(run / "old.sqlite")
    assert main(["bench", "tiny", "--run-dir", str(run), "--quiet"]) == 0  # a fresh store: measured again
    assert cells_of(run).keys() == before.keys()


@needs_fmnist
@pytest.mark.slow
def test_stop_by_far_ahead_runs_the_whole_slice(reference, tmp_path, capsys):
    run = _with_checkpoint(reference, tmp_path / "run")
    assert main(["bench", "tiny", "--run-dir", str(run), "--only", "bn", "--stop-by", "3h", "--quiet"]) == 0
    assert "--stop-by" not in capsys.readouterr().out  # nothing left
    assert cells_of(run) == {k: v for k, v in cells_of(reference).items() if v[0] == "bn"}

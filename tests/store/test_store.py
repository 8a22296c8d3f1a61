"""The results store: keys, versioning, atomic writes, queries, merging, importing JSON results."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from testtime.store import ResultStore, StoreVersionError, canonical_json, cell_key, import_results_json
from testtime.store.importer import split_protocol


def cell(**kw):
    base = {"method": "tent", "corruption": "fog", "severity": 5, "seed": 0, "protocol": "episodic",
            "backbone": "resnet8", "hparams": {"lr": 1e-3}}
    return {**base, **kw}


def test_key_is_sha256_of_canonical_config():
    c = cell(config={"data": {"b": 1, "a": [1, 2]}})
    expected = {"data": {"a": [1, 2], "b": 1}, "method": "tent", "corruption": "fog", "severity": 5, "seed": 0,
                "protocol": "episodic", "backbone": "resnet8", "hparams": {"lr": 0.001}}
    text = json.dumps(expected, sort_keys=True, separators=(",", ":"))
    assert cell_key(c) == hashlib.sha256(text.encode()).hexdigest()
    assert canonical_json({"b": (1, 2), "a": 1}) == '{"a":1,"b":[1,2]}'
    # metrics are not part of the key; any config change is
    assert cell_key({**c, "accuracy": 50.0, "wall_s": 3.0}) == cell_key(c)
    assert cell_key(cell(hparams={"lr": 1e-4})) != cell_key(cell())
    assert cell_key(cell(seed=1)) != cell_key(cell())


def test_put_has_and_query(tmp_path):
    with ResultStore.open(tmp_path, create=True) as store:
        k = store.put(cell(accuracy=61.5, n_images=500, wall_s=2.0, images_per_s=250.0))
        store.put(cell(method="bn", hparams={}, accuracy=55.0))
        assert store.has(k) and not store.has("0" * 64)
        assert store.count() == 2
        rows = store.cells(method="tent")
        assert len(rows) == 1 and rows[0]["accuracy"] == 61.5 and rows[0]["hparams"] == {"lr": 1e-3}
        assert rows[0]["label"] == "tent" and rows[0]["peak_mem_mb"] is None
        assert store.cells(hparams={}) [0]["method"] == "bn"
        assert store.distinct("method") == ["tent", "bn"]
        store.put(cell(accuracy=62.0))  # same config: replaced, not duplicated
        assert store.count() == 2 and store.cells(method="tent")[0]["accuracy"] == 62.0
    assert (tmp_path / "results.sqlite").is_file()


@pytest.mark.parametrize("bad, match", [
    ({"accuracy": None}, "accuracy"),
    ({"accuracy": 101.0}, r"\[0, 100\]"),
    ({"accuracy": float("nan")}, "finite"),
    ({"severity": None, "accuracy": 1.0}, "missing field"),
    ({"severity": "5", "accuracy": 1.0}, "integers"),
])
def test_put_rejects_bad_rows(bad, match):
    store = ResultStore.memory()
    with pytest.raises(ValueError, match=match):
        store.put(cell(**bad))
    assert store.count() == 0


def test_put_many_is_all_or_nothing(tmp_path):
    store = ResultStore.open(tmp_path, create=True)
    with pytest.raises(ValueError):
        store.put_many([cell(accuracy=10.0), cell(corruption="snow", accuracy=float("inf"))])
    assert store.count() == 0
    # a failure inside the transaction (after the first insert) rolls back too
    with pytest.raises(sqlite3.OperationalError):
        with store.conn:
            store._insert("cells", store._cell_values(cell(accuracy=10.0)), replace=False)
            store.conn.execute("INSERT INTO nowhere VALUES (1)")
    assert store.count() == 0


def test_other_schema_version_is_refused_and_untouched(tmp_path):
    ResultStore.open(tmp_path, create=True).put(cell(accuracy=1.0))
    path = tmp_path / "results.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreVersionError, match="schema version 99; this testtime reads version 1"):
        ResultStore.open(path)
    with pytest.raises(StoreVersionError):
        ResultStore.copy_to_memory(path)
    assert path.read_bytes() == before


def test_not_a_store_and_missing(tmp_path):
    junk = tmp_path / "results.sqlite"
    junk.write_text("hello")
    with pytest.raises(StoreVersionError, match="not a testtime results store"):
        ResultStore.open(junk)
    assert junk.read_text() == "hello"
    with pytest.raises(FileNotFoundError, match="no results store"):
        ResultStore.open(tmp_path / "nope" / "results.sqlite")


def test_merge_from_shard_store(tmp_path):
    a = ResultStore.open(tmp_path / "a", create=True)
    b = ResultStore.open(tmp_path / "b", create=True)
    a.put(cell(accuracy=1.0))
    b.put(cell(accuracy=2.0))  # same cell measured elsewhere: the one already here is kept
    b.put(cell(corruption="snow", accuracy=3.0))
    b.put_curve(cell(accuracies=[1.0, 2.0]))
    assert a.merge_from(tmp_path / "b") == 1
    assert sorted(r["accuracy"] for r in a.cells()) == [1.0, 3.0]
    assert a.curves()[0]["accuracies"] == [1.0, 2.0]


def test_split_protocol():
    line = "protocol=episodic, reset=batch, batch_size=125, predict=method default (after) update, seed=0"
    assert split_protocol(line) == ("protocol=episodic, reset=batch, batch_size=125, seed=0", "after")
    assert split_protocol("protocol=x, predict=before update") == ("protocol=x", "before")
    assert split_protocol("protocol=x, predict=method default update, seed=1") == ("protocol=x, seed=1", None)


def results_json(tmp_path):
    cfg = {"seed": 0, "model": {"arch": "resnet8", "norm": "batch"},
           "data": {"dataset": "imagefolder", "root": None, "root_env": "X", "test_per_class": 2},
           "eval": {"severity": 5}, "ttt": {"batch_size": 4, "seed": 0, "tau": 0.01, "bn": "batch"}}
    proto = "protocol=episodic, reset=batch, batch_size=4, predict={} update, shuffle=True, seed=0"
    pipeline = {
        "config": cfg, "protocol": proto.format("after"),
        "rows": {
            "supervised+bn": {"method": "bn", "settings": {}, "accuracy": {"fog": 40.0, "snow": 50.0},
                              "total": {"fog": 20, "snow": 20}, "wall_s": 4.0,
                              "protocol": proto.format("method default (before)")},
            "cta": {"method": "cta", "settings": {"lr": 1e-5, "steps": 3}, "accuracy": {"fog": 60.0, "snow": 70.0},
                    "total": {"fog": 20, "snow": 20}, "wall_s": 8.0,
                    "protocol": proto.format("method default (after)")},
        },
        "heldout": {"curves": {"1e-05": {"per_domain": {"spatter": [10.0, 20.0, 30.0]}, "mean": [10.0, 20.0, 30.0]}}},
    }
    bench = {"config": cfg, "protocol": proto.format("method default"), "severity": 5, "seed": 0,
             "rows": {"tent": {"method": "tent", "settings": {}, "order": "before", "accuracy": {"fog": 45.0},
                               "total": {"fog": 20}, "wall_s": 2.0, "protocol": proto.format("before")}}}
    (tmp_path / "results.json").write_text(json.dumps(pipeline))
    (tmp_path / "bench-episodic.json").write_text(json.dumps(bench))
    return tmp_path


def test_import_results_and_bench_json(tmp_path):
    run = results_json(tmp_path)
    store = ResultStore.memory()
    assert import_results_json(run / "results.json", store) == 5  # 4 cells + 1 curve
    assert import_results_json(run / "bench-episodic.json", store) == 1
    assert import_results_json(run / "results.json", store) == 5  # idempotent: replaced, not duplicated
    assert store.count() == 5 and store.count("curves") == 1
    protos = set(store.distinct("protocol"))
    assert protos == {"protocol=episodic, reset=batch, batch_size=4, shuffle=True, seed=0"}  # one table
    bn = store.cells(label="supervised+bn", corruption="fog")[0]
    assert bn["method"] == "bn" and bn["hparams"] == {"order": "before"} and bn["backbone"] == "resnet8"
    assert bn["wall_s"] == pytest.approx(2.0) and bn["images_per_s"] == pytest.approx(10.0)
    assert bn["n_images"] == 20 and bn["dataset"] == "imagefolder ($X), 2/class"
    assert store.cells(label="cta")[0]["hparams"] == {"lr": 1e-5, "steps": 3, "order": "after"}
    assert store.cells(method="tent")[0]["hparams"] == {"order": "before"}
    curve = store.curves()[0]
    assert curve["accuracies"] == [10.0, 20.0, 30.0] and curve["hparams"]["lr"] == 1e-5


def test_import_rejects_other_json(tmp_path):
    p = tmp_path / "results.json"
    p.write_text(json.dumps({"rows": {}}))
    with pytest.raises(ValueError, match="no 'config'"):
        import_results_json(p, ResultStore.memory())
    p.write_text(json.dumps({"config": {"seed": 0}, "clean": {"supervised": 90.0}}))  # a run in progress
    assert import_results_json(p, ResultStore.memory()) == 0
    p.write_text("{")
    with pytest.raises(ValueError, match="cannot read JSON"):
        import_results_json(p, ResultStore.memory())

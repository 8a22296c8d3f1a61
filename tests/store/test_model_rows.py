"""The store's ``models`` table: round trip, key, bad rows, merging, and stores written before the table."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from testtime.store import ResultStore, model_key, weights_conflicts
from testtime.store.db import _MODELS_SQL, _SCHEMA

IDENT = {"kind": "supervised", "seed": 0, "model": {"arch": "resnet8"}, "supervised": {"epochs": 1}}


def model(**kw):
    base = {"kind": "supervised", "backbone": "resnet8", "dataset": "fashion-mnist", "split": "fashion-mnist/test",
            "n_images": 10000, "seed": 0, "identity": IDENT, "accuracy_eval": 71.25, "accuracy_test_bn": 69.5,
            "wall_s": 3.5}
    return {**base, **kw}


def test_model_key_is_sha256_of_canonical_json():
    text = json.dumps({"identity": IDENT, "kind": "supervised", "n_images": 10000, "seed": 0,
                       "split": "fashion-mnist/test"}, sort_keys=True, separators=(",", ":"))
    assert model_key("supervised", IDENT, "fashion-mnist/test", 10000, 0) == hashlib.sha256(text.encode()).hexdigest()
    assert model_key("supervised", IDENT, "fashion-mnist/test", 10000, 1) != model_key(
        "supervised", IDENT, "fashion-mnist/test", 10000, 0)


def test_put_model_round_trip(tmp_path):
    with ResultStore.open(tmp_path, create=True) as store:
        assert store.models() == []
        k = store.put_model(model())
        assert k == model_key("supervised", IDENT, "fashion-mnist/test", 10000, 0)
        assert store.has_model(k) and not store.has_model("0" * 64)
        store.put_model(model(kind="aligned", identity={**IDENT, "kind": "aligned"}, accuracy_eval=65.0))
        store.put_model(model(accuracy_eval=72.0))  # same model measured again: replaced
    with ResultStore.open(tmp_path) as store:
        rows = store.models()
        assert store.count() == 0  # no cell was written
    assert [(r["kind"], r["accuracy_eval"], r["accuracy_test_bn"]) for r in rows] == [
        ("aligned", 65.0, 69.5), ("supervised", 72.0, 69.5)]
    sup = rows[1]
    assert sup["key"] == k and sup["identity"] == IDENT and sup["n_images"] == 10000 and sup["seed"] == 0
    assert sup["split"] == "fashion-mnist/test" and sup["wall_s"] == 3.5 and sup["dataset"] == "fashion-mnist"


@pytest.mark.parametrize("bad, match", [
    ({"accuracy_eval": None}, "missing field"),
    ({"identity": None}, "missing field"),
    ({"accuracy_test_bn": 100.5}, r"\[0, 100\]"),
    ({"accuracy_eval": float("nan")}, "finite"),
    ({"n_images": 0}, "n_images must be a positive integer"),
    ({"seed": "0"}, "seed an integer"),
])
def test_put_model_rejects_bad_rows(bad, match):
    store = ResultStore.memory()
    with pytest.raises(ValueError, match=match):
        store.put_model(model(**bad))
    assert store.models() == []


def old_store(path):
    """A store as written before the models table: schema version 1, tables meta, cells, curves."""
    path.mkdir()
    conn = sqlite3.connect(path / "results.sqlite")
    conn.executescript(_SCHEMA + "INSERT INTO meta VALUES ('schema_version', '1');")
    conn.close()
    return path


def tables(path):
    conn = sqlite3.connect(path / "results.sqlite")
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_a_store_without_the_table_opens_reads_and_gains_it_on_the_first_row(tmp_path):
    run = old_store(tmp_path / "old")
    with ResultStore.open(run) as store:
        store.put({"method": "bn", "corruption": "fog", "severity": 5, "seed": 0, "protocol": "episodic",
                   "backbone": "resnet8", "accuracy": 50.0})
        assert store.models() == [] and not store.has_model("0" * 64)
    with ResultStore.copy_to_memory(run) as mem:  # what the report reads
        assert mem.models() == [] and mem.count() == 1
    assert "models" not in tables(run)  # reading does not change the file
    with ResultStore.open(run) as store:
        k = store.put_model(model())
        assert store.has_model(k) and store.models()[0]["accuracy_eval"] == 71.25 and store.count() == 1
    assert "models" in tables(run)


def test_merge_from_copies_model_rows_and_accepts_stores_without_them(tmp_path):
    a = ResultStore.open(tmp_path / "a", create=True)
    b = ResultStore.open(tmp_path / "b", create=True)
    a.put_model(model(accuracy_eval=10.0))
    b.put_model(model(accuracy_eval=20.0))  # the same model measured elsewhere: the row here is kept
    b.put_model(model(kind="joint", identity={**IDENT, "kind": "joint"}))
    a.merge_from(tmp_path / "b")
    assert [(r["kind"], r["accuracy_eval"]) for r in a.models()] == [("supervised", 10.0), ("joint", 71.25)]
    a.merge_from(old_store(tmp_path / "old"))
    assert len(a.models()) == 2


def test_weights_are_kept_beside_the_row_and_other_weights_are_never_merged(tmp_path):
    a = ResultStore.open(tmp_path / "a", create=True)
    a.put_model(model(weights="a" * 64))
    assert a.models()[0]["weights"] == "a" * 64
    b = ResultStore.open(tmp_path / "b", create=True)
    b.put({"method": "bn", "corruption": "fog", "severity": 5, "seed": 0, "protocol": "episodic",
           "backbone": "resnet8", "accuracy": 50.0})
    b.put_model(model(weights="b" * 64))
    with pytest.raises(ValueError, match=r"other weights than this store's \(source model 'supervised' .*"
                                         r"weights aaaaaaaaaaaaaaaa\.\.\. against bbbbbbbbbbbbbbbb\.\.\..*nothing"):
        a.merge_from(tmp_path / "b")
    assert a.count() == 0
    assert weights_conflicts(a.models(), [{**model(), "key": a.models()[0]["key"], "weights": None}]) == []
    c = ResultStore.open(tmp_path / "c", create=True)
    c.put_model(model())  # no fingerprint (a row written before the column): pairs with any
    assert c.models()[0]["weights"] is None
    c.merge_from(tmp_path / "b")
    assert c.count() == 1


def test_a_models_table_without_the_weights_column_gains_it(tmp_path):
    run = old_store(tmp_path / "old")
    conn = sqlite3.connect(run / "results.sqlite")
    conn.execute(_MODELS_SQL.replace(",\n    weights TEXT", ""))
    conn.commit(), conn.close()
    assert "weights" not in {r[1] for r in sqlite3.connect(run / "results.sqlite").execute("PRAGMA table_info(models)")}
    with ResultStore.open(run) as store:
        assert store.models() == []
        k = store.put_model(model())
        store.set_model_weights(k, "c" * 64)
        store.set_model_weights(k, "d" * 64)  # only a row without one gets it
        assert store.models()[0]["weights"] == "c" * 64

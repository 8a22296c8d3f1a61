"""A store as JSONL (``testtime.store.archive``): round trip, deterministic bytes, gzip, slices, merging into
a store that holds keys, and files that are refused whole (bad JSON, no header, a config changed without its key)."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3

import pytest

from testtime.store import ResultStore, canonical_json, cell_key
from testtime.store.archive import export_jsonl, header, import_jsonl, read_jsonl

GPU = "cuda (NVIDIA H200)"
IDENT = {"kind": "supervised", "seed": 0, "model": {"arch": "resnet8"}}


def cell(**kw):
    base = {"method": "tent", "label": "tent", "corruption": "fog", "severity": 5, "seed": 0, "protocol": "episodic",
            "backbone": "resnet8", "dataset": "cifar10", "hparams": {"lr": 1e-3, "steps": 1},
            "config": {"batch_size": 200, "selection": None, "source": {"kind": "supervised", "epochs": 18}}}
    return {**base, **kw}


def model(**kw):
    base = {"kind": "supervised", "backbone": "resnet8", "dataset": "cifar10", "split": "cifar10/test",
            "n_images": 10000, "seed": 0, "identity": IDENT, "accuracy_eval": 71.25, "accuracy_test_bn": 69.5,
            "wall_s": 3.5}
    return {**base, **kw}


def make_store(path):
    with ResultStore.open(path, create=True) as s:
        s.put(cell(accuracy=61.25, n_images=2000, wall_s=88.5, images_per_s=22.6, peak_mem_mb=512.0,
                   forward_per_image=1.0, backward_per_image=1.0, device=GPU))
        s.put(cell(corruption="snow", accuracy=55.5))  # no cost, no device: NULLs
        s.put(cell(label="bn", method="bn", hparams={}, seed=1, accuracy=50.0, device="cpu (X, 2 threads)"))
        s.put_curve(cell(accuracies=[40.0, 55.5, 61.25]))
        s.put_model(model())
    return path


def table(path, name):
    conn = sqlite3.connect(path / "results.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {name} ORDER BY key")]
    finally:
        conn.close()


def lines(path):
    return path.read_text().splitlines()


def test_round_trip_keeps_every_column_of_every_row(tmp_path):
    src = make_store(tmp_path / "src")
    out = tmp_path / "store.jsonl"
    assert export_jsonl(src, out) == {"cells": 3, "curves": 1, "models": 1}
    assert import_jsonl(out, tmp_path / "dst") == {"cells": 3, "curves": 1, "models": 1, "held": 0, "differ": 0}
    for name in ("cells", "curves", "models"):
        assert table(tmp_path / "dst", name) == table(src, name)  # created_utc, device, cost included
    assert {r["device"] for r in table(src, "cells")} == {GPU, "cpu (X, 2 threads)", None}
    export_jsonl(tmp_path / "dst", tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()  # the rebuilt store exports the same bytes


def test_export_is_deterministic_sorted_and_has_a_header(tmp_path):
    src = make_store(tmp_path / "src")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    export_jsonl(src, a)
    export_jsonl(src / "results.sqlite", b)
    assert a.read_bytes() == b.read_bytes()
    first, *rows = lines(a)
    assert json.loads(first) == header() and first.startswith('{"format":"testtime-store-jsonl","schema_version":1,')
    parsed = [json.loads(r) for r in rows]
    assert [(r["table"], r["key"]) for r in parsed] == sorted((r["table"], r["key"]) for r in parsed)
    assert all(r == canonical_json(json.loads(r)) for r in rows)  # sorted keys, no spaces
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_gz_is_the_same_text_and_deterministic(tmp_path):
    src = make_store(tmp_path / "src")
    export_jsonl(src, tmp_path / "s.jsonl")
    export_jsonl(src, tmp_path / "a.jsonl.gz")
    export_jsonl(src, tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()) == (tmp_path / "s.jsonl").read_bytes()
    assert import_jsonl(tmp_path / "a.jsonl.gz", tmp_path / "dst")["cells"] == 3
    assert table(tmp_path / "dst", "cells") == table(src, "cells")


def test_keep_slices_cells_and_curves_not_models(tmp_path):
    src = make_store(tmp_path / "src")
    out = tmp_path / "tent.jsonl"
    assert export_jsonl(src, out, keep=lambda r: r["label"] == "tent") == {"cells": 2, "curves": 1, "models": 1}
    assert {json.loads(r).get("label") for r in lines(out)[1:]} == {"tent", None}
    seed1 = read_jsonl(tmp_path / "tent.jsonl", keep=lambda r: r["seed"] == 1)
    assert (len(seed1["cells"]), len(seed1["curves"]), len(seed1["models"])) == (0, 0, 1)


def test_rows_are_inserted_in_the_order_they_were_measured(tmp_path):
    src = make_store(tmp_path / "src")
    conn = sqlite3.connect(src / "results.sqlite")  # the bn cell measured first, then tent snow, then tent fog
    for corr, label, t in (("fog", "tent", "2026-12-03 00:00:00"), ("snow", "tent", "2026-12-02 00:00:00"),
                           ("fog", "bn", "2026-12-01 00:00:00")):
        conn.execute("UPDATE cells SET created_utc = ? WHERE corruption = ? AND label = ?", (t, corr, label))
    conn.commit()
    conn.close()
    export_jsonl(src, tmp_path / "s.jsonl")
    import_jsonl(tmp_path / "s.jsonl", tmp_path / "dst")
    with ResultStore.open(tmp_path / "dst") as s:
        assert [(r["label"], r["corruption"]) for r in s.cells()] == [("bn", "fog"), ("tent", "snow"), ("tent", "fog")]


def test_import_keeps_held_keys_and_counts_other_accuracies(tmp_path):
    src = make_store(tmp_path / "src")
    export_jsonl(src, tmp_path / "s.jsonl")
    with ResultStore.open(tmp_path / "dst", create=True) as s:
        s.put(cell(accuracy=61.0, device="cpu (Y)"))  # held, measured otherwise
        s.put(cell(corruption="snow", accuracy=55.5))  # held, the same accuracy
        s.put(cell(corruption="jpeg_compression", accuracy=40.0))  # not in the export
    assert import_jsonl(tmp_path / "s.jsonl", tmp_path / "dst") == {
        "cells": 1, "curves": 1, "models": 1, "held": 2, "differ": 1}
    with ResultStore.open(tmp_path / "dst") as s:
        assert s.count() == 4 and s.cells(corruption="fog", label="tent")[0]["accuracy"] == 61.0  # kept as it was
        assert s.cells(corruption="fog", label="tent")[0]["device"] == "cpu (Y)"
    assert import_jsonl(tmp_path / "s.jsonl", tmp_path / "dst")["cells"] == 0  # again: nothing new


def edit(path, n, change):
    """Rewrite line ``n`` (1-based) of a JSONL file with ``change(obj)``."""
    rows = lines(path)
    obj = json.loads(rows[n - 1])
    change(obj)
    rows[n - 1] = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(rows) + "\n")


def line_of(path, **where):
    return next(i for i, r in enumerate(lines(path), start=1)
                if all(json.loads(r).get(k) == v for k, v in where.items()))


def test_a_changed_accuracy_is_imported_as_it_stands(tmp_path):
    out = tmp_path / "s.jsonl"
    export_jsonl(make_store(tmp_path / "src"), out)
    edit(out, line_of(out, table="cells", label="bn"), lambda o: o.update(accuracy=51.5))
    import_jsonl(out, tmp_path / "dst")
    with ResultStore.open(tmp_path / "dst") as s:
        assert s.cells(label="bn")[0]["accuracy"] == 51.5


def set_config(obj, **kw):
    obj["config"] = json.dumps({**json.loads(obj["config"]), **kw}, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("change, match", [
    (lambda o: set_config(o, batch_size=100), "cells: key '[0-9a-f]{64}' is not the cell_key of its config"),
    (lambda o: o.update(severity=3), "cells: severity 3 does not match its config"),
    (lambda o: o.update(hparams='{"lr":0.1}'), "cells: hparams .* does not match its config"),
    (lambda o: o.update(accuracy="61"), "cells: column 'accuracy' must be REAL"),
    (lambda o: o.pop("created_utc"), "cells: column 'created_utc' is missing or null"),
    (lambda o: o.update(extra=1), r"cells: unknown column\(s\) \['extra'\]"),
    (lambda o: o.update(table="cels"), "unknown table 'cels'"),
    (lambda o: o.update(config="[1]"), "cells: config is not a JSON object"),
])
def test_a_bad_row_is_named_and_nothing_is_written(tmp_path, change, match):
    out = tmp_path / "s.jsonl"
    export_jsonl(make_store(tmp_path / "src"), out)
    n = line_of(out, table="cells", corruption="snow")
    edit(out, n, change)
    with pytest.raises(ValueError, match=f"^{re.escape(str(out))}: line {n}: {match}") as err:
        import_jsonl(out, tmp_path / "dst")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "dst").exists()  # checked whole before DEST was created


def test_a_bad_model_row_is_named(tmp_path):
    out = tmp_path / "s.jsonl"
    export_jsonl(make_store(tmp_path / "src"), out)
    n = line_of(out, table="models")
    edit(out, n, lambda o: o.update(n_images=5000))
    with pytest.raises(ValueError, match=f"line {n}: models: key .* is not the model_key of its row"):
        read_jsonl(out)


def test_bad_json_missing_header_and_duplicates_are_refused(tmp_path):
    out = tmp_path / "s.jsonl"
    export_jsonl(make_store(tmp_path / "src"), out)
    text = out.read_text()
    body = text.split("\n", 1)[1]
    cases = {
        "badjson.jsonl": (text + '{"table":"cells",\n', r"line 7: not valid JSON"),
        "noheader.jsonl": (body, "line 1: expected the header"),
        "list.jsonl": (text + "[1]\n", "line 7: not a JSON object but list"),
        "twice.jsonl": (text + body.split("\n", 1)[0] + "\n", "line 7: cells: key [0-9a-f]+ is also on line 2"),
        "header2.jsonl": (text + text.split("\n", 1)[0] + "\n", r"line 7: a second header"),
        "v2.jsonl": (text.replace('"schema_version":1', '"schema_version":2', 1), "line 1: schema_version 2"),
        "empty.jsonl": ("", "line 1: empty file"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=f"{name}: {match}"):
            import_jsonl(tmp_path / name, tmp_path / "dst")
    (tmp_path / "junk.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="junk.jsonl.gz: cannot read as a testtime store export"):
        read_jsonl(tmp_path / "junk.jsonl.gz")
    assert not (tmp_path / "dst").exists()


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="DROP COLUMN needs SQLite 3.35")
def test_export_of_a_store_before_the_device_column_imports(tmp_path):
    src = tmp_path / "old"
    make_store(src)
    conn = sqlite3.connect(src / "results.sqlite")
    conn.execute("ALTER TABLE cells DROP COLUMN device")
    conn.commit()
    conn.close()
    export_jsonl(src, tmp_path / "s.jsonl")
    assert "device" not in json.loads(lines(tmp_path / "s.jsonl")[1])
    assert import_jsonl(tmp_path / "s.jsonl", tmp_path / "dst")["cells"] == 3
    with ResultStore.open(tmp_path / "dst") as s:
        assert {r["device"] for r in s.cells()} == {None}
        assert s.has(cell_key(cell(corruption="snow")))


def test_export_refuses_other_names_and_leaves_no_half_file(tmp_path, monkeypatch):
    src = make_store(tmp_path / "src")
    with pytest.raises(ValueError, match=r"\*.jsonl or \*.jsonl.gz"):
        export_jsonl(src, tmp_path / "s.json")
    out = tmp_path / "s.jsonl"
    out.write_text("old\n")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("testtime.store.archive.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        export_jsonl(src, out)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl", "src"]

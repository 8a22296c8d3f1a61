"""Where a cell was measured (``device``): stored beside the result, not part of the key; stores written
before the column read, gain it on their first write, and merge both ways; the report names mixed devices."""

from __future__ import annotations

import sqlite3

import torch

from testtime.report.tables import build_tables
from testtime.store import ResultStore, cell_key
from testtime.store.db import _SCHEMA
from testtime.train.checkpoint import device_description

CPU = "cpu (AMD EPYC, AVX512, 2 threads)"
GPU = "cuda (NVIDIA H200)"


def cell(**kw):
    base = {"method": "tent", "label": "tent", "corruption": "fog", "severity": 5, "seed": 0,
            "protocol": "episodic", "backbone": "resnet8", "dataset": "cifar10", "hparams": {"lr": 1e-3}}
    return {**base, **kw}


def store_before_the_column(path):
    """A store as written before ``cells.device``: the same schema without that column."""
    path.mkdir()
    schema = _SCHEMA.replace(",\n    device TEXT", "")
    assert schema != _SCHEMA
    conn = sqlite3.connect(path / "results.sqlite")
    conn.executescript(schema + "INSERT INTO meta VALUES ('schema_version', '1');")
    conn.execute("INSERT INTO cells (key, method, label, corruption, severity, seed, protocol, backbone, dataset, "
                 "hparams, config, created_utc, accuracy) VALUES ('k0', 'bn', 'bn', 'fog', 5, 0, 'episodic', "
                 "'resnet8', 'cifar10', '{}', '{}', '2026-12-01 00:00:00', 40.0)")
    conn.commit()
    conn.close()
    return path


def columns(path):
    conn = sqlite3.connect(path / "results.sqlite")
    try:
        return [r[1] for r in conn.execute("PRAGMA table_info(cells)")]
    finally:
        conn.close()


def test_device_is_stored_and_not_part_of_the_key(tmp_path):
    with ResultStore.open(tmp_path, create=True) as store:
        k = store.put(cell(accuracy=50.0, device=GPU))
        assert k == cell_key(cell()) == cell_key(cell(device=CPU))  # the same cell wherever it is measured
        store.put(cell(corruption="snow", accuracy=51.0))
        assert [(r["corruption"], r["device"]) for r in store.cells()] == [("fog", GPU), ("snow", None)]


def test_a_store_before_the_column_reads_then_gains_it_on_its_first_write(tmp_path):
    run = store_before_the_column(tmp_path / "old")
    with ResultStore.copy_to_memory(run) as mem:  # what the report reads: no column, no failure
        assert mem.cells()[0].get("device") is None and [t.notes for t in build_tables(mem, None)] == [[]]
    assert "device" not in columns(run)  # reading does not change the file
    with ResultStore.open(run) as store:
        store.put(cell(accuracy=60.0, device=CPU))
        assert [r["device"] for r in store.cells()] == [None, CPU]
    assert columns(run)[-1] == "device"
    with ResultStore.open(run) as store:  # and again: the column is added once
        store.put_many([cell(seed=1, accuracy=61.0, device=CPU)])
        assert store.count() == 3


def test_merge_keeps_devices_both_ways(tmp_path):
    new = ResultStore.open(tmp_path / "new", create=True)
    new.put(cell(accuracy=50.0, device=GPU))
    old = store_before_the_column(tmp_path / "old")
    assert new.merge_from(old) == 1  # a source without the column
    with ResultStore.open(old) as store:  # a destination without it
        assert store.merge_from(tmp_path / "new") == 1
        assert sorted((r["accuracy"], r["device"]) for r in store.cells()) == [(40.0, None), (50.0, GPU)]


def test_report_notes_the_devices_of_a_table_measured_on_several(tmp_path):
    with ResultStore.open(tmp_path, create=True) as store:
        for seed, dev in ((0, CPU), (1, GPU), (2, GPU)):
            store.put(cell(seed=seed, accuracy=50.0 + seed, device=dev))
            store.put(cell(label="bn", method="bn", hparams={}, seed=seed, accuracy=40.0))  # not recorded
        (t,) = build_tables(store, reference=None)
        assert t.notes == [f"tent: measured on {GPU} (2 cells), {CPU} (1 cells)"]
        store.put(cell(label="bn", method="bn", hparams={}, seed=3, accuracy=40.0, device=CPU))
        (t,) = build_tables(store, reference=None)
        assert f"bn: measured on not recorded (3 cells), {CPU} (1 cells)" in t.notes
    with ResultStore.open(tmp_path / "one", create=True) as store:  # one device: nothing to say
        store.put(cell(accuracy=50.0, device=CPU))
        store.put(cell(seed=1, accuracy=52.0, device=CPU))
        assert build_tables(store, reference=None)[0].notes == []


def test_device_description_names_the_cpu_and_its_threads():
    text = device_description("cpu")
    assert text.startswith("cpu (") and f"{torch.get_num_threads()} threads)" in text
    assert str(torch.backends.cpu.get_cpu_capability()) in text
    assert device_description(torch.device("cpu")) == text

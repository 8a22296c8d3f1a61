"""run_grid: resume after a kill gives exactly the uninterrupted run's cells; shards fill the same store."""

from __future__ import annotations

import pytest

from testtime.store import ResultStore, parse_shard, run_grid
from testtime.store.db import cell_key

METHODS = ("bn", "tent", "cta")
CORRUPTIONS = ("fog", "snow", "contrast")


def grid():
    return [{"method": m, "corruption": c, "severity": 5, "seed": s, "protocol": "episodic", "backbone": "resnet8",
             "hparams": {"lr": 1e-3} if m != "bn" else {}}
            for m in METHODS for c in CORRUPTIONS for s in (0, 1)]


def fake_accuracy(cell) -> float:
    """A deterministic function of the cell, so any run of a cell gives the same number."""
    return float(int(cell_key(cell)[:4], 16) % 10000) / 100.0


def evaluate(cell):
    return {"accuracy": fake_accuracy(cell), "n_images": 100, "curve": [0.0, fake_accuracy(cell)]}


class Killed(Exception):
    pass


def killing_after(k):
    calls = {"n": 0}

    def f(cell):
        if calls["n"] == k:
            raise Killed
        calls["n"] += 1
        return evaluate(cell)

    return f, calls


def snapshot(store):
    return sorted((r["key"], r["accuracy"]) for r in store.cells())


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    cells = grid()
    ref = ResultStore.open(tmp_path / "ref", create=True)
    s = run_grid(cells, evaluate, ref, progress=False)
    assert (s.total, s.in_shard, s.skipped, s.ran) == (18, 18, 0, 18)

    store = ResultStore.open(tmp_path / "run", create=True)
    f, calls = killing_after(7)
    with pytest.raises(Killed):
        run_grid(cells, f, store, progress=False)
    assert store.count() == 7
    counted = []
    s = run_grid(cells, lambda c: counted.append(c) or evaluate(c), store, progress=False)
    assert (s.skipped, s.ran) == (7, 11) and len(counted) == 11  # only the missing cells ran
    assert snapshot(store) == snapshot(ref) and store.count("curves") == 18
    s = run_grid(cells, evaluate, store, progress=False)  # nothing left
    assert s.ran == 0 and s.skipped == 18
    log = (tmp_path / "run" / "grid.log").read_text()
    assert "FAILED" in log and "Killed" in log and "ran 11" in log


@pytest.mark.parametrize("n", [2, 3])
def test_shards_fill_the_same_store_as_one_run(tmp_path, n):
    cells = grid()
    ref = ResultStore.open(tmp_path / "ref", create=True)
    run_grid(cells, evaluate, ref, progress=False)
    shared = ResultStore.open(tmp_path / "shared", create=True)
    sizes = []
    for i in range(n):  # independent jobs: each opens the store itself
        with ResultStore.open(tmp_path / "shared") as store:
            sizes.append(run_grid(cells, evaluate, store, shard=(i, n), progress=False).ran)
    assert sizes == [len(range(i, len(cells), n)) for i in range(n)]
    assert snapshot(shared) == snapshot(ref)
    # shards on separate machines, each with its own store, merged afterwards
    merged = ResultStore.open(tmp_path / "merged", create=True)
    for i in range(n):
        own = ResultStore.open(tmp_path / f"shard{i}", create=True)
        run_grid(cells, evaluate, own, shard=(i, n), progress=False)
        merged.merge_from(tmp_path / f"shard{i}")
    assert snapshot(merged) == snapshot(ref)


def test_bad_input_fails_before_any_work(tmp_path):
    store = ResultStore.memory()
    ran = []
    with pytest.raises(ValueError, match="same config"):
        run_grid(grid() + grid()[:1], lambda c: ran.append(c) or evaluate(c), store, progress=False)
    with pytest.raises(ValueError, match="missing field"):
        run_grid([{"method": "bn"}], lambda c: ran.append(c) or evaluate(c), store, progress=False)
    with pytest.raises(ValueError, match="shard"):
        run_grid(grid(), evaluate, store, shard=(2, 2), progress=False)
    with pytest.raises(ValueError, match="unknown field"):
        run_grid(grid(), lambda c: {"accuracy": 1.0, "acc": 2}, store, progress=False)
    assert ran == [] and store.count() == 0


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_cost_filled_when_the_cell_does_not_measure_it():
    store = ResultStore.memory()
    run_grid(grid()[:2], lambda c: {"accuracy": 50.0, "n_images": 100}, store, progress=False)
    row = store.cells()[0]
    assert row["wall_s"] > 0 and row["images_per_s"] == pytest.approx(100 / row["wall_s"])
    run_grid(grid()[2:3], lambda c: {"accuracy": 1.0, "wall_s": 4.0, "n_images": 8, "forward_per_image": 21.0,
                                     "backward_per_image": 20.0}, store, progress=False)
    row = store.cells()[2]
    assert (row["wall_s"], row["images_per_s"], row["forward_per_image"], row["backward_per_image"]) == (4, 2, 21, 20)


@pytest.mark.gpu
def test_peak_memory_measured_on_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")

    def cell_on_gpu(c):
        x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB held during the cell
        del x
        return {"accuracy": 1.0}

    store = ResultStore.memory()
    run_grid(grid()[:1], cell_on_gpu, store, progress=False)
    assert store.cells()[0]["peak_mem_mb"] >= 64


def test_concurrent_shards_create_and_fill_one_store(tmp_path):
    """Independent jobs started together: each creates/opens the same file and writes its shard."""
    import threading

    cells = grid()
    ref = ResultStore.memory()
    run_grid(cells, evaluate, ref, progress=False)
    errors = []

    def job(i, n):
        try:
            with ResultStore.open(tmp_path / "run", create=True) as store:
                run_grid(cells, evaluate, store, shard=(i, n), progress=False)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i, 3)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with ResultStore.open(tmp_path / "run") as store:
        assert snapshot(store) == snapshot(ref)
    assert (tmp_path / "run" / "grid.log").read_text().count("finished") == 3


def test_stop_by_starts_no_cell_expected_to_end_after_it_and_the_rerun_completes(tmp_path):
    """Each cell takes 100 s on the clock: with a deadline 450 s away the cells at 0, 100, 200 and 300 s
    start (each expected to end by 100 s later), the one at 400 s does not (400 + 100 > 450)."""
    cells = grid()
    ref = ResultStore.open(tmp_path / "ref", create=True)
    run_grid(cells, evaluate, ref, progress=False)
    now = {"t": 1_000_000.0}

    def slow(cell):
        now["t"] += 100.0
        return evaluate(cell)

    store = ResultStore.open(tmp_path / "run", create=True)
    s = run_grid(cells, slow, store, progress=False, stop_by=now["t"] + 450, clock=lambda: now["t"])
    assert (s.ran, s.left, store.count()) == (4, 14, 4)
    log = (tmp_path / "run" / "grid.log").read_text()
    assert "stopped before cell 5/18" in log and "14 left, the same command resumes" in log
    s = run_grid(cells, slow, store, progress=False, stop_by=now["t"] - 1, clock=lambda: now["t"])  # passed
    assert (s.ran, s.left) == (0, 14)
    s = run_grid(cells, evaluate, store, progress=False)
    assert (s.skipped, s.ran, s.left) == (4, 14, 0)
    assert snapshot(store) == snapshot(ref)


def test_stop_by_expects_the_stored_cost_of_a_cells_label_before_its_first_cell_here(tmp_path):
    """A resumed run knows what a cell of its label cost before: with 200 s left and bn's stored cells at
    300 s each, no bn cell starts (a kill at the deadline would lose it half-run)."""
    cells = grid()
    store = ResultStore.open(tmp_path / "run", create=True)
    run_grid(cells[:2], lambda c: {**evaluate(c), "wall_s": 300.0}, store, progress=False)  # two bn cells
    now = 1_000_000.0
    s = run_grid(cells, evaluate, store, progress=False, stop_by=now + 200, clock=lambda: now)
    assert (s.skipped, s.ran, s.left) == (2, 0, 16)
    assert "about 300s a cell" in (tmp_path / "run" / "grid.log").read_text()
    s = run_grid(cells, evaluate, store, progress=False, stop_by=now + 400, clock=lambda: now)  # 300 s fit
    assert (s.ran, s.left) == (16, 0)

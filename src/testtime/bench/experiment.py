"""A bench experiment end to end: config -> source models -> held-out choice -> cells -> results store.

:func:`run_bench` is what ``testtime bench CONFIG.yaml`` runs:

1. the config is checked against this machine and the data (device, corruption parameters); a
   results store ``<run_dir>/results.sqlite`` of another schema version is refused and left as it
   is; then the store is opened (or created);
2. the source models are loaded from the stage checkpoints in the run dir (trained once if missing),
   and the clean accuracy of each one not yet in the store's ``models`` table is measured on the
   whole test split and stored (:mod:`testtime.bench.source_models`);
3. each (method label, protocol) with candidates gets its hyperparameters chosen on the held-out
   corruptions (:mod:`testtime.bench.select`);
4. the cells (eval seed x severity x corruption x label x protocol, in that nesting) go to
   :func:`testtime.store.run_grid`: stored cells are skipped (resume), ``shard=(i, n)`` takes every
   n-th cell; each result (accuracy and cost) is written as soon as it is measured.

Log lines go to the console and ``<run_dir>/bench.log``; the grid's own to ``<run_dir>/grid.log``.
The resolved config is written to ``<run_dir>/grid-<name>.json``.

Example::

    summary = run_bench(load_bench_config("tiny"), "runs/tiny", shard=(0, 2))
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testtime.bench.cells import BenchRun
from testtime.bench.select import choose
from testtime.bench.source_models import load_models, record_clean_accuracy
from testtime.bench.spec import BenchConfig, bench_to_dict, expand
from testtime.store import GridSummary, ResultStore, run_grid
from testtime.store.db import check_version, store_path

LOG_FILE = "bench.log"


def build_cells(run: BenchRun) -> list[dict[str, Any]]:
    """Choose on the held-out corruptions, then list every cell of the grid (in grid order)."""
    b = run.bench
    pairs = expand(b)
    load_models(run)  # every source model is loaded (or trained) before the grid starts
    chosen = {pair: choose(run, *pair) for pair in pairs}
    return [run.cell(label, proto, corr, sev, seed, *chosen[(label, proto)])
            for seed in b.eval_seeds for sev in b.severities for corr in b.corruptions for label, proto in pairs]


def run_bench(bench: BenchConfig, run_dir: str | Path, *, shard: tuple[int, int] = (0, 1),
              log: Callable[[str], None] | None = print, progress: bool = True,
              stop_by: float | None = None) -> GridSummary:
    """Run (or resume) this shard of the grid of ``bench`` into ``<run_dir>/results.sqlite``.

    ``stop_by``: a deadline (seconds since the epoch) for starting cells (:func:`run_grid`); the
    source models' training and the held-out choices before the first cell are not cut short by it.
    """
    from testtime.train.checkpoint import _atomic_write, environment

    run_dir = Path(run_dir)
    if not expand(bench) or not (bench.corruptions and bench.severities and bench.eval_seeds):
        raise ValueError("the grid has zero cells: give methods, corruptions, severities and eval_seeds")
    if store_path(run_dir).exists():
        check_version(store_path(run_dir))  # another schema version: refused before any work, left as it is
    lines: list[str] = []

    def early(msg: str) -> None:  # before the run dir exists (nothing is written before the checks)
        lines.append(msg)
        if log is not None:
            log(msg)

    run = BenchRun(bench, run_dir, log=early, progress=progress)
    with ResultStore.open(run_dir, create=True) as store:
        tee = _tee(run_dir / LOG_FILE, log)
        quiet = _tee(run_dir / LOG_FILE, None)
        for line in lines:
            quiet(line)
        run.log = tee
        tee(f"[bench] {bench.name}: run dir {run_dir}, shard {shard[0]}/{shard[1]}")
        info = {"bench": bench_to_dict(bench), "environment": environment(),
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        _atomic_write(run_dir / f"grid-{bench.name}.json", json.dumps(info, indent=2, default=str).encode())
        record_clean_accuracy(run, store, load_models(run), log=tee)
        cells = build_cells(run)
        return run_grid(cells, run.evaluate_cell, store, shard=shard, progress=progress, log=log, stop_by=stop_by)


def _tee(path: Path, log: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(msg: str) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(msg + "\n")
        if log is not None:
            log(msg)

    return say

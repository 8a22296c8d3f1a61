"""A bench experiment end to end: config -> source models -> held-out choice -> cells -> results store.

:func:`run_bench` is what ``testtime bench CONFIG.yaml`` runs:

1. the results store ``<run_dir>/results.sqlite`` is opened (created; a store of another schema
   version is refused before any work and left as it is);
2. the source models are loaded from the stage checkpoints in the run dir (trained once if missing);
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

from testtime.bench.cells import BenchRun, model_kind
from testtime.bench.select import choose
from testtime.bench.spec import BenchConfig, bench_to_dict, expand
from testtime.store import GridSummary, ResultStore, run_grid

LOG_FILE = "bench.log"


def build_cells(run: BenchRun) -> list[dict[str, Any]]:
    """Choose on the held-out corruptions, then list every cell of the grid (in grid order)."""
    b = run.bench
    pairs = expand(b)
    for label in b.methods:  # every source model is loaded (or trained) before the grid starts
        run.model(model_kind(label, b.methods[label]))
    chosen = {pair: choose(run, *pair) for pair in pairs}
    return [run.cell(label, proto, corr, sev, seed, *chosen[(label, proto)])
            for seed in b.eval_seeds for sev in b.severities for corr in b.corruptions for label, proto in pairs]


def run_bench(bench: BenchConfig, run_dir: str | Path, *, shard: tuple[int, int] = (0, 1),
              log: Callable[[str], None] | None = print, progress: bool = True) -> GridSummary:
    """Run (or resume) this shard of the grid of ``bench`` into ``<run_dir>/results.sqlite``."""
    from testtime.train.checkpoint import _atomic_write, environment

    run_dir = Path(run_dir)
    if not expand(bench) or not (bench.corruptions and bench.severities and bench.eval_seeds):
        raise ValueError("the grid has zero cells: give methods, corruptions, severities and eval_seeds")
    with ResultStore.open(run_dir, create=True) as store:  # the version check comes before any work
        tee = _tee(run_dir / LOG_FILE, log)
        tee(f"[bench] {bench.name}: run dir {run_dir}, shard {shard[0]}/{shard[1]}")
        info = {"bench": bench_to_dict(bench), "environment": environment(),
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        _atomic_write(run_dir / f"grid-{bench.name}.json", json.dumps(info, indent=2, default=str).encode())
        run = BenchRun(bench, run_dir, log=tee, progress=progress)
        cells = build_cells(run)
        return run_grid(cells, run.evaluate_cell, store, shard=shard, progress=progress, log=log)


def _tee(path: Path, log: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(msg: str) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(msg + "\n")
        if log is not None:
            log(msg)

    return say

"""Wall time of a bench grid: measured per label and protocol, and projected to the whole grid.

Usage::

    python benchmarks/bench_grid_wall.py runs/cifar10-cpu [--config cifar10-cpu-bench]

Reads ``<run_dir>/results.sqlite`` and prints, per (label, protocol) of the bench config, the cells
measured, their mean wall seconds per cell, and the projected wall time of all that pair's cells in
the config (its corruptions x severities x eval seeds) at that mean; the total over the pairs with
measurements, and the pairs without any (unknown cost). Cell wall time is the evaluation of the cell
only: model training, held-out selection and corruption are not in it (they are logged by
``testtime bench``). Projections assume the measured cells' conditions (machine load, severity).
"""

from __future__ import annotations

import argparse
import sys

from common import grid_args, open_grid

from testtime.bench.spec import expand
from testtime.store import ResultStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    grid_args(ap)
    args = ap.parse_args(argv)
    grid = open_grid(args, "bench_grid_wall")
    if grid is None:
        return 2
    path, bench = grid
    per_pair = len(bench.corruptions) * len(bench.severities) * len(bench.eval_seeds)
    with ResultStore.open(path) as store:
        cells = {pair: store.cells(label=pair[0], protocol=pair[1]) for pair in expand(bench)}
    total_measured = total_projected = 0.0
    unknown = []
    print(f"{'label':16} {'protocol':17} {'cells':>5} {'s/cell':>7} {'projected h':>11}")
    for (label, protocol), rows in cells.items():
        walls = [c["wall_s"] for c in rows if c.get("wall_s") is not None]
        if not walls:
            unknown.append(f"{label} ({protocol})")
            continue
        mean = sum(walls) / len(walls)
        total_measured += sum(walls)
        total_projected += mean * per_pair
        print(f"{label:16} {protocol:17} {len(walls):5d} {mean:7.1f} {mean * per_pair / 3600:11.2f}")
    print(f"measured cells: {total_measured / 3600:.2f} h; projected, pairs with measurements "
          f"({per_pair} cells each): {total_projected / 3600:.2f} h")
    if unknown:
        print(f"no measurement ({len(unknown)} pairs): {', '.join(unknown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

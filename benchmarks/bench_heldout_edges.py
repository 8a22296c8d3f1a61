"""Held-out choices at the edge of their candidates: one more candidate beyond the edge, chosen again.

Usage::

    python benchmarks/bench_heldout_edges.py runs/cifar10-cpu [--config cifar10-cpu-bench] [--only eata,cotta]

For every (label, protocol) of the bench config that has cells in ``<run_dir>/results.sqlite`` and
candidates, the grid's held-out choice is read (cached in ``selection.json``; measured if missing);
a numeric hyperparameter chosen at the smallest or largest of 3 or more candidates (the report flags
it, ``at the edge of its candidates``; the first by name if several are) gets one candidate more
beyond that edge, at the ratio of the two candidates at that edge (lr 1e-4, 1e-3, 1e-2 chosen 1e-2:
1e-1 is added), and the choice is made again on the same held-out corruptions, images and protocol.
Printed per pair: the grid's choice and its held-out mean, the added value's mean, and whether the
choice moves. A pair whose choice stays has the same test cells as in the grid (a cell depends on
the chosen values, not on the candidates tried); one whose choice moves would need its cells
measured again with the wider grid.

Only the held-out subset is evaluated (the test corruptions are never touched). Means are added to the
run dir's ``selection.json`` cache, so a later grid with the wider candidates reuses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from common import grid_args, machine_line, open_grid

from testtime.bench.cells import BenchRun
from testtime.bench.select import choose
from testtime.bench.spec import candidate_sets, expand
from testtime.report.summary import edge_params
from testtime.store import ResultStore
from testtime.store.db import canonical_json


def beyond(values: list[float], chosen: float) -> float:
    """The next value past ``chosen`` at the ratio of the two candidates at that edge (3 or more values)."""
    v = sorted(values)
    if chosen == v[-1]:
        return v[-1] * (v[-1] / v[-2]) if v[-2] > 0 else v[-1] + (v[-1] - v[-2])
    return v[0] / (v[1] / v[0]) if v[0] > 0 else v[0] - (v[1] - v[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    grid_args(ap)
    ap.add_argument("--only", default="", help="comma-separated labels (default: every label with cells)")
    args = ap.parse_args(argv)
    grid = open_grid(args, "bench_heldout_edges")
    if grid is None:
        return 2
    path, bench = grid
    only = [x for x in args.only.split(",") if x]
    unknown = sorted(set(only) - set(bench.methods))
    if unknown:
        print(f"bench_heldout_edges: error: --only: {unknown} not labels of {bench.name} "
              f"({', '.join(bench.methods)})", file=sys.stderr)
        return 2
    with ResultStore.open(path) as store:
        pairs = [(label, proto) for label, proto in expand(bench)
                 if (not only or label in only) and bench.methods[label].candidates
                 and store.cells(label=label, protocol=proto)]
    print(machine_line())
    run = BenchRun(bench, args.run_dir, log=None, progress=False)
    print(f"{'label':14} {'protocol':17} {'grid choice':>18} {'added':>12} {'added mean':>10}  choice")
    for label, proto in pairs:
        run.bench = bench
        chosen, record = choose(run, label, proto)
        spec = bench.methods[label]
        edges = edge_params(chosen, candidate_sets(spec))
        was = f"{canonical_json(chosen)} {record['mean_accuracy']:.2f}" if record else "-"
        if not edges:
            print(f"{label:14} {proto:17} {was:>18} {'(bracketed)':>12}")
            continue
        k = edges[0]
        extra = beyond([float(v) for v in spec.candidates[k]], float(chosen[k]))
        wider = dataclasses.replace(spec, candidates={**spec.candidates, k: (*spec.candidates[k], extra)})
        run.bench = dataclasses.replace(bench, methods={**bench.methods, label: wider})
        t0 = time.perf_counter()
        chosen2, record2 = choose(run, label, proto)
        mean_extra = record2["means"][canonical_json({**chosen, k: extra})]
        moved = "moves to " + canonical_json(chosen2) if chosen2 != chosen else "stays"
        print(f"{label:14} {proto:17} {was:>18} {k}={extra:<9g} {mean_extra:10.2f}  {moved} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

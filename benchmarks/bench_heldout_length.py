"""Held-out choices made again on a held-out stream as long as a test corruption's: does the choice move?

Usage::

    python benchmarks/bench_heldout_length.py runs/cifar10-cpu [--config cifar10-cpu-bench] \
        [--per-class 200] [--only tent,cotta] [--protocols reset-per-domain,continual]

The grid chooses every candidate on ``data.heldout_per_class`` images per class of each held-out
corruption (50 in ``cifar10-cpu``: 500 images, 4 batches of 128), while a test corruption streams
``data.test_per_class`` per class (200: 2,000 images, 16 batches). A method that adapts along the
stream (reset per domain, continual) is then chosen on a quarter of the stream it is tested on: an
lr that pays over 4 batches may collapse over 16. For every (label, protocol) of the bench config
that has candidates (``--only``: those labels; ``--protocols``: default the two stream protocols, as
an episodic method restarts at every batch and the length of its stream does not matter), this
prints the grid's choice and the choice made on ``--per-class`` images per class (default:
``data.test_per_class``) of the same held-out corruptions, severity, candidates and protocol, with
every candidate's held-out mean at both lengths. Nothing is read from or written to the store.

Only held-out images are evaluated (never the test corruptions); the longer subset is drawn by the
library's own rule (:func:`testtime.data.experiment.load_data`: disjoint from the test subset of
``data.seed``). The continual stream still holds 4 held-out corruptions against 15 at test. A grid
run with the larger ``data.heldout_per_class`` draws the test subsets of the other eval seeds around
it, so adopting it means measuring those seeds' cells again. Means are cached in ``selection.json``
(their key holds the held-out size), so neither length is measured twice. A label whose source model
is not trained in the run dir is refused before any work (the grid would train it; this script never
trains).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from common import grid_args, machine_line

from testtime.bench.cells import STAGES_OF_KIND, BenchRun, model_kind
from testtime.bench.protocols import list_protocols
from testtime.bench.select import choose
from testtime.bench.spec import expand, load_bench_config, source_config
from testtime.store.db import canonical_json
from testtime.train.checkpoint import checkpoint_exists
from testtime.train.peer_init import stage_init
from testtime.train.peer_stages import PEER_STAGES
from testtime.train.ttt_stages import AUX_STAGES

STREAM_PROTOCOLS = ("reset-per-domain", "continual")


def longer(bench, per_class: int):
    """``bench`` with its source's ``data.heldout_per_class`` set to ``per_class`` (other overrides kept)."""
    data = {**bench.source.get("data", {}), "heldout_per_class": per_class}
    return dataclasses.replace(bench, source={**bench.source, "data": data})


def untrained(run_dir, bench, label: str) -> list[str]:
    """The source-stage checkpoints that ``label``'s model needs and ``run_dir`` lacks. A peer or TTT
    stage that starts from the supervised model (``peer_train.init: supervised``; ReC-TTT always) loads
    ``supervised`` even when its own checkpoint exists (the grid would train it when missing)."""
    kind = model_kind(label, bench.methods[label])
    stages = STAGES_OF_KIND.get(kind, (kind,))
    if kind in (*PEER_STAGES, *AUX_STAGES) and stage_init(source_config(bench), kind) == "supervised":
        stages = ("supervised", kind)
    return [s for s in stages if not checkpoint_exists(run_dir / s)]


def means_line(record) -> str:
    return ", ".join(f"{c} {m:.2f}" for c, m in record["means"].items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    grid_args(ap)
    ap.add_argument("--per-class", type=int, default=None,
                    help="held-out images per class of the longer stream (default: the test's data.test_per_class)")
    ap.add_argument("--only", default="", help="comma-separated labels (default: every label with candidates)")
    ap.add_argument("--protocols", default=",".join(STREAM_PROTOCOLS), help="comma-separated protocols")
    args = ap.parse_args(argv)
    prog = "bench_heldout_length"
    if not args.run_dir.is_dir():
        print(f"{prog}: error: run_dir: {args.run_dir} is not a folder (the grid's run dir, with its models)",
              file=sys.stderr)
        return 2
    bench = load_bench_config(args.config)
    only = [x for x in args.only.split(",") if x]
    protocols = [x for x in args.protocols.split(",") if x]
    unknown = sorted(set(only) - set(bench.methods))
    bad_protocols = sorted(set(protocols) - set(list_protocols()))
    per_class = args.per_class if args.per_class is not None else source_config(bench).data.test_per_class
    errors = []
    if unknown:
        errors.append(f"--only: {unknown} not labels of {bench.name} ({', '.join(bench.methods)})")
    if bad_protocols or not protocols:
        errors.append(f"--protocols: {bad_protocols or 'none given'}; valid: {', '.join(list_protocols())}")
    if per_class < 1:
        errors.append(f"--per-class: must be >= 1, got {per_class}")
    if errors:
        print(f"{prog}: error: {errors[0]}", file=sys.stderr)
        return 2
    pairs = [(label, proto) for label, proto in expand(bench)
             if (not only or label in only) and proto in protocols and bench.methods[label].candidates]
    missing = {label: absent for label, _ in pairs if (absent := untrained(args.run_dir, bench, label))}
    if missing:
        label, absent = next(iter(missing.items()))
        print(f"{prog}: error: --only: {label} needs {', '.join(absent)} in {args.run_dir}, not trained there (this "
              f"script never trains): train first (testtime train) or leave out {', '.join(missing)}", file=sys.stderr)
        return 2
    print(machine_line())
    grid_run = BenchRun(bench, args.run_dir, log=None, progress=False)
    long_run = BenchRun(longer(bench, per_class), args.run_dir, log=None, progress=False)
    n_grid, n_long = grid_run.cfg.data.heldout_per_class, per_class
    print(f"held-out images per corruption: grid {len(grid_run.data.heldout)}, longer {len(long_run.data.heldout)} "
          f"({n_grid} and {n_long} per class; batches of {bench.batch_size})")
    print(f"{'label':14} {'protocol':17} {'grid choice':>20} {'longer-stream choice':>22}  choice")
    for label, proto in pairs:
        chosen, record = choose(grid_run, label, proto)
        t0 = time.perf_counter()
        chosen2, record2 = choose(long_run, label, proto)
        a = f"{canonical_json(chosen)} {record['mean_accuracy']:.2f}"
        b = f"{canonical_json(chosen2)} {record2['mean_accuracy']:.2f}"
        moved = "moves" if chosen2 != chosen else "stays"
        print(f"{label:14} {proto:17} {a:>20} {b:>22}  {moved} ({time.perf_counter() - t0:.0f}s)")
        print(f"    {n_grid}/class: {means_line(record)}")
        print(f"    {n_long}/class: {means_line(record2)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

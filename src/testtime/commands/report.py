"""``testtime report``: tables (Markdown, CSV, LaTeX) and plots of a run directory's results.

Examples::

    testtime report runs/cifar10-cpu                      # writes runs/cifar10-cpu/report/
    testtime report runs/cifar10-cpu --latex --ref cta    # also table<i>.tex; Δ row against cta
    testtime report runs/cifar10-cpu --no-plots --out /tmp/report
    testtime report runs/cifar10-cpu --pair cotta-mt1,cotta-paper@reset-per-domain --pair tent@continual,bn
    testtime report runs/cifar10-cpu --against runs/cifar10-cpu-v9 --against-only bn,cta   # two models' rows
    testtime report runs/cifar10-cpu --only source,bn,cta,tent --seeds 0,1   # a slice of the cells
    testtime report runs/cifar10-cpu --only source,bn,memo --severities 5     # one severity's tables

Reads ``RUN_DIR/results.sqlite`` (the results store) and the ``results.json`` / ``bench-*.json``
of ``testtime cta`` / ``testtime bench`` (their cells are imported in memory; the run directory is
not changed). First, when the store has them, the source models' clean accuracy (eval mode and
test-batch BN, from the grid's ``models`` table; also ``models.csv``). Tables: corruptions as rows,
methods as columns, a Mean row, a "Δ (ours − other)" row against ``--ref``, mean ± std over seeds;
the protocol, backbone and hyperparameters above each. ``--pair A,B`` (repeatable; a side is LABEL
or LABEL@PROTOCOL) adds A − B on the cells both measured (same seeds, so the same test images and
corruption draws): mean ± std over seeds, per corruption, on how many corruptions A is above.
``--against OTHER_RUN_DIR`` adds the same for each row of RUN_DIR against the same row (label,
protocol, severity) of another run directory (e.g. the grid on another source model), on the cells
both measured on the same test images and stream; the config fields that differ are named under it.
``--only LABELS``, ``--seeds SEEDS`` and ``--severities SEVERITIES`` report a slice of the cells
(method labels; eval seeds; severities), e.g. the complete rows of a grid still running; the source
models' rows are kept whole.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from testtime.cli import UserError
from testtime.commands import plain
from testtime.commands._slice import add_arguments, row_filter, wanted


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="tables and plots of a run directory's results",
                              description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (results.sqlite, results.json, bench-*.json)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    p.add_argument("--ref", help="reference column of the Δ (ours − other) row (default: cta, when the results "
                   "hold it; a table without the reference column gets a note)")
    p.add_argument("--latex", action="store_true", help="also write LaTeX tables (booktabs)")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    p.add_argument("--pair", action="append", default=[], metavar="A,B",
                   help="paired comparison A − B (each LABEL or LABEL@PROTOCOL); repeatable")
    p.add_argument("--against", metavar="OTHER_RUN_DIR",
                   help="also each row − the same row of another run directory (paired on the same images)")
    p.add_argument("--against-only", metavar="LABELS",
                   help="with --against: only these labels (comma-separated)")
    add_arguments(p, "report")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from testtime.report import load_run, write_report
    from testtime.report.against import against
    from testtime.report.paired import parse_pair

    if args.ref is not None and not args.ref.strip():
        raise UserError("--ref: give a column name, e.g. cta")
    try:
        pairs = [parse_pair(p) for p in args.pair]
    except ValueError as e:
        raise UserError(str(e)) from None
    only = None
    if args.against_only is not None:
        if args.against is None:
            raise UserError("--against-only: give --against OTHER_RUN_DIR too")
        only = [x.strip() for x in args.against_only.split(",") if x.strip()]
        if not only:
            raise UserError("--against-only: give labels, comma-separated (e.g. bn,cta)")
    keep = row_filter(args)
    run_dir = Path(args.run_dir)
    other = None
    if args.against is not None:
        try:
            other = load_run(args.against)
        except (OSError, ValueError) as e:
            raise UserError(f"--against: {e}") from None
    with load_run(run_dir) as full, (_slice(full, keep, args) if keep else nullcontext(full)) as store:
        try:
            compared = against(store, other, args.against, only) if other is not None else []
            reference = args.ref or default_reference(store)
            files = write_report(store, Path(args.out) if args.out else run_dir / "report", reference=reference,
                                 latex=args.latex, plots=not args.no_plots, title=f"Results of {run_dir}",
                                 pairs=pairs, compared=compared)
        except ValueError as e:
            if not str(e).startswith(("--pair", "--against")):
                raise
            raise UserError(str(e)) from None
        finally:
            if other is not None:
                other.close()
    if not args.quiet:
        print(files[0].read_text())
    print(f"wrote {len(files)} files to {files[0].parent} (report: {files[0]})")
    return 0


def _slice(store, keep, args: argparse.Namespace):
    """A new in-memory store of the cells (and curves) ``keep`` chooses, the source models' rows whole; a
    label, seed or severity of ``--only`` / ``--seeds`` / ``--severities`` that the run does not hold is
    refused, naming those it holds."""
    from testtime.store import ResultStore

    for flag, column, values in wanted(args):
        held = set(store.distinct(column)) | set(store.distinct(column, "curves"))
        missing = sorted(values - held)
        if missing:
            raise UserError(f"{flag}: {', '.join(map(str, missing))} not in {args.run_dir}; it holds: "
                            f"{', '.join(map(str, sorted(held)))}")
    sliced = ResultStore.memory()
    sliced.add_rows(store.rows(keep))
    return sliced


def default_reference(store: Any) -> str | None:
    """``cta`` when some cell of ``store`` has that label, else None: no Δ row, and no note in every
    table that it lacks the column (a report of baselines only, or one sliced with ``--only``)."""
    return "cta" if "cta" in store.distinct("label") else None

"""``testtime demo``: CTA next to the main test-time adaptation baselines on Fashion-MNIST, with a report.

Trains the small source models of the ``demo`` preset (the supervised classifier h(f(.)), its
self-supervised copy pi(g(.)), the alignment of Eq. 4) on a seeded 2,000-image subset, then runs
the grid of the shipped ``demo`` bench config: source, BN, TENT, EATA, SAR, SHOT-IM, LAME and CTA
on 6 corruptions (severity 5, 300 test images each). Prints the table and writes a Markdown report
with its plots (``testtime.report``) into ``<run-dir>/report/``; the path is printed at the end.
Everything goes to the run dir (default ``runs/demo``): run it again and the stored checkpoints and
cells are reused. ``--set`` takes a field of the ``demo`` preset (``--set supervised.epochs=2``) or a
key of the demo bench config (``--set corruptions=[fog,contrast]``, ``--set methods.tent.settings.lr=1e-4``).
Under 10 minutes on 2 CPU cores (measured in docs/benchmark.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from testtime.commands import interrupt_on_sigterm, plain

# `--set KEY=VALUE` keys whose first part is one of these go to the demo bench config; the others to
# its source preset (`demo`), as before: e.g. --set supervised.epochs=2, --set corruptions=[fog]
BENCH_KEYS = ("run_dir", "corruptions", "severities", "eval_seeds", "protocols", "batch_size", "heldout",
              "heldout_severity", "fisher_samples", "methods", "source", "preset")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="CTA vs the main baselines on Fashion-MNIST: table and Markdown report",
        description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run-dir", default="runs/demo", help="checkpoints, results store and report (default: runs/demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the demo preset (e.g. --set supervised.epochs=2) or a key of the demo "
                   "bench config (e.g. --set corruptions=[fog])")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.set_defaults(func=run_demo)


DEMO_PREFIX = "testtime-demo-"


def remove_stale_demo_dirs(tmp: str | None = None) -> list[str]:
    """Remove ``testtime-demo-<pid>-*`` temporary folders whose process is gone (a demo killed with -9)."""
    removed = []
    base = Path(tmp or tempfile.gettempdir())
    for d in base.glob(f"{DEMO_PREFIX}*-*"):
        pid = d.name[len(DEMO_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not d.is_dir() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
        except (PermissionError, OverflowError, OSError):
            continue  # another user's process, or not a pid
    return removed


def demo_overrides(overrides: list[str]) -> list[str]:
    """``--set`` items for the bench config: preset fields go under ``source.``."""
    return [o if o.split("=", 1)[0].split(".", 1)[0].strip() in BENCH_KEYS else f"source.{o}" for o in overrides]


def run_demo(args: argparse.Namespace) -> int:
    from testtime.bench.experiment import run_bench
    from testtime.bench.spec import load_bench_config, source_config
    from testtime.report import build_tables, load_run, to_markdown, write_report

    bench = load_bench_config("demo", demo_overrides(args.overrides))
    cfg = source_config(bench)
    run_dir = Path(args.run_dir)
    t0 = time.perf_counter()
    interrupt_on_sigterm()  # `kill` stops between cells: every measured cell stays in the store
    remove_stale_demo_dirs()  # temporary folders left by earlier demo versions killed with -9
    print(f"testtime demo: {cfg.data.dataset}, {cfg.model.arch}, {cfg.data.train_per_class} training images per "
          f"class; {len(bench.methods)} methods x {len(bench.corruptions)} corruptions (severity "
          f"{', '.join(map(str, bench.severities))}, {cfg.data.test_per_class} test images per class); "
          f"run dir {run_dir}", flush=True)
    summary = run_bench(bench, run_dir, log=None if args.quiet else print, progress=not args.quiet)
    print(f"grid: {summary.ran} cells measured, {summary.skipped} reused ({time.perf_counter() - t0:.0f}s)")
    store_cta_curve(bench, run_dir, quiet=args.quiet)
    with load_run(run_dir) as store:
        for table in build_tables(store, reference="cta"):
            print(to_markdown(table))
        files = write_report(store, run_dir / "report", reference="cta", title="testtime demo: CTA and baselines")
    print(f"demo done in {time.perf_counter() - t0:.0f}s; report: {files[0]}")
    return 0


def store_cta_curve(bench, run_dir: Path, *, max_steps: int = 10, quiet: bool = False) -> None:
    """CTA's accuracy after 0..``max_steps`` iterations per batch (episodic, the paper's Fig. 3) on the demo's
    test corruptions at the grid's CTA settings, into the store (once: a stored curve is kept)."""
    from testtime.bench.cells import BenchRun
    from testtime.bench.evaluation import iteration_curve
    from testtime.store import ResultStore

    spec = bench.methods.get("cta")
    if spec is None:
        return
    with ResultStore.open(run_dir) as store:
        if store.curves(label="cta"):
            return
    run = BenchRun(bench, run_dir, log=None, progress=False)
    settings = {"lr": 1e-4, **spec.settings}
    sev, seed = bench.severities[0], bench.eval_seeds[0]
    domains = [run.domain(c, sev, seed) for c in bench.corruptions]
    t0 = time.perf_counter()
    curves = iteration_curve(run.model("aligned"), "cta", domains, lr=float(settings["lr"]), max_steps=max_steps,
                             batch_size=bench.batch_size, seed=seed, device=run.device)
    rows = [{"method": "cta", "label": "cta", "corruption": c, "severity": sev, "seed": seed, "protocol": "episodic",
             "backbone": run.cfg.model.arch, "dataset": run.dataset(), "hparams": {"lr": settings["lr"]},
             "accuracies": acc} for c, acc in curves.items()]
    with ResultStore.open(run_dir) as store:
        store.put_many([], rows)
    if not quiet:
        print(f"[curve] cta: accuracy after 0..{max_steps} iterations on {len(domains)} corruptions "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)

"""``testtime merge``: join results stores (grid shards run elsewhere: other machines, a lent GPU) into one.

Examples::

    testtime merge runs/cifar10-cpu /tmp/gpu-run                  # a GPU run's cells into the CPU store
    testtime merge runs/all runs/shard-0 runs/shard-1 runs/shard-2  # Slurm array shards into a new store
    testtime merge runs/cifar10-cpu /tmp/gpu-run --only ttt --seeds 1,2   # a slice of them

Copies each SOURCE's cells, curves and source models' clean-accuracy rows (a SOURCE is a run
directory or a results.sqlite) that DEST does not hold yet: the same key, i.e. the same resolved
config. A cell DEST holds already is kept as it is; when the SOURCE measured it otherwise (another
accuracy: another machine, or another device, whose kernels round differently) the count is printed.
Cells keep where they were measured (``device``), so ``testtime report`` can say which columns mix
devices. ``--only`` and ``--seeds`` copy a slice (method labels; eval seeds). Every SOURCE is checked
before anything is written; DEST (a run directory or a results.sqlite) is created when missing.
"""

from __future__ import annotations

import argparse

from testtime.cli import UserError
from testtime.commands import plain


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("merge", help="copy the cells of other results stores (shards run elsewhere) into one",
                              description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", metavar="DEST", help="the store to copy into (run directory or results.sqlite)")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="stores to copy from (run directories or .sqlite)")
    p.add_argument("--only", metavar="LABELS", help="copy only the cells of these method labels (comma-separated)")
    p.add_argument("--seeds", metavar="SEEDS", help="copy only the cells of these eval seeds (comma-separated)")
    p.set_defaults(func=run)


def _labels(text: str | None) -> set[str] | None:
    if text is None:
        return None
    labels = {s.strip() for s in text.split(",") if s.strip()}
    if not labels:
        raise UserError("--only: give at least one method label, e.g. --only ttt,bn")
    return labels


def _seeds(text: str | None) -> set[int] | None:
    if text is None:
        return None
    try:
        seeds = {int(s) for s in text.split(",") if s.strip()}
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, e.g. 1,2; got {text!r}") from None
    if not seeds:
        raise UserError("--seeds: give at least one seed, e.g. --seeds 1,2")
    return seeds


def run(args: argparse.Namespace) -> int:
    from testtime.store import ResultStore
    from testtime.store.db import StoreVersionError, check_version, store_path

    labels, seeds = _labels(args.only), _seeds(args.seeds)
    dest = store_path(args.dest)
    sources = [store_path(s) for s in args.sources]
    for src in sources:  # every source checked before anything is written
        if not src.is_file():
            raise UserError(f"SOURCE {src}: no results store there")
        if src.resolve() == dest.resolve():
            raise UserError(f"SOURCE {src}: the same store as DEST")
        try:
            check_version(src)
        except StoreVersionError as e:
            raise UserError(f"SOURCE {e}") from None
    if dest.exists():
        try:
            check_version(dest)
        except StoreVersionError as e:
            raise UserError(f"DEST {e}") from None

    def keep(row) -> bool:
        return (labels is None or row["label"] in labels) and (seeds is None or row["seed"] in seeds)

    with ResultStore.open(dest, create=True) as store:
        total = 0
        for src in sources:
            with ResultStore.copy_to_memory(src) as other:
                rows = [r for r in other.cells() if keep(r)]
            here = {r["key"]: r["accuracy"] for r in store.cells()}
            held = [r for r in rows if r["key"] in here]
            differ = sum(1 for r in held if abs(r["accuracy"] - here[r["key"]]) > 1e-9)
            added = store.merge_from(src, keep=keep)
            total += added
            print(f"{src}: {added} cells added to {dest}; {len(held)} held there already (kept), "
                  f"{differ} of them measured there with another accuracy")
    print(f"{dest}: {total} cells added in all")
    return 0

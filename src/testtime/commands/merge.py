"""``testtime merge``: join results stores (grid shards run elsewhere: other machines, a lent GPU) into one.

Examples::

    testtime merge runs/cifar10-cpu /tmp/gpu-run                  # a GPU run's cells into the CPU store
    testtime merge runs/all runs/shard-0 runs/shard-1 runs/shard-2  # Slurm array shards into a new store
    testtime merge runs/cifar10-cpu /tmp/gpu-run --only ttt --seeds 1,2   # a slice of them
    testtime merge runs/cifar10-cpu runs/cifar10-cpu.jsonl.gz  # rebuild a store from its export

Copies each SOURCE's cells, curves and source models' clean-accuracy rows (a SOURCE is a run
directory, a results.sqlite, or a store's export by ``testtime export``, ``*.jsonl`` or
``*.jsonl.gz``, every line of which is checked) that DEST does not hold yet: the same key, i.e. the same resolved
config. A cell DEST holds already is kept as it is; when the SOURCE measured it otherwise (another
accuracy: another machine, or another device, whose kernels round differently) the count is printed.
Cells keep where they were measured (``device``), so ``testtime report`` can say which columns mix
devices. ``--only``, ``--seeds`` and ``--severities`` copy a slice (method labels; eval seeds;
severities). Every SOURCE is checked before anything is written; DEST (a run directory or a
results.sqlite) is created when missing.
A SOURCE whose source models have other weights than DEST's or an earlier SOURCE's (the same
settings retrained on another CPU: another weights fingerprint in the ``models`` table) is refused:
cells of two weights cannot be paired or averaged as one model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from testtime.cli import UserError
from testtime.commands import plain
from testtime.commands._slice import add_arguments, row_filter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("merge", help="copy the cells of other results stores (shards run elsewhere) into one",
                              description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", metavar="DEST", help="the store to copy into (run directory or results.sqlite)")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="stores to copy from (run directories, .sqlite, or exports: .jsonl, .jsonl.gz)")
    add_arguments(p, "copy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from testtime.store import ResultStore
    from testtime.store.archive import is_archive, read_jsonl
    from testtime.store.db import StoreVersionError, check_version, store_path, weights_conflicts

    keep = row_filter(args)
    dest = store_path(args.dest)
    sources: list[tuple[Path, dict]] = []  # each source's rows, read (and checked) before anything is written
    for text in args.sources:  # every source checked (an export read whole) before anything is written
        if is_archive(text):
            if not Path(text).is_file():
                raise UserError(f"SOURCE {text}: no such file")
            try:
                sources.append((Path(text), read_jsonl(text, keep)))
            except ValueError as e:
                raise UserError(f"SOURCE {e}") from None
            continue
        src = store_path(text)
        if not src.is_file():
            raise UserError(f"SOURCE {src}: no results store there")
        if src.resolve() == dest.resolve():
            raise UserError(f"SOURCE {src}: the same store as DEST")
        try:
            check_version(src)
        except StoreVersionError as e:
            raise UserError(f"SOURCE {e}") from None
        with ResultStore.copy_to_memory(src) as other:
            sources.append((src, other.rows(keep)))
    models: list[dict] = []
    if dest.exists():
        try:
            check_version(dest)
        except StoreVersionError as e:
            raise UserError(f"DEST {e}") from None
        with ResultStore.copy_to_memory(dest) as held_store:
            models = held_store.models()
    for src, rows in sources:  # cells of two weights of one source model are never joined
        clash = weights_conflicts(models, rows["models"])
        if clash:
            raise UserError(f"SOURCE {src}: measured on other weights than {dest} or an earlier SOURCE "
                            f"({'; '.join(clash)}); nothing was written")
        models += rows["models"]

    with ResultStore.open(dest, create=True) as store:
        total = 0
        for src, rows in sources:
            held, differ = store.held(rows["cells"])
            added = store.add_rows(rows)["cells"]
            total += added
            print(f"{src}: {added} cells added to {dest}; {held} held there already (kept), "
                  f"{differ} of them measured there with another accuracy")
    print(f"{dest}: {total} cells added in all")
    return 0

"""``testtime export``: a results store as plain text (JSONL), to commit to git and rebuild the store from.

Examples::

    testtime export runs/cifar10-cpu runs/cifar10-cpu.jsonl.gz     # every cell, curve and model row
    testtime export runs/cifar10-cpu ttt.jsonl --only ttt --seeds 1,2  # a slice of the cells
    testtime merge runs/cifar10-cpu runs/cifar10-cpu.jsonl.gz      # on another machine: the store back

Writes one JSON object a line: a header (format, the store's schema version, the testtime version),
then every row of the store's cells, curves and source models' clean accuracies, each column exactly
as stored (key, config, created_utc, device, cost), sorted by table and key. Exporting the same store
twice gives the same bytes, and a store that gained cells gives a diff of those lines. OUT ending in
.gz is gzipped (no name or time in its header). OUT is written under a temporary name in its folder
and then renamed, so it is never half-written. ``--only``, ``--seeds`` and ``--severities`` export a
slice (method labels; eval seeds; severities; model rows are always exported). ``testtime merge DEST
OUT`` checks every line (JSON, columns, each key recomputed from its config) before it adds the rows
DEST lacks, with their times.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from testtime.cli import UserError
from testtime.commands import plain
from testtime.commands._slice import add_arguments, row_filter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a results store as plain text (JSONL) to commit to git",
                              description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", metavar="RUN_DIR_OR_SQLITE", help="the store to export (run directory or results.sqlite)")
    p.add_argument("out", metavar="OUT", help="the file to write: *.jsonl, or *.jsonl.gz to gzip it")
    add_arguments(p, "export")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from testtime.store.archive import export_jsonl, is_archive
    from testtime.store.db import StoreVersionError, check_version, store_path

    keep = row_filter(args)
    src, out = store_path(args.store), Path(args.out)
    if not src.is_file():
        raise UserError(f"RUN_DIR_OR_SQLITE {src}: no results store there")
    try:
        check_version(src)
    except StoreVersionError as e:
        raise UserError(f"RUN_DIR_OR_SQLITE {e}") from None
    if not is_archive(out):
        raise UserError(f"OUT {out}: name it *.jsonl, or *.jsonl.gz to gzip it")
    if not out.parent.is_dir():
        raise UserError(f"OUT {out}: no folder {out.parent} (create it first)")
    if out.is_dir():
        raise UserError(f"OUT {out}: a folder; give a file name")
    counts = export_jsonl(src, out, keep)
    print(f"{src}: {counts['cells']} cells, {counts['curves']} curves and {counts['models']} model rows "
          f"written to {out}")
    return 0

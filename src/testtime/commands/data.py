"""``testtime data``: list the datasets and where they were looked for, download official releases,
and show what a dataset holds.

Examples::

    testtime data list
    testtime data list --root /data
    testtime data download cifar10 --root /data
    testtime data info cifar10-c --root /data --corruption fog --severity 5
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from testtime.data import DATASETS, find_dataset, list_datasets, load_dataset
from testtime.data.download import RELEASES, DownloadError, download_dataset
from testtime.data.names import CORRUPTIONS_ALL
from testtime.data.paths import DATA_ENV, download_home


def dataset_status(root: str | None = None) -> list[dict]:
    """For every registered dataset: name, found folder (or None), folders searched, what it needs."""
    rows = []
    for name in list_datasets():
        spec = DATASETS.get(name)
        found, searched = find_dataset(name, root)
        rows.append(
            {
                "name": name,
                "found": found,
                "searched": searched,
                "needs": spec.needs,
                "root_required": spec.root_required,
                "downloadable": name in RELEASES,
            }
        )
    return rows


def print_status(rows: list[dict], *, verbose: bool, out=None) -> None:
    out = out or sys.stdout
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        if r["found"] is not None:
            print(f"  {r['name']:<{width}}  found      {r['found']}", file=out)
        elif r["root_required"]:
            print(f"  {r['name']:<{width}}  (any tree) pass a root: {r['needs']}", file=out)
        else:
            print(f"  {r['name']:<{width}}  not found  needs {r['needs']}", file=out)
        if verbose or r["found"] is None:
            for p in r["searched"]:
                mark = "*" if p == r["found"] else "-"
                print(f"  {'':<{width}}    {mark} looked in {p}", file=out)


def next_steps(rows: list[dict], out=None) -> None:
    """What to do next, from which datasets were found: run the demo, download, or point at a folder."""
    out = out or sys.stdout
    found = {r["name"] for r in rows if r["found"] is not None}
    missing = sorted(r["name"] for r in rows if r["found"] is None and r["downloadable"])
    print("next:", file=out)
    if "fashion-mnist" in found:
        print("  testtime demo                                   # a few-minute CTA run on Fashion-MNIST", file=out)
        print("  testtime cta --preset fmnist-cpu                # CTA and its baselines' rows (see --help)", file=out)
    if missing:
        print(f"  testtime data download NAME                     # NAME: {', '.join(missing)}", file=out)
    print(f"  testtime data list --root /path                 # or set ${DATA_ENV}=/path, for data already on disk",
          file=out)


def _list(args: argparse.Namespace) -> int:
    rows = dataset_status(args.root)
    where = f"under --root {args.root}" if args.root else f"${DATA_ENV}, {download_home()} and system folders"
    print(f"datasets ({len(rows)}), searched {where}:")
    print_status(rows, verbose=args.verbose)
    next_steps(rows)
    return 0


def _download(args: argparse.Namespace) -> int:
    try:
        path = download_dataset(
            args.name,
            args.root,
            timeout=args.timeout,
            keep_archive=args.keep_archive,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except DownloadError as exc:
        from testtime.cli import UserError

        raise UserError(str(exc)) from None
    print(f"{args.name}: ready at {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    kw = {}
    if args.corruption is not None:
        kw["corruption"] = args.corruption
    if args.severity is not None:
        kw["severity"] = args.severity
    splits = DATASETS.get(args.name).splits
    split = args.split or ("test" if splits is None or "test" in splits else splits[-1])
    s = load_dataset(args.name, split, root=args.root, **kw)
    counts = np.bincount(s.labels, minlength=s.num_classes)
    print(
        f"{s.name}: {len(s)} images {s.images.shape[1]}x{s.images.shape[2]}x{s.channels} uint8, {s.num_classes} classes"
    )
    print(f"  per class: min {counts.min()}, max {counts.max()}; first classes: {', '.join(s.classes[:5])}")
    print(f"  pixel mean {s.images.mean():.2f}; source {s.meta.get('path', '?')}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="list, download and inspect datasets",
        description="Datasets: where each one is looked for and whether it is found (list), official "
        "releases with a checksum check (download), and a quick look at one split (info).",
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    pl = sub.add_parser("list", help="show each dataset, where it looked, found or not")
    pl.add_argument("--root", help="search only this folder (and its official sub-folders)")
    pl.add_argument("-v", "--verbose", action="store_true", help="also list the folders searched for found datasets")
    pl.set_defaults(func=_list)

    pd = sub.add_parser(
        "download",
        help="download an official release, verify its checksum and unpack it",
        description=f"Download NAME ({', '.join(sorted(RELEASES))}) into --root (default ${DATA_ENV}, "
        f"else {download_home()}). Offline, it fails with one line saying what to do instead.",
    )
    pd.add_argument("name", metavar="NAME", help=f"one of: {', '.join(sorted(RELEASES))}")
    pd.add_argument("--root", help="destination folder")
    pd.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the server (default 15)")
    pd.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after unpacking")
    pd.set_defaults(func=_download)

    pi = sub.add_parser("info", help="load one split and print its size, classes and provenance")
    pi.add_argument("name", metavar="NAME", help=f"one of: {', '.join(list_datasets())}")
    pi.add_argument("--split", help="split name (default: test, or the last split the dataset has, e.g. val)")
    pi.add_argument("--root", help="folder holding the dataset")
    pi.add_argument("--corruption", help=f"for the -C sets: one of {', '.join(CORRUPTIONS_ALL)}")
    pi.add_argument("--severity", type=int, help="for the -C sets: 1..5 (default 5)")
    pi.set_defaults(func=_info)

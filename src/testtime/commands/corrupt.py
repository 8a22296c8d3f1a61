"""``testtime corrupt``: write corrupted test sets (CIFAR-10-C layout) or draw a corruption grid.

Examples::

    testtime corrupt --list
    testtime corrupt --dataset cifar10 --out data/CIFAR-10-C-gen               # 19 x 5 severities
    testtime corrupt --dataset cifar10 --out out/ --corruptions fog,snow --severities 5
    testtime corrupt --dataset tiny-imagenet --split val --out data/Tiny-ImageNet-C-gen --layout folders
    testtime corrupt --dataset imagefolder --root /data/cifar10-jpeg --grid grid.png --index 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from testtime.cli import UserError
from testtime.commands import interrupt_on_sigterm
from testtime.corruptions import PARAM_SETS, check_name, list_corruptions


def parse_severities(text: str) -> list[int]:
    """``"1-5"``, ``"5"``, ``"1,3,5"``, ``"2-3,5"`` -> sorted ints in 1..5."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise UserError(f"--severities: cannot read {text!r}; use e.g. 1-5, 5 or 1,3,5") from None
    if not out or min(out) < 1 or max(out) > 5:
        raise UserError(f"--severities: values must lie in 1..5, got {text!r}")
    return sorted(out)


def parse_corruptions(text: str) -> list[str]:
    """Comma-separated names, or ``all`` / ``benchmark`` / ``extra``."""
    if text in ("all", "benchmark", "extra"):
        return list_corruptions(text)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--corruptions: empty list")
    for n in names:
        try:
            check_name(n)
        except KeyError:
            raise UserError(
                f"--corruptions: unknown corruption {n!r}; "
                f"valid: all, benchmark, extra, {', '.join(list_corruptions())}"
            ) from None
    return names


def run(args: argparse.Namespace) -> int:
    if args.list:
        for kind in ("benchmark", "extra"):
            print(f"{kind}: {' '.join(list_corruptions(kind))}")
        return 0
    if not args.dataset:
        raise UserError("--dataset: required (or --list)")
    if (args.out is None) == (args.grid is None):
        raise UserError("give exactly one of --out DIR (write the corrupted set) or --grid PNG (draw a picture)")
    names = parse_corruptions(args.corruptions)
    sevs = parse_severities(args.severities)
    if args.chunk_size < 1:
        raise UserError(f"--chunk-size: must be positive, got {args.chunk_size}")
    if args.layout not in ("npy", "folders"):
        raise UserError(f"--layout: unknown layout {args.layout!r}; valid: npy, folders")
    if args.params is not None and args.params not in PARAM_SETS:
        raise UserError(f"--params: unknown parameter set {args.params!r}; valid: {', '.join(PARAM_SETS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device: not a torch device: {args.device!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: {args.device} asked but CUDA is not available here; use --device cpu")
    if args.threads < 1:
        raise UserError(f"--threads: must be >= 1, got {args.threads}")
    if args.workers < 0:
        raise UserError(f"--workers: must be >= 0, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit: must be positive, got {args.limit}")
    if args.grid is not None:
        grid = Path(args.grid)
        if grid.suffix.lower() != ".png":
            raise UserError(f"--grid: expected a .png path, got {grid}")
        if not grid.parent.is_dir():
            raise UserError(f"--grid: folder {grid.parent} does not exist")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out: {args.out} exists and is not a folder")

    import numpy as np

    from testtime.corruptions.materialize import materialize, plan
    from testtime.data import load_dataset

    torch.set_num_threads(args.threads)
    interrupt_on_sigterm()  # clean up (workers, temporaries) as for Ctrl-C
    split = load_dataset(args.dataset, args.split, root=args.root)
    if args.limit is not None:
        split = split.take(np.arange(min(args.limit, len(split))))
    if args.grid is not None:
        from testtime.corruptions.grid import draw_grid

        if not 0 <= args.index < len(split):
            raise UserError(f"--index: must lie in [0, {len(split)}), got {args.index}")
        image = split.images[args.index]
        if image.shape[2] == 1 and args.grey_as_rgb:
            image = np.repeat(image, 3, axis=2)
        from testtime.corruptions.params import resolve_params

        resolve_params(args.params, *image.shape[:2])
        picture = draw_grid(image, names=names, seed=args.seed, params=args.params)
        tmp = Path(args.grid).with_name(f".{Path(args.grid).name}.tmp-{os.getpid()}")
        try:
            picture.save(tmp, format="PNG")
            os.replace(tmp, args.grid)
        finally:
            tmp.unlink(missing_ok=True)
        print(f"wrote {args.grid} ({len(names)} corruptions x clean + 5 severities, {split.name}[{args.index}])")
        return 0

    plan(split, args.out, corruptions=names, severities=sevs, seed=args.seed, params=args.params,
         chunk_size=args.chunk_size, layout=args.layout)  # fmt: skip
    paths = materialize(
        split, args.out, corruptions=names, severities=sevs, seed=args.seed, params=args.params,
        chunk_size=args.chunk_size, device=args.device, grey_as_rgb=args.grey_as_rgb, progress=not args.quiet,
        workers=args.workers, layout=args.layout,
    )  # fmt: skip
    what = "corruption files + labels.npy" if args.layout == "npy" else "corruption folders (<severity>/<class>/*.JPEG)"
    print(f"wrote {len(paths)} {what} to {args.out} ({len(split)} images x {len(sevs)} severities)")
    if sevs != [1, 2, 3, 4, 5] and args.layout == "npy":
        print("note: a subset of severities; blocks are in corruptions.json order, not the 5-block release layout",
              file=sys.stderr)  # fmt: skip
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "corrupt",
        help="write corrupted test sets (CIFAR-10-C layout) or draw a corruption grid",
        description="Corrupt a dataset's clean split with the 15 + 4 common corruptions (Hendrycks & Dietterich 2019) "
        "and write <corruption>.npy + labels.npy (resumable), or draw one image under every corruption and severity.",
    )
    p.add_argument("--list", action="store_true", help="print the corruption names and exit")
    p.add_argument("--dataset", help="dataset name (see `testtime data list`), e.g. cifar10, imagefolder")
    p.add_argument("--root", help="folder holding the dataset")
    p.add_argument("--split", default="test", help="split to corrupt (default: test)")
    p.add_argument("--out", help="output folder for <corruption>.npy and labels.npy")
    p.add_argument(
        "--layout",
        default="npy",
        help="npy: <corruption>.npy + labels.npy (CIFAR-10-C); folders: <corruption>/<severity>/<class>/*.JPEG "
        "(Tiny-ImageNet-C, JPEG quality 85) (default: npy)",
    )
    p.add_argument("--grid", help="write a PNG grid (rows: corruptions, columns: clean + severities 1..5)")
    p.add_argument("--index", type=int, default=0, help="image drawn by --grid (default: 0)")
    p.add_argument(
        "--corruptions", default="all", help="comma-separated names, or all / benchmark / extra (default: all)"
    )
    p.add_argument("--severities", default="1-5", help="e.g. 1-5, 5, 1,3,5 (default: 1-5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--params", help="parameter set: cifar, tiny or imagenet (default: from the image size)")
    p.add_argument(
        "--chunk-size", type=int, default=1000, help="images per corruption call and per seed (default: 1000)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in this process (--grid, --workers 0); 1 is fastest on a busy CPU (default: 1)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes, one torch thread each; 0 = in this process (default: min(2, cpus))",
    )
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--grey-as-rgb", action="store_true", help="repeat 1-channel images to 3 channels")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

"""First (decode) vs second (cached) load of an image-folder split; target: second load >= 10x faster.

Usage::

    .venv/bin/python benchmarks/bench_data.py [--root ../shared/data/cifar10-jpeg] [--split test] [--repeats 3]

Each repeat uses a fresh, empty cache folder: the first load lists and decodes every JPEG with
Pillow and writes the cache; the second load lists the files (the cache key needs their sizes and
mtimes) and reads two .npy files. The JPEG files themselves are in the OS page cache after the
first repeat (reported as such). Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from testtime.data import load_dataset


def default_root() -> Path:
    env = os.environ.get("TESTTIME_CIFAR10_JPEG")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=default_root(), help="image-folder tree (default: CIFAR-10 JPEG copy)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"bench_data: error: --root {args.root} not found (set $TESTTIME_CIFAR10_JPEG)", file=sys.stderr)
        return 2
    firsts, seconds = [], []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-data-cache-") as cache:
            t0 = time.perf_counter()
            a = load_dataset("imagefolder", args.split, root=args.root, cache_dir=cache)
            t1 = time.perf_counter()
            b = load_dataset("imagefolder", args.split, root=args.root, cache_dir=cache)
            t2 = time.perf_counter()
            assert "cache" in b.meta and np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
            firsts.append(t1 - t0)
            seconds.append(t2 - t1)
            print(f"repeat {r}: first {t1 - t0:.3f} s, second {t2 - t1:.3f} s, {len(a)} images {a.images.shape[1:]}")
    f, s = statistics.median(firsts), statistics.median(seconds)
    print(
        f"median first load {f:.3f} s, median second (cached) load {s:.3f} s, ratio {f / s:.1f}x "
        f"(target >= 10x) | {args.root}/{args.split} | {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

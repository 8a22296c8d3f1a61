"""Speed of the corruption engine at 32 px (a benchmark script, not a test).

Prints images/s per corruption (severities 1..5, CIFAR parameters) and the wall time to
materialise a CIFAR-10-C-sized set (15 corruptions x 5 severities x 10,000 images) with
``testtime.corruptions.materialize`` into a temporary folder.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_corruptions.py \
        --root ../shared/data/cifar10-jpeg [--per-corruption 2000] [--threads 2] [--skip-full]

The data is the CIFAR-10 JPEG copy (image-folder layout, 10,000 test images).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from testtime.corruptions import CorruptedSplit, list_corruptions
from testtime.corruptions.materialize import materialize
from testtime.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"
    ap.add_argument("--root", default=os.environ.get("TESTTIME_CIFAR10_JPEG", str(default_root)))
    ap.add_argument("--per-corruption", type=int, default=2000, help="images per corruption and severity")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process (per-corruption figures)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the full materialisation")
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--corruptions", default="all")
    ap.add_argument("--skip-full", action="store_true", help="skip the 15 x 5 x 10,000 materialisation")
    ap.add_argument("--skip-each", action="store_true", help="skip the per-corruption figures")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    split = load_dataset("imagefolder", "test", root=args.root)
    print(f"loaded {split.name}: {len(split)} images {split.images.shape[1:]} in {time.perf_counter() - t0:.1f} s")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, load avg {os.getloadavg()}"
    )
    names = list_corruptions() if args.corruptions == "all" else args.corruptions.split(",")
    if not args.skip_each:
        sub = split.take(np.arange(min(args.per_corruption, len(split))))
        CorruptedSplit(sub.take(np.arange(8)), "fog", 1).chunk(0)  # warm-up
        total_imgs, total_t = 0, 0.0
        heads = " ".join(f"{'sev ' + str(s):>8}" for s in range(1, 6))
        print(f"\n{'corruption':<18} {heads}   img/s (all 5)   per CPU-s")
        for name in names:
            rates = []
            t_name = cpu_name = 0.0
            for s in range(1, 6):
                cs = CorruptedSplit(sub, name, s, seed=0, chunk_size=args.chunk_size)
                t, c = time.perf_counter(), time.process_time()
                for k in range(cs.num_chunks):
                    cs.chunk(k)
                dt = time.perf_counter() - t
                cpu_name += time.process_time() - c
                rates.append(len(sub) / dt)
                t_name += dt
            total_imgs += 5 * len(sub)
            total_t += t_name
            print(
                f"{name:<18} " + " ".join(f"{r:8.0f}" for r in rates)
                + f"   {5 * len(sub) / t_name:8.0f}   {5 * len(sub) / cpu_name:8.0f}"
            )  # fmt: skip
        print(f"{'all listed':<18} {total_imgs / total_t:.0f} img/s over {total_imgs} images")
    if not args.skip_full:
        print(f"\nmaterialising 15 corruptions x 5 severities x {len(split)} images, {args.workers} workers ...")
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            materialize(
                split, tmp, corruptions=list_corruptions("benchmark"), severities=range(1, 6), seed=0,
                chunk_size=args.chunk_size, progress=False, workers=args.workers,
            )  # fmt: skip
            dt = time.perf_counter() - t
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            size = sum(p.stat().st_size for p in Path(tmp).glob("*.npy"))
        print(
            f"full CIFAR-10-C-sized set: {dt:.1f} s ({15 * 5 * len(split) / dt:.0f} img/s), "
            f"{size / 1e9:.2f} GB written; load avg after: {os.getloadavg()}"
        )
        print(
            f"CPU time of the {args.workers} worker processes: {cpu:.1f} s; on {args.workers} otherwise idle cores "
            f"that is about {cpu / max(args.workers, 1):.0f} s of wall time"
        )


if __name__ == "__main__":
    main()

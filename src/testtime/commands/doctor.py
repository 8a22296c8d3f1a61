"""``testtime doctor``: versions, device, threads, cache, and which datasets can be found where.

Example::

    testtime doctor
"""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _report(args: argparse.Namespace) -> int:
    import numpy as np
    import PIL
    import torch

    from testtime import __version__
    from testtime.commands.data import dataset_status, next_steps, print_status
    from testtime.data.paths import CACHE_ENV, DATA_ENV, cache_dir

    print(f"testtime {__version__}")
    print(f"  python  {platform.python_version()} ({sys.executable})")
    print(f"  torch   {torch.__version__}")
    print(f"  numpy   {np.__version__}")
    print(f"  pillow  {PIL.__version__}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device    cuda ({torch.cuda.device_count()}: {names}); CPU also available")
    else:
        print("device    cpu (no CUDA device visible)")
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"threads   torch {torch.get_num_threads()} (OMP_NUM_THREADS={omp}), CPU cores {os.cpu_count()}")
    print(f"cache     {cache_dir()} (${CACHE_ENV})")
    print(f"data      ${DATA_ENV}={os.environ.get(DATA_ENV, '(unset)')}")
    rows = dataset_status(args.root)
    n_found = sum(r["found"] is not None for r in rows)
    print(f"datasets  {n_found} of {len(rows)} found:")
    print_status(rows, verbose=args.verbose)
    next_steps(rows)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="print versions, device, threads and which datasets are found",
        description="Print the versions of python, testtime, torch and numpy, the device, torch's thread "
        "count, the cache folder, and for every dataset where it looked and whether it was found.",
    )
    p.add_argument("--root", help="look for the datasets under this folder only")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the folders searched for found datasets")
    p.set_defaults(func=_report)

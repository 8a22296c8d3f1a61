"""Shared pieces of the method benchmarks: interleaved timing, machine line, the CTA / TENT models.

Timing: the candidates are run in turn inside every repeat (the order rotates), so a change of the
machine's load hits all of them alike; each figure is the median over repeats, and every ratio is
taken between figures of one run of one script.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector
from testtime.train.checkpoint import cpu_model


def machine_line(device: torch.device | str = "cpu") -> str:
    cpu = f"{cpu_model()} (torch kernels {torch.backends.cpu.get_cpu_capability()})"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    gpu = ""
    if torch.device(device).type == "cuda":
        gpu = (f"; GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, "
               f"cuDNN {torch.backends.cudnn.version()}, TF32 conv {torch.backends.cudnn.allow_tf32} "
               f"matmul {torch.backends.cuda.matmul.allow_tf32}")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} thread(s)), "
        f"Python {platform.python_version()}, load average {load}{gpu}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously; a timer must not stop before them)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> dict[str, float]:
    """Median wall time (s) of every callable; all are run once per repeat, in a rotating order.
    On CUDA each timing waits for the device before it starts and before it stops."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def add_model_args(ap: argparse.ArgumentParser, reps: int, device: bool = False) -> None:
    """--arch, --batch, --size, --reps, --threads: the options every method benchmark shares;
    --device too for the scripts that run their models there (``device=True``)."""
    ap.add_argument("--arch", default="resnet8", help="a testtime.models backbone (default resnet8)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--reps", type=int, default=reps, help="timed repeats (medians are reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    if device:
        ap.add_argument("--device", default="cpu", help="torch device of the models and images: cpu or cuda[:N]")


def check_model_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch < 2 or args.reps < 1 or args.size < 8 or args.threads < 1:
        ap.error("--batch must be >= 2, --size >= 8, --reps and --threads >= 1")
    if hasattr(args, "device"):
        try:
            dev = torch.device(args.device)
        except (RuntimeError, ValueError):
            ap.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
        if dev.type not in ("cpu", "cuda"):
            ap.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            ap.error(f"--device {args.device}: CUDA is not available here")
        args.device = dev
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)


def classifier(arch: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(arch, num_classes)


def cta_bundle(arch: str, num_classes: int = 10, seed: int = 0) -> ProjectedClassifier:
    """The test-time model of CTA: g, pi (identity init) and h; the supervised encoder f is not in it."""
    m = classifier(arch, num_classes, seed)
    return ProjectedClassifier(m.encoder, projector(m.feature_dim, identity=True), m.fc)


def images(batch: int, size: int = 32, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform images drawn on the CPU (the same on every device), then moved to ``device``."""
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


def grid_args(ap: argparse.ArgumentParser) -> None:
    """The arguments of the scripts that read a bench grid's store: RUN_DIR and --config."""
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--config", default="cifar10-cpu-bench", help="bench config name or YAML path")


def open_grid(args: argparse.Namespace, prog: str):
    """``(store path, bench config)`` of :func:`grid_args`' arguments, or None after a one-line error."""
    from testtime.bench.spec import load_bench_config

    path = args.run_dir / "results.sqlite"
    if not path.is_file():
        print(f"{prog}: error: run_dir: no results.sqlite in {args.run_dir}", file=sys.stderr)
        return None
    return path, load_bench_config(args.config)

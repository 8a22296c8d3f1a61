"""Does a seed fix the model across CPUs? The preset's supervised stage under other CPU kernels.

Usage::

    python benchmarks/bench_kernels.py [--preset cifar10-cpu] [--per-class 256] [--epochs 3]

torch chooses its CPU kernels when it starts: ATen's vectorised operators by the instruction set it
finds (``torch.backends.cpu.get_cpu_capability()``: DEFAULT, AVX2, AVX512; the variable
``ATEN_CPU_CAPABILITY`` lowers it), oneDNN's convolutions by their own dispatch (``ONEDNN_MAX_CPU_ISA``
lowers it). Kernels of another instruction set sum in another order, so their floats differ in the
last bits, and SGD amplifies the difference step by step. This script trains the preset's supervised
stage (its model, recipe, seed and threads; ``--per-class`` training images per class, ``--epochs``
epochs: a few dozen steps) once per setting below, each in a fresh process with the variables set
before torch loads, and prints for each the kernels, the sha256 of the training images as decoded
(JPEG decoders dispatch on the CPU too), the sha256 of the trained weights, and how far the weights
are from the first setting's (largest absolute difference, relative L2 distance):

- ``as found`` twice: the same kernels must give the same bits (run-to-run determinism);
- ``ATEN_CPU_CAPABILITY=default`` and ``ONEDNN_MAX_CPU_ISA=SSE41``: each family of kernels lowered;
- ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``: the kernels an AVX2-only CPU runs. On an AVX2
  machine this is the setting as found; on an AVX-512 machine, if its weight hash equals the one an
  AVX2 machine prints, pinning these two variables makes a model reproducible across both kinds.

Nothing is written outside a temporary directory; the data are the preset's (image folders from
``$TESTTIME_CIFAR10_JPEG`` for cifar10-cpu).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS: dict[str, dict[str, str]] = {
    "as found": {},
    "as found, again": {},
    "ATen DEFAULT": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "AVX2 pinned": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def worker(preset: str, per_class: int, epochs: float, out: Path) -> None:
    """Train the preset's supervised stage into ``out`` and write ``out/result.json``."""
    import numpy as np
    import torch

    from testtime.commands.train import load_config
    from testtime.train.checkpoint import load_checkpoint
    from testtime.train.pipeline import load_data, run_stages

    cfg = load_config(preset, None, [f"data.train_per_class={per_class}", f"supervised.epochs={epochs}",
                                     "supervised.checkpoint_every=0", "supervised.log_every=1"])
    data = load_data(cfg.data)
    images = hashlib.sha256(np.ascontiguousarray(data.train.images).tobytes()).hexdigest()
    t0 = time.perf_counter()
    models = run_stages(cfg, out, data, stages=("supervised",), log=None)
    wall = time.perf_counter() - t0
    tensors, _ = load_checkpoint(out / "supervised")
    model = {k: v for k, v in sorted(tensors.items()) if k.startswith("model.")}
    digest = hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in model.values())).hexdigest()
    history = models.fits["supervised"].history or [{}]
    result = {
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "images_sha256": images, "weights_sha256": digest, "steps": models.fits["supervised"].steps,
        "last_ce": history[-1].get("ce"), "wall_s": wall,
    }
    (out / "result.json").write_text(json.dumps(result))


def distance(a: Path, b: Path) -> tuple[float, float]:
    """(largest |w_a - w_b|, ||w_a - w_b|| / ||w_b||) over the model's floating-point tensors."""
    import torch

    from testtime.train.checkpoint import load_checkpoint

    ta, _ = load_checkpoint(a / "supervised")
    tb, _ = load_checkpoint(b / "supervised")
    keys = [k for k in sorted(tb) if k.startswith("model.") and tb[k].is_floating_point()]
    da = torch.cat([ta[k].flatten().double() for k in keys])
    db = torch.cat([tb[k].flatten().double() for k in keys])
    return float((da - db).abs().max()), float((da - db).norm() / db.norm())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar10-cpu")
    ap.add_argument("--per-class", type=int, default=256, help="training images per class (default 256)")
    ap.add_argument("--epochs", type=float, default=3.0, help="epochs of the supervised stage (default 3: 30 steps)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.per_class < 1:
        ap.error(f"--per-class: must be >= 1, got {args.per_class}")
    if args.epochs <= 0:
        ap.error(f"--epochs: must be > 0, got {args.epochs}")
    if args.worker is not None:
        worker(args.preset, args.per_class, args.epochs, args.worker)
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine_line

    print(machine_line())
    print(f"{args.preset}: supervised stage, {args.per_class} training images per class, {args.epochs:g} epochs")
    print(f"{'setting':<16} {'kernels':<8} {'steps':>5} {'last CE':>8} {'wall s':>7}  {'images sha256':<12} "
          f"{'weights sha256':<16} {'max |dw|':>9} {'rel L2':>9}")
    with tempfile.TemporaryDirectory(prefix="bench_kernels.") as tmp:
        first: Path | None = None
        for name, env in SETTINGS.items():
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            out.mkdir()
            cmd = [sys.executable, __file__, "--preset", args.preset, "--per-class", str(args.per_class),
                   "--epochs", str(args.epochs), "--worker", str(out)]
            done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
            if done.returncode != 0:
                why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                print(f"{name:<16} failed: {why}")
                continue
            r = json.loads((out / "result.json").read_text())
            first = first or out
            dmax, rel = distance(out, first)
            print(f"{name:<16} {r['capability']:<8} {r['steps']:>5} {r['last_ce']:>8.4f} {r['wall_s']:>7.1f}  "
                  f"{r['images_sha256'][:12]:<12} {r['weights_sha256'][:16]:<16} {dmax:>9.2e} {rel:>9.2e}")
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

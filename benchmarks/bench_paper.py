"""Per-step cost of the ``paper`` preset's work on this CPU or a GPU, its FLOPs, and its total wall time.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_paper.py [--arch resnet50] [--batch 16]
    python benchmarks/bench_paper.py --device cuda --at-preset-batch --reps 5

What is measured here (CPU): the wall time of one training step of every source-time stage
(supervised CE, SimCLR, alignment, linear probe, joint Y model) and of one CTA test-time iteration,
at ``--batch`` images (the paper's 256 / 128 do not fit a 3-minute run with ResNet-50 on one core),
scaled linearly to the preset's batch sizes; and the FLOPs of each step, counted by
the FLOP formulas of ``torch.utils.flop_counter`` (matmuls and convolutions, forward + backward;
1 multiply-add = 2 FLOPs) at 4 images and scaled linearly (the B x B similarity matrices of NT-Xent
are a negligible quadratic term).

With ``--device cuda`` the steps run on the GPU, each timing waits for the device before it starts
and stops, and ``--at-preset-batch`` times every step at the preset's own batch (no scaling); the
preset's wall time is then the sum of measured step times x steps (training and test-time steps and
the evaluation forwards; data loading, corrupting the test set and checkpointing are not included).
Without a GPU the GPU line is an estimate: the preset's total FLOPs divided
by the FLOP rate that a published ResNet-50 training throughput implies (NVIDIA DeepLearningExamples,
ResNet-50 v1.5 for PyTorch, 1x A100 80GB: 938 images/s in TF32, 2,470 in mixed precision; 4.1 G
multiply-adds per 224x224 forward, x3 for forward + backward), i.e. achieved, not peak, rates.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from common import add_model_args, check_model_args, images, machine_line, sync
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from testtime.commands.train import load_config
from testtime.losses import nt_xent
from testtime.methods.base import use_batch_statistics
from testtime.models import create_model
from testtime.models.heads import projector
from testtime.train.objectives import (
    AlignObjective,
    JointObjective,
    LinearProbeObjective,
    SimCLRObjective,
    SupervisedObjective,
)
from testtime.transforms import SimCLRViewsConfig, simclr_views

RESNET50_IMAGENET_TRAIN_FLOPS = 3 * 2 * 4.1e9  # per image: forward 4.1 G multiply-adds, x3 with backward
A100_IMG_S = {"TF32": 938.0, "AMP": 2470.0}  # DeepLearningExamples ResNet-50 v1.5 PyTorch, 1x A100 80GB


def objectives(arch: str, device: torch.device) -> dict[str, object]:
    torch.manual_seed(0)
    sup = create_model(arch, 10).to(device)
    d = sup.feature_dim
    g, pi = copy.deepcopy(sup.encoder), projector(d, identity=True).to(device)
    return {
        "supervised": SupervisedObjective(sup.encoder, sup.fc),
        "ssl": SimCLRObjective(copy.deepcopy(g), copy.deepcopy(pi), tau=0.01),
        "align": AlignObjective(g, pi, copy.deepcopy(sup.encoder), sup.fc),
        "probe": LinearProbeObjective(nn.Sequential(copy.deepcopy(g), copy.deepcopy(pi)), nn.Linear(d, 10).to(device)),
        "joint": JointObjective(copy.deepcopy(sup.encoder), copy.deepcopy(sup.fc),
                                projector(d, identity=True).to(device)),
    }


def train_step(obj):
    obj.set_modes()
    opt = torch.optim.Adam(obj.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def run(x, y):
        loss, _ = obj.loss(x, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def cta_iteration(arch: str, device: torch.device):
    """One CTA test-time iteration (views, forward of 2B views, NT-Xent, backward, Adam) on g, pi."""
    torch.manual_seed(0)
    m = create_model(arch, 10).to(device)
    g, pi = m.encoder.train().requires_grad_(True), projector(m.feature_dim, identity=True).to(device)
    use_batch_statistics(g)
    opt = torch.optim.Adam([*g.parameters(), *pi.parameters()], lr=1e-6)
    gen = torch.Generator().manual_seed(0)

    def run(x, y):
        b = x.shape[0]
        z = pi(g(torch.cat(simclr_views(x, gen, SimCLRViewsConfig()))))  # (2B, D)
        loss = nt_xent(z[:b], z[b:], 0.01)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


class CountFlops(TorchDispatchMode):
    """The FLOP formulas of ``torch.utils.flop_counter`` (convolutions, matmuls and their backward),
    summed over every op dispatched; without ``FlopCounterMode``'s module tracker, which fails on a
    module called under ``no_grad`` with an input that requires grad (the alignment stage's probe)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def flops(run, *inputs) -> float:
    with CountFlops() as fc:
        run(*inputs)
    return float(fc.total)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap, reps=1, device=True)
    ap.add_argument("--at-preset-batch", action="store_true",
                    help="time every step at the preset's own batch (256 / 128) instead of --batch, scaled")
    ap.set_defaults(arch="resnet50", batch=16)
    args = ap.parse_args(argv)
    check_model_args(ap, args)
    dev = args.device
    cfg = load_config("paper", None, [])
    print(f"# bench_paper --arch {args.arch} --batch {args.batch} --reps {args.reps} --threads {args.threads} "
          f"--device {dev}{' --at-preset-batch' if args.at_preset_batch else ''}")
    print(f"# start: {machine_line(dev)}")
    t_start = time.perf_counter()
    n_train = 50_000 if cfg.data.train_per_class is None else 10 * cfg.data.train_per_class
    n_test = 10 * cfg.data.test_per_class
    test_batches = len(cfg.eval.corruptions) * -(-n_test // cfg.ttt.batch_size)
    ttt_rows = sum(r in ("cta", "cta-paper-settings", "cta-c", "y-model") for r in cfg.eval.rows)
    fwd_rows = len(cfg.eval.rows) - ttt_rows
    stage_cfg = {"supervised": cfg.supervised, "ssl": cfg.ssl.train, "align": cfg.align.train,
                 "probe": cfg.probe.train, "joint": cfg.joint.train}
    work = []  # (label, per-step runner, steps in the preset, batch in the preset)
    for name, obj in objectives(args.arch, dev).items():
        t = stage_cfg[name]
        work.append((f"train {name}", train_step(obj), int(t.epochs * (n_train // t.batch_size)), t.batch_size))
    work.append((f"CTA iteration x {ttt_rows} rows", cta_iteration(args.arch, dev),
                 ttt_rows * cfg.ttt.steps * test_batches, cfg.ttt.batch_size))
    x4, y4 = images(4, args.size, device=dev), torch.arange(4, device=dev) % 10

    def timed(run, b: int) -> float:
        """Fastest of --reps timings of ``run`` at ``b`` images (after one untimed run on CUDA)."""
        x, y = images(b, args.size, device=dev), torch.arange(b, device=dev) % 10
        if dev.type == "cuda":
            run(x, y)
        times = []
        for _ in range(args.reps):
            sync(dev)
            t0 = time.perf_counter()
            run(x, y)
            sync(dev)
            times.append(time.perf_counter() - t0)
        return min(times)

    rows = []
    for label, run, steps, batch in work:
        f4 = flops(run, x4, y4)  # also the warm-up
        b = batch if args.at_preset_batch else args.batch
        t = timed(run, b)
        sec = t * batch / b  # per step at the preset's batch (linear in the batch when b differs)
        rows.append((label, steps, batch, sec, f4 * batch / 4))
        print(f"  {label}: {t:.4f} s per step at batch {b}", flush=True)
    fwd = create_model(args.arch, 10).to(dev).eval()
    with torch.no_grad():
        fwd_flops = flops(fwd, x4) * cfg.ttt.batch_size / 4
        b = cfg.ttt.batch_size if args.at_preset_batch else args.batch
        fwd_sec = timed(lambda x, y: fwd(x), b) * cfg.ttt.batch_size / b
    # forward-only evaluation rows, plus CTA's two forwards per batch (pre-update logits, prediction)
    n_fwd = (fwd_rows + 2 * ttt_rows) * test_batches
    print(f"\n{args.arch} ({args.size}x{args.size}), preset 'paper': {n_train} training images, {n_test} test "
          f"images x {len(cfg.eval.corruptions)} corruptions, {test_batches} test batches of {cfg.ttt.batch_size}")
    at = "the preset's batch" if args.at_preset_batch else f"batch {args.batch}, scaled"
    where = dev.type.upper()
    print(f"| work | steps in the preset | batch | {where} s / step (measured at {at}) | TFLOP / step (counted) | "
          f"total PFLOP | {where} total (h) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    total_flops, total_steps_sec = 0.0, 0.0
    for label, steps, batch, sec, fl in rows:
        total_flops += steps * fl
        total_steps_sec += steps * sec
        print(f"| {label} | {steps:,} | {batch} | {sec:.4f} | {fl / 1e12:.3f} | {steps * fl / 1e15:.1f} | "
              f"{steps * sec / 3600:.2f} |")
    total_flops += n_fwd * fwd_flops
    print(f"| forward passes of the evaluation | {n_fwd:,} | {cfg.ttt.batch_size} | {fwd_sec:.4f} | "
          f"{fwd_flops / 1e12:.3f} | {n_fwd * fwd_flops / 1e15:.1f} | {n_fwd * fwd_sec / 3600:.2f} |")
    total_sec = total_steps_sec + n_fwd * fwd_sec
    print(f"\ntotal {total_flops / 1e15:.0f} PFLOP; {where} (this machine, {at}): steps x measured step times "
          f"= {total_sec / 3600:.2f} h ({total_flops / total_sec / 1e12:.3g} TFLOP/s achieved); data loading, "
          "corrupting the test set and checkpointing not included")
    print("ESTIMATE, not a measurement: GPU wall time = total FLOPs / achieved FLOP rate of published ResNet-50 "
          "training throughput")
    for prec, img_s in A100_IMG_S.items():
        rate = img_s * RESNET50_IMAGENET_TRAIN_FLOPS
        print(f"  1x A100 80GB, {prec}: {rate / 1e12:.1f} TFLOP/s achieved -> {total_flops / rate / 3600:.1f} h")
    print(f"wall time of this run {time.perf_counter() - t_start:.0f} s")
    print(f"# end: {machine_line(dev)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

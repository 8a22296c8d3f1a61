"""Framework overhead of a test-time iteration, cost of reset, and peak test-time memory (CPU or CUDA).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_iteration.py [--arch resnet8] [--batch 128] [--reps 15]
        [--checkpoint] [--cta-only] [--device cuda]

``--checkpoint`` adds CTA with ``checkpoint="stages"`` and ``checkpoint="blocks"`` (activation
checkpointing of g's stages or residual blocks, :mod:`testtime.methods._checkpoint`) to the timing
(against the same bare loop, without checkpointing: target 1's baseline) and to the memory table
(against TENT: target 3).
``--cta-only`` times only the CTA candidates and measures only TENT's and CTA's memory (a short run).

Targets (docs/performance.md, issue "Performance"):

1. One CTA iteration (two SimCLR views, forward of the 2B views, backward, Adam step) at most 1.15x
   the same backbone's bare forward + backward + step on two ready-made views; TENT's step against
   a bare forward + backward + step of the BN affine parameters; ``source`` / ``bn`` against a bare
   forward. CTA's views are drawn every iteration: the ratio is reported with the view generation
   (what one iteration of the method costs; the target's ratio) and without it (the view time,
   measured alone in the same run, subtracted: the overhead of the framework itself).
2. ``reset()`` under 2% of one iteration.
3. CTA's peak test-time memory at most 1.2x TENT's on the same backbone and batch.

How the CTA iteration is timed: ``adapt`` with ``--cta-steps`` S iterations is timed, and one
no-grad forward of the batch with test-batch BN statistics (the logits of x before the update,
computed once per batch) is subtracted; the rest divided by S is one iteration. The per-batch extras
(that forward, the prediction after the update, the reset) are reported on their own line.

Memory: each method runs in a fresh child process (``--memory-child``); the figure is the growth of
the resident set size from just before its first test-time batch (model built, libraries warmed up
on a 2-image no-grad forward) to the high-water mark after one full ``step`` on the batch (``VmHWM``
of /proc/self/status, reset through /proc/self/clear_refs just before): activations, gradients,
optimiser state, views, backups. The children run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc
serves every block over 64 KiB with its own mapping and unmaps it when freed, so the resident set
follows the live tensor bytes instead of the allocator's reuse pattern (without it, repeated
iterations and fragmentation moved the figures by up to 30%). Model weights are reported
separately (parameters and buffers).
The bare CTA and TENT updates are measured the same way, to show what the algorithms themselves need.

With ``--device cuda`` models, images and views are on the GPU, every timing waits for the device
before it starts and stops, and the memory figure of each child is the CUDA caching allocator's
peak (``torch.cuda.max_memory_allocated``) during the step less what was allocated just before it:
exact tensor bytes, no RSS.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

import torch
from common import (
    add_model_args,
    check_model_args,
    classifier,
    cta_bundle,
    images,
    interleaved,
    machine_line,
    sync,
)

from testtime.bench.cost import peak_rss_bytes, reset_peak_rss, rss_bytes
from testtime.losses import nt_xent
from testtime.losses.entropy import softmax_entropy
from testtime.methods import create_method
from testtime.methods.base import use_batch_statistics
from testtime.methods.tent import configure_bn_adaptation
from testtime.transforms import SimCLRViewsConfig, simclr_views

CKPT_MODES = ("stages", "blocks")  # CTA's checkpoint modes measured with --checkpoint


def bare_cta(bundle, views: torch.Tensor, tau: float):
    """forward of the 2B ready-made views through pi(g(.)), NT-Xent, backward, Adam step."""
    bundle = copy.deepcopy(bundle).eval().requires_grad_(False)
    bundle.encoder.requires_grad_(True)
    bundle.projector.requires_grad_(True)
    use_batch_statistics(bundle)
    opt = torch.optim.Adam([p for p in bundle.parameters() if p.requires_grad], lr=1e-6)
    b = views.shape[0] // 2

    def run():
        z = bundle.ssl_embed(views)  # (2B, D)
        loss = nt_xent(z[:b], z[b:], tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def bare_tent(model, x: torch.Tensor):
    model = copy.deepcopy(model)
    configure_bn_adaptation(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def run():
        loss = softmax_entropy(model(x)).mean(0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def bare_forward(model, x: torch.Tensor, batch_stats: bool):
    model = copy.deepcopy(model).eval().requires_grad_(False)
    if batch_stats:
        use_batch_statistics(model)

    def run():
        with torch.no_grad():
            return model(x)

    return run


def timing(args) -> dict[str, float]:
    dev = args.device
    x = images(args.batch, args.size, device=dev)
    bundle = cta_bundle(args.arch).to(dev)
    clf = classifier(args.arch).to(dev)
    g = torch.Generator().manual_seed(1)
    v1, v2 = simclr_views(x, g, SimCLRViewsConfig())
    views = torch.cat([v1, v2])  # (2B, C, H, W), ready-made
    cta = create_method("cta", copy.deepcopy(bundle), steps=args.cta_steps, lr=1e-6)
    ckpt = {mode: create_method("cta", copy.deepcopy(bundle), steps=args.cta_steps, lr=1e-6, checkpoint=mode)
            for mode in (CKPT_MODES if args.checkpoint else ())}
    tent = create_method("tent", copy.deepcopy(clf))
    source = create_method("source", copy.deepcopy(clf))
    bn = create_method("bn", copy.deepcopy(clf))

    def cta_adapt():
        cta.reset()  # keep every repeat at the same weights (timed separately below)
        cta.adapt(x)

    def ckpt_adapt(method):
        def run():
            method.reset()
            method.adapt(x)

        return run

    def tent_step():
        tent.reset()
        tent.adapt(x)

    fns = {
        "cta_adapt": cta_adapt,
        **{f"cta-{mode}_adapt": ckpt_adapt(m) for mode, m in ckpt.items()},
        "bare_cta": bare_cta(bundle, views, 0.01),
        "views": lambda: simclr_views(x, g, SimCLRViewsConfig()),
        "cta_logits_fwd": bare_forward(bundle, x, batch_stats=True),
        "cta_reset": cta.reset,
    }
    if args.cta_only:
        return _per_iteration(interleaved(fns, args.reps, warmup=1, device=dev), args.cta_steps)
    fns = {
        **fns,
        "tent_step": tent_step,
        "bare_tent": bare_tent(clf, x),
        "tent_reset": tent.reset,
        "source": lambda: source.step(x),
        "bare_fwd_eval": bare_forward(clf, x, batch_stats=False),
        "bn": lambda: bn.step(x),
        "bare_fwd_bn": bare_forward(clf, x, batch_stats=True),
    }
    t = _per_iteration(interleaved(fns, args.reps, warmup=1, device=dev), args.cta_steps)
    t["tent_step"] -= t["tent_reset"]  # the timed step closure includes a reset: take it out again
    return t


def _per_iteration(t: dict[str, float], steps: int) -> dict[str, float]:
    """One CTA iteration from a timed ``adapt`` (reset and the per-batch no-grad forward taken out)."""
    for mode in ("cta",) + tuple(f"cta-{m}" for m in CKPT_MODES):
        if f"{mode}_adapt" in t:
            t[f"{mode}_adapt"] -= t["cta_reset"]  # the timed adapt closures include a reset
            t[f"{mode}_iter"] = (t[f"{mode}_adapt"] - t["cta_logits_fwd"]) / steps
    return t


def memory_child(args) -> None:
    """Runs in a fresh process: peak memory growth (RSS, or CUDA allocator) of one test-time batch of one method."""
    name, dev = args.memory_child, args.device
    model = (cta_bundle(args.arch) if "cta" in name else classifier(args.arch)).to(dev)
    x = images(args.batch, args.size, device=dev)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if name == "bare-cta":
        views = torch.cat(simclr_views(x, torch.Generator().manual_seed(1), SimCLRViewsConfig()))
        run = bare_cta(model, views, 0.01)
        model(x[:2].clone())
    elif name == "bare-tent":
        run = bare_tent(model, x)
        model(x[:2].clone())
    else:
        kw = {"cta": {"steps": args.cta_steps}, "tent": {"steps": 1},
              **{f"cta-{m}": {"steps": args.cta_steps, "checkpoint": m} for m in CKPT_MODES}}.get(name, {})
        method = create_method("cta" if "cta" in name else name, model, **kw)
        method.predict(x[:2])  # libraries warmed up; nothing batch-sized allocated yet

        def run():
            method.step(x)

    if dev.type == "cuda":
        sync(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        run()
        sync(dev)
        growth = torch.cuda.max_memory_allocated(dev) - before
    else:
        reset_peak_rss()
        before = rss_bytes()
        run()
        growth = peak_rss_bytes() - before
    print(json.dumps({"method": name, "growth": growth, "weights": weights}))


def memory(args) -> dict[str, dict]:
    out = {}
    names = ("tent", "cta") if args.cta_only else ("source", "bn", "tent", "cta", "bare-tent", "bare-cta")
    for name in names + (tuple(f"cta-{m}" for m in CKPT_MODES) if args.checkpoint else ()):
        cmd = [sys.executable, __file__, "--memory-child", name, "--arch", args.arch, "--batch", str(args.batch),
               "--size", str(args.size), "--cta-steps", str(args.cta_steps), "--threads", str(args.threads),
               "--device", str(args.device)]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # large blocks go back to the OS when freed
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap, reps=15, device=True)
    ap.add_argument("--cta-steps", type=int, default=4, help="iterations per timed CTA adapt")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--checkpoint", action="store_true", help='also CTA with checkpoint="stages" and "blocks"')
    ap.add_argument("--cta-only", action="store_true", help="only the CTA candidates (and TENT's memory)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cta_steps < 1:
        ap.error("--cta-steps must be >= 1")
    check_model_args(ap, args)
    if args.memory_child:
        memory_child(args)
        return 0
    print(f"# bench_iteration --arch {args.arch} --batch {args.batch} --size {args.size} --reps {args.reps} "
          f"--cta-steps {args.cta_steps}{' --checkpoint' if args.checkpoint else ''}"
          f"{' --cta-only' if args.cta_only else ''} --device {args.device}")
    print(f"# start: {machine_line(args.device)}")
    t = timing(args)
    ms = {k: 1e3 * v for k, v in t.items()}
    views = ms["views"]
    rows = [
        ("CTA iteration (views + fwd + bwd + Adam) / bare on ready-made views", ms["cta_iter"], ms["bare_cta"],
         1.15),
        ("  same, view generation subtracted", ms["cta_iter"] - views, ms["bare_cta"], 1.15),
    ]
    for mode in CKPT_MODES if args.checkpoint else ():
        it = ms[f"cta-{mode}_iter"]
        rows += [
            (f'CTA checkpoint="{mode}" iteration / the same bare loop (no checkpointing)', it, ms["bare_cta"], 1.15),
            ("  same, view generation subtracted", it - views, ms["bare_cta"], 1.15),
        ]
    if not args.cta_only:
        rows += [
            ("TENT step / bare fwd + bwd + Adam (BN affine)", ms["tent_step"], ms["bare_tent"], 1.15),
            ("source step / bare eval forward", ms["source"], ms["bare_fwd_eval"], 1.15),
            ("bn step / bare forward with batch statistics", ms["bn"], ms["bare_fwd_bn"], 1.15),
        ]
    print("\n| measurement | method (ms) | bare (ms) | ratio | target | met |")
    print("|---|---:|---:|---:|---:|---|")
    for label, a, b, target in rows:
        print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.3f}x | <= {target}x | {'yes' if a / b <= target else 'no'} |")
    print(f"\nview generation alone (2 views of {args.batch} images): {views:.1f} ms "
          f"({100 * views / ms['cta_iter']:.1f}% of a CTA iteration)")
    print(f"per-batch extra of CTA (no-grad forward of x for its pre-update logits): {ms['cta_logits_fwd']:.1f} ms")
    print("\n| reset | reset (ms) | one iteration (ms) | share | target | met |")
    print("|---|---:|---:|---:|---:|---|")
    resets = [("CTA", ms["cta_reset"], ms["cta_iter"])]
    resets += [] if args.cta_only else [("TENT", ms["tent_reset"], ms["tent_step"])]
    for label, r, it in resets:
        share = 100 * r / it
        print(f"| {label} | {r:.2f} | {it:.1f} | {share:.2f}% | < 2% | {'yes' if share < 2 else 'no'} |")
    if not args.skip_memory:
        mem = memory(args)
        mib = 1 / 2**20
        what = "CUDA allocator peak" if args.device.type == "cuda" else "peak RSS"
        print(f"\n| method | weights (MiB) | {what} growth in one batch (MiB) | weights + growth (MiB) |")
        print("|---|---:|---:|---:|")
        for name, m in mem.items():
            print(f"| {name} | {m['weights'] * mib:.1f} | {m['growth'] * mib:.1f} | "
                  f"{(m['weights'] + m['growth']) * mib:.1f} |")
        te = mem["tent"]
        print()
        for name in ("cta",) + tuple(f"cta-{m}" for m in CKPT_MODES):
            if name not in mem:
                continue
            c = mem[name]
            r1 = c["growth"] / te["growth"]
            r2 = (c["growth"] + c["weights"]) / (te["growth"] + te["weights"])
            print(f"{name} / TENT peak test-time memory: {r2:.2f}x with weights, {r1:.2f}x working memory alone "
                  f"(target <= 1.2x: {'met' if r2 <= 1.2 else 'not met'})")
        if "bare-cta" in mem:
            print(f"bare updates alone: {mem['bare-cta']['growth'] / mem['bare-tent']['growth']:.2f}x")
    print(f"# end: {machine_line(args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


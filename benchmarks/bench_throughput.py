"""Test-time throughput (images/s) of source inference, TENT and CTA at 1, 5, 10, 20 iterations (CPU or CUDA).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_throughput.py --arch resnet8 [--batch 128] [--iters 1,5,10,20]
    OMP_NUM_THREADS=1 python benchmarks/bench_throughput.py --arch resnet50 --measure 1 --reps 1
    python benchmarks/bench_throughput.py --arch airbench --device cuda --reps 10

Every row is one test batch as the episodic protocol runs it (``testtime.bench.evaluate``): for
CTA ``reset()`` + ``step(x)`` (``steps`` iterations, then the prediction); TENT one step (the logits
of its adaptation forward); ``source`` one eval forward. images/s = batch / median seconds per batch. On CUDA
every timing waits for the device's queued kernels before it starts and stops (``common.sync``), and
the warm-up runs every row once at the full batch (cuDNN's algorithm choice, the allocator's pool).

``--measure`` names the CTA iteration counts that are timed; the others in ``--iters`` are
extrapolated (marked so) from the cost model ``T(k) = T(k0) + (k - k0) * T_iter``, where ``T_iter``
is the slope between the two extreme measured counts, or, with one measured count k0,
``(T(k0) - reset - 2 forwards with test-batch BN statistics) / k0`` (the per-batch extras of CTA
are its reset, the no-grad forward giving the pre-update logits and the prediction after the
update; the forward is timed as the ``bn`` method's step).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import add_model_args, check_model_args, classifier, cta_bundle, images, interleaved, machine_line

from testtime.methods import create_method


def parse_ints(text: str, what: str) -> list[int]:
    try:
        vals = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise SystemExit(f"bench_throughput: error: {what} must be comma-separated integers, got {text!r}") from None
    if not vals or vals[0] < 1:
        raise SystemExit(f"bench_throughput: error: {what} must be integers >= 1, got {text!r}")
    return vals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap, reps=3, device=True)
    ap.add_argument("--iters", default="1,5,10,20", help="CTA iterations per batch to report")
    ap.add_argument("--measure", help="CTA iteration counts actually timed (default: all of --iters)")
    args = ap.parse_args(argv)
    iters = parse_ints(args.iters, "--iters")
    measure = parse_ints(args.measure, "--measure") if args.measure else iters
    check_model_args(ap, args)
    print(f"# bench_throughput --arch {args.arch} --batch {args.batch} --size {args.size} --iters {args.iters} "
          f"--measure {','.join(map(str, measure))} --reps {args.reps} --threads {args.threads} "
          f"--device {args.device}")
    print(f"# start: {machine_line(args.device)}")
    t_start = time.perf_counter()
    dev = args.device
    x = images(args.batch, args.size, device=dev)
    source = create_method("source", classifier(args.arch).to(dev))
    bn = create_method("bn", classifier(args.arch).to(dev))
    tent = create_method("tent", classifier(args.arch).to(dev))
    cta = {k: create_method("cta", cta_bundle(args.arch).to(dev), steps=k, lr=1e-6) for k in measure}

    def episodic(m):
        def run():
            m.reset()
            m.step(x)

        return run

    fns = {"source": lambda: source.step(x), "bn": lambda: bn.step(x), "tent": lambda: tent.step(x),
           "cta_reset": cta[measure[0]].reset}
    fns.update({f"cta{k}": episodic(m) for k, m in cta.items()})
    small = x[:4]
    for m in (source, bn, tent, *cta.values()):  # warm-up on 4 images: kernels, allocator, optimiser state
        m.step(small)
        m.reset()
    # on CUDA also one run of every row at the full batch: cuDNN picks its algorithms per shape
    t = interleaved(fns, args.reps, warmup=int(dev.type == "cuda"), device=dev)
    measured = {k: t[f"cta{k}"] for k in measure}
    if len(measure) >= 2:
        lo, hi = measure[0], measure[-1]
        t_iter = (measured[hi] - measured[lo]) / (hi - lo)
    else:
        lo = measure[0]
        t_iter = (measured[lo] - t["cta_reset"] - 2 * t["bn"]) / lo
    rows = [("source (eval forward)", "-", t["source"], "measured"),
            ("bn (test-batch statistics)", "-", t["bn"], "measured"),
            ("TENT (1 step)", "1", t["tent"], "measured")]
    for k in iters:
        if k in measured:
            rows.append(("CTA (episodic)", str(k), measured[k], "measured"))
        else:
            how = f"extrapolated: T({lo}) + (k - {lo}) x slope of {lo}..{measure[-1]}" if len(measure) > 1 else \
                f"extrapolated from {lo}"
            rows.append(("CTA (episodic)", str(k), measured[lo] + (k - lo) * t_iter, how))
    where = f"{args.threads} thread(s)" if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})"
    print(f"\n{args.arch}, batch {args.batch}, {args.size}x{args.size} images, {where}")
    print("| method | iterations | s / batch | images/s | |")
    print("|---|---:|---:|---:|---|")
    for name, k, sec, how in rows:
        print(f"| {name} | {k} | {sec:.3f} | {args.batch / sec:.1f} | {how} |")
    print(f"\none CTA iteration: {t_iter:.3f} s ({2 * args.batch / t_iter:.1f} view-images/s through forward + "
          f"backward); CTA reset {1e3 * t['cta_reset']:.2f} ms; "
          f"wall time of this run {time.perf_counter() - t_start:.0f} s")
    print(f"# end: {machine_line(dev)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

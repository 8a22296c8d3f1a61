"""Speed and memory of the three forms of TTT-Linear / TTT-MLP against sequence length.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ttt_layers.py [--width 256] [--heads 4]
        [--mini-batch-size 16] [--lengths 128,256,512,1024] [--sequential-max 256] [--repeats 3]

For each inner model, form and length it times the whole layer (projections, inner loop, norm,
output projection) on a batch of 1 in float32 on the CPU: the forward pass without gradients
(inference / prefill) and forward + backward (training), median of ``--repeats`` after one warm-up,
reported as tokens per second. Memory is the activation memory of training: the bytes of the
distinct storages autograd saves for the backward pass (counted with saved-tensor hooks), which is
where the primal form's per-token weights (L x d x d per head) show. The sequential form (one
autograd call per token) runs only up to ``--sequential-max`` tokens. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from testtime.layers import TTTMLP, TTTConfig, TTTLinear

FORMS = ("sequential", "primal", "dual")


def saved_bytes(layer: torch.nn.Module, x: torch.Tensor, form: str) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, form=form).sum()
    return sum(storages.values())


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mini-batch-size", type=int, default=16)
    ap.add_argument("--lengths", default="128,256,512,1024")
    ap.add_argument("--sequential-max", type=int, default=256)
    ap.add_argument("--kinds", default="linear,mlp")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
          f"width {args.width}, heads {args.heads} (head dim {args.width // args.heads}), "
          f"mini-batch {args.mini_batch_size}, batch 1, float32")
    print("| layer | length | form | forward tok/s | fwd+bwd tok/s | saved for backward (MiB) |")
    print("|---|---:|---|---:|---:|---:|")
    for kind in args.kinds.split(","):
        cls = {"linear": TTTLinear, "mlp": TTTMLP}[kind]
        layer = cls(TTTConfig(width=args.width, num_heads=args.heads, mini_batch_size=args.mini_batch_size))
        for length in (int(s) for s in args.lengths.split(",")):
            x = torch.randn(1, length, args.width)
            for form in FORMS:
                if form == "sequential" and length > args.sequential_max:
                    continue

                def fwd(form=form, x=x, layer=layer):
                    with torch.no_grad():
                        layer(x, form=form)

                def fwd_bwd(form=form, x=x, layer=layer):
                    layer.zero_grad(set_to_none=True)
                    layer(x, form=form).square().mean().backward()

                t_f, t_fb = timed(fwd, args.repeats), timed(fwd_bwd, args.repeats)
                mib = saved_bytes(layer, x, form) / 2**20
                print(f"| TTT-{kind.upper() if kind == 'mlp' else 'Linear'} | {length} | {form} | {length / t_f:,.0f} "
                      f"| {length / t_fb:,.0f} | {mib:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

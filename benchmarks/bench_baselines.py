"""Sanity run of the TTA baselines on real data: a small source model, corrupted test images, each
method under one protocol. Not a published figure: a check that the methods behave (and how fast).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_baselines.py \
        [--root ../shared/data/cifar10-jpeg] [--arch resnet8] [--epochs 3] [--n-test 1000] \
        [--corruptions gaussian_noise,fog,contrast] [--severity 5] [--batch-size 200] \
        [--methods source,bn,tent,eata,sar,cotta,memo] [--ckpt /tmp/bl/source.safetensors]

1. Source model: ``--arch`` trained from scratch on the CIFAR-10 JPEG copy's train split (SGD 0.1,
   momentum 0.9, wd 5e-4, cosine, batch 128, crop + flip, seed 0); cached at ``--ckpt``.
2. Test set: the first ``--n-test`` images of a seeded permutation of the test split, corrupted with
   each corruption at ``--severity`` (the package's CIFAR-10-C generators, seed 0).
3. Each method with its paper's defaults, protocol ``reset-per-domain`` (reset at every corruption),
   batch ``--batch-size``, predictions in the method's default order. EATA's Fisher uses 2,000
   clean training images (its official recipe), in batches of ``--batch-size``.
Prints one line per method (accuracy per corruption, mean, wall time) and the protocol.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from testtime.bench import Domain, evaluate, get_protocol, to_float_batch
from testtime.corruptions import corrupt
from testtime.data.imagefolder import load_image_folder
from testtime.methods import create_method
from testtime.models import create_model
from testtime.transforms.views import crop_flip


def default_root() -> Path:
    env = os.environ.get("TESTTIME_CIFAR10_JPEG")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def train_source(arch: str, train, epochs: int, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=len(train.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    n = len(train.labels)
    steps = epochs * math.ceil(n / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
    labels = torch.as_tensor(train.labels)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        t0, tot, correct = time.perf_counter(), 0.0, 0
        for s in range(0, n, 128):
            idx = perm[s:s + 128]
            x = crop_flip(to_float_batch(train.images[idx.numpy()]), g)
            y = labels[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == y).sum())
        print(f"epoch {ep + 1}/{epochs}: loss {tot / n:.3f}, train acc {100 * correct / n:.1f}% "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=default_root())
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--corruptions", default="gaussian_noise,fog,contrast")
    ap.add_argument("--severity", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--methods", default="source,bn,tent,eata,sar,cotta,memo")
    ap.add_argument("--ckpt", type=Path, default=Path("/tmp/bl/source.safetensors"))
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                    help="override a method's config field, e.g. --set eata.lr=0.001 (repeatable)")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        ap.error(f"--root: {args.root} is not a folder (set $TESTTIME_CIFAR10_JPEG)")
    from safetensors.torch import load_file, save_file

    overrides: dict[str, dict] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        meth, dot, fld = key.partition(".")
        if not sep or not dot:
            ap.error(f"--set: expected METHOD.FIELD=VALUE, got {item!r}")
        try:
            overrides.setdefault(meth, {})[fld] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides.setdefault(meth, {})[fld] = value

    torch.manual_seed(0)
    train = load_image_folder(args.root, "train")
    test = load_image_folder(args.root, "test")
    if args.ckpt.exists():
        model = create_model(args.arch, num_classes=len(train.classes))
        model.load_state_dict(load_file(str(args.ckpt)))
        print(f"source model: {args.ckpt}")
    else:
        model = train_source(args.arch, train, args.epochs)
        args.ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.ckpt.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, args.ckpt)
    model.eval()

    rng = np.random.default_rng(0)
    sel = rng.permutation(len(test.labels))[: args.n_test]
    imgs, labels = test.images[sel], np.asarray(test.labels)[sel]
    domains = [Domain("clean", imgs, labels)] if "clean" in args.corruptions.split(",") else []
    for c in [c for c in args.corruptions.split(",") if c != "clean"]:
        domains.append(Domain(c, np.asarray(corrupt(imgs, c, args.severity, seed=0)), labels))
    protocol = get_protocol("reset-per-domain", batch_size=args.batch_size, shuffle=False)
    fisher_idx = np.random.default_rng(1).permutation(len(train.labels))[:2000]
    fisher_batches = [to_float_batch(train.images[fisher_idx[s:s + args.batch_size]])
                      for s in range(0, 2000, args.batch_size)]
    rows = []
    for name in args.methods.split(","):
        net = create_model(args.arch, num_classes=len(train.classes))
        net.load_state_dict(model.state_dict())
        m = create_method(name, net, **overrides.get(name, {}))
        if name == "eata":
            m.compute_fisher(fisher_batches)
        res = evaluate(m, domains, protocol)
        note = f" overrides {overrides[name]}" if name in overrides else ""
        print(res.summary() + f" wall {res.wall_s:.1f} s" + note, flush=True)
        rows.append(res.to_dict())
    print(f"protocol: {protocol.describe()}; {args.n_test} test images, severity {args.severity}, arch {args.arch}, "
          f"CIFAR-10 (JPEG copy)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The small task: character-level (byte) language modelling of a text corpus with each mixer.

``python -m testtime.layers.train_lm`` trains the same tiny LM (:class:`~testtime.layers.lm.TinyLM`)
with TTT-Linear, TTT-MLP, linear attention and softmax attention as its mixer, on the same batches,
and prints a markdown table of held-out loss (nats per byte) against the step. The default corpus is
the licence texts every Debian system has under ``/usr/share/common-licenses`` (about 260 kB): its
files are read in name order (links to the same file once), concatenated, and the last 10% of bytes
held out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from testtime.layers.lm import LMConfig, TinyLM, list_mixers

DEFAULT_CORPUS = "/usr/share/common-licenses"


@dataclass(frozen=True)
class TrainLMConfig:
    """Settings of the small task (defaults: the run in docs/ttt-layers.md).

    ttt_options: extra TTTConfig fields for the TTT mixers (e.g. ``{"position_scale": "learnable"}``).
    """

    mixers: tuple[str, ...] = ("ttt-linear", "ttt-mlp", "linear-attention", "softmax-attention")
    corpus: str = DEFAULT_CORPUS
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mini_batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 20
    eval_every: int = 25
    eval_batches: int = 8
    seed: int = 0
    ttt_options: dict[str, Any] = field(default_factory=dict)


def load_corpus(path: str | os.PathLike) -> torch.Tensor:
    """The bytes of a file, or of a directory's files in name order (each real file once), as int64."""
    root = Path(path)
    if not root.exists():
        raise ValueError(f"corpus: {root} does not exist (give a text file or a directory of text files)")
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
    seen, chunks = set(), []
    for f in files:
        real = f.resolve()
        if real not in seen:
            seen.add(real)
            chunks.append(real.read_bytes())
    data = b"\n".join(chunks)
    if len(data) < 10_000:
        raise ValueError(f"corpus: {root} holds {len(data)} bytes; the task needs at least 10000")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def _batch(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(seq_len + 1)
    chunk = data[idx]  # (B, seq_len + 1)
    return chunk[:, :-1], chunk[:, 1:]


def _lr_at(step: int, cfg: TrainLMConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_one(mixer: str, cfg: TrainLMConfig, train: torch.Tensor, val: torch.Tensor) -> dict:
    """Train one LM; returns its parameter count, wall time and curves {step: loss}."""
    torch.manual_seed(cfg.seed)
    options = {"mini_batch_size": cfg.mini_batch_size, **cfg.ttt_options} if mixer.startswith("ttt") else {}
    model = TinyLM(LMConfig(mixer=mixer, width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
                            max_len=cfg.seq_len, mixer_options=options))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)  # the same batches for every mixer
    val_gen = torch.Generator().manual_seed(cfg.seed + 1)
    val_starts = torch.randint(0, len(val) - cfg.seq_len - 1, (cfg.eval_batches, cfg.batch_size), generator=val_gen)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                      for x, y in (_batch(val, s, cfg.seq_len) for s in val_starts)]
        model.train()
        return sum(losses) / len(losses)

    curve, train_curve, recent = {0: evaluate()}, {}, []
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step - 1, cfg)
        x, y = _batch(train, torch.randint(0, len(train) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen),
                      cfg.seq_len)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve[step] = evaluate()
            train_curve[step] = sum(recent) / len(recent)
            recent = []
    return {"mixer": mixer, "params": sum(p.numel() for p in model.parameters()),
            "seconds": time.perf_counter() - t0, "val": curve, "train": train_curve}


def markdown(results: list[dict]) -> str:
    """Held-out loss vs step, one column per mixer, then parameters and wall time."""
    names = [r["mixer"] for r in results]
    lines = ["| step | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for step in results[0]["val"]:
        lines.append(f"| {step} | " + " | ".join(f"{r['val'][step]:.3f}" for r in results) + " |")
    lines.append("| train loss (last interval) | " + " | ".join(
        f"{list(r['train'].values())[-1]:.3f}" for r in results) + " |")
    lines.append("| parameters | " + " | ".join(f"{r['params']:,}" for r in results) + " |")
    lines.append("| training time (s) | " + " | ".join(f"{r['seconds']:.0f}" for r in results) + " |")
    return "\n".join(lines)


def run(cfg: TrainLMConfig) -> list[dict]:
    for m in cfg.mixers:
        if m not in list_mixers():
            raise ValueError(f"mixers: unknown {m!r}; valid: {', '.join(list_mixers())}")
    data = load_corpus(cfg.corpus)
    split = int(0.9 * len(data))
    return [train_one(m, cfg, data[:split], data[split:]) for m in cfg.mixers]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m testtime.layers.train_lm", description=__doc__.split("\n")[0])
    d = TrainLMConfig()
    p.add_argument("--mixers", default=",".join(d.mixers), help=f"comma-separated, of: {', '.join(list_mixers())}")
    p.add_argument("--corpus", default=d.corpus)
    for name in ("steps", "batch_size", "seq_len", "width", "depth", "num_heads", "mini_batch_size", "eval_every",
                 "eval_batches", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--json", help="also write the results (config and curves) to this JSON file")
    a = p.parse_args(argv)
    cfg = TrainLMConfig(mixers=tuple(a.mixers.split(",")), corpus=a.corpus, steps=a.steps, batch_size=a.batch_size,
                        seq_len=a.seq_len, width=a.width, depth=a.depth, num_heads=a.num_heads,
                        mini_batch_size=a.mini_batch_size, lr=a.lr, eval_every=a.eval_every,
                        eval_batches=a.eval_batches, seed=a.seed)
    results = run(cfg)
    print(markdown(results))
    if a.json:
        Path(a.json).write_text(json.dumps({"config": asdict(cfg), "results": results}, indent=1))


if __name__ == "__main__":
    main()

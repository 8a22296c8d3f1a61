"""Tiny data-parallel fits, run under ``torchrun`` by ``test_distributed.py`` (and importable by it).

``python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py OUT SCENARIO ...``
Scenarios: ``plain`` (conv net without BN), ``bn`` (with BatchNorm), ``resume`` (``plain`` killed
after step 5 and restarted). Rank 0's ``fit`` writes ``OUT/<scenario>/sup.*``; every rank writes its
final weights to ``OUT/<scenario>.rank<r>.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from testtime.data.split import ImageSplit
from testtime.train import StopTraining, SupervisedObjective, TrainConfig, fit
from testtime.train import distributed as D
from testtime.transforms import CropFlipConfig

CFG = TrainConfig(
    epochs=2, batch_size=16, lr=1e-2, warmup_epochs=0.5, checkpoint_every=3, log_every=1, seed=3
)  # 4 steps an epoch on 64 images: 8 steps
AUGMENT = CropFlipConfig(padding=2)


def split(n: int = 64, size: int = 8) -> ImageSplit:
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int64) % 4
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=np.int64)
    img = base[labels][:, None, None, :] + rng.integers(-60, 60, (n, size, size, 3))
    return ImageSplit(np.clip(img, 0, 255).astype(np.uint8), labels, ("r", "g", "b", "y"), "toy")


def encoder(bn: bool) -> nn.Module:
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    # no conv bias before BN: its gradient is 0 up to rounding, which Adam would blow up to lr-sized steps
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=not bn), norm(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=not bn), norm(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def objective(bn: bool, cls: type[SupervisedObjective] = SupervisedObjective) -> SupervisedObjective:
    torch.manual_seed(0)
    return cls(encoder(bn), nn.Linear(8, 4), augment=AUGMENT)


def tensors(obj: SupervisedObjective) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, m in obj.modules.items() for k, v in m.state_dict().items()}


def _stop_at(step: int):
    def hook(done: int, logs: dict) -> None:
        if done == step:
            raise StopTraining

    return hook


def main(out: Path, scenarios: list[str]) -> None:
    D.init_from_env("cpu")
    assert D.world_size() > 1, "run under torchrun with 2+ processes"
    data = split()
    if "plain" in scenarios:  # a global batch that 2 processes cannot share evenly: a clear error
        try:
            fit(objective(bn=False), data, dataclasses.replace(CFG, batch_size=15), None, "odd", log=None)
            err = "none"
        except ValueError as exc:
            err = type(exc).__name__ if "divisible" in str(exc) else str(exc)
        if D.is_main():
            (out / "checks.json").write_text(json.dumps({"indivisible_batch": err}))
    for sc in scenarios:
        obj = objective(bn=sc == "bn")
        if sc == "resume":
            try:
                fit(obj, data, CFG, out / sc, "sup", on_step=_stop_at(5), log=None)
            except StopTraining:
                pass
            obj = objective(bn=False)
        fit(obj, data, CFG, out / sc, "sup", log=None)
        save_file(tensors(obj), str(out / f"{sc}.rank{D.rank()}.safetensors"))
    D.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])

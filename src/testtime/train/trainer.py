"""The one trainer used by every source-time stage (supervised, SimCLR, alignment, probe, joint).

``fit(objective, data, config, run_dir, name)``: Adam (or SGD with Nesterov momentum,
``optimizer="sgd"``), linear warm-up then cosine decay from ``lr`` to ``final_lr`` (the CTA paper's
Table 3 schedule), mini-batches in a seeded order per epoch (last
incomplete batch dropped), checkpoints every ``checkpoint_every`` steps and at every epoch end.

Determinism and resume: the order of epoch ``e`` is drawn from ``numpy.random.default_rng([seed,
e])`` and the augmentation generator of step ``s`` is ``torch.Generator().manual_seed(f(seed, s))``,
so the random state at any step is a function of ``(seed, step)``; the resume checkpoint holds the
weights and buffers of every module, the optimiser moments and the step (safetensors + JSON). A run
killed at any point and restarted with the same command ends with the same weights, bit for bit on
CPU, as an uninterrupted run.

Lookahead (``lookahead_every > 0``; off by default): the weight averaging of Keller Jordan's airbench94
(github.com/KellerJordan/airbench, ``airbench94.py``: ``LookaheadState`` and ``alpha_schedule``). An
EMA of every floating tensor in the state dicts of the trainable modules (weights and BN running
statistics; integer buffers such as ``num_batches_tracked`` are left alone) starts as a copy of the
weights. After the optimiser step of every step ``s`` (counted from 1) with ``s % lookahead_every == 0``
the EMA moves toward the live weights, ``ema.lerp_(w, 1 - decay)`` with ``decay = lookahead_decay *
(s / total)**3`` (airbench: every 5 steps, ``0.95**5 * (s / total)**3``), and the live weights are reset
to the EMA (the Lookahead optimiser's sync, which changes the trajectory). After the last step the
weights take the EMA (airbench's final ``update(decay=1.0)``), so the final checkpoint holds it; as in
airbench, the steps after the last sync are thereby dropped, and a ``lookahead_every`` above the run's
steps is refused (the weights would end where they started). The resume checkpoint holds the EMA
(``lookahead.<module>.<key>``), so a resumed run ends as an uninterrupted one.

airbench94's parameter groups (off by default): ``frozen_params`` leaves the parameters whose names
match its patterns out of the optimiser (airbench freezes its whitening stem's weights and every BN
scale; they are then neither updated nor decayed, and no gradient is computed for them), and
``bn_bias_lr_scale`` multiplies the BatchNorm biases' learning rate and divides their weight decay by
the same factor (airbench's ``bias_scaler = 64``), see :func:`param_groups`. airbench also trains its
stem bias for the first 3 epochs only; here a parameter is trainable for the whole run or not at all.

Data parallelism: under ``torchrun`` (a process group initialised, see
:mod:`testtime.train.distributed`) every rank trains on its rows of each global batch of
``batch_size`` images with the augmentation draws of the single-process run, gradients are averaged
over ranks, and only rank 0 logs and writes checkpoints; one process is unchanged bit for bit.

Example::

    from testtime.train import SupervisedObjective, TrainConfig, fit
    model = create_model("resnet8", 10)
    result = fit(SupervisedObjective(model.encoder, model.fc), split, TrainConfig(epochs=2), "runs/a", "supervised")
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testtime.data.split import ImageSplit
from testtime.train import distributed as D
from testtime.train.checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    load_module_tensors,
    load_optimizer_tensors,
    module_tensors,
    optimizer_tensors,
    save_checkpoint,
)
from testtime.train.objectives import Objective
from testtime.transforms.slicing import batch_slice
from testtime.transforms.views import CropFlipConfig


@dataclass(frozen=True)
class TrainConfig:
    """One source-time stage. Defaults: the CTA paper's Table 3 (50 epochs, batch 256, Adam,
    cosine 5e-4 -> 1e-6, 2 warm-up epochs)."""

    epochs: float = 50
    batch_size: int = 256
    lr: float = 5e-4
    final_lr: float = 1e-6
    warmup_epochs: float = 2.0
    weight_decay: float = 0.0
    optimizer: str = "adam"  # "adam" (Table 3) | "sgd" (momentum, Nesterov: the fast CIFAR recipes)
    momentum: float = 0.9  # SGD only
    label_smoothing: float = 0.0  # objectives with a cross-entropy term (supervised, probe, joint)
    channels_last: bool = False  # NHWC convolutions (about 1.3x faster on this CPU for the airbench net)
    crop_padding: int = 4  # supervised crop + flip augmentation: zero padding of the random crop
    cutout: int = 0  # supervised augmentation: side of one zeroed square per image (0 = off; CropFlipConfig)
    lookahead_every: int = 0  # airbench94's Lookahead EMA: sync every this many steps (0 = off; airbench: 5)
    lookahead_decay: float = 0.95**5  # the EMA decay at the last step, ramped as (step / total)**3 (airbench)
    # airbench94's parameter groups (off by default): fnmatch patterns over "<module>.<parameter>" names
    # (e.g. "encoder.stem.weight") of parameters left out of the optimiser, and the BatchNorm biases'
    # learning-rate multiplier, their weight decay divided by it (airbench: bias_scaler 64)
    frozen_params: tuple[str, ...] = ()
    bn_bias_lr_scale: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100  # steps (and at every epoch end); 0 = epoch ends only
    log_every: int = 20  # steps
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch statistics need two images), got {self.batch_size}")
        if not self.lr > 0 or self.final_lr < 0:
            raise ValueError(f"lr must be > 0 and final_lr >= 0, got lr={self.lr}, final_lr={self.final_lr}")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.checkpoint_every < 0:
            raise ValueError("warmup_epochs, weight_decay and checkpoint_every must be >= 0")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        self.augment()  # cutout's check lives in CropFlipConfig
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.lookahead_every < 0:
            raise ValueError(f"lookahead_every must be >= 0 (steps between syncs; 0 = off), got {self.lookahead_every}")
        if not 0 <= self.lookahead_decay < 1:
            raise ValueError(f"lookahead_decay must lie in [0, 1), got {self.lookahead_decay}")
        if not self.bn_bias_lr_scale > 0:
            raise ValueError(f"bn_bias_lr_scale must be > 0, got {self.bn_bias_lr_scale}")
        if any(not isinstance(p, str) or not p for p in self.frozen_params):
            raise ValueError(f"frozen_params must be non-empty name patterns, got {list(self.frozen_params)}")

    def augment(self) -> CropFlipConfig:
        """The supervised augmentation this config asks for (crop padding, flip, Cutout)."""
        return CropFlipConfig(padding=self.crop_padding, cutout=self.cutout)


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine annealing to ``final_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from a JSON sidecar (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def settings_diff(key: str, old: Any, now: Any) -> str:
    """What differs between a checkpoint's stored ``old`` setting ``key`` and the run's ``now``, for an
    error message: ``"train_config.epochs was 18, now 27"`` per differing field of two dicts (also the
    fields only one of them has), else ``"KEY was OLD, now NOW"``."""
    if isinstance(old, dict) and isinstance(now, dict):
        def text(d: dict, f: str) -> str:
            return repr(d[f]) if f in d else "absent"

        fields = sorted(f for f in set(old) | set(now) if f not in old or f not in now or old[f] != now[f])
        if fields:
            return ", ".join(f"{key}.{f} was {text(old, f)}, now {text(now, f)}" for f in fields)
    return f"{key} was {old!r}, now {now!r}"


def recipe(config: Any) -> Any:
    """A stored or current training config as the recipe a checkpoint is checked against: the
    later-added fields at their old value left out (:func:`testtime.config.core.strip_later_fields`)
    and every ``device`` key dropped, so a model trained on the CPU loads (or resumes) under
    ``device=cuda`` and the reverse: where a run goes is not what it trains."""
    from testtime.config.core import strip_later_fields  # here: testtime.config imports this module

    def drop(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k != "device"}
        if isinstance(value, list):
            return [drop(v) for v in value]
        return value

    return drop(strip_later_fields(_jsonable(config)))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step: a function of (seed, step) only."""
    s = int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(s)


def param_groups(objective: Objective, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups for ``objective`` under ``config`` (airbench94's, when asked).

    Every trainable parameter, named ``<module>.<parameter>``, except those matching a pattern of
    ``config.frozen_params`` (``fnmatch``; a pattern that matches none is an error). The BatchNorm
    biases form a group of their own when ``config.bn_bias_lr_scale != 1``: learning rate times the
    scale, weight decay divided by it, so that their decay per step (lr x wd) is unchanged (airbench94's
    ``bias_scaler``). Each group carries ``lr_scale``, applied to the schedule's lr at every step.
    """
    import fnmatch

    named = objective.named_parameters()
    names = [n for n, _ in named]
    for pat in config.frozen_params:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(
                f"frozen_params: {pat!r} matches no trainable parameter of {objective.name!r} "
                f"(names look like {', '.join(names[:3])}, ...)"
            )
    bn_biases = {
        id(m.bias)
        for n in objective.trainable
        for m in objective.modules[n].modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }
    kept = [(n, p) for n, p in named if not any(fnmatch.fnmatchcase(n, pat) for pat in config.frozen_params)]
    scale = config.bn_bias_lr_scale
    main = [p for _, p in kept if scale == 1 or id(p) not in bn_biases]
    groups: list[dict[str, Any]] = [{"params": main, "lr_scale": 1.0}] if main else []
    bias = [p for _, p in kept if scale != 1 and id(p) in bn_biases]
    if bias:
        groups.append({"params": bias, "lr_scale": scale, "weight_decay": config.weight_decay / scale})
    return groups


def make_optimizer(params: list[Any], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum (``config.optimizer``); weight decay coupled (L2) in both.
    ``params``: parameters, or groups as :func:`param_groups` makes them."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )  # fmt: skip
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def lookahead_tensors(objective: Objective) -> dict[str, torch.Tensor]:
    """The floating tensors of the trainable modules' state dicts, ``lookahead.<module>.<key>``, each
    storage once (they share memory with the live weights and buffers)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    trainable = {n: objective.modules[n] for n in objective.trainable}
    for k, v in module_tensors(trainable, prefix="lookahead").items():
        if v.is_floating_point() and v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            out[k] = v
    return out


def start_lookahead(
    live: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """The Lookahead EMA at the start: a copy of ``live`` (:func:`lookahead_tensors`), or the EMA of ``saved``
    (a resume checkpoint)."""
    ema = {k: v.clone() for k, v in live.items()}
    if saved:
        missing = sorted(set(ema) - set(saved))
        if missing:
            raise ValueError(f"{source}.safetensors holds no Lookahead EMA ({missing[0]}, ...); delete it to restart")
        for k, e in ema.items():
            e.copy_(saved[k])
    return ema


@torch.no_grad()
def lookahead_update(ema: dict[str, torch.Tensor], live: dict[str, torch.Tensor], decay: float) -> None:
    """airbench94's ``LookaheadState.update``: ``ema <- lerp(ema, live, 1 - decay)``, then ``live <- ema``."""
    for k, e in ema.items():
        e.lerp_(live[k], 1 - decay)
        live[k].copy_(e)


@dataclass
class FitResult:
    name: str
    steps: int
    resumed_from: int
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_nonfinite: int = 0
    checkpoint: str | None = None


class StopTraining(Exception):
    """Raised by a callback to stop (tests use it to simulate a kill after a checkpoint)."""


def fit(
    objective: Objective,
    data: ImageSplit,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    name: str = "stage",
    *,
    meta: dict[str, Any] | None = None,
    resume: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> FitResult:
    """Train ``objective``'s trainable modules on ``data``; see the module docstring.

    Args:
        objective: modules + loss (see :mod:`testtime.train.objectives`).
        data: labelled source split (uint8 images (N, H, W, C)).
        config: the schedule and seed.
        run_dir: where ``<name>.safetensors/.json`` (final) and ``<name>.resume.*`` go; ``None``
            trains in memory only.
        name: the stage name (file names).
        meta: extra JSON-serialisable metadata written beside the weights (e.g. architecture).
        resume: continue from ``<name>.resume`` when present; return at once when the final
            checkpoint exists (its weights are loaded into the modules).
        on_step: called after every step with (step, logs); may raise :class:`StopTraining`.
    Returns:
        :class:`FitResult` (history of logged steps).
    """
    from testtime.config.core import identity_dict  # here: testtime.config imports this module

    if len(data) < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} is larger than the training set ({len(data)} images)")
    world = D.world_size()
    lo, hi = D.local_rows(config.batch_size)  # (0, batch_size) in one process
    if not D.is_main():
        log = None
    device = torch.device(config.device)
    objective.to(device)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    if config.channels_last:
        for m in objective.modules.values():
            m.to(memory_format=torch.channels_last)
    meta = dict(meta or {})
    meta.update(
        {
            "stage": name,
            "objective": objective.name,
            "train_config": identity_dict(config),
            "train_set": {"name": data.name, "size": len(data)},
        }
    )
    if world > 1:
        meta["data_parallel"] = {"world_size": world, "backend": D.dist.get_backend()}
    final = Path(run_dir) / name if run_dir is not None else None
    resume_path = Path(run_dir) / f"{name}.resume" if run_dir is not None else None
    if final is not None and resume and checkpoint_exists(final):
        tensors, fmeta = load_checkpoint(final)
        for key in ("train_config", "stage_config"):
            if key not in fmeta:
                continue
            old, now = recipe(fmeta[key]), recipe(meta.get(key))
            if old != now:
                raise ValueError(
                    f"{final}.safetensors was trained with another {key.replace('_', ' ')} "
                    f"({settings_diff(key, old, now)}); use another --run-dir or delete it to retrain"
                )
        load_module_tensors(objective.modules, tensors, source=str(final))
        if log:
            log(f"[{name}] final checkpoint exists, loaded {final}.safetensors (delete it to retrain)")
        return FitResult(name, 0, -1, 0.0, checkpoint=str(final))

    groups = param_groups(objective, config)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError(f"objective {objective.name!r} has no trainable parameters")
    opt = make_optimizer(groups, config)
    n = len(data)
    per_epoch = n // config.batch_size
    total = max(1, int(round(config.epochs * per_epoch)))
    warmup = int(round(config.warmup_epochs * per_epoch))
    if config.lookahead_every > total:
        raise ValueError(f"lookahead_every {config.lookahead_every} exceeds the run's {total} steps "
                         "(no sync: the weights would end at their initial values)")
    start = 0
    saved: dict[str, torch.Tensor] = {}  # the resume checkpoint's tensors
    running: dict[str, float] = {}  # sums of the logged values since the last log line
    history: list[dict[str, float]] = []
    if resume_path is not None and resume and checkpoint_exists(resume_path):
        tensors, rmeta = load_checkpoint(resume_path)
        if recipe(rmeta.get("train_config")) != recipe(meta["train_config"]):
            raise ValueError(
                f"{resume_path}.json was written with another training config; delete it to restart "
                "or run with the same settings"
            )
        load_module_tensors(objective.modules, tensors, source=str(resume_path))
        load_optimizer_tensors(opt, tensors, rmeta["optimizer_groups"])
        saved = tensors
        start = int(rmeta["step"])
        # the partial sums and the logged rows before the stop: the log lines and history after a resume
        # are those of an uninterrupted run
        running = {k: float(v) for k, v in rmeta.get("running", {}).items()}
        history = list(rmeta.get("history", []))
        if log:
            log(f"[{name}] resuming at step {start}/{total} from {resume_path}.safetensors")

    def save_resume(step: int) -> None:
        if resume_path is not None and D.is_main():
            ot, groups = optimizer_tensors(opt)
            save_checkpoint(
                resume_path,
                {**module_tensors(objective.modules), **ot, **(ema or {})},
                {**meta, "step": step, "optimizer_groups": groups, "running": running, "history": result.history},
            )
        D.barrier()

    objective.set_modes()
    frozen = {id(p) for p in objective.parameters()} - {id(p) for p in params}
    for p in objective.parameters():  # frozen_params: no gradients computed for them
        if id(p) in frozen:
            p.requires_grad_(False)
    D.broadcast_modules(objective.modules.values())  # the same start on every rank (no-op in one process)
    # None: off. The live tensors share storage with the weights and buffers, which stay the same objects
    live = lookahead_tensors(objective) if config.lookahead_every else {}
    ema = start_lookahead(live, saved, str(resume_path)) if config.lookahead_every else None
    stats = D.running_stats(objective.modules[n] for n in objective.trainable) if world > 1 else []
    result = FitResult(name, total, start, 0.0, history=history)
    t0 = time.perf_counter()
    images = torch.from_numpy(data.images)  # (N, H, W, C) uint8
    labels = torch.from_numpy(data.labels)
    order: np.ndarray | None = None
    order_epoch = -1
    for step in range(start, total):
        epoch, k = divmod(step, per_epoch)
        if epoch != order_epoch:
            order = np.random.default_rng([int(config.seed), int(epoch)]).permutation(n)
            order_epoch = epoch
        assert order is not None
        idx = torch.from_numpy(order[k * config.batch_size : (k + 1) * config.batch_size][lo:hi])
        x = images[idx].to(device).permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=fmt)  # (B, C, H, W)
        y = labels[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, warmup, config) * group.get("lr_scale", 1.0)
        if world > 1:  # this rank's rows, with the global batch's augmentation draws
            with batch_slice(lo, hi, config.batch_size):
                loss, logs = objective.loss(x, y, step_generator(config.seed, step))
            opt.zero_grad(set_to_none=True)
            ok, logs = D.average_step(loss, logs, params, stats)
        else:
            loss, logs = objective.loss(x, y, step_generator(config.seed, step))
            opt.zero_grad(set_to_none=True)
            ok = bool(torch.isfinite(loss))
            if ok:
                loss.backward()
        if ok:
            opt.step()
        else:
            result.skipped_nonfinite += 1
            opt.zero_grad(set_to_none=True)
        done = step + 1
        if ema is not None and done % config.lookahead_every == 0:
            lookahead_update(ema, live, config.lookahead_decay * (done / total) ** 3)
        for key, v in logs.items():
            running[key] = running.get(key, 0.0) + v
        running["_n"] = running.get("_n", 0.0) + 1
        if done % max(1, config.log_every) == 0 or done == total:
            c = running.pop("_n")
            row = {
                "step": done,
                "epoch": done / per_epoch,
                "lr": opt.param_groups[0]["lr"],
                **{key: v / c for key, v in running.items()},
                "wall_s": time.perf_counter() - t0,
            }
            result.history.append(row)
            running = {}
            if log:
                vals = " ".join(f"{key} {v:.4g}" for key, v in row.items() if key not in ("step", "wall_s"))
                log(f"[{name}] step {done}/{total} {vals} ({row['wall_s']:.0f}s)")
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done % per_epoch == 0:
            if done < total:
                save_resume(done)
        if on_step is not None:
            on_step(done, logs)
    if ema is not None:  # the weights take the EMA (airbench's final update with decay 1)
        lookahead_update(ema, live, 1.0)
    for p in objective.parameters():  # as set_modes left them, for whoever uses the modules next
        if id(p) in frozen:
            p.requires_grad_(True)
    result.wall_s = time.perf_counter() - t0
    if final is not None and D.is_main():
        save_checkpoint(
            final,
            module_tensors(objective.modules),
            {
                **meta,
                "step": total,
                "wall_s": result.wall_s,
                "history": result.history,
                "skipped_nonfinite": result.skipped_nonfinite,
            },
        )
        for suffix in (".safetensors", ".json"):
            p = resume_path.with_name(resume_path.name + suffix)  # type: ignore[union-attr]
            if p.exists():
                p.unlink()
    if final is not None:
        result.checkpoint = str(final)
    D.barrier()
    return result

"""Source-time training of the test-time-training baselines ``ttt`` and ``ttt++`` with the one trainer.

Both are joint trainings of a classifier and an auxiliary head on a shared encoder,
run by :func:`testtime.train.fit` (same schedule, optimiser, seeded batches, checkpoints and resume
as every CTA stage); only the objective and the head differ:

- ``ttt`` (Sun et al. 2020, Eq. 2): CE of ``fc(encoder(crop_flip x))`` + rotation CE of
  ``aux(encoder(rotations of crop_flip x))`` with a linear 4-way rotation head; ``rotation="expand"``
  uses all four rotations of every image (the official ``script.sh``), ``"rand"`` (the default
  here, and of the official ``main.py``) one random rotation per image: 2.5x cheaper on a CPU.
- ``ttt++`` (Liu et al. 2021): CE + ``ssl_weight`` * NT-Xent (tau 0.5) of a SimCLR MLP projector,
  i.e. :class:`testtime.train.JointObjective` reused as is, followed by the offline summary of the
  source features (:func:`testtime.methods.ttt_pp.compute_source_statistics`), stored in the model.

The pipeline's ``peer_train`` section applies as to the CTA paper's peers
(:mod:`testtime.train.peer_stages`): ``init="scratch"`` (default) trains encoder, classifier and
head jointly from scratch (the papers); ``init="supervised"`` first loads the encoder + classifier
from the preset's ``supervised`` checkpoint (trained first when missing; all its weights must fit)
and only the head starts fresh (seeded). Training uses ``peer_train.train`` when set, else the
pipeline's ``supervised`` :class:`TrainConfig`, on the same seeded training subset as the supervised
model. The effective init and train config go to the sidecars' ``peer_train``; a checkpoint (final
or resume) trained from another init is refused, not reused (absent: ``"scratch"``).

Files (``<run_dir>``): ``ttt.safetensors/.json`` (the rotation model); ``ttt++-joint.*`` (the fit)
and ``ttt++.safetensors/.json`` (the model with its source statistics). :func:`load_aux_model`
rebuilds either from its sidecar.

Example::

    cfg = load_config("cifar10-cpu", None, [])           # testtime.commands.train
    model = train_aux_stage(cfg, "runs/c10", load_data(cfg.data), "ttt")
    method = create_method("ttt", model)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from testtime.losses import cross_entropy
from testtime.losses.rotation import rotation_loss
from testtime.models.heads import AuxHeadModel, with_aux_head
from testtime.train.checkpoint import checkpoint_exists, load_modules, read_meta, save_modules
from testtime.train.distributed import barrier, is_main
from testtime.train.objectives import JointObjective, Objective
from testtime.train.peer_init import (
    check_init,
    load_supervised_weights,
    peer_train_record,
    peer_train_settings,
    supervised_source,
)
from testtime.train.trainer import fit, recipe, settings_diff
from testtime.transforms.rotation import rotate_expand, rotate_random
from testtime.transforms.views import CropFlipConfig, SimCLRViewsConfig, crop_flip

AUX_STAGES = ("ttt", "ttt++")
_MODULES = ("encoder", "fc", "aux")
_STATS = ("stats_encoder", "stats_aux")


@dataclass(frozen=True)
class AuxStageConfig:
    """Settings of the ``ttt`` / ``ttt++`` source stages beyond the shared TrainConfig."""

    rotation: str = "rand"  # ttt: "rand" (one random rotation per image, official main.py default) | "expand"
    rotation_weight: float = 1.0  # ttt: weight of the rotation loss (Eq. 2 sums them)
    proj_dim: int = 128  # ttt++: projector output size (SupConResNet feat_dim)
    tau: float = 0.5  # ttt++: NT-Xent temperature
    ssl_weight: float = 1.0  # ttt++: weight of NT-Xent beside CE
    stats_batch_size: int = 256  # ttt++: batch size of the offline feature summary

    def __post_init__(self) -> None:
        if self.rotation not in ("expand", "rand"):
            raise ValueError(f"rotation must be 'expand' or 'rand', got {self.rotation!r}")
        if self.proj_dim < 1 or not self.tau > 0 or self.ssl_weight < 0 or self.rotation_weight < 0:
            raise ValueError("proj_dim must be >= 1, tau > 0, ssl_weight and rotation_weight >= 0")
        if self.stats_batch_size < 2:
            raise ValueError(f"stats_batch_size must be >= 2, got {self.stats_batch_size}")


class RotationJointObjective(Objective):
    """TTT's joint source objective (Eq. 2): CE(fc(e(x'))) + w * CE_rot(aux(e(rot(x')))), x' = crop_flip(x).

    The classification and rotation batches go through the encoder in separate passes, as in the
    official ``main.py`` (each with its own BN batch statistics).
    """

    name = "ttt-joint"

    def __init__(self, encoder: nn.Module, fc: nn.Module, aux: nn.Module, *, rotation: str = "rand",
                 rotation_weight: float = 1.0, augment: CropFlipConfig | None = None) -> None:
        super().__init__({"encoder": encoder, "fc": fc, "aux": aux}, ("encoder", "fc", "aux"))
        if rotation not in ("expand", "rand"):
            raise ValueError(f"rotation must be 'expand' or 'rand', got {rotation!r}")
        self.rotation, self.rotation_weight = rotation, rotation_weight
        self.augment = augment if augment is not None else CropFlipConfig()

    def loss(self, x, y, g):
        e, fc, aux = self.modules["encoder"], self.modules["fc"], self.modules["aux"]
        xs = crop_flip(x, g, self.augment)  # (B, C, H, W)
        logits = fc(e(xs))  # (B, K)
        ce = cross_entropy(logits, y)
        xr, yr = rotate_expand(xs) if self.rotation == "expand" else rotate_random(xs, g)  # (4B or B, C, H, W)
        rot_logits = aux(e(xr))  # (4B or B, 4)
        rot = rotation_loss(rot_logits, yr)
        loss = ce + self.rotation_weight * rot
        return loss, {"ce": float(ce.detach()), "rot": float(rot.detach()),
                      "acc": float((logits.argmax(1) == y).float().mean()),
                      "rot_acc": float((rot_logits.argmax(1) == yr).float().mean())}


def _model_meta(cfg: Any, data: Any, stage: str, aux_cfg: AuxStageConfig, init: str, tcfg: Any) -> dict[str, Any]:
    return {
        "kind": "aux-head-model",
        "task": "rotation" if stage == "ttt" else "simclr",
        "arch": cfg.model.arch,
        "norm": cfg.model.norm,
        "num_classes": int(data.num_classes),
        "in_chans": int(data.channels),
        "image_size": list(data.image_size),
        "proj_dim": aux_cfg.proj_dim,
        "aux_stage_config": dataclasses.asdict(aux_cfg),
        "peer_train": peer_train_record(init, tcfg),
        "pipeline": cfg.name,
        "seed": cfg.seed,
    }


def build_aux_model(arch: str, num_classes: int, task: str, *, in_chans: int = 3, norm: str = "batch",
                    proj_dim: int = 128, conv_init: str = "default") -> AuxHeadModel:
    """A fresh testtime ResNet with an auxiliary ``task`` head ("rotation" | "simclr"); its encoder's
    convolutions initialised as ``conv_init`` says (:mod:`testtime.models.init`)."""
    from testtime.models import create_model
    from testtime.models.init import init_convs_

    base = create_model(arch, num_classes, in_chans=in_chans, norm=norm)
    init_convs_(base.encoder, conv_init)
    return with_aux_head(base, task, proj_dim=proj_dim, in_chans=in_chans)


# the fields of a ttt / ttt++ checkpoint's meta that say what was trained (not "pipeline", the preset's name)
RECIPE_FIELDS = ("task", "arch", "norm", "num_classes", "in_chans", "aux_stage_config", "peer_train", "seed")


def check_same_recipe(path: str | Path, meta: dict[str, Any]) -> None:
    """Refuse to reuse the checkpoint at ``path`` when it was trained with other settings than ``meta``
    (:data:`RECIPE_FIELDS`, compared as :func:`testtime.train.trainer.recipe`: without the device, so a
    model trained on the CPU loads under ``device=cuda``); a field the checkpoint lacks is not compared."""
    old = read_meta(path).get("meta", {})
    for key in (k for k in RECIPE_FIELDS if k in old):
        was, now = recipe(old[key]), recipe(meta.get(key))  # compared and described without the device
        if was != now:
            raise ValueError(f"{path}.safetensors was trained with another {key.replace('_', ' ')} "
                             f"({settings_diff(key, was, now)}); "
                             "use another --run-dir or delete it to retrain")


def load_aux_model(path: str | Path, device: str | torch.device = "cpu") -> AuxHeadModel:
    """Rebuild and load a ``ttt`` / ``ttt++`` model saved by :func:`train_aux_stage` (sha256 checked)."""
    side = read_meta(path)
    meta = side["meta"]
    if meta.get("kind") != "aux-head-model":
        raise ValueError(f"{path}: not a ttt / ttt++ model checkpoint (kind {meta.get('kind')!r})")
    model = build_aux_model(meta["arch"], meta["num_classes"], meta["task"], in_chans=meta["in_chans"],
                            norm=meta["norm"], proj_dim=meta["proj_dim"])
    names = _MODULES + (_STATS if meta["task"] == "simclr" else ())
    load_modules(path, {n: getattr(model, n) for n in names})
    return model.to(device).eval()


def initial_aux_model(cfg: Any, train: Any, stage: str, aux_cfg: AuxStageConfig = AuxStageConfig(),
                      sup: nn.Module | None = None) -> AuxHeadModel:
    """``stage``'s model before training: built after ``torch.manual_seed(cfg.seed)``, then, given the
    supervised model ``sup`` (``peer_train.init=supervised``), its encoder + classifier loaded from it
    (all weights must fit, else a one-line ValueError); the aux head stays as built.
    """
    torch.manual_seed(cfg.seed)
    model = build_aux_model(cfg.model.arch, train.num_classes, "rotation" if stage == "ttt" else "simclr",
                            in_chans=train.channels, norm=cfg.model.norm, proj_dim=aux_cfg.proj_dim,
                            conv_init=cfg.model.conv_init)
    if sup is not None:
        load_supervised_weights(model, sup, stage)
    return model


def train_aux_stage(cfg: Any, run_dir: str | Path, data: Any, stage: str,
                    aux_cfg: AuxStageConfig = AuxStageConfig(), *, log: Any = print) -> AuxHeadModel:
    """Train (or load, when its checkpoint exists) the source model of ``stage`` ("ttt" | "ttt++").

    ``cfg`` is a :class:`testtime.train.pipeline.PipelineConfig` (data, model, seed, device, ``peer_train``
    and the ``supervised`` TrainConfig are used); ``data`` its loaded data (``.train`` is the source split).
    """
    from testtime.methods.ttt_pp import compute_source_statistics

    if stage not in AUX_STAGES:
        raise ValueError(f"stage must be one of {', '.join(AUX_STAGES)}, got {stage!r}")
    if getattr(cfg, "threads", None):
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train = getattr(data, "train", data)
    peer, tcfg = peer_train_settings(cfg)
    meta = _model_meta(cfg, train, stage, aux_cfg, peer.init, tcfg)
    check_init(run_dir, (stage,) if stage == "ttt" else ("ttt++", "ttt++-joint"), peer.init, "scratch")
    final = run_dir / stage
    if checkpoint_exists(final):
        check_same_recipe(final, meta)
        if log:
            log(f"[{stage}] model checkpoint exists, loading {final}.safetensors (delete it to retrain)")
        return load_aux_model(final, cfg.device)
    sup = supervised_source(cfg, run_dir, data, log=log) if peer.init == "supervised" else None
    model = initial_aux_model(cfg, train, stage, aux_cfg, sup)
    if stage == "ttt":
        obj: Objective = RotationJointObjective(model.encoder, model.fc, model.aux, rotation=aux_cfg.rotation,
                                                rotation_weight=aux_cfg.rotation_weight)
        fit(obj, train, tcfg, run_dir, "ttt", meta=meta, log=log)
        return model.eval()
    joint = JointObjective(model.encoder, model.fc, model.aux, tau=aux_cfg.tau, ssl_weight=aux_cfg.ssl_weight,
                           views=SimCLRViewsConfig())
    fit(joint, train, tcfg, run_dir, "ttt++-joint", meta={**meta, "kind": "aux-head-model-joint-fit"}, log=log)
    info = compute_source_statistics(model, train.images, batch_size=aux_cfg.stats_batch_size, device=cfg.device)
    if log:
        log(f"[ttt++] source statistics of {int(info['n'])} images: " +
            ", ".join(f"{k} {v:.4g}" for k, v in info.items() if k != "n"))
    if is_main():  # one writer under torchrun (every rank computed the same statistics)
        save_modules(final, {n: getattr(model, n) for n in _MODULES + _STATS}, {**meta, "source_stats": info})
    barrier()
    return model.eval()
